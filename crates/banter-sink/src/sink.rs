//! `banter sink`: `banter.rollups.v1`, `banter.alerts.v1` and `banter.dlq.v1` into ClickHouse,
//! and the provisional rows (`kafka.topics.provisional`) in a second lane of their own.
//!
//! * Batches by rows (`sink.max_batch_rows`) and time (`sink.max_batch_ms`): thousands of rows
//!   and about one insert per second per table, as ClickHouse recommends.
//! * Offsets are committed only after ClickHouse acknowledged every insert of the batch (and
//!   the dead letters of rejected rows are in Kafka). A crash in between inserts the batch
//!   again: rollups are idempotent (`ReplacingMergeTree(revision)`, same key and revision), so
//!   nothing is lost and deduplicated reads count nothing twice.
//! * Retryable failures (network, server down, too many parts, timeouts) retry with
//!   exponential backoff up to `sink.max_backoff_ms`, holding the batch: consumption pauses,
//!   memory stays bounded by one batch.
//! * A row ClickHouse rejects for its content is found by splitting the failed insert in halves
//!   and goes to the dead-letter topic with ClickHouse's error text; the other rows are
//!   inserted.
//! * An insert that does not finish within `sink.insert_timeout_ms` is retried (a hung server
//!   no longer hangs the sink without a word); a table whose columns no longer match the rows
//!   (parse, read or type errors of RowBinary: codes 6, 33, 53) stops the sink with the table
//!   named rather than dead-lettering every row.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use banter_model::{
    AlertState, AvroRecord, ConversationRollup, DeadLetter, FunnelRollup, Rollup, SketchBucket,
    SpikeAlert, Stage, WindowKind,
};
use banter_runtime::config::KafkaConfig;
use banter_runtime::kafka::{consumer_config, producer, KafkaContext};
use banter_runtime::registry::Registry as SchemaRegistry;
use smol_str::SmolStr;

use crate::clickhouse::ClickHouse;
use crate::config::SinkConfig;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

/// Why the sink stopped.
#[derive(Debug, Error)]
pub enum SinkError {
    /// A Kafka client could not be created or used.
    #[error("kafka {what}: {detail}")]
    Kafka {
        /// What was being done.
        what: &'static str,
        /// The error.
        detail: String,
    },
    /// ClickHouse answered with an error that retrying cannot fix (missing table: run
    /// `banter migrate`; authentication).
    #[error("clickhouse refuses inserts into {table}: {detail}")]
    Fatal {
        /// The table.
        table: &'static str,
        /// ClickHouse's error.
        detail: String,
    },
}

/// The sink's metrics.
#[derive(Debug, Clone)]
pub struct SinkMetrics {
    rows: Family<Vec<(String, String)>, Counter>,
    rejected: Family<Vec<(String, String)>, Counter>,
    retries: Family<Vec<(String, String)>, Counter>,
    insert_seconds: Histogram,
    batch_rows: Histogram,
    undecodable: Counter,
    lag: Family<Vec<(String, String)>, Gauge>,
}

impl SinkMetrics {
    /// Registers the metrics under `banter_sink_…`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = SinkMetrics {
            rows: Family::default(),
            rejected: Family::default(),
            retries: Family::default(),
            insert_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            batch_rows: Histogram::new(exponential_buckets(1.0, 4.0, 10)),
            undecodable: Counter::default(),
            lag: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("sink");
        r.register(
            "rows_written",
            "Rows ClickHouse acknowledged, by table",
            m.rows.clone(),
        );
        r.register(
            "rows_rejected",
            "Rows ClickHouse rejected for their content (dead-lettered), by table",
            m.rejected.clone(),
        );
        r.register(
            "insert_retries",
            "Inserts retried after a retryable failure, by table",
            m.retries.clone(),
        );
        r.register(
            "insert_seconds",
            "Duration of one successful insert",
            m.insert_seconds.clone(),
        );
        r.register("batch_rows", "Rows per insert", m.batch_rows.clone());
        r.register(
            "undecodable_records",
            "Kafka records that could not be decoded (dead-lettered)",
            m.undecodable.clone(),
        );
        r.register(
            "consumer_lag_records",
            "Records not yet committed by the sink's groups (not yet in ClickHouse), by topic and partition",
            m.lag.clone(),
        );
        m
    }

    fn inc(family: &Family<Vec<(String, String)>, Counter>, table: &str, n: u64) {
        family
            .get_or_create(&vec![("table".to_owned(), table.to_owned())])
            .inc_by(n);
    }
}

/// A `rollups` row.
#[derive(Debug, Clone, clickhouse::Row, Serialize, Deserialize)]
pub struct RollupRow {
    // SmolStr like the record's: ids up to 23 bytes stay inline, no allocation per row.
    account_id: SmolStr,
    content_id: SmolStr,
    window_kind: Cow<'static, str>,
    window_start_ms: i64,
    window_end_ms: i64,
    revision: i64,
    interactions: i64,
    comments: i64,
    live_comments: i64,
    reactions: i64,
    shares: i64,
    story_replies: i64,
    dms_in: i64,
    mentions: i64,
    brand_replies: i64,
    velocity: Option<f64>,
    early_accel: Option<f64>,
    time_to_n_minutes: Option<f64>,
    unique_engagers: Option<i64>,
    late_events: i64,
    emitted_at_ms: i64,
}

impl From<Rollup> for RollupRow {
    fn from(r: Rollup) -> Self {
        RollupRow {
            account_id: r.account_id,
            content_id: r.content_id.unwrap_or_default(),
            window_kind: r.window.as_str().into(),
            window_start_ms: r.window_start,
            window_end_ms: r.window_end,
            revision: r.revision,
            interactions: r.interactions,
            comments: r.comments,
            live_comments: r.live_comments,
            reactions: r.reactions,
            shares: r.shares,
            story_replies: r.story_replies,
            dms_in: r.dms_in,
            mentions: r.mentions,
            brand_replies: r.brand_replies,
            velocity: r.velocity,
            early_accel: r.early_accel,
            time_to_n_minutes: r.time_to_n_minutes,
            unique_engagers: r.unique_engagers,
            late_events: r.late_events,
            emitted_at_ms: r.emitted_at,
        }
    }
}

