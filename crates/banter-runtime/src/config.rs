//! Configuration: one TOML file plus `BANTER_<SECTION>__<KEY>` environment overrides.
//!
//! * Unknown keys are errors, in the file and in the environment, and the error names the key.
//! * `validate()` runs before anything starts: a bad value fails start-up with the key named.
//! * Secrets ([`Secret`]) never print.
//!
//! Environment overrides use a double underscore between levels:
//! `BANTER_KAFKA__BROKERS=broker:9092`, `BANTER_KAFKA__TOPICS__PARTITIONS=12`,
//! `BANTER_CLICKHOUSE__PASSWORD=…`. Variables without a double underscore (`BANTER_CONFIG`,
//! the stack scripts' `BANTER_KAFKA_PORT`, …) are not configuration keys and are ignored here.
//! Later roles add their own sections to [`Config`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::secret::Secret;

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "BANTER_";

/// A configuration problem, naming the key.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML (after environment overrides) does not fit the schema.
    #[error("invalid config{origin}: {message}")]
    Parse {
        /// " in <file>" and/or the environment variables applied.
        origin: String,
        /// serde's message, which names the key.
        message: String,
    },
    /// A value is out of range or malformed.
    #[error("invalid config key `{key}`: {message}")]
    Invalid {
        /// Dotted path of the key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.into(),
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Kafka connection and topics.
    pub kafka: KafkaConfig,
    /// ClickHouse connection.
    pub clickhouse: ClickHouseConfig,
    /// Logs and metrics.
    pub telemetry: TelemetryConfig,
    /// The ops HTTP server (`/metrics`, `/healthz`, `/readyz`).
    pub http: HttpConfig,
    /// `banter ingest`: the HTTP API, webhooks and publishing.
    pub ingest: IngestConfig,
    /// `banter stream`: windows, lateness and exactly-once output.
    pub stream: StreamConfig,
    /// `banter sink`: rollups, alerts and dead letters into ClickHouse.
    pub sink: SinkConfig,
    /// Spike detection in `banter stream`.
    pub spike: SpikeConfig,
    /// CTA campaigns and funnels in `banter stream`.
    pub cta: CtaConfig,
    /// Conversation metrics (response times and rates, threads) in `banter stream`.
    pub conversation: ConversationConfig,
    /// `banter alert`: spike alerts to Alertmanager.
    pub alerting: AlertingConfig,
}

/// Spike detection in `banter stream` (DESIGN.md, "Spike alerts"), on the 1-minute
/// interaction counts of every account and post.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpikeConfig {
    /// Detect spikes at all.
    pub enabled: bool,
    /// Judge accounts.
    pub accounts: bool,
    /// Judge posts.
    pub posts: bool,
    /// EWMA weight of the newest minute (0 < λ ≤ 1).
    pub lambda: f64,
    /// z = (x − mean) / max(σ, √mean, 1) that makes a minute a hit.
    pub z_threshold: f64,
    /// Fewest interactions in a hit minute.
    pub min_count: i64,
    /// Hits among the last `window_minutes` that fire an alert.
    pub fire_hits: u32,
    /// See `fire_hits` (1 to 8).
    pub window_minutes: u32,
    /// Minutes in a row without a hit that resolve an alert.
    pub resolve_minutes: u32,
    /// After a resolve, minutes in which the same account or post cannot fire again.
    pub cooldown_minutes: i64,
    /// Minutes of a post's life in which it is judged against the account's recent posts at
    /// the same age rather than against its own (still empty) trend.
    pub young_minutes: i64,
    /// Minutes of history a baseline needs before it is used.
    pub min_history_minutes: u32,
    /// Earlier posts of the account seen at an age before a young post of that age is judged.
    pub young_min_posts: u32,
    /// Young posts are compared in log space, ln(1 + x), across the account's posts (reach is
    /// heavy-tailed); this is the least spread assumed (0.75: at z = 3 a young post fires at
    /// about 9.5 times the account's typical post of that age).
    pub young_log_spread: f64,
    /// After firing this long, the level becomes the new baseline.
    pub max_firing_minutes: i64,
    /// An account or post quiet for this long is forgotten.
    pub forget_after_minutes: i64,
}

