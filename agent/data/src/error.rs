//! The error type of the data crate: what can be wrong with a data file, a tokenizer, or
//! an example that a format or a budget cannot hold.

use std::path::PathBuf;

use shared::TaskId;

/// Result alias of the data crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong between a data directory and token ids or metrics.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A data file is missing or malformed.
    #[error("data {path}: {message}")]
    Data {
        /// The data file.
        path: PathBuf,
        /// What is wrong, with the line number where it applies.
        message: String,
    },
    /// A task's files are read by another parser (a programming error, named rather than
    /// parsed wrongly).
    #[error("task '{task}' is not stored as {format}")]
    NotStoredAs {
        /// The task.
        task: TaskId,
        /// The format asked for (`TSV`, `JSONL`).
        format: &'static str,
    },
    /// A tokenizer could not be built or produced ids outside the model's vocabulary.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The task has no label words, so it has no prompt format (STS-B is a regression
    /// task).
    #[error("task '{task}' has no label words: STS-B is a regression task (similarity 0-5)")]
    NoLabelWords {
        /// The task.
        task: TaskId,
    },
    /// An example's input shape belongs to another task.
    #[error("an example of shape {shape} does not belong to task '{task}'")]
    ExampleShape {
        /// The task.
        task: TaskId,
        /// The example's shape (`sentence`, `premise/hypothesis`, ...).
        shape: &'static str,
    },
    /// An example's gold class has no candidate.
    #[error("task '{task}': gold class {gold} but only {candidates} candidates")]
    GoldOutOfRange {
        /// The task.
        task: TaskId,
        /// The gold class index.
        gold: usize,
        /// The number of candidates.
        candidates: usize,
    },
    /// An example cannot be encoded: it does not fit in `max_seq_len`, has no text, or
    /// the tokenizer lacks what the format needs.
    #[error("{0}")]
    Encoding(String),
    /// The examples mix rows that belong to a group (MultiRC answers) with rows that do
    /// not, so a grouped split cannot keep groups together.
    #[error("examples mix grouped and ungrouped rows")]
    MixedGroups,
    /// Predictions and labels cannot be scored (lengths differ, a label of the wrong kind).
    #[error("metrics: {0}")]
    Metrics(String),
}

impl Error {
    /// Shorthand for an I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    /// Shorthand for a data error in `path`.
    pub fn data(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Data { path: path.into(), message: message.into() }
    }
}
