//! The per-shard worker process (`qagent worker`, also reachable as `qsched worker` in
//! embedded mode).
//!
//! A fresh process per shard means a libtorch abort, a CUDA device-side assert or a
//! segfault costs one shard, never the agent; peak memory is the shard's own; and
//! cancelling is killing. The worker reads one [`WorkerRequest`] from stdin, trains, and
//! writes [`WorkerEvent`] frames to stdout. It exits as soon as its stdin closes (the
//! supervisor died), so an orphaned worker never keeps a GPU busy.

use std::io::Read;
use std::time::Instant;

use tracing::{error, info, info_span};

use crate::error::{Error, Result};
use crate::protocol::{EventSink, FrameSink, PROTOCOL_VERSION, WorkerEvent, WorkerRequest, read_frame};
use qsched_models::device;

/// Exit codes of the worker process.
pub mod exit {
    /// Finished or failed with the outcome reported.
    pub const REPORTED: i32 = 0;
    /// The request could not be read.
    pub const BAD_REQUEST: i32 = 2;
    /// stdin closed while running: the supervisor is gone.
    pub const ORPHANED: i32 = 3;
}

/// Runs the worker on this process's stdin/stdout and returns the exit code; it logs at
/// `info` unless `RUST_LOG` says otherwise (`qagent worker`).
pub fn main_stdio() -> i32 {
    main_stdio_logging("info")
}

/// [`main_stdio`] logging at `default_filter` when `RUST_LOG` is unset. `qsched`'s
/// embedded workers pass `warn`, the level of `qsched` itself: a first local run shows
/// its progress bar and results, not every evaluation of every shard.
pub fn main_stdio_logging(default_filter: &str) -> i32 {
    let mut stdin = std::io::stdin().lock();
    let request: WorkerRequest = match read_frame(&mut stdin) {
        Ok(Some(r)) => r,
        Ok(None) => {
            eprintln!("qagent worker: no request on stdin");
            return exit::BAD_REQUEST;
        }
        Err(e) => {
            eprintln!("qagent worker: bad request: {e}");
            return exit::BAD_REQUEST;
        }
    };
    drop(stdin);
    // Watch stdin: EOF means the supervisor died (its end of the pipe closed).
    std::thread::spawn(|| {
        let mut sink = [0u8; 64];
        let mut stdin = std::io::stdin();
        loop {
            match stdin.read(&mut sink) {
                // Not `process::exit`: its static destructors would pull libtorch's globals
                // from under the training thread (see `ffi::exit_now`).
                Ok(0) | Err(_) => qsched_models::ffi::exit_now(exit::ORPHANED),
                Ok(_) => {}
            }
        }
    });
    let telemetry = shared::telemetry::init("qagent-worker", default_filter);
    let mut sink = FrameSink::new(std::io::stdout().lock());
    let event = match run(&request, &mut sink) {
        Ok(()) => None,
        Err(e) => Some(WorkerEvent::Failed { message: error_chain(&e), retryable: e.is_retryable() }),
    };
    if let Some(event) = event {
        if let WorkerEvent::Failed { message, .. } = &event {
            error!(error = %message, "shard failed");
        }
        let _ = sink.emit(event);
    }
    telemetry.flush();
    exit::REPORTED
}

/// The full error chain, `outer: inner: root`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        src = cause.source();
    }
    s
}

/// Runs one request, reporting through `sink` (the final event included on success).
pub fn run(request: &WorkerRequest, sink: &mut dyn EventSink) -> Result<()> {
    if request.protocol_version != PROTOCOL_VERSION {
        return Err(Error::Worker {
            message: format!("protocol version {} (this worker speaks {PROTOCOL_VERSION})", request.protocol_version),
            retryable: false,
        });
    }
    let shard = &request.shard;
    let span = info_span!("shard.train", run = %shard.run_id, shard = %shard.shard_id, model = %shard.model,
        task = %shard.task, seed = shard.seed, device = %request.device, attempt = request.attempt);
    if let Some(tp) = &request.traceparent {
        shared::telemetry::set_parent(
            &span,
            &std::collections::BTreeMap::from([("traceparent".to_owned(), tp.clone())]),
        );
    }
    let _enter = span.enter();
    let started = Instant::now();
    if request.threads > 0 {
        tch::set_num_threads(request.threads as i32);
    }
    let pinned = device::pin(request.device)?;
    info!(device = %pinned.describe(), threads = tch::get_num_threads(), "worker pinned");
    // A panic inside libtorch's short-name ops (e.g. CUDA OOM) becomes a failed shard.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        crate::shard::run_shard(request, &pinned, sink, started)
    }));
    match outcome {
        Ok(Ok(outcome)) => sink.emit(WorkerEvent::Finished(Box::new(outcome))),
        Ok(Err(e)) => Err(e),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "panic".to_owned());
            let retryable = qsched_models::is_out_of_memory(&message);
            Err(Error::Worker { message: format!("panic while training: {message}"), retryable })
        }
    }
}
