//! The generator's truth against what the pipeline wrote: every metric the README's summary
//! shows, cell by cell, as `N of N equal` per metric with the first differing cells.
//! Used by `banter verify` (rows read from ClickHouse, after `scripts/run.sh`) and by the
//! tests (rows read from the rollups topic, from ClickHouse, or from the pipeline in-process).
//!
//! Compared are the windows event time has closed (the watermark reaches the last event time
//! minus the out-of-orderness; the last minutes close only when the partitions go idle, which
//! follows the wall clock): MINUTE rows ending a minute before the last event's minute,
//! VELOCITY_5M rows ending by then, and first-hour rows of posts whose first hour lies inside
//! the generated span. Conversations, funnels and alerts are compared whole.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use banter_model::{AlertState, ConversationRollup, FunnelRollup, Rollup, SpikeAlert, WindowKind};

use crate::{ConversationHour, Generated, MINUTE};

/// (account, post, window, start): a rollup's key.
pub type RollupKey = (String, Option<String>, WindowKind, i64);

/// Distinct counts above this many are estimates (banter-stream's sketch keeps exact hashes
/// up to 32 distinct actors).
pub const ENGAGERS_EXACT_UP_TO: u64 = 32;
/// Beyond it an estimate may differ by this much, relatively: four standard errors of a
/// 512-register HyperLogLog (1.04 / √512 ≈ 4.6 %).
pub const ENGAGERS_RELATIVE_ERROR: f64 = 4.0 * 1.04 / 22.627_416_997_969_52;
/// Quantiles of response times are within this much of the exact value (banter-stream's
/// quantile sketch, α = 1 %).
pub const QUANTILE_RELATIVE_ERROR: f64 = 0.01;
/// At least this share of post alerts must belong to an injected spike (or be a launch
/// outlier, [`launch_outlier`]).
pub const MIN_SPIKE_PRECISION: f64 = 0.97;
/// A young post's minute is a spike at this many times its account's earlier posts at the same
/// age (plus one), with at least [`LAUNCH_MIN_COUNT`] interactions.
pub const LAUNCH_FACTOR: i64 = 20;
/// The fewest interactions in a minute that fire (DESIGN.md: x ≥ 10).
pub const LAUNCH_MIN_COUNT: i64 = 10;
/// How long a post is young (DESIGN.md: compared against the account's posts at the same age
/// while younger than 24 h).
pub const YOUNG_MS: i64 = 24 * 60 * MINUTE;

/// One alert record (FIRING or RESOLVED) as the alerts topic and table hold it.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct AlertSeen {
    /// The alert (one per spike).
    pub alert_id: String,
    /// FIRING or RESOLVED.
    pub state: String,
    /// The account.
    pub account_id: String,
    /// The post ('' for the account).
    pub content_id: String,
    /// Onset.
    pub started_at_ms: i64,
    /// End (RESOLVED).
    pub ended_at_ms: Option<i64>,
    /// 0: FIRING early, from an open minute's count so far; 1: FIRING; 2: RESOLVED.
    pub revision: i64,
}

/// What the pipeline wrote: the latest revision of every row.
#[derive(Debug, Default)]
pub struct Observed {
    /// Window rollups by key.
    pub rollups: BTreeMap<RollupKey, Rollup>,
    /// Funnel rows, the latest of each (campaign, window, start).
    pub funnels: BTreeMap<(String, WindowKind, i64), FunnelRollup>,
    /// Conversation rows, the latest of each (account, post, window, start).
    pub conversations: BTreeMap<RollupKey, ConversationRollup>,
    /// Alert records (every one written: a record written twice is a difference).
    pub alerts: Vec<AlertSeen>,
    /// Events dead-lettered as too late (None: not read).
    pub too_late: Option<u64>,
}

impl Observed {
    /// Takes a rollup row: the highest revision of a key wins (a tie: the later), as in
    /// ClickHouse's `ReplacingMergeTree(revision)`.
    pub fn add_rollup(&mut self, r: Rollup) {
        let key = (
            r.account_id.to_string(),
            r.content_id.as_deref().map(str::to_owned),
            r.window,
            r.window_start,
        );
        keep_latest(&mut self.rollups, key, r, |r| r.revision);
    }

    /// Takes a funnel row.
    pub fn add_funnel(&mut self, f: FunnelRollup) {
        let key = (f.campaign_id.clone(), f.window, f.window_start);
        keep_latest(&mut self.funnels, key, f, |f| f.revision);
    }

