//! `banter stream`: aggregates `banter.events.v1` in event-time windows per partition and
//! emits rollups.
//!
//! Today this crate holds the windowing engine ([`window`]), pure and tested on its own; the
//! Kafka consumer loop, exactly-once output and the changelog of long-lived state build on it
//! (issue 4, in progress).

pub mod window;

pub use window::{Checkpoint, Engine, Mark, Output, Stats, WindowConfig};
