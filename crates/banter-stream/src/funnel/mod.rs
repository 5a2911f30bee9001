//! CTA funnels: distinct (actor, campaign) per stage, per campaign and hour / day.
//!
//! * **Stages.** TRIGGER: an inbound COMMENT, STORY_REPLY or DM_IN (ADD, not by the brand) whose
//!   text matches a campaign ([`crate::cta::Matcher`]); the earliest per actor and campaign.
//!   PRIVATE_REPLY_SENT: sent by the brand with `parent_id` = the trigger comment, it counts for
//!   that comment's actor (one that names the user as actor counts too). DM_READ. Engaged: a
//!   DM_POSTBACK (postbacks and quick replies), or any DM_IN from the actor after the trigger.
//!   LINK_CLICK. CONVERSION (with `value` and `currency`).
//! * **Attribution.** A stage event belongs to the campaign it names (`cta_campaign_id`, or
//!   the `ref` of a referral link); a private reply to that of the comment it answers; a
//!   CONVERSION naming a `click_id` to the campaign of that click (and that click's actor);
//!   otherwise to the actor's last touch: the campaign of the account the actor most recently
//!   triggered at or before the event. A stage counts only between the trigger and
//!   `attribution_ms` (7 days) after it.
//! * **Any arrival order.** Per (account, actor) the state is the set of its triggers and
//!   stage events, and every count is recomputed from that set when it changes, so a stage
//!   delivered before its trigger, a reply before its comment, a conversion before its click,
//!   or an earlier trigger of another campaign arriving last all give what event-time order
//!   gives. Stage events of an actor with no trigger are kept for the allowed lateness (a
//!   trigger before them that came later would be too late itself); a private reply or
//!   conversion waits for its comment or click as long.
//! * **Windows.** Each (actor, campaign) counts once per stage, in the HOUR and DAY windows of
//!   the time it reached that stage; stage latencies (trigger → private reply, private reply →
//!   click, click → conversion) go to the window of the later stage, as a [`Quantiles`] sketch
//!   (medians within 1 %). Windows are emitted early and updated ([`crate::window_table`]).
//! * **Exactly once.** The state is a changelog written in the transaction of the rows it
//!   produced; inputs before [`Funnels::next_offset`] were applied before a restore and are
//!   skipped when the partition's input is replayed.

use std::collections::{BTreeMap, BTreeSet};

use banter_model::{Action, EngagementEvent, FunnelRollup, Kind, WindowKind};
use serde::{Deserialize, Serialize};

use crate::changelog::{ChangelogMap, Changes, Entry, StateError, Store, TableId};
use crate::cta::Matcher;
use crate::operator::{Operator, Time};
use crate::quantile::Quantiles;
use crate::table::Map;
use crate::time::{check_count, check_offset, check_time, window_len, window_start, DAY, HOUR};
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

/// Most triggers (campaigns), trigger comments and stage events kept per (account, actor): a
/// changelog value stays small whatever an actor does. Beyond them the latest are dropped
/// (stage events counted in [`FunnelStats::capped`]).
const MAX_TRIGGERS: usize = 16;
const MAX_COMMENTS: usize = 16;
const MAX_STAGE_EVENTS: usize = 256;
/// Most events waiting for one comment or click.
const MAX_WAITING: usize = 16;

/// A trigger: the earliest keyword match of the actor for a campaign.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct Trigger {
    campaign: String,
    time: i64,
}

/// A stage event of an actor, as it arrived; its campaign is worked out from the actor's
/// triggers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct StageEvent {
    time: i64,
    /// 1 private reply, 2 read, 3 engaged, 4 click, 5 conversion.
    stage: u8,
    /// Engaged by a DM: counts only strictly after the trigger.
    after_trigger: bool,
    /// The campaign it names.
    campaign: Option<String>,
    /// A click's id, or the click a conversion names.
    click: Option<String>,
    /// A conversion's value, in cents.
    cents: i64,
    currency: Option<String>,
}

