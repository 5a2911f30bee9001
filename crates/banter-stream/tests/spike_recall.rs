//! Spike detection against the generator's injected spikes: the pipeline runs in-process
//! over a long seeded workload (hours of event time, delivered with the generator's faults),
//! and every alert is matched against the spikes the generator injected.
//!
//! The run is made twice: without and with early firing (the pipeline's provisional rows shown
//! every second of event time, as `banter stream` shows them every second of wall time). Both
//! must emit the same final alerts; the early ones must all be confirmed.
//!
//! Figures (precision, recall, time to fire) are printed; run with `--nocapture` to see them.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::BTreeMap;

use banter_model::{AlertState, SpikeAlert};
use banter_stream::cta::Matcher;
use banter_stream::{Outputs, Pipeline, PipelineConfig, HOUR, MINUTE};
use banter_workload::{Spike, Workload, WorkloadConfig};

/// The out-of-orderness: a minute closes (and its alerts fire) once the highest event time
/// seen is this far past its end.
const OUT_OF_ORDERNESS: i64 = MINUTE;

/// Runs the pipeline over the workload; returns the alerts, and how many fired early were
/// withdrawn. With `early`, the open windows are shown every second of event time (the highest
/// seen: the pipeline's clock here), each showing stamped with it.
fn detect(w: &Workload, early: bool) -> (Vec<SpikeAlert>, u64) {
    let cfg = PipelineConfig::default();
    assert_eq!(cfg.window.out_of_orderness_ms, OUT_OF_ORDERNESS);
    let mut pipeline = Pipeline::new(&cfg, Matcher::default());
    // Every output of the whole history, then of event time moving on past its end.
    let mut out = Outputs::default();
    let mut shown = i64::MIN;
    for i in 0..w.len() {
        pipeline.process(&w.event(i), i as i64, &mut out);
        let now = pipeline.max_event_time().unwrap();
        if early && now >= shown + 1000 {
            pipeline.provisional(now, &mut out);
            shown = now;
        }
    }
    let end = pipeline.max_event_time().unwrap() + 3 * HOUR;
    pipeline.idle_advance(end, &mut out);
    (out.alerts, pipeline.early_alerts().withdrawn)
}

/// When an alert reached the alerts topic, by the clock of the highest event time seen: an
/// early one when it was shown, a closed minute's when the minute closed.
fn fired_at(a: &SpikeAlert) -> i64 {
    if a.revision == 0 {
        a.emitted_at
    } else {
        a.window_end + OUT_OF_ORDERNESS
    }
}

struct Score {
    spikes: usize,
    detected: usize,
    once: usize,
    resolved_after: usize,
    within_3: usize,
    post_alerts: usize,
    post_true: usize,
    account_alerts: usize,
    account_true: usize,
    latencies: Vec<i64>,
    /// From the spike's start to the first alert of it on the topic (early or not), by the
    /// clock of the highest event time seen.
    to_topic: Vec<i64>,
    /// Spikes whose alert fired early.
    early: usize,
    /// From the spike's end to its alert's end (`ended_at`, the first minute back to normal).
    overrun: Vec<i64>,
}

