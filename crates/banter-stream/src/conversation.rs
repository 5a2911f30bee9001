//! Conversation metrics: how much inbound the brand gets, how much of it it answers and how
//! fast, and the shape of comment threads — per account and per post, per hour and per day.
//!
//! * **Inbound items**: COMMENTs (ADD, not by the brand; a removed or hidden comment stops
//!   counting, unhidden counts again), STORY_REPLYs, and DM_INs that open a conversation: no DM
//!   either way in that thread (`thread_id`, else the actor) for `dm_silence_ms` (24 h) before
//!   it, as seen in processing order.
//! * **Answers**: a BRAND_REPLY or PRIVATE_REPLY_SENT whose `parent_id` is the comment; a
//!   DM_OUT in the thread answers the thread's open DMs and story replies at or before it. The
//!   first answer counts; the brand answering itself counts for nothing (its comments are not
//!   inbound). An answer that arrives before its item (out of order) is kept and applied when
//!   the item comes.
//! * **Response time** = first answer − item time, in the window of the item (so the response
//!   rate of an hour is about that hour's inbound); **first response** = the brand's first
//!   reply anywhere in a comment thread − the root comment's time (for DMs, the opening's
//!   answer). Quantiles from [`Quantiles`] (1 % relative error).
//! * **Threads**: root comments (no parent) and replies per window; depth = replies / roots,
//!   reply share = replies / comments.
//! * **Windows and exactly once** as in [`crate::funnel`]: emitted each time the watermark
//!   enters a new minute when changed; an item's window takes its answers for
//!   `answer_horizon_ms` (24 h) after the window's end, then it is final; the state is a
//!   changelog and inputs before [`Conversations::next_offset`] are skipped after a restore.

#[cfg(test)]
use std::collections::{BTreeMap, BTreeSet};

use banter_model::{Action, ConversationRollup, EngagementEvent, Kind, WindowKind};
use serde::{Deserialize, Serialize};

use crate::quantile::Quantiles;
use crate::store::{window_len, window_start, Map, Pending, Progress, Set, Windows, DAY};
#[cfg(test)]
use crate::store::{HOUR, NONE};
#[cfg(test)]
use crate::window::MINUTE;

/// Parameters: the `conversation.*` section of the configuration, used as it is.
pub use banter_runtime::config::ConversationConfig;

/// What an inbound item is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum ItemKind {
    Comment,
    StoryReply,
    Dm,
}

/// One inbound item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Item {
    account: String,
    #[serde(default)]
    content: Option<String>,
    kind: ItemKind,
    time: i64,
    /// Comments: a reply to another comment.
    #[serde(default)]
    reply: bool,
    /// The thread (comment thread root, or DM thread).
    thread: String,
    /// First answer time.
    #[serde(default)]
    answered: Option<i64>,
    /// Root comments and DM openings: the brand's first response in the thread.
    #[serde(default)]
    first_response: Option<i64>,
    /// Removed or hidden.
    #[serde(default)]
    removed: bool,
}

/// A DM thread.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Thread {
    /// Latest DM either way.
    last_dm: i64,
    /// Recent DM times either way (the latest few), to tell silence before a DM.
    #[serde(default)]
    recent: Vec<i64>,
    /// Open items (DM openings, story replies) not yet answered.
    #[serde(default)]
    open: Vec<String>,
    /// The brand's DM times (latest few), for items that arrive after their answer.
    #[serde(default)]
    outs: Vec<i64>,
}

impl Thread {
    fn seen(&mut self, t: i64) {
        self.last_dm = self.last_dm.max(t);
        if let Err(i) = self.recent.binary_search(&t) {
            self.recent.insert(i, t);
        }
        if self.recent.len() > 16 {
            self.recent.remove(0);
        }
    }
}

/// The aggregates of one key in one window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Agg {
    inbound: i64,
    answered: i64,
    inbound_comments: i64,
    answered_comments: i64,
    story_replies: i64,
    dms: i64,
    roots: i64,
    replies: i64,
    response: Quantiles,
    first_response: Quantiles,
    revision: i64,
    pending: bool,
}

