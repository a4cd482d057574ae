//! Deterministic batch order and per-step seeds.
//!
//! The examples of step `s` are a pure function of (seed, s): the training stream is
//! the concatenation of seeded per-epoch permutations, and step `s` takes positions
//! `s·B .. (s+1)·B` of it. Every random draw inside a step (dropout, SPSA directions) is
//! seeded from (seed, s) too. A shard resumed at step `s` from a checkpoint therefore
//! sees exactly the batches and noise the uninterrupted run would have seen.

use std::collections::HashMap;

use qsched_data::split::permutation;

/// Stream ids separating the uses of one seed.
pub mod stream {
    /// Training batch order (plus the epoch number).
    pub const BATCHES: u64 = 1_000;
    /// DiZO's own batch order for projection rounds (plus the round number).
    pub const DIZO: u64 = 1_000_000;
}

/// Indices of training batches for a pool of `n` examples.
#[derive(Debug)]
pub struct BatchOrder {
    n: usize,
    batch: usize,
    seed: u64,
    base_stream: u64,
    epochs: HashMap<u64, Vec<usize>>,
}

impl BatchOrder {
    /// Batches of `batch` examples from `n`, ordered by `seed` on `base_stream`.
    pub fn new(n: usize, batch: usize, seed: u64, base_stream: u64) -> Self {
        BatchOrder { n, batch: batch.max(1), seed, base_stream, epochs: HashMap::new() }
    }

    /// Example indices of batch number `step` (always `batch` of them when n ≥ 1).
    pub fn indices(&mut self, step: u64) -> Vec<usize> {
        if self.n == 0 {
            return Vec::new();
        }
        let start = step as usize * self.batch;
        (start..start + self.batch)
            .map(|i| {
                let epoch = (i / self.n) as u64;
                let perm = self
                    .epochs
                    .entry(epoch)
                    .or_insert_with(|| permutation(self.n, self.seed, self.base_stream + epoch));
                perm[i % self.n]
            })
            .collect()
    }

    /// Drops cached permutations of epochs before the one holding `step` (memory bound).
    pub fn forget_before(&mut self, step: u64) {
        let epoch = (step as usize * self.batch / self.n.max(1)) as u64;
        self.epochs.retain(|&e, _| e >= epoch);
    }
}

/// What a per-step seed is for: each purpose is its own stream of seeds, so two uses of
/// one (shard seed, step) never share random draws. The trainer and `qbench` take every
/// seed from here. The numbers are part of every seeded run: changing one changes the
/// weights, noise and directions of every shard and checkpoint that used it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeedPurpose {
    /// Random weight initialisation (step 0).
    Init = 1,
    /// Dropout masks of a first-order step.
    Dropout = 2,
    /// MeZO's SPSA direction z of a step.
    Spsa = 3,
    /// DiZO's u vector of one projection iteration; its "step" is the iteration's index
    /// `(round − 1)·J + j` (rounds count from 1).
    DizoU = 4,
}

/// SplitMix64: a seed for (shard seed, purpose, step) that differs in every bit.
pub fn step_seed(seed: u64, purpose: SeedPurpose, step: u64) -> u64 {
    let purpose = purpose as u64;
    let mut z = seed ^ purpose.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ step.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Converts a seed to the `i64` `tch::manual_seed` takes (top bit cleared).
pub fn torch_seed(seed: u64) -> i64 {
    (seed >> 1) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_cover_every_example_once() {
        let mut o = BatchOrder::new(10, 4, 7, stream::BATCHES);
        let first: Vec<usize> = (0..5).flat_map(|s| o.indices(s)).collect(); // 20 = two epochs
        let mut e0 = first[..10].to_vec();
        let mut e1 = first[10..].to_vec();
        e0.sort();
        e1.sort();
        assert_eq!(e0, (0..10).collect::<Vec<_>>());
        assert_eq!(e1, (0..10).collect::<Vec<_>>());
        assert_ne!(first[..10], first[10..], "epochs are reshuffled");
    }

    #[test]
    fn order_is_a_function_of_seed_and_step() {
        let mut a = BatchOrder::new(100, 8, 3, stream::BATCHES);
        let mut b = BatchOrder::new(100, 8, 3, stream::BATCHES);
        // b starts in the middle, as a resumed shard does.
        assert_eq!(a.indices(0), BatchOrder::new(100, 8, 3, stream::BATCHES).indices(0));
        let late_a: Vec<_> = (0..40).map(|s| a.indices(s)).collect();
        assert_eq!(b.indices(37), late_a[37]);
        let mut c = BatchOrder::new(100, 8, 4, stream::BATCHES);
        assert_ne!(c.indices(0), late_a[0]);
    }

    #[test]
    fn step_seeds_differ() {
        use SeedPurpose::*;
        assert_ne!(step_seed(1, Init, 0), step_seed(1, Init, 1));
        assert_ne!(step_seed(1, Init, 0), step_seed(2, Init, 0));
        assert_ne!(step_seed(1, Init, 0), step_seed(1, Dropout, 0));
        assert!(torch_seed(u64::MAX) >= 0);
    }

    /// The purposes' numbers are those of every earlier seeded run (and checkpoint).
    #[test]
    fn seed_purposes_keep_their_numbers() {
        let numbered =
            [(SeedPurpose::Init, 1), (SeedPurpose::Dropout, 2), (SeedPurpose::Spsa, 3), (SeedPurpose::DizoU, 4)];
        for (purpose, n) in numbered {
            assert_eq!(purpose as u64, n, "{purpose:?}");
        }
        // And the mixing itself (SplitMix64 of seed ^ purpose·φ ^ step·c, evaluated in Python).
        assert_eq!(step_seed(7, SeedPurpose::Spsa, 11), 0xCE71_73E5_40BF_604C);
    }
}
