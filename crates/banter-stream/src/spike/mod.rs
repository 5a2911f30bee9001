//! Engagement spike detection on the 1-minute interaction counts of accounts and posts.
//!
//! * **Baseline.** Per key an EWMA of the minute counts (mean and variance, λ = 0.2); a minute
//!   without a row counts 0. z = (x − μ) / max(σ, √μ, 1): the Poisson floor keeps a quiet key
//!   from firing on noise.
//! * **Firing.** z ≥ 3 with x ≥ 10 in 2 of the last 3 minutes fires; the onset is the first of
//!   those hits. Hits do not feed the baseline (the spike would become its own baseline), unless
//!   the alert has been firing longer than `max_firing_minutes`: then the level is the new normal.
//! * **Resolving.** After `resolve_minutes` minutes in a row that are not unusual (z below the
//!   threshold; `min_count` is for firing, so a spike that eases to a few interactions a
//!   minute above a quiet baseline stays one alert) the alert resolves; no new alert for the
//!   key during `cooldown_minutes`: one spike, one alert.
//! * **Young posts.** A new post has no trend of its own: every launch would look like a spike.
//!   For its first `young_minutes` a post is judged against the account's recent posts at the
//!   same age (an EWMA across posts of ln(1 + count) in each minute of age, once
//!   `young_min_posts` were seen; a launch about 20 times the account's usual), and from its
//!   fourth minute also against its own level since its first full minute (an EWMA of its
//!   counts, `young_own_minutes` of them: a launch that takes off, whatever the account's
//!   history); the stronger evidence counts. The account's own series leaves out the posts in
//!   that period. After it, the post's own EWMA — fed from its first minute, its unusual
//!   minutes left out — follows its decay.
//! * **Determinism.** Minutes are judged when the engine closes them (first emission; late
//!   corrections do not re-judge), keys in a fixed order, so a replay judges the same. The state
//!   is a changelog written in the transaction of the outputs it belongs to; minutes before
//!   [`Detector::done_below`] were judged before a restore and are skipped.

use std::collections::BTreeMap;

use banter_model::{AlertState, Rollup, SmolStr, SpikeAlert, WindowKind};
use serde::{Deserialize, Serialize};

use crate::changelog::{
    Change, ChangelogCell, ChangelogMap, Entry, KeyError, StateError, StateKey, Store, TableId,
};
use crate::operator::{Operator, Time};
use crate::table::{Map, Set};
use crate::time::MINUTE;

pub use crate::config::SpikeConfig;

#[cfg(test)]
mod tests;

/// An exponentially weighted mean and variance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Ewma {
    /// Mean.
    #[serde(with = "bits")]
    pub mean: f64,
    /// Variance.
    #[serde(with = "bits")]
    pub var: f64,
    /// Observations folded in (saturating).
    pub n: u32,
}

/// f64 in the changelog as its bits: a restore must continue with exactly the same numbers
/// (decimal text does not always read back to the same double).
mod bits {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(v.to_bits())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        u64::deserialize(d).map(f64::from_bits)
    }
}

impl Ewma {
    fn update(&mut self, x: f64, lambda: f64) {
        if self.n == 0 {
            self.mean = x;
            self.var = 0.0;
        } else {
            let diff = x - self.mean;
            let incr = lambda * diff;
            self.mean += incr;
            self.var = (1.0 - lambda) * (self.var + diff * incr);
        }
        self.n = self.n.saturating_add(1);
    }

    fn sigma(&self) -> f64 {
        self.var.max(0.0).sqrt()
    }
}

/// What the detector judges: an account, or one of its posts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SpikeKey {
    /// A post (declared first: within a minute, posts sort before their accounts).
    Post {
        /// The account.
        account: String,
        /// The post.
        content: String,
    },
    /// An account, all its interactions.
    Account(String),
}

impl SpikeKey {
    fn account(&self) -> &str {
        match self {
            SpikeKey::Post { account, .. } | SpikeKey::Account(account) => account,
        }
    }

