//! The read-side commands (`status`, `results`, `agents`, `runs`, `dead-letters`,
//! `compare`, `scales`) and shared helpers for `submit`, `cancel` and `retry`.
//! Each returns the text to print, so tests can check output without a terminal.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use comfy_table::{Table, presets};
use serde_json::json;

use shared::broker::Broker;
use shared::shard::{RunRecord, ShardResult, ShardState, unix_now};
use shared::spec::{BenchmarkSpec, SpecFile, SpecInput};
use shared::store::Store;
use shared::{DeviceClass, ModelId, TaskId};

use crate::render::{self, Format, human_bytes};

/// Splits a comma-separated flag value into trimmed, non-empty items.
pub fn split_list(s: &str) -> Vec<String> {
    s.split(',').map(str::trim).filter(|x| !x.is_empty()).map(str::to_owned).collect()
}

/// Parses `--seeds 1,2,3`.
pub fn parse_seeds(s: &str) -> Result<Vec<u64>> {
    split_list(s)
        .iter()
        .map(|x| x.parse::<u64>().with_context(|| format!("invalid seed '{x}': seeds are non-negative integers")))
        .collect()
}

/// Flags of `submit` that shape the spec.
#[derive(Debug, Clone, Default)]
pub struct SpecFlags {
    /// `--spec FILE`.
    pub spec: Option<std::path::PathBuf>,
    /// `--scale`.
    pub scale: Option<String>,
    /// `--models`.
    pub models: Option<String>,
    /// `--tasks`.
    pub tasks: Option<String>,
    /// `--seeds`.
    pub seeds: Option<String>,
    /// `--device-class`.
    pub device_class: Option<String>,
    /// `--set`.
    pub set: Vec<String>,
}

/// Resolves the spec from a file and flags (no I/O besides reading the file).
pub fn resolve_spec(flags: &SpecFlags) -> Result<BenchmarkSpec> {
    let file = match &flags.spec {
        Some(p) => SpecFile::load(p)?,
        None => SpecFile::default(),
    };
    let input = SpecInput {
        file,
        scale: flags.scale.clone(),
        models: flags.models.as_deref().map(split_list),
        tasks: flags.tasks.as_deref().map(split_list),
        seeds: flags.seeds.as_deref().map(parse_seeds).transpose()?,
        device: flags.device_class.clone(),
        set: flags.set.clone(),
    };
    Ok(input.resolve()?)
}

/// Fetches a run record or fails naming the run.
pub async fn get_run(store: &dyn Store, run: &str) -> Result<RunRecord> {
    store.get_run(run).await?.with_context(|| format!("run '{run}' not found"))
}

/// Counts of shards by state (queued shards without a state entry count as queued).
pub fn state_counts(record: &RunRecord, states: &BTreeMap<String, ShardState>) -> BTreeMap<ShardState, usize> {
    let mut counts = BTreeMap::new();
    for s in &record.shards {
        *counts.entry(states.get(&s.shard).copied().unwrap_or(ShardState::Queued)).or_insert(0) += 1;
    }
    counts
}

/// True when every shard of the run is in a terminal state.
pub fn run_finished(record: &RunRecord, states: &BTreeMap<String, ShardState>) -> bool {
    record.shards.iter().all(|s| states.get(&s.shard).is_some_and(|st| st.is_terminal()))
}

/// A running shard without progress for this long is shown as such (workers report
/// progress about every second).
const STALLED_AFTER_S: f64 = 60.0;

