//! The input partitions assigned to this instance, each with its [`Pipeline`], and the
//! consumer group's rebalance callback that restores them: a partition assigned is rebuilt
//! from the checkpoint topic (or kept, when it comes back to the instance that holds its state
//! at the committed checkpoint); a partition revoked is parked in case it comes back.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;

use super::checkpoints::CheckpointReader;
use super::metrics::StreamMetrics;
use crate::cta::Matcher;
use crate::pipeline::{Pipeline, PipelineConfig, Saved};
use crate::window::Checkpoint;

/// One assigned input partition.
pub(super) struct Partition {
    pub pipeline: Pipeline,
    /// When its last input arrived.
    pub last_arrival: Instant,
    /// When a quiet partition last asked the broker whether it is caught up.
    pub idle_checked: Instant,
    /// When its open windows were last shown as provisional rows.
    pub shown_at: Instant,
    /// The earliest receipt time (`received_at`, ms) of the events processed since then.
    pub unshown_since: Option<i64>,
    /// Changed in the open batch: its changelog, checkpoint and offset go into the
    /// transaction.
    pub changed: bool,
}

impl Partition {
    fn new(pipeline: Pipeline) -> Self {
        Partition {
            pipeline,
            last_arrival: Instant::now(),
            idle_checked: Instant::now(),
            shown_at: Instant::now(),
            unshown_since: None,
            changed: false,
        }
    }

    /// Whether this (parked) partition holds exactly the state `cp` was committed with: not
    /// replaying, and the same checkpoint (the same offset alone is not enough: another
    /// instance may have moved the watermark on without input, idle, and committed that).
    pub fn holds(&self, cp: &Checkpoint) -> bool {
        !self.pipeline.replaying() && self.pipeline.checkpoint() == *cp
    }

    /// The partition as `saved` describes it, and the input offset to read from (`none` when
    /// it has no checkpoint).
    pub fn restore(
        cfg: &PipelineConfig,
        matcher: &Matcher,
        saved: Option<&Saved>,
        none: Offset,
    ) -> Result<(Self, Offset), String> {
        let empty = Saved::default();
        let (pipeline, from) = Pipeline::restore(cfg, matcher.clone(), saved.unwrap_or(&empty))
            .map_err(|e| e.to_string())?;
        Ok((Partition::new(pipeline), from.map_or(none, Offset::Offset)))
    }
}

/// The partitions of this instance, shared by the loop and the rebalance callback.
#[derive(Default)]
pub(super) struct Partitions {
    pub active: BTreeMap<i32, Partition>,
    /// Revoked partitions whose state may come back with the next assignment.
    pub parked: BTreeMap<i32, Partition>,
    /// Bumped by every rebalance: input polled before it is stale.
    pub generation: u64,
    /// A restore that failed in the callback, for the loop to stop on.
    pub error: Option<String>,
}

/// Locks the partitions (a panic elsewhere does not poison them for good).
pub(super) fn lock(m: &Mutex<Partitions>) -> MutexGuard<'_, Partitions> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What a partition's pipeline is built from; the campaigns change on reload.
#[derive(Clone)]
pub(super) struct Setup {
    pub pipeline: PipelineConfig,
    pub matcher: Matcher,
}

/// The consumer's context: restores partitions as the group assigns them.
pub(super) struct Rebalance {
    pub partitions: Arc<Mutex<Partitions>>,
    pub reader: CheckpointReader,
    pub setup: Mutex<Setup>,
    pub input: String,
    pub metrics: StreamMetrics,
    /// Tokens for AWS_MSK_IAM.
    pub tokens: banter_runtime::kafka::KafkaContext,
}

impl Rebalance {
    /// The current setup.
    pub fn setup(&self) -> Setup {
        self.setup
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn assign(&self, consumer: &BaseConsumer<Self>, parts: &mut Partitions, ids: Vec<i32>) {
        let saved = match self.reader.read(&ids) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot read checkpoints");
                parts.error = Some(e);
                return;
            }
        };
        let setup = self.setup();
        let mut assign = TopicPartitionList::new();
        for p in ids {
            let parked = parts.parked.remove(&p);
            let saved = saved.get(&p);
            let cp = saved.and_then(|s| s.checkpoint.as_ref());
            let (part, offset, how) = match (parked, cp) {
                // It comes back to the instance that holds its state as committed.
                (Some(part), Some(cp)) if part.holds(cp) => {
                    (part, Offset::Offset(cp.next_offset), "kept")
                }
                (_, cp) => {
                    match Partition::restore(&setup.pipeline, &setup.matcher, saved, Offset::Stored)
                    {
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
}

impl ClientContext for Rebalance {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(
        &self,
        _config: Option<&str>,
    ) -> Result<rdkafka::client::OAuthToken, Box<dyn std::error::Error>> {
        self.tokens.token().map_err(Into::into)
    }
}

impl ConsumerContext for Rebalance {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let mut parts = lock(&self.partitions);
        parts.generation += 1;
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let ids: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                self.assign(consumer, &mut parts, ids);
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let active = std::mem::take(&mut parts.active);
                for (p, part) in active {
                    tracing::info!(partition = p, "partition revoked");
                    self.metrics.forget_partition(p);
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

#[cfg(test)]
mod tests {
    use banter_model::{Action, EngagementEvent, Kind, Platform};

    use super::*;
    use crate::pipeline::Outputs;

    #[test]
    fn a_partition_handed_back_is_kept_only_with_the_very_checkpoint_committed() {
        let cfg = PipelineConfig::default();
        let mut pipeline = Pipeline::new(&cfg, Matcher::default());
        let mut out = Outputs::default();
        let t0 = 1_764_000_000_000;
        for i in 0..10 {
            let e = EngagementEvent::new(
                format!("e{i}"),
                Platform::Instagram,
                Kind::Comment,
                Action::Add,
                "a1",
                t0 + i * 1000,
            );
            pipeline.process(&e, i, &mut out);
        }
        let committed = pipeline.checkpoint();
        let parked = Partition::new(pipeline.clone());
        assert!(parked.holds(&committed));
        // Meanwhile another instance moved the partition's watermark on, idle, and committed
        // that: same next offset, other state.
        let mut other = pipeline;
        other.idle_advance(t0 + 3_600_000, &mut out);
        let moved_on = other.checkpoint();
        assert_eq!(moved_on.next_offset, committed.next_offset);
        assert!(!parked.holds(&moved_on), "stale state must not be kept");
    }
}
