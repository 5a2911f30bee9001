//! `banter migrate`: versioned, re-runnable DDL from `schemas/clickhouse/`, recorded in
//! `<db>.banter_migrations`.
//!
//! The files are templates adapted to the server's version:
//!
//! | placeholder | ClickHouse ≥ 20 | 18.16 – 19.x |
//! |---|---|---|
//! | `{lc_string}` | `LowCardinality(String)` (≥ 19.9) | `String` |
//! | `{datetime}` | `DateTime64(3)` | `DateTime` (seconds) |
//! | `{to_datetime}(x)` | `fromUnixTimestamp64Milli(x)` | `toDateTime(intDiv(x, 1000))` |
//! | `{check:EXPR:WHAT}` | `CONSTRAINT … CHECK EXPR` | a `MATERIALIZED throwIf(NOT EXPR)` column |
//!
//! Times are stored as epoch milliseconds (`*_ms Int64`, what the Avro records carry) with
//! materialized date-time columns for dashboards, so one row layout serves every version.

use crate::clickhouse::{ClickHouse, ServerVersion};
use thiserror::Error;

/// One migration file.
#[derive(Debug, Clone)]
pub struct Migration {
    /// The number the file name starts with.
    pub version: u32,
    /// The file name.
    pub name: &'static str,
    /// The template.
    pub sql: &'static str,
    /// A table this migration rebuilds (its engine or sorting key changes, which no `ALTER`
    /// can do): the template creates the new one as `{db}.{table}`; see [`rebuild`].
    pub rebuilds: Option<&'static str>,
}

/// The migrations, in order (embedded: the binary carries its schema).
pub fn migrations() -> Vec<Migration> {
    let files: [(&'static str, &'static str); 11] = [
        (
            "0001_rollups.sql",
            include_str!("../../../schemas/clickhouse/0001_rollups.sql"),
        ),
        (
            "0002_alerts.sql",
            include_str!("../../../schemas/clickhouse/0002_alerts.sql"),
        ),
        (
            "0003_dead_letters.sql",
            include_str!("../../../schemas/clickhouse/0003_dead_letters.sql"),
        ),
        (
            "0004_views.sql",
            include_str!("../../../schemas/clickhouse/0004_views.sql"),
        ),
        (
            "0005_inserted_at.sql",
            include_str!("../../../schemas/clickhouse/0005_inserted_at.sql"),
        ),
        (
            "0006_funnels.sql",
            include_str!("../../../schemas/clickhouse/0006_funnels.sql"),
        ),
        (
            "0007_funnels_final.sql",
            include_str!("../../../schemas/clickhouse/0007_funnels_final.sql"),
        ),
        (
            "0008_conversations.sql",
            include_str!("../../../schemas/clickhouse/0008_conversations.sql"),
        ),
        (
            "0009_conversations_final.sql",
            include_str!("../../../schemas/clickhouse/0009_conversations_final.sql"),
        ),
        (
            "0010_alerts_replacing.sql",
            include_str!("../../../schemas/clickhouse/0010_alerts_replacing.sql"),
        ),
        (
            "0011_dead_letters_replacing.sql",
            include_str!("../../../schemas/clickhouse/0011_dead_letters_replacing.sql"),
        ),
    ];
    files
        .into_iter()
        .map(|(name, sql)| Migration {
            version: name
                .split('_')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            name,
            sql,
            rebuilds: match name {
                "0010_alerts_replacing.sql" => Some("alerts"),
                "0011_dead_letters_replacing.sql" => Some("dead_letters"),
                _ => None,
            },
        })
        .collect()
}

/// A migration problem.
#[derive(Debug, Error)]
pub enum MigrateError {
    /// ClickHouse refused a statement.
    #[error("migration {name}: {source}\n{sql}")]
    Statement {
        /// The file.
        name: String,
        /// The rendered statement.
        sql: String,
        /// ClickHouse's error.
        source: clickhouse::error::Error,
    },
    /// Bookkeeping failed.
    #[error("clickhouse {what}: {source}")]
    Query {
        /// What was being done.
        what: &'static str,
        /// ClickHouse's error.
        source: clickhouse::error::Error,
    },
}

