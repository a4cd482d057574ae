//! The agent's consume loop: one device, one shard at a time, a worker process per shard.
//!
//! For each delivery: decode (undecodable → dead-letter with the reason, keep running);
//! skip shards that already have a result (a redelivery after a crash that happened
//! between storing and acking) or whose run is cancelled; otherwise start a worker, relay
//! its metrics to the store, and when it ends store the final result **before** acking.
//! A retryable failure is rejected back to the queue until the delivery limit; the last
//! attempt's failure is stored as a failed result so it is always visible.
//!
//! A store (Redis) outage costs time, never a shard: every store call made while a
//! delivery is held is retried until the store answers again (or the agent shuts down),
//! with the delivery kept unacked meanwhile. Prefetch 1 means the agent then takes no
//! other work, nothing is rejected, and no delivery counts toward its limit; the agent
//! logs what it is waiting for. A message that cannot even be dead-lettered by
//! publishing (too large for the publish limit, say) is rejected without requeue, which
//! sends it to the dead-letter exchange by the queue's own policy: it never crashes the
//! agent.
//!
//! Everything here is I/O on the tokio runtime; training happens in the worker process,
//! so AMQP heartbeats and Redis writes are never starved by a long step.
//!
//! What runs a shard is an [`Executor`]: the worker process in production, or a no-op that
//! trains nothing ([`crate::sim`]), so that a scale simulation of dispatch goes through this
//! very loop (decode, skip-if-stored, cancel check, store before ack) and not a copy of it.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, ChildStderr, Command};
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, error, info, info_span, warn};

use shared::broker::{Broker, BrokerAdmin, Delivery};
use shared::shard::{AgentHeartbeat, MetricPoint, Shard, ShardMeasurements, ShardResult, ShardState, unix_now};
use shared::store::{AttemptError, DeadLetterRecord, Progress, Store};
use shared::{DeviceSpec, wire};

use crate::error::{Error, Result};
use crate::exporter::AgentMetrics;
use crate::protocol::{PROTOCOL_VERSION, WorkerEvent, WorkerRequest, read_frame_async, write_frame_async};

/// First wait before consuming again after the broker connection was lost.
const RECONNECT_MIN: Duration = Duration::from_millis(500);
/// Longest wait between reconnection attempts (the agent keeps trying until shutdown).
const RECONNECT_MAX: Duration = Duration::from_secs(30);
/// Default of [`AgentConfig::stall_timeout`]: long enough for loading a large checkpoint
/// or one DiZO projection round, short against a shard's hours.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(900);
/// First wait before retrying a store call that failed transiently.
const STORE_RETRY_MIN: Duration = Duration::from_millis(200);
/// Longest wait between store retries during an outage.
const STORE_RETRY_MAX: Duration = Duration::from_secs(5);
/// How often an ongoing store outage is reported in the log.
const OUTAGE_REPORT_EVERY: Duration = Duration::from_secs(30);
/// Bytes of an oversized message's body kept in its dead-letter record.
const DEAD_LETTER_EXCERPT_BYTES: usize = 4096;

/// How an agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Device this agent is pinned to.
    pub device: DeviceSpec,
    /// GPU name (for heartbeats), when pinned to CUDA.
    pub gpu_name: Option<String>,
    /// Data directory passed to workers.
    pub data_dir: PathBuf,
    /// Checkpoint directory passed to workers.
    pub checkpoint_dir: Option<PathBuf>,
    /// Directories a shard's pretrained weights may come from (`--model-root`).
    pub model_roots: Vec<PathBuf>,
    /// Intra-op CPU threads per worker (0 = libtorch's default).
    pub threads: u32,
    /// Program and arguments that start a worker (`[qagent, "worker"]`).
    pub worker_command: Vec<OsString>,
    /// Heartbeat period.
    pub heartbeat_interval: Duration,
    /// Heartbeat expiry.
    pub heartbeat_ttl: Duration,
    /// How often a running shard checks its run's cancel flag.
    pub cancel_poll: Duration,
    /// A worker that reports no progress (no step, evaluation batch or other event) for
    /// this long is taken as hung: it is killed and its shard requeued.
    pub stall_timeout: Duration,
    /// Deliveries before a failing shard is given up (matches the queue's limit).
    pub delivery_limit: u32,
    /// Largest message decoded.
    pub max_message_bytes: usize,
    /// Agent id (`host:device:pid`).
    pub agent_id: String,
    /// Host name.
    pub host: String,
    /// Stop after this many shards (None = run until shutdown).
    pub max_shards: Option<u64>,
    /// Where the agent records its Prometheus metrics (served by `--metrics-listen`).
    pub metrics: AgentMetrics,
    /// What runs a shard once it is taken (a worker process unless simulating).
    pub executor: Executor,
    /// Where each worker's log lines (its stderr) go.
    pub worker_stderr: WorkerStderr,
}

/// What runs a shard after the supervisor has decoded it, found no earlier result, checked
/// the cancel flag, counted the attempt and marked the shard running.
#[derive(Debug, Clone, Default)]
pub enum Executor {
    /// A worker process per shard, started from [`AgentConfig::worker_command`].
    #[default]
    Process,
    /// Trains nothing: the shard succeeds after the executor's delay (dispatch benchmarks
    /// and tests of the consume path at fleet scale).
    NoOp(crate::sim::NoOpExecutor),
}

