//! First-hour signals of posts: interactions within 15 and 60 minutes of publication, their
//! engagers, acceleration and time-to-N; emitted when the watermark passes publication + 15 /
//! 60 minutes and corrected by late events. The state outlives the lateness horizon, so it is
//! a changelog (the engine's store) rather than rebuilt by replay.

use banter_model::{EngagementEvent, SmolStr, WindowKind};
use serde::{Deserialize, Serialize};

use super::counts::{publication, Counts};
use super::{Engine, Mark, Output, Timer};
use crate::changelog::{Changes, Entry, StateError, StateKey as _, TableId};
use crate::sketch::Sketch;
use crate::time::{check_count, check_offset, check_time, MINUTE};

/// The engine's one changelog table: first-hour state by (content id, publication time).
pub(super) const POSTS: TableId = TableId {
    tag: b'p',
    name: "first-hour post",
};

/// Posts whose state was forgotten, by (content id, publication time): the input offset from
/// which it was, kept while a replay could start before it.
pub(super) const RETIRED: TableId = TableId {
    tag: b'f',
    name: "forgotten post",
};

/// Most interactions a post keeps by time for time-to-N (its changelog value stays far below
/// Kafka's record limit): beyond it the latest are dropped, which leaves time-to-N exact while
/// N is well below it.
pub(super) const MAX_FIRST_HOUR_TIMES: usize = 16_384;

/// A post's first-hour interactions by time, for time-to-N exact to the millisecond: each is
/// the ms after publication plus one, negated for a removal (interactions are ±1), sorted by
/// time. Four bytes an interaction.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub(super) struct FirstHourTimes(Vec<i32>);

impl FirstHourTimes {
    /// Adds an interaction `since_ms` after publication (within the first hour) that changes
    /// the count by `delta` (±1).
    pub(super) fn add(&mut self, since_ms: i64, delta: i64) {
        debug_assert!((0..60 * MINUTE).contains(&since_ms) && delta.abs() == 1);
        let Ok(at) = i32::try_from(since_ms + 1) else {
            return;
        };
        let v = if delta < 0 { -at } else { at };
        // Mostly in order: found at the end.
        let i = self.0.partition_point(|x| x.abs() <= at);
        if self.0.len() >= MAX_FIRST_HOUR_TIMES {
            if i == self.0.len() {
                return;
            }
            self.0.pop();
        }
        self.0.insert(i, v);
    }

    /// Starts fetching the end of the list, where the next interaction most likely goes.
    pub(super) fn prefetch(&self) {
        if let Some(last) = self.0.last() {
            banter_alloc::prefetch(last);
        }
    }

    /// Ms from publication until the net count of interactions first reaches `n` (all the
    /// interactions of one ms taken together).
    pub(super) fn time_to(&self, n: i64) -> Option<i64> {
        let mut running = 0i64;
        let mut i = 0;
        while i < self.0.len() {
            let at = self.0[i].abs();
            while i < self.0.len() && self.0[i].abs() == at {
                running += i64::from(self.0[i].signum());
                i += 1;
            }
            if running >= n {
                return Some(i64::from(at) - 1);
            }
        }
        None
    }

    /// Whether the list is in order (as read back from a changelog).
    fn is_valid(&self) -> bool {
        self.0.len() <= MAX_FIRST_HOUR_TIMES
            && self.0.windows(2).all(|w| w[0].abs() <= w[1].abs())
            && self
                .0
                .iter()
                .all(|&x| x != 0 && i64::from(x.abs()) <= 60 * MINUTE)
    }

    pub(super) fn heap_bytes(&self) -> usize {
        self.0.capacity() * std::mem::size_of::<i32>()
    }
}

/// An interaction of a post whose publication time is not known yet (webhooks carry none; the
/// first-party POST_PUBLISHED that does may come after the first comments), held until it is.
#[derive(Debug, Clone, Copy)]
pub(super) struct Held {
    time: i64,
    delta: i8,
    offset: i64,
    engager: Option<u64>,
}

/// Most interactions held for one post without a publication time; beyond it they are not
/// held (and counted in [`super::Stats::unpublished_dropped`]).
pub(super) const MAX_HELD_PER_POST: usize = 20_000;

/// A post's first-hour state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct Post {
    pub(super) account_id: SmolStr,
    pub(super) published_at: i64,
    pub(super) first_15m: i64,
    pub(super) first_60m: i64,
    /// Interactions that arrived after the FIRST_60M row was first out.
    pub(super) late_events: i64,
    /// Interactions that arrived after the FIRST_15M row was first out.
    #[serde(default)]
    pub(super) late_15: i64,
    pub(super) revision: i64,
    /// The first hour's interactions by time (for time-to-N).
    pub(super) times: FirstHourTimes,
    pub(super) emitted_15: bool,
    pub(super) emitted_60: bool,
    /// The offset that created this post's state.
    pub(super) created: i64,
    pub(super) engagers_15: Sketch,
    pub(super) engagers_60: Sketch,
}