impl Default for SpikeConfig {
    fn default() -> Self {
        SpikeConfig {
            enabled: true,
            accounts: true,
            posts: true,
            lambda: 0.2,
            z_threshold: 3.0,
            min_count: 10,
            fire_hits: 2,
            window_minutes: 3,
            resolve_minutes: 3,
            cooldown_minutes: 15,
            young_minutes: 15,
            min_history_minutes: 10,
            young_min_posts: 3,
            young_log_spread: 0.75,
            max_firing_minutes: 60,
            forget_after_minutes: 24 * 60,
        }
    }
}

impl SpikeConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(self.lambda > 0.0 && self.lambda <= 1.0) {
            return Err(invalid("spike.lambda", "must be in (0, 1]"));
        }
        if !(self.z_threshold.is_finite() && self.z_threshold > 0.0) {
            return Err(invalid("spike.z_threshold", "must be a positive number"));
        }
        if !(1..=8).contains(&self.window_minutes) {
            return Err(invalid("spike.window_minutes", "must be between 1 and 8"));
        }
        if self.fire_hits == 0 || self.fire_hits > self.window_minutes {
            return Err(invalid(
                "spike.fire_hits",
                "must be between 1 and spike.window_minutes",
            ));
        }
        if self.resolve_minutes == 0 {
            return Err(invalid("spike.resolve_minutes", "must be at least 1"));
        }
        if !(self.young_log_spread.is_finite() && self.young_log_spread > 0.0) {
            return Err(invalid(
                "spike.young_log_spread",
                "must be a positive number",
            ));
        }
        for (key, v) in [
            ("spike.cooldown_minutes", self.cooldown_minutes),
            ("spike.young_minutes", self.young_minutes),
            ("spike.max_firing_minutes", self.max_firing_minutes),
            ("spike.min_count", self.min_count),
        ] {
            if !(0..=7 * 24 * 60).contains(&v) {
                return Err(invalid(key, "must be between 0 and 10080"));
            }
        }
        if self.forget_after_minutes < 60 {
            return Err(invalid("spike.forget_after_minutes", "must be at least 60"));
        }
        Ok(())
    }
}

/// Conversation metrics in `banter stream`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConversationConfig {
    /// How long after its hour or day an inbound item's answer still counts, in ms.
    pub answer_horizon_ms: i64,
    /// Silence after which a DM opens a new conversation (an inbound item), in ms.
    pub dm_silence_ms: i64,
}

impl Default for ConversationConfig {
    fn default() -> Self {
        ConversationConfig {
            answer_horizon_ms: 86_400_000,
            dm_silence_ms: 86_400_000,
        }
    }
}

impl ConversationConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(60_000..=7 * 86_400_000).contains(&self.answer_horizon_ms) {
            return Err(invalid(
                "conversation.answer_horizon_ms",
                "must be between 60000 (a minute) and 604800000 (a week)",
            ));
        }
        if self.dm_silence_ms < 60_000 {
            return Err(invalid(
                "conversation.dm_silence_ms",
                "must be at least 60000 (a minute)",
            ));
        }
        Ok(())
    }
}

/// CTA campaigns and funnels in `banter stream`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CtaConfig {
    /// A TOML file of `[[campaign]]` tables (id, account_id, keywords, scope, active_from,
    /// active_until); empty: no campaigns. A missing or invalid file at start-up is an error.
    pub campaigns_file: String,
    /// How often the file is checked for changes, in ms: a changed file applies without a
    /// restart (an invalid one is refused and the previous campaigns stay).
    pub reload_interval_ms: u64,
    /// Days after a trigger within which later stages are attributed to it.
    pub attribution_days: i64,
}

impl Default for CtaConfig {
    fn default() -> Self {
        CtaConfig {
            campaigns_file: String::new(),
            reload_interval_ms: 10_000,
            attribution_days: 7,
        }
    }
}

impl CtaConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.reload_interval_ms < 100 {
            return Err(invalid("cta.reload_interval_ms", "must be at least 100"));
        }
        if !(1..=90).contains(&self.attribution_days) {
            return Err(invalid("cta.attribution_days", "must be between 1 and 90"));
        }
        Ok(())
    }
}

