//! The `banter` binary's configuration: every role's section in one TOML file, loaded with
//! `BANTER_<SECTION>__<KEY>` environment overrides (see [`banter_runtime::config`]). Each
//! section belongs to the stage that uses it and is checked there.

use std::path::Path;

use banter_alert::AlertingConfig;
use banter_ingest::IngestConfig;
use banter_runtime::config::{
    ConfigError, HttpConfig, KafkaConfig, Problems, TelemetryConfig, Validate,
};
use banter_sink::{ClickHouseConfig, SinkConfig};
use banter_stream::{ConversationConfig, CtaConfig, SpikeConfig, StreamConfig, StreamSettings};
use serde::{Deserialize, Serialize};

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

impl Validate for Config {
    fn check(&self, p: &mut Problems) {
        self.kafka.check(p);
        self.clickhouse.check(p);
        self.telemetry.check(p);
        self.http.check(p);
        self.ingest.check(p);
        self.stream_settings().check(p);
        self.sink.check(p);
        self.alerting.check(p);
    }
}

impl Config {
    /// Loads `path` (or the defaults when None), applies the environment overrides from
    /// `vars`, and validates.
    ///
    /// # Errors
    /// See [`banter_runtime::config::load`].
    pub fn load(
        path: Option<&Path>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        banter_runtime::config::load(path, vars)
    }

    /// Loads from the process environment: the file named by `path` or `BANTER_CONFIG`.
    ///
    /// # Errors
    /// See [`banter_runtime::config::load`].
    pub fn from_env(path: Option<&Path>) -> Result<Self, ConfigError> {
        banter_runtime::config::from_env(path)
    }

