//! The workload of DESIGN.md ("Workload for tests and benchmarks"), seeded and reproducible,
//! with the exact aggregates of what it generated.
//!
//! * Accounts publish a few posts a day; each post's interaction intensity is
//!   λ(t) = A·φ(t) per minute, A Pareto-distributed (α ≈ 1.2), φ flat for 5 minutes then
//!   decaying as a power law ((t/5 min)^−1.5).
//! * Mix ≈ 60 % reactions, 25 % comments, 8 % story replies, 5 % DMs, 2 % mentions; some
//!   reactions are removed and some comments deleted later; the brand answers some comments
//!   (BRAND_REPLY) and DMs (DM_OUT).
//! * CTA posts: ≈ 15 % of their comments contain the campaign keyword; then private reply sent
//!   95 %, read 70 %, engaged (postback) 60 %, link click 25 %, conversion 5 % (each of the
//!   previous stage).
//! * Injected spikes of 10–50× lasting 5–20 minutes, about a third of them on posts in their
//!   first quarter hour.
//! * Delivery faults: ≈ 1 % duplicates, deliveries up to 60 s out of order, a few late
//!   deliveries within the allowed lateness (they correct their window) and rare very late
//!   retries beyond it (the stream processor dead-letters them as `late`).
//!
//! Events are generated as compact drafts, sorted by delivery time, and turned into
//! [`EngagementEvent`]s one by one ([`Workload::event`]), so millions of events fit in memory.
//! [`Expected`] holds the ground truth computed from the same drafts.

pub mod check;
pub mod sample;
mod truth;

use std::collections::{BTreeMap, BTreeSet};

use crate::sample::SampleRng;
use banter_model::{Action, ContentType, EngagementEvent, EventTimeSource, Kind, Platform};
use serde::{Deserialize, Serialize};

/// One minute in milliseconds.
pub const MINUTE: i64 = 60_000;

/// Parameters of a workload; every one has a default.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkloadConfig {
    /// Seed: the same seed and parameters give the same events.
    pub seed: u64,
    /// Number of accounts (brands).
    pub accounts: u32,
    /// Posts each account publishes per day.
    pub posts_per_account_per_day: f64,
    /// Event time of the first event (ms); rounded down to a whole minute.
    pub start_ms: i64,
    /// Event-time span generated (ms).
    pub duration_ms: i64,
    /// Pareto scale of the per-post amplitude A (interactions per minute at the peak).
    pub amplitude_min: f64,
    /// Pareto shape of A.
    pub amplitude_alpha: f64,
    /// Largest A (keeps one post from dominating a short run).
    pub amplitude_max: f64,
    /// Share of posts that are CTA posts.
    pub cta_share: f64,
    /// Share of posts that get an injected spike.
    pub spike_share: f64,
    /// Share of events delivered twice.
    pub duplicate_rate: f64,
    /// Largest delivery delay of ordinary events (out of order), ms.
    pub max_disorder_ms: i64,
    /// Share of events delivered late but within the allowed lateness (5–50 minutes late).
    pub late_rate: f64,
    /// Share of events delivered beyond the allowed lateness (2 hours late).
    pub very_late_rate: f64,
    /// Share of Instagram comments Meta delivers again hours later, timed by that delivery
    /// (Instagram comments carry no creation time): the same id, a new event time.
    pub late_redelivery_rate: f64,
    /// The stream processor's allowed lateness, ms (decides which deliveries are too late).
    pub allowed_lateness_ms: i64,
    /// Interaction count N of time-to-N.
    pub time_to_n: u64,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            seed: 42,
            accounts: 50,
            posts_per_account_per_day: 4.0,
            start_ms: 1_764_000_000_000 - 1_764_000_000_000 % MINUTE,
            duration_ms: 6 * 60 * MINUTE,
            amplitude_min: 2.0,
            amplitude_alpha: 1.2,
            amplitude_max: 400.0,
            cta_share: 0.2,
            spike_share: 0.1,
            duplicate_rate: 0.01,
            max_disorder_ms: 60_000,
            late_rate: 0.002,
            very_late_rate: 0.0005,
            late_redelivery_rate: 0.01,
            allowed_lateness_ms: 60 * MINUTE,
            time_to_n: 50,
        }
    }
}

/// A generated post.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Post {
    /// Owning account index.
    pub account: u32,
    /// `acct-<n>`.
    pub account_id: String,
    /// `post-<account>-<n>`.
    pub content_id: String,
    /// Its type.
    pub content_type: ContentType,
    /// Publication time (ms).
    pub published_at: i64,
    /// Peak interactions per minute.
    pub amplitude: f64,
    /// The CTA campaign and keyword, for CTA posts.
    pub cta: Option<(String, String)>,
}

