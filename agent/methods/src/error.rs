//! The error type of the methods crate: what can go wrong while building a network for a
//! shard, collating batches, and stepping a training method.

/// Result alias of the methods crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a training or evaluation step.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// libtorch raised an error (shape mismatch, out of memory, ...).
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// The model layer failed (checkpoint, config, inputs, device, placement).
    #[error(transparent)]
    Model(#[from] qsched_models::Error),
    /// The data layer failed (a file, a tokenizer, an example that cannot be encoded).
    #[error(transparent)]
    Data(#[from] qsched_data::Error),
    /// Encoded examples that cannot form one batch (empty, mixed label kinds, candidates).
    #[error("collate: {0}")]
    Collate(String),
    /// A network and a batch or architecture that do not go together (OPT with a
    /// classifier head, a Qwen3 method on an OPT architecture).
    #[error("model format: {0}")]
    ModelFormat(String),
    /// A checkpoint the shard did not ask for in the form its model needs.
    #[error("refused: {0}")]
    InitRefused(String),
    /// DiZO cannot run as configured (no projections to scale, a round before the first).
    #[error("DiZO: {0}")]
    Dizo(String),
    /// Training diverged beyond recovery (too many non-finite losses in a row).
    #[error("training diverged: {0}")]
    Diverged(String),
}

impl Error {
    /// True when libtorch ran out of memory here or in the model layer.
    pub fn is_out_of_memory(&self) -> bool {
        match self {
            Error::Torch(e) => qsched_models::is_out_of_memory(&e.to_string()),
            Error::Model(e) => e.is_out_of_memory(),
            _ => false,
        }
    }
}