/// `qsched status RUN`.
pub async fn status(store: &dyn Store, broker: Option<&dyn Broker>, run: &str) -> Result<String> {
    let record = get_run(store, run).await?;
    let states = store.states(run).await?;
    let progress = store.progress(run).await?;
    let attempts = store.attempts(run).await?;
    let agents = store.agents().await?;
    let counts = state_counts(&record, &states);
    let done = counts.iter().filter(|(s, _)| s.is_terminal()).map(|(_, n)| n).sum::<usize>();
    let mut out = format!(
        "run {} ({}), {} shards, submitted {:.0} s ago: {}/{} finished\n",
        record.run_id,
        record.name,
        record.shard_count,
        unix_now() - record.created_at,
        done,
        record.shard_count
    );
    let parts: Vec<String> = counts.iter().map(|(s, n)| format!("{} {n}", s.as_str())).collect();
    out.push_str(&format!("states: {}\n", parts.join(", ")));
    if let Some(n) = counts.get(&ShardState::Unpublished) {
        out.push_str(&format!(
            "{n} shard(s) were never published (the submit was interrupted): `qsched submit --resume {}` publishes them\n",
            record.run_id
        ));
    }
    if let Some(b) = broker {
        let cpu = b.queue_depth(DeviceClass::Cpu).await?;
        let cuda = b.queue_depth(DeviceClass::Cuda).await?;
        let dead = b.dead_letter_count().await?;
        out.push_str(&format!("queues (all runs): cpu {cpu} ready, cuda {cuda} ready, dead letters {dead}\n"));
    }
    let live: std::collections::BTreeSet<String> = agents.iter().map(|a| a.agent.clone()).collect();
    let progress_at: BTreeMap<&str, f64> =
        agents.iter().filter_map(|a| Some((a.agent.as_str(), a.progress_at?))).collect();
    let mut running = Table::new();
    running
        .load_preset(presets::UTF8_FULL_CONDENSED)
        .set_header(["shard", "model", "task", "seed", "state", "step", "loss", "agent", "attempts"]);
    let mut any = false;
    for s in &record.shards {
        let state = states.get(&s.shard).copied().unwrap_or(ShardState::Queued);
        if state != ShardState::Running {
            continue;
        }
        any = true;
        let p = progress.get(&s.shard);
        // A running shard whose agent stopped heartbeating is stale: its delivery will
        // come back to the queue when the broker notices the dead connection.
        let stale = p.is_some_and(|p| !live.contains(&p.agent));
        // A live agent whose worker reports no progress: stopped or hung (the agent's
        // watchdog kills it after its stall timeout).
        let silent = p.and_then(|p| progress_at.get(p.agent.as_str())).map(|at| unix_now() - at);
        let state = match silent {
            _ if stale => "running (stale)".to_owned(),
            Some(s) if s >= STALLED_AFTER_S => format!("running (no progress for {s:.0} s)"),
            _ => "running".to_owned(),
        };
        running.add_row([
            s.shard.clone(),
            s.model.to_string(),
            s.task.to_string(),
            s.seed.to_string(),
            state,
            p.map_or("—".into(), |p| format!("{}/{}", p.step, p.total_steps)),
            p.and_then(|p| p.loss).map_or("—".into(), |l| format!("{l:.4}")),
            p.map_or("—".into(), |p| p.agent.clone()),
            attempts.get(&s.shard).copied().unwrap_or(0).to_string(),
        ]);
    }
    if any {
        out.push_str(&running.to_string());
        out.push('\n');
    }
    Ok(out)
}

/// `qsched results RUN`.
pub async fn results(
    store: &dyn Store,
    run: &str,
    format: Format,
    metric: Option<&str>,
) -> Result<(String, Vec<ShardResult>, RunRecord)> {
    let record = get_run(store, run).await?;
    let results = store.results(run).await?;
    Ok((render::render_results_by(&results, format, metric), results, record))
}

