//! Embedded mode (`qsched submit --local`): the scheduler and one agent per local device
//! in this process, over the in-process broker and the embedded on-disk store
//! ([`LocalStore`]), which keeps the run: `qsched results|status|compare|plot RUN --local`
//! read it back afterwards.
//!
//! It runs exactly the code a fleet runs — `scheduler::submit`, `agent::supervisor::run`
//! with a worker process per shard — only the `Broker` and `Store` implementations
//! differ. It is chosen explicitly with `--local`; an unreachable broker without it is an
//! error, never a reason to switch modes.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::sync::watch;

use agent::supervisor::{self, AgentConfig, WorkerStderr};
use shared::broker::MemoryBroker;
use shared::local_store::LocalStore;
use shared::shard::{ShardResult, ShardState};
use shared::spec::BenchmarkSpec;
use shared::store::Store;
use shared::{DeviceClass, DeviceSpec};

/// How the local agents run.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Devices to start one agent on each (`cpu` may repeat).
    pub devices: Vec<DeviceSpec>,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Checkpoint directory.
    pub checkpoint_dir: Option<PathBuf>,
    /// Intra-op threads per worker; None = cores divided among the CPU agents.
    pub threads: Option<u32>,
    /// Program and arguments that start a worker.
    pub worker_command: Vec<OsString>,
    /// The embedded store file the run is recorded in (created if missing).
    pub store: PathBuf,
    /// Where the workers' log lines and this mode's own warnings go (`qsched` prints
    /// them above its progress bar).
    pub log: WorkerStderr,
}

/// One line to `log`.
fn say(log: &WorkerStderr, line: &str) {
    match log {
        WorkerStderr::Lines(sink) => sink(line),
        WorkerStderr::Inherit => eprintln!("{line}"),
    }
}

/// What a local run left: its id, its results, and its shards counted by final state
/// (a dead-lettered shard has a state but no result).
pub type LocalRun = (shared::RunId, Vec<ShardResult>, BTreeMap<ShardState, usize>);

/// Runs `spec` to completion locally, recording it in the store file of `opts`, and
/// returns the run id, its results and its counts.
pub async fn run_local(
    spec: &BenchmarkSpec,
    opts: LocalOptions,
    mut on_progress: impl FnMut(usize, usize, &BTreeMap<ShardState, usize>),
) -> Result<LocalRun> {
    if opts.devices.is_empty() {
        bail!("--devices is empty");
    }
    if !opts.devices.iter().any(|d| d.class() == spec.device_class) {
        let listed: Vec<String> = opts.devices.iter().map(|d| d.to_string()).collect();
        bail!(
            "the run's shards need a {} device but --devices lists only {}; add one (e.g. --devices {}) or pass --device-class",
            spec.device_class,
            listed.join(","),
            if spec.device_class == DeviceClass::Cuda { "cuda:0" } else { "cpu" }
        );
    }
    // Pin every device before anything is queued: a missing GPU fails here.
    let mut gpu_names = Vec::new();
    for d in &opts.devices {
        let pinned = qsched_models::device::pin(*d).with_context(|| format!("cannot use device {d}"))?;
        gpu_names.push(pinned.gpu_name.clone());
    }
    let cpu_agents = opts.devices.iter().filter(|d| **d == DeviceSpec::Cpu).count().max(1) as u32;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let threads = opts.threads.unwrap_or((cores / cpu_agents).max(1));

    // Opened (and locked) once the devices are known to work and before anything is
    // queued: a file another `qsched` holds fails here, with nothing recorded.
    let store: Arc<dyn Store> = Arc::new(LocalStore::create(&opts.store)?);
    let broker = Arc::new(MemoryBroker::default());
    let run_id = scheduler::new_run_id();
    scheduler::submit(spec, &run_id, broker.as_ref(), store.as_ref()).await?;
    say(
        &opts.log,
        &format!(
            "run {run_id}: {} shard(s) on {} local agent(s)",
            spec.models.len() * spec.tasks.len() * spec.seeds.len(),
            opts.devices.len()
        ),
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut agents = Vec::new();
    for (i, (device, gpu_name)) in opts.devices.iter().zip(gpu_names).enumerate() {
        let mut cfg = AgentConfig::new(*device, opts.data_dir.clone())?;
        cfg.agent_id = format!("{}:local{i}", cfg.agent_id);
        cfg.gpu_name = gpu_name;
        cfg.checkpoint_dir = opts.checkpoint_dir.clone();
        // The user runs these agents for their own spec: its model directories are allowed.
        cfg.model_roots = spec.model_dirs();
        cfg.threads = threads;
        cfg.worker_command = opts.worker_command.clone();
        cfg.worker_stderr = opts.log.clone();
        let mut rx = stop_rx.clone();
        let shutdown = async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        agents.push(tokio::spawn(supervisor::run(cfg, broker.clone(), broker.clone(), store.clone(), shutdown)));
    }
    let record = crate::commands::get_run(store.as_ref(), &run_id).await?;
    let waited: Result<()> = loop {
        let states = store.states(&run_id).await?;
        let counts = crate::commands::state_counts(&record, &states);
        let done = counts.iter().filter(|(s, _)| s.is_terminal()).map(|(_, n)| n).sum::<usize>();
        on_progress(done, record.shards.len(), &counts);
        if crate::commands::run_finished(&record, &states) {
            break Ok(());
        }
        // Agents only stop on their own after an error; then nothing would ever finish.
        if agents.iter().all(|a| a.is_finished()) {
            break Err(anyhow::anyhow!("every local agent stopped before the run finished"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let _ = stop_tx.send(true);
    for a in agents {
        match a.await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => say(&opts.log, &format!("warning: a local agent stopped with an error: {e:#}")),
            Err(e) => say(&opts.log, &format!("warning: a local agent panicked: {e}")),
        }
    }
    waited?;
    let results = store.results(&run_id).await?;
    let counts = crate::commands::state_counts(&record, &store.states(&run_id).await?);
    Ok((run_id, results, counts))
}