/// Everything of one actor with one account: triggers, their comments, stage events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct ActorFunnel {
    /// Earliest trigger per campaign, sorted by campaign.
    triggers: Vec<Trigger>,
    /// Its trigger comments: (object id, campaign) (a private reply names one as its parent).
    comments: Vec<(String, String)>,
    /// Stage events, sorted.
    stages: Vec<StageEvent>,
}

/// An event waiting for the comment it replies to or the click it names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Waiting {
    event: StageEvent,
    /// The account and actor of the event as it arrived (a conversion whose click never comes
    /// counts for its own actor).
    account: String,
    actor: Option<String>,
}

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

    fn check(&self) -> Result<(), String> {
        (self.counts.iter()).try_for_each(|&n| check_count("window count", n))?;
        // The sum of cents saturates: any value reads.
        check_offset("revision", self.revision)
    }
}

/// Refuses a restored stage event no operator writes (its time, or a stage other than 1–5).
fn check_stage_event(s: &StageEvent) -> Result<(), String> {
    check_time("stage time", Some(s.time))?;
    check_count("cents", s.cents)?;
    if (1..=5).contains(&s.stage) {
        Ok(())
    } else {
        Err(format!("stage {} is not one of 1–5", s.stage))
    }
}

/// (campaign, kind: HOUR or DAY, window start).
type WindowKey = (String, WindowKind, i64);

/// (account, actor).
type ActorKey = (String, String);

/// What a waiting event waits for: (0, comment id) or (1, click id).
type WaitKey = (String, String);

const FOR_COMMENT: &str = "comment";
const FOR_CLICK: &str = "click";

/// Counters of what the funnels saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FunnelStats {
    /// Keyword matches that triggered (first per actor and campaign, or an earlier one).
    pub triggers: u64,
    /// Stage events forgotten without a campaign to attribute them to.
    pub unattributed: u64,
    /// Stage events dropped because their actor held the most it can (an actor with more
    /// than that many funnel events within the allowed lateness: counts may then be short).
    pub capped: u64,
}

const ACTORS: TableId = TableId {
    tag: b'a',
    name: "funnel (account, actor)",
};
const WAITING: TableId = TableId {
    tag: b'q',
    name: "funnel event waiting for its comment or click",
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
    /// (account, actor) → its triggers and stage events.
    actors: ChangelogMap<ActorKey, ActorFunnel>,
    /// Events waiting for their comment or click, by what they wait for.
    waiting: ChangelogMap<WaitKey, Vec<Waiting>>,
    /// The windows and the progress through the input.
    windows: WindowTable<WindowKey, WindowAgg>,
    /// Trigger comment id → its (account, actor) and campaign (derived from `actors`).
    comments: Map<String, (ActorKey, String)>,
    /// Click id → the (account, actor) that clicked (derived from `actors`).
    clicks: Map<String, ActorKey>,
    stats: FunnelStats,
}

/// The campaign a stage event belongs to, given the actor's triggers: the one it names (if
/// the actor triggered it), that of the click it names, or the last touch.
fn attribution<'a>(af: &'a ActorFunnel, ev: &'a StageEvent) -> Option<&'a str> {
    if let Some(c) = ev.campaign.as_deref() {
        return af.triggers.iter().any(|t| t.campaign == c).then_some(c);
    }
    if ev.stage == 5 && ev.click.is_some() {
        if let Some(click) = af
            .stages
            .iter()
            .find(|s| s.stage == 4 && s.click == ev.click)
        {
            return attribution(af, click);
        }
    }
    // Last touch: the latest trigger at or before the event (ties: the first campaign id).
    af.triggers
        .iter()
        .filter(|t| t.time <= ev.time)
        .max_by(|a, b| {
            a.time
                .cmp(&b.time)
                .then_with(|| b.campaign.cmp(&a.campaign))
        })
        .map(|t| t.campaign.as_str())
}

/// The campaign whose trigger `ev` counts for: its attribution, when it lies within that
/// trigger's attribution window.
fn counted_for<'a>(
    af: &'a ActorFunnel,
    ev: &'a StageEvent,
    attribution_ms: i64,
) -> Option<&'a str> {
    let c = attribution(af, ev)?;
    let t0 = af.triggers.iter().find(|t| t.campaign == c)?.time;
    let from_trigger = if ev.after_trigger {
        ev.time > t0
    } else {
        ev.time >= t0
    };
    (from_trigger && ev.time <= t0.saturating_add(attribution_ms)).then_some(c)
}

