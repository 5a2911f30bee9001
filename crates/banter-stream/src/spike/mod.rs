//! Engagement spike detection on the 1-minute interaction counts of accounts and posts.
//!
//! * **Baseline.** Per key an EWMA of the minute counts (mean and variance, λ = 0.2); a minute
//!   without a row counts 0. z = (x − μ) / max(σ, √μ, 1): the Poisson floor keeps a quiet key
//!   from firing on noise.
//! * **Firing.** z ≥ 3 with x ≥ 10 in 2 of the last 3 minutes fires; the onset is the first of
//!   those hits. Hits do not feed the baseline (the spike would become its own baseline), unless
//!   the alert has been firing longer than `max_firing_minutes`: then the level is the new normal.
//! * **Resolving.** After `resolve_minutes` minutes in a row back to normal (z below
//!   `resolve_z`, 2, under the firing threshold: hysteresis, so a spike whose Poisson count dips
//!   for a minute is neither resolved nor folded into its baseline; `min_count` is for firing,
//!   so a spike that eases to a few interactions a minute above a quiet baseline stays one
//!   alert) the alert resolves; no new alert for the key during `cooldown_minutes`: one spike,
//!   one alert.
//! * **Young posts.** A new post has no trend of its own: every launch would look like a spike.
//!   For its first `young_minutes` a post is judged against the account's recent posts at the
//!   same age (an EWMA across posts of ln(1 + count) in each minute of age, once
//!   `young_min_posts` were seen; a launch about 20 times the account's usual), and from its
//!   fourth minute also against its own level since its first full minute (an EWMA of its
//!   counts, a minute without a row counting 0, `young_own_minutes` of them: a launch that
//!   takes off, whatever the account's history); the stronger evidence counts. The account's
//!   own series leaves out the posts in that period. After it, the post's own EWMA — fed from
//!   its first minute, its unusual minutes left out — follows its decay.
//! * **Early firing.** A post's alert also fires from the counts so far of the minutes not
//!   closed yet (the window engine's provisional MINUTE rows), when they already make the
//!   final judgment certain: counts only grow, z grows with the count, and a minute that is
//!   unusual against the post's own level leaves that level as it is. So from the first open
//!   minute on, while every open minute is already a hit against the post's own level, the
//!   closed minutes will fire the same alert (same id, same onset): in the same minute, or a
//!   minute sooner when a minute's final count makes its hit fire alone. It is
//!   sent at once with revision 0; the closed minute's FIRING (revision 1) confirms it. One that
//!   is not confirmed (a publication time learned later) is withdrawn: RESOLVED with its end at
//!   its onset. Accounts fire at close only: their count leaves out their young posts, whose
//!   counts so far bound nothing.
//! * **Determinism.** Minutes are judged when the engine closes them (first emission; late
//!   corrections do not re-judge), keys in a fixed order, so a replay judges the same. The state
//!   is a changelog written in the transaction of the outputs it belongs to; minutes before
//!   [`Detector::done_below`] were judged before a restore and are skipped.

use std::collections::BTreeMap;

use banter_model::{AlertState, Rollup, SmolStr, SpikeAlert, WindowKind};
use serde::{Deserialize, Serialize};

use crate::changelog::{
    ChangelogCell, ChangelogMap, Changes, Entry, KeyError, StateError, StateKey, Store, TableId,
};
use crate::operator::{Operator, Time};
use crate::table::{Map, Set, FETCH_AHEAD};
use crate::time::{check_time, MINUTE};

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
        account: SmolStr,
        /// The post.
        content: SmolStr,
    },
    /// An account, all its interactions.
    Account(SmolStr),
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

    /// The alert `id` of this key in `state`, decided by minute `m` with count `x` and
    /// `(z, mean, σ)`; revision 1 for FIRING, 2 for RESOLVED, emitted at the minute's end.
    #[allow(clippy::too_many_arguments)] // an alert's fields
    fn alert(
        &self,
        state: AlertState,
        id: &str,
        m: i64,
        x: i64,
        (z, mean, sigma): (f64, f64, f64),
        started: i64,
        ended: Option<i64>,
    ) -> SpikeAlert {
        SpikeAlert {
            alert_id: id.to_owned(),
            state,
            account_id: self.account().to_owned(),
            content_id: self.content().map(str::to_owned),
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
        }
    }

    /// The id of this key's alert with onset `started`.
    fn alert_id(&self, started: i64) -> String {
        format!(
            "{}/{}/{}",
            self.account(),
            self.content().unwrap_or("-"),
            started
        )
    }
}

