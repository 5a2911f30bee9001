//! The sink's configuration: the `[sink]` section and the ClickHouse connection
//! (`[clickhouse]`, which `banter migrate` uses too).

use banter_runtime::config::{invalid, Problems, Validate};
use banter_runtime::Secret;
use serde::{Deserialize, Serialize};

/// `banter sink`: rollups, alerts and dead letters into ClickHouse.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    /// Kafka consumer group of the sinks.
    pub group_id: String,
    /// Most rows in one insert (ClickHouse prefers thousands of rows per insert).
    pub max_batch_rows: usize,
    /// Longest a batch waits before it is inserted, in ms (about one insert per second).
    pub max_batch_ms: u64,
    /// Longest wait between retries of an insert ClickHouse could not take, in ms.
    pub max_backoff_ms: u64,
    /// Longest an insert may take before it is given up and retried, in ms.
    pub insert_timeout_ms: u64,
    /// This sink's name, unique within the group and stable across restarts: its static
    /// group membership (`group.instance.id`), so a restarted sink takes its partitions back
    /// at once instead of waiting for its previous life's session to expire. Default: the
    /// host name.
    pub instance_id: String,
    /// Kafka `session.timeout.ms`: how long the partitions of a sink that stopped (or died and
    /// did not come back) wait before the group gives them to the others.
    pub session_timeout_ms: u64,
}

impl SinkConfig {
    /// `instance_id`, or the host name.
    pub fn instance(&self) -> String {
        if self.instance_id.is_empty() {
            banter_runtime::host_name()
        } else {
            self.instance_id.clone()
        }
    }
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            group_id: "banter-sink".into(),
            max_batch_rows: 50_000,
            max_batch_ms: 1000,
            max_backoff_ms: 10_000,
            insert_timeout_ms: 30_000,
            instance_id: String::new(),
            session_timeout_ms: 10_000,
        }
    }
}

impl Validate for SinkConfig {
    fn check(&self, p: &mut Problems) {
        if self.group_id.is_empty() {
            p.push(invalid("sink.group_id", "must not be empty"));
        }
        if !(1..=1_000_000).contains(&self.max_batch_rows) {
            p.push(invalid(
                "sink.max_batch_rows",
                "must be between 1 and 1000000",
            ));
        }
        if !(10..=60_000).contains(&self.max_batch_ms) {
            p.push(invalid("sink.max_batch_ms", "must be between 10 and 60000"));
        }
        if self.max_backoff_ms < 100 {
            p.push(invalid("sink.max_backoff_ms", "must be at least 100"));
        }
        if self.insert_timeout_ms < 1000 {
            p.push(invalid("sink.insert_timeout_ms", "must be at least 1000"));
        }
        if !(6000..=300_000).contains(&self.session_timeout_ms) {
            p.push(invalid(
                "sink.session_timeout_ms",
                "must be between 6000 and 300000 (the broker's group limits)",
            ));
        }
    }
}

/// ClickHouse connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    /// HTTP interface URL.
    pub url: String,
    /// Database banter's tables live in.
    pub database: String,
    /// User name.
    pub user: String,
    /// Password: `{ env = "VAR" }`, `{ file = "/path" }` or `BANTER_CLICKHOUSE__PASSWORD`.
    pub password: Secret,
    /// For an `https://` URL: the PEM file of the CA certificates that signed the server's
    /// certificate; empty: the system's (ClickHouse Cloud needs nothing here).
    pub ca_file: String,
    /// A cluster of the servers' `remote_servers` (empty: one server). `banter migrate` then
    /// creates every table `ON CLUSTER` as a `Replicated…MergeTree` named `<table>_local`, with
    /// a `Distributed` table `<table>` over it (sharded by account, so every version of a row
    /// lands on the same shard and `FINAL` deduplicates it); the sink writes, and dashboards
    /// read, the Distributed tables.
    pub cluster: String,
    /// How long rows are kept.
    pub retention: RetentionConfig,
}

/// `[clickhouse.retention]`: days rows are kept, 0 for ever. Servers with TTL (20.5 and later)
/// get table and column TTLs from `banter migrate`; on older servers (Debian's 18.16) the sink
/// and `banter migrate` empty old payloads (a mutation) and drop whole months (partitions) once
/// every day in them is older than the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Days a dead letter keeps its payload (the raw input, which can carry user names and
    /// message text); after that the payload is emptied and the row (reason, detail, source,
    /// position, hash of the payload in `detail`) stays.
    pub dead_letter_payload_days: u32,
    /// Days dead letters are kept.
    pub dead_letters_days: u32,
    /// Days rollups, funnels, conversations and alerts are kept (by window start).
    pub rollups_days: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            dead_letter_payload_days: 30,
            dead_letters_days: 90,
            rollups_days: 0,
        }
    }
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        ClickHouseConfig {
            url: "http://127.0.0.1:8123".into(),
            database: "banter".into(),
            user: "default".into(),
            password: Secret::default(),
            ca_file: String::new(),
            cluster: String::new(),
            retention: RetentionConfig::default(),
        }
    }
}

impl Validate for ClickHouseConfig {
    fn check(&self, p: &mut Problems) {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            p.push(invalid(
                "clickhouse.url",
                format!("`{}` is not an http(s) URL", self.url),
            ));
        }
        let db = &self.database;
        if db.is_empty()
            || !db.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            || db.as_bytes()[0].is_ascii_digit()
        {
            p.push(invalid(
                "clickhouse.database",
                format!(
                    "`{db}` must be letters, digits and underscores, not starting with a digit"
                ),
            ));
        }
        let c = &self.cluster;
        let named = c
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            && c.bytes().next().is_some_and(|b| b.is_ascii_alphabetic());
        if !c.is_empty() && !named {
            p.push(invalid(
                "clickhouse.cluster",
                format!("`{c}` must be a cluster name of the servers' remote_servers (letters, digits, `_`, `-`)"),
            ));
        }
        let r = &self.retention;
        if r.dead_letters_days != 0 && r.dead_letter_payload_days > r.dead_letters_days {
            p.push(invalid(
                "clickhouse.retention.dead_letter_payload_days",
                format!(
                    "is {} but dead letters are deleted after {} days (clickhouse.retention.dead_letters_days): payloads cannot outlive their rows",
                    r.dead_letter_payload_days, r.dead_letters_days
                ),
            ));
        }
        for (key, days) in [
            (
                "clickhouse.retention.dead_letter_payload_days",
                r.dead_letter_payload_days,
            ),
            (
                "clickhouse.retention.dead_letters_days",
                r.dead_letters_days,
            ),
            ("clickhouse.retention.rollups_days", r.rollups_days),
        ] {
            if days > 36_500 {
                p.push(invalid(
                    key,
                    "must be at most 36500 days (0 keeps rows for ever)",
                ));
            }
        }
        if !self.ca_file.is_empty() {
            if self.url.starts_with("http://") {
                p.push(invalid(
                    "clickhouse.ca_file",
                    "is set but clickhouse.url is http://: TLS is not used (did you mean https://?)",
                ));
            } else {
                p.take(
                    banter_runtime::tls::connector("clickhouse.ca_file", &self.ca_file).map(drop),
                );
            }
        }
    }
}
