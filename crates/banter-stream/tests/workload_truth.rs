//! Every metric on generated workloads, the pipeline in-process on the delivered order
//! (duplicates, disorder, late and too-late events, publications after the first
//! interactions, funnel stages before their triggers, moderation before its comment,
//! redeliveries hours later with a new time): compared with the generator's truth, written
//! from DESIGN.md's definitions, by the same check `banter verify` runs after
//! `scripts/run.sh` ([`banter_workload::check`]).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use banter_stream::{Outputs, Pipeline, PipelineConfig, DAY};
use banter_workload::check::{compare, Observed, Report};
use banter_workload::{Generated, Workload, WorkloadConfig};

/// Runs the pipeline over `w` in delivery order, then lets event time move on past its end.
fn run(w: &Workload) -> (Report, Observed) {
    let mut pipeline = Pipeline::new(&PipelineConfig::default(), common::matcher(w));
    let mut out = Outputs::default();
    let mut o = Observed::default();
    let mut too_late = 0;
    for i in 0..w.len() {
        pipeline.process(&w.event(i), i as i64, &mut out);
        too_late += common::observe(&mut out, &mut o);
    }
    let end = pipeline.max_event_time().unwrap() + 3 * DAY;
    pipeline.idle_advance(end, &mut out);
    too_late += common::observe(&mut out, &mut o);
    o.too_late = Some(too_late);
    (compare(&Generated::of(w), &o), o)
}

#[test]
fn every_metric_equals_the_generators_truth() {
    for (seed, accounts, hours) in [(3, 40, 6), (5, 24, 4), (17, 60, 8)] {
        let w = Workload::generate(WorkloadConfig {
            seed,
            accounts,
            duration_ms: hours * 3_600_000,
            ..WorkloadConfig::default()
        });
        let (report, _) = run(&w);
        println!("seed {seed}, {} deliveries:\n{report}", w.len());
        assert!(report.ok(), "seed {seed}:\n{report}");
        // Every metric had something to compare.
        for m in &report.metrics {
            assert!(
                m.compared > 0,
                "seed {seed}: nothing compared for {}",
                m.name
            );
        }
    }
}
