//! One batch's Kafka transaction and what goes into it: the pipelines' outputs (rollups,
//! funnel and conversation rows, alerts; provisional rows only when they are not sent apart,
//! [`super::showings`]), dead letters, the changelog entries and checkpoints
//! of the partitions the batch changed. A record that cannot be encoded fails the batch (it is
//! retried from the checkpoint) rather than vanishing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use banter_model::codec::Encoder;
use banter_model::{
    AvroRecord, ConversationRollup, DeadLetter, FunnelRollup, Rollup, SpikeAlert, Stage,
};
use banter_runtime::kafka::KafkaContext;
use banter_runtime::registry::RegistryError;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use thiserror::Error;

use super::checkpoints::{checkpoint_key, checkpoint_partition, store_key_into};
use super::metrics::StreamMetrics;
use super::showings::Showings;
use crate::changelog::{Changes, StateError};
use crate::pipeline::Outputs;
use crate::window::Checkpoint;

/// Why a batch was not committed.
#[derive(Debug, Error)]
pub(super) enum BatchError {
    #[error("{0}")]
    Kafka(#[from] KafkaError),
    #[error("the consumer has no group metadata (not in a group)")]
    NoGroup,
    #[error("cannot encode a {what}: {message}")]
    Encode { what: &'static str, message: String },
    #[error(transparent)]
    State(#[from] StateError),
    /// The Schema Registry could not be asked (the batch is tried again).
    #[error("{0}")]
    Registry(String),
}

impl BatchError {
    /// The producer cannot go on (fenced, or a fatal transactional error): make a new one.
    pub fn is_fatal(&self) -> bool {
        matches!(self, BatchError::Kafka(KafkaError::Transaction(t)) if t.is_fatal())
    }
}

/// The topics a stream instance reads and writes.
#[derive(Debug, Clone)]
pub(super) struct Topics {
    pub input: String,
    pub rollups: String,
    /// Where provisional rows go (may be `rollups`).
    pub provisional: String,
    pub alerts: String,
    pub dlq: String,
    pub checkpoints: String,
    pub checkpoint_partitions: usize,
    /// The Schema Registry, when a record topic uses the Confluent wire format.
    pub registry: Option<std::sync::Arc<banter_runtime::registry::Registry>>,
}

impl Topics {
    /// `value` as it goes on `topic` (Confluent framing where configured).
    pub fn framed<'v>(
        &self,
        topic: &str,
        what: &'static str,
        value: &'v [u8],
    ) -> Result<std::borrow::Cow<'v, [u8]>, BatchError> {
        match &self.registry {
            None => Ok(std::borrow::Cow::Borrowed(value)),
            Some(r) => r.frame(topic, value).map_err(|e| match e {
                RegistryError::Unavailable(m) => BatchError::Registry(m),
                RegistryError::Record(message) => BatchError::Encode { what, message },
            }),
        }
    }
}

/// Whether a batch's transaction was begun: shared by the threads that write into it, begun
/// once, by whichever writes first.
#[derive(Debug, Default)]
pub(super) struct Begun {
    open: AtomicBool,
    lock: Mutex<()>,
}

/// A writer into the open transaction of a batch, which is begun with its first record. Each
/// thread of a batch has its own (its encoder and buffer) over the batch's [`Begun`].
/// Provisional rows go to `showings` when given, outside the transaction ([`Showings`]).
pub(super) struct Transaction<'a> {
    producer: &'a BaseProducer<KafkaContext>,
    showings: Option<&'a Showings>,
    topics: &'a Topics,
    metrics: &'a StreamMetrics,
    begun: &'a Begun,
    rollup_encoder: Encoder<'static, Rollup>,
    buf: Vec<u8>,
}

impl<'a> Transaction<'a> {
    pub fn new(
        producer: &'a BaseProducer<KafkaContext>,
        showings: Option<&'a Showings>,
        topics: &'a Topics,
        metrics: &'a StreamMetrics,
        begun: &'a Begun,
    ) -> Self {
        Transaction {
            producer,
            showings,
            topics,
            metrics,
            begun,
            rollup_encoder: Rollup::codec().encoder(),
            buf: Vec::new(),
        }
    }

