//! Engagement spike detection on the 1-minute interaction counts of accounts and posts.
//!
//! * **Baseline.** Per key an EWMA of the minute counts (mean and variance, λ = 0.2); a minute
//!   without a row counts 0. z = (x − μ) / max(σ, √μ, 1): the Poisson floor keeps a quiet key
//!   from firing on noise.
//! * **Firing.** z ≥ 3 with x ≥ 10 in 2 of the last 3 minutes fires; the onset is the first of
//!   those hits. Hits do not feed the baseline (the spike would become its own baseline), unless
//!   the alert has been firing longer than `max_firing_minutes`: then the level is the new normal.
//! * **Resolving.** After `resolve_minutes` minutes in a row without a hit the alert resolves; no
//!   new alert for the key during `cooldown_minutes`: one spike, one alert.
//! * **Young posts.** A new post has no trend of its own: every launch would look like a spike.
//!   For its first `young_minutes` a post is judged against the account's recent posts at the
//!   same age (an EWMA across posts of the count in each minute of age), and the account's own
//!   series leaves out the posts in that period. After it, the post's own EWMA — fed from its
//!   first minute — follows its decay.
//! * **Determinism.** Minutes are judged when the engine closes them (first emission; late
//!   corrections do not re-judge), keys in a fixed order, so a replay judges the same. The state
//!   is a changelog ([`Detector::changes`]) written in the transaction of the outputs it belongs
//!   to; minutes before [`Detector::done_below`] were judged before a restore and are skipped.

use std::collections::BTreeMap;

use banter_model::{AlertState, Rollup, SmolStr, SpikeAlert, WindowKind};
use serde::{Deserialize, Serialize};

use crate::store::{Map, Set, NONE};
use crate::window::MINUTE;

/// One minute's rows of one account: its posts' and its own.
#[derive(Debug, Clone, Default)]
struct AccountRows {
    posts: Vec<(SmolStr, Pending)>,
    account: Option<Pending>,
}

/// Detection parameters: the `spike.*` section of the configuration, used as it is.
pub use banter_runtime::config::SpikeConfig;

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
    last_minute: i64,
    /// Post publication time, when known.
    #[serde(default)]
    published: Option<i64>,
    /// Hits of the last minutes, newest in bit 0.
    hits: u8,
    /// Minutes of those hits, newest last.
    #[serde(default)]
    hit_minutes: Vec<i64>,
    #[serde(default)]
    firing: Option<Firing>,
    /// A post whose level is part of its account's baseline (it is past its young period).
    #[serde(default)]
    joined: bool,
    /// No new alert before this minute.
    quiet_until: i64,
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
            last_minute: NONE,
            published: None,
            hits: 0,
            hit_minutes: Vec::new(),
            firing: None,
            quiet_until: NONE,
            joined: false,
        }
    }
}

/// (is an account, account, content): posts sort before their accounts' rows within a minute.
type Key = (bool, String, String);

/// What judging a key's minute found out about it.
enum Judged {
    /// A post in its young period: left out of its account's series.
    Young,
    /// A post that just left its young period, with its baseline.
    Joins(Ewma),
    /// Anything else.
    Other,
}

/// A minute row waiting for its minute to be judged.
#[derive(Debug, Clone)]
struct Pending {
    x: i64,
    published: Option<i64>,
}

/// Spike detection of one partition.
#[derive(Debug, Clone)]
pub struct Detector {
    cfg: SpikeConfig,
    keys: Map<Key, KeyState>,
    /// Per account: the EWMA across posts of the count in each minute of age.
    profiles: Map<String, Vec<Ewma>>,
    /// Rows by minute and account.
    pending: BTreeMap<i64, Map<String, AccountRows>>,
    /// Keys judged every minute, with or without a row: firing or with recent hits.
    hot: Set<Key>,
    /// Within one minute: the baselines of the account's posts that leave their young period.
    joining: Map<(String, i64), Ewma>,
    done_below: i64,
    /// The first minute judged: a key first seen later had no interactions before.
    first_minute: i64,
    dirty_keys: Set<Key>,
    dirty_profiles: Set<String>,
    forgotten: Vec<Key>,
    meta_dirty: bool,
}

