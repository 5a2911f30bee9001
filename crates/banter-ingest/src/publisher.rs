//! Transactional publishing with group commit.
//!
//! Every request hands its records (events and dead letters) to [`Publisher::publish`]. A
//! publisher thread gathers the requests that arrive together (up to
//! `ingest.max_batch_events` records) into **one Kafka transaction**, commits it, and answers
//! each request. A commit takes a few milliseconds on a local broker; while one worker
//! commits, the broker answers its next transaction's first request with
//! CONCURRENT_TRANSACTIONS until the markers of the previous one are written (KAFKA-5477), so
//! `ingest.publisher_workers` threads, each with its own transactional producer, take turns:
//! one gathers while the others commit. Consumers read committed data only, so a request is
//! published entirely or not
//! at all; a request that gets `Ok` was acknowledged by the broker (`acks=all`, idempotent).
//!
//! When the broker is unreachable the commit times out (`ingest.publish_timeout_ms`), the
//! transaction is aborted and every request in it gets [`PublishError::Unavailable`] (the HTTP
//! layer answers 503 with `Retry-After`); a request also answers 503 by itself when its own
//! deadline passes while the publisher is busy. If the broker
//! acknowledged the commit but the answer came too late, the client sees 503 while the events
//! are in the topic; its retry carries the same `event_id`s, which the stream processor
//! de-duplicates.

use std::sync::Arc;
use std::time::{Duration, Instant};

use banter_model::{AvroRecord, DeadLetter, EngagementEvent};
use banter_runtime::config::KafkaConfig;
use banter_runtime::kafka::{transactional_config, KafkaContext};
use banter_runtime::registry::Registry as SchemaRegistry;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

use crate::config::IngestConfig;

/// One record to publish.
#[derive(Debug, Clone)]
pub struct Record {
    /// The topic.
    pub topic: Arc<str>,
    /// The key (`account_id` for events).
    pub key: Option<Vec<u8>>,
    /// The Avro single-object bytes.
    pub payload: Vec<u8>,
}

/// Why a publish did not happen.
#[derive(Debug, Clone, Error)]
pub enum PublishError {
    /// Kafka did not acknowledge within the deadline, or is unreachable: retry later.
    #[error("kafka unavailable: {0}")]
    Unavailable(String),
    /// The publisher has stopped (shutdown).
    #[error("publisher stopped")]
    Stopped,
}

/// Publisher metrics.
#[derive(Debug, Clone)]
pub struct PublisherMetrics {
    transactions: Family<Vec<(String, String)>, Counter>,
    records: Counter,
    commit_seconds: Histogram,
}

impl PublisherMetrics {
    /// Registers `banter_ingest_transactions_total{outcome}`,
    /// `banter_ingest_published_records_total` and `banter_ingest_commit_duration_seconds`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = PublisherMetrics {
            transactions: Family::default(),
            records: Counter::default(),
            commit_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
        };
        registry.register(
            "ingest_transactions",
            "Kafka transactions by outcome: committed, failed (answered 503), committed_late (a failed commit that went through on retry), aborted",
            m.transactions.clone(),
        );
        registry.register(
            "ingest_published_records",
            "Records (events and dead letters) in committed transactions",
            m.records.clone(),
        );
        registry.register(
            "ingest_commit_duration_seconds",
            "Time from the first send of a transaction to its commit",
            m.commit_seconds.clone(),
        );
        m
    }

    fn outcome(&self, outcome: &str) {
        self.transactions
            .get_or_create(&vec![("outcome".to_owned(), outcome.to_owned())])
            .inc();
    }
}

struct Request {
    records: Vec<Record>,
    deadline: Instant,
    reply: oneshot::Sender<Result<(), PublishError>>,
}

