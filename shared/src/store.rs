//! The state store: run records, shard states, metric streams, final results,
//! agent heartbeats and cancel flags.
//!
//! [`crate::redis_store::RedisStore`] is the fleet implementation,
//! [`crate::local_store::LocalStore`] (a file) keeps the runs of the embedded mode, and
//! [`MemoryStore`] backs unit tests. Final results are written once: `put_result`
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

/// Checks every [`Store`] implementation must pass, run against [`MemoryStore`] here and
/// against [`crate::local_store::LocalStore`] beside it (`RedisStore` has its own suite
/// against a real Redis in `tests/redis.rs`).
#[cfg(test)]
pub(crate) mod conformance {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::broker::DeadLetter;

    pub(crate) fn point(step: u64) -> MetricPoint {
        MetricPoint {
            step,
            kind: "train".to_owned(),
            values: BTreeMap::from([("loss".to_owned(), 1.0 / (step as f64 + 1.0))]),
            at: step as f64,
        }
    }

    fn beat(agent: &str) -> AgentHeartbeat {
        AgentHeartbeat {
            agent: agent.to_owned(),
            host: "host-a".to_owned(),
            device: "cpu".to_owned(),
            gpu_name: None,
            current: Some(("r1".to_owned(), "s1".to_owned())),
            step: Some(7),
            total_steps: Some(40),
            progress_at: Some(1.5),
            started_at: 1.0,
            at: 2.0,
            shards_done: 3,
            worker_memory_bytes: None,
        }
    }

    fn dead_letter(id: &str) -> DeadLetterRecord {
        DeadLetterRecord {
            letter: DeadLetter {
                message_id: Some(id.to_owned()),
                reason: format!("{id}: delivery limit"),
                queue: Some("qsched.cpu".to_owned()),
                size: 3,
                headers: BTreeMap::new(),
            },
            agent: "agent-1".to_owned(),
            at: 5.0,
        }
    }

    /// Every rule of the [`Store`] trait on an empty store.
    pub(crate) async fn check(store: &dyn Store) {
        runs_and_states(store).await;
        attempts_and_progress(store).await;
        metric_streams(store).await;
        results_are_written_once(store).await;
        liveness_cancel_and_dead_letters(store).await;
    }

    async fn runs_and_states(store: &dyn Store) {
        assert_eq!(store.get_run("r1").await.unwrap(), None);
        assert!(store.states("r1").await.unwrap().is_empty());
        let record = RunRecord::sample("r1", 10.0, &["s1", "s2", "s3"]);
        store.put_run(&record).await.unwrap();
        assert_eq!(store.get_run("r1").await.unwrap(), Some(record.clone()));
        let states = store.states("r1").await.unwrap();
        assert_eq!(states.len(), 3);
        assert!(states.values().all(|s| *s == ShardState::Unpublished), "{states:?}");

        // Only unpublished shards become queued; one an agent already took stays running.
        store.set_state("r1", "s2", ShardState::Running).await.unwrap();
        store.mark_published("r1", &["s1".to_owned(), "s2".to_owned()]).await.unwrap();
        let states = store.states("r1").await.unwrap();
        assert_eq!(states["s1"], ShardState::Queued);
        assert_eq!(states["s2"], ShardState::Running);
        assert_eq!(states["s3"], ShardState::Unpublished);
        // Recording the run again keeps states that exist.
        store.put_run(&record).await.unwrap();
        assert_eq!(store.states("r1").await.unwrap()["s2"], ShardState::Running);

        // A terminal state is only replaced by force_state.
        store.set_state("r1", "s2", ShardState::Failed).await.unwrap();
        store.set_state("r1", "s2", ShardState::Running).await.unwrap();
        assert_eq!(store.states("r1").await.unwrap()["s2"], ShardState::Failed);
        store.force_state("r1", "s2", ShardState::Queued).await.unwrap();
        assert_eq!(store.states("r1").await.unwrap()["s2"], ShardState::Queued);

        // Runs are kept apart, and listed newest first.
        store.put_run(&RunRecord::sample("r0", 5.0, &["s1"])).await.unwrap();
        store.put_run(&RunRecord::sample("r2", 20.0, &["s1"])).await.unwrap();
        assert_eq!(store.states("r0").await.unwrap().len(), 1);
        assert_eq!(store.states("r").await.unwrap().len(), 0, "a run id is not a prefix match");
        assert_eq!(store.list_runs(10).await.unwrap(), ["r2", "r1", "r0"]);
        assert_eq!(store.list_runs(2).await.unwrap(), ["r2", "r1"]);
    }

    async fn attempts_and_progress(store: &dyn Store) {
        assert_eq!(store.incr_attempt("r1", "s1").await.unwrap(), 1);
        assert_eq!(store.incr_attempt("r1", "s1").await.unwrap(), 2);
        assert_eq!(store.incr_attempt("r1", "s2").await.unwrap(), 1);
        assert_eq!(store.attempts("r1").await.unwrap(), BTreeMap::from([("s1".into(), 2), ("s2".into(), 1)]));
        assert!(store.attempts("r0").await.unwrap().is_empty());

        let error = |attempt, text: &str| AttemptError {
            attempt,
            agent: "agent-1".into(),
            error: text.into(),
            at: f64::from(attempt),
        };
        store.record_attempt_error("r1", "s1", &error(2, "oom")).await.unwrap();
        store.record_attempt_error("r1", "s1", &error(1, "killed")).await.unwrap();
        store.record_attempt_error("r1", "s1", &error(2, "oom again")).await.unwrap();
        let errors = store.attempt_errors("r1").await.unwrap();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors["s1"], [error(1, "killed"), error(2, "oom again")], "oldest first, replaced");
        assert!(store.attempt_errors("r2").await.unwrap().is_empty());