/// One changelog entry: its key suffix and its value (None: deleted).
pub type Change = (String, Option<Vec<u8>>);

#[derive(Serialize, Deserialize)]
struct Meta {
    done_below: i64,
    #[serde(default = "none")]
    first_minute: i64,
}

fn none() -> i64 {
    NONE
}

impl Detector {
    /// A detector without history.
    pub fn new(cfg: SpikeConfig) -> Self {
        Detector {
            cfg,
            keys: Map::default(),
            profiles: Map::default(),
            pending: BTreeMap::new(),
            hot: Set::default(),
            joining: Map::default(),
            done_below: NONE,
            first_minute: NONE,
            dirty_keys: Set::default(),
            dirty_profiles: Set::default(),
            forgotten: Vec::new(),
            meta_dirty: false,
        }
    }

    /// Every minute before this one was judged.
    pub fn done_below(&self) -> i64 {
        self.done_below
    }

    /// Keys with a baseline.
    pub fn keys(&self) -> usize {
        self.keys.len()
    }

    /// Alerts firing now.
    pub fn firing(&self) -> usize {
        self.keys.values().filter(|k| k.firing.is_some()).count()
    }

    /// Takes one MINUTE row as it is emitted. Corrections of judged minutes (late events) and
    /// rows of minutes judged before a restore are ignored. `published` is the post's
    /// publication time as the engine knows it.
    pub fn observe(&mut self, r: &Rollup, published: Option<i64>) {
        if r.window != WindowKind::Minute || r.late_events > 0 || r.window_start < self.done_below {
            return;
        }
        let p = Pending {
            x: r.interactions,
            published,
        };
        let minute = self.pending.entry(r.window_start).or_default();
        match &r.content_id {
            None if self.cfg.enabled && self.cfg.accounts => {
                minute.entry_ref(&*r.account_id).or_default().account = Some(p);
            }
            Some(c) if self.cfg.enabled && self.cfg.posts => {
                minute
                    .entry_ref(&*r.account_id)
                    .or_default()
                    .posts
                    .push((c.clone(), p));
            }
            _ => {}
        }
    }

