//! Configuration loading: one TOML file plus `BANTER_<SECTION>__<KEY>` environment overrides,
//! for any configuration type (the `banter` binary's, a test's), and the sections every role
//! shares: Kafka, telemetry and the ops HTTP server. Each stage owns its own section and
//! checks it ([`Validate`]).
//!
//! * Unknown keys are errors, in the file and in the environment, and the error names the key.
//! * `validate()` runs before anything starts: a bad value fails start-up with the key named.
//! * Secrets ([`crate::Secret`]) never print.
//!
//! Environment overrides use a double underscore between levels:
//! `BANTER_KAFKA__BROKERS=broker:9092`, `BANTER_KAFKA__TOPICS__PARTITIONS=12`,
//! `BANTER_CLICKHOUSE__PASSWORD=…`. Variables without a double underscore (`BANTER_CONFIG`,
//! the stack scripts' `BANTER_KAFKA_PORT`, …) are not configuration keys and are ignored here.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use serde::de::DeserializeOwned;

use crate::Secret;
use serde::{Deserialize, Serialize};
use thiserror::Error;

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
    /// Several problems, every one naming its key.
    #[error("{} config problems:{}", .0.len(), .0.iter().map(|e| format!("\n  * {e}")).collect::<String>())]
    Many(Vec<ConfigError>),
}

impl ConfigError {
    /// The keys this error names (several for [`ConfigError::Many`]).
    pub fn keys(&self) -> Vec<&str> {
        match self {
            ConfigError::Invalid { key, .. } => vec![key.as_str()],
            ConfigError::Many(all) => all.iter().flat_map(ConfigError::keys).collect(),
            ConfigError::Read { .. } | ConfigError::Parse { .. } => Vec::new(),
        }
    }
}

/// The problems found while checking a configuration: every one is kept, so a user fixes them
/// all in one go instead of one per start.
#[derive(Debug, Default)]
pub struct Problems(Vec<ConfigError>);

impl Problems {
    /// Records a problem.
    pub fn push(&mut self, e: ConfigError) {
        self.0.push(e);
    }

    /// Records the problem of `r`, if any.
    pub fn take(&mut self, r: Result<(), ConfigError>) {
        if let Err(e) = r {
            match e {
                ConfigError::Many(all) => self.0.extend(all),
                e => self.0.push(e),
            }
        }
    }

    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Nothing: `Ok`; one problem: that one; more: [`ConfigError::Many`].
    ///
    /// # Errors
    /// Whatever was recorded.
    pub fn into_result(mut self) -> Result<(), ConfigError> {
        match self.0.len() {
            0 => Ok(()),
            1 => Err(self.0.remove(0)),
            _ => Err(ConfigError::Many(self.0)),
        }
    }
}

/// A value of `key` that is out of range or malformed.
pub fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.into(),
    }
}

/// A configuration (or a section of one) that checks its values.
pub trait Validate {
    /// Records every value out of range or malformed in `p`, each naming its key.
    fn check(&self, p: &mut Problems);

    /// Checks values; the error names the key (every key, when several are wrong).
    ///
    /// # Errors
    /// The values out of range or malformed.
    fn validate(&self) -> Result<(), ConfigError> {
        let mut p = Problems::default();
        self.check(&mut p);
        p.into_result()
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
    /// How clients talk to the brokers: `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl`.
    pub security_protocol: SecurityProtocol,
    /// Compression of what banter produces: `none`, `gzip`, `snappy`, `lz4` or `zstd`.
    pub compression: KafkaCompression,
    /// TLS, for `ssl` and `sasl_ssl`.
    pub ssl: KafkaSsl,
    /// SASL authentication, for `sasl_plaintext` and `sasl_ssl`.
    pub sasl: KafkaSasl,
    /// How records are framed on banter's topics: `single-object` (Avro single-object
    /// encoding, schemas on `kafka.topics.schemas`) or `confluent` (Schema Registry).
    pub wire_format: WireFormat,
    /// Per-topic exceptions to `wire_format`, by topic name.
    pub wire_formats: BTreeMap<String, WireFormat>,
    /// The Schema Registry, for topics in the `confluent` wire format.
    pub schema_registry: SchemaRegistryConfig,
    /// Extra librdkafka properties passed to every client, after the named settings above (a
    /// property that contradicts a named setting is an error).
    pub properties: BTreeMap<String, String>,
    /// How long a role waits for the broker at start-up before failing, in seconds.
    pub connect_timeout_secs: u64,
}

/// `kafka.wire_format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WireFormat {
    /// Avro single-object encoding: `C3 01`, the schema's 8-byte fingerprint, the body.
    #[default]
    SingleObject,
    /// Confluent Schema Registry framing: `00`, the schema's 4-byte registry id, the body.
    Confluent,
}

