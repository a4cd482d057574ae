//! The error type of the benchmark harness: arguments a measurement cannot run with,
//! measurements that went wrong, and the failures of the layers it measures.

use std::path::PathBuf;

/// Result alias of the benchmark harness.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can stop a benchmark.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// libtorch raised an error (shape mismatch, out of memory, ...).
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// The data layer failed (a text file, the tokenizer).
    #[error(transparent)]
    Data(#[from] qsched_data::Error),
    /// The model layer failed (device, config, placement).
    #[error(transparent)]
    Model(#[from] qsched_models::Error),
    /// A training method failed.
    #[error(transparent)]
    Method(#[from] qsched_methods::Error),
    /// A service or codec failed (the fleet simulation's broker and Redis).
    #[error(transparent)]
    Shared(#[from] shared::Error),
    /// The agent failed (the fleet simulation's consume loops).
    #[error(transparent)]
    Agent(#[from] agent::Error),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file, or `<stdout>`.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The arguments describe no measurement (`--steps 0`, an empty list, a shape too small).
    #[error("invalid arguments: {0}")]
    Arguments(String),
    /// The text for real batches is too short for the batches asked for.
    #[error("{path}: {message}")]
    NotEnoughText {
        /// The text file.
        path: PathBuf,
        /// How many tokens there are and how many are needed.
        message: String,
    },
    /// A measurement cannot be trusted: a non-finite loss, or a step that changed nothing.
    #[error("measurement: {0}")]
    Measurement(String),
}

impl Error {
    /// Shorthand for an I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}
