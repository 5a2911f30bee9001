//! One batch of input, processed and committed as one Kafka transaction: its events through
//! their partitions' pipelines, the idle partitions' watermarks moved on, then the changelogs,
//! checkpoints and input offsets of every partition the batch changed.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::{Duration, Instant};

use banter_model::{AvroRecord, EngagementEvent, ValidationContext};
use banter_runtime::kafka::KafkaContext;
use banter_runtime::registry::RegistryError;
use banter_runtime::watchdog::Watchdog;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::metrics::StreamMetrics;
use super::partitions::{Partitions, Rebalance};
use super::transaction::{dead_letter, BatchError, Topics, Transaction};
use crate::changelog::Changes;
use crate::config::StreamConfig;
use crate::pipeline::{Fed, Outputs, PipelineStats};

/// Events decoded and prefetched together ([`crate::pipeline::Pipeline::prefetch`]) before
/// they are processed.
const PREFETCH: usize = 64;

/// A batch of input records as polled: the partition, offset and payload of each, the payloads
/// copied into one buffer kept from batch to batch (not an allocation per record).
#[derive(Debug, Default)]
pub(super) struct Batch {
    records: Vec<(i32, i64, Range<usize>)>,
    bytes: Vec<u8>,
}

impl Batch {
    /// A buffer grown past this by a batch of large records is not kept for the next.
    const KEEP_BYTES: usize = 64 << 20;

    /// Appends a record.
    pub fn push(&mut self, partition: i32, offset: i64, payload: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(payload);
        self.records
            .push((partition, offset, start..self.bytes.len()));
    }

    /// Empties the batch, keeping its buffers (unless grown past [`Batch::KEEP_BYTES`]).
    pub fn clear(&mut self) {
        self.records.clear();
        if self.bytes.capacity() > Self::KEEP_BYTES {
            self.bytes = Vec::new();
        } else {
            self.bytes.clear();
        }
    }

    /// How many records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// The records in the order polled: partition, offset, payload.
    pub fn iter(&self) -> impl Iterator<Item = (i32, i64, &[u8])> + '_ {
        self.records
            .iter()
            .map(|(p, offset, r)| (*p, *offset, &self.bytes[r.clone()]))
    }
}

/// The consumer's position in a partition of `topic` (None before its first message since an
/// assignment or seek).
pub(super) fn position(positions: Option<&TopicPartitionList>, topic: &str, p: i32) -> Option<i64> {
    positions
        .and_then(|t| t.find_partition(topic, p))
        .and_then(|e| e.offset().to_raw())
}

/// What every batch is processed with.
pub(super) struct Batcher<'a> {
    pub consumer: &'a BaseConsumer<Rebalance>,
    /// Asks for the partitions' ends with `read_uncommitted`: the consumer's own answer (its
    /// isolation level's) is the last stable offset, which stops at another producer's open
    /// transaction.
    pub ends: &'a BaseConsumer<KafkaContext>,
    pub producer: &'a BaseProducer<KafkaContext>,
    pub topics: &'a Topics,
    pub config: &'a StreamConfig,
    pub metrics: &'a StreamMetrics,
    pub schemas: &'a banter_runtime::schemas::SchemaLookup,
    /// Ends the role when a transaction call blocks past its own timeout (librdkafka 2.12's
    /// `send_offsets_to_transaction` can, while a group coordinator is down).
    pub watchdog: &'a Watchdog,
}

/// How long a transaction call may overrun its own bound before the watchdog ends the role.
const OVERRUN: Duration = Duration::from_secs(30);
const SEND_OFFSETS_TIMEOUT: Duration = Duration::from_secs(30);
const COMMIT_TIMEOUT: Duration = Duration::from_secs(60);

