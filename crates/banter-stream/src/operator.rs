//! The one shape of every stateful step of `banter stream` (Arroyo's `arroyo-operator` is the
//! model): an operator takes its input one record at a time, reacts when its partition's event
//! time moves on, reports what its state changed as changelog entries, and takes them back
//! after a restart. The window engine, the spike detector, the funnels and the conversations
//! are operators; [`crate::pipeline::Pipeline`] composes them.

use crate::changelog::{Changes, Entry, StateError, Store};

/// Where a partition's event time stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Time {
    /// The watermark: no event older than this minus the lateness is expected.
    pub watermark: i64,
    /// Every minute before this one is closed: its MINUTE rows were emitted.
    pub closed_below: i64,
}

/// A stateful step of the stream pipeline, for one input partition. Deterministic: the same
/// inputs, offsets and times give the same outputs (rows emitted by one step may come in
/// another order in another instance: its hash maps are seeded at random).
pub trait Operator {
    /// What it consumes.
    type In;
    /// What it emits.
    type Out;

    /// The changelog store that holds its state.
    const STORE: Store;

    /// Applies one input record read at input `offset`; appends what it causes to `out`.
    /// Returns whether the record was applied (false: a duplicate, too late, or applied
    /// before a restore).
    fn process(&mut self, input: &Self::In, offset: i64, out: &mut Vec<Self::Out>) -> bool;

    /// Event time moved on to `time`; appends what that closes or updates to `out`.
    fn advance(&mut self, time: Time, out: &mut Vec<Self::Out>);

    /// Appends the changelog entries of what changed since the last call.
    ///
    /// # Errors
    /// A value that cannot be encoded: the batch must fail, not write less.
    fn write_changes(&mut self, out: &mut Changes) -> Result<(), StateError>;

    /// Takes one entry of its store back (the latest of its key; entries come in any order).
    ///
    /// # Errors
    /// An entry this operator does not write, or cannot read.
    fn restore_entry(&mut self, entry: &Entry<'_>) -> Result<(), StateError>;

    /// Every entry is back: rebuild what is derived from them; nothing is pending for the
    /// changelog (it holds it all already).
    fn restored(&mut self);

    /// State entries held, for metrics.
    fn state_entries(&self) -> usize;
}

/// For tests: everything `from` holds, written to a changelog as compaction leaves it (the
/// latest entry per key) and restored into `into`.
#[cfg(test)]
pub(crate) fn restore_copy<O: Operator>(from: &mut O, into: &mut O) {
    let mut changes = Changes::new();
    from.write_changes(&mut changes).expect("encodable");
    let log: std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>> =
        changes.into_iter().map(|(_, c)| (c.key, c.value)).collect();
    restore_log(into, &log);
}

/// For tests: restores `into` from changelog entries (key, value or None for a deletion) in
/// the order given, each key as often as it comes.
#[cfg(test)]
pub(crate) fn restore_log<'a, O: Operator>(
    into: &mut O,
    log: impl IntoIterator<Item = (&'a Vec<u8>, &'a Option<Vec<u8>>)>,
) {
    for (key, value) in log {
        if let Some(value) = value {
            let entry = Entry {
                store: O::STORE,
                key,
                value,
            };
            into.restore_entry(&entry).expect("restorable");
        }
    }
    into.restored();
}
