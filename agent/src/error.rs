//! The one error type of the `agent` crate.
//!
//! `is_retryable` decides what happens to a failed shard: a retryable failure (CUDA out
//! of memory, a worker killed by a signal, a transient service error) goes back to the
//! queue and counts toward the delivery limit; everything else (bad config, missing data,
//! non-finite training) is recorded as a failed result at once, because running it again
//! would fail the same way.

use std::path::PathBuf;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while loading, training or evaluating a shard.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// libtorch raised an error (shape mismatch, out of memory, ...).
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A model configuration value is missing, malformed or unsupported.
    #[error("model config: field `{field}`: {message}")]
    Config {
        /// The config field (HF name), e.g. `rope_scaling`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A checkpoint's weights do not match its config (missing or misshapen tensors).
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The checkpoint directory or file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A data file is missing or malformed.
    #[error("data {path}: {message}")]
    Data {
        /// The data file.
        path: PathBuf,
        /// What is wrong, with the line number where it applies.
        message: String,
    },
    /// A tokenizer could not be built or produced ids outside the model's vocabulary.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A method × task pair (or other combination) that makes no sense.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The requested device cannot be used (no CUDA, bad ordinal).
    #[error("device: {0}")]
    Device(String),
    /// Tensors found off the pinned device by the placement audit.
    #[error("placement audit: {count} tensor(s) not on {device}: {examples}")]
    Placement {
        /// The pinned device.
        device: String,
        /// How many tensors are misplaced.
        count: usize,
        /// The first few, as `name@device`.
        examples: String,
    },
    /// Training diverged beyond recovery (too many non-finite losses in a row).
    #[error("training diverged: {0}")]
    Diverged(String),
    /// The worker process failed or broke the protocol.
    #[error("worker: {message}")]
    Worker {
        /// What happened.
        message: String,
        /// Whether another attempt may succeed (killed by a signal, OOM).
        retryable: bool,
    },
    /// A shard asked for something this agent does not allow (a path outside its roots).
    #[error("refused: {0}")]
    Refused(String),
    /// The shard was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// The Prometheus endpoint (`qagent --metrics-listen`) could not listen on its address,
    /// or stopped serving.
    #[error("{action} on {address}")]
    MetricsEndpoint {
        /// The address it was to listen on.
        address: std::net::SocketAddr,
        /// What failed: `cannot listen for metrics`, `stopped serving metrics`.
        action: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The fleet simulation could not run or measure (`qbench fleet-sim`).
    #[error("simulation: {0}")]
    Simulation(String),
    /// An error from the shared crate (spec, codec, broker, store).
    #[error(transparent)]
    Shared(#[from] shared::Error),
}

impl Error {
    /// Shorthand for an I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    /// Shorthand for a config error on `field`.
    pub fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config { field: field.into(), message: message.into() }
    }

    /// Shorthand for a data error in `path`.
    pub fn data(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Data { path: path.into(), message: message.into() }
    }

    /// True when running the shard again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Torch(e) => is_out_of_memory(&e.to_string()),
            Error::Worker { retryable, .. } => *retryable,
            Error::Shared(e) => e.is_transient(),
            Error::Io { .. }
            | Error::Config { .. }
            | Error::Checkpoint { .. }
            | Error::Data { .. }
            | Error::Tokenizer(_)
            | Error::Unsupported(_)
            | Error::Device(_)
            | Error::Placement { .. }
            | Error::Diverged(_)
            | Error::Refused(_)
            | Error::MetricsEndpoint { .. }
            | Error::Simulation(_)
            | Error::Cancelled => false,
        }
    }
}

/// True for libtorch's out-of-memory messages (CUDA and CPU allocators).
pub fn is_out_of_memory(message: &str) -> bool {
    message.contains("out of memory")
        || message.contains("OutOfMemoryError")
        || message.contains("DefaultCPUAllocator: can't allocate")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_policy() {
        assert!(!Error::config("rope_scaling", "unsupported").is_retryable());
        assert!(Error::Worker { message: "killed by signal 9".into(), retryable: true }.is_retryable());
        assert!(is_out_of_memory("CUDA out of memory. Tried to allocate 2.00 GiB"));
        assert!(!is_out_of_memory("shape mismatch"));
    }
}
