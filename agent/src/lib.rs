//! qagent: a device-pinned consumer that trains and evaluates benchmark shards with libtorch.
//!
//! Module map:
//! - `device`: pinning to `cpu`/`cuda:N`, loading CUDA at run time, memory statistics.
//! - `models`: Qwen3, Reversible Qwen3 and OPT in tch, HF checkpoint loading/saving, placement audit.
//! - `data`: task loaders, tokenizers, prompt templates, seeded splits; `metrics`: task metrics.
//! - `train`: training methods (AdamW, reversible backprop, MeZO, DiZO), evaluation, checkpoints.
//! - `worker` / `protocol`: the per-shard worker process; `supervisor`: the consume loop.
//! - `confine`: every filesystem path built from a message, kept under its root.
//! - `inspect`: `qagent inspect`, checking a Hugging Face checkpoint.
//! - `exporter`: the Prometheus metrics of `qagent --metrics-listen` and their endpoint.
//! - `bench`: the `qbench` harness (Qwen3 depth sweep, zeroth-order OPT figure).
//! - `sim`: simulated agents (the real consume loop, a no-op executor) for `qbench fleet-sim`.
#![deny(missing_docs)]

pub mod bench;
pub mod confine;
pub mod data;
pub mod device;
pub mod error;
pub mod exporter;
mod ffi;
pub mod inspect;
pub mod metrics;
pub mod models;
pub mod protocol;
pub mod sim;
pub mod supervisor;
pub mod train;
pub mod worker;

pub use error::{Error, Result};
