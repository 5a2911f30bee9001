//! What every banter role shares: configuration loading and the shared sections ([`config`]),
//! secrets ([`secret`]), logs and metrics ([`telemetry`]), the ops HTTP server ([`http`]), and
//! Kafka clients set up the way the pipeline needs them ([`kafka`]). Each stage's own settings
//! live in its crate.

pub mod config;
pub mod http;
pub mod kafka;
pub mod secret;
pub mod telemetry;

pub use config::{ConfigError, Validate};
pub use secret::Secret;

/// Wall-clock milliseconds since the Unix epoch (0 before 1970, saturating far ahead).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
