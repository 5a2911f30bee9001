//! The event-time windowing engine of one partition: pure, no Kafka, no clock.
//!
//! * **Watermark** = highest event time seen − `out_of_orderness_ms`. A window is emitted when
//!   the watermark passes its end.
//! * **Panes.** Every event updates exactly one 1-minute pane (per account, and per post when it
//!   has one). MINUTE rollups are panes; VELOCITY_5M windows (5 minutes hopping every minute)
//!   are sums of five panes computed when a window closes, never updated per event.
//! * **Lateness.** An event for a window already emitted, but within `allowed_lateness_ms`,
//!   corrects it: the affected rows are emitted again with a higher revision and a
//!   `late_events` count. Later than that, the event is returned as [`Output::TooLate`] (the
//!   caller dead-letters it as `late`).
//! * **Duplicates** (same `event_id`) are counted once while their window can still change.
//! * **First hour.** Per post, interactions within 15 and 60 minutes of `content_published_at`
//!   (or a POST_PUBLISHED event), emitted when the watermark passes publication + 15 / 60 min;
//!   early acceleration and time-to-N (minute resolution: the end of the minute in which the
//!   running count reached N) come with the 60-minute row.
//! * **Determinism.** Every row is a function of the inputs: `revision` is the highest input
//!   offset that contributed to it, `emitted_at` is the watermark that closed or corrected it.
//!   Replaying the same partition from the same offset emits the same rows, which is what
//!   exactly-once delivery into `ReplacingMergeTree(revision)` builds on.
//! * **Idle partitions**: [`Engine::advance_watermark`] moves the watermark without events (the
//!   caller decides when a partition is idle).
//!
//! * **Restore point.** Every pane and dedup bucket remembers the input offset that created it
//!   and the watermark just before that offset ([`Mark`]). The oldest one is the partition's
//!   restore point (first-hour post state, which outlives the lateness horizon, is a changelog
//!   instead: [`Engine::post_changes`], [`Engine::restore_post`]): replaying the input from there with the watermark it had gives back exactly the
//!   state held now (see [`Checkpoint`]). Idle advances are recorded with the offset they
//!   happened before, so a replay repeats them at the same place.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::BuildHasher;

// Hash maps with a fixed seed: iteration order depends only on the inserts, so a replay
// emits rows in the same order.
use crate::store::{prefetch_slot, Map, Table};

use banter_model::{EngagementEvent, Kind, Rollup, SmolStr, WindowKind};
use serde::{Deserialize, Serialize};

use crate::sketch::{actor_hash, Sketch};

/// Where the engine stood just before it processed an input offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Mark {
    /// The input offset.
    pub offset: i64,
    /// The watermark before it.
    pub watermark: i64,
    /// The highest event time before it.
    pub max_event_time: i64,
}

/// What it takes to rebuild a partition's engine after a restart or a move to another
/// instance: replay the input from `restore.offset` (outputs discarded) up to `next_offset`,
/// starting from the watermark in `restore`, repeating the recorded idle advances. Written in
/// the same Kafka transaction as the outputs and input offsets it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The next input offset to process.
    pub next_offset: i64,
    /// The oldest state still held; None when the engine holds no state.
    pub restore: Option<Mark>,
    /// Idle watermark advances after the restore point: (next offset at the time, watermark).
    pub idle: Vec<(i64, i64)>,
    /// Watermark at `next_offset`.
    pub watermark: i64,
    /// Highest event time at `next_offset`.
    pub max_event_time: i64,
}

/// One minute, in ms.
pub const MINUTE: i64 = 60_000;

/// Engine parameters.
#[derive(Debug, Clone, Copy)]
pub struct WindowConfig {
    /// How far out of order events may arrive without being late (default 60 s).
    pub out_of_orderness_ms: i64,
    /// How long after a window's end a late event still corrects it (default 1 h).
    pub allowed_lateness_ms: i64,
    /// N of time-to-N (default 50).
    pub time_to_n: i64,
}

impl Default for WindowConfig {
    fn default() -> Self {
        WindowConfig {
            out_of_orderness_ms: 60_000,
            allowed_lateness_ms: 3_600_000,
            time_to_n: 50,
        }
    }
}

/// What the engine produces.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// A rollup row (new, or a correction with a higher revision).
    Rollup(Rollup),
    /// An event later than the allowed lateness; the caller dead-letters it.
    TooLate {
        /// The event's id.
        event_id: String,
        /// Its offset.
        offset: i64,
    },
}

/// Counters of what the engine saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Events processed (including duplicates and late ones).
    pub events: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Late events that corrected an emitted window.
    pub late: u64,
    /// Events later than the allowed lateness.
    pub too_late: u64,
    /// Rollup rows emitted (including corrections).
    pub rows: u64,
}

/// What a timer does when the watermark reaches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    First15m,
    First60m,
    Forget,
}

/// (account, content) as interned name ids: account in the high 32 bits, content + 1 in the low
/// ones (0: the account-level key). Hashing and comparing keys costs an integer.
type Key = u64;

fn key(account: u32, content: Option<u32>) -> Key {
    (u64::from(account) << 32) | content.map_or(0, |c| u64::from(c) + 1)
}

/// Account and post names, interned while some state refers to them. Each pane entry and each
/// post holds a reference to its names; a name nobody refers to is forgotten.
#[derive(Debug, Clone, Default)]
struct Names {
    /// Name -> id, hashed with `hasher`. Names up to 23 bytes (account and post ids mostly are)
    /// are held in the table itself: finding one reads no other memory.
    ids: hashbrown::HashTable<(SmolStr, u32)>,
    hasher: foldhash::fast::FixedState,
    /// By id. Rows carry copies: inline, or shared when longer; either way no allocation and no
    /// string copy per row.
    names: Vec<SmolStr>,
    refs: Vec<u32>,
    free: Vec<u32>,
}

impl Names {
    /// The id of `name`, if it is interned.
    fn lookup(&self, name: &str) -> Option<u32> {
        let h = self.hasher.hash_one(name.as_bytes());
        self.ids
            .find(h, |(k, _)| k.as_str() == name)
            .map(|&(_, id)| id)
    }

