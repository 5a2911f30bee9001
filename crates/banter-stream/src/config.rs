//! `banter stream`'s configuration: its own section (`[stream]`) and those of the operators it
//! runs (`[spike]`, `[cta]`, `[conversation]`), each checked here.

use banter_runtime::config::{invalid, Problems, Validate};
use serde::{Deserialize, Serialize};

/// Everything `banter stream` is configured with besides Kafka.
#[derive(Debug, Clone, Default)]
pub struct StreamSettings {
    /// `[stream]`: windows, lateness, batches and transactions.
    pub stream: StreamConfig,
    /// `[spike]`: spike detection.
    pub spike: SpikeConfig,
    /// `[cta]`: CTA campaigns and funnels.
    pub cta: CtaConfig,
    /// `[conversation]`: conversation metrics.
    pub conversation: ConversationConfig,
}

impl Validate for StreamSettings {
    fn check(&self, p: &mut Problems) {
        self.stream.check(p);
        self.spike.check(p);
        self.cta.check(p);
        self.conversation.check(p);
    }
}

/// `banter stream`: windows, lateness and exactly-once output.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamConfig {
    /// Kafka consumer group of the stream processors.
    pub group_id: String,
    /// This instance's name, unique within the group and stable across restarts: the Kafka
    /// transactional id is `<group_id>-<instance_id>`, so a restarted instance fences its
    /// previous life at once. Default: the host name.
    pub instance_id: String,
    /// How far out of order events may arrive without being late, in ms.
    pub out_of_orderness_ms: i64,
    /// How long after a window's end a late event still corrects it, in ms.
    pub allowed_lateness_ms: i64,
    /// N of time-to-N.
    pub time_to_n: i64,
    /// How long the ids of events timed by their delivery (Instagram comments and mentions:
    /// a redelivery comes with a new time) are remembered to recognise redeliveries, in ms
    /// (Meta retries for 36 h).
    pub redelivery_horizon_ms: i64,
    /// A caught-up partition without input for this long is idle: its watermark follows the
    /// wall clock from its highest event time, closing its windows.
    pub idle_timeout_ms: u64,
    /// How often the windows still open are emitted as provisional rows (negative revision,
    /// replaced by the final row), in ms; 0: never.
    pub provisional_interval_ms: u64,
    /// Provisional rows in the batch's transaction (true, the default: read once it commits,
    /// so they show committed counts only), or, on a topic of their own, sent at once by a
    /// producer of their own (false: not kept waiting by a minute's close while it writes its
    /// changelog and commits; they may show counts of a batch that is then aborted). They
    /// change no state either way.
    pub provisional_in_transaction: bool,
    /// Threads a batch's partitions are shared out over (a partition's events stay on one);
    /// 0: one per core.
    pub threads: usize,
    /// Most input records in one transaction.
    pub max_batch_events: usize,
    /// Longest a batch waits for input before it is processed, in ms.
    pub max_batch_ms: u64,
    /// Kafka `transaction.timeout.ms`: how long a crashed instance's open transaction can
    /// hold back readers before the broker aborts it.
    pub transaction_timeout_ms: u64,
    /// Kafka `session.timeout.ms`: how long the partitions of an instance that stopped (or
    /// died and did not come back) wait before the group gives them to the others. A
    /// restarted instance with the same `instance_id` gets them back at once.
    pub session_timeout_ms: u64,
    /// Kafka `max.poll.interval.ms`: an instance whose processing loop stalls this long (its
    /// heartbeats going on) leaves the group, and its partitions move; when it resumes, what
    /// it had not committed is refused and redone from the checkpoints.
    pub max_poll_interval_ms: u64,
}

impl StreamConfig {
    /// The threads a batch's partitions are shared out over: `threads`, or one per core.
    pub fn worker_threads(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            n => n,
        }
    }
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            group_id: "banter-stream".into(),
            instance_id: String::new(),
            out_of_orderness_ms: 60_000,
            allowed_lateness_ms: 3_600_000,
            time_to_n: 50,
            redelivery_horizon_ms: 36 * 3_600_000,
            idle_timeout_ms: 30_000,
            provisional_interval_ms: 1000,
            provisional_in_transaction: true,
            threads: 0,
            max_batch_events: 20_000,
            max_batch_ms: 250,
            transaction_timeout_ms: 10_000,
            session_timeout_ms: 10_000,
            max_poll_interval_ms: 300_000,
        }
    }
}

