//! The error type of the agent: its own failures (the worker process, refused paths,
//! training checkpoints, the metrics endpoint, the simulation) and those of the layers it
//! drives (data, models, methods, the shared crate).
//!
//! `is_retryable` decides what happens to a failed shard: a retryable failure (CUDA out
//! of memory, a worker killed by a signal, a transient service error) goes back to the
//! queue and counts toward the delivery limit; everything else (bad config, missing data,
//! non-finite training) is recorded as a failed result at once, because running it again
//! would fail the same way.

use std::path::PathBuf;

use shared::{ModelId, TaskId};

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while running a shard or serving the agent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// libtorch raised an error in the shard driver (shape mismatch, out of memory, ...).
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
    /// The data layer failed (a missing or malformed file, a tokenizer, an encoding).
    #[error(transparent)]
    Data(#[from] qsched_data::Error),
    /// The model layer failed (checkpoint, config, device, placement).
    #[error(transparent)]
    Model(#[from] qsched_models::Error),
    /// A training method failed (collation, DiZO, a step).
    #[error(transparent)]
    Method(#[from] qsched_methods::Error),
    /// The shard's data cannot train it (an empty split after encoding).
    #[error("data {path}: {message}")]
    EmptySplit {
        /// The train file of the task.
        path: PathBuf,
        /// The sizes of the splits.
        message: String,
    },
    /// The model cannot be trained on the task (the refusal `qsched submit` makes too).
    #[error("{model} × {task}: {reason}")]
    UnsupportedPair {
        /// The model.
        model: ModelId,
        /// The task.
        task: TaskId,
        /// Why not.
        reason: String,
    },
    /// A training checkpoint is missing, corrupt or from another shard.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The checkpoint directory or file.
        path: PathBuf,
        /// What is wrong.
        message: String,
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

    /// True when libtorch ran out of memory, in the driver or a layer below.
    pub fn is_out_of_memory(&self) -> bool {
        match self {
            Error::Torch(e) => qsched_models::is_out_of_memory(&e.to_string()),
            Error::Model(e) => e.is_out_of_memory(),
            Error::Method(e) => e.is_out_of_memory(),
            _ => false,
        }
    }

    /// True when running the shard again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Worker { retryable, .. } => *retryable,
            Error::Shared(e) => e.is_transient(),
            _ => self.is_out_of_memory(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_policy() {
        assert!(!Error::Refused("outside the roots".into()).is_retryable());
        assert!(Error::Worker { message: "killed by signal 9".into(), retryable: true }.is_retryable());
        let oom = tch::TchError::Torch("CUDA out of memory. Tried to allocate 2.00 GiB".into());
        assert!(Error::Torch(oom).is_retryable());
        let nested = qsched_models::Error::Torch(tch::TchError::Torch("CUDA out of memory.".into()));
        assert!(Error::Method(qsched_methods::Error::Model(nested)).is_retryable());
        assert!(!Error::Torch(tch::TchError::Torch("shape mismatch".into())).is_retryable());
    }
}
