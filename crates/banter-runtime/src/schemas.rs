//! The schema topic (`kafka.topics.schemas`, compacted): the Avro writer schema of every
//! record banter puts on Kafka, keyed by its fingerprint, so that a reader can resolve records
//! written by a newer (or older) version than its own.
//!
//! Avro single-object encoding names the writer schema only by fingerprint; the schema itself
//! must come from somewhere. Every role that writes records publishes its schemas here when it
//! starts ([`publish`]), before its first record. A reader that meets a fingerprint it does not
//! know reads the topic ([`SchemaLookup::refresh`]), registers every schema of a record it reads
//! with the shared codecs, and decodes by Avro's resolution rules: fields it does not know are
//! skipped, fields the writer did not have take their defaults. So a rolling upgrade that adds
//! a field (with a default) does not dead-letter the new version's records in old readers.
//! Only when the fingerprint is on no published schema is the record a dead letter
//! ("unknown writer schema").

use std::time::{Duration, Instant};

use banter_model::codec::{
    current_schemas, known_anywhere, register_schema, schema_fingerprint, Codec, Fingerprint,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::config::KafkaConfig;
use crate::kafka::{base_config, producer};

/// The key of a schema on the topic: its fingerprint in hex.
pub fn key_of(fp: Fingerprint) -> String {
    fp.to_string()
}

/// Publishes `schemas` (JSON) to the schema topic, keyed by fingerprint; by default every
/// current schema of this build ([`current_schemas`]). Idempotent: compaction keeps one record
/// per fingerprint.
///
/// # Errors
/// The producer cannot be created, or the broker did not take a schema (the schema topic is
/// missing: run `banter topics`).
pub async fn publish(cfg: &KafkaConfig, schemas: Option<&[&str]>) -> Result<usize, String> {
    let all: Vec<&str> = match schemas {
        Some(s) => s.to_vec(),
        None => current_schemas().iter().map(|(_, json)| *json).collect(),
    };
    let producer = producer(cfg, "schemas").map_err(|e| e.to_string())?;
    // A missing topic would hold every send for librdkafka's metadata wait: ask first.
    let topic = &cfg.topics.schemas;
    let md = producer
        .client()
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| format!("schema topic {topic}: {e}"))?;
    if md
        .topics()
        .iter()
        .all(|t| t.error().is_some() || t.partitions().is_empty())
    {
        return Err(format!(
            "schema topic {topic} does not exist (`banter topics` creates it)"
        ));
    }
    for json in &all {
        let fp = fingerprint_of(json)?;
        producer
            .send(
                FutureRecord::to(&cfg.topics.schemas)
                    .key(&key_of(fp))
                    .payload(*json),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| format!("schema topic {}: {e}", cfg.topics.schemas))?;
    }
    Ok(all.len())
}

/// The fingerprint a schema (JSON) is named by on the wire.
///
/// # Errors
/// Not a valid Avro schema.
pub fn fingerprint_of(json: &str) -> Result<Fingerprint, String> {
    schema_fingerprint(json).map_err(|e| e.to_string())
}

/// Looks up writer schemas on the schema topic, at most once per interval (a record with a
/// fingerprint nobody published must not make every decode read the topic).
#[derive(Debug)]
pub struct SchemaLookup {
    cfg: KafkaConfig,
    last: std::sync::Mutex<Option<Instant>>,
    min_interval: Duration,
}

impl SchemaLookup {
    /// A lookup reading `cfg`'s schema topic at most every 10 s.
    pub fn new(cfg: &KafkaConfig) -> Self {
        SchemaLookup {
            cfg: cfg.clone(),
            last: std::sync::Mutex::new(None),
            min_interval: Duration::from_secs(10),
        }
    }

    /// For a record that did not decode: when its header names a writer schema no codec
    /// knows, reads the schema topic (unless it was read within the interval) and registers
    /// what it holds. True when the writer schema is known now: decode again. Blocks for as
    /// long as reading the topic takes (a few records; 10 s at worst).
    pub fn resolve(&self, record: &[u8]) -> bool {
        let Some(fp) = Codec::<banter_model::Rollup>::peek_fingerprint(record) else {
            return false;
        };
        if known_anywhere(fp) {
            return false; // known: the record is bad for another reason
        }
        // Held while the topic is read: another thread (the stream's partitions are processed
        // on several) that meets the same new schema meanwhile waits for this read and finds
        // the schema known, instead of finding the interval used and giving its record up.
        let Ok(mut last) = self.last.lock() else {
            return false;
        };
        if known_anywhere(fp) {
            return true;
        }
        if last.is_some_and(|t| t.elapsed() < self.min_interval) {
            return false;
        }
        *last = Some(Instant::now());
        match self.refresh() {
            Ok(n) => tracing::info!(
                schemas = n,
                fingerprint = %fp,
                found = known_anywhere(fp),
                "read the schema topic for an unknown writer schema"
            ),
            Err(e) => tracing::warn!(error = %e, topic = %self.cfg.topics.schemas, "schema topic"),
        }
        known_anywhere(fp)
    }

    /// Reads the whole schema topic and registers every schema on it with the codec of its
    /// record; returns how many it read.
    ///
    /// # Errors
    /// The topic cannot be read.
    pub fn refresh(&self) -> Result<usize, String> {
        let topic = &self.cfg.topics.schemas;
        let consumer: BaseConsumer<crate::kafka::KafkaContext> = base_config(&self.cfg, "schemas")
            .set("group.id", "banter-schema-lookup")
            .set("enable.auto.commit", "false")
            .create_with_context(crate::kafka::KafkaContext::new(&self.cfg))
            .map_err(|e| e.to_string())?;
        // Serves a token request (AWS_MSK_IAM) before the metadata request needs it.
        let _ = consumer.poll(Duration::ZERO);
        let timeout = Duration::from_secs(10);
        let md = consumer
            .fetch_metadata(Some(topic), timeout)
            .map_err(|e| e.to_string())?;
        let partitions: Vec<i32> = md
            .topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        let mut tpl = TopicPartitionList::new();
        let mut ends = Vec::new();
        for p in partitions {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, timeout)
                .map_err(|e| e.to_string())?;
            if high > low {
                tpl.add_partition_offset(topic, p, Offset::Offset(low))
                    .map_err(|e| e.to_string())?;
                ends.push((p, high));
            }
        }
        if ends.is_empty() {
            return Ok(0);
        }
        consumer.assign(&tpl).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + timeout;
        let mut read = 0;
        while !ends.is_empty() && Instant::now() < deadline {
            let Some(m) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let m = m.map_err(|e| e.to_string())?;
            if let Some(json) = m.payload().and_then(|p| std::str::from_utf8(p).ok()) {
                read += 1;
                if let Err(e) = register_schema(json) {
                    tracing::warn!(offset = m.offset(), error = %e, "schema topic: not a schema");
                }
            }
            let (p, o) = (m.partition(), m.offset());
            ends.retain(|&(ep, high)| !(ep == p && o + 1 >= high));
        }
        Ok(read)
    }
}
