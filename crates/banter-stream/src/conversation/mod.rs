//! Conversation metrics: how much inbound the brand gets, how much of it it answers and how
//! fast, and the shape of comment threads — per account and per post, per hour and per day.
//!
//! * **Inbound items**: COMMENTs (ADD, not by the brand), STORY_REPLYs, and DM_INs that open a
//!   conversation: no DM either way in that thread (`thread_id`, else the actor) for
//!   `dm_silence_ms` (24 h) before it, by event time.
//! * **A comment's state** (visible, hidden, removed) follows its moderation actions by event
//!   time, whatever their arrival order: removed by a REMOVE at any time; else hidden when its
//!   latest HIDE / UNHIDE is a HIDE. A removed or hidden comment does not count. An action
//!   that arrives before its comment waits for it.
//! * **Answers**: a BRAND_REPLY or PRIVATE_REPLY_SENT whose `parent_id` is the comment; the
//!   brand's first DM_OUT in the thread at or after a DM opening or story reply. The first
//!   answer counts; the brand answering itself counts for nothing (its comments are not
//!   inbound). An answer that arrives before its item is kept and applied when the item comes.
//! * **Response time** = first answer − item time, in the window of the item (so the response
//!   rate of an hour is about that hour's inbound); **first response** = from a thread's root
//!   (a top-level comment, a story reply, a DM that opens a conversation) to the brand's first
//!   answer anywhere in that thread: BRAND_REPLY or PRIVATE_REPLY_SENT on any of its comments,
//!   DM_OUT in a DM thread. Quantiles from [`Quantiles`] (1 % relative error).
//! * **Any arrival order.** A DM thread keeps its recent DMs both ways, and its items (which
//!   DMs open a conversation, what answers them) are recomputed from them when one arrives; a
//!   comment's answers and actions fold in by minimum and by event time. So every row is the
//!   same for any arrival order within the lateness.
//! * **Threads**: root comments (no parent) and replies per window; depth = replies / roots,
//!   reply share = replies / comments.
//! * **Windows and exactly once** as in [`crate::funnel`]: emitted each time the watermark
//!   enters a new minute when changed; an item's window takes its answers for
//!   `answer_horizon_ms` (24 h) after the window's end, then it is final; the state is a
//!   changelog and inputs before [`Conversations::next_offset`] are skipped after a restore.

use banter_model::{Action, ConversationRollup, EngagementEvent, Kind, WindowKind};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use smol_str::SmolStr;

use crate::changelog::{ChangelogMap, Changes, Entry, StateError, Store, TableId};
use crate::operator::{Operator, Time};
use crate::quantile::Quantiles;
use crate::time::{check_count, check_offset, check_time, window_len, window_start, DAY};
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
    account: SmolStr,
    content: Option<SmolStr>,
    kind: ItemKind,
    time: i64,
    /// Comments: a reply to another comment.
    reply: bool,
    /// The thread (comment thread root, or DM thread).
    thread: SmolStr,
    /// First answer time.
    answered: OptTime,
    /// Thread roots: the brand's first answer in the thread.
    first_response: OptTime,
    /// Removed or hidden.
    removed: bool,
}

/// An event time or none, in 8 bytes where an `Option<i64>` takes 16: an item is kept for a
/// day and more, one per inbound comment, story reply and DM, so its size is most of what the
/// operator holds. Events are validated to be after 2000, so `i64::MIN` is free to mean none
/// (restored from a damaged changelog, it reads as none). Written to the changelog as the
/// option it stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OptTime(i64);

impl OptTime {
    const NONE: OptTime = OptTime(i64::MIN);

    fn get(self) -> Option<i64> {
        (self != Self::NONE).then_some(self.0)
    }
}

impl From<Option<i64>> for OptTime {
    fn from(t: Option<i64>) -> Self {
        t.map_or(Self::NONE, OptTime)
    }
}

impl Serialize for OptTime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.get().serialize(s)
    }
}

impl<'de> Deserialize<'de> for OptTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Option::<i64>::deserialize(d).map(OptTime::from)
    }
}