impl Funnels {
    /// Funnels for the campaigns of `matcher`.
    pub fn new(cfg: FunnelConfig, matcher: Matcher) -> Self {
        Funnels {
            cfg,
            matcher,
            actors: ChangelogMap::new(ACTORS),
            waiting: ChangelogMap::new(WAITING),
            windows: WindowTable::new(WINDOWS, PROGRESS, cfg.allowed_lateness_ms, |wk| {
                (wk.1, wk.2)
            }),
            comments: Map::default(),
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

    /// Actors, waiting events and open windows held.
    pub fn state_entries(&self) -> usize {
        self.actors.len() + self.waiting.len() + self.windows.len()
    }

    /// Every stage reached by the actor, per campaign it triggered.
    fn contributions(&self, af: &ActorFunnel) -> BTreeMap<String, Vec<Contribution>> {
        let mut out = BTreeMap::new();
        for t in &af.triggers {
            let t0 = t.time;
            // The earliest event of each stage attributed to the campaign (events are sorted).
            let mut reached: [Option<&StageEvent>; 6] = [None; 6];
            for ev in &af.stages {
                let s = usize::from(ev.stage);
                if reached[s].is_none()
                    && counted_for(af, ev, self.cfg.attribution_ms) == Some(t.campaign.as_str())
                {
                    reached[s] = Some(ev);
                }
            }
            let at = |s: usize| {
                if s == 0 {
                    Some(t0)
                } else {
                    reached[s].map(|e| e.time)
                }
            };
            let secs = |a: Option<i64>, b: i64| a.map(|a| (b - a) as f64 / 1000.0);
            let mut list = vec![Contribution {
                stage: 0,
                time: t0,
                latency: None,
                cents: 0,
                currency: None,
            }];
            for (s, ev) in reached.iter().enumerate().skip(1) {
                let Some(ev) = ev else { continue };
                let latency = match s {
                    1 => secs(at(0), ev.time).map(|l| (0, l)),
                    4 => secs(at(1), ev.time).map(|l| (1, l)),
                    5 => secs(at(4), ev.time).map(|l| (2, l)),
                    _ => None,
                };
                let (cents, currency) = if s == 5 {
                    (ev.cents, ev.currency.clone())
                } else {
                    (0, None)
                };
                list.push(Contribution {
                    stage: s,
                    time: ev.time,
                    latency,
                    cents,
                    currency,
                });
            }
            out.insert(t.campaign.clone(), list);
        }
        out
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
        if e.action != Action::Add {
            return;
        }
        // The ids are copied only for an event that triggers or is a stage (most are neither).
        let actor = || e.actor_id.clone().filter(|a| !a.is_empty());
        let account = || e.account_id.clone();
        let inbound =
            matches!(e.kind, Kind::Comment | Kind::StoryReply | Kind::DmIn) && !e.is_brand_actor;
        if let Some(c) = inbound.then(|| self.matcher.trigger(e)).flatten() {
            let Some(actor) = actor() else {
                return;
            };
            let account = account();
            self.stats.triggers += 1;
            let campaign = c.id.clone();
            let key = (account, actor);
            let comment = e.object_id.clone().filter(|_| e.kind == Kind::Comment);
            self.update(&key, offset, |af| {
                let i = af.triggers.partition_point(|t| t.campaign < campaign);
                if af.triggers.get(i).is_some_and(|t| t.campaign == campaign) {
                    let t = &mut af.triggers[i];
                    t.time = t.time.min(e.event_time);
                } else if af.triggers.len() < MAX_TRIGGERS {
                    af.triggers.insert(
                        i,
                        Trigger {
                            campaign: campaign.clone(),
                            time: e.event_time,
                        },
                    );
                }
                if let Some(id) = &comment {
                    if !af.comments.iter().any(|c| c.0 == *id) && af.comments.len() < MAX_COMMENTS {
                        af.comments.push((id.clone(), campaign.clone()));
                    }
                }
            });
            // Private replies that came before their comment.
            if let Some(id) = comment {
                self.comments.insert(id.clone(), (key.clone(), campaign));
                self.release((FOR_COMMENT.into(), id), offset);
            }
            return;
        }
        let stage = match e.kind {
            Kind::PrivateReplySent => 1,
            Kind::DmRead => 2,
            Kind::DmPostback => 3,
            Kind::DmIn if inbound => 3,
            Kind::LinkClick => 4,
            Kind::Conversion => 5,
            _ => return,
        };
        let (account, actor) = (account(), actor());
        let event = StageEvent {
            time: e.event_time,
            stage,
            after_trigger: e.kind == Kind::DmIn,
            // The campaign it names: `cta_campaign_id`, or the `ref` of a referral link.
            campaign: e
                .cta_campaign_id
                .clone()
                .or_else(|| e.ref_.clone())
                .filter(|c| !c.is_empty()),
            click: e.click_id.clone().filter(|c| !c.is_empty()),
            cents: if stage == 5 {
                e.value.map_or(0, |v| (v * 100.0).round() as i64)
            } else {
                0
            },
            currency: if stage == 5 { e.currency.clone() } else { None },
        };
        // A private reply counts for the actor of the comment it answers (the brand sends it),
        // in that comment's campaign; one without a parent, for the actor it names.
        if stage == 1 {
            if let Some(parent) = e.parent_id.clone().filter(|p| !p.is_empty()) {
                match self.comments.get(&parent).cloned() {
                    Some((key, campaign)) => {
                        let event = StageEvent {
                            campaign: event.campaign.or(Some(campaign)),
                            ..event
                        };
                        self.add_stage(&key, event, offset);
                    }
                    None => self.wait((FOR_COMMENT.into(), parent), account, None, event),
                }
                return;
            }
        }
        // A conversion naming a click counts for the actor that clicked.
        if stage == 5 && event.campaign.is_none() {
            if let Some(click) = event.click.clone() {
                match self.clicks.get(&click).cloned() {
                    Some(key) => self.add_stage(&key, event, offset),
                    None => self.wait((FOR_CLICK.into(), click), account, actor, event),
                }
                return;
            }
        }
        let Some(actor) = actor else {
            return;
        };
        let click = (stage == 4).then(|| event.click.clone()).flatten();
        let key = (account, actor);
        self.add_stage(&key, event, offset);
        // Conversions that came before their click.
        if let Some(id) = click {
            self.clicks.insert(id.clone(), key);
            self.release((FOR_CLICK.into(), id), offset);
        }
    }

    fn add_stage(&mut self, key: &ActorKey, event: StageEvent, offset: i64) {
        let attribution_ms = self.cfg.attribution_ms;
        let mut capped = false;
        self.update(key, offset, |af| {
            let i = af.stages.partition_point(|s| *s <= event);
            if af.stages.get(i.wrapping_sub(1)) == Some(&event) {
                return; // the same event again (a redelivery under another id)
            }
            // An event naming a campaign the actor triggered, after an earlier one of the same
            // stage (and click) that already counts for it, can never count: the trigger can
            // only move earlier (it is the earliest keyword match). Kept out, so that a busy
            // actor's repeated replies, clicks and conversions do not fill the state.
            if event.campaign.is_some()
                && af.stages[..i].iter().any(|e| {
                    e.stage == event.stage
                        && e.campaign == event.campaign
                        && (e.stage != 4 || e.click == event.click)
                        && counted_for(af, e, attribution_ms) == event.campaign.as_deref()
                })
            {
                return;
            }
            if af.stages.len() >= MAX_STAGE_EVENTS {
                capped = true;
                if i == af.stages.len() {
                    return;
                }
                af.stages.pop();
            }
            af.stages.insert(i, event);
        });
        if capped {
            self.stats.capped += 1;
        }
    }

    /// Holds `event` until what it waits for arrives (or the lateness passes).
    fn wait(&mut self, key: WaitKey, account: String, actor: Option<String>, event: StageEvent) {
        let list = self.waiting.get_or_insert_with(&key, Vec::new);
        if list.len() < MAX_WAITING {
            list.push(Waiting {
                event,
                account,
                actor,
            });
        }
    }

    /// The events that waited for `key`, which has arrived: they count now.
    fn release(&mut self, key: WaitKey, offset: i64) {
        let Some(list) = self.waiting.remove(&key) else {
            return;
        };
        let target = match key.0.as_str() {
            FOR_COMMENT => self.comments.get(&key.1).cloned(),
            _ => self.clicks.get(&key.1).cloned().map(|k| (k, String::new())),
        };
        if let Some((target, campaign)) = target {
            for w in list {
                let mut event = w.event;
                if !campaign.is_empty() && event.campaign.is_none() {
                    event.campaign = Some(campaign.clone());
                }
                self.add_stage(&target, event, offset);
            }
        }
    }

    /// Changes the state of `key` with `f` and moves its contributions between windows.
    fn update(&mut self, key: &ActorKey, offset: i64, f: impl FnOnce(&mut ActorFunnel)) {
        let mut af = self.actors.get(key).cloned().unwrap_or_default();
        let before = self.contributions(&af);
        f(&mut af);
        let after = self.contributions(&af);
        self.actors.insert(key.clone(), af);
        if before == after {
            return;
        }
        let empty = Vec::new();
        let campaigns: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
        let mut touched: BTreeSet<WindowKey> = BTreeSet::new();
        for campaign in campaigns {
            let (b, a) = (
                before.get(campaign).unwrap_or(&empty),
                after.get(campaign).unwrap_or(&empty),
            );
            // Only what changed: stages that left or reached a time, or changed latency or
            // value.
            let gone = b.iter().filter(|c| !a.contains(c));
            let new = a.iter().filter(|c| !b.contains(c));
            for (sign, c) in gone.map(|c| (-1i64, c)).chain(new.map(|c| (1, c))) {
                for kind in [WindowKind::Hour, WindowKind::Day] {
                    let wk = (campaign.clone(), kind, window_start(kind, c.time));
                    // A window past the lateness is final (and forgotten).
                    if self.windows.is_final(kind, wk.2) {
                        continue;
                    }
                    let w = self.windows.update(&wk, || WindowAgg {
                        account: key.0.clone(),
                        ..WindowAgg::default()
                    });
                    w.counts[c.stage] += sign;
                    if c.stage == 5 {
                        // Saturating: values are validated (at most 10^12), but the records
                        // may come from other writers.
                        w.cents = w.cents.saturating_add(sign.saturating_mul(c.cents));
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
            trigger_to_reply_sketch: w.latencies[0].to_buckets(),
            reply_to_click_sketch: w.latencies[1].to_buckets(),
            click_to_conversion_sketch: w.latencies[2].to_buckets(),
        }
    }

    /// Moves the watermark. Entering a new minute, it emits the windows that changed since
    /// their last emission; entering a new hour, it forgets what no event can change any more.
    pub fn advance(&mut self, wm: i64, out: &mut Vec<FunnelRollup>) {
        if self.windows.advance(wm, Self::row, out) {
            self.forget(wm);
        }
    }

    /// Forgets what can no longer count: triggers past their attribution and the lateness,
    /// stage events that no trigger kept or can still claim (a trigger before them would be
    /// too late), events that waited in vain, and actors left with nothing. Nothing of what
    /// is forgotten changes a count: windows do not move.
    fn forget(&mut self, wm: i64) {
        let (lateness, attribution_ms) = (self.cfg.allowed_lateness_ms, self.cfg.attribution_ms);
        // Conversions whose click never came count for their own actor (the click would be
        // too late now); replies whose comment never came count for nobody.
        let expired: Vec<WaitKey> = self
            .waiting
            .iter()
            .filter(|(_, list)| {
                list.iter()
                    .all(|w| w.event.time.saturating_add(lateness) < wm)
            })
            .map(|(k, _)| k.clone())
            .collect();
        let offset = self.next_offset() - 1;
        for k in expired {
            for w in self.waiting.remove(&k).unwrap_or_default() {
                match w.actor {
                    Some(actor) if k.0 == FOR_CLICK => {
                        self.add_stage(&(w.account, actor), w.event, offset);
                    }
                    _ => self.stats.unattributed += 1,
                }
            }
        }
        let mut unattributed = 0u64;
        let mut pruned: Vec<(ActorKey, ActorFunnel)> = Vec::new();
        for (k, af) in self.actors.iter() {
            let mut kept = af.clone();
            kept.triggers.retain(|t| {
                t.time
                    .saturating_add(attribution_ms)
                    .saturating_add(lateness)
                    >= wm
            });
            let claimed = |ev: &StageEvent| {
                kept.triggers
                    .iter()
                    .any(|t| t.time <= ev.time && ev.time <= t.time.saturating_add(attribution_ms))
            };
            // Settled events (older than the lateness) have every trigger that can come before
            // them: of those, only the first of each stage counted for its campaign can count
            // (and the first click of each click id, which a conversion may name). The rest of
            // a busy actor's settled history is dropped, so that what can still count always
            // fits under MAX_STAGE_EVENTS.
            let mut firsts: BTreeSet<(u8, Option<&str>, Option<&str>)> = BTreeSet::new();
            let stages: Vec<StageEvent> = af
                .stages
                .iter()
                .filter(|ev| {
                    let settled = ev.time.saturating_add(lateness) < wm;
                    let live = !settled || claimed(ev);
                    if !live {
                        if attribution(af, ev).is_none() {
                            unattributed += 1;
                        }
                        return false;
                    }
                    if !settled {
                        return true;
                    }
                    let first_click =
                        ev.stage == 4 && firsts.insert((4, None, ev.click.as_deref().or(Some(""))));
                    let counted = counted_for(af, ev, attribution_ms)
                        .is_some_and(|c| firsts.insert((ev.stage, Some(c), None)));
                    first_click || counted
                })
                .cloned()
                .collect();
            kept.stages = stages;
            if kept != *af {
                pruned.push((k.clone(), kept));
            }
        }
        self.stats.unattributed += unattributed;
        for (k, af) in pruned {
            let old = self.actors.remove(&k).unwrap_or_default();
            for (c, _) in old.comments.iter().filter(|_| af.triggers.is_empty()) {
                self.comments.remove(c);
            }
            for s in old.stages.iter().filter(|s| !af.stages.contains(s)) {
                if let Some(c) = s.click.as_ref().filter(|_| s.stage == 4) {
                    if !af
                        .stages
                        .iter()
                        .any(|k| k.stage == 4 && k.click.as_ref() == Some(c))
                    {
                        self.clicks.remove(c);
                    }
                }
            }
            if !(af.triggers.is_empty() && af.stages.is_empty()) {
                self.actors.insert(k, af);
            }
        }
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

    fn write_changes(&mut self, out: &mut Changes) -> Result<(), StateError> {
        self.actors.write_changes(out)?;
        self.waiting.write_changes(out)?;
        self.windows.write_changes(out)
    }

    fn restore_entry(&mut self, entry: &Entry<'_>) -> Result<(), StateError> {
        match entry.tag() {
            t if t == ACTORS.tag => self.actors.restore_checked(entry, |af| {
                af.triggers
                    .iter()
                    .try_for_each(|t| check_time("trigger time", Some(t.time)))?;
                af.stages.iter().try_for_each(check_stage_event)
            }),
            t if t == WAITING.tag => self.waiting.restore_checked(entry, |list| {
                list.iter().try_for_each(|w| check_stage_event(&w.event))
            }),
            _ if self.windows.holds(entry) => self.windows.restore_entry(entry),
            _ => Err(entry.unknown()),
        }
    }

    fn restored(&mut self) {
        self.comments.clear();
        self.clicks.clear();
        for (k, af) in self.actors.iter() {
            for (c, campaign) in &af.comments {
                self.comments
                    .insert(c.clone(), (k.clone(), campaign.clone()));
            }
            for s in &af.stages {
                if let Some(c) = s.click.as_ref().filter(|_| s.stage == 4) {
                    self.clicks.insert(c.clone(), k.clone());
                }
            }
        }
        self.actors.forget_changes();
        self.waiting.forget_changes();
        self.windows.forget_changes();
    }

    fn state_entries(&self) -> usize {
        Funnels::state_entries(self)
    }
}
