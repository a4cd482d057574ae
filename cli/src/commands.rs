//! The read-side commands (`status`, `results`, `agents`, `runs`, `dead-letters`,
//! `compare`, `scales`) and shared helpers for `submit`, `cancel` and `retry`.
//! Each returns the text to print, so tests can check output without a terminal.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use comfy_table::{Table, presets};
use serde_json::json;

use shared::broker::BrokerAdmin;
use shared::shard::{AgentHeartbeat, RunRecord, ShardResult, ShardState, unix_now};
use shared::spec::{BenchmarkSpec, SpecFile, SpecInput};
use shared::store::{AttemptError, Store};
use shared::{DeviceClass, DeviceSpec, ModelId, TaskId};

use crate::live;
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

/// Metric points read per running shard for its latest loss and its rate.
const METRIC_POINTS_READ: usize = 64;

/// Train points (the most recent) the rate of a running shard is measured over.
const RATE_WINDOW: usize = 10;

/// A running shard as `status` and the dashboard show it: where it is, how fast it goes,
/// and whether its agent is still there.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RunningShard {
    /// Shard id.
    pub shard: String,
    /// Model.
    pub model: ModelId,
    /// Task.
    pub task: TaskId,
    /// Seed.
    pub seed: u64,
    /// Current step, when known.
    pub step: Option<u64>,
    /// Steps planned, when known.
    pub total_steps: Option<u64>,
    /// Latest training loss.
    pub loss: Option<f64>,
    /// Training steps per second over the latest train points.
    pub steps_per_second: Option<f64>,
    /// Seconds until its training ends, at that rate.
    pub eta_seconds: Option<f64>,
    /// The agent running it (by its progress record or its heartbeat).
    pub agent: Option<String>,
    /// The device that agent is pinned to, when its heartbeat is live.
    pub device: Option<String>,
    /// Attempts started so far.
    pub attempts: u32,
    /// Its agent stopped heartbeating: the delivery comes back to the queue when the
    /// broker notices the dead connection.
    pub stale: bool,
    /// Seconds since its live agent last reported progress (a stopped or hung worker
    /// shows here before the watchdog kills it).
    pub silent_seconds: Option<f64>,
}

impl RunningShard {
    /// The state column: `running`, `running (stale)` or `running (no progress for N s)`.
    pub fn state_label(&self) -> String {
        match self.silent_seconds {
            _ if self.stale => "running (stale)".to_owned(),
            Some(s) if s >= STALLED_AFTER_S => format!("running (no progress for {s:.0} s)"),
            _ => "running".to_owned(),
        }
    }
}

/// The running shards of `record`, in the run's shard order, with their step, loss, rate,
/// ETA and agent read from the progress records, the metric streams and the heartbeats.
pub async fn running_shards(
    store: &dyn Store,
    record: &RunRecord,
    states: &BTreeMap<String, ShardState>,
    agents: &[AgentHeartbeat],
) -> Result<Vec<RunningShard>> {
    let run = record.run_id.as_str();
    let progress = store.progress(run).await?;
    let attempts = store.attempts(run).await?;
    let live: std::collections::BTreeSet<&str> = agents.iter().map(|a| a.agent.as_str()).collect();
    let mut out = Vec::new();
    for s in &record.shards {
        let state = states.get(&s.shard).copied().unwrap_or(ShardState::Queued);
        if state != ShardState::Running {
            continue;
        }
        let p = progress.get(&s.shard);
        // The agent running it now, by its heartbeat: before the first train point of an
        // attempt (no progress record, or one left by an earlier attempt elsewhere) its
        // heartbeat has the step and total.
        let beat = agents.iter().find(|a| a.current.as_ref().is_some_and(|(r, sh)| r == run && *sh == s.shard));
        let (step, total, agent) = match (p, beat) {
            (Some(p), Some(b)) if p.agent != b.agent => (b.step, b.total_steps, Some(b.agent.clone())),
            (Some(p), _) => (Some(p.step), Some(p.total_steps), Some(p.agent.clone())),
            (None, Some(b)) => (b.step, b.total_steps, Some(b.agent.clone())),
            (None, None) => (None, None, None),
        };
        let points = store.metrics(run, &s.shard, METRIC_POINTS_READ).await?;
        let train: Vec<&shared::shard::MetricPoint> = points.iter().filter(|m| m.kind == "train").collect();
        // The latest loss known: the progress record's, else the stream's (a train point
        // without a finite mean loss carries none).
        let loss = p
            .filter(|p| agent.as_deref() == Some(p.agent.as_str()))
            .and_then(|p| p.loss)
            .or_else(|| train.iter().rev().find_map(|m| m.values.get("loss").copied()));
        let recent: Vec<(u64, f64)> =
            train[train.len().saturating_sub(RATE_WINDOW)..].iter().map(|m| (m.step, m.at)).collect();
        let rate = live::steps_per_second(&recent);
        let eta = match (step, total) {
            (Some(step), Some(total)) => live::shard_eta(step, total, rate),
            _ => None,
        };
        let agent_beat = agent.as_deref().and_then(|a| agents.iter().find(|b| b.agent == a));
        out.push(RunningShard {
            shard: s.shard.clone(),
            model: s.model,
            task: s.task,
            seed: s.seed,
            step,
            total_steps: total,
            loss,
            steps_per_second: rate,
            eta_seconds: eta,
            stale: agent.as_deref().is_some_and(|a| !live.contains(a)),
            silent_seconds: agent_beat.and_then(|b| b.progress_at).map(|at| unix_now() - at),
            device: agent_beat.map(|b| b.device.clone()),
            agent,
            attempts: attempts.get(&s.shard).copied().unwrap_or(0),
        });
    }
    Ok(out)
}

