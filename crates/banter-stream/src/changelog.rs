//! Operator state that records its own changes (Arroyo's `global_keyed_map` is the model): a
//! [`ChangelogMap`] notes every key it inserts, changes or removes, and
//! [`ChangelogMap::write_changes`] turns what changed since the last call into changelog
//! entries — nothing is tracked by hand, nothing written that did not change.
//!
//! * **Keys are typed and unambiguous.** An entry's key is its table's one-byte tag and the
//!   table's key in a binary form ([`StateKey`]): strings length-prefixed, numbers fixed-width.
//!   Whatever bytes an id holds (a separator, a slash, invalid UTF-8 is impossible: ids are
//!   Rust strings), the key reads back as the same id.
//! * **Values are binary:** a marker byte ([`BINARY_V1`]) and then the value in
//!   [`postcard`]'s layout (integers as varints, fields in declaration order, no names). JSON,
//!   which versions before checkpoint format 3 wrote, still reads back: no JSON text starts
//!   with the marker. JSON was about half of a close's changelog write and three to five times
//!   the bytes (a spike key's state: about 250 bytes of JSON, 50 binary). The layout has no names:
//!   fields, tuple members and enum variants are known by their position (`#[serde(rename)]`
//!   protects nothing), so a stored type whose fields or variants change or move needs a new
//!   marker that reads the old layout too: `tests/changelogs/` holds a changelog of every
//!   format, with an entry of every table, that each version must restore. A value that
//!   cannot be encoded is an error that fails the batch ([`StateError::Encode`]): it is never
//!   written as nothing.
//! * **Written in place:** a commit's entries go into one buffer ([`Changes`]); a key or value
//!   is never a heap block of its own (a busy partition writes about one entry per input
//!   event).
//! * **Restore** takes the latest entry per key in any order ([`ChangelogMap::restore_entry`]);
//!   a key or value that cannot be read names its store, table and key.

use std::borrow::Borrow;
use std::hash::Hash;

use banter_model::WindowKind;
use serde::de::DeserializeOwned;
use serde::Serialize;
use thiserror::Error;

use crate::table::Table;

/// The changelog stores, one per operator, each beside the partition's checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Store {
    /// The window engine's first-hour post state.
    Windows,
    /// The spike detector's baselines and alerts.
    Spikes,
    /// CTA funnel state.
    Funnels,
    /// Conversation state.
    Conversations,
}

impl Store {
    /// Every store.
    pub const ALL: [Store; 4] = [
        Store::Windows,
        Store::Spikes,
        Store::Funnels,
        Store::Conversations,
    ];

    /// Its name in changelog keys and messages.
    pub fn name(self) -> &'static str {
        match self {
            Store::Windows => "windows",
            Store::Spikes => "spikes",
            Store::Funnels => "funnels",
            Store::Conversations => "conversations",
        }
    }

    /// The store named `name`.
    pub fn from_name(name: &str) -> Option<Store> {
        Store::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl std::fmt::Display for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One changelog entry of a store, owned: its key within the store and its value (None:
/// deleted). What [`Changes`] hands out by value, for tests and tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The table's tag, then the key in [`StateKey`] form.
    pub key: Vec<u8>,
    /// The value's bytes ([`BINARY_V1`] and postcard's, or JSON from
    /// [`Changes::with_json_values`]); None deletes the key.
    pub value: Option<Vec<u8>>,
}

/// One entry of [`Changes`], borrowed from its buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangeRef<'a> {
    /// The table's tag, then the key in [`StateKey`] form.
    pub key: &'a [u8],
    /// The value's bytes ([`BINARY_V1`] and postcard's, or JSON from
    /// [`Changes::with_json_values`]); None deletes the key.
    pub value: Option<&'a [u8]>,
}

/// Changelog entries as operators write them: every key and value in one buffer, in order,
/// each entry marked with its store. [`Changes::clear`] keeps the buffers' capacity, so the
/// partitions of a commit reuse them. [`Changes::begin`] sets the store of the entries that
/// follow (the pipeline calls it before each operator writes; the first store is
/// [`Store::Windows`]).
#[derive(Debug, Clone)]
pub struct Changes {
    bytes: Vec<u8>,
    entries: Vec<Span>,
    store: Store,
    /// Values as JSON ([`Changes::with_json_values`]).
    json: bool,
}

/// Where an entry sits in [`Changes::bytes`]: key `start..key_end`, value `key_end..end`.
#[derive(Debug, Clone, Copy)]
struct Span {
    store: Store,
    start: usize,
    key_end: usize,
    end: usize,
    deleted: bool,
}

impl Default for Changes {
    fn default() -> Self {
        Changes {
            bytes: Vec::new(),
            entries: Vec::new(),
            store: Store::Windows,
            json: false,
        }
    }
}

