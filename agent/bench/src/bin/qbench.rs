//! `qbench`: the GPU-figure benchmarks (measurement protocol in `qsched_bench`).
//!
//! ```text
//! qbench qwen3-depth --device cpu|cuda:N [--depths 2,4,8,16,28] [--batch 8 --seq 512] [--head cls|lm]
//!                    [--models qwen3,qwen3-ckpt,rev-qwen3] [--precision fp32|bf16] [--steps 5 --warmup 2] ...
//! qbench zo-opt      --device cpu|cuda:N [--batch 16 --seq 256] [--methods inference,mezo,dizo,ft]
//!                    [--precision fp32|bf16] [--weights fp32|fp16] [--steps 5 --warmup 2] ...
//! qbench rev-grad-error --device cpu|cuda:N --data-dir DIR [--depths 2,4,8,12,28] [--batch 4 --seq 512]
//!                    [--precisions fp32,bf16] [--train-steps 0] [--hidden 1024 ...] [--seed 0]
//! qbench fleet-sim   --agents 500 --shards 5000 --time-limit 300 --prefix P [--amqp URL] [--redis URL]
//!                    [--idle 15] [--delay-ms 0] [--heartbeat-secs 5] [--command-stats]
//! ```
//!
//! `fleet-sim` runs simulated agents (the real consume loop, a no-op instead of training;
//! `agent::sim`), prints `{"event":"ready",...}` once they all consume (publish the shards
//! then, e.g. with `qsched submit --prefix P`) and one report line when the shards are
//! acked or the time limit passes (ops/bench/fleet_sim.sh, BENCHMARKS.md §7).
//!
//! Defaults are the `large` preset's shapes (Qwen3-0.6B, OPT-1.3b). Prints one JSON object
//! per measurement on stdout (flushed as it is measured); logs go to stderr. Exits 1 when
//! any measurement failed (its error record is still printed).

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use qsched_bench::{self as bench, Head, Precision, QwenModel, Weights, ZoMethod};
use shared::DeviceSpec;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "qbench", version, about = "qsched benchmark harness: JSON lines on stdout")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug)]
struct Common {
    /// Device: `cpu` or `cuda:N` (never falls back).
    #[arg(long)]
    device: DeviceSpec,
    /// Timed steps (the median is reported).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Untimed warm-up steps (≥ 1).
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Compute precision: fp32, or bf16 autocast over fp32 weights (CUDA only).
    #[arg(long, value_enum, default_value_t = Precision::Fp32)]
    precision: Precision,
    /// Intra-op CPU threads (0 = libtorch's default).
    #[arg(long, default_value_t = 0)]
    threads: i32,
    /// Seed of weights, batches and perturbations.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Qwen3 vs checkpointed Qwen3 vs Reversible Qwen3 training step over depth
    /// (Qwen3-0.6B width): peak memory split into static, gradients and activations.
    Qwen3Depth(Qwen3Depth),
    /// Zeroth-order OPT: inference vs MeZO vs DiZO vs AdamW FT (OPT-1.3b shape).
    ZoOpt(ZoOpt),
    /// Reversible Qwen3: per-parameter-group gradient error of the reconstruction
    /// backward and of plain autograd against fp64 autograd, over depth and precision.
    RevGradError(RevGradError),
    /// Dispatch at fleet scale: simulated agents, each with its own broker and Redis
    /// connection, take no-op shards through the real consume → store → ack path.
    FleetSim(FleetSim),
}

#[derive(Args, Debug)]
struct FleetSim {
    /// Simulated agents (each opens one AMQP and one Redis connection).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    agents: u32,
    /// Shards to wait for: the run ends once this many distinct shards are acked.
    #[arg(long, required_unless_present = "delete_only")]
    shards: Option<usize>,
    /// Seconds the simulation may take once the agents are connected (it stops then,
    /// reporting `timed_out`).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    time_limit: u64,
    /// Queue and key prefix of the shards (the one `qsched submit --prefix` uses).
    #[arg(long)]
    prefix: String,
    #[command(flatten)]
    endpoints: shared::endpoints::Endpoints,
    /// Seconds of heartbeats only, before `ready`, over which Redis commands per heartbeat
    /// are measured (0 skips it).
    #[arg(long, default_value_t = 15)]
    idle: u64,
    /// Milliseconds each no-op shard takes.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Heartbeat period of every agent.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    heartbeat_secs: u64,
    /// Read `INFO commandstats` at the phase boundaries: server-wide figures, so only on
    /// a Redis that nothing else uses.
    #[arg(long)]
    command_stats: bool,
    /// Connections opened at once while starting.
    #[arg(long, default_value_t = agent::sim::DEFAULT_CONNECT_PARALLELISM)]
    connect_parallelism: usize,
    /// Tokio worker threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    worker_threads: usize,
    /// Run nothing: delete the prefix's queues, exchanges and Redis keys (a benchmark's
    /// clean-up).
    #[arg(long)]
    delete_only: bool,
}