/// `qsched status RUN`.
pub async fn status(store: &dyn Store, broker: Option<&dyn BrokerAdmin>, run: &str) -> Result<String> {
    let record = get_run(store, run).await?;
    // Shards the broker gave up on while no agent was there to take the notice.
    if let Some(b) = broker {
        shared::dead_letters::record_notices(b, store, "qsched").await?;
    }
    let states = store.states(run).await?;
    let agents = store.agents().await?;
    let cancelled = store.is_cancelled(run).await?;
    let counts = state_counts(&record, &states);
    let done = counts.iter().filter(|(s, _)| s.is_terminal()).map(|(_, n)| n).sum::<usize>();
    let mut out = format!(
        "run {} ({}), {} shards, submitted {:.0} s ago: {}/{} finished{}\n",
        record.run_id,
        record.name,
        record.shard_count,
        unix_now() - record.created_at,
        done,
        record.shard_count,
        if cancelled { " (cancelled)" } else { "" }
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
    let running = running_shards(store, &record, &states, &agents).await?;
    if !running.is_empty() {
        let mut table = Table::new();
        table.load_preset(presets::UTF8_FULL_CONDENSED).set_header([
            "shard", "model", "task", "seed", "state", "step", "loss", "steps/s", "eta", "agent", "attempts",
        ]);
        let dash = || "—".to_owned();
        for r in &running {
            table.add_row([
                r.shard.clone(),
                r.model.to_string(),
                r.task.to_string(),
                r.seed.to_string(),
                r.state_label(),
                match (r.step, r.total_steps) {
                    (Some(step), Some(total)) => format!("{step}/{total}"),
                    (None, Some(total)) => format!("—/{total}"),
                    (Some(step), None) => step.to_string(),
                    (None, None) => dash(),
                },
                r.loss.map_or_else(dash, |l| format!("{l:.4}")),
                r.steps_per_second.map_or_else(dash, |r| if r >= 10.0 { format!("{r:.1}") } else { format!("{r:.2}") }),
                r.eta_seconds.map_or_else(dash, live::human_secs),
                r.agent.clone().unwrap_or_else(dash),
                r.attempts.to_string(),
            ]);
        }
        out.push_str(&table.to_string());
        out.push('\n');
    }
    out.push_str(&match estimate_run_eta(store, &record, &counts, &running, &agents, cancelled).await? {
        live::RunEta::Nothing => String::new(),
        live::RunEta::Known { secs, basis } => format!("eta: ~{} (based on {basis})\n", live::human_secs(secs)),
        live::RunEta::Unknown(why) => format!("eta: — ({why})\n"),
    });
    out.push_str(&retried_attempts(&record, &store.attempt_errors(run).await?));
    Ok(out)
}

/// When the run should finish, or why that cannot be said ([`live::run_eta`] over the
/// run's queued, running and finished shards and the live agents of its device class).
pub async fn estimate_run_eta(
    store: &dyn Store,
    record: &RunRecord,
    counts: &BTreeMap<ShardState, usize>,
    running: &[RunningShard],
    agents: &[AgentHeartbeat],
    cancelled: bool,
) -> Result<live::RunEta> {
    if cancelled {
        return Ok(live::RunEta::Unknown("the run is cancelled".into()));
    }
    let waiting = counts.get(&ShardState::Queued).copied().unwrap_or(0);
    if waiting == 0 && running.is_empty() {
        // Finished, or only unpublished shards left: nothing will run on its own.
        return Ok(live::RunEta::Nothing);
    }
    let finished_walls = store
        .results(record.run_id.as_str())
        .await?
        .iter()
        .filter(|r| matches!(r.status, ShardState::Succeeded | ShardState::Failed))
        .map(|r| r.measured.wall_seconds)
        .collect();
    let class = record.shards.first().map(|s| s.device_class);
    let agents = class.map_or(0, |c| agents_of_class(agents, c));
    let running = running.iter().map(|r| r.eta_seconds).collect();
    Ok(live::run_eta(&live::RunEtaInput { waiting, running, finished_walls, agents }))
}

/// Why `status --watch` stops, once it should: the run finished, or it was cancelled
/// (its queued shards may wait for an agent that never comes, so the watch would not
/// end otherwise). `None` while it goes on.
pub async fn watch_stop(store: &dyn Store, record: &RunRecord) -> Result<Option<String>> {
    let run = record.run_id.as_str();
    let states = store.states(run).await?;
    let counts = state_counts(record, &states);
    let parts: Vec<String> = counts.iter().map(|(s, n)| format!("{} {n}", s.as_str())).collect();
    if run_finished(record, &states) {
        return Ok(Some(format!("run {run} finished ({})", parts.join(", "))));
    }
    if store.is_cancelled(run).await? {
        return Ok(Some(format!(
            "run {run} was cancelled (`qsched cancel`); its unfinished shards will not run ({})",
            parts.join(", ")
        )));
    }
    Ok(None)
}

/// Shards listed with their failed-and-retried attempts in `status`; the rest are counted.
const RETRIED_SHARDS_SHOWN: usize = 20;

/// Why earlier attempts of shards failed (they were retried; a shard's final failure is
/// in its result), one line each, in the order of the run's shards.
fn retried_attempts(record: &RunRecord, errors: &BTreeMap<String, Vec<AttemptError>>) -> String {
    let retried: Vec<_> = record.shards.iter().filter_map(|s| Some((s, errors.get(&s.shard)?))).collect();
    if retried.is_empty() {
        return String::new();
    }
    let mut out = format!("retried shards ({}):\n", retried.len());
    for (s, failed) in retried.iter().take(RETRIED_SHARDS_SHOWN) {
        for e in failed.iter() {
            // The first line says what happened; a worker's backtrace stays in the log.
            let first_line = e.error.lines().next().unwrap_or("");
            let shown: String = first_line.chars().take(200).collect();
            out.push_str(&format!(
                "  {} ({} × {}, seed {}): attempt {} failed on {}: {shown}\n",
                s.shard, s.model, s.task, s.seed, e.attempt, e.agent
            ));
        }
    }
    if retried.len() > RETRIED_SHARDS_SHOWN {
        out.push_str(&format!("  … and {} more\n", retried.len() - RETRIED_SHARDS_SHOWN));
    }
    out
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
    if let Some(metric) = metric {
        check_metric(&results, metric, &format!("run {run}"))?;
    }
    Ok((render::render_results_by(&results, format, metric), results, record))
}

/// Refuses a `--metric` that no succeeded result reports, listing the ones they do (a
/// typo would otherwise print a table of "—"). Without succeeded results there is nothing
/// to check against.
fn check_metric(results: &[ShardResult], metric: &str, runs: &str) -> Result<()> {
    let names = render::metric_names(results);
    if names.is_empty() || names.iter().any(|n| n == metric) {
        return Ok(());
    }
    bail!("no result of {runs} has a metric named '{metric}'; the results have: {}", names.join(", "))
}

/// How a finished run ended; `submit --wait` and `submit --local` exit with its code.
///
/// When several apply, the highest code wins: a dead-lettered shard has no result at all,
/// a cancelled run is incomplete, a failed shard has its error in the results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RunOutcome {
    /// Every shard succeeded (exit status 0).
    Succeeded,
    /// At least one shard failed (exit status 3).
    SomeFailed,
    /// At least one shard was cancelled (exit status 4).
    Cancelled,
    /// At least one shard was dead-lettered (exit status 5).
    DeadLettered,
}

