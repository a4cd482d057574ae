//! A scale simulation of the dispatch path: many agents in one process, each with its own
//! RabbitMQ connection and its own Redis connection, running the real consume loop
//! ([`crate::supervisor::run`]) with the worker process replaced by a no-op
//! ([`crate::supervisor::Executor::NoOp`]).
//!
//! What is real: decoding, the skip-if-result-exists and cancel checks, the attempt count,
//! the state writes, storing the result before the ack, heartbeats, the dead-letter notice
//! polls, prefetch 1 per consumer. What is not: training (the no-op succeeds after a fixed
//! delay and stores a result with no metrics, marked `{"executor": "no-op"}` in its config).
//!
//! What is measured, from outside the loop: each agent's broker is wrapped in an
//! [`ObservedBroker`] that notes when a delivery reaches the agent and when it is acked;
//! the no-op executor notes each shard it runs. Redis's `INFO commandstats` is read at
//! the phase boundaries. The simulation owns no shard: `qsched submit` (or
//! `scheduler::submit` in tests) publishes them once [`run_fleet`] says the agents are
//! consuming.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use serde::Serialize;
use tracing::{info, warn};

use shared::DeviceSpec;
use shared::amqp::{AmqpBroker, AmqpConfig};
use shared::broker::{Acker, Broker, Delivery, OutgoingMessage, ShardConsumer};
use shared::redis_store::{RedisConfig, RedisStore};
use shared::shard::{Shard, unix_now};
use shared::{DeviceClass, Result as SharedResult};

use crate::error::{Error, Result};
use crate::supervisor::{self, AgentConfig, AgentStats, Executor};
use shared::shard::ShardMeasurements;

/// How often [`run_fleet`] looks at the journal while waiting.
const POLL: Duration = Duration::from_millis(20);
/// Connections opened at once while the fleet starts: RabbitMQ handshakes are CPU work on
/// the broker, and hundreds at once push some past the connect timeout.
pub const DEFAULT_CONNECT_PARALLELISM: usize = 16;
/// How long stopping agents may take before they are abandoned (their unacked deliveries
/// then go back to the queue when the connections close).
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The executor of a simulated agent: no training, a success after `delay`.
#[derive(Debug, Clone, Default)]
pub struct NoOpExecutor {
    /// How long a shard "runs" (zero: the shard succeeds at once).
    pub delay: Duration,
    /// Where the shards it runs are noted.
    pub journal: Arc<Journal>,
}

/// The outcome a no-op execution reports: a success with no steps and no metrics, its
/// config marking it as simulated so that such a result is never mistaken for training.
pub fn noop_outcome(cfg: &AgentConfig, shard: &Shard, delay: Duration) -> ShardMeasurements {
    ShardMeasurements {
        device: cfg.device.to_string(),
        gpu_name: cfg.gpu_name.clone(),
        wall_seconds: delay.as_secs_f64(),
        precision: shard.train.precision.label().to_owned(),
        threads: cfg.threads,
        config: serde_json::json!({ "executor": "no-op", "delay_seconds": delay.as_secs_f64() }),
        ..ShardMeasurements::default()
    }
}

/// A delivery reaching an agent (before the supervisor decodes it).
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// The agent's id (its consumer tag).
    pub agent: String,
    /// The message id (`run:shard`).
    pub message_id: Option<String>,
    /// Publish time from the message, Unix seconds.
    pub published_at: Option<f64>,
    /// When the agent got it, Unix seconds.
    pub at: f64,
    /// Whether the broker delivered it before.
    pub redelivered: bool,
}

/// A shard run by the no-op executor.
#[derive(Debug, Clone, PartialEq)]
pub struct Executed {
    /// The agent's id.
    pub agent: String,
    /// `run:shard`.
    pub message_id: String,
    /// When the executor started, Unix seconds.
    pub at: f64,
}

/// A delivery acked by an agent.
#[derive(Debug, Clone, PartialEq)]
pub struct Acked {
    /// The agent's id.
    pub agent: String,
    /// The message id (`run:shard`).
    pub message_id: Option<String>,
    /// When the broker took the ack, Unix seconds.
    pub at: f64,
}

#[derive(Debug, Default)]
struct Entries {
    consumers: usize,
    received: Vec<Received>,
    executed: Vec<Executed>,
    acked: Vec<Acked>,
}

