//! The `banter` binary's library side: its configuration ([`Config`]), which gathers every
//! role's section, for the binary and for tests that start the roles.

pub mod config;

pub use config::Config;