/// Exit statuses of `qsched submit`, as `qsched submit --help` prints them. Clap itself
/// exits with 2 on a usage error, so the run outcomes start at 3.
pub const SUBMIT_EXIT_STATUS_HELP: &str = "\
Exit status:
  0  success; with --wait or --local: every shard succeeded
  1  error: bad input, missing data, unreachable broker or Redis, no live agent with
     --require-agents; nothing is recorded or enqueued, unless publishing was cut short
     (the message then names the run to `qsched submit --resume`)
  2  usage error (unknown flag or value)
  3  with --wait or --local: the run finished and at least one shard failed
  4  with --wait or --local: at least one shard was cancelled
  5  with --wait or --local: at least one shard was dead-lettered
When several of 3-5 apply, the highest wins.";

impl RunOutcome {
    /// The outcome of a finished run from its shard counts by state.
    pub fn of(counts: &BTreeMap<ShardState, usize>) -> RunOutcome {
        let any = |state: ShardState| counts.get(&state).is_some_and(|n| *n > 0);
        if any(ShardState::Dead) {
            RunOutcome::DeadLettered
        } else if any(ShardState::Cancelled) {
            RunOutcome::Cancelled
        } else if any(ShardState::Failed) {
            RunOutcome::SomeFailed
        } else {
            RunOutcome::Succeeded
        }
    }

    /// The process exit status (see [`SUBMIT_EXIT_STATUS_HELP`]).
    pub fn exit_code(self) -> u8 {
        match self {
            RunOutcome::Succeeded => 0,
            RunOutcome::SomeFailed => 3,
            RunOutcome::Cancelled => 4,
            RunOutcome::DeadLettered => 5,
        }
    }

    /// One line for stderr saying how the run ended, with the counts that made it so;
    /// `None` when every shard succeeded.
    pub fn summary(self, run: &str, counts: &BTreeMap<ShardState, usize>) -> Option<String> {
        if self == RunOutcome::Succeeded {
            return None;
        }
        let total: usize = counts.values().sum();
        let parts: Vec<String> =
            [(ShardState::Failed, "failed"), (ShardState::Cancelled, "cancelled"), (ShardState::Dead, "dead-lettered")]
                .into_iter()
                .filter_map(|(state, word)| counts.get(&state).filter(|n| **n > 0).map(|n| format!("{n} {word}")))
                .collect();
        Some(format!(
            "run {run}: {} of {total} shard(s) did not succeed ({}); exit status {}",
            total - counts.get(&ShardState::Succeeded).copied().unwrap_or(0),
            parts.join(", "),
            self.exit_code()
        ))
    }
}

/// A run that finished with shards that did not succeed. Not a failure of qsched itself:
/// `qsched` prints the summary and exits with the outcome's code instead of 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunEnded {
    /// How the run ended (never [`RunOutcome::Succeeded`]).
    pub outcome: RunOutcome,
    /// The line to print, from [`RunOutcome::summary`].
    pub summary: String,
}

impl std::fmt::Display for RunEnded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.summary)
    }
}

impl std::error::Error for RunEnded {}

/// `Ok` when every shard of the finished run succeeded, otherwise [`RunEnded`].
pub fn run_result(run: &str, counts: &BTreeMap<ShardState, usize>) -> Result<(), RunEnded> {
    let outcome = RunOutcome::of(counts);
    match outcome.summary(run, counts) {
        None => Ok(()),
        Some(summary) => Err(RunEnded { outcome, summary }),
    }
}

/// Live agents (heartbeating now) whose device is of `class`: the ones that consume its
/// queue. A heartbeat whose device does not parse consumes nothing qsched publishes.
pub fn agents_of_class(agents: &[AgentHeartbeat], class: DeviceClass) -> usize {
    agents.iter().filter(|a| a.device.parse::<DeviceSpec>().is_ok_and(|d| d.class() == class)).count()
}

/// Before a submit: is any live agent serving `class`? `Ok(None)` when one is;
/// otherwise the warning to print, or with `require` an error (then nothing is recorded
/// or enqueued). The shards of a class nobody serves would wait in the queue silently.
pub async fn check_agents(
    store: &dyn Store,
    class: DeviceClass,
    prefix: &str,
    require: bool,
) -> Result<Option<String>> {
    let agents = store.agents().await?;
    if agents_of_class(&agents, class) > 0 {
        return Ok(None);
    }
    let example = match class {
        DeviceClass::Cpu => "cpu",
        DeviceClass::Cuda => "cuda:0",
    };
    let message = format!(
        "no live {class} agent under prefix '{prefix}' ({} live agent(s) in all): the shards would wait in the {class} \
         queue until a `qagent --device {example} --prefix {prefix}` starts (`qsched agents` lists the live ones)",
        agents.len()
    );
    if require {
        bail!("{message}; nothing was submitted (--require-agents)");
    }
    Ok(Some(format!("warning: {message}; --require-agents makes this an error")))
}

/// Columns of `qsched agents` (table and Markdown).
const AGENT_HEADERS: [&str; 10] =
    ["agent", "host", "device", "gpu", "current shard", "step", "last progress", "last heartbeat", "shards done", "up"];

