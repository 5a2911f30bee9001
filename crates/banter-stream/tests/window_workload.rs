//! Window rollups on the generated workload, the pipeline in-process on the delivered order
//! (duplicates, disorder, late and too-late events, Instagram comments redelivered hours
//! later with a new time): every MINUTE count of every account and post equals the
//! generator's; webhook interactions carry no publication time, the POST_PUBLISHED that does
//! is delivered with the same jitter as everything else (often after the first
//! interactions), and every post's FIRST_15M, FIRST_60M and time-to-N equal the generator's,
//! exactly.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::BTreeMap;

use banter_model::{Kind, Rollup, WindowKind};
use banter_stream::cta::Matcher;
use banter_stream::{Outputs, Pipeline, PipelineConfig, DAY};
use banter_workload::{Workload, WorkloadConfig};

#[test]
fn minutes_and_first_hours_equal_the_generated_ones_whatever_arrives_first() {
    let w = Workload::generate(WorkloadConfig {
        seed: 11,
        accounts: 40,
        duration_ms: 6 * 3_600_000,
        ..WorkloadConfig::default()
    });
    // The workload is the case this test is about.
    let mut published_after_interactions = 0;
    let mut first_seen: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..w.len() {
        let e = w.event(i);
        if let Some(c) = &e.content_id {
            let first = *first_seen.entry(c.clone()).or_insert(i);
            if e.kind == Kind::PostPublished && first < i {
                published_after_interactions += 1;
            }
            if e.kind != Kind::PostPublished && e.kind != Kind::LinkClick {
                assert!(e.content_published_at.is_none(), "{e:?}");
            }
        }
    }
    assert!(
        published_after_interactions > 5,
        "{published_after_interactions}"
    );
    // Redeliveries hours later, with a new time and the same id.
    let mut first_time: BTreeMap<String, i64> = BTreeMap::new();
    let mut redelivered_later = 0;
    for i in 0..w.len() {
        let e = w.event(i);
        let t = *first_time.entry(e.event_id.clone()).or_insert(e.event_time);
        if e.event_time > t + 10 * 60_000 {
            redelivered_later += 1;
        }
    }
    assert!(
        redelivered_later > 5,
        "{redelivered_later} late redeliveries"
    );

    let mut pipeline = Pipeline::new(&PipelineConfig::default(), Matcher::default());
    let mut out = Outputs::default();
    for i in 0..w.len() {
        pipeline.process(&w.event(i), i as i64, &mut out);
    }
    let end = pipeline.max_event_time().unwrap() + DAY;
    pipeline.idle_advance(end, &mut out);
    // Every minute of every account and post.
    let mut minutes: BTreeMap<(String, Option<String>, i64), i64> = BTreeMap::new();
    for r in &out.rollups {
        if r.window == WindowKind::Minute {
            let key = (
                r.account_id.to_string(),
                r.content_id.as_deref().map(str::to_owned),
                r.window_start,
            );
            minutes.insert(key, r.interactions);
        }
    }
    minutes.retain(|_, n| *n != 0);
    let mut want: BTreeMap<(String, Option<String>, i64), i64> = BTreeMap::new();
    for (a, m) in &w.expected.account_minutes {
        want.extend(m.iter().map(|(t, n)| ((a.clone(), None, *t), *n)));
    }
    for (c, m) in &w.expected.content_minutes {
        let a = w
            .posts
            .iter()
            .find(|p| &p.content_id == c)
            .unwrap()
            .account_id
            .clone();
        want.extend(
            m.iter()
                .map(|(t, n)| ((a.clone(), Some(c.clone()), *t), *n)),
        );
    }
    want.retain(|_, n| *n != 0);
    let wrong: Vec<String> = want
        .iter()
        .filter(|(k, v)| minutes.get(*k) != Some(v))
        .chain(minutes.iter().filter(|(k, _)| !want.contains_key(*k)))
        .take(10)
        .map(|(k, v)| format!("{k:?}: expected {v}, got {:?}", minutes.get(k)))
        .collect();
    assert!(
        wrong.is_empty(),
        "MINUTE rows differ:\n{}",
        wrong.join("\n")
    );
    let mut last: BTreeMap<(String, WindowKind), Rollup> = BTreeMap::new();
    for r in out.rollups {
        if matches!(r.window, WindowKind::First15m | WindowKind::First60m) {
            let k = (r.content_id.as_deref().unwrap().to_owned(), r.window);
            if last.get(&k).is_none_or(|o| o.revision <= r.revision) {
                last.insert(k, r);
            }
        }
    }
    assert!(!w.expected.first_hour.is_empty());
    let mut diffs = Vec::new();
    for (c, fh) in &w.expected.first_hour {
        let r15 = &last[&(c.clone(), WindowKind::First15m)];
        let r60 = &last[&(c.clone(), WindowKind::First60m)];
        let got = (r15.interactions, r60.interactions, r60.time_to_n_minutes);
        let want = (fh.first_15m, fh.first_60m, fh.time_to_n_minutes);
        if got != want {
            diffs.push(format!("{c}: got {got:?}, want {want:?}"));
        }
    }
    assert!(
        diffs.is_empty(),
        "{} of {} posts differ:\n{}",
        diffs.len(),
        w.expected.first_hour.len(),
        diffs.join("\n")
    );
    println!(
        "{} minutes equal; {} posts, {published_after_interactions} published after their first interactions; {redelivered_later} late redeliveries",
        want.len(),
        w.expected.first_hour.len()
    );
}
