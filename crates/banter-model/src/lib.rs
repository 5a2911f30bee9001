//! banter's event model: the normalized [`EngagementEvent`], the records later stages emit
//! ([`Rollup`], [`FunnelRollup`], [`SpikeAlert`], [`DeadLetter`]), validation with precise
//! errors, and Avro single-object codecs ([`codec`]).
//!
//! This crate has no async runtime and no Kafka dependency: ingest, stream and sink all build on
//! it, and so can any other consumer of banter's topics.

pub mod codec;
pub mod event;
pub mod records;
pub mod validate;

pub use codec::{AvroRecord, Codec, CodecError, Fingerprint};
pub use event::{
    Action, ContentType, EngagementEvent, EventTimeSource, Kind, Platform, TimestampMillis,
};
pub use records::{
    AlertState, ConversationRollup, DeadLetter, FunnelRollup, Rollup, SketchBucket, SpikeAlert,
    Stage, WindowKind, ZERO_BUCKET,
};
pub use smol_str::SmolStr;
pub use validate::{ValidationContext, ValidationError};