fn score(spikes: &[Spike], alerts: &[SpikeAlert]) -> Score {
    // The closed minutes' FIRING alerts; the early ones only for when the alert went out.
    let firing: Vec<&SpikeAlert> = alerts
        .iter()
        .filter(|a| a.state == AlertState::Firing && a.revision > 0)
        .collect();
    let early: BTreeMap<&str, &SpikeAlert> = alerts
        .iter()
        .filter(|a| a.state == AlertState::Firing && a.revision == 0)
        .map(|a| (a.alert_id.as_str(), a))
        .collect();
    let resolved: BTreeMap<&str, &SpikeAlert> = alerts
        .iter()
        .filter(|a| a.state == AlertState::Resolved)
        .map(|a| (a.alert_id.as_str(), a))
        .collect();
    let overlaps = |a: &SpikeAlert, s: &Spike| {
        a.account_id == s.account_id
            && a.started_at >= s.start_ms - 2 * MINUTE
            && a.started_at < s.end_ms
    };
    let mut sc = Score {
        spikes: spikes.len(),
        detected: 0,
        once: 0,
        resolved_after: 0,
        within_3: 0,
        post_alerts: 0,
        post_true: 0,
        account_alerts: 0,
        account_true: 0,
        latencies: Vec::new(),
        to_topic: Vec::new(),
        early: 0,
        overrun: Vec::new(),
    };
    for s in spikes {
        let mine: Vec<&&SpikeAlert> = firing
            .iter()
            .filter(|a| a.content_id.as_deref() == Some(s.content_id.as_str()) && overlaps(a, s))
            .collect();
        if let Some(first) = mine.first() {
            sc.detected += 1;
            let latency = first.window_end - s.start_ms;
            sc.latencies.push(latency);
            let sent = match early.get(first.alert_id.as_str()) {
                Some(e) => {
                    sc.early += 1;
                    fired_at(e)
                }
                None => fired_at(first),
            };
            sc.to_topic.push(sent - s.start_ms);
            if latency <= 3 * MINUTE {
                sc.within_3 += 1;
            } else {
                eprintln!("slow ({} min) {s:?}", latency / MINUTE);
            }
            if mine.len() == 1 {
                sc.once += 1;
            }
            let ended = resolved
                .get(first.alert_id.as_str())
                .and_then(|r| r.ended_at);
            if let Some(e) = ended {
                sc.overrun.push(e - s.end_ms);
            }
            if ended.is_some_and(|e| e >= s.end_ms - MINUTE) {
                sc.resolved_after += 1;
            } else {
                eprintln!(
                    "resolved early {:?} {s:?}",
                    resolved
                        .get(first.alert_id.as_str())
                        .map(|r| (r.ended_at, r.window_start))
                );
            }
        } else {
            eprintln!("missed {s:?}");
        }
    }
    for a in &firing {
        let hit = spikes
            .iter()
            .any(|s| overlaps(a, s) && a.content_id.as_deref().is_none_or(|c| c == s.content_id));
        if a.content_id.is_some() {
            sc.post_alerts += 1;
            sc.post_true += usize::from(hit);
        } else {
            sc.account_alerts += 1;
            sc.account_true += usize::from(hit);
        }
        if !hit {
            eprintln!(
                "false alarm {} z={:.1} x={} mean={:.1} sd={:.1}",
                a.alert_id, a.z_score, a.observed, a.baseline_mean, a.baseline_stddev
            );
        }
    }
    sc
}

