//! Distinct counting of engagers: a HyperLogLog that starts exact.
//!
//! * Up to [`SPARSE_MAX`] distinct actors the sketch keeps their 64-bit hashes and the count is
//!   exact (most post-minutes have a handful of engagers).
//! * Beyond that it switches to 2⁹ = 512 one-byte registers (HyperLogLog, Flajolet et al.
//!   2007, with linear counting for small cardinalities): relative standard error
//!   1.04/√512 ≈ **4.6 %**, 512 bytes, whatever the cardinality.
//! * Sketches merge (union) without loss, so windows made of several panes could carry
//!   engagers (VELOCITY_5M rows carry none: DESIGN.md counts engagers per minute and per
//!   first hour).
//!
//! Actor ids are hashed with a fixed seed, so the sketch is deterministic: a replay after a
//! restore gives the same estimates, and sketches stored in changelogs merge with new ones.
//! A known seed is no flooding risk here: the hashes index 512 registers, not a hash table.
//! Crafted ids move one register each, as many real distinct actors would.

use std::hash::BuildHasher;

/// Exact below this many distinct hashes.
pub const SPARSE_MAX: usize = 32;
const P: u32 = 9;
const M: usize = 1 << P;

/// A mergeable distinct-count sketch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sketch(Repr);

/// Up to this many hashes live inline, without an allocation: most post-minutes have one or
/// two engagers.
const INLINE: usize = 2;

/// Each cardinality has exactly one representation, so equal sets compare equal.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Repr {
    /// Up to [`INLINE`] sorted distinct hashes (the first `len`).
    Inline(u8, [u64; INLINE]),
    /// More than [`INLINE`], up to [`SPARSE_MAX`] sorted distinct hashes.
    Sparse(Vec<u64>),
    Dense(Box<[u8; M]>),
}

/// A sketch as stored in a changelog: the sorted hashes, or the 512 registers.
#[derive(serde::Serialize, serde::Deserialize)]
enum Stored {
    Sparse(Vec<u64>),
    Dense(Vec<u8>),
}

impl serde::Serialize for Sketch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Repr::Dense(d) => Stored::Dense(d.to_vec()),
            _ => Stored::Sparse(self.exact().unwrap_or_default().to_vec()),
        }
        .serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for Sketch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match Stored::deserialize(d)? {
            Stored::Sparse(mut v) => {
                v.sort_unstable();
                v.dedup();
                Sketch::from_sorted(v)
            }
            Stored::Dense(v) => {
                let regs: Box<[u8; M]> = v
                    .into_boxed_slice()
                    .try_into()
                    .map_err(|_| serde::de::Error::custom("a dense sketch has 512 registers"))?;
                Sketch(Repr::Dense(regs))
            }
        })
    }
}

impl Default for Repr {
    fn default() -> Self {
        Repr::Inline(0, [0; INLINE])
    }
}

/// The 64-bit hash of an actor id the sketch works on.
pub fn actor_hash(actor: &str) -> u64 {
    foldhash::quality::FixedState::with_seed(0x656e_6761_6765_7273).hash_one(actor)
}

fn register(dense: &mut [u8; M], h: u64) {
    let idx = (h >> (64 - P)) as usize;
    // The remaining bits, with a sentinel so the rank is at most 64 - P + 1.
    let w = (h << P) | (1 << (P - 1));
    let rank = (w.leading_zeros() + 1) as u8;
    if dense[idx] < rank {
        dense[idx] = rank;
    }
}

fn dense_of(hashes: &[u64]) -> Box<[u8; M]> {
    let mut d = Box::new([0u8; M]);
    for &h in hashes {
        register(&mut d, h);
    }
    d
}

impl Sketch {
    /// The sketch of sorted distinct hashes, in the representation of their count.
    fn from_sorted(v: Vec<u64>) -> Sketch {
        Sketch(if v.len() <= INLINE {
            let mut a = [0; INLINE];
            a[..v.len()].copy_from_slice(&v);
            Repr::Inline(v.len() as u8, a)
        } else if v.len() <= SPARSE_MAX {
            Repr::Sparse(v)
        } else {
            Repr::Dense(dense_of(&v))
        })
    }

    /// The sorted distinct hashes while the sketch is exact.
    fn exact(&self) -> Option<&[u64]> {
        match &self.0 {
            Repr::Inline(n, a) => Some(&a[..*n as usize]),
            Repr::Sparse(v) => Some(v),
            Repr::Dense(_) => None,
        }
    }

    /// Starts fetching the heap memory [`Sketch::insert`] will read: all of a sparse sketch's
    /// hashes (at most four cache lines), or the register of the hash `h` gives (called only
    /// for a dense sketch).
    pub(crate) fn prefetch(&self, h: impl FnOnce() -> Option<u64>) {
        match &self.0 {
            Repr::Inline(..) => {}
            Repr::Sparse(v) => {
                for line in v.chunks(8) {
                    banter_alloc::prefetch(&line[0]);
                }
            }
            Repr::Dense(d) => {
                if let Some(h) = h() {
                    banter_alloc::prefetch(&d[(h >> (64 - P)) as usize]);
                }
            }
        }
    }

