//! `banter stream` on Kafka: a consumer group member running one [`crate::pipeline::Pipeline`]
//! per assigned input partition, exactly once.
//!
//! * **Exactly once.** Input is read in batches; each batch is one Kafka transaction holding
//!   the rows, alerts and dead letters it caused (with `stream.provisional_in_transaction =
//!   false` and a topic of their own, its provisional rows of open windows are sent outside
//!   it, as they are shown: [`showings`]), the changelog entries and [`Checkpoint`] of
//!   every partition it changed (topic `kafka.topics.checkpoints`, compacted; see
//!   [`checkpoints`]) and the input offsets (`send_offsets_to_transaction`, fenced by the group
//!   generation, KIP-447). Either all of it is visible to `read_committed` readers or none of
//!   it ([`batch`], [`transaction`]).
//! * **Restore.** When a partition is assigned ([`partitions`]), its latest committed
//!   checkpoint names the oldest input offset still held in window state (bounded by the
//!   lateness horizon plus the out-of-orderness, about an hour of event time). The input is
//!   replayed from there with the outputs discarded up to the checkpoint's offset; from then on
//!   the pipeline emits exactly what the previous owner would have. State that lives longer —
//!   first-hour post state (up to two hours), spike baselines, funnels (7 days), conversations
//!   (a day) — is not replayed: it is each operator's changelog, written in the transaction it
//!   belongs to and read back with the checkpoint. A partition that comes back to the instance
//!   that already holds its state at the committed offset is not replayed.
//! * **Idle partitions**: a partition that is caught up (read to its high watermark, not only
//!   to the last stable offset, where another producer's open transaction may hold input back)
//!   and quiet for `stream.idle_timeout_ms` moves its watermark to the highest watermark of this instance's partitions, or with the
//!   wall clock from its own highest event time, whichever is later; the move is recorded in
//!   the checkpoint so that a replay repeats it.
//! * **Metrics**: [`metrics`].
//!
//! [`Checkpoint`]: crate::window::Checkpoint

mod batch;
mod checkpoints;
mod metrics;
mod partitions;
mod showings;
mod transaction;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use banter_runtime::config::KafkaConfig;
use banter_runtime::kafka::{base_config, consumer_config, transactional_config, KafkaContext};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use thiserror::Error;

use self::batch::{Batch, Batcher};
use self::checkpoints::CheckpointReader;
use self::partitions::{lock, Partition, Partitions, Rebalance, Setup};
use self::transaction::Topics;
use crate::config::StreamSettings;
use crate::cta::CampaignSource;
use crate::pipeline::{PipelineConfig, StateSizes};

pub use self::metrics::StreamMetrics;

/// Why the stream loop stopped.
#[derive(Debug, Error)]
pub enum StreamError {
    /// A Kafka client could not be created or refused a request we cannot go on without.
    #[error("kafka {what}: {source}")]
    Kafka {
        /// What was being done.
        what: &'static str,
        /// The client error.
        source: KafkaError,
    },
    /// Checkpoints could not be read when partitions were assigned.
    #[error("cannot restore partitions: {0}")]
    Restore(String),
    /// A topic the stream writes to is missing.
    #[error("{0}")]
    Topic(String),
    /// The campaigns file (`cta.campaigns_file`) cannot be used.
    #[error("cta.campaigns_file: {0}")]
    Campaigns(String),
    /// The Schema Registry could not be set up or refused this role's schemas.
    #[error("kafka.schema_registry: {0}")]
    Registry(String),
    /// The consumer can no longer be used (the group fenced it: another consumer joined with
    /// this `stream.instance_id`, or took its place after a lost join response). What it had
    /// not committed is redone by whoever holds its partitions; the role exits for a restart.
    #[error(
        "the consumer can no longer be used ({0}); exiting so that a supervisor restarts this \
         instance (if another instance runs with the same stream.instance_id, give each its own)"
    )]
    Fenced(String),
}

fn kafka(what: &'static str) -> impl FnOnce(KafkaError) -> StreamError {
    move |source| StreamError::Kafka { what, source }
}

