//! `banter verify`: what ClickHouse holds after a run of the generated workload, against the
//! generator's truth (`banter generate --expected`), every metric cell by cell
//! ([`banter_workload::check`]). `scripts/run.sh` ends with it; tests use [`read_observed`].

use std::time::{Duration, Instant};

use banter_sink::sink::{AlertRow, ConversationRow, FunnelRow, RollupRow};
use banter_sink::ClickHouse;
use banter_workload::check::{compare, AlertSeen, Observed, Report};
use banter_workload::Generated;

/// Everything the run wrote to ClickHouse's database `ch.database`: the deduplicated
/// rollups, funnels and conversations (`FINAL`), every alert record, and the
/// count of events the stream dead-lettered as too late.
///
/// # Errors
/// A query fails.
pub async fn read_observed(ch: &ClickHouse) -> Result<Observed, clickhouse::error::Error> {
    // The sink's own row types: the columns it writes are the ones read back.
    let mut o = Observed::default();
    let rows: Vec<RollupRow> = ch
        .client
        // Final rows only: a provisional row of a window never closed is not a result.
        .query("SELECT ?fields FROM rollups_final WHERE revision >= 0")
        .fetch_all()
        .await?;
    for r in rows.into_iter().filter_map(RollupRow::into_rollup) {
        o.add_rollup(r);
    }
    let rows: Vec<FunnelRow> = ch
        .client
        .query("SELECT ?fields FROM funnels FINAL")
        .fetch_all()
        .await?;
    for f in rows.into_iter().filter_map(FunnelRow::into_funnel) {
        o.add_funnel(f);
    }
    let rows: Vec<ConversationRow> = ch
        .client
        .query("SELECT ?fields FROM conversations FINAL")
        .fetch_all()
        .await?;
    for c in rows
        .into_iter()
        .filter_map(ConversationRow::into_conversation)
    {
        o.add_conversation(c);
    }
    let rows: Vec<AlertRow> = ch
        .client
        .query("SELECT ?fields FROM alerts FINAL")
        .fetch_all()
        .await?;
    o.alerts = rows
        .into_iter()
        .filter_map(AlertRow::into_alert)
        .map(|a| AlertSeen::from(&a))
        .collect();
    let late: u64 = ch
        .client
        .query("SELECT count() FROM dead_letters FINAL WHERE stage = 'STREAM' AND reason = 'late'")
        .fetch_one()
        .await?;
    o.too_late = Some(late);
    Ok(o)
}

/// Compares ClickHouse with `x` until every metric is equal or `wait` has passed (the last
/// corrections may still be on their way): the last comparison.
///
/// # Errors
/// A query fails.
pub async fn verify(
    ch: &ClickHouse,
    x: &Generated,
    wait: Duration,
) -> Result<Report, clickhouse::error::Error> {
    let deadline = Instant::now() + wait;
    loop {
        let report = compare(x, &read_observed(ch).await?);
        if report.ok() || Instant::now() >= deadline {
            return Ok(report);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