impl Pending for Agg {
    fn pending(&mut self) -> &mut bool {
        &mut self.pending
    }
}

/// (account, content or "", kind, start).
type WindowKey = (String, String, WindowKind, i64);

/// Conversation metrics of one partition.
#[derive(Debug, Clone)]
pub struct Conversations {
    cfg: ConversationConfig,
    items: Map<String, Item>,
    threads: Map<(String, String), Thread>,
    /// Answers seen before their item: parent object id → earliest answer time.
    early: Map<String, (i64, i64)>,
    /// Comment-thread replies seen before their root: (account, thread) → earliest reply time.
    early_roots: Map<(String, String), (i64, i64)>,
    windows: Windows<WindowKey, Agg>,
    progress: Progress,
    /// `early` or `early_roots` changed since the last changelog write.
    early_dirty: bool,
    dirty_items: Set<String>,
    dirty_threads: Set<(String, String)>,
    removed: Vec<String>,
    meta_dirty: bool,
}

/// What an item adds to its windows.
#[derive(Debug, Clone, PartialEq)]
struct Contribution {
    time: i64,
    kind: ItemKind,
    reply: bool,
    answered: bool,
    response_s: Option<f64>,
    first_response_s: Option<f64>,
}

fn contribution(it: &Item) -> Option<Contribution> {
    if it.removed {
        return None;
    }
    let secs = |t: Option<i64>| t.map(|a| (a - it.time).max(0) as f64 / 1000.0);
    Some(Contribution {
        time: it.time,
        kind: it.kind,
        reply: it.reply,
        answered: it.answered.is_some(),
        response_s: secs(it.answered),
        first_response_s: secs(it.first_response),
    })
}

impl Conversations {
    /// Empty.
    pub fn new(cfg: ConversationConfig) -> Self {
        Conversations {
            cfg,
            items: Map::default(),
            threads: Map::default(),
            early: Map::default(),
            early_roots: Map::default(),
            windows: Windows::default(),
            progress: Progress::default(),
            early_dirty: false,
            dirty_items: Set::default(),
            dirty_threads: Set::default(),
            removed: Vec::new(),
            meta_dirty: false,
        }
    }

    /// Inputs before this offset were applied.
    pub fn next_offset(&self) -> i64 {
        self.progress.next_offset
    }

    /// Items, threads and windows held.
    pub fn state_entries(&self) -> usize {
        self.items.len() + self.threads.len() + self.windows.map.len()
    }

    fn horizon(&self) -> i64 {
        self.cfg.answer_horizon_ms
    }