    /// Judges every minute before `closed_below` (the engine's: all their rows were observed).
    pub fn close(&mut self, closed_below: i64, out: &mut Vec<SpikeAlert>) {
        if closed_below == NONE || closed_below <= self.done_below {
            return;
        }
        loop {
            // The next minute with rows, or the next minute after the last judged while keys
            // are hot.
            let next_rows = self.pending.keys().next().copied();
            let next_hot = if self.hot.is_empty() || self.done_below == NONE {
                None
            } else {
                Some(self.done_below)
            };
            let m = match (next_rows, next_hot) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) => a,
                (None, Some(b)) => b,
                (None, None) => break,
            };
            if m >= closed_below {
                break;
            }
            let rows = self.pending.remove(&m).unwrap_or_default();
            self.judge_minute(m, rows, out);
            self.done_below = m + MINUTE;
        }
        self.done_below = self.done_below.max(closed_below);
        self.meta_dirty = true;
    }

    fn judge_minute(&mut self, m: i64, rows: Map<String, AccountRows>, out: &mut Vec<SpikeAlert>) {
        // Accounts are independent; within one, its posts (in a fixed order) come before the
        // account row: young posts are left out of the account's series.
        let mut judged: Set<Key> = Set::default();
        for (account, mut a) in rows {
            a.posts.sort_unstable_by(|x, y| x.0.cmp(&y.0));
            let mut young_sum = 0i64;
            for (content, p) in a.posts {
                let key = (false, account.clone(), content.to_string());
                match self.judge(&key, m, p.x, p.published, out) {
                    Judged::Young => young_sum += p.x,
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
            if let Some(p) = a.account {
                let key = (true, account.clone(), String::new());
                self.judge(&key, m, p.x - young_sum, p.published, out);
                if !self.hot.is_empty() {
                    judged.insert(key);
                }
            }
        }
        // Hot keys without a row count 0, in a fixed order.
        let mut hot: Vec<Key> = self
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
        key: &Key,
        m: i64,
        x: i64,
        published: Option<i64>,
        out: &mut Vec<SpikeAlert>,
    ) -> Judged {
        let cfg = self.cfg;
        if self.first_minute == NONE {
            self.first_minute = m;
        }
        // A key seen for the first time had no interactions in the minutes judged before.
        let quiet = u32::try_from((m - self.first_minute) / MINUTE).unwrap_or(u32::MAX);
        if !self.keys.contains_key(key) {
            self.keys.insert(key.clone(), KeyState::new(quiet));
        }
        let Some(st) = self.keys.get_mut(key) else {
            return Judged::Other;
        };
        if st.published.is_none() {
            st.published = published;
        }
        // Minutes without a row since the last judged one count 0.
        if st.last_minute != NONE && m > st.last_minute + MINUTE {
            let gap = (m - st.last_minute) / MINUTE - 1;
            for _ in 0..gap.min(200) {
                st.baseline.update(0.0, cfg.lambda);
            }
            st.hits = st.hits.checked_shl(gap.min(8) as u32).unwrap_or(0);
        }
        st.last_minute = m;
        // Minutes of age: the minute of publication is age 0.
        let age = st
            .published
            .map(|p| ((m - (p - p.rem_euclid(MINUTE))) / MINUTE).max(0));
        let young = !key.0 && age.is_some_and(|a| a < cfg.young_minutes);
        // A post leaving its young period brings its level into the account's series.
        let joins = !key.0 && !young && !st.joined;
        if joins {
            st.joined = true;
        }
        let joining = (joins && age.is_some()).then_some(st.baseline);
        let add = if key.0 {
            self.joining.remove(&(key.1.clone(), m))
        } else {
            None
        };
        if let Some(add) = add {
            st.baseline.mean += add.mean;
            st.baseline.var += add.var;
        }
        let reference = if young {
            let a = age.unwrap_or(0) as usize;
            self.profiles
                .get(&key.1)
                .and_then(|v| v.get(a))
                .filter(|e| e.n >= cfg.young_min_posts)
                .copied()
        } else if st.baseline.n >= cfg.min_history_minutes {
            Some(st.baseline)
        } else {
            None
        };
        let xf = x as f64;
        let (z, mean, sigma) = match reference {
            // Posts differ by orders of magnitude (heavy-tailed reach): a young post is compared
            // in log space, ln(1 + x), with a spread of at least `young_log_spread`. Reported: the account's typical post (geometric) and the spread.
            Some(r) if young => {
                let sigma = r.sigma();
                let z = ((xf.max(0.0)).ln_1p() - r.mean) / sigma.max(cfg.young_log_spread);
                (z, r.mean.exp_m1(), sigma)
            }
            Some(r) => {
                let sigma = r.sigma();
                let scale = sigma.max(r.mean.max(0.0).sqrt()).max(1.0);
                ((xf - r.mean) / scale, r.mean, sigma)
            }
            None => (0.0, 0.0, 0.0),
        };
        let hit = reference.is_some() && z >= cfg.z_threshold && x >= cfg.min_count;
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
            account_id: key.1.clone(),
            content_id: (!key.0).then(|| key.2.clone()),
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
        // Unusual minutes (even below min_count) stay out of the baseline.
        let unusual = reference.is_some() && z >= cfg.z_threshold;
        let mut absorb = !unusual;
        match &mut st.firing {
            Some(f) => {
                if hit {
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
                    st.quiet_until = m + MINUTE + cfg.cooldown_minutes * MINUTE;
                    st.hits = 0;
                    st.hit_minutes.clear();
                }
            }
            None => {
                if st.hits.count_ones() >= cfg.fire_hits && m >= st.quiet_until {
                    let started = st.hit_minutes.first().copied().unwrap_or(m);
                    let id = format!("{}/{}/{}", key.1, if key.0 { "-" } else { &key.2 }, started);
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
        if young || absorb {
            st.baseline.update(xf, cfg.lambda);
        }
        if young {
            let a = age.unwrap_or(0) as usize;
            let prof = self
                .profiles
                .entry(key.1.clone())
                .or_insert_with(|| vec![Ewma::default(); cfg.young_minutes.max(0) as usize]);
            if let Some(e) = prof.get_mut(a) {
                e.update(xf.max(0.0).ln_1p(), cfg.lambda);
            }
            self.dirty_profiles.insert(key.1.clone());
        }
        if st.firing.is_some() || st.hits != 0 {
            if !self.hot.contains(key) {
                self.hot.insert(key.clone());
            }
        } else if !self.hot.is_empty() {
            self.hot.remove(key);
        }
        if !self.dirty_keys.contains(key) {
            self.dirty_keys.insert(key.clone());
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
        let gone: Vec<Key> = self
            .keys
            .iter()
            .filter(|(_, s)| {
                s.firing.is_none() && s.hits == 0 && s.last_minute < horizon && s.quiet_until < m
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            self.keys.remove(&k);
            self.hot.remove(&k);
            self.dirty_keys.remove(&k);
            self.forgotten.push(k);
        }
    }

    fn key_name(k: &Key) -> String {
        if k.0 {
            format!("a/{}", k.1)
        } else {
            format!("p/{}\u{1f}{}", k.1, k.2)
        }
    }

    /// State changed since the last call, as changelog entries (key suffix, value).
    pub fn changes(&mut self) -> Vec<Change> {
        let mut out = Vec::new();
        for k in std::mem::take(&mut self.forgotten) {
            out.push((Self::key_name(&k), None));
        }
        for k in std::mem::take(&mut self.dirty_keys) {
            if let Some(s) = self.keys.get(&k) {
                out.push((Self::key_name(&k), serde_json::to_vec(s).ok()));
            }
        }
        for a in std::mem::take(&mut self.dirty_profiles) {
            if let Some(p) = self.profiles.get(&a) {
                out.push((format!("f/{a}"), serde_json::to_vec(p).ok()));
            }
        }
        if std::mem::take(&mut self.meta_dirty) {
            let meta = Meta {
                done_below: self.done_below,
                first_minute: self.first_minute,
            };
            out.push(("m".into(), serde_json::to_vec(&meta).ok()));
        }
        out
    }

    /// Takes one changelog entry back (latest per key, in any order).
    pub fn restore(&mut self, name: &str, value: &[u8]) -> Result<(), String> {
        let err = |e: serde_json::Error| format!("spike state {name}: {e}");
        if name == "m" {
            let m: Meta = serde_json::from_slice(value).map_err(err)?;
            self.done_below = m.done_below;
            self.first_minute = m.first_minute;
        } else if let Some(a) = name.strip_prefix("a/") {
            let s: KeyState = serde_json::from_slice(value).map_err(err)?;
            let k = (true, a.to_owned(), String::new());
            if s.firing.is_some() || s.hits != 0 {
                self.hot.insert(k.clone());
            }
            self.keys.insert(k, s);
        } else if let Some(p) = name.strip_prefix("p/") {
            let (a, c) = p
                .split_once('\u{1f}')
                .ok_or_else(|| format!("spike state {name}: no content"))?;
            let s: KeyState = serde_json::from_slice(value).map_err(err)?;
            let k = (false, a.to_owned(), c.to_owned());
            if s.firing.is_some() || s.hits != 0 {
                self.hot.insert(k.clone());
            }
            self.keys.insert(k, s);
        } else if let Some(a) = name.strip_prefix("f/") {
            let p: Vec<Ewma> = serde_json::from_slice(value).map_err(err)?;
            self.profiles.insert(a.to_owned(), p);
        } else {
            return Err(format!("spike state {name}: unknown entry"));
        }
        Ok(())
    }

    /// Drops pending changes (after a restore, whose entries are already written).
    pub fn clean(&mut self) {
        self.dirty_keys.clear();
        self.dirty_profiles.clear();
        self.forgotten.clear();
        self.meta_dirty = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_764_000_000_000 - 1_764_000_000_000 % MINUTE;

    fn row(account: &str, content: Option<&str>, minute: i64, x: i64) -> Rollup {
        Rollup {
            account_id: account.into(),
            content_id: content.map(Into::into),
            window: WindowKind::Minute,
            window_start: T0 + minute * MINUTE,
            window_end: T0 + (minute + 1) * MINUTE,
            revision: 0,
            interactions: x,
            comments: 0,
            live_comments: 0,
            reactions: x,
            shares: 0,
            story_replies: 0,
            dms_in: 0,
            mentions: 0,
            brand_replies: 0,
            velocity: None,
            early_accel: None,
            time_to_n_minutes: None,
            unique_engagers: None,
            late_events: 0,
            emitted_at: 0,
        }
    }

    /// Feeds one post's series (minute i has count xs[i]; 0 rows omitted), closing each minute.
    fn run(det: &mut Detector, xs: &[i64]) -> Vec<SpikeAlert> {
        let mut out = Vec::new();
        for (i, &x) in xs.iter().enumerate() {
            if x != 0 {
                det.observe(&row("a", Some("p"), i as i64, x), None);
            }
            det.close(T0 + (i as i64 + 1) * MINUTE, &mut out);
        }
        out
    }

    /// A steady series around 3 a minute.
    fn steady(n: usize) -> Vec<i64> {
        (0..n).map(|i| [2, 3, 4, 3, 2, 4][i % 6]).collect()
    }

    fn cfg() -> SpikeConfig {
        SpikeConfig {
            accounts: false,
            ..SpikeConfig::default()
        }
    }

    #[test]
    fn a_spike_fires_once_on_its_second_hit_and_resolves_after_it() {
        let mut xs = steady(40);
        xs.extend([40, 35, 5, 45, 50, 38]); // minutes 40..46, one dip
        xs.extend(steady(20));
        let alerts = run(&mut Detector::new(cfg()), &xs);
        assert_eq!(alerts.len(), 2, "{alerts:#?}");
        let (f, r) = (&alerts[0], &alerts[1]);
        assert_eq!(f.state, AlertState::Firing);
        assert_eq!(f.started_at, T0 + 40 * MINUTE, "onset is the first hit");
        assert_eq!(f.window_start, T0 + 41 * MINUTE, "fires on the second hit");
        assert_eq!(f.alert_id, format!("a/p/{}", T0 + 40 * MINUTE));
        assert!(f.baseline_mean > 2.0 && f.baseline_mean < 4.0, "{f:?}");
        assert!(f.z_score >= 3.0);
        assert_eq!(r.state, AlertState::Resolved);
        assert_eq!(r.alert_id, f.alert_id);
        assert_eq!(
            r.ended_at,
            Some(T0 + 46 * MINUTE),
            "the first minute back to normal"
        );
        assert_eq!(
            r.window_start,
            T0 + 48 * MINUTE,
            "after 3 minutes back to normal"
        );
    }

    #[test]
    fn the_poisson_floor_and_min_count_keep_quiet_keys_quiet() {
        // Constant 1 a minute: σ = 0, the floor is max(√1, 1) = 1.
        let mut xs = vec![1; 30];
        xs.extend([8, 9, 8, 1, 1]); // z = 7 but fewer than 10 interactions
        let alerts = run(&mut Detector::new(cfg()), &xs);
        assert!(alerts.is_empty(), "{alerts:#?}");
        // One hit alone does not fire (2 of 3).
        let mut xs = vec![1; 30];
        xs.extend([30, 1, 1, 30, 1, 1, 1]);
        assert!(run(&mut Detector::new(cfg()), &xs).is_empty());
        // A quiet key with a big mean needs more than its noise: mean 100, √100 = 10.
        let mut xs = vec![100; 30];
        xs.extend([125, 128, 100]);
        assert!(run(&mut Detector::new(cfg()), &xs).is_empty());
        xs.truncate(30);
        xs.extend([135, 140, 100, 100, 100, 100]);
        assert_eq!(run(&mut Detector::new(cfg()), &xs).len(), 2);
    }

    #[test]
    fn cooldown_makes_one_alert_of_one_spike() {
        let mut xs = steady(30);
        xs.extend([40, 40, 3, 3, 3]); // fires, resolves at minute 34
        xs.extend([40, 40, 3, 3, 3]); // within the 15-minute cool-down: nothing
        xs.extend(steady(20));
        xs.extend([40, 40, 3, 3, 3]); // after it: a new alert
        let alerts = run(&mut Detector::new(cfg()), &xs);
        let firing: Vec<_> = alerts
            .iter()
            .filter(|a| a.state == AlertState::Firing)
            .collect();
        assert_eq!(firing.len(), 2, "{alerts:#?}");
        assert_eq!(firing[0].started_at, T0 + 30 * MINUTE);
        assert_eq!(firing[1].started_at, T0 + 60 * MINUTE);
        assert_ne!(firing[0].alert_id, firing[1].alert_id);
    }

    #[test]
    fn a_long_plateau_becomes_the_baseline_after_max_firing() {
        let mut xs = steady(30);
        xs.extend(vec![60; 120]);
        let alerts = run(&mut Detector::new(cfg()), &xs);
        assert_eq!(alerts.len(), 2, "{alerts:#?}");
        assert_eq!(alerts[1].state, AlertState::Resolved);
        assert!(alerts[1].window_start > T0 + 90 * MINUTE);
    }

    #[test]
    fn young_posts_are_judged_against_the_account_posts_at_the_same_age() {
        let mut det = Detector::new(SpikeConfig::default());
        let mut out = Vec::new();
        // The account: 3 a minute of account-level activity throughout; four posts launched
        // an hour apart: three ordinary launches (20 a minute for 5 minutes), then one 30
        // times bigger. Rows of a post go to the account row too.
        for minute in 0..300i64 {
            let mut account = 3;
            for k in 0..4i64 {
                let age = minute - 60 * k - 10;
                if !(0..30).contains(&age) {
                    continue;
                }
                let x = match (k, age) {
                    (3, 0..5) => 600,
                    (_, 0..5) => 20,
                    _ => 2,
                };
                account += x;
                let content = format!("p{k}");
                det.observe(
                    &row("a", Some(&content), minute, x),
                    Some(T0 + (60 * k + 10) * MINUTE + 1_000),
                );
            }
            det.observe(&row("a", None, minute, account), None);
            det.close(T0 + (minute + 1) * MINUTE, &mut out);
        }
        let firing: Vec<_> = out
            .iter()
            .filter(|a| a.state == AlertState::Firing)
            .map(|a| a.alert_id.as_str())
            .collect();
        // Ordinary launches do not fire, neither for the post nor for the account; the
        // launch 30 times the usual does, once, for the post only.
        assert_eq!(
            firing,
            vec![format!("a/p3/{}", T0 + 190 * MINUTE)],
            "{out:#?}"
        );
    }

    #[test]
    fn late_corrections_and_restored_minutes_are_not_judged_again() {
        let mut det = Detector::new(cfg());
        let mut xs = steady(30);
        xs.extend([40, 40]);
        let alerts = run(&mut det, &xs);
        assert_eq!(alerts.len(), 1);
        let mut late = row("a", Some("p"), 31, 90);
        late.late_events = 1;
        det.observe(&late, None);
        det.observe(&row("a", Some("p"), 5, 90), None); // a minute judged before
        let mut out = Vec::new();
        det.close(T0 + 33 * MINUTE, &mut out);
        assert!(out.is_empty(), "{out:#?}");
        assert_eq!(det.done_below(), T0 + 33 * MINUTE);
    }

    /// The changelog up to any minute restores a detector that continues identically.
    #[test]
    fn restoring_from_the_changelog_at_any_minute_continues_identically() {
        let mut xs = steady(30);
        xs.extend([40, 35, 5, 45, 0, 0, 0, 0]);
        xs.extend(steady(10));
        xs.extend([0; 20]);
        xs.extend([50, 50, 50, 3, 3, 3, 3]);
        let expected = run(&mut Detector::new(cfg()), &xs);
        assert_eq!(expected.len(), 4);
        for cut in 1..xs.len() {
            let mut a = Detector::new(cfg());
            let mut before = run(&mut a, &xs[..cut]);
            let mut log: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
            // The changelog as compaction leaves it: the latest entry per key.
            log.extend(a.changes());
            let mut b = Detector::new(cfg());
            for (name, v) in &log {
                if let Some(v) = v {
                    b.restore(name, v).unwrap();
                }
            }
            b.clean();
            let mut out = Vec::new();
            for (i, &x) in xs.iter().enumerate().skip(cut) {
                if x != 0 {
                    b.observe(&row("a", Some("p"), i as i64, x), None);
                }
                b.close(T0 + (i as i64 + 1) * MINUTE, &mut out);
            }
            before.extend(out);
            assert_eq!(before, expected, "restored after minute {cut}");
        }
    }
}
