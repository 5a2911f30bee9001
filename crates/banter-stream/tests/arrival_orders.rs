//! DESIGN.md: "Every metric must come out the same for any arrival order of the same events
//! within the lateness bound." A property test over arrival orders, the pipeline in-process as
//! `banter stream` runs it (batches committed with their changelog and checkpoint, a kill
//! anywhere dropping the uncommitted batch, the partition handed back restored from what was
//! committed), compared with the generator's truth by the check `banter verify` runs.
//!
//! On top of what the generator delivers by default (publications after their first
//! interactions, funnel stages before their triggers, moderation before its comment, DMs of a
//! thread out of order, redeliveries hours later with a new time, too-late events) each case
//! adds, seeded:
//! * more disorder: every delivery moved later by up to `jitter` seconds;
//! * a reaction taken back and given again by the same person at the same second (distinct
//!   event ids, as the normalizer makes them), delivered in any order around the first;
//! * events dated ahead of their receipt (a skewed clock): delivered up to 4 minutes before
//!   their event time;
//! * kills and hand-backs at any point;
//! * the open windows shown every few deliveries, or never, as `banter stream` shows them
//!   every `stream.provisional_interval_ms`: provisional rows (replaced by the final ones, as
//!   the highest revision of a row wins) and the posts' spike alerts fired early (each must be
//!   confirmed or withdrawn).
//!
//! The same events in any such order give the same minutes, velocity, engagers, first-hour
//! signals, time-to-N, funnels and conversations. Spike alerts are compared too when the case
//! adds no lateness of its own: a minute is judged once when it closes, so an event made late
//! by extra jitter can change a judgement (documented; `spike_recall` measures detection).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::collections::BTreeSet;

use banter_model::{Action, EngagementEvent, Kind};
use banter_stream::changelog::Store;
use banter_stream::window::Checkpoint;
use banter_stream::{Outputs, Pipeline, PipelineConfig, Saved, DAY, MINUTE};
use banter_workload::check::{compare, names, Observed};
use banter_workload::{Generated, Workload, WorkloadConfig};
use proptest::prelude::*;

/// Events per committed batch.
const BATCH: usize = 40;

/// A small deterministic generator for the case's choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

/// The deliveries of `w` in a new order: (delivery time, event), sorted by delivery time.
fn arrivals(
    w: &Workload,
    rng: &mut Rng,
    jitter_ms: i64,
    flips: usize,
    ahead: usize,
) -> Vec<EngagementEvent> {
    let too_late: BTreeSet<String> = Generated::of(w).expected.too_late.into_iter().collect();
    let mut seen = BTreeSet::new();
    let mut timed: Vec<(i64, usize, EngagementEvent)> = Vec::with_capacity(w.len() + 2 * flips);
    // Candidates: first deliveries of events that are not too late.
    let mut reactions = Vec::new();
    let mut others = Vec::new();
    for i in 0..w.len() {
        let e = w.event(i);
        let at = w.deliver_at(i) + rng.below(jitter_ms as u64 + 1) as i64;
        let first = seen.insert(e.event_id.clone()) && !too_late.contains(&e.event_id);
        if first && e.kind == Kind::PostReaction && e.action == Action::Add {
            reactions.push(timed.len());
        } else if first && e.event_time <= at {
            others.push(timed.len());
        }
        timed.push((at, i, e));
    }
    // The same person takes the reaction back and gives it again within the same second.
    for _ in 0..flips.min(reactions.len()) {
        let k = reactions.swap_remove(rng.below(reactions.len() as u64) as usize);
        let (at, i, e) = timed[k].clone();
        for (suffix, action) in [("undo", Action::Remove), ("redo", Action::Add)] {
            let mut x = e.clone();
            x.event_id = format!("{}#{suffix}", e.event_id);
            x.action = action;
            let at = at + rng.below(jitter_ms as u64 + 1) as i64;
            x.received_at = at;
            timed.push((at, i, x));
        }
    }
    // Clocks ahead: delivered (and received) up to 4 minutes before the event time.
    for _ in 0..ahead.min(others.len()) {
        let k = others.swap_remove(rng.below(others.len() as u64) as usize);
        let early = 30_000 + rng.below(210_000) as i64;
        timed[k].0 = timed[k].2.event_time - early;
    }
    for (at, _, e) in &mut timed {
        e.received_at = *at;
    }
    timed.sort_by_key(|(at, i, _)| (*at, *i));
    timed.into_iter().map(|(_, _, e)| e).collect()
}