#[test]
fn injected_spikes_fire_once_and_resolve() {
    // Longer runs for the figures: BANTER_SPIKE_ACCOUNTS=400 BANTER_SPIKE_HOURS=24.
    let env = |k: &str, d: u32| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let w = Workload::generate(WorkloadConfig {
        seed: u64::from(env("BANTER_SPIKE_SEED", 7)),
        accounts: env("BANTER_SPIKE_ACCOUNTS", 120),
        duration_ms: i64::from(env("BANTER_SPIKE_HOURS", 12)) * 60 * MINUTE,
        spike_share: 0.3,
        ..WorkloadConfig::default()
    });
    let (closed_only, withdrawn) = detect(&w, false);
    assert_eq!(withdrawn, 0);
    let (alerts, withdrawn) = detect(&w, true);
    let final_alerts: Vec<SpikeAlert> = alerts.iter().filter(|a| a.revision > 0).cloned().collect();
    // Within one minute the order of accounts is a hash map's: compared in a fixed order.
    let sorted = |v: &[SpikeAlert]| {
        let mut v = v.to_vec();
        v.sort_by(|a, b| {
            (a.window_start, &a.alert_id, a.revision).cmp(&(
                b.window_start,
                &b.alert_id,
                b.revision,
            ))
        });
        v
    };
    let (final_alerts, closed_only) = (sorted(&final_alerts), sorted(&closed_only));
    if let Some(i) = (0..final_alerts.len().max(closed_only.len()))
        .find(|&i| final_alerts.get(i) != closed_only.get(i))
    {
        panic!(
            "early firing changed the closed minutes' alerts: {} and {} alerts; the first difference, at {i}: {:#?} against {:#?}",
            final_alerts.len(),
            closed_only.len(),
            final_alerts.get(i),
            closed_only.get(i)
        );
    }
    let early: Vec<&SpikeAlert> = alerts.iter().filter(|a| a.revision == 0).collect();
    assert_eq!(withdrawn, 0, "early alerts withdrawn");
    for e in &early {
        let confirmed = final_alerts
            .iter()
            .find(|a| a.alert_id == e.alert_id && a.state == AlertState::Firing)
            .unwrap_or_else(|| panic!("early alert not confirmed: {e:?}"));
        assert_eq!(
            (e.started_at, e.content_id.as_ref()),
            (confirmed.started_at, confirmed.content_id.as_ref()),
            "fired early with its onset"
        );
        // The closed minutes fire it in the same minute (then with at least the count so far),
        // or sooner: a minute's final count may make its hit fire alone.
        assert!(
            confirmed.window_start <= e.window_start,
            "{e:?} {confirmed:?}"
        );
        if confirmed.window_start == e.window_start {
            assert!(e.observed <= confirmed.observed && e.z_score <= confirmed.z_score);
        }
        assert!(
            e.emitted_at < fired_at(confirmed),
            "early: before its minute closed"
        );
    }
    let sc = score(&w.expected.spikes, &closed_only);
    let sc_early = score(&w.expected.spikes, &alerts);
    if std::env::var("BANTER_SPIKE_AGES").is_ok() {
        for a in closed_only.iter().filter(|a| a.state == AlertState::Firing) {
            if let Some(p) = w
                .posts
                .iter()
                .find(|p| Some(&p.content_id) == a.content_id.as_ref())
            {
                let hit = w.expected.spikes.iter().any(|s| {
                    s.content_id == p.content_id
                        && a.started_at >= s.start_ms - 2 * MINUTE
                        && a.started_at < s.end_ms
                });
                println!(
                    "age {} min amplitude {:.0} true {hit} z {:.1} x {} mean {:.1}",
                    (a.started_at - p.published_at) / MINUTE,
                    p.amplitude,
                    a.z_score,
                    a.observed,
                    a.baseline_mean
                );
            }
        }
    }
    let pct_of = |v: &[i64], q: f64| {
        let mut lat = v.to_vec();
        lat.sort_unstable();
        lat.get(((lat.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0) as f64
            / 60_000.0
    };
    let pct = |q: f64| pct_of(&sc.latencies, q);
    let precision = sc.post_true as f64 / sc.post_alerts.max(1) as f64;
    let recall = sc.detected as f64 / sc.spikes.max(1) as f64;
    println!(
        "deliveries {} spikes {} detected {} (recall {:.3}) once {} within 3 min {} resolved after end {} (ended after the spike's end: p50 {:.0} p90 {:.0} max {:.0} min); post alerts {} true {} (precision {:.3}); account alerts {} true {}; minutes to fire p50 {:.0} p90 {:.0} max {:.0}",
        w.len(), sc.spikes, sc.detected, recall, sc.once, sc.within_3, sc.resolved_after,
        pct_of(&sc.overrun, 0.5), pct_of(&sc.overrun, 0.9), pct_of(&sc.overrun, 1.0),
        sc.post_alerts, sc.post_true, precision, sc.account_alerts, sc.account_true,
        pct(0.5), pct(0.9), pct(1.0)
    );
    let secs = |v: &[i64], q: f64| pct_of(v, q) * 60.0;
    println!(
        "on the alerts topic after the spike's start (highest event time seen): closed minutes only p50 {:.0} s p90 {:.0} s; with early firing p50 {:.0} s p90 {:.0} s max {:.0} s ({} of {} spikes fired early, {} early alerts in all, none withdrawn)",
        secs(&sc.to_topic, 0.5), secs(&sc.to_topic, 0.9),
        secs(&sc_early.to_topic, 0.5), secs(&sc_early.to_topic, 0.9), secs(&sc_early.to_topic, 1.0),
        sc_early.early, sc_early.detected, early.len()
    );
    assert!(
        sc.spikes >= 50,
        "too few injected spikes to judge: {}",
        sc.spikes
    );
    // Spikes on posts in their first quarter hour, on their own.
    let young: Vec<&Spike> = w
        .expected
        .spikes
        .iter()
        .filter(|s| {
            w.posts
                .iter()
                .any(|p| p.content_id == s.content_id && s.start_ms - p.published_at < 15 * MINUTE)
        })
        .collect();
    let young_detected = young
        .iter()
        .filter(|s| {
            closed_only.iter().any(|a| {
                a.state == AlertState::Firing
                    && a.content_id.as_deref() == Some(s.content_id.as_str())
                    && a.started_at >= s.start_ms - 2 * MINUTE
                    && a.started_at < s.end_ms
            })
        })
        .count();
    println!(
        "spikes on posts younger than 15 minutes: {young_detected} of {} detected",
        young.len()
    );
    assert!(young.len() >= 10, "{} young spikes", young.len());
    assert!(recall >= 0.97, "recall {recall:.3}");
    assert!(
        young_detected as f64 >= 0.95 * young.len() as f64,
        "young spikes: {young_detected} of {}",
        young.len()
    );
    assert!(precision >= 0.97, "precision of post alerts {precision:.3}");
    assert_eq!(
        sc.once, sc.detected,
        "a detected spike fired more than once"
    );
    assert!(
        sc.within_3 as f64 >= 0.9 * sc.detected as f64,
        "only {} of {} spikes fired within 3 minutes",
        sc.within_3,
        sc.detected
    );
    assert!(
        sc.resolved_after as f64 >= 0.9 * sc.detected as f64,
        "only {} of {} alerts resolved at the end of their spike",
        sc.resolved_after,
        sc.detected
    );
    // Every FIRING has its RESOLVED (the run ends hours after the last event).
    let firing = closed_only
        .iter()
        .filter(|a| a.state == AlertState::Firing)
        .count();
    let resolved = closed_only
        .iter()
        .filter(|a| a.state == AlertState::Resolved)
        .count();
    assert_eq!(firing, resolved);
}