fn fleet_sim(cmd: FleetSim) -> bench::Result<bench::Outcome> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if cmd.worker_threads > 0 {
        builder.worker_threads(cmd.worker_threads);
    }
    let runtime = builder.enable_all().build().map_err(|e| bench::Error::io("<tokio runtime>", e))?;
    runtime.block_on(fleet_sim_on(cmd))
}

async fn fleet_sim_on(cmd: FleetSim) -> bench::Result<bench::Outcome> {
    if cmd.delete_only {
        let amqp = shared::amqp::AmqpBroker::connect(cmd.endpoints.amqp_config(&cmd.prefix)?).await?;
        amqp.delete_topology().await?;
        amqp.close().await?;
        let store = shared::redis_store::RedisStore::connect_with(cmd.endpoints.redis_config(&cmd.prefix)?).await?;
        let keys = store.delete_prefix().await?;
        print(&serde_json::json!({ "event": "deleted", "prefix": cmd.prefix, "redis_keys": keys }))?;
        return Ok(bench::Outcome { measured: 0, failed: 0 });
    }
    let cfg = agent::sim::FleetSimConfig {
        agents: cmd.agents as usize,
        shards: cmd.shards.unwrap_or(0),
        time_limit: std::time::Duration::from_secs(cmd.time_limit),
        idle: std::time::Duration::from_secs(cmd.idle),
        delay: std::time::Duration::from_millis(cmd.delay_ms),
        heartbeat_interval: std::time::Duration::from_secs(cmd.heartbeat_secs),
        amqp: cmd.endpoints.amqp_config(&cmd.prefix)?,
        redis: cmd.endpoints.redis_config(&cmd.prefix)?,
        command_stats: cmd.command_stats,
        connect_parallelism: cmd.connect_parallelism,
    };
    let (ready, on_ready) = tokio::sync::oneshot::channel();
    // The ready line is printed as soon as it is known, while the fleet runs on.
    let announce = tokio::spawn(async move {
        match on_ready.await {
            Ok(r) => print(&serde_json::json!({ "event": "ready", "ready": r })),
            Err(_) => Ok(()),
        }
    });
    let journal = std::sync::Arc::new(agent::sim::Journal::default());
    let report = agent::sim::run_fleet(cfg, journal, ready).await?;
    match announce.await {
        Ok(r) => r?,
        Err(e) => return Err(agent::Error::Simulation(format!("printing the ready line: {e}")).into()),
    }
    print(&serde_json::json!({ "event": "report", "report": report }))?;
    // A run that did not finish, lost an agent or ran a shard twice is a failed measurement.
    let failed = report.timed_out || report.agent_stats.failed_agents > 0 || report.shards_run_twice > 0;
    Ok(bench::Outcome { measured: 1, failed: usize::from(failed) })
}

// Flag defaults are read from the library's `Default` impls, the one place they are set.
fn qwen3_default() -> bench::Qwen3DepthArgs {
    bench::Qwen3DepthArgs::default()
}

fn rev_default() -> bench::RevGradErrorArgs {
    bench::RevGradErrorArgs::default()
}

fn zo_default() -> bench::ZoOptArgs {
    bench::ZoOptArgs::default()
}

