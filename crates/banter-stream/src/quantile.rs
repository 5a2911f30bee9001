//! Quantiles of durations: a mergeable log-bucket sketch (the DDSketch idea, Masson et al.
//! 2019). A value x > 0 goes to bucket ⌈log_γ x⌉ with γ = (1 + α) / (1 − α); every bucket's
//! values are within a relative α of its representative 2γ^i / (γ + 1), so any quantile is
//! returned within a **relative error of α = 1 %** of a value of the right rank. Values below
//! [`MIN`] (0.01 s) count in a zero bucket. Sketches merge by adding bucket counts and support
//! removal (a late correction takes a value back out); a week of seconds spans ~800 buckets at
//! most, typically a few dozen.
//!
//! The buckets are a sorted vector (16 bytes a bucket, one heap block growing with them), not a
//! B-tree (a node of about 150 bytes however few it holds): the conversation operator keeps two
//! sketches per window for a day and more, most of them with a handful of buckets. Written as
//! the map they were before, so a changelog reads the same either way.

use std::collections::BTreeMap;

use banter_model::{SketchBucket, ZERO_BUCKET};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Relative accuracy.
pub const ALPHA: f64 = 0.01;
/// Smallest value told apart from zero.
pub const MIN: f64 = 0.01;

fn gamma() -> f64 {
    (1.0 + ALPHA) / (1.0 - ALPHA)
}

/// A mergeable quantile sketch of non-negative values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quantiles {
    /// Values below [`MIN`].
    #[serde(default)]
    zero: u64,
    /// (bucket index, count), sorted by index, one entry per index, no zero counts.
    #[serde(default)]
    buckets: Buckets,
}

/// Sorted (bucket index, count) pairs, serialized as a map of index to count.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Buckets(Vec<(i32, u64)>);

impl Buckets {
    /// Where bucket `b` is (Ok) or would go (Err).
    fn find(&self, b: i32) -> Result<usize, usize> {
        self.0.binary_search_by_key(&b, |e| e.0)
    }

    /// The count of bucket `b`, inserted as 0 when absent.
    fn entry(&mut self, b: i32) -> &mut u64 {
        let i = self.find(b).unwrap_or_else(|i| {
            self.0.insert(i, (b, 0));
            i
        });
        &mut self.0[i].1
    }

    /// One value less in bucket `b`, which goes when it empties; nothing when absent.
    fn take_one(&mut self, b: i32) {
        if let Ok(i) = self.find(b) {
            self.0[i].1 -= 1;
            if self.0[i].1 == 0 {
                self.0.remove(i);
            }
        }
    }
}

impl Serialize for Buckets {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(b, n)| (b, n)))
    }
}

impl<'de> Deserialize<'de> for Buckets {
    /// Through a map: whatever order and repetition the input has, the pairs come out sorted
    /// with one count per index (the last one given, as a map reads it), and a zero count
    /// (never written; a damaged changelog) leaves its bucket out.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        BTreeMap::<i32, u64>::deserialize(d)
            .map(|m| Buckets(m.into_iter().filter(|&(_, n)| n > 0).collect()))
    }
}

fn bucket(x: f64) -> i32 {
    (x.ln() / gamma().ln()).ceil() as i32
}

impl Quantiles {
    /// Adds a value (negative values count as zero).
    pub fn add(&mut self, x: f64) {
        // Saturating: counts restored from a damaged changelog may be anything.
        if x.is_nan() || x < MIN {
            self.zero = self.zero.saturating_add(1);
        } else {
            let n = self.buckets.entry(bucket(x));
            *n = n.saturating_add(1);
        }
    }

    /// Takes back a value added before.
    pub fn remove(&mut self, x: f64) {
        if x.is_nan() || x < MIN {
            self.zero = self.zero.saturating_sub(1);
        } else {
            self.buckets.take_one(bucket(x));
        }
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Quantiles) {
        self.zero = self.zero.saturating_add(other.zero);
        for &(b, n) in &other.buckets.0 {
            let c = self.buckets.entry(b);
            *c = c.saturating_add(n);
        }
    }

