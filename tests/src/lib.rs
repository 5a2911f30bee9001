//! banter's test kit, for the integration tests of every crate (and of this one, under
//! `tests/`):
//!
//! * [`stack`]: the real local stack — service checks with a clear message when something is
//!   down, a fresh topic and ClickHouse database per test, ingest in-process, polling with a
//!   deadline.
//! * [`processes`]: the `banter` roles and the generator as processes, clean stops and kill -9.
//! * [`readers`]: what the pipeline wrote, read back from Kafka and ClickHouse.
//! * [`expected`]: comparisons with the generator's truth ([`banter_workload::Generated`]).
//! * [`versions`]: records as a newer banter version writes them.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

pub mod expected;
pub mod processes;
pub mod readers;
pub mod schema_registry;
pub mod soak;
pub mod stack;
pub mod versions;

pub use expected::*;
pub use processes::*;
pub use readers::*;
pub use schema_registry::*;
pub use stack::*;
pub use versions::*;
