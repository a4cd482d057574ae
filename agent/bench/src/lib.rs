//! The benchmark harness behind `qbench`: the measurement protocol of the two GPU
//! figures (Qwen3 depth sweep; zeroth-order OPT memory and step time), one JSON object
//! per measurement.
//!
//! This module owns what is built, what is timed and what "peak memory" means. It has no
//! training step of its own: every step it times is the trainer's, called through the
//! trainer's method types (`train::method`: [`AdamWBackprop`] for the Qwen3 models and
//! `ft`, [`Mezo`], [`Dizo`]), on the trainer's `Net`, losses and seeds, so a figure
//! measures the code that trains shards. The PyTorch peers in `ops/bench/` follow the same
//! protocol and print the same field names.
//!
//! Protocol of one measurement:
//! 1. Seed, build the model with random weights on the pinned device, create the method's
//!    state (AdamW moments, DiZO anchors), draw random batches, audit placement.
//! 2. `warmup` untimed steps (cuBLAS workspaces, autotuning), then release the
//!    gradients (AdamW's `zero_grad` sets them to none, as PyTorch's default does).
//! 3. Synchronize; `static_memory_bytes` = bytes in use now (parameters, optimizer state,
//!    batches, library workspaces; no gradients); reset the peak counter.
//! 4. `steps` timed steps, each `synchronize → step → read the loss → synchronize`;
//!    `step_seconds` is the median. `peak_memory_bytes` is the peak over the timed steps.
//!    The peak is split three ways, all from the same allocator counters:
//!    `static_memory_bytes`; `gradient_memory_bytes` = bytes in use after the last timed
//!    step minus static (what a step leaves alive until the next `zero_grad`: the
//!    gradients of a first-order method, ~0 for zeroth-order ones); and
//!    `activation_bytes = peak − static − gradient` (what the step needs beyond weights,
//!    optimizer state and gradients: activations, checkpoints, autograd buffers, logits,
//!    temporaries). `grad_bytes` is the computed size of one gradient per parameter, a
//!    cross-check of the measured figure.
//!
//! Memory is the CUDA caching allocator's allocated bytes on `cuda:N` and the process's
//! resident set on `cpu` (`PinnedDevice::memory`). On CPU the split is only as good as
//! RSS: freed memory may stay resident (the scripts set `MALLOC_MMAP_THRESHOLD_` so large
//! blocks are returned), and other threads' allocations count, so CPU numbers are only
//! for testing the harness (the records say `memory_kind`). Nothing falls back: `cuda:N` without CUDA is an error, and so is bf16 on CPU.
//! A failed measurement (for example out of memory) becomes an `"record": "error"`
//! line and the sweep continues; callers exit non-zero when any failed.

use std::panic::AssertUnwindSafe;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};
use tch::{Kind, Tensor, nn};

use shared::DeviceSpec;
use shared::scale::{DizoSettings, LrSchedule, Precision as TrainPrecision, TrainSettings};

use qsched_data::encode::{Candidate, CandidateExample};
use qsched_methods::batches::torch_seed;
use qsched_methods::collate::{CandidateRows, ClassifierBatch, collate_candidates};
use qsched_methods::method::{AdamWBackprop, Dizo, Method, Mezo, StepContext, forward_loss, no_batches};
use qsched_methods::task_model::{Batch, LmBatch, Net, lm_loss, scalar};
use qsched_models::device::PinnedDevice;
use qsched_models::{audit, is_out_of_memory, opt, qwen3, rev_qwen3};

pub mod error;

mod qwen3_depth;
mod rev_grad_error;
#[cfg(test)]
mod tests;
mod zo_opt;

pub use error::{Error, Result};
pub use qwen3_depth::{Qwen3DepthArgs, Qwen3Shape, run_qwen3_depth};
pub use rev_grad_error::{RevGradErrorArgs, run_rev_grad_error};
pub use zo_opt::{ZoOptArgs, run_zo_opt};

/// Value of the `impl` field of our records (the peers write `hf-transformers`,
/// `pytorch`).
pub const IMPL_NAME: &str = "qsched-tch";

/// Compute precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Precision {
    /// fp32 weights and compute (TF32 off: libtorch's default).
    Fp32,
    /// fp32 master weights, bf16 autocast (CUDA only).
    Bf16,
}

impl Precision {
    /// The training precision this measures (the one the trainer runs).
    pub fn train(self) -> TrainPrecision {
        match self {
            Precision::Fp32 => TrainPrecision::Fp32,
            Precision::Bf16 => TrainPrecision::Bf16,
        }
    }

    /// Name written to records: the trainer's label, which the peers use too.
    pub fn label(self) -> &'static str {
        self.train().label()
    }
}

/// Storage type of the OPT weights for the zeroth-order figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Weights {
    /// fp32 weights.
    Fp32,
    /// fp16 weights, perturbed and updated in fp16 (as the MeZO reference runs OPT).
    Fp16,
}

