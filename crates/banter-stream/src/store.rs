//! What the processors after the windows (spike detection, funnels, conversations) share:
//! deterministic hash maps, HOUR / DAY windows, and their progress through the input.

use banter_model::WindowKind;
use serde::{Deserialize, Serialize};

use crate::window::MINUTE;

/// Hash maps with a fixed seed: iteration order depends only on the inserts.
pub(crate) type Map<K, V> = hashbrown::HashMap<K, V, foldhash::fast::FixedState>;
/// Hash sets with a fixed seed.
pub(crate) type Set<K> = hashbrown::HashSet<K, foldhash::fast::FixedState>;

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