impl Validate for StreamConfig {
    fn check(&self, p: &mut Problems) {
        if self.group_id.is_empty() {
            p.push(invalid("stream.group_id", "must not be empty"));
        }
        if self.out_of_orderness_ms < 0 {
            p.push(invalid(
                "stream.out_of_orderness_ms",
                "must not be negative",
            ));
        }
        if self.allowed_lateness_ms < 0 {
            p.push(invalid(
                "stream.allowed_lateness_ms",
                "must not be negative",
            ));
        }
        if self.time_to_n < 1 {
            p.push(invalid("stream.time_to_n", "must be at least 1"));
        }
        if self.redelivery_horizon_ms < self.allowed_lateness_ms {
            p.push(invalid(
                "stream.redelivery_horizon_ms",
                "must be at least stream.allowed_lateness_ms",
            ));
        }
        if self.idle_timeout_ms < 100 {
            p.push(invalid("stream.idle_timeout_ms", "must be at least 100"));
        }
        if self.provisional_interval_ms != 0
            && !(100..=3_600_000).contains(&self.provisional_interval_ms)
        {
            p.push(invalid(
                "stream.provisional_interval_ms",
                "must be 0 (off) or between 100 and 3600000",
            ));
        }
        if self.threads > 256 {
            p.push(invalid(
                "stream.threads",
                "must be between 0 (one per core) and 256",
            ));
        }
        if self.max_batch_events == 0 {
            p.push(invalid("stream.max_batch_events", "must be at least 1"));
        }
        if !(1..=60_000).contains(&self.max_batch_ms) {
            p.push(invalid(
                "stream.max_batch_ms",
                "must be between 1 and 60000",
            ));
        }
        if !(6000..=300_000).contains(&self.session_timeout_ms) {
            p.push(invalid(
                "stream.session_timeout_ms",
                "must be between 6000 and 300000 (the broker's group limits)",
            ));
        }
        if self.max_poll_interval_ms < self.session_timeout_ms
            || self.max_poll_interval_ms > 86_400_000
        {
            p.push(invalid(
                "stream.max_poll_interval_ms",
                "must be at least stream.session_timeout_ms and at most 86400000",
            ));
        }
        if !(1000..=900_000).contains(&self.transaction_timeout_ms) {
            p.push(invalid(
                "stream.transaction_timeout_ms",
                "must be between 1000 and 900000",
            ));
        }
    }
}

impl StreamConfig {
    /// The instance id, or the host name when unset.
    pub fn instance(&self) -> String {
        if !self.instance_id.is_empty() {
            return self.instance_id.clone();
        }
        banter_runtime::host_name()
    }
}

/// Spike detection in `banter stream` (DESIGN.md, "Spike alerts"), on the 1-minute
/// interaction counts of every account and post.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpikeConfig {
    /// Detect spikes at all.
    pub enabled: bool,
    /// Judge accounts.
    pub accounts: bool,
    /// Judge posts.
    pub posts: bool,
    /// EWMA weight of the newest minute (0 < λ ≤ 1).
    pub lambda: f64,
    /// z = (x − mean) / max(σ, √mean, 1) that makes a minute a hit.
    pub z_threshold: f64,
    /// Fewest interactions in a hit minute.
    pub min_count: i64,
    /// Hits among the last `window_minutes` that fire an alert.
    pub fire_hits: u32,
    /// See `fire_hits` (1 to 8).
    pub window_minutes: u32,
    /// A hit this unusual against the key's own level (z at least this), with at least 1.5
    /// times `min_count` interactions, fires on its own, without waiting for `fire_hits`; 0
    /// (the default: DESIGN.md's rule, under which one unusual minute does not page) turns it
    /// off. 6 lets alerts come within a minute of a spike's start (BENCHMARKS.md).
    pub fire_alone_z: f64,
    /// Minutes in a row back to normal (z below `resolve_z`) that resolve an alert.
    pub resolve_minutes: u32,
    /// While an alert fires, a minute at z of at least this (below `z_threshold`: hysteresis)
    /// still counts as the spike: it keeps the alert up and stays out of the baseline and a
    /// young post's launch level. A spike whose Poisson count dips in one minute is not
    /// resolved, nor is the dip folded into the level it is judged against. At or above
    /// `z_threshold` (which it is capped at) the hysteresis is off.
    pub resolve_z: f64,
    /// After a resolve, minutes in which the same account or post cannot fire again.
    pub cooldown_minutes: i64,
    /// Minutes of a post's life in which it is judged against the account's recent posts at
    /// the same age rather than against its own (still empty) trend.
    pub young_minutes: i64,
    /// Minutes of history a baseline needs before it is used.
    pub min_history_minutes: u32,
    /// Earlier posts of the account seen at an age before a young post of that age is judged
    /// against them.
    pub young_min_posts: u32,
    /// Minutes of its own (from its first full minute) before a young post is also judged
    /// against its own level.
    pub young_own_minutes: u32,
    /// Young posts are compared in log space, ln(1 + x), across the account's posts (reach is
    /// heavy-tailed); this is the least spread assumed (1.0: at z = 3 a young post fires at
    /// about 20 times the account's typical post of that age; below that, a launch that takes
    /// off after its first minutes is caught against the post's own level).
    pub young_log_spread: f64,
    /// After firing this long, the level becomes the new baseline.
    pub max_firing_minutes: i64,
    /// An account or post quiet for this long is forgotten.
    pub forget_after_minutes: i64,
    /// Fire a post's alert from the counts so far of minutes not closed yet, as soon as they
    /// make it certain (revision 0; the closed minutes' FIRING confirms it). Runs with the
    /// provisional rows (`stream.provisional_interval_ms` above 0).
    pub early: bool,
}