/// `qsched agents`.
pub async fn agents(store: &dyn Store, format: Format) -> Result<String> {
    let mut agents = store.agents().await?;
    agents.sort_by(|a, b| a.agent.cmp(&b.agent));
    if format == Format::Json {
        return Ok(serde_json::to_string_pretty(&agents)?);
    }
    if agents.is_empty() {
        return Ok("no live agents\n".into());
    }
    let mut t = Table::new();
    t.load_preset(presets::UTF8_FULL_CONDENSED).set_header([
        "agent",
        "host",
        "device",
        "gpu",
        "current shard",
        "step",
        "last progress",
        "last heartbeat",
        "shards done",
        "up",
    ]);
    let now = unix_now();
    for a in agents {
        t.add_row([
            a.agent,
            a.host,
            a.device,
            a.gpu_name.unwrap_or_else(|| "—".into()),
            a.current.map_or("idle".into(), |(r, s)| format!("{r}/{s}")),
            match (a.step, a.total_steps) {
                (Some(s), Some(t)) => format!("{s}/{t}"),
                _ => "—".into(),
            },
            match a.progress_at.map(|at| (now - at).max(0.0)) {
                Some(s) if s >= STALLED_AFTER_S => format!("{s:.0} s ago (stalled?)"),
                Some(s) => format!("{s:.0} s ago"),
                None => "—".into(),
            },
            format!("{:.0} s ago", (now - a.at).max(0.0)),
            a.shards_done.to_string(),
            format!("{:.0} s", (now - a.started_at).max(0.0)),
        ]);
    }
    Ok(format!("{t}\n"))
}

/// `qsched runs`.
pub async fn runs(store: &dyn Store, limit: usize) -> Result<String> {
    let ids = store.list_runs(limit).await?;
    if ids.is_empty() {
        return Ok("no runs\n".into());
    }
    let mut t = Table::new();
    t.load_preset(presets::UTF8_FULL_CONDENSED).set_header(["run", "name", "shards", "finished", "submitted"]);
    let now = unix_now();
    for id in ids {
        let Some(r) = store.get_run(&id).await? else { continue };
        let states = store.states(&id).await?;
        let done = r.shards.iter().filter(|s| states.get(&s.shard).is_some_and(|st| st.is_terminal())).count();
        t.add_row([
            id,
            r.name.clone(),
            r.shard_count.to_string(),
            done.to_string(),
            format!("{:.0} s ago", now - r.created_at),
        ]);
    }
    Ok(format!("{t}\n"))
}

/// `qsched dead-letters`.
pub async fn dead_letters(store: &dyn Store, broker: &dyn Broker, limit: usize) -> Result<String> {
    let total = broker.dead_letter_count().await?;
    let queued = broker.dead_letters(limit).await?;
    let recorded = store.dead_letter_records(limit).await?;
    let mut out = if (queued.len() as u64) < total {
        format!("{total} message(s) in the dead-letter queue, the first {} shown (--limit)\n", queued.len())
    } else {
        format!("{total} message(s) in the dead-letter queue\n")
    };
    for d in &queued {
        out.push_str(&format!("  {} ({} bytes): {}\n", d.message_id.as_deref().unwrap_or("<no id>"), d.size, d.reason));
    }
    if !recorded.is_empty() {
        out.push_str(&format!("{} dead letter(s) recorded by agents\n", recorded.len()));
        for r in &recorded {
            out.push_str(&format!(
                "  {} by {}: {}\n",
                r.letter.message_id.as_deref().unwrap_or("<no id>"),
                r.agent,
                r.letter.reason
            ));
        }
    }
    Ok(out)
}