    /// Takes a conversation row.
    pub fn add_conversation(&mut self, c: ConversationRollup) {
        let key = (
            c.account_id.clone(),
            c.content_id.clone(),
            c.window,
            c.window_start,
        );
        keep_latest(&mut self.conversations, key, c, |c| c.revision);
    }

    /// Takes an alert record.
    pub fn add_alert(&mut self, a: &SpikeAlert) {
        self.alerts.push(AlertSeen::from(a));
    }
}

impl From<&SpikeAlert> for AlertSeen {
    fn from(a: &SpikeAlert) -> Self {
        AlertSeen {
            alert_id: a.alert_id.clone(),
            state: match a.state {
                AlertState::Firing => "FIRING",
                AlertState::Resolved => "RESOLVED",
            }
            .to_owned(),
            account_id: a.account_id.clone(),
            content_id: a.content_id.clone().unwrap_or_default(),
            started_at_ms: a.started_at,
            ended_at_ms: a.ended_at,
            revision: a.revision,
        }
    }
}

fn keep_latest<K: Ord, V>(m: &mut BTreeMap<K, V>, k: K, v: V, revision: impl Fn(&V) -> i64) {
    match m.get(&k) {
        Some(old) if revision(old) > revision(&v) => {}
        _ => {
            m.insert(k, v);
        }
    }
}

/// One metric compared.
#[derive(Debug, Clone)]
pub struct Metric {
    /// What was compared.
    pub name: &'static str,
    /// Cells compared.
    pub compared: usize,
    /// Cells equal.
    pub equal: usize,
    /// How cells compare ("equal", "within 1 %", …).
    pub how: &'static str,
    /// The first differing cells.
    pub differences: Vec<String>,
    /// Whether the metric passes (all equal, unless a metric says otherwise).
    pub ok: bool,
}

impl Metric {
    fn new(name: &'static str, how: &'static str) -> Self {
        Metric {
            name,
            compared: 0,
            equal: 0,
            how,
            differences: Vec::new(),
            ok: true,
        }
    }

    /// Counts one cell; `diff` is None when equal.
    fn cell(&mut self, diff: Option<String>) {
        self.compared += 1;
        match diff {
            None => self.equal += 1,
            Some(d) => {
                self.ok = false;
                if self.differences.len() < 5 {
                    self.differences.push(d);
                }
            }
        }
    }
}

/// Every metric compared.
#[derive(Debug, Clone)]
pub struct Report {
    /// In the order the summary shows them.
    pub metrics: Vec<Metric>,
}

impl Report {
    /// Every metric passes.
    pub fn ok(&self) -> bool {
        self.metrics.iter().all(|m| m.ok)
    }

    /// The metric called `name`.
    pub fn metric(&self, name: &str) -> Option<&Metric> {
        self.metrics.iter().find(|m| m.name == name)
    }

    /// The differences of the metrics named (all when `names` is empty), one line each.
    pub fn differences(&self, names: &[&str]) -> Vec<String> {
        self.metrics
            .iter()
            .filter(|m| !m.ok && (names.is_empty() || names.contains(&m.name)))
            .flat_map(|m| {
                std::iter::once(format!(
                    "{}: {} of {} {}",
                    m.name, m.equal, m.compared, m.how
                ))
                .chain(m.differences.iter().map(|d| format!("  {d}")))
            })
            .collect()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self.metrics.iter().map(|m| m.name.len()).max().unwrap_or(0);
        for m in &self.metrics {
            writeln!(
                f,
                "{:width$}  {} of {} {}{}",
                m.name,
                m.equal,
                m.compared,
                m.how,
                if m.ok { "" } else { "  <- DIFFERS" }
            )?;
            for d in &m.differences {
                writeln!(f, "{:width$}    {d}", "")?;
            }
        }
        Ok(())
    }
}

