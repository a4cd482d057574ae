//! qagent: a device-pinned consumer that trains and evaluates benchmark shards with libtorch.
//!
//! The agent is the top of four crates under `agent/`: `qsched-data` (tasks, tokenizers,
//! prompts, splits, encoding, metrics; no libtorch), `qsched-models` (Qwen3, Reversible
//! Qwen3, OPT, HF checkpoints, device pinning), `qsched-methods` (AdamW, MeZO, DiZO and the
//! task formats they step) and this one. `qsched-bench` (`qbench`) sits beside it.
//!
//! Module map:
//! - `supervisor`: the consume loop (prefetch, heartbeats, one worker process per shard,
//!   results and dead letters); `sim`: the no-op executor and simulated agents behind
//!   `qbench fleet-sim`.
//! - `worker` / `protocol`: the per-shard worker process and its framed wire to the
//!   supervisor; `shard`: the shard driver the worker runs (data → model → method →
//!   evaluation → result); `checkpoint`: the training state it saves and resumes from.
//! - `confine`: every filesystem path built from a message, kept under its root.
//! - `exporter`: the Prometheus metrics of `qagent --metrics-listen` and their endpoint.
#![deny(missing_docs)]

pub(crate) mod checkpoint;
pub(crate) mod confine;
pub mod error;
pub mod exporter;
pub(crate) mod protocol;
pub(crate) mod shard;
pub mod sim;
pub mod supervisor;
pub mod worker;

#[cfg(test)]
mod shard_tests;

pub use error::{Error, Result};