fn to_datetime(v: ServerVersion, arg: &str) -> String {
    if v.has_datetime64() {
        format!("fromUnixTimestamp64Milli({arg})")
    } else {
        format!("toDateTime(intDiv({arg}, 1000))")
    }
}

/// Renders a template for database `db` on a server of version `v`.
pub fn render(sql: &str, db: &str, v: ServerVersion) -> String {
    let lc = if v.has_low_cardinality() {
        "LowCardinality(String)"
    } else {
        "String"
    };
    let dt = if v.has_datetime64() {
        "DateTime64(3)"
    } else {
        "DateTime"
    };
    let mut out = sql
        .replace("{db}", db)
        .replace("{lc_string}", lc)
        .replace("{datetime}", dt);
    // {to_datetime}(column)
    while let Some(i) = out.find("{to_datetime}(") {
        let rest = &out[i + "{to_datetime}(".len()..];
        let Some(j) = rest.find(')') else { break };
        let arg = rest[..j].to_owned();
        out = format!("{}{}{}", &out[..i], to_datetime(v, &arg), &rest[j + 1..]);
    }
    // {check:EXPR:WHAT}
    while let Some(i) = out.find("{check:") {
        let rest = &out[i + "{check:".len()..];
        let Some(j) = rest.find('}') else { break };
        let (expr, what) = rest[..j].split_once(':').unwrap_or((&rest[..j], "check"));
        let name: String = what
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let clause = if (v.major, v.minor) >= (19, 14) {
            format!(",\n    CONSTRAINT {name} CHECK {expr}")
        } else {
            format!(",\n    check_{name} UInt8 MATERIALIZED throwIf(NOT ({expr}))")
        };
        out = format!("{}{}{}", &out[..i], clause, &rest[j + 1..]);
    }
    out
}

/// What `migrate` did with one migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Its version.
    pub version: u32,
    /// Its file.
    pub name: String,
    /// Applied now (false: it was already).
    pub applied: bool,
}

/// Creates the database if needed and applies the migrations not yet recorded. Re-running it
/// applies nothing new.
///
/// # Errors
/// ClickHouse refuses a statement (the error names the file and shows the statement).
pub async fn migrate(ch: &ClickHouse, db: &str) -> Result<Vec<Outcome>, MigrateError> {
    let q = |what: &'static str| move |source| MigrateError::Query { what, source };
    // Every statement names its database; the session must not need it to exist.
    let client = ch.client.clone().with_database("system");
    client
        .query(&format!("CREATE DATABASE IF NOT EXISTS {db}"))
        .execute()
        .await
        .map_err(q("create database"))?;
    client
        .query(&format!(
            "CREATE TABLE IF NOT EXISTS {db}.banter_migrations \
             (version UInt32, name String, applied_at DateTime) ENGINE = TinyLog"
        ))
        .execute()
        .await
        .map_err(q("create banter_migrations"))?;
    let applied: Vec<u32> = client
        .query(&format!("SELECT version FROM {db}.banter_migrations"))
        .fetch_all()
        .await
        .map_err(q("read banter_migrations"))?;
    let mut out = Vec::new();
    for m in &migrations() {
        if applied.contains(&m.version) {
            out.push(Outcome {
                version: m.version,
                name: m.name.into(),
                applied: false,
            });
            continue;
        }
        if let Some(table) = m.rebuilds {
            rebuild(&client, db, table, m, ch.version).await?;
            record(&client, db, m).await?;
            out.push(Outcome {
                version: m.version,
                name: m.name.into(),
                applied: true,
            });
            continue;
        }
        let sql = render(m.sql, db, ch.version);
        match client.query(&sql).execute().await {
            Ok(()) => {}
            // Applied, but not recorded (a crash in between): a column that is already there
            // is this migration's own (ClickHouse 18.16 has no ADD COLUMN IF NOT EXISTS).
            Err(source)
                if sql.contains(" ADD COLUMN ")
                    && source.to_string().contains("already exists") =>
            {
                tracing::warn!(
                    version = m.version,
                    name = m.name,
                    "migration found applied; recording it"
                );
            }
            Err(source) => {
                return Err(MigrateError::Statement {
                    name: m.name.into(),
                    sql: sql.clone(),
                    source,
                })
            }
        }
        record(&client, db, m).await?;
        out.push(Outcome {
            version: m.version,
            name: m.name.into(),
            applied: true,
        });
    }
    Ok(out)
}