/// Runs the pipeline over `events` as the Kafka runner does: committed batches, kills at
/// `kills` (input positions) restoring from the last commit; with `show` above 0 the open
/// windows are shown (provisional rows, early spike alerts) after every `show` events, by the
/// clock of the last delivery.
fn run(w: &Workload, events: &[EngagementEvent], kills: &BTreeSet<usize>, show: usize) -> Observed {
    run_with(w, events, kills, show, None, |_, _| {})
}

/// [`run`], the first kill restoring from `restore_from` when given (a changelog an
/// earlier run committed; the commits after it are laid over it, as compaction would, and
/// later kills restore from that), telling `committed` what was committed after each batch
/// (the input position after it).
fn run_with(
    w: &Workload,
    events: &[EngagementEvent],
    kills: &BTreeSet<usize>,
    show: usize,
    mut restore_from: Option<&Saved>,
    mut committed: impl FnMut(usize, &Saved),
) -> Observed {
    let cfg = PipelineConfig::default();
    let matcher = || common::matcher(w);
    let mut p = Pipeline::new(&cfg, matcher());
    let mut saved = Saved::default();
    let mut observed = Observed::default();
    let mut too_late = 0u64;
    let mut batch = Outputs::default();
    let mut commit =
        |p: &mut Pipeline, batch: &mut Outputs, saved: &mut Saved, o: &mut Observed| {
            too_late += common::observe(batch, o);
            // As the runner: a batch that only replayed changes no state and commits none.
            if p.replaying() {
                return;
            }
            let mut changes = banter_stream::changelog::Changes::new();
            p.write_changes(&mut changes).unwrap();
            for (store, c) in changes {
                match c.value {
                    Some(v) => saved.entries.insert((store, c.key), v),
                    None => saved.entries.remove(&(store, c.key)),
                };
            }
            saved.checkpoint = Some(p.checkpoint());
        };
    let mut kills = kills.clone();
    let mut i = 0;
    let mut in_batch = 0;
    while i < events.len() {
        if kills.remove(&i) {
            // Killed: the open batch is lost; the partition comes back from the last commit.
            batch.clear();
            in_batch = 0;
            if let Some(from) = restore_from.take() {
                saved = from.clone();
            }
            let (restored, from) = Pipeline::restore(&cfg, matcher(), &saved).unwrap();
            p = restored;
            i = from.map_or(0, |f| f as usize);
            continue;
        }
        p.process(&events[i], i as i64, &mut batch);
        if show > 0 && (i + 1) % show == 0 {
            p.provisional(events[i].received_at, &mut batch);
        }
        i += 1;
        in_batch += 1;
        if in_batch == BATCH || i == events.len() {
            p.end_replay_at(i as i64);
            commit(&mut p, &mut batch, &mut saved, &mut observed);
            committed(i, &saved);
            in_batch = 0;
        }
    }
    let end = p.max_event_time().unwrap() + 3 * DAY;
    p.idle_advance(end, &mut batch);
    commit(&mut p, &mut batch, &mut saved, &mut observed);
    observed.too_late = Some(too_late);
    observed
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn every_metric_is_the_same_for_any_arrival_order(
        seed in 1u64..100_000,
        order in any::<u64>(),
        jitter_s in prop_oneof![Just(0i64), 1i64..=45],
        flips in 0usize..25,
        ahead in 0usize..4,
        kills in prop::collection::vec(0.0f64..1.0, 0..3),
        show in prop_oneof![Just(0usize), 1usize..60],
    ) {
        let w = Workload::generate(WorkloadConfig {
            seed,
            accounts: 10,
            duration_ms: 4 * 60 * MINUTE,
            ..WorkloadConfig::default()
        });
        let mut rng = Rng(order);
        let events = arrivals(&w, &mut rng, jitter_s * 1000, flips, ahead);
        let kills: BTreeSet<usize> =
            kills.iter().map(|f| (f * events.len() as f64) as usize).collect();
        let o = run(&w, &events, &kills, show);
        let report = compare(&Generated::of(&w), &o);
        let judged_as_delivered = jitter_s == 0 && flips == 0;
        let failing: Vec<&str> = report
            .metrics
            .iter()
            .filter(|m| !m.ok)
            .map(|m| m.name)
            .filter(|n| judged_as_delivered || (*n != names::SPIKES && *n != names::SPIKE_PRECISION))
            .collect();
        prop_assert!(
            failing.is_empty(),
            "seed {seed}, order {order}, jitter {jitter_s} s, {flips} flips, {ahead} ahead, \
             kills at {kills:?}, shown every {show} events, {} deliveries:\n{report}",
            events.len()
        );
    }
}

