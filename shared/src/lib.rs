//! Types and services every qsched crate shares.
//!
//! - [`spec`] and [`scale`]: the benchmark spec (TOML file or flags) and named scale presets.
//! - [`ids`]: model (method) and task identifiers and the data-directory layout.
//! - [`names`]: run and shard ids, validated so that no message can name a path.
//! - [`device`]: `DeviceSpec` (`cpu`, `cuda:N`) parsed once.
//! - [`shard`]: shards, results, run records, heartbeats, metric points.
//! - [`wire`]: the MessagePack codec with schema version and size limit.
//! - [`keys`]: the Redis key schema.
//! - [`broker`] / [`amqp`]: the broker trait, its in-process and RabbitMQ implementations.
//! - [`dead_letters`]: shards the broker dead-lettered on its own, made known to the store.
//! - [`store`] / [`redis_store`] / [`local_store`]: the state store trait, its in-process,
//!   Redis and embedded on-disk (redb, for `qsched submit --local`) implementations.
//! - [`endpoints`]: the connection flags (URLs, URL files, CA files) of `qsched` and `qagent`.
//! - [`secrets`]: credential-bearing URLs read from files and redacted for display.
//! - [`tls`]: the CA bundle trusted for `amqps://` and `rediss://` connections.
//! - [`shutdown`]: the signals that stop a long-running process.
//! - [`telemetry`]: tracing setup, OTLP export and W3C trace-context propagation.
//!
//! This crate never links libtorch.
#![deny(missing_docs)]

pub mod amqp;
pub mod broker;
pub mod dead_letters;
pub mod device;
pub mod endpoints;
pub mod error;
pub mod ids;
pub mod keys;
pub mod local_store;
pub mod names;
pub mod redis_store;
pub mod scale;
pub mod secrets;
pub mod shard;
pub mod shutdown;
pub mod spec;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod wire;

pub use device::{DeviceClass, DeviceSpec};
pub use error::{Error, Result};
pub use ids::{Family, ModelId, TaskId};
pub use names::{RunId, ShardId};
