//! The ClickHouse side of banter: `banter migrate` ([`migrate`]) and `banter sink` ([`sink`]),
//! their configuration ([`config`]) and the ClickHouse client set up for the server it talks to
//! ([`clickhouse`]).

pub mod clickhouse;
pub mod config;
pub mod migrate;
pub mod retention;
pub mod sink;

pub use clickhouse::{connect, ClickHouse};
pub use config::{ClickHouseConfig, SinkConfig};
pub use migrate::{migrate, plan, render, MigrateError, Outcome, Target};
pub use sink::{run, SinkError, SinkMetrics};