    /// Starts fetching the table slot `name` is most likely in (see [`Engine::prefetch`]).
    fn prefetch(&self, name: &str) {
        prefetch_slot(&self.ids, self.hasher.hash_one(name.as_bytes()));
    }

    /// The id of `name`, interning it (with no reference yet) when new.
    fn intern(&mut self, name: &str) -> u32 {
        let h = self.hasher.hash_one(name.as_bytes());
        if let Some(&(_, id)) = self.ids.find(h, |(k, _)| k.as_str() == name) {
            return id;
        }
        let name = SmolStr::new(name);
        let id = match self.free.pop() {
            Some(id) => {
                self.names[id as usize] = name.clone();
                id
            }
            None => {
                self.names.push(name.clone());
                self.refs.push(0);
                u32::try_from(self.names.len() - 1).unwrap_or(u32::MAX)
            }
        };
        let hasher = &self.hasher;
        self.ids
            .insert_unique(h, (name, id), |(k, _)| hasher.hash_one(k.as_bytes()));
        id
    }

    fn retain(&mut self, id: u32) {
        self.refs[id as usize] += 1;
    }

    fn release(&mut self, id: u32) {
        let r = &mut self.refs[id as usize];
        *r = r.saturating_sub(1);
        if *r == 0 {
            let name = std::mem::take(&mut self.names[id as usize]);
            let h = self.hasher.hash_one(name.as_bytes());
            if let Ok(entry) = self.ids.find_entry(h, |&(_, i)| i == id) {
                entry.remove();
            }
            self.free.push(id);
        }
    }

    fn retain_key(&mut self, k: Key) {
        self.retain((k >> 32) as u32);
        if k & 0xffff_ffff != 0 {
            self.retain(((k & 0xffff_ffff) - 1) as u32);
        }
    }

    fn release_key(&mut self, k: Key) {
        self.release((k >> 32) as u32);
        if k & 0xffff_ffff != 0 {
            self.release(((k & 0xffff_ffff) - 1) as u32);
        }
    }

    fn account(&self, k: Key) -> SmolStr {
        self.names[(k >> 32) as usize].clone()
    }

    fn content(&self, k: Key) -> Option<SmolStr> {
        match k & 0xffff_ffff {
            0 => None,
            c => Some(self.names[(c - 1) as usize].clone()),
        }
    }

    fn heap_bytes(&self) -> usize {
        self.names
            .iter()
            // The table's entry and control byte, the vector's entry, a long name's shared
            // allocation.
            .map(|n| {
                size_of::<(SmolStr, u32)>()
                    + 1
                    + size_of::<SmolStr>()
                    + if n.is_heap_allocated() {
                        n.len() + 16
                    } else {
                        0
                    }
            })
            .sum::<usize>()
            + self.refs.len() * size_of::<u32>()
    }
}

/// Dedup keeps a 64-bit hash of each `event_id` (fixed seed, so runs are reproducible); two
/// distinct ids collide with probability ~n²/2⁶⁵ (n = ids within the horizon: 1 in 10¹⁰ at a
/// million), and a collision drops one event as a duplicate.
fn id_hash(id: &str) -> u64 {
    foldhash::quality::FixedState::with_seed(0x6261_6e74_6572).hash_one(id)
}

/// One key's counts in one pane (or a sum of five). Counters are 32-bit (a key would need two
/// billion events in a minute to overflow): smaller entries, less memory to move per event.
#[derive(Debug, Clone, Default, PartialEq)]
struct Counts {
    interactions: i32,
    comments: i32,
    live_comments: i32,
    reactions: i32,
    shares: i32,
    story_replies: i32,
    dms_in: i32,
    mentions: i32,
    brand_replies: i32,
    late_events: i32,
    revision: i64,
    /// Distinct non-brand actors with an interaction that adds.
    engagers: Sketch,
}

/// The publication time an event gives its post: `content_published_at`, or for a
/// POST_PUBLISHED event without one its own time.
fn publication(e: &EngagementEvent) -> Option<i64> {
    if e.kind == Kind::PostPublished {
        e.content_published_at.or(Some(e.event_time))
    } else {
        e.content_published_at
    }
}

/// The actor of an event that counts as an engager: a non-brand actor whose interaction adds.
fn engager(e: &EngagementEvent) -> Option<u64> {
    if e.interaction_delta() > 0 {
        e.actor_id.as_deref().map(actor_hash)
    } else {
        None
    }
}

impl Counts {
    fn add(&mut self, e: &EngagementEvent, actor: Option<u64>, offset: i64, late: bool) {
        let d = e.action.count_delta() as i32;
        self.interactions += e.interaction_delta() as i32;
        if let Some(a) = actor {
            self.engagers.insert(a);
        }
        match e.kind {
            Kind::Comment => self.comments += d,
            Kind::LiveComment => self.live_comments += d,
            Kind::PostReaction => self.reactions += d,
            Kind::Share => self.shares += d,
            Kind::StoryReply => self.story_replies += d,
            Kind::DmIn => self.dms_in += d,
            Kind::Mention => self.mentions += d,
            Kind::BrandReply => self.brand_replies += d,
            _ => {}
        }
        self.late_events += i32::from(late);
        self.revision = self.revision.max(offset);
    }

    /// Adds `o`'s counts (not its engagers: velocity windows, the only sums, carry none).
    fn add_counts(&mut self, o: &Counts) {
        self.interactions += o.interactions;
        self.comments += o.comments;
        self.live_comments += o.live_comments;
        self.reactions += o.reactions;
        self.shares += o.shares;
        self.story_replies += o.story_replies;
        self.dms_in += o.dms_in;
        self.mentions += o.mentions;
        self.brand_replies += o.brand_replies;
        self.late_events += o.late_events;
        self.revision = self.revision.max(o.revision);
    }

    #[allow(clippy::too_many_arguments)]
    fn rollup(
        &self,
        names: &Names,
        key: Key,
        window: WindowKind,
        start: i64,
        end: i64,
        emitted_at: i64,
    ) -> Rollup {
        self.row(
            names.account(key),
            names.content(key),
            window,
            start,
            end,
            emitted_at,
        )
    }