/// An injected spike.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Spike {
    /// The account.
    pub account_id: String,
    /// The post.
    pub content_id: String,
    /// Onset (ms, minute-aligned).
    pub start_ms: i64,
    /// End (ms, minute-aligned, exclusive).
    pub end_ms: i64,
    /// Multiplier over the post's rate.
    pub multiplier: f64,
    /// Extra interactions per minute during the spike.
    pub rate_per_minute: f64,
}

/// A compact event before it becomes an [`EngagementEvent`].
#[derive(Debug, Clone, Copy)]
struct Draft {
    /// Index into posts (u32::MAX: none).
    post: u32,
    account: u32,
    kind: Kind,
    action: Action,
    /// Actor number within the account (u32::MAX: the brand).
    actor: u32,
    /// Distinguishes events of the same post, kind and actor.
    serial: u64,
    event_time: i64,
    deliver_at: i64,
    /// Text variant: 0 plain, 1 contains the CTA keyword.
    keyword: bool,
    /// The comment a reply or an answer is to (0: none).
    parent: u64,
    /// Comments and the brand's replies: the serial of their thread's top-level comment.
    thread: u64,
    value_cents: u32,
    duplicate: bool,
    /// A stage of a CTA funnel (after a keyword comment).
    funnel: bool,
}

/// Ground truth of a workload. Interaction counts exclude duplicates and deliveries beyond the
/// allowed lateness; removes subtract.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Expected {
    /// Unique events generated (before duplication).
    pub unique_events: u64,
    /// Deliveries including duplicates.
    pub deliveries: u64,
    /// Duplicate deliveries.
    pub duplicates: u64,
    /// Deliveries within the lateness that correct an already emitted window.
    pub late_within_lateness: u64,
    /// Event ids delivered beyond the allowed lateness, once per such delivery (a duplicate of
    /// a too-late event is dead-lettered too).
    pub too_late: Vec<String>,
    /// Per account (content ""), per minute start: interactions.
    pub account_minutes: BTreeMap<String, BTreeMap<i64, i64>>,
    /// Per content id, per minute start: interactions.
    pub content_minutes: BTreeMap<String, BTreeMap<i64, i64>>,
    /// Per content id, per minute start, per kind: signed counts.
    pub content_kind_minutes: BTreeMap<String, BTreeMap<i64, BTreeMap<String, i64>>>,
    /// Per content id: interactions within 15 and 60 minutes of publication, and minutes to
    /// interaction N.
    pub first_hour: BTreeMap<String, FirstHour>,
    /// Per campaign: distinct actors reaching each stage.
    pub funnels: BTreeMap<String, Funnel>,
    /// Injected spikes.
    pub spikes: Vec<Spike>,
    /// Per account: inbound comments (not by the brand, visible) and how many of them the
    /// brand answered (the sums of `conversations`).
    pub comments_answered: BTreeMap<String, (u64, u64)>,
    /// Per account, per minute start: distinct engagers (non-brand actors of interactions
    /// that add).
    #[serde(default)]
    pub account_minute_engagers: BTreeMap<String, BTreeMap<i64, u64>>,
    /// Per content id, per minute start: distinct engagers.
    #[serde(default)]
    pub content_minute_engagers: BTreeMap<String, BTreeMap<i64, u64>>,
    /// Per account, per hour start: the account-level conversation row.
    #[serde(default)]
    pub conversations: BTreeMap<String, BTreeMap<i64, ConversationHour>>,
    /// Per account: percentiles over the whole run, from every raw response time (what a
    /// dashboard's range over all the account's hours must show; averaging the hours'
    /// medians does not give it).
    #[serde(default)]
    pub conversation_totals: BTreeMap<String, ResponsePercentiles>,
    /// Totals per kind (signed).
    pub kinds: BTreeMap<String, i64>,
}

/// First-hour signals of one post.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct FirstHour {
    /// Interactions in [published, published + 15 min).
    pub first_15m: i64,
    /// Interactions in [published, published + 60 min).
    pub first_60m: i64,
    /// Minutes from publication to interaction N, when reached.
    pub time_to_n_minutes: Option<f64>,
    /// Distinct engagers in the first 15 minutes.
    #[serde(default)]
    pub engagers_15m: u64,
    /// Distinct engagers in the first 60 minutes.
    #[serde(default)]
    pub engagers_60m: u64,
}

/// Percentiles of response times (seconds, nearest rank) over a set of inbound items.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ResponsePercentiles {
    /// Median of item → the brand's answer.
    pub median_response_s: Option<f64>,
    /// 90th percentile of the same.
    pub p90_response_s: Option<f64>,
    /// Median of thread root → the brand's first response in it.
    pub median_first_response_s: Option<f64>,
}

