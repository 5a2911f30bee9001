//! CTA funnels on the generated workload, the pipeline in-process on the delivered order
//! (duplicates, disorder, late and too-late events): the funnel of every campaign, summed over
//! its DAY windows (and over its HOUR windows), equals the generator's expected funnel.

mod common;

use std::collections::BTreeMap;

use banter_model::{FunnelRollup, WindowKind};
use banter_stream::{Outputs, Pipeline, PipelineConfig, DAY};
use banter_workload::{Workload, WorkloadConfig};

#[test]
fn generated_funnels_equal_the_expected_ones() {
    let w = Workload::generate(WorkloadConfig {
        seed: 5,
        accounts: 40,
        duration_ms: 8 * 3_600_000,
        ..WorkloadConfig::default()
    });
    // The workload is the case this test is about: stages delivered before their trigger
    // comment, a private reply naming only the comment it answers.
    let mut seen_comments = std::collections::BTreeSet::new();
    let mut replies_first = 0;
    for i in 0..w.len() {
        let e = w.event(i);
        match e.kind {
            banter_model::Kind::Comment => {
                seen_comments.insert(e.object_id.clone());
            }
            banter_model::Kind::PrivateReplySent => {
                assert!(e.cta_campaign_id.is_none() && e.parent_id.is_some());
                if !seen_comments.contains(&e.parent_id) {
                    replies_first += 1;
                }
            }
            _ => {}
        }
    }
    assert!(
        replies_first > 3,
        "{replies_first} private replies before their comment"
    );
    let matcher = common::matcher(&w);
    let mut pipeline = Pipeline::new(&PipelineConfig::default(), matcher);
    // Every output of the whole history, then of event time moving on past its end.
    let mut out = Outputs::default();
    for i in 0..w.len() {
        pipeline.process(&w.event(i), i as i64, &mut out);
    }
    let end = pipeline.max_event_time().unwrap() + 10 * DAY;
    pipeline.idle_advance(end, &mut out);
    let rows = out.funnels;
    let mut last: BTreeMap<(String, WindowKind, i64), FunnelRollup> = BTreeMap::new();
    for r in rows {
        let k = (r.campaign_id.clone(), r.window, r.window_start);
        if last.get(&k).is_none_or(|o| o.revision <= r.revision) {
            last.insert(k, r);
        }
    }
    assert!(!w.expected.funnels.is_empty());
    for kind in [WindowKind::Hour, WindowKind::Day] {
        let mut got: BTreeMap<String, [i64; 7]> = BTreeMap::new();
        for r in last.values().filter(|r| r.window == kind) {
            let t = got.entry(r.campaign_id.clone()).or_default();
            let cents = (r.conversion_value * 100.0).round() as i64;
            for (sum, v) in t.iter_mut().zip(r.stages().into_iter().chain([cents])) {
                *sum += v;
            }
        }
        let want: BTreeMap<String, [i64; 7]> = w
            .expected
            .funnels
            .iter()
            .map(|(c, f)| {
                (
                    c.clone(),
                    [
                        f.triggered,
                        f.private_reply_sent,
                        f.dm_read,
                        f.engaged,
                        f.link_clicked,
                        f.converted,
                        f.conversion_value_cents,
                    ]
                    .map(|v| v as i64),
                )
            })
            .collect();
        assert_eq!(got, want, "{kind:?} windows");
    }
    println!(
        "{} campaigns, {} funnel rows, {replies_first} private replies delivered before their comment",
        w.expected.funnels.len(),
        last.len()
    );
}