/// Cases proptest found (in the delivered order), each with one spike the detector got wrong.
/// * Seed 65149: the spike (16.8 extra a minute on a post at about 3) dips to 11 in its 8th
///   minute, z 2.84 against the post's level. Before `spike.resolve_z` the dip was "not
///   unusual": folded into the level, which made the 9th minute's 16 not unusual either, and the
///   alert ended 2 minutes before the spike.
/// * Seed 94094: a spike of 32 a minute from the 5th minute of a post with 1 and 3
///   interactions in its first minutes and none in the others. Its launch level counted only
///   the minutes with a row (one), too few to judge by, so the spike became the launch level
///   and was never detected; the minutes without a row count 0, as they do for a baseline.
#[test]
fn spikes_found_wrong_by_the_property_test_are_detected_and_resolved_after_their_end() {
    for seed in [65149, 94094] {
        let w = Workload::generate(WorkloadConfig {
            seed,
            accounts: 10,
            duration_ms: 4 * 60 * MINUTE,
            ..WorkloadConfig::default()
        });
        let events = arrivals(&w, &mut Rng(0), 0, 0, 0);
        let report = compare(&Generated::of(&w), &run(&w, &events, &BTreeSet::new(), 0));
        assert!(
            report.metrics.iter().all(|m| m.ok),
            "seed {seed}, {} deliveries:\n{report}",
            events.len()
        );
    }
}

