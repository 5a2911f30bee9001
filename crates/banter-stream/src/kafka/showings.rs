//! Provisional rows sent the moment they are shown, by an idempotent producer of their own,
//! outside the batch's transaction (`stream.provisional_in_transaction = false`; by default
//! they are in it).
//!
//! In the transaction, a provisional row can be read only once its batch commits: after the
//! batch's changelog entries and the commit, a second or more when the batch closes a minute
//! (as many changelog entries as final rows; up to several seconds on a slow close).
//! Provisional rows change no state and are not part of the exactly-once argument: any final
//! row replaces them (`ReplacingMergeTree(revision)`, revision ≥ 0 against
//! `i64::MIN + offset`). What the transaction gives them is that they show only counts that
//! were committed; outside it they may show counts of a batch that is then aborted (it is processed again from its checkpoint,
//! the same events in the same order, to the same counts) or of a fenced instance (the
//! instance that took its partitions counts the same events). Early alerts change the
//! detector's state and stay in the transaction.
//!
//! Nothing here fails a batch: a row the producer refuses (its queue full, the topic unknown,
//! the producer failed fatally, after which it is made anew) or the broker does not take
//! within `message.timeout.ms` (30 s of librdkafka's retries) is counted
//! (`banter_stream_provisional_failed_total`) and logged, and the next showing of its key, or
//! its final row in its transaction, replaces what it would have shown.
//!
//! Only with a topic of their own: on the rollups topic a `read_committed` reader stops at the
//! first open transaction's records (a minute's close writes final rows to every partition
//! before the showing), so rows sent outside it would be read no sooner.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use banter_runtime::config::KafkaConfig;
use banter_runtime::kafka::{producer_config, KafkaContext};
use prometheus_client::metrics::counter::Counter;

use rdkafka::client::OAuthToken;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};

/// The client context of the provisional rows' producer: [`KafkaContext`]'s tokens, and the
/// failed rows counted.
pub(super) struct ShowingContext {
    kafka: KafkaContext,
    failed: Counter,
}

impl ShowingContext {
    /// Counts a row that was not delivered; logs the first, then every 1,000th (a broker that
    /// is down fails every row of every showing).
    fn failed(&self, error: &KafkaError, topic: &str) {
        let n = self.failed.inc();
        if n.is_multiple_of(1000) {
            tracing::warn!(%error, topic, failed = n + 1, "provisional rows not delivered (their final rows replace them)");
        }
    }
}

impl rdkafka::ClientContext for ShowingContext {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(
        &self,
        _config: Option<&str>,
    ) -> Result<OAuthToken, Box<dyn std::error::Error>> {
        self.kafka.token().map_err(Into::into)
    }
}

impl ProducerContext for ShowingContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, (): ()) {
        if let Err((e, m)) = result {
            self.failed(e, m.topic());
        }
    }
}

/// The producer provisional rows are sent with, outside the batches' transactions.
pub(super) struct Showings {
    producer: ThreadedProducer<ShowingContext>,
    /// The producer failed fatally (its idempotence broken): it is to be made anew.
    broken: AtomicBool,
}

impl Showings {
    /// An idempotent producer (`acks=all`, no transactions) whose own thread serves its
    /// reports; `failed` counts the rows it could not deliver.
    pub fn new(k: &KafkaConfig, failed: Counter) -> Result<Self, KafkaError> {
        let producer = producer_config(k, "stream-provisional")
            .set("linger.ms", "10")
            .set("message.timeout.ms", "30000")
            .set("queue.buffering.max.messages", "1000000")
            .set("delivery.report.only.error", "true")
            .create_with_context(ShowingContext {
                kafka: KafkaContext::new(k),
                failed,
            })?;
        Ok(Showings {
            producer,
            broken: AtomicBool::new(false),
        })
    }

    /// Hands a row to the producer. One it refuses is counted, not waited for: a full queue
    /// (1,000,000 rows) means the broker has not been taking them, and a batch does not wait
    /// for rows that are to be replaced.
    pub fn send(&self, topic: &str, key: &[u8], value: &[u8]) {
        let rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).key(key).payload(value);
        if let Err((e, _)) = self.producer.send(rec) {
            if matches!(e.rdkafka_error_code(), Some(RDKafkaErrorCode::Fatal)) {
                self.broken.store(true, Ordering::Relaxed);
            }
            self.producer.context().failed(&e, topic);
        }
    }

    /// Whether the producer failed fatally and is to be made anew.
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }

    /// Waits up to `timeout` for the rows handed over to be delivered (at shutdown).
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.flush(timeout) {
            tracing::warn!(error = %e, "provisional rows not flushed at shutdown (their final rows replace them)");
        }
    }
}