/// Where a worker's stderr, its log, goes.
#[derive(Clone, Default)]
pub enum WorkerStderr {
    /// The agent's own stderr, written by the worker directly (`qagent`).
    #[default]
    Inherit,
    /// Each line, without its newline, to this function. `qsched submit --local` prints
    /// them above its progress bar: a worker writing to the terminal directly would
    /// leave a copy of the bar behind on every line.
    Lines(Arc<dyn Fn(&str) + Send + Sync>),
}

impl std::fmt::Debug for WorkerStderr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WorkerStderr::Inherit => "Inherit",
            WorkerStderr::Lines(_) => "Lines(..)",
        })
    }
}

impl AgentConfig {
    /// Defaults for `device`, with this host's name and a worker started from the
    /// current executable with the `worker` subcommand.
    pub fn new(device: DeviceSpec, data_dir: PathBuf) -> Result<Self> {
        let exe = self_exe()?;
        let host = host_name();
        Ok(AgentConfig {
            device,
            gpu_name: None,
            data_dir,
            checkpoint_dir: None,
            model_roots: Vec::new(),
            threads: 0,
            worker_command: vec![exe.into_os_string(), "worker".into()],
            heartbeat_interval: Duration::from_secs(5),
            heartbeat_ttl: Duration::from_secs(30),
            cancel_poll: Duration::from_secs(2),
            stall_timeout: DEFAULT_STALL_TIMEOUT,
            delivery_limit: shared::broker::DEFAULT_DELIVERY_LIMIT,
            max_message_bytes: wire::DEFAULT_MAX_MESSAGE_BYTES,
            agent_id: format!("{host}:{device}:{}", std::process::id()),
            host,
            max_shards: None,
            metrics: AgentMetrics::new(),
            executor: Executor::Process,
            worker_stderr: WorkerStderr::Inherit,
        })
    }
}

/// The running executable, to start workers from. `/proc/self/exe` stays valid when the
/// installed binary is replaced while the agent runs (`current_exe()` would then name a
/// deleted file and every worker start would fail).
pub fn self_exe() -> Result<PathBuf> {
    let proc_exe = std::path::Path::new("/proc/self/exe");
    if proc_exe.exists() {
        Ok(proc_exe.to_path_buf())
    } else {
        std::env::current_exe().map_err(|e| Error::io("current executable", e))
    }
}

/// This machine's host name (`/proc/sys/kernel/hostname`, then `$HOSTNAME`).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into())
}

/// What an agent did before it stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentStats {
    /// Shards that ended with a stored result (any status).
    pub finished: u64,
    /// Deliveries rejected back to the queue.
    pub requeued: u64,
    /// Deliveries skipped because a result existed.
    pub duplicates: u64,
    /// Messages dead-lettered by this agent.
    pub dead_lettered: u64,
}

#[derive(Debug, Default)]
struct LiveState {
    current: Option<(String, String)>,
    step: Option<u64>,
    total_steps: Option<u64>,
    /// Unix seconds of the running worker's last event (its progress).
    progress_at: Option<f64>,
    done: u64,
}

/// Runs the agent until `shutdown` resolves (or `max_shards` is reached): consumes from
/// `broker`, and reads the notices of new dead letters from `dead_letters` (the same
/// broker in production; a test double of the messaging path passes the broker it wraps).
pub async fn run(
    cfg: AgentConfig,
    broker: Arc<dyn Broker>,
    dead_letters: Arc<dyn BrokerAdmin>,
    store: Arc<dyn Store>,
    shutdown: impl Future<Output = ()>,
) -> Result<AgentStats> {
    let live = Arc::new(Mutex::new(LiveState::default()));
    let started_at = unix_now();
    broker.declare().await?;
    let mut consumer = broker.consume(cfg.device.class(), &cfg.agent_id).await?;
    info!(agent = %cfg.agent_id, device = %cfg.device, queue_class = %cfg.device.class(), "agent consuming");
    cfg.metrics.agent_started(&cfg.agent_id, &cfg.host, &cfg.device.to_string(), cfg.gpu_name.as_deref());

    let heartbeat = tokio::spawn(heartbeat_loop(cfg.clone(), store.clone(), live.clone(), started_at));
    let notices = tokio::spawn(dead_letter_notice_loop(cfg.clone(), dead_letters, store.clone()));
    let mut stats = AgentStats::default();
    tokio::pin!(shutdown);
    let mut backoff = RECONNECT_MIN;
    let result = loop {
        if cfg.max_shards.is_some_and(|m| stats.finished + stats.duplicates >= m) {
            break Ok(());
        }
        let next = tokio::select! {
            _ = &mut shutdown => break Ok(()),
            next = consumer.next() => next,
        };
        let lost = match next {
            Some(Ok(delivery)) => {
                backoff = RECONNECT_MIN;
                match handle_delivery(&cfg, broker.as_ref(), store.as_ref(), &live, delivery, &mut stats, &mut shutdown)
                    .await
                {
                    Ok(Flow::Continue) => continue,
                    Ok(Flow::Stop) => break Ok(()),
                    // A dropped broker connection while settling: the broker requeues the
                    // delivery, and a stored result makes the redelivery a no-op. (Store
                    // outages never get here: they are waited out while the delivery is held.)
                    Err(e) if e.is_retryable() => e.to_string(),
                    Err(e) => break Err(e),
                }
            }
            Some(Err(e)) if e.is_transient() => e.to_string(),
            Some(Err(e)) => break Err(Error::Shared(e)),
            None => "the broker closed the consumer".to_owned(),
        };
        // The connection (or channel) is gone: close what is left of the old consumer
        // first (so it holds no delivery of its own), then consume again once the broker
        // is back.
        warn!(error = %lost, "consumer lost; reconnecting");
        drop(consumer);
        let mut reconnected = None;
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(RECONNECT_MAX);
            match broker.consume(cfg.device.class(), &cfg.agent_id).await {
                Ok(c) => {
                    info!("consuming again");
                    reconnected = Some(c);
                    break;
                }
                Err(e) => warn!(error = %e, retry_in = ?backoff, "reconnect failed"),
            }
        }
        match reconnected {
            Some(c) => consumer = c,
            None => break Ok(()),
        }
    };
    heartbeat.abort();
    notices.abort();
    if let Err(e) = store.remove_agent(&cfg.agent_id).await {
        warn!(error = %e, "could not remove the agent's heartbeat");
    }
    result.map(|()| stats)
}