/// What the simulated fleet did, appended to by every agent.
#[derive(Debug, Default)]
pub struct Journal {
    entries: Mutex<Entries>,
}

impl Journal {
    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // The entries are plain appends: a panic elsewhere leaves them consistent.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes that `agent`'s executor started `run:shard`.
    pub fn executed(&self, agent: &str, run: &str, shard: &str) {
        self.lock().executed.push(Executed {
            agent: agent.to_owned(),
            message_id: format!("{run}:{shard}"),
            at: unix_now(),
        });
    }

    /// Consumers started (a reconnect counts again).
    pub fn consumers(&self) -> usize {
        self.lock().consumers
    }

    /// Every delivery that reached an agent, in order.
    pub fn received(&self) -> Vec<Received> {
        self.lock().received.clone()
    }

    /// Every shard the executors ran, in order.
    pub fn executions(&self) -> Vec<Executed> {
        self.lock().executed.clone()
    }

    /// Every ack, in order.
    pub fn acks(&self) -> Vec<Acked> {
        self.lock().acked.clone()
    }

    /// How many times each `run:shard` was run by an executor.
    pub fn executions_per_shard(&self) -> BTreeMap<String, u32> {
        let mut out = BTreeMap::new();
        for e in &self.lock().executed {
            *out.entry(e.message_id.clone()).or_insert(0) += 1;
        }
        out
    }

    fn distinct_acked(&self) -> usize {
        let l = self.lock();
        let mut ids: Vec<&str> = l.acked.iter().filter_map(|a| a.message_id.as_deref()).collect();
        ids.sort_unstable();
        ids.dedup();
        ids.len()
    }
}

/// A broker that notes in a [`Journal`] when deliveries reach its agent and when they are
/// acked, and otherwise does what the broker it wraps does.
pub struct ObservedBroker {
    inner: Arc<dyn Broker>,
    journal: Arc<Journal>,
}

impl std::fmt::Debug for ObservedBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObservedBroker").finish_non_exhaustive()
    }
}

impl ObservedBroker {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Broker>, journal: Arc<Journal>) -> Self {
        ObservedBroker { inner, journal }
    }
}

struct ObservedConsumer {
    inner: Box<dyn ShardConsumer>,
    agent: String,
    journal: Arc<Journal>,
}

/// Holds the real delivery and settles it; the ack's time goes to the journal.
struct ObservedAcker {
    delivery: tokio::sync::Mutex<Option<Delivery>>,
    agent: String,
    message_id: Option<String>,
    journal: Arc<Journal>,
}

impl ObservedAcker {
    async fn take(&self) -> SharedResult<Delivery> {
        self.delivery
            .lock()
            .await
            .take()
            .ok_or_else(|| shared::Error::invalid("delivery", "settled twice (a bug in the consume loop)"))
    }
}

#[async_trait]
impl Acker for ObservedAcker {
    async fn ack(&self) -> SharedResult<()> {
        self.take().await?.ack().await?;
        self.journal.lock().acked.push(Acked {
            agent: self.agent.clone(),
            message_id: self.message_id.clone(),
            at: unix_now(),
        });
        Ok(())
    }

    async fn reject(&self, requeue: bool) -> SharedResult<()> {
        self.take().await?.reject(requeue).await
    }

    async fn nack_requeue(&self) -> SharedResult<()> {
        self.take().await?.nack_requeue().await
    }
}

#[async_trait]
impl ShardConsumer for ObservedConsumer {
    async fn next(&mut self) -> Option<SharedResult<Delivery>> {
        let d = match self.inner.next().await? {
            Ok(d) => d,
            Err(e) => return Some(Err(e)),
        };
        self.journal.lock().received.push(Received {
            agent: self.agent.clone(),
            message_id: d.message_id.clone(),
            published_at: d.published_at(),
            at: unix_now(),
            redelivered: d.redelivered,
        });
        let (body, headers, message_id) = (d.body.clone(), d.headers.clone(), d.message_id.clone());
        let (redelivered, count) = (d.redelivered, d.delivery_count);
        // Dropping the acker unsettled drops the real delivery, which hands it back.
        let acker = ObservedAcker {
            delivery: tokio::sync::Mutex::new(Some(d)),
            agent: self.agent.clone(),
            message_id: message_id.clone(),
            journal: self.journal.clone(),
        };
        Some(Ok(Delivery::new(body, headers, message_id, redelivered, count, Box::new(acker))))
    }
}