impl Default for SpikeConfig {
    fn default() -> Self {
        SpikeConfig {
            enabled: true,
            accounts: true,
            posts: true,
            lambda: 0.2,
            z_threshold: 3.0,
            min_count: 10,
            fire_hits: 2,
            window_minutes: 3,
            fire_alone_z: 0.0,
            resolve_minutes: 3,
            resolve_z: 2.0,
            cooldown_minutes: 15,
            young_minutes: 15,
            min_history_minutes: 10,
            young_min_posts: 3,
            young_own_minutes: 3,
            young_log_spread: 1.0,
            max_firing_minutes: 60,
            forget_after_minutes: 24 * 60,
            early: true,
        }
    }
}

impl Validate for SpikeConfig {
    fn check(&self, p: &mut Problems) {
        if !(self.lambda > 0.0 && self.lambda <= 1.0) {
            p.push(invalid("spike.lambda", "must be in (0, 1]"));
        }
        if !(self.z_threshold.is_finite() && self.z_threshold > 0.0) {
            p.push(invalid("spike.z_threshold", "must be a positive number"));
        }
        if !(self.fire_alone_z.is_finite() && self.fire_alone_z >= 0.0) {
            p.push(invalid(
                "spike.fire_alone_z",
                "must be 0 (off) or a positive number",
            ));
        }
        if !(self.resolve_z.is_finite() && self.resolve_z >= 0.0) {
            p.push(invalid(
                "spike.resolve_z",
                "must be a number of at least 0 (above spike.z_threshold: no hysteresis)",
            ));
        }
        if !(1..=8).contains(&self.window_minutes) {
            p.push(invalid("spike.window_minutes", "must be between 1 and 8"));
        }
        if self.fire_hits == 0 || self.fire_hits > self.window_minutes {
            p.push(invalid(
                "spike.fire_hits",
                "must be between 1 and spike.window_minutes",
            ));
        }
        if self.resolve_minutes == 0 {
            p.push(invalid("spike.resolve_minutes", "must be at least 1"));
        }
        if !(self.young_log_spread.is_finite() && self.young_log_spread > 0.0) {
            p.push(invalid(
                "spike.young_log_spread",
                "must be a positive number",
            ));
        }
        for (key, v) in [
            ("spike.cooldown_minutes", self.cooldown_minutes),
            ("spike.young_minutes", self.young_minutes),
            ("spike.max_firing_minutes", self.max_firing_minutes),
            ("spike.min_count", self.min_count),
        ] {
            if !(0..=7 * 24 * 60).contains(&v) {
                p.push(invalid(key, "must be between 0 and 10080"));
            }
        }
        if self.forget_after_minutes < 60 {
            p.push(invalid("spike.forget_after_minutes", "must be at least 60"));
        }
    }
}

/// CTA campaigns and funnels in `banter stream`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CtaConfig {
    /// A TOML file of `[[campaign]]` tables (id, account_id, keywords, scope, active_from,
    /// active_until); empty: no campaigns. A missing or invalid file at start-up is an error.
    pub campaigns_file: String,
    /// How often the file is checked for changes, in ms: a changed file applies without a
    /// restart (an invalid one is refused and the previous campaigns stay).
    pub reload_interval_ms: u64,
    /// Days after a trigger within which later stages are attributed to it.
    pub attribution_days: i64,
}

impl Default for CtaConfig {
    fn default() -> Self {
        CtaConfig {
            campaigns_file: String::new(),
            reload_interval_ms: 10_000,
            attribution_days: 7,
        }
    }
}

impl Validate for CtaConfig {
    fn check(&self, p: &mut Problems) {
        if self.reload_interval_ms < 100 {
            p.push(invalid("cta.reload_interval_ms", "must be at least 100"));
        }
        if !(1..=90).contains(&self.attribution_days) {
            p.push(invalid("cta.attribution_days", "must be between 1 and 90"));
        }
    }
}

/// Conversation metrics in `banter stream`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConversationConfig {
    /// How long after its hour or day an inbound item's answer still counts, in ms.
    pub answer_horizon_ms: i64,
    /// Silence after which a DM opens a new conversation (an inbound item), in ms.
    pub dm_silence_ms: i64,
}

impl Default for ConversationConfig {
    fn default() -> Self {
        ConversationConfig {
            answer_horizon_ms: 86_400_000,
            dm_silence_ms: 86_400_000,
        }
    }
}

impl Validate for ConversationConfig {
    fn check(&self, p: &mut Problems) {
        if !(60_000..=7 * 86_400_000).contains(&self.answer_horizon_ms) {
            p.push(invalid(
                "conversation.answer_horizon_ms",
                "must be between 60000 (a minute) and 604800000 (a week)",
            ));
        }
        if self.dm_silence_ms < 60_000 {
            p.push(invalid(
                "conversation.dm_silence_ms",
                "must be at least 60000 (a minute)",
            ));
        }
    }
}