impl Engine {
    /// When the watermark is past this, a post published at `p` can no longer change: its
    /// state is forgotten.
    fn forget_at(&self, p: i64) -> i64 {
        p + 60 * MINUTE + self.cfg.allowed_lateness_ms + MINUTE + 1
    }

    /// Counts event `e` (read at `mark.offset`, in `minute`) toward its post's first hour, or
    /// holds it until the post's publication time is known.
    pub(super) fn first_hour(
        &mut self,
        e: &EngagementEvent,
        account: u32,
        content: u32,
        actor: Option<u64>,
        mark: Mark,
        out: &mut Vec<Output>,
    ) {
        let offset = mark.offset;
        // A post's first-hour state is identified by (content, publication time), so that an
        // inconsistent publication time cannot make a replay differ. Events without one
        // count toward the post's latest known publication; with none known yet, they wait
        // for it.
        let known = publication(e).or_else(|| {
            self.publications
                .get(&content)
                .and_then(|v| v.last().copied())
        });
        let d = e.interaction_delta();
        let held = Held {
            time: e.event_time,
            delta: d as i8,
            offset,
            engager: actor,
        };
        if offset < self.skip_posts_below {
            // Replayed after a restore: the restored first-hour state holds what was counted
            // before the checkpoint; what was still waiting for a publication then waits
            // again. It was not waiting if some state of the post lived between this offset
            // and the checkpoint: restored, or forgotten since.
            let found = known.is_some()
                || self
                    .retired_until
                    .get(&content)
                    .is_some_and(|&f| offset < f);
            if !found && d != 0 {
                self.hold(content, held);
            }
            return;
        }
        let Some(p) = known else {
            if d != 0 {
                self.hold(content, held);
            }
            return;
        };
        if !self.posts.contains_key(&(content, p)) {
            // Only posts whose first hour can still change get state.
            if self
                .watermark
                .is_some_and(|wm| p + 60 * MINUTE + self.cfg.allowed_lateness_ms <= wm)
            {
                return;
            }
            let account_id = self.names.names[account as usize].clone();
            self.add_post(
                content,
                Post {
                    account_id,
                    published_at: p,
                    created: offset,
                    ..Default::default()
                },
            );
            for (due, t) in [
                (p + 15 * MINUTE, Timer::First15m),
                (p + 60 * MINUTE, Timer::First60m),
                (self.forget_at(p), Timer::Forget),
            ] {
                self.timers.insert((due, t, content, p));
            }
            // The interactions that came before the publication.
            if let Some(earlier) = self.unpublished.remove(&content) {
                for h in earlier {
                    self.count_first_hour(content, p, h, out);
                }
                self.names.release(content);
            }
        }
        if d != 0 {
            self.count_first_hour(content, p, held, out);
        }
    }

    /// Holds an interaction of `content`, whose publication time is not known yet.
    fn hold(&mut self, content: u32, h: Held) {
        let held = self.unpublished.entry(content).or_default();
        if held.is_empty() {
            self.names.retain(content);
        }
        if held.len() < MAX_HELD_PER_POST {
            held.push(h);
        } else {
            self.stats.unpublished_dropped += 1;
        }
    }

    /// Forgets held interactions at or before `horizon`: a publication that could still claim
    /// them would be too late itself (the caller keeps them as long as their panes).
    pub(super) fn forget_held(&mut self, horizon: i64) {
        let names = &mut self.names;
        self.unpublished.retain(|&c, held| {
            held.retain(|h| h.time > horizon);
            if held.is_empty() {
                names.release(c);
            }
            !held.is_empty()
        });
    }

    /// Interactions held for posts without a publication time.
    pub(super) fn held(&self) -> usize {
        self.unpublished.values().map(Vec::len).sum()
    }

