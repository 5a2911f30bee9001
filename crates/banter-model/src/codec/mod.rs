//! Avro single-object encoding (`C3 01` + 8-byte CRC-64-AVRO fingerprint, little-endian, +
//! body) for every record banter puts on Kafka.
//!
//! Three paths produce and accept the same bytes:
//!
//! * the **fast path** ([`Codec::encode`], [`Codec::decode`]): for the hot `EngagementEvent`
//!   with the current schema, a hand-written codec ([`event_v1`]); for the other records and
//!   other schema versions, `serde_avro_fast`;
//! * the **serde path** ([`Codec::encode_serde`], [`Codec::decode_serde`]): `serde_avro_fast`
//!   always, serializing the Rust types with no intermediate value tree;
//! * the **generic path** ([`Codec::encode_generic`], [`Codec::decode_generic`]) goes through
//!   `apache-avro`'s `Value` and its schema resolution; it is the reference the others are
//!   tested against, and what `apache-avro` users would write.
//!
//! `apache-avro` also parses the schemas for the generic path and its resolution. The wire
//! fingerprint is computed by `serde_avro_fast`, whose canonical form follows the spec where
//! `apache-avro` 0.21 does not (see [`Codec::fingerprint`]).
//!
//! A consumer finds the writer schema from the fingerprint. A [`Codec`] knows the current schema
//! and any number of other versions ([`Codec::register_writer_schema`]); bytes written with an
//! older or newer version are read by Avro's resolution rules: fields the reader does not know
//! are skipped, fields the writer did not have take the reader's default. Bytes that are not a
//! valid record of a known schema give a [`CodecError`], never a panic.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, LazyLock, RwLock};

use serde::de::DeserializeOwned;
use serde::Serialize;
use thiserror::Error;

pub mod binary;
pub mod event_v1;
pub mod rollups_v1;

use crate::event::EngagementEvent;
use crate::records::{ConversationRollup, DeadLetter, FunnelRollup, Rollup, SpikeAlert};

/// The most `apache-avro` may allocate for one string, byte array or array block when
/// decoding (the generic path): 8 MiB, above any Kafka record banter reads.
pub const GENERIC_MAX_ALLOCATION: usize = 8 << 20;

/// The two magic bytes that start an Avro single-object encoded message.
pub const SINGLE_OBJECT_MAGIC: [u8; 2] = [0xC3, 0x01];

/// Length of the single-object header: magic + fingerprint.
pub const HEADER_LEN: usize = 10;

/// A CRC-64-AVRO (Rabin) schema fingerprint, in the byte order of the wire header.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 8]);

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Why bytes could not be encoded or decoded.
#[derive(Debug, Error)]
pub enum CodecError {
    /// The schema text is not a valid Avro schema.
    #[error("invalid avro schema: {0}")]
    Schema(String),
    /// Fewer bytes than a single-object header.
    #[error("message is {len} bytes, shorter than the {HEADER_LEN}-byte single-object header")]
    TooShort {
        /// The message length.
        len: usize,
    },
    /// The message does not start with `C3 01`.
    #[error(
        "message does not start with the avro single-object marker c3 01 (got {0:02x} {1:02x})"
    )]
    BadMagic(u8, u8),
    /// The fingerprint names a schema this codec does not know.
    #[error("unknown writer schema fingerprint {fingerprint} for {record}")]
    UnknownSchema {
        /// The fingerprint in the message.
        fingerprint: Fingerprint,
        /// The record type expected.
        record: &'static str,
    },
    /// The body is not a valid record of the writer schema.
    #[error("invalid {record} body: {detail}")]
    Body {
        /// The record type expected.
        record: &'static str,
        /// What the decoder said.
        detail: String,
    },
    /// Bytes left after a complete record.
    #[error("{trailing} trailing bytes after a complete {record}")]
    Trailing {
        /// How many.
        trailing: usize,
        /// The record type.
        record: &'static str,
    },
    /// The value does not fit the schema (encoding).
    #[error("cannot encode {record}: {detail}")]
    Encode {
        /// The record type.
        record: &'static str,
        /// What the encoder said.
        detail: String,
    },
}

/// One version of a record's schema, parsed for both paths.
struct SchemaVersion {
    fingerprint: Fingerprint,
    fast: serde_avro_fast::Schema,
    apache: apache_avro::Schema,
}

