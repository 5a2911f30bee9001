//! `banter stream`: the Kafka loop around the windowing engine, exactly once.
//!
//! * One [`Engine`] per assigned input partition; state follows the consumer group's
//!   assignment.
//! * **Exactly once.** Input is read in batches; each batch is one Kafka transaction holding
//!   the rollups and dead letters it caused, a [`Checkpoint`] per partition it touched (topic
//!   `kafka.topics.checkpoints`, compacted) and the input offsets
//!   (`send_offsets_to_transaction`, fenced by the group generation, KIP-447). Either all of it
//!   is visible to `read_committed` readers or none of it.
//! * **Restore.** When a partition is assigned, its latest committed checkpoint names the
//!   oldest input offset still held in window state (bounded by the lateness horizon plus the
//!   out-of-orderness, about an hour of event time). The input is replayed from there with the
//!   outputs discarded up to the checkpoint's offset; from then on the engine emits exactly
//!   what the previous owner would have. State that lives longer — first-hour post state
//!   (up to two hours), spike baselines, funnels (7 days), conversations (a day) — is not
//!   replayed: it is a changelog in the same compacted topic (`<input>/<partition>/post/…`,
//!   `…/spike/…`, `…/funnel/…`, `…/conversation/…`), written in the transaction it belongs to
//!   and read back with the checkpoint. A partition that comes back to the instance that
//!   already holds its state at the committed offset is not replayed.
//! * **Idle partitions**: a partition that is caught up and quiet for `stream.idle_timeout_ms`
//!   moves its watermark to the highest watermark of this instance's partitions, or with the
//!   wall clock from its own highest event time, whichever is later; the move is recorded in
//!   the checkpoint so that a replay repeats it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use banter_model::{
    AvroRecord, ConversationRollup, DeadLetter, EngagementEvent, FunnelRollup, Rollup, SpikeAlert,
    Stage,
};
use banter_runtime::config::{Config, StreamConfig};
use banter_runtime::kafka::{base_config, consumer_config, producer_config};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, DefaultConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use thiserror::Error;

use crate::conversation::{ConversationConfig, Conversations};
use crate::cta::Matcher;
use crate::funnel::{FunnelConfig, Funnels};
use crate::spike::{Detector, SpikeConfig};
use crate::window::{Checkpoint, Engine, Output, WindowConfig};

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
    /// The campaigns file (`cta.campaigns_file`) cannot be used.
    #[error("cta.campaigns_file: {0}")]
    Campaigns(String),
}

/// Why a batch was not committed.
#[derive(Debug, Error)]
enum BatchError {
    #[error("{0}")]
    Kafka(#[from] KafkaError),
    #[error("the consumer has no group metadata (not in a group)")]
    NoGroup,
    #[error("cannot encode a rollup: {0}")]
    Encode(String),
    #[error("cannot encode an alert: {0}")]
    EncodeAlert(String),
    #[error("cannot encode a funnel row: {0}")]
    EncodeFunnel(String),
    #[error("cannot encode a conversation row: {0}")]
    EncodeConversation(String),
}

fn kafka(what: &'static str) -> impl FnOnce(KafkaError) -> StreamError {
    move |source| StreamError::Kafka { what, source }
}

/// The stream role's metrics.
#[derive(Debug, Clone)]
pub struct StreamMetrics {
    events: Counter,
    duplicates: Counter,
    late: Counter,
    too_late: Counter,
    undecodable: Counter,
    rows: Counter,
    replayed: Counter,
    restores: Family<Vec<(String, String)>, Counter>,
    transactions: Family<Vec<(String, String)>, Counter>,
    batch_seconds: Histogram,
    batch_events: Histogram,
    watermark_lag: Family<Vec<(String, String)>, Gauge<f64, AtomicU64>>,
    consumer_lag: Family<Vec<(String, String)>, Gauge>,
    state_entries: Gauge,
    state_bytes: Gauge,
    posts: Gauge,
    partitions: Gauge,
    alerts: Family<Vec<(String, String)>, Counter>,
    spike_keys: Gauge,
    alerts_firing: Gauge,
    funnel_rows: Counter,
    conversation_rows: Counter,
    triggers: Counter,
    unattributed: Counter,
    campaign_reloads: Family<Vec<(String, String)>, Counter>,
    campaigns: Gauge,
    funnel_entries: Gauge,
}

impl StreamMetrics {
    /// Registers the metrics under `banter_stream_…`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = StreamMetrics {
            events: Counter::default(),
            duplicates: Counter::default(),
            late: Counter::default(),
            too_late: Counter::default(),
            undecodable: Counter::default(),
            rows: Counter::default(),
            replayed: Counter::default(),
            restores: Family::default(),
            transactions: Family::default(),
            batch_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            batch_events: Histogram::new(exponential_buckets(1.0, 4.0, 10)),
            watermark_lag: Family::default(),
            consumer_lag: Family::default(),
            state_entries: Gauge::default(),
            state_bytes: Gauge::default(),
            posts: Gauge::default(),
            partitions: Gauge::default(),
            alerts: Family::default(),
            spike_keys: Gauge::default(),
            alerts_firing: Gauge::default(),
            funnel_rows: Counter::default(),
            conversation_rows: Counter::default(),
            triggers: Counter::default(),
            unattributed: Counter::default(),
            campaign_reloads: Family::default(),
            campaigns: Gauge::default(),
            funnel_entries: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("stream");
        r.register(
            "events",
            "Input events processed (after restores, excluding replay)",
            m.events.clone(),
        );
        r.register(
            "duplicate_events",
            "Events dropped as duplicates of an event_id already counted",
            m.duplicates.clone(),
        );
        r.register(
            "late_events",
            "Late events that corrected an emitted window",
            m.late.clone(),
        );
        r.register(
            "too_late_events",
            "Events later than the allowed lateness, dead-lettered as `late`",
            m.too_late.clone(),
        );
        r.register(
            "undecodable_records",
            "Input records that are not EngagementEvent Avro, dead-lettered",
            m.undecodable.clone(),
        );
        r.register(
            "rows_emitted",
            "Rollup rows written (corrections included)",
            m.rows.clone(),
        );
        r.register(
            "replayed_events",
            "Input events re-read to rebuild state after an assignment",
            m.replayed.clone(),
        );
        r.register(
            "restores",
            "Partitions assigned, by how their state was obtained (kept, replayed, fresh)",
            m.restores.clone(),
        );
        r.register(
            "transactions",
            "Kafka transactions by outcome",
            m.transactions.clone(),
        );
        r.register(
            "batch_seconds",
            "Processing time of one batch, transaction commit included",
            m.batch_seconds.clone(),
        );
        r.register(
            "batch_events",
            "Input records per batch",
            m.batch_events.clone(),
        );
        r.register(
            "watermark_lag_seconds",
            "Wall clock minus the partition's watermark",
            m.watermark_lag.clone(),
        );
        r.register(
            "consumer_lag_records",
            "Records between the partition's end and the next offset to process",
            m.consumer_lag.clone(),
        );
        r.register(
            "state_entries",
            "Window panes, dedup ids and posts held",
            m.state_entries.clone(),
        );
        r.register(
            "state_bytes",
            "Estimated bytes of window state held",
            m.state_bytes.clone(),
        );
        r.register("posts", "Posts with first-hour state", m.posts.clone());
        r.register(
            "partitions",
            "Input partitions assigned to this instance",
            m.partitions.clone(),
        );
        r.register(
            "alerts",
            "Spike alerts written, by state (FIRING, RESOLVED)",
            m.alerts.clone(),
        );
        r.register(
            "spike_keys",
            "Accounts and posts with a spike baseline",
            m.spike_keys.clone(),
        );
        r.register(
            "alerts_firing",
            "Spike alerts firing now",
            m.alerts_firing.clone(),
        );
        r.register(
            "funnel_rows",
            "CTA funnel rows written (corrections included)",
            m.funnel_rows.clone(),
        );
        r.register(
            "conversation_rows",
            "Conversation rows written (updates included)",
            m.conversation_rows.clone(),
        );
        r.register(
            "cta_triggers",
            "Inbound messages that matched a campaign keyword",
            m.triggers.clone(),
        );
        r.register(
            "cta_unattributed",
            "Funnel stage events without a campaign to attribute them to",
            m.unattributed.clone(),
        );
        r.register(
            "campaign_reloads",
            "Reloads of the campaigns file by outcome (ok, error)",
            m.campaign_reloads.clone(),
        );
        r.register("campaigns", "CTA campaigns configured", m.campaigns.clone());
        r.register(
            "funnel_state_entries",
            "Funnel (actor, campaign) states and open windows held",
            m.funnel_entries.clone(),
        );
        m
    }