    fn content(&self) -> Option<&str> {
        match self {
            SpikeKey::Post { content, .. } => Some(content),
            SpikeKey::Account(_) => None,
        }
    }
}

impl StateKey for SpikeKey {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            SpikeKey::Post { account, content } => {
                out.push(0);
                (account.clone(), content.clone()).encode(out);
            }
            SpikeKey::Account(account) => {
                out.push(1);
                account.encode(out);
            }
        }
    }

    fn decode(input: &mut &[u8]) -> Result<Self, KeyError> {
        let (&variant, rest) = input.split_first().ok_or(KeyError("empty key"))?;
        *input = rest;
        match variant {
            0 => Ok(SpikeKey::Post {
                account: String::decode(input)?,
                content: String::decode(input)?,
            }),
            1 => Ok(SpikeKey::Account(String::decode(input)?)),
            _ => Err(KeyError("unknown spike key variant")),
        }
    }
}

/// The firing alert of a key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Firing {
    alert_id: String,
    started_at: i64,
    /// Minutes in a row without a hit.
    below: u32,
    /// First of them.
    below_since: i64,
}

/// What the detector keeps per account or post.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct KeyState {
    baseline: Ewma,
    /// The last minute judged.
    last_minute: Option<i64>,
    /// Post publication time, when known.
    published: Option<i64>,
    /// Hits of the last minutes, newest in bit 0.
    hits: u8,
    /// Minutes of those hits, newest last.
    hit_minutes: Vec<i64>,
    firing: Option<Firing>,
    /// A post whose level is part of its account's baseline (it is past its young period).
    joined: bool,
    /// No new alert before this minute.
    quiet_until: Option<i64>,
    /// A young post's own level: its minutes from its first full one (age 1), unusual ones
    /// left out.
    #[serde(default)]
    launch: Ewma,
}

impl KeyState {
    /// A key first seen now, after `quiet` judged minutes without interactions.
    fn new(quiet: u32) -> Self {
        KeyState {
            baseline: Ewma {
                mean: 0.0,
                var: 0.0,
                n: quiet,
            },
            last_minute: None,
            published: None,
            hits: 0,
            hit_minutes: Vec::new(),
            firing: None,
            quiet_until: None,
            joined: false,
            launch: Ewma::default(),
        }
    }

    /// Judged every minute, with or without a row.
    fn is_hot(&self) -> bool {
        self.firing.is_some() || self.hits != 0
    }
}

/// What judging a key's minute found out about it.
enum Judged {
    /// A post in its young period: left out of its account's series.
    Young,
    /// A post that just left its young period, with its baseline.
    Joins(Ewma),
    /// Anything else.
    Other,
}

/// One closed minute's interaction count of an account or a post: what the detector
/// consumes (from the window engine's MINUTE rows).
#[derive(Debug, Clone, PartialEq)]
pub struct MinuteCount {
    /// The account.
    pub account_id: SmolStr,
    /// The post; None for the account's own count.
    pub content_id: Option<SmolStr>,
    /// Start of the minute.
    pub minute: i64,
    /// Interactions in it.
    pub interactions: i64,
    /// A correction of a minute emitted before (late events): not judged again.
    pub correction: bool,
    /// The post's publication time, when known.
    pub published_at: Option<i64>,
}

impl MinuteCount {
    /// The count of a MINUTE row (None for other windows), with the post's publication time.
    pub fn of(r: &Rollup, published_at: Option<i64>) -> Option<Self> {
        (r.window == WindowKind::Minute).then(|| MinuteCount {
            account_id: r.account_id.clone(),
            content_id: r.content_id.clone(),
            minute: r.window_start,
            interactions: r.interactions,
            correction: r.late_events > 0,
            published_at,
        })
    }
}

/// A minute count waiting for its minute to be judged.
#[derive(Debug, Clone)]
struct Waiting {
    x: i64,
    published: Option<i64>,
}