/// A `funnels` row.
#[derive(Debug, Clone, clickhouse::Row, Serialize, Deserialize)]
pub struct FunnelRow {
    account_id: String,
    campaign_id: String,
    window_kind: Cow<'static, str>,
    window_start_ms: i64,
    window_end_ms: i64,
    revision: i64,
    triggered: i64,
    private_reply_sent: i64,
    dm_read: i64,
    engaged: i64,
    link_clicked: i64,
    converted: i64,
    conversion_value: f64,
    currency: Option<String>,
    median_trigger_to_reply_s: Option<f64>,
    median_reply_to_click_s: Option<f64>,
    median_click_to_conversion_s: Option<f64>,
    emitted_at_ms: i64,
    trigger_to_reply_sketch_buckets: Vec<i32>,
    trigger_to_reply_sketch_counts: Vec<i64>,
    reply_to_click_sketch_buckets: Vec<i32>,
    reply_to_click_sketch_counts: Vec<i64>,
    click_to_conversion_sketch_buckets: Vec<i32>,
    click_to_conversion_sketch_counts: Vec<i64>,
}

impl From<FunnelRollup> for FunnelRow {
    fn from(f: FunnelRollup) -> Self {
        FunnelRow {
            account_id: f.account_id,
            campaign_id: f.campaign_id,
            window_kind: f.window.as_str().into(),
            window_start_ms: f.window_start,
            window_end_ms: f.window_end,
            revision: f.revision,
            triggered: f.triggered,
            private_reply_sent: f.private_reply_sent,
            dm_read: f.dm_read,
            engaged: f.engaged,
            link_clicked: f.link_clicked,
            converted: f.converted,
            conversion_value: f.conversion_value,
            currency: f.currency,
            median_trigger_to_reply_s: f.median_trigger_to_reply_s,
            median_reply_to_click_s: f.median_reply_to_click_s,
            median_click_to_conversion_s: f.median_click_to_conversion_s,
            emitted_at_ms: f.emitted_at,
            trigger_to_reply_sketch_buckets: buckets(&f.trigger_to_reply_sketch),
            trigger_to_reply_sketch_counts: counts(&f.trigger_to_reply_sketch),
            reply_to_click_sketch_buckets: buckets(&f.reply_to_click_sketch),
            reply_to_click_sketch_counts: counts(&f.reply_to_click_sketch),
            click_to_conversion_sketch_buckets: buckets(&f.click_to_conversion_sketch),
            click_to_conversion_sketch_counts: counts(&f.click_to_conversion_sketch),
        }
    }
}

/// A `conversations` row.
#[derive(Debug, Clone, clickhouse::Row, Serialize, Deserialize)]
pub struct ConversationRow {
    account_id: String,
    content_id: String,
    window_kind: Cow<'static, str>,
    window_start_ms: i64,
    window_end_ms: i64,
    revision: i64,
    inbound: i64,
    answered: i64,
    inbound_comments: i64,
    answered_comments: i64,
    inbound_story_replies: i64,
    inbound_dms: i64,
    response_rate: Option<f64>,
    median_response_s: Option<f64>,
    p90_response_s: Option<f64>,
    median_first_response_s: Option<f64>,
    root_comments: i64,
    reply_comments: i64,
    thread_depth: Option<f64>,
    reply_share: Option<f64>,
    emitted_at_ms: i64,
    response_sketch_buckets: Vec<i32>,
    response_sketch_counts: Vec<i64>,
    first_response_sketch_buckets: Vec<i32>,
    first_response_sketch_counts: Vec<i64>,
}

impl From<ConversationRollup> for ConversationRow {
    fn from(c: ConversationRollup) -> Self {
        ConversationRow {
            account_id: c.account_id,
            content_id: c.content_id.unwrap_or_default(),
            window_kind: c.window.as_str().into(),
            window_start_ms: c.window_start,
            window_end_ms: c.window_end,
            revision: c.revision,
            inbound: c.inbound,
            answered: c.answered,
            inbound_comments: c.inbound_comments,
            answered_comments: c.answered_comments,
            inbound_story_replies: c.inbound_story_replies,
            inbound_dms: c.inbound_dms,
            response_rate: c.response_rate,
            median_response_s: c.median_response_s,
            p90_response_s: c.p90_response_s,
            median_first_response_s: c.median_first_response_s,
            root_comments: c.root_comments,
            reply_comments: c.reply_comments,
            thread_depth: c.thread_depth,
            reply_share: c.reply_share,
            emitted_at_ms: c.emitted_at,
            response_sketch_buckets: buckets(&c.response_sketch),
            response_sketch_counts: counts(&c.response_sketch),
            first_response_sketch_buckets: buckets(&c.first_response_sketch),
            first_response_sketch_counts: counts(&c.first_response_sketch),
        }
    }
}

/// An `alerts` row.
#[derive(Debug, Clone, clickhouse::Row, Serialize, Deserialize)]
pub struct AlertRow {
    alert_id: String,
    state: Cow<'static, str>,
    account_id: String,
    content_id: String,
    window_start_ms: i64,
    window_end_ms: i64,
    observed: i64,
    baseline_mean: f64,
    baseline_stddev: f64,
    z_score: f64,
    started_at_ms: i64,
    ended_at_ms: Option<i64>,
    revision: i64,
    emitted_at_ms: i64,
}

