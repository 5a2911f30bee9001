//! The `banter` binary's library side: its configuration ([`Config`]), which gathers every
//! role's section, for the binary and for tests that start the roles; [`verify`], a run's
//! ClickHouse against the generator's truth.

pub mod config;
pub mod verify;

pub use config::Config;
