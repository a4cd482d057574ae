//! qsched-models: Qwen3, Reversible Qwen3 and OPT in tch, Hugging Face checkpoint loading
//! and saving, the placement audit, and the device a process is pinned to.
//!
//! One file per architecture (`qwen3`, `rev_qwen3`, `opt`), each with its HF-named
//! `Config` and blocks whose variable paths equal HF state-dict keys, so checkpoints load
//! without renaming. `common` holds the pieces they share (linear layer, input checks,
//! attention mask). Model code never picks a device: it reads `p.device()`; [`device`]
//! pins a process to one and loads CUDA at run time. [`ffi`] is the small C++ shim over
//! libtorch (CUDA memory statistics, bf16 autocast, fused AdamW, gradient release) that
//! tch 0.24 lacks. [`inspect`] is the library side of `qagent inspect`.
#![deny(missing_docs)]

pub mod audit;
pub(crate) mod common;
pub mod device;
pub mod error;
pub mod ffi;
pub mod hf;
pub mod inspect;
pub mod opt;
pub mod qwen3;
pub mod rev_qwen3;

pub use common::{TokenIds, kind_name};
pub use error::{Error, Result, is_out_of_memory};

#[cfg(test)]
mod parity_tests;
#[cfg(any(test, feature = "test-util"))]
pub mod test_util;
