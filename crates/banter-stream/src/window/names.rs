//! Account and post names, interned while some window state refers to them: the engine's
//! keys are integers.

use std::hash::BuildHasher;

use banter_model::SmolStr;

use crate::table::prefetch_slot;

/// (account, content) as interned name ids: account in the high 32 bits, content + 1 in the low
/// ones (0: the account-level key). Hashing and comparing keys costs an integer.
pub(super) type Key = u64;

pub(super) fn key(account: u32, content: Option<u32>) -> Key {
    (u64::from(account) << 32) | content.map_or(0, |c| u64::from(c) + 1)
}

/// Account and post names, interned while some state refers to them. Each pane entry and each
/// post holds a reference to its names; a name nobody refers to is forgotten.
#[derive(Debug, Clone, Default)]
pub(super) struct Names {
    /// Name -> id, hashed with `hasher`. Names up to 23 bytes (account and post ids mostly are)
    /// are held in the table itself: finding one reads no other memory.
    pub(super) ids: hashbrown::HashTable<(SmolStr, u32)>,
    hasher: foldhash::fast::RandomState,
    /// By id. Rows carry copies: inline, or shared when longer; either way no allocation and no
    /// string copy per row.
    pub(super) names: Vec<SmolStr>,
    refs: Vec<u32>,
    free: Vec<u32>,
}

impl Names {
    /// The id of `name`, if it is interned.
    pub(super) fn lookup(&self, name: &str) -> Option<u32> {
        let h = self.hasher.hash_one(name.as_bytes());
        self.ids
            .find(h, |(k, _)| k.as_str() == name)
            .map(|&(_, id)| id)
    }

    /// Starts fetching the table slot `name` is most likely in (see [`Engine::prefetch`]).
    pub(super) fn prefetch(&self, name: &str) {
        prefetch_slot(&self.ids, self.hasher.hash_one(name.as_bytes()));
    }

    /// The id of `name`, interning it (with no reference yet) when new.
    pub(super) fn intern(&mut self, name: &str) -> u32 {
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

    pub(super) fn retain(&mut self, id: u32) {
        self.refs[id as usize] += 1;
    }

    pub(super) fn release(&mut self, id: u32) {
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

    pub(super) fn retain_key(&mut self, k: Key) {
        self.retain((k >> 32) as u32);
        if k & 0xffff_ffff != 0 {
            self.retain(((k & 0xffff_ffff) - 1) as u32);
        }
    }

    pub(super) fn release_key(&mut self, k: Key) {
        self.release((k >> 32) as u32);
        if k & 0xffff_ffff != 0 {
            self.release(((k & 0xffff_ffff) - 1) as u32);
        }
    }

    pub(super) fn account(&self, k: Key) -> SmolStr {
        self.names[(k >> 32) as usize].clone()
    }

    pub(super) fn content(&self, k: Key) -> Option<SmolStr> {
        match k & 0xffff_ffff {
            0 => None,
            c => Some(self.names[(c - 1) as usize].clone()),
        }
    }

    pub(super) fn heap_bytes(&self) -> usize {
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
