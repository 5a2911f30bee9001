//! One batch of input, processed and committed as one Kafka transaction: its events through
//! their partitions' pipelines, the idle partitions' watermarks moved on, then the changelogs,
//! checkpoints and input offsets of every partition the batch changed.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use banter_model::{AvroRecord, EngagementEvent, ValidationContext};
use banter_runtime::kafka::KafkaContext;
use banter_runtime::registry::RegistryError;
use banter_runtime::watchdog::Watchdog;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::metrics::{Phases, StreamMetrics};
use super::partitions::{Partition, Partitions, Rebalance};
use super::showings::Showings;
use super::transaction::{dead_letter, BatchError, Begun, Topics, Transaction};
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

/// Partitions processed by one thread of a batch.
type Lane<'p> = Vec<(i32, &'p mut Partition)>;

/// `items` (weight, partition, what goes with it) in up to `threads` lanes, none empty: the
/// heaviest first (equal weights by partition number, as one thread went through them before
/// there were lanes), each to the lane with the least weight so far (ties: the first), so the
/// same batch is always shared out the same way.
fn lanes<T>(mut items: Vec<(usize, i32, T)>, threads: usize) -> Vec<Vec<(i32, T)>> {
    items.sort_unstable_by_key(|&(n, p, _)| (std::cmp::Reverse(n), p));
    let mut lanes: Vec<(usize, Vec<(i32, T)>)> = (0..threads.clamp(1, items.len().max(1)))
        .map(|_| (0, Vec::new()))
        .collect();
    for (n, p, item) in items {
        if let Some(lane) = lanes.iter_mut().min_by_key(|(load, _)| *load) {
            lane.0 += n.max(1);
            lane.1.push((p, item));
        }
    }
    lanes
        .into_iter()
        .map(|(_, lane)| lane)
        .filter(|l| !l.is_empty())
        .collect()
}

/// What every batch is processed with.
pub(super) struct Batcher<'a> {
    pub consumer: &'a BaseConsumer<Rebalance>,
    /// Asks for the partitions' ends with `read_uncommitted`: the consumer's own answer (its
    /// isolation level's) is the last stable offset, which stops at another producer's open
    /// transaction.
    pub ends: &'a BaseConsumer<KafkaContext>,
    pub producer: &'a BaseProducer<KafkaContext>,
    /// Where provisional rows go outside the transaction (`stream.provisional_in_transaction`
    /// false, and a topic of their own); `None`: into it (also with provisional rows off).
    pub showings: Option<&'a Showings>,
    pub topics: &'a Topics,
    pub config: &'a StreamConfig,
    pub metrics: &'a StreamMetrics,
    pub schemas: &'a banter_runtime::schemas::SchemaLookup,
    /// Ends the role when a transaction call blocks past its own timeout (librdkafka 2.12's
    /// `send_offsets_to_transaction` can, while a group coordinator is down).
    pub watchdog: &'a Watchdog,
    /// Threads a batch's partitions are shared out over (`stream.threads`).
    pub threads: usize,
}

/// Hands `out` to the producer in the transaction, if it holds anything, and empties it; the
/// time taken is added to `spent` when given (nanoseconds, summed over threads: a phase of
/// `banter_stream_batch_phase_seconds`).
fn hand_over(
    tx: &mut Transaction<'_>,
    out: &mut Outputs,
    spent: Option<&AtomicU64>,
) -> Result<(), BatchError> {
    if out.is_empty() {
        return Ok(());
    }
    let started = Instant::now();
    tx.outputs(out)?;
    if let Some(spent) = spent {
        let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        spent.fetch_add(took, Ordering::Relaxed);
    }
    out.clear();
    Ok(())
}

/// How long a transaction call may overrun its own bound before the watchdog ends the role.
const OVERRUN: Duration = Duration::from_secs(30);
const SEND_OFFSETS_TIMEOUT: Duration = Duration::from_secs(30);
const COMMIT_TIMEOUT: Duration = Duration::from_secs(60);