/// The statements `banter migrate` runs on a new database `db` of a server of version `v`, in
/// order, each with the migration it belongs to (what `banter migrate --print-sql` shows for
/// review). A rebuild's row copy, which reads the columns both tables have from the server, is
/// a comment here: a new database has no rows to copy.
pub fn plan(db: &str, v: ServerVersion) -> Vec<(String, String)> {
    let mut out = vec![
        (
            "database".to_owned(),
            format!("CREATE DATABASE IF NOT EXISTS {db}"),
        ),
        (
            "database".to_owned(),
            format!(
                "CREATE TABLE IF NOT EXISTS {db}.banter_migrations \
                 (version UInt32, name String, applied_at DateTime) ENGINE = TinyLog"
            ),
        ),
    ];
    for m in &migrations() {
        let name = m.name.to_owned();
        match m.rebuilds {
            Some(table) => {
                let (new, old) = (format!("{table}__new"), format!("{table}__old"));
                out.push((name.clone(), render(&m.sql.replace("{table}", &new), db, v)));
                out.push((
                    name.clone(),
                    format!("-- copy: INSERT INTO {db}.{new} (the columns both have) SELECT them FROM {db}.{table}"),
                ));
                out.push((
                    name.clone(),
                    format!("RENAME TABLE {db}.{table} TO {db}.{old}, {db}.{new} TO {db}.{table}"),
                ));
                out.push((
                    name.clone(),
                    format!("-- copy: what was written to {db}.{old} meanwhile, into {db}.{table}"),
                ));
                out.push((name.clone(), format!("DROP TABLE {db}.{old}")));
            }
            None => out.push((name.clone(), render(m.sql, db, v))),
        }
        out.push((
            name,
            format!(
                "INSERT INTO {db}.banter_migrations (version, name, applied_at) SELECT {}, '{}', now()",
                m.version, m.name
            ),
        ));
    }
    out
}

async fn record(client: &clickhouse::Client, db: &str, m: &Migration) -> Result<(), MigrateError> {
    client
        .query(&format!(
            "INSERT INTO {db}.banter_migrations (version, name, applied_at) \
             SELECT {}, '{}', now()",
            m.version, m.name
        ))
        .execute()
        .await
        .map_err(|source| MigrateError::Query {
            what: "record migration",
            source,
        })?;
    tracing::info!(version = m.version, name = m.name, "migration applied");
    Ok(())
}

/// The engine of `db.table`, None when there is no such table.
async fn engine_of(
    client: &clickhouse::Client,
    db: &str,
    table: &str,
) -> Result<Option<String>, MigrateError> {
    let engines: Vec<String> = client
        .query("SELECT engine FROM system.tables WHERE database = ? AND name = ?")
        .bind(db)
        .bind(table)
        .fetch_all()
        .await
        .map_err(|source| MigrateError::Query {
            what: "read system.tables",
            source,
        })?;
    Ok(engines.into_iter().next())
}

/// The columns of `db.table` an INSERT can write (not MATERIALIZED or ALIAS).
async fn insertable_columns(
    client: &clickhouse::Client,
    db: &str,
    table: &str,
) -> Result<Vec<String>, MigrateError> {
    client
        .query(
            "SELECT name FROM system.columns WHERE database = ? AND table = ? \
             AND default_kind NOT IN ('MATERIALIZED', 'ALIAS')",
        )
        .bind(db)
        .bind(table)
        .fetch_all()
        .await
        .map_err(|source| MigrateError::Query {
            what: "read system.columns",
            source,
        })
}

/// Copies every row of `db.from` into `db.to`, by the columns both have.
async fn copy_rows(
    client: &clickhouse::Client,
    db: &str,
    from: &str,
    to: &str,
    m: &Migration,
) -> Result<(), MigrateError> {
    let target = insertable_columns(client, db, to).await?;
    let cols: Vec<String> = insertable_columns(client, db, from)
        .await?
        .into_iter()
        .filter(|c| target.contains(c))
        .collect();
    let list = cols.join(", ");
    run(
        client,
        m,
        format!("INSERT INTO {db}.{to} ({list}) SELECT {list} FROM {db}.{from}"),
    )
    .await
}