/// One account's conversations in one hour (the README's definitions).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ConversationHour {
    /// Inbound items: visible comments, story replies, DMs opening a conversation.
    pub inbound: i64,
    /// Inbound items answered.
    pub answered: i64,
    /// Inbound comments.
    pub inbound_comments: i64,
    /// Inbound comments answered.
    pub answered_comments: i64,
    /// Story replies.
    pub inbound_story_replies: i64,
    /// DMs opening a conversation.
    pub inbound_dms: i64,
    /// Inbound comments starting a thread.
    pub root_comments: i64,
    /// Inbound comments replying to one.
    pub reply_comments: i64,
    /// Median seconds from an item to its answer.
    pub median_response_s: Option<f64>,
    /// 90th percentile of the same.
    pub p90_response_s: Option<f64>,
    /// Median seconds from a thread's root to the brand's first answer in the thread.
    pub median_first_response_s: Option<f64>,
}

/// A campaign's funnel: distinct actors per stage.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Funnel {
    /// The account.
    pub account_id: String,
    /// Keyword comments (first per actor per post).
    pub triggered: u64,
    /// Private replies sent.
    pub private_reply_sent: u64,
    /// Read.
    pub dm_read: u64,
    /// Engaged (postback).
    pub engaged: u64,
    /// Clicked.
    pub link_clicked: u64,
    /// Converted.
    pub converted: u64,
    /// Sum of conversion values (cents).
    pub conversion_value_cents: u64,
}

/// A generated workload: posts, deliveries in delivery order, and the ground truth.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Parameters.
    pub config: WorkloadConfig,
    /// Posts.
    pub posts: Vec<Post>,
    drafts: Vec<Draft>,
    /// Ground truth.
    pub expected: Expected,
}

/// What `banter generate --expected` writes and tests read back: the parameters, the posts and
/// the ground truth of a workload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Generated {
    /// Parameters.
    pub config: WorkloadConfig,
    /// Posts.
    pub posts: Vec<Post>,
    /// Ground truth.
    pub expected: Expected,
}

impl Generated {
    /// The file of `w`.
    pub fn of(w: &Workload) -> Self {
        Generated {
            config: w.config.clone(),
            posts: w.posts.clone(),
            expected: w.expected.clone(),
        }
    }