/// Metric names, as [`compare`] reports them.
pub mod names {
    /// MINUTE interactions per account and per post.
    pub const MINUTES: &str = "minutes";
    /// MINUTE per-kind counts per post.
    pub const KINDS: &str = "per-kind minutes";
    /// VELOCITY_5M per account and post.
    pub const VELOCITY: &str = "velocity (5 min)";
    /// FIRST_15M interactions.
    pub const FIRST_15M: &str = "first 15 min";
    /// FIRST_60M interactions.
    pub const FIRST_60M: &str = "first 60 min";
    /// early_accel.
    pub const ACCEL: &str = "acceleration";
    /// time_to_n.
    pub const TIME_TO_N: &str = "time to N";
    /// unique_engagers of MINUTE rows.
    pub const ENGAGERS_MINUTE: &str = "engagers per minute";
    /// unique_engagers of first-hour rows.
    pub const ENGAGERS_FIRST_HOUR: &str = "engagers first hour";
    /// Funnel stages per campaign.
    pub const FUNNELS: &str = "funnel stages";
    /// Account-hour conversation rows.
    pub const CONVERSATIONS: &str = "conversations";
    /// Injected spikes detected.
    pub const SPIKES: &str = "spikes detected";
    /// Post alerts on an injected spike.
    pub const SPIKE_PRECISION: &str = "post alerts on a spike";
    /// Too-late events dead-lettered.
    pub const TOO_LATE: &str = "too late dead-lettered";
}

/// Windows of `x` ending by this time (ms) are closed by event time alone: the input's last
/// minute closes them. Later ones close only once the input stops (an idle watermark).
pub fn closed_by(x: &Generated) -> i64 {
    let last_minute = x
        .expected
        .account_minutes
        .values()
        .flat_map(|m| m.keys())
        .max()
        .copied()
        .unwrap_or(i64::MIN / 2);
    last_minute - MINUTE
}

/// Compares `o` with the truth of `x`.
pub fn compare(x: &Generated, o: &Observed) -> Report {
    let e = &x.expected;
    let end = closed_by(x);
    let mut metrics = Vec::new();
    metrics.extend(minutes(x, o, end));
    metrics.extend(first_hour(x, o, end));
    metrics.push(funnels(x, o));
    metrics.push(conversations(x, o));
    metrics.extend(spikes(x, o));
    if let Some(n) = o.too_late {
        let want = e.too_late.len();
        let n = n as usize;
        let mut m = Metric::new(names::TOO_LATE, "equal");
        m.compared = want.max(n);
        m.equal = want.min(n);
        if n != want {
            m.ok = false;
            m.differences.push(format!(
                "{n} dead-lettered as late, {want} generated too late"
            ));
        }
        metrics.push(m);
    }
    Report { metrics }
}

/// Engager estimate `got` against the exact `want`.
pub fn engagers_close(want: u64, got: Option<i64>) -> bool {
    let Some(got) = got else {
        return want == 0;
    };
    if want <= ENGAGERS_EXACT_UP_TO {
        return got == want as i64;
    }
    (got as f64 - want as f64).abs() <= ENGAGERS_RELATIVE_ERROR * want as f64
}

fn quantile_close(want: Option<f64>, got: Option<f64>) -> bool {
    match (want, got) {
        (None, None) => true,
        (Some(w), Some(g)) => (w - g).abs() <= QUANTILE_RELATIVE_ERROR * w.abs() + 1e-6,
        _ => false,
    }
}

