//! Retention (`[clickhouse.retention]`): how long rows and dead-letter payloads are kept.
//!
//! * Servers with TTL (20.5 and later): `banter migrate` sets table TTLs and a column TTL on
//!   `dead_letters.payload`; ClickHouse removes expired rows and empties expired payloads when
//!   it merges. A setting of 0 removes the TTL.
//! * Older servers (Debian's 18.16): [`enforce`] empties payloads older than the limit (an
//!   `ALTER … UPDATE`, a mutation ClickHouse runs in the background) and drops a month's
//!   partition once every day in it is older than the limit (rows are partitioned by month).
//!   `banter migrate` runs it, and the sink runs it every hour.

use crate::clickhouse::ClickHouse;
use crate::config::RetentionConfig;
use crate::migrate::{MigrateError, Target};

/// A table's time column and the days its rows are kept (0: for ever).
#[derive(Debug, Clone, Copy)]
struct Rule {
    table: &'static str,
    time_ms: &'static str,
    days: u32,
}

fn rules(r: &RetentionConfig) -> [Rule; 5] {
    let window = |table| Rule {
        table,
        time_ms: "window_start_ms",
        days: r.rollups_days,
    };
    [
        Rule {
            table: "dead_letters",
            time_ms: "failed_at_ms",
            days: r.dead_letters_days,
        },
        window("rollups"),
        window("funnels"),
        window("conversations"),
        window("alerts"),
    ]
}

/// `time + days`, as ClickHouse writes it back in `create_table_query` (so a TTL already set
/// is recognised and not set again).
fn ttl(time_ms: &str, days: u32) -> String {
    format!("toDateTime(intDiv({time_ms}, 1000)) + toIntervalDay({days})")
}

const DAY_MS: i64 = 86_400_000;

/// The statements that bring the TTLs of a server with TTL to `r`, given each table's
/// `create_table_query` (`current`; None: not known, as for a new database): only what
/// differs.
pub fn ttl_statements(
    t: Target<'_>,
    r: &RetentionConfig,
    current: &dyn Fn(&str) -> Option<String>,
) -> Vec<String> {
    let (db, on) = (t.db, t.on_cluster());
    // Parts written before a TTL change keep the old one until merged: not rewritten here.
    const LAZY: &str = " SETTINGS materialize_ttl_after_modify = 0";
    let mut out = Vec::new();
    for rule in rules(r) {
        let local = t.local(rule.table);
        let now = current(&local).unwrap_or_default();
        // The table TTL follows the sorting key; a column's TTL is in the column list.
        let after_key = now.split_once(" ORDER BY ").map_or("", |(_, rest)| rest);
        if rule.days > 0 {
            let want = ttl(rule.time_ms, rule.days);
            if !after_key.contains(&format!(" TTL {want}")) {
                out.push(format!(
                    "ALTER TABLE {db}.{local}{on} MODIFY TTL {want}{LAZY}"
                ));
            }
        } else if after_key.contains(" TTL ") {
            out.push(format!("ALTER TABLE {db}.{local}{on} REMOVE TTL"));
        }
    }
    let local = t.local("dead_letters");
    let now = current(&local).unwrap_or_default();
    let columns = now
        .split_once(" ORDER BY ")
        .map_or(now.as_str(), |(c, _)| c);
    let has_column_ttl = columns.contains("payload` String TTL ");
    if r.dead_letter_payload_days > 0 {
        let want = ttl("failed_at_ms", r.dead_letter_payload_days);
        if !columns.contains(&format!("payload` String TTL {want}")) {
            out.push(format!(
                "ALTER TABLE {db}.{local}{on} MODIFY COLUMN payload String TTL {want}{LAZY}"
            ));
        }
    } else if has_column_ttl {
        out.push(format!(
            "ALTER TABLE {db}.{local}{on} MODIFY COLUMN payload REMOVE TTL"
        ));
    }
    out
}

/// What [`enforce`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Enforced {
    /// Statements run.
    pub statements: Vec<String>,
}

