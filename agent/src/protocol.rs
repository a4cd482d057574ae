//! The supervisor ↔ worker protocol: one request on the worker's stdin, a stream of
//! events on its stdout, each a length-prefixed (u32 little-endian) named-MessagePack
//! frame. The worker writes logs to stderr only, so stdout carries nothing but frames.
//!
//! The frame codec lives here once, in its blocking form (the worker) and its tokio form
//! (the supervisor), with the event sinks the training code reports through.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use shared::DeviceSpec;
use shared::shard::{Shard, ShardMeasurements};

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
    Finished(Box<ShardMeasurements>),
    /// The shard failed.
    Failed {
        /// The error chain.
        message: String,
        /// Whether another attempt may succeed.
        retryable: bool,
    },
}

/// One frame's bytes: the u32 little-endian length of the body, then the body.
pub fn encode_frame<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    let body = shared::wire::encode(value)?;
    let len = u32::try_from(body.len()).ok().filter(|&n| n as usize <= MAX_FRAME_BYTES).ok_or_else(|| {
        Error::Worker { message: format!("frame of {} bytes exceeds the limit", body.len()), retryable: false }
    })?;
    let mut bytes = Vec::with_capacity(4 + body.len());
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes.extend_from_slice(&body);
    Ok(bytes)
}

/// The body length a frame's prefix announces, refused above [`MAX_FRAME_BYTES`].
fn body_len(prefix: [u8; 4]) -> Result<usize> {
    let len = u32::from_le_bytes(prefix) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(Error::Worker { message: format!("frame of {len} bytes exceeds the limit"), retryable: false });
    }
    Ok(len)
}

fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T> {
    Ok(shared::wire::decode(body, MAX_FRAME_BYTES)?)
}

/// Writes one frame (the worker's side: blocking stdout).
pub fn write_frame<T: Serialize>(out: &mut impl Write, value: &T) -> Result<()> {
    let bytes = encode_frame(value)?;
    out.write_all(&bytes)
        .and_then(|_| out.flush())
        .map_err(|e| Error::Worker { message: format!("cannot write to the supervisor: {e}"), retryable: true })
}

/// Reads one frame (the worker's side: blocking stdin); `Ok(None)` on a clean end of
/// stream before a frame starts.
pub fn read_frame<T: DeserializeOwned>(input: &mut impl Read) -> Result<Option<T>> {
    let mut prefix = [0u8; 4];
    match input.read_exact(&mut prefix) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(Error::Worker { message: format!("read: {e}"), retryable: true }),
    }
    let mut body = vec![0u8; body_len(prefix)?];
    input
        .read_exact(&mut body)
        .map_err(|e| Error::Worker { message: format!("truncated frame: {e}"), retryable: true })?;
    decode_body(&body).map(Some)
}

/// Writes one frame (the supervisor's side: the worker's stdin under tokio).
pub async fn write_frame_async<T: Serialize>(out: &mut (impl AsyncWrite + Unpin), value: &T) -> Result<()> {
    let bytes = encode_frame(value)?;
    out.write_all(&bytes)
        .await
        .map_err(|e| Error::Worker { message: format!("cannot send the request to the worker: {e}"), retryable: true })
}

/// Reads one frame (the supervisor's side: the worker's stdout under tokio); `Ok(None)`
/// on a clean end of stream before a frame starts.
pub async fn read_frame_async<T: DeserializeOwned>(input: &mut (impl AsyncRead + Unpin)) -> Result<Option<T>> {
    let mut prefix = [0u8; 4];
    match input.read_exact(&mut prefix).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(Error::Worker { message: format!("read: {e}"), retryable: true }),
    }
    let mut body = vec![0u8; body_len(prefix)?];
    input
        .read_exact(&mut body)
        .await
        .map_err(|e| Error::Worker { message: format!("truncated frame: {e}"), retryable: true })?;
    decode_body(&body).map(Some)
}

/// Receives events from the training code.
pub trait EventSink {
    /// Reports one event; an error means the supervisor is gone.
    fn emit(&mut self, event: WorkerEvent) -> Result<()>;

    /// Notes that the training or evaluation loop is making progress. Called often (every
    /// step and evaluation batch); a sink that reports to a watchdog rate-limits it.
    fn alive(&mut self, _step: u64) -> Result<()> {
        Ok(())
    }
}

/// How often a [`FrameSink`] forwards [`EventSink::alive`] as a [`WorkerEvent::Alive`].
pub const ALIVE_EVERY: Duration = Duration::from_secs(1);

/// Writes events as frames to a writer (the worker's stdout).
#[derive(Debug)]
pub struct FrameSink<W: Write> {
    out: W,
    last_alive: Option<Instant>,
}

impl<W: Write> FrameSink<W> {
    /// A sink writing frames to `out`.
    pub fn new(out: W) -> Self {
        FrameSink { out, last_alive: None }
    }
}

impl<W: Write> EventSink for FrameSink<W> {
    fn emit(&mut self, event: WorkerEvent) -> Result<()> {
        self.last_alive = Some(Instant::now());
        write_frame(&mut self.out, &event)
    }

    fn alive(&mut self, step: u64) -> Result<()> {
        if self.last_alive.is_some_and(|at| at.elapsed() < ALIVE_EVERY) {
            return Ok(());
        }
        self.emit(WorkerEvent::Alive { step })
    }
}

/// Collects events in memory (tests).
#[cfg(test)]
#[derive(Debug, Default)]
pub struct VecSink(pub Vec<WorkerEvent>);

#[cfg(test)]
impl EventSink for VecSink {
    fn emit(&mut self, event: WorkerEvent) -> Result<()> {
        self.0.push(event);
        Ok(())
    }
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
    fn async_frames_read_what_sync_frames_wrote() {
        let event = WorkerEvent::Alive { step: 7 };
        let mut buf = Vec::new();
        write_frame(&mut buf, &event).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
            let mut r = std::io::Cursor::new(buf);
            assert_eq!(read_frame_async::<WorkerEvent>(&mut r).await.unwrap(), Some(event.clone()));
            assert_eq!(read_frame_async::<WorkerEvent>(&mut r).await.unwrap(), None);
            let mut out = Vec::new();
            write_frame_async(&mut out, &event).await.unwrap();
            assert_eq!(out, encode_frame(&event).unwrap());
        });
    }

    #[test]
    fn truncated_and_oversized_frames_are_errors() {
        let mut r = std::io::Cursor::new(vec![10, 0, 0, 0, 1, 2]);
        assert!(read_frame::<WorkerEvent>(&mut r).is_err());
        let mut r = std::io::Cursor::new(u32::MAX.to_le_bytes().to_vec());
        assert!(read_frame::<WorkerEvent>(&mut r).is_err());
    }
}
