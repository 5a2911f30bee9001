//! `banter stream`'s metrics (`banter_stream_…`): counters of what the pipelines saw and
//! wrote, and gauges of state, lag and assignment.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::pipeline::{PipelineStats, StateSizes};

/// Histograms by a label, made with their buckets.
type HistogramFamily = Family<Vec<(String, String)>, Histogram, fn() -> Histogram>;

/// The stream role's metrics.
#[derive(Debug, Clone)]
pub struct StreamMetrics {
    pub(super) events: Counter,
    pub(super) duplicates: Counter,
    pub(super) late: Counter,
    pub(super) too_late: Counter,
    pub(super) undecodable: Counter,
    pub(super) invalid: Counter,
    pub(super) rows: Counter,
    pub(super) replayed: Counter,
    pub(super) restores: Family<Vec<(String, String)>, Counter>,
    pub(super) transactions: Family<Vec<(String, String)>, Counter>,
    pub(super) batch_seconds: Histogram,
    pub(super) commit_seconds: Histogram,
    pub(super) batch_phase_seconds: HistogramFamily,
    pub(super) output_wait_seconds: Counter<f64, AtomicU64>,
    pub(super) provisional_rows: Counter,
    pub(super) provisional_failed: Counter,
    pub(super) provisional_lag_seconds: Histogram,
    pub(super) batch_events: Histogram,
    pub(super) watermark_lag: Family<Vec<(String, String)>, Gauge<f64, AtomicU64>>,
    pub(super) consumer_lag: Family<Vec<(String, String)>, Gauge>,
    pub(super) state_entries: Gauge,
    pub(super) state_bytes: Gauge,
    pub(super) posts: Gauge,
    pub(super) partitions: Gauge,
    pub(super) alerts: Family<Vec<(String, String)>, Counter>,
    pub(super) spike_keys: Gauge,
    pub(super) alerts_firing: Gauge,
    pub(super) funnel_rows: Counter,
    pub(super) conversation_rows: Counter,
    pub(super) triggers: Counter,
    pub(super) unattributed: Counter,
    pub(super) funnel_capped: Counter,
    pub(super) campaign_reloads: Family<Vec<(String, String)>, Counter>,
    pub(super) campaigns: Gauge,
    pub(super) funnel_entries: Gauge,
}

/// Where one batch's time went (`banter_stream_batch_phase_seconds`).
#[derive(Debug, Default)]
pub(super) struct Phases {
    /// Decoding, the pipelines and handing their outputs to the producer.
    pub events: std::time::Duration,
    /// Of `events`, handing outputs to the producer, summed over the threads, in nanoseconds.
    pub outputs: AtomicU64,
    /// Idle partitions moved on: asking the broker whether they are caught up, and moving
    /// those that are on.
    pub idle: std::time::Duration,
    /// Of `idle`, moving caught-up partitions on (what that closes, handed to the producer).
    pub idle_advance: std::time::Duration,
    /// Open windows shown.
    pub provisional: std::time::Duration,
    /// Of `provisional`, handing the rows to the producer, summed over the threads, in
    /// nanoseconds.
    pub provisional_outputs: AtomicU64,
    /// Changelogs and checkpoints written (the commit after it is
    /// `banter_stream_commit_seconds`).
    pub changelog: std::time::Duration,
}

impl StreamMetrics {
    /// Records a committed batch's phases.
    pub(super) fn phases(&self, p: &Phases) {
        let nanos = |a: &AtomicU64| {
            std::time::Duration::from_nanos(a.load(std::sync::atomic::Ordering::Relaxed))
        };
        for (phase, d) in [
            ("events", p.events),
            ("outputs", nanos(&p.outputs)),
            ("idle", p.idle),
            ("idle_advance", p.idle_advance),
            ("provisional", p.provisional),
            ("provisional_outputs", nanos(&p.provisional_outputs)),
            ("changelog", p.changelog),
        ] {
            self.batch_phase_seconds
                .get_or_create(&vec![("phase".to_owned(), phase.to_owned())])
                .observe(d.as_secs_f64());
        }
    }

