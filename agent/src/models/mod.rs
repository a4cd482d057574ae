//! Model code: Qwen3, Reversible Qwen3 and OPT in tch, Hugging Face checkpoint loading
//! and saving, and the placement audit.
//!
//! One file per architecture (`qwen3`, `rev_qwen3`, `opt`), each with its HF-named
//! `Config` and blocks whose variable paths equal HF state-dict keys, so checkpoints load
//! without renaming. `common` holds the pieces they share (linear layer, input checks,
//! attention mask). Model code never picks a device: it reads `p.device()`.

pub mod audit;
pub(crate) mod common;
pub mod hf;
pub mod opt;
pub mod qwen3;
pub mod rev_qwen3;

pub use common::{TokenIds, kind_name};

#[cfg(test)]
mod parity_tests;
#[cfg(test)]
pub(crate) mod test_util; // also used by train::tests (the shared RNG lock)