    fn outcome(&self, family: &Family<Vec<(String, String)>, Counter>, key: &str, v: &str) {
        family
            .get_or_create(&vec![(key.to_owned(), v.to_owned())])
            .inc();
    }
}

/// One assigned input partition.
struct Part {
    engine: Engine,
    detector: Detector,
    funnels: Funnels,
    conversations: Conversations,
    /// Outputs of offsets below this were emitted before the restore: discard them.
    replay_until: i64,
    replaying: bool,
    last_arrival: Instant,
    /// When a quiet partition last asked the broker whether it is caught up.
    idle_checked: Instant,
    /// Changed in the open batch: its checkpoint and offset go into the transaction.
    dirty: bool,
}

/// The campaigns file and what was loaded from it.
struct CampaignsFile {
    path: String,
    modified: Option<std::time::SystemTime>,
    matcher: Matcher,
    count: usize,
}

impl CampaignsFile {
    /// Loads `path` (empty: no campaigns).
    fn open(path: &str) -> Result<Self, StreamError> {
        let mut f = CampaignsFile {
            path: path.to_owned(),
            modified: None,
            matcher: Matcher::default(),
            count: 0,
        };
        if !path.is_empty() {
            f.reload().map_err(StreamError::Campaigns)?;
            tracing::info!(campaigns = f.count, file = %path, "campaigns loaded");
        }
        Ok(f)
    }

    /// Loads the file again when it changed; true when it did.
    fn reload(&mut self) -> Result<bool, String> {
        if self.path.is_empty() {
            return Ok(false);
        }
        let path = std::path::Path::new(&self.path);
        let modified = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .map_err(|e| format!("campaigns file {}: {e}", self.path))?;
        if self.modified == Some(modified) {
            return Ok(false);
        }
        // Marked as seen even when refused: the same broken file is reported once.
        self.modified = Some(modified);
        let (campaigns, matcher) = crate::cta::load_campaigns(path)?;
        self.count = campaigns.len();
        self.matcher = matcher;
        Ok(true)
    }
}

/// The engine parameters of `stream.*`.
fn window_config(sc: &StreamConfig) -> WindowConfig {
    WindowConfig {
        out_of_orderness_ms: sc.out_of_orderness_ms,
        allowed_lateness_ms: sc.allowed_lateness_ms,
        time_to_n: sc.time_to_n,
    }
}

impl Part {
    /// The partition's state from its latest checkpoint and the input offset to read from;
    /// `none` when it has no checkpoint.
    fn from_checkpoint(
        setup: &Setup,
        saved: Option<&Saved>,
        none: Offset,
    ) -> Result<(Self, Offset), String> {
        Ok(match saved {
            Some(Saved {
                checkpoint: Some(cp),
                stores,
            }) => {
                let mut part = Part::restored(setup, cp, &stores[Store::Post as usize])?;
                for (name, value) in &stores[Store::Spike as usize] {
                    part.detector.restore(name, value)?;
                }
                part.detector.clean();
                for (name, value) in &stores[Store::Funnel as usize] {
                    part.funnels.restore(name, value)?;
                }
                part.funnels.clean();
                for (name, value) in &stores[Store::Conversation as usize] {
                    part.conversations.restore(name, value)?;
                }
                part.conversations.clean();
                (part, Offset::Offset(Engine::replay_from(cp)))
            }
            _ => (Part::fresh(setup), none),
        })
    }