impl StateKey for SpikeKey {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            SpikeKey::Post { account, content } => {
                out.push(0);
                account.encode(out);
                content.encode(out);
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
                account: SmolStr::decode(input)?,
                content: SmolStr::decode(input)?,
            }),
            1 => Ok(SpikeKey::Account(SmolStr::decode(input)?)),
            _ => Err(KeyError("unknown spike key variant")),
        }
    }
}

/// The firing alert of a key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Firing {
    alert_id: String,
    started_at: i64,
    /// Minutes in a row back to normal (z below `resolve_z`).
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
    /// An alert fired early and not confirmed yet (always written: the binary layout has no
    /// absent fields).
    #[serde(default)]
    early: Option<Early>,
}

/// An alert fired from the counts so far of minutes not closed yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Early {
    alert_id: String,
    started_at: i64,
    /// The minute it fired in.
    minute: i64,
}

impl KeyState {
    /// Refuses a restored state with a time no detector writes.
    fn check(&self) -> Result<(), String> {
        check_time("last_minute", self.last_minute)?;
        check_time("published", self.published)?;
        check_time("quiet_until", self.quiet_until)?;
        for &m in &self.hit_minutes {
            check_time("hit minute", Some(m))?;
        }
        if let Some(f) = &self.firing {
            check_time("firing.started_at", Some(f.started_at))?;
            check_time("firing.below_since", Some(f.below_since))?;
        }
        if let Some(e) = &self.early {
            check_time("early.started_at", Some(e.started_at))?;
            check_time("early.minute", Some(e.minute))?;
        }
        Ok(())
    }

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
            early: None,
        }
    }

    /// Judged every minute, with or without a row.
    fn is_hot(&self) -> bool {
        self.firing.is_some() || self.hits != 0
    }
}

/// z of count `x` against a mature key's own trend, in counts, with the Poisson floor: (z, mean,
/// σ).
fn counts_z(r: &Ewma, x: f64) -> (f64, f64, f64) {
    let sigma = r.sigma();
    let scale = sigma.max(r.mean.max(0.0).sqrt()).max(1.0);
    ((x - r.mean) / scale, r.mean, sigma)
}

/// z of count `x` against a young post's own launch level. A level from a few minutes is itself
/// uncertain: x − μ̂ varies by μ (Poisson) plus μ / n (the estimate's own error; n at most the
/// EWMA's effective sample size).
fn launch_z(r: &Ewma, x: f64, lambda: f64) -> (f64, f64, f64) {
    let n_eff = f64::from(r.n).min((2.0 - lambda) / lambda).max(1.0);
    let mean = r.mean.max(0.0);
    let scale = r.sigma().max((mean * (1.0 + 1.0 / n_eff)).sqrt()).max(1.0);
    ((x - r.mean) / scale, r.mean, r.sigma())
}

/// A post's minutes from `from` up to `to` (exclusive) without a row, in its young period from
/// age 1: 0 each into its launch level, as every minute without a row counts 0.
fn launch_zeros(cfg: &SpikeConfig, launch: &mut Ewma, published: Option<i64>, from: i64, to: i64) {
    let Some(p) = published else {
        return;
    };
    let p0 = p - p.rem_euclid(MINUTE);
    let mut g = from.max(p0 + MINUTE);
    let end = to.min(p0 + cfg.young_minutes * MINUTE);
    while g < end {
        launch.update(0.0, cfg.lambda);
        g += MINUTE;
    }
}

