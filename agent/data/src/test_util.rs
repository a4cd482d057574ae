//! Test helpers for this crate and the crates above it (feature `test-util`): the shared
//! data directory and the two tokenizers, built once per test binary.

use std::path::PathBuf;
use std::sync::OnceLock;

use crate::tokenize::{TextTokenizer, TokenizerKind};

/// The shared test data directory: `$QSCHED_DATA_DIR`, else `../shared/data` beside the
/// workspace root.
pub fn data_dir() -> PathBuf {
    match std::env::var_os("QSCHED_DATA_DIR") {
        Some(dir) => dir.into(),
        None => concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data").into(),
    }
}

/// The Qwen tokenizer of the test data directory (built once: the Qwen BPE has 151k merges).
pub fn qwen() -> &'static TextTokenizer {
    static T: OnceLock<TextTokenizer> = OnceLock::new();
    T.get_or_init(|| TextTokenizer::from_data_dir(TokenizerKind::Qwen, &data_dir()).unwrap())
}

/// The OPT tokenizer of the test data directory.
pub fn opt() -> &'static TextTokenizer {
    static T: OnceLock<TextTokenizer> = OnceLock::new();
    T.get_or_init(|| TextTokenizer::from_data_dir(TokenizerKind::Opt, &data_dir()).unwrap())
}