    /// The changelog entries of every store changed since the last call.
    fn changes(&mut self) -> [(Store, Vec<Change>); 4] {
        [
            (Store::Post, self.engine.post_changes()),
            (Store::Spike, self.detector.changes()),
            (Store::Funnel, self.funnels.changes()),
            (Store::Conversation, self.conversations.changes()),
        ]
    }

    fn fresh(setup: &Setup) -> Self {
        Part {
            engine: Engine::new(setup.window),
            detector: Detector::new(setup.spike),
            funnels: Funnels::new(setup.funnel, setup.matcher.clone()),
            conversations: Conversations::new(setup.conversation),
            replay_until: 0,
            replaying: false,
            last_arrival: Instant::now(),
            idle_checked: Instant::now(),
            dirty: false,
        }
    }

    fn restored(
        setup: &Setup,
        cp: &Checkpoint,
        posts: &BTreeMap<String, Vec<u8>>,
    ) -> Result<Self, String> {
        let mut engine = Engine::restored(setup.window, cp);
        for (name, value) in posts {
            engine.restore_post(name, value)?;
        }
        let from = Engine::replay_from(cp);
        let replaying = from < cp.next_offset;
        if !replaying {
            engine.finish_replay(&mut Vec::new());
        }
        Ok(Part {
            engine,
            detector: Detector::new(setup.spike),
            funnels: Funnels::new(setup.funnel, setup.matcher.clone()),
            conversations: Conversations::new(setup.conversation),
            replay_until: cp.next_offset,
            replaying,
            last_arrival: Instant::now(),
            idle_checked: Instant::now(),
            dirty: false,
        })
    }
}

#[derive(Default)]
struct Parts {
    active: BTreeMap<i32, Part>,
    /// Revoked partitions whose state may come back with the next assignment.
    parked: BTreeMap<i32, Part>,
    /// Bumped by every rebalance: input polled before it is stale.
    generation: u64,
    error: Option<String>,
}

/// What a partition's processors are built from; the campaigns change on reload.
#[derive(Clone)]
struct Setup {
    window: WindowConfig,
    spike: SpikeConfig,
    funnel: FunnelConfig,
    conversation: ConversationConfig,
    matcher: Matcher,
}

struct Ctx {
    parts: Arc<Mutex<Parts>>,
    reader: CheckpointReader,
    setup: Mutex<Setup>,
    input: String,
    metrics: StreamMetrics,
}

fn lock(m: &Mutex<Parts>) -> MutexGuard<'_, Parts> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ClientContext for Ctx {}

impl ConsumerContext for Ctx {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let mut parts = lock(&self.parts);
        parts.generation += 1;
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let ids: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                let cps = match self.reader.read(&ids) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read checkpoints");
                        parts.error = Some(e);
                        return;
                    }
                };
                let mut assign = TopicPartitionList::new();
                for p in ids {
                    let parked = parts.parked.remove(&p);
                    let saved = cps.get(&p);
                    let cp = saved.and_then(|s| s.checkpoint.as_ref());
                    let (part, offset, how) = match (parked, cp) {
                        (Some(part), Some(cp))
                            if !part.replaying && part.engine.next_offset() == cp.next_offset =>
                        {
                            (part, Offset::Offset(cp.next_offset), "kept")
                        }
                        (_, cp) => {
                            let setup = self
                                .setup
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .clone();
                            match Part::from_checkpoint(&setup, saved, Offset::Stored) {
                                Ok((part, offset)) => (
                                    part,
                                    offset,
                                    if cp.is_some() { "replayed" } else { "fresh" },
                                ),
                                Err(e) => {
                                    tracing::error!(error = %e, "cannot restore partition {p}");
                                    parts.error = Some(e);
                                    return;
                                }
                            }
                        }
                    };
                    tracing::info!(partition = p, ?offset, how, "partition assigned");
                    self.metrics.outcome(&self.metrics.restores, "how", how);
                    parts.active.insert(p, part);
                    if let Err(e) = assign.add_partition_offset(&self.input, p, offset) {
                        parts.error = Some(format!("assignment of partition {p}: {e}"));
                    }
                }
                if let Err(e) = consumer.assign(&assign) {
                    parts.error = Some(format!("assign: {e}"));
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let active = std::mem::take(&mut parts.active);
                for (p, part) in active {
                    tracing::info!(partition = p, "partition revoked");
                    self.metrics
                        .watermark_lag
                        .remove(&vec![("partition".into(), p.to_string())]);
                    self.metrics
                        .consumer_lag
                        .remove(&vec![("partition".into(), p.to_string())]);
                    parts.parked.insert(p, part);
                }
                if let Err(e) = consumer.unassign() {
                    tracing::warn!(error = %e, "unassign");
                }
            }
            other => {
                tracing::error!(error = ?other, "rebalance error");
                let _ = consumer.unassign();
                parts.active.clear();
            }
        }
    }
}

/// Reads the latest committed checkpoint of input partitions.
struct CheckpointReader {
    consumer: BaseConsumer<DefaultConsumerContext>,
    topic: String,
    input: String,
    timeout: Duration,
}

fn checkpoint_key(input: &str, partition: i32) -> String {
    format!("{input}/{partition}")
}

/// A changelog entry: name within its store, value (None: deleted).
type Change = (String, Option<Vec<u8>>);

