//! CTA funnels: distinct (actor, campaign) per stage, per campaign and hour / day.
//!
//! * **Stages.** TRIGGER: an inbound COMMENT, STORY_REPLY or DM_IN (ADD, not by the brand) whose
//!   text matches a campaign ([`crate::cta::Matcher`]); the first per actor and campaign.
//!   PRIVATE_REPLY_SENT, DM_READ, engaged (DM_POSTBACK — postbacks and quick replies — or a
//!   DM_IN that carries the campaign in `cta_campaign_id` or `ref`), LINK_CLICK, CONVERSION
//!   (with `value` and `currency`). The actor is the user (ingest sets `actor_id` to the user for
//!   the brand's messages too).
//! * **Attribution.** A stage event belongs to the campaign it names (`cta_campaign_id`); a
//!   CONVERSION without one to the campaign of its `click_id`'s click (and that click's actor);
//!   otherwise to the actor's last touch: the campaign of the account the actor most recently
//!   triggered at or before the event. A stage counts only between the trigger and
//!   `attribution_ms` (7 days) after it; a conversion after that is not attributed.
//! * **Windows.** Each (actor, campaign) counts once per stage, in the HOUR and DAY windows of
//!   the first time it reached that stage; stage latencies (trigger → private reply, private
//!   reply → click, click → conversion) go to the window of the later stage, as a
//!   [`Quantiles`] sketch (medians within 1 %). Windows are emitted early and updated: every
//!   time the watermark enters a new minute, each window that changed since it was last emitted
//!   is emitted again with a higher revision (the highest input offset folded in), open or
//!   closed, so dashboards see today's funnel during the day. A window takes changes until the
//!   watermark is `allowed_lateness_ms` past its end, then it is final and forgotten.
//! * **Exactly once.** The state (per actor and campaign: trigger and stage times; per window:
//!   its counts) is a changelog ([`Funnels::changes`]) written in the transaction of the rows it
//!   produced; inputs before [`Funnels::next_offset`] were applied before a restore and are
//!   skipped when the partition's input is replayed.

#[cfg(test)]
use std::collections::BTreeMap;
use std::collections::BTreeSet;

use banter_model::{Action, EngagementEvent, FunnelRollup, Kind, WindowKind};
use serde::{Deserialize, Serialize};

use crate::cta::Matcher;
use crate::quantile::Quantiles;
use crate::store::{
    window_len, window_start, Map, Pending, Progress, Set, Windows, DAY, HOUR, NONE,
};

/// Funnel parameters.
#[derive(Debug, Clone, Copy)]
pub struct FunnelConfig {
    /// How long after the trigger stages are attributed (7 days).
    pub attribution_ms: i64,
    /// How long after a window's end it is still corrected (the stream's allowed lateness).
    pub allowed_lateness_ms: i64,
}

impl Default for FunnelConfig {
    fn default() -> Self {
        FunnelConfig {
            attribution_ms: 7 * DAY,
            allowed_lateness_ms: HOUR,
        }
    }
}

/// Stages in order.
pub const STAGES: [&str; 6] = [
    "triggered",
    "private_reply_sent",
    "dm_read",
    "engaged",
    "link_clicked",
    "converted",
];

/// One (actor, campaign).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct ActorState {
    account: String,
    /// First trigger time.
    #[serde(default)]
    trigger: Option<i64>,
    /// Stages 1–4: the earliest times seen (at most [`KEEP`]), sorted.
    #[serde(default)]
    times: [Vec<i64>; 4],
    /// Conversions: (time, value in cents, currency), earliest first.
    #[serde(default)]
    conversions: Vec<(i64, i64, Option<String>)>,
    /// Click ids of its clicks.
    #[serde(default)]
    clicks: Vec<String>,
    /// Latest event time seen (for forgetting a state that never got its trigger).
    #[serde(default)]
    last_seen: i64,
}

