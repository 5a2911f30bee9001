//! First-hour signals on the generated workload, the pipeline in-process on the delivered order:
//! webhook interactions carry no publication time, the POST_PUBLISHED that does is delivered
//! with the same jitter as everything else (often after the first interactions), and every
//! post's FIRST_15M, FIRST_60M and time-to-N equal the generator's, exactly.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::BTreeMap;

use banter_model::{Kind, Rollup, WindowKind};
use banter_stream::cta::Matcher;
use banter_stream::{Outputs, Pipeline, PipelineConfig, DAY};
use banter_workload::{Workload, WorkloadConfig};

#[test]
fn first_hour_rows_equal_the_generated_ones_whatever_arrives_first() {
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

    let mut pipeline = Pipeline::new(&PipelineConfig::default(), Matcher::default());
    let mut out = Outputs::default();
    for i in 0..w.len() {
        pipeline.process(&w.event(i), i as i64, &mut out);
    }
    let end = pipeline.max_event_time().unwrap() + DAY;
    pipeline.idle_advance(end, &mut out);
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
        "{} posts, {published_after_interactions} published after their first interactions",
        w.expected.first_hour.len()
    );
}