/// Refuses a restored (earliest, latest) answer time no operator writes.
fn check_span(&(first, last): &(i64, i64)) -> Result<(), String> {
    check_time("earliest answer", Some(first))?;
    check_time("latest answer", Some(last))
}

/// Most DMs a thread keeps (the most recent); most moderation actions per comment.
const MAX_THREAD_DMS: usize = 1_000;
/// Most bytes a thread's changelog value may take ([`Thread::bytes`], an upper bound of its
/// JSON, which its binary form never exceeds): under Kafka's 1 MB record limit also when
/// every id is as long as validation allows (512 bytes; a story reply carries two), where
/// 1,000 DMs would not be.
const MAX_THREAD_BYTES: usize = 900 * 1024;
const MAX_ACTIONS: usize = 16;

/// One DM of a thread.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct Dm {
    time: i64,
    /// The message id.
    id: SmolStr,
    /// Sent by the brand.
    out: bool,
    /// A reply to a story (always an item of its own); its story.
    story: Option<SmolStr>,
}

/// A DM thread: its recent DMs both ways, sorted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Thread {
    dms: Vec<Dm>,
}

impl Thread {
    fn last_dm(&self) -> Option<i64> {
        self.dms.last().map(|d| d.time)
    }

    /// An upper bound of the thread's JSON size: each string escaped at worst doubles.
    fn bytes(&self) -> usize {
        self.dms
            .iter()
            .map(|d| 64 + 2 * (d.id.len() + d.story.as_ref().map_or(0, SmolStr::len)))
            .sum()
    }