/// One minute's counts of one account: its posts' and its own.
#[derive(Debug, Clone, Default)]
struct AccountRows {
    posts: Vec<(SmolStr, Waiting)>,
    account: Option<Waiting>,
}

/// How far judging got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct Meta {
    /// Every minute before this one was judged.
    done_below: Option<i64>,
    /// The first minute judged: a key first seen later had no interactions before.
    first_minute: Option<i64>,
}

const KEYS: TableId = TableId {
    tag: b'k',
    name: "spike key",
};
const PROFILES: TableId = TableId {
    tag: b'p',
    name: "spike young-post profile",
};
const META: TableId = TableId {
    tag: b'm',
    name: "spike progress",
};

/// Spike detection of one partition.
#[derive(Debug, Clone)]
pub struct Detector {
    cfg: SpikeConfig,
    keys: ChangelogMap<SpikeKey, KeyState>,
    /// Per account: the EWMA across posts of the count in each minute of age.
    profiles: ChangelogMap<String, Vec<Ewma>>,
    meta: ChangelogCell<Meta>,
    /// Counts by minute and account.
    pending: BTreeMap<i64, Map<String, AccountRows>>,
    /// Keys judged every minute, with or without a row: firing or with recent hits.
    hot: Set<SpikeKey>,
    /// Within one minute: the baselines of the account's posts that leave their young period.
    joining: Map<(String, i64), Ewma>,
}

impl Detector {
    /// A detector without history.
    pub fn new(cfg: SpikeConfig) -> Self {
        Detector {
            cfg,
            keys: ChangelogMap::new(KEYS),
            profiles: ChangelogMap::new(PROFILES),
            meta: ChangelogCell::new(META, Meta::default()),
            pending: BTreeMap::new(),
            hot: Set::default(),
            joining: Map::default(),
        }
    }

    /// Every minute before this one was judged (None before the first).
    pub fn done_below(&self) -> Option<i64> {
        self.meta.get().done_below
    }

    /// Keys with a baseline.
    pub fn keys(&self) -> usize {
        self.keys.len()
    }

    /// Alerts firing now.
    pub fn firing(&self) -> usize {
        self.keys.values().filter(|k| k.firing.is_some()).count()
    }

    /// Takes one minute count as it is emitted. Corrections of judged minutes (late events)
    /// and counts of minutes judged before a restore are ignored; false for those.
    pub fn observe(&mut self, c: &MinuteCount) -> bool {
        if c.correction || self.done_below().is_some_and(|d| c.minute < d) {
            return false;
        }
        let w = Waiting {
            x: c.interactions,
            published: c.published_at,
        };
        let minute = self.pending.entry(c.minute).or_default();
        match &c.content_id {
            None if self.cfg.enabled && self.cfg.accounts => {
                minute.entry_ref(&*c.account_id).or_default().account = Some(w);
            }
            Some(content) if self.cfg.enabled && self.cfg.posts => {
                minute
                    .entry_ref(&*c.account_id)
                    .or_default()
                    .posts
                    .push((content.clone(), w));
            }
            _ => return false,
        }
        true
    }

