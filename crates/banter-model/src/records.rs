//! The records the later stages write: rollups (`banter.rollups.v1`), CTA funnel rollups,
//! spike alerts (`banter.alerts.v1`) and dead letters (`banter.dlq.v1`).
//!
//! Their Avro schemas live beside the event's in `schemas/avro/`.

use serde::{Deserialize, Serialize};

use crate::event::TimestampMillis;

/// The window a rollup covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WindowKind {
    /// 1-minute tumbling window.
    Minute,
    /// 5-minute window hopping every minute, built from 1-minute panes.
    #[serde(rename = "VELOCITY_5M")]
    Velocity5m,
    /// The first 15 minutes after publication.
    #[serde(rename = "FIRST_15M")]
    First15m,
    /// The first 60 minutes after publication.
    #[serde(rename = "FIRST_60M")]
    First60m,
    /// 1-hour tumbling window.
    Hour,
    /// 1-day tumbling window.
    Day,
}

/// Aggregates of one account (`content_id` = None) or one post in one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollup {
    /// The brand's account. A [`SmolStr`](smol_str::SmolStr): ids up to 23 bytes are held inline
    /// and longer ones shared, so the stream processor's many rows per name copy no strings.
    pub account_id: smol_str::SmolStr,
    /// The post; None for the account-level rollup.
    #[serde(default)]
    pub content_id: Option<smol_str::SmolStr>,
    /// Which window.
    pub window: WindowKind,
    /// Window start (inclusive).
    pub window_start: TimestampMillis,
    /// Window end (exclusive).
    pub window_end: TimestampMillis,
    /// Grows with every re-emission of the same key. Negative: a provisional row of a window
    /// still open, replaced by the final row (whose revision is an input offset).
    pub revision: i64,
    /// Interactions (adds minus removes) from non-brand actors.
    pub interactions: i64,
    /// COMMENT count.
    #[serde(default)]
    pub comments: i64,
    /// LIVE_COMMENT count.
    #[serde(default)]
    pub live_comments: i64,
    /// POST_REACTION count (adds minus removes).
    #[serde(default)]
    pub reactions: i64,
    /// SHARE count.
    #[serde(default)]
    pub shares: i64,
    /// STORY_REPLY count.
    #[serde(default)]
    pub story_replies: i64,
    /// DM_IN count.
    #[serde(default)]
    pub dms_in: i64,
    /// MENTION count.
    #[serde(default)]
    pub mentions: i64,
    /// BRAND_REPLY count.
    #[serde(default)]
    pub brand_replies: i64,
    /// Interactions per minute (VELOCITY_5M).
    #[serde(default)]
    pub velocity: Option<f64>,
    /// first_15m / first_60m (FIRST_60M).
    #[serde(default)]
    pub early_accel: Option<f64>,
    /// Minutes from publication to interaction N.
    #[serde(default)]
    pub time_to_n_minutes: Option<f64>,
    /// Approximate distinct actors.
    #[serde(default)]
    pub unique_engagers: Option<i64>,
    /// Events that arrived after the window was first emitted.
    #[serde(default)]
    pub late_events: i64,
    /// When this revision was emitted: for a final row the watermark that closed or corrected
    /// it (event-time derived, deterministic); for a provisional row the stream's wall clock.
    pub emitted_at: TimestampMillis,
}

/// A CTA funnel of one campaign in one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunnelRollup {
    /// The brand's account.
    pub account_id: String,
    /// The campaign.
    pub campaign_id: String,
    /// Which window (HOUR or DAY).
    pub window: WindowKind,
    /// Window start (inclusive).
    pub window_start: TimestampMillis,
    /// Window end (exclusive).
    pub window_end: TimestampMillis,
    /// Grows with every re-emission of the same key.
    pub revision: i64,
    /// Distinct (actor, campaign) that triggered.
    pub triggered: i64,
    /// … that were sent the private reply.
    pub private_reply_sent: i64,
    /// … that read it.
    pub dm_read: i64,
    /// … that engaged (postback, quick reply, DM).
    pub engaged: i64,
    /// … that clicked the link.
    pub link_clicked: i64,
    /// … that converted.
    pub converted: i64,
    /// Sum of attributed conversion values.
    #[serde(default)]
    pub conversion_value: f64,
    /// Currency of `conversion_value`.
    #[serde(default)]
    pub currency: Option<String>,
    /// Median seconds from trigger to private reply.
    #[serde(default)]
    pub median_trigger_to_reply_s: Option<f64>,
    /// Median seconds from private reply to click.
    #[serde(default)]
    pub median_reply_to_click_s: Option<f64>,
    /// Median seconds from click to conversion.
    #[serde(default)]
    pub median_click_to_conversion_s: Option<f64>,
    /// When this revision was emitted.
    pub emitted_at: TimestampMillis,
    /// The sketches of the three stage latencies (seconds), to merge windows: trigger to
    /// private reply, private reply to click, click to conversion.
    #[serde(default)]
    pub trigger_to_reply_sketch: Vec<SketchBucket>,
    /// Private reply to click.
    #[serde(default)]
    pub reply_to_click_sketch: Vec<SketchBucket>,
    /// Click to conversion.
    #[serde(default)]
    pub click_to_conversion_sketch: Vec<SketchBucket>,
}

