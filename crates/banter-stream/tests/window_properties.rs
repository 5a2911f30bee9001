//! Properties of the windowing engine.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::BTreeMap;

use banter_model::{Action, EngagementEvent, Kind, Platform, Rollup};
use banter_stream::{Engine, Output, WindowConfig};
use proptest::prelude::*;

const T0: i64 = 1_764_000_000_000;

fn events() -> impl Strategy<Value = Vec<EngagementEvent>> {
    prop::collection::vec(
        (
            0i64..(30 * 60_000),
            prop::sample::select(vec![
                Kind::Comment,
                Kind::PostReaction,
                Kind::Share,
                Kind::DmIn,
                Kind::BrandReply,
                Kind::Mention,
            ]),
            prop::sample::select(vec![
                Action::Add,
                Action::Add,
                Action::Add,
                Action::Remove,
                Action::Edit,
            ]),
            0u8..3,
            0u8..4,
            any::<bool>(),
        ),
        1..300,
    )
    .prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (t, kind, action, acct, post, brand))| {
                let mut e = EngagementEvent::new(
                    format!("e{i}"),
                    Platform::Instagram,
                    kind,
                    action,
                    format!("a{acct}"),
                    T0 + t,
                );
                if kind != Kind::DmIn {
                    e.content_id = Some(format!("p{acct}-{post}"));
                    e.content_published_at = Some(T0 + i64::from(post) * 300_000);
                }
                e.is_brand_actor = brand && kind == Kind::BrandReply;
                e
            })
            .collect()
    })
}

/// The last row of every (key, window, start), without the fields that depend on arrival
/// order (revision = input offset, emitted_at = watermark).
fn finals(arrival: &[EngagementEvent]) -> BTreeMap<String, Rollup> {
    let mut engine = Engine::new(WindowConfig::default());
    let mut out = Vec::new();
    for (offset, e) in arrival.iter().enumerate() {
        engine.process(e, offset as i64, &mut out);
    }
    engine.advance_watermark(i64::MAX / 2, &mut out);
    let mut last = BTreeMap::new();
    for o in out {
        match o {
            Output::Rollup(mut r) => {
                r.revision = 0;
                r.emitted_at = 0;
                last.insert(
                    format!(
                        "{}/{:?}/{:?}/{}",
                        r.account_id, r.content_id, r.window, r.window_start
                    ),
                    r,
                );
            }
            Output::TooLate { event_id, .. } => panic!("{event_id} too late within the bound"),
        }
    }
    last
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Any arrival order whose disorder stays within the out-of-orderness bound gives the
    /// same final rollups as event-time order, with nothing late.
    #[test]
    fn reordering_within_the_bound_gives_identical_rollups(
        evs in events(),
        jitter in prop::collection::vec(0i64..59_999, 300),
    ) {
        let mut in_order = evs.clone();
        in_order.sort_by_key(|e| (e.event_time, e.event_id.clone()));
        let mut shuffled = evs;
        // Arrival = event time + a delay under 60 s: disorder never exceeds the bound.
        let delay: BTreeMap<String, i64> = shuffled.iter().enumerate().map(|(i, e)| (e.event_id.clone(), jitter[i % jitter.len()])).collect();
        shuffled.sort_by_key(|e| (e.event_time + delay[&e.event_id], e.event_id.clone()));
        let (a, b) = (finals(&in_order), finals(&shuffled));
        for r in a.values().chain(b.values()) {
            prop_assert_eq!(r.late_events, 0);
        }
        prop_assert_eq!(a, b);
    }

    /// Duplicated deliveries (any number, anywhere within the bound) change nothing.
    #[test]
    fn duplicates_change_nothing(evs in events(), dup_every in 2usize..7) {
        let mut in_order = evs.clone();
        in_order.sort_by_key(|e| (e.event_time, e.event_id.clone()));
        let mut with_dups = Vec::new();
        for (i, e) in in_order.iter().enumerate() {
            with_dups.push(e.clone());
            if i % dup_every == 0 {
                with_dups.push(e.clone());
            }
        }
        prop_assert_eq!(finals(&in_order), finals(&with_dups));
    }
}

#[test]
fn state_is_bounded_by_the_lateness_horizon() {
    let mut engine = Engine::new(WindowConfig::default());
    let mut out = Vec::new();
    // Six hours of one event per second over 50 posts.
    for i in 0..(6 * 3600) {
        let mut e = EngagementEvent::new(
            format!("e{i}"),
            Platform::Instagram,
            Kind::PostReaction,
            Action::Add,
            "a",
            T0 + i * 1000,
        );
        e.content_id = Some(format!("p{}", i % 50));
        engine.process(&e, i, &mut out);
        out.clear();
    }
    // Panes of ~67 minutes (lateness + velocity span), 51 keys each, plus recent dedup ids.
    let entries = engine.state_entries();
    assert!(
        entries < 67 * 51 + 4000 + 100,
        "{entries} state entries after 6 hours"
    );
}
