//! The HOUR / DAY windows of the funnels and the conversations, with their operator's progress
//! through the input: windows are emitted early and updated (every time the watermark enters
//! a new minute, each window changed since it was last emitted is emitted again), take changes
//! until the watermark is a given time past their end, then are final and forgotten. Windows
//! and progress are changelog tables, so their changes reach the changelog on their own.

use std::hash::Hash;

use banter_model::WindowKind;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::changelog::{
    ChangelogCell, ChangelogMap, Changes, Entry, StateError, StateKey, TableId,
};
use crate::table::FETCH_AHEAD;
use crate::time::{check_time, window_len, Progress};

/// A window aggregate that remembers whether it changed since it was last emitted (stored
/// with it, so a restored window still gets emitted).
pub(crate) trait Pending {
    fn pending(&mut self) -> &mut bool;
    /// Refuses a restored window with numbers no operator reaches.
    fn check(&self) -> Result<(), String>;
}

/// Windows keyed by `K`, with a list of those changed since their last emission (so a
/// minute's emission does not scan every window), and the operator's progress.
#[derive(Debug, Clone)]
pub(crate) struct WindowTable<K, W> {
    map: ChangelogMap<K, W>,
    /// The windows whose pending mark was set since the last emission, each listed when its
    /// mark is set (so once while it is set). A key restored twice (outside the restore's
    /// contract of one latest entry per key) may be listed twice: emission takes the mark,
    /// so it is emitted once, or not at all when its last restored entry was not pending.
    pending: Vec<K>,
    progress: ChangelogCell<Progress>,
    progress_tag: u8,
    /// How long after its end a window takes changes.
    keep_ms: i64,
    /// A window's kind and start, from its key.
    span: fn(&K) -> (WindowKind, i64),
}

impl<K: Hash + Eq + Clone, W: Pending> WindowTable<K, W> {
    /// Windows in table `windows` (their kind and start given by `span`), the progress in
    /// table `progress`; a window takes changes until the watermark is `keep_ms` past its end.
    pub fn new(
        windows: TableId,
        progress: TableId,
        keep_ms: i64,
        span: fn(&K) -> (WindowKind, i64),
    ) -> Self {
        WindowTable {
            map: ChangelogMap::new(windows),
            pending: Vec::new(),
            progress: ChangelogCell::new(progress, Progress::default()),
            progress_tag: progress.tag,
            keep_ms,
            span,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Inputs before this offset were applied.
    pub fn next_offset(&self) -> i64 {
        self.progress.get().next_offset
    }

    /// Whether input at `offset` is new (not applied before a restore); records it if so.
    pub fn accept(&mut self, offset: i64) -> bool {
        if offset < self.next_offset() {
            return false;
        }
        self.progress.get_mut().accept(offset);
        true
    }

    /// Whether the `kind` window starting at `start` is final (takes no more changes).
    pub fn is_final(&self, kind: WindowKind, start: i64) -> bool {
        self.progress
            .get()
            .is_final(start + window_len(kind), self.keep_ms)
    }

    /// Starts loading the slot of the window `q` stands for (see
    /// [`crate::table::Table::prefetch_as`]).
    pub fn prefetch_as<Q: Hash + ?Sized>(&self, q: &Q) {
        self.map.prefetch_as(q);
    }

    /// Window `k` to change (made by `make` when new): it is emitted at the next minute and
    /// written to the changelog.
    pub fn update(&mut self, k: &K, make: impl FnOnce() -> W) -> &mut W {
        let w = self.map.get_or_insert_with(k, make);
        let p = w.pending();
        if !*p {
            *p = true;
            self.pending.push(k.clone());
        }
        w
    }

    /// Moves the watermark to `wm`. Entering a new minute, it emits (with `row`, given the
    /// watermark) the windows changed since their last emission; entering a new hour, it
    /// forgets the windows that are final. True when it entered a new hour: the operator
    /// forgets what else can no longer change.
    pub fn advance<R>(
        &mut self,
        wm: i64,
        row: impl Fn(&K, &W, i64) -> R,
        out: &mut Vec<R>,
    ) -> bool {
        if self.progress.get().watermark.is_some_and(|w| wm <= w) {
            return false;
        }
        let Some(moved) = self.progress.get_mut().advance(wm) else {
            return false;
        };
        if moved.minute {
            // Each window's slot is fetched a few windows ahead of its emission (one cache
            // miss each otherwise, waited for in turn).
            let mut pending = std::mem::take(&mut self.pending);
            for i in 0..pending.len() {
                if let Some(ahead) = pending.get(i + FETCH_AHEAD) {
                    self.map.prefetch_as(ahead);
                }
                let k = &pending[i];
                if let Some(w) = self.map.get_mut(k) {
                    if std::mem::take(w.pending()) {
                        out.push(row(k, w, wm));
                    }
                }
            }
            pending.clear();
            self.pending = pending;
        }
        if moved.hour {
            let (progress, keep, span) = (*self.progress.get(), self.keep_ms, self.span);
            self.map.retain(|k, _| {
                let (kind, start) = span(k);
                !progress.is_final(start + window_len(kind), keep)
            });
        }
        moved.hour
    }
}

impl<K, W> WindowTable<K, W>
where
    K: Hash + Eq + Clone + StateKey,
    W: Pending + Serialize + DeserializeOwned,
{
    /// The changes since the last call, as changelog entries.
    pub fn write_changes(&mut self, out: &mut Changes) -> Result<(), StateError> {
        self.map.write_changes(out)?;
        self.progress.write_changes(out)
    }

    /// Whether `entry` belongs here (a window or the progress).
    pub fn holds(&self, entry: &Entry<'_>) -> bool {
        entry.tag() == self.progress_tag || entry.tag() == self.map_tag()
    }

    fn map_tag(&self) -> u8 {
        self.map.tag()
    }

    /// Takes one window, or the progress, back from the changelog.
    pub fn restore_entry(&mut self, entry: &Entry<'_>) -> Result<(), StateError> {
        if entry.tag() == self.progress_tag {
            return self.progress.restore_checked(entry, Progress::check);
        }
        let k: K = entry.key()?;
        let (kind, start) = (self.span)(&k);
        if !matches!(kind, WindowKind::Hour | WindowKind::Day) {
            return Err(entry.error(format!("a {kind:?} window, not an HOUR or DAY one")));
        }
        check_time("window start", Some(start)).map_err(|e| entry.error(e))?;
        let mut w: W = entry.value()?;
        w.check().map_err(|e| entry.error(e))?;
        if *w.pending() {
            self.pending.push(k.clone());
        }
        self.map.restore(k, w);
        Ok(())
    }

    /// Forgets changes not yet written (after a restore).
    pub fn forget_changes(&mut self) {
        self.map.forget_changes();
        self.progress.forget_changes();
    }
}