/// The changelogs that sit beside a partition's checkpoint, keyed
/// `<input>/<partition>/<store>/<name>`: state that outlives the replay.
#[derive(Debug, Clone, Copy)]
enum Store {
    /// First-hour post state (the window engine).
    Post,
    /// Spike detector state.
    Spike,
    /// Funnel state.
    Funnel,
    /// Conversation state.
    Conversation,
}

impl Store {
    const ALL: [Store; 4] = [
        Store::Post,
        Store::Spike,
        Store::Funnel,
        Store::Conversation,
    ];

    fn infix(self) -> &'static str {
        match self {
            Store::Post => "/post/",
            Store::Spike => "/spike/",
            Store::Funnel => "/funnel/",
            Store::Conversation => "/conversation/",
        }
    }
}

/// What the checkpoint topic holds for one input partition.
#[derive(Debug, Default)]
struct Saved {
    checkpoint: Option<Checkpoint>,
    /// Each [`Store`]'s entries by name, indexed by the store.
    stores: [BTreeMap<String, Vec<u8>>; 4],
}

impl CheckpointReader {
    fn read(&self, partitions: &[i32]) -> Result<HashMap<i32, Saved>, String> {
        let deadline = Instant::now() + self.timeout;
        let md = self
            .consumer
            .fetch_metadata(Some(&self.topic), self.timeout)
            .map_err(|e| format!("metadata of {}: {e}", self.topic))?;
        let n = md
            .topics()
            .first()
            .map(|t| t.partitions().len())
            .unwrap_or(0);
        if n == 0 {
            return Err(format!(
                "checkpoint topic {} does not exist (run `banter topics`)",
                self.topic
            ));
        }
        let wanted: HashMap<String, i32> = partitions
            .iter()
            .map(|&p| (checkpoint_key(&self.input, p), p))
            .collect();
        let mut tpl = TopicPartitionList::new();
        let mut pending: BTreeMap<i32, i64> = BTreeMap::new();
        for &p in partitions {
            let cp = checkpoint_partition(p, n);
            if pending.contains_key(&cp) {
                continue;
            }
            let (low, high) = self
                .consumer
                .fetch_watermarks(&self.topic, cp, self.timeout)
                .map_err(|e| format!("watermarks of {}/{cp}: {e}", self.topic))?;
            if high > low {
                tpl.add_partition_offset(&self.topic, cp, Offset::Beginning)
                    .map_err(|e| e.to_string())?;
                pending.insert(cp, high);
            }
        }
        let mut found = HashMap::new();
        if pending.is_empty() {
            return Ok(found);
        }
        self.consumer.assign(&tpl).map_err(|e| e.to_string())?;
        while !pending.is_empty() {
            if Instant::now() > deadline {
                let _ = self.consumer.unassign();
                return Err(format!(
                    "checkpoints of partitions {:?} not read within {:?}",
                    pending.keys().collect::<Vec<_>>(),
                    self.timeout
                ));
            }
            match self.consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    let key = m.key().and_then(|k| std::str::from_utf8(k).ok());
                    let store = key.and_then(|k| {
                        Store::ALL.into_iter().find_map(|store| {
                            let infix = store.infix();
                            let i = k.find(infix)?;
                            Some((wanted.get(&k[..i])?, &k[i + infix.len()..], store))
                        })
                    });
                    if let Some((p, name, store)) = store {
                        let saved = found.entry(*p).or_insert_with(Saved::default);
                        let entries = &mut saved.stores[store as usize];
                        match m.payload() {
                            Some(v) => entries.insert(name.to_owned(), v.to_vec()),
                            None => entries.remove(name),
                        };
                    } else if let (Some(p), Some(v)) =
                        (key.and_then(|k| wanted.get(k)), m.payload())
                    {
                        match serde_json::from_slice::<Checkpoint>(v) {
                            Ok(cp) => {
                                found.entry(*p).or_insert_with(Saved::default).checkpoint =
                                    Some(cp);
                            }
                            Err(e) => {
                                return Err(format!(
                                    "checkpoint at {}/{}@{}: {e}",
                                    self.topic,
                                    m.partition(),
                                    m.offset()
                                ))
                            }
                        }
                    }
                    if pending
                        .get(&m.partition())
                        .is_some_and(|h| m.offset() + 1 >= *h)
                    {
                        pending.remove(&m.partition());
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    pending.remove(&p);
                }
                Some(Err(e)) => tracing::warn!(error = %e, "reading checkpoints"),
                None => {}
            }
        }
        let _ = self.consumer.unassign();
        Ok(found)
    }
}

fn checkpoint_partition(input_partition: i32, checkpoint_partitions: usize) -> i32 {
    let n = i32::try_from(checkpoint_partitions)
        .unwrap_or(i32::MAX)
        .max(1);
    input_partition.rem_euclid(n)
}

/// Topics and names the loop writes to.
struct Outputs {
    input: String,
    rollups: String,
    alerts: String,
    dlq: String,
    checkpoints: String,
    checkpoint_partitions: usize,
}