/// Earliest times kept per stage: a stage time before the trigger does not count, a later one
/// may.
const KEEP: usize = 3;

/// One stage reached, as it counts in windows.
#[derive(Debug, Clone, PartialEq)]
struct Contribution {
    stage: usize,
    time: i64,
    /// (which latency, seconds): 0 trigger → reply, 1 reply → click, 2 click → conversion.
    latency: Option<(usize, f64)>,
    cents: i64,
    currency: Option<String>,
}

/// The aggregates of one campaign in one window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct WindowAgg {
    account: String,
    counts: [i64; 6],
    cents: i64,
    #[serde(default)]
    currency: Option<String>,
    latencies: [Quantiles; 3],
    revision: i64,
    /// Changed since it was last emitted.
    pending: bool,
}

impl Pending for WindowAgg {
    fn pending(&mut self) -> &mut bool {
        &mut self.pending
    }
}

/// (campaign, kind: HOUR or DAY, window start).
type WindowKey = (String, WindowKind, i64);

/// Counters of what the funnels saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FunnelStats {
    /// Keyword matches that triggered (first per actor and campaign, or an earlier one).
    pub triggers: u64,
    /// Stage events with no campaign to attribute them to.
    pub unattributed: u64,
}

/// The CTA funnels of one partition.
#[derive(Debug, Clone)]
pub struct Funnels {
    cfg: FunnelConfig,
    matcher: Matcher,
    actors: Map<(String, String), ActorState>,
    windows: Windows<WindowKey, WindowAgg>,
    /// (account, actor) → campaigns it triggered (derived from `actors`).
    touches: Map<(String, String), BTreeSet<String>>,
    /// click id → (campaign, actor) (derived from `actors`).
    clicks: Map<String, (String, String)>,
    progress: Progress,
    dirty_actors: Set<(String, String)>,
    removed: Vec<String>,
    meta_dirty: bool,
    stats: FunnelStats,
}

impl Funnels {
    /// Funnels for the campaigns of `matcher`.
    pub fn new(cfg: FunnelConfig, matcher: Matcher) -> Self {
        Funnels {
            cfg,
            matcher,
            actors: Map::default(),
            windows: Windows::default(),
            touches: Map::default(),
            clicks: Map::default(),
            progress: Progress::default(),
            dirty_actors: Set::default(),
            removed: Vec::new(),
            meta_dirty: false,
            stats: FunnelStats::default(),
        }
    }

    /// Replaces the campaigns (a reload); state and windows stay.
    pub fn set_matcher(&mut self, matcher: Matcher) {
        self.matcher = matcher;
    }

    /// Inputs before this offset were applied.
    pub fn next_offset(&self) -> i64 {
        self.progress.next_offset
    }

    /// What it saw.
    pub fn stats(&self) -> &FunnelStats {
        &self.stats
    }

    /// (actor, campaign) states and open windows held.
    pub fn state_entries(&self) -> usize {
        self.actors.len() + self.windows.map.len()
    }

    fn contributions(&self, st: &ActorState) -> Vec<Contribution> {
        let Some(t0) = st.trigger else {
            return Vec::new();
        };
        let within = |t: i64| t >= t0 && t <= t0.saturating_add(self.cfg.attribution_ms);
        let mut out = vec![Contribution {
            stage: 0,
            time: t0,
            latency: None,
            cents: 0,
            currency: None,
        }];
        let mut reached = [None; 6];
        reached[0] = Some(t0);
        for (slot, times) in reached[1..5].iter_mut().zip(&st.times) {
            *slot = times.iter().copied().find(|&t| within(t));
        }
        let conversion = st.conversions.iter().find(|c| within(c.0));
        reached[5] = conversion.map(|c| c.0);
        let secs = |a: Option<i64>, b: i64| a.map(|a| (b - a) as f64 / 1000.0);
        for (s, t) in reached.iter().enumerate().skip(1) {
            let Some(t) = *t else { continue };
            let latency = match s {
                1 => secs(reached[0], t).map(|l| (0, l)),
                4 => secs(reached[1], t).map(|l| (1, l)),
                5 => secs(reached[4], t).map(|l| (2, l)),
                _ => None,
            };
            let (cents, currency) = match (s, conversion) {
                (5, Some(c)) => (c.1, c.2.clone()),
                _ => (0, None),
            };
            out.push(Contribution {
                stage: s,
                time: t,
                latency,
                cents,
                currency,
            });
        }
        out
    }

