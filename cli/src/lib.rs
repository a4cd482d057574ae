//! `qsched`: submit benchmark runs and read the fleet back.
//!
//! The binary (`main.rs`) only parses arguments; every command is a function here taking
//! the broker and store as trait objects, so the same code runs against RabbitMQ/Redis
//! and against the in-process implementations of the embedded `--local` mode.
#![deny(missing_docs)]

pub mod commands;
pub mod console;
pub mod dashboard;
#[cfg(feature = "embedded")]
pub mod embedded;
pub mod hub;
pub mod live;
pub mod plot;
pub mod render;