    /// Reads a file written by `banter generate --expected`.
    ///
    /// # Errors
    /// The file cannot be read or is not such a file.
    pub fn read(path: &std::path::Path) -> Result<Self, String> {
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The account of a post.
    pub fn account_of(&self, content_id: &str) -> Option<&str> {
        self.posts
            .iter()
            .find(|p| p.content_id == content_id)
            .map(|p| p.account_id.as_str())
    }
}

const COMMENT_TEXTS: &[&str] = &[
    "love this",
    "so good 😍",
    "where can I buy it?",
    "wow",
    "need this in blue",
    "🔥🔥🔥",
    "when is the restock?",
    "amazing colours",
    "tag a friend",
    // No plain comment may contain a CTA keyword (KEYWORDS): it would be a trigger.
    "how much is it?",
];
const KEYWORDS: &[&str] = &["INFO", "LINK", "PRICE", "GUIDE"];

fn pareto(rng: &mut SampleRng, xm: f64, alpha: f64) -> f64 {
    let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    xm / (1.0 - u).max(1e-12).powf(1.0 / alpha)
}

fn uniform(rng: &mut SampleRng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

fn poisson(rng: &mut SampleRng, mean: f64) -> u64 {
    if mean <= 0.0 {
        return 0;
    }
    if mean > 50.0 {
        // Normal approximation, good enough for counts this large.
        let (u1, u2) = (uniform(rng).max(1e-12), uniform(rng));
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        return (mean + z * mean.sqrt()).round().max(0.0) as u64;
    }
    let l = (-mean).exp();
    let (mut k, mut p) = (0u64, 1.0);
    loop {
        p *= uniform(rng);
        if p <= l {
            return k;
        }
        k += 1;
    }
}

/// ∫₀ᵀ φ(t) dt in minutes, φ = 1 on [0, 5], (t/5)^−1.5 after.
fn phi_integral(t_min: f64) -> f64 {
    if t_min <= 5.0 {
        t_min.max(0.0)
    } else {
        5.0 + 10.0 * (1.0 - (t_min / 5.0).powf(-0.5))
    }
}

/// Inverse of [`phi_integral`].
fn phi_inverse(area: f64) -> f64 {
    if area <= 5.0 {
        area
    } else {
        let x = 1.0 - (area - 5.0) / 10.0;
        5.0 * x.max(1e-9).powf(-2.0)
    }
}

impl Workload {
    /// Generates the workload of `config`.
    pub fn generate(mut config: WorkloadConfig) -> Workload {
        // On the minute: the same seed gives the same minutes, the same windows and the same
        // figures whenever it runs.
        config.start_ms -= config.start_ms.rem_euclid(MINUTE);
        let mut rng = SampleRng::new(config.seed);
        let end = config.start_ms + config.duration_ms;
        let day = 24.0 * 60.0 * MINUTE as f64;
        let mut posts = Vec::new();
        // Posts published up to 2 hours before the start still have their tails in the span.
        let window = (config.duration_ms + 120 * MINUTE) as f64;
        let per_account = config.posts_per_account_per_day * window / day;
        for a in 0..config.accounts {
            let n = poisson(&mut rng, per_account).max(1);
            for j in 0..n {
                let published =
                    config.start_ms - 120 * MINUTE + (uniform(&mut rng) * window) as i64;
                // Whole seconds after the start: the same events for any start (a start at
                // another millisecond must not draw another workload).
                let published = published - (published - config.start_ms).rem_euclid(1000);
                let content_type = match rng.below(100) {
                    0..=49 => ContentType::Feed,
                    50..=84 => ContentType::Reels,
                    _ => ContentType::Story,
                };
                let cta = rng.chance(config.cta_share).then(|| {
                    (
                        format!("camp-{a}-{j}"),
                        KEYWORDS[rng.below(KEYWORDS.len() as u64) as usize].to_owned(),
                    )
                });
                posts.push(Post {
                    account: a,
                    account_id: format!("acct-{a}"),
                    content_id: format!("post-{a}-{j}"),
                    content_type,
                    published_at: published,
                    amplitude: pareto(&mut rng, config.amplitude_min, config.amplitude_alpha)
                        .min(config.amplitude_max),
                    cta,
                });
            }
        }

        let mut drafts: Vec<Draft> = Vec::new();
        let mut spikes = Vec::new();
        let mut serial = 0u64;
        let mut next_serial = || {
            serial += 1;
            serial
        };
        for (pi, post) in posts.iter().enumerate() {
            if post.published_at >= config.start_ms && post.published_at < end {
                drafts.push(Draft {
                    post: pi as u32,
                    account: post.account,
                    kind: Kind::PostPublished,
                    action: Action::Add,
                    actor: u32::MAX,
                    serial: next_serial(),
                    event_time: post.published_at,
                    deliver_at: post.published_at,
                    keyword: false,
                    parent: 0,
                    thread: 0,
                    value_cents: 0,
                    duplicate: false,
                    funnel: false,
                });
            }
            let from =
                (config.start_ms.max(post.published_at) - post.published_at) as f64 / MINUTE as f64;
            let to = (end.min(post.published_at + 24 * 60 * MINUTE) - post.published_at) as f64
                / MINUTE as f64;
            if to <= from {
                continue;
            }
            let (lo, hi) = (phi_integral(from), phi_integral(to));
            let n = poisson(&mut rng, post.amplitude * (hi - lo));
            let mut times: Vec<i64> = (0..n)
                .map(|_| {
                    post.published_at
                        + (phi_inverse(lo + uniform(&mut rng) * (hi - lo)) * MINUTE as f64) as i64
                })
                .collect();
            if rng.chance(config.spike_share) {
                // About a third of the spikes hit a post in its first quarter hour (a launch that
                // takes off), the rest later in its life.
                let young = post.published_at >= config.start_ms && rng.chance(0.35);
                let onset = if young {
                    post.published_at + (5 + rng.below(6)) as i64 * MINUTE
                } else {
                    post.published_at.max(config.start_ms)
                        + 30 * MINUTE
                        + rng.below(240) as i64 * MINUTE
                };
                // Whole minutes after the start: the same workload for any start.
                let onset = onset - (onset - config.start_ms).rem_euclid(MINUTE);
                let length = (5 + rng.below(16)) as i64 * MINUTE;
                if onset + length <= end {
                    let age_min = (onset - post.published_at) as f64 / MINUTE as f64;
                    let base = post.amplitude
                        * if age_min <= 5.0 {
                            1.0
                        } else {
                            (age_min / 5.0).powf(-1.5)
                        };
                    let multiplier = 10.0 + uniform(&mut rng) * 40.0;
                    let rate = multiplier * base.max(1.0);
                    let extra = poisson(&mut rng, rate * (length / MINUTE) as f64);
                    times.extend(
                        (0..extra).map(|_| onset + (uniform(&mut rng) * length as f64) as i64),
                    );
                    spikes.push(Spike {
                        account_id: post.account_id.clone(),
                        content_id: post.content_id.clone(),
                        start_ms: onset,
                        end_ms: onset + length,
                        multiplier,
                        rate_per_minute: rate,
                    });
                }
            }
            // A person has one reaction on a post (a second would be a change of reaction):
            // who reacted to this post.
            let mut reacted: BTreeSet<u32> = BTreeSet::new();
            // The post's top-level comments so far: replies answer one of the latest.
            let mut roots: Vec<u64> = Vec::new();
            times.sort_unstable();
            for t in times {
                let roll = rng.below(100);
                let kind = match roll {
                    0..=59 => Kind::PostReaction,
                    60..=84 => Kind::Comment,
                    85..=92 => Kind::StoryReply,
                    93..=97 => Kind::DmIn,
                    _ => Kind::Mention,
                };
                // Heavy-tailed: a few fans engage often, most people once; the busiest person
                // has a few percent of an account's engagement (not the 15 % a unit scale gives,
                // which made one person comment a viral post a dozen times a minute).
                let mut actor = ((pareto(&mut rng, 1.0, 1.1) * 10.0) as u32).min(10_000_000) * 7
                    + rng.below(7) as u32;
                // Someone who reacted already: the reaction is somebody new's.
                if kind == Kind::PostReaction && !reacted.insert(actor) {
                    actor = 100_000_000 + reacted.len() as u32;
                    reacted.insert(actor);
                }
                // Facebook's feed webhooks give whole seconds (`created_time`): that is the
                // event's time.
                let t = if kind == Kind::PostReaction {
                    t - t.rem_euclid(1000)
                } else {
                    t
                };
                let keyword = kind == Kind::Comment && post.cta.is_some() && rng.chance(0.15);
                let s = next_serial();
                let parent = if kind == Kind::Comment && !roots.is_empty() && rng.chance(0.2) {
                    let back = rng.below(roots.len().min(5) as u64) as usize;
                    roots[roots.len() - 1 - back]
                } else {
                    0
                };
                if kind == Kind::Comment && parent == 0 {
                    roots.push(s);
                }
                let d = Draft {
                    post: pi as u32,
                    account: post.account,
                    kind,
                    action: Action::Add,
                    actor,
                    serial: s,
                    event_time: t,
                    deliver_at: t,
                    keyword,
                    parent,
                    thread: if parent != 0 { parent } else { s },
                    value_cents: 0,
                    duplicate: false,
                    funnel: false,
                };
                drafts.push(d);
                // Follow-ups: removes, brand answers, the CTA funnel.
                if kind == Kind::PostReaction && rng.chance(0.03) {
                    drafts.push(Draft {
                        action: Action::Remove,
                        event_time: t + (1 + rng.below(600)) as i64 * 1000,
                        serial: next_serial(),
                        ..d
                    });
                }
                if kind == Kind::Comment && rng.chance(0.01) {
                    drafts.push(Draft {
                        action: Action::Remove,
                        event_time: t + (1 + rng.below(1800)) as i64 * 1000,
                        ..d
                    });
                }
                // Moderation within seconds (often delivered before the comment itself), some
                // of it undone.
                if kind == Kind::Comment && rng.chance(0.02) {
                    let hidden = t + (2 + rng.below(38)) as i64 * 1000;
                    drafts.push(Draft {
                        action: Action::Hide,
                        event_time: hidden,
                        ..d
                    });
                    if rng.chance(0.5) {
                        drafts.push(Draft {
                            action: Action::Unhide,
                            event_time: hidden + (5 + rng.below(115)) as i64 * 1000,
                            ..d
                        });
                    }
                }
                if kind == Kind::Comment && rng.chance(0.3) {
                    let delay = (uniform(&mut rng).max(1e-9).ln() * -600.0) as i64 * 1000 + 5000;
                    drafts.push(Draft {
                        kind: Kind::BrandReply,
                        actor: u32::MAX,
                        parent: s,
                        serial: next_serial(),
                        event_time: t + delay,
                        keyword: false,
                        ..d
                    });
                }
                if kind == Kind::DmIn && rng.chance(0.6) {
                    let delay = (uniform(&mut rng).max(1e-9).ln() * -300.0) as i64 * 1000 + 3000;
                    drafts.push(Draft {
                        kind: Kind::DmOut,
                        serial: next_serial(),
                        event_time: t + delay,
                        ..d
                    });
                }
                if keyword {
                    let mut at = t;
                    let stages = [
                        (Kind::PrivateReplySent, 0.95, 5_000, 25_000),
                        (Kind::DmRead, 0.70, 10_000, 600_000),
                        (Kind::DmPostback, 0.60, 5_000, 300_000),
                        (Kind::LinkClick, 0.25, 5_000, 900_000),
                        (Kind::Conversion, 0.05, 60_000, 3_600_000),
                    ];
                    for (stage, p, min, spread) in stages {
                        if !rng.chance(p) {
                            break;
                        }
                        at += min + rng.below(spread) as i64;
                        let value_cents = if stage == Kind::Conversion {
                            1_500 + rng.below(18_500) as u32
                        } else {
                            0
                        };
                        // Engaged: a postback (a button, a quick reply), or a plain DM back.
                        let kind = if stage == Kind::DmPostback && rng.chance(0.4) {
                            Kind::DmIn
                        } else {
                            stage
                        };
                        drafts.push(Draft {
                            kind,
                            serial: next_serial(),
                            event_time: at,
                            keyword: false,
                            value_cents,
                            // The brand's private reply answers the trigger comment.
                            parent: if stage == Kind::PrivateReplySent {
                                s
                            } else {
                                0
                            },
                            funnel: true,
                            ..d
                        });
                    }
                }
            }
        }
        drafts.retain(|d| d.event_time >= config.start_ms && d.event_time < end);

        // Delivery: out of order within max_disorder, some late, rare very late, duplicates.
        let mut late_within = 0u64;
        let mut dups = Vec::new();
        for d in &mut drafts {
            d.deliver_at = d.event_time + rng.below(config.max_disorder_ms.max(1) as u64) as i64;
            // Very late only where the delivery still falls inside the span: after its end no
            // later traffic would move the watermark past it, and it would not be too late.
            let very_late_at = d.event_time + config.allowed_lateness_ms + 60 * MINUTE;
            if very_late_at < end - 2 * MINUTE && rng.chance(config.very_late_rate) {
                d.deliver_at = very_late_at;
            } else if rng.chance(config.late_rate) {
                d.deliver_at = d.event_time + (5 + rng.below(45)) as i64 * MINUTE;
                late_within += 1;
            }
            if rng.chance(config.duplicate_rate) {
                dups.push(Draft {
                    duplicate: true,
                    deliver_at: d.deliver_at + rng.below(60_000) as i64,
                    ..*d
                });
            }
            // Meta retries for up to 36 h; an Instagram comment comes back with the time of
            // the retry.
            if Self::delivery_timed(d.kind) && rng.chance(config.late_redelivery_rate) {
                let again = d.deliver_at + (30 + rng.below(330)) as i64 * MINUTE;
                if again >= end {
                    continue;
                }
                dups.push(Draft {
                    duplicate: true,
                    event_time: again,
                    deliver_at: again,
                    ..*d
                });
            }
        }
        // A very late delivery after the end of the span would never be seen: keep it in.
        let unique = drafts.len() as u64;
        drafts.extend(dups);
        drafts.sort_by_key(|d| (d.deliver_at, d.serial, d.duplicate));
        let mut w = Workload {
            config,
            posts,
            drafts,
            expected: Expected::default(),
        };
        // Every delivery too late is dead-lettered, a duplicate of one too: listed per delivery.
        let mut too_late: Vec<String> = Vec::new();
        for d in &w.drafts {
            if d.deliver_at >= d.event_time + w.config.allowed_lateness_ms + 60 * MINUTE {
                too_late.push(w.event_id(d));
            }
        }
        w.expected = w.compute_expected(unique, late_within, too_late, spikes);
        w
    }

    /// Number of deliveries (events including duplicates).
    pub fn len(&self) -> usize {
        self.drafts.len()
    }

    /// Whether there is nothing to deliver.
    pub fn is_empty(&self) -> bool {
        self.drafts.is_empty()
    }

    /// When delivery `i` happens (ms), for live pacing.
    pub fn deliver_at(&self, i: usize) -> i64 {
        self.drafts[i].deliver_at
    }

    /// Kinds Meta times only by their delivery (Instagram comments and mentions): their ids
    /// leave the time out, as ingest's do.
    fn delivery_timed(kind: Kind) -> bool {
        matches!(
            kind,
            Kind::Comment | Kind::BrandReply | Kind::LiveComment | Kind::Mention
        )
    }

    fn event_id(&self, d: &Draft) -> String {
        if Self::delivery_timed(d.kind) {
            format!("gen:{}:{}:{}", d.serial, d.kind, d.action)
        } else {
            format!("gen:{}:{}:{}:{}", d.serial, d.kind, d.action, d.event_time)
        }
    }

    /// Delivery `i`, in delivery order, as an event.
    pub fn event(&self, i: usize) -> EngagementEvent {
        let d = &self.drafts[i];
        let post = &self.posts[d.post as usize];
        let brand = d.actor == u32::MAX
            || matches!(
                d.kind,
                Kind::DmOut | Kind::PrivateReplySent | Kind::BrandReply | Kind::PostPublished
            );
        let platform = match d.kind {
            Kind::PostReaction | Kind::Share => Platform::Facebook,
            Kind::DmIn | Kind::DmOut | Kind::DmRead | Kind::DmPostback | Kind::PrivateReplySent => {
                Platform::Messenger
            }
            Kind::LinkClick | Kind::Conversion | Kind::PostPublished => Platform::FirstParty,
            _ => Platform::Instagram,
        };
        let mut e = EngagementEvent::new(
            self.event_id(d),
            platform,
            d.kind,
            d.action,
            post.account_id.clone(),
            d.event_time,
        );
        let user = format!("user-{}-{}", d.account, d.actor);
        e.actor_id = (d.kind != Kind::PostPublished).then(|| user.clone());
        e.is_brand_actor = brand;
        e.received_at = d.deliver_at;
        e.event_time_source = match platform {
            Platform::FirstParty => EventTimeSource::FirstParty,
            _ if Self::delivery_timed(d.kind) => EventTimeSource::PlatformDelivery,
            _ => EventTimeSource::PlatformEvent,
        };
        let on_post = !matches!(
            d.kind,
            Kind::DmIn
                | Kind::DmOut
                | Kind::DmRead
                | Kind::DmPostback
                | Kind::LinkClick
                | Kind::Conversion
                | Kind::PrivateReplySent
        );
        if on_post {
            e.content_id = Some(post.content_id.clone());
            e.content_type = Some(post.content_type);
            // Platform webhooks carry no publication time: only the first-party POST_PUBLISHED
            // (and first-party events) do, and it may arrive after the first interactions.
            if platform == Platform::FirstParty || d.kind == Kind::PostPublished {
                e.content_published_at = Some(post.published_at);
            }
        }
        match d.kind {
            Kind::Comment | Kind::BrandReply => {
                e.object_id = Some(format!("c{}", d.serial));
                e.parent_id = (d.parent != 0).then(|| format!("c{}", d.parent));
                e.thread_id = Some(format!("c{}", d.thread));
                e.text = Some(match (&post.cta, d.keyword) {
                    (Some((_, kw)), true) => format!("{} please!", kw.to_lowercase()),
                    _ => COMMENT_TEXTS[(d.serial % COMMENT_TEXTS.len() as u64) as usize].to_owned(),
                });
            }
            Kind::StoryReply | Kind::DmIn | Kind::DmOut => {
                e.object_id = Some(format!("m{}", d.serial));
                e.thread_id = Some(user.clone());
                e.text = Some(
                    COMMENT_TEXTS[(d.serial % COMMENT_TEXTS.len() as u64) as usize].to_owned(),
                );
            }
            Kind::PostReaction => {
                e.reaction =
                    Some(["LIKE", "LOVE", "WOW", "HAHA"][(d.actor % 4) as usize].to_owned())
            }
            _ => {}
        }
        // The funnel's stages as the platforms and the brand's systems report them: the brand's
        // private reply names the comment it answers (not the campaign); reads, postbacks and
        // DMs name nothing; the first-party click knows its campaign, the conversion only its
        // click.
        if let (Some((campaign, _)), true) = (&post.cta, d.funnel) {
            e.thread_id = Some(user.clone());
            match d.kind {
                Kind::PrivateReplySent => {
                    e.actor_id = Some(format!("brand-{}", d.account));
                    e.parent_id = Some(format!("c{}", d.parent));
                }
                Kind::LinkClick => {
                    e.cta_campaign_id = Some(campaign.clone());
                    e.click_id = Some(format!("clk-{}-{}-{}", d.account, d.actor, campaign));
                }
                Kind::Conversion => {
                    e.click_id = Some(format!("clk-{}-{}-{}", d.account, d.actor, campaign));
                    e.value = Some(f64::from(d.value_cents) / 100.0);
                    e.currency = Some("EUR".into());
                }
                _ => {}
            }
        }
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> WorkloadConfig {
        WorkloadConfig {
            accounts: 20,
            duration_ms: 3 * 60 * MINUTE,
            ..Default::default()
        }
    }

    #[test]
    fn default_size_suits_a_few_minutes_run() {
        // 50 accounts over 6 hours of event time: 66 posts, about 7,000 deliveries.
        let w = Workload::generate(WorkloadConfig::default());
        assert!((3_000..20_000).contains(&w.len()), "{} deliveries", w.len());
        assert!(!w.expected.spikes.is_empty() && !w.expected.funnels.is_empty());
    }

    #[test]
    fn seeded_and_reproducible() {
        let a = Workload::generate(small());
        let b = Workload::generate(small());
        assert_eq!(a.len(), b.len());
        for i in (0..a.len()).step_by(97) {
            assert_eq!(a.event(i), b.event(i));
        }
        let c = Workload::generate(WorkloadConfig { seed: 7, ..small() });
        assert_ne!(a.len(), c.len());
        // Another start (here "now", at any millisecond) moves the same workload in time.
        let start = small().start_ms + 3 * 60 * MINUTE + 115;
        let d = Workload::generate(WorkloadConfig {
            start_ms: start,
            ..small()
        });
        assert_eq!(a.len(), d.len());
        assert_eq!(a.expected.spikes.len(), d.expected.spikes.len());
        let shift = d.config.start_ms - a.config.start_ms;
        assert_eq!(shift, 3 * 60 * MINUTE, "the start is rounded to its minute");
        // The same events, moved (delivery order may differ where Facebook's whole seconds
        // round differently): compared sorted, outside the injected spikes.
        let spiked = |e: &EngagementEvent| {
            a.expected
                .spikes
                .iter()
                .any(|s| Some(&s.content_id) == e.content_id.as_ref())
        };
        let key = |e: &EngagementEvent, t: i64| {
            (
                e.account_id.clone(),
                e.content_id.clone(),
                e.kind,
                e.action,
                e.actor_id.clone(),
                t,
            )
        };
        let mut xs: Vec<_> = (0..a.len())
            .map(|i| a.event(i))
            .filter(|e| !spiked(e))
            .map(|e| key(&e, e.event_time + shift))
            .collect();
        let mut ys: Vec<_> = (0..d.len())
            .map(|i| d.event(i))
            .filter(|e| !spiked(e))
            .map(|e| key(&e, e.event_time))
            .collect();
        assert_eq!(xs.len(), ys.len());
        // Facebook reactions are in whole seconds of the clock, whatever the start: their
        // second may round the other way (compared without their time).
        for v in [&mut xs, &mut ys] {
            for k in v.iter_mut() {
                if k.2 == Kind::PostReaction {
                    k.5 = 0;
                }
            }
            v.sort();
        }
        assert!(xs == ys, "the same events, moved by {shift} ms");
    }

    #[test]
    fn events_are_valid_and_in_delivery_order() {
        let w = Workload::generate(small());
        assert!(w.len() > 500, "{} deliveries", w.len());
        let now = w.config.start_ms + w.config.duration_ms + 4 * 60 * MINUTE;
        for i in 0..w.len() {
            let e = w.event(i);
            e.validate(&banter_model::ValidationContext::at(now))
                .unwrap_or_else(|err| panic!("{e:?}: {err}"));
            if i > 0 {
                assert!(w.deliver_at(i) >= w.deliver_at(i - 1));
            }
        }
    }

    #[test]
    fn mix_faults_and_funnels_are_realistic() {
        let w = Workload::generate(WorkloadConfig {
            accounts: 200,
            ..Default::default()
        });
        let x = &w.expected;
        let k = |n: &str| *x.kinds.get(n).unwrap_or(&0) as f64;
        let base = k("POST_REACTION") + k("COMMENT") + k("STORY_REPLY") + k("DM_IN") + k("MENTION");
        let share = |n: &str| k(n) / base;
        assert!(
            (0.52..0.66).contains(&share("POST_REACTION")),
            "{:?}",
            x.kinds
        );
        assert!((0.20..0.30).contains(&share("COMMENT")), "{:?}", x.kinds);
        let dup = x.duplicates as f64 / x.unique_events as f64;
        assert!((0.005..0.02).contains(&dup), "duplicates {dup}");
        assert!(!x.funnels.is_empty());
        let (t, s): (u64, u64) = x
            .funnels
            .values()
            .map(|f| (f.triggered, f.private_reply_sent))
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        assert!(
            s <= t && s as f64 >= 0.85 * t as f64,
            "{t} triggered, {s} sent"
        );
        assert!(!x.spikes.is_empty());
        // Out of order: some delivery precedes an earlier event time.
        let mut inversions = 0;
        let mut max_seen = i64::MIN;
        for i in 0..w.len() {
            let t = w.event(i).event_time;
            if t < max_seen {
                inversions += 1;
            }
            max_seen = max_seen.max(t);
        }
        assert!(inversions > 0);
    }

    #[test]
    fn expected_counts_match_the_events() {
        let w = Workload::generate(small());
        let mut seen = BTreeSet::new();
        let too_late: BTreeSet<_> = w.expected.too_late.iter().cloned().collect();
        let mut per_account: BTreeMap<String, i64> = BTreeMap::new();
        for i in 0..w.len() {
            let e = w.event(i);
            if !seen.insert(e.event_id.clone()) || too_late.contains(&e.event_id) {
                continue;
            }
            *per_account.entry(e.account_id.clone()).or_default() += e.interaction_delta();
        }
        for (acct, minutes) in &w.expected.account_minutes {
            assert_eq!(
                per_account.get(acct).copied().unwrap_or(0),
                minutes.values().sum::<i64>(),
                "{acct}"
            );
        }
    }
}