/// Runs the stream role until `stop` returns true. Blocking: call it from a thread.
///
/// # Errors
/// A Kafka client cannot be created, the transactional producer cannot be initialised, or
/// the checkpoints of assigned partitions cannot be read.
pub fn run(
    config: &Config,
    metrics: &StreamMetrics,
    ready: &dyn Fn(bool),
    stop: &dyn Fn() -> bool,
) -> Result<(), StreamError> {
    let sc: &StreamConfig = &config.stream;
    let k = &config.kafka;
    let instance = sc.instance();
    let window = window_config(sc);
    let parts = Arc::new(Mutex::new(Parts::default()));
    let reader = CheckpointReader {
        consumer: base_config(k, "stream-checkpoints")
            .set("group.id", format!("{}-checkpoint-reader", sc.group_id))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("isolation.level", "read_committed")
            .create()
            .map_err(kafka("checkpoint reader config"))?,
        topic: k.topics.checkpoints.clone(),
        input: k.topics.events.clone(),
        timeout: Duration::from_millis(sc.transaction_timeout_ms * 3),
    };
    let checkpoint_partitions = reader
        .consumer
        .fetch_metadata(Some(&k.topics.checkpoints), Duration::from_secs(10))
        .map_err(kafka("checkpoint topic metadata"))?
        .topics()
        .first()
        .map(|t| t.partitions().len())
        .unwrap_or(0);
    if checkpoint_partitions == 0 {
        return Err(StreamError::Restore(format!(
            "checkpoint topic {} does not exist (run `banter topics`)",
            k.topics.checkpoints
        )));
    }
    let mut campaigns = CampaignsFile::open(&config.cta.campaigns_file)?;
    metrics.campaigns.set(campaigns.count as i64);
    let setup = Setup {
        window,
        spike: config.spike,
        funnel: FunnelConfig {
            attribution_ms: config.cta.attribution_days * 86_400_000,
            allowed_lateness_ms: sc.allowed_lateness_ms,
        },
        conversation: config.conversation,
        matcher: campaigns.matcher.clone(),
    };
    let ctx = Ctx {
        parts: parts.clone(),
        reader,
        setup: Mutex::new(setup),
        input: k.topics.events.clone(),
        metrics: metrics.clone(),
    };
    let consumer: BaseConsumer<Ctx> = consumer_config(k, "stream", &sc.group_id)
        .set("partition.assignment.strategy", "range")
        .set("max.poll.interval.ms", "300000")
        // Static membership (KIP-345): a restarted instance takes its partitions back at
        // once instead of waiting for its previous life's session to expire.
        .set("group.instance.id", &instance)
        .set("session.timeout.ms", sc.session_timeout_ms.to_string())
        .set(
            "heartbeat.interval.ms",
            (sc.session_timeout_ms / 5).max(100).to_string(),
        )
        .create_with_context(ctx)
        .map_err(kafka("consumer config"))?;
    consumer
        .subscribe(&[&k.topics.events])
        .map_err(kafka("subscribe"))?;
    let transactional_id = format!("{}-{instance}", sc.group_id);
    let make_producer = || -> Result<BaseProducer, StreamError> {
        let p: BaseProducer = producer_config(k, "stream")
            .set("transactional.id", &transactional_id)
            .set(
                "transaction.timeout.ms",
                sc.transaction_timeout_ms.to_string(),
            )
            .set("linger.ms", "10")
            .set("queue.buffering.max.messages", "1000000")
            .create()
            .map_err(kafka("producer config"))?;
        p.init_transactions(Duration::from_secs(60))
            .map_err(kafka("init transactions"))?;
        Ok(p)
    };
    let mut producer = make_producer()?;
    tracing::info!(%transactional_id, group = %sc.group_id, input = %k.topics.events, "stream started");
    let out = Outputs {
        input: k.topics.events.clone(),
        rollups: k.topics.rollups.clone(),
        alerts: k.topics.alerts.clone(),
        dlq: k.topics.dlq.clone(),
        checkpoints: k.topics.checkpoints.clone(),
        checkpoint_partitions,
    };
    let mut last_gauges = Instant::now() - Duration::from_secs(60);
    let reload_every = Duration::from_millis(config.cta.reload_interval_ms);
    let mut last_reload_check = Instant::now();
    ready(true);
    while !stop() {
        if last_reload_check.elapsed() >= reload_every {
            last_reload_check = Instant::now();
            match campaigns.reload() {
                Ok(false) => {}
                Ok(true) => {
                    metrics.outcome(&metrics.campaign_reloads, "outcome", "ok");
                    metrics.campaigns.set(campaigns.count as i64);
                    tracing::info!(campaigns = campaigns.count, file = %config.cta.campaigns_file, "campaigns reloaded");
                    consumer
                        .context()
                        .setup
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .matcher = campaigns.matcher.clone();
                    let mut guard = lock(&parts);
                    let guard = &mut *guard;
                    for part in guard.active.values_mut().chain(guard.parked.values_mut()) {
                        part.funnels.set_matcher(campaigns.matcher.clone());
                    }
                }
                Err(e) => {
                    metrics.outcome(&metrics.campaign_reloads, "outcome", "error");
                    tracing::error!(error = %e, "campaigns file refused; the previous campaigns stay");
                }
            }
        }
        // Collect a batch; a rebalance in the middle makes what was collected stale.
        let started = Instant::now();
        let mut batch: Vec<(i32, i64, Vec<u8>)> = Vec::new();
        let mut generation = lock(&parts).generation;
        while batch.len() < sc.max_batch_events {
            let left = Duration::from_millis(sc.max_batch_ms).saturating_sub(started.elapsed());
            if left.is_zero() {
                break;
            }
            match consumer.poll(left) {
                Some(Ok(m)) => batch.push((
                    m.partition(),
                    m.offset(),
                    m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                )),
                Some(Err(e)) => tracing::warn!(error = %e, "consumer"),
                None => {}
            }
            let g = lock(&parts).generation;
            if g != generation {
                batch.clear();
                generation = g;
            }
        }
        let mut guard = lock(&parts);
        if let Some(e) = guard.error.take() {
            return Err(StreamError::Restore(e));
        }
        let t0 = Instant::now();
        let n = batch.len();
        match process_batch(&consumer, &producer, &mut guard, &out, sc, metrics, batch) {
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
                let fatal =
                    matches!(&e, BatchError::Kafka(KafkaError::Transaction(t)) if t.is_fatal());
                let aborted = !fatal
                    && producer
                        .abort_transaction(Duration::from_secs(30))
                        .inspect_err(|ae| tracing::warn!(error = %ae, "abort failed"))
                        .is_ok();
                if !aborted {
                    producer = make_producer()?;
                }
                rewind(&consumer, &mut guard, &out)?;
            }
        }
        if last_gauges.elapsed() >= Duration::from_secs(5) {
            last_gauges = Instant::now();
            gauges(&consumer, &guard, &out, metrics);
        }
    }
    tracing::info!("stream stopping");
    Ok(())
}