    fn row(
        &self,
        account_id: SmolStr,
        content_id: Option<SmolStr>,
        window: WindowKind,
        start: i64,
        end: i64,
        emitted_at: i64,
    ) -> Rollup {
        Rollup {
            account_id,
            content_id,
            window,
            window_start: start,
            window_end: end,
            revision: self.revision,
            interactions: i64::from(self.interactions),
            comments: i64::from(self.comments),
            live_comments: i64::from(self.live_comments),
            reactions: i64::from(self.reactions),
            shares: i64::from(self.shares),
            story_replies: i64::from(self.story_replies),
            dms_in: i64::from(self.dms_in),
            mentions: i64::from(self.mentions),
            brand_replies: i64::from(self.brand_replies),
            velocity: None,
            early_accel: None,
            time_to_n_minutes: None,
            unique_engagers: Some(self.engagers.estimate()),
            late_events: i64::from(self.late_events),
            emitted_at,
        }
    }
}

/// The VELOCITY_5M row of `k` ending at `end` from the sum of its five panes. Distinct engagers
/// are counted per minute and per first hour, not per velocity window (DESIGN.md), so the row has
/// none: summing panes needs no sketch unions.
fn velocity(names: &Names, k: Key, sum: &Counts, end: i64, emitted_at: i64) -> Rollup {
    let mut r = sum.rollup(
        names,
        k,
        WindowKind::Velocity5m,
        end - 5 * MINUTE,
        end,
        emitted_at,
    );
    r.velocity = Some(f64::from(sum.interactions) / 5.0);
    r.unique_engagers = None;
    r
}

/// The minutes a first hour touches: from the minute of publication, 61 (a publication time
/// inside a minute makes the hour end inside the 61st).
const FIRST_HOUR_MINUTES: usize = 61;

/// A post's interactions per minute of its first hour, kept in the post itself (no allocation,
/// no search: the minute is an index). Stored in the changelog as (minute start, count) pairs
/// of the minutes with a count.
#[derive(Debug, Clone, PartialEq)]
struct FirstHourMinutes {
    /// Start of the minute of index 0.
    base: i64,
    counts: [i32; FIRST_HOUR_MINUTES],
}

impl Default for FirstHourMinutes {
    fn default() -> Self {
        FirstHourMinutes {
            base: 0,
            counts: [0; FIRST_HOUR_MINUTES],
        }
    }
}

impl FirstHourMinutes {
    fn starting(minute: i64) -> Self {
        FirstHourMinutes {
            base: minute,
            ..Default::default()
        }
    }

    fn index(&self, minute: i64) -> Option<usize> {
        Self::index_from(self.base, minute)
    }

    /// The index of `minute` in the counts of a first hour whose index 0 is minute `base`.
    fn index_from(base: i64, minute: i64) -> Option<usize> {
        usize::try_from((minute - base) / MINUTE)
            .ok()
            .filter(|&i| minute >= base && i < FIRST_HOUR_MINUTES)
    }

    /// Adds `d` to the minute starting at `minute`; false when it is outside the first hour.
    fn add(&mut self, minute: i64, d: i64) -> bool {
        match self.index(minute) {
            Some(i) => {
                self.counts[i] += d as i32;
                true
            }
            None => false,
        }
    }

    /// (minute start, count) of the minutes with a count, in order.
    fn iter(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        (0..FIRST_HOUR_MINUTES as i64)
            .zip(self.counts.iter())
            .filter(|(_, &n)| n != 0)
            .map(|(i, &n)| (self.base + i * MINUTE, i64::from(n)))
    }

    /// The counts of `pairs` indexed from `minute`; Err(the first minute outside the hour).
    fn from_pairs(minute: i64, pairs: impl IntoIterator<Item = (i64, i64)>) -> Result<Self, i64> {
        let mut r = FirstHourMinutes::starting(minute);
        for (m, n) in pairs {
            if !r.add(m, n) {
                return Err(m);
            }
        }
        Ok(r)
    }

    /// The same counts indexed from `minute` (after reading them back from the changelog, where
    /// the first stored minute need not be the minute of publication).
    fn rebased(&self, minute: i64) -> Result<Self, String> {
        Self::from_pairs(minute, self.iter())
            .map_err(|m| format!("minute {m} is not in the first hour from {minute}"))
    }
}

impl Serialize for FirstHourMinutes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for FirstHourMinutes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let pairs = Vec::<(i64, i64)>::deserialize(d)?;
        let first = pairs.first().map_or(0, |&(m, _)| m);
        Self::from_pairs(first, pairs).map_err(|m| {
            serde::de::Error::custom(format!(
                "first-hour minute {m} more than an hour after the first"
            ))
        })
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Post {
    account_id: SmolStr,
    published_at: i64,
    first_15m: i64,
    first_60m: i64,
    late_events: i64,
    revision: i64,
    /// Interactions per minute in the first hour (for time-to-N).
    minutes: FirstHourMinutes,
    emitted_15: bool,
    emitted_60: bool,
    /// The offset that created this post's state.
    created: i64,
    engagers_15: Sketch,
    engagers_60: Sketch,
    /// Listed in `Engine::dirty_posts` (not stored).
    #[serde(skip)]
    dirty: bool,
}

/// One minute of panes: the counts per key and the mark of the event that created it.
#[derive(Debug, Clone)]
struct Pane {
    counts: Table<Key, Counts>,
    mark: Mark,
}

/// The dedup ids of one event minute. An `event_id` includes its event time, so a duplicate
/// falls in the same minute as the original: looking only there finds it, and a minute's ids
/// are forgotten all at once.
#[derive(Debug, Clone)]
struct SeenBucket {
    /// [`id_hash`] values, which are uniform 64-bit hashes already: the table hashes them as
    /// themselves.
    ids: hashbrown::HashTable<u64>,
    mark: Mark,
}

impl SeenBucket {
    fn new(size: usize, mark: Mark) -> Self {
        SeenBucket {
            ids: hashbrown::HashTable::with_capacity(size),
            mark,
        }
    }

