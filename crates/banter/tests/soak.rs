//! The fault-injection soak (`banter_testkit::soak`) on the local stack's replicated Kafka:
//! roles, brokers, ClickHouse and Alertmanager killed, frozen and stopped at random moments
//! while live traffic flows; every metric must equal the generator's truth at the end and
//! Alertmanager must agree with ClickHouse. The short mode runs with the tests (a few
//! minutes); `scripts/soak.sh` runs the long one. A failure prints the seed:
//! `BANTER_SOAK_SEED=N scripts/soak.sh` replays the same schedule.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use banter_testkit::soak::{run, soak_dir, Options};

/// `BANTER_SOAK_SEED`, else `default` (the tests' fixed schedule) or the clock.
fn seed(default: Option<u64>) -> u64 {
    std::env::var("BANTER_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .or(default)
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(7, |d| d.as_secs())
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_soak_loses_and_doubles_nothing() {
    // A fixed schedule in the test run (seed 11); BANTER_SOAK_SEED replays another.
    let seed = seed(Some(11));
    let dir = soak_dir("banter-soak");
    eprintln!("soak seed {seed}, files in {}", dir.display());
    let report = run(Options::short(seed, dir)).await;
    eprintln!("{}", report.summary());
    assert!(
        report.injected.values().sum::<u32>() >= 6,
        "{}",
        report.summary()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the long soak: scripts/soak.sh"]
async fn long_soak_loses_and_doubles_nothing() {
    let seed = seed(None);
    let minutes = std::env::var("BANTER_SOAK_MINUTES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(35);
    let dir = soak_dir("banter-soak-long");
    eprintln!(
        "soak seed {seed}, {minutes} minutes, files in {}",
        dir.display()
    );
    let report = run(Options::long(seed, minutes, dir)).await;
    println!("{}", report.summary());
}