/// After a failed transaction the engines of the partitions it touched are ahead of what is
/// committed: rebuild them from their checkpoints and move the consumer back.
fn rewind(
    consumer: &BaseConsumer<Ctx>,
    parts: &mut Parts,
    out: &Outputs,
) -> Result<(), StreamError> {
    let ctx = consumer.context();
    let setup = ctx
        .setup
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let ids: Vec<i32> = parts.active.keys().copied().collect();
    let cps = ctx.reader.read(&ids).map_err(StreamError::Restore)?;
    let mut tpl = TopicPartitionList::new();
    for p in ids {
        // Without a checkpoint nothing of this partition was ever committed.
        let (part, offset) = Part::from_checkpoint(&setup, cps.get(&p), Offset::Beginning)
            .map_err(StreamError::Restore)?;
        parts.active.insert(p, part);
        tpl.add_partition_offset(&out.input, p, offset)
            .map_err(kafka("rewind"))?;
    }
    consumer
        .seek_partitions(tpl, Duration::from_secs(10))
        .map_err(kafka("seek"))?;
    parts.generation += 1;
    Ok(())
}

fn gauges(consumer: &BaseConsumer<Ctx>, parts: &Parts, out: &Outputs, metrics: &StreamMetrics) {
    let now = banter_runtime::now_ms();
    let (mut entries, mut bytes, mut posts, mut spike_keys, mut firing) = (0, 0, 0, 0, 0);
    let mut funnel_entries = 0;
    for (p, part) in &parts.active {
        let label = vec![("partition".to_owned(), p.to_string())];
        let wm = part.engine.watermark();
        if wm > i64::MIN {
            metrics
                .watermark_lag
                .get_or_create(&label)
                .set((now - wm) as f64 / 1000.0);
        }
        if let Ok((_, high)) = consumer.fetch_watermarks(&out.input, *p, Duration::from_secs(2)) {
            metrics
                .consumer_lag
                .get_or_create(&label)
                .set((high - part.engine.next_offset()).max(0));
        }
        entries += part.engine.state_entries();
        bytes += part.engine.state_bytes();
        posts += part.engine.posts();
        spike_keys += part.detector.keys();
        firing += part.detector.firing();
        funnel_entries += part.funnels.state_entries() + part.conversations.state_entries();
    }
    metrics.funnel_entries.set(funnel_entries as i64);
    metrics.spike_keys.set(spike_keys as i64);
    metrics.alerts_firing.set(firing as i64);
    metrics.state_entries.set(entries as i64);
    metrics.state_bytes.set(bytes as i64);
    metrics.posts.set(posts as i64);
    metrics.partitions.set(parts.active.len() as i64);
}

struct Tx<'a> {
    producer: &'a BaseProducer,
    open: bool,
}

impl Tx<'_> {
    fn begin(&mut self) -> Result<(), KafkaError> {
        if !self.open {
            self.producer.begin_transaction()?;
            self.open = true;
        }
        Ok(())
    }

    fn send(
        &mut self,
        topic: &str,
        partition: Option<i32>,
        key: &[u8],
        value: &[u8],
    ) -> Result<(), KafkaError> {
        self.send_opt(topic, partition, key, Some(value))
    }

    /// Sends a record; no value is a tombstone.
    fn send_opt(
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
        loop {
            match self.producer.send(rec) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    rec = r;
                    self.producer.poll(Duration::from_millis(50));
                }
                Err((e, _)) => return Err(e),
            }
        }
    }
}

/// Writes one rollup into the open transaction. A row that cannot be encoded fails the batch
/// (it is retried from the checkpoint) rather than vanishing.
fn send_rollup(
    tx: &mut Tx<'_>,
    enc: &mut banter_model::codec::Encoder<'_, Rollup>,
    buf: &mut Vec<u8>,
    out: &Outputs,
    metrics: &StreamMetrics,
    r: &Rollup,
) -> Result<(), BatchError> {
    buf.clear();
    enc.encode_into(r, buf)
        .map_err(|e| BatchError::Encode(e.to_string()))?;
    metrics.rows.inc();
    tx.send(&out.rollups, None, r.account_id.as_bytes(), buf)?;
    Ok(())
}

/// Feeds the rollups of one engine call to the detector and writes them, then judges the minutes
/// the engine closed and writes the alerts.
fn emit(
    tx: &mut Tx<'_>,
    enc: &mut banter_model::codec::Encoder<'_, Rollup>,
    buf: &mut Vec<u8>,
    out: &Outputs,
    metrics: &StreamMetrics,
    part: &mut Part,
    rollups: impl Iterator<Item = Rollup>,
) -> Result<(), BatchError> {
    for r in rollups {
        if r.window == banter_model::WindowKind::Minute {
            let published = r
                .content_id
                .as_deref()
                .and_then(|c| part.engine.published_at(c));
            part.detector.observe(&r, published);
        }
        send_rollup(tx, enc, buf, out, metrics, &r)?;
    }
    let mut alerts: Vec<SpikeAlert> = Vec::new();
    part.detector.close(part.engine.closed_below(), &mut alerts);
    if !alerts.is_empty() {
        part.dirty = true;
    }
    let mut funnel_rows = Vec::new();
    part.funnels
        .advance(part.engine.watermark(), &mut funnel_rows);
    if !funnel_rows.is_empty() {
        part.dirty = true;
    }
    let mut conversation_rows = Vec::new();
    part.conversations
        .advance(part.engine.watermark(), &mut conversation_rows);
    if !conversation_rows.is_empty() {
        part.dirty = true;
    }
    for c in conversation_rows {
        let value = ConversationRollup::codec()
            .encode(&c)
            .map_err(|e| BatchError::EncodeConversation(e.to_string()))?;
        metrics.conversation_rows.inc();
        tx.send(&out.rollups, None, c.account_id.as_bytes(), &value)?;
    }
    for f in funnel_rows {
        let value = FunnelRollup::codec()
            .encode(&f)
            .map_err(|e| BatchError::EncodeFunnel(e.to_string()))?;
        metrics.funnel_rows.inc();
        tx.send(&out.rollups, None, f.account_id.as_bytes(), &value)?;
    }
    for a in alerts {
        let value = SpikeAlert::codec()
            .encode(&a)
            .map_err(|e| BatchError::EncodeAlert(e.to_string()))?;
        tracing::info!(alert = %a.alert_id, state = a.state.as_str(), observed = a.observed, z = a.z_score, "spike alert");
        metrics.outcome(&metrics.alerts, "state", a.state.as_str());
        tx.send(&out.alerts, None, a.account_id.as_bytes(), &value)?;
    }
    Ok(())
}