impl Changes {
    /// No entries.
    pub fn new() -> Self {
        Self::default()
    }

    /// No entries; values are to be written as JSON, as checkpoint format 2 did (restore reads
    /// both; a field format 2 left out when empty is written as `null`): for tests and tools
    /// that read or alter values by hand.
    pub fn with_json_values() -> Self {
        Changes {
            json: true,
            ..Self::default()
        }
    }

    /// The entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Forgets the entries, keeping the buffers for the next ones.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.entries.clear();
    }

    /// The entries appended from now on belong to `store`.
    pub fn begin(&mut self, store: Store) {
        self.store = store;
    }

    /// The entries in the order written, with their stores.
    pub fn iter(&self) -> impl Iterator<Item = (Store, ChangeRef<'_>)> + '_ {
        self.entries.iter().map(|s| {
            (
                s.store,
                ChangeRef {
                    key: &self.bytes[s.start..s.key_end],
                    value: (!s.deleted).then(|| &self.bytes[s.key_end..s.end]),
                },
            )
        })
    }

    /// Appends an entry of `table`: its tag, the key's bytes (`key` appends them), then the
    /// value, [`BINARY_V1`] and its bytes, or JSON ([`Changes::with_json_values`]) (None: the
    /// key is deleted). A value that cannot be encoded leaves nothing of the entry behind.
    pub(crate) fn push<V: Serialize + ?Sized>(
        &mut self,
        table: TableId,
        key: impl FnOnce(&mut Vec<u8>),
        value: Option<&V>,
    ) -> Result<(), StateError> {
        let start = self.bytes.len();
        self.bytes.push(table.tag);
        key(&mut self.bytes);
        let key_end = self.bytes.len();
        if let Some(v) = value {
            let written = if self.json {
                serde_json::to_writer(&mut self.bytes, v).map_err(|e| e.to_string())
            } else {
                self.bytes.push(BINARY_V1);
                postcard::serialize_with_flavor(v, Append(&mut self.bytes))
                    .map_err(|e| e.to_string())
            };
            if let Err(message) = written {
                self.bytes.truncate(start);
                return Err(StateError::Encode {
                    table: table.name,
                    message,
                });
            }
        }
        self.entries.push(Span {
            store: self.store,
            start,
            key_end,
            end: self.bytes.len(),
            deleted: value.is_none(),
        });
        Ok(())
    }
}

/// The first byte of a value in the binary layout, version 1 (postcard). JSON texts start
/// with whitespace, `{`, `[`, `"`, `-`, a digit, `t`, `f` or `n`; this is none of those, nor
/// a byte that starts a UTF-8 character.
pub const BINARY_V1: u8 = 0xB1;

/// postcard's output appended to a buffer that holds other entries before it.
struct Append<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for Append<'_> {
    type Output = ();

    fn try_push(&mut self, b: u8) -> postcard::Result<()> {
        self.0.push(b);
        Ok(())
    }

    fn try_extend(&mut self, b: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(b);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// A value's bytes read back: the binary layout after its marker, else JSON. postcard's
/// errors say little (a type's own refusal comes out as "Serde Deserialization Error"), so a
/// refusal names the type expected and the value's length.
pub(crate) fn decode_value<V: DeserializeOwned>(bytes: &[u8]) -> Result<V, String> {
    let what = std::any::type_name::<V>();
    match bytes.split_first() {
        Some((&BINARY_V1, rest)) => match postcard::take_from_bytes(rest) {
            Ok((v, [])) => Ok(v),
            Ok((_, left)) => Err(format!(
                "binary value of {} bytes after its marker: {} left after its {what}",
                rest.len(),
                left.len()
            )),
            Err(e) => Err(format!(
                "binary value of {} bytes after its marker does not read as {what}: {e}",
                rest.len()
            )),
        },
        _ => serde_json::from_slice(bytes).map_err(|e| format!("JSON value: {e}")),
    }
}

/// The entries, owned, with their stores.
impl IntoIterator for Changes {
    type Item = (Store, Change);
    type IntoIter = std::vec::IntoIter<(Store, Change)>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
            .map(|(store, c)| {
                (
                    store,
                    Change {
                        key: c.key.to_vec(),
                        value: c.value.map(<[u8]>::to_vec),
                    },
                )
            })
            .collect::<Vec<_>>()
            .into_iter()
    }
}

