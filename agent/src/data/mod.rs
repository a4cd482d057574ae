//! The data layer: everything between a GLUE-style data directory and the tensors a
//! training step consumes.
//!
//! - [`tasks`]: parse each task's real file format into typed [`Example`]s, and the
//!   per-task facts ([`TaskInfo`]: labels, metrics).
//! - [`split`]: seeded train/dev/test splits (the MeZO protocol).
//! - [`tokenize`]: the Qwen and OPT byte-level BPE tokenizers (HF `tokenizers` crate).
//! - [`prompts`]: the two text formats: classification-head text (Qwen3 methods) and
//!   prompt + label-word candidates (OPT methods).
//! - [`encode`]: token ids with truncation, and collation into tch tensors.
//!
//! Metrics live in [`crate::metrics`]. Only [`encode`]'s collation touches tch; the rest
//! is pure Rust. Nothing here downloads, invents data, or falls back silently: a missing or
//! malformed file is an [`Error::Data`] naming the file (and line).

pub mod encode;
pub mod prompts;
pub mod split;
pub mod tasks;
pub mod tokenize;

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

pub use encode::{
    CandidateBatch, CandidateExample, CandidateRows, ClassifierBatch, ClassifierExample, collate_candidates,
    collate_classifier, encode_candidates, encode_classifier,
};
pub use prompts::{InputFormat, TrainObjective, check_supported, train_objective};
pub use split::{TaskSplits, sample_test, split_task};
pub use tasks::{Example, Input, Label, LoadedTask, TaskInfo, TrainData, load_task, task_info};
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

/// The shared test data directory: `$QSCHED_DATA_DIR`, else `../shared/data` next to the
/// workspace root.
#[cfg(test)]
pub(crate) fn test_data_dir() -> std::path::PathBuf {
    match std::env::var_os("QSCHED_DATA_DIR") {
        Some(dir) => dir.into(),
        None => concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data").into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