        let progress = |step| Progress { step, total_steps: 40, agent: "agent-1".into(), loss: Some(0.5), at: 3.0 };
        store.set_progress("r1", "s1", &progress(3)).await.unwrap();
        store.set_progress("r1", "s1", &progress(4)).await.unwrap();
        assert_eq!(store.progress("r1").await.unwrap(), BTreeMap::from([("s1".into(), progress(4))]));
        assert!(store.progress("r2").await.unwrap().is_empty());
    }

    async fn metric_streams(store: &dyn Store) {
        assert!(store.metrics("r1", "s1", 10).await.unwrap().is_empty());
        let points: Vec<_> = (0..5).map(point).collect();
        store.append_metrics("r1", "s1", &points[..3]).await.unwrap();
        store.append_metrics("r1", "s1", &points[3..]).await.unwrap();
        store.append_metrics("r1", "s2", &[point(99)]).await.unwrap();
        assert_eq!(store.metrics("r1", "s1", 10).await.unwrap(), points);
        assert_eq!(store.metrics("r1", "s1", 2).await.unwrap(), points[3..]);
        assert_eq!(store.metrics("r1", "s2", 10).await.unwrap(), [point(99)]);
        // The stream is trimmed to its newest METRIC_STREAM_MAXLEN points.
        let many: Vec<_> = (5..METRIC_STREAM_MAXLEN as u64 + 10).map(point).collect();
        store.append_metrics("r1", "s1", &many).await.unwrap();
        let kept = store.metrics("r1", "s1", usize::MAX).await.unwrap();
        assert_eq!(kept.len(), METRIC_STREAM_MAXLEN);
        assert_eq!(kept.last(), many.last());
        assert_eq!(kept[0], point(10));
        assert_eq!(store.metrics("r1", "s2", 10).await.unwrap(), [point(99)], "other streams untouched");
    }

    async fn results_are_written_once(store: &dyn Store) {
        assert_eq!(store.get_result("r1", "s3").await.unwrap(), None);
        let first = ShardResult::sample("r1", "s3", "agent-1");
        assert!(store.put_result(&first).await.unwrap());
        assert!(
            !store.put_result(&ShardResult::sample("r1", "s3", "agent-2")).await.unwrap(),
            "a second result is refused"
        );
        let stored = store.get_result("r1", "s3").await.unwrap().unwrap();
        assert_eq!(stored, first, "floats round-trip exactly, the first writer wins");
        assert_eq!(store.states("r1").await.unwrap()["s3"], ShardState::Succeeded);
        let mut failed = ShardResult::sample("r1", "s1", "agent-1");
        failed.status = ShardState::Failed;
        failed.error = Some("nan loss".into());
        assert!(store.put_result(&failed).await.unwrap());
        assert_eq!(store.states("r1").await.unwrap()["s1"], ShardState::Failed);
        assert!(store.put_result(&ShardResult::sample("r2", "s1", "agent-1")).await.unwrap());
        let mut shards: Vec<String> = store.results("r1").await.unwrap().into_iter().map(|r| r.shard).collect();
        shards.sort();
        assert_eq!(shards, ["s1", "s3"]);
        assert!(store.delete_result("r1", "s1").await.unwrap());
        assert!(!store.delete_result("r1", "s1").await.unwrap());
        assert_eq!(store.results("r1").await.unwrap(), [first]);
        assert!(store.put_result(&failed).await.unwrap(), "written again after a delete (a retry)");
    }

    async fn liveness_cancel_and_dead_letters(store: &dyn Store) {
        assert!(store.agents().await.unwrap().is_empty());
        store.heartbeat(&beat("a1"), Duration::from_secs(60)).await.unwrap();
        store.heartbeat(&beat("a2"), Duration::from_millis(1)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(store.agents().await.unwrap(), [beat("a1")], "an expired heartbeat drops out");
        store.remove_agent("a1").await.unwrap();
        assert!(store.agents().await.unwrap().is_empty());

        assert!(!store.is_cancelled("r1").await.unwrap());
        store.cancel("r1").await.unwrap();
        assert!(store.is_cancelled("r1").await.unwrap());
        assert!(!store.is_cancelled("r2").await.unwrap());
        store.uncancel("r1").await.unwrap();
        assert!(!store.is_cancelled("r1").await.unwrap());

        assert!(store.dead_letter_records(10).await.unwrap().is_empty());
        for id in ["r1:a", "r1:b", "r1:c"] {
            store.record_dead_letter(&dead_letter(id)).await.unwrap();
        }
        assert_eq!(
            store.dead_letter_records(10).await.unwrap(),
            [dead_letter("r1:c"), dead_letter("r1:b"), dead_letter("r1:a")]
        );
        assert_eq!(store.dead_letter_records(1).await.unwrap(), [dead_letter("r1:c")]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store_conforms() {
        conformance::check(&MemoryStore::new()).await;
    }
}