#[derive(Args, Debug)]
struct Qwen3Depth {
    #[command(flatten)]
    common: Common,
    /// Layer counts.
    #[arg(long, value_delimiter = ',', default_values_t = qwen3_default().depths)]
    depths: Vec<i64>,
    #[arg(long, default_value_t = qwen3_default().hidden)]
    hidden: i64,
    #[arg(long, default_value_t = qwen3_default().heads)]
    heads: i64,
    #[arg(long, default_value_t = qwen3_default().kv_heads)]
    kv_heads: i64,
    #[arg(long, default_value_t = qwen3_default().head_dim)]
    head_dim: i64,
    #[arg(long, default_value_t = qwen3_default().intermediate)]
    intermediate: i64,
    #[arg(long, default_value_t = qwen3_default().vocab)]
    vocab: i64,
    #[arg(long, default_value_t = qwen3_default().batch)]
    batch: i64,
    #[arg(long, default_value_t = qwen3_default().seq)]
    seq: i64,
    /// `cls` (2-label classification, last token) or `lm` (next-token loss, all positions).
    #[arg(long, value_enum, default_value_t = qwen3_default().head)]
    head: Head,
    /// Models to sweep: qwen3 (autograd), qwen3-ckpt (per-layer checkpointing),
    /// rev-qwen3 (reconstruction); each calls the model's own backward.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = qwen3_default().models)]
    models: Vec<QwenModel>,
    #[arg(long, default_value_t = qwen3_default().lr)]
    lr: f64,
    #[arg(long, default_value_t = qwen3_default().weight_decay)]
    weight_decay: f64,
    /// Gradient-norm clip (0 = off); the trainer clips at 1.0.
    #[arg(long, default_value_t = qwen3_default().grad_clip)]
    grad_clip: f64,
}

impl Qwen3Depth {
    fn into_args(self) -> bench::Qwen3DepthArgs {
        bench::Qwen3DepthArgs {
            depths: self.depths,
            hidden: self.hidden,
            heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            intermediate: self.intermediate,
            vocab: self.vocab,
            batch: self.batch,
            seq: self.seq,
            steps: self.common.steps,
            warmup: self.common.warmup,
            head: self.head,
            models: self.models,
            precision: self.common.precision,
            lr: self.lr,
            weight_decay: self.weight_decay,
            grad_clip: self.grad_clip,
            seed: self.common.seed,
        }
    }
}

#[derive(Args, Debug)]
struct RevGradError {
    /// Device: `cpu` or `cuda:N` (never falls back).
    #[arg(long)]
    device: DeviceSpec,
    /// Data directory holding `glue/SST-2/train.tsv` and `tokenizers/qwen`.
    #[arg(long)]
    data_dir: PathBuf,
    /// Layer counts.
    #[arg(long, value_delimiter = ',', default_values_t = rev_default().depths)]
    depths: Vec<i64>,
    /// Precisions of the measured backwards (bf16 = autocast, CUDA only); the reference is fp64.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = rev_default().precisions)]
    precisions: Vec<Precision>,
    #[arg(long, default_value_t = rev_default().shape.hidden)]
    hidden: i64,
    #[arg(long, default_value_t = rev_default().shape.heads)]
    heads: i64,
    #[arg(long, default_value_t = rev_default().shape.kv_heads)]
    kv_heads: i64,
    #[arg(long, default_value_t = rev_default().shape.head_dim)]
    head_dim: i64,
    #[arg(long, default_value_t = rev_default().shape.intermediate)]
    intermediate: i64,
    /// Embedding rows; must cover the Qwen tokenizer (151,646).
    #[arg(long, default_value_t = rev_default().shape.vocab)]
    vocab: i64,
    #[arg(long, default_value_t = rev_default().batch)]
    batch: i64,
    #[arg(long, default_value_t = rev_default().seq)]
    seq: i64,
    /// AdamW steps (fp32, reconstruction backward) before measuring.
    #[arg(long, default_value_t = rev_default().train_steps)]
    train_steps: usize,
    #[arg(long, default_value_t = rev_default().lr)]
    lr: f64,
    #[arg(long, default_value_t = rev_default().weight_decay)]
    weight_decay: f64,
    #[arg(long, default_value_t = rev_default().grad_clip)]
    grad_clip: f64,
    /// Intra-op CPU threads (0 = libtorch's default).
    #[arg(long, default_value_t = 0)]
    threads: i32,
    /// Seed of the weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl RevGradError {
    fn into_args(self) -> bench::RevGradErrorArgs {
        bench::RevGradErrorArgs {
            depths: self.depths,
            shape: bench::Qwen3Shape {
                hidden: self.hidden,
                heads: self.heads,
                kv_heads: self.kv_heads,
                head_dim: self.head_dim,
                intermediate: self.intermediate,
                vocab: self.vocab,
            },
            batch: self.batch,
            seq: self.seq,
            precisions: self.precisions,
            data_dir: self.data_dir,
            train_steps: self.train_steps,
            lr: self.lr,
            weight_decay: self.weight_decay,
            grad_clip: self.grad_clip,
            seed: self.seed,
        }
    }
}