impl Weights {
    fn label(self) -> &'static str {
        match self {
            Weights::Fp32 => "fp32",
            Weights::Fp16 => "fp16",
        }
    }
}

/// Head of the Qwen3 depth sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Head {
    /// Sequence classification (2 labels, last token), as the GLUE shards train.
    Cls,
    /// Causal LM over all positions (tied `lm_head`, next-token cross-entropy).
    Lm,
}

impl Head {
    fn label(self) -> &'static str {
        match self {
            Head::Cls => "cls",
            Head::Lm => "lm",
        }
    }
}

/// Model of the Qwen3 depth sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum QwenModel {
    /// Standard Qwen3, autograd backprop.
    #[value(name = "qwen3")]
    Qwen3,
    /// Standard Qwen3, per-layer activation checkpointing (the model's own
    /// `backward_checkpointed`).
    #[value(name = "qwen3-ckpt")]
    Qwen3Ckpt,
    /// Reversible Qwen3, backprop by reconstruction.
    #[value(name = "rev-qwen3")]
    RevQwen3,
}

impl QwenModel {
    fn label(self) -> &'static str {
        match self {
            QwenModel::Qwen3 => "qwen3",
            QwenModel::Qwen3Ckpt => "qwen3-ckpt",
            QwenModel::RevQwen3 => "rev-qwen3",
        }
    }
}

/// Method of the zeroth-order OPT figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ZoMethod {
    /// Forward-only loss of one batch under `no_grad`.
    Inference,
    /// One MeZO step: SPSA (+ε, −2ε, +ε with two losses) and the seeded update.
    Mezo,
    /// MeZO steps with DiZO's anchors plus a projection round amortized over κ steps.
    Dizo,
    /// AdamW full fine-tune step with backprop.
    Ft,
}

impl ZoMethod {
    fn label(self) -> &'static str {
        match self {
            ZoMethod::Inference => "inference",
            ZoMethod::Mezo => "mezo",
            ZoMethod::Dizo => "dizo",
            ZoMethod::Ft => "ft",
        }
    }
}

/// What a sweep produced.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Measurements written.
    pub measured: usize,
    /// Measurements that failed (written as error records).
    pub failed: usize,
}

/// Receives each JSON record as soon as it exists (the binary prints and flushes it).
pub type Emit<'a> = dyn FnMut(&Value) -> Result<()> + 'a;

// ---------------------------------------------------------------------------------------
// Shared measurement machinery.

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn bytes_of(params: &[(String, Tensor)]) -> u64 {
    params.iter().map(|(_, t)| t.numel() as u64 * t.kind().elt_size_in_bytes() as u64).sum()
}

fn numel_of(params: &[(String, Tensor)]) -> u64 {
    params.iter().map(|(_, t)| t.numel() as u64).sum()
}

/// One timed window: static bytes at its start, per-step seconds and losses, peaks.
#[derive(Debug, Clone)]
struct Window {
    static_bytes: u64,
    /// Bytes in use right after the last timed step (its gradients still alive).
    end_bytes: u64,
    seconds: Vec<f64>,
    losses: Vec<f64>,
    peak: u64,
    peak_reserved: Option<u64>,
}

fn peak_reserved(pinned: &PinnedDevice) -> Result<Option<u64>> {
    match pinned.spec {
        DeviceSpec::Cpu => Ok(None),
        DeviceSpec::Cuda(i) => Ok(Some(qsched_models::ffi::cuda_memory_stats(i as usize)?.2.max(0) as u64)),
    }
}

/// Runs `steps` timed calls of `step` (which returns the step's loss) in a fresh peak
/// window. A non-finite loss is an error: a benchmark never skips a step.
fn timed(pinned: &PinnedDevice, steps: usize, step: &mut dyn FnMut(usize) -> Result<f64>) -> Result<Window> {
    pinned.synchronize();
    let static_bytes = pinned.memory()?.current;
    pinned.reset_peak_memory()?;
    let mut seconds = Vec::with_capacity(steps);
    let mut losses = Vec::with_capacity(steps);
    for i in 0..steps {
        pinned.synchronize();
        let t0 = Instant::now();
        let loss = step(i)?;
        pinned.synchronize();
        seconds.push(t0.elapsed().as_secs_f64());
        if !loss.is_finite() {
            return Err(Error::Measurement(format!("non-finite loss {loss} at timed step {i}")));
        }
        losses.push(loss);
    }
    let after = pinned.memory()?;
    Ok(Window {
        static_bytes,
        end_bytes: after.current,
        seconds,
        losses,
        peak: after.peak,
        peak_reserved: peak_reserved(pinned)?,
    })
}

fn device_fields(pinned: &PinnedDevice) -> Value {
    json!({
        "device": pinned.spec.to_string(),
        "gpu_name": pinned.gpu_name,
        "gpu_total_memory_bytes": pinned.gpu_total_memory,
        "memory_kind": pinned.memory_kind(),
        "threads": tch::get_num_threads(),
    })
}