/// Handle to the publishing thread; cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    tx: mpsc::Sender<Request>,
    timeout: Duration,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Publisher {
    /// The Schema Registry client, for topics in the Confluent wire format, with the event
    /// and dead-letter schemas registered (on a blocking thread: the registry may be slow to
    /// answer); None when no topic uses it.
    ///
    /// # Errors
    /// The registry cannot be set up or refused the schemas (the message names the settings).
    pub async fn schema_registry(
        kafka: &KafkaConfig,
    ) -> Result<Option<Arc<SchemaRegistry>>, KafkaError> {
        let Some(r) = SchemaRegistry::for_config(kafka).map_err(KafkaError::ClientCreation)? else {
            return Ok(None);
        };
        let (events, dlq) = (kafka.topics.events.clone(), kafka.topics.dlq.clone());
        let reg = r.clone();
        tokio::task::spawn_blocking(move || {
            reg.prepare(&events, &[EngagementEvent::NAME])
                .and_then(|()| reg.prepare(&dlq, &[DeadLetter::NAME]))
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(String::from))
        .map_err(|e| KafkaError::ClientCreation(format!("kafka.schema_registry: {e}")))?;
        Ok(Some(r))
    }

    /// Starts the publishing thread. `on_ready` is called with true once transactions are
    /// initialized (the broker answered) and false when the broker is lost.
    ///
    /// `registry` is [`Publisher::schema_registry`]'s.
    ///
    /// # Errors
    /// librdkafka rejects the configuration.
    pub fn start(
        kafka: &KafkaConfig,
        ingest: &IngestConfig,
        registry: Option<Arc<SchemaRegistry>>,
        role: &str,
        metrics: PublisherMetrics,
        on_ready: impl Fn(bool) + Send + Sync + 'static,
    ) -> Result<(Publisher, std::thread::JoinHandle<()>), KafkaError> {
        let timeout = Duration::from_millis(ingest.publish_timeout_ms);
        let max_batch = ingest.max_batch_events;
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0);
        let mut workers = Vec::new();
        for n in 0..ingest.publisher_workers {
            let transactional_id = format!(
                "{}-{}-{started}-{n}",
                ingest.transactional_id,
                std::process::id()
            );
            let mut cfg = transactional_config(kafka, role, &transactional_id);
            cfg.set("linger.ms", "2")
                // A publisher that dies in a transaction (its ids are new with every process)
                // holds read_committed consumers of the partitions it wrote until the broker
                // aborts it: keep that short. A live transaction sends for up to the publish
                // timeout, then commits within it again; a margin on top (the broker's default
                // ceiling is 15 minutes).
                .set(
                    "transaction.timeout.ms",
                    ingest
                        .publish_timeout_ms
                        .saturating_mul(3)
                        .clamp(10_000, 900_000)
                        .to_string(),
                )
                .set("queue.buffering.max.messages", "1000000")
                .set("queue.buffering.max.kbytes", "1048576");
            let context = KafkaContext::new(kafka);
            let producer: ThreadedProducer<KafkaContext> =
                cfg.create_with_context(context.clone())?;
            workers.push(Worker {
                config: cfg,
                context,
                producer,
                registry: registry.clone(),
                metrics: metrics.clone(),
                max_batch,
                timeout,
                state: TxState::Uninitialized,
            });
        }
        // Bounded: a slow broker slows the HTTP handlers instead of growing a queue.
        let (tx, rx) = mpsc::channel(1024);
        let rx = Arc::new(std::sync::Mutex::new(rx));
        let on_ready: Arc<dyn Fn(bool) + Send + Sync> = Arc::new(on_ready);
        let handle = std::thread::Builder::new()
            .name("banter-publishers".into())
            .spawn(move || {
                let threads: Vec<_> = workers
                    .into_iter()
                    .enumerate()
                    .filter_map(|(n, w)| {
                        let (rx, on_ready) = (rx.clone(), on_ready.clone());
                        std::thread::Builder::new()
                            .name(format!("banter-publisher-{n}"))
                            .spawn(move || w.run(&rx, &*on_ready))
                            .map_err(
                                |e| tracing::error!(error = %e, "cannot start publisher thread"),
                            )
                            .ok()
                    })
                    .collect();
                for t in threads {
                    let _ = t.join();
                }
            })
            .map_err(|e| {
                KafkaError::ClientCreation(format!("cannot start publisher threads: {e}"))
            })?;
        Ok((Publisher { tx, timeout }, handle))
    }

    /// Publishes `records` atomically, waiting at most `ingest.publish_timeout_ms`.
    ///
    /// # Errors
    /// [`PublishError::Unavailable`] when the broker did not acknowledge in time (nothing of the
    /// request is visible to read-committed consumers).
    ///
    /// # Cancel safety
    /// Dropping the future before it resolves leaves the records in flight: they may or may not
    /// be committed.
    pub async fn publish(&self, records: Vec<Record>) -> Result<(), PublishError> {
        if records.is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + self.timeout;
        let (reply, rx) = oneshot::channel();
        let req = Request {
            records,
            deadline,
            reply,
        };
        match tokio::time::timeout(self.timeout, self.tx.send(req)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(PublishError::Stopped),
            Err(_) => return Err(PublishError::Unavailable("publisher queue is full".into())),
        }
        match tokio::time::timeout_at(
            tokio::time::Instant::from_std(deadline) + Duration::from_millis(500),
            rx,
        )
        .await
        {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(PublishError::Stopped),
            Err(_) => Err(PublishError::Unavailable(format!(
                "no acknowledgement within {} ms",
                self.timeout.as_millis()
            ))),
        }
    }
}

