//! Ingest's configuration: the `[ingest]` section.

use std::net::SocketAddr;

use banter_runtime::config::{invalid, ConfigError, Problems, Validate};
use banter_runtime::Secret;
use serde::{Deserialize, Serialize};

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
    /// How long a request's body may take to arrive, in ms (408 after).
    pub body_timeout_ms: u64,
    /// How long a connection may take to send a request's headers, in ms (closed after).
    pub header_timeout_ms: u64,
    /// Most connections open at once; more wait to be accepted.
    pub max_connections: usize,
    /// Most requests handled at once; more get 503 with `Retry-After` at once rather than
    /// queueing (each may hold up to `max_body_bytes`).
    pub max_concurrent_requests: usize,
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
    /// Who may post first-party events (`POST /v1/events`): each key by its SHA-256, so the
    /// configuration holds no usable secret. Two entries of one source rotate a key.
    pub api_keys: Vec<ApiKey>,
    /// Accept `/v1/events` without a key on a non-loopback listener (never in production: anyone
    /// who reaches the port could forge events and page on-call). Without keys, a loopback
    /// listener is open to local clients.
    pub allow_unauthenticated: bool,
}

/// One accepted API key of `/v1/events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// The system posting with it (counted per source).
    pub source: String,
    /// SHA-256 of the key, 64 hex digits (`printf %s KEY | sha256sum`).
    pub sha256: String,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 4 * 1024 * 1024,
            max_events_per_request: 1000,
            body_timeout_ms: 30_000,
            header_timeout_ms: 10_000,
            max_connections: 1024,
            max_concurrent_requests: 256,
            publish_timeout_ms: 5000,
            max_future_skew_secs: 300,
            max_batch_events: 10_000,
            transactional_id: "banter-ingest".into(),
            publisher_workers: 4,
            meta_app_secret: Secret::default(),
            meta_verify_token: Secret::default(),
            actor_salt: Secret::default(),
            api_keys: Vec::new(),
            allow_unauthenticated: false,
        }
    }
}

impl Validate for IngestConfig {
    /// Checks the values that do not depend on the role being started.
    fn check(&self, p: &mut Problems) {
        if self.listen.parse::<SocketAddr>().is_err() {
            p.push(invalid(
                "ingest.listen",
                format!("`{}` is not an ip:port address", self.listen),
            ));
        }
        if self.max_body_bytes < 1024 {
            p.push(invalid("ingest.max_body_bytes", "must be at least 1024"));
        }
        if self.max_events_per_request == 0 {
            p.push(invalid(
                "ingest.max_events_per_request",
                "must be at least 1",
            ));
        }
        if self.body_timeout_ms < 100 {
            p.push(invalid("ingest.body_timeout_ms", "must be at least 100"));
        }
        if self.header_timeout_ms < 100 {
            p.push(invalid("ingest.header_timeout_ms", "must be at least 100"));
        }
        if self.max_connections < self.max_concurrent_requests {
            p.push(invalid(
                "ingest.max_connections",
                "must be at least ingest.max_concurrent_requests",
            ));
        }
        if self.max_concurrent_requests == 0 {
            p.push(invalid(
                "ingest.max_concurrent_requests",
                "must be at least 1",
            ));
        }
        if self.publish_timeout_ms < 100 {
            p.push(invalid("ingest.publish_timeout_ms", "must be at least 100"));
        }
        if self.max_batch_events < self.max_events_per_request {
            p.push(invalid(
                "ingest.max_batch_events",
                "must be at least ingest.max_events_per_request",
            ));
        }
        if !(1..=64).contains(&self.publisher_workers) {
            p.push(invalid(
                "ingest.publisher_workers",
                "must be between 1 and 64",
            ));
        }
        if self.transactional_id.is_empty() {
            p.push(invalid("ingest.transactional_id", "must not be empty"));
        }
        for (i, k) in self.api_keys.iter().enumerate() {
            if k.source.trim().is_empty()
                || !k
                    .source
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            {
                p.push(invalid(
                    "ingest.api_keys",
                    format!("entry {i}: `source` must be a non-empty name of letters, digits, -, _ or ."),
                ));
            }
            if k.sha256.len() != 64 || !k.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                p.push(invalid(
                    "ingest.api_keys",
                    format!(
                        "entry {i} ({}): `sha256` must be the 64 hex digits of the key's SHA-256, not the key",
                        k.source
                    ),
                ));
            }
        }
    }
}

impl IngestConfig {
    /// What `banter ingest` (and `banter replay`) need on top of [`Validate::validate`].
    ///
    /// # Errors
    /// `ingest.actor_salt` is unset or too short.
    pub fn validate_for_ingest(&self) -> Result<(), ConfigError> {
        let salt = self.actor_salt.expose();
        if salt.len() < 16 {
            return Err(invalid(
                "ingest.actor_salt",
                "must be set, at least 16 characters (e.g. BANTER_INGEST__ACTOR_SALT)",
            ));
        }
        // A salt copied from an example hashes actors the same as everyone who copied it: the
        // hashes could be reversed by hashing known ids with it.
        if KNOWN_DEFAULT_SALTS.contains(&salt) || salt.to_ascii_lowercase().contains("change-me") {
            return Err(invalid(
                "ingest.actor_salt",
                "is an example value; set a long random one (e.g. `openssl rand -hex 32`)",
            ));
        }
        Ok(())
    }
}

impl IngestConfig {
    /// Whether `/v1/events` takes requests without a key: no keys configured, and either a
    /// loopback listener or `allow_unauthenticated`.
    pub fn open_without_keys(&self) -> bool {
        self.api_keys.is_empty()
            && (self.allow_unauthenticated
                || self
                    .listen
                    .parse::<SocketAddr>()
                    .is_ok_and(|a| a.ip().is_loopback()))
    }
}

/// Salts that appear in banter's own examples.
const KNOWN_DEFAULT_SALTS: [&str; 1] = ["change-me-to-a-long-random-salt"];

#[cfg(test)]
mod salt_tests {
    use super::*;

    #[test]
    fn the_examples_salt_is_refused() {
        let mut c = IngestConfig {
            actor_salt: Secret::new("change-me-to-a-long-random-salt"),
            ..IngestConfig::default()
        };
        let err = c.validate_for_ingest().unwrap_err().to_string();
        assert!(
            err.contains("ingest.actor_salt") && err.contains("example"),
            "{err}"
        );
        c.actor_salt = Secret::new("3f9a0c1e5b7d2468ace13579bdf02468");
        c.validate_for_ingest().unwrap();
    }
}