#[async_trait]
impl Broker for ObservedBroker {
    async fn declare(&self) -> SharedResult<()> {
        self.inner.declare().await
    }
    async fn publish(&self, messages: Vec<OutgoingMessage>) -> SharedResult<()> {
        self.inner.publish(messages).await
    }
    async fn consume(&self, class: DeviceClass, consumer_tag: &str) -> SharedResult<Box<dyn ShardConsumer>> {
        let inner = self.inner.consume(class, consumer_tag).await?;
        self.journal.lock().consumers += 1;
        Ok(Box::new(ObservedConsumer { inner, agent: consumer_tag.to_owned(), journal: self.journal.clone() }))
    }
    async fn dead_letter(&self, body: Vec<u8>, headers: BTreeMap<String, String>, reason: &str) -> SharedResult<()> {
        self.inner.dead_letter(body, headers, reason).await
    }
    fn max_message_bytes(&self) -> usize {
        self.inner.max_message_bytes()
    }
}

/// How a simulated fleet runs.
#[derive(Debug, Clone)]
pub struct FleetSimConfig {
    /// Simulated agents, each with its own broker and Redis connection.
    pub agents: usize,
    /// Shards to wait for: the run ends once this many distinct shards are acked.
    pub shards: usize,
    /// Bound on the whole simulation after the agents are consuming (the run ends early,
    /// with `timed_out` set, when the shards are not all acked by then).
    pub time_limit: Duration,
    /// Heartbeat-only phase before the fleet is reported ready: the Redis commands of
    /// heartbeats are measured over it. Zero skips it.
    pub idle: Duration,
    /// How long the no-op executor takes per shard.
    pub delay: Duration,
    /// Heartbeat period of every agent (the TTL is six periods, as `qagent`'s 5 s / 30 s).
    pub heartbeat_interval: Duration,
    /// Broker settings (URL, prefix); every agent connects with them.
    pub amqp: AmqpConfig,
    /// Redis settings (URL, prefix); every agent connects with them.
    pub redis: RedisConfig,
    /// Read Redis's `INFO commandstats` at the phase boundaries (the figures are
    /// server-wide: meaningful only on a Redis nothing else uses).
    pub command_stats: bool,
    /// Connections opened at once while starting.
    pub connect_parallelism: usize,
}

/// What [`run_fleet`] reports once every agent is consuming (and the idle phase is over).
#[derive(Debug, Clone, Serialize)]
pub struct Ready {
    /// Agents consuming.
    pub agents: usize,
    /// Seconds spent opening connections.
    pub connect_seconds: f64,
    /// Unix time at which the fleet was ready.
    pub at: f64,
}

/// Nearest-rank percentiles of a sample, in the sample's unit.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Percentiles {
    /// How many values.
    pub count: usize,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Percentiles {
    /// Percentiles of `values` (all zero when empty).
    pub fn of(mut values: Vec<f64>) -> Self {
        if values.is_empty() {
            return Percentiles::default();
        }
        values.sort_by(f64::total_cmp);
        let rank = |q: f64| values[((q * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1];
        Percentiles { count: values.len(), p50: rank(0.5), p90: rank(0.9), p99: rank(0.99), max: rank(1.0) }
    }
}

/// How evenly shards spread over agents.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Fairness {
    /// Fewest shards one agent acked (agents that got none count as 0).
    pub min: u64,
    /// Median shards per agent.
    pub median: f64,
    /// Most shards one agent acked.
    pub max: u64,
    /// Jain's fairness index `(Σx)² / (n·Σx²)`: 1 when every agent got the same number,
    /// `1/n` when one agent got everything.
    pub jain: f64,
}

impl Fairness {
    /// The spread of `counts`, one per agent.
    pub fn of(mut counts: Vec<u64>) -> Self {
        if counts.is_empty() {
            return Fairness::default();
        }
        counts.sort_unstable();
        let n = counts.len();
        let median = if n % 2 == 1 { counts[n / 2] as f64 } else { (counts[n / 2 - 1] + counts[n / 2]) as f64 / 2.0 };
        let sum: f64 = counts.iter().map(|&c| c as f64).sum();
        let squares: f64 = counts.iter().map(|&c| (c as f64).powi(2)).sum();
        let jain = if squares > 0.0 { sum * sum / (n as f64 * squares) } else { 0.0 };
        Fairness { min: counts[0], median, max: counts[n - 1], jain }
    }
}

/// Redis commands over the simulation's phases (from `INFO commandstats` deltas).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct RedisCommands {
    /// Commands during the idle phase (heartbeats only).
    pub idle_commands: u64,
    /// Heartbeats during the idle phase (each heartbeat sends exactly one `ZADD`).
    pub idle_heartbeats: u64,
    /// Commands per heartbeat, from the idle phase.
    pub per_heartbeat: f64,
    /// Commands from ready to the last ack, the submit's own included.
    pub run_commands: u64,
    /// Heartbeats in that window.
    pub run_heartbeats: u64,
    /// `(run_commands − run_heartbeats × per_heartbeat) / shards acked`.
    pub per_shard: f64,
    /// The run window's commands by name, per shard acked (heartbeats' `SET`/`ZADD`
    /// included; commands that scripts call are counted by Redis on their own as well).
    pub per_shard_by_command: BTreeMap<String, f64>,
}