/// `qsched agents` in `format`: JSON and CSV carry the raw values (seconds as numbers),
/// the table and Markdown the same rows for people.
pub async fn agents(store: &dyn Store, format: Format) -> Result<String> {
    let mut agents = store.agents().await?;
    agents.sort_by(|a, b| a.agent.cmp(&b.agent));
    let now = unix_now();
    let age = |at: f64| (now - at).max(0.0);
    match format {
        Format::Json => return Ok(format!("{}\n", serde_json::to_string_pretty(&agents)?)),
        Format::Csv => {
            let mut out = render::csv_line(&[
                "agent",
                "host",
                "device",
                "gpu_name",
                "run",
                "shard",
                "step",
                "total_steps",
                "last_progress_seconds_ago",
                "last_heartbeat_seconds_ago",
                "shards_done",
                "up_seconds",
            ]);
            let opt = |v: Option<String>| v.unwrap_or_default();
            for a in agents {
                let (run, shard) = a.current.unwrap_or_default();
                out.push_str(&render::csv_line(&[
                    a.agent,
                    a.host,
                    a.device,
                    opt(a.gpu_name),
                    run,
                    shard,
                    opt(a.step.map(|s| s.to_string())),
                    opt(a.total_steps.map(|s| s.to_string())),
                    opt(a.progress_at.map(|at| format!("{:.0}", age(at)))),
                    format!("{:.0}", age(a.at)),
                    a.shards_done.to_string(),
                    format!("{:.0}", age(a.started_at)),
                ]));
            }
            return Ok(out);
        }
        Format::Table | Format::Markdown => {}
    }
    if agents.is_empty() && format == Format::Table {
        return Ok("no live agents\n".into());
    }
    let rows: Vec<Vec<String>> = agents
        .into_iter()
        .map(|a| {
            vec![
                a.agent,
                a.host,
                a.device,
                a.gpu_name.unwrap_or_else(|| "—".into()),
                a.current.map_or("idle".into(), |(r, s)| format!("{r}/{s}")),
                match (a.step, a.total_steps) {
                    (Some(s), Some(t)) => format!("{s}/{t}"),
                    _ => "—".into(),
                },
                match a.progress_at.map(age) {
                    Some(s) if s >= STALLED_AFTER_S => format!("{s:.0} s ago (stalled?)"),
                    Some(s) => format!("{s:.0} s ago"),
                    None => "—".into(),
                },
                format!("{:.0} s ago", age(a.at)),
                a.shards_done.to_string(),
                format!("{:.0} s", age(a.started_at)),
            ]
        })
        .collect();
    if format == Format::Markdown {
        return Ok(render::markdown_table(&AGENT_HEADERS, &rows));
    }
    let mut t = Table::new();
    t.load_preset(presets::UTF8_FULL_CONDENSED).set_header(AGENT_HEADERS);
    for r in rows {
        t.add_row(r);
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
pub async fn dead_letters(store: &dyn Store, broker: &dyn BrokerAdmin, limit: usize) -> Result<String> {
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

/// Columns of `qsched scales` (one wide row per preset, as in the README).
const SCALE_HEADERS: [&str; 10] = [
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
];

/// The same columns with line breaks in the headers, so that no cell of the table has to wrap.
const SCALE_TABLE_HEADERS: [&str; 10] = [
    "scale",
    "device",
    "Qwen3 (layers × hidden,\nheads/kv × head_dim, mlp)",
    "Qwen3\nparams",
    "OPT (layers × hidden,\nheads, ffn, LN)",
    "OPT\nparams",
    "seq",
    "train/dev/test",
    "first-order\nsteps × batch, lr",
    "zeroth-order\nsteps × batch, lr, ε",
];

/// The widest `qsched scales` table: one that fits a 120-column terminal.
pub const SCALES_TABLE_WIDTH: u16 = 120;

/// One row per preset, in [`SCALE_HEADERS`] order.
fn scale_rows() -> Vec<Vec<String>> {
    shared::scale::all_presets()
        .into_iter()
        .map(|p| {
            let q = &p.qwen3;
            let o = &p.opt;
            let count = |n: u32| if n == 0 { "all".to_owned() } else { n.to_string() };
            vec![
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
                format!(
                    "{} × {}, {:e}",
                    p.first_order.max_steps, p.first_order.batch_size, p.first_order.learning_rate
                ),
                format!(
                    "{} × {}, {:e}, {:e}",
                    p.zeroth_order.max_steps,
                    p.zeroth_order.batch_size,
                    p.zeroth_order.learning_rate,
                    p.zeroth_order.zo_eps
                ),
            ]
        })
        .collect()
}

/// `qsched scales`: every preset with its shapes and training settings.
///
/// The table is two tables (shapes, then data and training) because one row per preset
/// with every column is about 230 columns wide; each fits [`SCALES_TABLE_WIDTH`]. CSV and
/// Markdown keep the single wide row (the README's table), JSON has every preset field.
pub fn scales(format: Format) -> Result<String> {
    let rows = scale_rows();
    match format {
        Format::Json => {
            let presets: Vec<serde_json::Value> = shared::scale::all_presets()
                .into_iter()
                .map(|p| {
                    json!({
                        "qwen3_parameters": p.qwen3.classifier_parameters(2),
                        "opt_parameters": p.opt.parameters(),
                        "preset": p,
                    })
                })
                .collect();
            Ok(format!("{}\n", serde_json::to_string_pretty(&presets)?))
        }
        Format::Csv => {
            let mut out = render::csv_line(&SCALE_HEADERS);
            for r in &rows {
                out.push_str(&render::csv_line(r));
            }
            Ok(out)
        }
        Format::Markdown => Ok(render::markdown_table(&SCALE_HEADERS, &rows)),
        Format::Table => {
            // Columns of each part; `scale` repeats so each table reads on its own.
            let parts: [&[usize]; 2] = [&[0, 1, 2, 3, 4, 5], &[0, 6, 7, 8, 9]];
            let tables: Vec<String> = parts
                .iter()
                .map(|cols| {
                    let mut t = Table::new();
                    t.load_preset(presets::UTF8_FULL_CONDENSED)
                        .set_content_arrangement(comfy_table::ContentArrangement::Dynamic)
                        .set_width(SCALES_TABLE_WIDTH)
                        .set_header(cols.iter().map(|&c| SCALE_TABLE_HEADERS[c]).collect::<Vec<_>>());
                    for r in &rows {
                        t.add_row(cols.iter().map(|&c| r[c].clone()).collect::<Vec<_>>());
                    }
                    format!("{t}\n")
                })
                .collect();
            Ok(tables.join("\n"))
        }
    }
}

/// The results of `runs` pooled for one summary per model × task, as `compare` and `plot`
/// read them, with the runs described for messages ("run r1", "runs r1, r2"). Every run
/// must exist and at least one must have results; a `metric` must be one the results
/// report; runs in which the same model × task ran with different settings are refused
/// (`verb` names the command in that message) rather than averaged together.
pub async fn pooled_results(
    store: &dyn Store,
    runs: &[String],
    metric: Option<&str>,
    verb: &str,
) -> Result<(Vec<ShardResult>, String)> {
    let mut all = Vec::new();
    for r in runs {
        get_run(store, r).await?;
        all.extend(store.results(r).await?);
    }
    let described = if runs.len() == 1 { format!("run {}", runs[0]) } else { format!("runs {}", runs.join(", ")) };
    if all.is_empty() {
        bail!("no results yet in {}", runs.join(", "));
    }
    if let Some(metric) = metric {
        check_metric(&all, metric, &described)?;
    }
    let conflicts = render::settings_conflicts(&all);
    if !conflicts.is_empty() {
        bail!("{}", conflicts_message(&conflicts, verb));
    }
    Ok((all, described))
}

/// `qsched compare`: each model against a baseline model, per task, within the runs given.
pub async fn compare(
    store: &dyn Store,
    runs: &[String],
    baseline: Option<ModelId>,
    metric: Option<&str>,
    format: Format,
) -> Result<String> {
    let (all, described) = pooled_results(store, runs, metric, "compare").await?;
    let (baseline, rows) = comparison(&all, baseline, metric, &described)?;
    if format == Format::Json {
        return Ok(serde_json::to_string_pretty(&rows)?);
    }
    render_comparison(baseline, &rows, format)
}

/// The rows of `compare` (one JSON object per model × task, as `--format json` prints
/// them) for pooled `all` (described as `described` in errors), and the baseline model
/// they are against: the one asked for, which must have a succeeded result, else the
/// first model with one.
pub fn comparison(
    all: &[ShardResult],
    baseline: Option<ModelId>,
    metric: Option<&str>,
    described: &str,
) -> Result<(ModelId, Vec<serde_json::Value>)> {
    let with_results = render::models_with_results(all);
    let baseline = match baseline {
        Some(b) if with_results.contains(&b) => Some(b),
        Some(b) => bail!(
            "baseline model '{b}' has no succeeded result in {described}; models with results: {}",
            if with_results.is_empty() {
                "none".to_owned()
            } else {
                with_results.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", ")
            }
        ),
        // The first model that has something to compare against.
        None => with_results.first().copied(),
    };
    let aggs = render::aggregate_by(all, metric);
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
    Ok((baseline, rows))
}

/// `compare`'s rows as a table, CSV or Markdown.
fn render_comparison(baseline: ModelId, rows: &[serde_json::Value], format: Format) -> Result<String> {
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
            for r in rows {
                out.push_str(&format!("{}\n", fmt_row(r).join(",")));
            }
            Ok(out)
        }
        Format::Markdown => {
            let mut out = format!("| {} |\n|{}\n", headers.join(" | "), "---|".repeat(headers.len()));
            for r in rows {
                out.push_str(&format!("| {} |\n", fmt_row(r).join(" | ")));
            }
            Ok(out)
        }
        _ => {
            let mut t = Table::new();
            t.load_preset(presets::UTF8_FULL_CONDENSED).set_header(headers.to_vec());
            for r in rows {
                t.add_row(fmt_row(r));
            }
            Ok(format!("{t}\n"))
        }
    }
}

