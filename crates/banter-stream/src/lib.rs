//! `banter stream`: aggregates `banter.events.v1` in event-time windows per partition and
//! emits rollups, conversation and funnel rows and spike alerts, exactly once.
//!
//! * [`window`]: the windowing engine of one partition, pure (no Kafka, no clock), with its
//!   checkpoints.
//! * [`cta`]: CTA campaigns and keyword triggers (the matcher the funnels start from).
//! * [`conversation`]: response times and rates, threads, per account and post.
//! * [`funnel`]: CTA funnels per campaign (triggers, stages, attribution), state in a changelog.
//! * [`quantile`]: a mergeable quantile sketch (1 % relative error) for durations.
//! * [`sketch`]: the distinct-engager sketch (exact up to 32, then HyperLogLog, 4.6 %).
//! * [`spike`]: spike detection on the minute counts (EWMA, Poisson floor, 2 of 3 minutes).
//! * [`runner`]: the Kafka loop: consumer group, one engine per assigned partition,
//!   transactions, restore on assignment, idle partitions, metrics.

pub mod conversation;
pub mod cta;
pub mod funnel;
pub mod quantile;
pub mod runner;
pub mod sketch;
pub mod spike;
mod store;
pub mod window;

pub use runner::{run, StreamError, StreamMetrics};
pub use spike::{Detector, SpikeConfig};
pub use window::{Checkpoint, Engine, Mark, Output, Stats, WindowConfig};