/// What a simulated fleet did.
#[derive(Debug, Clone, Serialize)]
pub struct FleetSimReport {
    /// Agents that ran.
    pub agents: usize,
    /// Shards waited for.
    pub shards_expected: usize,
    /// Distinct shards acked.
    pub shards_acked: usize,
    /// True when the time limit ended the run first.
    pub timed_out: bool,
    /// Deliveries that reached an agent (redeliveries included).
    pub deliveries: usize,
    /// Deliveries the broker marked redelivered.
    pub redeliveries: usize,
    /// Shard runs by the no-op executors.
    pub executions: usize,
    /// Shards run more than once.
    pub shards_run_twice: usize,
    /// Seconds spent opening every agent's connections.
    pub connect_seconds: f64,
    /// First delivery to last ack, seconds.
    pub dispatch_seconds: f64,
    /// Distinct shards acked per second over `dispatch_seconds`.
    pub shards_per_second: f64,
    /// First publish to last ack, seconds (the submit's publishing included).
    pub publish_to_last_ack_seconds: f64,
    /// Publish (message header) to the delivery reaching an agent, milliseconds; first
    /// deliveries only.
    pub queue_to_start_ms: Percentiles,
    /// Delivery reaching an agent to its ack, milliseconds (the whole consume path with
    /// the no-op's delay).
    pub start_to_ack_ms: Percentiles,
    /// Shards acked per agent.
    pub fairness: Fairness,
    /// Sum of the agents' own counts.
    pub agent_stats: AgentStatsSum,
    /// Redis commands per heartbeat and per shard (when measured).
    pub redis: Option<RedisCommands>,
}

/// The agents' [`AgentStats`], summed.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct AgentStatsSum {
    /// Shards stored (any status).
    pub finished: u64,
    /// Deliveries rejected back to the queue.
    pub requeued: u64,
    /// Deliveries acked because a result existed.
    pub duplicates: u64,
    /// Messages dead-lettered.
    pub dead_lettered: u64,
    /// Agents whose loop ended with an error (or did not stop in time).
    pub failed_agents: u64,
}

struct SimAgent {
    cfg: AgentConfig,
    amqp: Arc<AmqpBroker>,
    store: Arc<RedisStore>,
}

async fn connect_agent(cfg: &FleetSimConfig, index: usize, host: &str, executor: &NoOpExecutor) -> Result<SimAgent> {
    let amqp = Arc::new(AmqpBroker::connect(cfg.amqp.clone()).await?);
    let store = Arc::new(RedisStore::connect_with(cfg.redis.clone()).await?);
    // The data directory is never read: the no-op executor opens no file.
    let mut agent = AgentConfig::new(DeviceSpec::Cpu, PathBuf::new())?;
    agent.agent_id = format!("{host}:sim{index}:{}", std::process::id());
    agent.heartbeat_interval = cfg.heartbeat_interval;
    agent.heartbeat_ttl = cfg.heartbeat_interval * 6;
    agent.executor = Executor::NoOp(executor.clone());
    Ok(SimAgent { cfg: agent, amqp, store })
}