impl FunnelRollup {
    /// The distinct (actor, campaign) counts of the six stages in funnel order: triggered,
    /// private reply sent, DM read, engaged, link clicked, converted.
    pub fn stages(&self) -> [i64; 6] {
        [
            self.triggered,
            self.private_reply_sent,
            self.dm_read,
            self.engaged,
            self.link_clicked,
            self.converted,
        ]
    }
}

/// One bucket of a mergeable quantile sketch of durations (relative accuracy 1 %): values
/// from `γ^(bucket−1)` to `γ^bucket` seconds, γ = 1.01 / 0.99, and `count` of them; bucket
/// [`ZERO_BUCKET`] holds the values below 0.01 s. Sketches of several windows merge by adding
/// the counts of equal buckets (in ClickHouse: `sumMap(buckets, counts)`), so a percentile
/// over any range is exact to within 1 %, where averaging the windows' medians is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SketchBucket {
    /// ⌈log_γ(seconds)⌉, or [`ZERO_BUCKET`].
    pub bucket: i32,
    /// Values in it.
    pub count: i64,
}

/// The bucket of values below 0.01 s (counted as 0).
pub const ZERO_BUCKET: i32 = i32::MIN;

/// Brand responsiveness of one account (`content_id` None) or one post in one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationRollup {
    /// The brand's account.
    pub account_id: String,
    /// The post; None for the account-level row.
    #[serde(default)]
    pub content_id: Option<String>,
    /// Which window (HOUR or DAY).
    pub window: WindowKind,
    /// Window start (inclusive).
    pub window_start: TimestampMillis,
    /// Window end (exclusive).
    pub window_end: TimestampMillis,
    /// Grows with every re-emission of the same key.
    pub revision: i64,
    /// Inbound items: comments, story replies, conversation-opening DMs.
    pub inbound: i64,
    /// Inbound items the brand answered.
    pub answered: i64,
    /// Inbound comments.
    pub inbound_comments: i64,
    /// Inbound comments the brand answered.
    pub answered_comments: i64,
    /// Inbound story replies.
    pub inbound_story_replies: i64,
    /// Conversation-opening DMs.
    pub inbound_dms: i64,
    /// answered / inbound.
    #[serde(default)]
    pub response_rate: Option<f64>,
    /// Median seconds from an item to the brand's answer.
    #[serde(default)]
    pub median_response_s: Option<f64>,
    /// 90th percentile of the same.
    #[serde(default)]
    pub p90_response_s: Option<f64>,
    /// Median seconds from a thread's root to the brand's first response in it.
    #[serde(default)]
    pub median_first_response_s: Option<f64>,
    /// Comments that start a thread.
    pub root_comments: i64,
    /// Comments that reply to a comment.
    pub reply_comments: i64,
    /// reply_comments / root_comments.
    #[serde(default)]
    pub thread_depth: Option<f64>,
    /// reply_comments / all comments.
    #[serde(default)]
    pub reply_share: Option<f64>,
    /// When this revision was emitted.
    pub emitted_at: TimestampMillis,
    /// The sketch of the response times (seconds), to merge windows.
    #[serde(default)]
    pub response_sketch: Vec<SketchBucket>,
    /// The sketch of the first-response times (seconds).
    #[serde(default)]
    pub first_response_sketch: Vec<SketchBucket>,
}

/// Spike alert state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AlertState {
    /// The spike is on.
    Firing,
    /// It fell back.
    Resolved,
}

