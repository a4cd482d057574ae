//! `qagent`: pull shards for one device from RabbitMQ, train them, report to Redis.
//!
//! ```text
//! qagent --device cpu|cuda:N [--amqp URL] [--redis URL] [--data-dir DIR] [--checkpoint-dir DIR]
//!        [--model-root DIR]… [--metrics-listen ADDR]
//! qagent inspect --model-dir DIR [--tokens FILE] [--device D]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use agent::supervisor::{self, AgentConfig};
use shared::DeviceSpec;
use shared::endpoints::Endpoints;

#[derive(Parser, Debug)]
#[command(name = "qagent", version, about = "qsched agent: trains benchmark shards on one device")]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Device to pin to: `cpu` or `cuda:N`. The agent consumes only shards of its class.
    #[arg(long, required = true)]
    device: Option<DeviceSpec>,
    #[command(flatten)]
    endpoints: Endpoints,
    /// Data directory holding `glue/` and `tokenizers/`.
    #[arg(long, env = "QSCHED_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Where shard checkpoints are written (shared storage on a fleet); resume needs it.
    #[arg(long, env = "QSCHED_CHECKPOINT_DIR")]
    checkpoint_dir: Option<PathBuf>,
    /// A directory a shard's pretrained weights may be read from (repeatable). A shard
    /// naming a model directory outside every root fails with the reason.
    #[arg(long = "model-root", value_name = "DIR")]
    model_roots: Vec<PathBuf>,
    /// Intra-op CPU threads per shard (0 = all cores).
    #[arg(long, default_value_t = 0)]
    threads: u32,
    /// Prefix of queue names and Redis keys (isolates fleets or tests).
    #[arg(long, env = "QSCHED_PREFIX", default_value = "qsched")]
    prefix: String,
    /// Deliveries before a failing shard is given up (must match the queue's limit).
    #[arg(long, default_value_t = shared::broker::DEFAULT_DELIVERY_LIMIT)]
    delivery_limit: u32,
    /// Per-consumer ack timeout (RabbitMQ ≥ 3.12), e.g. the longest shard plus a margin.
    #[arg(long, value_parser = parse_hours, default_value = "24")]
    consumer_timeout_hours: Duration,
    /// Seconds without progress (no training step or evaluation batch) after which a
    /// worker is taken as hung, killed, and its shard requeued.
    #[arg(long, default_value_t = agent::supervisor::DEFAULT_STALL_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    stall_timeout_secs: u64,
    /// Exit after this many shards.
    #[arg(long)]
    max_shards: Option<u64>,
    /// Serve Prometheus metrics at http://ADDR/metrics, e.g. `127.0.0.1:9464` (an IP and
    /// a port; `0.0.0.0:9464` for scrapes from other hosts). Off unless given.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
}

fn parse_hours(s: &str) -> Result<Duration, String> {
    let h: f64 = s.parse().map_err(|_| format!("'{s}' is not a number of hours"))?;
    if !(h > 0.0 && h.is_finite()) {
        return Err("must be positive".into());
    }
    Ok(Duration::from_secs_f64(h * 3600.0))
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check a Hugging Face checkpoint: resolved config, parameters, and logits for tokens.
    Inspect {
        /// Checkpoint directory (config.json + safetensors).
        #[arg(long)]
        model_dir: PathBuf,
        /// JSON file `{"input_ids": [[..]], "attention_mask": [[..]]}`; prints `{"logits": ..}`.
        #[arg(long)]
        tokens: Option<PathBuf>,
        /// Device to run on.
        #[arg(long, default_value = "cpu")]
        device: DeviceSpec,
    },
    /// Run one shard from stdin (started by the agent; not for direct use).
    #[command(hide = true)]
    Worker,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Worker) => {
            let code = agent::worker::main_stdio();
            return ExitCode::from(code as u8);
        }
        Some(Command::Inspect { model_dir, tokens, device }) => {
            return report(inspect(&model_dir, tokens.as_deref(), device));
        }
        None => {}
    }
    let _telemetry = shared::telemetry::init("qagent", "info");
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return report(Err(anyhow::Error::new(e).context("cannot start the async runtime"))),
    };
    report(runtime.block_on(run(cli.run)))
}

fn report(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qagent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn inspect(model_dir: &std::path::Path, tokens: Option<&std::path::Path>, device: DeviceSpec) -> anyhow::Result<()> {
    let pinned = qsched_models::device::pin(device)?;
    let mut out = std::io::stdout().lock();
    qsched_models::inspect::run(model_dir, tokens, pinned.device, &mut out)?;
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let Some(device) = args.device else { bail!("--device is required (cpu or cuda:N)") };
    // Pin first: `--device cuda:0` on a host without CUDA fails here, before any shard
    // is taken from the queue.
    let pinned = qsched_models::device::pin(device).with_context(|| format!("cannot use device {device}"))?;
    let data_dir = shared::spec::data_dir_from(args.data_dir)
        .context("no data directory: pass --data-dir or set QSCHED_DATA_DIR")?;
    for sub in ["glue", "tokenizers"] {
        if !data_dir.join(sub).is_dir() {
            bail!("data directory {} has no {sub}/ folder", data_dir.display());
        }
    }
    if let Some(dir) = &args.checkpoint_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create checkpoint dir {}", dir.display()))?;
    }
    let mut cfg = AgentConfig::new(device, data_dir)?;
    // Bound before connecting anywhere: a taken port is an error at startup, not after a
    // shard was taken.
    let metrics_server = match args.metrics_listen {
        Some(address) => {
            Some(agent::exporter::MetricsServer::bind(address, cfg.metrics.clone()).await.context("--metrics-listen")?)
        }
        None => None,
    };
    let mut amqp = args.endpoints.amqp_config(&args.prefix)?;
    amqp.delivery_limit = args.delivery_limit;
    amqp.consumer_timeout = Some(args.consumer_timeout_hours);
    let broker = shared::amqp::AmqpBroker::connect(amqp).await?;
    let store = shared::redis_store::RedisStore::connect_with(args.endpoints.redis_config(&args.prefix)?).await?;
    cfg.gpu_name = pinned.gpu_name.clone();
    cfg.checkpoint_dir = args.checkpoint_dir;
    for root in &args.model_roots {
        if !root.is_dir() {
            bail!("--model-root {} is not a directory", root.display());
        }
    }
    cfg.model_roots = args.model_roots;
    cfg.threads = args.threads;
    cfg.delivery_limit = args.delivery_limit;
    cfg.max_shards = args.max_shards;
    cfg.stall_timeout = Duration::from_secs(args.stall_timeout_secs);
    tracing::info!(device = %pinned.describe(), agent = %cfg.agent_id, "qagent starting");
    // The endpoint lives as long as the agent: it stops when `supervisor::run` returns,
    // whether on a signal, at --max-shards or on an error.
    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics_task = metrics_server.map(|server| tokio::spawn(server.run(stopped(metrics_stopped))));
    let broker = Arc::new(broker);
    let stats = supervisor::run(cfg, broker.clone(), broker, Arc::new(store), shared::shutdown::signal()).await;
    let _ = stop_metrics.send(());
    if let Some(task) = metrics_task {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the metrics endpoint failed"),
            Err(e) => tracing::warn!(error = %e, "the metrics endpoint task ended abnormally"),
        }
    }
    let stats = stats?;
    tracing::info!(?stats, "qagent stopped");
    Ok(())
}

/// Resolves when `stop` fires or is dropped.
async fn stopped(stop: tokio::sync::oneshot::Receiver<()>) {
    let _ = stop.await;
}