    /// Values held.
    pub fn count(&self) -> u64 {
        (self.buckets.0.iter()).fold(self.zero, |sum, e| sum.saturating_add(e.1))
    }

    /// The q-quantile (0 ≤ q ≤ 1, nearest rank), None when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        // Nearest rank: the ⌈q·n⌉-th smallest value (1-based), at least the first.
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as u64).max(1);
        if rank <= self.zero {
            return Some(0.0);
        }
        let mut seen = self.zero;
        let g = gamma();
        for &(b, c) in &self.buckets.0 {
            seen = seen.saturating_add(c);
            if seen >= rank {
                return Some(2.0 * g.powi(b) / (g + 1.0));
            }
        }
        None
    }

    /// Nothing held.
    pub fn is_empty(&self) -> bool {
        self.count() == 0
    }

    /// The buckets, as rows carry them for merging elsewhere (the zero bucket first, then by
    /// index; empty buckets left out).
    pub fn to_buckets(&self) -> Vec<SketchBucket> {
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        (self.zero > 0)
            .then(|| SketchBucket {
                bucket: ZERO_BUCKET,
                count: count(self.zero),
            })
            .into_iter()
            .chain(self.buckets.0.iter().map(|&(b, n)| SketchBucket {
                bucket: b,
                count: count(n),
            }))
            .collect()
    }

    /// A sketch from buckets written by [`Quantiles::to_buckets`] (negative counts ignored).
    pub fn from_buckets(buckets: &[SketchBucket]) -> Self {
        let mut q = Quantiles::default();
        for b in buckets {
            let n = u64::try_from(b.count).unwrap_or(0);
            if n == 0 {
                continue;
            }
            if b.bucket == ZERO_BUCKET {
                q.zero = q.zero.saturating_add(n);
            } else {
                let c = q.buckets.entry(b.bucket);
                *c = c.saturating_add(n);
            }
        }
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_one_percent_of_the_exact_ones() {
        let mut s = Quantiles::default();
        let mut exact: Vec<f64> = Vec::new();
        let mut x = 0.37f64;
        for i in 0..10_000 {
            // A spread from under a second to days.
            x = (x * 7919.0 + i as f64).rem_euclid(1000.0);
            let v = (x / 1000.0).powi(4) * 300_000.0 + 0.5;
            s.add(v);
            exact.push(v);
        }
        exact.sort_by(f64::total_cmp);
        for q in [0.01, 0.1, 0.5, 0.9, 0.99, 1.0] {
            let want = exact[((q * exact.len() as f64).ceil() as usize).max(1) - 1];
            let got = s.quantile(q).unwrap();
            assert!(
                (got - want).abs() <= ALPHA * want + 1e-9,
                "q {q}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn buckets_carried_by_rows_merge_to_the_merged_sketch() {
        let (mut a, mut b, mut both) = (
            Quantiles::default(),
            Quantiles::default(),
            Quantiles::default(),
        );
        for (i, v) in [0.0, 0.004, 1.0, 2.5, 60.0, 61.0, 3600.0, 86_400.0]
            .iter()
            .enumerate()
        {
            if i % 2 == 0 {
                a.add(*v)
            } else {
                b.add(*v)
            }
            both.add(*v);
        }
        let mut merged = a.to_buckets();
        merged.extend(b.to_buckets());
        let back = Quantiles::from_buckets(&merged);
        assert_eq!(back, both);
        assert_eq!(a.to_buckets()[0].bucket, ZERO_BUCKET);
        for q in [0.1, 0.5, 0.9, 1.0] {
            assert_eq!(back.quantile(q), both.quantile(q));
        }
    }

    #[test]
    fn written_as_a_map_of_bucket_to_count() {
        // 0.001 s is below MIN; 1 s is bucket 0; 2 s is ⌈ln 2 / ln γ⌉ = ⌈34.66⌉ = 35; 0.5 s
        // is ⌈−34.66⌉ = −34.
        let mut s = Quantiles::default();
        for v in [2.0, 0.001, 1.0, 0.5, 2.0] {
            s.add(v);
        }
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, r#"{"zero":1,"buckets":{"-34":1,"0":1,"35":2}}"#);
        let back: Quantiles = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        // Any order and repetition reads back sorted, the last count of an index kept; the
        // fields may be missing.
        let read: Quantiles =
            serde_json::from_str(r#"{"buckets":{"35":7,"-34":1,"0":1,"35":2}}"#).unwrap();
        assert_eq!(read.count(), 4);
        assert_eq!(read.to_buckets(), {
            s.zero = 0;
            s.to_buckets()
        });
        let empty: Quantiles = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, Quantiles::default());
    }

    /// The form the sketch had when its buckets were a B-tree: what older changelogs hold.
    #[derive(Serialize)]
    struct AsBTree {
        zero: u64,
        buckets: BTreeMap<i32, u64>,
    }

    #[test]
    fn written_byte_for_byte_as_the_b_tree_was() {
        let mut s = Quantiles::default();
        let mut old = AsBTree {
            zero: 0,
            buckets: BTreeMap::new(),
        };
        let mut x = 0.37f64;
        for i in 0..2_000 {
            x = (x * 7919.0 + i as f64).rem_euclid(1000.0);
            let v = (x / 1000.0).powi(6) * 1_000_000.0;
            s.add(v);
            if v < MIN {
                old.zero += 1;
            } else {
                *old.buckets.entry(bucket(v)).or_default() += 1;
            }
            if i % 7 == 3 {
                // Take one back now and then, so buckets also empty out.
                s.remove(v);
                if v < MIN {
                    old.zero -= 1;
                } else {
                    let n = old.buckets.get_mut(&bucket(v)).unwrap();
                    *n -= 1;
                    if *n == 0 {
                        old.buckets.remove(&bucket(v));
                    }
                }
            }
            if i % 97 == 0 {
                let json = serde_json::to_string(&s).unwrap();
                assert_eq!(json, serde_json::to_string(&old).unwrap());
                assert_eq!(serde_json::from_str::<Quantiles>(&json).unwrap(), s);
            }
        }
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            serde_json::to_string(&old).unwrap()
        );
    }

    #[test]
    fn merge_and_remove() {
        let (mut a, mut b) = (Quantiles::default(), Quantiles::default());
        for v in [1.0, 2.0, 3.0] {
            a.add(v);
        }
        for v in [100.0, 200.0] {
            b.add(v);
        }
        a.merge(&b);
        assert_eq!(a.count(), 5);
        let m = a.quantile(0.5).unwrap();
        assert!((m - 3.0).abs() <= 0.03, "{m}");
        a.remove(100.0);
        a.remove(200.0);
        a.remove(3.0);
        let m = a.quantile(0.5).unwrap();
        assert!((m - 1.0).abs() <= 0.01, "{m}");
        a.add(0.0);
        a.remove(0.0);
        assert_eq!(a.count(), 2);
        assert_eq!(Quantiles::default().quantile(0.5), None);
    }

    #[test]
    fn damaged_counts_restore_without_overflow() {
        // 2.0 is in bucket ⌈ln 2 / ln γ⌉ = ⌈34.66⌉ = 35 (γ = 1.01 / 0.99). A zero count is
        // never written: it reads as no bucket, and taking 2.0 out of it takes nothing.
        assert_eq!(bucket(2.0), 35);
        let mut q: Quantiles = serde_json::from_str(r#"{"zero":0,"buckets":{"35":0}}"#).unwrap();
        assert_eq!(q, Quantiles::default());
        q.remove(2.0);
        assert!(q.is_empty());
        // Counts at u64's end saturate instead of wrapping.
        let max = u64::MAX;
        let json = format!(r#"{{"zero":{max},"buckets":{{"35":{max}}}}}"#);
        let mut q: Quantiles = serde_json::from_str(&json).unwrap();
        q.add(0.0);
        q.add(2.0);
        q.merge(&q.clone());
        assert_eq!(q.count(), max);
        assert_eq!(q.quantile(1.0), Some(0.0));
    }
}