/// State that cannot be written to or read from a changelog.
#[derive(Debug, Error)]
pub enum StateError {
    /// A value could not be encoded: the batch must fail rather than write nothing.
    #[error("cannot encode {table} state: {message}")]
    Encode {
        /// The table.
        table: &'static str,
        /// Why.
        message: String,
    },
    /// An entry read back from the changelog is not what its store writes.
    #[error("{store} changelog entry {key}: {message}")]
    Restore {
        /// The store.
        store: Store,
        /// The entry's key, escaped.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// The checkpoint holds values no engine writes (times or offsets out of range).
    #[error("checkpoint: {0}")]
    Checkpoint(String),
}

impl StateError {
    /// An unreadable entry of `store`.
    pub fn restore(store: Store, key: &[u8], message: impl Into<String>) -> Self {
        StateError::Restore {
            store,
            key: key.escape_ascii().to_string(),
            message: message.into(),
        }
    }
}

/// Why a key's bytes do not read back.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct KeyError(pub &'static str);

/// A key a changelog table can hold: written in a binary form that reads back unambiguously.
pub trait StateKey: Sized {
    /// Appends the key's bytes.
    fn encode(&self, out: &mut Vec<u8>);
    /// Reads a key from the front of `input`, advancing it.
    fn decode(input: &mut &[u8]) -> Result<Self, KeyError>;
}

fn take<'a>(input: &mut &'a [u8], n: usize) -> Result<&'a [u8], KeyError> {
    if input.len() < n {
        return Err(KeyError("key ends early"));
    }
    let (head, rest) = input.split_at(n);
    *input = rest;
    Ok(head)
}

/// LEB128 length, then the UTF-8 bytes.
fn encode_str(s: &str, out: &mut Vec<u8>) {
    let mut n = s.len() as u64;
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(s.as_bytes());
}

fn decode_str<'a>(input: &mut &'a [u8]) -> Result<&'a str, KeyError> {
    let mut n: u64 = 0;
    for shift in (0..64).step_by(7) {
        let byte = take(input, 1)?[0];
        n |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            let len = usize::try_from(n).map_err(|_| KeyError("string too long"))?;
            let bytes = take(input, len)?;
            return std::str::from_utf8(bytes).map_err(|_| KeyError("not UTF-8"));
        }
    }
    Err(KeyError("string length too long"))
}

impl StateKey for String {
    /// LEB128 length, then the UTF-8 bytes.
    fn encode(&self, out: &mut Vec<u8>) {
        encode_str(self, out);
    }

    fn decode(input: &mut &[u8]) -> Result<Self, KeyError> {
        decode_str(input).map(str::to_owned)
    }
}

impl StateKey for smol_str::SmolStr {
    /// As a `String`: the same bytes, so a key's type can change between the two.
    fn encode(&self, out: &mut Vec<u8>) {
        encode_str(self, out);
    }

    fn decode(input: &mut &[u8]) -> Result<Self, KeyError> {
        decode_str(input).map(smol_str::SmolStr::from)
    }
}

impl StateKey for i64 {
    /// Eight bytes, big-endian.
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_be_bytes());
    }

    fn decode(input: &mut &[u8]) -> Result<Self, KeyError> {
        let bytes = take(input, 8)?;
        let mut b = [0u8; 8];
        b.copy_from_slice(bytes);
        Ok(i64::from_be_bytes(b))
    }
}

impl StateKey for WindowKind {
    /// One byte.
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(match self {
            WindowKind::Minute => 0,
            WindowKind::Velocity5m => 1,
            WindowKind::First15m => 2,
            WindowKind::First60m => 3,
            WindowKind::Hour => 4,
            WindowKind::Day => 5,
        });
    }

    fn decode(input: &mut &[u8]) -> Result<Self, KeyError> {
        Ok(match take(input, 1)?[0] {
            0 => WindowKind::Minute,
            1 => WindowKind::Velocity5m,
            2 => WindowKind::First15m,
            3 => WindowKind::First60m,
            4 => WindowKind::Hour,
            5 => WindowKind::Day,
            _ => return Err(KeyError("unknown window kind")),
        })
    }
}

impl StateKey for () {
    fn encode(&self, _: &mut Vec<u8>) {}

    fn decode(_: &mut &[u8]) -> Result<Self, KeyError> {
        Ok(())
    }
}

macro_rules! tuple_key {
    ($($t:ident $v:ident),+) => {
        impl<$($t: StateKey),+> StateKey for ($($t,)+) {
            fn encode(&self, out: &mut Vec<u8>) {
                let ($($v,)+) = self;
                $($v.encode(out);)+
            }

            fn decode(input: &mut &[u8]) -> Result<Self, KeyError> {
                Ok(($($t::decode(input)?,)+))
            }
        }
    };
}
tuple_key!(A a, B b);
tuple_key!(A a, B b, C c);
tuple_key!(A a, B b, C c, D d);