enum Flow {
    Continue,
    Stop,
}

async fn heartbeat_loop(cfg: AgentConfig, store: Arc<dyn Store>, live: Arc<Mutex<LiveState>>, started_at: f64) {
    let mut tick = tokio::time::interval(cfg.heartbeat_interval);
    loop {
        tick.tick().await;
        // Read before the live state is locked: /proc is I/O.
        let worker_memory = cfg.metrics.worker_resident_bytes();
        let beat = {
            let l = live.lock().unwrap_or_else(|p| p.into_inner());
            AgentHeartbeat {
                agent: cfg.agent_id.clone(),
                host: cfg.host.clone(),
                device: cfg.device.to_string(),
                gpu_name: cfg.gpu_name.clone(),
                current: l.current.clone(),
                step: l.step,
                total_steps: l.total_steps,
                progress_at: l.progress_at,
                started_at,
                at: unix_now(),
                shards_done: l.done,
                worker_memory_bytes: l.current.as_ref().and(worker_memory),
            }
        };
        match store.heartbeat(&beat, cfg.heartbeat_ttl).await {
            Ok(()) => cfg.metrics.heartbeat_stored(),
            Err(e) => warn!(error = %e, "heartbeat not stored"),
        }
    }
}

/// Marks the shards the broker dead-lettered on its own as `dead` (see
/// [`shared::dead_letters`]), on the heartbeat's cadence; failures are logged and tried
/// again on the next tick.
async fn dead_letter_notice_loop(cfg: AgentConfig, broker: Arc<dyn BrokerAdmin>, store: Arc<dyn Store>) {
    let mut tick = tokio::time::interval(cfg.heartbeat_interval);
    loop {
        tick.tick().await;
        loop {
            match shared::dead_letters::record_notices(broker.as_ref(), store.as_ref(), &cfg.agent_id).await {
                Ok(report) => {
                    if report.marked_dead > 0 {
                        warn!(
                            shards = report.marked_dead,
                            "the broker dead-lettered shards (delivery limit); marked them dead"
                        );
                    }
                    // A full pass may have left more behind.
                    if report.taken < shared::dead_letters::NOTICES_PER_PASS {
                        break;
                    }
                }
                Err(e) => {
                    debug!(error = %e, "dead-letter notices not read; trying again later");
                    break;
                }
            }
        }
    }
}

