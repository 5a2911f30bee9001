//! Conversation metrics on the generated workload, the pipeline in-process on the delivered
//! order (duplicates, disorder, late and too-late events): per account, the inbound
//! comments and the ones the brand answered, summed over the account's HOUR windows (and over
//! its DAY windows), equal the generator's.

use std::collections::BTreeMap;

use banter_model::{ConversationRollup, WindowKind};
use banter_stream::cta::Matcher;
use banter_stream::{Outputs, Pipeline, PipelineConfig, DAY};
use banter_workload::{Workload, WorkloadConfig};

#[test]
fn answered_comments_equal_the_generated_ones() {
    let w = Workload::generate(WorkloadConfig {
        seed: 9,
        accounts: 40,
        duration_ms: 8 * 3_600_000,
        ..WorkloadConfig::default()
    });
    // The workload is the case this test is about: moderation delivered before its comment.
    let mut seen = std::collections::BTreeSet::new();
    let mut actions_first = 0;
    for i in 0..w.len() {
        let e = w.event(i);
        if e.kind == banter_model::Kind::Comment {
            if e.action == banter_model::Action::Add {
                seen.insert(e.object_id.clone());
            } else if !seen.contains(&e.object_id) {
                actions_first += 1;
            }
        }
    }
    assert!(
        actions_first > 3,
        "{actions_first} actions before their comment"
    );
    let mut pipeline = Pipeline::new(&PipelineConfig::default(), Matcher::default());
    // Every output of the whole history, then of event time moving on past its end.
    let mut out = Outputs::default();
    for i in 0..w.len() {
        pipeline.process(&w.event(i), i as i64, &mut out);
    }
    let end = pipeline.max_event_time().unwrap() + 3 * DAY;
    pipeline.idle_advance(end, &mut out);
    let rows = out.conversations;
    let mut last: BTreeMap<(String, Option<String>, WindowKind, i64), ConversationRollup> =
        BTreeMap::new();
    for r in rows {
        let k = (
            r.account_id.clone(),
            r.content_id.clone(),
            r.window,
            r.window_start,
        );
        last.insert(k, r);
    }
    let want: BTreeMap<String, (u64, u64)> = w.expected.comments_answered.clone();
    assert!(want.values().any(|v| v.1 > 0));
    for kind in [WindowKind::Hour, WindowKind::Day] {
        let mut got: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for r in last
            .values()
            .filter(|r| r.window == kind && r.content_id.is_none())
        {
            let g = got.entry(r.account_id.clone()).or_default();
            g.0 += r.inbound_comments as u64;
            g.1 += r.answered_comments as u64;
        }
        got.retain(|_, v| v.0 > 0);
        assert_eq!(got, want, "{kind:?}");
    }
    let (inbound, answered): (u64, u64) = want.values().fold((0, 0), |a, v| (a.0 + v.0, a.1 + v.1));
    println!("{inbound} inbound comments, {answered} answered");
}
