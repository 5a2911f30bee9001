//! `banter stream`: aggregates `banter.events.v1` in event-time windows per partition and
//! emits rollups, conversation and funnel rows and spike alerts, exactly once.
//!
//! Every stateful step is an [`Operator`] (process a record, follow event time, report and
//! restore its changelog) keeping its state in typed tables that record their own changes
//! ([`changelog`]); a [`Pipeline`] composes the four of one input partition; [`kafka`] runs one
//! pipeline per assigned partition in a consumer group, with transactions and restores.
//!
//! | module | what |
//! |---|---|
//! | [`window`] | the window engine: MINUTE, VELOCITY_5M and first-hour rollups, with its checkpoints |
//! | [`spike`] | spike detection on the minute counts (EWMA, Poisson floor, 2 of 3 minutes) |
//! | [`funnel`] | CTA funnels per campaign (triggers, stages, attribution) |
//! | [`conversation`] | response times and rates, threads, per account and post |
//! | [`cta`] | CTA campaigns, the campaigns file and keyword triggers |
//! | [`pipeline`] | the four operators of a partition composed, pure |
//! | [`operator`] | the shape every operator has |
//! | [`changelog`] | typed state tables that record their changes; the changelog stores |
//! | [`kafka`] | the Kafka loop: consumer group, transactions, restores, idle partitions, metrics |
//! | [`config`] | `[stream]`, `[spike]`, `[cta]`, `[conversation]` |
//! | [`quantile`], [`sketch`] | the mergeable quantile sketch (durations) and distinct-engager sketch |

pub mod changelog;
pub mod config;
pub mod conversation;
pub mod cta;
pub mod funnel;
pub mod kafka;
pub mod operator;
pub mod pipeline;
pub mod quantile;
pub mod sketch;
pub mod spike;
mod table;
mod time;
pub mod window;
mod window_table;

pub use config::{ConversationConfig, CtaConfig, SpikeConfig, StreamConfig, StreamSettings};
pub use kafka::{run, StreamError, StreamMetrics};
pub use operator::{Operator, Time};
pub use pipeline::{Fed, Outputs, Pipeline, PipelineConfig, PipelineStats, Saved};
pub use spike::{Detector, EarlyStats, MinuteCount};
pub use time::{DAY, HOUR, MINUTE};
pub use window::{Checkpoint, Engine, Mark, Output, Stats, WindowConfig};
