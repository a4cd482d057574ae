//! What the dashboard's JSON endpoints answer: runs, one run's shards, its metric
//! streams, its results and comparison, the fleet. Read from a [`Store`] (and a
//! [`Broker`] for queue depths) with the same functions the commands use, so a number on
//! the page is the number `qsched status | results | compare | agents` prints.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use serde_json::{Value, json};

use shared::broker::BrokerAdmin;
use shared::shard::{AgentHeartbeat, RunRecord, ShardResult, ShardState, unix_now};
use shared::store::{METRIC_STREAM_MAXLEN, Store};
use shared::{DeviceClass, ModelId};

use crate::commands::{self, RunningShard};
use crate::live::RunEta;
use crate::render;

/// An agent whose last heartbeat is older than this is flagged stale (agents beat every
/// 5 s; the store forgets one after 30 s).
pub const STALE_HEARTBEAT_S: f64 = 15.0;

/// Dead letters recorded by agents shown on the fleet page.
const DEAD_LETTERS_SHOWN: usize = 20;

/// Links from a shard to its trace in a trace UI, from a URL template with `{trace_id}`
/// (e.g. Jaeger's `http://localhost:16686/trace/{trace_id}`). Without a template the page
/// shows the trace id alone.
#[derive(Debug, Clone, Default)]
pub struct TraceLinks {
    template: Option<String>,
}

impl TraceLinks {
    /// A template must contain `{trace_id}` (else every shard would link to one page).
    pub fn new(template: Option<String>) -> Result<Self> {
        if let Some(t) = &template
            && !t.contains("{trace_id}")
        {
            bail!(
                "the trace URL template '{t}' has no {{trace_id}} placeholder (e.g. http://localhost:16686/trace/{{trace_id}})"
            );
        }
        Ok(TraceLinks { template })
    }