impl Batcher<'_> {
    /// Processes `batch` and commits what it changed; false when nothing was written into a
    /// transaction (provisional rows sent outside one do not count).
    pub fn run(&self, parts: &mut Partitions, batch: &Batch) -> Result<bool, BatchError> {
        let begun = Begun::default();
        let mut tx = Transaction::new(
            self.producer,
            self.showings,
            self.topics,
            self.metrics,
            &begun,
        );
        let before: BTreeMap<i32, PipelineStats> = parts
            .active
            .iter()
            .map(|(p, part)| (*p, part.pipeline.stats()))
            .collect();
        let mut phases = Phases::default();
        let started = Instant::now();
        let processed = self.events(parts, batch, &mut tx, &phases.outputs);
        phases.events = started.elapsed();
        let processed =
            processed.and_then(|()| self.idle(parts, &mut tx, &mut phases.idle_advance));
        phases.idle = started.elapsed() - phases.events;
        let processed =
            processed.and_then(|()| self.provisional(parts, &mut tx, &phases.provisional_outputs));
        phases.provisional = started.elapsed() - phases.events - phases.idle;
        for (p, part) in &parts.active {
            if let Some(b) = before.get(p) {
                self.metrics.count(b, &part.pipeline.stats());
            }
        }
        processed?;
        let committed = self.commit(parts, tx, &mut phases)?;
        if committed {
            self.metrics.phases(&phases);
        }
        Ok(committed)
    }

    /// The batch's events through their partitions' pipelines. Partitions share nothing, so
    /// with more than one partition in the batch and more than one thread
    /// ([`Batcher::threads`]) they are shared out over threads, the busiest first to the least
    /// loaded, each thread writing its outputs into the transaction itself: a minute's close,
    /// hundreds of thousands of rows in every partition at about the same time, takes a
    /// fraction of the time. A partition's events go through its pipeline in their order
    /// either way, and what is written does not depend on the threads.
    fn events(
        &self,
        parts: &mut Partitions,
        batch: &Batch,
        tx: &mut Transaction<'_>,
        outputs: &AtomicU64,
    ) -> Result<(), BatchError> {
        let mut counts: BTreeMap<i32, usize> = BTreeMap::new();
        for (p, _, _) in batch.iter() {
            *counts.entry(p).or_default() += 1;
        }
        let parts: Vec<(usize, i32, &mut Partition)> = parts
            .active
            .iter_mut()
            .filter_map(|(p, part)| counts.get(p).map(|&n| (n, *p, part)))
            .collect();
        self.share_out(parts, tx, |lane, t, failed| {
            self.lane(lane, batch, t, failed, outputs)
        })
    }

    /// Runs `work` over `parts` (weight, partition, its state) shared out over up to
    /// [`Batcher::threads`] threads ([`lanes`]); each thread writes into the transaction
    /// through a writer of its own. Once a lane fails, `work` is told (its flag) so the others
    /// can stop early: the batch is aborted anyway. The result is the first error, a Schema
    /// Registry that cannot be asked before any other (the batch loop waits before trying it
    /// again).
    fn share_out<'p>(
        &self,
        parts: Vec<(usize, i32, &'p mut Partition)>,
        tx: &mut Transaction<'_>,
        work: impl Fn(&mut Lane<'p>, &mut Transaction<'_>, &AtomicBool) -> Result<(), BatchError> + Sync,
    ) -> Result<(), BatchError> {
        let failed = AtomicBool::new(false);
        let run = |lane: &mut Lane<'p>, t: &mut Transaction<'_>| {
            let r = work(lane, t, &failed);
            if r.is_err() {
                failed.store(true, Ordering::Relaxed);
            }
            r
        };
        let mut lanes = lanes(parts, self.threads).into_iter();
        let Some(mut first) = lanes.next() else {
            return Ok(());
        };
        let others: Vec<(Lane<'p>, Transaction<'_>)> = lanes.map(|l| (l, tx.another())).collect();
        if others.is_empty() {
            return run(&mut first, tx);
        }
        let run = &run;
        std::thread::scope(|s| {
            let running: Vec<_> = others
                .into_iter()
                .map(|(mut lane, mut t)| s.spawn(move || run(&mut lane, &mut t)))
                .collect();
            let mut result = run(&mut first, tx);
            for r in running {
                let r = r
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                result = match (result, r) {
                    (Err(e @ BatchError::Registry(_)), _)
                    | (_, Err(e @ BatchError::Registry(_))) => Err(e),
                    (Err(e), _) | (Ok(()), Err(e)) => Err(e),
                    (Ok(()), Ok(())) => Ok(()),
                };
            }
            result
        })
    }

    /// The events of the batch's partitions in `lane`, decoded and prefetched [`PREFETCH`] at
    /// a time into reused buffers; given up between chunks once another lane `failed`.
    fn lane(
        &self,
        lane: &mut Lane<'_>,
        batch: &Batch,
        tx: &mut Transaction<'_>,
        failed: &AtomicBool,
        outputs: &AtomicU64,
    ) -> Result<(), BatchError> {
        let codec = EngagementEvent::codec();
        let mut out = Outputs::default();
        let mut events: Vec<EngagementEvent> = Vec::new();
        let mut decoded = Vec::new();
        let mut chunk = Vec::with_capacity(PREFETCH);
        let mine: Vec<i32> = lane.iter().map(|(p, _)| *p).collect();
        let mut batch = batch.iter().filter(|(p, _, _)| mine.contains(p)).peekable();
        let now = Instant::now();
        while batch.peek().is_some() {
            if failed.load(Ordering::Relaxed) {
                return Ok(()); // another lane failed: the batch is aborted
            }
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
                if let Some((_, part)) = lane.iter().find(|(q, _)| *q == p) {
                    part.pipeline.prefetch(&events[from..to]);
                }
                from = to;
            }
            for (((p, offset, payload), event), decoded) in
                chunk.drain(..).zip(events.iter()).zip(decoded.drain(..))
            {
                let Some((_, part)) = lane.iter_mut().find(|(q, _)| *q == p) else {
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
                hand_over(tx, &mut out, Some(outputs))?;
            }
        }
        Ok(())
    }

    /// Replays that reached their end without input past it end; partitions that are caught
    /// up and quiet for `stream.idle_timeout_ms` move their watermark on: to the busiest
    /// partition's of this instance (event time moves on there), or with the wall clock from
    /// their own highest event time, whichever is later. Which partitions move on is decided
    /// here (the broker asked on this thread); moving them on, and the windows that closes
    /// (when input stops everywhere, every partition's minute closes in the same batch), is
    /// shared out over the threads as events are.
    fn idle(
        &self,
        parts: &mut Partitions,
        tx: &mut Transaction<'_>,
        advancing: &mut Duration,
    ) -> Result<(), BatchError> {
        let positions = self.consumer.position().ok();
        let idle_after = Duration::from_millis(self.config.idle_timeout_ms);
        let busiest = parts
            .active
            .values()
            .filter_map(|p| p.pipeline.watermark())
            .max();
        // The partitions to move on, and to which watermark.
        let mut to: BTreeMap<i32, i64> = BTreeMap::new();
        let mut moving: Vec<(usize, i32, &mut Partition)> = Vec::new();
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
                tracing::debug!(
                    partition = p,
                    quiet_ms,
                    from = ?part.pipeline.watermark(),
                    to = wm,
                    "idle partition moves on"
                );
                to.insert(*p, wm);
                moving.push((1, *p, part));
            }
        }
        if moving.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let moved = self.share_out(moving, tx, |lane, t, _| {
            let mut out = Outputs::default();
            for (p, part) in lane.iter_mut() {
                part.pipeline.idle_advance(to[p], &mut out);
                if !out.is_empty() {
                    part.changed = true;
                }
                hand_over(t, &mut out, None)?;
            }
            Ok(())
        });
        *advancing = started.elapsed();
        moved
    }

    /// Every `stream.provisional_interval_ms`, each partition's open windows changed since
    /// the last time, as provisional rows (they change no state: sent at once outside the
    /// transaction, [`Batcher::showings`], or in it), and the spike alerts their counts so far
    /// make certain (those change the detector's: in the transaction, with the partition's
    /// changes).
    fn provisional(
        &self,
        parts: &mut Partitions,
        tx: &mut Transaction<'_>,
        outputs: &AtomicU64,
    ) -> Result<(), BatchError> {
        if self.config.provisional_interval_ms == 0 {
            return Ok(());
        }
        let every = Duration::from_millis(self.config.provisional_interval_ms);
        // Shared out over the threads, one partition as heavy as another.
        let due: Vec<(usize, i32, &mut Partition)> = parts
            .active
            .iter_mut()
            .filter(|(_, part)| part.shown_at.elapsed() >= every)
            .map(|(p, part)| (1, *p, part))
            .collect();
        self.share_out(due, tx, |lane, tx, _| {
            let mut out = Outputs::default();
            for (_, part) in lane.iter_mut() {
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
                hand_over(tx, &mut out, Some(outputs))?;
            }
            Ok(())
        })
    }

    /// The changelogs, checkpoints and input offsets of the partitions the batch changed, in
    /// its transaction, and the commit.
    fn commit(
        &self,
        parts: &mut Partitions,
        mut tx: Transaction<'_>,
        phases: &mut Phases,
    ) -> Result<bool, BatchError> {
        let writing = Instant::now();
        // The partitions' changelogs (a minute's close changes as many entries as it emits
        // rows) shared out over the threads too.
        let changed: Vec<(usize, i32, &mut Partition)> = parts
            .active
            .iter_mut()
            .filter_map(|(p, part)| std::mem::take(&mut part.changed).then_some((1, *p, part)))
            .collect();
        let mut offsets = TopicPartitionList::new();
        for (_, p, part) in &changed {
            let next = Offset::Offset(part.pipeline.next_offset());
            offsets.add_partition_offset(&self.topics.input, *p, next)?;
        }
        self.share_out(changed, &mut tx, |lane, t, _| {
            let mut changes = Changes::new();
            for (p, part) in lane.iter_mut() {
                let cp = part.pipeline.checkpoint();
                changes.clear();
                part.pipeline.write_changes(&mut changes)?;
                t.checkpoint(*p, &changes, &cp)?;
            }
            Ok(())
        })?;
        phases.changelog = writing.elapsed();
        if !tx.is_open() {
            return Ok(false);
        }
        // A stall is worst here: the transaction open, nothing of it committed.
        banter_runtime::pausepoint("stream.before_commit");
        let group = self.consumer.group_metadata().ok_or(BatchError::NoGroup)?;
        let committing = Instant::now();
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
            .observe(committing.elapsed().as_secs_f64());
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::lanes;

    #[test]
    fn a_batch_is_shared_out_by_weight_and_each_partition_goes_to_one_lane() {
        // By hand: 50 to the first lane, 30 and 20 to the second (50 each), 10 to the first
        // (a tie: the first), 5 to the second (60 against 50).
        let items = vec![
            (10, 3, 'd'),
            (50, 0, 'a'),
            (5, 4, 'e'),
            (30, 1, 'b'),
            (20, 2, 'c'),
        ];
        assert_eq!(
            lanes(items.clone(), 2),
            vec![vec![(0, 'a'), (3, 'd')], vec![(1, 'b'), (2, 'c'), (4, 'e')]]
        );
        // One thread (or 0, read as one): one lane, the heaviest first.
        let one = vec![vec![(0, 'a'), (1, 'b'), (2, 'c'), (3, 'd'), (4, 'e')]];
        assert_eq!(lanes(items.clone(), 1), one);
        assert_eq!(lanes(items, 0), one);
        // More threads than partitions: no empty lane. Equal weights in partition order.
        assert_eq!(
            lanes(vec![(1, 8, ()), (1, 7, ())], 8),
            vec![vec![(7, ())], vec![(8, ())]]
        );
        assert_eq!(
            lanes(vec![(1, 9, 'c'), (1, 2, 'a'), (1, 5, 'b')], 1),
            vec![vec![(2, 'a'), (5, 'b'), (9, 'c')]]
        );
        assert!(lanes(Vec::<(usize, i32, ())>::new(), 2).is_empty());
    }
}