/// `banter alert`: pushes spike alerts from `banter.alerts.v1` to Alertmanager.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertingConfig {
    /// Alertmanager's base URL; empty: alerts are not pushed (they still reach ClickHouse).
    pub alertmanager_url: String,
    /// How often a firing alert is sent again, in ms (Alertmanager forgets alerts that are not
    /// re-sent before their `endsAt`).
    pub resend_interval_ms: u64,
    /// Longest wait between retries while Alertmanager does not answer, in ms.
    pub max_backoff_ms: u64,
    /// On start, alerts of this much of the topic's recent past are read back, in ms: firing
    /// ones are sent again, resolved ones once more.
    pub lookback_ms: i64,
    /// Grafana link put into the alerts' `dashboard` annotation; `{account}` and `{content}`
    /// are replaced.
    pub dashboard_url: String,
    /// `severity` label: `critical` from this z-score up, `warning` below.
    pub critical_z: f64,
}

impl Default for AlertingConfig {
    fn default() -> Self {
        AlertingConfig {
            alertmanager_url: String::new(),
            resend_interval_ms: 60_000,
            max_backoff_ms: 30_000,
            lookback_ms: 24 * 3_600_000,
            dashboard_url:
                "http://localhost:3000/d/banter-alerts/alerts?var-account={account}&var-content={content}"
                    .into(),
            critical_z: 10.0,
        }
    }
}

impl AlertingConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let url = self.alertmanager_url.trim();
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            return Err(invalid(
                "alerting.alertmanager_url",
                "must start with http:// or https:// (or be empty to disable)",
            ));
        }
        if !(1_000..=3_600_000).contains(&self.resend_interval_ms) {
            return Err(invalid(
                "alerting.resend_interval_ms",
                "must be between 1000 and 3600000",
            ));
        }
        if self.max_backoff_ms < 100 {
            return Err(invalid("alerting.max_backoff_ms", "must be at least 100"));
        }
        if self.lookback_ms < 0 {
            return Err(invalid("alerting.lookback_ms", "must not be negative"));
        }
        if !(self.critical_z.is_finite() && self.critical_z > 0.0) {
            return Err(invalid("alerting.critical_z", "must be a positive number"));
        }
        Ok(())
    }
}

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
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            group_id: "banter-sink".into(),
            max_batch_rows: 10_000,
            max_batch_ms: 1000,
            max_backoff_ms: 10_000,
        }
    }
}

impl SinkConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.group_id.is_empty() {
            return Err(invalid("sink.group_id", "must not be empty"));
        }
        if !(1..=1_000_000).contains(&self.max_batch_rows) {
            return Err(invalid(
                "sink.max_batch_rows",
                "must be between 1 and 1000000",
            ));
        }
        if !(10..=60_000).contains(&self.max_batch_ms) {
            return Err(invalid("sink.max_batch_ms", "must be between 10 and 60000"));
        }
        if self.max_backoff_ms < 100 {
            return Err(invalid("sink.max_backoff_ms", "must be at least 100"));
        }
        Ok(())
    }
}

/// `banter stream`: windows, lateness and exactly-once output.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamConfig {
    /// Kafka consumer group of the stream processors.
    pub group_id: String,
    /// This instance's name, unique within the group and stable across restarts: the Kafka
    /// transactional id is `<group_id>-<instance_id>`, so a restarted instance fences its
    /// previous life at once. Default: the host name.
    pub instance_id: String,
    /// How far out of order events may arrive without being late, in ms.
    pub out_of_orderness_ms: i64,
    /// How long after a window's end a late event still corrects it, in ms.
    pub allowed_lateness_ms: i64,
    /// N of time-to-N.
    pub time_to_n: i64,
    /// A caught-up partition without input for this long is idle: its watermark follows the
    /// wall clock from its highest event time, closing its windows.
    pub idle_timeout_ms: u64,
    /// Most input records in one transaction.
    pub max_batch_events: usize,
    /// Longest a batch waits for input before it is processed, in ms.
    pub max_batch_ms: u64,
    /// Kafka `transaction.timeout.ms`: how long a crashed instance's open transaction can
    /// hold back readers before the broker aborts it.
    pub transaction_timeout_ms: u64,
    /// Kafka `session.timeout.ms`: how long the partitions of an instance that stopped (or
    /// died and did not come back) wait before the group gives them to the others. A
    /// restarted instance with the same `instance_id` gets them back at once.
    pub session_timeout_ms: u64,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            group_id: "banter-stream".into(),
            instance_id: String::new(),
            out_of_orderness_ms: 60_000,
            allowed_lateness_ms: 3_600_000,
            time_to_n: 50,
            idle_timeout_ms: 30_000,
            max_batch_events: 20_000,
            max_batch_ms: 250,
            transaction_timeout_ms: 10_000,
            session_timeout_ms: 10_000,
        }
    }
}