    /// Counts interaction `h` toward the first hour of content `content` published at `p`.
    fn count_first_hour(&mut self, content: u32, p: i64, h: Held, out: &mut Vec<Output>) {
        let since = h.time - p;
        if !(0..60 * MINUTE).contains(&since) || h.delta == 0 {
            return;
        }
        let Some(post) = self.posts.get_mut(&(content, p)) else {
            return;
        };
        let d = i64::from(h.delta);
        post.revision = post.revision.max(h.offset);
        post.first_60m += d;
        post.times.add(since, d);
        let in_15 = since < 15 * MINUTE;
        if in_15 {
            post.first_15m += d;
        }
        if let Some(a) = h.engager {
            post.engagers_60.insert(a);
            if in_15 {
                post.engagers_15.insert(a);
            }
        }
        // A correction of a first-hour row already emitted: a late event of that row.
        let (re15, re60) = (post.emitted_15 && in_15, post.emitted_60);
        post.late_15 += i64::from(re15);
        post.late_events += i64::from(re60);
        let emitted_at = self.watermark.unwrap_or(i64::MIN);
        if re15 {
            self.emit_first(content, p, WindowKind::First15m, emitted_at, out);
        }
        if re60 {
            self.emit_first(content, p, WindowKind::First60m, emitted_at, out);
        }
    }

    /// A first-hour timer is due: emit the 15- or 60-minute row, or forget the post.
    pub(super) fn fire(
        &mut self,
        timer: Timer,
        content: u32,
        published: i64,
        wm: i64,
        out: &mut Vec<Output>,
    ) {
        let w = match timer {
            Timer::First15m => WindowKind::First15m,
            Timer::First60m => WindowKind::First60m,
            Timer::Forget => {
                self.remove_post(content, published);
                return;
            }
        };
        if let Some(p) = self.posts.get_mut(&(content, published)) {
            match w {
                WindowKind::First15m => p.emitted_15 = true,
                _ => p.emitted_60 = true,
            }
        }
        self.emit_first(content, published, w, wm, out);
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
        let mut counts = Counts::default();
        counts.revision = p.revision;
        let mut r = counts.row(
            p.account_id.clone(),
            Some(self.names.names[content as usize].clone()),
            w,
            published,
            published + span * MINUTE,
            emitted_at,
        );
        // The first hour's counts are 64-bit (they outlive a pane).
        r.interactions = interactions;
        r.late_events = if w == WindowKind::First15m {
            p.late_15
        } else {
            p.late_events
        };
        r.unique_engagers = Some(if w == WindowKind::First15m {
            p.engagers_15.estimate()
        } else {
            p.engagers_60.estimate()
        });
        if w == WindowKind::First60m {
            r.early_accel = (p.first_60m > 0).then(|| p.first_15m as f64 / p.first_60m as f64);
            r.time_to_n_minutes = p
                .times
                .time_to(self.cfg.time_to_n)
                .map(|ms| ms as f64 / MINUTE as f64);
        }
        out.push(Output::Rollup(r));
        self.stats.rows += 1;
    }

    /// Holds `post` as content `c`'s state for its publication time, replacing any; true when
    /// there was none. Restored posts are not changes.
    fn add_post(&mut self, c: u32, post: Post) -> bool {
        self.hold_post(c, post, true)
    }

    fn hold_post(&mut self, c: u32, post: Post, change: bool) -> bool {
        let p = post.published_at;
        let k = (c, p);
        let existed = self.posts.contains_key(&k);
        if change {
            self.posts.insert(k, post);
        } else {
            self.posts.restore(k, post);
        }
        if existed {
            return false;
        }
        let v = self.publications.entry(c).or_default();
        if let Err(i) = v.binary_search(&p) {
            v.insert(i, p);
        }
        self.names.retain(c);
        true
    }

    /// Forgets content `c`'s state for publication time `p`. Its name stays interned until
    /// the deletion is written to the changelog (the entry's key is the name).
    fn remove_post(&mut self, c: u32, p: i64) -> Option<Post> {
        let post = self.posts.remove(&(c, p))?;
        if let Some(v) = self.publications.get_mut(&c) {
            v.retain(|&x| x != p);
            if v.is_empty() {
                self.publications.remove(&c);
            }
        }
        self.forgotten_names.push(c);
        // Events read from here on find it gone; a replay from before here must not.
        let from = self.next_offset;
        self.retired.insert((c, p), from);
        self.names.retain(c);
        let until = self.retired_until.entry(c).or_insert(from);
        *until = (*until).max(from);
        Some(post)
    }

