//! Seeded train/dev/test splits, following the MeZO protocol.
//!
//! - **dev** = `min(dev_examples, n_train / 4)` units held out of the *train* split (for
//!   model selection; the quarter cap keeps small train splits such as CB's 250 or
//!   FewGLUE's 32 mostly for training);
//! - **train** = up to `train_examples` units (0 = all) of the rest of the train split;
//! - **test** = `test_examples` units sampled from the official *validation* split
//!   (0, or more than it has, = all of it).
//!
//! A *unit* is an example, except for MultiRC where it is a **question** (all answer
//! options of one question, i.e. one `group`): options of a question never straddle
//! train and dev, and sizes count questions. Different questions about one passage may
//! land on both sides; that only affects model selection, never the test split, which
//! comes from a different file.
//!
//! Randomness: one `ChaCha8Rng` per shard seed, stream 0 for the train/dev permutation
//! and stream 1 for the test sample, so the test set does not depend on the train sizes.
//! The permutation is a Fisher–Yates shuffle drawing indices by rejection sampling from
//! `next_u64`, written here rather than taken from `rand`'s `SliceRandom`, so that the
//! split depends only on ChaCha8's output (a stable, documented stream), not on the
//! sampling algorithms of a particular `rand` version. Dev takes the first units of the
//! permutation and train the next ones, so changing `train_examples` never changes dev.
//! Selected examples are returned in file order (training code shuffles per epoch).

use std::collections::HashMap;
use std::path::PathBuf;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shared::TaskId;
use shared::scale::DataSettings;

use crate::error::{Error, Result};
use crate::tasks::{Example, LoadedTask};

/// The three splits of one shard, with what they came from.
#[derive(Debug, Clone)]
pub struct TaskSplits {
    /// The task.
    pub task: TaskId,
    /// The seed the splits were drawn with.
    pub seed: u64,
    /// Training examples (file order).
    pub train: Vec<Example>,
    /// Dev examples held out of the train split (file order).
    pub dev: Vec<Example>,
    /// Test examples from the official validation split (file order).
    pub test: Vec<Example>,
    /// The train file.
    pub train_path: PathBuf,
    /// Whether the train file is the 32-example FewGLUE subset.
    pub fewglue_subset: bool,
    /// The validation file the test split was sampled from.
    pub test_path: PathBuf,
}

/// Unit counts chosen for a split (units = examples, or questions for MultiRC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnitSplit {
    /// Units in the train pool (the whole train split).
    pub pool: usize,
    /// Dev units.
    pub dev: usize,
    /// Train units.
    pub train: usize,
}

/// Dev and train unit counts for a train pool of `pool` units.
pub fn unit_counts(pool: usize, data: &DataSettings) -> UnitSplit {
    let dev = (data.dev_examples as usize).min(pool / 4);
    let rest = pool - dev;
    let train = match data.train_examples as usize {
        0 => rest,
        n => n.min(rest),
    };
    UnitSplit { pool, dev, train }
}

/// A uniform integer in `0..n` (n ≥ 1) by rejection sampling, so every value is exactly
/// equally likely: accept `x` only below the largest multiple of `n` that fits in 2^64.
fn below(rng: &mut ChaCha8Rng, n: u64) -> u64 {
    debug_assert!(n > 0);
    // 2^64 mod n, computed without overflow as (2^64 - n) mod n.
    let rem = (u64::MAX - n + 1) % n;
    let limit = u64::MAX - rem;
    loop {
        let x = rng.next_u64();
        if x <= limit {
            return x % n;
        }
    }
}

/// A seeded permutation of `0..n` (Fisher–Yates).
pub fn permutation(n: usize, seed: u64, stream: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = below(&mut rng, i as u64 + 1) as usize;
        p.swap(i, j);
    }
    p
}