fn minutes(x: &Generated, o: &Observed, end: i64) -> [Metric; 4] {
    let e = &x.expected;
    let closed = |m: i64| m + MINUTE <= end;
    // (account, post) -> minute -> interactions, closed minutes with a non-zero count.
    let mut want: BTreeMap<(String, Option<String>), BTreeMap<i64, i64>> = BTreeMap::new();
    for (a, m) in &e.account_minutes {
        for (&t, &n) in m.iter().filter(|(t, n)| closed(**t) && **n != 0) {
            want.entry((a.clone(), None)).or_default().insert(t, n);
        }
    }
    for (c, m) in &e.content_minutes {
        let a = x.account_of(c).unwrap_or_default().to_owned();
        for (&t, &n) in m.iter().filter(|(t, n)| closed(**t) && **n != 0) {
            want.entry((a.clone(), Some(c.clone())))
                .or_default()
                .insert(t, n);
        }
    }
    let mut got: BTreeMap<(String, Option<String>), BTreeMap<i64, i64>> = BTreeMap::new();
    for ((a, c, w, s), r) in &o.rollups {
        if *w == WindowKind::Minute && r.interactions != 0 && closed(*s) {
            got.entry((a.clone(), c.clone()))
                .or_default()
                .insert(*s, r.interactions);
        }
    }
    let mut minutes = Metric::new(names::MINUTES, "equal");
    let empty = BTreeMap::new();
    for k in want.keys().chain(got.keys()).collect::<BTreeSet<_>>() {
        let (w, g) = (want.get(k).unwrap_or(&empty), got.get(k).unwrap_or(&empty));
        for t in w.keys().chain(g.keys()).collect::<BTreeSet<_>>() {
            let (wv, gv) = (w.get(t), g.get(t));
            minutes.cell((wv != gv).then(|| {
                format!(
                    "MINUTE {}/{} at {t}: expected {wv:?}, got {gv:?}",
                    k.0,
                    k.1.as_deref().unwrap_or("-")
                )
            }));
        }
    }
    // Per kind, per post and minute.
    let mut kinds = Metric::new(names::KINDS, "equal");
    let fields = |r: &Rollup| -> BTreeMap<&'static str, i64> {
        [
            ("COMMENT", r.comments),
            ("LIVE_COMMENT", r.live_comments),
            ("POST_REACTION", r.reactions),
            ("SHARE", r.shares),
            ("STORY_REPLY", r.story_replies),
            ("MENTION", r.mentions),
            ("BRAND_REPLY", r.brand_replies),
        ]
        .into_iter()
        .filter(|(_, n)| *n != 0)
        .collect()
    };
    let mut got_kinds: BTreeMap<(&str, i64), BTreeMap<&'static str, i64>> = BTreeMap::new();
    for ((_, c, w, s), r) in &o.rollups {
        if let (WindowKind::Minute, Some(c)) = (w, c) {
            let f = fields(r);
            if closed(*s) && !f.is_empty() {
                got_kinds.insert((c.as_str(), *s), f);
            }
        }
    }
    let mut want_kinds: BTreeMap<(&str, i64), BTreeMap<&'static str, i64>> = BTreeMap::new();
    for (c, m) in &e.content_kind_minutes {
        for (&t, ks) in m.iter().filter(|(t, _)| closed(**t)) {
            let f: BTreeMap<&'static str, i64> = [
                "COMMENT",
                "LIVE_COMMENT",
                "POST_REACTION",
                "SHARE",
                "STORY_REPLY",
                "MENTION",
                "BRAND_REPLY",
            ]
            .into_iter()
            .filter_map(|k| ks.get(k).filter(|n| **n != 0).map(|n| (k, *n)))
            .collect();
            if !f.is_empty() {
                want_kinds.insert((c.as_str(), t), f);
            }
        }
    }
    for k in want_kinds
        .keys()
        .chain(got_kinds.keys())
        .collect::<BTreeSet<_>>()
    {
        let (w, g) = (want_kinds.get(k), got_kinds.get(k));
        kinds.cell(
            (w != g).then(|| format!("MINUTE {} at {}: expected {w:?}, got {g:?}", k.0, k.1)),
        );
    }
    // Velocity: the sum of five minutes.
    let mut velocity = Metric::new(names::VELOCITY, "equal");
    let mut want_v: BTreeMap<(String, Option<String>, i64), i64> = BTreeMap::new();
    for (k, m) in &want {
        for &t in m.keys() {
            for j in 1..=5 {
                let end_v = t + j * MINUTE;
                if end_v <= end {
                    want_v
                        .entry((k.0.clone(), k.1.clone(), end_v))
                        .or_insert_with(|| {
                            (1..=5)
                                .map(|i| m.get(&(end_v - i * MINUTE)).copied().unwrap_or(0))
                                .sum()
                        });
                }
            }
        }
    }
    want_v.retain(|_, n| *n != 0);
    // (account, content, window end) -> (interactions, velocity).
    type VelocityKey = (String, Option<String>, i64);
    let mut got_v: BTreeMap<VelocityKey, (i64, Option<f64>)> = BTreeMap::new();
    for ((a, c, w, _), r) in &o.rollups {
        if *w == WindowKind::Velocity5m && r.window_end <= end && r.interactions != 0 {
            got_v.insert(
                (a.clone(), c.clone(), r.window_end),
                (r.interactions, r.velocity),
            );
        }
    }
    for k in want_v.keys().chain(got_v.keys()).collect::<BTreeSet<_>>() {
        let w = want_v.get(k).copied();
        let g = got_v.get(k).copied();
        let same = match (w, g) {
            (Some(n), Some((m, v))) => {
                n == m && v.is_some_and(|v| (v - n as f64 / 5.0).abs() < 1e-9)
            }
            _ => false,
        };
        velocity.cell((!same).then(|| {
            format!(
                "VELOCITY_5M {}/{} ending {}: expected {w:?} interactions, got {g:?}",
                k.0,
                k.1.as_deref().unwrap_or("-"),
                k.2
            )
        }));
    }
    // Engagers of MINUTE rows.
    let mut engagers = Metric::new(names::ENGAGERS_MINUTE, "within the sketch's error");
    let mut check = |a: &str, c: Option<&str>, m: &BTreeMap<i64, u64>| {
        for (&t, &n) in m.iter().filter(|(t, _)| closed(**t)) {
            let key = (a.to_owned(), c.map(str::to_owned), WindowKind::Minute, t);
            let got = o.rollups.get(&key).and_then(|r| r.unique_engagers);
            engagers.cell((!engagers_close(n, got)).then(|| {
                format!(
                    "engagers {a}/{} at {t}: expected {n}, got {got:?}",
                    c.unwrap_or("-")
                )
            }));
        }
    };
    for (a, m) in &e.account_minute_engagers {
        check(a, None, m);
    }
    for (c, m) in &e.content_minute_engagers {
        check(x.account_of(c).unwrap_or_default(), Some(c), m);
    }
    [minutes, kinds, velocity, engagers]
}