impl SchemaVersion {
    fn parse(json: &str) -> Result<Self, CodecError> {
        let apache =
            apache_avro::Schema::parse_str(json).map_err(|e| CodecError::Schema(e.to_string()))?;
        let fast: serde_avro_fast::Schema = json
            .parse()
            .map_err(|e: serde_avro_fast::schema::SchemaError| CodecError::Schema(e.to_string()))?;
        // The fingerprint comes from serde_avro_fast's Parsing Canonical Form: apache-avro 0.21
        // strips `logicalType` but leaves `{"type":"long"}` where the spec (and fastavro, and
        // Java) collapse it to `"long"`, so its fingerprint differs for every schema with a
        // timestamp. The interop test checks ours against fastavro's.
        let bytes = *fast.rabin_fingerprint();
        Ok(SchemaVersion {
            fingerprint: Fingerprint(bytes),
            fast,
            apache,
        })
    }
}

/// A Rust type with an Avro schema in `schemas/avro/`.
pub trait AvroRecord: Serialize + DeserializeOwned + Sized + 'static {
    /// The record's name, for error messages.
    const NAME: &'static str;
    /// The current schema (JSON), used for writing.
    const SCHEMA: &'static str;

    /// The process-wide codec for this type, built on first use.
    fn codec() -> &'static Codec<Self>;

    /// A hand-written codec of the current schema, for hot types.
    fn specialized() -> Option<&'static Specialized<Self>> {
        None
    }
}

/// Reads one body: the value and how many bytes were left over.
pub type BodyDecoder<T> = fn(&[u8]) -> Result<(T, usize), binary::ReadError>;

/// Reads one body into an existing value; returns how many bytes were left over.
pub type BodyDecoderInto<T> = fn(&[u8], &mut T) -> Result<usize, binary::ReadError>;

/// A hand-written Avro body codec of one schema version, identified by its fingerprint.
#[derive(Debug)]
pub struct Specialized<T> {
    /// The fingerprint of the schema it implements.
    pub fingerprint: [u8; 8],
    /// Appends the body of `value`.
    pub encode: fn(&T, &mut Vec<u8>),
    /// Reads a body; returns the value and how many bytes were left over. None: reading
    /// takes the serde path.
    pub decode: Option<BodyDecoder<T>>,
    /// Reads a body into an existing value, reusing its buffers; returns how many bytes were
    /// left over.
    pub decode_into: Option<BodyDecoderInto<T>>,
}

/// Encoder and decoder of one record type; see the module docs.
pub struct Codec<T: 'static> {
    current: Arc<SchemaVersion>,
    specialized: Option<&'static Specialized<T>>,
    /// Other versions, registered while running (a newer writer's schema found on the
    /// schema topic): shared codecs are `'static`, so behind a lock, taken only for them.
    others: RwLock<HashMap<Fingerprint, Arc<SchemaVersion>>>,
    _record: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for Codec<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Codec")
            .field("fingerprint", &self.current.fingerprint)
            .field(
                "other_versions",
                &self.others.read().map(|o| o.len()).unwrap_or_default(),
            )
            .finish()
    }
}

impl<T: AvroRecord> Codec<T> {
    /// A codec writing `T::SCHEMA` and reading it.
    pub fn new() -> Result<Self, CodecError> {
        let current = SchemaVersion::parse(T::SCHEMA)?;
        let specialized = T::specialized().filter(|s| s.fingerprint == current.fingerprint.0);
        Ok(Codec {
            current: Arc::new(current),
            specialized,
            others: RwLock::new(HashMap::new()),
            _record: PhantomData,
        })
    }

    /// Also accept bytes written with this schema version (older or newer), resolved to `T`.
    /// Returns the version's fingerprint. Works on the shared codec ([`AvroRecord::codec`]):
    /// what one thread registers, every decoder reads from then on.
    ///
    /// # Errors
    /// Not a valid Avro schema, or one of another record (its name is not `T`'s).
    pub fn register_writer_schema(&self, json: &str) -> Result<Fingerprint, CodecError> {
        let v = SchemaVersion::parse(json)?;
        let name = record_name(json);
        if name.as_deref() != Some(T::NAME) {
            return Err(CodecError::Schema(format!(
                "a schema of record {} cannot be read as {}",
                name.as_deref().unwrap_or("(none)"),
                T::NAME
            )));
        }
        let fp = v.fingerprint;
        if fp != self.current.fingerprint {
            if let Ok(mut others) = self.others.write() {
                others.entry(fp).or_insert_with(|| Arc::new(v));
            }
        }
        Ok(fp)
    }