/// `qsched scales`: every preset with its shapes and training settings.
pub fn scales() -> String {
    let mut t = Table::new();
    t.load_preset(presets::UTF8_FULL_CONDENSED).set_header([
        "scale",
        "device",
        "Qwen3 (layers × hidden, heads/kv × head_dim, mlp)",
        "Qwen3 params",
        "OPT (layers × hidden, heads, ffn, LN)",
        "OPT params",
        "seq",
        "train/dev/test",
        "first-order steps × batch, lr",
        "zeroth-order steps × batch, lr, ε",
    ]);
    for p in shared::scale::all_presets() {
        let q = &p.qwen3;
        let o = &p.opt;
        let count = |n: u32| if n == 0 { "all".to_owned() } else { n.to_string() };
        t.add_row([
            p.name.clone(),
            p.device_class.to_string(),
            format!(
                "{} × {}, {}/{} × {}, {}",
                q.num_hidden_layers,
                q.hidden_size,
                q.num_attention_heads,
                q.num_key_value_heads,
                q.head_dim,
                q.intermediate_size
            ),
            format!("{:.1}M", q.classifier_parameters(2) as f64 / 1e6),
            format!(
                "{} × {}, {}, {}, {}{}",
                o.num_hidden_layers,
                o.hidden_size,
                o.num_attention_heads,
                o.ffn_dim,
                if o.do_layer_norm_before { "pre" } else { "post" },
                if o.word_embed_proj_dim != o.hidden_size {
                    format!(", proj {}", o.word_embed_proj_dim)
                } else {
                    String::new()
                }
            ),
            format!("{:.1}M", o.parameters() as f64 / 1e6),
            p.data.max_seq_len.to_string(),
            format!("{}/{}/{}", count(p.data.train_examples), p.data.dev_examples, count(p.data.test_examples)),
            format!("{} × {}, {:e}", p.first_order.max_steps, p.first_order.batch_size, p.first_order.learning_rate),
            format!(
                "{} × {}, {:e}, {:e}",
                p.zeroth_order.max_steps,
                p.zeroth_order.batch_size,
                p.zeroth_order.learning_rate,
                p.zeroth_order.zo_eps
            ),
        ]);
    }
    format!("{t}\n")
}

/// `qsched compare`: each model against a baseline model, per task, within the runs given.
pub async fn compare(
    store: &dyn Store,
    runs: &[String],
    baseline: Option<ModelId>,
    metric: Option<&str>,
    format: Format,
) -> Result<String> {
    let mut all = Vec::new();
    for r in runs {
        get_run(store, r).await?;
        all.extend(store.results(r).await?);
    }
    if all.is_empty() {
        bail!("no results yet in {}", runs.join(", "));
    }
    let aggs = render::aggregate_by(&all, metric);
    let tasks: Vec<TaskId> = {
        let mut t: Vec<TaskId> = aggs.iter().map(|a| a.task).collect();
        t.dedup();
        t.sort();
        t.dedup();
        t
    };
    let baseline = baseline.or_else(|| aggs.first().map(|a| a.model)).context("no models")?;
    let mut rows = Vec::new();
    for task in tasks {
        let base = aggs.iter().find(|a| a.task == task && a.model == baseline);
        for a in aggs.iter().filter(|a| a.task == task) {
            let ratio = |x: Option<render::Summary>, y: Option<render::Summary>| match (x, y) {
                (Some(x), Some(y)) if y.mean > 0.0 => Some(x.mean / y.mean),
                _ => None,
            };
            rows.push(json!({
                "task": task,
                "model": a.model,
                "metric": a.metric,
                "mean": a.primary.map(|s| s.mean),
                "std": a.primary.map(|s| s.std),
                "n": a.primary.map_or(0, |s| s.n),
                "delta_vs_baseline": match (a.primary, base.and_then(|b| b.primary)) {
                    (Some(x), Some(y)) => Some(x.mean - y.mean),
                    _ => None,
                },
                "memory_ratio": ratio(a.peak_memory, base.and_then(|b| b.peak_memory)),
                "time_ratio": ratio(a.wall_seconds, base.and_then(|b| b.wall_seconds)),
                "peak_memory_bytes": a.peak_memory.map(|s| s.mean),
                "wall_seconds": a.wall_seconds.map(|s| s.mean),
            }));
        }
    }
    if format == Format::Json {
        return Ok(serde_json::to_string_pretty(&rows)?);
    }
    let headers = [
        "task",
        "model",
        "metric",
        "mean ± std",
        "n",
        &format!("Δ vs {baseline}"),
        "memory ×",
        "time ×",
        "peak memory",
    ];
    let fmt_row = |r: &serde_json::Value| -> Vec<String> {
        let f = |k: &str, d: usize| r[k].as_f64().map_or("—".into(), |v| format!("{v:.d$}"));
        vec![
            r["task"].as_str().unwrap_or("").to_owned(),
            r["model"].as_str().unwrap_or("").to_owned(),
            r["metric"].as_str().unwrap_or("—").to_owned(),
            match (r["mean"].as_f64(), r["std"].as_f64()) {
                (Some(m), Some(s)) => format!("{m:.4} ± {s:.4}"),
                _ => "—".into(),
            },
            r["n"].to_string(),
            r["delta_vs_baseline"].as_f64().map_or("—".into(), |v| format!("{v:+.4}")),
            f("memory_ratio", 2),
            f("time_ratio", 2),
            r["peak_memory_bytes"].as_f64().map_or("—".into(), human_bytes),
        ]
    };
    match format {
        Format::Csv => {
            let mut out = format!("{}\n", headers.join(","));
            for r in &rows {
                out.push_str(&format!("{}\n", fmt_row(r).join(",")));
            }
            Ok(out)
        }
        Format::Markdown => {
            let mut out = format!("| {} |\n|{}\n", headers.join(" | "), "---|".repeat(headers.len()));
            for r in &rows {
                out.push_str(&format!("| {} |\n", fmt_row(r).join(" | ")));
            }
            Ok(out)
        }
        _ => {
            let mut t = Table::new();
            t.load_preset(presets::UTF8_FULL_CONDENSED).set_header(headers.to_vec());
            for r in &rows {
                t.add_row(fmt_row(r));
            }
            Ok(format!("{t}\n"))
        }
    }
}

