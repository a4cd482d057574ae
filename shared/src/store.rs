//! The state store: run records, shard states, metric streams, final results,
//! agent heartbeats and cancel flags.
//!
//! [`crate::redis_store::RedisStore`] is the fleet implementation; [`MemoryStore`] backs
//! the embedded mode and unit tests. Final results are written once: `put_result`
//! returns `false` when a result for that `(run, shard)` already exists, which is how a
//! redelivered shard that already finished is recognised.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::broker::DeadLetter;
use crate::error::Result;
use crate::shard::{AgentHeartbeat, MetricPoint, RunRecord, ShardResult, ShardState, unix_now};

/// Live progress of a running shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Current step.
    pub step: u64,
    /// Steps planned.
    pub total_steps: u64,
    /// Agent running it.
    pub agent: String,
    /// Latest training loss.
    pub loss: Option<f64>,
    /// Unix seconds.
    pub at: f64,
}

/// Why one attempt of a shard failed before the shard was retried. A failure that ends
/// the shard is its result; these are the ones before it, which would otherwise only be
/// in an agent's log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptError {
    /// Which attempt (1-based, as `incr_attempt` counted it).
    pub attempt: u32,
    /// Agent that ran it.
    pub agent: String,
    /// What went wrong.
    pub error: String,
    /// Unix seconds.
    pub at: f64,
}

/// A dead letter recorded by an agent, with the context it had.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterRecord {
    /// The broker-level record.
    pub letter: DeadLetter,
    /// Agent that dead-lettered it.
    pub agent: String,
    /// Unix seconds.
    pub at: f64,
}

/// Maximum metric points kept per shard stream (approximate trim).
pub const METRIC_STREAM_MAXLEN: usize = 20_000;

/// Where runs, results and liveness live.
#[async_trait]
pub trait Store: Send + Sync {
    /// Records a new run and marks all its shards unpublished (a shard that already has
    /// a state keeps it).
    async fn put_run(&self, record: &RunRecord) -> Result<()>;
    /// Marks shards whose messages the broker confirmed as queued, unless an agent has
    /// already moved them on (only `unpublished` changes).
    async fn mark_published(&self, run: &str, shards: &[String]) -> Result<()>;
    /// Reads a run record.
    async fn get_run(&self, run: &str) -> Result<Option<RunRecord>>;
    /// Run ids, newest first.
    async fn list_runs(&self, limit: usize) -> Result<Vec<String>>;
    /// Sets a shard's state (never downgrades a terminal state to queued/running).
    async fn set_state(&self, run: &str, shard: &str, state: ShardState) -> Result<()>;
    /// Forces a shard's state (used by `retry`).
    async fn force_state(&self, run: &str, shard: &str, state: ShardState) -> Result<()>;
    /// Every shard's state.
    async fn states(&self, run: &str) -> Result<BTreeMap<String, ShardState>>;
    /// Counts one more delivery attempt and returns the count.
    async fn incr_attempt(&self, run: &str, shard: &str) -> Result<u32>;
    /// Attempts per shard.
    async fn attempts(&self, run: &str) -> Result<BTreeMap<String, u32>>;
    /// Records why an attempt failed before its shard was retried (one entry per attempt;
    /// recording the same attempt again replaces it).
    async fn record_attempt_error(&self, run: &str, shard: &str, error: &AttemptError) -> Result<()>;
    /// The recorded attempt errors of a run's shards, oldest attempt first.
    async fn attempt_errors(&self, run: &str) -> Result<BTreeMap<String, Vec<AttemptError>>>;
    /// Updates a running shard's progress.
    async fn set_progress(&self, run: &str, shard: &str, progress: &Progress) -> Result<()>;
    /// Progress of every shard that reported any.
    async fn progress(&self, run: &str) -> Result<BTreeMap<String, Progress>>;
    /// Appends metric points to a shard's stream.
    async fn append_metrics(&self, run: &str, shard: &str, points: &[MetricPoint]) -> Result<()>;
    /// The last `count` metric points of a shard, oldest first.
    async fn metrics(&self, run: &str, shard: &str, count: usize) -> Result<Vec<MetricPoint>>;
    /// Writes a final result once and sets the shard's state to the result's status.
    /// Returns false (and changes nothing) when a result already exists.
    async fn put_result(&self, result: &ShardResult) -> Result<bool>;
    /// A shard's final result.
    async fn get_result(&self, run: &str, shard: &str) -> Result<Option<ShardResult>>;
    /// All final results of a run.
    async fn results(&self, run: &str) -> Result<Vec<ShardResult>>;
    /// Removes a shard's result (before a retry), returning whether one existed.
    async fn delete_result(&self, run: &str, shard: &str) -> Result<bool>;
    /// Publishes an agent heartbeat that expires after `ttl`.
    async fn heartbeat(&self, beat: &AgentHeartbeat, ttl: Duration) -> Result<()>;
    /// Agents whose heartbeat has not expired.
    async fn agents(&self) -> Result<Vec<AgentHeartbeat>>;
    /// Removes an agent's heartbeat (clean shutdown).
    async fn remove_agent(&self, agent: &str) -> Result<()>;
    /// Marks a run cancelled.
    async fn cancel(&self, run: &str) -> Result<()>;
    /// Clears a run's cancel flag (before a retry).
    async fn uncancel(&self, run: &str) -> Result<()>;
    /// True when the run is cancelled.
    async fn is_cancelled(&self, run: &str) -> Result<bool>;
    /// Records a dead letter with context.
    async fn record_dead_letter(&self, record: &DeadLetterRecord) -> Result<()>;
    /// Recorded dead letters, newest first.
    async fn dead_letter_records(&self, limit: usize) -> Result<Vec<DeadLetterRecord>>;
}

