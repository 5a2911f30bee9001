//! Properties of the windowing engine.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::BTreeMap;

use banter_model::{Action, EngagementEvent, Kind, Platform, Rollup};
use banter_stream::changelog::{Entry, Store};
use banter_stream::{Engine, Operator, Output, WindowConfig};
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
            any::<bool>(),
        ),
        1..300,
    )
    .prop_map(|v| {
        let mut posts = std::collections::BTreeSet::new();
        let mut evs: Vec<EngagementEvent> = v
            .into_iter()
            .enumerate()
            .map(|(i, (t, kind, action, acct, post, brand, webhook))| {
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
                    // Webhooks carry no publication time: only the post's POST_PUBLISHED
                    // does, which may come after them.
                    if !webhook {
                        e.content_published_at = Some(T0 + i64::from(post) * 300_000);
                    }
                    posts.insert((acct, post));
                }
                e.is_brand_actor = brand && kind == Kind::BrandReply;
                e
            })
            .collect();
        for (acct, post) in posts {
            let mut e = EngagementEvent::new(
                format!("pub-{acct}-{post}"),
                Platform::FirstParty,
                Kind::PostPublished,
                Action::Add,
                format!("a{acct}"),
                T0 + i64::from(post) * 300_000,
            );
            e.content_id = Some(format!("p{acct}-{post}"));
            e.is_brand_actor = true;
            evs.push(e);
        }
        evs
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(100))]

    /// Prefetching a batch's state before processing it (as `banter stream` does) changes no
    /// output, whatever the batch size, with duplicates, late and too-late events in the input.
    #[test]
    fn prefetching_batches_changes_no_output(
        evs in events(),
        batch in 1usize..70,
        late_every in 3usize..9,
    ) {
        let mut arrival = Vec::new();
        for (i, e) in evs.iter().enumerate() {
            arrival.push(e.clone());
            if i % late_every == 0 {
                // A duplicate, and an event an hour and more behind (late or too late).
                arrival.push(e.clone());
                let mut old = e.clone();
                old.event_id = format!("{}-old", e.event_id);
                old.event_time -= 61 * 60_000 + (i as i64) * 10_000;
                arrival.push(old);
            }
        }
        let plain = {
            let mut engine = Engine::new(WindowConfig::default());
            let mut out = Vec::new();
            for (offset, e) in arrival.iter().enumerate() {
                engine.process(e, offset as i64, &mut out);
            }
            engine.advance_watermark(i64::MAX / 2, &mut out);
            out
        };
        let mut engine = Engine::new(WindowConfig::default());
        let mut out = Vec::new();
        for (i, chunk) in arrival.chunks(batch).enumerate() {
            engine.prefetch(chunk);
            for (j, e) in chunk.iter().enumerate() {
                engine.process(e, (i * batch + j) as i64, &mut out);
            }
        }
        engine.advance_watermark(i64::MAX / 2, &mut out);
        // The same rows; their order within a watermark step follows each engine's hash maps,
        // which are seeded at random.
        let rows = |o: &[Output]| {
            let mut v: Vec<String> = o.iter().map(|x| format!("{x:?}")).collect();
            v.sort();
            v
        };
        prop_assert_eq!(rows(&plain), rows(&out));
    }
}

#[test]
fn state_is_bounded_by_the_lateness_horizon() {
    let mut engine = Engine::new(WindowConfig::default());
    let mut out = Vec::new();
    // Six hours of one event per second; a new set of 50 posts every hour.
    for i in 0..(6 * 3600) {
        let mut e = EngagementEvent::new(
            format!("e{i}"),
            Platform::Instagram,
            Kind::PostReaction,
            Action::Add,
            "a",
            T0 + i * 1000,
        );
        e.content_id = Some(format!("p{}-{}", i / 3600, i % 50));
        engine.process(&e, i, &mut out);
        out.clear();
    }
    // Panes of ~67 minutes (lateness + velocity span), 51 keys each, plus recent dedup ids,
    // plus the interactions of these posts (none has a publication time) held for as long as
    // their panes. Names of posts whose panes were evicted are forgotten: the account, this
    // hour's posts and those of the hours still within the horizon.
    let names = engine.interned_names();
    assert!(names <= 1 + 3 * 50, "{names} names interned after 6 hours");
    let entries = engine.state_entries();
    assert!(
        entries < 67 * 51 + 4000 + 67 * 60 + 100,
        "{entries} state entries after 6 hours"
    );
}