impl From<SpikeAlert> for AlertRow {
    fn from(a: SpikeAlert) -> Self {
        AlertRow {
            alert_id: a.alert_id,
            state: a.state.as_str().into(),
            account_id: a.account_id,
            content_id: a.content_id.unwrap_or_default(),
            window_start_ms: a.window_start,
            window_end_ms: a.window_end,
            observed: a.observed,
            baseline_mean: a.baseline_mean,
            baseline_stddev: a.baseline_stddev,
            z_score: a.z_score,
            started_at_ms: a.started_at,
            ended_at_ms: a.ended_at,
            revision: a.revision,
            emitted_at_ms: a.emitted_at,
        }
    }
}

/// A sketch as two columns (`sumMap(buckets, counts)` merges them in SQL): the buckets…
fn buckets(s: &[SketchBucket]) -> Vec<i32> {
    s.iter().map(|b| b.bucket).collect()
}

/// … and their counts.
fn counts(s: &[SketchBucket]) -> Vec<i64> {
    s.iter().map(|b| b.count).collect()
}

/// The sketch of two columns.
fn sketch(buckets: &[i32], counts: &[i64]) -> Vec<SketchBucket> {
    buckets
        .iter()
        .zip(counts)
        .map(|(&bucket, &count)| SketchBucket { bucket, count })
        .collect()
}

fn nonempty<S: AsRef<str>>(s: S) -> Option<S> {
    (!s.as_ref().is_empty()).then_some(s)
}

impl RollupRow {
    /// The record this row holds (what [`From<Rollup>`] wrote); None for a window kind this
    /// version does not know.
    pub fn into_rollup(self) -> Option<Rollup> {
        Some(Rollup {
            account_id: self.account_id,
            content_id: nonempty(self.content_id),
            window: WindowKind::parse(&self.window_kind)?,
            window_start: self.window_start_ms,
            window_end: self.window_end_ms,
            revision: self.revision,
            interactions: self.interactions,
            comments: self.comments,
            live_comments: self.live_comments,
            reactions: self.reactions,
            shares: self.shares,
            story_replies: self.story_replies,
            dms_in: self.dms_in,
            mentions: self.mentions,
            brand_replies: self.brand_replies,
            velocity: self.velocity,
            early_accel: self.early_accel,
            time_to_n_minutes: self.time_to_n_minutes,
            unique_engagers: self.unique_engagers,
            late_events: self.late_events,
            emitted_at: self.emitted_at_ms,
        })
    }
}

impl FunnelRow {
    /// The record this row holds; None for an unknown window kind.
    pub fn into_funnel(self) -> Option<FunnelRollup> {
        Some(FunnelRollup {
            account_id: self.account_id,
            campaign_id: self.campaign_id,
            window: WindowKind::parse(&self.window_kind)?,
            window_start: self.window_start_ms,
            window_end: self.window_end_ms,
            revision: self.revision,
            triggered: self.triggered,
            private_reply_sent: self.private_reply_sent,
            dm_read: self.dm_read,
            engaged: self.engaged,
            link_clicked: self.link_clicked,
            converted: self.converted,
            conversion_value: self.conversion_value,
            currency: self.currency,
            median_trigger_to_reply_s: self.median_trigger_to_reply_s,
            median_reply_to_click_s: self.median_reply_to_click_s,
            median_click_to_conversion_s: self.median_click_to_conversion_s,
            emitted_at: self.emitted_at_ms,
            trigger_to_reply_sketch: sketch(
                &self.trigger_to_reply_sketch_buckets,
                &self.trigger_to_reply_sketch_counts,
            ),
            reply_to_click_sketch: sketch(
                &self.reply_to_click_sketch_buckets,
                &self.reply_to_click_sketch_counts,
            ),
            click_to_conversion_sketch: sketch(
                &self.click_to_conversion_sketch_buckets,
                &self.click_to_conversion_sketch_counts,
            ),
        })
    }
}

impl ConversationRow {
    /// The record this row holds; None for an unknown window kind.
    pub fn into_conversation(self) -> Option<ConversationRollup> {
        Some(ConversationRollup {
            account_id: self.account_id,
            content_id: nonempty(self.content_id),
            window: WindowKind::parse(&self.window_kind)?,
            window_start: self.window_start_ms,
            window_end: self.window_end_ms,
            revision: self.revision,
            inbound: self.inbound,
            answered: self.answered,
            inbound_comments: self.inbound_comments,
            answered_comments: self.answered_comments,
            inbound_story_replies: self.inbound_story_replies,
            inbound_dms: self.inbound_dms,
            response_rate: self.response_rate,
            median_response_s: self.median_response_s,
            p90_response_s: self.p90_response_s,
            median_first_response_s: self.median_first_response_s,
            root_comments: self.root_comments,
            reply_comments: self.reply_comments,
            thread_depth: self.thread_depth,
            reply_share: self.reply_share,
            emitted_at: self.emitted_at_ms,
            response_sketch: sketch(&self.response_sketch_buckets, &self.response_sketch_counts),
            first_response_sketch: sketch(
                &self.first_response_sketch_buckets,
                &self.first_response_sketch_counts,
            ),
        })
    }
}

impl AlertRow {
    /// The record this row holds; None for an unknown state.
    pub fn into_alert(self) -> Option<SpikeAlert> {
        Some(SpikeAlert {
            alert_id: self.alert_id,
            state: AlertState::parse(&self.state)?,
            account_id: self.account_id,
            content_id: nonempty(self.content_id),
            window_start: self.window_start_ms,
            window_end: self.window_end_ms,
            observed: self.observed,
            baseline_mean: self.baseline_mean,
            baseline_stddev: self.baseline_stddev,
            z_score: self.z_score,
            started_at: self.started_at_ms,
            ended_at: self.ended_at_ms,
            revision: self.revision,
            emitted_at: self.emitted_at_ms,
        })
    }
}