/// Where the producer's transaction machinery stands.
#[derive(Debug, Clone, Copy, PartialEq)]
enum TxState {
    /// `init_transactions` has not succeeded yet (or the producer was recreated).
    Uninitialized,
    /// No transaction open; the next batch can begin one.
    Ready,
    /// A commit timed out: librdkafka requires the same commit call to be retried (an abort
    /// now is refused as conflicting). When it finally succeeds, that batch is in the topic
    /// even though its requests were answered 503: their retries de-duplicate by `event_id`.
    CommitPending,
    /// The open transaction must be aborted before the next one.
    NeedsAbort,
}

/// What an error means for the transaction.
enum Next {
    /// Call the same operation again later.
    Retry,
    /// Abort the transaction.
    Abort,
    /// The producer is unusable: create a new one (same transactional id, which fences the
    /// old one and aborts its open transaction).
    Recreate,
}

fn classify(e: &KafkaError) -> Next {
    match e {
        KafkaError::Transaction(t) if t.is_fatal() => Next::Recreate,
        KafkaError::Transaction(t) if t.txn_requires_abort() => Next::Abort,
        KafkaError::Transaction(t) if t.is_retriable() => Next::Retry,
        KafkaError::Transaction(_) => Next::Abort,
        _ => Next::Retry,
    }
}

struct Worker {
    config: ClientConfig,
    context: KafkaContext,
    producer: ThreadedProducer<KafkaContext>,
    registry: Option<Arc<SchemaRegistry>>,
    metrics: PublisherMetrics,
    max_batch: usize,
    /// Budget of each step (init, abort, commit). Not the earliest request's deadline: after
    /// an outage the queued requests have little time left, and commits that short would fail
    /// forever. A request whose deadline passes answers 503 by itself.
    timeout: Duration,
    state: TxState,
}

fn unavailable(e: &KafkaError) -> PublishError {
    PublishError::Unavailable(e.to_string())
}

impl Worker {
    fn run(mut self, rx: &std::sync::Mutex<mpsc::Receiver<Request>>, on_ready: &dyn Fn(bool)) {
        // Initialize eagerly so readiness reflects the broker before the first request.
        if self.ensure_ready().is_ok() {
            on_ready(true);
        }
        loop {
            // One worker at a time gathers a batch; the others are committing meanwhile.
            let batch = {
                let Ok(mut rx) = rx.lock() else { break };
                let Some(first) = rx.blocking_recv() else {
                    break;
                };
                let mut batch = vec![first];
                let mut n = batch[0].records.len();
                while n < self.max_batch {
                    match rx.try_recv() {
                        Ok(r) => {
                            n += r.records.len();
                            batch.push(r);
                        }
                        Err(_) => break,
                    }
                }
                batch
            };
            // Requests already past their deadline get no transaction.
            let now = Instant::now();
            let (live, expired): (Vec<_>, Vec<_>) =
                batch.into_iter().partition(|r| r.deadline > now);
            for r in expired {
                let _ = r.reply.send(Err(PublishError::Unavailable(
                    "deadline passed before publishing".into(),
                )));
            }
            if live.is_empty() {
                continue;
            }
            let result = self.transaction(&live);
            on_ready(result.is_ok());
            for r in live {
                let _ = r.reply.send(result.clone());
            }
        }
        // Shutdown: finish or abort whatever is open.
        let _ = self.ensure_ready();
    }