    /// First-hour state changed since the last call, as changelog entries keyed by (content
    /// id, publication time).
    pub(super) fn write_post_changes(&mut self, out: &mut Changes) -> Result<(), StateError> {
        // Forgotten posts no replay can reach any more: it starts at or after their offset.
        let start = self.restore_mark().map_or(self.next_offset, |m| m.offset);
        let gone: Vec<(u32, i64)> = self
            .retired
            .iter()
            .filter(|&(_, &from)| from <= start)
            .map(|(k, _)| *k)
            .collect();
        for k in gone {
            self.retired.remove(&k);
            self.forgotten_names.push(k.0);
        }
        self.retired_until.retain(|_, until| *until > start);
        let names = &self.names;
        // Keyed by (content id, publication time), written as that pair's key would be.
        let key = |c: u32, p: i64| {
            move |b: &mut Vec<u8>| {
                names.names[c as usize].encode(b);
                p.encode(b);
            }
        };
        self.retired
            .drain_changes(|&(c, p), from| out.push(RETIRED, key(c, p), from))?;
        self.posts
            .drain_changes(|&(c, p), post| out.push(POSTS, key(c, p), post))?;
        for c in std::mem::take(&mut self.forgotten_names) {
            self.names.release(c);
        }
        Ok(())
    }

    /// Takes back one entry of the forgotten posts (the latest of its post), after
    /// [`Engine::restored`] and before the replay.
    pub(super) fn restore_retired(&mut self, entry: &Entry<'_>) -> Result<(), StateError> {
        let (content, published): (String, i64) = entry.key()?;
        let from: i64 = entry.value()?;
        check_time("publication time", Some(published))
            .and(check_offset("retired from", from))
            .map_err(|e| entry.error(e))?;
        let c = self.names.intern(&content);
        if self.retired.get(&(c, published)).is_none() {
            self.names.retain(c);
        }
        self.retired.restore((c, published), from);
        let until = self.retired_until.entry(c).or_insert(from);
        *until = (*until).max(from);
        Ok(())
    }

    /// Takes back one first-hour changelog entry (the latest of its post), after
    /// [`Engine::restored`] and before the replay.
    pub(super) fn restore_post(&mut self, entry: &Entry<'_>) -> Result<(), StateError> {
        if entry.tag() != POSTS.tag {
            return Err(entry.unknown());
        }
        let (content, published): (String, i64) = entry.key()?;
        check_time("publication time", Some(published)).map_err(|e| entry.error(e))?;
        let post: Post = entry.value()?;
        [
            post.first_15m,
            post.first_60m,
            post.late_events,
            post.late_15,
        ]
        .into_iter()
        .try_for_each(|n| check_count("first-hour count", n))
        .and(check_offset("created", post.created))
        .and(check_offset("revision", post.revision))
        .map_err(|e| entry.error(e))?;
        let p = post.published_at;
        if p != published {
            return Err(entry.error(format!("publication time {p} under key {published}")));
        }
        if !post.times.is_valid() {
            return Err(entry.error("first-hour times out of order or out of the hour"));
        }
        // Timers that have not fired yet (a fired one set its emitted flag).
        let mut timers = vec![(self.forget_at(p), Timer::Forget)];
        if !post.emitted_15 {
            timers.push((p + 15 * MINUTE, Timer::First15m));
        }
        if !post.emitted_60 {
            timers.push((p + 60 * MINUTE, Timer::First60m));
        }
        let c = self.names.intern(&content);
        if self.hold_post(c, post, false) {
            for (due, t) in timers {
                self.restored_timers.push((due, t, c, p));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_to_n_is_exact_and_takes_one_ms_at_a_time() {
        let mut t = FirstHourTimes::default();
        for ms in [30_000, 10_000, 20_000, 20_000] {
            t.add(ms, 1);
        }
        assert_eq!(
            t.time_to(2),
            Some(20_000),
            "the second and third arrive together"
        );
        assert_eq!(t.time_to(4), Some(30_000));
        assert_eq!(t.time_to(5), None);
        // A removal before the third brings the count back.
        t.add(15_000, -1);
        assert_eq!(t.time_to(2), Some(20_000));
        assert_eq!(t.time_to(3), Some(30_000));
        t.add(0, 1);
        assert_eq!(t.time_to(1), Some(0));
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, "[1,10001,-15001,20001,20001,30001]");
        let back: FirstHourTimes = serde_json::from_str(&json).unwrap();
        assert!(back.is_valid() && back == t);
        let bad: FirstHourTimes = serde_json::from_str("[5,3]").unwrap();
        assert!(!bad.is_valid());
    }

    #[test]
    fn the_latest_interactions_give_way_at_the_cap() {
        let mut t = FirstHourTimes::default();
        for i in 0..MAX_FIRST_HOUR_TIMES as i64 {
            t.add(1_000 + i, 1);
        }
        t.add(3_000_000, 1); // later than all: not kept
        t.add(0, 1); // earlier: kept, the latest dropped
        assert_eq!(t.0.len(), MAX_FIRST_HOUR_TIMES);
        assert_eq!(t.time_to(1), Some(0));
        assert_eq!(t.time_to(MAX_FIRST_HOUR_TIMES as i64 + 1), None);
    }
}