/// `kafka.schema_registry.subject_strategy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectStrategy {
    /// `<topic>-value` (TopicNameStrategy): one record type per topic.
    #[default]
    Topic,
    /// `<topic>-<record full name>` (TopicRecordNameStrategy): several types on a topic.
    TopicRecord,
    /// `<record full name>` (RecordNameStrategy).
    Record,
}

/// `[kafka.schema_registry]`: a Confluent-compatible Schema Registry (Confluent, Apicurio's
/// `ccompat` API, Karapace, Redpanda).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchemaRegistryConfig {
    /// Base URL, e.g. `https://psrc-xxxx.europe-west1.gcp.confluent.cloud`.
    pub url: String,
    /// Basic-auth user (Confluent Cloud: the Schema Registry API key).
    pub username: String,
    /// Basic-auth password: `{ env = "VAR" }` or `{ file = "/path" }`.
    pub password: Secret,
    /// PEM CA certificates for an https:// URL; empty: the system's.
    pub ca_file: String,
    /// How subjects are named: `topic` (`<topic>-value`), `topic_record` or `record`.
    pub subject_strategy: SubjectStrategy,
}

/// `kafka.security_protocol`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    /// No TLS, no authentication (the local stack).
    #[default]
    Plaintext,
    /// TLS; a client certificate when `kafka.ssl.cert_file` is set.
    Ssl,
    /// SASL without TLS (only inside a trusted network).
    SaslPlaintext,
    /// SASL over TLS: what managed Kafka services use.
    SaslSsl,
}

impl SecurityProtocol {
    /// librdkafka's name for it.
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    /// Whether connections use TLS.
    pub fn tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    /// Whether clients authenticate with SASL.
    pub fn sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

/// `kafka.compression`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KafkaCompression {
    /// Uncompressed.
    None,
    /// gzip.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4 (the default: cheap and fast).
    #[default]
    Lz4,
    /// Zstandard: smallest, a little more CPU.
    Zstd,
}

impl KafkaCompression {
    /// librdkafka's `compression.type` value.
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            KafkaCompression::None => "none",
            KafkaCompression::Gzip => "gzip",
            KafkaCompression::Snappy => "snappy",
            KafkaCompression::Lz4 => "lz4",
            KafkaCompression::Zstd => "zstd",
        }
    }
}

/// `[kafka.ssl]`: TLS to the brokers. PEM files.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSsl {
    /// CA certificates that signed the brokers' certificates; empty: the system's.
    pub ca_file: String,
    /// This client's certificate, for brokers that require one (mutual TLS).
    pub cert_file: String,
    /// The private key of `cert_file`.
    pub key_file: String,
    /// The key's password, when it is encrypted.
    pub key_password: Secret,
    /// Whether the broker's certificate must name the host connected to (keep it on).
    pub verify_hostname: bool,
}

impl Default for KafkaSsl {
    fn default() -> Self {
        KafkaSsl {
            ca_file: String::new(),
            cert_file: String::new(),
            key_file: String::new(),
            key_password: Secret::default(),
            verify_hostname: true,
        }
    }
}