/// Minutes of age of a post published at `p` in minute `m` (the minute of publication is 0).
fn age_at(published: Option<i64>, m: i64) -> Option<i64> {
    published.map(|p| ((m - (p - p.rem_euclid(MINUTE))) / MINUTE).max(0))
}

/// z of count `x` against the key's own level: a young post's launch level (from
/// `young_own_minutes` of it), a mature key's trend `baseline` (from `min_history_minutes`).
fn own_z(
    cfg: &SpikeConfig,
    launch: &Ewma,
    baseline: &Ewma,
    young: bool,
    x: f64,
) -> Option<(f64, f64, f64)> {
    if young {
        (launch.n >= cfg.young_own_minutes).then(|| launch_z(launch, x, cfg.lambda))
    } else if baseline.n >= cfg.min_history_minutes {
        Some(counts_z(baseline, x))
    } else {
        None
    }
}

/// z of a young post's count `x` at `age` against the account's recent posts at that age, in
/// log space, once `young_min_posts` were seen there: (z, typical count, σ of ln(1 + x)).
fn profile_z(
    cfg: &SpikeConfig,
    profiles: &ChangelogMap<String, Vec<Ewma>>,
    account: &str,
    age: Option<i64>,
    x: f64,
) -> Option<(f64, f64, f64)> {
    let a = age.unwrap_or(0) as usize;
    profiles
        .get(&account.to_owned())
        .and_then(|v| v.get(a))
        .filter(|e| e.n >= cfg.young_min_posts)
        .map(|r| {
            let sigma = r.sigma();
            let z = ((x.max(0.0)).ln_1p() - r.mean) / sigma.max(cfg.young_log_spread);
            (z, r.mean.exp_m1(), sigma)
        })
}

/// A hit whose z against the key's own level reaches `fire_alone_z`, with at least 1.5 times
/// `min_count` interactions (on a quiet key z is about the count itself, so z alone would let
/// any minute at `min_count` fire): it fires on its own.
fn fires_alone(cfg: &SpikeConfig, own: Option<(f64, f64, f64)>, x: i64) -> bool {
    cfg.fire_alone_z > 0.0
        && x >= cfg.min_count.saturating_mul(3) / 2
        && own.is_some_and(|o| o.0 >= cfg.fire_alone_z)
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
    pending: BTreeMap<i64, Map<SmolStr, AccountRows>>,
    /// Keys judged every minute, with or without a row: firing or with recent hits.
    hot: Set<SpikeKey>,
    /// Within one minute: the baselines of the account's posts that leave their young period.
    joining: Map<(SmolStr, i64), Ewma>,
    /// Posts' counts so far in the minutes not judged yet, by minute (early firing). Not
    /// state: after a restore the engine shows every open minute again.
    open: BTreeMap<i64, Map<SpikeKey, Open>>,
    /// Posts whose counts so far changed since the last early judgment.
    touched: Set<SpikeKey>,
    /// Posts with an early alert not confirmed yet.
    early: Set<SpikeKey>,
    /// Alerts fired early, and withdrawn, since this detector was made.
    early_stats: EarlyStats,
}

/// A final count of the first open minute that is no hit, as judging would take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Candidate {
    /// Judged with this count, folded into the own level.
    Folded(i64),
    /// No row: a gap, 0 into the baseline only.
    Gap,
    /// Unusual against the own level but below `min_count`: the level stays.
    Unusual,
}

/// What judging a key's open minutes would change, simulated for early firing.
#[derive(Debug, Clone)]
struct Sim {
    baseline: Ewma,
    launch: Ewma,
    hits: u8,
    hit_minutes: Vec<i64>,
}

/// The hits of the last `window_minutes`.
fn window_mask(cfg: &SpikeConfig) -> u8 {
    ((1u16 << cfg.window_minutes.min(8)) - 1) as u8
}