/// A partition's changelog and checkpoint as each checkpoint format wrote them
/// (`tests/changelogs/format<N>.txt`: 2, values as JSON; 3, values binary) restore into a
/// pipeline that goes on as if never stopped: every metric as the generator's truth has it.
/// Each file is what a run of this workload committed at the batch whose state had entries of
/// the most tables (the most entries among those); a version that changes a stored type's
/// layout without a new marker cannot read them. `BANTER_BLESS=1` writes the current format's
/// file (only when it is new: the files of released formats stay as written).
#[test]
fn changelogs_of_every_format_restore_and_go_on() {
    let w = Workload::generate(WorkloadConfig {
        seed: 20_261_207,
        accounts: 6,
        duration_ms: 4 * 60 * MINUTE,
        cta_share: 0.5,
        spike_share: 0.5,
        ..WorkloadConfig::default()
    });
    let events = arrivals(&w, &mut Rng(0), 0, 0, 0);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/changelogs");
    let current = dir.join(format!("format{}.txt", Checkpoint::FORMAT));
    if std::env::var("BANTER_BLESS").is_ok_and(|v| v == "1") && !current.exists() {
        let mut most = ((0, 0), String::new());
        run_with(&w, &events, &BTreeSet::new(), 0, None, |_, saved| {
            let tables: BTreeSet<(Store, u8)> =
                saved.entries.keys().map(|(s, k)| (*s, k[0])).collect();
            if (tables.len(), saved.entries.len()) > most.0 {
                most = ((tables.len(), saved.entries.len()), write_saved(saved));
            }
        });
        let text = most.1;
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&current, text).unwrap();
    }
    let never_stopped = run(&w, &events, &BTreeSet::new(), 0);
    let mut formats = Vec::new();
    for file in std::fs::read_dir(&dir).unwrap() {
        let path = file.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let saved = read_saved(&std::fs::read_to_string(&path).unwrap());
        let cp = saved.checkpoint.as_ref().unwrap();
        assert_eq!(name, format!("format{}.txt", cp.format));
        Checkpoint::readable(cp.format).unwrap_or_else(|e| panic!("{name}: {e}"));
        let tables: BTreeSet<(Store, char)> = saved
            .entries
            .keys()
            .map(|(s, k)| (*s, k[0] as char))
            .collect();
        assert_eq!(tables, TABLES.into(), "{name}: an entry of every table");
        // Killed where the file was committed, and again later: restored then from the file
        // with the later commits laid over it (format 2's JSON values and binary ones mixed).
        let at = cp.next_offset as usize;
        assert!(at + 200 < events.len(), "{name}: committed before the end");
        let kills = BTreeSet::from([at, at + 150]);
        // What the second kill restores from: the file's entries (its dedup seed) with commits
        // of the restored run laid over them.
        let mut laid_over: Option<Saved> = None;
        let restored = run_with(&w, &events, &kills, 0, Some(&saved), |i, s| {
            if i > at && i <= at + 150 {
                laid_over = Some(s.clone());
            }
        });
        let laid_over = laid_over.expect("commits between the kills");
        let seed = |s: &Saved| s.checkpoint.as_ref().unwrap().id_seed;
        assert_eq!(seed(&laid_over), seed(&saved), "{name}: laid over the file");
        assert!(laid_over.checkpoint.as_ref().unwrap().next_offset as usize > at);
        let binary = |s: &Saved| {
            s.entries
                .values()
                .filter(|v| v.first() == Some(&banter_stream::changelog::BINARY_V1))
                .count()
        };
        if cp.format == 2 {
            let b = binary(&laid_over);
            assert!(
                binary(&saved) == 0 && b > 0,
                "{name}: binary values laid over JSON"
            );
            assert!(b < laid_over.entries.len(), "{name}: JSON values left");
        } else {
            assert_eq!(
                binary(&laid_over),
                laid_over.entries.len(),
                "{name}: all binary"
            );
        }
        // Spike detection itself is measured by `spike_recall`.
        let report = compare(&Generated::of(&w), &restored);
        assert!(
            report
                .metrics
                .iter()
                .all(|m| m.ok || m.name == names::SPIKES || m.name == names::SPIKE_PRECISION),
            "restored from {name}:\n{report}"
        );
        // Row for row and alert for alert as a run never stopped (the dedup seed, which is
        // the checkpoint's, changes no output).
        assert_eq!(
            format!("{restored:#?}"),
            format!("{never_stopped:#?}"),
            "restored from {name}"
        );
        formats.push(cp.format);
    }
    formats.sort_unstable();
    assert_eq!(
        formats,
        (2..=Checkpoint::FORMAT).collect::<Vec<_>>(),
        "a file per format this version reads (BANTER_BLESS=1 writes the current one)"
    );
}

/// The tables every fixture holds, by store and tag (those of formats 2 and 3).
const TABLES: [(Store, char); 17] = [
    (Store::Windows, 'd'),
    (Store::Windows, 'f'),
    (Store::Windows, 'p'),
    (Store::Spikes, 'k'),
    (Store::Spikes, 'm'),
    (Store::Spikes, 'p'),
    (Store::Funnels, 'a'),
    (Store::Funnels, 'm'),
    (Store::Funnels, 'q'),
    (Store::Funnels, 'w'),
    (Store::Conversations, 'e'),
    (Store::Conversations, 'i'),
    (Store::Conversations, 'm'),
    (Store::Conversations, 'r'),
    (Store::Conversations, 't'),
    (Store::Conversations, 'w'),
    (Store::Conversations, 'x'),
];

/// A committed state as text: the checkpoint's JSON, then one line per entry (store, key and
/// value in hex).
fn write_saved(saved: &Saved) -> String {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let mut text = format!(
        "checkpoint {}\n",
        serde_json::to_string(saved.checkpoint.as_ref().unwrap()).unwrap()
    );
    for ((store, k), v) in &saved.entries {
        text += &format!("{} {} {}\n", store.name(), hex(k), hex(v));
    }
    text
}

fn read_saved(text: &str) -> Saved {
    let unhex = |s: &str| -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    };
    let mut saved = Saved::default();
    for line in text.lines() {
        if let Some(cp) = line.strip_prefix("checkpoint ") {
            saved.checkpoint = Some(serde_json::from_str(cp).unwrap());
        } else {
            let mut f = line.split(' ');
            let (store, k, v) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
            let store = Store::from_name(store).unwrap();
            saved.entries.insert((store, unhex(k)), unhex(v));
        }
    }
    saved
}