#[derive(Args, Debug)]
struct ZoOpt {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value_t = zo_default().hidden)]
    hidden: i64,
    #[arg(long, default_value_t = zo_default().layers)]
    layers: i64,
    #[arg(long, default_value_t = zo_default().heads)]
    heads: i64,
    #[arg(long, default_value_t = zo_default().ffn)]
    ffn: i64,
    #[arg(long, default_value_t = zo_default().vocab)]
    vocab: i64,
    /// Examples per step (each expands into `--candidates` rows).
    #[arg(long, default_value_t = zo_default().batch)]
    batch: i64,
    #[arg(long, default_value_t = zo_default().candidates)]
    candidates: i64,
    /// Tokens per candidate row.
    #[arg(long, default_value_t = zo_default().seq)]
    seq: i64,
    #[arg(long, default_value_t = zo_default().option_len)]
    option_len: i64,
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = zo_default().methods)]
    methods: Vec<ZoMethod>,
    /// Weight storage: fp32, or fp16 as the MeZO reference (not with ft or bf16).
    #[arg(long, value_enum, default_value_t = zo_default().weights)]
    weights: Weights,
    #[arg(long, default_value_t = zo_default().zo_lr)]
    zo_lr: f64,
    #[arg(long, default_value_t = zo_default().zo_eps)]
    zo_eps: f64,
    #[arg(long, default_value_t = zo_default().ft_lr)]
    ft_lr: f64,
    #[arg(long, default_value_t = zo_default().grad_clip)]
    grad_clip: f64,
    /// DiZO κ: a projection round every this many steps.
    #[arg(long, default_value_t = zo_default().dizo.interval)]
    dizo_interval: u32,
    /// DiZO J: SPSA iterations on γ per round.
    #[arg(long, default_value_t = zo_default().dizo.inner_iters)]
    dizo_inner_iters: u32,
    /// Timed projection rounds.
    #[arg(long, default_value_t = zo_default().dizo_rounds)]
    dizo_rounds: usize,
    /// Keep DiZO's anchors in pinned host memory (`dizo.anchors_on_host`).
    #[arg(long)]
    dizo_anchors_on_host: bool,
}

impl ZoOpt {
    fn into_args(self) -> bench::ZoOptArgs {
        let defaults = zo_default();
        bench::ZoOptArgs {
            hidden: self.hidden,
            layers: self.layers,
            heads: self.heads,
            ffn: self.ffn,
            vocab: self.vocab,
            batch: self.batch,
            candidates: self.candidates,
            seq: self.seq,
            option_len: self.option_len,
            steps: self.common.steps,
            warmup: self.common.warmup,
            methods: self.methods,
            precision: self.common.precision,
            weights: self.weights,
            zo_lr: self.zo_lr,
            zo_eps: self.zo_eps,
            ft_lr: self.ft_lr,
            grad_clip: self.grad_clip,
            dizo: shared::scale::DizoSettings {
                interval: self.dizo_interval,
                inner_iters: self.dizo_inner_iters,
                anchors_on_host: self.dizo_anchors_on_host,
                ..defaults.dizo
            },
            dizo_rounds: self.dizo_rounds,
            seed: self.common.seed,
            ..defaults
        }
    }
}

fn print(v: &serde_json::Value) -> bench::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{v}").and_then(|()| out.flush()).map_err(|e| bench::Error::io("<stdout>", e))
}

fn setup(common: &Common) -> bench::Result<qsched_models::device::PinnedDevice> {
    if common.threads > 0 {
        tch::set_num_threads(common.threads);
    }
    Ok(qsched_models::device::pin(common.device)?)
}

fn run(cli: Cli) -> bench::Result<bench::Outcome> {
    match cli.command {
        Command::Qwen3Depth(cmd) => {
            let pinned = setup(&cmd.common)?;
            bench::run_qwen3_depth(&pinned, &cmd.into_args(), &mut print)
        }
        Command::ZoOpt(cmd) => {
            let pinned = setup(&cmd.common)?;
            bench::run_zo_opt(&pinned, &cmd.into_args(), &mut print)
        }
        Command::RevGradError(cmd) => {
            if cmd.threads > 0 {
                tch::set_num_threads(cmd.threads);
            }
            let pinned = qsched_models::device::pin(cmd.device)?;
            bench::run_rev_grad_error(&pinned, &cmd.into_args(), &mut print)
        }
        Command::FleetSim(cmd) => fleet_sim(cmd),
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(Cli::parse()) {
        Ok(o) if o.failed == 0 => ExitCode::SUCCESS,
        Ok(o) => {
            eprintln!(
                "qbench: {} of {} measurement(s) failed (see the error records)",
                o.failed,
                o.failed + o.measured
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("qbench: error: {e}");
            ExitCode::FAILURE
        }
    }
}
