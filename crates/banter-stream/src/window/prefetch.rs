//! Reading a batch's state ahead: [`Engine::prefetch`] starts fetching what a batch of events
//! will touch before any of them is processed, so that their cache misses overlap.

use banter_model::EngagementEvent;

use super::counts::{engager, publication};
use super::first_hour::Post;
use super::names::key;
use super::{id_hash, Engine, Pane, SeenBucket};
use crate::time::{minute_of, MINUTE};

/// A post's key and the slot it most likely sits in (see [`crate::table::Table::likely_slot`]).
type PostSlot<'a> = ((u32, i64), (&'a (u32, i64), &'a Post));

impl Engine {
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
                let minute = minute_of(e.event_time);
                if seen.is_none_or(|(m, _)| m != minute) {
                    seen = self.seen_by_minute.get(&minute).map(|b| (minute, b));
                }
                if let Some((_, b)) = seen {
                    b.prefetch(id_hash(self.id_seed, &e.event_id));
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
                let minute = minute_of(e.event_time);
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
                        banter_alloc::prefetch(&post.times);
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
            let Some((_, (_, post))) = post.filter(|(k, slot)| *slot.0 == *k) else {
                continue;
            };
            post.engagers_60.prefetch(|| engager(e));
            post.times.prefetch();
            if e.event_time < post.published_at + 15 * MINUTE {
                post.engagers_15.prefetch(|| engager(e));
            }
        }
    }
}