/// `kafka.sasl.mechanism`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SaslMechanism {
    /// User name and password in the clear (over TLS): Confluent Cloud's API keys.
    #[serde(rename = "PLAIN")]
    Plain,
    /// Salted challenge-response with SHA-256.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// Salted challenge-response with SHA-512 (MSK's SCRAM).
    #[default]
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
    /// OAuth 2 bearer tokens from an OIDC token endpoint (client credentials).
    #[serde(rename = "OAUTHBEARER")]
    OauthBearer,
    /// Amazon MSK's IAM authentication: OAUTHBEARER with tokens banter signs (SigV4) from the
    /// AWS credentials of the environment or the shared credentials file.
    #[serde(rename = "AWS_MSK_IAM")]
    AwsMskIam,
}

impl SaslMechanism {
    /// The value of `kafka.sasl.mechanism` that names it.
    pub fn as_setting(self) -> &'static str {
        match self {
            SaslMechanism::AwsMskIam => "AWS_MSK_IAM",
            other => other.as_librdkafka(),
        }
    }

    /// librdkafka's `sasl.mechanisms` value.
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            SaslMechanism::OauthBearer | SaslMechanism::AwsMskIam => "OAUTHBEARER",
        }
    }
}

/// `[kafka.sasl]`: authentication to the brokers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSasl {
    /// `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`, `OAUTHBEARER` or `AWS_MSK_IAM`.
    pub mechanism: SaslMechanism,
    /// User name (PLAIN, SCRAM).
    pub username: String,
    /// Password (PLAIN, SCRAM): `{ env = "VAR" }` or `{ file = "/path" }`.
    pub password: Secret,
    /// OAUTHBEARER: the OIDC token endpoint (client-credentials grant).
    pub oauth_token_endpoint: String,
    /// OAUTHBEARER: the client id.
    pub oauth_client_id: String,
    /// OAUTHBEARER: the client secret.
    pub oauth_client_secret: Secret,
    /// OAUTHBEARER: the scope asked for (optional).
    pub oauth_scope: String,
    /// OAUTHBEARER: SASL extensions, `key=value,…` (Confluent Cloud's `logicalCluster=…,identityPoolId=…`).
    pub oauth_extensions: String,
    /// AWS_MSK_IAM: the cluster's AWS region (`us-east-1`).
    pub aws_region: String,
}

/// Topic names and layout.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicsConfig {
    /// Normalized engagement events, keyed by account_id.
    pub events: String,
    /// Rollups emitted by the stream processor.
    pub rollups: String,
    /// Provisional rows of windows still open (negative revision, replaced by the final row):
    /// a topic of their own, so that the sink shows them while it is still inserting a
    /// minute's close from `rollups`. Empty (the default): `<rollups>-provisional`, so that
    /// deployments naming their own rollups topic do not share one; the same name as `rollups`
    /// puts them there instead. Read it through [`TopicsConfig::provisional_topic`].
    pub provisional: String,
    /// Spike alerts.
    pub alerts: String,
    /// Dead letters from every stage.
    pub dlq: String,
    /// The stream processor's checkpoints (compacted; one record per input partition).
    pub checkpoints: String,
    /// The Avro writer schemas of every record on the other topics, keyed by fingerprint
    /// (compacted): a reader meeting a fingerprint it does not know looks it up here.
    pub schemas: String,
    /// Partitions of each topic created by `banter topics`.
    pub partitions: i32,
    /// Replication factor of each topic created by `banter topics`.
    pub replication_factor: i32,
    /// Retention of the dead-letter topic, in days.
    pub dlq_retention_days: u32,
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
            security_protocol: SecurityProtocol::default(),
            compression: KafkaCompression::default(),
            ssl: KafkaSsl::default(),
            sasl: KafkaSasl::default(),
            wire_format: WireFormat::default(),
            wire_formats: BTreeMap::new(),
            schema_registry: SchemaRegistryConfig::default(),
            properties: BTreeMap::new(),
            connect_timeout_secs: 30,
        }
    }
}

impl TopicsConfig {
    /// Where provisional rows go: `provisional`, or `<rollups>-provisional` when it is empty.
    pub fn provisional_topic(&self) -> String {
        if self.provisional.is_empty() {
            format!("{}-provisional", self.rollups)
        } else {
            self.provisional.clone()
        }
    }

