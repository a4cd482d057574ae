//! `qbench`: the GPU-figure benchmarks (measurement protocol in `agent::bench`).
//!
//! ```text
//! qbench qwen3-depth --device cpu|cuda:N [--depths 2,4,8,16,28] [--batch 8 --seq 512] [--head cls|lm]
//!                    [--models qwen3,qwen3-ckpt,rev-qwen3] [--precision fp32|bf16] [--steps 5 --warmup 2] ...
//! qbench zo-opt      --device cpu|cuda:N [--batch 16 --seq 256] [--methods inference,mezo,dizo,ft]
//!                    [--precision fp32|bf16] [--weights fp32|fp16] [--steps 5 --warmup 2] ...
//! qbench rev-grad-error --device cpu|cuda:N --data-dir DIR [--depths 2,4,8,12,28] [--batch 4 --seq 512]
//!                    [--precisions fp32,bf16] [--train-steps 0] [--hidden 1024 ...] [--seed 0]
//! ```
//!
//! Defaults are the `large` preset's shapes (Qwen3-0.6B, OPT-1.3b). Prints one JSON object
//! per measurement on stdout (flushed as it is measured); logs go to stderr. Exits 1 when
//! any measurement failed (its error record is still printed).

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use agent::bench::{self, Head, Precision, QwenModel, Weights, ZoMethod};
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

fn print(v: &serde_json::Value) -> agent::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{v}").and_then(|()| out.flush()).map_err(|e| agent::Error::io("<stdout>", e))
}

fn setup(common: &Common) -> agent::Result<agent::device::PinnedDevice> {
    if common.threads > 0 {
        tch::set_num_threads(common.threads);
    }
    agent::device::pin(common.device)
}

fn run(cli: Cli) -> agent::Result<bench::Outcome> {
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
            let pinned = agent::device::pin(cmd.device)?;
            bench::run_rev_grad_error(&pinned, &cmd.into_args(), &mut print)
        }
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