/// Runs the stream role until `stop` returns true. Blocking: call it from a thread.
///
/// # Errors
/// A Kafka client cannot be created, the transactional producer cannot be initialised, the
/// campaigns file cannot be loaded, or the checkpoints of assigned partitions cannot be read.
pub fn run(
    k: &KafkaConfig,
    settings: &StreamSettings,
    metrics: &StreamMetrics,
    ready: &dyn Fn(bool),
    stop: &dyn Fn() -> bool,
) -> Result<(), StreamError> {
    let sc = &settings.stream;
    let instance = sc.instance();
    let reader = CheckpointReader {
        consumer: base_config(k, "stream-checkpoints")
            .set("group.id", format!("{}-checkpoint-reader", sc.group_id))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("isolation.level", "read_committed")
            .create_with_context(KafkaContext::new(k))
            .map_err(kafka("checkpoint reader config"))?,
        topic: k.topics.checkpoints.clone(),
        input: k.topics.events.clone(),
        timeout: Duration::from_millis(sc.transaction_timeout_ms * 3),
    };
    // Serves a token request (AWS_MSK_IAM) before the metadata request needs it.
    let _ = reader.consumer.poll(Duration::ZERO);
    let checkpoint_partitions = reader.partitions().map_err(StreamError::Restore)?;
    // On a broker that does not create topics on use, provisional rows on a topic that does
    // not exist would fail every transaction, final rows and all (in the transaction, the
    // default), or all be lost (stream.provisional_in_transaction = false): say so at the
    // start.
    let provisional = k.topics.provisional_topic();
    let shown = sc.provisional_interval_ms > 0;
    // Provisional rows shown, on a topic of their own.
    let separate = k.topics.separate_provisional_topic().filter(|_| shown);
    if let Some(apart) = &separate {
        let md = reader
            .consumer
            .fetch_metadata(Some(apart), reader.timeout)
            .map_err(kafka("provisional topic metadata"))?;
        if md
            .topics()
            .first()
            .is_none_or(|t| t.partitions().is_empty())
        {
            return Err(StreamError::Topic(format!(
                "the provisional rows' topic {apart} (kafka.topics.provisional) does not \
                 exist: run `banter topics`, or set kafka.topics.provisional to the rollups \
                 topic's name, or stream.provisional_interval_ms = 0"
            )));
        }
    }
    let mut campaigns =
        CampaignSource::open(&settings.cta.campaigns_file).map_err(StreamError::Campaigns)?;
    metrics.campaigns.set(campaigns.count() as i64);
    let partitions = Arc::new(Mutex::new(Partitions::default()));
    let rebalance = Rebalance {
        partitions: partitions.clone(),
        reader,
        setup: Mutex::new(Setup {
            pipeline: PipelineConfig::from_settings(settings),
            matcher: campaigns.matcher().clone(),
        }),
        input: k.topics.events.clone(),
        metrics: metrics.clone(),
        tokens: KafkaContext::new(k),
    };
    let consumer: BaseConsumer<Rebalance> = consumer_config(k, "stream", &sc.group_id)
        .set("partition.assignment.strategy", "range")
        .set("max.poll.interval.ms", sc.max_poll_interval_ms.to_string())
        // Static membership (KIP-345): a restarted instance takes its partitions back at
        // once instead of waiting for its previous life's session to expire.
        .set("group.instance.id", &instance)
        .set("session.timeout.ms", sc.session_timeout_ms.to_string())
        .set(
            "heartbeat.interval.ms",
            (sc.session_timeout_ms / 5).max(100).to_string(),
        )
        .create_with_context(rebalance)
        .map_err(kafka("consumer config"))?;
    consumer
        .subscribe(&[&k.topics.events])
        .map_err(kafka("subscribe"))?;
    let transactional_id = format!("{}-{instance}", sc.group_id);
    let make_producer = || -> Result<BaseProducer<KafkaContext>, StreamError> {
        let p: BaseProducer<KafkaContext> = transactional_config(k, "stream", &transactional_id)
            .set(
                "transaction.timeout.ms",
                sc.transaction_timeout_ms.to_string(),
            )
            .set("linger.ms", "10")
            .set("queue.buffering.max.messages", "1000000")
            .create_with_context(KafkaContext::new(k))
            .map_err(kafka("producer config"))?;
        // Serves a token request (AWS_MSK_IAM) before init_transactions waits for the broker.
        p.poll(Duration::ZERO);
        p.init_transactions(Duration::from_secs(60))
            .map_err(kafka("init transactions"))?;
        Ok(p)
    };
    // The Schema Registry, for topics in the Confluent wire format: what this role writes is
    // registered before its first record.
    let registry =
        banter_runtime::registry::Registry::for_config(k).map_err(StreamError::Registry)?;
    if let Some(r) = &registry {
        use banter_model::AvroRecord as _;
        r.prepare(
            &k.topics.rollups,
            &[
                banter_model::Rollup::NAME,
                banter_model::FunnelRollup::NAME,
                banter_model::ConversationRollup::NAME,
            ],
        )
        .and_then(|()| r.prepare(&provisional, &[banter_model::Rollup::NAME]))
        .and_then(|()| r.prepare(&k.topics.alerts, &[banter_model::SpikeAlert::NAME]))
        .and_then(|()| r.prepare(&k.topics.dlq, &[banter_model::DeadLetter::NAME]))
        .map_err(|e| StreamError::Registry(e.into()))?;
    }
    let mut producer = make_producer()?;
    // Provisional rows outside the transactions (`stream.provisional_in_transaction`), on a
    // topic of their own only: on the rollups topic they would be read no sooner.
    let apart = separate.is_some() && !sc.provisional_in_transaction;
    let make_showings = || {
        showings::Showings::new(k, metrics.provisional_failed.clone())
            .map_err(kafka("provisional rows' producer config"))
    };
    let mut showings = apart.then(make_showings).transpose()?;
    if shown && !sc.provisional_in_transaction && !apart {
        tracing::warn!(topic = %provisional, "stream.provisional_in_transaction = false has no effect: provisional rows share the rollups topic, so they stay in the transactions");
    }
    // A batch's partitions are processed on up to this many threads (`stream.threads`).
    let threads = sc.worker_threads();
    tracing::info!(%transactional_id, group = %sc.group_id, input = %k.topics.events, threads, "stream started");
    let topics = Topics {
        input: k.topics.events.clone(),
        rollups: k.topics.rollups.clone(),
        provisional,
        alerts: k.topics.alerts.clone(),
        dlq: k.topics.dlq.clone(),
        checkpoints: k.topics.checkpoints.clone(),
        checkpoint_partitions,
        registry: registry.clone(),
    };
    let ends: BaseConsumer<KafkaContext> = base_config(k, "stream-ends")
        .set("isolation.level", "read_uncommitted")
        .set("enable.auto.commit", "false")
        .create_with_context(KafkaContext::new(k))
        .map_err(kafka("partition ends client config"))?;
    let schemas = banter_runtime::schemas::SchemaLookup::new(k);
    // Transaction calls that block past their own timeout end the role (see Batcher::commit).
    let watchdog = banter_runtime::watchdog::Watchdog::new(
        "stream-watchdog",
        banter_runtime::watchdog::Watchdog::exit_action("stream instance"),
    );
    let mut last_gauges = Instant::now() - Duration::from_secs(60);
    let reload_every = Duration::from_millis(settings.cta.reload_interval_ms);
    let mut last_reload_check = Instant::now();
    ready(true);
    let mut registry_wait = Duration::ZERO;
    let mut registry_down = false;
    let mut batch = Batch::default();
    while !stop() {
        // Serves the producer's events between transactions (a token refresh for AWS_MSK_IAM).
        producer.poll(Duration::ZERO);
        if std::mem::take(&mut registry_down) {
            std::thread::sleep(Duration::from_secs(1));
        }
        if last_reload_check.elapsed() >= reload_every {
            last_reload_check = Instant::now();
            reload_campaigns(&mut campaigns, &consumer, &partitions, metrics, settings);
        }
        poll_batch(&consumer, &partitions, settings, &mut batch)?;
        // The registry is asked about new schema ids before anything of the batch is
        // processed: while it cannot be asked, the batch is put back (no state changed, no
        // transaction begun) and asked about again, 1 s, 2 s, … up to 30 s later.
        if let Some(r) = &registry {
            match r.learn(batch.iter().map(|(_, _, payload)| payload)) {
                Ok(()) => registry_wait = Duration::ZERO,
                Err(e) => {
                    registry_wait =
                        (registry_wait * 2).clamp(Duration::from_secs(1), Duration::from_secs(30));
                    tracing::warn!(error = %e, retry_in = ?registry_wait, "schema registry unavailable; the batch waits");
                    put_back(&consumer, &k.topics.events, &batch)?;
                    let until = Instant::now() + registry_wait;
                    while Instant::now() < until && !stop() {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    continue;
                }
            }
        }
        let mut parts = lock(&partitions);
        if let Some(e) = parts.error.take() {
            return Err(StreamError::Restore(e));
        }
        let t0 = Instant::now();
        let n = batch.len();
        let batcher = Batcher {
            consumer: &consumer,
            ends: &ends,
            producer: &producer,
            showings: showings.as_ref(),
            topics: &topics,
            config: sc,
            metrics,
            schemas: &schemas,
            watchdog: &watchdog,
            threads,
        };
        match batcher.run(&mut parts, &batch) {
            Ok(committed) => {
                if committed {
                    metrics.outcome(&metrics.transactions, "outcome", "committed");
                    metrics.batch_seconds.observe(t0.elapsed().as_secs_f64());
                    metrics.batch_events.observe(n as f64);
                }
            }
            Err(e) => {
                metrics.outcome(&metrics.transactions, "outcome", "aborted");
                tracing::warn!(error = %e, "batch not committed; rewinding its partitions");
                let aborted = !e.is_fatal()
                    && abort(&producer)
                        .inspect_err(|ae| tracing::warn!(error = %ae, "abort failed"))
                        .is_ok();
                if !aborted {
                    producer = make_producer()?;
                }
                rewind(&consumer, &mut parts, &topics)?;
                // A registry that cannot be asked is not asked again at once.
                registry_down = matches!(e, transaction::BatchError::Registry(_));
            }
        }
        if showings.as_ref().is_some_and(showings::Showings::is_broken) {
            tracing::warn!("the provisional rows' producer failed fatally; making a new one");
            showings = Some(make_showings()?);
        }
        if last_gauges.elapsed() >= Duration::from_secs(5) {
            last_gauges = Instant::now();
            gauges(&consumer, &ends, &parts, &topics, metrics);
        }
    }
    tracing::info!("stream stopping");
    if let Some(s) = &showings {
        s.flush(Duration::from_secs(5));
    }
    Ok(())
}

/// Aborts the open transaction. The abort waits until no message of it is left, delivery
/// reports included, and nothing else polls this producer: it is asked for in short steps
/// (an abort that timed out can be asked for again), serving the reports in between.
fn abort(producer: &BaseProducer<KafkaContext>) -> Result<(), KafkaError> {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        producer.poll(Duration::ZERO);
        match producer.abort_transaction(Duration::from_millis(500)) {
            Err(KafkaError::Transaction(e)) if e.is_retriable() && Instant::now() < until => {
                producer.poll(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

/// Loads the campaigns file again when it changed and hands the campaigns to every partition
/// (and to partitions assigned later); a refused file leaves the previous campaigns.
fn reload_campaigns(
    campaigns: &mut CampaignSource,
    consumer: &BaseConsumer<Rebalance>,
    partitions: &Mutex<Partitions>,
    metrics: &StreamMetrics,
    settings: &StreamSettings,
) {
    match campaigns.reload() {
        Ok(false) => {}
        Ok(true) => {
            metrics.outcome(&metrics.campaign_reloads, "outcome", "ok");
            metrics.campaigns.set(campaigns.count() as i64);
            tracing::info!(campaigns = campaigns.count(), file = %settings.cta.campaigns_file, "campaigns reloaded");
            let matcher = campaigns.matcher().clone();
            consumer
                .context()
                .setup
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .matcher = matcher.clone();
            let mut parts = lock(partitions);
            let parts = &mut *parts;
            for part in parts.active.values_mut().chain(parts.parked.values_mut()) {
                part.pipeline.set_matcher(matcher.clone());
            }
        }
        Err(e) => {
            metrics.outcome(&metrics.campaign_reloads, "outcome", "error");
            tracing::error!(error = %e, "campaigns file refused; the previous campaigns stay");
        }
    }
}

/// Collects a batch of input; a rebalance in the middle makes what was collected stale.
fn poll_batch(
    consumer: &BaseConsumer<Rebalance>,
    partitions: &Mutex<Partitions>,
    settings: &StreamSettings,
    batch: &mut Batch,
) -> Result<(), StreamError> {
    let sc = &settings.stream;
    let started = Instant::now();
    batch.clear();
    let mut generation = lock(partitions).generation;
    while batch.len() < sc.max_batch_events {
        let left = Duration::from_millis(sc.max_batch_ms).saturating_sub(started.elapsed());
        if left.is_zero() {
            break;
        }
        match consumer.poll(left) {
            Some(Ok(m)) => batch.push(m.partition(), m.offset(), m.payload().unwrap_or_default()),
            // A fatal error leaves the consumer unusable: polling on would hold the
            // partitions the group may hand this member without ever reading them.
            Some(Err(e @ KafkaError::MessageConsumptionFatal(_))) => {
                let why = banter_runtime::kafka::fatal_reason(consumer.client(), &e);
                return Err(StreamError::Fenced(why));
            }
            Some(Err(e)) => tracing::warn!(error = %e, "consumer"),
            None => {}
        }
        let g = lock(partitions).generation;
        if g != generation {
            batch.clear();
            generation = g;
        }
    }
    Ok(())
}

/// Moves the consumer back to the first record of `batch` in each of its partitions (nothing
/// of it was processed).
fn put_back(
    consumer: &BaseConsumer<Rebalance>,
    input: &str,
    batch: &Batch,
) -> Result<(), StreamError> {
    let mut first: BTreeMap<i32, i64> = BTreeMap::new();
    for (p, offset, _) in batch.iter() {
        first
            .entry(p)
            .and_modify(|o| *o = (*o).min(offset))
            .or_insert(offset);
    }
    if first.is_empty() {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    for (p, offset) in first {
        tpl.add_partition_offset(input, p, Offset::Offset(offset))
            .map_err(kafka("put back"))?;
    }
    consumer
        .seek_partitions(tpl, Duration::from_secs(10))
        .map_err(kafka("seek"))?;
    Ok(())
}

/// After a failed transaction the pipelines of the partitions it touched are ahead of what is
/// committed: rebuild them from their checkpoints and move the consumer back.
fn rewind(
    consumer: &BaseConsumer<Rebalance>,
    parts: &mut Partitions,
    topics: &Topics,
) -> Result<(), StreamError> {
    let ctx = consumer.context();
    let setup = ctx.setup();
    let ids: Vec<i32> = parts.active.keys().copied().collect();
    let saved = ctx.reader.read(&ids).map_err(StreamError::Restore)?;
    let mut tpl = TopicPartitionList::new();
    for p in ids {
        // Without a checkpoint nothing of this partition was ever committed.
        let (part, offset) = Partition::restore(
            &setup.pipeline,
            &setup.matcher,
            saved.get(&p),
            Offset::Beginning,
        )
        .map_err(StreamError::Restore)?;
        parts.active.insert(p, part);
        tpl.add_partition_offset(&topics.input, p, offset)
            .map_err(kafka("rewind"))?;
    }
    consumer
        .seek_partitions(tpl, Duration::from_secs(10))
        .map_err(kafka("seek"))?;
    parts.generation += 1;
    Ok(())
}

/// The lag and state gauges.
fn gauges(
    consumer: &BaseConsumer<Rebalance>,
    ends: &BaseConsumer<KafkaContext>,
    parts: &Partitions,
    topics: &Topics,
    metrics: &StreamMetrics,
) {
    let now = banter_runtime::now_ms();
    ends.poll(Duration::ZERO);
    let positions = consumer.position().ok();
    let mut sizes = StateSizes::default();
    for (p, part) in &parts.active {
        let lag_s = part
            .pipeline
            .watermark()
            .map(|wm| (now - wm) as f64 / 1000.0);
        // Behind the log's end: input held back by another producer's open transaction is
        // lag too. The consumer's position is past transaction markers and aborted records.
        let read = batch::position(positions.as_ref(), &topics.input, *p)
            .map_or(part.pipeline.next_offset(), |pos| {
                pos.max(part.pipeline.next_offset())
            });
        let records = ends
            .fetch_watermarks(&topics.input, *p, Duration::from_secs(2))
            .ok()
            .map(|(_, high)| (high - read).max(0));
        metrics.set_lag(*p, lag_s, records);
        sizes += &part.pipeline.state_sizes();
    }
    metrics.set_state(&sizes, parts.active.len());
}
