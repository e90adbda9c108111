//! A uniform sample of the ids a scan of a segment goes through, drawn
//! during the scan: the `n` ids whose keyed hash is smallest (a bottom-n
//! sketch). Every id has the same chance whatever its place in the order
//! or the number of rows, so the scan need not know that number first, and
//! the sample holds at most `n` ids.

use std::collections::BinaryHeap;

/// The ids kept so far, and how many rows were offered.
#[derive(Debug, Clone)]
pub struct Sample {
    seed: u64,
    n: usize,
    /// A max-heap on the key: its top is the first to go.
    kept: BinaryHeap<(u64, String)>,
    seen: u64,
}

impl Sample {
    /// A sample of at most `n` ids; `seed` picks which.
    pub fn new(seed: u64, n: usize) -> Self {
        Sample {
            seed,
            n,
            kept: BinaryHeap::with_capacity(n.min(4096) + 1),
            seen: 0,
        }
    }

    /// One row of the scan: `id`, and its [`super::id_hash`].
    pub fn offer(&mut self, id: &str, id_hash: u64) {
        self.seen += 1;
        if self.n == 0 {
            return;
        }
        let key = mix(id_hash ^ self.seed);
        if self.kept.len() < self.n {
            self.kept.push((key, id.to_string()));
        } else if self.kept.peek().is_some_and(|(top, _)| key < *top) {
            self.kept.pop();
            self.kept.push((key, id.to_string()));
        }
    }

    /// Rows offered: the number of ids the sample was drawn from.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// The sampled ids, in id order.
    pub fn into_ids(self) -> Vec<String> {
        let mut ids: Vec<String> = self.kept.into_iter().map(|(_, id)| id).collect();
        ids.sort_unstable();
        ids
    }
}

impl PartialEq for Sample {
    fn eq(&self, other: &Self) -> bool {
        let ids = |s: &Sample| {
            let mut v: Vec<(u64, String)> = s.kept.iter().cloned().collect();
            v.sort_unstable();
            v
        };
        (self.seed, self.n, self.seen) == (other.seed, other.n, other.seen)
            && ids(self) == ids(other)
    }
}

impl Eq for Sample {}

/// SplitMix64's output function: a bijection of `u64` that spreads nearby
/// inputs over the whole range.
pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::super::id_hash;
    use super::*;

    fn draw(ids: &[String], seed: u64, n: usize) -> Sample {
        let mut s = Sample::new(seed, n);
        for id in ids {
            s.offer(id, id_hash(id));
        }
        s
    }

    #[test]
    fn keeps_the_ids_with_the_smallest_keys_whatever_the_order() {
        let ids: Vec<String> = (0..5_000).map(|i| format!("id-{i}")).collect();
        let s = draw(&ids, 7, 50);
        assert_eq!(s.seen(), 5_000);
        let mut by_key: Vec<(u64, &String)> =
            ids.iter().map(|id| (mix(id_hash(id) ^ 7), id)).collect();
        by_key.sort_unstable();
        let mut want: Vec<String> = by_key[..50].iter().map(|(_, id)| (*id).clone()).collect();
        want.sort_unstable();
        let drawn = s.into_ids();
        assert_eq!(drawn, want);
        let mut reversed: Vec<String> = ids.clone();
        reversed.reverse();
        assert_eq!(draw(&reversed, 7, 50).into_ids(), drawn);
        assert_ne!(
            draw(&ids, 8, 50).into_ids(),
            drawn,
            "another seed, another sample"
        );
    }

    #[test]
    fn every_part_of_the_order_is_drawn_from() {
        // 100 draws of 100 from 100,000 ids: each tenth of the id order
        // holds about a tenth of them.
        let ids: Vec<String> = (0..100_000).map(|i| format!("rec-{i:07}")).collect();
        let mut per_tenth = [0u32; 10];
        for seed in 0..100 {
            for id in draw(&ids, seed, 100).into_ids() {
                let i: usize = id[4..].parse().expect("should succeed");
                per_tenth[i / 10_000] += 1;
            }
        }
        for n in per_tenth {
            assert!((850..=1150).contains(&n), "{per_tenth:?}");
        }
    }

    #[test]
    fn fewer_rows_than_asked_are_all_kept() {
        let ids: Vec<String> = (0..7).map(|i| i.to_string()).collect();
        assert_eq!(draw(&ids, 1, 100).into_ids().len(), 7);
        assert!(draw(&ids, 1, 0).into_ids().is_empty());
        assert_eq!(draw(&ids, 1, 0).seen(), 7);
    }
}