    /// Whether bytes with this writer fingerprint can be read.
    pub fn knows(&self, fp: Fingerprint) -> bool {
        fp == self.current.fingerprint || self.others.read().is_ok_and(|o| o.contains_key(&fp))
    }

    /// The fingerprint of the schema this codec writes: CRC-64-AVRO of the schema's Parsing
    /// Canonical Form, as fastavro and the Java library compute it. (`apache-avro` 0.21's
    /// `Schema::fingerprint` differs for schemas with logical types; do not use it for headers.)
    pub fn fingerprint(&self) -> Fingerprint {
        self.current.fingerprint
    }

    /// The parsed current schema (`apache-avro`).
    pub fn schema(&self) -> &apache_avro::Schema {
        &self.current.apache
    }

    /// Whether the hand-written codec is in use for the current schema.
    pub fn is_specialized(&self) -> bool {
        self.specialized.is_some()
    }

    /// An encoder that reuses its buffers across calls (the fastest way to encode many).
    pub fn encoder(&self) -> Encoder<'_, T> {
        Encoder {
            specialized: self.specialized,
            fingerprint: self.current.fingerprint,
            config: serde_avro_fast::ser::SerializerConfig::new(&self.current.fast),
        }
    }

    /// Encodes one record (fast path) into a new vector.
    pub fn encode(&self, value: &T) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::with_capacity(160);
        self.encoder().encode_into(value, &mut out)?;
        Ok(out)
    }

    /// Encodes one record with `serde_avro_fast` (serde path) into a new vector.
    pub fn encode_serde(&self, value: &T) -> Result<Vec<u8>, CodecError> {
        let mut config = serde_avro_fast::ser::SerializerConfig::new(&self.current.fast);
        serde_avro_fast::to_single_object_vec(value, &mut config).map_err(|e| CodecError::Encode {
            record: T::NAME,
            detail: e.to_string(),
        })
    }

    fn split<'b>(&self, bytes: &'b [u8]) -> Result<(Arc<SchemaVersion>, &'b [u8]), CodecError> {
        if bytes.len() < HEADER_LEN {
            return Err(CodecError::TooShort { len: bytes.len() });
        }
        if bytes[..2] != SINGLE_OBJECT_MAGIC {
            return Err(CodecError::BadMagic(bytes[0], bytes[1]));
        }
        let mut fp = [0u8; 8];
        fp.copy_from_slice(&bytes[2..HEADER_LEN]);
        let fp = Fingerprint(fp);
        let version = if fp == self.current.fingerprint {
            Arc::clone(&self.current)
        } else {
            self.others
                .read()
                .ok()
                .and_then(|o| o.get(&fp).cloned())
                .ok_or(CodecError::UnknownSchema {
                    fingerprint: fp,
                    record: T::NAME,
                })?
        };
        Ok((version, &bytes[HEADER_LEN..]))
    }

    /// The fingerprint in a message's header, if it has a valid one.
    pub fn peek_fingerprint(bytes: &[u8]) -> Option<Fingerprint> {
        if bytes.len() < HEADER_LEN || bytes[..2] != SINGLE_OBJECT_MAGIC {
            return None;
        }
        let mut fp = [0u8; 8];
        fp.copy_from_slice(&bytes[2..HEADER_LEN]);
        Some(Fingerprint(fp))
    }

    /// A hand-written decoder's result as the codec's: a bad body, or bytes left over after
    /// the record, is an error.
    fn checked<R>(r: Result<(R, usize), binary::ReadError>) -> Result<R, CodecError> {
        let (value, trailing) = r.map_err(|e| CodecError::Body {
            record: T::NAME,
            detail: e.to_string(),
        })?;
        if trailing != 0 {
            return Err(CodecError::Trailing {
                trailing,
                record: T::NAME,
            });
        }
        Ok(value)
    }

    /// Decodes one single-object message (fast path). Any writer schema version registered
    /// with this codec is accepted; fields are matched by name.
    pub fn decode(&self, bytes: &[u8]) -> Result<T, CodecError> {
        if let Some(decode) = self.specialized.and_then(|s| s.decode) {
            if Self::peek_fingerprint(bytes) == Some(self.current.fingerprint) {
                return Self::checked(decode(&bytes[HEADER_LEN..]));
            }
        }
        self.decode_serde(bytes)
    }

    /// Decodes one message into `value`, reusing its buffers where the hand-written codec
    /// can (the stream processor's hot path); otherwise like [`Codec::decode`]. On error
    /// `value` may be partly overwritten.
    pub fn decode_into(&self, bytes: &[u8], value: &mut T) -> Result<(), CodecError> {
        let into = self.specialized.and_then(|s| s.decode_into);
        match into {
            Some(into) if Self::peek_fingerprint(bytes) == Some(self.current.fingerprint) => {
                Self::checked(into(&bytes[HEADER_LEN..], value).map(|trailing| ((), trailing)))
            }
            _ => {
                *value = self.decode(bytes)?;
                Ok(())
            }
        }
    }

    /// Decodes one message with `serde_avro_fast` (serde path), from any registered writer
    /// schema version.
    pub fn decode_serde(&self, bytes: &[u8]) -> Result<T, CodecError> {
        let (version, body) = self.split(bytes)?;
        let mut state = serde_avro_fast::de::DeserializerState::from_slice(body, &version.fast);
        let value = T::deserialize(state.deserializer()).map_err(|e| CodecError::Body {
            record: T::NAME,
            detail: e.to_string(),
        })?;
        let mut rest = state.into_reader();
        let trailing = std::io::BufRead::fill_buf(&mut rest)
            .map(|r| r.len())
            .unwrap_or(0);
        if trailing != 0 {
            return Err(CodecError::Trailing {
                trailing,
                record: T::NAME,
            });
        }
        Ok(value)
    }

    /// Encodes one record through `apache-avro`'s `Value` (generic path).
    pub fn encode_generic(&self, value: &T) -> Result<Vec<u8>, CodecError> {
        let enc = |detail: String| CodecError::Encode {
            record: T::NAME,
            detail,
        };
        let v = apache_avro::to_value(value).map_err(|e| enc(e.to_string()))?;
        let v = v
            .resolve(&self.current.apache)
            .map_err(|e| enc(e.to_string()))?;
        let body =
            apache_avro::to_avro_datum(&self.current.apache, v).map_err(|e| enc(e.to_string()))?;
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        out.extend_from_slice(&SINGLE_OBJECT_MAGIC);
        out.extend_from_slice(&self.current.fingerprint.0);
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Decodes one message through `apache-avro` (generic path), resolving the writer schema to
    /// the current one by Avro's rules.
    ///
    /// `apache-avro` reserves room for an array's items as its block count says before it reads
    /// them; its allocation limit (process-wide, set here once to [`GENERIC_MAX_ALLOCATION`]
    /// bytes) keeps a forged count from reserving gigabytes (a fuzz finding).
    pub fn decode_generic(&self, bytes: &[u8]) -> Result<T, CodecError> {
        static LIMIT: std::sync::Once = std::sync::Once::new();
        LIMIT.call_once(|| {
            apache_avro::util::max_allocation_bytes(GENERIC_MAX_ALLOCATION);
        });
        let (version, mut body) = self.split(bytes)?;
        let err = |detail: String| CodecError::Body {
            record: T::NAME,
            detail,
        };
        let value =
            apache_avro::from_avro_datum(&version.apache, &mut body, Some(&self.current.apache))
                .map_err(|e| err(e.to_string()))?;
        if !body.is_empty() {
            return Err(CodecError::Trailing {
                trailing: body.len(),
                record: T::NAME,
            });
        }
        apache_avro::from_value::<T>(&value).map_err(|e| err(e.to_string()))
    }
}