    /// Applies one event the engine counted (not a duplicate, not too late).
    pub fn process(&mut self, e: &EngagementEvent, offset: i64) {
        if !self.progress.accept(offset) {
            return;
        }
        self.meta_dirty = true;
        let t = e.event_time;
        let account = e.account_id.clone();
        let actor = e.actor_id.clone().unwrap_or_default();
        let dm_thread = (
            account.clone(),
            e.thread_id
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or(actor),
        );
        match (e.kind, e.action) {
            (Kind::Comment, Action::Add) if !e.is_brand_actor => {
                let Some(id) = e.object_id.clone() else {
                    return;
                };
                if self.items.contains_key(&id) {
                    return;
                }
                let reply = e.parent_id.as_ref().is_some_and(|p| !p.is_empty());
                let thread = e.thread_id.clone().unwrap_or_else(|| id.clone());
                let mut it = Item {
                    account,
                    content: e.content_id.clone(),
                    kind: ItemKind::Comment,
                    time: t,
                    reply,
                    thread: thread.clone(),
                    answered: None,
                    first_response: None,
                    removed: false,
                };
                if let Some((a, _)) = self.early.remove(&id) {
                    it.answered = Some(a);
                    self.early_dirty = true;
                }
                if !reply {
                    if let Some((a, _)) = self.early_roots.remove(&(it.account.clone(), thread)) {
                        it.first_response = Some(a);
                        self.early_dirty = true;
                    }
                }
                self.change(id, None, Some(it), offset);
            }
            (Kind::Comment, Action::Remove | Action::Hide | Action::Unhide) => {
                let Some(id) = e.object_id.clone() else {
                    return;
                };
                let Some(old) = self.items.get(&id).cloned() else {
                    return;
                };
                let mut it = old.clone();
                it.removed = e.action != Action::Unhide;
                self.change(id, Some(old), Some(it), offset);
            }
            (Kind::StoryReply, Action::Add) | (Kind::DmIn, Action::Add) if !e.is_brand_actor => {
                let silence = self.cfg.dm_silence_ms;
                let th = self.threads.entry(dm_thread.clone()).or_default();
                let silent = !th.recent.iter().any(|&x| x < t && x >= t - silence);
                let opens = e.kind == Kind::StoryReply || silent;
                th.seen(t);
                // The brand may have answered before this arrived.
                let answer = th.outs.iter().copied().filter(|&o| o >= t).min();
                self.dirty_threads.insert(dm_thread.clone());
                if !opens {
                    return;
                }
                let id = e.object_id.clone().unwrap_or_else(|| e.event_id.clone());
                if self.items.contains_key(&id) {
                    return;
                }
                if answer.is_none() {
                    if let Some(th) = self.threads.get_mut(&dm_thread) {
                        th.open.push(id.clone());
                    }
                }
                let it = Item {
                    account,
                    content: e.content_id.clone(),
                    kind: if e.kind == Kind::StoryReply {
                        ItemKind::StoryReply
                    } else {
                        ItemKind::Dm
                    },
                    time: t,
                    reply: false,
                    thread: dm_thread.1.clone(),
                    answered: answer,
                    first_response: answer,
                    removed: false,
                };
                self.change(id, None, Some(it), offset);
            }
            (Kind::DmOut, Action::Add) => {
                let th = self.threads.entry(dm_thread.clone()).or_default();
                th.seen(t);
                th.outs.push(t);
                th.outs.sort_unstable();
                th.outs.dedup();
                if th.outs.len() > 4 {
                    th.outs.remove(0);
                }
                let open = std::mem::take(&mut th.open);
                let mut still = Vec::new();
                let mut answered = Vec::new();
                for id in open {
                    match self.items.get(&id) {
                        Some(it) if it.time <= t => answered.push(id),
                        Some(_) => still.push(id),
                        None => {}
                    }
                }
                if let Some(th) = self.threads.get_mut(&dm_thread) {
                    th.open = still;
                }
                self.dirty_threads.insert(dm_thread.clone());
                for id in answered {
                    if let Some(old) = self.items.get(&id).cloned() {
                        let mut it = old.clone();
                        it.answered = Some(old.answered.map_or(t, |a| a.min(t)));
                        it.first_response = it.answered;
                        self.change(id, Some(old), Some(it), offset);
                    }
                }
            }
            (Kind::BrandReply | Kind::PrivateReplySent, Action::Add) => {
                if let Some(parent) = e.parent_id.clone().filter(|p| !p.is_empty()) {
                    match self.items.get(&parent).cloned() {
                        Some(old) if old.kind == ItemKind::Comment => {
                            let mut it = old.clone();
                            it.answered = Some(old.answered.map_or(t, |a| a.min(t)));
                            self.change(parent, Some(old), Some(it), offset);
                        }
                        Some(_) => {}
                        None => {
                            let v = self.early.entry(parent).or_insert((t, t));
                            v.0 = v.0.min(t);
                            v.1 = v.1.max(t);
                            self.early_dirty = true;
                        }
                    }
                }
                // The first response in the comment thread.
                if e.kind == Kind::BrandReply {
                    if let Some(root) = e.thread_id.clone().filter(|r| !r.is_empty()) {
                        match self.items.get(&root).cloned() {
                            Some(old) if old.kind == ItemKind::Comment && !old.reply => {
                                let mut it = old.clone();
                                it.first_response =
                                    Some(old.first_response.map_or(t, |a| a.min(t)));
                                self.change(root, Some(old), Some(it), offset);
                            }
                            Some(_) => {}
                            None => {
                                let v = self.early_roots.entry((account, root)).or_insert((t, t));
                                v.0 = v.0.min(t);
                                v.1 = v.1.max(t);
                                self.early_dirty = true;
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// Replaces item `id` (old → new) and moves its contribution between windows.
    fn change(&mut self, id: String, old: Option<Item>, new: Option<Item>, offset: i64) {
        let before = old.as_ref().and_then(contribution);
        let after = new.as_ref().and_then(contribution);
        if let Some(it) = new.clone() {
            self.items.insert(id.clone(), it);
            self.dirty_items.insert(id.clone());
        }
        if before == after {
            return;
        }
        let Some(it) = new.or(old) else {
            return;
        };
        let keys: Vec<String> = std::iter::once(String::new())
            .chain(it.content.clone().filter(|c| !c.is_empty()))
            .collect();
        for (sign, c) in [(-1i64, before), (1, after)] {
            let Some(c) = c else { continue };
            for content in &keys {
                for kind in [WindowKind::Hour, WindowKind::Day] {
                    let start = window_start(kind, c.time);
                    if self
                        .progress
                        .is_final(start + window_len(kind), self.horizon())
                    {
                        continue; // final
                    }
                    let wk = (it.account.clone(), content.clone(), kind, start);
                    let w = self.windows.map.entry(wk.clone()).or_default();
                    w.inbound += sign;
                    w.answered += sign * i64::from(c.answered);
                    match c.kind {
                        ItemKind::Comment => {
                            w.inbound_comments += sign;
                            w.answered_comments += sign * i64::from(c.answered);
                            if c.reply {
                                w.replies += sign;
                            } else {
                                w.roots += sign;
                            }
                        }
                        ItemKind::StoryReply => w.story_replies += sign,
                        ItemKind::Dm => w.dms += sign,
                    }
                    for (q, v) in [
                        (&mut w.response, c.response_s),
                        (&mut w.first_response, c.first_response_s),
                    ] {
                        if let Some(v) = v {
                            if sign > 0 {
                                q.add(v);
                            } else {
                                q.remove(v);
                            }
                        }
                    }
                    w.revision = w.revision.max(offset);
                    self.windows.changed(&wk);
                }
            }
        }
    }

    fn row(wk: &WindowKey, w: &Agg, emitted_at: i64) -> ConversationRollup {
        let ratio = |a: i64, b: i64| (b > 0).then(|| a as f64 / b as f64);
        ConversationRollup {
            account_id: wk.0.clone(),
            content_id: (!wk.1.is_empty()).then(|| wk.1.clone()),
            window: wk.2,
            window_start: wk.3,
            window_end: wk.3 + window_len(wk.2),
            revision: w.revision,
            inbound: w.inbound,
            answered: w.answered,
            inbound_comments: w.inbound_comments,
            answered_comments: w.answered_comments,
            inbound_story_replies: w.story_replies,
            inbound_dms: w.dms,
            response_rate: ratio(w.answered, w.inbound),
            median_response_s: w.response.quantile(0.5),
            p90_response_s: w.response.quantile(0.9),
            median_first_response_s: w.first_response.quantile(0.5),
            root_comments: w.roots,
            reply_comments: w.replies,
            thread_depth: ratio(w.replies, w.roots),
            reply_share: ratio(w.replies, w.roots + w.replies),
            emitted_at,
        }
    }

    /// Moves the watermark: entering a new minute, emits the windows that changed; entering
    /// a new hour, forgets what can no longer change.
    pub fn advance(&mut self, wm: i64, out: &mut Vec<ConversationRollup>) {
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

    /// Forgets final windows, items whose DAY window is final, silent threads, and early
    /// answers nothing will claim.
    fn forget(&mut self, wm: i64) {
        let horizon = self.horizon();
        let progress = &self.progress;
        self.removed.extend(self.windows.forget(
            |wk| progress.is_final(wk.3 + window_len(wk.2), horizon),
            Self::window_name,
        ));
        // Items whose DAY window is final; threads silent for longer than the silence.
        let old: Vec<String> = self
            .items
            .iter()
            .filter(|(_, it)| {
                let day_end = it.time - it.time.rem_euclid(DAY) + DAY;
                day_end.saturating_add(horizon) < wm
            })
            .map(|(k, _)| k.clone())
            .collect();
        for id in old {
            self.items.remove(&id);
            self.dirty_items.remove(&id);
            self.removed.push(Self::item_name(&id));
        }
        let silence = self.cfg.dm_silence_ms;
        let quiet: Vec<(String, String)> = self
            .threads
            .iter()
            .filter(|(_, th)| th.last_dm.saturating_add(silence).saturating_add(horizon) < wm)
            .map(|(k, _)| k.clone())
            .collect();
        for k in quiet {
            self.threads.remove(&k);
            self.dirty_threads.remove(&k);
            self.removed.push(Self::thread_name(&k));
        }
        let keep_after = wm.saturating_sub(horizon.saturating_add(DAY));
        let before = self.early.len() + self.early_roots.len();
        self.early.retain(|_, v| v.1 >= keep_after);
        self.early_roots.retain(|_, v| v.1 >= keep_after);
        if self.early.len() + self.early_roots.len() != before {
            self.early_dirty = true;
        }
    }

    fn item_name(id: &str) -> String {
        format!("i/{id}")
    }

    fn thread_name(k: &(String, String)) -> String {
        format!("t/{}\u{1f}{}", k.0, k.1)
    }

    fn window_name(k: &WindowKey) -> String {
        let kind = if k.2 == WindowKind::Hour { "H" } else { "D" };
        format!("w/{}\u{1f}{}\u{1f}{kind}\u{1f}{}", k.0, k.1, k.3)
    }

    /// State changed since the last call, as changelog entries (None: deleted). Answers seen
    /// before their items are kept with the meta entry.
    pub fn changes(&mut self) -> Vec<(String, Option<Vec<u8>>)> {
        let mut out: Vec<(String, Option<Vec<u8>>)> = std::mem::take(&mut self.removed)
            .into_iter()
            .map(|n| (n, None))
            .collect();
        for id in std::mem::take(&mut self.dirty_items) {
            if let Some(v) = self.items.get(&id).and_then(|v| serde_json::to_vec(v).ok()) {
                out.push((Self::item_name(&id), Some(v)));
            }
        }
        for k in std::mem::take(&mut self.dirty_threads) {
            if let Some(v) = self
                .threads
                .get(&k)
                .and_then(|v| serde_json::to_vec(v).ok())
            {
                out.push((Self::thread_name(&k), Some(v)));
            }
        }
        self.windows.changes(Self::window_name, &mut out);
        if std::mem::take(&mut self.meta_dirty) {
            out.push(("m".into(), serde_json::to_vec(&self.progress).ok()));
        }
        if std::mem::take(&mut self.early_dirty) {
            let mut early: Vec<(&String, &(i64, i64))> = self.early.iter().collect();
            early.sort();
            out.push(("e".into(), serde_json::to_vec(&early).ok()));
            let mut roots: Vec<_> = self.early_roots.iter().collect();
            roots.sort();
            out.push(("r".into(), serde_json::to_vec(&roots).ok()));
        }
        out
    }

    fn parse_window(n: &str) -> Option<WindowKey> {
        let k = n.strip_prefix("w/")?;
        let mut p = k.split('\u{1f}');
        let (a, c, kind, start) = (p.next()?, p.next()?, p.next()?, p.next()?);
        let kind = if kind == "H" {
            WindowKind::Hour
        } else {
            WindowKind::Day
        };
        Some((a.to_owned(), c.to_owned(), kind, start.parse().ok()?))
    }

    /// Takes one changelog entry back (latest per name, any order).
    pub fn restore(&mut self, name: &str, value: &[u8]) -> Result<(), String> {
        let err = |e: serde_json::Error| format!("conversation state {name}: {e}");
        match name {
            "m" => {
                self.progress = serde_json::from_slice(value).map_err(err)?;
            }
            "e" => {
                let v: Vec<(String, (i64, i64))> = serde_json::from_slice(value).map_err(err)?;
                self.early = v.into_iter().collect();
            }
            "r" => {
                let v: Vec<((String, String), (i64, i64))> =
                    serde_json::from_slice(value).map_err(err)?;
                self.early_roots = v.into_iter().collect();
            }
            _ => {
                if let Some(id) = name.strip_prefix("i/") {
                    self.items
                        .insert(id.to_owned(), serde_json::from_slice(value).map_err(err)?);
                } else if let Some(k) = name.strip_prefix("t/") {
                    let (a, t) = k
                        .split_once('\u{1f}')
                        .ok_or_else(|| format!("conversation state {name}: bad thread"))?;
                    self.threads.insert(
                        (a.to_owned(), t.to_owned()),
                        serde_json::from_slice(value).map_err(err)?,
                    );
                } else if let Some(k) = Self::parse_window(name) {
                    self.windows
                        .restore(k, serde_json::from_slice(value).map_err(err)?);
                } else {
                    return Err(format!("conversation state {name}: unknown entry"));
                }
            }
        }
        Ok(())
    }

    /// Drops pending changes (after a restore).
    pub fn clean(&mut self) {
        self.dirty_items.clear();
        self.dirty_threads.clear();
        self.windows.clean();
        self.removed.clear();
        self.meta_dirty = false;
        self.early_dirty = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use banter_model::Platform;

    const T0: i64 = 1_764_028_800_000; // 2025-11-25 00:00 UTC

    fn ev(kind: Kind, action: Action, id: &str, t: i64) -> EngagementEvent {
        let mut e = EngagementEvent::new(
            format!("{kind}:{action}:{id}:{t}"),
            Platform::Instagram,
            kind,
            action,
            "acct",
            t,
        );
        e.object_id = Some(id.into());
        e.actor_id = Some("user".into());
        e.content_id = Some("post".into());
        e
    }

    fn comment(id: &str, parent: Option<&str>, t: i64) -> EngagementEvent {
        let mut e = ev(Kind::Comment, Action::Add, id, t);
        e.parent_id = parent.map(Into::into);
        e.thread_id = Some(parent.unwrap_or(id).into());
        e
    }

    fn brand_reply(id: &str, parent: &str, t: i64) -> EngagementEvent {
        let mut e = ev(Kind::BrandReply, Action::Add, id, t);
        e.parent_id = Some(parent.into());
        e.thread_id = Some(parent.into());
        e.is_brand_actor = true;
        e
    }

    fn dm(kind: Kind, user: &str, id: &str, t: i64) -> EngagementEvent {
        let mut e = ev(kind, Action::Add, id, t);
        e.content_id = None;
        e.thread_id = Some(user.into());
        e.is_brand_actor = kind == Kind::DmOut;
        e
    }

    /// Feeds the events in order with the watermark one minute behind, then closes all; the
    /// final row per window.
    fn run(events: &[EngagementEvent]) -> BTreeMap<WindowKey, ConversationRollup> {
        let mut c = Conversations::new(ConversationConfig::default());
        let mut out = Vec::new();
        let mut max = NONE;
        for (i, e) in events.iter().enumerate() {
            c.process(e, i as i64);
            max = max.max(e.event_time);
            c.advance(max - 60_000, &mut out);
        }
        c.advance(max + 10 * DAY, &mut out);
        let mut last = BTreeMap::new();
        for r in out {
            let k = (
                r.account_id.clone(),
                r.content_id.clone().unwrap_or_default(),
                r.window,
                r.window_start,
            );
            last.insert(k, r);
        }
        last
    }

    fn hour(rows: &BTreeMap<WindowKey, ConversationRollup>, h: i64) -> &ConversationRollup {
        &rows[&(
            "acct".to_owned(),
            String::new(),
            WindowKind::Hour,
            T0 + h * HOUR,
        )]
    }

    #[test]
    fn response_times_belong_to_the_item_window_even_when_the_answer_comes_after_it_closed() {
        let events = vec![
            comment("c1", None, T0 + 10 * MINUTE),
            brand_reply("b1", "c1", T0 + 12 * MINUTE), // 120 s, inside the hour
            comment("c2", None, T0 + 50 * MINUTE),
            comment("c3", Some("c2"), T0 + 55 * MINUTE), // a reply: thread depth
            comment("c4", None, T0 + 58 * MINUTE),       // never answered
            // The hour has closed (and was emitted) before this answer to c2: 40 minutes.
            comment("c5", None, T0 + 85 * MINUTE),
            brand_reply("b2", "c2", T0 + 90 * MINUTE),
        ];
        let rows = run(&events);
        let h0 = hour(&rows, 0);
        assert_eq!((h0.inbound, h0.answered), (4, 2));
        assert_eq!(h0.response_rate, Some(0.5));
        let med = h0.median_response_s.unwrap();
        assert!((med - 120.0).abs() <= 1.2, "{med}"); // nearest rank of {120, 2400}
        let p90 = h0.p90_response_s.unwrap();
        assert!((p90 - 2400.0).abs() <= 24.0, "{p90}");
        assert_eq!((h0.root_comments, h0.reply_comments), (3, 1));
        assert!((h0.thread_depth.unwrap() - 1.0 / 3.0).abs() < 1e-9);
        assert!((h0.reply_share.unwrap() - 0.25).abs() < 1e-9);
        // First response in c2's thread: the brand's reply 40 minutes after the root.
        assert!(h0.median_first_response_s.is_some());
        let h1 = hour(&rows, 1);
        assert_eq!((h1.inbound, h1.answered), (1, 0));
        // The post-level row matches, the day holds both hours.
        let day = &rows[&("acct".to_owned(), String::new(), WindowKind::Day, T0)];
        assert_eq!((day.inbound, day.answered), (5, 2));
        let post = &rows[&("acct".to_owned(), "post".to_owned(), WindowKind::Hour, T0)];
        assert_eq!((post.inbound, post.answered), (4, 2));
    }

    #[test]
    fn the_brand_talking_to_itself_and_deleted_comments_do_not_count() {
        let mut own = comment("own", None, T0 + MINUTE);
        own.is_brand_actor = true;
        let events = vec![
            own,
            brand_reply("b0", "own", T0 + 2 * MINUTE),
            comment("c1", None, T0 + 3 * MINUTE),
            brand_reply("b1", "c1", T0 + 4 * MINUTE),
            ev(Kind::Comment, Action::Remove, "c1", T0 + 5 * MINUTE),
            comment("c2", None, T0 + 6 * MINUTE),
            ev(Kind::Comment, Action::Hide, "c2", T0 + 7 * MINUTE),
            ev(Kind::Comment, Action::Unhide, "c2", T0 + 8 * MINUTE),
        ];
        let h0 = run(&events)[&("acct".to_owned(), String::new(), WindowKind::Hour, T0)].clone();
        assert_eq!(
            (h0.inbound, h0.answered, h0.response_rate),
            (1, 0, Some(0.0))
        );
    }

    #[test]
    fn a_dm_opens_a_conversation_after_a_day_of_silence() {
        let events = vec![
            dm(Kind::DmIn, "u1", "m1", T0 + HOUR),
            dm(Kind::DmIn, "u1", "m2", T0 + HOUR + MINUTE), // same conversation
            dm(Kind::DmOut, "u1", "o1", T0 + HOUR + 5 * MINUTE), // answers m1
            dm(Kind::DmIn, "u1", "m3", T0 + 20 * HOUR),     // 19 h later: same conversation
            dm(Kind::DmIn, "u1", "m4", T0 + 45 * HOUR),     // 25 h of silence: a new one
            dm(Kind::StoryReply, "u2", "s1", T0 + 45 * HOUR),
            dm(Kind::DmOut, "u2", "o2", T0 + 45 * HOUR + 30_000),
        ];
        let rows = run(&events);
        let h1 = hour(&rows, 1);
        assert_eq!((h1.inbound_dms, h1.answered), (1, 1));
        assert!((h1.median_response_s.unwrap() - 300.0).abs() <= 3.0);
        let h45 = &rows[&(
            "acct".to_owned(),
            String::new(),
            WindowKind::Hour,
            T0 + 45 * HOUR,
        )];
        assert_eq!(
            (h45.inbound_dms, h45.inbound_story_replies, h45.answered),
            (1, 1, 1)
        );
    }

    #[test]
    fn answers_before_their_items_and_any_order_give_the_same_rows() {
        let events = vec![
            comment("c1", None, T0 + 10 * MINUTE),
            comment("c2", Some("c1"), T0 + 11 * MINUTE),
            brand_reply("b1", "c1", T0 + 12 * MINUTE),
            brand_reply("b2", "c2", T0 + 13 * MINUTE),
            dm(Kind::DmIn, "u1", "m1", T0 + 14 * MINUTE),
            dm(Kind::DmOut, "u1", "o1", T0 + 15 * MINUTE),
        ];
        let ordered = run(&events);
        // Everything at once, answers first.
        let mut c = Conversations::new(ConversationConfig::default());
        let mut out = Vec::new();
        for (i, e) in events.iter().rev().enumerate() {
            c.process(e, i as i64);
        }
        c.advance(T0 + 10 * DAY, &mut out);
        let strip = |r: &ConversationRollup| {
            (
                r.window_start,
                r.content_id.clone(),
                r.inbound,
                r.answered,
                r.median_response_s.map(f64::to_bits),
                r.root_comments,
                r.reply_comments,
            )
        };
        let a: BTreeSet<_> = ordered.values().map(strip).collect();
        let b: BTreeSet<_> = out.iter().map(strip).collect();
        assert_eq!(a, b);
        assert_eq!(hour(&ordered, 0).answered, 3);
    }

    #[test]
    fn restoring_from_the_changelog_at_any_point_continues_identically() {
        let events = [
            comment("c1", None, T0 + 10 * MINUTE),
            brand_reply("b0", "c9", T0 + 10 * MINUTE), // before its item
            comment("c2", Some("c1"), T0 + 11 * MINUTE),
            brand_reply("b1", "c1", T0 + 12 * MINUTE),
            dm(Kind::DmIn, "u1", "m1", T0 + 14 * MINUTE),
            comment("c9", None, T0 + 9 * MINUTE),
            dm(Kind::DmOut, "u1", "o1", T0 + 75 * MINUTE),
            ev(Kind::Comment, Action::Remove, "c2", T0 + 80 * MINUTE),
        ];
        let feed = |c: &mut Conversations, from: usize, out: &mut Vec<ConversationRollup>| {
            for (i, e) in events.iter().enumerate().skip(from) {
                c.process(e, i as i64);
                let wm = events[..=i].iter().map(|e| e.event_time).max().unwrap_or(0) - 60_000;
                c.advance(wm, out);
            }
        };
        let mut expected = Vec::new();
        let mut a = Conversations::new(ConversationConfig::default());
        feed(&mut a, 0, &mut expected);
        a.advance(T0 + 10 * DAY, &mut expected);
        for cut in 0..events.len() {
            let mut a = Conversations::new(ConversationConfig::default());
            let mut out = Vec::new();
            for (i, e) in events.iter().enumerate().take(cut) {
                a.process(e, i as i64);
                let wm = events[..=i].iter().map(|e| e.event_time).max().unwrap_or(0) - 60_000;
                a.advance(wm, &mut out);
            }
            let mut log: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
            log.extend(a.changes());
            let mut b = Conversations::new(ConversationConfig::default());
            for (n, v) in &log {
                if let Some(v) = v {
                    b.restore(n, v).unwrap();
                }
            }
            b.clean();
            feed(&mut b, 0, &mut out);
            b.advance(T0 + 10 * DAY, &mut out);
            let key = |r: &ConversationRollup| format!("{r:?}");
            let mut got: Vec<String> = out.iter().map(key).collect();
            let mut want: Vec<String> = expected.iter().map(key).collect();
            got.sort();
            want.sort();
            assert_eq!(got, want, "restored after {cut} events");
        }
    }
}
