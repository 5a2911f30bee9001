//! The generator's truth against what the pipeline wrote: the expected aggregates
//! (`banter generate --expected`, a [`Generated`]) compared with everything read from the
//! rollups and alerts topics or from ClickHouse, every metric, by the check `banter verify`
//! runs ([`banter_workload::check`]). The `*_match` functions poll until every metric is
//! equal and fail with the differing cells.

use std::path::Path;
use std::time::{Duration, Instant};

use banter::Config;
use banter_sink::ClickHouse;
use banter_workload::check::{compare, Observed, Report};
use banter_workload::Generated;

use crate::readers::{Alerts, Rollups};

/// The expected aggregates written to `dir/expected.json` by the generator.
pub fn read_expected(dir: &Path) -> Generated {
    Generated::read(&dir.join("expected.json")).unwrap_or_else(|e| panic!("{e}"))
}

/// The workload of `x` exercises every metric the checks compare.
fn assert_exercises_everything(x: &Generated) {
    let e = &x.expected;
    assert!(!e.spikes.is_empty(), "the workload should inject spikes");
    assert!(!e.funnels.is_empty(), "the workload should run CTA funnels");
    assert!(
        !e.too_late.is_empty(),
        "the workload should deliver too late"
    );
}

/// Polls `observe` until [`compare`] finds every metric equal; fails after `timeout` with
/// the report.
async fn until_equal<F, Fut>(what: &str, dir: &Path, timeout: Duration, mut observe: F) -> Report
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Observed>,
{
    let x = read_expected(dir);
    assert_exercises_everything(&x);
    let t0 = Instant::now();
    loop {
        let o = observe().await;
        let report = compare(&x, &o);
        if report.ok() {
            eprintln!(
                "{what} equal the generator's truth after {:?}:\n{report}",
                t0.elapsed()
            );
            return report;
        }
        if std::env::var_os("BANTER_TEST_TRACE").is_some() {
            eprintln!("{:?}: {:?}", t0.elapsed(), report.differences(&[]).first());
        }
        assert!(
            t0.elapsed() < timeout,
            "{what} differ from the generator's truth after {timeout:?}; logs in {}:\n{report}",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Polls the rollups and alerts topics until every metric equals the generator's truth
/// (alerts written twice are a difference: exactly once across restarts and rebalances).
pub async fn topics_match(cfg: &Config, dir: &Path, timeout: Duration) -> Report {
    let mut rollups = Rollups::new(cfg);
    let mut alerts = Alerts::new(cfg);
    let report = until_equal("the topics", dir, timeout, || {
        rollups.poll();
        alerts.poll();
        let o = Observed {
            rollups: rollups.observed.rollups.clone(),
            funnels: rollups.observed.funnels.clone(),
            conversations: rollups.observed.conversations.clone(),
            alerts: alerts.records.clone(),
            too_late: None,
        };
        std::future::ready(o)
    })
    .await;
    // Anything written twice would follow its first copy closely.
    tokio::time::sleep(Duration::from_secs(1)).await;
    alerts.poll();
    rollups.poll();
    let o = Observed {
        rollups: rollups.observed.rollups.clone(),
        funnels: rollups.observed.funnels.clone(),
        conversations: rollups.observed.conversations.clone(),
        alerts: alerts.records.clone(),
        too_late: None,
    };
    let again = compare(&read_expected(dir), &o);
    assert!(again.ok(), "after a second:\n{again}");
    // Every window shown provisionally was closed: its final row replaces what was shown.
    let orphans: Vec<_> = rollups
        .provisional
        .rollups
        .keys()
        .filter(|k| !rollups.observed.rollups.contains_key(*k))
        .collect();
    assert!(
        orphans.is_empty(),
        "{} windows shown provisionally have no final row, e.g. {:?}",
        orphans.len(),
        orphans.first()
    );
    eprintln!(
        "{} windows were shown provisionally, each replaced by its final row; {} spike alerts fired early, each confirmed",
        rollups.provisional.rollups.len(),
        alerts.records.iter().filter(|a| a.revision == 0).count()
    );
    report
}

/// Polls ClickHouse until every metric equals the generator's truth (and the events
/// dead-lettered as too late are the ones generated too late); returns what it read.
pub async fn clickhouse_match(ch: &ClickHouse, dir: &Path, timeout: Duration) -> Observed {
    until_equal("ClickHouse's tables", dir, timeout, || async move {
        banter::verify::read_observed(ch)
            .await
            .unwrap_or_else(|e| panic!("reading ClickHouse: {e}"))
    })
    .await;
    banter::verify::read_observed(ch)
        .await
        .unwrap_or_else(|e| panic!("reading ClickHouse: {e}"))
}
