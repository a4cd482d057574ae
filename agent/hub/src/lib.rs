//! Checkpoints and datasets by name from the Hugging Face hub.
//!
//! - [`id`]: `org/name[@revision]` ids, parsed without I/O.
//! - [`config`]: the `HF_*` environment (endpoint, token, cache folder, offline mode).
//! - [`cache`]: the standard cache layout (`blobs/`, `snapshots/`, `refs/`), shared with
//!   `huggingface_hub`, so a model pulled here is found by Python tools and the reverse.
//! - [`client`]: listing a revision and downloading files into the cache: resumed,
//!   checked against the hub's size and digest, renamed into place whole, one lock per blob.
//! - [`models`]: which files of a model repository are fetched, and the snapshot folder.
//! - [`records`] and [`datasets`]: GLUE/SuperGLUE parquet splits written as the files the
//!   task loaders read, with a manifest.
//!
//! The crate does no training and links no libtorch: it only puts files on disk where the
//! agent's loaders (which take a model folder and a data folder) already look.
#![deny(missing_docs)]

pub mod cache;
pub mod client;
pub mod config;
pub mod datasets;
pub mod error;
pub mod id;
pub mod models;
pub mod records;

pub use client::{Hub, Progress, ProgressFn};
pub use config::HubConfig;
pub use error::{Error, Result};
pub use id::{RepoId, RepoKind};
pub use models::{Snapshot, pull_model};