/// A reusable encoder; see [`Codec::encoder`].
pub struct Encoder<'c, T: 'static> {
    specialized: Option<&'static Specialized<T>>,
    fingerprint: Fingerprint,
    config: serde_avro_fast::ser::SerializerConfig<'c>,
}

impl<T: AvroRecord> Encoder<'_, T> {
    /// Appends one single-object message to `out`.
    pub fn encode_into(&mut self, value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
        if let Some(s) = self.specialized {
            out.extend_from_slice(&SINGLE_OBJECT_MAGIC);
            out.extend_from_slice(&self.fingerprint.0);
            (s.encode)(value, out);
            return Ok(());
        }
        serde_avro_fast::to_single_object(value, out, &mut self.config)
            .map(|_| ())
            .map_err(|e| CodecError::Encode {
                record: T::NAME,
                detail: e.to_string(),
            })
    }
}

macro_rules! avro_record {
    ($ty:ty, $name:literal, $file:literal) => {
        avro_record!($ty, $name, $file, None);
    };
    ($ty:ty, $name:literal, $file:literal, $specialized:expr) => {
        impl AvroRecord for $ty {
            const NAME: &'static str = $name;
            const SCHEMA: &'static str = include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../schemas/avro/",
                $file
            ));

            fn codec() -> &'static Codec<Self> {
                static CODEC: LazyLock<Codec<$ty>> = LazyLock::new(|| {
                    // The schema is compiled in and checked by this crate's tests.
                    #[allow(clippy::expect_used)]
                    Codec::new().expect(concat!("schemas/avro/", $file, " is valid"))
                });
                &CODEC
            }

            fn specialized() -> Option<&'static Specialized<Self>> {
                $specialized
            }
        }
    };
}