    /// The campaign a stage event belongs to, and the actor whose funnel it is.
    fn attribute(&self, e: &EngagementEvent, actor: &str) -> Option<(String, String)> {
        if let Some(c) = e.cta_campaign_id.as_ref().filter(|c| !c.is_empty()) {
            return Some((c.clone(), actor.to_owned()));
        }
        if e.kind == Kind::Conversion {
            if let Some(hit) = e.click_id.as_ref().and_then(|k| self.clicks.get(k)) {
                return Some(hit.clone());
            }
        }
        // Last touch: the campaign the actor most recently triggered at or before the event.
        let campaigns = self
            .touches
            .get(&(e.account_id.clone(), actor.to_owned()))?;
        campaigns
            .iter()
            .filter_map(|c| {
                let t = self.actors.get(&(c.clone(), actor.to_owned()))?.trigger?;
                (t <= e.event_time).then_some((t, c))
            })
            .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(a.1)))
            .map(|(_, c)| (c.clone(), actor.to_owned()))
    }

    /// Applies one event the engine counted (not a duplicate, not too late) read at `offset`.
    /// The windows it changes are emitted by the next [`Funnels::advance`] into a new minute.
    pub fn process(&mut self, e: &EngagementEvent, offset: i64) {
        if !self.progress.accept(offset) {
            return; // applied before the restore
        }
        self.meta_dirty = true;
        let Some(actor) = e.actor_id.as_deref().filter(|a| !a.is_empty()) else {
            return;
        };
        let inbound = matches!(e.kind, Kind::Comment | Kind::StoryReply | Kind::DmIn)
            && e.action == Action::Add
            && !e.is_brand_actor;
        let (campaign, actor, stage) =
            if let Some(c) = inbound.then(|| self.matcher.trigger(e)).flatten() {
                (c.id.clone(), actor.to_owned(), 0)
            } else {
                let stage = match e.kind {
                    Kind::PrivateReplySent => 1,
                    Kind::DmRead => 2,
                    Kind::DmPostback => 3,
                    Kind::DmIn if inbound => {
                        // Engaged only when the message carries the campaign.
                        let named = e.cta_campaign_id.clone().or_else(|| e.ref_.clone());
                        let Some(c) = named.filter(|c| !c.is_empty()) else {
                            return;
                        };
                        return self.apply(c, actor.to_owned(), 3, e, offset);
                    }
                    Kind::LinkClick => 4,
                    Kind::Conversion => 5,
                    _ => return,
                };
                if e.action != Action::Add {
                    return;
                }
                match self.attribute(e, actor) {
                    Some((c, a)) => (c, a, stage),
                    None => {
                        self.stats.unattributed += 1;
                        return;
                    }
                }
            };
        if stage == 0 {
            self.stats.triggers += 1;
        }
        self.apply(campaign, actor, stage, e, offset);
    }

    fn apply(
        &mut self,
        campaign: String,
        actor: String,
        stage: usize,
        e: &EngagementEvent,
        offset: i64,
    ) {
        let key = (campaign.clone(), actor.clone());
        let mut st = self
            .actors
            .get(&key)
            .cloned()
            .unwrap_or_else(|| ActorState {
                account: e.account_id.clone(),
                last_seen: NONE,
                ..ActorState::default()
            });
        let before = self.contributions(&st);
        let t = e.event_time;
        st.last_seen = st.last_seen.max(t);
        match stage {
            0 => {
                st.trigger = Some(st.trigger.map_or(t, |x| x.min(t)));
                self.touches
                    .entry((st.account.clone(), actor.clone()))
                    .or_default()
                    .insert(campaign.clone());
            }
            5 => {
                let cents = e.value.map_or(0, |v| (v * 100.0).round() as i64);
                st.conversions.push((t, cents, e.currency.clone()));
                st.conversions.sort_by_key(|c| c.0);
                st.conversions.truncate(KEEP);
            }
            s => {
                let v = &mut st.times[s - 1];
                if !v.contains(&t) {
                    v.push(t);
                    v.sort_unstable();
                    v.truncate(KEEP);
                }
                if s == 4 {
                    if let Some(k) = e.click_id.as_ref().filter(|k| !k.is_empty()) {
                        if !st.clicks.contains(k) {
                            st.clicks.push(k.clone());
                        }
                        self.clicks.insert(k.clone(), key.clone());
                    }
                }
            }
        }
        let after = self.contributions(&st);
        self.actors.insert(key.clone(), st);
        self.dirty_actors.insert(key);
        if before == after {
            return;
        }
        let account = e.account_id.clone();
        let mut touched: BTreeSet<WindowKey> = BTreeSet::new();
        // Only what changed: stages that left or reached a time, or changed latency or value.
        let gone: Vec<&Contribution> = before.iter().filter(|c| !after.contains(c)).collect();
        let new: Vec<&Contribution> = after.iter().filter(|c| !before.contains(c)).collect();
        for (sign, list) in [(-1i64, gone), (1, new)] {
            for c in list {
                for kind in [WindowKind::Hour, WindowKind::Day] {
                    let wk = (campaign.clone(), kind, window_start(kind, c.time));
                    // A window past the lateness is final (and forgotten).
                    if self
                        .progress
                        .is_final(wk.2 + window_len(kind), self.cfg.allowed_lateness_ms)
                    {
                        continue;
                    }
                    let w = self
                        .windows
                        .map
                        .entry(wk.clone())
                        .or_insert_with(|| WindowAgg {
                            account: account.clone(),
                            ..WindowAgg::default()
                        });
                    w.counts[c.stage] += sign;
                    if c.stage == 5 {
                        w.cents += sign * c.cents;
                        if sign > 0 && w.currency.is_none() {
                            w.currency.clone_from(&c.currency);
                        }
                    }
                    if let Some((i, l)) = c.latency {
                        if sign > 0 {
                            w.latencies[i].add(l);
                        } else {
                            w.latencies[i].remove(l);
                        }
                    }
                    touched.insert(wk);
                }
            }
        }
        for wk in touched {
            if let Some(w) = self.windows.map.get_mut(&wk) {
                w.revision = w.revision.max(offset);
            }
            self.windows.changed(&wk);
        }
    }

    fn row(wk: &WindowKey, w: &WindowAgg, emitted_at: i64) -> FunnelRollup {
        let median = |q: &Quantiles| q.quantile(0.5);
        FunnelRollup {
            account_id: w.account.clone(),
            campaign_id: wk.0.clone(),
            window: wk.1,
            window_start: wk.2,
            window_end: wk.2 + window_len(wk.1),
            revision: w.revision,
            triggered: w.counts[0],
            private_reply_sent: w.counts[1],
            dm_read: w.counts[2],
            engaged: w.counts[3],
            link_clicked: w.counts[4],
            converted: w.counts[5],
            conversion_value: w.cents as f64 / 100.0,
            currency: w.currency.clone(),
            median_trigger_to_reply_s: median(&w.latencies[0]),
            median_reply_to_click_s: median(&w.latencies[1]),
            median_click_to_conversion_s: median(&w.latencies[2]),
            emitted_at,
        }
    }

    /// Moves the watermark. Entering a new minute, it emits the windows that changed since
    /// their last emission; entering a new hour, it forgets what no event can change any more.
    pub fn advance(&mut self, wm: i64, out: &mut Vec<FunnelRollup>) {
        let Some(moved) = self.progress.advance(wm) else {
            return;
        };
        self.meta_dirty = true;
        if moved.minute {
            self.windows.emit(|wk, w| Self::row(wk, w, wm), out);
        }
        if moved.hour {
            self.forget(wm);
        }
    }

    /// Forgets final windows and (actor, campaign) states past their attribution.
    fn forget(&mut self, wm: i64) {
        let lateness = self.cfg.allowed_lateness_ms;
        let progress = &self.progress;
        self.removed.extend(self.windows.forget(
            |wk| progress.is_final(wk.2 + window_len(wk.1), lateness),
            Self::window_name,
        ));
        let attribution = self.cfg.attribution_ms;
        let old: Vec<(String, String)> = self
            .actors
            .iter()
            .filter(|(_, st)| {
                let until = match st.trigger {
                    Some(t) => t.saturating_add(attribution),
                    None => st.last_seen,
                };
                until.saturating_add(lateness) < wm
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in old {
            if let Some(st) = self.actors.remove(&k) {
                for c in &st.clicks {
                    self.clicks.remove(c);
                }
                let tk = (st.account.clone(), k.1.clone());
                if let Some(set) = self.touches.get_mut(&tk) {
                    set.remove(&k.0);
                    if set.is_empty() {
                        self.touches.remove(&tk);
                    }
                }
            }
            self.dirty_actors.remove(&k);
            self.removed.push(Self::actor_name(&k));
        }
    }

    fn actor_name(k: &(String, String)) -> String {
        format!("a/{}\u{1f}{}", k.0, k.1)
    }

    fn window_name(k: &WindowKey) -> String {
        let kind = if k.1 == WindowKind::Hour { "H" } else { "D" };
        format!("w/{}\u{1f}{kind}\u{1f}{}", k.0, k.2)
    }

    /// State changed since the last call, as changelog entries (name, value; None: deleted).
    pub fn changes(&mut self) -> Vec<(String, Option<Vec<u8>>)> {
        let mut out: Vec<(String, Option<Vec<u8>>)> = std::mem::take(&mut self.removed)
            .into_iter()
            .map(|n| (n, None))
            .collect();
        for k in std::mem::take(&mut self.dirty_actors) {
            if let Some(st) = self.actors.get(&k) {
                out.push((Self::actor_name(&k), serde_json::to_vec(st).ok()));
            }
        }
        self.windows.changes(Self::window_name, &mut out);
        if std::mem::take(&mut self.meta_dirty) {
            out.push(("m".into(), serde_json::to_vec(&self.progress).ok()));
        }
        out
    }

    /// Takes one changelog entry back (latest per name, any order).
    pub fn restore(&mut self, name: &str, value: &[u8]) -> Result<(), String> {
        let err = |e: serde_json::Error| format!("funnel state {name}: {e}");
        if name == "m" {
            self.progress = serde_json::from_slice(value).map_err(err)?;
        } else if let Some(k) = name.strip_prefix("a/") {
            let (c, a) = k
                .split_once('\u{1f}')
                .ok_or_else(|| format!("funnel state {name}: no actor"))?;
            let st: ActorState = serde_json::from_slice(value).map_err(err)?;
            let key = (c.to_owned(), a.to_owned());
            if st.trigger.is_some() {
                self.touches
                    .entry((st.account.clone(), a.to_owned()))
                    .or_default()
                    .insert(c.to_owned());
            }
            for click in &st.clicks {
                self.clicks.insert(click.clone(), key.clone());
            }
            self.actors.insert(key, st);
        } else if let Some(k) = name.strip_prefix("w/") {
            let mut parts = k.split('\u{1f}');
            let (Some(c), Some(kind), Some(start)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(format!("funnel state {name}: bad window name"));
            };
            let kind = if kind == "H" {
                WindowKind::Hour
            } else {
                WindowKind::Day
            };
            let start: i64 = start
                .parse()
                .map_err(|_| format!("funnel state {name}: bad window start"))?;
            let w: WindowAgg = serde_json::from_slice(value).map_err(err)?;
            self.windows.restore((c.to_owned(), kind, start), w);
        } else {
            return Err(format!("funnel state {name}: unknown entry"));
        }
        Ok(())
    }

    /// Drops pending changes (after a restore).
    pub fn clean(&mut self) {
        self.dirty_actors.clear();
        self.windows.clean();
        self.removed.clear();
        self.meta_dirty = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cta::{Campaign, Scope};
    use banter_model::Platform;

    const T0: i64 = 1_764_028_800_000; // 2025-11-25 00:00 UTC

    fn matcher() -> Matcher {
        Matcher::new(&[
            Campaign {
                id: "spring".into(),
                account_id: "acct".into(),
                keywords: vec!["info".into()],
                scope: Scope::Account,
                active_from: None,
                active_until: None,
            },
            Campaign {
                id: "summer".into(),
                account_id: "acct".into(),
                keywords: vec!["sun".into()],
                scope: Scope::Post("post-2".into()),
                active_from: None,
                active_until: None,
            },
        ])
        .unwrap()
    }

    fn ev(kind: Kind, actor: &str, t: i64) -> EngagementEvent {
        let mut e = EngagementEvent::new(
            format!("{kind}:{actor}:{t}"),
            Platform::Instagram,
            kind,
            Action::Add,
            "acct",
            t,
        );
        e.actor_id = Some(actor.into());
        e.is_brand_actor = matches!(kind, Kind::PrivateReplySent);
        e
    }

    fn comment(actor: &str, text: &str, t: i64) -> EngagementEvent {
        let mut e = ev(Kind::Comment, actor, t);
        e.content_id = Some("post-1".into());
        e.text = Some(text.into());
        e
    }

    fn stage(kind: Kind, actor: &str, campaign: Option<&str>, t: i64) -> EngagementEvent {
        let mut e = ev(kind, actor, t);
        e.cta_campaign_id = campaign.map(Into::into);
        e
    }

    /// Runs events (in the given order, offsets in order) then closes everything; returns the
    /// final row per (campaign, window, start).
    fn run(events: &[EngagementEvent]) -> BTreeMap<(String, WindowKind, i64), FunnelRollup> {
        let mut f = Funnels::new(FunnelConfig::default(), matcher());
        let mut out = Vec::new();
        for (i, e) in events.iter().enumerate() {
            f.process(e, i as i64);
            let wm = events[..=i].iter().map(|e| e.event_time).max().unwrap() - 60_000;
            f.advance(wm, &mut out);
        }
        f.advance(T0 + 30 * DAY, &mut out);
        let mut last = BTreeMap::new();
        for r in out {
            let k = (r.campaign_id.clone(), r.window, r.window_start);
            if last
                .get(&k)
                .is_none_or(|o: &FunnelRollup| o.revision <= r.revision)
            {
                last.insert(k, r);
            }
        }
        last
    }

    fn totals(
        rows: &BTreeMap<(String, WindowKind, i64), FunnelRollup>,
        campaign: &str,
    ) -> [i64; 6] {
        let mut t = [0; 6];
        for r in rows.values() {
            if r.campaign_id == campaign && r.window == WindowKind::Day {
                for (sum, v) in t.iter_mut().zip(r.stages()) {
                    *sum += v;
                }
            }
        }
        t
    }

    fn journey(actor: &str, t: i64) -> Vec<EngagementEvent> {
        let mut click = stage(Kind::LinkClick, actor, Some("spring"), t + 600_000);
        click.click_id = Some(format!("clk-{actor}"));
        // The conversion names only the click.
        let mut conv = stage(
            Kind::Conversion,
            &format!("shop-{actor}"),
            None,
            t + DAY + HOUR,
        );
        conv.click_id = Some(format!("clk-{actor}"));
        conv.value = Some(49.9);
        conv.currency = Some("EUR".into());
        vec![
            comment(actor, "INFO please!! 😍", t),
            stage(Kind::PrivateReplySent, actor, Some("spring"), t + 10_000),
            stage(Kind::DmRead, actor, Some("spring"), t + 70_000),
            stage(Kind::DmPostback, actor, Some("spring"), t + 130_000),
            click,
            conv,
        ]
    }

    #[test]
    fn a_funnel_across_days_counts_each_stage_once_in_its_windows() {
        let mut events = journey("u1", T0 + 22 * HOUR);
        // A second keyword comment of the same actor, and a partial word that must not match.
        events.push(comment("u1", "info again", T0 + 23 * HOUR));
        events.push(comment("u2", "information?", T0 + 23 * HOUR));
        events.sort_by_key(|e| e.event_time);
        let rows = run(&events);
        assert_eq!(totals(&rows, "spring"), [1, 1, 1, 1, 1, 1]);
        // Day 1 holds the trigger to the click, day 2 the conversion with its value.
        let d1 = &rows[&("spring".to_owned(), WindowKind::Day, T0)];
        assert_eq!((d1.triggered, d1.link_clicked, d1.converted), (1, 1, 0));
        let d2 = &rows[&("spring".to_owned(), WindowKind::Day, T0 + DAY)];
        assert_eq!(d2.converted, 1);
        assert!((d2.conversion_value - 49.9).abs() < 1e-9);
        assert_eq!(d2.currency.as_deref(), Some("EUR"));
        let secs = d2.median_click_to_conversion_s.unwrap();
        let want = (DAY + HOUR - 600_000) as f64 / 1000.0;
        assert!((secs - want).abs() <= 0.01 * want, "{secs} vs {want}");
        let h = &rows[&("spring".to_owned(), WindowKind::Hour, T0 + 22 * HOUR)];
        let reply = h.median_trigger_to_reply_s.unwrap();
        assert!((reply - 10.0).abs() <= 0.1, "{reply}");
        assert!((h.median_reply_to_click_s.unwrap() - 590.0).abs() <= 5.9);
    }

    #[test]
    fn out_of_order_and_duplicated_input_gives_the_same_rows() {
        let mut events = journey("u1", T0 + 5 * HOUR);
        events.extend(journey("u2", T0 + 5 * HOUR + 30_000));
        events.sort_by_key(|e| e.event_time);
        let ordered = run(&events);
        // Stages before their trigger (within the lateness), and every event twice.
        let mut shuffled: Vec<EngagementEvent> = events.iter().rev().cloned().collect();
        shuffled.extend(events.iter().cloned());
        let mut f = Funnels::new(FunnelConfig::default(), matcher());
        let mut out = Vec::new();
        for (i, e) in shuffled.iter().enumerate() {
            f.process(e, i as i64);
        }
        f.advance(T0 + 30 * DAY, &mut out);
        let mut last: BTreeMap<_, FunnelRollup> = BTreeMap::new();
        for r in out {
            last.insert((r.campaign_id.clone(), r.window, r.window_start), r);
        }
        let strip = |m: &BTreeMap<_, FunnelRollup>| -> Vec<_> {
            m.values()
                .map(|r| {
                    (
                        r.window_start,
                        r.triggered,
                        r.private_reply_sent,
                        r.dm_read,
                        r.engaged,
                        r.link_clicked,
                        r.converted,
                        r.conversion_value.to_bits(),
                        r.median_trigger_to_reply_s.map(f64::to_bits),
                    )
                })
                .collect()
        };
        assert_eq!(strip(&last), strip(&ordered));
        assert_eq!(totals(&ordered, "spring"), [2, 2, 2, 2, 2, 2]);
    }

    #[test]
    fn a_conversion_after_seven_days_is_not_attributed() {
        let t = T0 + HOUR;
        let mut late = stage(Kind::Conversion, "u1", Some("spring"), t + 7 * DAY + 1);
        late.value = Some(10.0);
        let mut in_time = stage(Kind::Conversion, "u3", None, t + 7 * DAY - 1);
        in_time.value = Some(5.0);
        let events = vec![
            comment("u1", "info", t),
            comment("u3", "info", t),
            in_time, // by last touch: the actor's only campaign
            late,
            // Not attributable: no trigger by this actor.
            stage(Kind::DmRead, "u9", None, t + 100),
        ];
        let rows = run(&events);
        assert_eq!(totals(&rows, "spring"), [2, 0, 0, 0, 0, 1]);
        let value: f64 = rows
            .values()
            .filter(|r| r.window == WindowKind::Day)
            .map(|r| r.conversion_value)
            .sum();
        assert!((value - 5.0).abs() < 1e-9);
    }

    #[test]
    fn last_touch_picks_the_latest_campaign_and_scope_is_respected() {
        let t = T0 + HOUR;
        let mut sun = comment("u1", "sun!", t + 1000);
        sun.content_id = Some("post-2".into());
        let mut sun_elsewhere = comment("u2", "sun", t + 1000);
        sun_elsewhere.content_id = Some("post-1".into());
        let mut dm = stage(Kind::DmIn, "u1", None, t + 3000);
        dm.ref_ = Some("summer".into());
        let events = vec![
            comment("u1", "info", t),
            sun,
            sun_elsewhere,
            stage(Kind::LinkClick, "u1", None, t + 2000), // last touch: summer
            dm,                                           // engaged via ref
            stage(Kind::DmIn, "u1", None, t + 4000),      // a plain DM: not engagement
        ];
        let rows = run(&events);
        assert_eq!(totals(&rows, "spring"), [1, 0, 0, 0, 0, 0]);
        assert_eq!(totals(&rows, "summer"), [1, 0, 0, 1, 1, 0]);
    }

    #[test]
    fn restoring_from_the_changelog_at_any_point_continues_identically() {
        let mut events = journey("u1", T0 + 2 * HOUR);
        events.extend(journey("u2", T0 + 2 * HOUR + 5_000));
        events.push(comment("u3", "info", T0 + 3 * HOUR));
        events.sort_by_key(|e| e.event_time);
        let feed = |f: &mut Funnels, from: usize, to: usize, out: &mut Vec<FunnelRollup>| {
            for (i, e) in events.iter().enumerate().take(to).skip(from) {
                f.process(e, i as i64);
                let wm = events[..=i].iter().map(|e| e.event_time).max().unwrap() - 60_000;
                f.advance(wm, out);
            }
        };
        let mut expected = Vec::new();
        let mut a = Funnels::new(FunnelConfig::default(), matcher());
        feed(&mut a, 0, events.len(), &mut expected);
        a.advance(T0 + 30 * DAY, &mut expected);
        for cut in 0..events.len() {
            let mut a = Funnels::new(FunnelConfig::default(), matcher());
            let mut out = Vec::new();
            feed(&mut a, 0, cut, &mut out);
            let mut log: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
            log.extend(a.changes());
            let mut b = Funnels::new(FunnelConfig::default(), matcher());
            for (n, v) in &log {
                if let Some(v) = v {
                    b.restore(n, v).unwrap();
                }
            }
            b.clean();
            // The replay from the start: what was applied is skipped.
            feed(&mut b, 0, events.len(), &mut out);
            b.advance(T0 + 30 * DAY, &mut out);
            // One emission's rows may come in another order after a restore (hash maps).
            let key = |r: &FunnelRollup| format!("{r:?}");
            let mut got: Vec<String> = out.iter().map(key).collect();
            let mut want: Vec<String> = expected.iter().map(key).collect();
            got.sort();
            want.sort();
            assert_eq!(got, want, "restored after {cut} events");
        }
    }
}
