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
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            group_id: "banter-sink".into(),
            max_batch_rows: 10_000,
            max_batch_ms: 1000,
            max_backoff_ms: 10_000,
            insert_timeout_ms: 30_000,
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
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        ClickHouseConfig {
            url: "http://127.0.0.1:8123".into(),
            database: "banter".into(),
            user: "default".into(),
            password: Secret::default(),
            ca_file: String::new(),
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