/// The bytes of `key` in table `tag` (as [`Changes::push`] writes them).
#[cfg(test)]
pub(crate) fn encode_key<K: StateKey>(tag: u8, key: &K) -> Vec<u8> {
    let mut out = vec![tag];
    key.encode(&mut out);
    out
}

/// A whole key (after its table's tag): nothing may be left over.
pub(crate) fn decode_key<K: StateKey>(mut bytes: &[u8]) -> Result<K, KeyError> {
    let k = K::decode(&mut bytes)?;
    if bytes.is_empty() {
        Ok(k)
    } else {
        Err(KeyError("bytes left after the key"))
    }
}

/// A table of an operator: its tag (the first byte of its keys) and name (in messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TableId {
    pub tag: u8,
    pub name: &'static str,
}

/// An entry read back from a store, split into its table's tag and the rest.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// The store it was read from.
    pub store: Store,
    /// The whole key.
    pub key: &'a [u8],
    /// The value.
    pub value: &'a [u8],
}

impl Entry<'_> {
    /// The table tag (0 for an empty key, which no table uses).
    pub fn tag(&self) -> u8 {
        self.key.first().copied().unwrap_or(0)
    }

    /// An error naming this entry.
    pub fn error(&self, message: impl Into<String>) -> StateError {
        StateError::restore(self.store, self.key, message)
    }

    /// The key after the tag, read as `K`.
    pub(crate) fn key<K: StateKey>(&self) -> Result<K, StateError> {
        decode_key(self.key.get(1..).unwrap_or_default())
            .map_err(|e| self.error(format!("bad key: {e}")))
    }

    /// The value read as `V`, binary or (written before format 3) JSON.
    pub(crate) fn value<V: DeserializeOwned>(&self) -> Result<V, StateError> {
        decode_value(self.value).map_err(|e| self.error(e))
    }

    /// The error for a tag no table of the store has.
    pub fn unknown(&self) -> StateError {
        self.error("unknown table")
    }
}

/// A value and whether its key is listed as changed since the last write.
#[derive(Debug, Clone)]
struct Logged<V> {
    value: V,
    listed: bool,
}

/// A keyed table of operator state that records its changes as it mutates: every insert and
/// mutable access lists the key (once), every removal notes it, for the next
/// [`ChangelogMap::write_changes`]. Iteration order differs between maps and processes (a
/// random seed per map, see [`Table`]); so does the order of a write's entries, which no
/// reader relies on.
#[derive(Debug, Clone)]
pub(crate) struct ChangelogMap<K, V> {
    id: TableId,
    entries: Table<K, Logged<V>>,
    /// Keys listed as changed since the last write (each once while `listed` is set; one
    /// removed since may be here too, and is then left to `removed`).
    changed: Vec<K>,
    /// Keys removed since the last write (one removed, inserted and removed again twice,
    /// which only repeats a deletion).
    removed: Vec<K>,
}

/// A write walks the whole table, instead of looking up each changed key, when at least one
/// entry in this many changed: at a minute's close most of a table's keys change, and walking
/// its slots in memory order is several times cheaper per slot than a hashed lookup of a key
/// (a cache miss each, and string keys to hash and compare).
const WALK_WHEN_ONE_IN: usize = 8;

impl<K: Hash + Eq + Clone, V> ChangelogMap<K, V> {
    pub fn new(id: TableId) -> Self {
        ChangelogMap {
            id,
            entries: Table::default(),
            changed: Vec::new(),
            removed: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The tag of the table's changelog keys.
    pub fn tag(&self) -> u8 {
        self.id.tag
    }

    pub fn get(&self, k: &K) -> Option<&V> {
        self.entries.get(k).map(|l| &l.value)
    }

    pub fn contains_key(&self, k: &K) -> bool {
        self.entries.contains_key(k)
    }

    fn list(changed: &mut Vec<K>, k: &K, l: &mut Logged<V>) {
        if !l.listed {
            l.listed = true;
            changed.push(k.clone());
        }
    }

    /// The value of `k` to change: recorded as changed.
    pub fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        let l = self.entries.get_mut(k)?;
        Self::list(&mut self.changed, k, l);
        Some(&mut l.value)
    }

    /// Inserts `v` under `k`; the value it replaces.
    pub fn insert(&mut self, k: K, v: V) -> Option<V> {
        match self.entries.get_mut(&k) {
            Some(l) => {
                Self::list(&mut self.changed, &k, l);
                Some(std::mem::replace(&mut l.value, v))
            }
            None => {
                self.changed.push(k.clone());
                self.entries.insert_new(
                    k,
                    Logged {
                        value: v,
                        listed: true,
                    },
                );
                None
            }
        }
    }

    /// The value of `k`, one made by `make` when there is none; recorded as changed. The key
    /// is cloned only to be inserted or listed, not for a value already changed since the
    /// last write (most updates of a hot key).
    pub fn get_or_insert_with<Q>(&mut self, k: &Q, make: impl FnOnce() -> V) -> &mut V
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let (l, _) = self.entries.get_or_insert_with(k, || Logged {
            value: make(),
            listed: false,
        });
        if !l.listed {
            l.listed = true;
            self.changed.push(k.to_owned());
        }
        &mut l.value
    }

