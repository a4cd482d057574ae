//! qsched-methods: the training methods and the network-with-task-format they step.
//!
//! - [`method`]: the [`Method`] trait (one step, its state tensors for checkpoints) and its
//!   implementations: AdamW backprop (autograd, per-layer checkpointing, or reversible
//!   reconstruction, as the network decides), MeZO, DiZO. The shard driver and the
//!   benchmark harness both call these steps; neither has one of its own.
//! - [`zo`]: the zeroth-order machinery (seeded perturbations, SPSA, DiZO's projection
//!   rounds), [`optim`]: AdamW with the fused libtorch kernel and gradient clipping.
//! - [`task_model`]: a network together with its task format (classifier head or prompt
//!   candidates): building it for a shard, losses, predictions.
//! - [`collate`]: encoded examples into tensors on one device; [`batches`]: the seeded
//!   order of training batches.
#![deny(missing_docs)]

pub mod batches;
pub mod collate;
pub mod error;
pub mod method;
pub mod optim;
pub mod task_model;
pub mod zo;

pub use error::{Error, Result};
pub use method::{Method, StepContext};

#[cfg(test)]
mod tests;
