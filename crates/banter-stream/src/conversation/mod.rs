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

use banter_model::{Action, ConversationRollup, EngagementEvent, Kind, WindowKind};
use serde::{Deserialize, Serialize};

use crate::changelog::{Change, ChangelogMap, Entry, StateError, Store, TableId};
use crate::operator::{Operator, Time};
use crate::quantile::Quantiles;
use crate::time::{window_len, window_start, DAY};
use crate::window_table::{Pending, WindowTable};

/// Parameters: the `conversation.*` section of the configuration, used as it is.
pub use crate::config::ConversationConfig;

#[cfg(test)]
mod tests;

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

const ITEMS: TableId = TableId {
    tag: b'i',
    name: "conversation item",
};
const THREADS: TableId = TableId {
    tag: b't',
    name: "conversation DM thread",
};
const EARLY: TableId = TableId {
    tag: b'e',
    name: "conversation early answer",
};
const EARLY_ROOTS: TableId = TableId {
    tag: b'r',
    name: "conversation early thread reply",
};
const WINDOWS: TableId = TableId {
    tag: b'w',
    name: "conversation window",
};
const PROGRESS: TableId = TableId {
    tag: b'm',
    name: "conversation progress",
};

/// Conversation metrics of one partition.
#[derive(Debug, Clone)]
pub struct Conversations {
    cfg: ConversationConfig,
    /// Inbound items by object id.
    items: ChangelogMap<String, Item>,
    /// DM threads by (account, thread).
    threads: ChangelogMap<(String, String), Thread>,
    /// Answers seen before their item: parent object id → (earliest, latest) answer time.
    early: ChangelogMap<String, (i64, i64)>,
    /// Comment-thread replies seen before their root: (account, thread) → (earliest, latest)
    /// reply time.
    early_roots: ChangelogMap<(String, String), (i64, i64)>,
    /// The windows and the progress through the input.
    windows: WindowTable<WindowKey, Agg>,
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
            items: ChangelogMap::new(ITEMS),
            threads: ChangelogMap::new(THREADS),
            early: ChangelogMap::new(EARLY),
            early_roots: ChangelogMap::new(EARLY_ROOTS),
            windows: WindowTable::new(WINDOWS, PROGRESS, cfg.answer_horizon_ms),
        }
    }

    /// Inputs before this offset were applied.
    pub fn next_offset(&self) -> i64 {
        self.windows.next_offset()
    }

    /// Items, threads and windows held.
    pub fn state_entries(&self) -> usize {
        self.items.len() + self.threads.len() + self.windows.len()
    }

    fn horizon(&self) -> i64 {
        self.cfg.answer_horizon_ms
    }

    /// Applies one event the engine counted (not a duplicate, not too late); false when it
    /// was applied before a restore.
    pub fn process(&mut self, e: &EngagementEvent, offset: i64) -> bool {
        if !self.windows.accept(offset) {
            return false;
        }
        self.apply(e, offset);
        true
    }

    fn apply(&mut self, e: &EngagementEvent, offset: i64) {
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
                }
                if !reply {
                    if let Some((a, _)) = self.early_roots.remove(&(it.account.clone(), thread)) {
                        it.first_response = Some(a);
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
                let th = self
                    .threads
                    .get_or_insert_with(dm_thread.clone(), Thread::default);
                let silent = !th.recent.iter().any(|&x| x < t && x >= t - silence);
                let opens = e.kind == Kind::StoryReply || silent;
                th.seen(t);
                // The brand may have answered before this arrived.
                let answer = th.outs.iter().copied().filter(|&o| o >= t).min();
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
                let th = self
                    .threads
                    .get_or_insert_with(dm_thread.clone(), Thread::default);
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
                            let v = self.early.get_or_insert_with(parent, || (t, t));
                            v.0 = v.0.min(t);
                            v.1 = v.1.max(t);
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
                                let v = self
                                    .early_roots
                                    .get_or_insert_with((account, root), || (t, t));
                                v.0 = v.0.min(t);
                                v.1 = v.1.max(t);
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
            self.items.insert(id, it);
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
                    if self.windows.is_final(kind, start) {
                        continue;
                    }
                    let wk = (it.account.clone(), content.clone(), kind, start);
                    let w = self.windows.update(&wk, Agg::default);
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
        if self.windows.advance(wm, |wk| (wk.2, wk.3), Self::row, out) {
            self.forget(wm);
        }
    }

    /// Forgets items whose DAY window is final, silent threads, and early answers nothing
    /// will claim.
    fn forget(&mut self, wm: i64) {
        let horizon = self.horizon();
        // Items whose DAY window is final; threads silent for longer than the silence.
        self.items.retain(|_, it| {
            let day_end = it.time - it.time.rem_euclid(DAY) + DAY;
            day_end.saturating_add(horizon) >= wm
        });
        let silence = self.cfg.dm_silence_ms;
        self.threads
            .retain(|_, th| th.last_dm.saturating_add(silence).saturating_add(horizon) >= wm);
        let keep_after = wm.saturating_sub(horizon.saturating_add(DAY));
        self.early.retain(|_, v| v.1 >= keep_after);
        self.early_roots.retain(|_, v| v.1 >= keep_after);
    }
}

impl Operator for Conversations {
    type In = EngagementEvent;
    type Out = ConversationRollup;
    const STORE: Store = Store::Conversations;

    fn process(
        &mut self,
        e: &EngagementEvent,
        offset: i64,
        _out: &mut Vec<ConversationRollup>,
    ) -> bool {
        Conversations::process(self, e, offset)
    }

    fn advance(&mut self, time: Time, out: &mut Vec<ConversationRollup>) {
        Conversations::advance(self, time.watermark, out);
    }

    fn write_changes(&mut self, out: &mut Vec<Change>) -> Result<(), StateError> {
        self.items.write_changes(out)?;
        self.threads.write_changes(out)?;
        self.early.write_changes(out)?;
        self.early_roots.write_changes(out)?;
        self.windows.write_changes(out)
    }

    fn restore_entry(&mut self, entry: &Entry<'_>) -> Result<(), StateError> {
        match entry.tag() {
            t if t == ITEMS.tag => self.items.restore_entry(entry),
            t if t == THREADS.tag => self.threads.restore_entry(entry),
            t if t == EARLY.tag => self.early.restore_entry(entry),
            t if t == EARLY_ROOTS.tag => self.early_roots.restore_entry(entry),
            _ if self.windows.holds(entry) => self.windows.restore_entry(entry),
            _ => Err(entry.unknown()),
        }
    }

    fn restored(&mut self) {
        self.items.forget_changes();
        self.threads.forget_changes();
        self.early.forget_changes();
        self.early_roots.forget_changes();
        self.windows.forget_changes();
    }

    fn state_entries(&self) -> usize {
        Conversations::state_entries(self)
    }
}
