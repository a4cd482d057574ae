//! qagent: a device-pinned consumer that trains and evaluates benchmark shards with libtorch.
//!
//! Module map:
//! - `models`: Qwen3, Reversible Qwen3 and OPT in tch, HF checkpoint loading/saving, placement audit.
//! - `data`: task loaders, tokenizers, prompt templates, seeded splits; `metrics`: task metrics.
//! - `train`: training methods (AdamW, reversible backprop, MeZO, DiZO), evaluation, checkpoints.
//! - `worker`: the per-shard worker process; `supervisor`: the consume loop, heartbeats, results.
#![deny(missing_docs)]

pub mod error;
pub mod inspect;
pub mod models;

pub use error::{Error, Result};
