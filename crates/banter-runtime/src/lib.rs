//! What every banter role shares: configuration ([`config`]), secrets ([`secret`]), logs and
//! metrics ([`telemetry`]), the ops HTTP server ([`http`]), and Kafka and ClickHouse clients
//! set up the way the pipeline needs them ([`kafka`], [`clickhouse`]).

pub mod clickhouse;
pub mod config;
pub mod http;
pub mod kafka;
pub mod secret;
pub mod telemetry;

pub use config::Config;
pub use secret::Secret;