    /// The provisional rows' topic when it is not the rollups topic (a topic to create, and
    /// for the sink a lane of its own).
    pub fn separate_provisional_topic(&self) -> Option<String> {
        Some(self.provisional_topic()).filter(|t| *t != self.rollups)
    }
}

impl Default for TopicsConfig {
    fn default() -> Self {
        TopicsConfig {
            events: "banter.events.v1".into(),
            rollups: "banter.rollups.v1".into(),
            provisional: String::new(),
            alerts: "banter.alerts.v1".into(),
            dlq: "banter.dlq.v1".into(),
            checkpoints: "banter.stream-checkpoints.v1".into(),
            schemas: "banter.schemas.v1".into(),
            partitions: 6,
            replication_factor: 1,
            dlq_retention_days: 30,
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

/// Loads `path` (or the defaults when None) as a `T`, applies the environment overrides from
/// `vars`, and validates.
///
/// # Errors
/// The file cannot be read, is not TOML, has an unknown key or a value of the wrong type
/// (also in the environment), or a value fails [`Validate`].
pub fn load<T>(
    path: Option<&Path>,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default + Validate,
{
    match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.display().to_string(),
                source,
            })?;
            load_str(Some((&text, &format!(" in {}", p.display()))), vars)
        }
        None => load_str(None, vars),
    }
}

/// [`load`] from TOML text already read and where it came from (`" in <file>"`, ending error
/// messages); None: the defaults.
///
/// # Errors
/// As [`load`], but for reading the file.
pub fn load_str<T>(
    text: Option<(&str, &str)>,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default + Validate,
{
    let mut origin = String::new();
    let mut root = match text {
        Some((text, from)) => {
            origin = from.to_owned();
            toml::from_str::<toml::Table>(text).map_err(|e| ConfigError::Parse {
                origin: origin.clone(),
                message: e.to_string(),
            })?
        }
        None => toml::Table::new(),
    };
    let defaults = toml::Value::try_from(T::default()).map_err(|e| ConfigError::Parse {
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
    let config: T = toml::Value::Table(root)
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::Parse {
            origin,
            message: e.to_string(),
        })?;
    config.validate()?;
    Ok(config)
}

/// Loads a `T` from the process environment: the file named by `path` or `BANTER_CONFIG`, and
/// the `BANTER_…__…` variables.
///
/// # Errors
/// As [`load`].
pub fn from_env<T>(path: Option<&Path>) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default + Validate,
{
    let from_var = std::env::var_os("BANTER_CONFIG").map(std::path::PathBuf::from);
    load(path.or(from_var.as_deref()), std::env::vars())
}

/// `config` as TOML, secrets redacted: [`crate::Secret`] values, any value whose key names a
/// secret (`password`, `secret`, `token`, `salt`, `jaas`, `credential`, `private`, `api_key`,
/// `ssl.key.*`: e.g. `sasl.password` among `kafka.properties`), and the password of a URL's
/// userinfo (`http://user:pw@host` → `http://user:<redacted>@host`). An unset secret shows
/// empty, as unset (pasted back, it stays unset).
pub fn to_redacted_toml<T: Serialize>(config: &T) -> String {
    match toml::Value::try_from(config) {
        Ok(mut v) => {
            redact(&mut v, "");
            toml::to_string_pretty(&v).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
        }
        Err(e) => format!("# cannot render config: {e}\n"),
    }
}

/// Whether a configuration key names a secret.
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "token",
        "salt",
        "jaas",
        "credential",
        "private",
        "api_key",
        "apikey",
    ]
    .iter()
    .any(|p| k.contains(p))
        && !k.contains("token_endpoint")
        && !k.contains("token.endpoint")
        || k.starts_with("ssl.key.")
}