avro_record!(
    EngagementEvent,
    "EngagementEvent",
    "engagement_event.v1.avsc",
    Some(&event_v1::SPECIALIZED)
);
avro_record!(
    Rollup,
    "Rollup",
    "rollup.v1.avsc",
    Some(&rollups_v1::ROLLUP)
);
avro_record!(FunnelRollup, "FunnelRollup", "funnel_rollup.v1.avsc");
avro_record!(
    ConversationRollup,
    "ConversationRollup",
    "conversation_rollup.v1.avsc",
    Some(&rollups_v1::CONVERSATION)
);
avro_record!(SpikeAlert, "SpikeAlert", "spike_alert.v1.avsc");
avro_record!(DeadLetter, "DeadLetter", "dead_letter.v1.avsc");

/// The `name` of the record a schema (JSON) defines, without its namespace.
fn record_name(json: &str) -> Option<String> {
    match apache_avro::Schema::parse_str(json).ok()? {
        apache_avro::Schema::Record(r) => Some(r.name.name.clone()),
        _ => None,
    }
}

/// The full name (`namespace.Name`) of the record a schema (JSON) defines.
pub fn record_full_name(json: &str) -> Option<String> {
    match apache_avro::Schema::parse_str(json).ok()? {
        apache_avro::Schema::Record(r) => Some(r.name.fullname(None)),
        _ => None,
    }
}

/// Every record banter writes: its name and current schema (JSON), as published on the
/// schema topic for readers of other versions.
pub fn current_schemas() -> [(&'static str, &'static str); 6] {
    [
        (EngagementEvent::NAME, EngagementEvent::SCHEMA),
        (Rollup::NAME, Rollup::SCHEMA),
        (FunnelRollup::NAME, FunnelRollup::SCHEMA),
        (ConversationRollup::NAME, ConversationRollup::SCHEMA),
        (SpikeAlert::NAME, SpikeAlert::SCHEMA),
        (DeadLetter::NAME, DeadLetter::SCHEMA),
    ]
}

/// Registers a writer schema (JSON) with the shared codec of the record it names, so bytes
/// written with it are read by schema resolution. Returns the record's name and the schema's
/// fingerprint; None for a record banter does not read.
///
/// # Errors
/// Not a valid Avro schema.
pub fn register_schema(json: &str) -> Result<Option<(&'static str, Fingerprint)>, CodecError> {
    let Some(name) = record_name(json) else {
        return Err(CodecError::Schema("a schema without a record name".into()));
    };
    fn reg<T: AvroRecord>(json: &str) -> Result<Option<(&'static str, Fingerprint)>, CodecError> {
        T::codec()
            .register_writer_schema(json)
            .map(|fp| Some((T::NAME, fp)))
    }
    match name.as_str() {
        n if n == EngagementEvent::NAME => reg::<EngagementEvent>(json),
        n if n == Rollup::NAME => reg::<Rollup>(json),
        n if n == FunnelRollup::NAME => reg::<FunnelRollup>(json),
        n if n == ConversationRollup::NAME => reg::<ConversationRollup>(json),
        n if n == SpikeAlert::NAME => reg::<SpikeAlert>(json),
        n if n == DeadLetter::NAME => reg::<DeadLetter>(json),
        _ => Ok(None),
    }
}

/// The fingerprint a schema (JSON) is named by in single-object headers.
///
/// # Errors
/// Not a valid Avro schema.
pub fn schema_fingerprint(json: &str) -> Result<Fingerprint, CodecError> {
    SchemaVersion::parse(json).map(|v| v.fingerprint)
}

/// Whether any record's codec reads bytes with this writer fingerprint.
pub fn known_anywhere(fp: Fingerprint) -> bool {
    EngagementEvent::codec().knows(fp)
        || Rollup::codec().knows(fp)
        || FunnelRollup::codec().knows(fp)
        || ConversationRollup::codec().knows(fp)
        || SpikeAlert::codec().knows(fp)
        || DeadLetter::codec().knows(fp)
}