    /// Moves the state to Ready, doing what the current state requires.
    fn ensure_ready(&mut self) -> Result<(), PublishError> {
        loop {
            let (result, on_ok) = match self.state {
                TxState::Ready => return Ok(()),
                TxState::Uninitialized => {
                    (self.producer.init_transactions(self.timeout), "initialized")
                }
                TxState::CommitPending => (
                    banter_runtime::kafka::commit_transaction(
                        &self.producer,
                        self.timeout,
                        self.timeout,
                    ),
                    "committed late",
                ),
                TxState::NeedsAbort => (self.producer.abort_transaction(self.timeout), "aborted"),
            };
            match result {
                Ok(()) => {
                    if self.state == TxState::CommitPending {
                        self.metrics.outcome("committed_late");
                    }
                    tracing::debug!(from = ?self.state, "kafka transaction {on_ok}");
                    self.state = TxState::Ready;
                    return Ok(());
                }
                Err(e) => {
                    tracing::debug!(state = ?self.state, error = %e, "kafka transaction not ready");
                    match (classify(&e), self.state) {
                        (Next::Retry, _) => return Err(unavailable(&e)),
                        (Next::Abort, TxState::CommitPending) => self.state = TxState::NeedsAbort,
                        // An abort or init that fails for good: start over with a new producer.
                        (Next::Abort, _) | (Next::Recreate, _) => self.recreate(&e)?,
                    }
                }
            }
        }
    }

    fn recreate(&mut self, cause: &KafkaError) -> Result<(), PublishError> {
        tracing::warn!(error = %cause, "recreating the kafka producer");
        self.producer = self
            .config
            .create_with_context(self.context.clone())
            .map_err(|e| PublishError::Unavailable(format!("cannot recreate the producer: {e}")))?;
        self.state = TxState::Uninitialized;
        Ok(())
    }

    fn after_error(&mut self, e: &KafkaError, during_commit: bool) {
        self.state = match classify(e) {
            Next::Retry if during_commit => TxState::CommitPending,
            Next::Retry | Next::Abort => TxState::NeedsAbort,
            Next::Recreate => {
                if self.recreate(e).is_err() {
                    TxState::Uninitialized
                } else {
                    self.state
                }
            }
        };
    }

    fn transaction(&mut self, batch: &[Request]) -> Result<(), PublishError> {
        self.ensure_ready()?;
        let started = Instant::now();
        let deadline = started + self.timeout;
        if let Err(e) = self.producer.begin_transaction() {
            self.after_error(&e, false);
            return Err(unavailable(&e));
        }
        let mut count = 0u64;
        for r in batch.iter().flat_map(|b| &b.records) {
            // Confluent framing where the topic is configured so (the schemas were registered
            // when the publisher started: a map lookup).
            let payload = match &self.registry {
                None => std::borrow::Cow::Borrowed(&r.payload[..]),
                Some(reg) => match reg.frame(&r.topic, &r.payload) {
                    Ok(p) => p,
                    Err(e) => {
                        self.metrics.outcome("aborted");
                        self.state = TxState::NeedsAbort;
                        let _ = self.ensure_ready();
                        return Err(PublishError::Unavailable(format!("schema registry: {e}")));
                    }
                },
            };
            let mut rec = BaseRecord::to(&r.topic).payload(&payload[..]);
            if let Some(k) = &r.key {
                rec = rec.key(k);
            }
            loop {
                match self.producer.send(rec) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                        if Instant::now() < deadline =>
                    {
                        rec = back;
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err((e, _)) => {
                        self.metrics.outcome("aborted");
                        self.after_error(&e, false);
                        let _ = self.ensure_ready();
                        return Err(unavailable(&e));
                    }
                }
            }
            count += 1;
        }
        let committed = banter_runtime::kafka::commit_transaction(
            &self.producer,
            deadline.saturating_duration_since(Instant::now()),
            self.timeout,
        );
        match committed {
            Ok(()) => {
                self.metrics.outcome("committed");
                self.metrics.records.inc_by(count);
                self.metrics
                    .commit_seconds
                    .observe(started.elapsed().as_secs_f64());
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, records = count, "kafka transaction not committed");
                self.metrics.outcome("failed");
                self.after_error(&e, true);
                Err(unavailable(&e))
            }
        }
    }
}