/// Server-wide `calls` per command from `INFO commandstats`.
async fn command_stats(conn: &mut redis::aio::MultiplexedConnection) -> Result<BTreeMap<String, u64>> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .map_err(|e| Error::Simulation(format!("INFO commandstats: {e}")))?;
    Ok(parse_command_stats(&info))
}

/// `cmdstat_get:calls=12,usec=...` lines to `{"get": 12}`.
pub fn parse_command_stats(info: &str) -> BTreeMap<String, u64> {
    info.lines()
        .filter_map(|line| {
            let (name, fields) = line.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = fields.split(',').find_map(|f| f.strip_prefix("calls="))?.parse().ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

/// Calls made between two snapshots, without the `INFO` that took the later one (ours).
fn delta(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, &v)| {
            let ours = u64::from(k == "info");
            (k.clone(), v.saturating_sub(before.get(k).copied().unwrap_or(0)).saturating_sub(ours))
        })
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// Runs `cfg.agents` simulated agents until `cfg.shards` distinct shards are acked or the
/// time limit passes. `ready` is sent once every agent is consuming (after the idle
/// phase): publish the shards then.
pub async fn run_fleet(
    cfg: FleetSimConfig,
    journal: Arc<Journal>,
    ready: tokio::sync::oneshot::Sender<Ready>,
) -> Result<FleetSimReport> {
    let executor = NoOpExecutor { delay: cfg.delay, journal: journal.clone() };
    let host = supervisor::host_name();
    let mut stats_conn = if cfg.command_stats {
        let client = redis::Client::open(cfg.redis.url.as_str())
            .map_err(|e| Error::Simulation(format!("Redis URL for INFO commandstats: {e}")))?;
        Some(
            client
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| Error::Simulation(format!("connecting for INFO commandstats: {e}")))?,
        )
    } else {
        None
    };

    let connect_started = tokio::time::Instant::now();
    let connected: Vec<Result<SimAgent>> = futures_util::stream::iter(0..cfg.agents)
        .map(|i| connect_agent(&cfg, i, &host, &executor))
        .buffer_unordered(cfg.connect_parallelism.max(1))
        .collect()
        .await;
    let agents = connected.into_iter().collect::<Result<Vec<_>>>()?;
    let connect_seconds = connect_started.elapsed().as_secs_f64();
    info!(agents = agents.len(), connect_seconds, "simulated agents connected");

    // Declared once before the agents start, as on a fleet whose queues exist: RabbitMQ
    // 3.10 answers some of many connections that declare a new quorum queue at the same
    // moment and consume from it with INTERNAL_ERROR, which stops those agents.
    if let Some(first) = agents.first() {
        first.amqp.declare().await?;
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut amqps = Vec::with_capacity(agents.len());
    let mut tasks = Vec::with_capacity(agents.len());
    for agent in agents {
        amqps.push(agent.amqp.clone());
        let broker = Arc::new(ObservedBroker::new(agent.amqp.clone(), journal.clone()));
        let mut stopped = stopped.clone();
        let shutdown = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        tasks.push(tokio::spawn(supervisor::run(agent.cfg, broker, agent.amqp, agent.store, shutdown)));
    }

    let deadline = tokio::time::Instant::now() + cfg.time_limit;
    let mut timed_out = false;
    // An agent that stopped already (its consume failed) will never consume: go on, and
    // let the report count it as failed rather than waiting out the time limit.
    while journal.consumers() < cfg.agents && !tasks.iter().any(|t| t.is_finished()) {
        if tokio::time::Instant::now() >= deadline {
            timed_out = true;
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let idle_start = match stats_conn.as_mut() {
        Some(c) => Some(command_stats(c).await?),
        None => None,
    };
    if !timed_out && !cfg.idle.is_zero() {
        tokio::time::sleep(cfg.idle.min(deadline.saturating_duration_since(tokio::time::Instant::now()))).await;
    }
    let run_start = match stats_conn.as_mut() {
        Some(c) => Some(command_stats(c).await?),
        None => None,
    };
    // A receiver that went away only means no one publishes on cue; the run still ends
    // at the time limit.
    let _ = ready.send(Ready { agents: cfg.agents, connect_seconds, at: unix_now() });

    while !timed_out && journal.distinct_acked() < cfg.shards {
        if tokio::time::Instant::now() >= deadline {
            timed_out = true;
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let run_end = match stats_conn.as_mut() {
        Some(c) => Some(command_stats(c).await?),
        None => None,
    };

    // Stop: each agent finishes the delivery it holds (the no-op hands it back), removes
    // its heartbeat and returns its counts.
    let _ = stop.send(true);
    let mut sum = AgentStatsSum::default();
    let joined = tokio::time::timeout(STOP_TIMEOUT, futures_util::future::join_all(tasks)).await;
    match joined {
        Ok(results) => {
            for r in results {
                match r {
                    Ok(Ok(AgentStats { finished, requeued, duplicates, dead_lettered })) => {
                        sum.finished += finished;
                        sum.requeued += requeued;
                        sum.duplicates += duplicates;
                        sum.dead_lettered += dead_lettered;
                    }
                    Ok(Err(e)) => {
                        warn!(error = %e, "a simulated agent failed");
                        sum.failed_agents += 1;
                    }
                    Err(e) => {
                        warn!(error = %e, "a simulated agent's task ended abnormally");
                        sum.failed_agents += 1;
                    }
                }
            }
        }
        Err(_) => {
            warn!("simulated agents did not stop within {STOP_TIMEOUT:?}");
            sum.failed_agents = cfg.agents as u64;
        }
    }
    let closes = amqps.iter().map(|b| b.close());
    for r in futures_util::future::join_all(closes).await {
        if let Err(e) = r {
            warn!(error = %e, "closing a simulated agent's connection");
        }
    }

    let redis = match (idle_start, run_start, run_end) {
        (Some(a), Some(b), Some(c)) => Some(redis_commands(&delta(&b, &a), &delta(&c, &b), journal.distinct_acked())),
        _ => None,
    };
    Ok(report(&cfg, &journal, timed_out, connect_seconds, sum, redis))
}

fn redis_commands(idle: &BTreeMap<String, u64>, run: &BTreeMap<String, u64>, shards: usize) -> RedisCommands {
    let total = |m: &BTreeMap<String, u64>| m.values().sum::<u64>();
    let zadds = |m: &BTreeMap<String, u64>| m.get("zadd").copied().unwrap_or(0);
    let (idle_commands, idle_heartbeats) = (total(idle), zadds(idle));
    let per_heartbeat = if idle_heartbeats > 0 { idle_commands as f64 / idle_heartbeats as f64 } else { 0.0 };
    let (run_commands, run_heartbeats) = (total(run), zadds(run));
    let per = |n: f64| if shards > 0 { n / shards as f64 } else { 0.0 };
    RedisCommands {
        idle_commands,
        idle_heartbeats,
        per_heartbeat,
        run_commands,
        run_heartbeats,
        per_shard: per((run_commands as f64 - run_heartbeats as f64 * per_heartbeat).max(0.0)),
        per_shard_by_command: run.iter().map(|(k, &v)| (k.clone(), per(v as f64))).collect(),
    }
}

fn report(
    cfg: &FleetSimConfig,
    journal: &Journal,
    timed_out: bool,
    connect_seconds: f64,
    agent_stats: AgentStatsSum,
    redis: Option<RedisCommands>,
) -> FleetSimReport {
    let received = journal.received();
    let acks = journal.acks();
    let per_shard = journal.executions_per_shard();
    let executions = per_shard.values().map(|&n| n as usize).sum();

    // First delivery of each message, for the queueing latency.
    let mut first: HashMap<&str, &Received> = HashMap::new();
    for r in &received {
        if let Some(id) = r.message_id.as_deref() {
            first.entry(id).or_insert(r);
        }
    }
    let queue_to_start: Vec<f64> = first.values().filter_map(|r| r.published_at.map(|p| (r.at - p) * 1e3)).collect();
    let mut first_ack: HashMap<&str, &Acked> = HashMap::new();
    for a in &acks {
        if let Some(id) = a.message_id.as_deref() {
            first_ack.entry(id).or_insert(a);
        }
    }
    // The delivery that was acked is the last one received before the ack.
    let mut last_received: HashMap<&str, f64> = HashMap::new();
    for r in &received {
        if let Some(id) = r.message_id.as_deref()
            && first_ack.get(id).is_some_and(|a| r.at <= a.at)
        {
            last_received.insert(id, r.at);
        }
    }
    let start_to_ack: Vec<f64> =
        first_ack.iter().filter_map(|(id, a)| last_received.get(id).map(|&at| (a.at - at) * 1e3)).collect();

    let first_received = received.iter().map(|r| r.at).fold(f64::INFINITY, f64::min);
    let first_published = received.iter().filter_map(|r| r.published_at).fold(f64::INFINITY, f64::min);
    let last_ack = first_ack.values().map(|a| a.at).fold(f64::NEG_INFINITY, f64::max);
    let shards_acked = first_ack.len();
    let span = |from: f64| if shards_acked > 0 && from.is_finite() { (last_ack - from).max(0.0) } else { 0.0 };
    let dispatch_seconds = span(first_received);

    let mut per_agent: BTreeMap<String, u64> = BTreeMap::new();
    for a in first_ack.values() {
        *per_agent.entry(a.agent.clone()).or_insert(0) += 1;
    }
    let mut counts: Vec<u64> = per_agent.values().copied().collect();
    // Agents that acked nothing count as zeros.
    counts.resize(cfg.agents.max(counts.len()), 0);

    FleetSimReport {
        agents: cfg.agents,
        shards_expected: cfg.shards,
        shards_acked,
        timed_out,
        deliveries: received.len(),
        redeliveries: received.iter().filter(|r| r.redelivered).count(),
        executions,
        shards_run_twice: per_shard.values().filter(|&&n| n > 1).count(),
        connect_seconds,
        dispatch_seconds,
        shards_per_second: if dispatch_seconds > 0.0 { shards_acked as f64 / dispatch_seconds } else { 0.0 },
        publish_to_last_ack_seconds: span(first_published),
        queue_to_start_ms: Percentiles::of(queue_to_start),
        start_to_ack_ms: Percentiles::of(start_to_ack),
        fairness: Fairness::of(counts),
        agent_stats,
        redis,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let p = Percentiles::of((1..=100).map(f64::from).collect());
        assert_eq!((p.count, p.p50, p.p90, p.p99, p.max), (100, 50.0, 90.0, 99.0, 100.0));
        assert_eq!(Percentiles::of(vec![7.0]).p99, 7.0);
        assert_eq!(Percentiles::of(Vec::new()).count, 0);
    }

    #[test]
    fn jain_index_spans_one_to_one_over_n() {
        let even = Fairness::of(vec![5, 5, 5, 5]);
        assert_eq!((even.min, even.median, even.max, even.jain), (5, 5.0, 5, 1.0));
        let hog = Fairness::of(vec![0, 0, 0, 8]);
        assert_eq!((hog.min, hog.median, hog.max), (0, 0.0, 8));
        assert!((hog.jain - 0.25).abs() < 1e-12);
    }

    #[test]
    fn command_stats_parse_calls_per_command() {
        let info = "# Commandstats\r\ncmdstat_get:calls=12,usec=30,usec_per_call=2.50,rejected_calls=0,failed_calls=0\r\n\
                    cmdstat_zadd:calls=3,usec=9,usec_per_call=3.00,rejected_calls=0,failed_calls=0\r\n";
        let stats = parse_command_stats(info);
        assert_eq!(stats, BTreeMap::from([("get".to_owned(), 12), ("zadd".to_owned(), 3)]));
        let before = BTreeMap::from([("get".to_owned(), 10), ("info".to_owned(), 4)]);
        let after = BTreeMap::from([("get".to_owned(), 12), ("zadd".to_owned(), 3), ("info".to_owned(), 5)]);
        // The INFO that read `after` is the simulation's own, not the fleet's.
        assert_eq!(delta(&after, &before), BTreeMap::from([("get".to_owned(), 2), ("zadd".to_owned(), 3)]));
    }

    #[test]
    fn commands_per_shard_discount_heartbeats() {
        let idle = BTreeMap::from([("set".to_owned(), 10), ("zadd".to_owned(), 10)]);
        let run = BTreeMap::from([("set".to_owned(), 4), ("zadd".to_owned(), 4), ("get".to_owned(), 10)]);
        let r = redis_commands(&idle, &run, 5);
        assert_eq!(r.per_heartbeat, 2.0);
        // 18 commands, 4 heartbeats of 2: 10 left for 5 shards.
        assert_eq!(r.per_shard, 2.0);
        assert_eq!(r.per_shard_by_command["get"], 2.0);
    }
}