/// Groups example indices into units: one per example, or one per `group` (MultiRC).
/// Units are ordered by first appearance.
fn units(examples: &[Example]) -> Result<Vec<Vec<usize>>> {
    let grouped = examples.first().is_some_and(|e| e.group.is_some());
    if !grouped {
        if examples.iter().any(|e| e.group.is_some()) {
            return Err(Error::MixedGroups);
        }
        return Ok((0..examples.len()).map(|i| vec![i]).collect());
    }
    let mut index: HashMap<u32, usize> = HashMap::new();
    let mut out: Vec<Vec<usize>> = Vec::new();
    for (i, e) in examples.iter().enumerate() {
        let g = e.group.ok_or(Error::MixedGroups)?;
        let u = *index.entry(g).or_insert_with(|| {
            out.push(Vec::new());
            out.len() - 1
        });
        out[u].push(i);
    }
    Ok(out)
}

/// The examples of the chosen units, in file order.
fn gather(examples: &[Example], units: &[Vec<usize>], chosen: &[usize]) -> Vec<Example> {
    let mut idx: Vec<usize> = chosen.iter().flat_map(|&u| units[u].iter().copied()).collect();
    idx.sort_unstable();
    idx.into_iter().map(|i| examples[i].clone()).collect()
}

/// The test split alone (for evaluation-only shards; identical to `split_task`'s test).
pub fn sample_test(loaded: &LoadedTask, data: &DataSettings, seed: u64) -> Result<Vec<Example>> {
    let units = units(&loaded.validation)?;
    let n = match data.test_examples as usize {
        0 => units.len(),
        k => k.min(units.len()),
    };
    let perm = permutation(units.len(), seed, 1);
    Ok(gather(&loaded.validation, &units, &perm[..n]))
}