/// Minute `m` judged, a hit or not: the hit bits (newest in bit 0) and the hit minutes of the
/// last `window_minutes`.
fn record_hit(cfg: &SpikeConfig, hits: &mut u8, hit_minutes: &mut Vec<i64>, m: i64, hit: bool) {
    *hits = ((*hits << 1) | u8::from(hit)) & window_mask(cfg);
    if hit {
        hit_minutes.push(m);
    }
    let oldest = m - (i64::from(cfg.window_minutes) - 1) * MINUTE;
    hit_minutes.retain(|&h| h >= oldest);
}

/// A post's count so far in a minute not judged yet.
#[derive(Debug, Clone, Copy)]
struct Open {
    x: i64,
    published: Option<i64>,
}

/// Early firing since the detector was made (not state).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EarlyStats {
    /// Alerts fired early.
    pub fired: u64,
    /// Of them, not confirmed by the closed minutes and withdrawn.
    pub withdrawn: u64,
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
            open: BTreeMap::new(),
            touched: Set::default(),
            early: Set::default(),
            early_stats: EarlyStats::default(),
        }
    }

    /// Alerts fired early and withdrawn since this detector was made.
    pub fn early_stats(&self) -> EarlyStats {
        self.early_stats
    }

    /// Takes the count so far of a post's minute not closed yet (the engine's provisional
    /// MINUTE row) for [`Detector::fire_early`]. Accounts' counts are not taken: theirs leave
    /// out their young posts, whose counts so far bound nothing.
    pub fn observe_open(&mut self, c: &MinuteCount) {
        let Some(content) = &c.content_id else {
            return;
        };
        if !(self.cfg.enabled && self.cfg.posts && self.cfg.early)
            || self.done_below().is_none_or(|d| c.minute < d)
        {
            return;
        }
        let key = SpikeKey::Post {
            account: c.account_id.clone(),
            content: content.clone(),
        };
        let o = self
            .open
            .entry(c.minute)
            .or_default()
            .entry(key.clone())
            .or_insert(Open {
                x: 0,
                published: None,
            });
        o.x = o.x.max(c.interactions);
        o.published = c.published_at.or(o.published);
        self.touched.insert(key);
    }

    /// Fires, stamped `now`, the alerts that the counts so far of the posts changed since the
    /// last call already make certain (see the module's "Early firing"): FIRING with revision
    /// 0, the rest as the closed minute's FIRING will have it, but for the count and z so far.
    /// Returns how many.
    pub fn fire_early(&mut self, now: i64, out: &mut Vec<SpikeAlert>) -> usize {
        let Some(done) = self.done_below() else {
            self.touched.clear();
            return 0;
        };
        // Whether a key fires depends on its own state only: judge them in any order, then
        // fire the few that do in the keys' order (sorting every touched key cost a fifth of
        // this).
        let mut fired: Vec<(SpikeKey, SpikeAlert, i64)> = self
            .touched
            .iter()
            .filter_map(|key| {
                self.certain(key, done)
                    .map(|(a, started)| (key.clone(), a, started))
            })
            .collect();
        // The set keeps its room for the next showing.
        self.touched.clear();
        fired.sort_unstable_by(|x, y| x.0.cmp(&y.0));
        let mut n = 0;
        for (key, mut a, started) in fired {
            a.revision = 0;
            a.emitted_at = now;
            if let Some(st) = self.keys.get_mut(&key) {
                st.early = Some(Early {
                    alert_id: a.alert_id.clone(),
                    started_at: started,
                    minute: a.window_start,
                });
            }
            self.early.insert(key);
            out.push(a);
            n += 1;
        }
        self.early_stats.fired += n as u64;
        n
    }

    /// The FIRING alert of `key` that judging the minutes from `done` on will emit whatever
    /// else arrives for them, and its onset; None if that is not certain yet.
    ///
    /// From some open minute on, every minute up to the firing one must already be a hit
    /// against the key's own level: more input only raises a minute's z, and a minute unusual
    /// against the own level leaves that level as it was, so each stays a hit and the alert
    /// fires with the same onset (in the same minute, or sooner where a final count makes a
    /// hit fire alone: with 2 of 3, the onset is then that hit). The minutes before that one are the
    /// first open minute alone: its end is past (the watermark trails by the out-of-orderness),
    /// so it only takes late deliveries. Its final count is at least the count so far; as long
    /// as it stays no hit it either leaves the own level as it was (unusual, below
    /// `min_count`) or is folded into it with a count below the level's hit threshold: the
    /// alert must fire the same for every such count. That it becomes a hit itself (an earlier
    /// onset) is not excluded: the alert is then withdrawn ([`Detector::settle_early`]).
    fn certain(&self, key: &SpikeKey, done: i64) -> Option<(SpikeAlert, i64)> {
        let cfg = self.cfg;
        let st = self.keys.get(key)?;
        // With more than 2 hits to fire, a minute firing alone sooner than simulated could
        // date the alert from an older hit.
        if st.firing.is_some() || st.early.is_some() || cfg.fire_hits > 2 {
            return None;
        }
        let mut sim = Sim {
            baseline: st.baseline,
            launch: st.launch,
            hits: st.hits,
            hit_minutes: st.hit_minutes.clone(),
        };
        // The first open minute, judged next: its row may bring the publication time.
        let first = self.open.get(&done).and_then(|o| o.get(key));
        let published = st.published.or(first.and_then(|o| o.published));
        if let Some(last) = st.last_minute.filter(|&l| done > l + MINUTE) {
            // The closed minutes since the last judged one had no row: 0 each.
            let gap = (done - last) / MINUTE - 1;
            for _ in 0..gap.min(200) {
                sim.baseline.update(0.0, cfg.lambda);
            }
            launch_zeros(&cfg, &mut sim.launch, published, last + MINUTE, done);
            sim.hits = sim.hits.checked_shl(gap.min(8) as u32).unwrap_or(0);
        }
        if let Some(fired) = self.fire_from(key, st, sim.clone(), done) {
            return Some(fired);
        }
        // The first open minute as no hit, for every final count it can have as one; only
        // worth it when the next one has a hit's count so far (every candidate needs it).
        if self
            .open
            .get(&(done + MINUTE))
            .and_then(|o| o.get(key))
            .is_none_or(|o| o.x < cfg.min_count)
        {
            return None;
        }
        let x_now = first.map_or(0, |o| o.x);
        let age = age_at(published, done);
        let young = age.is_some_and(|a| a < cfg.young_minutes);
        let unusual = |x: i64| {
            own_z(&cfg, &sim.launch, &sim.baseline, young, x as f64).map(|o| o.0 >= cfg.z_threshold)
        };
        // Folded in: the counts from now up to the first unusual one (the own level must
        // exist: without it every count is folded in, and none is bounded).
        let mut upper = x_now;
        while !unusual(upper)? {
            upper += 1;
            if upper - x_now > 10_000 {
                return None;
            }
        }
        // A young post's count can also be a hit against the account's posts at its age: no
        // such count may be possible (z grows with the count: the largest one tells).
        let largest = upper - 1;
        if young
            && largest >= cfg.min_count
            && profile_z(&cfg, &self.profiles, key.account(), age, largest as f64)
                .is_some_and(|p| p.0 >= cfg.z_threshold)
        {
            return None;
        }
        let mut candidates: Vec<Candidate> = (x_now..upper).map(Candidate::Folded).collect();
        if first.is_none() && !st.is_hot() {
            // No row at all: a key judged only when it has one sees the minute as a gap (0
            // into the baseline, the launch level left), not as a judged 0.
            candidates.push(Candidate::Gap);
        }
        if upper < cfg.min_count {
            // Unusual below min_count: the level stays.
            candidates.push(Candidate::Unusual);
        }
        let mut fired: Option<(SpikeAlert, i64)> = None;
        for candidate in candidates {
            let mut next = sim.clone();
            record_hit(&cfg, &mut next.hits, &mut next.hit_minutes, done, false);
            match candidate {
                Candidate::Folded(x) => {
                    next.baseline.update(x as f64, cfg.lambda);
                    if young && age.is_some_and(|a| a >= 1) {
                        next.launch.update(x as f64, cfg.lambda);
                    }
                }
                Candidate::Gap => {
                    next.baseline.update(0.0, cfg.lambda);
                    launch_zeros(&cfg, &mut next.launch, published, done, done + MINUTE);
                }
                Candidate::Unusual => {}
            }
            let this = self.fire_from(key, st, next, done + MINUTE)?;
            match &fired {
                None => fired = Some(this),
                Some((a, _)) if a.alert_id == this.0.alert_id => {}
                Some(_) => return None,
            }
        }
        // Reported with the count so far.
        fired
    }

    /// Judging the open minutes from `from` on with their counts so far, from state `sim`:
    /// the alert fired and its onset if every minute up to the firing one is a hit against
    /// the key's own level.
    fn fire_from(
        &self,
        key: &SpikeKey,
        st: &KeyState,
        mut sim: Sim,
        from: i64,
    ) -> Option<(SpikeAlert, i64)> {
        let cfg = self.cfg;
        let mut m = from;
        loop {
            let o = self.open.get(&m)?.get(key)?;
            let published = st.published.or(o.published);
            let young = age_at(published, m).is_some_and(|a| a < cfg.young_minutes);
            let own = own_z(&cfg, &sim.launch, &sim.baseline, young, o.x as f64)?;
            if !(own.0 >= cfg.z_threshold && o.x >= cfg.min_count) {
                return None;
            }
            record_hit(&cfg, &mut sim.hits, &mut sim.hit_minutes, m, true);
            if (fires_alone(&cfg, Some(own), o.x) || sim.hits.count_ones() >= cfg.fire_hits)
                && st.quiet_until.is_none_or(|q| m >= q)
            {
                let started = sim.hit_minutes.first().copied().unwrap_or(m);
                let id = key.alert_id(started);
                let a = key.alert(AlertState::Firing, &id, m, o.x, own, started, None);
                return Some((a, started));
            }
            m += MINUTE;
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
                minute.entry(c.account_id.clone()).or_default().account = Some(w);
            }
            Some(content) if self.cfg.enabled && self.cfg.posts => {
                minute
                    .entry(c.account_id.clone())
                    .or_default()
                    .posts
                    .push((content.clone(), w));
            }
            _ => return false,
        }
        true
    }

    /// Judges every minute before `closed_below` (the engine's: all their rows were observed),
    /// with the publication times the rows came with.
    pub fn close(&mut self, closed_below: i64, out: &mut Vec<SpikeAlert>) {
        self.close_with(closed_below, &|_| None, out);
    }

    /// As [`Detector::close`], asking `published_at` for the publication time of a post the
    /// detector does not know one of yet (and its row did not bring): looked up when judged
    /// until known (once for a post the engine knows the time of, on its first judgment),
    /// rather than for each row routed. `published_at` must
    /// answer as it would have when the rows were observed (the engine's state of the same
    /// step: rows of a minute are observed and judged in the step that closes it).
    pub fn close_with(
        &mut self,
        closed_below: i64,
        published_at: &dyn Fn(&str) -> Option<i64>,
        out: &mut Vec<SpikeAlert>,
    ) {
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
            self.judge_minute(m, rows, published_at, out);
            done = Some(m + MINUTE);
        }
        let done_below = done.map_or(closed_below, |d| d.max(closed_below));
        self.meta.get_mut().done_below = Some(done_below);
        self.open = self.open.split_off(&done_below);
        if !self.early.is_empty() {
            self.settle_early(done_below, out);
        }
    }

    /// Early alerts the closed minutes did not confirm, once their onset is out of every
    /// window that could still fire them: withdrawn, RESOLVED with their end at their onset.
    fn settle_early(&mut self, done_below: i64, out: &mut Vec<SpikeAlert>) {
        let reach = i64::from(self.cfg.window_minutes) * MINUTE;
        let mut settled: Vec<SpikeKey> = Vec::new();
        for key in &self.early {
            match self.keys.get(key).and_then(|st| st.early.as_ref()) {
                None => settled.push(key.clone()),
                Some(e) if done_below > e.minute.max(e.started_at + reach) => {
                    settled.push(key.clone());
                }
                Some(_) => {}
            }
        }
        settled.sort_unstable();
        for key in settled {
            self.early.remove(&key);
            let Some(st) = self.keys.get_mut(&key) else {
                continue;
            };
            let Some(e) = st.early.take() else {
                continue;
            };
            let mut a = key.alert(
                AlertState::Resolved,
                &e.alert_id,
                e.minute,
                0,
                (0.0, 0.0, 0.0),
                e.started_at,
                Some(e.started_at),
            );
            a.emitted_at = done_below;
            out.push(a);
            self.early_stats.withdrawn += 1;
        }
    }

    fn judge_minute(
        &mut self,
        m: i64,
        rows: Map<SmolStr, AccountRows>,
        published_at: &dyn Fn(&str) -> Option<i64>,
        out: &mut Vec<SpikeAlert>,
    ) {
        // Accounts are independent; within one, its posts (in a fixed order) come before the
        // account row: young posts are left out of the account's series. The keys are listed
        // first, so that each key's state can be fetched a few keys ahead of judging it (one
        // cache miss per key otherwise, waited for in turn).
        // An account's own entry comes after its posts, None when it has no row: its young
        // posts' sum then goes nowhere.
        let mut keys: Vec<(SpikeKey, Option<Waiting>)> =
            Vec::with_capacity(rows.values().map(|a| a.posts.len() + 1).sum());
        for (account, mut a) in rows {
            a.posts.sort_unstable_by(|x, y| x.0.cmp(&y.0));
            for (content, w) in a.posts {
                let account = account.clone();
                keys.push((SpikeKey::Post { account, content }, Some(w)));
            }
            keys.push((SpikeKey::Account(account), a.account));
        }
        let mut young_sum = 0i64;
        for i in 0..keys.len() {
            if let Some((ahead, _)) = keys.get(i + FETCH_AHEAD) {
                self.keys.prefetch_as(ahead);
            }
            let (key, w) = &keys[i];
            match (key, w) {
                (SpikeKey::Post { account, .. }, Some(w)) => {
                    match self.judge(key, m, w.x, w.published, published_at, out) {
                        Judged::Young => young_sum += w.x,
                        Judged::Joins(b) => {
                            let e = self.joining.entry((account.clone(), m)).or_default();
                            e.mean += b.mean;
                            e.var += b.var;
                        }
                        Judged::Other => {}
                    }
                }
                (SpikeKey::Account(_), w) => {
                    if let Some(w) = w {
                        self.judge(key, m, w.x - young_sum, w.published, published_at, out);
                    }
                    young_sum = 0;
                }
                (SpikeKey::Post { .. }, None) => {}
            }
        }
        // Hot keys without a row (not judged in this minute yet) count 0, in a fixed order.
        let keys = &self.keys;
        let mut hot: Vec<SpikeKey> = self
            .hot
            .iter()
            .filter(|k| keys.get(k).is_none_or(|st| st.last_minute != Some(m)))
            .cloned()
            .collect();
        hot.sort_unstable();
        for key in hot {
            self.judge(&key, m, 0, None, &|_| None, out);
        }
        // Levels of joining posts whose account has no row this minute: the account's next
        // row would see them anyway; nothing to carry over.
        self.joining.clear();
        if m.rem_euclid(60 * MINUTE) == 0 {
            self.forget(m);
        }
    }

    /// Judges key's minute m with count x; a post's publication time, when the key has none
    /// yet, is `published` or else `published_at` of its content.
    fn judge(
        &mut self,
        key: &SpikeKey,
        m: i64,
        x: i64,
        published: Option<i64>,
        published_at: &dyn Fn(&str) -> Option<i64>,
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
        let st = self.keys.get_or_insert_with(key, || KeyState::new(quiet));
        if st.published.is_none() {
            st.published = published.or_else(|| key.content().and_then(published_at));
        }
        // Minutes without a row since the last judged one (a post: since its publication)
        // count 0.
        if key.content().is_some() {
            // A key seen the first time: the zeros of the minutes judged before (as its
            // baseline's), not of minutes before the detector's first.
            let from = st.last_minute.map_or(first_minute, |l| l + MINUTE);
            launch_zeros(&cfg, &mut st.launch, st.published, from, m);
        }
        if let Some(last) = st.last_minute.filter(|&l| m > l + MINUTE) {
            let gap = (m - last) / MINUTE - 1;
            for _ in 0..gap.min(200) {
                st.baseline.update(0.0, cfg.lambda);
            }
            st.hits = st.hits.checked_shl(gap.min(8) as u32).unwrap_or(0);
        }
        st.last_minute = Some(m);
        let age = age_at(st.published, m);
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
        let own = own_z(&cfg, &st.launch, &st.baseline, young, xf);
        let profile = if young {
            profile_z(&cfg, &self.profiles, key.account(), age, xf)
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
        // While firing, the spike holds down to `resolve_z` (hysteresis).
        let holds = judged.is_some() && z >= cfg.resolve_z.min(cfg.z_threshold);
        // A firing spike's minute it holds: out of the baseline and the launch level.
        let held = holds && st.firing.is_some();
        record_hit(&cfg, &mut st.hits, &mut st.hit_minutes, m, hit);
        let alert = |state: AlertState, id: &str, started: i64, ended: Option<i64>| {
            key.alert(state, id, m, x, (z, mean, sigma), started, ended)
        };
        let alone = hit && fires_alone(&cfg, own, x);
        let mut absorb = !unusual_own;
        match &mut st.firing {
            Some(f) => {
                // Firing holds while the minutes stay above `resolve_z`, even below
                // min_count (that floor is for firing): the spike is over when the count
                // falls back. Such minutes stay out of the baseline.
                if holds {
                    f.below = 0;
                    absorb = m - f.started_at >= cfg.max_firing_minutes * MINUTE;
                } else {
                    if f.below == 0 {
                        f.below_since = m;
                    }
                    f.below = f.below.saturating_add(1);
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
                if (alone || st.hits.count_ones() >= cfg.fire_hits)
                    && st.quiet_until.is_none_or(|q| m >= q)
                {
                    let started = st.hit_minutes.first().copied().unwrap_or(m);
                    let id = key.alert_id(started);
                    if st.early.as_ref().is_some_and(|e| e.alert_id == id) {
                        // The alert fired early: confirmed.
                        st.early = None;
                    }
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
        if young && age.is_some_and(|a| a >= 1) && !unusual_own && !held {
            st.launch.update(xf, cfg.lambda);
        }
        let hot = st.is_hot();
        if young {
            let a = age.unwrap_or(0) as usize;
            let prof = self.profiles.get_or_insert_with(key.account(), || {
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

    fn write_changes(&mut self, out: &mut Changes) -> Result<(), StateError> {
        self.keys.write_changes(out)?;
        self.profiles.write_changes(out)?;
        self.meta.write_changes(out)
    }

    fn restore_entry(&mut self, entry: &Entry<'_>) -> Result<(), StateError> {
        match entry.tag() {
            t if t == KEYS.tag => self.keys.restore_checked(entry, KeyState::check),
            t if t == PROFILES.tag => self.profiles.restore_entry(entry),
            t if t == META.tag => self.meta.restore_checked(entry, |m| {
                check_time("done_below", m.done_below)?;
                check_time("first_minute", m.first_minute)
            }),
            _ => Err(entry.unknown()),
        }
    }

    fn restored(&mut self) {
        self.early = self
            .keys
            .iter()
            .filter(|(_, s)| s.early.is_some())
            .map(|(k, _)| k.clone())
            .collect();
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