fn first_hour(x: &Generated, o: &Observed, end: i64) -> [Metric; 5] {
    let e = &x.expected;
    let mut f15 = Metric::new(names::FIRST_15M, "equal");
    let mut f60 = Metric::new(names::FIRST_60M, "equal");
    let mut accel = Metric::new(names::ACCEL, "equal");
    let mut ttn = Metric::new(names::TIME_TO_N, "equal to the ms");
    let mut engagers = Metric::new(names::ENGAGERS_FIRST_HOUR, "within the sketch's error");
    for (c, fh) in &e.first_hour {
        let Some(post) = x.posts.iter().find(|p| &p.content_id == c) else {
            continue;
        };
        let p = post.published_at;
        let find = |w: WindowKind| {
            o.rollups
                .get(&(post.account_id.clone(), Some(c.clone()), w, p))
        };
        if p + 15 * MINUTE <= end {
            let r = find(WindowKind::First15m);
            let got = r.map(|r| r.interactions);
            f15.cell(
                (got != Some(fh.first_15m))
                    .then(|| format!("FIRST_15M {c}: expected {}, got {got:?}", fh.first_15m)),
            );
            let got = r.and_then(|r| r.unique_engagers);
            engagers.cell((!engagers_close(fh.engagers_15m, got)).then(|| {
                format!(
                    "FIRST_15M engagers {c}: expected {}, got {got:?}",
                    fh.engagers_15m
                )
            }));
        }
        if p + 60 * MINUTE > end {
            continue;
        }
        let r = find(WindowKind::First60m);
        let got = r.map(|r| r.interactions);
        f60.cell(
            (got != Some(fh.first_60m))
                .then(|| format!("FIRST_60M {c}: expected {}, got {got:?}", fh.first_60m)),
        );
        let want = (fh.first_60m > 0).then(|| fh.first_15m as f64 / fh.first_60m as f64);
        let got = r.and_then(|r| r.early_accel);
        let same = match (want, got) {
            (Some(w), Some(g)) => (w - g).abs() < 1e-9,
            (None, None) => r.is_some(),
            _ => false,
        };
        accel.cell((!same).then(|| format!("early_accel {c}: expected {want:?}, got {got:?}")));
        let got = r.and_then(|r| r.time_to_n_minutes);
        let same = match (fh.time_to_n_minutes, got) {
            (Some(w), Some(g)) => (w - g).abs() < 1e-6,
            (None, None) => r.is_some(),
            _ => false,
        };
        ttn.cell((!same).then(|| {
            format!(
                "time to N of {c}: expected {:?} min, got {got:?}",
                fh.time_to_n_minutes
            )
        }));
        let got = r.and_then(|r| r.unique_engagers);
        engagers.cell((!engagers_close(fh.engagers_60m, got)).then(|| {
            format!(
                "FIRST_60M engagers {c}: expected {}, got {got:?}",
                fh.engagers_60m
            )
        }));
    }
    [f15, f60, accel, ttn, engagers]
}

