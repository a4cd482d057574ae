//! The error type of the models crate: libtorch failures, checkpoints and configs that
//! do not fit the architecture, inputs a model refuses, devices that cannot be used, and
//! tensors found off their device.

use std::path::PathBuf;

/// Result alias of the models crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while pinning a device, loading, running or saving a model.
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
    /// A checkpoint's weights do not match its config (missing or misshapen tensors), or
    /// weights that cannot be saved in one.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The checkpoint directory or file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A file given to a model command (token ids to inspect) is malformed.
    #[error("{path}: {message}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Token ids outside the model's vocabulary, or tokenizer files missing from a
    /// checkpoint.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Model inputs of the wrong shape or kind (`input_ids`, `attention_mask`, a loss that
    /// is not a scalar, more tokens than positions).
    #[error("model inputs: {0}")]
    Inputs(String),
    /// A gradient check found the two gradient lists not comparable.
    #[error("gradient check: {0}")]
    GradientCheck(String),
    /// A value could not be serialised (config JSON, inspect output).
    #[error("cannot serialise {what}: {message}")]
    Serialise {
        /// What was being written.
        what: &'static str,
        /// The serialiser's message.
        message: String,
    },
    /// The requested device cannot be used (no CUDA, bad ordinal, bf16 on CPU).
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

    /// Shorthand for a malformed file at `path`.
    pub fn malformed(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Malformed { path: path.into(), message: message.into() }
    }

    /// True when libtorch ran out of memory (CUDA or CPU allocator): another attempt, with
    /// less on the device, may succeed.
    pub fn is_out_of_memory(&self) -> bool {
        matches!(self, Error::Torch(e) if is_out_of_memory(&e.to_string()))
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
    fn out_of_memory_messages() {
        assert!(is_out_of_memory("CUDA out of memory. Tried to allocate 2.00 GiB"));
        assert!(!is_out_of_memory("shape mismatch"));
        assert!(Error::Torch(tch::TchError::Torch("CUDA out of memory.".into())).is_out_of_memory());
        assert!(!Error::config("rope_scaling", "unsupported").is_out_of_memory());
    }
}
