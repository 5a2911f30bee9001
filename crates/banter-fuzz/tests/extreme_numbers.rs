//! A damaged or forged changelog with numbers at the edge of `i64`: every number of real
//! entries of every table (a generated workload's changelog, at several points of its run) is
//! replaced in turn by `i64`'s and `u64`'s limits, a time no engine writes and 0, and so is
//! every 8 bytes of their keys; the partition is restored from each and run on. A restore may
//! refuse the entry; what it must not do is overflow (test builds check arithmetic) or panic
//! later on the state it took.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::BTreeMap;
use std::sync::LazyLock;

use banter_stream::changelog::Store;
use banter_stream::cta::Matcher;
use banter_stream::{Pipeline, PipelineConfig, Saved, StreamSettings};

/// The workload's saved state every 100 events, its values as JSON (whose numbers the tests
/// find and replace; binary values hold the same numbers, read into the same types): made
/// once for both tests.
static LOGS: LazyLock<Vec<Saved>> = LazyLock::new(|| banter_fuzz::workload_run(100, true).2);

/// Entries of each table damaged.
const PER_TABLE: usize = 8;

/// What each number is replaced by: `i64`'s, `u64`'s and `u32`'s ends, a time far beyond any
/// event's, 0 (a count that cannot be taken from) and 7 (past the last funnel stage, 5).
const EXTREMES: [&str; 8] = [
    "-9223372036854775808",
    "-9223372036854775807",
    "9223372036854775807",
    "18446744073709551615",
    "4294967295",
    "-4611686018427387904",
    "0",
    "7",
];

/// The byte ranges of the JSON integers in `json` (an optional minus and digits, not part of
/// a string or a fraction).
fn integers(json: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let (mut i, mut in_string) = (0, false);
    while i < json.len() {
        let c = json[i];
        if in_string {
            match c {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        if c == b'"' {
            in_string = true;
            i += 1;
            continue;
        }
        if c == b'-' || c.is_ascii_digit() {
            let start = i;
            i += 1;
            while i < json.len() && json[i].is_ascii_digit() {
                i += 1;
            }
            let fraction = i < json.len() && matches!(json[i], b'.' | b'e' | b'E');
            if !fraction {
                out.push((start, i));
            }
            while i < json.len() && (json[i].is_ascii_alphanumeric() || b".+-".contains(&json[i])) {
                i += 1;
            }
            continue;
        }
        i += 1;
    }
    out
}

#[test]
fn numbers_at_the_edge_of_i64_in_a_restored_changelog_are_refused_or_held_without_overflow() {
    let logs = &*LOGS;
    let (mut runs, mut failed) = (0usize, Vec::new());
    // Entries damaged per table (store and tag): a few of each, from different points of
    // the run, each restored with the checkpoint of its point and nothing else.
    let mut tried: BTreeMap<(Store, u8), (usize, usize)> = BTreeMap::new();
    for (at, log) in logs.iter().enumerate() {
        // Each point starts at another entry, so later points reach keys later in the order.
        let skip = at * 7 % log.entries.len().max(1);
        let entries = log
            .entries
            .iter()
            .skip(skip)
            .chain(log.entries.iter().take(skip));
        for (key, value) in entries {
            let (n, last) = tried.entry((key.0, key.1[0])).or_insert((0, usize::MAX));
            if *n == PER_TABLE || *last == at {
                continue;
            }
            (*n, *last) = (*n + 1, at);
            // Each number of the value replaced, then every 8 bytes of the key after its tag
            // (where its times and offsets are, big-endian) set to i64's ends.
            let mut variants: Vec<(String, Vec<u8>, Vec<u8>)> = Vec::new();
            for (start, end) in integers(value) {
                for x in EXTREMES {
                    let number = String::from_utf8_lossy(&value[start..end]);
                    let v = [&value[..start], x.as_bytes(), &value[end..]].concat();
                    variants.push((format!("number {number} set to {x}"), key.1.clone(), v));
                }
            }
            for pos in 1..key.1.len().saturating_sub(7) {
                for x in [i64::MIN, i64::MAX] {
                    let mut k = key.1.clone();
                    k[pos..pos + 8].copy_from_slice(&x.to_be_bytes());
                    variants.push((format!("key bytes {pos}.. set to {x}"), k, value.clone()));
                }
            }
            for (what, k, v) in variants {
                let damaged = Saved {
                    checkpoint: log.checkpoint.clone(),
                    entries: [((key.0, k), v)].into(),
                };
                let input = banter_fuzz::saved_bytes(&damaged);
                runs += 1;
                if std::panic::catch_unwind(|| banter_fuzz::changelog(&input)).is_err() {
                    failed.push(format!(
                        "store {:?} table {}: {what}, in {}",
                        key.0,
                        key.1[0] as char,
                        String::from_utf8_lossy(value),
                    ));
                }
            }
        }
    }
    eprintln!("{runs} damaged changelogs, entries per table: {tried:?}");
    assert!(runs > 500, "only {runs} damaged changelogs were tried");
    assert!(
        failed.is_empty(),
        "{} of {runs} damaged changelogs failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

#[test]
fn a_restored_time_out_of_range_is_refused_naming_the_entry_and_the_field() {
    let log = LOGS.last().unwrap();
    // A conversation item (table `i`): an inbound comment, story reply or DM.
    let (key, value) = log
        .entries
        .iter()
        .find(|((s, k), _)| *s == Store::Conversations && k[0] == b'i')
        .unwrap();
    let mut item: serde_json::Value = serde_json::from_slice(value).unwrap();
    item["time"] = i64::MAX.into();
    let damaged = Saved {
        checkpoint: log.checkpoint.clone(),
        entries: [(key.clone(), serde_json::to_vec(&item).unwrap())].into(),
    };
    let cfg = PipelineConfig::from_settings(&StreamSettings::default());
    let err = Pipeline::restore(&cfg, Matcher::default(), &damaged)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.starts_with("conversations changelog entry ")
            && err.ends_with(&format!("time {} is not a time an engine writes", i64::MAX)),
        "{err}"
    );
    // The same entry as written restores.
    let whole = Saved {
        checkpoint: log.checkpoint.clone(),
        entries: [(key.clone(), value.clone())].into(),
    };
    assert!(Pipeline::restore(&cfg, Matcher::default(), &whole).is_ok());
}
