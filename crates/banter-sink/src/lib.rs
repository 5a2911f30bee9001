//! The ClickHouse side of banter: `banter migrate` ([`migrate`]) and `banter sink` ([`sink`]).

pub mod migrate;
pub mod sink;

pub use migrate::{migrate, render, MigrateError, Outcome};
pub use sink::{run, SinkError, SinkMetrics};