impl StreamConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.group_id.is_empty() {
            return Err(invalid("stream.group_id", "must not be empty"));
        }
        if self.out_of_orderness_ms < 0 {
            return Err(invalid(
                "stream.out_of_orderness_ms",
                "must not be negative",
            ));
        }
        if self.allowed_lateness_ms < 0 {
            return Err(invalid(
                "stream.allowed_lateness_ms",
                "must not be negative",
            ));
        }
        if self.time_to_n < 1 {
            return Err(invalid("stream.time_to_n", "must be at least 1"));
        }
        if self.idle_timeout_ms < 100 {
            return Err(invalid("stream.idle_timeout_ms", "must be at least 100"));
        }
        if self.max_batch_events == 0 {
            return Err(invalid("stream.max_batch_events", "must be at least 1"));
        }
        if !(1..=60_000).contains(&self.max_batch_ms) {
            return Err(invalid(
                "stream.max_batch_ms",
                "must be between 1 and 60000",
            ));
        }
        if !(6000..=300_000).contains(&self.session_timeout_ms) {
            return Err(invalid(
                "stream.session_timeout_ms",
                "must be between 6000 and 300000 (the broker's group limits)",
            ));
        }
        if !(1000..=900_000).contains(&self.transaction_timeout_ms) {
            return Err(invalid(
                "stream.transaction_timeout_ms",
                "must be between 1000 and 900000",
            ));
        }
        Ok(())
    }

    /// The instance id, or the host name when unset.
    pub fn instance(&self) -> String {
        if !self.instance_id.is_empty() {
            return self.instance_id.clone();
        }
        std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "local".into())
    }
}

/// `banter ingest`: the HTTP API, webhooks and publishing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Listen address of the ingest API (`/v1/events`, `/webhooks/meta`) and its ops routes.
    pub listen: String,
    /// Largest request body accepted, in bytes (413 above).
    pub max_body_bytes: usize,
    /// Most events (or webhook updates) in one request (413 above).
    pub max_events_per_request: usize,
    /// How long a request waits for the broker to acknowledge before answering 503.
    pub publish_timeout_ms: u64,
    /// How far in the future an event time may be, in seconds (clock skew).
    pub max_future_skew_secs: u64,
    /// Most events in one Kafka transaction (requests arriving together share one).
    pub max_batch_events: usize,
    /// Kafka transactional id prefix; the process id and worker number are appended.
    pub transactional_id: String,
    /// Publisher threads, each with its own transactional producer (commits overlap).
    pub publisher_workers: usize,
    /// Meta app secret: verifies `X-Hub-Signature-256`. Webhooks answer 503 while unset.
    pub meta_app_secret: Secret,
    /// Meta subscription verify token (`hub.verify_token`).
    pub meta_verify_token: Secret,
    /// Key of the hash that replaces actor ids; required. Changing it breaks distinct counts.
    pub actor_salt: Secret,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 4 * 1024 * 1024,
            max_events_per_request: 1000,
            publish_timeout_ms: 5000,
            max_future_skew_secs: 300,
            max_batch_events: 10_000,
            transactional_id: "banter-ingest".into(),
            publisher_workers: 8,
            meta_app_secret: Secret::default(),
            meta_verify_token: Secret::default(),
            actor_salt: Secret::default(),
        }
    }
}