    /// The effective configuration as TOML, secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        banter_runtime::config::to_redacted_toml(self)
    }

    /// What `banter stream` runs with besides Kafka.
    pub fn stream_settings(&self) -> StreamSettings {
        StreamSettings {
            stream: self.stream.clone(),
            spike: self.spike,
            cta: self.cta.clone(),
            conversation: self.conversation,
        }
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
            ("BANTER_SPIKE__RESOLVE_Z", "-1", "spike.resolve_z"),
            ("BANTER_STREAM__THREADS", "1000", "stream.threads"),
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

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = Config::load(
            None,
            env(&[
                ("BANTER_KAFKA__BROKERS", "localhost"),
                ("BANTER_CLICKHOUSE__URL", "ftp://x"),
                ("BANTER_INGEST__MAX_EVENTS_PER_REQUEST", "0"),
                ("BANTER_ALERTING__ALERTMANAGER_URLS", "[\"am:9093\"]"),
                ("BANTER_KAFKA__SECURITY_PROTOCOL", "sasl_ssl"),
            ]),
        )
        .unwrap_err();
        let keys = err.keys();
        for key in [
            "kafka.brokers",
            "clickhouse.url",
            "ingest.max_events_per_request",
            "alerting.alertmanager_urls",
            "kafka.sasl.username",
            "kafka.sasl.password",
        ] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}: {err}");
        }
        let text = err.to_string();
        assert!(text.starts_with("6 config problems"), "{text}");
    }

    #[test]
    fn kafka_security_settings_are_checked_without_connecting() {
        let load = |pairs: &[(&str, &str)]| Config::load(None, env(pairs));
        // What the protocol needs.
        let err = load(&[
            ("BANTER_KAFKA__SECURITY_PROTOCOL", "sasl_ssl"),
            ("BANTER_KAFKA__SASL__MECHANISM", "OAUTHBEARER"),
        ])
        .unwrap_err();
        assert_eq!(
            err.keys(),
            [
                "kafka.sasl.oauth_token_endpoint",
                "kafka.sasl.oauth_client_id",
                "kafka.sasl.oauth_client_secret"
            ],
            "{err}"
        );
        // What it does not use is a mistake, not a default.
        let err = load(&[("BANTER_KAFKA__SASL__PASSWORD", "x")]).unwrap_err();
        assert_eq!(err.keys(), ["kafka.sasl.password"], "{err}");
        assert!(err.to_string().contains("plaintext"), "{err}");
        // Files that must exist, and go together.
        let err = load(&[
            ("BANTER_KAFKA__SECURITY_PROTOCOL", "ssl"),
            ("BANTER_KAFKA__SSL__CA_FILE", "/nonexistent/ca.pem"),
            ("BANTER_KAFKA__SSL__CERT_FILE", "/nonexistent/client.pem"),
        ])
        .unwrap_err();
        assert_eq!(
            err.keys(),
            [
                "kafka.ssl.ca_file",
                "kafka.ssl.cert_file",
                "kafka.ssl.key_file"
            ],
            "{err}"
        );
        // librdkafka is asked about every extra property: unknown names and bad values.
        let p = write(
            "[kafka.properties]\n\"linger.ms\" = \"20\"\n\"sasl.pasword\" = \"x\"\n\"acks\" = \"some\"\n",
        );
        let err = Config::load(Some(&p), env(&[])).unwrap_err();
        assert_eq!(
            err.keys(),
            [
                "kafka.properties.\"acks\"",
                "kafka.properties.\"sasl.pasword\""
            ],
            "{err}"
        );
        assert!(err.to_string().contains("sasl.pasword"), "{err}");
        // A property contradicting a named setting.
        let p = write(
            "[kafka.properties]\n\"security.protocol\" = \"ssl\"\n\"compression.type\" = \"lz4\"\n",
        );
        let err = Config::load(Some(&p), env(&[])).unwrap_err();
        assert_eq!(
            err.keys(),
            ["kafka.properties.\"security.protocol\""],
            "{err}"
        );
        assert!(err.to_string().contains("kafka.security_protocol"), "{err}");
        // AWS_MSK_IAM: a region, over TLS; OAUTHBEARER with tokens from the client context.
        let err = load(&[
            ("BANTER_KAFKA__SECURITY_PROTOCOL", "sasl_plaintext"),
            ("BANTER_KAFKA__SASL__MECHANISM", "AWS_MSK_IAM"),
        ])
        .unwrap_err();
        assert_eq!(
            err.keys(),
            ["kafka.sasl.aws_region", "kafka.security_protocol"],
            "{err}"
        );
        let c = load(&[
            ("BANTER_KAFKA__SECURITY_PROTOCOL", "sasl_ssl"),
            ("BANTER_KAFKA__SASL__MECHANISM", "AWS_MSK_IAM"),
            ("BANTER_KAFKA__SASL__AWS_REGION", "eu-west-1"),
        ])
        .unwrap();
        let native = banter_runtime::kafka::producer_config(&c.kafka, "t");
        assert_eq!(native.get("sasl.mechanisms"), Some("OAUTHBEARER"));
        assert_eq!(native.get("sasl.oauthbearer.method"), None);
        native.create_native_config().unwrap();
        // A whole, valid set.
        let c = load(&[
            ("BANTER_KAFKA__SECURITY_PROTOCOL", "sasl_ssl"),
            ("BANTER_KAFKA__SASL__MECHANISM", "PLAIN"),
            ("BANTER_KAFKA__SASL__USERNAME", "API_KEY"),
            ("BANTER_KAFKA__SASL__PASSWORD", "API_SECRET"),
            ("BANTER_KAFKA__COMPRESSION", "zstd"),
        ])
        .unwrap();
        assert!(!c.to_redacted_toml().contains("API_SECRET"));
        let native = banter_runtime::kafka::producer_config(&c.kafka, "t");
        assert_eq!(native.get("sasl.mechanisms"), Some("PLAIN"));
        assert_eq!(native.get("compression.type"), Some("zstd"));
        native.create_native_config().unwrap();
        // Extra properties cannot weaken what exactly-once needs: refused, naming each, and
        // overridden should they get through.
        let p = write("[kafka.properties]\n\"acks\" = \"1\"\n\"enable.idempotence\" = \"false\"\n\"transactional.id\" = \"mine\"\n");
        let err = Config::load(Some(&p), env(&[])).unwrap_err();
        assert_eq!(
            err.keys(),
            [
                "kafka.properties.\"acks\"",
                "kafka.properties.\"enable.idempotence\"",
                "kafka.properties.\"transactional.id\""
            ],
            "{err}"
        );
        assert!(err.to_string().contains("banter sets this itself"), "{err}");
        let mut k = banter_runtime::config::KafkaConfig::default();
        k.properties.insert("acks".into(), "1".into());
        k.properties
            .insert("enable.idempotence".into(), "false".into());
        let native = banter_runtime::kafka::producer_config(&k, "t");
        assert_eq!(native.get("acks"), Some("all"));
        assert_eq!(native.get("enable.idempotence"), Some("true"));
        // The values banter sets anyway are harmless; an alias of one it sets is refused too.
        let p = write(
            "[kafka.properties]\n\"acks\" = \"all\"\n\"isolation.level\" = \"read_committed\"\n",
        );
        Config::load(Some(&p), env(&[])).unwrap();
        // Reports of failures only would leave the futures of the sink's (and `banter
        // generate`'s, the schema publisher's) sends waiting forever: each producer sets it.
        for (name, value) in [
            ("request.required.acks", "1"),
            ("delivery.report.only.error", "true"),
        ] {
            let p = write(&format!("[kafka.properties]\n\"{name}\" = \"{value}\"\n"));
            let err = Config::load(Some(&p), env(&[])).unwrap_err();
            assert_eq!(
                err.keys(),
                [format!("kafka.properties.\"{name}\"")],
                "{err}"
            );
        }
        // A named setting's value in another case is the same value.
        let p = write("[kafka]\nsecurity_protocol = \"ssl\"\n[kafka.properties]\n\"security.protocol\" = \"SSL\"\n");
        Config::load(Some(&p), env(&[])).unwrap();
        assert!(!banter_runtime::config::is_secret_key(
            "oauth_token_endpoint"
        ));
        assert!(banter_runtime::config::is_secret_key("oauth_client_secret"));
    }

    #[test]
    fn the_confluent_wire_format_needs_a_registry_and_a_subject_per_record_type() {
        let err =
            Config::load(None, env(&[("BANTER_KAFKA__WIRE_FORMAT", "confluent")])).unwrap_err();
        assert_eq!(
            err.keys(),
            [
                "kafka.schema_registry.url",
                "kafka.schema_registry.subject_strategy"
            ],
            "{err}"
        );
        // The rollups topic kept single-object: one record type per confluent topic.
        let p = write(
            "[kafka]\nwire_format = \"confluent\"\n[kafka.wire_formats]\n\"banter.rollups.v1\" = \"single-object\"\n[kafka.schema_registry]\nurl = \"https://sr.example.com\"\n",
        );
        Config::load(Some(&p), env(&[])).unwrap();
        let c = Config::load(
            None,
            env(&[
                ("BANTER_KAFKA__WIRE_FORMAT", "confluent"),
                (
                    "BANTER_KAFKA__SCHEMA_REGISTRY__URL",
                    "https://sr.example.com",
                ),
                (
                    "BANTER_KAFKA__SCHEMA_REGISTRY__SUBJECT_STRATEGY",
                    "topic_record",
                ),
                ("BANTER_KAFKA__SCHEMA_REGISTRY__USERNAME", "key"),
                ("BANTER_KAFKA__SCHEMA_REGISTRY__PASSWORD", "secret"),
            ]),
        )
        .unwrap();
        assert!(!c.to_redacted_toml().contains("secret\""));
        let p = write("[kafka.wire_formats]\n\"some.other.topic\" = \"confluent\"\n");
        let err = Config::load(Some(&p), env(&[])).unwrap_err();
        assert!(err.keys().contains(&"kafka.wire_formats"), "{err}");
    }
}