/// Waits out a store outage: runs `op` until it succeeds, retrying transient failures with
/// backoff and reporting the outage in the log. `None` when the agent is shutting down
/// first. A permanent error is returned as it is.
async fn until_stored<T, F, Fut>(
    what: &str,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
    mut op: F,
) -> Result<Option<T>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = shared::Result<T>>,
{
    let started = tokio::time::Instant::now();
    let mut delay = STORE_RETRY_MIN;
    let mut reported: Option<tokio::time::Instant> = None;
    loop {
        match op().await {
            Ok(value) => {
                if reported.is_some() {
                    info!(waited_s = started.elapsed().as_secs(), "the store answers again; {what} done");
                }
                return Ok(Some(value));
            }
            Err(e) if e.is_transient() => {
                if reported.is_none_or(|at| at.elapsed() >= OUTAGE_REPORT_EVERY) {
                    warn!(error = %e, waiting_s = started.elapsed().as_secs(),
                        "the store is unavailable; holding the delivery (not rejected, not counted) until it answers, to {what}");
                    reported = Some(tokio::time::Instant::now());
                }
                tokio::select! {
                    _ = &mut *shutdown => return Ok(None),
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(STORE_RETRY_MAX);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// An oversized body is replaced in its dead-letter record by an excerpt, with its size
/// and sha256 in the headers, so that the record itself fits the publish limit.
fn dead_letter_body(body: &[u8], headers: &mut BTreeMap<String, String>, max_bytes: usize) -> Vec<u8> {
    if body.len() <= max_bytes {
        return body.to_vec();
    }
    use sha2::Digest;
    headers.insert("x-qsched-original-size".into(), body.len().to_string());
    headers.insert("x-qsched-original-sha256".into(), hex::encode(sha2::Sha256::digest(body)));
    body[..DEAD_LETTER_EXCERPT_BYTES.min(max_bytes)].to_vec()
}

async fn dead_letter(
    cfg: &AgentConfig,
    broker: &dyn Broker,
    store: &dyn Store,
    delivery: Delivery,
    reason: String,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Result<Flow> {
    warn!(reason = %reason, message_id = ?delivery.message_id, "dead-lettering a message");
    let mut headers = delivery.headers.clone();
    if let Some(id) = &delivery.message_id {
        headers.insert("message-id".into(), id.clone());
    }
    let body = dead_letter_body(&delivery.body, &mut headers, cfg.max_message_bytes);
    if let Err(e) = broker.dead_letter(body, headers.clone(), &reason).await {
        if e.is_transient() {
            return Err(e.into());
        }
        // Whatever this message is, it must not stop the agent: the queue's own
        // dead-letter exchange takes it (with the broker's reason, "rejected").
        warn!(error = %e, "cannot publish the dead letter; rejecting the message to the dead-letter exchange");
        delivery.reject(false).await?;
        return Ok(Flow::Continue);
    }
    let record = DeadLetterRecord {
        letter: shared::broker::DeadLetter {
            message_id: delivery.message_id.clone(),
            reason: reason.clone(),
            queue: Some(cfg.device.class().to_string()),
            size: delivery.body.len(),
            headers,
        },
        agent: cfg.agent_id.clone(),
        at: unix_now(),
    };
    if until_stored("record the dead letter", shutdown, || store.record_dead_letter(&record)).await?.is_none() {
        delivery.nack_requeue().await?;
        return Ok(Flow::Stop);
    }
    if let Some((run, shard)) = delivery.message_id.as_deref().and_then(shared::names::parse_message_id)
        && until_stored("mark the shard dead", shutdown, || store.set_state(&run, &shard, ShardState::Dead))
            .await?
            .is_none()
    {
        delivery.nack_requeue().await?;
        return Ok(Flow::Stop);
    }
    delivery.ack().await?;
    Ok(Flow::Continue)
}

async fn handle_delivery(
    cfg: &AgentConfig,
    broker: &dyn Broker,
    store: &dyn Store,
    live: &Arc<Mutex<LiveState>>,
    delivery: Delivery,
    stats: &mut AgentStats,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Result<Flow> {
    let shard = match wire::decode_shard(&delivery.body, cfg.max_message_bytes) {
        Ok(s) => s,
        Err(e) => {
            let flow = dead_letter(cfg, broker, store, delivery, format!("undecodable message: {e}"), shutdown).await?;
            stats.dead_lettered += 1;
            return Ok(flow);
        }
    };
    // The message id is set by the publisher apart from the body: a body changed in
    // transit (another run id, say, which the content hash does not cover) no longer
    // matches it.
    let named = format!("{}:{}", shard.run_id, shard.shard_id);
    if delivery.message_id.as_deref() != Some(named.as_str()) {
        let reason = format!(
            "corrupt shard: the message id {:?} does not name the shard it carries ({named})",
            delivery.message_id.as_deref().unwrap_or("(none)")
        );
        let flow = dead_letter(cfg, broker, store, delivery, reason, shutdown).await?;
        stats.dead_lettered += 1;
        return Ok(flow);
    }
    let expected = shard.content_id();
    if shard.shard_id != expected {
        let reason = format!(
            "corrupt shard: its content hashes to {expected}, not to its id {} (changed in transit or by hand)",
            shard.shard_id
        );
        let flow = dead_letter(cfg, broker, store, delivery, reason, shutdown).await?;
        stats.dead_lettered += 1;
        return Ok(flow);
    }
    if shard.device_class != cfg.device.class() {
        let reason = format!("shard for {} devices arrived on a {} agent", shard.device_class, cfg.device.class());
        let flow = dead_letter(cfg, broker, store, delivery, reason, shutdown).await?;
        stats.dead_lettered += 1;
        return Ok(flow);
    }
    let span = info_span!("shard.process", otel.kind = "consumer", run = %shard.run_id, shard = %shard.shard_id,
        model = %shard.model, task = %shard.task, seed = shard.seed, device = %cfg.device,
        delivery_count = delivery.delivery_count, messaging.system = "rabbitmq", messaging.operation.type = "process");
    shared::telemetry::set_parent(&span, &delivery.headers);
    let traceparent = shared::telemetry::traceparent(&span);
    process_shard(cfg, store, live, delivery, shard, stats, shutdown, traceparent).instrument(span).await
}

/// Waits out a store outage for `$op`; on shutdown meanwhile, hands the delivery back
/// without counting an attempt and stops the agent.
macro_rules! stored {
    ($what:expr, $shutdown:expr, $delivery:expr, $op:expr) => {
        match until_stored($what, $shutdown, || $op).await? {
            Some(value) => value,
            None => {
                $delivery.nack_requeue().await?;
                return Ok(Flow::Stop);
            }
        }
    };
}

#[allow(clippy::too_many_arguments)]
async fn process_shard(
    cfg: &AgentConfig,
    store: &dyn Store,
    live: &Arc<Mutex<LiveState>>,
    delivery: Delivery,
    shard: Shard,
    stats: &mut AgentStats,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
    traceparent: Option<String>,
) -> Result<Flow> {
    let (run, id) = (shard.run_id.clone(), shard.shard_id.clone());
    let checkpoints = match &cfg.checkpoint_dir {
        Some(root) => Some(crate::checkpoint::ShardDir::new(root, &run, &id)?),
        None => None,
    };
    if stored!("check for an earlier result", shutdown, delivery, store.get_result(&run, &id)).is_some() {
        info!("result already stored; acking the redelivery");
        remove_checkpoints(checkpoints.as_ref());
        delivery.ack().await?;
        stats.duplicates += 1;
        return Ok(Flow::Continue);
    }
    if stored!("check the cancel flag", shutdown, delivery, store.is_cancelled(&run)) {
        // Not an attempt: the count stays what earlier attempts made it.
        let attempts = stored!("read the attempt counts", shutdown, delivery, store.attempts(&run));
        let attempt = attempts.get(id.as_str()).copied().unwrap_or(0);
        let result = failure_result(
            cfg,
            &shard,
            attempt,
            ShardState::Cancelled,
            "run cancelled before start",
            unix_now(),
            traceparent,
        );
        stored!("store the result", shutdown, delivery, store_result(store, &result));
        delivery.ack().await?;
        stats.finished += 1;
        return Ok(Flow::Continue);
    }
    let attempt = stored!("count the attempt", shutdown, delivery, store.incr_attempt(&run, &id));
    let started_at = unix_now();
    stored!("mark the shard running", shutdown, delivery, store.set_state(&run, &id, ShardState::Running));
    {
        let mut l = live.lock().unwrap_or_else(|p| p.into_inner());
        l.current = Some((run.to_string(), id.to_string()));
        l.step = Some(0);
        l.total_steps = Some(u64::from(shard.train.max_steps));
        l.progress_at = Some(unix_now());
    }
    cfg.metrics.shard_started(&shard, attempt);
    let last_attempt = delivery.delivery_count + 1 >= cfg.delivery_limit;
    let request = WorkerRequest {
        protocol_version: PROTOCOL_VERSION,
        shard: shard.clone(),
        device: cfg.device,
        data_dir: cfg.data_dir.clone(),
        checkpoint_dir: cfg.checkpoint_dir.clone(),
        model_roots: cfg.model_roots.clone(),
        threads: cfg.threads,
        traceparent: traceparent.clone(),
        attempt,
    };
    let ended = match &cfg.executor {
        Executor::Process => {
            let ended = run_worker(cfg, store, live, &request, shutdown).await;
            cfg.metrics.worker_ended();
            ended
        }
        Executor::NoOp(noop) => run_noop(cfg, store, noop, &request, shutdown).await,
    };
    {
        let mut l = live.lock().unwrap_or_else(|p| p.into_inner());
        l.current = None;
        l.step = None;
        l.total_steps = None;
        l.progress_at = None;
    }
    let flow = match ended {
        WorkerEnd::Finished(outcome) => {
            let result = success_result(cfg, &shard, attempt, *outcome, started_at, traceparent);
            stored!("store the result", shutdown, delivery, store_result(store, &result));
            cfg.metrics.shard_succeeded(&shard, result.measured.peak_memory_bytes, &result.measured.peak_memory_kind);
            // The result is durable: the checkpoints are not needed any more, whether or
            // not the ack below reaches the broker (a redelivery finds the result).
            remove_checkpoints(checkpoints.as_ref());
            delivery.ack().await?;
            stats.finished += 1;
            info!(status = "succeeded", "shard stored and acked");
            Flow::Continue
        }
        WorkerEnd::Failed { message, retryable } if retryable && !last_attempt => {
            warn!(error = %message, attempt, "retryable failure; requeueing");
            let failed = AttemptError { attempt, agent: cfg.agent_id.clone(), error: message, at: unix_now() };
            stored!("record the attempt's error", shutdown, delivery, store.record_attempt_error(&run, &id, &failed));
            stored!("mark the shard queued", shutdown, delivery, store.set_state(&run, &id, ShardState::Queued));
            cfg.metrics.shard_retried(&shard);
            delivery.reject(true).await?;
            stats.requeued += 1;
            Flow::Continue
        }
        WorkerEnd::Failed { message, retryable } => {
            let message = if retryable {
                format!("{message} (attempt {} of {}; giving up)", delivery.delivery_count + 1, cfg.delivery_limit)
            } else {
                message
            };
            error!(error = %message, "shard failed");
            let result = failure_result(cfg, &shard, attempt, ShardState::Failed, &message, started_at, traceparent);
            stored!("store the result", shutdown, delivery, store_result(store, &result));
            cfg.metrics.shard_failed(&shard);
            delivery.ack().await?;
            stats.finished += 1;
            Flow::Continue
        }
        WorkerEnd::Cancelled => {
            let result = failure_result(
                cfg,
                &shard,
                attempt,
                ShardState::Cancelled,
                "run cancelled while running",
                started_at,
                traceparent,
            );
            stored!("store the result", shutdown, delivery, store_result(store, &result));
            delivery.ack().await?;
            stats.finished += 1;
            Flow::Continue
        }
        WorkerEnd::Shutdown => {
            info!("agent shutting down; shard returned to the queue");
            if let Err(e) = store.set_state(&run, &id, ShardState::Queued).await {
                warn!(error = %e, "could not mark the shard queued");
            }
            delivery.nack_requeue().await?;
            Flow::Stop
        }
    };
    live.lock().unwrap_or_else(|p| p.into_inner()).done = stats.finished;
    Ok(flow)
}

fn remove_checkpoints(checkpoints: Option<&crate::checkpoint::ShardDir>) {
    if let Some(dir) = checkpoints
        && let Err(e) = dir.remove()
    {
        warn!(error = %e, "could not remove the shard's checkpoints");
    }
}

/// Stores a final result once; a second result for the same shard keeps the first.
async fn store_result(store: &dyn Store, result: &ShardResult) -> shared::Result<()> {
    if !store.put_result(result).await? {
        info!("a result for this shard already existed; keeping the first");
    }
    Ok(())
}

enum WorkerEnd {
    Finished(Box<ShardMeasurements>),
    Failed { message: String, retryable: bool },
    Cancelled,
    Shutdown,
}

/// Starts a worker; with [`WorkerStderr::Lines`] also the task that forwards its stderr
/// line by line (it ends when the worker's stderr closes).
fn spawn_worker(cfg: &AgentConfig) -> Result<(Child, Option<JoinHandle<()>>)> {
    let (program, args) = cfg
        .worker_command
        .split_first()
        .ok_or_else(|| Error::Worker { message: "empty worker command".into(), retryable: false })?;
    let stderr = match cfg.worker_stderr {
        WorkerStderr::Inherit => std::process::Stdio::inherit(),
        WorkerStderr::Lines(_) => std::process::Stdio::piped(),
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::Worker { message: format!("cannot start worker {program:?}: {e}"), retryable: false })?;
    let forward = match (&cfg.worker_stderr, child.stderr.take()) {
        (WorkerStderr::Lines(sink), Some(pipe)) => Some(tokio::spawn(forward_lines(pipe, sink.clone()))),
        _ => None,
    };
    Ok((child, forward))
}

/// Hands each line of a worker's stderr to `sink` until the pipe closes. Bytes that are
/// not UTF-8 are replaced rather than dropped: a log line is never lost to its encoding.
async fn forward_lines(pipe: ChildStderr, sink: Arc<dyn Fn(&str) + Send + Sync>) {
    let mut reader = tokio::io::BufReader::new(pipe);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                sink(text.trim_end_matches(['\n', '\r']));
            }
            Err(e) => {
                sink(&format!("(the worker's log could not be read further: {e})"));
                return;
            }
        }
    }
}

async fn run_worker(
    cfg: &AgentConfig,
    store: &dyn Store,
    live: &Arc<Mutex<LiveState>>,
    request: &WorkerRequest,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> WorkerEnd {
    let shard = &request.shard;
    let (mut child, forward) = match spawn_worker(cfg) {
        Ok(c) => c,
        Err(e) => return WorkerEnd::Failed { message: e.to_string(), retryable: e.is_retryable() },
    };
    if let Some(pid) = child.id() {
        cfg.metrics.worker_spawned(pid);
    }
    // The request goes in; stdin then stays open: its closing tells the worker we died.
    let mut stdin = child.stdin.take();
    if let Some(s) = stdin.as_mut()
        && let Err(e) = write_frame_async(s, request).await
    {
        return WorkerEnd::Failed { message: e.to_string(), retryable: e.is_retryable() };
    }
    let Some(mut stdout) = child.stdout.take() else {
        return WorkerEnd::Failed { message: "worker has no stdout".into(), retryable: true };
    };
    let mut cancel_tick = tokio::time::interval(cfg.cancel_poll);
    let mut watchdog =
        tokio::time::interval((cfg.stall_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(5)));
    let mut last_progress = tokio::time::Instant::now();
    let mut reported: Option<WorkerEnd> = None;
    loop {
        tokio::select! {
            _ = &mut *shutdown => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return WorkerEnd::Shutdown;
            }
            _ = cancel_tick.tick() => {
                match store.is_cancelled(&shard.run_id).await {
                    Ok(true) => {
                        info!("run cancelled; stopping the worker");
                        let _ = child.start_kill();
                        let _ = child.wait().await;
                        return WorkerEnd::Cancelled;
                    }
                    Ok(false) => {}
                    Err(e) => warn!(error = %e, "cancel flag not readable"),
                }
            }
            _ = watchdog.tick() => {
                let silent = last_progress.elapsed();
                if silent >= cfg.stall_timeout {
                    let message = format!(
                        "worker made no progress for {} s (stopped, deadlocked or hung in a kernel); killed it",
                        silent.as_secs()
                    );
                    error!(pid = ?child.id(), "{message}");
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    return WorkerEnd::Failed { message, retryable: true };
                }
            }
            event = read_frame_async::<WorkerEvent>(&mut stdout) => {
                if matches!(event, Ok(Some(_))) {
                    last_progress = tokio::time::Instant::now();
                    live.lock().unwrap_or_else(|p| p.into_inner()).progress_at = Some(unix_now());
                }
                match event {
                Ok(Some(WorkerEvent::Alive { step })) => {
                    live.lock().unwrap_or_else(|p| p.into_inner()).step = Some(step);
                }
                Ok(Some(WorkerEvent::Metrics { step, total_steps, kind, values })) => {
                    relay_metrics(cfg, store, live, shard, step, total_steps, kind, values).await;
                }
                Ok(Some(WorkerEvent::Started { device, total_steps, resumed_from_step, .. })) => {
                    info!(device = %device, total_steps, resumed_from_step = ?resumed_from_step, "worker started training");
                }
                Ok(Some(WorkerEvent::Finished(outcome))) => reported = Some(WorkerEnd::Finished(outcome)),
                Ok(Some(WorkerEvent::Failed { message, retryable })) => reported = Some(WorkerEnd::Failed { message, retryable }),
                Ok(None) => break,
                Err(e) => {
                    let _ = child.start_kill();
                    reported.get_or_insert(WorkerEnd::Failed { message: format!("worker protocol error: {e}"), retryable: true });
                    break;
                }
                }
            }
        }
    }
    drop(stdin);
    let status = child.wait().await;
    // The worker's last log lines (a failure's reason among them) are out before its
    // result is stored and shown. Bounded: a process the worker left behind could hold
    // the pipe open.
    if let Some(forward) = forward {
        let _ = tokio::time::timeout(Duration::from_secs(5), forward).await;
    }
    if let Some(end) = reported {
        return end;
    }
    let how = match status {
        Ok(s) => {
            use std::os::unix::process::ExitStatusExt;
            match (s.code(), s.signal()) {
                (_, Some(sig)) => format!("killed by signal {sig}"),
                (Some(code), _) => format!("exited with status {code}"),
                _ => "ended".into(),
            }
        }
        Err(e) => format!("could not be waited for: {e}"),
    };
    // A crash without a report (segfault, abort, OOM killer) may be specific to this
    // host or attempt: let the delivery limit decide.
    WorkerEnd::Failed { message: format!("worker {how} without reporting a result"), retryable: true }
}

/// The no-op executor: records that it ran the shard, then waits its delay the way a
/// worker runs (a cancelled run or a shutdown ends the wait), and reports a success with
/// zero steps. Nothing here touches the store beyond the cancel polls a worker would get.
async fn run_noop(
    cfg: &AgentConfig,
    store: &dyn Store,
    noop: &crate::sim::NoOpExecutor,
    request: &WorkerRequest,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> WorkerEnd {
    let shard = &request.shard;
    noop.journal.executed(&cfg.agent_id, &shard.run_id, &shard.shard_id);
    if !noop.delay.is_zero() {
        let done = tokio::time::sleep(noop.delay);
        tokio::pin!(done);
        let mut cancel_tick = tokio::time::interval(cfg.cancel_poll);
        // The first tick is immediate; the supervisor has just read the flag.
        cancel_tick.tick().await;
        loop {
            tokio::select! {
                _ = &mut *shutdown => return WorkerEnd::Shutdown,
                _ = &mut done => break,
                _ = cancel_tick.tick() => match store.is_cancelled(&shard.run_id).await {
                    Ok(true) => return WorkerEnd::Cancelled,
                    Ok(false) => {}
                    Err(e) => warn!(error = %e, "cancel flag not readable"),
                },
            }
        }
    }
    WorkerEnd::Finished(Box::new(crate::sim::noop_outcome(cfg, shard, noop.delay)))
}

#[allow(clippy::too_many_arguments)]
async fn relay_metrics(
    cfg: &AgentConfig,
    store: &dyn Store,
    live: &Arc<Mutex<LiveState>>,
    shard: &Shard,
    step: u64,
    total_steps: u64,
    kind: String,
    values: BTreeMap<String, f64>,
) {
    {
        let mut l = live.lock().unwrap_or_else(|p| p.into_inner());
        l.step = Some(step);
        l.total_steps = Some(total_steps);
    }
    let loss = values.get("loss").copied();
    let point = MetricPoint { step, kind: kind.clone(), values, at: unix_now() };
    if let Err(e) = store.append_metrics(&shard.run_id, &shard.shard_id, std::slice::from_ref(&point)).await {
        warn!(error = %e, "metrics not stored");
    }
    if kind == "train" {
        cfg.metrics.train_point(step, point.at, &point.values);
        let progress = Progress { step, total_steps, agent: cfg.agent_id.clone(), loss, at: point.at };
        if let Err(e) = store.set_progress(&shard.run_id, &shard.shard_id, &progress).await {
            warn!(error = %e, "progress not stored");
        }
    }
}

fn base_result(
    cfg: &AgentConfig,
    shard: &Shard,
    attempt: u32,
    started_at: f64,
    traceparent: Option<String>,
) -> ShardResult {
    ShardResult {
        run: shard.run_id.to_string(),
        shard: shard.shard_id.to_string(),
        model: shard.model,
        task: shard.task,
        seed: shard.seed,
        scale: shard.scale.clone(),
        host: cfg.host.clone(),
        agent: cfg.agent_id.clone(),
        status: ShardState::Failed,
        error: None,
        measured: ShardMeasurements {
            device: cfg.device.to_string(),
            gpu_name: cfg.gpu_name.clone(),
            wall_seconds: unix_now() - started_at,
            precision: shard.train.precision.label().to_owned(),
            threads: cfg.threads,
            config: serde_json::to_value(shard).unwrap_or(serde_json::Value::Null),
            ..ShardMeasurements::default()
        },
        attempt,
        started_at,
        finished_at: unix_now(),
        traceparent,
    }
}

fn failure_result(
    cfg: &AgentConfig,
    shard: &Shard,
    attempt: u32,
    status: ShardState,
    message: &str,
    started_at: f64,
    traceparent: Option<String>,
) -> ShardResult {
    ShardResult { status, error: Some(message.to_owned()), ..base_result(cfg, shard, attempt, started_at, traceparent) }
}

fn success_result(
    cfg: &AgentConfig,
    shard: &Shard,
    attempt: u32,
    measured: ShardMeasurements,
    started_at: f64,
    traceparent: Option<String>,
) -> ShardResult {
    ShardResult { status: ShardState::Succeeded, measured, ..base_result(cfg, shard, attempt, started_at, traceparent) }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use async_trait::async_trait;
    use shared::broker::{MemoryBroker, OutgoingMessage, ShardConsumer};
    use shared::store::MemoryStore;
    use shared::{DeviceClass, Result as SharedResult};

    use super::*;

    /// A broker whose first consumer dies at once, like a connection that drops.
    struct Flaky {
        inner: MemoryBroker,
        consumes: AtomicU32,
    }

    struct Dead;

    #[async_trait]
    impl ShardConsumer for Dead {
        async fn next(&mut self) -> Option<SharedResult<Delivery>> {
            None
        }
    }

    #[async_trait]
    impl Broker for Flaky {
        async fn declare(&self) -> SharedResult<()> {
            self.inner.declare().await
        }
        async fn publish(&self, messages: Vec<OutgoingMessage>) -> SharedResult<()> {
            self.inner.publish(messages).await
        }
        async fn consume(&self, class: DeviceClass, tag: &str) -> SharedResult<Box<dyn ShardConsumer>> {
            if self.consumes.fetch_add(1, Ordering::SeqCst) == 0 {
                Ok(Box::new(Dead))
            } else {
                self.inner.consume(class, tag).await
            }
        }
        async fn dead_letter(
            &self,
            body: Vec<u8>,
            headers: BTreeMap<String, String>,
            reason: &str,
        ) -> SharedResult<()> {
            self.inner.dead_letter(body, headers, reason).await
        }
    }

    #[tokio::test]
    async fn the_noop_executor_stores_before_acking_and_honours_a_cancelled_run() {
        let broker = MemoryBroker::default();
        let store = Arc::new(MemoryStore::new());
        let journal = Arc::new(crate::sim::Journal::default());
        let mut cfg = AgentConfig::new(DeviceSpec::Cpu, PathBuf::from("/nonexistent")).unwrap();
        cfg.max_shards = Some(3);
        cfg.executor = Executor::NoOp(crate::sim::NoOpExecutor { delay: Duration::ZERO, journal: journal.clone() });
        let mut shards = Vec::new();
        for (seed, run) in [(1, "r-live"), (2, "r-live"), (3, "r-cancelled")] {
            let mut shard = shared::wire::sample_shard();
            shard.seed = seed;
            shard.run_id = shared::RunId::new(run).unwrap();
            shard.shard_id = shard.content_id();
            shards.push(shard);
        }
        store.cancel("r-cancelled").await.unwrap();
        let messages = shards
            .iter()
            .map(|s| OutgoingMessage {
                class: DeviceClass::Cpu,
                message_id: format!("{}:{}", s.run_id, s.shard_id),
                body: wire::encode_shard(s).unwrap(),
                headers: BTreeMap::new(),
            })
            .collect();
        broker.publish(messages).await.unwrap();
        let stats = tokio::time::timeout(
            Duration::from_secs(20),
            run(cfg, Arc::new(broker.clone()), Arc::new(broker.clone()), store.clone(), std::future::pending()),
        )
        .await
        .expect("agent stopped in time")
        .unwrap();
        assert_eq!(stats.finished, 3);
        assert_eq!(broker.outstanding(), 0, "every delivery acked");
        let live = store.results("r-live").await.unwrap();
        assert_eq!(live.len(), 2);
        assert!(live.iter().all(|r| r.status == ShardState::Succeeded && r.measured.config["executor"] == "no-op"));
        // The cancelled run's shard never reached the executor.
        let cancelled = store.results("r-cancelled").await.unwrap();
        assert_eq!(cancelled.len(), 1);
        assert_eq!(cancelled[0].status, ShardState::Cancelled);
        let ran = journal.executions_per_shard();
        assert_eq!(ran.len(), 2);
        assert!(ran.keys().all(|k| k.starts_with("r-live:")) && ran.values().all(|&n| n == 1));
    }

    #[tokio::test]
    async fn reconnects_after_losing_the_consumer_and_acks_finished_redeliveries() {
        let inner = MemoryBroker::default();
        let store = Arc::new(MemoryStore::new());
        let mut shard = shared::wire::sample_shard();
        shard.shard_id = shard.content_id();
        let mut cfg = AgentConfig::new(DeviceSpec::Cpu, PathBuf::from("/nonexistent")).unwrap();
        cfg.max_shards = Some(1);
        // The shard already finished (its agent died between storing and acking).
        let done = failure_result(&cfg, &shard, 1, ShardState::Succeeded, "stored before the crash", 0.0, None);
        assert!(store.put_result(&done).await.unwrap());
        inner
            .publish(vec![OutgoingMessage {
                class: DeviceClass::Cpu,
                message_id: format!("{}:{}", shard.run_id, shard.shard_id),
                body: wire::encode_shard(&shard).unwrap(),
                headers: BTreeMap::new(),
            }])
            .await
            .unwrap();
        let broker = Arc::new(Flaky { inner: inner.clone(), consumes: AtomicU32::new(0) });
        let stats = tokio::time::timeout(
            Duration::from_secs(20),
            run(cfg, broker.clone(), Arc::new(inner.clone()), store, std::future::pending()),
        )
        .await
        .expect("agent stopped in time")
        .unwrap();
        assert!(broker.consumes.load(Ordering::SeqCst) >= 2, "it consumed again");
        assert_eq!(stats.duplicates, 1, "the redelivery was acked without running");
        assert_eq!(inner.outstanding(), 0);
    }
}
