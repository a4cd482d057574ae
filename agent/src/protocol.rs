//! The supervisor ↔ worker protocol: one request on the worker's stdin, a stream of
//! events on its stdout, each a length-prefixed (u32 little-endian) named-MessagePack
//! frame. The worker writes logs to stderr only, so stdout carries nothing but frames.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use shared::DeviceSpec;
use shared::shard::Shard;

use crate::error::{Error, Result};

/// Version of the protocol; the supervisor and worker are the same binary, but an
/// installed agent may be upgraded while a worker of the old version still runs.
pub const PROTOCOL_VERSION: u32 = 2;
/// Largest frame accepted (a final outcome with its config is a few KiB).
pub const MAX_FRAME_BYTES: usize = 16 << 20;

/// What the worker is asked to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerRequest {
    /// Protocol version.
    pub protocol_version: u32,
    /// The shard.
    pub shard: Shard,
    /// Device to pin to.
    pub device: DeviceSpec,
    /// Data directory (holding `glue/` and `tokenizers/`).
    pub data_dir: PathBuf,
    /// Where checkpoints go (shared storage on a fleet); `None` disables them.
    pub checkpoint_dir: Option<PathBuf>,
    /// Directories pretrained weights may be read from (`qagent --model-root`).
    pub model_roots: Vec<PathBuf>,
    /// Intra-op CPU threads.
    pub threads: u32,
    /// Trace context of the supervisor's `shard.process` span.
    pub traceparent: Option<String>,
    /// Delivery attempt (1 = first).
    pub attempt: u32,
}

/// What the worker reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WorkerEvent {
    /// The model is built and training starts.
    Started {
        /// Device description.
        device: String,
        /// GPU name, if any.
        gpu_name: Option<String>,
        /// Planned steps.
        total_steps: u64,
        /// Step resumed from, if a checkpoint was found.
        resumed_from_step: Option<u64>,
    },
    /// Metric values at a step (kind: "train", "dev", "test").
    Metrics {
        /// Step.
        step: u64,
        /// Planned steps.
        total_steps: u64,
        /// Kind of point.
        kind: String,
        /// Values.
        values: BTreeMap<String, f64>,
    },
    /// The training or evaluation loop made progress (a step, an evaluation batch, a
    /// loading phase). Sent at most about once a second; the supervisor's watchdog
    /// takes a worker that sends nothing for its stall timeout as hung.
    Alive {
        /// Training step reached.
        step: u64,
    },
    /// The shard finished.
    Finished(Box<ShardOutcome>),
    /// The shard failed.
    Failed {
        /// The error chain.
        message: String,
        /// Whether another attempt may succeed.
        retryable: bool,
    },
}

/// Everything a finished shard measured (the supervisor adds identity fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardOutcome {
    /// Device that ran it.
    pub device: String,
    /// GPU name.
    pub gpu_name: Option<String>,
    /// Test metrics at the best-dev evaluation.
    pub metrics: BTreeMap<String, f64>,
    /// Dev metrics at the best-dev evaluation.
    pub dev_metrics: BTreeMap<String, f64>,
    /// Primary metric name.
    pub primary_metric: String,
    /// Step of the best-dev evaluation.
    pub best_step: u64,
    /// Steps taken.
    pub steps: u64,
    /// Peak memory.
    pub peak_memory_bytes: u64,
    /// What the peak measures.
    pub peak_memory_kind: String,
    /// Wall seconds of the worker (load, train, evaluate).
    pub wall_seconds: f64,
    /// Seconds in training steps.
    pub train_seconds: f64,
    /// Steps per second.
    pub steps_per_second: f64,
    /// Non-pad training tokens per second.
    pub tokens_per_second: f64,
    /// Skipped non-finite steps.
    pub skipped_steps: u64,
    /// Precision that ran.
    pub precision: String,
    /// Intra-op threads.
    pub threads: u32,
    /// Parameter count.
    pub parameters: u64,
    /// Split sizes.
    pub split_sizes: BTreeMap<String, u64>,
    /// Data file checksums.
    pub data_checksums: BTreeMap<String, String>,
    /// What ran (shape after loading, settings, files).
    pub config: serde_json::Value,
    /// Step resumed from.
    pub resumed_from_step: Option<u64>,
}

/// Writes one frame.
pub fn write_frame<T: Serialize>(out: &mut impl Write, value: &T) -> Result<()> {
    let bytes = shared::wire::encode(value)?;
    let len = u32::try_from(bytes.len())
        .map_err(|_| Error::Worker { message: "frame too large".into(), retryable: false })?;
    out.write_all(&len.to_le_bytes())
        .and_then(|_| out.write_all(&bytes))
        .and_then(|_| out.flush())
        .map_err(|e| Error::Worker { message: format!("cannot write to the supervisor: {e}"), retryable: true })
}

/// Reads one frame; `Ok(None)` on a clean end of stream before a frame starts.
pub fn read_frame<T: DeserializeOwned>(input: &mut impl Read) -> Result<Option<T>> {
    let mut len = [0u8; 4];
    match input.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(Error::Worker { message: format!("read: {e}"), retryable: true }),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(Error::Worker { message: format!("frame of {len} bytes exceeds the limit"), retryable: false });
    }
    let mut buf = vec![0u8; len];
    input
        .read_exact(&mut buf)
        .map_err(|e| Error::Worker { message: format!("truncated frame: {e}"), retryable: true })?;
    Ok(Some(shared::wire::decode(&buf, MAX_FRAME_BYTES)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let event = WorkerEvent::Metrics {
            step: 3,
            total_steps: 10,
            kind: "train".into(),
            values: BTreeMap::from([("loss".to_owned(), 0.5)]),
        };
        let mut buf = Vec::new();
        write_frame(&mut buf, &event).unwrap();
        write_frame(&mut buf, &WorkerEvent::Failed { message: "x".into(), retryable: false }).unwrap();
        let mut r = std::io::Cursor::new(buf);
        assert_eq!(read_frame::<WorkerEvent>(&mut r).unwrap(), Some(event));
        assert!(matches!(read_frame::<WorkerEvent>(&mut r).unwrap(), Some(WorkerEvent::Failed { .. })));
        assert_eq!(read_frame::<WorkerEvent>(&mut r).unwrap(), None);
    }

    #[test]
    fn truncated_and_oversized_frames_are_errors() {
        let mut r = std::io::Cursor::new(vec![10, 0, 0, 0, 1, 2]);
        assert!(read_frame::<WorkerEvent>(&mut r).is_err());
        let mut r = std::io::Cursor::new(u32::MAX.to_le_bytes().to_vec());
        assert!(read_frame::<WorkerEvent>(&mut r).is_err());
    }
}