/// An engagement spike of one account or one post.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpikeAlert {
    /// Stable for one spike: account, content and onset minute.
    pub alert_id: String,
    /// FIRING or RESOLVED.
    pub state: AlertState,
    /// The brand's account.
    pub account_id: String,
    /// The post; None for an account-level spike.
    #[serde(default)]
    pub content_id: Option<String>,
    /// The minute that decided the state.
    pub window_start: TimestampMillis,
    /// Its end.
    pub window_end: TimestampMillis,
    /// Interactions observed in that minute.
    pub observed: i64,
    /// EWMA mean.
    pub baseline_mean: f64,
    /// EWMA standard deviation.
    pub baseline_stddev: f64,
    /// (observed − mean) / max(σ, √mean, 1).
    pub z_score: f64,
    /// Onset of the spike.
    pub started_at: TimestampMillis,
    /// End of the spike, once resolved.
    #[serde(default)]
    pub ended_at: Option<TimestampMillis>,
    /// Grows with every re-emission.
    pub revision: i64,
    /// When this revision was emitted.
    pub emitted_at: TimestampMillis,
}

/// The stage that dead-lettered a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Stage {
    /// Ingest (HTTP, webhooks, replay).
    Ingest,
    /// The stream processor (too-late events, undecodable records).
    Stream,
    /// The ClickHouse sink (rows rejected by ClickHouse).
    Sink,
}

/// Input that could not be processed, kept with its cause and original bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Which stage rejected it.
    pub stage: Stage,
    /// Machine-readable cause (`invalid`, `late`, `unknown_change`, …).
    pub reason: String,
    /// Human-readable error text.
    pub detail: String,
    /// Route, topic or table it came from.
    #[serde(default)]
    pub source: Option<String>,
    /// Kafka partition it came from.
    #[serde(default)]
    pub source_partition: Option<i32>,
    /// Kafka offset it came from.
    #[serde(default)]
    pub source_offset: Option<i64>,
    /// Account, when known.
    #[serde(default)]
    pub account_id: Option<String>,
    /// The original input, unchanged.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// When it was dead-lettered.
    pub failed_at: TimestampMillis,
}

impl DeadLetter {
    /// The most of a failed input a dead letter keeps: an input can be larger than a Kafka
    /// record may be (1 MB), and one dead letter over the limit would fail the transaction it
    /// shares with everything batched with it.
    pub const MAX_PAYLOAD: usize = 64 * 1024;

    /// `payload` and `detail` as a dead letter keeps them: whole up to [`Self::MAX_PAYLOAD`],
    /// else that prefix, with the length and SHA-256 of the whole in the detail.
    pub fn bounded_payload(payload: &[u8], detail: &str) -> (Vec<u8>, String) {
        use sha2::{Digest, Sha256};
        if payload.len() <= Self::MAX_PAYLOAD {
            return (payload.to_vec(), detail.to_owned());
        }
        let hex: String = Sha256::digest(payload)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        (
            payload[..Self::MAX_PAYLOAD].to_vec(),
            format!(
                "{detail} (payload of {} bytes truncated to its first {}; sha256 of the whole {hex})",
                payload.len(),
                Self::MAX_PAYLOAD
            ),
        )
    }
}

impl WindowKind {
    /// Every kind.
    pub const ALL: [WindowKind; 6] = [
        WindowKind::Minute,
        WindowKind::Velocity5m,
        WindowKind::First15m,
        WindowKind::First60m,
        WindowKind::Hour,
        WindowKind::Day,
    ];

    /// The kind whose symbol is `s` ([`WindowKind::as_str`] read back).
    pub fn parse(s: &str) -> Option<WindowKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The Avro symbol (`MINUTE`, `VELOCITY_5M`, …), also the ClickHouse `window_kind` value.
    pub fn as_str(self) -> &'static str {
        match self {
            WindowKind::Minute => "MINUTE",
            WindowKind::Velocity5m => "VELOCITY_5M",
            WindowKind::First15m => "FIRST_15M",
            WindowKind::First60m => "FIRST_60M",
            WindowKind::Hour => "HOUR",
            WindowKind::Day => "DAY",
        }
    }
}

impl AlertState {
    /// The state whose symbol is `s` ([`AlertState::as_str`] read back).
    pub fn parse(s: &str) -> Option<AlertState> {
        [AlertState::Firing, AlertState::Resolved]
            .into_iter()
            .find(|k| k.as_str() == s)
    }

    /// The Avro symbol.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Firing => "FIRING",
            AlertState::Resolved => "RESOLVED",
        }
    }
}

impl Stage {
    /// The Avro symbol.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Ingest => "INGEST",
            Stage::Stream => "STREAM",
            Stage::Sink => "SINK",
        }
    }
}