/// Events decoded and prefetched together ([`Engine::prefetch`]) before they are processed.
const PREFETCH: usize = 64;

#[allow(clippy::too_many_arguments)]
fn process_batch(
    consumer: &BaseConsumer<Ctx>,
    producer: &BaseProducer,
    parts: &mut Parts,
    out: &Outputs,
    sc: &StreamConfig,
    metrics: &StreamMetrics,
    batch: Vec<(i32, i64, Vec<u8>)>,
) -> Result<bool, BatchError> {
    let mut tx = Tx {
        producer,
        open: false,
    };
    let codec = EngagementEvent::codec();
    let mut outputs = Vec::new();
    let mut buf = Vec::new();
    let mut rollup_enc = Rollup::codec().encoder();
    // Events are decoded PREFETCH at a time, each into the same buffers every time, and each
    // partition's engine starts fetching the state of its events before processing them.
    let mut events: Vec<EngagementEvent> = Vec::new();
    let mut decoded = Vec::new();
    let mut chunk = Vec::with_capacity(PREFETCH);
    let mut batch = batch.into_iter().peekable();
    let now = Instant::now();
    while batch.peek().is_some() {
        chunk.clear();
        chunk.extend(batch.by_ref().take(PREFETCH));
        if events.len() < chunk.len() {
            events.resize_with(chunk.len(), EngagementEvent::empty);
        }
        decoded.clear();
        for ((_, _, payload), event) in chunk.iter().zip(events.iter_mut()) {
            decoded.push(codec.decode_into(payload, event));
        }
        // Runs of one partition (the consumer hands out each partition's messages together).
        let mut from = 0;
        while from < chunk.len() {
            let p = chunk[from].0;
            let to = chunk[from..]
                .iter()
                .position(|m| m.0 != p)
                .map_or(chunk.len(), |n| from + n);
            if let Some(part) = parts.active.get(&p) {
                part.engine.prefetch(&events[from..to]);
            }
            from = to;
        }
        for (((p, offset, payload), event), decoded) in
            chunk.drain(..).zip(events.iter()).zip(decoded.drain(..))
        {
            let Some(part) = parts.active.get_mut(&p) else {
                continue;
            };
            if offset < part.engine.next_offset() {
                continue; // already processed (a re-delivery after a seek)
            }
            part.last_arrival = now;
            if part.replaying && offset >= part.replay_until {
                part.engine.finish_replay(&mut outputs);
                outputs.clear();
                part.replaying = false;
            }
            match decoded {
                Ok(()) => {}
                Err(e) => {
                    if !part.replaying {
                        metrics.undecodable.inc();
                        let dl = dead_letter(
                            &out.input,
                            p,
                            offset,
                            None,
                            "undecodable",
                            e.to_string(),
                            payload,
                        );
                        tx.send(
                            &out.dlq,
                            None,
                            b"",
                            &DeadLetter::codec().encode(&dl).unwrap_or_default(),
                        )?;
                    }
                    continue;
                }
            };
            let before = part.engine.stats().clone();
            let counted = part.engine.process(event, offset, &mut outputs);
            if part.replaying {
                metrics.replayed.inc();
                outputs.clear();
                continue;
            }
            let after = part.engine.stats();
            metrics.events.inc();
            metrics
                .duplicates
                .inc_by(after.duplicates - before.duplicates);
            metrics.late.inc_by(after.late - before.late);
            part.dirty = true;
            // The funnels see what the windows counted: no duplicates, nothing too late.
            if counted {
                let fs = part.funnels.stats().clone();
                part.funnels.process(event, offset);
                part.conversations.process(event, offset);
                let fa = part.funnels.stats();
                metrics.triggers.inc_by(fa.triggers - fs.triggers);
                metrics
                    .unattributed
                    .inc_by(fa.unattributed - fs.unattributed);
            }
            let mut rollups = Vec::new();
            for o in outputs.drain(..) {
                match o {
                    Output::Rollup(r) => rollups.push(r),
                    Output::TooLate { event_id, offset } => {
                        metrics.too_late.inc();
                        let dl = dead_letter(
                            &out.input,
                            p,
                            offset,
                            Some(event.account_id.clone()),
                            "late",
                            format!(
                                "event {event_id} at {} is more than the allowed lateness ({} ms) behind the watermark {}",
                                event.event_time,
                                sc.allowed_lateness_ms,
                                part.engine.watermark()
                            ),
                            payload.clone(),
                        );
                        tx.send(
                            &out.dlq,
                            None,
                            event.account_id.as_bytes(),
                            &DeadLetter::codec().encode(&dl).unwrap_or_default(),
                        )?;
                    }
                }
            }
            emit(
                &mut tx,
                &mut rollup_enc,
                &mut buf,
                out,
                metrics,
                part,
                rollups.into_iter(),
            )?;
        }
    }
    // Replays that reached their end without input past it; idle partitions.
    let positions = consumer.position().ok();
    let idle_after = Duration::from_millis(sc.idle_timeout_ms);
    // An idle partition catches up with the busiest one of this instance (event time moves on
    // there), or follows the wall clock from its own highest event time.
    let busiest = parts
        .active
        .values()
        .map(|p| p.engine.watermark())
        .max()
        .unwrap_or(i64::MIN);
    for (p, part) in &mut parts.active {
        let position = positions
            .as_ref()
            .and_then(|t| t.find_partition(&out.input, *p))
            .and_then(|e| e.offset().to_raw());
        if part.replaying && position.is_some_and(|pos| pos >= part.replay_until) {
            part.engine.finish_replay(&mut outputs);
            outputs.clear();
            part.replaying = false;
        }
        let quiet = part.last_arrival.elapsed();
        let met = part.engine.max_event_time();
        if part.replaying
            || quiet < idle_after
            || met == i64::MIN
            || part.idle_checked.elapsed() < Duration::from_secs(1)
        {
            continue;
        }
        part.idle_checked = Instant::now();
        // Quiet: is it caught up (nothing left to read), or just not fetched yet? Without a
        // message since the assignment the consumer has no position; then the next offset
        // to process may trail the end by one transaction marker.
        let caught_up = match (
            position.filter(|pos| *pos >= 0),
            consumer.fetch_watermarks(&out.input, *p, Duration::from_secs(2)),
        ) {
            (Some(pos), Ok((_, high))) => pos >= high,
            (None, Ok((_, high))) => part.engine.next_offset() + 1 >= high,
            _ => false,
        };
        if caught_up {
            let wm = met
                .saturating_add(i64::try_from(quiet.as_millis()).unwrap_or(i64::MAX))
                .max(busiest);
            part.engine.idle_advance(wm, &mut outputs);
            if !outputs.is_empty() {
                part.dirty = true;
            }
            let rollups: Vec<Rollup> = outputs
                .drain(..)
                .filter_map(|o| match o {
                    Output::Rollup(r) => Some(r),
                    Output::TooLate { .. } => None,
                })
                .collect();
            emit(
                &mut tx,
                &mut rollup_enc,
                &mut buf,
                out,
                metrics,
                part,
                rollups.into_iter(),
            )?;
        }
    }
    // Checkpoints and offsets of what changed, in the same transaction.
    let mut offsets = TopicPartitionList::new();
    for (p, part) in &mut parts.active {
        if !part.dirty {
            continue;
        }
        part.dirty = false;
        let cp = part.engine.checkpoint();
        let value = serde_json::to_vec(&cp).unwrap_or_default();
        let cp_partition = Some(checkpoint_partition(*p, out.checkpoint_partitions));
        let base = checkpoint_key(&out.input, *p);
        for (store, changes) in part.changes() {
            for (name, v) in changes {
                let key = format!("{base}{}{name}", store.infix());
                tx.send_opt(&out.checkpoints, cp_partition, key.as_bytes(), v.as_deref())?;
            }
        }
        tx.send(&out.checkpoints, cp_partition, base.as_bytes(), &value)?;
        offsets.add_partition_offset(&out.input, *p, Offset::Offset(cp.next_offset))?;
    }
    if !tx.open {
        return Ok(false);
    }
    let group = consumer.group_metadata().ok_or(BatchError::NoGroup)?;
    if offsets.count() > 0 {
        producer.send_offsets_to_transaction(&offsets, &group, Duration::from_secs(30))?;
    }
    producer.commit_transaction(Duration::from_secs(60))?;
    Ok(true)
}

