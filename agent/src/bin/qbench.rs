//! `qbench`: the GPU-figure benchmarks (measurement protocol in `agent::bench`).
//!
//! ```text
//! qbench qwen3-depth --device cpu|cuda:N [--depths 2,4,8,16,28] [--batch 8 --seq 512] [--head cls|lm]
//!                    [--models qwen3,rev-qwen3] [--precision fp32|bf16] [--steps 5 --warmup 2] ...
//! qbench zo-opt      --device cpu|cuda:N [--batch 16 --seq 256] [--methods inference,mezo,dizo,ft]
//!                    [--precision fp32|bf16] [--weights fp32|fp16] [--steps 5 --warmup 2] ...
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
    /// Qwen3 vs Reversible Qwen3 training step over depth (Qwen3-0.6B width).
    Qwen3Depth {
        #[command(flatten)]
        common: Common,
        /// Layer counts.
        #[arg(long, value_delimiter = ',', default_values_t = [2, 4, 8, 16, 28])]
        depths: Vec<i64>,
        #[arg(long, default_value_t = 1024)]
        hidden: i64,
        #[arg(long, default_value_t = 16)]
        heads: i64,
        #[arg(long, default_value_t = 8)]
        kv_heads: i64,
        #[arg(long, default_value_t = 128)]
        head_dim: i64,
        #[arg(long, default_value_t = 3072)]
        intermediate: i64,
        #[arg(long, default_value_t = 151_936)]
        vocab: i64,
        #[arg(long, default_value_t = 8)]
        batch: i64,
        #[arg(long, default_value_t = 512)]
        seq: i64,
        /// `cls` (2-label classification, last token) or `lm` (next-token loss, all positions).
        #[arg(long, value_enum, default_value_t = Head::Cls)]
        head: Head,
        /// Models to sweep.
        #[arg(long, value_enum, value_delimiter = ',', default_values_t = [QwenModel::Qwen3, QwenModel::RevQwen3])]
        models: Vec<QwenModel>,
        #[arg(long, default_value_t = 1e-5)]
        lr: f64,
        #[arg(long, default_value_t = 0.01)]
        weight_decay: f64,
        /// Gradient-norm clip (0 = off); the trainer clips at 1.0.
        #[arg(long, default_value_t = 1.0)]
        grad_clip: f64,
    },
    /// Zeroth-order OPT: inference vs MeZO vs DiZO vs AdamW FT (OPT-1.3b shape).
    ZoOpt {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 2048)]
        hidden: i64,
        #[arg(long, default_value_t = 24)]
        layers: i64,
        #[arg(long, default_value_t = 32)]
        heads: i64,
        #[arg(long, default_value_t = 8192)]
        ffn: i64,
        #[arg(long, default_value_t = 50_272)]
        vocab: i64,
        /// Examples per step (each expands into `--candidates` rows).
        #[arg(long, default_value_t = 16)]
        batch: i64,
        #[arg(long, default_value_t = 2)]
        candidates: i64,
        /// Tokens per candidate row.
        #[arg(long, default_value_t = 256)]
        seq: i64,
        #[arg(long, default_value_t = 1)]
        option_len: i64,
        #[arg(long, value_enum, value_delimiter = ',', default_values_t = [ZoMethod::Inference, ZoMethod::Mezo, ZoMethod::Dizo, ZoMethod::Ft])]
        methods: Vec<ZoMethod>,
        /// Weight storage: fp32, or fp16 as the MeZO reference (not with ft or bf16).
        #[arg(long, value_enum, default_value_t = Weights::Fp32)]
        weights: Weights,
        #[arg(long, default_value_t = 1e-6)]
        zo_lr: f64,
        #[arg(long, default_value_t = 1e-3)]
        zo_eps: f64,
        #[arg(long, default_value_t = 1e-5)]
        ft_lr: f64,
        #[arg(long, default_value_t = 1.0)]
        grad_clip: f64,
        /// DiZO κ: a projection round every this many steps.
        #[arg(long, default_value_t = 50)]
        dizo_interval: u32,
        /// DiZO J: SPSA iterations on γ per round.
        #[arg(long, default_value_t = 10)]
        dizo_inner_iters: u32,
        /// Timed projection rounds.
        #[arg(long, default_value_t = 1)]
        dizo_rounds: usize,
        /// Keep DiZO's anchors in pinned host memory (`dizo.anchors_on_host`).
        #[arg(long)]
        dizo_anchors_on_host: bool,
    },
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
        Command::Qwen3Depth {
            common,
            depths,
            hidden,
            heads,
            kv_heads,
            head_dim,
            intermediate,
            vocab,
            batch,
            seq,
            head,
            models,
            lr,
            weight_decay,
            grad_clip,
        } => {
            let pinned = setup(&common)?;
            let args = bench::Qwen3DepthArgs {
                depths,
                hidden,
                heads,
                kv_heads,
                head_dim,
                intermediate,
                vocab,
                batch,
                seq,
                steps: common.steps,
                warmup: common.warmup,
                head,
                models,
                precision: common.precision,
                lr,
                weight_decay,
                grad_clip,
                seed: common.seed,
            };
            bench::run_qwen3_depth(&pinned, &args, &mut print)
        }
        Command::ZoOpt {
            common,
            hidden,
            layers,
            heads,
            ffn,
            vocab,
            batch,
            candidates,
            seq,
            option_len,
            methods,
            weights,
            zo_lr,
            zo_eps,
            ft_lr,
            grad_clip,
            dizo_interval,
            dizo_inner_iters,
            dizo_rounds,
            dizo_anchors_on_host,
        } => {
            let pinned = setup(&common)?;
            let defaults = bench::ZoOptArgs::default();
            let args = bench::ZoOptArgs {
                hidden,
                layers,
                heads,
                ffn,
                vocab,
                batch,
                candidates,
                seq,
                option_len,
                steps: common.steps,
                warmup: common.warmup,
                methods,
                precision: common.precision,
                weights,
                zo_lr,
                zo_eps,
                ft_lr,
                grad_clip,
                dizo: shared::scale::DizoSettings {
                    interval: dizo_interval,
                    inner_iters: dizo_inner_iters,
                    anchors_on_host: dizo_anchors_on_host,
                    ..defaults.dizo
                },
                dizo_rounds,
                seed: common.seed,
                ..defaults
            };
            bench::run_zo_opt(&pinned, &args, &mut print)
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