    /// Adds `id`; false when it was there already.
    fn insert(&mut self, id: u64) -> bool {
        match self.ids.entry(id, |&x| x == id, |&x| x) {
            hashbrown::hash_table::Entry::Occupied(_) => false,
            hashbrown::hash_table::Entry::Vacant(v) => {
                v.insert(id);
                true
            }
        }
    }

    /// Starts fetching the slot of `id` (see [`Engine::prefetch`]).
    fn prefetch(&self, id: u64) {
        prefetch_slot(&self.ids, id);
    }
}

/// A post's key and the slot it most likely sits in (see [`Table::likely_slot`]).
type PostSlot<'a> = ((u32, i64), &'a ((u32, i64), Post));

/// The windowing state of one partition.
#[derive(Debug, Clone)]
pub struct Engine {
    cfg: WindowConfig,
    max_event_time: i64,
    watermark: i64,
    /// Minute start -> key -> counts.
    panes: BTreeMap<i64, Pane>,
    /// The account and post names the panes' keys refer to.
    names: Names,
    /// Minutes whose MINUTE rows have been emitted at least once (all below this are).
    closed_below: i64,
    /// Hashes of the event ids seen, by event minute, while the minute can change.
    seen_by_minute: BTreeMap<i64, SeenBucket>,
    /// (content name id, publication time) -> first-hour state. Each post holds a reference to
    /// its content name, so the id stays its own until the post is forgotten.
    posts: Table<(u32, i64), Post>,
    /// content name id -> the publication times with state, sorted (normally exactly one).
    publications: Map<u32, Vec<i64>>,
    /// Posts changed since the last [`Engine::post_changes`] (each once: `Post::dirty`), and
    /// posts forgotten.
    dirty_posts: Vec<(u32, i64)>,
    forgotten_posts: Vec<(String, i64)>,
    /// After a restore: first-hour state comes from the changelog as of this offset; the
    /// replayed input before it does not touch it.
    skip_posts_below: i64,
    /// Timers of restored posts, armed when the replay ends (they had not fired by then).
    restored_timers: Vec<(i64, Timer, u32, i64)>,
    /// Idle advances since the restore point: next offset at the time -> watermark.
    idle: BTreeMap<i64, i64>,
    /// Idle advances still to repeat while replaying after a restore.
    replay_idle: Vec<(i64, i64)>,
    /// The next input offset (one past the last processed).
    next_offset: i64,
    /// (due watermark, what, post): first-hour rows to emit and posts to forget, so a
    /// watermark advance never scans every post.
    timers: BTreeSet<(i64, Timer, u32, i64)>,
    /// The size of the last minute closed: what a new minute's tables start with.
    sizes: MinuteSizes,
    stats: Stats,
}

/// How many keys and dedup ids a minute held.
#[derive(Debug, Clone, Copy, Default)]
struct MinuteSizes {
    pane: usize,
    seen: usize,
}

impl Engine {
    /// An empty engine.
    pub fn new(cfg: WindowConfig) -> Self {
        Engine {
            cfg,
            max_event_time: i64::MIN,
            watermark: i64::MIN,
            panes: BTreeMap::new(),
            names: Names::default(),
            closed_below: i64::MIN,
            seen_by_minute: BTreeMap::new(),
            posts: Table::default(),
            publications: Map::default(),
            dirty_posts: Vec::new(),
            forgotten_posts: Vec::new(),
            skip_posts_below: i64::MIN,
            restored_timers: Vec::new(),
            idle: BTreeMap::new(),
            replay_idle: Vec::new(),
            next_offset: 0,
            timers: BTreeSet::new(),
            sizes: MinuteSizes::default(),
            stats: Stats::default(),
        }
    }

    /// The current watermark (i64::MIN before the first event).
    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    /// What the engine has seen.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Approximate state size: panes' keys, dedup entries, posts.
    pub fn state_entries(&self) -> usize {
        self.panes.values().map(|p| p.counts.len()).sum::<usize>()
            + self.seen_entries()
            + self.posts.len()
    }

    /// The highest event time seen (i64::MIN before the first event).
    pub fn max_event_time(&self) -> i64 {
        self.max_event_time
    }

    /// Estimated heap bytes of the state: keys and counts of panes, dedup ids (held twice:
    /// set and minute bucket), posts and their per-minute counts, timers. Walks the whole
    /// state: call it for metrics, not per event.
    pub fn state_bytes(&self) -> usize {
        use std::mem::size_of;
        // Hash tables and B-trees cost about one word per entry on top of the entry.
        let panes: usize = self
            .panes
            .values()
            .flat_map(|p| p.counts.iter())
            .map(|(_, c)| size_of::<Key>() + size_of::<Counts>() + c.engagers.heap_bytes() + 8)
            .sum();
        // Set entry + bucket entry.
        let seen: usize = self
            .seen_by_minute
            .values()
            .map(|b| b.ids.capacity() * (size_of::<u64>() + 1))
            .sum();
        let posts: usize = self
            .posts
            .values()
            .map(|p| {
                size_of::<((u32, i64), Post)>()
                    + 8
                    + p.engagers_15.heap_bytes()
                    + p.engagers_60.heap_bytes()
                    + 3 * (size_of::<(i64, Timer, u32, i64)>() + 8)
            })
            .sum::<usize>()
            + self.publications.len() * (size_of::<(u32, Vec<i64>)>() + 16);
        panes + seen + posts + self.names.heap_bytes()
    }

    fn seen_entries(&self) -> usize {
        self.seen_by_minute.values().map(|b| b.ids.len()).sum()
    }

    /// Account and post names currently interned (referred to by some pane).
    pub fn interned_names(&self) -> usize {
        self.names.ids.len()
    }

    /// Posts with first-hour state.
    pub fn posts(&self) -> usize {
        self.posts.len()
    }

    /// Every minute before this one is closed: its MINUTE row was emitted.
    pub fn closed_below(&self) -> i64 {
        self.closed_below
    }

    /// The publication time of a post with first-hour state (its latest incarnation).
    pub fn published_at(&self, content: &str) -> Option<i64> {
        self.names
            .lookup(content)
            .and_then(|c| self.publications.get(&c))
            .and_then(|v| v.last().copied())
    }

