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

use std::time::{Duration, Instant};

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
    let files: [(&'static str, &'static str); 14] = [
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
        (
            "0012_dead_letter_payload_retention.sql",
            include_str!("../../../schemas/clickhouse/0012_dead_letter_payload_retention.sql"),
        ),
        (
            "0013_conversation_sketches.sql",
            include_str!("../../../schemas/clickhouse/0013_conversation_sketches.sql"),
        ),
        (
            "0014_funnel_sketches.sql",
            include_str!("../../../schemas/clickhouse/0014_funnel_sketches.sql"),
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
    /// A migration recorded as applied has changed since.
    #[error("migration {name} was applied with checksum {recorded}, but the file now has {now}: an applied migration must not change (add a new one instead)")]
    Changed {
        /// The file.
        name: String,
        /// What `banter_migrations` recorded.
        recorded: String,
        /// The file's checksum now.
        now: String,
    },
    /// Another `banter migrate` holds the lock.
    #[error("another banter migrate holds the migration lock of {db} ({holder}); waited {waited_secs} s. If it is no longer running, remove the lock with `banter migrate --unlock`")]
    Locked {
        /// The database.
        db: String,
        /// Who holds it, since when.
        holder: String,
        /// How long we waited.
        waited_secs: u64,
    },
    /// A rebuild in cluster mode met a table with rows.
    #[error("migration {name} must rebuild {table}, which has {rows} rows, on a cluster: banter does not move rows between shards; rebuild it by hand (INSERT … SELECT into a new table ON CLUSTER, then RENAME)")]
    ClusterRebuild {
        /// The file.
        name: String,
        /// The table.
        table: String,
        /// Its rows.
        rows: u64,
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

/// Where `banter migrate` puts the tables.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The database.
    pub db: &'a str,
    /// The server's version.
    pub version: ServerVersion,
    /// `clickhouse.cluster`: replicated tables `ON CLUSTER` with Distributed tables over them.
    pub cluster: Option<&'a str>,
}

impl Target<'_> {
    /// ` ON CLUSTER name`, or nothing on one server.
    pub fn on_cluster(&self) -> String {
        self.cluster
            .map(|c| format!(" ON CLUSTER {c}"))
            .unwrap_or_default()
    }

    /// The table that holds `table`'s rows on each server: `<table>_local` in cluster mode.
    pub fn local(&self, table: &str) -> String {
        if self.cluster.is_some() {
            format!("{table}_local")
        } else {
            table.to_owned()
        }
    }
}

impl Migration {
    /// SHA-256 of the template (what `banter_migrations.checksum` records): an applied
    /// migration whose file changed afterwards is an error, not a silent difference between
    /// databases.
    pub fn checksum(&self) -> String {
        banter_runtime::sha256_hex(self.sql.as_bytes())
    }
}

/// The statements of migration `m` for `t` (for a rebuild, creating its table as `table`).
///
/// In cluster mode every statement runs `ON CLUSTER`: a table becomes
/// `Replicated<engine>('/clickhouse/tables/{shard}/<db>/<table>/<migration>', '{replica}', …)`
/// named `<table>_local`, plus a `Distributed` table `<table>` over it sharded so that all
/// versions of a row land on one shard; an `ALTER` changes the replicated table and makes the
/// Distributed one again (18.16 cannot alter a Distributed table `ON CLUSTER` over replicated
/// shards; it holds no rows, as inserts are synchronous).
pub fn statements(m: &Migration, t: Target<'_>, table: Option<&str>) -> Vec<String> {
    let sql = match table {
        Some(name) => m.sql.replace("{table}", name),
        None => m.sql.to_owned(),
    };
    let sql = render(&sql, t.db, t.version);
    match t.cluster {
        None => vec![sql],
        Some(cluster) => on_cluster(&sql, t.db, cluster, m.version),
    }
}

/// The statement without the comment lines before it.
fn statement(sql: &str) -> &str {
    let mut rest = sql.trim_start();
    while rest.starts_with("--") {
        rest = rest.split_once('\n').map_or("", |(_, r)| r).trim_start();
    }
    rest
}

fn on_cluster(sql: &str, db: &str, cluster: &str, version: u32) -> Vec<String> {
    let body = statement(sql).trim_end();
    let prefix = format!("{db}.");
    for head in [
        "CREATE TABLE IF NOT EXISTS ",
        "CREATE VIEW IF NOT EXISTS ",
        "ALTER TABLE ",
    ] {
        let Some(rest) = body.strip_prefix(head) else {
            continue;
        };
        let end = rest
            .find(|c: char| c.is_whitespace() || c == '(')
            .unwrap_or(rest.len());
        let table = rest[..end].strip_prefix(&prefix).unwrap_or(&rest[..end]);
        let after = &rest[end..];
        return match head {
            "CREATE VIEW IF NOT EXISTS " => {
                vec![format!("{head}{db}.{table} ON CLUSTER {cluster}{after}")]
            }
            "CREATE TABLE IF NOT EXISTS " => vec![
                format!(
                    "{head}{db}.{table}_local ON CLUSTER {cluster}{}",
                    replicated(after, db, table, version)
                ),
                distributed(db, table, cluster, after),
            ],
            _ => vec![
                format!("ALTER TABLE {db}.{table}_local ON CLUSTER {cluster}{after}"),
                format!(
                    "{REMAKE}{table} ON CLUSTER {cluster} over the columns {table}_local has now \
                     (MATERIALIZED ones as ALIAS)"
                ),
            ],
        };
    }
    vec![sql.to_owned()]
}

/// `… ENGINE = XMergeTree(args) …` as `… ENGINE = ReplicatedXMergeTree(path, replica, args) …`.
fn replicated(ddl: &str, db: &str, table: &str, version: u32) -> String {
    const ENGINE: &str = "ENGINE = ";
    let Some(i) = ddl.find(ENGINE) else {
        return ddl.to_owned();
    };
    let rest = &ddl[i + ENGINE.len()..];
    let name_len = rest
        .find(|c: char| !c.is_ascii_alphanumeric())
        .unwrap_or(rest.len());
    let engine = &rest[..name_len];
    let (args, tail) = match rest[name_len..].strip_prefix('(') {
        Some(r) => {
            let close = r.find(')').unwrap_or(r.len());
            (&r[..close], r.get(close + 1..).unwrap_or(""))
        }
        None => ("", &rest[name_len..]),
    };
    let args = if args.trim().is_empty() {
        String::new()
    } else {
        format!(", {args}")
    };
    format!(
        "{}{ENGINE}Replicated{engine}('/clickhouse/tables/{{shard}}/{db}/{table}/{version}', '{{replica}}'{args}){tail}",
        &ddl[..i]
    )
}

/// A step that makes a Distributed table again after its replicated table changed (18.16
/// cannot alter a Distributed table `ON CLUSTER` over replicated shards): its columns are
/// read from the server when the step runs, so it is a comment in `--print-sql`.
const REMAKE: &str = "-- make again the Distributed table ";

/// The Distributed table over `table`'s replicated tables, from the column list of its
/// `CREATE` (`after`: what follows the table's name). Its MATERIALIZED columns are ALIAS
/// columns (computed when read): a Distributed table forwards every column it has to the
/// shards, which refuse values for their own MATERIALIZED columns (18.16). Constraints stay
/// with the shards.
fn distributed(db: &str, table: &str, cluster: &str, after: &str) -> String {
    let open = after.find('(').map_or(0, |i| i + 1);
    let close = after.rfind(") ENGINE").unwrap_or(after.len());
    let columns: Vec<&str> = after[open..close]
        .lines()
        .filter(|l| !l.trim_start().starts_with("CONSTRAINT "))
        .collect();
    let columns = columns
        .join("\n")
        .trim_end()
        .trim_end_matches(',')
        .replace(" MATERIALIZED ", " ALIAS ");
    format!(
        "CREATE TABLE IF NOT EXISTS {db}.{table} ON CLUSTER {cluster} ({columns}\n) \
         ENGINE = Distributed({cluster}, {db}, {table}_local, {})",
        shard_key(table, after)
    )
}

/// [`REMAKE`]: `table`'s Distributed table made again over the columns its replicated table
/// has on this server now.
async fn remake_distributed(
    client: &clickhouse::Client,
    t: Target<'_>,
    m: &Migration,
    table: &str,
) -> Result<(), MigrateError> {
    let (db, on) = (t.db, t.on_cluster());
    let Some(cluster) = t.cluster else {
        return Ok(());
    };
    let columns: Vec<(String, String, String, String)> = client
        .query(
            "SELECT name, type, default_kind, default_expression FROM system.columns \
             WHERE database = ? AND table = ?",
        )
        .bind(db)
        .bind(format!("{table}_local"))
        .fetch_all()
        .await
        .map_err(|source| MigrateError::Query {
            what: "read system.columns",
            source,
        })?;
    let list: Vec<String> = columns
        .iter()
        .map(|(name, ty, kind, expr)| match kind.as_str() {
            "DEFAULT" => format!("{name} {ty} DEFAULT {expr}"),
            "MATERIALIZED" | "ALIAS" => format!("{name} {ty} ALIAS {expr}"),
            _ => format!("{name} {ty}"),
        })
        .collect();
    let names: String = columns
        .iter()
        .map(|c| c.0.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    run(client, m, format!("DROP TABLE IF EXISTS {db}.{table}{on}")).await?;
    run(
        client,
        m,
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.{table}{on} ({}) \
             ENGINE = Distributed({cluster}, {db}, {table}_local, {})",
            list.join(", "),
            shard_key(table, &names)
        ),
    )
    .await
}

/// What a table is sharded by: the rows a `FINAL` read must see together (every revision of a
/// key) always land on the same shard, so a retried insert or a re-emitted revision never
/// counts twice.
fn shard_key(table: &str, ddl: &str) -> &'static str {
    if table != "dead_letters" {
        // Rollups, funnels, conversations, alerts: every key starts with the account.
        "cityHash64(account_id)"
    } else if ddl.contains("dlq_offset") {
        // A dead letter naming its input record is that record's; one without is its place on
        // the dead-letter topic (see 0011).
        "if(source_offset >= 0, cityHash64(stage, reason, source, source_partition, source_offset), cityHash64(dlq_partition, dlq_offset))"
    } else {
        "cityHash64(stage, reason, source, source_partition, source_offset)"
    }
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

/// The table recording applied migrations.
const BOOKKEEPING: &str = "banter_migrations";
/// The table whose existence is the migration lock.
pub const LOCK: &str = "banter_migrate_lock";
/// How long `migrate` waits for another `banter migrate` holding the lock.
pub const LOCK_WAIT: Duration = Duration::from_secs(120);

/// The DDL of the table recording applied migrations, `name`d. In cluster mode it is
/// replicated to every server of the cluster (one path for all shards).
fn bookkeeping_ddl(t: Target<'_>, name: &str) -> String {
    let db = t.db;
    let (on, engine) = match t.cluster {
        None => (String::new(), "MergeTree".to_owned()),
        Some(c) => (
            format!(" ON CLUSTER {c}"),
            format!(
                "ReplicatedMergeTree('/clickhouse/tables/all/{db}/{name}', '{{shard}}-{{replica}}')"
            ),
        ),
    };
    format!(
        "CREATE TABLE IF NOT EXISTS {db}.{name}{on} \
         (version UInt32, name String, checksum String, applied_at DateTime) \
         ENGINE = {engine} ORDER BY version"
    )
}

/// Creates the database if needed and applies the migrations not yet recorded, holding the
/// migration lock (waiting up to [`LOCK_WAIT`] for another `banter migrate`). Re-running it
/// applies nothing new; a recorded migration whose file changed since is an error.
///
/// # Errors
/// ClickHouse refuses a statement (the error names the file and shows the statement), an
/// applied migration changed, or the lock stays taken.
pub async fn migrate(ch: &ClickHouse, db: &str) -> Result<Vec<Outcome>, MigrateError> {
    migrate_waiting(ch, db, LOCK_WAIT).await
}

/// [`migrate`], waiting at most `lock_wait` for the lock.
///
/// # Errors
/// As [`migrate`].
pub async fn migrate_waiting(
    ch: &ClickHouse,
    db: &str,
    lock_wait: Duration,
) -> Result<Vec<Outcome>, MigrateError> {
    let t = Target {
        db,
        version: ch.version,
        cluster: ch.cluster.as_deref(),
    };
    // Every statement names its database; the session must not need it to exist.
    let client = ch.client.clone().with_database("system");
    // `ON CLUSTER` waits for every server: only when the database is not there yet, so an
    // up-to-date database migrates while a replica is down.
    if !exists(&client, db, None).await? {
        exec(
            &client,
            "create database",
            format!("CREATE DATABASE IF NOT EXISTS {db}{}", t.on_cluster()),
        )
        .await?;
    }
    lock(&client, db, lock_wait).await?;
    let result = migrate_locked(&client, t).await;
    let unlocked = unlock(&client, db).await;
    let out = result?;
    unlocked?;
    Ok(out)
}

/// Removes a lock left by a `banter migrate` that died holding it (`banter migrate --unlock`).
///
/// # Errors
/// ClickHouse refuses the `DROP`.
pub async fn unlock(client: &clickhouse::Client, db: &str) -> Result<(), MigrateError> {
    exec(
        client,
        "release the migration lock",
        format!("DROP TABLE IF EXISTS {db}.{LOCK}"),
    )
    .await
}

/// Takes the migration lock: creating a table succeeds for one caller only (and, `ON
/// CLUSTER`, ClickHouse serialises DDL through one queue). The table holds who took it.
async fn lock(client: &clickhouse::Client, db: &str, wait: Duration) -> Result<(), MigrateError> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown-host".into());
    let owner = format!("banter migrate on {host}, pid {}", std::process::id());
    let deadline = Instant::now() + wait;
    loop {
        let created = client
            .query(&format!(
                "CREATE TABLE {db}.{LOCK} (owner String, since DateTime) ENGINE = Log"
            ))
            .execute()
            .await;
        match created {
            Ok(()) => {
                exec(
                    client,
                    "record the migration lock's owner",
                    format!(
                        "INSERT INTO {db}.{LOCK} SELECT '{}', now()",
                        owner.replace(['\\', '\''], "_")
                    ),
                )
                .await?;
                return Ok(());
            }
            Err(e) if is_taken(&e) => {
                if Instant::now() >= deadline {
                    let holder: Vec<(String, String)> = client
                        .query(&format!("SELECT owner, toString(since) FROM {db}.{LOCK}"))
                        .fetch_all()
                        .await
                        .unwrap_or_default();
                    let holder = holder.into_iter().next().map_or_else(
                        || "a banter migrate that has not said who it is".to_owned(),
                        |(who, since)| format!("{who}, since {since} UTC"),
                    );
                    return Err(MigrateError::Locked {
                        db: db.to_owned(),
                        holder,
                        waited_secs: wait.as_secs(),
                    });
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(source) => {
                return Err(MigrateError::Query {
                    what: "take the migration lock",
                    source,
                })
            }
        }
    }
}

/// Whether a `CREATE TABLE` failed because the table exists (or is being created).
fn is_taken(e: &clickhouse::error::Error) -> bool {
    let s = e.to_string();
    s.contains("Code: 57") || s.contains("already exists") || s.contains("right now")
}

async fn migrate_locked(
    client: &clickhouse::Client,
    t: Target<'_>,
) -> Result<Vec<Outcome>, MigrateError> {
    let db = t.db;
    ensure_bookkeeping(client, t).await?;
    let applied: Vec<(u32, String)> = client
        .query(&format!("SELECT version, checksum FROM {db}.{BOOKKEEPING}"))
        .fetch_all()
        .await
        .map_err(|source| MigrateError::Query {
            what: "read banter_migrations",
            source,
        })?;
    let all = migrations();
    for (version, checksum) in &applied {
        match all.iter().find(|m| m.version == *version) {
            Some(m) if *checksum != m.checksum() => {
                return Err(MigrateError::Changed {
                    name: m.name.into(),
                    recorded: checksum.clone(),
                    now: m.checksum(),
                })
            }
            Some(_) => {}
            None => tracing::warn!(
                version,
                "database has a migration this banter does not know (migrated by a newer version)"
            ),
        }
    }
    let mut out = Vec::new();
    for m in &all {
        let done = applied.iter().any(|(v, _)| *v == m.version);
        if !done {
            match (m.rebuilds, t.cluster) {
                (Some(table), None) => rebuild(client, db, table, m, t.version).await?,
                (Some(table), Some(_)) => rebuild_on_cluster(client, t, table, m).await?,
                (None, _) => {
                    for sql in statements(m, t, None) {
                        match sql.strip_prefix(REMAKE) {
                            Some(rest) => {
                                let table = rest.split(' ').next().unwrap_or_default();
                                remake_distributed(client, t, m, table).await?;
                            }
                            None => apply(client, m, sql).await?,
                        }
                    }
                }
            }
            record(client, db, m).await?;
        }
        out.push(Outcome {
            version: m.version,
            name: m.name.into(),
            applied: !done,
        });
    }
    Ok(out)
}

/// Runs one statement of `m`; an `ADD COLUMN` found already applied (a crash between it and
/// its record; 18.16 has no `ADD COLUMN IF NOT EXISTS`) counts as applied.
async fn apply(
    client: &clickhouse::Client,
    m: &Migration,
    sql: String,
) -> Result<(), MigrateError> {
    match client.query(&sql).execute().await {
        Ok(()) => Ok(()),
        Err(source)
            if sql.contains(" ADD COLUMN ") && source.to_string().contains("already exists") =>
        {
            tracing::warn!(
                version = m.version,
                name = m.name,
                "migration found applied; recording it"
            );
            Ok(())
        }
        Err(source) => Err(MigrateError::Statement {
            name: m.name.into(),
            sql,
            source,
        }),
    }
}

/// Creates the table recording migrations, or brings one made by an older banter (a `TinyLog`
/// without checksums) to the current shape: its rows are copied with the checksums of the
/// files this banter carries (they were applied before checksums were recorded), then the
/// tables are swapped. Each step can be repeated after a crash.
async fn ensure_bookkeeping(
    client: &clickhouse::Client,
    t: Target<'_>,
) -> Result<(), MigrateError> {
    let db = t.db;
    let (new, old) = (format!("{BOOKKEEPING}__new"), format!("{BOOKKEEPING}__old"));
    let current = engine_of(client, db, BOOKKEEPING).await?;
    if exists(client, db, Some(&old)).await? {
        if current.is_none() {
            // Crashed between the two renames: put the old table back and start again.
            exec(
                client,
                "restore banter_migrations",
                format!("RENAME TABLE {db}.{old} TO {db}.{BOOKKEEPING}"),
            )
            .await?;
        } else if current.as_deref() != Some("TinyLog") {
            exec(
                client,
                "drop the old banter_migrations",
                format!("DROP TABLE {db}.{old}"),
            )
            .await?;
            return Ok(());
        }
    }
    match engine_of(client, db, BOOKKEEPING).await?.as_deref() {
        None => {
            exec(
                client,
                "create banter_migrations",
                bookkeeping_ddl(t, BOOKKEEPING),
            )
            .await
        }
        Some("TinyLog") => {
            let rows: Vec<(u32, u32)> = client
                .query(&format!(
                    "SELECT version, toUInt32(applied_at) FROM {db}.{BOOKKEEPING}"
                ))
                .fetch_all()
                .await
                .map_err(|source| MigrateError::Query {
                    what: "read the old banter_migrations",
                    source,
                })?;
            exec(
                client,
                "upgrade banter_migrations",
                format!("DROP TABLE IF EXISTS {db}.{new}"),
            )
            .await?;
            exec(
                client,
                "upgrade banter_migrations",
                bookkeeping_ddl(t, &new),
            )
            .await?;
            let all = migrations();
            let values: Vec<String> = rows
                .iter()
                .filter_map(|(v, at)| {
                    let m = all.iter().find(|m| m.version == *v)?;
                    Some(format!("({v}, '{}', '{}', {at})", m.name, m.checksum()))
                })
                .collect();
            if !values.is_empty() {
                exec(
                    client,
                    "upgrade banter_migrations",
                    format!(
                        "INSERT INTO {db}.{new} (version, name, checksum, applied_at) VALUES {}",
                        values.join(", ")
                    ),
                )
                .await?;
            }
            exec(
                client,
                "upgrade banter_migrations",
                format!(
                    "RENAME TABLE {db}.{BOOKKEEPING} TO {db}.{old}, {db}.{new} TO {db}.{BOOKKEEPING}"
                ),
            )
            .await?;
            exec(
                client,
                "upgrade banter_migrations",
                format!("DROP TABLE {db}.{old}"),
            )
            .await?;
            tracing::info!("banter_migrations upgraded: it records checksums");
            Ok(())
        }
        Some(_) => Ok(()),
    }
}

/// The statements `banter migrate` runs on a new database of `t`, in order, each with the
/// migration it belongs to (what `banter migrate --print-sql` shows for review). A rebuild's
/// row copy, which reads the columns both tables have from the server, is a comment here: a
/// new database has no rows to copy. On servers with TTL, the retention settings `r` follow.
pub fn plan(t: Target<'_>, r: &crate::config::RetentionConfig) -> Vec<(String, String)> {
    let db = t.db;
    let on = t.on_cluster();
    let mut out = vec![
        (
            "database".to_owned(),
            format!("CREATE DATABASE IF NOT EXISTS {db}{on}"),
        ),
        (
            "database".to_owned(),
            format!("CREATE TABLE {db}.{LOCK} (owner String, since DateTime) ENGINE = Log"),
        ),
        ("database".to_owned(), bookkeeping_ddl(t, BOOKKEEPING)),
    ];
    for m in &migrations() {
        let name = m.name.to_owned();
        match (m.rebuilds, t.cluster) {
            (Some(table), None) => {
                let (new, old) = (format!("{table}__new"), format!("{table}__old"));
                for sql in statements(m, t, Some(&new)) {
                    out.push((name.clone(), sql));
                }
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
            (Some(table), Some(_)) => {
                for sql in drop_on_cluster(t, table) {
                    out.push((name.clone(), sql));
                }
                for sql in statements(m, t, Some(table)) {
                    out.push((name.clone(), sql));
                }
            }
            (None, _) => {
                for sql in statements(m, t, None) {
                    out.push((name.clone(), sql));
                }
            }
        }
        out.push((name, record_sql(db, m)));
    }
    out.push(("database".to_owned(), format!("DROP TABLE {db}.{LOCK}")));
    if t.version.has_ttl() {
        for sql in crate::retention::ttl_statements(t, r, &|_| None) {
            out.push(("retention".to_owned(), sql));
        }
    }
    out
}

fn record_sql(db: &str, m: &Migration) -> String {
    format!(
        "INSERT INTO {db}.{BOOKKEEPING} (version, name, checksum, applied_at) SELECT {}, '{}', '{}', now()",
        m.version,
        m.name,
        m.checksum()
    )
}

async fn record(client: &clickhouse::Client, db: &str, m: &Migration) -> Result<(), MigrateError> {
    exec(client, "record migration", record_sql(db, m)).await?;
    tracing::info!(version = m.version, name = m.name, "migration applied");
    Ok(())
}

async fn exec(
    client: &clickhouse::Client,
    what: &'static str,
    sql: String,
) -> Result<(), MigrateError> {
    client
        .query(&sql)
        .execute()
        .await
        .map_err(|source| MigrateError::Query { what, source })
}

/// Whether database `db` (or its table `table`) exists on this server.
async fn exists(
    client: &clickhouse::Client,
    db: &str,
    table: Option<&str>,
) -> Result<bool, MigrateError> {
    let n: u64 = match table {
        None => {
            client
                .query("SELECT count() FROM system.databases WHERE name = ?")
                .bind(db)
                .fetch_one()
                .await
        }
        Some(t) => {
            client
                .query("SELECT count() FROM system.tables WHERE database = ? AND name = ?")
                .bind(db)
                .bind(t)
                .fetch_one()
                .await
        }
    }
    .map_err(|source| MigrateError::Query {
        what: "read system.databases / system.tables",
        source,
    })?;
    Ok(n > 0)
}

/// Drops `table` and its replicated tables everywhere.
fn drop_on_cluster(t: Target<'_>, table: &str) -> [String; 2] {
    let (db, on) = (t.db, t.on_cluster());
    [
        format!("DROP TABLE IF EXISTS {db}.{table}{on}"),
        format!("DROP TABLE IF EXISTS {db}.{table}_local{on}"),
    ]
}

/// A rebuild in cluster mode. Cluster mode began after the engine changes these rebuilds
/// make, so a cluster database meets one only right after the migration that made the old
/// table, while it is still empty: the empty table is dropped and made anew. A table with
/// rows is an error, not a silent copy between shards.
async fn rebuild_on_cluster(
    client: &clickhouse::Client,
    t: Target<'_>,
    table: &str,
    m: &Migration,
) -> Result<(), MigrateError> {
    let db = t.db;
    let wanted = format!("Replicated{}", template_engine(m));
    let local = t.local(table);
    match engine_of(client, db, &local).await? {
        Some(engine) if engine == wanted => return Ok(()),
        Some(_) => {
            let rows: u64 = client
                .query(&format!("SELECT count() FROM {db}.{table}"))
                .fetch_one()
                .await
                .map_err(|source| MigrateError::Query {
                    what: "count rows before a rebuild",
                    source,
                })?;
            if rows > 0 {
                return Err(MigrateError::ClusterRebuild {
                    name: m.name.into(),
                    table: table.to_owned(),
                    rows,
                });
            }
            for sql in drop_on_cluster(t, table) {
                run(client, m, sql).await?;
            }
        }
        None => {}
    }
    for sql in statements(m, t, Some(table)) {
        run(client, m, sql).await?;
    }
    tracing::info!(table, engine = wanted, "table rebuilt on the cluster");
    Ok(())
}

/// The engine a rebuild's template creates.
fn template_engine(m: &Migration) -> &'static str {
    if m.sql.contains("ENGINE = ReplacingMergeTree") {
        "ReplacingMergeTree"
    } else {
        "MergeTree"
    }
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
    let wanted = template_engine(m);
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
        assert_eq!(versions, (1..=14).collect::<Vec<u32>>());
    }

    fn target(version: &str, cluster: Option<&'static str>) -> Target<'static> {
        Target {
            db: "db1",
            version: ServerVersion::parse(version).unwrap(),
            cluster,
        }
    }

    #[test]
    fn on_a_cluster_tables_are_replicated_with_distributed_tables_over_them() {
        let t = target("18.16.1", Some("c1"));
        let all = migrations();
        let rollups = statements(&all[0], t, None);
        assert_eq!(rollups.len(), 2);
        assert!(
            rollups[0].starts_with("CREATE TABLE IF NOT EXISTS db1.rollups_local ON CLUSTER c1 ("),
            "{}",
            rollups[0]
        );
        assert!(rollups[0].contains(
            "ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/db1/rollups/1', '{replica}', revision)\nPARTITION BY"
        ), "{}", rollups[0]);
        // The Distributed table has the columns, MATERIALIZED ones computed when read.
        assert!(
            rollups[1].starts_with(
                "CREATE TABLE IF NOT EXISTS db1.rollups ON CLUSTER c1 (\n    account_id String,"
            ),
            "{}",
            rollups[1]
        );
        assert!(
            rollups[1].contains(
                "    window_start DateTime ALIAS toDateTime(intDiv(window_start_ms, 1000)),\n"
            ),
            "{}",
            rollups[1]
        );
        assert!(
            !rollups[1].contains("MATERIALIZED") && !rollups[1].contains("CONSTRAINT"),
            "{}",
            rollups[1]
        );
        assert!(
            rollups[1].ends_with(
                "ALIAS throwIf(NOT (window_end_ms >= window_start_ms))\n) \
             ENGINE = Distributed(c1, db1, rollups_local, cityHash64(account_id))"
            ),
            "{}",
            rollups[1]
        );
        let modern = statements(&all[0], target("26.9", Some("c1")), None);
        assert!(modern[1].contains("emitted_at DateTime64(3) ALIAS fromUnixTimestamp64Milli(emitted_at_ms)\n) ENGINE = Distributed"), "{}", modern[1]);
        let view = statements(&all[3], t, None);
        assert!(
            view[0].starts_with(
                "CREATE VIEW IF NOT EXISTS db1.rollups_final ON CLUSTER c1 AS\nSELECT"
            ),
            "{view:?}"
        );
        let alter = statements(&all[4], t, None);
        assert_eq!(alter.len(), 2);
        assert_eq!(alter[0], "ALTER TABLE db1.rollups_local ON CLUSTER c1 ADD COLUMN inserted_at DateTime DEFAULT now()");
        assert!(
            alter[1].starts_with("-- make again the Distributed table rollups ON CLUSTER c1 "),
            "{}",
            alter[1]
        );
        let dead = statements(&all[10], t, Some("dead_letters"));
        assert!(dead[0].contains("ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/db1/dead_letters/11', '{replica}')\nPARTITION"), "{}", dead[0]);
        assert!(
            dead[1].ends_with("cityHash64(dlq_partition, dlq_offset)))"),
            "{}",
            dead[1]
        );
        // Every statement of every migration runs on the whole cluster.
        for m in &all {
            for sql in statements(m, t, m.rebuilds) {
                assert!(sql.contains(" ON CLUSTER c1"), "{}: {sql}", m.name);
                assert!(!sql.contains("{db}") && !sql.contains("{table}"), "{sql}");
            }
        }
        let plan = plan(t, &crate::config::RetentionConfig::default());
        assert!(plan
            .iter()
            .any(|(_, sql)| sql == "DROP TABLE IF EXISTS db1.alerts_local ON CLUSTER c1"));
        assert!(plan.iter().any(|(_, sql)| sql.contains("ReplicatedMergeTree('/clickhouse/tables/all/db1/banter_migrations', '{shard}-{replica}')")));
    }

    #[test]
    fn checksums_follow_the_files() {
        let all = migrations();
        let sums: std::collections::BTreeSet<String> =
            all.iter().map(Migration::checksum).collect();
        assert_eq!(sums.len(), all.len());
        assert_eq!(
            all[0].checksum(),
            banter_runtime::sha256_hex(all[0].sql.as_bytes())
        );
        assert_eq!(all[0].checksum().len(), 64);
    }

    #[test]
    fn the_plan_renders_every_statement_for_the_server() {
        let t = target("26.9", None);
        let plan = plan(t, &crate::config::RetentionConfig::default());
        assert!(plan.iter().all(|(_, sql)| !sql.contains('{')), "{plan:?}");
        assert!(plan[0].1.starts_with("CREATE DATABASE IF NOT EXISTS db1"));
        // Every migration is recorded after its statements.
        let recorded = plan
            .iter()
            .filter(|(_, sql)| sql.starts_with("INSERT INTO db1.banter_migrations"))
            .count();
        assert_eq!(recorded, migrations().len());
        // The retention settings follow on a server with TTL.
        assert_eq!(plan.last().map(|(n, _)| n.as_str()), Some("retention"));
        let old = super::plan(
            target("18.16.1", None),
            &crate::config::RetentionConfig::default(),
        );
        assert!(old.iter().all(|(n, _)| n != "retention"));
        assert!(plan.iter().any(|(_, sql)| sql
            == "RENAME TABLE db1.alerts TO db1.alerts__old, db1.alerts__new TO db1.alerts"));
    }
}