/// Per campaign and stage (and the conversion value), summed over its HOUR windows and over
/// its DAY windows: both equal the distinct actors the generator sent through that stage.
fn funnels(x: &Generated, o: &Observed) -> Metric {
    const STAGES: [&str; 7] = [
        "triggered",
        "private_reply_sent",
        "dm_read",
        "engaged",
        "link_clicked",
        "converted",
        "value_cents",
    ];
    let mut m = Metric::new(names::FUNNELS, "equal");
    let mut got: BTreeMap<(&str, WindowKind), [i64; 7]> = BTreeMap::new();
    for f in o.funnels.values() {
        let s = f.stages();
        let v = [
            s[0],
            s[1],
            s[2],
            s[3],
            s[4],
            s[5],
            (f.conversion_value * 100.0).round() as i64,
        ];
        let t = got.entry((f.campaign_id.as_str(), f.window)).or_default();
        for (a, b) in t.iter_mut().zip(v) {
            *a += b;
        }
    }
    let campaigns: BTreeSet<&str> = x
        .expected
        .funnels
        .keys()
        .map(String::as_str)
        .chain(got.keys().map(|k| k.0))
        .collect();
    for c in campaigns {
        let want = x.expected.funnels.get(c).map(|f| {
            [
                f.triggered,
                f.private_reply_sent,
                f.dm_read,
                f.engaged,
                f.link_clicked,
                f.converted,
                f.conversion_value_cents,
            ]
            .map(|v| v as i64)
        });
        let want = want.unwrap_or_default();
        let hour = got.get(&(c, WindowKind::Hour)).copied().unwrap_or_default();
        let day = got.get(&(c, WindowKind::Day)).copied().unwrap_or_default();
        for (i, stage) in STAGES.iter().enumerate() {
            m.cell((hour[i] != want[i] || day[i] != want[i]).then(|| {
                format!(
                    "{c} {stage}: expected {}, got {} (HOUR windows) and {} (DAY windows)",
                    want[i], hour[i], day[i]
                )
            }));
        }
    }
    m
}

/// Account-level HOUR rows, every field (quantiles within the sketch's 1 %).
fn conversations(x: &Generated, o: &Observed) -> Metric {
    let mut m = Metric::new(names::CONVERSATIONS, "account-hours equal in every field");
    let mut got: BTreeMap<(&str, i64), ConversationHour> = BTreeMap::new();
    for r in o.conversations.values() {
        if r.window != WindowKind::Hour || r.content_id.is_some() {
            continue;
        }
        let h = ConversationHour {
            inbound: r.inbound,
            answered: r.answered,
            inbound_comments: r.inbound_comments,
            answered_comments: r.answered_comments,
            inbound_story_replies: r.inbound_story_replies,
            inbound_dms: r.inbound_dms,
            root_comments: r.root_comments,
            reply_comments: r.reply_comments,
            median_response_s: r.median_response_s,
            p90_response_s: r.p90_response_s,
            median_first_response_s: r.median_first_response_s,
        };
        if h.inbound != 0 || h.root_comments != 0 || h.reply_comments != 0 {
            got.insert((r.account_id.as_str(), r.window_start), h);
        }
    }
    let mut want: BTreeMap<(&str, i64), &ConversationHour> = BTreeMap::new();
    for (a, hours) in &x.expected.conversations {
        for (&h, row) in hours {
            want.insert((a.as_str(), h), row);
        }
    }
    for k in want.keys().chain(got.keys()).collect::<BTreeSet<_>>() {
        let (w, g) = (want.get(k).copied(), got.get(k));
        let diff = match (w, g) {
            (Some(w), Some(g)) => {
                let counts = [
                    ("inbound", w.inbound, g.inbound),
                    ("answered", w.answered, g.answered),
                    ("inbound_comments", w.inbound_comments, g.inbound_comments),
                    (
                        "answered_comments",
                        w.answered_comments,
                        g.answered_comments,
                    ),
                    (
                        "inbound_story_replies",
                        w.inbound_story_replies,
                        g.inbound_story_replies,
                    ),
                    ("inbound_dms", w.inbound_dms, g.inbound_dms),
                    ("root_comments", w.root_comments, g.root_comments),
                    ("reply_comments", w.reply_comments, g.reply_comments),
                ];
                let mut bad: Vec<String> = counts
                    .iter()
                    .filter(|c| c.1 != c.2)
                    .map(|c| format!("{} {} (expected {})", c.0, c.2, c.1))
                    .collect();
                for (name, wq, gq) in [
                    (
                        "median_response_s",
                        w.median_response_s,
                        g.median_response_s,
                    ),
                    ("p90_response_s", w.p90_response_s, g.p90_response_s),
                    (
                        "median_first_response_s",
                        w.median_first_response_s,
                        g.median_first_response_s,
                    ),
                ] {
                    if !quantile_close(wq, gq) {
                        bad.push(format!("{name} {gq:?} (expected {wq:?})"));
                    }
                }
                (!bad.is_empty()).then(|| bad.join(", "))
            }
            (w, g) => Some(format!("expected {w:?}, got {g:?}")),
        };
        m.cell(diff.map(|d| format!("{} hour {}: {d}", k.0, k.1)));
    }
    m
}

