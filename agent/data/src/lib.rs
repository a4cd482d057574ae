//! qsched-data: everything between a GLUE-style data directory and plain token ids,
//! and the task metrics. No libtorch: this crate's tests run on a machine without it.
//!
//! - [`facts`]: the task-facts table ([`TaskInfo`]: name, classes, metrics, primary
//!   metric), read by the loaders, the prompt formats and the metrics.
//! - [`tasks`]: parse each task's real file format into typed [`Example`]s.
//! - [`split`]: seeded train/dev/test splits (the MeZO protocol).
//! - [`tokenize`]: the Qwen and OPT byte-level BPE tokenizers (HF `tokenizers` crate).
//! - [`prompts`]: the two text formats: classification-head text (Qwen3 methods) and
//!   prompt + label-word candidates (OPT methods).
//! - [`encode`]: token ids with truncation, as plain vectors.
//! - [`metrics`]: task metrics from predictions and labels.
//!
//! Nothing here downloads, invents data, or falls back silently: a missing or malformed
//! file is an [`Error::Data`] naming the file (and line).
#![deny(missing_docs)]

pub mod encode;
pub mod error;
pub mod facts;
pub mod metrics;
pub mod prompts;
pub mod split;
pub mod tasks;
#[cfg(any(test, feature = "test-util"))]
pub mod test_util;
pub mod tokenize;

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

pub use error::{Error, Result};
pub use shared::TaskId;

pub use encode::{Candidate, CandidateExample, ClassifierExample, encode_candidates, encode_classifier};
pub use facts::{TaskInfo, metric_names, primary_metric, task_info};
pub use prompts::{InputFormat, TrainObjective, check_supported, train_objective};
pub use split::{TaskSplits, sample_test, split_task};
pub use tasks::{Example, Input, Label, LoadedTask, TrainData, load_task};
pub use tokenize::{TextTokenizer, TokenizerKind};

/// Lower-case hex SHA-256 of a file's bytes, recorded with results so that a number can
/// be traced back to the exact data file it was computed on.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::data_dir as test_data_dir;

    #[test]
    fn sha256_matches_provenance() {
        // The hash PROVENANCE.md lists for glue/SST-2/dev.tsv.
        let path = test_data_dir().join("glue/SST-2/dev.tsv");
        assert_eq!(sha256_file(&path).unwrap(), "54a9c12c77e402fc14d6a66a506f24d999f596b0176eb777c972cccc2f9cc4b0");
    }

    #[test]
    fn sha256_of_missing_file_names_it() {
        let err = sha256_file(Path::new("/nonexistent/qsched/x.tsv")).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/qsched/x.tsv"), "{err}");
    }
}