/// Polls the store until the run has finished, calling `on_tick` with (finished, total).
pub async fn wait_for_run(
    store: &dyn Store,
    run: &str,
    poll: Duration,
    mut on_tick: impl FnMut(usize, usize, &BTreeMap<ShardState, usize>),
) -> Result<()> {
    let record = get_run(store, run).await?;
    loop {
        let states = store.states(run).await?;
        let counts = state_counts(&record, &states);
        let done = counts.iter().filter(|(s, _)| s.is_terminal()).map(|(_, n)| n).sum::<usize>();
        on_tick(done, record.shards.len(), &counts);
        if run_finished(&record, &states) {
            return Ok(());
        }
        tokio::time::sleep(poll).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::broker::MemoryBroker;
    use shared::store::MemoryStore;

    #[test]
    fn lists_and_seeds() {
        assert_eq!(split_list(" a, b,,c "), vec!["a", "b", "c"]);
        assert_eq!(parse_seeds("1,2, 3").unwrap(), vec![1, 2, 3]);
        assert!(parse_seeds("1,x").unwrap_err().to_string().contains("invalid seed 'x'"));
    }

    #[test]
    fn scales_table_lists_every_preset() {
        let t = scales();
        for name in ["tiny", "small", "medium", "large"] {
            assert!(t.contains(name), "{t}");
        }
        assert!(t.contains("28 × 1024, 16/8 × 128, 3072"), "{t}");
    }

    #[tokio::test]
    async fn status_and_results_of_a_submitted_run() {
        let store = MemoryStore::new();
        let broker = MemoryBroker::default();
        let flags = SpecFlags { models: Some("qwen3".into()), seeds: Some("1,2".into()), ..Default::default() };
        let spec = resolve_spec(&flags).unwrap();
        let record = scheduler::submit(&spec, &shared::RunId::new("r1").unwrap(), &broker, &store).await.unwrap();
        let text = status(&store, Some(&broker), "r1").await.unwrap();
        assert!(text.contains("0/2 finished") && text.contains("queued 2") && text.contains("cpu 2 ready"), "{text}");
        assert!(!run_finished(&record, &store.states("r1").await.unwrap()));
        let (out, results, _) = results(&store, "r1", Format::Json, None).await.unwrap();
        assert!(results.is_empty());
        assert_eq!(out.trim(), "[]");
        assert!(status(&store, None, "nope").await.unwrap_err().to_string().contains("run 'nope' not found"));
    }
}