/// Recall: every injected spike has exactly one FIRING post alert starting at most 2 minutes
/// before its onset's minute (a detector that fires on 2 unusual minutes of 3 dates the alert
/// from the first; a natural outlier just before the onset can be that one) and before its end, RESOLVED after the spike; precision: the share of post
/// alerts that belong to an injected spike, at least [`MIN_SPIKE_PRECISION`]. A record
/// written twice is a difference, and so is an alert fired early (revision 0) that the closed
/// minutes neither confirmed (FIRING, revision 1) nor withdrew (RESOLVED, revision 2). Recall
/// and precision count the closed minutes' FIRING records.
fn spikes(x: &Generated, o: &Observed) -> [Metric; 2] {
    let spikes = &x.expected.spikes;
    let belongs = |a: &AlertSeen, s: &crate::Spike| {
        a.content_id == s.content_id
            && a.account_id == s.account_id
            && a.started_at_ms >= s.start_ms - s.start_ms.rem_euclid(MINUTE) - 2 * MINUTE
            && a.started_at_ms < s.end_ms
    };
    let mut recall = Metric::new(names::SPIKES, "detected, resolved after their end");
    for s in spikes {
        let firing: Vec<&AlertSeen> = o
            .alerts
            .iter()
            .filter(|a| a.state == "FIRING" && a.revision > 0 && belongs(a, s))
            .collect();
        let diff = if firing.len() != 1 {
            Some(format!(
                "{} FIRING alerts for the spike on {} at {} ({} min)",
                firing.len(),
                s.content_id,
                s.start_ms,
                (s.end_ms - s.start_ms) / MINUTE
            ))
        } else {
            let resolved = o
                .alerts
                .iter()
                .find(|a| a.state == "RESOLVED" && a.alert_id == firing[0].alert_id);
            match resolved.and_then(|r| r.ended_at_ms) {
                Some(end) if end >= s.end_ms - MINUTE => None,
                other => Some(format!(
                    "the spike on {} at {} not resolved after its end {} (ended_at {other:?})",
                    s.content_id, s.start_ms, s.end_ms
                )),
            }
        };
        recall.cell(diff);
    }
    let mut precision = Metric::new(names::SPIKE_PRECISION, "on an injected spike");
    let mut seen = BTreeSet::new();
    for a in &o.alerts {
        if !seen.insert((a.alert_id.as_str(), a.state.as_str(), a.revision)) {
            precision.ok = false;
            precision.differences.push(format!(
                "written twice: {} {} revision {}",
                a.alert_id, a.state, a.revision
            ));
        }
    }
    for a in o.alerts.iter().filter(|a| a.revision == 0) {
        if !seen.contains(&(a.alert_id.as_str(), "FIRING", 1))
            && !seen.contains(&(a.alert_id.as_str(), "RESOLVED", 2))
        {
            precision.ok = false;
            precision.differences.push(format!(
                "fired early, neither confirmed nor withdrawn: {}",
                a.alert_id
            ));
        }
    }
    let mut wrong = Vec::new();
    let mut launches = 0;
    for a in o
        .alerts
        .iter()
        .filter(|a| a.state == "FIRING" && a.revision > 0 && !a.content_id.is_empty())
    {
        precision.compared += 1;
        if spikes.iter().any(|s| belongs(a, s)) {
            precision.equal += 1;
        } else if launch_outlier(x, &a.content_id, a.started_at_ms) {
            precision.equal += 1;
            launches += 1;
        } else {
            wrong.push(format!(
                "alert on {} at {} without an injected spike",
                a.content_id, a.started_at_ms
            ));
        }
    }
    if precision.compared > 0
        && (precision.equal as f64) < MIN_SPIKE_PRECISION * precision.compared as f64
    {
        precision.ok = false;
    }
    precision.differences.extend(wrong.into_iter().take(5));
    precision.how = match (precision.ok, launches) {
        (true, 0) => "on an injected spike",
        (true, _) => "on an injected spike or a launch outlier",
        (false, _) => "on an injected spike or a launch outlier (at least 97 % needed)",
    };
    [recall, precision]
}