/// Whether `set_state` may overwrite a shard whose state is `current`: terminal
/// states only change through `force_state` (a retry), so a late message from a
/// superseded attempt cannot make a finished shard look running again.
pub fn may_overwrite(current: Option<ShardState>) -> bool {
    !current.is_some_and(ShardState::is_terminal)
}

#[derive(Debug, Default)]
struct MemData {
    runs: BTreeMap<String, RunRecord>,
    states: BTreeMap<String, BTreeMap<String, ShardState>>,
    attempts: BTreeMap<String, BTreeMap<String, u32>>,
    attempt_errors: BTreeMap<String, BTreeMap<String, BTreeMap<u32, AttemptError>>>,
    progress: BTreeMap<String, BTreeMap<String, Progress>>,
    metrics: BTreeMap<(String, String), Vec<MetricPoint>>,
    results: BTreeMap<(String, String), ShardResult>,
    agents: BTreeMap<String, (AgentHeartbeat, f64)>,
    cancelled: BTreeSet<String>,
    dead: Vec<DeadLetterRecord>,
}

/// An in-process store.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    data: Arc<Mutex<MemData>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemData> {
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn put_run(&self, record: &RunRecord) -> Result<()> {
        let mut d = self.lock();
        let states = d.states.entry(record.run_id.to_string()).or_default();
        for s in &record.shards {
            states.entry(s.shard.clone()).or_insert(ShardState::Unpublished);
        }
        d.runs.insert(record.run_id.to_string(), record.clone());
        Ok(())
    }

    async fn mark_published(&self, run: &str, shards: &[String]) -> Result<()> {
        let mut d = self.lock();
        let states = d.states.entry(run.to_owned()).or_default();
        for shard in shards {
            if let Some(state) = states.get_mut(shard)
                && *state == ShardState::Unpublished
            {
                *state = ShardState::Queued;
            }
        }
        Ok(())
    }

    async fn get_run(&self, run: &str) -> Result<Option<RunRecord>> {
        Ok(self.lock().runs.get(run).cloned())
    }

    async fn list_runs(&self, limit: usize) -> Result<Vec<String>> {
        let d = self.lock();
        let mut runs: Vec<_> = d.runs.values().map(|r| (r.created_at, r.run_id.to_string())).collect();
        runs.sort_by(|a, b| b.0.total_cmp(&a.0));
        Ok(runs.into_iter().take(limit).map(|(_, id)| id).collect())
    }

    async fn set_state(&self, run: &str, shard: &str, state: ShardState) -> Result<()> {
        let mut d = self.lock();
        let states = d.states.entry(run.to_owned()).or_default();
        if may_overwrite(states.get(shard).copied()) {
            states.insert(shard.to_owned(), state);
        }
        Ok(())
    }

    async fn force_state(&self, run: &str, shard: &str, state: ShardState) -> Result<()> {
        self.lock().states.entry(run.to_owned()).or_default().insert(shard.to_owned(), state);
        Ok(())
    }

    async fn states(&self, run: &str) -> Result<BTreeMap<String, ShardState>> {
        Ok(self.lock().states.get(run).cloned().unwrap_or_default())
    }

    async fn incr_attempt(&self, run: &str, shard: &str) -> Result<u32> {
        let mut d = self.lock();
        let n = d.attempts.entry(run.to_owned()).or_default().entry(shard.to_owned()).or_insert(0);
        *n += 1;
        Ok(*n)
    }

    async fn attempts(&self, run: &str) -> Result<BTreeMap<String, u32>> {
        Ok(self.lock().attempts.get(run).cloned().unwrap_or_default())
    }

    async fn record_attempt_error(&self, run: &str, shard: &str, error: &AttemptError) -> Result<()> {
        let mut d = self.lock();
        let shards = d.attempt_errors.entry(run.to_owned()).or_default();
        shards.entry(shard.to_owned()).or_default().insert(error.attempt, error.clone());
        Ok(())
    }

    async fn attempt_errors(&self, run: &str) -> Result<BTreeMap<String, Vec<AttemptError>>> {
        let d = self.lock();
        let Some(shards) = d.attempt_errors.get(run) else { return Ok(BTreeMap::new()) };
        Ok(shards.iter().map(|(shard, by_attempt)| (shard.clone(), by_attempt.values().cloned().collect())).collect())
    }

    async fn set_progress(&self, run: &str, shard: &str, progress: &Progress) -> Result<()> {
        self.lock().progress.entry(run.to_owned()).or_default().insert(shard.to_owned(), progress.clone());
        Ok(())
    }

    async fn progress(&self, run: &str) -> Result<BTreeMap<String, Progress>> {
        Ok(self.lock().progress.get(run).cloned().unwrap_or_default())
    }

    async fn append_metrics(&self, run: &str, shard: &str, points: &[MetricPoint]) -> Result<()> {
        let mut d = self.lock();
        let stream = d.metrics.entry((run.to_owned(), shard.to_owned())).or_default();
        stream.extend_from_slice(points);
        if stream.len() > METRIC_STREAM_MAXLEN {
            let excess = stream.len() - METRIC_STREAM_MAXLEN;
            stream.drain(..excess);
        }
        Ok(())
    }

    async fn metrics(&self, run: &str, shard: &str, count: usize) -> Result<Vec<MetricPoint>> {
        let d = self.lock();
        let stream = d.metrics.get(&(run.to_owned(), shard.to_owned()));
        Ok(stream.map(|s| s[s.len().saturating_sub(count)..].to_vec()).unwrap_or_default())
    }

    async fn put_result(&self, result: &ShardResult) -> Result<bool> {
        let mut d = self.lock();
        let key = (result.run.clone(), result.shard.clone());
        if d.results.contains_key(&key) {
            return Ok(false);
        }
        d.results.insert(key, result.clone());
        d.states.entry(result.run.clone()).or_default().insert(result.shard.clone(), result.status);
        Ok(true)
    }

    async fn get_result(&self, run: &str, shard: &str) -> Result<Option<ShardResult>> {
        Ok(self.lock().results.get(&(run.to_owned(), shard.to_owned())).cloned())
    }

    async fn results(&self, run: &str) -> Result<Vec<ShardResult>> {
        Ok(self.lock().results.iter().filter(|((r, _), _)| r == run).map(|(_, v)| v.clone()).collect())
    }

    async fn delete_result(&self, run: &str, shard: &str) -> Result<bool> {
        Ok(self.lock().results.remove(&(run.to_owned(), shard.to_owned())).is_some())
    }

    async fn heartbeat(&self, beat: &AgentHeartbeat, ttl: Duration) -> Result<()> {
        self.lock().agents.insert(beat.agent.clone(), (beat.clone(), unix_now() + ttl.as_secs_f64()));
        Ok(())
    }

    async fn agents(&self) -> Result<Vec<AgentHeartbeat>> {
        let now = unix_now();
        Ok(self.lock().agents.values().filter(|(_, exp)| *exp > now).map(|(b, _)| b.clone()).collect())
    }

    async fn remove_agent(&self, agent: &str) -> Result<()> {
        self.lock().agents.remove(agent);
        Ok(())
    }

    async fn cancel(&self, run: &str) -> Result<()> {
        self.lock().cancelled.insert(run.to_owned());
        Ok(())
    }

    async fn uncancel(&self, run: &str) -> Result<()> {
        self.lock().cancelled.remove(run);
        Ok(())
    }

    async fn is_cancelled(&self, run: &str) -> Result<bool> {
        Ok(self.lock().cancelled.contains(run))
    }

    async fn record_dead_letter(&self, record: &DeadLetterRecord) -> Result<()> {
        self.lock().dead.insert(0, record.clone());
        Ok(())
    }

    async fn dead_letter_records(&self, limit: usize) -> Result<Vec<DeadLetterRecord>> {
        Ok(self.lock().dead.iter().take(limit).cloned().collect())
    }
}
