//! What the window engine and the processors after it (spike detection, funnels,
//! conversations) share: deterministic hash maps (and [`Table`], one that can prefetch), HOUR /
//! DAY windows, and their progress through the input.

use std::hash::{BuildHasher, Hash};

use banter_model::WindowKind;
use serde::{Deserialize, Serialize};

use crate::window::MINUTE;

/// Hash maps with a fixed seed: iteration order depends only on the inserts.
pub(crate) type Map<K, V> = hashbrown::HashMap<K, V, foldhash::fast::FixedState>;
/// Hash sets with a fixed seed.
pub(crate) type Set<K> = hashbrown::HashSet<K, foldhash::fast::FixedState>;

/// Starts loading the slot of `table` an entry of hash `h` most likely sits in (see
/// [`Table::likely_slot`]) and returns at once.
pub(crate) fn prefetch_slot<T>(table: &hashbrown::HashTable<T>, h: u64) {
    if let Some(slot) = table.find(h, |_| true) {
        banter_alloc::prefetch(slot);
    }
}

/// A hash map with a fixed seed, like [`Map`], that can also start fetching the slot of a key
/// without waiting for it ([`Table::prefetch`]): for the window engine's large per-event
/// tables, read ahead for a batch of events.
#[derive(Debug, Clone, Default)]
pub(crate) struct Table<K, V> {
    entries: hashbrown::HashTable<(K, V)>,
    hasher: foldhash::fast::FixedState,
}

impl<K: Hash + Eq, V> Table<K, V> {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Table {
            entries: hashbrown::HashTable::with_capacity(n),
            hasher: foldhash::fast::FixedState::default(),
        }
    }

    fn hash(&self, k: &K) -> u64 {
        self.hasher.hash_one(k)
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn get(&self, k: &K) -> Option<&V> {
        self.entries
            .find(self.hash(k), |(x, _)| x == k)
            .map(|(_, v)| v)
    }

    pub(crate) fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        let h = self.hash(k);
        self.entries.find_mut(h, |(x, _)| x == k).map(|(_, v)| v)
    }

    pub(crate) fn contains_key(&self, k: &K) -> bool {
        self.get(k).is_some()
    }

    /// Inserts `v` under `k`; the value it replaces, if any.
    pub(crate) fn insert(&mut self, k: K, v: V) -> Option<V> {
        match self.get_mut(&k) {
            Some(old) => Some(std::mem::replace(old, v)),
            None => {
                self.insert_new(k, v);
                None
            }
        }
    }

    /// Inserts `v` under `k`, which must not be in the table; the new value.
    pub(crate) fn insert_new(&mut self, k: K, v: V) -> &mut V {
        let h = self.hash(&k);
        let hasher = &self.hasher;
        &mut self
            .entries
            .insert_unique(h, (k, v), |(x, _)| hasher.hash_one(x))
            .into_mut()
            .1
    }

    pub(crate) fn remove(&mut self, k: &K) -> Option<V> {
        let h = self.hash(k);
        self.entries
            .find_entry(h, |(x, _)| x == k)
            .ok()
            .map(|e| e.remove().0 .1)
    }

    /// The value of `k`, a default one inserted when there is none.
    pub(crate) fn entry_or_default(&mut self, k: K) -> &mut V
    where
        V: Default,
    {
        let h = self.hash(&k);
        let hasher = &self.hasher;
        let e = self
            .entries
            .entry(h, |(x, _)| *x == k, |(x, _)| hasher.hash_one(x))
            .or_insert_with(|| (k, V::default()));
        &mut e.into_mut().1
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.into_iter()
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &K> {
        self.entries.iter().map(|(k, _)| k)
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.iter().map(|(_, v)| v)
    }

    /// Starts loading the slot `k` most likely sits in and returns at once.
    pub(crate) fn prefetch(&self, k: &K) {
        prefetch_slot(&self.entries, self.hash(k));
    }

    /// The slot `k` most likely sits in, found without reading any slot: the first whose 7-bit
    /// tag matches `k`'s hash (the tags are the table's control bytes, which stay in cache).
    /// For prefetching the parts of a large value: reading the slot waits for it, and it may
    /// hold another key.
    pub(crate) fn likely_slot(&self, k: &K) -> Option<&(K, V)> {
        self.entries.find(self.hash(k), |_| true)
    }
}

impl<'a, K: Hash + Eq, V> IntoIterator for &'a Table<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter =
        std::iter::Map<hashbrown::hash_table::Iter<'a, (K, V)>, fn(&'a (K, V)) -> (&'a K, &'a V)>;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter().map(|(k, v)| (k, v))
    }
}

/// No offset or watermark yet.
pub(crate) const NONE: i64 = i64::MIN;
/// One hour, in ms.
pub(crate) const HOUR: i64 = 60 * MINUTE;
/// One day, in ms.
pub(crate) const DAY: i64 = 24 * HOUR;

/// Length of an HOUR or DAY window.
pub(crate) fn window_len(kind: WindowKind) -> i64 {
    if kind == WindowKind::Hour {
        HOUR
    } else {
        DAY
    }
}

/// Start of the HOUR or DAY window holding `t` (UTC).
pub(crate) fn window_start(kind: WindowKind, t: i64) -> i64 {
    t - t.rem_euclid(window_len(kind))
}

/// How far a processor got: the next input offset it has not applied and its watermark.
/// Stored in its changelog (entry `m`), so that after a restore the replayed input before
/// `next_offset` is skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Progress {
    pub next_offset: i64,
    pub watermark: i64,
}