fn merge(mut base: Value, extra: Value) -> Value {
    if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
        b.extend(e);
    }
    base
}

fn window_fields(w: &Window, tokens_per_step: i64) -> Value {
    let step = median(&w.seconds);
    let gradient = w.end_bytes as i64 - w.static_bytes as i64;
    json!({
        "static_memory_bytes": w.static_bytes,
        "gradient_memory_bytes": gradient,
        "peak_memory_bytes": w.peak,
        "activation_bytes": w.peak as i64 - w.static_bytes as i64 - gradient,
        "peak_reserved_bytes": w.peak_reserved,
        "step_seconds": step,
        "step_seconds_min": w.seconds.iter().copied().fold(f64::INFINITY, f64::min),
        "step_seconds_all": w.seconds,
        "tokens_per_second": tokens_per_step as f64 / step,
        "loss_first": w.losses.first(),
        "loss_last": w.losses.last(),
    })
}

/// Runs one measurement, turning an error or a panic (libtorch's non-`f_` calls panic)
/// into an error record.
fn guarded(
    pinned: &PinnedDevice,
    context: Value,
    emit: &mut Emit<'_>,
    outcome: &mut Outcome,
    f: impl FnOnce() -> Result<Value>,
) -> Result<Option<Value>> {
    let result = match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(panic) => Err(panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "panic".to_owned())),
    };
    // Everything the measurement allocated is dropped by now; hand cached blocks back so
    // the next measurement's reserved peak is its own (the peers call empty_cache too).
    if let DeviceSpec::Cuda(_) = pinned.spec {
        qsched_models::ffi::cuda_empty_cache()?;
    }
    match result {
        Ok(record) => {
            emit(&record)?;
            outcome.measured += 1;
            Ok(Some(record))
        }
        Err(message) => {
            tracing::error!(%message, "measurement failed");
            let record = merge(
                context,
                json!({ "record": "error", "out_of_memory": is_out_of_memory(&message), "error": message }),
            );
            emit(&record)?;
            outcome.failed += 1;
            Ok(None)
        }
    }
}

fn check_common(pinned: &PinnedDevice, precision: Precision, steps: usize, warmup: usize) -> Result<()> {
    if steps == 0 {
        return Err(Error::Arguments("--steps must be at least 1".into()));
    }
    if warmup == 0 {
        return Err(Error::Arguments(
            "--warmup must be at least 1: the static memory is read after a warm-up step has settled the allocator"
                .into(),
        ));
    }
    if precision == Precision::Bf16 {
        // Errors on CPU (tch's autocast would silently do nothing there).
        pinned.set_autocast_bf16()?;
    }
    Ok(())
}

/// The settings a method's step reads (lr, weight decay, clip, SPSA ε; AdamW's betas and
/// ε are the trainer's defaults).
fn train_settings(lr: f64, weight_decay: f64, grad_clip: f64, zo_eps: f64) -> TrainSettings {
    TrainSettings {
        max_steps: 1,
        batch_size: 1,
        eval_batch_size: 1,
        learning_rate: lr,
        lr_schedule: LrSchedule::Constant,
        warmup_steps: 0,
        weight_decay,
        grad_clip,
        adam_beta1: 0.9,
        adam_beta2: 0.999,
        adam_eps: 1e-8,
        zo_eps,
        eval_every: 1,
        early_stopping_patience: 0,
        checkpoint_every: 0,
        precision: TrainPrecision::Fp32,
    }
}

/// What every timed step of one measurement shares; [`Stepper::run`] hands the trainer's
/// step one batch and step index.
struct Stepper<'a> {
    net: &'a Net,
    settings: &'a TrainSettings,
    seed: u64,
    lr: f64,
    autocast: bool,
}

impl Stepper<'_> {
    /// Runs `step` (a method's step) on `batch` as step `index`; returns its loss. A
    /// skipped step (non-finite loss) is an error: a benchmark never skips one.
    fn run(
        &self,
        batch: &Batch,
        index: u64,
        step: impl FnOnce(&mut StepContext<'_>) -> qsched_methods::Result<Option<f64>>,
    ) -> Result<f64> {
        let mut ctx = StepContext {
            net: self.net,
            batch,
            seed: self.seed,
            step: index,
            lr: self.lr,
            autocast: self.autocast,
            train: self.settings,
            dizo_batches: &mut no_batches,
        };
        step(&mut ctx)?.ok_or_else(|| {
            Error::Measurement(format!("non-finite loss at step {index} (the trainer would skip the step)"))
        })
    }
}

/// Least-squares slope and intercept of `y` over `x`.
fn linear_fit(x: &[f64], y: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let sxx: f64 = x.iter().map(|a| (a - mx) * (a - mx)).sum();
    let sxy: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    (slope, my - slope * mx)
}