fn redact(v: &mut toml::Value, key: &str) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                redact(v, k);
            }
        }
        toml::Value::Array(a) => {
            for v in a {
                redact(v, key);
            }
        }
        toml::Value::String(s) if !s.is_empty() && is_secret_key(key) => {
            *s = "<redacted>".into();
        }
        toml::Value::String(s) => {
            if let Some(r) = redact_userinfo(s) {
                *s = r;
            }
        }
        _ => {}
    }
}

/// `scheme://user:password@rest` with the password redacted; None when there is none.
fn redact_userinfo(s: &str) -> Option<String> {
    let (scheme, rest) = s.split_once("://")?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (userinfo, host) = rest[..authority_end].rsplit_once('@')?;
    let (user, password) = userinfo.split_once(':')?;
    if password.is_empty() {
        return None;
    }
    Some(format!(
        "{scheme}://{user}:<redacted>@{host}{}",
        &rest[authority_end..]
    ))
}

impl Validate for KafkaConfig {
    fn check(&self, p: &mut Problems) {
        let k = self;
        if k.brokers.split(',').any(|b| {
            let b = b.trim();
            b.is_empty()
                || b.rsplit_once(':')
                    .is_none_or(|(_, port)| port.parse::<u16>().is_err())
        }) {
            p.push(invalid(
                "kafka.brokers",
                format!("`{}` is not a comma-separated list of host:port", k.brokers),
            ));
        }
        if k.client_id.is_empty() {
            p.push(invalid("kafka.client_id", "must not be empty"));
        }
        let provisional = k.topics.provisional_topic();
        let named = [
            ("kafka.topics.events", &k.topics.events),
            ("kafka.topics.rollups", &k.topics.rollups),
            ("kafka.topics.provisional", &provisional),
            ("kafka.topics.alerts", &k.topics.alerts),
            ("kafka.topics.dlq", &k.topics.dlq),
            ("kafka.topics.checkpoints", &k.topics.checkpoints),
            ("kafka.topics.schemas", &k.topics.schemas),
        ];
        for (key, name) in named {
            let legal = !name.is_empty()
                && name.len() <= 249
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !legal {
                p.push(invalid(
                    key,
                    format!("`{name}` is not a legal Kafka topic name"),
                ));
            }
        }
        // Provisional rows on the rollups topic, or a topic of their own: on any other the
        // sink would read them as (or read its records as) what they are not.
        if provisional != k.topics.rollups {
            if let Some((other, _)) = named.into_iter().find(|(key, name)| {
                !matches!(*key, "kafka.topics.rollups" | "kafka.topics.provisional")
                    && **name == provisional
            }) {
                p.push(invalid(
                    "kafka.topics.provisional",
                    format!(
                        "`{provisional}` is {other}: give provisional rows a topic of their own, or the rollups topic's name"
                    ),
                ));
            }
        }
        if k.topics.partitions < 1 {
            p.push(invalid("kafka.topics.partitions", "must be at least 1"));
        }
        if k.topics.replication_factor < 1 {
            p.push(invalid(
                "kafka.topics.replication_factor",
                "must be at least 1",
            ));
        }
        if k.connect_timeout_secs == 0 {
            p.push(invalid("kafka.connect_timeout_secs", "must be at least 1"));
        }
        k.check_security(p);
        k.check_wire_formats(p);
        crate::kafka::check_properties(k, p);
    }
}

impl KafkaConfig {
    /// The record topics (what `wire_formats` may name): events, rollups, provisional rows
    /// (when not on the rollups topic), alerts, dead letters.
    pub fn record_topics(&self) -> Vec<String> {
        let t = &self.topics;
        let mut topics = vec![t.events.clone(), t.rollups.clone()];
        topics.extend(t.separate_provisional_topic());
        topics.extend([t.alerts.clone(), t.dlq.clone()]);
        topics
    }