/// What a watermark move means for a processor.
pub(crate) struct Moved {
    /// Entered a new minute: emit what changed.
    pub minute: bool,
    /// Entered a new hour: forget what can no longer change.
    pub hour: bool,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            next_offset: NONE,
            watermark: NONE,
        }
    }
}

impl Progress {
    /// Whether input at `offset` is new (not applied before a restore); records it if so.
    pub fn accept(&mut self, offset: i64) -> bool {
        if offset < self.next_offset {
            return false;
        }
        self.next_offset = offset + 1;
        true
    }

    /// Moves the watermark to `wm`; None when it does not move.
    pub fn advance(&mut self, wm: i64) -> Option<Moved> {
        if wm <= self.watermark {
            return None;
        }
        let old = self.watermark;
        self.watermark = wm;
        let crossed = |len: i64| old == NONE || wm.div_euclid(len) > old.div_euclid(len);
        Some(Moved {
            minute: crossed(MINUTE),
            hour: crossed(HOUR),
        })
    }

    /// Whether a window ending at `end` is final: the watermark is `keep` past it.
    pub fn is_final(&self, end: i64, keep: i64) -> bool {
        self.watermark != NONE && end.saturating_add(keep) < self.watermark
    }
}

/// A window aggregate that remembers whether it changed since it was last emitted (stored
/// with it, so a restored window still gets emitted).
pub(crate) trait Pending {
    fn pending(&mut self) -> &mut bool;
}

/// The HOUR / DAY windows of a processor with what their changelog and early emission need:
/// which changed since they were last emitted (indexed, so a minute's emission does not scan
/// every window) and which changed since the changelog was last written.
#[derive(Debug, Clone)]
pub(crate) struct Windows<K, W> {
    pub map: Map<K, W>,
    pending: Set<K>,
    dirty: Set<K>,
}

impl<K, W> Default for Windows<K, W> {
    fn default() -> Self {
        Windows {
            map: Map::default(),
            pending: Set::default(),
            dirty: Set::default(),
        }
    }
}

impl<K: std::hash::Hash + Eq + Clone, W: Pending + Serialize> Windows<K, W> {
    /// Window `k` changed: emit it at the next minute, write it to the changelog.
    pub fn changed(&mut self, k: &K) {
        if let Some(w) = self.map.get_mut(k) {
            let p = w.pending();
            if !*p {
                *p = true;
                self.pending.insert(k.clone());
            }
            self.dirty.insert(k.clone());
        }
    }

    /// Rows of the windows changed since their last emission.
    pub fn emit<R>(&mut self, row: impl Fn(&K, &W) -> R, out: &mut Vec<R>) {
        for k in std::mem::take(&mut self.pending) {
            if let Some(w) = self.map.get_mut(&k) {
                *w.pending() = false;
                out.push(row(&k, w));
                self.dirty.insert(k);
            }
        }
    }

    /// Forgets the windows `gone` says are final; returns their changelog names.
    pub fn forget(
        &mut self,
        gone: impl Fn(&K) -> bool,
        name: impl Fn(&K) -> String,
    ) -> Vec<String> {
        let keys: Vec<K> = self.map.keys().filter(|k| gone(k)).cloned().collect();
        keys.iter()
            .map(|k| {
                self.map.remove(k);
                self.dirty.remove(k);
                name(k)
            })
            .collect()
    }

    /// Changelog entries of the windows changed since the last call.
    pub fn changes(
        &mut self,
        name: impl Fn(&K) -> String,
        out: &mut Vec<(String, Option<Vec<u8>>)>,
    ) {
        for k in std::mem::take(&mut self.dirty) {
            if let Some(v) = self.map.get(&k).and_then(|w| serde_json::to_vec(w).ok()) {
                out.push((name(&k), Some(v)));
            }
        }
    }

    /// Takes a window back from the changelog.
    pub fn restore(&mut self, k: K, mut w: W) {
        if *w.pending() {
            self.pending.insert(k.clone());
        }
        self.map.insert(k, w);
    }

    /// Drops changes not yet written (after a restore).
    pub fn clean(&mut self) {
        self.dirty.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_inserts_replaces_removes_and_prefetches_any_key() {
        let mut t: Table<(u32, i64), String> = Table::default();
        // Prefetching in an empty table, or a key that is not there, is only a hint.
        t.prefetch(&(1, 2));
        assert_eq!(t.insert((1, 2), "a".into()), None);
        assert_eq!(t.insert((1, 2), "b".into()), Some("a".into()));
        assert_eq!(t.len(), 1);
        for i in 0..1_000u32 {
            t.insert_new((i + 10, -1), i.to_string());
        }
        t.prefetch(&(5_000, 0));
        t.prefetch(&(500, -1));
        assert_eq!(t.len(), 1_001);
        assert_eq!(t.get(&(510, -1)).map(String::as_str), Some("500"));
        assert!(t.contains_key(&(1, 2)) && !t.contains_key(&(1, 3)));
        t.get_mut(&(1, 2)).unwrap().push('c');
        assert_eq!(t.remove(&(1, 2)).as_deref(), Some("bc"));
        assert_eq!(t.remove(&(1, 2)), None);
        t.entry_or_default((7, 7)).push('x');
        t.entry_or_default((7, 7)).push('y');
        assert_eq!(t.get(&(7, 7)).map(String::as_str), Some("xy"));
        assert_eq!(t.iter().count(), 1_001);
        assert_eq!(t.keys().filter(|k| k.1 == -1).count(), 1_000);
        assert_eq!(t.values().map(String::len).sum::<usize>(), 2 + 2890);
        // Iteration follows the inserts only: two tables built alike iterate alike.
        let u = t.clone();
        assert!(t.iter().map(|(k, _)| *k).eq(u.iter().map(|(k, _)| *k)));
    }
}