/// Arrival order with disorder well past the bounds (late corrections and too-late events),
/// spread over three hours so that windows, dedup entries and posts are evicted on the way.
fn disordered_history() -> impl Strategy<Value = Vec<EngagementEvent>> {
    (events(), prop::collection::vec(0i64..(3 * 3_600_000), 300)).prop_map(|(evs, shift)| {
        let mut v: Vec<EngagementEvent> = evs
            .into_iter()
            .enumerate()
            .map(|(i, mut e)| {
                // Stretch over three hours; posts publish along the way.
                e.event_time += shift[i % shift.len()];
                if let Some(p) = e.content_published_at.as_mut() {
                    *p += shift[(i / 7) % shift.len()] / 2;
                }
                e
            })
            .collect();
        // Mostly in order, with runs of late arrivals, and a few duplicates.
        v.sort_by_key(|e| e.event_time / 600_000);
        let dups: Vec<EngagementEvent> = v.iter().step_by(9).cloned().collect();
        for (i, d) in dups.into_iter().enumerate() {
            let at = (i * 13 + 5).min(v.len());
            v.insert(at, d);
        }
        v
    })
}

fn run(
    engine: &mut Engine,
    evs: &[EngagementEvent],
    from: usize,
    idle_at: &[usize],
    out: &mut Vec<Output>,
) {
    for (i, e) in evs.iter().enumerate().skip(from) {
        if idle_at.contains(&i) {
            // An idle partition: the watermark moves 3 minutes past the highest event time.
            let wm = evs[..i].iter().map(|e| e.event_time).max().unwrap_or(T0) + 180_000;
            engine.idle_advance(wm, out);
        }
        engine.process(e, i as i64, out);
    }
}

/// Outputs with the rows of each watermark step (same emitted_at, consecutive) sorted.
fn steps(out: Vec<Output>) -> Vec<Output> {
    let at = |o: &Output| match o {
        Output::Rollup(r) => Some(r.emitted_at),
        Output::TooLate { .. } => None,
    };
    let mut res: Vec<Output> = Vec::with_capacity(out.len());
    let mut group: Vec<Output> = Vec::new();
    for o in out {
        if group
            .last()
            .is_some_and(|g| at(g).is_none() || at(g) != at(&o))
        {
            group.sort_by_cached_key(|g| format!("{g:?}"));
            res.append(&mut group);
        }
        group.push(o);
    }
    group.sort_by_cached_key(|g| format!("{g:?}"));
    res.append(&mut group);
    res
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(150))]

    /// A restart anywhere: an engine restored from a checkpoint and fed the input from the
    /// checkpoint's restore point emits, after the checkpoint, exactly the rows (revisions and
    /// emitted_at included) and dead letters the uninterrupted engine emits.
    #[test]
    fn restore_from_a_checkpoint_continues_identically(
        evs in disordered_history(),
        cut in 0.0f64..1.0,
        idle in prop::collection::vec(0.0f64..1.0, 0..4),
    ) {
        let n = evs.len();
        let k = ((n as f64) * cut) as usize;
        let idle_at: Vec<usize> = idle.iter().map(|f| ((n as f64) * f) as usize).collect();
        let cfg = WindowConfig::default();

        // Uninterrupted.
        let mut whole = Engine::new(cfg);
        let mut before = Vec::new();
        run(&mut whole, &evs[..k], 0, &idle_at, &mut before);
        let cp = whole.checkpoint();
        // The first-hour changelog up to k (latest value per key).
        let mut changes = banter_stream::changelog::Changes::new();
        whole.write_changes(&mut changes).unwrap();
        let posts: std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>> =
            changes.into_iter().map(|(_, c)| (c.key, c.value)).collect();
        let mut after = Vec::new();
        run(&mut whole, &evs, k, &idle_at, &mut after);
        whole.advance_watermark(i64::MAX / 2, &mut after);

        // Restored at k: replay [restore point, k) discarding outputs, then continue.
        let mut restored = Engine::restored(cfg, &cp);
        for (key, v) in &posts {
            if let Some(value) = v {
                let entry = Entry { store: Store::Windows, key, value };
                restored.restore_entry(&entry).unwrap();
            }
        }
        restored.restored();
        let from = Engine::replay_from(&cp) as usize;
        prop_assert!(from <= k);
        let mut discarded = Vec::new();
        for (i, e) in evs.iter().enumerate().take(k).skip(from) {
            restored.process(e, i as i64, &mut discarded);
        }
        restored.finish_replay(&mut discarded);
        prop_assert_eq!(restored.checkpoint(), cp);
        let mut again = Vec::new();
        run(&mut restored, &evs, k, &idle_at, &mut again);
        restored.advance_watermark(i64::MAX / 2, &mut again);
        // The rows of one watermark step may come in another order after a restore.
        let (after, again) = (steps(after), steps(again));
        if let Some(i) = (0..after.len().max(again.len())).find(|&i| after.get(i) != again.get(i)) {
            prop_assert!(false, "first difference at row {i} of {}/{} (from {from}, cut {k} of {n}):\n  uninterrupted {:?}\n  restored      {:?}", after.len(), again.len(), after.get(i), again.get(i));
        }
    }
}