    /// The next input offset this engine expects (one past the last processed).
    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    /// An engine that continues from `cp`: feed it the input from `cp.restore.offset` (or
    /// `cp.next_offset` when there is no restore point) with [`Engine::process`] and discard
    /// the outputs of offsets below `cp.next_offset`; from there it emits exactly what the
    /// engine that wrote `cp` would have.
    pub fn restored(cfg: WindowConfig, cp: &Checkpoint) -> Self {
        let mut e = Engine::new(cfg);
        let (wm, met, from) = match cp.restore {
            Some(m) => (m.watermark, m.max_event_time, m.offset),
            None => (cp.watermark, cp.max_event_time, cp.next_offset),
        };
        e.watermark = wm;
        e.max_event_time = met;
        e.closed_below = if wm == i64::MIN {
            i64::MIN
        } else {
            wm - wm.rem_euclid(MINUTE)
        };
        e.next_offset = from;
        e.replay_idle = cp.idle.iter().rev().copied().collect();
        e.skip_posts_below = cp.next_offset;
        e
    }

    /// First-hour state changed since the last call, as changelog entries (name, value; None:
    /// forgotten). Write them with the checkpoint; give them back with [`Engine::restore_post`]
    /// after [`Engine::restored`], before the replay.
    pub fn post_changes(&mut self) -> Vec<(String, Option<Vec<u8>>)> {
        let mut out: Vec<(String, Option<Vec<u8>>)> = std::mem::take(&mut self.forgotten_posts)
            .into_iter()
            .map(|(c, p)| (format!("{c}\u{1f}{p}"), None))
            .collect();
        for (c, p) in std::mem::take(&mut self.dirty_posts) {
            let Some(post) = self.posts.get_mut(&(c, p)) else {
                continue; // forgotten since
            };
            post.dirty = false;
            if let Ok(v) = serde_json::to_vec(post) {
                out.push((
                    format!("{}\u{1f}{p}", self.names.names[c as usize]),
                    Some(v),
                ));
            }
        }
        out
    }

    /// Takes back one first-hour changelog entry (the latest per name).
    pub fn restore_post(&mut self, name: &str, value: &[u8]) -> Result<(), String> {
        let (content, _) = name
            .rsplit_once('\u{1f}')
            .ok_or_else(|| format!("post state {name}: no publication time"))?;
        let mut post: Post =
            serde_json::from_slice(value).map_err(|e| format!("post state {name}: {e}"))?;
        let p = post.published_at;
        post.minutes = post
            .minutes
            .rebased(Self::minute_of(p))
            .map_err(|e| format!("post state {name}: {e}"))?;
        // Timers that have not fired yet (a fired one set its emitted flag).
        let forget = p + 60 * MINUTE + self.cfg.allowed_lateness_ms + MINUTE + 1;
        let mut timers = vec![(forget, Timer::Forget)];
        if !post.emitted_15 {
            timers.push((p + 15 * MINUTE, Timer::First15m));
        }
        if !post.emitted_60 {
            timers.push((p + 60 * MINUTE, Timer::First60m));
        }
        let c = self.names.intern(content);
        if self.add_post(c, post) {
            for (due, t) in timers {
                self.restored_timers.push((due, t, c, p));
            }
        }
        Ok(())
    }

    /// Holds `post` as content `c`'s state for its publication time, replacing any; true when
    /// there was none.
    fn add_post(&mut self, c: u32, post: Post) -> bool {
        let p = post.published_at;
        if self.posts.insert((c, p), post).is_some() {
            return false;
        }
        let v = self.publications.entry(c).or_default();
        if let Err(i) = v.binary_search(&p) {
            v.insert(i, p);
        }
        self.names.retain(c);
        true
    }

    /// Forgets content `c`'s state for publication time `p`.
    fn remove_post(&mut self, c: u32, p: i64) -> Option<Post> {
        let post = self.posts.remove(&(c, p))?;
        if let Some(v) = self.publications.get_mut(&c) {
            v.retain(|&x| x != p);
            if v.is_empty() {
                self.publications.remove(&c);
            }
        }
        self.names.release(c);
        Some(post)
    }

    /// The offset replay starts from after a restore from `cp`.
    pub fn replay_from(cp: &Checkpoint) -> i64 {
        cp.restore.map_or(cp.next_offset, |m| m.offset)
    }

    /// The checkpoint of the current state.
    pub fn checkpoint(&self) -> Checkpoint {
        let restore = self
            .panes
            .values()
            .map(|p| p.mark)
            .chain(self.seen_by_minute.values().map(|b| b.mark))
            // First-hour state is not here: it is a changelog (`post_changes`).
            .min();
        let idle = match restore {
            Some(m) => self.idle.range(m.offset..).map(|(k, v)| (*k, *v)).collect(),
            None => Vec::new(),
        };
        Checkpoint {
            next_offset: self.next_offset,
            restore,
            idle,
            watermark: self.watermark,
            max_event_time: self.max_event_time,
        }
    }

    /// Moves the watermark of an idle partition to `wm` and records the move, so that a replay
    /// after a restore repeats it at the same place in the input.
    pub fn idle_advance(&mut self, wm: i64, out: &mut Vec<Output>) {
        if wm <= self.watermark {
            return;
        }
        // Advances with no input in between collapse into one: same state either way.
        self.idle.insert(self.next_offset, wm);
        self.advance_watermark(wm, out);
        // Forget marks older than anything a restore could need.
        if let Some(r) = self.checkpoint().restore {
            while let Some((&k, _)) = self.idle.first_key_value() {
                if k >= r.offset {
                    break;
                }
                self.idle.pop_first();
            }
        }
    }

    /// Ends a replay after a restore: repeats the idle advances recorded up to the checkpoint.
    /// Call it once the input before the checkpoint's `next_offset` has been fed, and discard
    /// what it outputs (it was emitted before the restart).
    pub fn finish_replay(&mut self, out: &mut Vec<Output>) {
        self.repeat_idle(i64::MAX, out);
        // Restored posts' timers fire at the first watermark move after the checkpoint, as
        // they would have in the engine that wrote it.
        self.timers
            .extend(std::mem::take(&mut self.restored_timers));
    }