    /// Registers the metrics under `banter_stream_…`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = StreamMetrics {
            events: Counter::default(),
            duplicates: Counter::default(),
            late: Counter::default(),
            too_late: Counter::default(),
            undecodable: Counter::default(),
            invalid: Counter::default(),
            rows: Counter::default(),
            replayed: Counter::default(),
            restores: Family::default(),
            transactions: Family::default(),
            batch_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            commit_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            batch_phase_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 16))
            }),
            output_wait_seconds: Counter::default(),
            provisional_rows: Counter::default(),
            provisional_failed: Counter::default(),
            // Steps of √2 (0.01 s to about 2 minutes): the doublings' bounds and one between
            // each pair, so a p99 near 5 s reads as ≤ 3.62 or ≤ 5.12, not only ≤ 5.12.
            provisional_lag_seconds: Histogram::new(exponential_buckets(
                0.01,
                std::f64::consts::SQRT_2,
                28,
            )),
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
            funnel_capped: Counter::default(),
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
            "invalid_events",
            "Input events that fail ingest's validation (written by another producer), dead-lettered as `invalid`",
            m.invalid.clone(),
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
            "commit_seconds",
            "Time of one committed transaction's end: input offsets sent, every record acknowledged, commit",
            m.commit_seconds.clone(),
        );
        r.register(
            "batch_phase_seconds",
            "Where a committed batch's time goes, by phase: events (decoded, through the pipelines, their outputs handed to the producer), outputs (of that, handing rows to the producer, summed over the batch's threads), idle (quiet partitions: the broker asked whether they are caught up, those that are moved on), idle_advance (of that, moving them on and what that closes), provisional (open windows shown), provisional_outputs (of that, handing rows to the producer, summed over the threads), changelog (state changes and checkpoints written; the commit after it is banter_stream_commit_seconds)",
            m.batch_phase_seconds.clone(),
        );
        r.register(
            "output_wait_seconds",
            "Time batches waited for room in the producer's queue (queue.buffering.max.messages or .kbytes), summed over a batch's threads: outputs faster than the broker takes them",
            m.output_wait_seconds.clone(),
        );
        r.register(
            "provisional_rows",
            "Provisional rows of open windows emitted (stream.provisional_interval_ms)",
            m.provisional_rows.clone(),
        );
        r.register(
            "provisional_failed",
            "Provisional rows sent outside the batches' transactions (stream.provisional_in_transaction false) that the producer refused or the broker did not take within 30 s; their final rows replace them",
            m.provisional_failed.clone(),
        );
        r.register(
            "provisional_lag_seconds",
            "Per emission of provisional rows, from the receipt (received_at) of the earliest event it shows for the first time to the emission",
            m.provisional_lag_seconds.clone(),
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
            "Records between the partition's end (its high watermark: input behind another producer's open transaction counts) and what this instance has read",
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
            "Spike alerts written, by state (FIRING, RESOLVED; FIRING_EARLY: fired from an open minute's count so far, revision 0; WITHDRAWN: an early one not confirmed)",
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
            "funnel_events_capped",
            "Funnel stage events dropped because their actor held the most it can (counts may be short)",
            m.funnel_capped.clone(),
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

    pub(super) fn outcome(
        &self,
        family: &Family<Vec<(String, String)>, Counter>,
        key: &str,
        v: &str,
    ) {
        family
            .get_or_create(&vec![(key.to_owned(), v.to_owned())])
            .inc();
    }

    /// Counts what a pipeline saw between two of its stats.
    pub(super) fn count(&self, before: &PipelineStats, after: &PipelineStats) {
        self.events.inc_by(after.events - before.events);
        self.replayed.inc_by(after.replayed - before.replayed);
        self.duplicates.inc_by(after.duplicates - before.duplicates);
        self.late.inc_by(after.late - before.late);
        self.too_late.inc_by(after.too_late - before.too_late);
        self.triggers.inc_by(after.triggers - before.triggers);
        self.unattributed
            .inc_by(after.unattributed - before.unattributed);
        self.funnel_capped.inc_by(after.capped - before.capped);
    }

    /// The gauges of this instance's partitions' state, summed.
    pub(super) fn set_state(&self, sizes: &StateSizes, partitions: usize) {
        self.state_entries.set(sizes.window_entries as i64);
        self.state_bytes.set(sizes.window_bytes as i64);
        self.posts.set(sizes.posts as i64);
        self.spike_keys.set(sizes.spike_keys as i64);
        self.alerts_firing.set(sizes.alerts_firing as i64);
        self.funnel_entries.set(sizes.funnel_entries as i64);
        self.partitions.set(partitions as i64);
    }

    /// A partition's lag gauges: wall clock behind its watermark, records behind its end.
    pub(super) fn set_lag(
        &self,
        partition: i32,
        watermark_lag_s: Option<f64>,
        records: Option<i64>,
    ) {
        let label = vec![("partition".to_owned(), partition.to_string())];
        if let Some(s) = watermark_lag_s {
            self.watermark_lag.get_or_create(&label).set(s);
        }
        if let Some(n) = records {
            self.consumer_lag.get_or_create(&label).set(n);
        }
    }

    /// Forgets a revoked partition's lag gauges.
    pub(super) fn forget_partition(&self, partition: i32) {
        let label = vec![("partition".to_owned(), partition.to_string())];
        self.watermark_lag.remove(&label);
        self.consumer_lag.remove(&label);
    }
}