    /// Judges every minute before `closed_below` (the engine's: all their rows were observed).
    pub fn close(&mut self, closed_below: i64, out: &mut Vec<SpikeAlert>) {
        let mut done = self.meta.get().done_below;
        if done.is_some_and(|d| closed_below <= d) {
            return;
        }
        loop {
            // The next minute with counts, or the next minute after the last judged while keys
            // are hot.
            let next_rows = self.pending.keys().next().copied();
            let next_hot = done.filter(|_| !self.hot.is_empty());
            let m = match (next_rows, next_hot) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => match a.or(b) {
                    Some(m) => m,
                    None => break,
                },
            };
            if m >= closed_below {
                break;
            }
            let rows = self.pending.remove(&m).unwrap_or_default();
            self.judge_minute(m, rows, out);
            done = Some(m + MINUTE);
        }
        self.meta.get_mut().done_below = Some(done.map_or(closed_below, |d| d.max(closed_below)));
    }

    fn judge_minute(&mut self, m: i64, rows: Map<String, AccountRows>, out: &mut Vec<SpikeAlert>) {
        // Accounts are independent; within one, its posts (in a fixed order) come before the
        // account row: young posts are left out of the account's series.
        let mut judged: Set<SpikeKey> = Set::default();
        for (account, mut a) in rows {
            a.posts.sort_unstable_by(|x, y| x.0.cmp(&y.0));
            let mut young_sum = 0i64;
            for (content, w) in a.posts {
                let key = SpikeKey::Post {
                    account: account.clone(),
                    content: content.to_string(),
                };
                match self.judge(&key, m, w.x, w.published, out) {
                    Judged::Young => young_sum += w.x,
                    Judged::Joins(b) => {
                        let e = self.joining.entry((account.clone(), m)).or_default();
                        e.mean += b.mean;
                        e.var += b.var;
                    }
                    Judged::Other => {}
                }
                if !self.hot.is_empty() {
                    judged.insert(key);
                }
            }
            if let Some(w) = a.account {
                let key = SpikeKey::Account(account.clone());
                self.judge(&key, m, w.x - young_sum, w.published, out);
                if !self.hot.is_empty() {
                    judged.insert(key);
                }
            }
        }
        // Hot keys without a row count 0, in a fixed order.
        let mut hot: Vec<SpikeKey> = self
            .hot
            .iter()
            .filter(|k| !judged.contains(*k))
            .cloned()
            .collect();
        hot.sort_unstable();
        for key in hot {
            self.judge(&key, m, 0, None, out);
        }
        // Levels of joining posts whose account has no row this minute: the account's next
        // row would see them anyway; nothing to carry over.
        self.joining.clear();
        if m.rem_euclid(60 * MINUTE) == 0 {
            self.forget(m);
        }
    }

    /// Judges key's minute m with count x.
    fn judge(
        &mut self,
        key: &SpikeKey,
        m: i64,
        x: i64,
        published: Option<i64>,
        out: &mut Vec<SpikeAlert>,
    ) -> Judged {
        let cfg = self.cfg;
        let first_minute = match self.meta.get().first_minute {
            Some(f) => f,
            None => {
                self.meta.get_mut().first_minute = Some(m);
                m
            }
        };
        // A key seen for the first time had no interactions in the minutes judged before.
        let quiet = u32::try_from((m - first_minute) / MINUTE).unwrap_or(u32::MAX);
        let st = self
            .keys
            .get_or_insert_with(key.clone(), || KeyState::new(quiet));
        if st.published.is_none() {
            st.published = published;
        }
        // Minutes without a row since the last judged one count 0.
        if let Some(last) = st.last_minute.filter(|&l| m > l + MINUTE) {
            let gap = (m - last) / MINUTE - 1;
            for _ in 0..gap.min(200) {
                st.baseline.update(0.0, cfg.lambda);
            }
            st.hits = st.hits.checked_shl(gap.min(8) as u32).unwrap_or(0);
        }
        st.last_minute = Some(m);
        // Minutes of age: the minute of publication is age 0.
        let age = st
            .published
            .map(|p| ((m - (p - p.rem_euclid(MINUTE))) / MINUTE).max(0));
        let is_post = key.content().is_some();
        let young = is_post && age.is_some_and(|a| a < cfg.young_minutes);
        // A post leaving its young period brings its level into the account's series.
        let joins = is_post && !young && !st.joined;
        if joins {
            st.joined = true;
        }
        let joining = (joins && age.is_some()).then_some(st.baseline);
        let add = match key {
            SpikeKey::Account(account) => self.joining.remove(&(account.clone(), m)),
            SpikeKey::Post { .. } => None,
        };
        if let Some(add) = add {
            st.baseline.mean += add.mean;
            st.baseline.var += add.var;
        }
        let xf = x as f64;
        // Mature keys: their own trend, in counts (Poisson floor). Young posts: against the
        // account's recent posts at the same age, in log space (reach is heavy-tailed; a
        // launch far above the account's usual launches), and from their fourth minute against
        // their own level since their first full minute, in counts (a launch that takes off
        // after its start: what a small account's few posts cannot show).
        let counts_z = |r: &Ewma| {
            let sigma = r.sigma();
            let scale = sigma.max(r.mean.max(0.0).sqrt()).max(1.0);
            ((xf - r.mean) / scale, r.mean, sigma)
        };
        // A launch level from a few minutes is itself uncertain: x − μ̂ varies by μ (Poisson)
        // plus μ / n (the estimate's own error; n at most the EWMA's effective sample size).
        let launch_z = |r: &Ewma| {
            let n_eff = f64::from(r.n).min((2.0 - cfg.lambda) / cfg.lambda).max(1.0);
            let mean = r.mean.max(0.0);
            let scale = r.sigma().max((mean * (1.0 + 1.0 / n_eff)).sqrt()).max(1.0);
            ((xf - r.mean) / scale, r.mean, r.sigma())
        };
        let own = if young {
            (st.launch.n >= cfg.young_own_minutes).then(|| launch_z(&st.launch))
        } else if st.baseline.n >= cfg.min_history_minutes {
            Some(counts_z(&st.baseline))
        } else {
            None
        };
        let profile = if young {
            let a = age.unwrap_or(0) as usize;
            self.profiles
                .get(&key.account().to_owned())
                .and_then(|v| v.get(a))
                .filter(|e| e.n >= cfg.young_min_posts)
                .map(|r| {
                    let sigma = r.sigma();
                    let z = ((xf.max(0.0)).ln_1p() - r.mean) / sigma.max(cfg.young_log_spread);
                    (z, r.mean.exp_m1(), sigma)
                })
        } else {
            None
        };
        // The stronger evidence is reported.
        let judged = match (own, profile) {
            (Some(a), Some(b)) => Some(if b.0 > a.0 { b } else { a }),
            (a, b) => a.or(b),
        };
        let (z, mean, sigma) = judged.unwrap_or((0.0, 0.0, 0.0));
        let hit = judged.is_some() && z >= cfg.z_threshold && x >= cfg.min_count;
        // Unusual against the key's own level (even below min_count): kept out of its
        // baseline, and what keeps a firing alert up.
        let unusual_own = own.is_some_and(|o| o.0 >= cfg.z_threshold);
        let unusual = judged.is_some() && z >= cfg.z_threshold;
        let window_mask = ((1u16 << cfg.window_minutes.min(8)) - 1) as u8;
        st.hits = ((st.hits << 1) | u8::from(hit)) & window_mask;
        if hit {
            st.hit_minutes.push(m);
        }
        let oldest = m - (i64::from(cfg.window_minutes) - 1) * MINUTE;
        st.hit_minutes.retain(|&h| h >= oldest);
        let alert = |state: AlertState, id: &str, started: i64, ended: Option<i64>| SpikeAlert {
            alert_id: id.to_owned(),
            state,
            account_id: key.account().to_owned(),
            content_id: key.content().map(str::to_owned),
            window_start: m,
            window_end: m + MINUTE,
            observed: x,
            baseline_mean: mean,
            baseline_stddev: sigma,
            z_score: z,
            started_at: started,
            ended_at: ended,
            revision: if state == AlertState::Firing { 1 } else { 2 },
            emitted_at: m + MINUTE,
        };
        let mut absorb = !unusual_own;
        match &mut st.firing {
            Some(f) => {
                // Firing holds while the minutes stay unusual, even below min_count (that
                // floor is for firing): the spike is over when the count falls back.
                if unusual {
                    f.below = 0;
                    absorb = m - f.started_at >= cfg.max_firing_minutes * MINUTE;
                } else {
                    if f.below == 0 {
                        f.below_since = m;
                    }
                    f.below += 1;
                }
                if f.below >= cfg.resolve_minutes {
                    out.push(alert(
                        AlertState::Resolved,
                        &f.alert_id,
                        f.started_at,
                        Some(f.below_since),
                    ));
                    st.firing = None;
                    st.quiet_until = Some(m + MINUTE + cfg.cooldown_minutes * MINUTE);
                    st.hits = 0;
                    st.hit_minutes.clear();
                }
            }
            None => {
                if st.hits.count_ones() >= cfg.fire_hits && st.quiet_until.is_none_or(|q| m >= q) {
                    let started = st.hit_minutes.first().copied().unwrap_or(m);
                    let id = format!(
                        "{}/{}/{}",
                        key.account(),
                        key.content().unwrap_or("-"),
                        started
                    );
                    out.push(alert(AlertState::Firing, &id, started, None));
                    st.firing = Some(Firing {
                        alert_id: id,
                        started_at: started,
                        below: 0,
                        below_since: m,
                    });
                }
            }
        }
        if absorb {
            st.baseline.update(xf, cfg.lambda);
        }
        if young && age.is_some_and(|a| a >= 1) && !unusual_own {
            st.launch.update(xf, cfg.lambda);
        }
        let hot = st.is_hot();
        if young {
            let a = age.unwrap_or(0) as usize;
            let prof = self
                .profiles
                .get_or_insert_with(key.account().to_owned(), || {
                    vec![Ewma::default(); cfg.young_minutes.max(0) as usize]
                });
            if let Some(e) = prof.get_mut(a) {
                e.update(xf.max(0.0).ln_1p(), cfg.lambda);
            }
        }
        if hot {
            if !self.hot.contains(key) {
                self.hot.insert(key.clone());
            }
        } else if !self.hot.is_empty() {
            self.hot.remove(key);
        }
        if young {
            Judged::Young
        } else if let Some(b) = joining {
            Judged::Joins(b)
        } else {
            Judged::Other
        }
    }

    /// Forgets quiet keys with a baseline near zero.
    fn forget(&mut self, m: i64) {
        let horizon = m - self.cfg.forget_after_minutes * MINUTE;
        let hot = &mut self.hot;
        self.keys.retain(|k, s| {
            let gone = s.firing.is_none()
                && s.hits == 0
                && s.last_minute.is_none_or(|l| l < horizon)
                && s.quiet_until.is_none_or(|q| q < m);
            if gone {
                hot.remove(k);
            }
            !gone
        });
    }
}