impl IngestConfig {
    /// Checks the values that do not depend on the role being started.
    fn validate(&self) -> Result<(), ConfigError> {
        if self.listen.parse::<SocketAddr>().is_err() {
            return Err(invalid(
                "ingest.listen",
                format!("`{}` is not an ip:port address", self.listen),
            ));
        }
        if self.max_body_bytes < 1024 {
            return Err(invalid("ingest.max_body_bytes", "must be at least 1024"));
        }
        if self.max_events_per_request == 0 {
            return Err(invalid(
                "ingest.max_events_per_request",
                "must be at least 1",
            ));
        }
        if self.publish_timeout_ms < 100 {
            return Err(invalid("ingest.publish_timeout_ms", "must be at least 100"));
        }
        if self.max_batch_events < self.max_events_per_request {
            return Err(invalid(
                "ingest.max_batch_events",
                "must be at least ingest.max_events_per_request",
            ));
        }
        if !(1..=64).contains(&self.publisher_workers) {
            return Err(invalid(
                "ingest.publisher_workers",
                "must be between 1 and 64",
            ));
        }
        if self.transactional_id.is_empty() {
            return Err(invalid("ingest.transactional_id", "must not be empty"));
        }
        Ok(())
    }

    /// What `banter ingest` needs on top of [`Config::validate`].
    pub fn validate_for_ingest(&self) -> Result<(), ConfigError> {
        if self.actor_salt.expose().len() < 16 {
            return Err(invalid(
                "ingest.actor_salt",
                "must be set, at least 16 characters (e.g. BANTER_INGEST__ACTOR_SALT)",
            ));
        }
        Ok(())
    }
}

/// Kafka connection and topics.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma-separated `host:port`.
    pub brokers: String,
    /// Client id prefix; the role name is appended.
    pub client_id: String,
    /// Topic names and layout.
    pub topics: TopicsConfig,
    /// Extra librdkafka properties passed to every client (e.g. `security.protocol`).
    pub properties: BTreeMap<String, String>,
    /// How long a role waits for the broker at start-up before failing, in seconds.
    pub connect_timeout_secs: u64,
}

/// Topic names and layout.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicsConfig {
    /// Normalized engagement events, keyed by account_id.
    pub events: String,
    /// Rollups emitted by the stream processor.
    pub rollups: String,
    /// Spike alerts.
    pub alerts: String,
    /// Dead letters from every stage.
    pub dlq: String,
    /// The stream processor's checkpoints (compacted; one record per input partition).
    pub checkpoints: String,
    /// Partitions of each topic created by `banter topics`.
    pub partitions: i32,
    /// Replication factor of each topic created by `banter topics`.
    pub replication_factor: i32,
    /// Retention of the dead-letter topic, in days.
    pub dlq_retention_days: u32,
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
}

/// Log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// Logs and metrics.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// `human` or `json`.
    pub log_format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `banter=debug,rdkafka=warn`.
    pub log_level: String,
}

/// The ops HTTP server every role runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Listen address of `/metrics`, `/healthz` and `/readyz`.
    pub listen: String,
}

fn default_brokers() -> String {
    "127.0.0.1:9092".into()
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: default_brokers(),
            client_id: "banter".into(),
            topics: TopicsConfig::default(),
            properties: BTreeMap::new(),
            connect_timeout_secs: 30,
        }
    }
}

impl Default for TopicsConfig {
    fn default() -> Self {
        TopicsConfig {
            events: "banter.events.v1".into(),
            rollups: "banter.rollups.v1".into(),
            alerts: "banter.alerts.v1".into(),
            dlq: "banter.dlq.v1".into(),
            checkpoints: "banter.stream-checkpoints.v1".into(),
            partitions: 6,
            replication_factor: 1,
            dlq_retention_days: 30,
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
        }
    }
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            log_format: LogFormat::Human,
            log_level: "info".into(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:9464".into(),
        }
    }
}

/// Converts one override value to TOML: typed like the default at the same path (so a numeric
/// password stays a string), otherwise a string.
fn env_value(default_at_path: Option<&toml::Value>, raw: &str) -> toml::Value {
    let as_string = || toml::Value::String(raw.to_owned());
    match default_at_path {
        Some(toml::Value::String(_)) | None => as_string(),
        Some(_) => toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(as_string),
    }
}