    /// The Confluent format needs a registry, and a topic with several record types (the
    /// rollups topic: rollups, funnel and conversation rows) a subject per record type.
    fn check_wire_formats(&self, p: &mut Problems) {
        for topic in self.wire_formats.keys() {
            if !self.record_topics().contains(topic) {
                p.push(invalid(
                    "kafka.wire_formats",
                    format!(
                        "`{topic}` is not one of banter's record topics ({})",
                        self.record_topics().join(", ")
                    ),
                ));
            }
        }
        let confluent: Vec<String> = self
            .record_topics()
            .into_iter()
            .filter(|t| {
                self.wire_formats
                    .get(t)
                    .copied()
                    .unwrap_or(self.wire_format)
                    == WireFormat::Confluent
            })
            .collect();
        let reg = &self.schema_registry;
        if confluent.is_empty() {
            return;
        }
        if !(reg.url.starts_with("http://") || reg.url.starts_with("https://")) {
            p.push(invalid(
                "kafka.schema_registry.url",
                format!(
                    "must be the http(s) URL of a Schema Registry: {} use the confluent wire format",
                    confluent.join(", ")
                ),
            ));
        }
        if reg.username.is_empty() != reg.password.is_empty() {
            let key = if reg.username.is_empty() {
                "kafka.schema_registry.username"
            } else {
                "kafka.schema_registry.password"
            };
            p.push(invalid(key, "username and password go together"));
        }
        check_readable_file(p, "kafka.schema_registry.ca_file", &reg.ca_file);
        if reg.subject_strategy == SubjectStrategy::Topic
            && confluent.contains(&self.topics.rollups)
        {
            p.push(invalid(
                "kafka.schema_registry.subject_strategy",
                format!(
                    "`topic` gives one subject per topic, but {} carries three record types (Rollup, FunnelRollup, ConversationRollup): use `topic_record`, or keep that topic single-object in kafka.wire_formats",
                    self.topics.rollups
                ),
            ));
        }
    }

    /// The TLS and SASL settings: what the protocol needs is set, what it does not use is not
    /// (a password set for a plaintext cluster is a mistake, not a default), files exist.
    fn check_security(&self, p: &mut Problems) {
        let proto = self.security_protocol;
        let (ssl, sasl) = (&self.ssl, &self.sasl);
        let named = format!("kafka.security_protocol is `{}`", proto.as_librdkafka());
        if proto.tls() {
            for (key, path) in [
                ("kafka.ssl.ca_file", &ssl.ca_file),
                ("kafka.ssl.cert_file", &ssl.cert_file),
                ("kafka.ssl.key_file", &ssl.key_file),
            ] {
                check_readable_file(p, key, path);
            }
            if ssl.cert_file.is_empty() != ssl.key_file.is_empty() {
                let key = if ssl.cert_file.is_empty() {
                    "kafka.ssl.cert_file"
                } else {
                    "kafka.ssl.key_file"
                };
                p.push(invalid(
                    key,
                    "kafka.ssl.cert_file and kafka.ssl.key_file go together: set both or neither",
                ));
            }
        } else {
            for (key, set) in [
                ("kafka.ssl.ca_file", !ssl.ca_file.is_empty()),
                ("kafka.ssl.cert_file", !ssl.cert_file.is_empty()),
                ("kafka.ssl.key_file", !ssl.key_file.is_empty()),
                ("kafka.ssl.key_password", !ssl.key_password.is_empty()),
            ] {
                if set {
                    p.push(invalid(key, format!("is set but {named}: TLS is not used (did you mean `ssl` or `sasl_ssl`?)")));
                }
            }
        }
        if proto.sasl() {
            match sasl.mechanism {
                SaslMechanism::Plain | SaslMechanism::ScramSha256 | SaslMechanism::ScramSha512 => {
                    if sasl.username.is_empty() {
                        p.push(invalid(
                            "kafka.sasl.username",
                            format!("must be set for {}", sasl.mechanism.as_librdkafka()),
                        ));
                    }
                    if sasl.password.is_empty() {
                        p.push(invalid(
                            "kafka.sasl.password",
                            format!(
                                "must be set for {} (e.g. {{ env = \"KAFKA_PASSWORD\" }})",
                                sasl.mechanism.as_librdkafka()
                            ),
                        ));
                    }
                }
                SaslMechanism::AwsMskIam => {
                    let r = sasl.aws_region.as_str();
                    let valid = !r.is_empty()
                        && r.split('-').count() >= 3
                        && r.bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
                    if !valid {
                        p.push(invalid(
                            "kafka.sasl.aws_region",
                            format!("`{r}` must be the cluster's AWS region (e.g. us-east-1) for AWS_MSK_IAM"),
                        ));
                    }
                    if !proto.tls() {
                        p.push(invalid(
                            "kafka.security_protocol",
                            "must be sasl_ssl for AWS_MSK_IAM (MSK's IAM listener is TLS only)",
                        ));
                    }
                }
                SaslMechanism::OauthBearer => {
                    let url = sasl.oauth_token_endpoint.as_str();
                    if !(url.starts_with("https://") || url.starts_with("http://")) {
                        p.push(invalid("kafka.sasl.oauth_token_endpoint", format!("`{url}` must be the http(s) URL of the OIDC token endpoint for OAUTHBEARER")));
                    }
                    if sasl.oauth_client_id.is_empty() {
                        p.push(invalid(
                            "kafka.sasl.oauth_client_id",
                            "must be set for OAUTHBEARER",
                        ));
                    }
                    if sasl.oauth_client_secret.is_empty() {
                        p.push(invalid(
                            "kafka.sasl.oauth_client_secret",
                            "must be set for OAUTHBEARER",
                        ));
                    }
                }
            }
        } else {
            for (key, set) in [
                ("kafka.sasl.username", !sasl.username.is_empty()),
                ("kafka.sasl.password", !sasl.password.is_empty()),
                (
                    "kafka.sasl.oauth_token_endpoint",
                    !sasl.oauth_token_endpoint.is_empty(),
                ),
                (
                    "kafka.sasl.oauth_client_secret",
                    !sasl.oauth_client_secret.is_empty(),
                ),
            ] {
                if set {
                    p.push(invalid(
                        key,
                        format!("is set but {named}: SASL is not used (did you mean `sasl_ssl`?)"),
                    ));
                }
            }
        }
    }
}