impl Operator for Detector {
    type In = MinuteCount;
    type Out = SpikeAlert;
    const STORE: Store = Store::Spikes;

    fn process(&mut self, input: &MinuteCount, _offset: i64, _out: &mut Vec<SpikeAlert>) -> bool {
        self.observe(input)
    }

    fn advance(&mut self, time: Time, out: &mut Vec<SpikeAlert>) {
        self.close(time.closed_below, out);
    }

    fn write_changes(&mut self, out: &mut Vec<Change>) -> Result<(), StateError> {
        self.keys.write_changes(out)?;
        self.profiles.write_changes(out)?;
        self.meta.write_changes(out)
    }

    fn restore_entry(&mut self, entry: &Entry<'_>) -> Result<(), StateError> {
        match entry.tag() {
            t if t == KEYS.tag => self.keys.restore_entry(entry),
            t if t == PROFILES.tag => self.profiles.restore_entry(entry),
            t if t == META.tag => self.meta.restore_entry(entry),
            _ => Err(entry.unknown()),
        }
    }

    fn restored(&mut self) {
        self.hot = self
            .keys
            .iter()
            .filter(|(_, s)| s.is_hot())
            .map(|(k, _)| k.clone())
            .collect();
        self.keys.forget_changes();
        self.profiles.forget_changes();
        self.meta.forget_changes();
    }

    fn state_entries(&self) -> usize {
        self.keys.len() + self.profiles.len()
    }
}