    fn repeat_idle(&mut self, upto: i64, out: &mut Vec<Output>) {
        while let Some(&(k, wm)) = self.replay_idle.last() {
            if k > upto {
                break;
            }
            self.replay_idle.pop();
            // Recorded before the restart: record it again even when the restored watermark
            // already includes it.
            self.idle.insert(k, wm);
            self.advance_watermark(wm, out);
        }
    }

    fn minute_of(t: i64) -> i64 {
        t - t.rem_euclid(MINUTE)
    }

    /// Starts fetching into the cache, and changes nothing, the state that processing
    /// `events` will update: their dedup sets, names, pane entries and first-hour state.
    /// Processing events one at a time waits for each piece of that state in turn (cache
    /// misses: it is spread over every active post); here the fetches of many events are
    /// started before any is waited for, so their misses overlap, and [`Engine::process`] then
    /// finds the state in cache. Purely an optimization: the outputs are the same with or
    /// without it.
    pub fn prefetch(&self, events: &[EngagementEvent]) {
        const CHUNK: usize = 16;
        // The posts of the chunk before (fetched by now): their sketches' heap memory.
        let mut previous: &[EngagementEvent] = &[];
        let mut posts = [None; CHUNK];
        for events in events.chunks(CHUNK) {
            // The names (and the dedup slots): they depend only on the event.
            let mut seen: Option<(i64, &SeenBucket)> = None;
            for e in events {
                let minute = Self::minute_of(e.event_time);
                if seen.is_none_or(|(m, _)| m != minute) {
                    seen = self.seen_by_minute.get(&minute).map(|b| (minute, b));
                }
                if let Some((_, b)) = seen {
                    b.prefetch(id_hash(&e.event_id));
                }
                self.names.prefetch(&e.account_id);
                if let Some(c) = e.content_id.as_deref() {
                    self.names.prefetch(c);
                }
            }
            // What the names lead to: the pane entries and the post.
            let mut pane: Option<(i64, &Pane)> = None;
            let mut found = [None; CHUNK];
            for (e, found) in events.iter().zip(found.iter_mut()) {
                let Some(a) = self.names.lookup(&e.account_id) else {
                    continue;
                };
                let c = e.content_id.as_deref().and_then(|c| self.names.lookup(c));
                let minute = Self::minute_of(e.event_time);
                if pane.is_none_or(|(m, _)| m != minute) {
                    pane = self.panes.get(&minute).map(|p| (minute, p));
                }
                if let Some((_, pane)) = pane {
                    pane.counts.prefetch(&key(a, None));
                    if let Some(c) = c {
                        pane.counts.prefetch(&key(a, Some(c)));
                    }
                }
                if let (Some(c), Some(p)) = (c, publication(e)) {
                    // The post is several cache lines: those this event will touch.
                    if let Some(slot @ (k, post)) = self.posts.likely_slot(&(c, p)) {
                        banter_alloc::prefetch(k);
                        banter_alloc::prefetch(&post.revision);
                        banter_alloc::prefetch(&post.engagers_60);
                        if let Some(i) = FirstHourMinutes::index_from(Self::minute_of(p), minute) {
                            banter_alloc::prefetch(&post.minutes.counts[i]);
                        }
                        *found = Some(((c, p), slot));
                    }
                }
            }
            self.prefetch_sketches(previous, &posts);
            previous = events;
            posts = found;
        }
        self.prefetch_sketches(previous, &posts);
    }