/// A `dead_letters` row.
#[derive(Debug, Clone, clickhouse::Row, Serialize)]
pub struct DeadLetterRow {
    stage: &'static str,
    reason: String,
    detail: String,
    source: String,
    source_partition: i32,
    source_offset: i64,
    account_id: String,
    #[serde(with = "serde_bytes")]
    payload: Vec<u8>,
    failed_at_ms: i64,
    /// Where the dead letter itself is on the dead-letter topic: the identity of one that
    /// names no input record (see `0011_dead_letters_replacing.sql`).
    dlq_partition: i32,
    dlq_offset: i64,
}

impl From<DeadLetter> for DeadLetterRow {
    fn from(d: DeadLetter) -> Self {
        DeadLetterRow {
            stage: d.stage.as_str(),
            reason: d.reason,
            detail: d.detail,
            source: d.source.unwrap_or_default(),
            source_partition: d.source_partition.unwrap_or(-1),
            source_offset: d.source_offset.unwrap_or(-1),
            account_id: d.account_id.unwrap_or_default(),
            payload: d.payload,
            failed_at_ms: d.failed_at,
            dlq_partition: -1,
            dlq_offset: -1,
        }
    }
}

/// Where a Kafka record came from.
#[derive(Clone, Copy)]
struct Source<'a> {
    topic: &'a Arc<str>,
    partition: i32,
    offset: i64,
}

/// Decodes an Avro record into the row of its table, keeping where it came from: its payload
/// is appended to `payloads`, the batch's one buffer of them.
fn decode<R: AvroRecord, T: From<R>>(
    payload: &[u8],
    src: Source<'_>,
    payloads: &mut Vec<u8>,
) -> Result<Pending<T>, String> {
    let r = R::codec().decode(payload).map_err(|e| e.to_string())?;
    let start = payloads.len();
    payloads.extend_from_slice(payload);
    Ok(Pending {
        row: r.into(),
        topic: src.topic.clone(),
        partition: src.partition,
        offset: src.offset,
        payload: start..payloads.len(),
    })
}

/// A row with where it came from, for dead-lettering it.
struct Pending<T> {
    row: T,
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    /// Where its payload is in the batch's buffer of payloads.
    payload: std::ops::Range<usize>,
}

/// A row of a ClickHouse table the sink writes.
trait SinkRow: clickhouse::Row + Serialize + Send + Sync + 'static {
    /// The account its dead letter names, if any.
    fn account_id(&self) -> &str;
}

macro_rules! sink_rows {
    ($($t:ty),*) => {$(
        impl SinkRow for $t {
            fn account_id(&self) -> &str {
                &self.account_id
            }
        }
    )*};
}
sink_rows!(
    RollupRow,
    FunnelRow,
    ConversationRow,
    AlertRow,
    DeadLetterRow
);

/// What ClickHouse's error means for the insert.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// Try again later (network, server down, overload).
    Retry,
    /// The data: find the row and dead-letter it.
    Content,
    /// Configuration (missing table, authentication): stop.
    Fatal,
}

fn classify(e: &clickhouse::error::Error) -> Failure {
    use clickhouse::error::Error as E;
    match e {
        E::BadResponse(text) => {
            let code = text
                .split("Code: ")
                .nth(1)
                .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|c| c.parse::<u32>().ok());
            match code {
                // throwIf (18.16 checks), VIOLATED_CONSTRAINT, value errors.
                Some(395 | 469 | 26 | 27 | 38 | 41 | 69 | 70 | 72 | 117 | 131) => Failure::Content,
                // UNKNOWN_TABLE, UNKNOWN_DATABASE, NO_SUCH_COLUMN, auth; and the table's
                // columns not matching the rows (RowBinary cannot be misread by one row's
                // content: CANNOT_PARSE_TEXT, CANNOT_READ_ALL_DATA, TYPE_MISMATCH are schema
                // drift, which would dead-letter every row).
                Some(16 | 47 | 60 | 81 | 192 | 193 | 194 | 516 | 6 | 33 | 53) => Failure::Fatal,
                _ => Failure::Retry,
            }
        }
        _ => Failure::Retry,
    }
}

async fn insert_rows<T>(
    ch: &ClickHouse,
    table: &str,
    rows: &[Pending<T>],
) -> Result<(), clickhouse::error::Error>
where
    T: SinkRow,
    for<'a> T: clickhouse::RowWrite<Value<'a> = T>,
{
    let mut insert = ch.client.insert::<T>(table).await?;
    for p in rows {
        insert.write(&p.row).await?;
    }
    insert.end().await
}

struct Writer<'a> {
    ch: &'a ClickHouse,
    metrics: &'a SinkMetrics,
    producer: &'a FutureProducer<KafkaContext>,
    registry: Option<&'a Arc<SchemaRegistry>>,
    dlq: &'a str,
    max_backoff: Duration,
    insert_timeout: Duration,
    shutdown: &'a CancellationToken,
}