/// Applies `r` at `now_ms`: TTLs on servers that have them, payload mutations and partition
/// drops on older ones. Safe to repeat; does nothing when nothing is due.
///
/// # Errors
/// ClickHouse refuses a statement.
pub async fn enforce(
    ch: &ClickHouse,
    r: &RetentionConfig,
    now_ms: i64,
) -> Result<Enforced, MigrateError> {
    let t = Target {
        db: &ch.database,
        version: ch.version,
        cluster: ch.cluster.as_deref(),
    };
    let client = ch.client.clone().with_database("system");
    let mut statements = Vec::new();
    if ch.version.has_ttl() {
        let current: Vec<(String, String)> = client
            .query("SELECT name, create_table_query FROM system.tables WHERE database = ?")
            .bind(t.db)
            .fetch_all()
            .await
            .map_err(query("read system.tables"))?;
        let lookup = |name: &str| {
            current
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, q)| q.clone())
        };
        statements = ttl_statements(t, r, &lookup);
    } else {
        let (db, on) = (t.db, t.on_cluster());
        if r.dead_letter_payload_days > 0 {
            let local = t.local("dead_letters");
            let cutoff = now_ms - i64::from(r.dead_letter_payload_days) * DAY_MS;
            let due: u64 = client
                .query(&format!(
                    "SELECT count() FROM {db}.{local} WHERE payload != '' AND failed_at_ms < {cutoff}"
                ))
                .fetch_one()
                .await
                .map_err(query("count expired dead-letter payloads"))?;
            // A mutation rewrites parts: only when something is due.
            if due > 0 {
                statements.push(format!(
                    "ALTER TABLE {db}.{local}{on} UPDATE payload = '' WHERE payload != '' AND failed_at_ms < {cutoff}"
                ));
            }
        }
        for rule in rules(r).into_iter().filter(|r| r.days > 0) {
            let local = t.local(rule.table);
            let cutoff = now_ms - i64::from(rule.days) * DAY_MS;
            let (cy, cm, ..) = banter_runtime::civil(cutoff.div_euclid(1000));
            let partitions: Vec<String> = client
                .query(
                    "SELECT DISTINCT partition FROM system.parts \
                     WHERE database = ? AND table = ? AND active",
                )
                .bind(db)
                .bind(&local)
                .fetch_all()
                .await
                .map_err(query("read system.parts"))?;
            for p in partitions {
                // Partitions are toYYYYMM of the time: dropped once the cutoff's month is
                // later, so every day of it is older than the limit.
                let Ok(ym) = p.trim_matches('\'').parse::<i64>() else {
                    continue;
                };
                if ym / 100 * 12 + ym % 100 < cy * 12 + cm {
                    statements.push(format!("ALTER TABLE {db}.{local}{on} DROP PARTITION {ym}"));
                }
            }
        }
    }
    for sql in &statements {
        client
            .query(sql)
            .execute()
            .await
            .map_err(|source| MigrateError::Statement {
                name: "retention".into(),
                sql: sql.clone(),
                source,
            })?;
        tracing::info!(statement = %sql, "retention applied");
    }
    Ok(Enforced { statements })
}

/// On servers without TTL, [`enforce`] once an hour until `shutdown` (the sink runs it; with
/// TTL, ClickHouse does the work itself). A failure is logged and tried again next hour.
pub async fn every_hour(
    ch: ClickHouse,
    r: RetentionConfig,
    shutdown: tokio_util::sync::CancellationToken,
) {
    if ch.version.has_ttl() {
        return;
    }
    loop {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        if let Err(e) = enforce(&ch, &r, now_ms).await {
            tracing::warn!(error = %e, "retention not applied; trying again in an hour");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(std::time::Duration::from_secs(3600)) => {}
        }
    }
}

fn query(what: &'static str) -> impl Fn(clickhouse::error::Error) -> MigrateError {
    move |source| MigrateError::Query { what, source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clickhouse::ServerVersion;

    fn target(cluster: Option<&str>) -> Target<'_> {
        Target {
            db: "db1",
            version: ServerVersion::parse("26.9").unwrap_or(ServerVersion {
                major: 26,
                minor: 9,
            }),
            cluster,
        }
    }

    #[test]
    fn ttls_are_set_once_and_removed_when_turned_off() {
        let r = RetentionConfig::default();
        let fresh = ttl_statements(target(None), &r, &|_| None);
        assert_eq!(
            fresh,
            vec![
                "ALTER TABLE db1.dead_letters MODIFY TTL toDateTime(intDiv(failed_at_ms, 1000)) + toIntervalDay(90) SETTINGS materialize_ttl_after_modify = 0".to_owned(),
                "ALTER TABLE db1.dead_letters MODIFY COLUMN payload String TTL toDateTime(intDiv(failed_at_ms, 1000)) + toIntervalDay(30) SETTINGS materialize_ttl_after_modify = 0".to_owned(),
            ]
        );
        // As ClickHouse 26.9 writes the table back once both are set.
        let set = "CREATE TABLE db1.dead_letters (`stage` String, `payload` String TTL toDateTime(intDiv(failed_at_ms, 1000)) + toIntervalDay(30), `failed_at_ms` Int64) ENGINE = ReplacingMergeTree PARTITION BY toYYYYMM(toDateTime(intDiv(failed_at_ms, 1000))) ORDER BY stage TTL toDateTime(intDiv(failed_at_ms, 1000)) + toIntervalDay(90) SETTINGS index_granularity = 8192".to_owned();
        let again = ttl_statements(target(None), &r, &|t| {
            (t == "dead_letters").then(|| set.clone())
        });
        assert!(again.is_empty(), "{again:?}");
        let off = RetentionConfig {
            dead_letter_payload_days: 0,
            dead_letters_days: 0,
            rollups_days: 0,
        };
        let removed = ttl_statements(target(None), &off, &|t| {
            (t == "dead_letters").then(|| set.clone())
        });
        assert_eq!(
            removed,
            vec![
                "ALTER TABLE db1.dead_letters REMOVE TTL".to_owned(),
                "ALTER TABLE db1.dead_letters MODIFY COLUMN payload REMOVE TTL".to_owned(),
            ]
        );
        let keep_rollups = RetentionConfig {
            rollups_days: 400,
            ..off
        };
        let cluster = ttl_statements(target(Some("c1")), &keep_rollups, &|_| None);
        assert_eq!(cluster.len(), 4);
        assert!(cluster.iter().all(|s| s.contains("_local ON CLUSTER c1 MODIFY TTL toDateTime(intDiv(window_start_ms, 1000)) + toIntervalDay(400)")), "{cluster:?}");
    }
}