    /// Removes `k`; recorded (a deletion) when it was there.
    pub fn remove(&mut self, k: &K) -> Option<V> {
        let l = self.entries.remove(k)?;
        self.removed.push(k.clone());
        Some(l.value)
    }

    /// Removes the entries `keep` refuses; each removal is recorded.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &V) -> bool) {
        let removed = &mut self.removed;
        self.entries.retain(|k, l| {
            let kept = keep(k, &l.value);
            if !kept {
                removed.push(k.clone());
            }
            kept
        });
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.entries.iter().map(|(k, l)| (k, &l.value))
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.values().map(|l| &l.value)
    }

    /// Starts loading the slot of the key `q` stands for (see [`Table::prefetch_as`]).
    pub fn prefetch_as<Q: Hash + ?Sized>(&self, q: &Q) {
        self.entries.prefetch_as(q);
    }

    /// The key and value in the slot `k` most likely sits in, found without reading any slot
    /// (see [`Table::likely_slot`]), for prefetching the parts of the value that will be used
    /// (it may be another key's). Starts fetching the slot's change mark, which a change of
    /// the value reads.
    pub fn likely_slot(&self, k: &K) -> Option<(&K, &V)> {
        self.entries.likely_slot(k).map(|(k, l)| {
            banter_alloc::prefetch(&l.listed);
            (k, &l.value)
        })
    }

    /// Hands each change since the last call to `write` (the value, or None for a removed key)
    /// and forgets them. For keys that need context to encode; [`ChangelogMap::write_changes`]
    /// is the usual form.
    ///
    /// A key present now is written with its value, once; one removed and absent now is
    /// written as a deletion. The present ones come about in the order they were first listed,
    /// or in table order when so many changed that the whole table is walked
    /// ([`WALK_WHEN_ONE_IN`]; the walk reads every slot's control byte, so a table emptied by
    /// a large removal costs its capacity in bytes, not in lookups); no key has both a value
    /// and a deletion, so the order does not matter to a restore.
    pub fn drain_changes<E>(
        &mut self,
        mut write: impl FnMut(&K, Option<&V>) -> Result<(), E>,
    ) -> Result<(), E> {
        let changed = std::mem::take(&mut self.changed);
        if changed.len().saturating_mul(WALK_WHEN_ONE_IN) >= self.entries.len() {
            drop(changed);
            for (k, l) in self.entries.iter_mut() {
                if l.listed {
                    l.listed = false;
                    write(k, Some(&l.value))?;
                }
            }
        } else {
            for k in changed {
                if let Some(l) = self.entries.get_mut(&k) {
                    if l.listed {
                        l.listed = false;
                        write(&k, Some(&l.value))?;
                    }
                }
            }
        }
        for k in std::mem::take(&mut self.removed) {
            if !self.entries.contains_key(&k) {
                write(&k, None)?;
            }
        }
        Ok(())
    }

    /// Takes an entry back from the changelog: not a change.
    pub fn restore(&mut self, k: K, v: V) {
        self.entries.insert(
            k,
            Logged {
                value: v,
                listed: false,
            },
        );
    }

    /// Forgets the changes not yet written (after a restore: they are in the changelog).
    pub fn forget_changes(&mut self) {
        for k in std::mem::take(&mut self.changed) {
            if let Some(l) = self.entries.get_mut(&k) {
                l.listed = false;
            }
        }
        self.removed.clear();
    }
}

impl<K: Hash + Eq + Clone + StateKey, V: Serialize + DeserializeOwned> ChangelogMap<K, V> {
    /// The changes since the last call as changelog entries, appended to `out`.
    pub fn write_changes(&mut self, out: &mut Changes) -> Result<(), StateError> {
        let id = self.id;
        self.drain_changes(|k, v| out.push(id, |b| k.encode(b), v))
    }

    /// Takes one entry of this table back (the latest of its key).
    pub fn restore_entry(&mut self, entry: &Entry<'_>) -> Result<(), StateError> {
        self.restore_checked(entry, |_| Ok(()))
    }