async fn run(client: &clickhouse::Client, m: &Migration, sql: String) -> Result<(), MigrateError> {
    client
        .query(&sql)
        .execute()
        .await
        .map_err(|source| MigrateError::Statement {
            name: m.name.into(),
            sql,
            source,
        })
}

/// Rebuilds `db.table` as `m`'s template creates it, keeping its rows. ClickHouse 18.16 has no
/// `EXCHANGE TABLES` and no transactions; each step can be repeated after a crash, because
/// the new tables are Replacing: a row copied twice is one row.
///
/// 1. the table's engine is already the new one: finish (step 4) if `table__old` is there;
/// 2. create `table__new` and copy the rows into it;
/// 3. `RENAME table TO table__old, table__new TO table`;
/// 4. copy `table__old` into `table` again (rows a running sink wrote between 2 and 3), drop it.
async fn rebuild(
    client: &clickhouse::Client,
    db: &str,
    table: &str,
    m: &Migration,
    v: ServerVersion,
) -> Result<(), MigrateError> {
    let new = format!("{table}__new");
    let old = format!("{table}__old");
    let wanted = if m.sql.contains("ENGINE = ReplacingMergeTree") {
        "ReplacingMergeTree"
    } else {
        "MergeTree"
    };
    let engine = engine_of(client, db, table).await?;
    if engine.as_deref() != Some(wanted) {
        let ddl = render(&m.sql.replace("{table}", &new), db, v);
        run(client, m, ddl).await?;
        if engine.is_some() {
            copy_rows(client, db, table, &new, m).await?;
            run(
                client,
                m,
                format!("RENAME TABLE {db}.{table} TO {db}.{old}, {db}.{new} TO {db}.{table}"),
            )
            .await?;
        } else {
            run(
                client,
                m,
                format!("RENAME TABLE {db}.{new} TO {db}.{table}"),
            )
            .await?;
        }
    }
    if engine_of(client, db, &old).await?.is_some() {
        copy_rows(client, db, &old, table, m).await?;
        run(client, m, format!("DROP TABLE {db}.{old}")).await?;
    }
    tracing::info!(table, engine = wanted, "table rebuilt");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_adapt_to_the_server() {
        let old = ServerVersion::parse("18.16.1").unwrap();
        let new = ServerVersion::parse("25.3").unwrap();
        for m in &migrations() {
            for v in [old, new] {
                let sql = render(&m.sql.replace("{table}", "t"), "db1", v);
                assert!(!sql.contains('{'), "{} left a placeholder:\n{sql}", m.name);
            }
        }
        let r = migrations()[0].sql;
        let o = render(r, "db1", old);
        assert!(o.contains("toDateTime(intDiv(window_start_ms, 1000))"));
        assert!(o.contains("MATERIALIZED throwIf(NOT (window_end_ms >= window_start_ms))"));
        assert!(!o.contains("LowCardinality"));
        let n = render(r, "db1", new);
        assert!(n.contains("DateTime64(3) MATERIALIZED fromUnixTimestamp64Milli(window_start_ms)"));
        assert!(n.contains(
            "CONSTRAINT window_ends_before_it_starts CHECK window_end_ms >= window_start_ms"
        ));
        assert!(n.contains("account_id LowCardinality(String)"));
        let versions: Vec<u32> = migrations().iter().map(|m| m.version).collect();
        assert_eq!(versions, (1..=11).collect::<Vec<u32>>());
    }

    #[test]
    fn the_plan_renders_every_statement_for_the_server() {
        let new = ServerVersion::parse("26.9").unwrap();
        let plan = plan("db1", new);
        assert!(plan.iter().all(|(_, sql)| !sql.contains('{')), "{plan:?}");
        assert!(plan[0].1.starts_with("CREATE DATABASE IF NOT EXISTS db1"));
        // Every migration is recorded after its statements.
        let recorded = plan
            .iter()
            .filter(|(_, sql)| sql.starts_with("INSERT INTO db1.banter_migrations"))
            .count();
        assert_eq!(recorded, migrations().len());
        assert!(plan.iter().any(|(_, sql)| sql
            == "RENAME TABLE db1.alerts TO db1.alerts__old, db1.alerts__new TO db1.alerts"));
    }
}