fn dead_letter(
    topic: &str,
    partition: i32,
    offset: i64,
    account_id: Option<String>,
    reason: &str,
    detail: String,
    payload: Vec<u8>,
) -> DeadLetter {
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

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: &str = r#"
[[campaign]]
id = "spring"
account_id = "acct"
keywords = ["info"]
scope = "account"
"#;

    #[test]
    fn a_changed_campaigns_file_is_reloaded_and_a_broken_one_refused() {
        let dir = std::env::temp_dir().join(format!("banter-campaigns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("campaigns.toml");
        std::fs::write(&path, ONE).unwrap();
        let mut f = CampaignsFile::open(path.to_str().unwrap()).unwrap();
        assert_eq!(f.count, 1);
        assert!(!f.reload().unwrap(), "unchanged");
        // A second campaign, scoped to one post (mtime must move on coarse file systems).
        std::thread::sleep(Duration::from_millis(20));
        let two = format!(
            "{ONE}\n[[campaign]]\nid = \"summer\"\naccount_id = \"acct\"\nkeywords = [\"sun hat\"]\nscope = {{ post = \"p1\" }}\n"
        );
        std::fs::write(&path, two).unwrap();
        filetime_bump(&path);
        assert!(f.reload().unwrap());
        assert_eq!(f.count, 2);
        // Broken: refused with the file and campaign named; the previous campaigns stay.
        std::fs::write(&path, format!("{ONE}\n[[campaign]]\nid = \"x\"\naccount_id = \"acct\"\nkeywords = [\"!!\"]\nscope = \"account\"\n")).unwrap();
        filetime_bump(&path);
        let err = f.reload().unwrap_err();
        assert!(
            err.contains("campaigns.toml") && err.contains("campaign `x`"),
            "{err}"
        );
        assert_eq!(f.count, 2);
        // Unknown keys are errors too.
        std::fs::write(&path, "[[campaign]]\nid = \"y\"\nacount_id = \"acct\"\n").unwrap();
        filetime_bump(&path);
        assert!(f.reload().unwrap_err().contains("acount_id"));
        assert!(CampaignsFile::open(dir.join("missing.toml").to_str().unwrap()).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Moves the file's modification time forward by a second.
    fn filetime_bump(path: &std::path::Path) {
        let f = std::fs::File::options().write(true).open(path).unwrap();
        let m = std::fs::metadata(path).unwrap().modified().unwrap();
        f.set_modified(m + Duration::from_secs(1)).unwrap();
    }
}