impl Writer<'_> {
    /// Inserts `rows`, retrying what can be retried and dead-lettering rows ClickHouse
    /// rejects. Returns when everything is either in ClickHouse or in the dead-letter topic.
    /// `payloads` is the batch's buffer the rows' payloads are in.
    async fn write<T>(
        &self,
        table: &'static str,
        rows: &[Pending<T>],
        payloads: &[u8],
    ) -> Result<(), SinkError>
    where
        T: SinkRow,
        for<'b> T: clickhouse::RowWrite<Value<'b> = T>,
    {
        if rows.is_empty() {
            return Ok(());
        }
        // Ranges still to insert; a content failure splits its range in halves.
        let mut todo: Vec<std::ops::Range<usize>> = Vec::new();
        todo.push(0..rows.len());
        let mut backoff = Duration::from_millis(100);
        while let Some(r) = todo.pop() {
            let started = Instant::now();
            let result = match tokio::time::timeout(
                self.insert_timeout,
                insert_rows(self.ch, table, &rows[r.clone()]),
            )
            .await
            {
                Ok(result) => result,
                Err(_) => Err(clickhouse::error::Error::TimedOut),
            };
            match result {
                Ok(()) => {
                    self.metrics
                        .insert_seconds
                        .observe(started.elapsed().as_secs_f64());
                    self.metrics.batch_rows.observe(r.len() as f64);
                    SinkMetrics::inc(&self.metrics.rows, table, r.len() as u64);
                    backoff = Duration::from_millis(100);
                }
                Err(e) => match classify(&e) {
                    Failure::Retry => {
                        SinkMetrics::inc(&self.metrics.retries, table, 1);
                        tracing::warn!(table, rows = r.len(), error = %e, ?backoff, "insert failed; retrying");
                        todo.push(r);
                        tokio::select! {
                            () = tokio::time::sleep(backoff) => {}
                            () = self.shutdown.cancelled() => {
                                return Err(SinkError::Fatal { table, detail: format!("stopped while ClickHouse was failing: {e}") });
                            }
                        }
                        backoff = (backoff * 2).min(self.max_backoff);
                    }
                    Failure::Fatal => {
                        return Err(SinkError::Fatal {
                            table,
                            detail: e.to_string(),
                        })
                    }
                    Failure::Content if r.len() == 1 => {
                        let p = &rows[r.start];
                        tracing::warn!(table, topic = %p.topic, partition = p.partition, offset = p.offset, error = %e, "row rejected; dead-lettered");
                        self.dead_letter(
                            p,
                            &payloads[p.payload.clone()],
                            "rejected",
                            format!("clickhouse rejected the row for {table}: {e}"),
                        )
                        .await?;
                        SinkMetrics::inc(&self.metrics.rejected, table, 1);
                    }
                    Failure::Content => {
                        let mid = r.start + r.len() / 2;
                        todo.push(mid..r.end);
                        todo.push(r.start..mid);
                    }
                },
            }
        }
        Ok(())
    }

    async fn dead_letter<T: SinkRow>(
        &self,
        p: &Pending<T>,
        payload: &[u8],
        reason: &str,
        detail: String,
    ) -> Result<(), SinkError> {
        let (payload, detail) = DeadLetter::bounded_payload(payload, &detail);
        let account_id = p.row.account_id();
        send_dead_letter(
            self.producer,
            self.registry,
            self.dlq,
            DeadLetter {
                stage: Stage::Sink,
                reason: reason.to_owned(),
                detail,
                source: Some(p.topic.to_string()),
                source_partition: Some(p.partition),
                source_offset: Some(p.offset),
                account_id: (!account_id.is_empty()).then(|| account_id.to_owned()),
                payload,
                failed_at: banter_runtime::now_ms(),
            },
        )
        .await
    }
}

async fn send_dead_letter(
    producer: &FutureProducer<KafkaContext>,
    registry: Option<&Arc<SchemaRegistry>>,
    topic: &str,
    dl: DeadLetter,
) -> Result<(), SinkError> {
    let bytes = DeadLetter::codec()
        .encode(&dl)
        .map_err(|e| SinkError::Kafka {
            what: "encode dead letter",
            detail: e.to_string(),
        })?;
    let bytes = match registry {
        Some(r) => r
            .frame(topic, &bytes)
            .map_err(|e| SinkError::Kafka {
                what: "dead letter schema",
                detail: e.to_string(),
            })?
            .into_owned(),
        None => bytes,
    };
    let key = dl.account_id.clone().unwrap_or_default();
    producer
        .send(
            FutureRecord::to(topic).key(&key).payload(&bytes),
            Duration::from_secs(60),
        )
        .await
        .map(|_| ())
        .map_err(|(e, _)| SinkError::Kafka {
            what: "dead letter",
            detail: e.to_string(),
        })
}

#[derive(Default)]
struct Batch {
    rollups: Vec<Pending<RollupRow>>,
    funnels: Vec<Pending<FunnelRow>>,
    conversations: Vec<Pending<ConversationRow>>,
    alerts: Vec<Pending<AlertRow>>,
    dead_letters: Vec<Pending<DeadLetterRow>>,
    /// (topic, partition) -> next offset.
    offsets: BTreeMap<(Arc<str>, i32), i64>,
    records: usize,
}

/// A client that reads `group`'s committed offsets without joining the group.
///
/// # Errors
/// librdkafka refuses the configuration.
pub fn lag_client(k: &KafkaConfig, group: &str) -> Result<BaseConsumer<KafkaContext>, SinkError> {
    let c: BaseConsumer<KafkaContext> = banter_runtime::kafka::base_config(k, "sink-lag")
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create_with_context(KafkaContext::new(k))
        .map_err(|e| SinkError::Kafka {
            what: "lag client config",
            detail: e.to_string(),
        })?;
    // Serves a token request (AWS_MSK_IAM) before the first metadata request needs it.
    let _ = c.poll(Duration::ZERO);
    Ok(c)
}