    /// Another writer into the same transaction (for another thread).
    pub fn another(&self) -> Transaction<'a> {
        Transaction::new(
            self.producer,
            self.showings,
            self.topics,
            self.metrics,
            self.begun,
        )
    }

    /// Whether anything was written.
    pub fn is_open(&self) -> bool {
        self.begun.open.load(Ordering::Acquire)
    }

    /// Begins the transaction unless a writer did.
    fn begin(&self) -> Result<(), KafkaError> {
        if self.is_open() {
            return Ok(());
        }
        let _one = self
            .begun
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !self.is_open() {
            self.producer.begin_transaction()?;
            self.begun.open.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Sends a record (no value: a tombstone), waiting while the producer's queue is full.
    fn send(
        &mut self,
        topic: &str,
        partition: Option<i32>,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), KafkaError> {
        self.begin()?;
        let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).key(key);
        if let Some(v) = value {
            rec = rec.payload(v);
        }
        if let Some(p) = partition {
            rec = rec.partition(p);
        }
        let mut full_since: Option<Instant> = None;
        let result = loop {
            match self.producer.send(rec) {
                Ok(()) => break Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    full_since.get_or_insert_with(Instant::now);
                    rec = r;
                    self.producer.poll(Duration::from_millis(50));
                }
                Err((e, _)) => break Err(e),
            }
        };
        if let Some(since) = full_since {
            self.metrics
                .output_wait_seconds
                .inc_by(since.elapsed().as_secs_f64());
        }
        result
    }

    /// Writes one event's outputs: rollups (provisional ones, with a negative revision, to
    /// their own topic, through `showings` when given), conversation rows, funnel rows,
    /// alerts.
    pub fn outputs(&mut self, out: &Outputs) -> Result<(), BatchError> {
        let topics = self.topics;
        for r in &out.rollups {
            self.buf.clear();
            self.rollup_encoder
                .encode_into(r, &mut self.buf)
                .map_err(|e| encode("rollup", &e))?;
            self.metrics.rows.inc();
            let buf = std::mem::take(&mut self.buf);
            let (topic, showings) = if r.revision < 0 {
                (&topics.provisional, self.showings)
            } else {
                (&topics.rollups, None)
            };
            let key = r.account_id.as_bytes();
            let sent = topics.framed(topic, "rollup", &buf).and_then(|v| {
                match showings {
                    // Never fails the batch: a row it cannot hand over is counted.
                    Some(s) => s.send(topic, key, &v),
                    None => self.send(topic, None, key, Some(&v))?,
                }
                Ok(())
            });
            self.buf = buf;
            sent?;
        }
        for c in &out.conversations {
            let value = ConversationRollup::codec()
                .encode(c)
                .map_err(|e| encode("conversation row", &e))?;
            self.metrics.conversation_rows.inc();
            let value = topics.framed(&topics.rollups, "conversation row", &value)?;
            self.send(&topics.rollups, None, c.account_id.as_bytes(), Some(&value))?;
        }
        for f in &out.funnels {
            let value = FunnelRollup::codec()
                .encode(f)
                .map_err(|e| encode("funnel row", &e))?;
            self.metrics.funnel_rows.inc();
            let value = topics.framed(&topics.rollups, "funnel row", &value)?;
            self.send(&topics.rollups, None, f.account_id.as_bytes(), Some(&value))?;
        }
        for a in &out.alerts {
            let value = SpikeAlert::codec()
                .encode(a)
                .map_err(|e| encode("spike alert", &e))?;
            // Revision 0: fired early, from an open minute's count so far; withdrawn: an early
            // one the closed minutes did not confirm (resolved at its onset).
            let state = match (a.state, a.revision) {
                (banter_model::AlertState::Firing, 0) => "FIRING_EARLY",
                (banter_model::AlertState::Resolved, _) if a.ended_at == Some(a.started_at) => {
                    "WITHDRAWN"
                }
                (s, _) => s.as_str(),
            };
            tracing::info!(alert = %a.alert_id, state, observed = a.observed, z = a.z_score, "spike alert");
            self.metrics.outcome(&self.metrics.alerts, "state", state);
            let value = topics.framed(&topics.alerts, "spike alert", &value)?;
            self.send(&topics.alerts, None, a.account_id.as_bytes(), Some(&value))?;
        }
        Ok(())
    }

    /// Writes a dead letter of an input record, keyed by its account when known.
    pub fn dead_letter(&mut self, dl: &DeadLetter) -> Result<(), BatchError> {
        let value = DeadLetter::codec()
            .encode(dl)
            .map_err(|e| encode("dead letter", &e))?;
        let key = dl.account_id.as_deref().unwrap_or_default().as_bytes();
        let topic = &self.topics.dlq;
        let value = self.topics.framed(topic, "dead letter", &value)?;
        self.send(topic, None, key, Some(&value))?;
        Ok(())
    }

    /// Writes a partition's changelog entries and then its checkpoint, to the partition of the
    /// checkpoint topic that holds the input partition's records.
    pub fn checkpoint(
        &mut self,
        partition: i32,
        changes: &Changes,
        checkpoint: &Checkpoint,
    ) -> Result<(), BatchError> {
        let topics = self.topics;
        let value = serde_json::to_vec(checkpoint).map_err(|e| BatchError::Encode {
            what: "checkpoint",
            message: e.to_string(),
        })?;
        let target = Some(checkpoint_partition(
            partition,
            topics.checkpoint_partitions,
        ));
        let checkpoint = checkpoint_key(&topics.input, partition);
        let mut key = std::mem::take(&mut self.buf);
        let sent = changes.iter().try_for_each(|(store, c)| {
            store_key_into(&mut key, &checkpoint, store, c.key);
            self.send(&topics.checkpoints, target, &key, c.value)
        });
        self.buf = key;
        sent?;
        self.send(
            &topics.checkpoints,
            target,
            checkpoint.as_bytes(),
            Some(&value),
        )?;
        Ok(())
    }
}

fn encode(what: &'static str, e: &banter_model::CodecError) -> BatchError {
    BatchError::Encode {
        what,
        message: e.to_string(),
    }
}

/// A dead letter of the stream stage for an input record.
pub(super) fn dead_letter(
    topic: &str,
    partition: i32,
    offset: i64,
    account_id: Option<String>,
    reason: &str,
    detail: String,
    payload: Vec<u8>,
) -> DeadLetter {
    let (payload, detail) = DeadLetter::bounded_payload(&payload, &detail);
    DeadLetter {
        stage: Stage::Stream,
        reason: reason.to_owned(),
        detail,
        source: Some(topic.to_owned()),
        source_partition: Some(partition),
        source_offset: Some(offset),
        account_id,
        payload,
        failed_at: banter_runtime::now_ms(),
    }
}