fn lookup<'a>(mut v: &'a toml::Value, path: &[String]) -> Option<&'a toml::Value> {
    for p in path {
        v = v.as_table()?.get(p)?;
    }
    Some(v)
}

impl Config {
    /// Loads `path` (or the defaults when None), applies the environment overrides from
    /// `vars`, and validates.
    pub fn load(
        path: Option<&Path>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut origin = String::new();
        let mut root = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.display().to_string(),
                    source,
                })?;
                origin = format!(" in {}", p.display());
                toml::from_str::<toml::Table>(&text).map_err(|e| ConfigError::Parse {
                    origin: origin.clone(),
                    message: e.to_string(),
                })?
            }
            None => toml::Table::new(),
        };
        let defaults =
            toml::Value::try_from(Config::default()).map_err(|e| ConfigError::Parse {
                origin: String::new(),
                message: e.to_string(),
            })?;

        let mut applied = Vec::new();
        let mut vars: Vec<_> = vars
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k.contains("__"))
            .collect();
        vars.sort();
        for (name, raw) in vars {
            let path: Vec<String> = name[ENV_PREFIX.len()..]
                .split("__")
                .map(|s| s.to_ascii_lowercase())
                .collect();
            if path.iter().any(String::is_empty) {
                return Err(ConfigError::Parse {
                    origin: format!(" from environment variable {name}"),
                    message: "empty key segment".into(),
                });
            }
            let value = env_value(lookup(&defaults, &path), &raw);
            let mut table = &mut root;
            for seg in &path[..path.len() - 1] {
                let entry = table
                    .entry(seg.clone())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                table = entry.as_table_mut().ok_or_else(|| ConfigError::Parse {
                    origin: format!(" from environment variable {name}"),
                    message: format!("`{seg}` is not a section"),
                })?;
            }
            table.insert(path[path.len() - 1].clone(), value);
            applied.push(name);
        }
        if !applied.is_empty() {
            origin.push_str(&format!(
                " (with environment overrides {})",
                applied.join(", ")
            ));
        }
        let config: Config =
            toml::Value::Table(root)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    origin,
                    message: e.to_string(),
                })?;
        config.validate()?;
        Ok(config)
    }

    /// Loads from the process environment: the file named by `path` or `BANTER_CONFIG`.
    pub fn from_env(path: Option<&Path>) -> Result<Self, ConfigError> {
        let from_var = std::env::var_os("BANTER_CONFIG").map(std::path::PathBuf::from);
        Config::load(path.or(from_var.as_deref()), std::env::vars())
    }

    /// Checks values; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let k = &self.kafka;
        if k.brokers.split(',').any(|b| {
            let b = b.trim();
            b.is_empty()
                || b.rsplit_once(':')
                    .is_none_or(|(_, port)| port.parse::<u16>().is_err())
        }) {
            return Err(invalid(
                "kafka.brokers",
                format!("`{}` is not a comma-separated list of host:port", k.brokers),
            ));
        }
        if k.client_id.is_empty() {
            return Err(invalid("kafka.client_id", "must not be empty"));
        }
        for (key, name) in [
            ("kafka.topics.events", &k.topics.events),
            ("kafka.topics.rollups", &k.topics.rollups),
            ("kafka.topics.alerts", &k.topics.alerts),
            ("kafka.topics.dlq", &k.topics.dlq),
            ("kafka.topics.checkpoints", &k.topics.checkpoints),
        ] {
            let legal = !name.is_empty()
                && name.len() <= 249
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !legal {
                return Err(invalid(
                    key,
                    format!("`{name}` is not a legal Kafka topic name"),
                ));
            }
        }
        if k.topics.partitions < 1 {
            return Err(invalid("kafka.topics.partitions", "must be at least 1"));
        }
        if k.topics.replication_factor < 1 {
            return Err(invalid(
                "kafka.topics.replication_factor",
                "must be at least 1",
            ));
        }
        if k.connect_timeout_secs == 0 {
            return Err(invalid("kafka.connect_timeout_secs", "must be at least 1"));
        }
        let c = &self.clickhouse;
        if !(c.url.starts_with("http://") || c.url.starts_with("https://")) {
            return Err(invalid(
                "clickhouse.url",
                format!("`{}` is not an http(s) URL", c.url),
            ));
        }
        if c.database.is_empty()
            || !c
                .database
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            || c.database.as_bytes()[0].is_ascii_digit()
        {
            return Err(invalid(
                "clickhouse.database",
                format!(
                    "`{}` must be letters, digits and underscores, not starting with a digit",
                    c.database
                ),
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.telemetry.log_level) {
            return Err(invalid("telemetry.log_level", e.to_string()));
        }
        if self.http.listen.parse::<SocketAddr>().is_err() {
            return Err(invalid(
                "http.listen",
                format!("`{}` is not an ip:port address", self.http.listen),
            ));
        }
        self.ingest.validate()?;
        self.stream.validate()?;
        self.sink.validate()?;
        self.spike.validate()?;
        self.cta.validate()?;
        self.conversation.validate()?;
        self.alerting.validate()?;
        Ok(())
    }

    /// The effective configuration as TOML, secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn write(text: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!(
            "banter-config-{}-{}.toml",
            std::process::id(),
            text.len()
        ));
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::load(None, env(&[])).unwrap();
        assert_eq!(c.kafka.topics.events, "banter.events.v1");
        assert_eq!(c.kafka.topics.partitions, 6);
    }

    #[test]
    fn file_then_env_overrides() {
        let p = write("[kafka]\nbrokers = \"k1:9092,k2:9092\"\n[kafka.topics]\npartitions = 3\n");
        let c = Config::load(
            Some(&p),
            env(&[
                ("BANTER_KAFKA__TOPICS__PARTITIONS", "12"),
                ("BANTER_CLICKHOUSE__PASSWORD", "123456"),
                ("BANTER_KAFKA_PORT", "19092"), // a script variable, not a key
                ("BANTER_CONFIG", "/elsewhere"),
                ("OTHER", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.kafka.brokers, "k1:9092,k2:9092");
        assert_eq!(c.kafka.topics.partitions, 12);
        assert_eq!(c.clickhouse.password.expose(), "123456");
        assert!(!c.to_redacted_toml().contains("123456"));
    }

    #[test]
    fn unknown_keys_are_named() {
        let p = write("[kafka]\nbrokerz = \"k:9092\"\n");
        let err = Config::load(Some(&p), env(&[])).unwrap_err().to_string();
        assert!(err.contains("brokerz"), "{err}");

        let err = Config::load(None, env(&[("BANTER_KAFKA__TOPICZ__EVENTS", "x")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("topicz"), "{err}");
        assert!(err.contains("BANTER_KAFKA__TOPICZ__EVENTS"), "{err}");

        let err = Config::load(None, env(&[("BANTER_NOPE__X", "1")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases = [
            ("BANTER_KAFKA__BROKERS", "localhost", "kafka.brokers"),
            (
                "BANTER_KAFKA__TOPICS__PARTITIONS",
                "0",
                "kafka.topics.partitions",
            ),
            (
                "BANTER_KAFKA__TOPICS__EVENTS",
                "bad topic",
                "kafka.topics.events",
            ),
            ("BANTER_CLICKHOUSE__URL", "127.0.0.1:8123", "clickhouse.url"),
            (
                "BANTER_CLICKHOUSE__DATABASE",
                "drop table",
                "clickhouse.database",
            ),
            ("BANTER_HTTP__LISTEN", "nowhere", "http.listen"),
            (
                "BANTER_INGEST__MAX_EVENTS_PER_REQUEST",
                "0",
                "ingest.max_events_per_request",
            ),
            ("BANTER_INGEST__LISTEN", "8080", "ingest.listen"),
            (
                "BANTER_TELEMETRY__LOG_LEVEL",
                "info,[",
                "telemetry.log_level",
            ),
        ];
        for (var, value, key) in cases {
            let err = Config::load(None, env(&[(var, value)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("`{key}`")), "{var}={value}: {err}");
        }
        let err = Config::load(None, env(&[("BANTER_KAFKA__TOPICS__PARTITIONS", "many")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("partitions"), "{err}");
    }
}