    /// [`ChangelogMap::restore_entry`], refusing a value that `check` finds no operator
    /// writes (a time or offset out of range), with its reason.
    pub fn restore_checked(
        &mut self,
        entry: &Entry<'_>,
        check: impl FnOnce(&V) -> Result<(), String>,
    ) -> Result<(), StateError> {
        debug_assert_eq!(entry.tag(), self.id.tag);
        let k: K = entry.key()?;
        let v: V = entry.value()?;
        check(&v).map_err(|e| entry.error(e))?;
        self.restore(k, v);
        Ok(())
    }
}

/// One value of operator state (an operator's progress, say) that records its changes like
/// a [`ChangelogMap`]; its changelog key is its table's tag alone.
#[derive(Debug, Clone)]
pub(crate) struct ChangelogCell<V> {
    id: TableId,
    value: V,
    changed: bool,
}

impl<V: Serialize + DeserializeOwned> ChangelogCell<V> {
    pub fn new(id: TableId, value: V) -> Self {
        ChangelogCell {
            id,
            value,
            changed: false,
        }
    }

    pub fn get(&self) -> &V {
        &self.value
    }

    /// The value to change: recorded as changed.
    pub fn get_mut(&mut self) -> &mut V {
        self.changed = true;
        &mut self.value
    }

    /// The change since the last call, if any, as a changelog entry.
    pub fn write_changes(&mut self, out: &mut Changes) -> Result<(), StateError> {
        if std::mem::take(&mut self.changed) {
            out.push(self.id, |_| {}, Some(&self.value))?;
        }
        Ok(())
    }

    /// Takes the value back from the changelog, refusing one that `check` finds no operator
    /// writes (a time or offset out of range), with its reason.
    pub fn restore_checked(
        &mut self,
        entry: &Entry<'_>,
        check: impl FnOnce(&V) -> Result<(), String>,
    ) -> Result<(), StateError> {
        if entry.key.len() != 1 {
            return Err(entry.error("bad key: bytes after the tag"));
        }
        let v: V = entry.value()?;
        check(&v).map_err(|e| entry.error(e))?;
        self.value = v;
        Ok(())
    }

    /// Forgets the change not yet written.
    pub fn forget_changes(&mut self) {
        self.changed = false;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// A key held as `SmolStr` (the conversations' windows since 2026-12) is written as
        /// the same bytes as the `String` it replaced, so changelogs written before restore.
        #[test]
        fn smol_str_keys_are_string_keys(a in any::<String>(), b in any::<String>(), t in any::<i64>()) {
            let strings = encode_key(b'w', &(a.clone(), b.clone(), WindowKind::Day, t));
            let smol = (smol_str::SmolStr::from(&a), smol_str::SmolStr::from(&b), WindowKind::Day, t);
            prop_assert_eq!(&encode_key(b'w', &smol), &strings);
            prop_assert_eq!(
                decode_key::<(smol_str::SmolStr, smol_str::SmolStr, WindowKind, i64)>(&strings[1..]).unwrap(),
                smol
            );
        }
    }

    const T: TableId = TableId {
        tag: b'x',
        name: "test",
    };

    type Key = (String, WindowKind, i64);

    /// What a compacted changelog keeps: the latest value per key.
    fn apply(log: &mut BTreeMap<Vec<u8>, Vec<u8>>, changes: Changes) {
        for (_, c) in changes {
            match c.value {
                Some(v) => log.insert(c.key, v),
                None => log.remove(&c.key),
            };
        }
    }

    fn restored(log: &BTreeMap<Vec<u8>, Vec<u8>>) -> ChangelogMap<Key, Vec<i64>> {
        let mut m = ChangelogMap::new(T);
        for (k, v) in log {
            m.restore_entry(&Entry {
                store: Store::Funnels,
                key: k,
                value: v,
            })
            .unwrap();
        }
        m
    }

    fn contents(m: &ChangelogMap<Key, Vec<i64>>) -> BTreeMap<String, Vec<i64>> {
        m.iter()
            .map(|(k, v)| (format!("{k:?}"), v.clone()))
            .collect()
    }

    #[test]
    fn keys_with_any_characters_read_back_as_themselves() {
        for id in [
            "",
            "a",
            "a\u{1f}b",
            "a/b/c",
            "\u{0}\u{ff}é😀",
            &"x".repeat(300),
        ] {
            let k: Key = (id.to_owned(), WindowKind::Hour, -5);
            let bytes = encode_key(7, &k);
            assert_eq!(bytes[0], 7);
            assert_eq!(decode_key::<Key>(&bytes[1..]).unwrap(), k);
        }
        // Two ids that a separator would confuse stay apart.
        let a = encode_key(1, &("a\u{1f}b".to_owned(), "c".to_owned()));
        let b = encode_key(1, &("a".to_owned(), "b\u{1f}c".to_owned()));
        assert_ne!(a, b);
        assert!(decode_key::<(String, String)>(&a[1..a.len() - 1]).is_err());
        assert!(decode_key::<i64>(&[0; 9]).is_err(), "left over");
        assert!(decode_key::<WindowKind>(&[9]).is_err());
    }