impl Batcher<'_> {
    /// Processes `batch` and commits what it changed; false when nothing was written (no
    /// transaction).
    pub fn run(&self, parts: &mut Partitions, batch: &Batch) -> Result<bool, BatchError> {
        let mut tx = Transaction::new(self.producer, self.topics, self.metrics);
        let before: BTreeMap<i32, PipelineStats> = parts
            .active
            .iter()
            .map(|(p, part)| (*p, part.pipeline.stats()))
            .collect();
        let processed = self
            .events(parts, batch, &mut tx)
            .and_then(|()| self.idle(parts, &mut tx))
            .and_then(|()| self.provisional(parts, &mut tx));
        for (p, part) in &parts.active {
            if let Some(b) = before.get(p) {
                self.metrics.count(b, &part.pipeline.stats());
            }
        }
        processed?;
        banter_runtime::pausepoint("stream.before_commit");
        self.commit(parts, tx)
    }

    /// The batch's events through their partitions' pipelines, decoded and prefetched
    /// [`PREFETCH`] at a time into reused buffers.
    fn events(
        &self,
        parts: &mut Partitions,
        batch: &Batch,
        tx: &mut Transaction<'_>,
    ) -> Result<(), BatchError> {
        let codec = EngagementEvent::codec();
        let mut out = Outputs::default();
        let mut events: Vec<EngagementEvent> = Vec::new();
        let mut decoded = Vec::new();
        let mut chunk = Vec::with_capacity(PREFETCH);
        let mut batch = batch.iter().peekable();
        let now = Instant::now();
        while batch.peek().is_some() {
            chunk.clear();
            chunk.extend(batch.by_ref().take(PREFETCH));
            if events.len() < chunk.len() {
                events.resize_with(chunk.len(), EngagementEvent::empty);
            }
            decoded.clear();
            for ((_, _, payload), event) in chunk.iter().zip(events.iter_mut()) {
                // A Confluent-framed record, read as the single-object one it carries.
                let unframed = match &self.topics.registry {
                    Some(r) => r.unframe(payload),
                    None => Ok(std::borrow::Cow::Borrowed(&payload[..])),
                };
                let payload = match unframed {
                    Ok(p) => p,
                    // The registry said nothing about the record: the batch is tried again.
                    Err(RegistryError::Unavailable(e)) => return Err(BatchError::Registry(e)),
                    Err(e) => {
                        decoded.push(Err(("undecodable", e.to_string())));
                        continue;
                    }
                };
                let payload = &payload[..];
                let mut d = codec.decode_into(payload, event);
                // A newer (or older) writer's record: its schema is on the schema topic.
                if d.is_err() && self.schemas.resolve(payload) {
                    d = codec.decode_into(payload, event);
                }
                // Ingest validated what it published, but any producer may write the topic:
                // the stream takes only events ingest would have taken (times far from i64's
                // limits, ids without control characters), whatever the clock says.
                decoded.push(match d {
                    Err(e) => Err(("undecodable", e.to_string())),
                    Ok(()) => event
                        .validate(&ValidationContext::unclocked())
                        .map_err(|e| ("invalid", e.to_string())),
                });
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
                    part.pipeline.prefetch(&events[from..to]);
                }
                from = to;
            }
            for (((p, offset, payload), event), decoded) in
                chunk.drain(..).zip(events.iter()).zip(decoded.drain(..))
            {
                let Some(part) = parts.active.get_mut(&p) else {
                    continue;
                };
                if offset < part.pipeline.next_offset() {
                    continue; // processed before (a redelivery after a seek)
                }
                part.last_arrival = now;
                // Everything before this record was fed: a replay that ends here ends.
                part.pipeline.end_replay_at(offset);
                if let Err((reason, detail)) = decoded {
                    if !part.pipeline.replaying() {
                        if reason == "invalid" {
                            self.metrics.invalid.inc();
                        } else {
                            self.metrics.undecodable.inc();
                        }
                        let dl = dead_letter(
                            &self.topics.input,
                            p,
                            offset,
                            None,
                            reason,
                            detail,
                            payload.to_vec(),
                        );
                        tx.dead_letter(&dl)?;
                    }
                    continue;
                }
                if part.pipeline.process(event, offset, &mut out) != Fed::Processed {
                    continue;
                }
                part.changed = true;
                // An event in a minute still open is shown by the next provisional rows (a
                // duplicate or a correction of a closed minute is not).
                if out.too_late.is_empty()
                    && part
                        .pipeline
                        .closed_below()
                        .is_none_or(|c| event.event_time >= c)
                {
                    part.unshown_since = Some(
                        part.unshown_since
                            .map_or(event.received_at, |t| t.min(event.received_at)),
                    );
                }
                for late in &out.too_late {
                    let wm = part
                        .pipeline
                        .watermark()
                        .map_or_else(|| "none".to_owned(), |w| w.to_string());
                    let dl = dead_letter(
                        &self.topics.input,
                        p,
                        late.offset,
                        Some(event.account_id.clone()),
                        "late",
                        format!(
                            "event {} at {} is more than the allowed lateness ({} ms) behind the watermark {wm}",
                            late.event_id, event.event_time, self.config.allowed_lateness_ms,
                        ),
                        payload.to_vec(),
                    );
                    tx.dead_letter(&dl)?;
                }
                tx.outputs(&out)?;
                out.clear();
            }
        }
        Ok(())
    }

    /// Replays that reached their end without input past it end; partitions that are caught
    /// up and quiet for `stream.idle_timeout_ms` move their watermark on: to the busiest
    /// partition's of this instance (event time moves on there), or with the wall clock from
    /// their own highest event time, whichever is later.
    fn idle(&self, parts: &mut Partitions, tx: &mut Transaction<'_>) -> Result<(), BatchError> {
        let positions = self.consumer.position().ok();
        let idle_after = Duration::from_millis(self.config.idle_timeout_ms);
        let busiest = parts
            .active
            .values()
            .filter_map(|p| p.pipeline.watermark())
            .max();
        let mut out = Outputs::default();
        for (p, part) in &mut parts.active {
            let position = position(positions.as_ref(), &self.topics.input, *p);
            if let Some(pos) = position {
                part.pipeline.end_replay_at(pos);
            }
            let quiet = part.last_arrival.elapsed();
            let Some(met) = part.pipeline.max_event_time() else {
                continue;
            };
            if part.pipeline.replaying()
                || quiet < idle_after
                || part.idle_checked.elapsed() < Duration::from_secs(1)
            {
                continue;
            }
            part.idle_checked = Instant::now();
            // Quiet: is it caught up (nothing left to read), or just not fetched yet? Without a
            // message since the assignment the consumer has no position; then the next offset
            // to process may trail the end by one transaction marker. The end is the high
            // watermark, not the last stable offset (what a read_committed consumer is told):
            // input committed behind another producer's open transaction (a publisher that
            // died in one, until the broker aborts it) is not readable yet, and must not be
            // made late by moving the watermark on meanwhile.
            self.ends.poll(Duration::ZERO);
            let caught_up = match (
                position.filter(|pos| *pos >= 0),
                self.ends
                    .fetch_watermarks(&self.topics.input, *p, Duration::from_secs(2)),
            ) {
                (Some(pos), Ok((_, high))) => pos >= high,
                (None, Ok((_, high))) => part.pipeline.next_offset() + 1 >= high,
                _ => false,
            };
            if caught_up {
                let quiet_ms = i64::try_from(quiet.as_millis()).unwrap_or(i64::MAX);
                let wm = met
                    .saturating_add(quiet_ms)
                    .max(busiest.unwrap_or(i64::MIN));
                part.pipeline.idle_advance(wm, &mut out);
                if !out.is_empty() {
                    part.changed = true;
                }
                tx.outputs(&out)?;
                out.clear();
            }
        }
        Ok(())
    }

    /// Every `stream.provisional_interval_ms`, each partition's open windows changed since
    /// the last time, as provisional rows in this batch's transaction (they change no state),
    /// and the spike alerts their counts so far make certain (those change the detector's: the
    /// partition's changes are written in the same transaction).
    fn provisional(
        &self,
        parts: &mut Partitions,
        tx: &mut Transaction<'_>,
    ) -> Result<(), BatchError> {
        if self.config.provisional_interval_ms == 0 {
            return Ok(());
        }
        let every = Duration::from_millis(self.config.provisional_interval_ms);
        let mut out = Outputs::default();
        for part in parts.active.values_mut() {
            if part.shown_at.elapsed() < every {
                continue;
            }
            part.shown_at = Instant::now();
            let now = banter_runtime::now_ms();
            let n = part.pipeline.provisional(now, &mut out);
            if let Some(since) = part.unshown_since.take() {
                if n > 0 {
                    self.metrics
                        .provisional_lag_seconds
                        .observe((now - since).max(0) as f64 / 1000.0);
                }
            }
            if n > 0 {
                self.metrics.provisional_rows.inc_by(n as u64);
            }
            if !out.alerts.is_empty() {
                part.changed = true;
            }
            if !out.is_empty() {
                tx.outputs(&out)?;
                out.clear();
            }
        }
        Ok(())
    }

    /// The changelogs, checkpoints and input offsets of the partitions the batch changed, in
    /// its transaction, and the commit.
    fn commit(&self, parts: &mut Partitions, mut tx: Transaction<'_>) -> Result<bool, BatchError> {
        let mut offsets = TopicPartitionList::new();
        let mut changes = Changes::new();
        for (p, part) in &mut parts.active {
            if !std::mem::take(&mut part.changed) {
                continue;
            }
            let cp = part.pipeline.checkpoint();
            changes.clear();
            part.pipeline.write_changes(&mut changes)?;
            tx.checkpoint(*p, &changes, &cp)?;
            offsets.add_partition_offset(&self.topics.input, *p, Offset::Offset(cp.next_offset))?;
        }
        if !tx.is_open() {
            return Ok(false);
        }
        let group = self.consumer.group_metadata().ok_or(BatchError::NoGroup)?;
        let started = Instant::now();
        if offsets.count() > 0 {
            let _stuck = self.watchdog.guard(
                "send_offsets_to_transaction",
                SEND_OFFSETS_TIMEOUT + OVERRUN,
            );
            self.producer
                .send_offsets_to_transaction(&offsets, &group, SEND_OFFSETS_TIMEOUT)?;
        }
        // Every record acknowledged (a failure's report served), then rdkafka's
        // commit_transaction (its flush, then the commit), each with the timeout.
        let _stuck = self
            .watchdog
            .guard("commit_transaction", COMMIT_TIMEOUT * 2 + OVERRUN);
        banter_runtime::kafka::commit_transaction(self.producer, COMMIT_TIMEOUT, COMMIT_TIMEOUT)?;
        self.metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(true)
    }
}