    /// The last step of [`Engine::prefetch`]: the engager sketches of the posts (their likely
    /// slots, fetched a chunk of events ago) keep their hashes on the heap.
    fn prefetch_sketches(&self, events: &[EngagementEvent], posts: &[Option<PostSlot<'_>>]) {
        for (e, &post) in events.iter().zip(posts) {
            // The slot found by its tag alone may hold another post.
            let Some((_, (_, post))) = post.filter(|(k, slot)| slot.0 == *k) else {
                continue;
            };
            post.engagers_60.prefetch(|| engager(e));
            if e.event_time < post.published_at + 15 * MINUTE {
                post.engagers_15.prefetch(|| engager(e));
            }
        }
    }

    /// Processes one event read at `offset`; appends what it causes to `out`. Returns whether
    /// the event counted: false for a duplicate or an event too late (what follows the windows,
    /// funnels and conversations, takes only counted events).
    pub fn process(&mut self, e: &EngagementEvent, offset: i64, out: &mut Vec<Output>) -> bool {
        if !self.replay_idle.is_empty() {
            self.repeat_idle(offset, out);
        }
        let mark = Mark {
            offset,
            watermark: self.watermark,
            max_event_time: self.max_event_time,
        };
        self.next_offset = offset + 1;
        self.stats.events += 1;
        let minute = Self::minute_of(e.event_time);
        if minute + MINUTE + self.cfg.allowed_lateness_ms <= self.watermark {
            self.stats.too_late += 1;
            out.push(Output::TooLate {
                event_id: e.event_id.clone(),
                offset,
            });
            return false;
        }
        let id = id_hash(&e.event_id);
        // A new minute's set is sized like the last closed minute's: no growing step by step.
        let size = self.sizes.seen;
        let fresh = self
            .seen_by_minute
            .entry(minute)
            .or_insert_with(|| SeenBucket::new(size, mark))
            .insert(id);
        if !fresh {
            self.stats.duplicates += 1;
            return false;
        }
        let late = minute < self.closed_below;
        if late {
            self.stats.late += 1;
        }
        let a = self.names.intern(&e.account_id);
        let account = key(a, None);
        let content = e.content_id.as_deref().map(|c| self.names.intern(c));
        let post = content.map(|c| key(a, Some(c)));
        let actor = engager(e);
        let size = self.sizes.pane;
        let pane = self.panes.entry(minute).or_insert_with(|| Pane {
            counts: Table::with_capacity(size),
            mark,
        });
        for k in std::iter::once(account).chain(post) {
            match pane.counts.get_mut(&k) {
                Some(c) => c.add(e, actor, offset, late),
                None => {
                    let mut c = Counts::default();
                    c.add(e, actor, offset, late);
                    pane.counts.insert_new(k, c);
                    self.names.retain_key(k);
                }
            }
        }
        if let Some(c) = content {
            self.first_hour(e, a, c, actor, mark, minute, late, out);
        }
        if late {
            let emitted_at = self.watermark;
            let before = out.len();
            for k in std::iter::once(account).chain(post) {
                self.minute_row(k, minute, emitted_at, out);
                // Velocity windows already closed that contain this minute.
                for end in (minute + MINUTE..=minute + 5 * MINUTE).step_by(MINUTE as usize) {
                    if end <= self.closed_below {
                        self.velocity_row(k, end, emitted_at, out);
                    }
                }
            }
            self.stats.rows += (out.len() - before) as u64;
        }
        if e.event_time > self.max_event_time {
            self.max_event_time = e.event_time;
            let wm = e.event_time.saturating_sub(self.cfg.out_of_orderness_ms);
            self.advance_watermark(wm, out);
        }
        true
    }

    #[allow(clippy::too_many_arguments)]
    fn first_hour(
        &mut self,
        e: &EngagementEvent,
        account: u32,
        content: u32,
        actor: Option<u64>,
        mark: Mark,
        minute: i64,
        late: bool,
        out: &mut Vec<Output>,
    ) {
        let offset = mark.offset;
        if offset < self.skip_posts_below {
            return; // the restored first-hour state already holds it
        }
        let published = publication(e);
        // A post's first-hour state is identified by (content, publication time), so that an
        // inconsistent publication time cannot make a replay differ. Events without one
        // count toward the post's latest known publication.
        let p = match published {
            Some(p) => p,
            None => match self.publications.get(&content).and_then(|v| v.last()) {
                Some(&p) => p,
                None => return,
            },
        };
        if !self.posts.contains_key(&(content, p)) {
            // Only posts whose first hour can still change get state.
            if p + 60 * MINUTE + self.cfg.allowed_lateness_ms <= self.watermark {
                return;
            }
            let account_id = self.names.names[account as usize].clone();
            self.add_post(
                content,
                Post {
                    account_id,
                    published_at: p,
                    minutes: FirstHourMinutes::starting(Self::minute_of(p)),
                    created: offset,
                    dirty: true,
                    ..Default::default()
                },
            );
            self.dirty_posts.push((content, p));
            let forget = p + 60 * MINUTE + self.cfg.allowed_lateness_ms + MINUTE + 1;
            for (due, t) in [
                (p + 15 * MINUTE, Timer::First15m),
                (p + 60 * MINUTE, Timer::First60m),
                (forget, Timer::Forget),
            ] {
                self.timers.insert((due, t, content, p));
            }
        }
        let d = e.interaction_delta();
        if d == 0 || e.event_time < p || e.event_time >= p + 60 * MINUTE {
            return;
        }
        let Some(post) = self.posts.get_mut(&(content, p)) else {
            return;
        };
        post.revision = post.revision.max(offset);
        if !post.dirty {
            post.dirty = true;
            self.dirty_posts.push((content, p));
        }
        post.first_60m += d;
        post.minutes.add(minute, d);
        if e.event_time < p + 15 * MINUTE {
            post.first_15m += d;
        }
        if let Some(a) = actor {
            post.engagers_60.insert(a);
            if e.event_time < p + 15 * MINUTE {
                post.engagers_15.insert(a);
            }
        }
        if late {
            post.late_events += 1;
        }
        // A correction of a first-hour row already emitted.
        let (re15, re60) = (
            post.emitted_15 && e.event_time < p + 15 * MINUTE,
            post.emitted_60,
        );
        let emitted_at = self.watermark;
        if re15 {
            self.emit_first(content, p, WindowKind::First15m, emitted_at, out);
        }
        if re60 {
            self.emit_first(content, p, WindowKind::First60m, emitted_at, out);
        }
    }

    /// Moves the watermark to `wm` (if higher) and emits the windows it closes. Callers use it
    /// for idle partitions; [`Engine::process`] calls it as events arrive.
    pub fn advance_watermark(&mut self, wm: i64, out: &mut Vec<Output>) {
        if wm <= self.watermark {
            return;
        }
        self.watermark = wm;
        // Close every minute whose end the watermark passed. Only minutes whose MINUTE or
        // VELOCITY windows contain a pane matter: a pane at p is in the velocity windows ending
        // at p + 1 .. p + 5 minutes. An idle jump of hours costs nothing for empty minutes.
        let closed_to = wm - wm.rem_euclid(MINUTE);
        let from = if self.closed_below == i64::MIN {
            i64::MIN
        } else {
            self.closed_below - 4 * MINUTE
        };
        let mut to_close: BTreeSet<i64> = BTreeSet::new();
        // Most events raise the watermark within a minute: nothing closes, nothing to scan.
        let closing = self.closed_below == i64::MIN || closed_to > self.closed_below;
        if closing {
            for &p in self.panes.range(from..closed_to).map(|(p, _)| p) {
                for m in (p..=p + 4 * MINUTE).step_by(MINUTE as usize) {
                    if m < closed_to && (self.closed_below == i64::MIN || m >= self.closed_below) {
                        to_close.insert(m);
                    }
                }
            }
        }
        let before = out.len();
        if let Some(&m) = to_close.last() {
            self.sizes = MinuteSizes {
                pane: self.panes.get(&m).map_or(0, |p| p.counts.len()),
                seen: self.seen_by_minute.get(&m).map_or(0, |b| b.ids.len()),
            };
        }
        for m in to_close {
            // Rows come in the maps' order, not sorted (sorting would cost more than the rest of
            // the close): the same rows in every run; after a restore, names may be interned
            // under other ids and one watermark step's rows come in another order.
            if let Some(pane) = self.panes.get(&m) {
                for (&k, c) in &pane.counts {
                    out.push(Output::Rollup(c.rollup(
                        &self.names,
                        k,
                        WindowKind::Minute,
                        m,
                        m + MINUTE,
                        wm,
                    )));
                }
            }
            // The velocity window ending at m + 1 min sums the panes m - 4 .. m (about as many keys
            // as one minute: sized like the last one, no growing step by step).
            let mut sums: Table<Key, Counts> = Table::with_capacity(self.sizes.pane);
            for (_, pane) in self.panes.range(m - 4 * MINUTE..=m) {
                for (&k, c) in &pane.counts {
                    sums.entry_or_default(k).add_counts(c);
                }
            }
            for (&k, sum) in &sums {
                out.push(Output::Rollup(velocity(
                    &self.names,
                    k,
                    sum,
                    m + MINUTE,
                    wm,
                )));
            }
        }
        self.stats.rows += (out.len() - before) as u64;
        if closed_to > self.closed_below {
            self.closed_below = closed_to;
        }
        // First-hour rows and forgotten posts, in due order.
        while let Some(first) = self.timers.first() {
            if first.0 > wm {
                break;
            }
            let Some((_, timer, content, published)) = self.timers.pop_first() else {
                break;
            };
            match timer {
                Timer::First15m | Timer::First60m => {
                    let w = if timer == Timer::First15m {
                        WindowKind::First15m
                    } else {
                        WindowKind::First60m
                    };
                    if let Some(p) = self.posts.get_mut(&(content, published)) {
                        match w {
                            WindowKind::First15m => p.emitted_15 = true,
                            _ => p.emitted_60 = true,
                        }
                        if !p.dirty {
                            p.dirty = true;
                            self.dirty_posts.push((content, published));
                        }
                    }
                    self.emit_first(content, published, w, wm, out);
                }
                Timer::Forget => {
                    let name = self.names.names[content as usize].to_string();
                    if self.remove_post(content, published).is_some() {
                        self.forgotten_posts.push((name, published));
                    }
                }
            }
        }
        self.evict();
    }

    fn minute_row(&self, k: Key, minute: i64, emitted_at: i64, out: &mut Vec<Output>) {
        if let Some(c) = self.panes.get(&minute).and_then(|p| p.counts.get(&k)) {
            out.push(Output::Rollup(c.rollup(
                &self.names,
                k,
                WindowKind::Minute,
                minute,
                minute + MINUTE,
                emitted_at,
            )));
        }
    }

    fn velocity_row(&self, k: Key, end: i64, emitted_at: i64, out: &mut Vec<Output>) {
        let mut sum = Counts::default();
        let mut any = false;
        for (_, pane) in self.panes.range(end - 5 * MINUTE..end) {
            if let Some(c) = pane.counts.get(&k) {
                sum.add_counts(c);
                any = true;
            }
        }
        if any {
            out.push(Output::Rollup(velocity(
                &self.names,
                k,
                &sum,
                end,
                emitted_at,
            )));
        }
    }

    fn emit_first(
        &mut self,
        content: u32,
        published: i64,
        w: WindowKind,
        emitted_at: i64,
        out: &mut Vec<Output>,
    ) {
        let Some(p) = self.posts.get(&(content, published)) else {
            return;
        };
        let span = if w == WindowKind::First15m { 15 } else { 60 };
        let interactions = if w == WindowKind::First15m {
            p.first_15m
        } else {
            p.first_60m
        };
        let mut r = Counts {
            revision: p.revision,
            ..Default::default()
        }
        .row(
            p.account_id.clone(),
            Some(self.names.names[content as usize].clone()),
            w,
            published,
            published + span * MINUTE,
            emitted_at,
        );
        // The first hour's counts are 64-bit (they outlive a pane).
        r.interactions = interactions;
        r.late_events = p.late_events;
        r.unique_engagers = Some(if w == WindowKind::First15m {
            p.engagers_15.estimate()
        } else {
            p.engagers_60.estimate()
        });
        if w == WindowKind::First60m {
            r.early_accel = (p.first_60m > 0).then(|| p.first_15m as f64 / p.first_60m as f64);
            let mut running = 0;
            for (m, n) in p.minutes.iter() {
                running += n;
                if running >= self.cfg.time_to_n {
                    r.time_to_n_minutes =
                        Some(((m + MINUTE - published) as f64 / MINUTE as f64).max(0.0));
                    break;
                }
            }
        }
        out.push(Output::Rollup(r));
        self.stats.rows += 1;
    }

    fn evict(&mut self) {
        // A pane is needed while a late event can still correct it or a velocity window
        // containing it (5 minutes): minute end + lateness + 5 minutes.
        let horizon = self
            .watermark
            .saturating_sub(self.cfg.allowed_lateness_ms + 6 * MINUTE);
        while let Some((&m, _)) = self.panes.first_key_value() {
            if m >= horizon || m >= self.closed_below {
                break;
            }
            if let Some(pane) = self.panes.remove(&m) {
                for &k in pane.counts.keys() {
                    self.names.release_key(k);
                }
            }
        }
        let seen_horizon = self
            .watermark
            .saturating_sub(self.cfg.allowed_lateness_ms + MINUTE);
        while let Some((&m, _)) = self.seen_by_minute.first_key_value() {
            if m + MINUTE > seen_horizon {
                break;
            }
            self.seen_by_minute.pop_first();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_hour_minutes_are_stored_as_pairs_and_read_back_from_any_first_minute() {
        let base = 1_764_000_000_000 - 1_764_000_000_000 % MINUTE;
        let mut m = FirstHourMinutes::starting(base);
        assert!(m.add(base + 3 * MINUTE, 4));
        assert!(m.add(base + 60 * MINUTE, -1));
        assert!(m.add(base + 7 * MINUTE, 1));
        assert!(m.add(base + 7 * MINUTE, -1)); // back to nothing: not stored
        assert!(!m.add(base + 61 * MINUTE, 1));
        assert!(!m.add(base - MINUTE, 1));
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(
            json,
            format!("[[{},4],[{},-1]]", base + 3 * MINUTE, base + 60 * MINUTE)
        );
        // Read back, the first stored minute is index 0 until the post rebases it.
        let read: FirstHourMinutes = serde_json::from_str(&json).unwrap();
        assert_eq!(read.base, base + 3 * MINUTE);
        assert_eq!(read.rebased(base).unwrap(), m);
        assert!(read.rebased(base + 4 * MINUTE).is_err());
        let too_long = format!("[[{base},1],[{},1]]", base + 61 * MINUTE);
        assert!(serde_json::from_str::<FirstHourMinutes>(&too_long).is_err());
    }
}
