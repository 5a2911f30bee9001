//! Hash maps with a random seed per map, and [`Table`], one that can also start fetching a
//! key's slot without waiting for it: the window engine's large per-event tables are read
//! ahead for a batch of events.
//!
//! The keys come from the input (post, actor, campaign and click ids): with a seed anyone can
//! know, ids crafted to collide would make every lookup walk one long probe sequence (hash
//! flooding). Iteration order therefore differs between maps and processes; what is emitted
//! does not depend on it, only the order of rows within one batch does, which readers do not
//! rely on (each row carries its key and revision).

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};

/// Hash maps with a random seed.
pub(crate) type Map<K, V> = hashbrown::HashMap<K, V, foldhash::fast::RandomState>;
/// Hash sets with a random seed.
pub(crate) type Set<K> = hashbrown::HashSet<K, foldhash::fast::RandomState>;

/// How many entries ahead a walk over a list of keys fetches the slot it will read (the
/// spike detector's judged keys, the pending windows' emission): enough for a miss to land
/// before its entry is reached.
pub(crate) const FETCH_AHEAD: usize = 8;

/// Starts loading the slot of `table` an entry of hash `h` most likely sits in (see
/// [`Table::likely_slot`]) and returns at once.
pub(crate) fn prefetch_slot<T>(table: &hashbrown::HashTable<T>, h: u64) {
    if let Some(slot) = table.find(h, |_| true) {
        banter_alloc::prefetch(slot);
    }
}

/// A hash map with a random seed, like [`Map`], that can also start fetching the slot of a key
/// without waiting for it ([`Table::prefetch`]).
#[derive(Debug, Clone)]
pub(crate) struct Table<K, V> {
    entries: hashbrown::HashTable<(K, V)>,
    hasher: foldhash::fast::RandomState,
}

impl<K, V> Default for Table<K, V> {
    fn default() -> Self {
        Table {
            entries: hashbrown::HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }
}

impl<K: Hash + Eq, V> Table<K, V> {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Table {
            entries: hashbrown::HashTable::with_capacity(n),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    fn hash(&self, k: &K) -> u64 {
        self.hasher.hash_one(k)
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many entries fit without growing.
    pub(crate) fn capacity(&self) -> usize {
        self.entries.capacity()
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
        debug_assert!(!self.contains_key(&k), "insert_new of a key already there");
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

    /// The value of `k`, one made by `make` inserted when there is none; whether it was
    /// inserted. The key is borrowed and cloned only to be inserted (a key found costs no
    /// clone, and no reference count touched for shared strings).
    pub(crate) fn get_or_insert_with<Q>(
        &mut self,
        k: &Q,
        make: impl FnOnce() -> V,
    ) -> (&mut V, bool)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let h = self.hasher.hash_one(k);
        let hasher = &self.hasher;
        match self
            .entries
            .entry(h, |(x, _)| x.borrow() == k, |(x, _)| hasher.hash_one(x))
        {
            hashbrown::hash_table::Entry::Occupied(e) => (&mut e.into_mut().1, false),
            hashbrown::hash_table::Entry::Vacant(e) => {
                (&mut e.insert((k.to_owned(), make())).into_mut().1, true)
            }
        }
    }

    /// The value of `k`, a default one inserted when there is none.
    pub(crate) fn entry_or_default(&mut self, k: K) -> &mut V
    where
        K: Clone,
        V: Default,
    {
        self.get_or_insert_with(&k, V::default).0
    }

    /// Removes every entry, keeping the room.
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }

    /// Keeps the entries `keep` says to keep.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        self.entries.retain(|(k, v)| keep(k, v));
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.into_iter()
    }

    /// Every entry in table order, the values to change.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (&K, &mut V)> {
        self.entries.iter_mut().map(|(k, v)| (&*k, v))
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

    /// Starts loading every cache line of the slot the key `q` stands for most likely sits
    /// in, and returns at once. `q` is the key or a borrowed form of it whose `Hash` writes
    /// the same (`(&str, &str)` for `(SmolStr, SmolStr)`: a `SmolStr` hashes as its `str`);
    /// a form that hashed otherwise would only fetch some other slot.
    pub(crate) fn prefetch_as<Q: Hash + ?Sized>(&self, q: &Q) {
        if let Some(slot) = self.entries.find(self.hasher.hash_one(q), |_| true) {
            banter_alloc::prefetch_all(slot);
        }
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
        assert!(!t.get_or_insert_with(&(7, 7), String::new).1);
        let (v, inserted) = t.get_or_insert_with(&(8, 8), || "z".to_owned());
        assert!(inserted);
        assert_eq!(v, "z");
        assert_eq!(t.remove(&(8, 8)).as_deref(), Some("z"));
        assert_eq!(t.get(&(7, 7)).map(String::as_str), Some("xy"));
        assert_eq!(t.iter().count(), 1_001);
        for (k, v) in t.iter_mut() {
            if k.0 == 12 {
                v.push('!');
            }
        }
        assert_eq!(t.get(&(12, -1)).map(String::as_str), Some("2!"));
        assert_eq!(t.keys().filter(|k| k.1 == -1).count(), 1_000);
        assert_eq!(t.values().map(String::len).sum::<usize>(), 2 + 2890 + 1);
        // Iteration follows the inserts only: two tables built alike iterate alike.
        let u = t.clone();
        assert!(t.iter().map(|(k, _)| *k).eq(u.iter().map(|(k, _)| *k)));
        t.retain(|k, _| k.0 % 2 == 0);
        assert_eq!(t.len(), 500);
    }

    /// [`Table::prefetch_as`] is given borrowed forms of `SmolStr` keys (the conversations'
    /// items, threads and windows): they must hash as the keys do, or the prefetch fetches
    /// another slot.
    #[test]
    fn borrowed_forms_of_smol_str_keys_hash_as_the_keys() {
        use banter_model::{SmolStr, WindowKind};
        let t: Table<(SmolStr, SmolStr, WindowKind, i64), ()> = Table::default();
        let long = "a post id longer than the twenty-three inline bytes";
        for (a, c) in [("acct", ""), ("acct", "post"), ("acct", long)] {
            let key = (SmolStr::from(a), SmolStr::from(c), WindowKind::Day, 7i64);
            assert_eq!(
                t.hasher.hash_one(&key),
                t.hasher.hash_one((a, c, WindowKind::Day, 7i64))
            );
            assert_eq!(t.hasher.hash_one(&key.1), t.hasher.hash_one(c));
            assert_eq!(
                t.hasher.hash_one(&(key.0.clone(), key.1.clone())),
                t.hasher.hash_one((a, c))
            );
        }
    }
}