/// Per partition of `topic`: the records after the group's committed offset (all of the
/// partition's retained records when the group committed none).
///
/// # Errors
/// The broker did not answer.
pub fn group_lag(
    c: &BaseConsumer<KafkaContext>,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<(i32, i64)>, rdkafka::error::KafkaError> {
    let md = c.fetch_metadata(Some(topic), timeout)?;
    let mut tpl = TopicPartitionList::new();
    for t in md.topics() {
        for p in t.partitions() {
            tpl.add_partition(topic, p.id());
        }
    }
    let committed = c.committed_offsets(tpl, timeout)?;
    let mut out = Vec::new();
    for e in committed.elements() {
        let (low, high) = c.fetch_watermarks(topic, e.partition(), timeout)?;
        // Nothing committed, or committed before what retention kept: from the oldest kept.
        let from = match e.offset() {
            Offset::Offset(o) => o.max(low),
            _ => low,
        };
        out.push((e.partition(), (high - from).max(0)));
    }
    out.sort_unstable();
    Ok(out)
}

/// Publishes the sink group's lag (records between its committed offset and the end of each
/// partition of `topics`: what is not yet in ClickHouse) every 10 s, from a thread of its own
/// with a client of its own (it asks the group coordinator without joining the group), until
/// `shutdown`.
fn watch_lag(
    k: &KafkaConfig,
    group: &str,
    topics: Vec<String>,
    lag: Family<Vec<(String, String)>, Gauge>,
    shutdown: CancellationToken,
) -> Result<(), SinkError> {
    let c = lag_client(k, group)?;
    let timeout = Duration::from_secs(5);
    let every = Duration::from_secs(10);
    std::thread::Builder::new()
        .name("sink-lag".into())
        .spawn(move || {
            let labels = |topic: &str, partition: i32| {
                vec![
                    ("topic".to_owned(), topic.to_owned()),
                    ("partition".to_owned(), partition.to_string()),
                ]
            };
            // The partitions this thread has shown, per topic (another lane's thread shows
            // its own topics in the same family).
            let mut shown: BTreeMap<String, Vec<i32>> = BTreeMap::new();
            while !shutdown.is_cancelled() {
                // Serves the client's events (a token for AWS_MSK_IAM).
                let _ = c.poll(Duration::ZERO);
                for topic in &topics {
                    let parts = match group_lag(&c, topic, timeout) {
                        Ok(parts) => parts,
                        Err(e) => {
                            // Not known: no value rather than a stale one that looks flat.
                            tracing::warn!(%topic, error = %e, "cannot read the sink's lag");
                            for p in shown.remove(topic).unwrap_or_default() {
                                lag.remove(&labels(topic, p));
                            }
                            continue;
                        }
                    };
                    let list = shown.entry(topic.clone()).or_default();
                    for (partition, n) in parts {
                        lag.get_or_create(&labels(topic, partition)).set(n);
                        if !list.contains(&partition) {
                            list.push(partition);
                        }
                    }
                }
                let next = Instant::now() + every;
                while Instant::now() < next && !shutdown.is_cancelled() {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        })
        .map_err(|e| SinkError::Kafka {
            what: "lag thread",
            detail: e.to_string(),
        })?;
    Ok(())
}

/// Runs the sink until `shutdown`: the batch in hand is written and committed first.
///
/// Two lanes, each a consumer of its own with its batches, inserts and commits: the rollups,
/// alerts and dead letters; and the provisional rows (`kafka.topics.provisional`, group
/// `<sink.group_id>-provisional`), so that a minute's close (hundreds of thousands of final
/// rows at once) does not hold up the provisional rows emitted after it. With the provisional
/// topic the same as the rollups topic, one lane reads both.
///
/// # Errors
/// Kafka clients cannot be created, or ClickHouse refuses inserts for a reason retrying cannot
/// fix (the error names the table; run `banter migrate`).
pub async fn run(
    k: &KafkaConfig,
    sc: &SinkConfig,
    ch: ClickHouse,
    metrics: SinkMetrics,
    shutdown: CancellationToken,
) -> Result<(), SinkError> {
    let topics = vec![
        k.topics.rollups.clone(),
        k.topics.alerts.clone(),
        k.topics.dlq.clone(),
    ];
    let consumer = sink_consumer(k, sc, &sc.group_id, &topics)?;
    // Provisional rows on a topic of their own: a lane of their own, in a group of its own.
    let provisional_group = format!("{}-provisional", sc.group_id);
    let provisional = match k.topics.separate_provisional_topic() {
        Some(topic) => {
            let topics = vec![topic];
            let c = sink_consumer(k, sc, &provisional_group, &topics)?;
            Some((c, topics))
        }
        None => None,
    };
    let producer = producer(k, "sink").map_err(|e| SinkError::Kafka {
        what: "producer",
        detail: e.to_string(),
    })?;
    // The Schema Registry, for topics in the Confluent wire format.
    let registry = SchemaRegistry::for_config(k).map_err(|detail| SinkError::Kafka {
        what: "schema registry",
        detail,
    })?;
    if let Some(r) = registry.clone() {
        let dlq = k.topics.dlq.clone();
        tokio::task::spawn_blocking(move || r.prepare(&dlq, &[DeadLetter::NAME]))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(String::from))
            .map_err(|detail| SinkError::Kafka {
                what: "schema registry",
                detail,
            })?;
    }
    watch_lag(
        k,
        &sc.group_id,
        topics.clone(),
        metrics.lag.clone(),
        shutdown.clone(),
    )?;
    if let Some((_, provisional_topics)) = &provisional {
        watch_lag(
            k,
            &provisional_group,
            provisional_topics.clone(),
            metrics.lag.clone(),
            shutdown.clone(),
        )?;
    }
    let provisional_topic = k.topics.provisional_topic();
    tracing::info!(group = %sc.group_id, ?topics, provisional = %provisional_topic, database = %ch.database, "sink started");
    let shared = Arc::new(Shared {
        k: k.clone(),
        sc: sc.clone(),
        provisional: provisional_topic,
        ch,
        metrics,
        producer,
        registry,
        shutdown,
    });
    // Each lane a task of its own: a lane filling a batch from a backlog, or committing, does
    // not hold up the other.
    let mut lanes = tokio::task::JoinSet::new();
    lanes.spawn(lane(shared.clone(), consumer, topics, sc.group_id.clone()));
    if let Some((c, provisional_topics)) = provisional {
        lanes.spawn(lane(shared, c, provisional_topics, provisional_group));
    }
    while let Some(ended) = lanes.join_next().await {
        let failed = match ended {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e,
            Err(e) => SinkError::Kafka {
                what: "sink lane",
                detail: e.to_string(),
            },
        };
        // The other lane's batch in hand is not committed: whoever reads next writes it again.
        lanes.abort_all();
        return Err(failed);
    }
    Ok(())
}

/// What the sink's lanes share.
struct Shared {
    k: KafkaConfig,
    sc: SinkConfig,
    /// Where provisional rows are (`kafka.topics.provisional`, resolved).
    provisional: String,
    ch: ClickHouse,
    metrics: SinkMetrics,
    producer: FutureProducer<KafkaContext>,
    registry: Option<Arc<SchemaRegistry>>,
    shutdown: CancellationToken,
}

/// A consumer of `topics` in `group` as the sink uses it.
fn sink_consumer(
    k: &KafkaConfig,
    sc: &SinkConfig,
    group: &str,
    topics: &[String],
) -> Result<StreamConsumer<KafkaContext>, SinkError> {
    let mut config = consumer_config(k, "sink", group);
    // With a backlog, librdkafka fills its queue (`queued.min.messages`) faster than the sink
    // inserts, then waits `fetch.queue.backoff.ms` (1 s by default) before it fetches again:
    // the sink, having emptied the queue meanwhile, stood idle up to a second at a time
    // (benches/sink: 0.2-0.4 s stalls, a quarter of the time). Unless set in
    // `kafka.properties`, it fetches again within 20 ms.
    if !k.properties.contains_key("fetch.queue.backoff.ms") {
        config.set("fetch.queue.backoff.ms", "20");
    }
    let consumer: StreamConsumer<KafkaContext> = config
        // Retrying ClickHouse holds the batch without polling; stay in the group meanwhile.
        .set("max.poll.interval.ms", "3600000")
        // Static membership (KIP-345): a restarted sink takes its partitions back at once
        // instead of waiting for its previous life's session to expire.
        .set("group.instance.id", sc.instance())
        .set("session.timeout.ms", sc.session_timeout_ms.to_string())
        .set(
            "heartbeat.interval.ms",
            (sc.session_timeout_ms / 5).max(100).to_string(),
        )
        .create_with_context(KafkaContext::new(k))
        .map_err(|e| SinkError::Kafka {
            what: "consumer config",
            detail: e.to_string(),
        })?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&names).map_err(|e| SinkError::Kafka {
        what: "subscribe",
        detail: e.to_string(),
    })?;
    Ok(consumer)
}

/// One lane: `consumer` (of `topics`, in `group`) into ClickHouse in batches until the stop:
/// each batch inserted, then its offsets committed.
async fn lane(
    shared: Arc<Shared>,
    consumer: StreamConsumer<KafkaContext>,
    topics: Vec<String>,
    group: String,
) -> Result<(), SinkError> {
    let s = &*shared;
    let (k, sc, metrics, producer, shutdown) = (&s.k, &s.sc, &s.metrics, &s.producer, &s.shutdown);
    let (provisional, group, registry) =
        (s.provisional.as_str(), group.as_str(), s.registry.as_ref());
    let writer = Writer {
        ch: &s.ch,
        metrics,
        producer,
        registry,
        dlq: &k.topics.dlq,
        max_backoff: Duration::from_millis(sc.max_backoff_ms),
        insert_timeout: Duration::from_millis(sc.insert_timeout_ms),
        shutdown,
    };
    let schemas = banter_runtime::schemas::SchemaLookup::new(k);
    // The topics' names, shared by the rows that came from them (no copy per row).
    let names: Vec<Arc<str>> = topics.iter().map(|t| Arc::from(t.as_str())).collect();
    // The batch's payloads, one after the other (kept for dead-lettering a rejected row);
    // the buffer is reused from batch to batch.
    let mut payloads: Vec<u8> = Vec::new();
    loop {
        let mut batch = Batch::default();
        payloads.clear();
        // One timer and one cancellation wait for the whole batch, not one per record.
        let deadline = tokio::time::sleep(Duration::from_millis(sc.max_batch_ms));
        tokio::pin!(deadline);
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        while batch.records < sc.max_batch_rows {
            // Biased, the deadline and the stop first: a backlog that keeps `recv` ready
            // cannot stretch the batch past `max_batch_ms`.
            let m = tokio::select! {
                biased;
                () = &mut deadline => break,
                () = &mut cancelled => break,
                m = consumer.recv() => m,
            };
            let m = match m {
                Ok(m) => m,
                // The consumer can no longer be used (the group fenced it: another sink joined
                // under this instance id): what was not committed is redone by whoever holds
                // the partitions; exit for a restart rather than hold them unread.
                Err(e @ rdkafka::error::KafkaError::MessageConsumptionFatal(_)) => {
                    let why = banter_runtime::kafka::fatal_reason(consumer.client(), &e);
                    return Err(SinkError::Kafka {
                        what: "consumer",
                        detail: format!(
                            "{why}: the consumer of group {group} can no longer be used; exiting so that a \
                             supervisor restarts this sink (if another sink runs with the same \
                             sink.instance_id, give each its own)"
                        ),
                    });
                }
                Err(e) => {
                    tracing::warn!(group, error = %e, "consumer");
                    continue;
                }
            };
            let topic = match names.iter().find(|n| ***n == *m.topic()) {
                Some(n) => n.clone(),
                None => Arc::from(m.topic()),
            };
            let (partition, offset) = (m.partition(), m.offset());
            let raw = m.payload().unwrap_or_default();
            // A Confluent-framed record, read as the single-object one it carries.
            // A registry that cannot be asked holds the sink up (nothing of the record is
            // decided, nothing committed) until it answers or the sink stops.
            let unframed = match registry {
                Some(r) => match r.unframe_waiting(raw, shutdown).await {
                    Some(u) => u.map_err(String::from),
                    None => break,
                },
                None => Ok(std::borrow::Cow::Borrowed(raw)),
            };
            let payload: &[u8] = match &unframed {
                Ok(p) => p,
                Err(_) => raw,
            };
            // A newer (or older) writer's record: its schema is on the schema topic (read
            // once, then known to every decode below).
            if banter_model::codec::Codec::<Rollup>::peek_fingerprint(payload)
                .is_some_and(|fp| !banter_model::codec::known_anywhere(fp))
            {
                schemas.resolve(payload);
            }
            batch.offsets.insert((topic.clone(), partition), offset + 1);
            batch.records += 1;
            let undecodable = |e: String| (topic.to_string(), partition, offset, raw.to_vec(), e);
            let src = Source {
                topic: &topic,
                partition,
                offset,
            };
            // The rollups topic carries Rollup, FunnelRollup and ConversationRollup records:
            // the single-object header's fingerprint says which; the provisional topic
            // Rollup records.
            let rollups = *topic == *k.topics.rollups || *topic == *provisional;
            let fingerprint = rollups
                .then(|| banter_model::codec::Codec::<Rollup>::peek_fingerprint(payload))
                .flatten();
            let funnel = fingerprint == Some(FunnelRollup::codec().fingerprint());
            let conversation = fingerprint == Some(ConversationRollup::codec().fingerprint());
            let bad = if let Err(e) = &unframed {
                if *topic == *k.topics.dlq {
                    // Not sent back to the dead-letter topic (it would loop).
                    metrics.undecodable.inc();
                    tracing::warn!(%topic, partition, offset, error = %e, "undecodable dead letter skipped");
                    None
                } else {
                    Some(undecodable(e.clone()))
                }
            } else if conversation {
                decode::<ConversationRollup, _>(payload, src, &mut payloads)
                    .map(|p| batch.conversations.push(p))
                    .err()
                    .map(undecodable)
            } else if funnel {
                decode::<FunnelRollup, _>(payload, src, &mut payloads)
                    .map(|p| batch.funnels.push(p))
                    .err()
                    .map(undecodable)
            } else if rollups {
                decode::<Rollup, _>(payload, src, &mut payloads)
                    .map(|p| batch.rollups.push(p))
                    .err()
                    .map(undecodable)
            } else if *topic == *k.topics.alerts {
                decode::<SpikeAlert, _>(payload, src, &mut payloads)
                    .map(|p| batch.alerts.push(p))
                    .err()
                    .map(undecodable)
            } else {
                match decode::<DeadLetter, DeadLetterRow>(payload, src, &mut payloads) {
                    Ok(mut p) => {
                        // The row holds the payload; no second copy.
                        payloads.truncate(p.payload.start);
                        p.payload = p.payload.start..p.payload.start;
                        p.row.dlq_partition = partition;
                        p.row.dlq_offset = offset;
                        batch.dead_letters.push(p);
                    }
                    // An undecodable dead letter is not sent back to the dead-letter topic
                    // (it would loop); it is counted and logged.
                    Err(e) => {
                        metrics.undecodable.inc();
                        tracing::warn!(%topic, partition, offset, error = %e, "undecodable dead letter skipped");
                    }
                }
                None
            };
            if let Some((topic, partition, offset, payload, e)) = bad {
                metrics.undecodable.inc();
                send_dead_letter(
                    producer,
                    registry,
                    &k.topics.dlq,
                    DeadLetter {
                        stage: Stage::Sink,
                        reason: "undecodable".into(),
                        detail: e,
                        source: Some(topic),
                        source_partition: Some(partition),
                        source_offset: Some(offset),
                        account_id: None,
                        payload,
                        failed_at: banter_runtime::now_ms(),
                    },
                )
                .await?;
            }
        }
        if batch.records > 0 {
            writer.write("rollups", &batch.rollups, &payloads).await?;
            writer.write("funnels", &batch.funnels, &payloads).await?;
            writer
                .write("conversations", &batch.conversations, &payloads)
                .await?;
            writer.write("alerts", &batch.alerts, &payloads).await?;
            writer
                .write("dead_letters", &batch.dead_letters, &payloads)
                .await?;
            // Everything is in ClickHouse and nothing is committed: a crash here writes the
            // batch again after the restart (tests crash here on purpose).
            banter_runtime::failpoint("sink.before_commit");
            let mut tpl = TopicPartitionList::new();
            for ((t, p), o) in &batch.offsets {
                tpl.add_partition_offset(t, *p, Offset::Offset(*o))
                    .map_err(|e| SinkError::Kafka {
                        what: "offsets",
                        detail: e.to_string(),
                    })?;
            }
            // A failed commit (a rebalance) re-reads the batch elsewhere: idempotent rows.
            if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
                tracing::warn!(group, error = %e, "offset commit failed; the batch may be written again");
            }
        }
        if shutdown.is_cancelled() {
            tracing::info!(group, "sink lane stopped");
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_clickhouse_errors() {
        use clickhouse::error::Error as E;
        let bad = |s: &str| E::BadResponse(s.to_owned());
        assert_eq!(
            classify(&bad("Code: 395, e.displayText() = DB::Exception: Value passed to 'throwIf' function is non zero")),
            Failure::Content
        );
        assert_eq!(
            classify(&bad("Code: 252. DB::Exception: Too many parts")),
            Failure::Retry
        );
        assert_eq!(
            classify(&bad(
                "Code: 60. DB::Exception: Table x.rollups doesn't exist"
            )),
            Failure::Fatal
        );
        assert_eq!(classify(&E::TimedOut), Failure::Retry);
        // Schema drift stops the sink instead of dead-lettering every row.
        for text in [
            "Code: 33, e.displayText() = DB::Exception: Cannot read all data. Bytes read: 3. Bytes expected: 8.",
            "Code: 53, e.displayText() = DB::Exception: Type mismatch",
            "Code: 6, e.displayText() = DB::Exception: Cannot parse text",
        ] {
            assert_eq!(classify(&bad(text)), Failure::Fatal, "{text}");
        }
    }
}