/// Why `compare` or `plot` (the `verb`) refuses to pool results: per model × task, what
/// differs between which runs.
fn conflicts_message(conflicts: &[render::SettingsConflict], verb: &str) -> String {
    const SHOWN: usize = 4;
    let mut out = format!(
        "refusing to {verb}: results of the same model × task ran with different settings, and one mean \
         over them would mix those settings:"
    );
    for c in conflicts {
        let diffs: Vec<String> = c
            .differences
            .iter()
            .take(SHOWN)
            .map(|d| {
                format!("{} = {} in run {} but {} in run {}", d.path, d.first, c.first_run, d.second, c.second_run)
            })
            .collect();
        let more = c.differences.len().saturating_sub(SHOWN);
        out.push_str(&format!("\n  {} × {}: {}", c.model, c.task, diffs.join("; ")));
        if more > 0 {
            out.push_str(&format!(" (and {more} more setting(s))"));
        }
    }
    out.push_str(&format!("\n{verb} runs that share these settings, or read each run with `qsched results RUN`"));
    out
}

/// Polls the store until the run has finished, calling `on_tick` with (finished, total);
/// returns the final counts by state.
pub async fn wait_for_run(
    store: &dyn Store,
    broker: Option<&dyn BrokerAdmin>,
    run: &str,
    poll: Duration,
    mut on_tick: impl FnMut(usize, usize, &BTreeMap<ShardState, usize>),
) -> Result<BTreeMap<ShardState, usize>> {
    let record = get_run(store, run).await?;
    // Whether the last pass over the dead-letter notices failed: a broker outage is
    // reported once when it starts and once when it ends, not at every poll.
    let mut notices_failing = false;
    loop {
        // A shard the broker gave up on ends the wait too (its notice marks it dead),
        // even with no agent left to take the notice. A broker blip only delays that.
        if let Some(b) = broker {
            match shared::dead_letters::record_notices(b, store, "qsched").await {
                Err(e) if !notices_failing => {
                    notices_failing = true;
                    tracing::warn!(error = %e, "cannot read the dead-letter notices; retrying at every poll");
                }
                Err(e) => tracing::debug!(error = %e, "dead-letter notices still unreadable"),
                Ok(_) if notices_failing => {
                    notices_failing = false;
                    tracing::warn!("dead-letter notices readable again");
                }
                Ok(_) => {}
            }
        }
        let states = store.states(run).await?;
        let counts = state_counts(&record, &states);
        let done = counts.iter().filter(|(s, _)| s.is_terminal()).map(|(_, n)| n).sum::<usize>();
        on_tick(done, record.shards.len(), &counts);
        if run_finished(&record, &states) {
            return Ok(counts);
        }
        tokio::time::sleep(poll).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::broker::MemoryBroker;
    use shared::shard::ShardMeasurements;
    use shared::store::MemoryStore;

    #[test]
    fn lists_and_seeds() {
        assert_eq!(split_list(" a, b,,c "), vec!["a", "b", "c"]);
        assert_eq!(parse_seeds("1,2, 3").unwrap(), vec![1, 2, 3]);
        assert!(parse_seeds("1,x").unwrap_err().to_string().contains("invalid seed 'x'"));
    }

    #[test]
    fn scales_in_every_format() {
        let t = scales(Format::Table).unwrap();
        for name in ["tiny", "demo", "small", "medium", "large"] {
            assert!(t.contains(name), "{t}");
        }
        // No cell wraps.
        for cell in ["28 × 1024, 16/8 × 128, 3072", "24 × 1024, 16, 4096, post, proj 512", "20000 × 16, 1e-6, 1e-3"]
        {
            assert!(t.contains(cell), "{cell}: {t}");
        }
        for line in t.lines() {
            let width = line.chars().count();
            assert!(width <= SCALES_TABLE_WIDTH as usize, "{width} columns: {line}\n{t}");
        }

        let json: serde_json::Value = serde_json::from_str(&scales(Format::Json).unwrap()).unwrap();
        let presets = json.as_array().unwrap();
        assert_eq!(presets.len(), 5);
        assert_eq!(presets[0]["preset"]["name"], "tiny");
        assert_eq!(presets[4]["preset"]["qwen3"]["num_hidden_layers"], 28);
        assert!(presets[4]["qwen3_parameters"].as_u64().unwrap() > 500_000_000);

        let csv = scales(Format::Csv).unwrap();
        assert_eq!(csv.lines().count(), 6, "{csv}");
        assert!(
            csv.starts_with("scale,device,\"Qwen3 (layers × hidden, heads/kv × head_dim, mlp)\",Qwen3 params,"),
            "{csv}"
        );
        assert!(csv.contains("\ntiny,cpu,\"2 × 64, 4/2 × 16, 192\",9.8M,"), "{csv}");

        // The Markdown rows are the README's table (which adds notes to some cells).
        let md = scales(Format::Markdown).unwrap();
        let readme = include_str!("../../README.md");
        for row in md.lines().skip(2) {
            let cells: Vec<&str> = row.trim_matches('|').split(" | ").map(str::trim).collect();
            let line = readme
                .lines()
                .find(|l| l.starts_with(&format!("| {} |", cells[0])))
                .unwrap_or_else(|| panic!("README has no row for scale {}", cells[0]));
            for cell in cells {
                assert!(line.contains(cell), "README row lacks {cell:?}:\n{line}");
            }
        }
    }

    #[test]
    fn run_outcomes_and_their_exit_codes() {
        use ShardState::*;
        let counts = |pairs: &[(ShardState, usize)]| pairs.iter().copied().collect::<BTreeMap<_, _>>();
        let ok = counts(&[(Succeeded, 3)]);
        assert_eq!(RunOutcome::of(&ok), RunOutcome::Succeeded);
        assert_eq!(RunOutcome::of(&ok).exit_code(), 0);
        assert_eq!(RunOutcome::Succeeded.summary("r", &ok), None);
        let failed = counts(&[(Succeeded, 2), (Failed, 1)]);
        assert_eq!(RunOutcome::of(&failed).exit_code(), 3);
        assert_eq!(
            RunOutcome::of(&failed).summary("r1", &failed).unwrap(),
            "run r1: 1 of 3 shard(s) did not succeed (1 failed); exit status 3"
        );
        assert_eq!(RunOutcome::of(&counts(&[(Failed, 1), (Cancelled, 2)])).exit_code(), 4);
        let all = counts(&[(Failed, 1), (Cancelled, 1), (Dead, 1), (Succeeded, 1)]);
        assert_eq!(RunOutcome::of(&all), RunOutcome::DeadLettered);
        assert_eq!(
            RunOutcome::of(&all).summary("r", &all).unwrap(),
            "run r: 3 of 4 shard(s) did not succeed (1 failed, 1 cancelled, 1 dead-lettered); exit status 5"
        );
        assert_eq!(run_result("r", &ok), Ok(()));
        let ended = run_result("r", &all).unwrap_err();
        assert_eq!((ended.outcome, ended.to_string().ends_with("exit status 5")), (RunOutcome::DeadLettered, true));
        // Every code is documented in `qsched submit --help`.
        for outcome in [RunOutcome::Succeeded, RunOutcome::SomeFailed, RunOutcome::Cancelled, RunOutcome::DeadLettered]
        {
            assert!(SUBMIT_EXIT_STATUS_HELP.contains(&format!("\n  {}  ", outcome.exit_code())), "{outcome:?}");
        }
    }

    fn beat(agent: &str, device: &str) -> AgentHeartbeat {
        let now = unix_now();
        AgentHeartbeat {
            agent: agent.into(),
            host: "host-a".into(),
            device: device.into(),
            gpu_name: (device != "cpu").then(|| "NVIDIA H200, 141 GB".to_owned()),
            current: (device == "cpu").then(|| ("r1".to_owned(), "s1".to_owned())),
            step: Some(7),
            total_steps: Some(40),
            progress_at: Some(now - 3.0),
            started_at: now - 100.0,
            at: now - 1.0,
            shards_done: 2,
            worker_memory_bytes: None,
        }
    }

    #[tokio::test]
    async fn a_device_class_without_a_live_agent_is_a_warning_or_with_require_an_error() {
        let store = MemoryStore::new();
        let warning = check_agents(&store, DeviceClass::Cpu, "p", false).await.unwrap().unwrap();
        assert!(warning.starts_with("warning: no live cpu agent under prefix 'p'"), "{warning}");
        let err = check_agents(&store, DeviceClass::Cpu, "p", true).await.unwrap_err().to_string();
        assert!(err.contains("no live cpu agent") && err.contains("nothing was submitted"), "{err}");
        store.heartbeat(&beat("h:cuda:0:1", "cuda:0"), Duration::from_secs(60)).await.unwrap();
        // A GPU agent does not serve the cpu queue.
        let err = check_agents(&store, DeviceClass::Cpu, "p", true).await.unwrap_err().to_string();
        assert!(err.contains("(1 live agent(s) in all)"), "{err}");
        assert_eq!(check_agents(&store, DeviceClass::Cuda, "p", true).await.unwrap(), None);
        store.heartbeat(&beat("h:cpu:2", "cpu"), Duration::from_secs(60)).await.unwrap();
        assert_eq!(check_agents(&store, DeviceClass::Cpu, "p", true).await.unwrap(), None);
    }

    #[tokio::test]
    async fn agents_in_every_format() {
        let store = MemoryStore::new();
        assert_eq!(agents(&store, Format::Table).await.unwrap(), "no live agents\n");
        assert_eq!(agents(&store, Format::Csv).await.unwrap().lines().count(), 1);
        assert_eq!(agents(&store, Format::Json).await.unwrap().trim(), "[]");
        store.heartbeat(&beat("h:cpu:2", "cpu"), Duration::from_secs(60)).await.unwrap();
        store.heartbeat(&beat("h:cuda:0:1", "cuda:0"), Duration::from_secs(60)).await.unwrap();

        let csv = agents(&store, Format::Csv).await.unwrap();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 3, "{csv}");
        assert!(lines[0].starts_with("agent,host,device,gpu_name,run,shard,step,total_steps,"), "{csv}");
        assert!(lines[1].starts_with("h:cpu:2,host-a,cpu,,r1,s1,7,40,3,1,2,100"), "{csv}");
        // The GPU name has a comma: quoted, so the row keeps its 12 columns.
        assert!(lines[2].starts_with("h:cuda:0:1,host-a,cuda:0,\"NVIDIA H200, 141 GB\",,,7,40,"), "{csv}");
        assert!(!csv.contains('│') && !csv.contains('—'), "{csv}");

        let md = agents(&store, Format::Markdown).await.unwrap();
        assert!(md.starts_with("| agent | host | device | gpu | current shard |"), "{md}");
        assert!(md.contains("| h:cpu:2 | host-a | cpu | — | r1/s1 | 7/40 | 3 s ago |"), "{md}");
        assert_eq!(md.lines().count(), 4, "{md}");

        let json: serde_json::Value = serde_json::from_str(&agents(&store, Format::Json).await.unwrap()).unwrap();
        assert_eq!(json[0]["device"], "cpu");
        assert_eq!(json[1]["gpu_name"], "NVIDIA H200, 141 GB");

        let table = agents(&store, Format::Table).await.unwrap();
        assert!(table.contains("r1/s1") && table.contains('│'), "{table}");
    }

    /// A run of qwen3 × SST-2, seeds 1 and 2, at `max_steps`, with one result per shard
    /// recorded as an agent records it (the shard under `config.shard`).
    async fn run_with_results(store: &MemoryStore, run: &str, max_steps: u32, accs: &[f64]) {
        let flags = SpecFlags {
            models: Some("qwen3".into()),
            seeds: Some("1,2".into()),
            set: vec![format!("first_order.max_steps={max_steps}")],
            ..Default::default()
        };
        let spec = resolve_spec(&flags).unwrap();
        let broker = MemoryBroker::default();
        let record = scheduler::submit(&spec, &shared::RunId::new(run).unwrap(), &broker, store).await.unwrap();
        for (shard, acc) in scheduler::shards_of(&record).unwrap().iter().zip(accs) {
            let mut r = crate::render::tests::result(shard.model, shard.seed, Some(*acc));
            r.run = run.into();
            r.shard = shard.shard_id.to_string();
            r.task = shard.task;
            r.measured.config = json!({ "shard": shard, "evaluations": [] });
            assert!(store.put_result(&r).await.unwrap());
        }
    }

    #[tokio::test]
    async fn an_unknown_metric_or_baseline_is_an_error_listing_the_valid_names() {
        let store = MemoryStore::new();
        run_with_results(&store, "r1", 10, &[0.5, 0.6]).await;
        let err = results(&store, "r1", Format::Table, Some("acuracy")).await.unwrap_err().to_string();
        assert_eq!(err, "no result of run r1 has a metric named 'acuracy'; the results have: accuracy");
        let (text, _, _) = results(&store, "r1", Format::Table, Some("accuracy")).await.unwrap();
        assert!(text.contains("0.5500 ± 0.0707"), "{text}");

        let runs = vec!["r1".to_owned()];
        let err = compare(&store, &runs, None, Some("f1"), Format::Table).await.unwrap_err().to_string();
        assert!(err.contains("no result of run r1 has a metric named 'f1'; the results have: accuracy"), "{err}");
        let err = compare(&store, &runs, Some(ModelId::FtOpt), None, Format::Table).await.unwrap_err().to_string();
        assert_eq!(err, "baseline model 'ft-opt' has no succeeded result in run r1; models with results: qwen3");
        let out = compare(&store, &runs, Some(ModelId::Qwen3), None, Format::Csv).await.unwrap();
        assert!(out.starts_with("task,model,metric,mean ± std,n,Δ vs qwen3,"), "{out}");
    }

    #[tokio::test]
    async fn compare_refuses_to_pool_runs_whose_settings_differ() {
        let store = MemoryStore::new();
        run_with_results(&store, "r-short", 10, &[0.5, 0.6]).await;
        run_with_results(&store, "r-long", 400, &[0.8, 0.9]).await;
        run_with_results(&store, "r-long-again", 400, &[0.85, 0.95]).await;
        let runs = vec!["r-short".to_owned(), "r-long".to_owned()];
        for format in [Format::Table, Format::Json, Format::Csv, Format::Markdown] {
            let err = compare(&store, &runs, None, None, format).await.unwrap_err().to_string();
            assert!(
                err.starts_with("refusing to compare: results of the same model × task ran with different"),
                "{err}"
            );
            assert!(err.contains("qwen3 × sst2: train.max_steps = 400 in run r-long but 10 in run r-short"), "{err}");
        }
        // The same settings in two runs pool: n = 4.
        let same = vec!["r-long".to_owned(), "r-long-again".to_owned()];
        let json: serde_json::Value =
            serde_json::from_str(&compare(&store, &same, None, None, Format::Json).await.unwrap()).unwrap();
        assert_eq!(json[0]["n"], 4);
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

        // An attempt that failed and was retried is shown with its reason (first line).
        let shard = &record.shards[0].shard;
        let failed = AttemptError {
            attempt: 1,
            agent: "host:cpu:7".into(),
            error: "worker killed by SIGKILL\nbacktrace…".into(),
            at: 0.0,
        };
        store.record_attempt_error("r1", shard, &failed).await.unwrap();
        let text = status(&store, None, "r1").await.unwrap();
        assert!(text.contains("retried shards (1):"), "{text}");
        assert!(text.contains(&format!("{shard} (qwen3 × sst2, seed ")), "{text}");
        assert!(text.contains("attempt 1 failed on host:cpu:7: worker killed by SIGKILL\n"), "{text}");
        assert!(!text.contains("backtrace"), "{text}");
    }
    /// A running shard shows its step before the first train point (from its agent's
    /// heartbeat), the latest loss the stream knows, a rate and an ETA; the run an ETA
    /// with its basis; `watch_stop` names a cancellation and then the end.
    #[tokio::test]
    async fn live_progress_of_running_shards_and_when_a_watch_stops() {
        let store = MemoryStore::new();
        let broker = MemoryBroker::default();
        let flags = SpecFlags { models: Some("qwen3".into()), seeds: Some("1,2,3".into()), ..Default::default() };
        let spec = resolve_spec(&flags).unwrap();
        let record = scheduler::submit(&spec, &shared::RunId::new("r2").unwrap(), &broker, &store).await.unwrap();
        let (a, b) = (&record.shards[0].shard, &record.shards[1].shard);
        store.set_state("r2", a, ShardState::Running).await.unwrap();
        let mut beat = beat("host:cpu:1", "cpu");
        beat.current = Some(("r2".into(), a.clone()));
        beat.step = Some(0);
        beat.total_steps = Some(100);
        store.heartbeat(&beat, Duration::from_secs(60)).await.unwrap();
        let text = status(&store, None, "r2").await.unwrap();
        assert!(text.contains("┆ 0/100 "), "{text}");
        assert!(text.contains("host:cpu:1"), "{text}");
        assert!(text.contains("eta: — (a running shard has no rate yet and no shard has finished)"), "{text}");

        // Train points at 2 steps/s; the last one has no finite loss, the one before does.
        let point = |step: u64, at: f64, loss: Option<f64>| shared::shard::MetricPoint {
            step,
            kind: "train".into(),
            values: loss.map(|l| BTreeMap::from([("loss".to_owned(), l)])).unwrap_or_default(),
            at,
        };
        let t = unix_now();
        store.append_metrics("r2", a, &[point(20, t - 20.0, Some(0.75)), point(60, t, None)]).await.unwrap();
        let progress =
            shared::store::Progress { step: 60, total_steps: 100, agent: "host:cpu:1".into(), loss: None, at: t };
        store.set_progress("r2", a, &progress).await.unwrap();
        let mut result = run_result_of(&record, b, 50.0);
        result.status = ShardState::Succeeded;
        store.put_result(&result).await.unwrap();
        let text = status(&store, None, "r2").await.unwrap();
        assert!(text.contains("┆ 60/100 ") && text.contains("┆ 0.7500 "), "{text}");
        assert!(text.contains("┆ 2.00 ") && text.contains("┆ 20s "), "{text}");
        // 1 queued × 50 s + 20 s running, over the one agent.
        assert!(
            text.contains(
                "eta: ~1m 10s (based on 1 queued × 50s mean wall time of 1 finished shard(s) + \
                 1 running shard(s) at their current rate, over 1 agent(s))"
            ),
            "{text}"
        );
        assert_eq!(watch_stop(&store, &record).await.unwrap(), None);

        store.cancel("r2").await.unwrap();
        let why = watch_stop(&store, &record).await.unwrap().unwrap();
        assert!(why.starts_with("run r2 was cancelled (`qsched cancel`)"), "{why}");
        assert!(status(&store, None, "r2").await.unwrap().contains("eta: — (the run is cancelled)"));
        for s in &record.shards {
            store.force_state("r2", &s.shard, ShardState::Cancelled).await.unwrap();
        }
        let why = watch_stop(&store, &record).await.unwrap().unwrap();
        assert_eq!(why, "run r2 finished (cancelled 3)");
    }

    /// A result of `shard` of `record` with `wall_seconds`.
    fn run_result_of(record: &RunRecord, shard: &str, wall_seconds: f64) -> ShardResult {
        let s = record.shards.iter().find(|s| s.shard == shard).unwrap();
        ShardResult {
            run: record.run_id.to_string(),
            shard: shard.to_owned(),
            model: s.model,
            task: s.task,
            seed: s.seed,
            scale: "tiny".into(),
            host: "host".into(),
            agent: "host:cpu:1".into(),
            status: ShardState::Succeeded,
            error: None,
            measured: ShardMeasurements {
                device: "cpu".into(),
                gpu_name: None,
                metrics: BTreeMap::new(),
                dev_metrics: BTreeMap::new(),
                primary_metric: None,
                best_step: None,
                steps: 100,
                peak_memory_bytes: 0,
                peak_memory_kind: "host_rss_peak".into(),
                wall_seconds,
                train_seconds: wall_seconds,
                steps_per_second: 1.0,
                tokens_per_second: 1.0,
                skipped_steps: 0,
                precision: "fp32".into(),
                threads: 1,
                parameters: 1,
                split_sizes: BTreeMap::new(),
                data_checksums: BTreeMap::new(),
                config: serde_json::Value::Null,
                resumed_from_step: None,
            },
            attempt: 1,
            started_at: 0.0,
            finished_at: 0.0,
            traceparent: None,
        }
    }
}