/// Train, dev and test splits for one shard. Fails, naming the file, when the task has
/// no train split.
pub fn split_task(loaded: &LoadedTask, data: &DataSettings, seed: u64) -> Result<TaskSplits> {
    let train_data = loaded.train()?;
    let units = units(&train_data.examples)?;
    let counts = unit_counts(units.len(), data);
    let perm = permutation(units.len(), seed, 0);
    let dev = gather(&train_data.examples, &units, &perm[..counts.dev]);
    let train = gather(&train_data.examples, &units, &perm[counts.dev..counts.dev + counts.train]);
    Ok(TaskSplits {
        task: loaded.task,
        seed,
        train,
        dev,
        test: sample_test(loaded, data, seed)?,
        train_path: train_data.path.clone(),
        fewglue_subset: train_data.fewglue_subset,
        test_path: loaded.validation_path.clone(),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::tasks::load_task;
    use crate::test_util::data_dir as test_data_dir;

    fn settings(train: u32, dev: u32, test: u32) -> DataSettings {
        DataSettings { train_examples: train, dev_examples: dev, test_examples: test, max_seq_len: 128 }
    }

    fn lines(examples: &[Example]) -> Vec<(usize, Option<u32>)> {
        examples.iter().map(|e| (e.line, e.group)).collect()
    }

    #[test]
    fn permutation_is_a_deterministic_permutation() {
        let a = permutation(1000, 7, 0);
        assert_eq!(a, permutation(1000, 7, 0));
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
        assert_ne!(a, permutation(1000, 8, 0), "seed changes the order");
        assert_ne!(a, permutation(1000, 7, 1), "stream changes the order");
        assert_ne!(a, (0..1000).collect::<Vec<_>>());
        assert!(permutation(0, 1, 0).is_empty());
        assert_eq!(permutation(1, 1, 0), vec![0]);
    }

    #[test]
    fn below_is_roughly_uniform() {
        // 60,000 draws over 6 values: each count within 5% of 10,000 (the binomial sd is ~91).
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut counts = [0usize; 6];
        for _ in 0..60_000 {
            counts[below(&mut rng, 6) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (9_500..=10_500).contains(&c)), "{counts:?}");
    }

    #[test]
    fn unit_counts_follow_the_mezo_rules() {
        // CB: 250 train, dev 100 requested → min(100, 62) = 62 dev, 188 train.
        assert_eq!(unit_counts(250, &settings(0, 100, 0)), UnitSplit { pool: 250, dev: 62, train: 188 });
        // SST-2 at the `large` preset: 1000 train, 500 dev.
        assert_eq!(unit_counts(67_349, &settings(1000, 500, 1000)), UnitSplit { pool: 67_349, dev: 500, train: 1000 });
        // FewGLUE 32: dev capped at 8, train asks for more than is left.
        assert_eq!(unit_counts(32, &settings(1000, 500, 0)), UnitSplit { pool: 32, dev: 8, train: 24 });
        assert_eq!(unit_counts(3, &settings(0, 10, 0)), UnitSplit { pool: 3, dev: 0, train: 3 });
    }

    #[test]
    fn rte_splits_are_deterministic_disjoint_and_sized() {
        let loaded = load_task(TaskId::Rte, &test_data_dir()).unwrap();
        let data = settings(1000, 500, 100);
        let a = split_task(&loaded, &data, 0).unwrap();
        let b = split_task(&loaded, &data, 0).unwrap();
        assert_eq!((a.train.len(), a.dev.len(), a.test.len()), (1000, 500, 100));
        assert_eq!(lines(&a.train), lines(&b.train));
        assert_eq!(lines(&a.dev), lines(&b.dev));
        assert_eq!(lines(&a.test), lines(&b.test));
        let train: HashSet<usize> = a.train.iter().map(|e| e.line).collect();
        let dev: HashSet<usize> = a.dev.iter().map(|e| e.line).collect();
        assert_eq!(train.len(), 1000, "no duplicates");
        assert!(train.is_disjoint(&dev));
        assert!(a.test.windows(2).all(|w| w[0].line < w[1].line), "file order");
        assert!(!a.fewglue_subset && a.train_path.ends_with("RTE/train.tsv"));

        let c = split_task(&loaded, &data, 1).unwrap();
        assert_ne!(lines(&a.train), lines(&c.train));
        assert_ne!(lines(&a.dev), lines(&c.dev));
        assert_ne!(lines(&a.test), lines(&c.test));

        // Dev does not depend on the train size; the test sample does not depend on either.
        let d = split_task(&loaded, &settings(0, 500, 100), 0).unwrap();
        assert_eq!(lines(&a.dev), lines(&d.dev));
        assert_eq!(d.train.len(), 2490 - 500);
        assert_eq!(lines(&a.test), lines(&d.test));
        assert_eq!(lines(&sample_test(&loaded, &data, 0).unwrap()), lines(&a.test));
        // 0 test examples = the whole validation split.
        assert_eq!(sample_test(&loaded, &settings(0, 0, 0), 0).unwrap().len(), 277);
    }

    #[test]
    fn multirc_splits_by_question() {
        let loaded = load_task(TaskId::Multirc, &test_data_dir()).unwrap();
        let s = split_task(&loaded, &settings(0, 500, 200), 5).unwrap();
        assert!(s.fewglue_subset);
        let groups = |ex: &[Example]| ex.iter().map(|e| e.group.unwrap()).collect::<HashSet<u32>>();
        // FewGLUE: 32 questions → 8 dev questions, 24 train questions.
        assert_eq!((groups(&s.dev).len(), groups(&s.train).len()), (8, 24));
        assert!(groups(&s.dev).is_disjoint(&groups(&s.train)));
        assert_eq!(s.dev.len() + s.train.len(), 154, "every answer option lands somewhere");
        // 200 test questions, each with all of its answer options.
        let test_groups = groups(&s.test);
        assert_eq!(test_groups.len(), 200);
        let full: usize = loaded.validation.iter().filter(|e| test_groups.contains(&e.group.unwrap())).count();
        assert_eq!(s.test.len(), full);
    }

    #[test]
    fn evaluation_only_task_refuses_a_train_split() {
        let loaded = load_task(TaskId::Qnli, &test_data_dir()).unwrap();
        let err = split_task(&loaded, &settings(0, 10, 10), 0).unwrap_err().to_string();
        assert!(err.contains("QNLI/train.tsv"), "{err}");
        assert_eq!(sample_test(&loaded, &settings(0, 10, 10), 0).unwrap().len(), 10);
    }
}