/// `path`, when set, must be a file this process can read.
pub fn check_readable_file(p: &mut Problems, key: &str, path: &str) {
    if path.is_empty() {
        return;
    }
    if let Err(e) = std::fs::File::open(path)
        .and_then(|f| f.metadata())
        .and_then(|m| {
            if m.is_file() {
                Ok(())
            } else {
                Err(std::io::Error::other("not a regular file"))
            }
        })
    {
        p.push(invalid(key, format!("cannot read `{path}`: {e}")));
    }
}

impl Validate for TelemetryConfig {
    fn check(&self, p: &mut Problems) {
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            p.push(invalid("telemetry.log_level", e.to_string()));
        }
    }
}

impl Validate for HttpConfig {
    fn check(&self, p: &mut Problems) {
        if self.listen.parse::<SocketAddr>().is_err() {
            p.push(invalid(
                "http.listen",
                format!("`{}` is not an ip:port address", self.listen),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Secret;

    /// A configuration as a role would have one: shared sections and one of its own.
    #[derive(Debug, Clone, Default, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct TestConfig {
        kafka: KafkaConfig,
        http: HttpConfig,
        role: RoleSection,
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct RoleSection {
        workers: u32,
        password: Secret,
    }

    impl Default for RoleSection {
        fn default() -> Self {
            RoleSection {
                workers: 4,
                password: Secret::default(),
            }
        }
    }

    impl Validate for TestConfig {
        fn check(&self, p: &mut Problems) {
            self.kafka.check(p);
            self.http.check(p);
            if self.role.workers == 0 {
                p.push(invalid("role.workers", "must be at least 1"));
            }
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_file_then_the_environment_and_every_key_checked() {
        let p = std::env::temp_dir().join(format!("banter-loader-{}.toml", std::process::id()));
        std::fs::write(&p, "[kafka]\nbrokers = \"k1:9092\"\n[role]\nworkers = 2\n").unwrap();
        let c: TestConfig = load(
            Some(&p),
            env(&[
                ("BANTER_ROLE__WORKERS", "7"),
                ("BANTER_ROLE__PASSWORD", "123456"), // typed like its default: a string
                ("BANTER_KAFKA_PORT", "19092"),      // a script variable, not a key
                ("OTHER", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.kafka.brokers, "k1:9092");
        assert_eq!(c.role.workers, 7);
        assert_eq!(c.role.password.expose(), "123456");
        assert!(!to_redacted_toml(&c).contains("123456"));
        let err = load::<TestConfig>(None, env(&[("BANTER_ROLE__WORKERZ", "1")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("workerz") && err.contains("BANTER_ROLE__WORKERZ"),
            "{err}"
        );
        let err = load::<TestConfig>(None, env(&[("BANTER_ROLE__WORKERS", "0")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`role.workers`"), "{err}");
        let err = load::<TestConfig>(None, env(&[("BANTER_HTTP__LISTEN", "nowhere")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`http.listen`"),
            "a shared section is checked: {err}"
        );
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn provisional_rows_get_a_topic_named_after_the_rollups_or_the_rollups_topic_itself() {
        // Unset: after the rollups topic, so that deployments naming their own do not share one.
        let c: TestConfig = load(
            None,
            env(&[("BANTER_KAFKA__TOPICS__ROLLUPS", "acme.rollups")]),
        )
        .unwrap();
        assert_eq!(
            c.kafka.topics.provisional_topic(),
            "acme.rollups-provisional"
        );
        assert!(c
            .kafka
            .record_topics()
            .contains(&"acme.rollups-provisional".to_owned()));
        // On the rollups topic: listed once.
        let c: TestConfig = load(
            None,
            env(&[("BANTER_KAFKA__TOPICS__PROVISIONAL", "banter.rollups.v1")]),
        )
        .unwrap();
        assert_eq!(c.kafka.topics.provisional_topic(), "banter.rollups.v1");
        assert_eq!(c.kafka.record_topics().len(), 4);
        // Any other of banter's topics, or no legal name: refused, naming the key.
        for (name, why) in [
            ("banter.dlq.v1", "kafka.topics.dlq"),
            ("banter.stream-checkpoints.v1", "kafka.topics.checkpoints"),
            ("bad topic", "not a legal Kafka topic name"),
        ] {
            let err = load::<TestConfig>(None, env(&[("BANTER_KAFKA__TOPICS__PROVISIONAL", name)]))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("`kafka.topics.provisional`") && err.contains(why),
                "{name}: {err}"
            );
        }
    }

    #[test]
    fn secrets_by_key_and_in_urls_never_print_and_unset_shows_unset() {
        #[derive(Serialize)]
        struct Shown {
            url: String,
            plain: String,
            properties: std::collections::BTreeMap<String, String>,
            unset: crate::Secret,
            set: crate::Secret,
        }
        let shown = Shown {
            url: "https://banter:s3cr3t@ch.example:8443/db?x=1".into(),
            plain: "http://ch.example:8123".into(),
            properties: [
                ("sasl.password", "hunter2"),
                ("sasl.jaas.config", "x password=\"hunter3\";"),
                ("ssl.key.pem", "-----BEGIN PRIVATE KEY-----"),
                ("compression.type", "zstd"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            unset: crate::Secret::default(),
            set: crate::Secret::new("hunter4"),
        };
        let out = to_redacted_toml(&shown);
        for secret in ["s3cr3t", "hunter2", "hunter3", "hunter4", "PRIVATE KEY"] {
            assert!(!out.contains(secret), "{secret} in\n{out}");
        }
        assert!(
            out.contains("https://banter:<redacted>@ch.example:8443/db?x=1"),
            "{out}"
        );
        assert!(out.contains("http://ch.example:8123"), "{out}");
        assert!(out.contains("compression.type\" = \"zstd\""), "{out}");
        assert!(out.contains("unset = \"\""), "{out}");
        assert!(out.contains("set = \"<redacted>\""), "{out}");
    }
}