/// Whether a post's minute starting at `minute_ms` is, by DESIGN.md's rule for young posts
/// (judged against the account's recent posts at the same age, since every new post
/// "spikes"), a spike the generator did not inject: the post is younger than 24 h, and its
/// count is at least [`LAUNCH_MIN_COUNT`] and, plus one, at least [`LAUNCH_FACTOR`] times the
/// highest count (plus one) of the account's earlier posts at that age. The workload's reach
/// is heavy-tailed (Pareto): now and then a post launches at a hundred times its account's
/// usual, and a detector that stays quiet on it would be wrong. Taking the highest of the
/// earlier posts, not their typical count, keeps the rule strict.
pub fn launch_outlier(x: &Generated, content_id: &str, minute_ms: i64) -> bool {
    let Some(post) = x.posts.iter().find(|p| p.content_id == content_id) else {
        return false;
    };
    let first_minute = |p: &crate::Post| p.published_at - p.published_at.rem_euclid(MINUTE);
    let age = minute_ms - first_minute(post);
    if !(0..YOUNG_MS).contains(&age) {
        return false;
    }
    let count = |p: &crate::Post, minute: i64| {
        x.expected
            .content_minutes
            .get(&p.content_id)
            .and_then(|m| m.get(&minute))
            .copied()
            .unwrap_or(0)
    };
    let observed = count(post, minute_ms);
    let highest = x
        .posts
        .iter()
        .filter(|p| p.account_id == post.account_id && p.published_at < post.published_at)
        .map(|p| count(p, first_minute(p) + age))
        .max();
    // An account's first post has nothing to be compared with.
    let Some(highest) = highest else {
        return false;
    };
    observed >= LAUNCH_MIN_COUNT && observed + 1 >= LAUNCH_FACTOR * (highest.max(0) + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Expected, Post, WorkloadConfig};
    use banter_model::ContentType;

    const T0: i64 = 1_796_004_000_000; // a minute's start

    fn post(n: u32, published_at: i64) -> Post {
        Post {
            account: 1,
            account_id: "acct-1".into(),
            content_id: format!("post-1-{n}"),
            content_type: ContentType::Feed,
            published_at,
            amplitude: 3.0,
            cta: None,
        }
    }

    /// Three earlier posts of the account launch at a few interactions a minute (the highest
    /// at age 1: 5); the fourth launches with `launch` at age 1.
    fn workload(launch: i64) -> Generated {
        let posts = vec![
            post(0, T0 + 5_000),
            post(1, T0 + 60 * MINUTE + 5_000),
            post(2, T0 + 120 * MINUTE + 5_000),
            post(3, T0 + 600 * MINUTE + 5_000),
        ];
        let mut expected = Expected::default();
        for (p, at_age_1) in posts.iter().zip([2, 5, 3, launch]) {
            let first = p.published_at - p.published_at.rem_euclid(MINUTE);
            let minutes = BTreeMap::from([(first, 1), (first + MINUTE, at_age_1)]);
            expected
                .content_minutes
                .insert(p.content_id.clone(), minutes);
        }
        Generated {
            config: WorkloadConfig::default(),
            posts,
            expected,
        }
    }

    #[test]
    fn a_launch_twenty_times_the_accounts_earlier_posts_is_an_outlier() {
        let age_1 = T0 + 601 * MINUTE;
        // (5 + 1) × 20 = 120: 119 interactions (plus one) reach it, 118 do not.
        assert!(launch_outlier(&workload(119), "post-1-3", age_1));
        assert!(!launch_outlier(&workload(118), "post-1-3", age_1));
        // Another minute of the same post, or a post past its first day, is not.
        assert!(!launch_outlier(&workload(400), "post-1-3", age_1 + MINUTE));
        assert!(!launch_outlier(
            &workload(400),
            "post-1-3",
            age_1 + YOUNG_MS
        ));
        // The account's first post has nothing to be compared with; unknown posts are not.
        assert!(!launch_outlier(&workload(400), "post-1-0", T0 + MINUTE));
        assert!(!launch_outlier(&workload(400), "post-9-9", age_1));
    }

    #[test]
    fn fewer_than_ten_interactions_are_no_launch_outlier() {
        let mut x = workload(9);
        for m in x.expected.content_minutes.values_mut().take(3) {
            for c in m.values_mut() {
                *c = 0;
            }
        }
        // Earlier posts silent at that age: 19 passes the factor (20 ≥ 20 × 1), 9 not the floor.
        assert!(!launch_outlier(&x, "post-1-3", T0 + 601 * MINUTE));
        x.expected
            .content_minutes
            .get_mut("post-1-3")
            .into_iter()
            .for_each(|m| m.values_mut().for_each(|c| *c = 19));
        assert!(launch_outlier(&x, "post-1-3", T0 + 601 * MINUTE));
    }
}
