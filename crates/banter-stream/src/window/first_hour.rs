//! First-hour signals of posts: interactions within 15 and 60 minutes of publication, their
//! engagers, acceleration and time-to-N; emitted when the watermark passes publication + 15 /
//! 60 minutes and corrected by late events. The state outlives the lateness horizon, so it is
//! a changelog (the engine's store) rather than rebuilt by replay.

use banter_model::{EngagementEvent, SmolStr, WindowKind};
use serde::{Deserialize, Serialize};

use super::counts::{publication, Counts};
use super::{Engine, Mark, Output, Timer};
use crate::changelog::{encode_key, Change, Entry, StateError, TableId};
use crate::sketch::Sketch;
use crate::time::{minute_of, MINUTE};

/// The engine's one changelog table: first-hour state by (content id, publication time).
pub(super) const POSTS: TableId = TableId {
    tag: b'p',
    name: "first-hour post",
};

/// The minutes a first hour touches: from the minute of publication, 61 (a publication time
/// inside a minute makes the hour end inside the 61st).
pub(super) const FIRST_HOUR_MINUTES: usize = 61;

/// A post's interactions per minute of its first hour, kept in the post itself (no allocation,
/// no search: the minute is an index). Stored in the changelog as (minute start, count) pairs
/// of the minutes with a count.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct FirstHourMinutes {
    /// Start of the minute of index 0.
    pub(super) base: i64,
    pub(super) counts: [i32; FIRST_HOUR_MINUTES],
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
    pub(super) fn starting(minute: i64) -> Self {
        FirstHourMinutes {
            base: minute,
            ..Default::default()
        }
    }

    fn index(&self, minute: i64) -> Option<usize> {
        Self::index_from(self.base, minute)
    }

    /// The index of `minute` in the counts of a first hour whose index 0 is minute `base`.
    pub(super) fn index_from(base: i64, minute: i64) -> Option<usize> {
        usize::try_from((minute - base) / MINUTE)
            .ok()
            .filter(|&i| minute >= base && i < FIRST_HOUR_MINUTES)
    }

    /// Adds `d` to the minute starting at `minute`; false when it is outside the first hour.
    pub(super) fn add(&mut self, minute: i64, d: i64) -> bool {
        match self.index(minute) {
            Some(i) => {
                self.counts[i] += d as i32;
                true
            }
            None => false,
        }
    }

    /// (minute start, count) of the minutes with a count, in order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        (0..FIRST_HOUR_MINUTES as i64)
            .zip(self.counts.iter())
            .filter(|(_, &n)| n != 0)
            .map(|(i, &n)| (self.base + i * MINUTE, i64::from(n)))
    }

    /// The counts of `pairs` indexed from `minute`; Err(the first minute outside the hour).
    pub(super) fn from_pairs(
        minute: i64,
        pairs: impl IntoIterator<Item = (i64, i64)>,
    ) -> Result<Self, i64> {
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
    pub(super) fn rebased(&self, minute: i64) -> Result<Self, String> {
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

/// A post's first-hour state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct Post {
    pub(super) account_id: SmolStr,
    pub(super) published_at: i64,
    pub(super) first_15m: i64,
    pub(super) first_60m: i64,
    pub(super) late_events: i64,
    pub(super) revision: i64,
    /// Interactions per minute in the first hour (for time-to-N).
    pub(super) minutes: FirstHourMinutes,
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

    /// Counts event `e` (read at `mark.offset`, in `minute`) toward its post's first hour.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn first_hour(
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
                    minutes: FirstHourMinutes::starting(minute_of(p)),
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
        }
        let d = e.interaction_delta();
        if d == 0 || e.event_time < p || e.event_time >= p + 60 * MINUTE {
            return;
        }
        let Some(post) = self.posts.get_mut(&(content, p)) else {
            return;
        };
        post.revision = post.revision.max(offset);
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
        Some(post)
    }

    /// First-hour state changed since the last call, as changelog entries keyed by (content
    /// id, publication time).
    pub(super) fn write_post_changes(&mut self, out: &mut Vec<Change>) -> Result<(), StateError> {
        let names = &self.names;
        self.posts.drain_changes(|&(c, p), post| {
            let key = encode_key(POSTS.tag, &(names.names[c as usize].to_string(), p));
            let value = match post {
                Some(post) => Some(serde_json::to_vec(post).map_err(|e| StateError::Encode {
                    table: POSTS.name,
                    message: e.to_string(),
                })?),
                None => None,
            };
            out.push(Change { key, value });
            Ok(())
        })?;
        for c in std::mem::take(&mut self.forgotten_names) {
            self.names.release(c);
        }
        Ok(())
    }

    /// Takes back one first-hour changelog entry (the latest of its post), after
    /// [`Engine::restored`] and before the replay.
    pub(super) fn restore_post(&mut self, entry: &Entry<'_>) -> Result<(), StateError> {
        if entry.tag() != POSTS.tag {
            return Err(entry.unknown());
        }
        let (content, published): (String, i64) = entry.key()?;
        let mut post: Post = entry.value()?;
        let p = post.published_at;
        if p != published {
            return Err(entry.error(format!("publication time {p} under key {published}")));
        }
        post.minutes = post
            .minutes
            .rebased(minute_of(p))
            .map_err(|e| entry.error(e))?;
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