    #[test]
    fn changes_are_recorded_once_per_key_and_removals_become_deletions() {
        let mut m: ChangelogMap<Key, Vec<i64>> = ChangelogMap::new(T);
        let k = |s: &str| (s.to_owned(), WindowKind::Day, 0);
        m.insert(k("a"), vec![1]);
        m.get_mut(&k("a")).unwrap().push(2);
        m.get_or_insert_with(&k("b"), Vec::new).push(3);
        let mut out = Changes::new();
        m.write_changes(&mut out).unwrap();
        assert_eq!(out.len(), 2, "{out:?}");
        out.clear();
        m.write_changes(&mut out).unwrap();
        assert!(out.is_empty(), "nothing changed since");
        assert_eq!(m.get(&k("a")), Some(&vec![1, 2]), "reading is not a change");
        m.remove(&k("a"));
        m.retain(|_, v| v[0] != 3);
        m.write_changes(&mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|(_, c)| c.value.is_none()));
        assert_eq!(m.len(), 0);
    }

    proptest! {
        /// Whatever the operations, the changelog as compaction leaves it restores exactly the
        /// map's contents, after every write, and a map restored from it part-way goes on
        /// writing what the original would. `others` keys written first make most writes look
        /// up the few keys changed since the last; with none, most walk the table.
        #[test]
        fn the_compacted_changelog_restores_the_map(
            others in 0usize..80,
            ops in prop::collection::vec((0u8..6, 0usize..6, any::<i64>()), 1..60),
            writes in prop::collection::vec(any::<bool>(), 60),
        ) {
            let ids = ["", "a", "a\u{1f}b", "b", "/", "é"];
            let mut m: ChangelogMap<Key, Vec<i64>> = ChangelogMap::new(T);
            let mut log = BTreeMap::new();
            for i in 0..others {
                m.insert((format!("other {i}"), WindowKind::Day, 0), vec![0]);
            }
            let mut out = Changes::new();
            m.write_changes(&mut out).unwrap();
            apply(&mut log, out);
            for (i, (op, id, v)) in ops.into_iter().enumerate() {
                let k: Key = (ids[id].to_owned(), WindowKind::Hour, v % 3);
                match op {
                    0 => { m.insert(k, vec![v]); }
                    1 => { if let Some(x) = m.get_mut(&k) { x.push(v); } }
                    2 => { m.remove(&k); }
                    3 => m.retain(|key, _| key.0 != ids[id]),
                    4 => m.get_or_insert_with(&k, Vec::new).push(v),
                    _ => {
                        // A restart: what was written is restored, the rest of the changes
                        // are lost with the process (a batch's changes and outputs go
                        // together), and the restored map goes on.
                        m = restored(&log);
                        m.forget_changes();
                    }
                }
                if writes[i] {
                    let mut out = Changes::new();
                    m.write_changes(&mut out).unwrap();
                    apply(&mut log, out);
                    prop_assert_eq!(contents(&restored(&log)), contents(&m));
                }
            }
            let mut out = Changes::new();
            m.write_changes(&mut out).unwrap();
            apply(&mut log, out);
            prop_assert_eq!(contents(&restored(&log)), contents(&m));
        }
    }

    #[test]
    fn unreadable_entries_name_store_table_and_key() {
        let mut m: ChangelogMap<Key, Vec<i64>> = ChangelogMap::new(T);
        let e = Entry {
            store: Store::Conversations,
            key: b"x\x03ab",
            value: b"[]",
        };
        let err = m.restore_entry(&e).unwrap_err().to_string();
        assert!(
            err.starts_with("conversations changelog entry x\\x03ab"),
            "{err}"
        );
        let good = encode_key(T.tag, &("a".to_owned(), WindowKind::Hour, 1));
        let e = Entry {
            store: Store::Conversations,
            key: &good,
            value: b"{",
        };
        assert!(m.restore_entry(&e).is_err());
        let mut c: ChangelogCell<i64> = ChangelogCell::new(T, 0);
        *c.get_mut() = 5;
        let mut out = Changes::new();
        c.write_changes(&mut out).unwrap();
        c.write_changes(&mut out).unwrap();
        assert_eq!(
            out.into_iter().collect::<Vec<_>>(),
            vec![(
                Store::Windows,
                Change {
                    key: vec![b'x'],
                    // 5 as a zigzag varint
                    value: Some(vec![BINARY_V1, 10])
                }
            )]
        );
    }

    /// Values are written binary after their marker and read back from that or from the JSON
    /// earlier versions wrote; a binary value cut short, with bytes left over or of another
    /// type is refused with what is wrong, as damaged JSON is.
    #[test]
    fn values_read_back_binary_or_as_json_and_damage_is_named() {
        type V = (Option<i64>, Vec<(i32, u64)>, String, bool, f64);
        let v: V = (
            Some(-3),
            vec![(-7, u64::MAX), (0, 1)],
            "é\u{1f}".into(),
            true,
            -0.5,
        );
        let mut out = Changes::new();
        out.push(T, |_| {}, Some(&v)).unwrap();
        let bytes = out.iter().next().unwrap().1.value.unwrap().to_vec();
        assert_eq!(bytes[0], BINARY_V1);
        assert!(bytes.len() < serde_json::to_vec(&v).unwrap().len());
        assert_eq!(decode_value::<V>(&bytes).unwrap(), v);
        let json = serde_json::to_vec(&v).unwrap();
        assert_eq!(decode_value::<V>(&json).unwrap(), v);
        let mut as_json = Changes::with_json_values();
        as_json.push(T, |_| {}, Some(&v)).unwrap();
        assert_eq!(as_json.iter().next().unwrap().1.value, Some(&json[..]));
        let short = decode_value::<V>(&bytes[..bytes.len() - 1]).unwrap_err();
        assert!(
            short.starts_with(&format!(
                "binary value of {} bytes after its marker does not read as (",
                bytes.len() - 2
            )),
            "{short}"
        );
        let mut long = bytes.clone();
        long.push(0);
        let left = decode_value::<V>(&long).unwrap_err();
        assert!(
            left.starts_with(&format!(
                "binary value of {} bytes after its marker: 1 left",
                long.len() - 1
            )),
            "{left}"
        );
        assert!(decode_value::<String>(&[BINARY_V1, 2, 0xff, 0xfe]).is_err());
        assert!(decode_value::<V>(b"{")
            .unwrap_err()
            .starts_with("JSON value: "));
        assert!(decode_value::<V>(&[]).is_err());
        let mut m: ChangelogMap<Key, Vec<i64>> = ChangelogMap::new(T);
        let good = encode_key(T.tag, &("a".to_owned(), WindowKind::Hour, 1));
        let err = m
            .restore_entry(&Entry {
                store: Store::Spikes,
                key: &good,
                value: &[BINARY_V1, 5, 1],
            })
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("spikes changelog entry x\\x01a\\x04")
                && err
                    .contains(": binary value of 2 bytes after its marker does not read as alloc::vec::Vec<i64>: "),
            "{err}"
        );
    }

    /// Entries written one after another into one buffer read back as each was written, with
    /// the store begun before it; a value that cannot be encoded leaves nothing behind, and a
    /// cleared buffer starts over.
    #[test]
    fn changes_share_one_buffer_and_read_back_entry_by_entry() {
        struct Refuses;
        impl Serialize for Refuses {
            fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(serde::ser::Error::custom("no"))
            }
        }
        let mut out = Changes::new();
        out.push(T, |b| "a".to_owned().encode(b), Some(&vec![1, 2]))
            .unwrap();
        out.begin(Store::Spikes);
        out.push(T, |b| 7i64.encode(b), None::<&i64>).unwrap();
        let err = out
            .push(T, |b| "zzz".to_owned().encode(b), Some(&Refuses))
            .unwrap_err();
        assert!(
            err.to_string().contains("cannot encode test state"),
            "{err}"
        );
        out.begin(Store::Conversations);
        out.push(T, |_| {}, Some("é\"")).unwrap();
        let got: Vec<(Store, ChangeRef<'_>)> = out.iter().collect();
        let seven = encode_key(b'x', &7i64);
        assert_eq!(
            got,
            [
                (
                    Store::Windows,
                    ChangeRef {
                        key: b"x\x01a",
                        // the length, then 1 and 2 as zigzag varints
                        value: Some(&[BINARY_V1, 2, 2, 4])
                    }
                ),
                (
                    Store::Spikes,
                    ChangeRef {
                        key: &seven,
                        value: None
                    }
                ),
                (
                    Store::Conversations,
                    ChangeRef {
                        key: b"x",
                        value: Some(&[BINARY_V1, 3, 0xc3, 0xa9, b'"'])
                    }
                ),
            ]
        );
        assert_eq!(out.len(), 3);
        out.clear();
        assert!(out.is_empty());
        out.push(T, |b| "b".to_owned().encode(b), Some(&1)).unwrap();
        assert_eq!(
            out.iter().collect::<Vec<_>>(),
            [(
                Store::Conversations,
                ChangeRef {
                    key: b"x\x01b",
                    value: Some(&[BINARY_V1, 2])
                }
            )]
        );
    }
}