    /// `{trace_id, url}` of a W3C `traceparent`, or null when there is none (or it is
    /// malformed).
    pub fn link(&self, traceparent: Option<&str>) -> Value {
        let Some(id) = traceparent.and_then(trace_id) else { return Value::Null };
        json!({
            "trace_id": id,
            "url": self.template.as_ref().map(|t| t.replace("{trace_id}", id)),
        })
    }
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`); `None` when it
/// is not one, or its id is all zeros (invalid by the spec).
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let (_version, id) = (parts.next()?, parts.next()?);
    let hex = id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit());
    (hex && id.bytes().any(|b| b != b'0')).then_some(id)
}

/// A run's ETA as JSON: `{seconds, basis}`, `{unknown: why}`, or null when nothing is
/// left to run.
fn eta_json(eta: &RunEta) -> Value {
    match eta {
        RunEta::Nothing => Value::Null,
        RunEta::Known { secs, basis } => json!({"seconds": secs, "basis": basis}),
        RunEta::Unknown(why) => json!({"unknown": why}),
    }
}

/// Counts by state name.
fn counts_json(counts: &BTreeMap<ShardState, usize>) -> Value {
    counts.iter().map(|(s, n)| (s.as_str().to_owned(), json!(n))).collect::<serde_json::Map<_, _>>().into()
}

/// Fraction of a run's training done: finished shards count whole, running ones by
/// step / total.
pub fn progress_fraction(record: &RunRecord, finished: usize, running: &[RunningShard]) -> f64 {
    if record.shard_count == 0 {
        return 1.0;
    }
    let partial: f64 = running
        .iter()
        .filter_map(|r| match (r.step, r.total_steps) {
            (Some(s), Some(t)) if t > 0 => Some((s as f64 / t as f64).min(1.0)),
            _ => None,
        })
        .sum();
    ((finished as f64 + partial) / f64::from(record.shard_count)).min(1.0)
}

/// One run's headline: counts, progress, ETA; with the running shards it was computed
/// from.
async fn run_summary(
    store: &dyn Store,
    record: &RunRecord,
    agents: &[AgentHeartbeat],
) -> Result<(Value, BTreeMap<String, ShardState>, Vec<RunningShard>)> {
    let run = record.run_id.as_str();
    let states = store.states(run).await?;
    let cancelled = store.is_cancelled(run).await?;
    let counts = commands::state_counts(record, &states);
    let finished = counts.iter().filter(|(s, _)| s.is_terminal()).map(|(_, n)| n).sum::<usize>();
    let running = commands::running_shards(store, record, &states, agents).await?;
    let eta = commands::estimate_run_eta(store, record, &counts, &running, agents, cancelled).await?;
    let summary = json!({
        "run": run,
        "name": record.name,
        "created_at": record.created_at,
        "shard_count": record.shard_count,
        "counts": counts_json(&counts),
        "finished": finished,
        "done": commands::run_finished(record, &states),
        "cancelled": cancelled,
        "progress": progress_fraction(record, finished, &running),
        "eta": eta_json(&eta),
    });
    Ok((summary, states, running))
}

/// `GET /api/runs`: the most recent `limit` runs, newest first.
pub async fn runs(store: &dyn Store, limit: usize) -> Result<Value> {
    let agents = store.agents().await?;
    let mut out = Vec::new();
    for id in store.list_runs(limit).await? {
        // A run listed but without its record (expired, deleted meanwhile) is left out.
        let Some(record) = store.get_run(&id).await? else { continue };
        out.push(run_summary(store, &record, &agents).await?.0);
    }
    Ok(json!({ "now": unix_now(), "runs": out }))
}

/// `GET /api/runs/{run}`: the run's headline and one row per shard: state, where and how
/// far it runs, attempts, its error, its headline result, its trace.
pub async fn run(store: &dyn Store, run: &str, traces: &TraceLinks) -> Result<Value> {
    let record = commands::get_run(store, run).await?;
    let agents = store.agents().await?;
    let (summary, states, running) = run_summary(store, &record, &agents).await?;
    let results: BTreeMap<String, ShardResult> =
        store.results(run).await?.into_iter().map(|r| (r.shard.clone(), r)).collect();
    let attempts = store.attempts(run).await?;
    let attempt_errors = store.attempt_errors(run).await?;
    let running: BTreeMap<&str, &RunningShard> = running.iter().map(|r| (r.shard.as_str(), r)).collect();
    let shards: Vec<Value> = record
        .shards
        .iter()
        .map(|s| {
            let state = states.get(&s.shard).copied().unwrap_or(ShardState::Queued);
            let live = running.get(s.shard.as_str());
            let result = results.get(&s.shard);
            // A failed result's steps, rate and memory are zeros, not measurements.
            let succeeded = result.filter(|r| r.status == ShardState::Succeeded);
            let retried: Vec<Value> = attempt_errors
                .get(&s.shard)
                .into_iter()
                .flatten()
                .map(|e| json!({"attempt": e.attempt, "agent": e.agent, "error": e.error}))
                .collect();
            // The shard's own span when it ran; before that the submit's trace.
            let traceparent = result.and_then(|r| r.traceparent.as_deref()).or(record.traceparent.as_deref());
            json!({
                "shard": s.shard,
                "model": s.model,
                "task": s.task,
                "seed": s.seed,
                "device_class": s.device_class,
                "state": state.as_str(),
                "state_label": live.map_or_else(|| state.as_str().to_owned(), |r| r.state_label()),
                "attempts": attempts.get(&s.shard).copied().unwrap_or(0),
                "agent": live.and_then(|r| r.agent.clone()).or_else(|| result.map(|r| r.agent.clone())),
                "device": live.and_then(|r| r.device.clone()).or_else(|| result.map(|r| r.measured.device.clone())),
                "gpu_name": result.and_then(|r| r.measured.gpu_name.clone()),
                "step": live.and_then(|r| r.step).or_else(|| succeeded.map(|r| r.measured.steps)),
                "total_steps": live.and_then(|r| r.total_steps),
                "loss": live.and_then(|r| r.loss),
                "steps_per_second": live.and_then(|r| r.steps_per_second).or_else(|| succeeded.map(|r| r.measured.steps_per_second)),
                "eta_seconds": live.and_then(|r| r.eta_seconds),
                "error": result.and_then(|r| r.error.clone()),
                "retried": retried,
                "result": succeeded.map(|r| json!({
                    "metric": r.measured.primary_metric,
                    "value": r.measured.primary_metric.as_ref().and_then(|m| r.measured.metrics.get(m)),
                    "peak_memory_bytes": r.measured.peak_memory_bytes,
                    "wall_seconds": r.measured.wall_seconds,
                    "tokens_per_second": r.measured.tokens_per_second,
                })),
                "trace": traces.link(traceparent),
            })
        })
        .collect();
    Ok(
        json!({ "now": unix_now(), "summary": summary, "shards": shards, "trace": traces.link(record.traceparent.as_deref()) }),
    )
}

/// `[[step, value], …]` of one value of one kind of points, in stream order.
fn series(points: &[shared::shard::MetricPoint], kind: &str) -> BTreeMap<String, Vec<[f64; 2]>> {
    let mut out: BTreeMap<String, Vec<[f64; 2]>> = BTreeMap::new();
    for p in points.iter().filter(|p| p.kind == kind) {
        for (name, v) in &p.values {
            if v.is_finite() {
                out.entry(name.clone()).or_default().push([p.step as f64, *v]);
            }
        }
    }
    out
}

/// `GET /api/runs/{run}/curves`: the metric stream of every shard that has started — per
/// kind (`train`, `dev`) and value name, `[step, value]` pairs — for the live charts.
pub async fn curves(store: &dyn Store, run: &str) -> Result<Value> {
    let record = commands::get_run(store, run).await?;
    let states = store.states(run).await?;
    let mut shards = Vec::new();
    for s in &record.shards {
        let state = states.get(&s.shard).copied().unwrap_or(ShardState::Queued);
        if matches!(state, ShardState::Queued | ShardState::Unpublished) {
            continue;
        }
        let points = store.metrics(run, &s.shard, METRIC_STREAM_MAXLEN).await?;
        shards.push(json!({
            "shard": s.shard,
            "model": s.model,
            "task": s.task,
            "seed": s.seed,
            "state": state.as_str(),
            "train": series(&points, "train"),
            "dev": series(&points, "dev"),
        }));
    }
    Ok(json!({ "now": unix_now(), "shards": shards }))
}

/// `GET /api/runs/{run}/results`: per model × task the metric's mean ± std, its 95 %
/// confidence interval and n (as `qsched results` computes them), and every model against
/// `baseline` (as `qsched compare`). An unknown metric or baseline is an error naming the
/// valid ones; a run without results yet answers with empty tables and says so.
pub async fn results(store: &dyn Store, run: &str, metric: Option<&str>, baseline: Option<ModelId>) -> Result<Value> {
    commands::get_run(store, run).await?;
    let stored = store.results(run).await?;
    if stored.is_empty() {
        return Ok(json!({"rows": [], "comparison": null, "metrics": [], "models": [], "note": "no results yet"}));
    }
    let (all, described) = commands::pooled_results(store, &[run.to_owned()], metric, "show").await?;
    let rows: Vec<Value> = render::aggregate_by(&all, metric)
        .iter()
        .map(|a| {
            let summary = |s: Option<render::Summary>| {
                s.map(|s| json!({"mean": s.mean, "std": s.std, "n": s.n, "ci95": s.ci95()}))
            };
            json!({
                "model": a.model,
                "task": a.task,
                "metric": a.metric,
                "value": summary(a.primary),
                "failed": a.failed,
                "seeds": a.seeds,
                "peak_memory_bytes": summary(a.peak_memory),
                "wall_seconds": summary(a.wall_seconds),
                "tokens_per_second": summary(a.tokens_per_second),
            })
        })
        .collect();
    let models = render::models_with_results(&all);
    let comparison = if models.is_empty() {
        Value::Null
    } else {
        let (baseline, rows) = commands::comparison(&all, baseline, metric, &described)?;
        json!({"baseline": baseline, "rows": rows})
    };
    Ok(json!({
        "rows": rows,
        "comparison": comparison,
        "metrics": render::metric_names(&all),
        "models": models,
        "note": null,
    }))
}

/// `GET /api/fleet`: live agents (heartbeat age, stale flag, current shard), queue depths
/// and dead letters. `broker` is `None` where there is none (the local store), or
/// `Err(why)` when it cannot be reached: the page says so instead of showing zeros.
pub async fn fleet(store: &dyn Store, broker: Option<Result<&dyn BrokerAdmin, String>>) -> Result<Value> {
    let mut agents = store.agents().await?;
    agents.sort_by(|a, b| a.agent.cmp(&b.agent));
    let now = unix_now();
    let agents: Vec<Value> = agents
        .iter()
        .map(|a| {
            let age = (now - a.at).max(0.0);
            json!({
                "agent": a.agent,
                "host": a.host,
                "device": a.device,
                "gpu_name": a.gpu_name,
                "run": a.current.as_ref().map(|(r, _)| r),
                "shard": a.current.as_ref().map(|(_, s)| s),
                "step": a.step,
                "total_steps": a.total_steps,
                "heartbeat_age": age,
                "progress_age": a.progress_at.map(|at| (now - at).max(0.0)),
                "stale": age > STALE_HEARTBEAT_S,
                "shards_done": a.shards_done,
                "worker_memory_bytes": a.worker_memory_bytes,
                "up_seconds": (now - a.started_at).max(0.0),
            })
        })
        .collect();
    let queues = match broker {
        None => Value::Null,
        Some(Err(why)) => json!({"error": why}),
        Some(Ok(b)) => match queue_depths(b).await {
            Ok(q) => q,
            Err(e) => json!({"error": format!("{e:#}")}),
        },
    };
    let dead_letters: Vec<Value> = store
        .dead_letter_records(DEAD_LETTERS_SHOWN)
        .await?
        .iter()
        .map(|r| {
            json!({
                "message_id": r.letter.message_id,
                "reason": r.letter.reason,
                "agent": r.agent,
                "size": r.letter.size,
            })
        })
        .collect();
    Ok(json!({ "now": now, "agents": agents, "queues": queues, "dead_letters": dead_letters }))
}

/// Ready messages per device-class queue and in the dead-letter queue.
pub async fn queue_depths(broker: &dyn BrokerAdmin) -> Result<Value> {
    Ok(json!({
        "cpu": broker.queue_depth(DeviceClass::Cpu).await?,
        "cuda": broker.queue_depth(DeviceClass::Cuda).await?,
        "dead_letters": broker.dead_letter_count().await?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::store::MemoryStore;

    #[test]
    fn trace_ids_come_from_valid_traceparents_only() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(trace_id(tp), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(trace_id("00-00000000000000000000000000000000-00f067aa0ba902b7-01"), None);
        assert_eq!(trace_id("00-xyz-00f067aa0ba902b7-01"), None);
        assert_eq!(trace_id(""), None);
        let links = TraceLinks::new(Some("http://jaeger:16686/trace/{trace_id}".into())).unwrap();
        assert_eq!(
            links.link(Some(tp)),
            json!({"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
                   "url": "http://jaeger:16686/trace/4bf92f3577b34da6a3ce929d0e0e4736"})
        );
        assert_eq!(TraceLinks::default().link(Some(tp))["url"], Value::Null);
        assert_eq!(links.link(None), Value::Null);
        let err = TraceLinks::new(Some("http://jaeger/trace/".into())).unwrap_err().to_string();
        assert!(err.contains("{trace_id}"), "{err}");
    }

    #[test]
    fn progress_counts_finished_shards_whole_and_running_ones_by_step() {
        let record = RunRecord::sample("r-1", 0.0, &["a", "b", "c", "d"]);
        let running = |step, total| RunningShard {
            shard: "c".into(),
            model: ModelId::Qwen3,
            task: shared::TaskId::Sst2,
            seed: 1,
            step: Some(step),
            total_steps: Some(total),
            loss: None,
            steps_per_second: None,
            eta_seconds: None,
            agent: None,
            device: None,
            attempts: 1,
            stale: false,
            silent_seconds: None,
        };
        assert_eq!(progress_fraction(&record, 1, &[running(50, 100)]), 0.375);
        assert_eq!(progress_fraction(&record, 0, &[]), 0.0);
        // A step past its total (a resumed shard's bookkeeping) never counts more than whole.
        assert_eq!(progress_fraction(&record, 3, &[running(300, 100)]), 1.0);
    }

    #[tokio::test]
    async fn run_view_shows_states_errors_and_results_of_every_shard() {
        let store = MemoryStore::new();
        let record = RunRecord::sample("r-20261201-aaaa", unix_now(), &["s1", "s2", "s3"]);
        store.put_run(&record).await.unwrap();
        store.mark_published("r-20261201-aaaa", &["s3".to_owned()]).await.unwrap();
        store.set_state("r-20261201-aaaa", "s1", ShardState::Succeeded).await.unwrap();
        store.set_state("r-20261201-aaaa", "s2", ShardState::Failed).await.unwrap();
        let mut ok = ShardResult::sample("r-20261201-aaaa", "s1", "host-a:cpu:1");
        ok.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
        store.put_result(&ok).await.unwrap();
        let mut failed = ShardResult::sample("r-20261201-aaaa", "s2", "host-a:cpu:1");
        failed.status = ShardState::Failed;
        failed.error = Some("cannot read /models/opt/config.json".into());
        store.put_result(&failed).await.unwrap();

        let view = run(&store, "r-20261201-aaaa", &TraceLinks::default()).await.unwrap();
        let shards = view["shards"].as_array().unwrap();
        assert_eq!(shards.len(), 3);
        assert_eq!(shards[0]["state"], "succeeded");
        assert_eq!(shards[0]["trace"]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(shards[1]["state"], "failed");
        assert_eq!(shards[1]["error"], "cannot read /models/opt/config.json");
        assert_eq!(shards[2]["state"], "queued");
        assert_eq!(view["summary"]["finished"], 2);
        assert_eq!(view["summary"]["counts"]["queued"], 1);
        assert!(run(&store, "r-nope", &TraceLinks::default()).await.unwrap_err().to_string().contains("not found"));
    }
}
