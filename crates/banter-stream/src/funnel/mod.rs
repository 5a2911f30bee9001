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
//!   its counts) is a changelog written in the transaction of the rows it produced; inputs
//!   before [`Funnels::next_offset`] were applied before a restore and are skipped when the
//!   partition's input is replayed.

use std::collections::BTreeSet;

use banter_model::{Action, EngagementEvent, FunnelRollup, Kind, WindowKind};
use serde::{Deserialize, Serialize};

use crate::changelog::{Change, ChangelogMap, Entry, StateError, Store, TableId};
use crate::cta::Matcher;
use crate::operator::{Operator, Time};
use crate::quantile::Quantiles;
use crate::table::Map;
use crate::time::{window_len, window_start, DAY, HOUR};
use crate::window_table::{Pending, WindowTable};

#[cfg(test)]
mod tests;

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

const ACTORS: TableId = TableId {
    tag: b'a',
    name: "funnel (campaign, actor)",
};
const WINDOWS: TableId = TableId {
    tag: b'w',
    name: "funnel window",
};
const PROGRESS: TableId = TableId {
    tag: b'm',
    name: "funnel progress",
};

/// The CTA funnels of one partition.
#[derive(Debug, Clone)]
pub struct Funnels {
    cfg: FunnelConfig,
    matcher: Matcher,
    /// (campaign, actor) → its funnel.
    actors: ChangelogMap<(String, String), ActorState>,
    /// The windows and the progress through the input.
    windows: WindowTable<WindowKey, WindowAgg>,
    /// (account, actor) → campaigns it triggered (derived from `actors`).
    touches: Map<(String, String), BTreeSet<String>>,
    /// click id → (campaign, actor) (derived from `actors`).
    clicks: Map<String, (String, String)>,
    stats: FunnelStats,
}

impl Funnels {
    /// Funnels for the campaigns of `matcher`.
    pub fn new(cfg: FunnelConfig, matcher: Matcher) -> Self {
        Funnels {
            cfg,
            matcher,
            actors: ChangelogMap::new(ACTORS),
            windows: WindowTable::new(WINDOWS, PROGRESS, cfg.allowed_lateness_ms),
            touches: Map::default(),
            clicks: Map::default(),
            stats: FunnelStats::default(),
        }
    }

    /// Replaces the campaigns (a reload); state and windows stay.
    pub fn set_matcher(&mut self, matcher: Matcher) {
        self.matcher = matcher;
    }

    /// Inputs before this offset were applied.
    pub fn next_offset(&self) -> i64 {
        self.windows.next_offset()
    }

    /// What it saw.
    pub fn stats(&self) -> &FunnelStats {
        &self.stats
    }

    /// (actor, campaign) states and open windows held.
    pub fn state_entries(&self) -> usize {
        self.actors.len() + self.windows.len()
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

    /// Applies one event the engine counted (not a duplicate, not too late) read at `offset`;
    /// false when it was applied before a restore. The windows it changes are emitted by the
    /// next [`Funnels::advance`] into a new minute.
    pub fn process(&mut self, e: &EngagementEvent, offset: i64) -> bool {
        if !self.windows.accept(offset) {
            return false; // applied before the restore
        }
        self.apply_event(e, offset);
        true
    }

    fn apply_event(&mut self, e: &EngagementEvent, offset: i64) {
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
                last_seen: e.event_time,
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
        self.actors.insert(key, st);
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
                    if self.windows.is_final(kind, wk.2) {
                        continue;
                    }
                    let w = self.windows.update(&wk, || WindowAgg {
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
            let w = self.windows.update(&wk, WindowAgg::default);
            w.revision = w.revision.max(offset);
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
        if self.windows.advance(wm, |wk| (wk.1, wk.2), Self::row, out) {
            self.forget(wm);
        }
    }

    /// Forgets (actor, campaign) states past their attribution.
    fn forget(&mut self, wm: i64) {
        let lateness = self.cfg.allowed_lateness_ms;
        let attribution = self.cfg.attribution_ms;
        let mut gone = Vec::new();
        self.actors.retain(|k, st| {
            let until = match st.trigger {
                Some(t) => t.saturating_add(attribution),
                None => st.last_seen,
            };
            let keep = until.saturating_add(lateness) >= wm;
            if !keep {
                gone.push((k.clone(), st.account.clone(), st.clicks.clone()));
            }
            keep
        });
        for ((campaign, actor), account, clicks) in gone {
            for c in &clicks {
                self.clicks.remove(c);
            }
            let tk = (account, actor);
            if let Some(set) = self.touches.get_mut(&tk) {
                set.remove(&campaign);
                if set.is_empty() {
                    self.touches.remove(&tk);
                }
            }
        }
    }
}

/// What is derived from the (campaign, actor) states: the campaigns each actor triggered, the
/// clicks by id.
fn index(
    touches: &mut Map<(String, String), BTreeSet<String>>,
    clicks: &mut Map<String, (String, String)>,
    key: &(String, String),
    st: &ActorState,
) {
    if st.trigger.is_some() {
        touches
            .entry((st.account.clone(), key.1.clone()))
            .or_default()
            .insert(key.0.clone());
    }
    for click in &st.clicks {
        clicks.insert(click.clone(), key.clone());
    }
}

impl Operator for Funnels {
    type In = EngagementEvent;
    type Out = FunnelRollup;
    const STORE: Store = Store::Funnels;

    fn process(&mut self, e: &EngagementEvent, offset: i64, _out: &mut Vec<FunnelRollup>) -> bool {
        Funnels::process(self, e, offset)
    }

    fn advance(&mut self, time: Time, out: &mut Vec<FunnelRollup>) {
        Funnels::advance(self, time.watermark, out);
    }

    fn write_changes(&mut self, out: &mut Vec<Change>) -> Result<(), StateError> {
        self.actors.write_changes(out)?;
        self.windows.write_changes(out)
    }

    fn restore_entry(&mut self, entry: &Entry<'_>) -> Result<(), StateError> {
        match entry.tag() {
            t if t == ACTORS.tag => self.actors.restore_entry(entry),
            _ if self.windows.holds(entry) => self.windows.restore_entry(entry),
            _ => Err(entry.unknown()),
        }
    }

    fn restored(&mut self) {
        self.touches.clear();
        self.clicks.clear();
        for (k, st) in self.actors.iter() {
            index(&mut self.touches, &mut self.clicks, k, st);
        }
        self.actors.forget_changes();
        self.windows.forget_changes();
    }

    fn state_entries(&self) -> usize {
        Funnels::state_entries(self)
    }
}