    /// Drops the oldest DMs past [`MAX_THREAD_DMS`] or [`MAX_THREAD_BYTES`].
    fn trim(&mut self) {
        let over = self.dms.len().saturating_sub(MAX_THREAD_DMS);
        self.dms.drain(..over);
        // Below this many DMs the bytes cannot reach the limit (at most 2,112 bytes each).
        if self.dms.len() * 2_112 > MAX_THREAD_BYTES {
            let mut bytes = self.bytes();
            let mut drop = 0;
            while bytes > MAX_THREAD_BYTES && drop < self.dms.len() {
                let d = &self.dms[drop];
                bytes -= 64 + 2 * (d.id.len() + d.story.as_ref().map_or(0, SmolStr::len));
                drop += 1;
            }
            self.dms.drain(..drop);
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

    fn check(&self) -> Result<(), String> {
        [
            self.inbound,
            self.answered,
            self.inbound_comments,
            self.answered_comments,
            self.story_replies,
            self.dms,
            self.roots,
            self.replies,
        ]
        .into_iter()
        .try_for_each(|n| check_count("window count", n))?;
        check_offset("revision", self.revision)
    }
}

/// (account, content or "", kind, start).
type WindowKey = (SmolStr, SmolStr, WindowKind, i64);

const ITEMS: TableId = TableId {
    tag: b'i',
    name: "conversation item",
};
const THREADS: TableId = TableId {
    tag: b't',
    name: "conversation DM thread",
};
const ANSWERS: TableId = TableId {
    tag: b'e',
    name: "conversation answer before its comment",
};
const THREAD_FIRST: TableId = TableId {
    tag: b'r',
    name: "conversation first answer in a comment thread",
};
const ACTIONS: TableId = TableId {
    tag: b'x',
    name: "conversation moderation actions",
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
    items: ChangelogMap<SmolStr, Item>,
    /// DM threads by (account, thread).
    threads: ChangelogMap<(SmolStr, SmolStr), Thread>,
    /// Answers to comments not seen yet: parent object id → (earliest, latest) answer time.
    answers: ChangelogMap<SmolStr, (i64, i64)>,
    /// The brand's first answer in each comment thread: (account, root) → (earliest, latest).
    thread_first: ChangelogMap<(SmolStr, SmolStr), (i64, i64)>,
    /// Moderation actions by comment id, (time, action) sorted.
    actions: ChangelogMap<SmolStr, Vec<(i64, Action)>>,
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
    let secs = |t: OptTime| t.get().map(|a| (a - it.time).max(0) as f64 / 1000.0);
    Some(Contribution {
        time: it.time,
        kind: it.kind,
        reply: it.reply,
        answered: it.answered.get().is_some(),
        response_s: secs(it.answered),
        first_response_s: secs(it.first_response),
    })
}

/// Whether a comment with these moderation actions is removed or hidden: removed by a REMOVE
/// at any time; hidden when its latest HIDE / UNHIDE is a HIDE.
fn moderated(actions: &[(i64, Action)]) -> bool {
    actions.iter().any(|a| a.1 == Action::Remove)
        || actions
            .iter()
            .rfind(|a| matches!(a.1, Action::Hide | Action::Unhide))
            .is_some_and(|a| a.1 == Action::Hide)
}

/// An optional id of an event, None when absent or empty.
fn nonempty(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.is_empty())
}

/// The DM thread of a DM or story reply: its thread id, else its actor, else "".
fn dm_thread(e: &EngagementEvent) -> &str {
    nonempty(&e.thread_id)
        .or_else(|| nonempty(&e.actor_id))
        .unwrap_or_default()
}

/// Folds time `t` into an (earliest, latest) pair.
fn fold(v: &mut (i64, i64), t: i64) {
    v.0 = v.0.min(t);
    v.1 = v.1.max(t);
}

impl Conversations {
    /// Empty.
    pub fn new(cfg: ConversationConfig) -> Self {
        Conversations {
            cfg,
            items: ChangelogMap::new(ITEMS),
            threads: ChangelogMap::new(THREADS),
            answers: ChangelogMap::new(ANSWERS),
            thread_first: ChangelogMap::new(THREAD_FIRST),
            actions: ChangelogMap::new(ACTIONS),
            windows: WindowTable::new(WINDOWS, PROGRESS, cfg.answer_horizon_ms, |wk| (wk.2, wk.3)),
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

    /// Starts fetching into the cache, and changes nothing, the state that applying `events`
    /// will look up first: a comment's item slot and its four windows, the item an answer
    /// names, a DM's thread. Items are kept a day and windows a day past their end, so these
    /// tables are large and each lookup is a cache miss; started for a batch at once, the
    /// misses overlap (as [`crate::Engine::prefetch`] does for the windows). Purely an
    /// optimization: what is applied is the same with or without it.
    pub fn prefetch(&self, events: &[EngagementEvent]) {
        for e in events {
            let account = e.account_id.as_str();
            match (e.kind, e.action) {
                (Kind::Comment, Action::Add) if !e.is_brand_actor => {
                    let Some(id) = nonempty(&e.object_id) else {
                        continue;
                    };
                    self.items.prefetch_as(id);
                    for content in [Some(""), nonempty(&e.content_id)].into_iter().flatten() {
                        for kind in [WindowKind::Hour, WindowKind::Day] {
                            let start = window_start(kind, e.event_time);
                            self.windows.prefetch_as(&(account, content, kind, start));
                        }
                    }
                }
                (Kind::BrandReply | Kind::PrivateReplySent, Action::Add) => {
                    if let Some(parent) = nonempty(&e.parent_id) {
                        self.items.prefetch_as(parent);
                    }
                }
                (Kind::StoryReply | Kind::DmIn | Kind::DmOut, Action::Add) => {
                    self.threads.prefetch_as(&(account, dm_thread(e)));
                }
                _ => {}
            }
        }
    }

    fn apply(&mut self, e: &EngagementEvent, offset: i64) {
        let t = e.event_time;
        // Ids as SmolStr (inline up to 23 bytes): one allocation less per item, DM and key;
        // made only for the events that keep them.
        let account = || SmolStr::from(e.account_id.as_str());
        let smol = |s: &Option<String>| nonempty(s).map(SmolStr::from);
        match (e.kind, e.action) {
            (Kind::Comment, Action::Add) if !e.is_brand_actor => {
                let Some(id) = smol(&e.object_id) else {
                    return;
                };
                if self.items.contains_key(&id) {
                    return;
                }
                let parent = smol(&e.parent_id);
                let thread = smol(&e.thread_id)
                    .or_else(|| parent.clone())
                    .unwrap_or_else(|| id.clone());
                let reply = parent.is_some();
                // Answers that came before it: its own, and its thread's first.
                let answered = self.answers.remove(&id).map(|a| a.0);
                let account = account();
                let root_key = (account.clone(), thread.clone());
                if let Some(a) = answered {
                    fold(
                        self.thread_first.get_or_insert_with(&root_key, || (a, a)),
                        a,
                    );
                }
                let it = Item {
                    account: account.clone(),
                    content: e.content_id.as_deref().map(SmolStr::from),
                    kind: ItemKind::Comment,
                    time: t,
                    reply,
                    thread: thread.clone(),
                    answered: answered.into(),
                    first_response: OptTime::NONE,
                    removed: self.actions.get(&id).is_some_and(|a| moderated(a)),
                };
                self.change(id, None, Some(it), offset);
                self.update_root(&root_key, offset);
            }
            (Kind::Comment, Action::Remove | Action::Hide | Action::Unhide) => {
                let Some(id) = smol(&e.object_id) else {
                    return;
                };
                let list = self.actions.get_or_insert_with(&id, Vec::new);
                let i = list.partition_point(|a| *a <= (t, e.action));
                if list.len() < MAX_ACTIONS {
                    list.insert(i, (t, e.action));
                }
                let removed = moderated(list);
                if let Some(old) = self.items.get(&id).cloned() {
                    let it = Item {
                        removed,
                        ..old.clone()
                    };
                    self.change(id, Some(old), Some(it), offset);
                }
            }
            (Kind::StoryReply | Kind::DmIn | Kind::DmOut, Action::Add) => {
                let out = e.kind == Kind::DmOut;
                if e.is_brand_actor != out {
                    return; // the brand's own story reply, or a user's echo: not a DM here
                }
                let key = (account(), SmolStr::from(dm_thread(e)));
                let dm = Dm {
                    time: t,
                    id: smol(&e.object_id).unwrap_or_else(|| SmolStr::from(&e.event_id)),
                    out,
                    story: (e.kind == Kind::StoryReply).then(|| {
                        e.content_id
                            .as_deref()
                            .map(SmolStr::from)
                            .unwrap_or_default()
                    }),
                };
                let th = self.threads.get_or_insert_with(&key, Thread::default);
                let i = th.dms.partition_point(|d| *d < dm);
                if th.dms.get(i) == Some(&dm) {
                    return;
                }
                th.dms.insert(i, dm);
                th.trim();
                self.rederive(&key, offset);
            }
            (Kind::BrandReply | Kind::PrivateReplySent, Action::Add) => {
                let Some(parent) = smol(&e.parent_id) else {
                    return;
                };
                // The comment's own first answer.
                let root = match self.items.get(&parent).cloned() {
                    Some(old) if old.kind == ItemKind::Comment => {
                        let it = Item {
                            answered: OptTime(old.answered.get().map_or(t, |a| a.min(t))),
                            ..old.clone()
                        };
                        let root = it.thread.clone();
                        self.change(parent, Some(old), Some(it), offset);
                        Some(root)
                    }
                    Some(_) => None,
                    None => {
                        fold(self.answers.get_or_insert_with(&parent, || (t, t)), t);
                        None
                    }
                };
                // The first answer in the thread: the root named, or the answered comment's.
                let root = root.or_else(|| {
                    (e.kind == Kind::BrandReply)
                        .then(|| smol(&e.thread_id))
                        .flatten()
                });
                if let Some(root) = root {
                    let key = (account(), root);
                    fold(self.thread_first.get_or_insert_with(&key, || (t, t)), t);
                    self.update_root(&key, offset);
                }
            }
            _ => {}
        }
    }

    /// A comment thread's first answer changed, or its root arrived: the root's first
    /// response follows.
    fn update_root(&mut self, key: &(SmolStr, SmolStr), offset: i64) {
        let Some(first) = self.thread_first.get(key).map(|v| v.0) else {
            return;
        };
        match self.items.get(&key.1).cloned() {
            Some(old)
                if old.kind == ItemKind::Comment
                    && !old.reply
                    && old.account == key.0
                    && old.first_response.get() != Some(first) =>
            {
                let it = Item {
                    first_response: OptTime(first),
                    ..old.clone()
                };
                self.change(key.1.clone(), Some(old), Some(it), offset);
            }
            _ => {}
        }
    }

    /// The items of a DM thread from its DMs: a story reply, and a DM that opens a
    /// conversation (no DM either way within the silence before it), each answered by the
    /// brand's first DM at or after it. Items whose windows are final are left alone.
    fn rederive(&mut self, key: &(SmolStr, SmolStr), offset: i64) {
        let Some(th) = self.threads.get(key) else {
            return;
        };
        let silence = self.cfg.dm_silence_ms;
        let mut derived: Vec<(SmolStr, Item)> = Vec::new();
        for (i, dm) in th.dms.iter().enumerate() {
            if dm.out {
                continue;
            }
            let quiet_before = th.dms[..i]
                .iter()
                .rev()
                .find(|d| d.time < dm.time || (d.time == dm.time && d.id != dm.id))
                .is_none_or(|d| d.time < dm.time - silence);
            if dm.story.is_none() && !quiet_before {
                continue;
            }
            let answer = th
                .dms
                .iter()
                .find(|d| d.out && d.time >= dm.time)
                .map(|d| d.time);
            derived.push((
                dm.id.clone(),
                Item {
                    account: key.0.clone(),
                    content: dm.story.clone().filter(|s| !s.is_empty()),
                    kind: if dm.story.is_some() {
                        ItemKind::StoryReply
                    } else {
                        ItemKind::Dm
                    },
                    time: dm.time,
                    reply: false,
                    thread: key.1.clone(),
                    answered: answer.into(),
                    first_response: answer.into(),
                    removed: false,
                },
            ));
        }
        let ids: Vec<SmolStr> = th
            .dms
            .iter()
            .filter(|d| !d.out)
            .map(|d| d.id.clone())
            .collect();
        for id in ids {
            let old = self
                .items
                .get(&id)
                .filter(|it| it.kind != ItemKind::Comment && it.thread == key.1)
                .cloned();
            let new = derived
                .iter()
                .find(|(d, _)| *d == id)
                .map(|(_, it)| it.clone());
            let final_window = |it: &Item| {
                self.windows
                    .is_final(WindowKind::Day, window_start(WindowKind::Day, it.time))
            };
            if old == new || old.as_ref().or(new.as_ref()).is_some_and(final_window) {
                continue;
            }
            self.change(id, old, new, offset);
        }
    }

    /// Replaces item `id` (old → new; None: no item) and moves its contribution between
    /// windows.
    fn change(&mut self, id: SmolStr, old: Option<Item>, new: Option<Item>, offset: i64) {
        let before = old.as_ref().and_then(contribution);
        let after = new.as_ref().and_then(contribution);
        // The windows' keys (account, then "" and the content when it has one), taken only
        // when the contribution moves.
        let keys = (before != after)
            .then(|| new.as_ref().or(old.as_ref()))
            .flatten()
            .map(|it| {
                let content = it.content.clone().filter(|c| !c.is_empty());
                (it.account.clone(), [Some(SmolStr::default()), content])
            });
        match new {
            Some(it) => {
                self.items.insert(id, it);
            }
            None => {
                self.items.remove(&id);
            }
        }
        let Some((account, contents)) = keys else {
            return;
        };
        for (sign, c) in [(-1i64, before), (1, after)] {
            let Some(c) = c else { continue };
            for content in contents.iter().flatten() {
                for kind in [WindowKind::Hour, WindowKind::Day] {
                    let start = window_start(kind, c.time);
                    if self.windows.is_final(kind, start) {
                        continue;
                    }
                    let wk = (account.clone(), content.clone(), kind, start);
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
            account_id: wk.0.to_string(),
            content_id: (!wk.1.is_empty()).then(|| wk.1.to_string()),
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
            response_sketch: w.response.to_buckets(),
            first_response_sketch: w.first_response.to_buckets(),
        }
    }

    /// Moves the watermark: entering a new minute, emits the windows that changed; entering
    /// a new hour, forgets what can no longer change.
    pub fn advance(&mut self, wm: i64, out: &mut Vec<ConversationRollup>) {
        if self.windows.advance(wm, Self::row, out) {
            self.forget(wm);
        }
    }

    /// Forgets items whose DAY window is final (and their actions), the DMs of a thread too
    /// old to decide an item that can still change, and answers nothing will claim.
    fn forget(&mut self, wm: i64) {
        let horizon = self.horizon();
        let day_final = |t: i64| (t - t.rem_euclid(DAY) + DAY).saturating_add(horizon) < wm;
        let mut gone: Vec<SmolStr> = Vec::new();
        self.items.retain(|id, it| {
            let keep = !day_final(it.time);
            if !keep {
                gone.push(id.clone());
            }
            keep
        });
        for id in gone {
            self.actions.remove(&id);
        }
        // A thread's DMs decide items up to the silence after them.
        let silence = self.cfg.dm_silence_ms;
        let keep_dms_after = wm
            .saturating_sub(horizon)
            .saturating_sub(DAY)
            .saturating_sub(silence);
        let stale: Vec<(SmolStr, SmolStr)> = self
            .threads
            .iter()
            .filter(|(_, th)| th.dms.first().is_some_and(|d| d.time < keep_dms_after))
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            if let Some(th) = self.threads.get_mut(&k) {
                th.dms.retain(|d| d.time >= keep_dms_after);
            }
            if self
                .threads
                .get(&k)
                .is_some_and(|th| th.last_dm().is_none())
            {
                self.threads.remove(&k);
            }
        }
        let keep_after = wm.saturating_sub(horizon.saturating_add(DAY));
        self.answers.retain(|_, v| v.1 >= keep_after);
        self.thread_first.retain(|_, v| v.1 >= keep_after);
        let items = &self.items;
        self.actions
            .retain(|id, list| items.contains_key(id) || list.iter().any(|a| a.0 >= keep_after));
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

    fn write_changes(&mut self, out: &mut Changes) -> Result<(), StateError> {
        self.items.write_changes(out)?;
        self.threads.write_changes(out)?;
        self.answers.write_changes(out)?;
        self.thread_first.write_changes(out)?;
        self.actions.write_changes(out)?;
        self.windows.write_changes(out)
    }

    fn restore_entry(&mut self, entry: &Entry<'_>) -> Result<(), StateError> {
        match entry.tag() {
            t if t == ITEMS.tag => self.items.restore_checked(entry, |it| {
                check_time("time", Some(it.time))?;
                check_time("answered", it.answered.get())?;
                check_time("first_response", it.first_response.get())
            }),
            t if t == THREADS.tag => self.threads.restore_checked(entry, |th| {
                th.dms
                    .iter()
                    .try_for_each(|d| check_time("DM time", Some(d.time)))
            }),
            t if t == ANSWERS.tag => self.answers.restore_checked(entry, check_span),
            t if t == THREAD_FIRST.tag => self.thread_first.restore_checked(entry, check_span),
            t if t == ACTIONS.tag => self.actions.restore_checked(entry, |list| {
                list.iter()
                    .try_for_each(|a| check_time("action time", Some(a.0)))
            }),
            _ if self.windows.holds(entry) => self.windows.restore_entry(entry),
            _ => Err(entry.unknown()),
        }
    }

    fn restored(&mut self) {
        self.items.forget_changes();
        self.threads.forget_changes();
        self.answers.forget_changes();
        self.thread_first.forget_changes();
        self.actions.forget_changes();
        self.windows.forget_changes();
    }

    fn state_entries(&self) -> usize {
        Conversations::state_entries(self)
    }
}