    /// Adds one actor (by [`actor_hash`]).
    pub fn insert(&mut self, h: u64) {
        match &mut self.0 {
            Repr::Inline(n, a) => {
                let len = *n as usize;
                let Err(i) = a[..len].binary_search(&h) else {
                    return;
                };
                if len < INLINE {
                    a.copy_within(i..len, i + 1);
                    a[i] = h;
                    *n += 1;
                } else {
                    let mut v = Vec::with_capacity(2 * INLINE + 2);
                    v.extend_from_slice(&a[..i]);
                    v.push(h);
                    v.extend_from_slice(&a[i..]);
                    self.0 = Repr::Sparse(v);
                }
            }
            Repr::Sparse(v) => {
                if let Err(i) = v.binary_search(&h) {
                    v.insert(i, h);
                    if v.len() > SPARSE_MAX {
                        self.0 = Repr::Dense(dense_of(v));
                    }
                }
            }
            Repr::Dense(d) => register(d, h),
        }
    }

    /// Union with `other`.
    pub fn merge(&mut self, other: &Sketch) {
        if other.exact().is_some_and(<[u64]>::is_empty) {
            return;
        }
        if self.exact().is_some_and(<[u64]>::is_empty) {
            self.clone_from(other);
            return;
        }
        match (&mut self.0, other.exact()) {
            (Repr::Dense(d), Some(o)) => {
                for &h in o {
                    register(d, h);
                }
            }
            (Repr::Dense(d), None) => {
                if let Repr::Dense(o) = &other.0 {
                    for (a, b) in d.iter_mut().zip(o.iter()) {
                        *a = (*a).max(*b);
                    }
                }
            }
            (Repr::Sparse(_), Some(o)) => {
                for &h in o {
                    self.insert(h);
                }
            }
            (_, Some(o)) => {
                // Inline with exact: a merge of two sorted lists.
                let Some(mine) = self.exact() else { return };
                let mut v = Vec::with_capacity(mine.len() + o.len());
                let (mut i, mut j) = (0, 0);
                while i < mine.len() && j < o.len() {
                    let (a, b) = (mine[i], o[j]);
                    v.push(a.min(b));
                    i += usize::from(a <= b);
                    j += usize::from(b <= a);
                }
                v.extend_from_slice(&mine[i..]);
                v.extend_from_slice(&o[j..]);
                *self = Sketch::from_sorted(v);
            }
            (_, None) => {
                let mine = self.exact().map(dense_of);
                if let Some(d) = mine {
                    self.0 = Repr::Dense(d);
                    self.merge(other);
                }
            }
        }
    }

    /// Distinct actors: exact while sparse, else the HyperLogLog estimate.
    pub fn estimate(&self) -> i64 {
        match &self.0 {
            Repr::Inline(n, _) => i64::from(*n),
            Repr::Sparse(v) => v.len() as i64,
            Repr::Dense(d) => {
                let m = M as f64;
                let alpha = 0.7213 / (1.0 + 1.079 / m);
                // 2^-r exactly, from the exponent bits (r <= 64 - P + 1).
                let sum: f64 = d
                    .iter()
                    .map(|&r| f64::from_bits((1023 - u64::from(r)) << 52))
                    .sum();
                let raw = alpha * m * m / sum;
                let zeros = d.iter().filter(|&&r| r == 0).count();
                let e = if raw <= 2.5 * m && zeros > 0 {
                    m * (m / zeros as f64).ln()
                } else {
                    raw
                };
                e.round() as i64
            }
        }
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        match &self.0 {
            Repr::Inline(..) => 0,
            Repr::Sparse(v) => v.capacity() * 8,
            Repr::Dense(_) => M,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sketch(range: std::ops::Range<u64>) -> Sketch {
        let mut s = Sketch::default();
        for i in range {
            s.insert(actor_hash(&format!("actor-{i}")));
        }
        s
    }

    #[test]
    fn exact_while_small_and_idempotent() {
        let mut s = sketch(0..SPARSE_MAX as u64);
        assert_eq!(s.estimate(), SPARSE_MAX as i64);
        for i in 0..SPARSE_MAX as u64 {
            s.insert(actor_hash(&format!("actor-{i}")));
        }
        assert_eq!(s.estimate(), SPARSE_MAX as i64);
        assert_eq!(Sketch::default().estimate(), 0);
    }

    #[test]
    fn error_stays_within_three_standard_errors() {
        for n in [33u64, 100, 1_000, 10_000, 100_000, 1_000_000] {
            let e = sketch(0..n).estimate() as f64;
            let rel = (e - n as f64).abs() / n as f64;
            assert!(
                rel < 3.0 * 0.046,
                "{n} distinct estimated {e} ({:.1} %)",
                rel * 100.0
            );
        }
    }

    #[test]
    fn every_size_has_one_representation() {
        // Inserting one by one, merging and a changelog round trip give equal sketches.
        for n in [0u64, 1, 2, 3, 5, 32, 33, 200] {
            let one = sketch(0..n);
            let mut merged = sketch(0..n / 2);
            merged.merge(&sketch(n / 3..n));
            assert_eq!(merged, one, "{n}");
            let json = serde_json::to_vec(&one).unwrap();
            assert_eq!(serde_json::from_slice::<Sketch>(&json).unwrap(), one, "{n}");
            if n <= SPARSE_MAX as u64 {
                assert_eq!(one.estimate(), n as i64);
            }
        }
    }

    #[test]
    fn merge_is_union() {
        let (a, b) = (sketch(0..20), sketch(10..30));
        let mut u = a.clone();
        u.merge(&b);
        assert_eq!(u.estimate(), 30);
        // Dense with sparse, both ways, equals the sketch of the union.
        let (big, small) = (sketch(0..5_000), sketch(4_990..5_010));
        let mut x = big.clone();
        x.merge(&small);
        let mut y = small.clone();
        y.merge(&big);
        assert_eq!(x, sketch(0..5_010));
        assert_eq!(y, x);
    }
}
