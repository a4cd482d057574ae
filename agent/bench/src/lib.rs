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
pub use error::{Error, Result};

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
    /// Name written to records (the peers use the same names).
    pub fn label(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16-autocast",
        }
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

/// Settings of `qbench qwen3-depth`.
#[derive(Debug, Clone)]
pub struct Qwen3DepthArgs {
    /// Layer counts to sweep.
    pub depths: Vec<i64>,
    /// Model width.
    pub hidden: i64,
    /// Query heads.
    pub heads: i64,
    /// Key/value heads.
    pub kv_heads: i64,
    /// Per-head width.
    pub head_dim: i64,
    /// SwiGLU inner width.
    pub intermediate: i64,
    /// Vocabulary (embedding rows; tied LM head).
    pub vocab: i64,
    /// Sequences per step.
    pub batch: i64,
    /// Tokens per sequence (no padding).
    pub seq: i64,
    /// Timed steps.
    pub steps: usize,
    /// Untimed steps before (at least 1: allocator pools, workspaces and autotuning are
    /// settled before the static memory is read).
    pub warmup: usize,
    /// Head.
    pub head: Head,
    /// Models, each swept over every depth.
    pub models: Vec<QwenModel>,
    /// Precision.
    pub precision: Precision,
    /// AdamW learning rate.
    pub lr: f64,
    /// AdamW decoupled weight decay (not on norms).
    pub weight_decay: f64,
    /// Gradient-norm clip (0 = off); the trainer clips at 1.0.
    pub grad_clip: f64,
    /// Seed of weights and batches.
    pub seed: u64,
}

impl Default for Qwen3DepthArgs {
    /// Qwen3-0.6B's shape (the `large` preset) at depths 2..28, batch 8 × 512, fp32.
    fn default() -> Self {
        Qwen3DepthArgs {
            depths: vec![2, 4, 8, 16, 28],
            hidden: 1024,
            heads: 16,
            kv_heads: 8,
            head_dim: 128,
            intermediate: 3072,
            vocab: 151_936,
            batch: 8,
            seq: 512,
            steps: 5,
            warmup: 2,
            head: Head::Cls,
            models: vec![QwenModel::Qwen3, QwenModel::Qwen3Ckpt, QwenModel::RevQwen3],
            precision: Precision::Fp32,
            lr: 1e-5,
            weight_decay: 0.01,
            grad_clip: 1.0,
            seed: 0,
        }
    }
}

/// Settings of `qbench zo-opt`.
#[derive(Debug, Clone)]
pub struct ZoOptArgs {
    /// Model width.
    pub hidden: i64,
    /// Decoder layers.
    pub layers: i64,
    /// Attention heads.
    pub heads: i64,
    /// FFN inner width.
    pub ffn: i64,
    /// Vocabulary (tied LM head).
    pub vocab: i64,
    /// Examples per step (each expands into `candidates` rows).
    pub batch: i64,
    /// Candidates (label words) per example.
    pub candidates: i64,
    /// Tokens per candidate row (BOS + prompt + option, no padding).
    pub seq: i64,
    /// Option tokens at the end of each row.
    pub option_len: i64,
    /// Timed steps.
    pub steps: usize,
    /// Untimed steps before (at least 1).
    pub warmup: usize,
    /// Methods; `inference` is measured first when listed (the ratios need it).
    pub methods: Vec<ZoMethod>,
    /// Precision (bf16 autocast needs fp32 weights).
    pub precision: Precision,
    /// Weight storage (fp16: inference, mezo, dizo only).
    pub weights: Weights,
    /// MeZO/DiZO learning rate.
    pub zo_lr: f64,
    /// SPSA ε.
    pub zo_eps: f64,
    /// AdamW learning rate of `ft`.
    pub ft_lr: f64,
    /// AdamW weight decay of `ft`.
    pub ft_weight_decay: f64,
    /// Gradient-norm clip of `ft` (0 = off).
    pub grad_clip: f64,
    /// DiZO settings (κ, J, ε_γ, η_γ, τ).
    pub dizo: DizoSettings,
    /// Timed projection rounds of `dizo`.
    pub dizo_rounds: usize,
    /// Seed of weights, batches and perturbations.
    pub seed: u64,
}

impl Default for ZoOptArgs {
    /// OPT-1.3b's shape (the `large` preset), batch 16 × 2 candidates × 256 tokens, fp32,
    /// MeZO's OPT settings (lr 1e-6, ε 1e-3), DiZO's defaults (κ 50, J 10).
    fn default() -> Self {
        ZoOptArgs {
            hidden: 2048,
            layers: 24,
            heads: 32,
            ffn: 8192,
            vocab: 50_272,
            batch: 16,
            candidates: 2,
            seq: 256,
            option_len: 1,
            steps: 5,
            warmup: 2,
            methods: vec![ZoMethod::Inference, ZoMethod::Mezo, ZoMethod::Dizo, ZoMethod::Ft],
            precision: Precision::Fp32,
            weights: Weights::Fp32,
            zo_lr: 1e-6,
            zo_eps: 1e-3,
            ft_lr: 1e-5,
            ft_weight_decay: 0.0,
            grad_clip: 1.0,
            dizo: DizoSettings::default(),
            dizo_rounds: 1,
            seed: 0,
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

// ---------------------------------------------------------------------------------------
// Figure 1: Qwen3 vs checkpointed Qwen3 vs Reversible Qwen3 over depth.

/// A random batch: ids in `[1, vocab)` (0 is the pad id of the classifier), no padding;
/// for the LM head, next-token targets with −100 at each row's last position.
fn qwen_batch(a: &Qwen3DepthArgs, device: tch::Device) -> Result<Batch> {
    let (b, t) = (a.batch, a.seq);
    let ids = Tensor::f_randint_low(1, a.vocab, [b, t], (Kind::Int64, device))?;
    // Labels are drawn for both heads (the LM head ignores them), so a seed gives the
    // batches it always gave.
    let labels = Tensor::f_randint(2, [b], (Kind::Int64, device))?;
    let attention_mask = Tensor::f_ones([b, t], (Kind::Int64, device))?;
    let num_tokens = (b * t) as usize;
    Ok(match a.head {
        Head::Lm => {
            let ignore = Tensor::f_full([b, 1], -100, (Kind::Int64, device))?;
            let targets = Tensor::f_cat(&[&ids.f_narrow(1, 1, t - 1)?, &ignore], 1)?.f_view([-1])?;
            Batch::Lm(LmBatch { input_ids: ids, attention_mask, targets, num_tokens })
        }
        Head::Cls => Batch::Classifier(ClassifierBatch {
            attention_mask,
            labels,
            last_index: Tensor::f_full([b], t - 1, (Kind::Int64, device))?,
            num_tokens,
            input_ids: ids,
        }),
    })
}

fn qwen_config(a: &Qwen3DepthArgs, depth: i64) -> qwen3::Config {
    let shape = Qwen3Shape {
        hidden: a.hidden,
        heads: a.heads,
        kv_heads: a.kv_heads,
        head_dim: a.head_dim,
        intermediate: a.intermediate,
        vocab: a.vocab,
    };
    qwen3_shape_config(&shape, depth, a.seq)
}

/// The Qwen3 width of a sweep (depth varies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Qwen3Shape {
    /// Model width.
    pub hidden: i64,
    /// Query heads.
    pub heads: i64,
    /// Key/value heads.
    pub kv_heads: i64,
    /// Per-head width.
    pub head_dim: i64,
    /// SwiGLU inner width.
    pub intermediate: i64,
    /// Vocabulary (embedding rows; tied LM head).
    pub vocab: i64,
}

impl Default for Qwen3Shape {
    /// Qwen3-0.6B's shape (the `large` preset) with the real Qwen vocabulary.
    fn default() -> Self {
        Qwen3Shape { hidden: 1024, heads: 16, kv_heads: 8, head_dim: 128, intermediate: 3072, vocab: 151_936 }
    }
}

fn qwen3_shape_config(s: &Qwen3Shape, depth: i64, seq: i64) -> qwen3::Config {
    qwen3::Config {
        vocab_size: s.vocab,
        hidden_size: s.hidden,
        intermediate_size: s.intermediate,
        num_hidden_layers: depth,
        num_attention_heads: s.heads,
        num_key_value_heads: s.kv_heads,
        head_dim: s.head_dim,
        max_position_embeddings: seq.max(2048),
        rope_theta: 1_000_000.0,
        rms_norm_eps: 1e-6,
        tie_word_embeddings: true,
        initializer_range: 0.02,
        pad_token_id: None,
        bos_token_id: None,
        eos_token_id: None,
    }
}

fn qwen_measurement(pinned: &PinnedDevice, a: &Qwen3DepthArgs, model: QwenModel, depth: i64) -> Result<Value> {
    let device = pinned.device;
    let t_setup = Instant::now();
    // 1. Model, optimizer state, batches; placement audit.
    tch::manual_seed(torch_seed(a.seed));
    let cfg = qwen_config(a, depth);
    let vs = nn::VarStore::new(device);
    let root = vs.root();
    let net = match (a.head, model) {
        (Head::Cls, QwenModel::Qwen3) => Net::Qwen3(qwen3::Qwen3ForSequenceClassification::new(&root, &cfg, 2, 0)?),
        (Head::Cls, QwenModel::Qwen3Ckpt) => {
            Net::Qwen3Ckpt(qwen3::Qwen3ForSequenceClassification::new(&root, &cfg, 2, 0)?)
        }
        (Head::Cls, QwenModel::RevQwen3) => {
            Net::RevQwen3(rev_qwen3::RevQwen3ForSequenceClassification::new(&root, &cfg, 2, 0)?)
        }
        (Head::Lm, QwenModel::Qwen3) => Net::Qwen3Lm(qwen3::Qwen3ForCausalLM::new(&root, &cfg)?),
        (Head::Lm, QwenModel::Qwen3Ckpt) => Net::Qwen3LmCkpt(qwen3::Qwen3ForCausalLM::new(&root, &cfg)?),
        (Head::Lm, QwenModel::RevQwen3) => Net::RevQwen3Lm(rev_qwen3::RevQwen3ForCausalLM::new(&root, &cfg)?),
    };
    let params = net.named_parameters();
    let settings = train_settings(a.lr, a.weight_decay, a.grad_clip, 0.0);
    let mut method = AdamWBackprop::new(&params, &settings);
    let batches = (0..a.warmup + a.steps).map(|_| qwen_batch(a, device)).collect::<Result<Vec<_>>>()?;
    {
        let mut tensors: Vec<(String, &Tensor)> = params.iter().map(|(n, t)| (n.clone(), t)).collect();
        tensors.extend(method.state_tensors());
        tensors.extend(batches[0].tensors().into_iter().map(|(n, t)| (n.to_owned(), t)));
        audit::ensure_on_device(device, tensors.iter().map(|(n, t)| (n.as_str(), *t)))?;
    }
    // The trainer's first-order step: dropout seed, release gradients, loss and backward
    // (the model's own checkpointed or reconstruction backward where it has one),
    // clipping, fused AdamW.
    let stepper =
        Stepper { net: &net, settings: &settings, seed: a.seed, lr: a.lr, autocast: a.precision == Precision::Bf16 };
    // 2. Warm-up.
    for (i, b) in batches[..a.warmup].iter().enumerate() {
        stepper.run(b, i as u64, |ctx| method.step(ctx))?;
    }
    method.zero_grad()?;
    let setup_seconds = t_setup.elapsed().as_secs_f64();
    // 3–4. Timed window.
    let w = timed(pinned, a.steps, &mut |i| {
        let index = a.warmup + i;
        stepper.run(&batches[index], index as u64, |ctx| method.step(ctx))
    })?;

    let param_bytes = bytes_of(&params);
    let record = json!({
        "record": "measurement",
        "figure": "qwen3-depth",
        "impl": IMPL_NAME,
        "model": model.label(),
        "head": a.head.label(),
        "depth": depth,
        "hidden": a.hidden, "heads": a.heads, "kv_heads": a.kv_heads, "head_dim": a.head_dim,
        "intermediate": a.intermediate, "vocab": a.vocab,
        "batch": a.batch, "seq": a.seq, "tokens_per_step": a.batch * a.seq,
        "precision": a.precision.label(),
        "steps": a.steps, "warmup": a.warmup,
        "lr": a.lr, "grad_clip": a.grad_clip,
        "parameters": numel_of(&params),
        "param_bytes": param_bytes,
        "grad_bytes": param_bytes,
        // exp_avg + exp_avg_sq (fp32 like the parameters) + a 4-byte step per tensor.
        "optimizer_state_bytes": 2 * param_bytes + 4 * params.len() as u64,
        "backward": match model {
            QwenModel::Qwen3 => "autograd",
            QwenModel::Qwen3Ckpt => "checkpointed (per-layer recompute)",
            QwenModel::RevQwen3 => "reconstruction",
        },
        "zero_grad": "set_to_none",
        "setup_seconds": setup_seconds,
    });
    Ok(merge(merge(record, window_fields(&w, a.batch * a.seq)), device_fields(pinned)))
}

/// The Qwen3 depth sweep: every model at every depth, then one summary per model with
/// the least-squares slope of `activation_bytes` over depth (flat in depth ⇔ slope ≈ 0).
pub fn run_qwen3_depth(pinned: &PinnedDevice, a: &Qwen3DepthArgs, emit: &mut Emit<'_>) -> Result<Outcome> {
    check_common(pinned, a.precision, a.steps, a.warmup)?;
    if a.depths.is_empty() || a.depths.iter().any(|&d| d < 1) {
        return Err(Error::Arguments(format!("--depths must be positive layer counts, got {:?}", a.depths)));
    }
    if a.models.is_empty() {
        return Err(Error::Arguments("--models is empty".into()));
    }
    let mut outcome = Outcome::default();
    for &model in &a.models {
        let mut rows: Vec<(i64, Value)> = Vec::new();
        for &depth in &a.depths {
            tracing::info!(model = model.label(), depth, head = a.head.label(), "qwen3-depth measurement");
            let context = json!({
                "figure": "qwen3-depth", "impl": IMPL_NAME, "model": model.label(), "head": a.head.label(),
                "depth": depth, "batch": a.batch, "seq": a.seq, "precision": a.precision.label(),
                "device": pinned.spec.to_string(),
            });
            if let Some(r) = guarded(pinned, context, emit, &mut outcome, || qwen_measurement(pinned, a, model, depth))?
            {
                rows.push((depth, r));
            }
        }
        if rows.len() >= 2 {
            emit(&depth_summary(pinned, a, model, &rows))?;
        }
    }
    Ok(outcome)
}

fn depth_summary(pinned: &PinnedDevice, a: &Qwen3DepthArgs, model: QwenModel, rows: &[(i64, Value)]) -> Value {
    let col = |k: &str| -> Vec<f64> { rows.iter().map(|(_, r)| r[k].as_f64().unwrap_or(f64::NAN)).collect() };
    let depths: Vec<f64> = rows.iter().map(|(d, _)| *d as f64).collect();
    let act = col("activation_bytes");
    let (slope, intercept) = linear_fit(&depths, &act);
    let (static_slope, _) = linear_fit(&depths, &col("static_memory_bytes"));
    let (gradient_slope, _) = linear_fit(&depths, &col("gradient_memory_bytes"));
    let (peak_slope, _) = linear_fit(&depths, &col("peak_memory_bytes"));
    json!({
        "record": "summary",
        "figure": "qwen3-depth",
        "impl": IMPL_NAME,
        "model": model.label(),
        "head": a.head.label(),
        "precision": a.precision.label(),
        "batch": a.batch, "seq": a.seq,
        "depths": rows.iter().map(|(d, _)| *d).collect::<Vec<_>>(),
        "activation_bytes": act,
        "peak_memory_bytes": col("peak_memory_bytes"),
        "static_memory_bytes": col("static_memory_bytes"),
        "gradient_memory_bytes": col("gradient_memory_bytes"),
        "step_seconds": col("step_seconds"),
        "tokens_per_second": col("tokens_per_second"),
        "activation_slope_bytes_per_layer": slope,
        "activation_intercept_bytes": intercept,
        "static_slope_bytes_per_layer": static_slope,
        "gradient_slope_bytes_per_layer": gradient_slope,
        "peak_slope_bytes_per_layer": peak_slope,
        "memory_kind": pinned.memory_kind(),
        "device": pinned.spec.to_string(),
        "gpu_name": pinned.gpu_name,
    })
}

// ---------------------------------------------------------------------------------------
// Reversible Qwen3: gradient error of the reconstruction backward.

/// Settings of `qbench rev-grad-error`.
#[derive(Debug, Clone)]
pub struct RevGradErrorArgs {
    /// Layer counts to measure.
    pub depths: Vec<i64>,
    /// Width.
    pub shape: Qwen3Shape,
    /// Sequences per batch.
    pub batch: i64,
    /// Tokens per sequence (packed text, no padding).
    pub seq: i64,
    /// Precisions of the measured backwards (the reference is always fp64).
    pub precisions: Vec<Precision>,
    /// Data directory: `glue/SST-2/train.tsv` and `tokenizers/qwen`.
    pub data_dir: std::path::PathBuf,
    /// AdamW steps (fp32, reconstruction backward, on batches before the measured one)
    /// taken before measuring, so the weights are trained and not only at init.
    pub train_steps: usize,
    /// AdamW learning rate of those steps.
    pub lr: f64,
    /// AdamW weight decay of those steps.
    pub weight_decay: f64,
    /// Gradient-norm clip of those steps (0 = off).
    pub grad_clip: f64,
    /// Seed of the weights.
    pub seed: u64,
}

impl Default for RevGradErrorArgs {
    /// Qwen3-0.6B's shape, depths 2..28, 4 × 512 tokens of SST-2 text, fp32 and bf16.
    fn default() -> Self {
        RevGradErrorArgs {
            depths: vec![2, 4, 8, 12, 28],
            shape: Qwen3Shape::default(),
            batch: 4,
            seq: 512,
            precisions: vec![Precision::Fp32, Precision::Bf16],
            data_dir: std::path::PathBuf::from("data"),
            train_steps: 0,
            lr: 1e-4,
            weight_decay: 0.01,
            grad_clip: 1.0,
            seed: 0,
        }
    }
}

/// `count` next-token batches `[batch, seq]` of real text: SST-2 train sentences in file
/// order, each tokenised with the Qwen tokenizer (the trainer's loaders, unchanged) and
/// followed by `<|endoftext|>`, concatenated and cut into rows. Returns (ids, targets
/// `[B·T]` with −100 at each row's last position).
fn text_batches(a: &RevGradErrorArgs, count: usize, device: tch::Device) -> Result<Vec<(Tensor, Tensor)>> {
    use qsched_data::tokenize::{QWEN_ENDOFTEXT, TextTokenizer, TokenizerKind};
    use qsched_data::{Input, tasks};
    let tokenizer = TextTokenizer::from_data_dir(TokenizerKind::Qwen, &a.data_dir)?;
    tokenizer.check_model_vocab(a.shape.vocab as usize)?;
    let train = tasks::load_train(shared::TaskId::Sst2, &a.data_dir)?;
    let per_batch = (a.batch * a.seq) as usize;
    let needed = per_batch * count;
    let mut stream: Vec<i64> = Vec::with_capacity(needed + 64);
    for example in &train.examples {
        if stream.len() >= needed {
            break;
        }
        if let Input::Sentence { sentence } = &example.input {
            stream.extend(tokenizer.encode(sentence)?.into_iter().map(i64::from));
            stream.push(i64::from(QWEN_ENDOFTEXT));
        }
    }
    if stream.len() < needed {
        return Err(Error::NotEnoughText {
            path: train.path.clone(),
            message: format!(
                "{} tokens of text, {needed} needed for {count} batches of {} × {}",
                stream.len(),
                a.batch,
                a.seq
            ),
        });
    }
    stream
        .chunks_exact(per_batch)
        .take(count)
        .map(|chunk| {
            let ids = Tensor::f_from_slice(chunk)?.f_view([a.batch, a.seq])?.f_to_device(device)?;
            let ignore = Tensor::f_full([a.batch, 1], -100, (Kind::Int64, device))?;
            let targets = Tensor::f_cat(&[&ids.f_narrow(1, 1, a.seq - 1)?, &ignore], 1)?.f_view([-1])?;
            Ok((ids, targets))
        })
        .collect()
}

/// Detached copies of every parameter's gradient (zeros where none arrived).
fn grad_copies(params: &[(String, Tensor)]) -> Result<Vec<(String, Tensor)>> {
    params
        .iter()
        .map(|(n, t)| {
            let g = t.f_grad()?;
            let g = if g.defined() { g.f_detach_copy()? } else { t.f_zeros_like()? };
            Ok((n.clone(), g))
        })
        .collect()
}

fn clear_grads(params: &[(String, Tensor)]) -> Result<()> {
    for (_, t) in params {
        let mut g = t.f_grad()?;
        if g.defined() {
            let _ = g.f_zero_()?;
        }
    }
    Ok(())
}

/// One depth: optional training, the fp64 reference, then per precision plain autograd
/// and the reconstruction backward (the model's own `backward_by_reconstruction_checked`).
fn rev_grad_error_depth(pinned: &PinnedDevice, a: &RevGradErrorArgs, depth: i64) -> Result<Vec<Value>> {
    let device = pinned.device;
    let t0 = Instant::now();
    tch::manual_seed(torch_seed(a.seed));
    let cfg = qwen3_shape_config(&a.shape, depth, a.seq);
    let vs = nn::VarStore::new(device);
    let net = Net::RevQwen3Lm(rev_qwen3::RevQwen3ForCausalLM::new(&vs.root(), &cfg)?);
    let Net::RevQwen3Lm(model) = &net else {
        return Err(Error::Arguments("rev-grad-error measures the reversible Qwen3 LM".into()));
    };
    let params = net.named_parameters();
    let batches = text_batches(a, a.train_steps + 1, device)?;
    let (ids, targets) = &batches[a.train_steps];
    let mask = Tensor::f_ones([a.batch, a.seq], (Kind::Int64, device))?;

    // 1. Optional training in fp32: the trainer's step with the reconstruction backward.
    let mut train_losses = Vec::new();
    if a.train_steps > 0 {
        let settings = train_settings(a.lr, a.weight_decay, a.grad_clip, 0.0);
        let mut method = AdamWBackprop::new(&params, &settings);
        let stepper = Stepper { net: &net, settings: &settings, seed: a.seed, lr: a.lr, autocast: false };
        for (i, (ids, t)) in batches[..a.train_steps].iter().enumerate() {
            let batch = Batch::Lm(LmBatch {
                input_ids: ids.shallow_clone(),
                attention_mask: mask.shallow_clone(),
                targets: t.shallow_clone(),
                num_tokens: (a.batch * a.seq) as usize,
            });
            train_losses.push(stepper.run(&batch, i as u64, |ctx| method.step(ctx))?);
        }
    }
    clear_grads(&params)?;

    // 2. Reference: autograd through the same quantised network in fp64 (a copy of the
    //    weights; its gradients are kept, the copy is dropped).
    let (reference, loss_ref) = {
        let mut vs64 = nn::VarStore::new(device);
        let m64 = rev_qwen3::RevQwen3ForCausalLM::new(&vs64.root(), &cfg)?;
        vs64.copy(&vs)?;
        vs64.double();
        let loss = lm_loss(&m64.forward(ids, &mask)?, targets)?;
        loss.f_backward()?;
        (grad_copies(&m64.named_parameters())?, scalar(&loss)?)
    };

    // 3. Per precision: plain autograd and the reconstruction backward, same weights.
    let mut records = Vec::new();
    for &precision in &a.precisions {
        let autocast = precision == Precision::Bf16;
        clear_grads(&params)?;
        let loss_plain = tch::autocast(autocast, || -> Result<Tensor> {
            let loss = lm_loss(&model.forward(ids, &mask)?, targets)?;
            loss.f_backward()?;
            Ok(loss)
        })?;
        let plain = grad_copies(&params)?;
        clear_grads(&params)?;
        let (loss_rev, layers) = tch::autocast(autocast, || {
            model.backward_by_reconstruction_checked(ids, &mask, &mut |logits| Ok(lm_loss(logits, targets)?))
        })?;
        let rev = grad_copies(&params)?;
        clear_grads(&params)?;

        let plain_err = rev_qwen3::group_relative_errors(&plain, &reference)?;
        let rev_err = rev_qwen3::group_relative_errors(&rev, &reference)?;
        drop((plain, rev));
        let mut groups = Vec::with_capacity(rev_err.len());
        let mut worst_ratio: (f64, String) = (f64::NEG_INFINITY, String::new());
        for ((group, p), (_, r)) in plain_err.iter().zip(&rev_err) {
            let ratio = r / p.max(rev_qwen3::GROUP_NORM_FLOOR);
            if ratio > worst_ratio.0 {
                worst_ratio = (ratio, group.clone());
            }
            groups.push(json!({ "group": group, "reconstruction": r, "autograd": p, "ratio": ratio }));
        }
        let bit_identical = layers.iter().all(|l| l.bit_identical);
        let max_input_error = layers.iter().map(|l| l.x1_max_abs_error.max(l.x2_max_abs_error)).fold(0.0, f64::max);
        let record = json!({
            "record": "measurement",
            "figure": "rev-grad-error",
            "impl": IMPL_NAME,
            "model": "rev-qwen3",
            "head": "lm",
            "depth": depth,
            "hidden": a.shape.hidden, "heads": a.shape.heads, "kv_heads": a.shape.kv_heads,
            "head_dim": a.shape.head_dim, "intermediate": a.shape.intermediate, "vocab": a.shape.vocab,
            "batch": a.batch, "seq": a.seq,
            "precision": precision.label(),
            "reference": "fp64 autograd, same quantised network",
            "data": "SST-2 train sentences, qwen tokenizer, packed",
            "train_steps": a.train_steps,
            "train_losses": train_losses,
            "seed": a.seed,
            "loss_reference": loss_ref,
            "loss_autograd": scalar(&loss_plain)?,
            "loss_reconstruction": scalar(&loss_rev)?,
            "reconstruction_bit_identical": bit_identical,
            "reconstruction_max_input_error": max_input_error,
            "reconstruction_layers": layers.iter().map(|l| json!({
                "layer": l.layer, "bit_identical": l.bit_identical,
                "x1_max_abs_error": l.x1_max_abs_error, "x2_max_abs_error": l.x2_max_abs_error,
            })).collect::<Vec<_>>(),
            "worst_ratio": worst_ratio.0,
            "worst_ratio_group": worst_ratio.1,
            "group_norm_floor": rev_qwen3::GROUP_NORM_FLOOR,
            "groups": groups,
            "seconds": t0.elapsed().as_secs_f64(),
        });
        records.push(merge(record, device_fields(pinned)));
    }
    Ok(records)
}

/// `qbench rev-grad-error`: per depth and precision, the relative gradient error of the
/// reversible backward and of plain autograd, per parameter group, both against fp64
/// autograd through the same network; plus whether the reconstructed block inputs were
/// bit-identical. One record per (depth, precision); a failed depth is an error record.
pub fn run_rev_grad_error(pinned: &PinnedDevice, a: &RevGradErrorArgs, emit: &mut Emit<'_>) -> Result<Outcome> {
    if a.depths.is_empty() || a.depths.iter().any(|&d| d < 1) {
        return Err(Error::Arguments(format!("--depths must be positive layer counts, got {:?}", a.depths)));
    }
    if a.precisions.is_empty() {
        return Err(Error::Arguments("--precisions is empty".into()));
    }
    if a.seq < 2 || a.batch < 1 {
        return Err(Error::Arguments(format!("--batch {} --seq {}: need batch ≥ 1, seq ≥ 2", a.batch, a.seq)));
    }
    if a.precisions.contains(&Precision::Bf16) {
        // Errors on CPU (tch's autocast would silently do nothing there).
        pinned.set_autocast_bf16()?;
    }
    let mut outcome = Outcome::default();
    for &depth in &a.depths {
        tracing::info!(depth, "rev-grad-error measurement");
        let context = json!({
            "figure": "rev-grad-error", "impl": IMPL_NAME, "model": "rev-qwen3", "depth": depth,
            "batch": a.batch, "seq": a.seq, "device": pinned.spec.to_string(),
        });
        // `guarded` turns an error or panic into an error record; it reports through a
        // local sink because one depth yields one record per precision.
        let mut records = Vec::new();
        let mut reported = Vec::new();
        let mut sink = |v: &Value| -> Result<()> {
            reported.push(v.clone());
            Ok(())
        };
        let ok = guarded(pinned, context, &mut sink, &mut outcome, || {
            records = rev_grad_error_depth(pinned, a, depth)?;
            Ok(json!({}))
        })?;
        if ok.is_some() {
            outcome.measured += records.len().saturating_sub(1);
        } else {
            records = reported;
        }
        for r in &records {
            emit(r)?;
        }
    }
    Ok(outcome)
}

// ---------------------------------------------------------------------------------------
// Figure 2: zeroth-order OPT (inference, MeZO, DiZO, FT).

/// A synthetic prompt-format batch: `batch` examples × `candidates` rows of exactly
/// `seq` tokens (BOS 0, a random prompt shared by an example's candidates, then
/// `option_len` random option tokens per candidate); random gold candidate. No padding.
fn candidate_batch(a: &ZoOptArgs, seed: u64, device: tch::Device) -> Result<Batch> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (t, k) = (a.seq as usize, a.option_len as usize);
    let vocab = a.vocab as u32;
    let examples: Vec<CandidateExample> = (0..a.batch)
        .map(|_| {
            let mut prompt = vec![0u32];
            prompt.extend((0..t - 1 - k).map(|_| rng.random_range(3..vocab)));
            let candidates = (0..a.candidates)
                .map(|_| {
                    let mut ids = prompt.clone();
                    ids.extend((0..k).map(|_| rng.random_range(3..vocab)));
                    Candidate { ids, option_len: k }
                })
                .collect();
            CandidateExample { candidates, gold: rng.random_range(0..a.candidates as usize), truncated: false }
        })
        .collect();
    let refs: Vec<&CandidateExample> = examples.iter().collect();
    Ok(Batch::Candidates(collate_candidates(&refs, CandidateRows::All, 1, device)?))
}

fn opt_config(a: &ZoOptArgs) -> opt::Config {
    opt::Config {
        vocab_size: a.vocab,
        hidden_size: a.hidden,
        ffn_dim: a.ffn,
        num_hidden_layers: a.layers,
        num_attention_heads: a.heads,
        max_position_embeddings: a.seq.max(2048),
        word_embed_proj_dim: a.hidden,
        do_layer_norm_before: true,
        dropout: 0.1,
        attention_dropout: 0.0,
        init_std: 0.02,
        pad_token_id: Some(1),
        bos_token_id: Some(2),
        eos_token_id: Some(qsched_models::TokenIds::One(2)),
    }
}

/// A method of the zeroth-order figure with its state (none for `inference`).
#[derive(Debug)]
enum ZoState {
    Inference,
    Mezo(Mezo),
    Dizo(Dizo),
    Ft(AdamWBackprop),
}

impl ZoState {
    fn state_tensors(&self) -> Vec<(String, &Tensor)> {
        match self {
            ZoState::Inference => Vec::new(),
            ZoState::Mezo(m) => m.state_tensors(),
            ZoState::Dizo(d) => d.state_tensors(),
            ZoState::Ft(o) => o.state_tensors(),
        }
    }
}

fn zo_measurement(pinned: &PinnedDevice, a: &ZoOptArgs, method: ZoMethod, inference: Option<&Value>) -> Result<Value> {
    let device = pinned.device;
    let autocast = a.precision == Precision::Bf16;
    let t_setup = Instant::now();
    // 1. Model (fp16 storage when asked), method state, batches; placement audit.
    tch::manual_seed(torch_seed(a.seed));
    let mut vs = nn::VarStore::new(device);
    let net = Net::Opt(opt::OptForCausalLM::new(&vs.root(), &opt_config(a))?);
    if a.weights == Weights::Fp16 {
        vs.half();
    }
    let params = net.named_parameters();
    let n_batches = a.warmup + a.steps;
    let batches = (0..n_batches).map(|i| candidate_batch(a, a.seed + i as u64, device)).collect::<Result<Vec<_>>>()?;
    // MeZO and DiZO: no weight decay, as the MeZO reference runs OPT.
    let (settings, lr) = match method {
        ZoMethod::Ft => (train_settings(a.ft_lr, a.ft_weight_decay, a.grad_clip, 0.0), a.ft_lr),
        _ => (train_settings(a.zo_lr, 0.0, 0.0, a.zo_eps), a.zo_lr),
    };
    let mut state = match method {
        ZoMethod::Inference => ZoState::Inference,
        ZoMethod::Mezo => ZoState::Mezo(Mezo::new(&params)),
        ZoMethod::Dizo => ZoState::Dizo(Dizo::new(&params, a.dizo.clone())?),
        ZoMethod::Ft => ZoState::Ft(AdamWBackprop::new(&params, &settings)),
    };
    let j = a.dizo.inner_iters as usize;
    let round_batches = match method {
        ZoMethod::Dizo => {
            (0..j).map(|i| candidate_batch(a, a.seed + 1_000_000 + i as u64, device)).collect::<Result<Vec<_>>>()?
        }
        _ => Vec::new(),
    };
    {
        let mut tensors: Vec<(String, &Tensor)> = params.iter().map(|(n, t)| (n.clone(), t)).collect();
        tensors.extend(state.state_tensors());
        tensors.extend(batches[0].tensors().into_iter().map(|(n, t)| (n.to_owned(), t)));
        audit::ensure_on_device(device, tensors.iter().map(|(n, t)| (n.as_str(), *t)))?;
    }
    // The trainer's steps: MeZO's SPSA and seeded update (DiZO's MeZO step, with its
    // anchors alive; its rounds are timed apart below), AdamW's first-order step for ft.
    let stepper = Stepper { net: &net, settings: &settings, seed: a.seed, lr, autocast };
    let mut step_fn = |i: usize| -> Result<f64> {
        let (b, index) = (&batches[i], i as u64);
        match &mut state {
            ZoState::Inference => Ok(forward_loss(&net, b, autocast)?),
            ZoState::Mezo(m) => stepper.run(b, index, |ctx| m.step(ctx)),
            ZoState::Dizo(d) => stepper.run(b, index, |ctx| d.mezo_step(ctx)),
            ZoState::Ft(o) => stepper.run(b, index, |ctx| o.step(ctx)),
        }
    };
    // 2. Warm-up.
    for i in 0..a.warmup {
        step_fn(i)?;
    }
    // ft: release the warm-up's gradients so the static memory holds none (each step
    // releases them first thing, as the trainer's AdamW does).
    qsched_models::ffi::release_grads(&params.iter().map(|(_, t)| t).collect::<Vec<_>>())?;
    let setup_seconds = t_setup.elapsed().as_secs_f64();
    // 3–4. Timed window (steps warmup..warmup+steps use their own batches).
    let w = timed(pinned, a.steps, &mut |i| step_fn(a.warmup + i))?;

    let rows = a.batch * a.candidates;
    let tokens = rows * a.seq;
    let mut record = merge(
        json!({
            "record": "measurement",
            "figure": "zo-opt",
            "impl": IMPL_NAME,
            "method": method.label(),
            "hidden": a.hidden, "layers": a.layers, "heads": a.heads, "ffn": a.ffn, "vocab": a.vocab,
            "batch": a.batch, "candidates": a.candidates, "rows": rows, "seq": a.seq, "option_len": a.option_len,
            "tokens_per_step": tokens,
            "precision": a.precision.label(), "weights": a.weights.label(),
            "steps": a.steps, "warmup": a.warmup,
            "parameters": numel_of(&params),
            "param_bytes": bytes_of(&params),
            "setup_seconds": setup_seconds,
        }),
        window_fields(&w, tokens),
    );
    let extra = match method {
        ZoMethod::Inference => json!({ "forward_passes_per_step": 1, "loss": "option-score candidate CE, no_grad" }),
        ZoMethod::Mezo => json!({ "forward_passes_per_step": 2, "zo_lr": a.zo_lr, "zo_eps": a.zo_eps }),
        ZoMethod::Ft => json!({
            "forward_passes_per_step": 1, "backward": "autograd", "lr": a.ft_lr, "grad_clip": a.grad_clip,
            "grad_bytes": bytes_of(&params),
            "optimizer_state_bytes": 2 * bytes_of(&params) + 4 * params.len() as u64,
        }),
        ZoMethod::Dizo => {
            let ZoState::Dizo(d) = &state else {
                return Err(Error::Measurement("dizo without state".into()));
            };
            // The round is only real if the weights have moved from their anchors.
            if d.projection().divergences()?.iter().all(|&n| n == 0.0) {
                return Err(Error::Measurement(
                    "no projected tensor moved from its anchor after the MeZO steps: the projection round would be a no-op".into(),
                ));
            }
            // DiZO's own round (batch numbers and u seeds (round − 1)·J + j), fed the
            // pre-made round batches: number i is batch i mod J.
            let mut round_source =
                |i: u64| -> qsched_methods::Result<Batch> { Ok(round_batches[i as usize % j].shallow_clone()) };
            let interval = u64::from(a.dizo.interval.max(1));
            let mut round = 0u64;
            let rw = timed(pinned, a.dizo_rounds.max(1), &mut |_| {
                round += 1;
                let mut ctx = StepContext {
                    net: &net,
                    batch: &round_batches[0],
                    seed: a.seed,
                    step: round * interval - 1,
                    lr,
                    autocast,
                    train: &settings,
                    dizo_batches: &mut round_source,
                };
                Ok(d.round(&mut ctx, round)?.mean_ratio())
            })?;
            let kappa = f64::from(a.dizo.interval.max(1));
            let mezo_step_seconds = median(&w.seconds);
            let round_seconds = median(&rw.seconds);
            let amortized = mezo_step_seconds + round_seconds / kappa;
            let peak = w.peak.max(rw.peak);
            let anchor_bytes: u64 = d
                .projection()
                .anchor_tensors()
                .iter()
                .map(|(_, t)| t.numel() as u64 * t.kind().elt_size_in_bytes() as u64)
                .sum();
            json!({
                "forward_passes_per_step": 2.0 + 2.0 * f64::from(a.dizo.inner_iters) / kappa,
                "zo_lr": a.zo_lr, "zo_eps": a.zo_eps,
                "dizo_interval": a.dizo.interval, "dizo_inner_iters": a.dizo.inner_iters, "dizo_anchors_on_host": a.dizo.anchors_on_host,
                "mezo_step_seconds": mezo_step_seconds,
                "mezo_step_seconds_all": w.seconds,
                "mezo_peak_memory_bytes": w.peak,
                "projection_round_seconds": round_seconds,
                "projection_round_seconds_all": rw.seconds,
                "projection_round_peak_memory_bytes": rw.peak,
                "projection_round_mean_ratio": rw.losses.last(),
                "anchor_bytes": anchor_bytes,
                "step_seconds": amortized,
                "step_seconds_min": null,
                "step_seconds_all": null,
                "step_seconds_definition": "median MeZO step (with anchors) + median projection round / dizo_interval",
                "tokens_per_second": tokens as f64 / amortized,
                "peak_memory_bytes": peak,
                "activation_bytes": peak as i64 - w.static_bytes as i64,
                "peak_reserved_bytes": match (w.peak_reserved, rw.peak_reserved) {
                    (Some(x), Some(y)) => Some(x.max(y)),
                    _ => None,
                },
            })
        }
    };
    record = merge(record, extra);
    if let Some(inf) = inference {
        let ratio = |k: &str| match (record[k].as_f64(), inf[k].as_f64()) {
            (Some(x), Some(y)) if y > 0.0 => Some(x / y),
            _ => None,
        };
        let extra = json!({
            "peak_ratio_to_inference": ratio("peak_memory_bytes"),
            "step_ratio_to_inference": ratio("step_seconds"),
        });
        record = merge(record, extra);
    }
    Ok(merge(record, device_fields(pinned)))
}

/// The zeroth-order OPT figure: each method on a freshly built model (so each has its
/// own static memory), `inference` first; other methods carry their ratio to it.
pub fn run_zo_opt(pinned: &PinnedDevice, a: &ZoOptArgs, emit: &mut Emit<'_>) -> Result<Outcome> {
    check_common(pinned, a.precision, a.steps, a.warmup)?;
    if a.methods.is_empty() {
        return Err(Error::Arguments("--methods is empty".into()));
    }
    if a.weights == Weights::Fp16 && a.precision == Precision::Bf16 {
        return Err(Error::Arguments(
            "bf16 autocast runs on fp32 weights; use --weights fp32 with --precision bf16".into(),
        ));
    }
    if a.weights == Weights::Fp16 && a.methods.contains(&ZoMethod::Ft) {
        return Err(Error::Arguments(
            "ft with fp16 weights has no fp32 master copy (AdamW would update fp16 in place); measure ft with --weights fp32".into(),
        ));
    }
    if a.candidates < 1 || a.option_len < 1 || a.seq < a.option_len + 2 || a.batch < 1 {
        return Err(Error::Arguments(format!(
            "need batch ≥ 1, candidates ≥ 1, option_len ≥ 1 and seq ≥ option_len + 2 (got batch {}, candidates {}, option_len {}, seq {})",
            a.batch, a.candidates, a.option_len, a.seq
        )));
    }
    if a.methods.contains(&ZoMethod::Dizo) && a.dizo.inner_iters == 0 {
        return Err(Error::Arguments("dizo needs --dizo-inner-iters ≥ 1".into()));
    }
    let mut methods = a.methods.clone();
    methods.sort_by_key(|m| *m != ZoMethod::Inference);
    methods.dedup();
    let mut outcome = Outcome::default();
    let mut inference: Option<Value> = None;
    for method in methods {
        tracing::info!(method = method.label(), "zo-opt measurement");
        let context = json!({
            "figure": "zo-opt", "impl": IMPL_NAME, "method": method.label(), "batch": a.batch, "seq": a.seq,
            "precision": a.precision.label(), "weights": a.weights.label(), "device": pinned.spec.to_string(),
        });
        let r = guarded(pinned, context, emit, &mut outcome, || zo_measurement(pinned, a, method, inference.as_ref()))?;
        if method == ZoMethod::Inference {
            inference = r;
        }
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu() -> PinnedDevice {
        qsched_models::device::pin(DeviceSpec::Cpu).unwrap()
    }

    fn collect(f: impl FnOnce(&mut Emit<'_>) -> Result<Outcome>) -> (Outcome, Vec<Value>) {
        let mut records = Vec::new();
        let outcome = f(&mut |v: &Value| {
            records.push(v.clone());
            Ok(())
        })
        .unwrap();
        (outcome, records)
    }

    fn positive(r: &Value, k: &str) -> f64 {
        let v = r[k].as_f64().unwrap_or_else(|| panic!("{k} missing in {r}"));
        assert!(v.is_finite() && v > 0.0, "{k} = {v} in {r}");
        v
    }

    fn tiny_qwen(head: Head) -> Qwen3DepthArgs {
        Qwen3DepthArgs {
            depths: vec![1, 2],
            hidden: 32,
            heads: 4,
            kv_heads: 2,
            head_dim: 8,
            intermediate: 48,
            vocab: 128,
            batch: 2,
            seq: 16,
            steps: 2,
            warmup: 1,
            head,
            ..Qwen3DepthArgs::default()
        }
    }

    #[test]
    fn qwen3_depth_reports_memory_and_time_for_every_model_and_head() {
        // Weights and batches come from libtorch's global generator: hold the guard so
        // tests running in parallel cannot reseed it between the models compared below.
        let _rng = qsched_models::test_util::rng_guard();
        let pinned = cpu();
        for head in [Head::Cls, Head::Lm] {
            let a = Qwen3DepthArgs {
                models: vec![QwenModel::Qwen3, QwenModel::Qwen3Ckpt, QwenModel::RevQwen3],
                ..tiny_qwen(head)
            };
            let (outcome, records) = collect(|emit| run_qwen3_depth(&pinned, &a, emit));
            assert_eq!(outcome, Outcome { measured: 6, failed: 0 });
            let measurements: Vec<&Value> = records.iter().filter(|r| r["record"] == "measurement").collect();
            assert_eq!(measurements.len(), 6);
            for r in &measurements {
                for k in [
                    "step_seconds",
                    "tokens_per_second",
                    "peak_memory_bytes",
                    "static_memory_bytes",
                    "parameters",
                    "loss_last",
                ] {
                    positive(r, k);
                }
                let (peak, stat) =
                    (r["peak_memory_bytes"].as_u64().unwrap(), r["static_memory_bytes"].as_u64().unwrap());
                // On CPU both figures are the whole process's RSS, which other tests running
                // in parallel grow and shrink between the two readings; only the allocator
                // counters of a CUDA device are exact enough to order them.
                if r["memory_kind"] == "cuda_allocated_peak" {
                    assert!(peak >= stat, "{r}");
                }
                let gradient = r["gradient_memory_bytes"].as_i64().unwrap();
                assert_eq!(r["activation_bytes"].as_i64().unwrap(), peak as i64 - stat as i64 - gradient);
                assert_eq!(r["zero_grad"], "set_to_none");
                assert_eq!(r["step_seconds_all"].as_array().unwrap().len(), 2);
                assert_eq!(r["head"], head.label());
            }
            let rev: Vec<&&Value> = measurements.iter().filter(|r| r["model"] == "rev-qwen3").collect();
            assert_eq!(rev.len(), 2);
            assert!(rev.iter().all(|r| r["backward"] == "reconstruction"));
            let ckpt: Vec<&&Value> = measurements.iter().filter(|r| r["model"] == "qwen3-ckpt").collect();
            assert_eq!(ckpt.len(), 2);
            assert!(ckpt.iter().all(|r| r["backward"].as_str().unwrap().starts_with("checkpointed")));
            // Same weights, same batches, same network: the checkpointed step's losses are
            // plain Qwen3's (the first timed loss comes before any update could differ by
            // more than rounding).
            for d in [1, 2] {
                let loss = |m: &str| {
                    measurements.iter().find(|r| r["model"] == m && r["depth"] == d).unwrap()["loss_first"]
                        .as_f64()
                        .unwrap()
                };
                let (p, c) = (loss("qwen3"), loss("qwen3-ckpt"));
                assert!((p - c).abs() <= 1e-5 * p.abs(), "depth {d}: qwen3 {p} vs qwen3-ckpt {c}");
            }
            // Same weights shape: both models have the same parameter count at a depth.
            let count = |m: &str, d: i64| {
                measurements.iter().find(|r| r["model"] == m && r["depth"] == d).unwrap()["parameters"]
                    .as_u64()
                    .unwrap()
            };
            assert_eq!(count("qwen3", 2), count("rev-qwen3", 2));
            assert_eq!(count("qwen3", 2), count("qwen3-ckpt", 2));
            assert!(count("qwen3", 2) > count("qwen3", 1));
            let summaries: Vec<&Value> = records.iter().filter(|r| r["record"] == "summary").collect();
            assert_eq!(summaries.len(), 3);
            for s in summaries {
                assert!(s["activation_slope_bytes_per_layer"].as_f64().unwrap().is_finite());
                assert_eq!(s["gradient_memory_bytes"].as_array().unwrap().len(), 2);
                assert_eq!(s["depths"], json!([1, 2]));
            }
        }
    }

    #[test]
    fn zo_opt_reports_every_method_with_ratios_to_inference() {
        let pinned = cpu();
        let a = ZoOptArgs {
            hidden: 32,
            layers: 2,
            heads: 4,
            ffn: 64,
            vocab: 128,
            batch: 2,
            seq: 16,
            steps: 2,
            warmup: 1,
            // Listed out of order: inference still runs first.
            methods: vec![ZoMethod::Mezo, ZoMethod::Ft, ZoMethod::Inference, ZoMethod::Dizo],
            zo_lr: 1e-3,
            dizo: DizoSettings { interval: 5, inner_iters: 2, ..ZoOptArgs::default().dizo },
            ..ZoOptArgs::default()
        };
        let (outcome, records) = collect(|emit| run_zo_opt(&pinned, &a, emit));
        assert_eq!(outcome, Outcome { measured: 4, failed: 0 }, "{records:?}");
        assert_eq!(records[0]["method"], "inference");
        for r in &records {
            for k in ["step_seconds", "tokens_per_second", "peak_memory_bytes", "static_memory_bytes", "parameters"] {
                positive(r, k);
            }
            assert_eq!(r["rows"], 4);
            assert_eq!(r["tokens_per_step"], 64);
            if r["method"] != "inference" {
                positive(r, "peak_ratio_to_inference");
                positive(r, "step_ratio_to_inference");
            }
        }
        let dizo = records.iter().find(|r| r["method"] == "dizo").unwrap();
        positive(dizo, "projection_round_seconds");
        positive(dizo, "anchor_bytes");
        let expected = positive(dizo, "mezo_step_seconds") + positive(dizo, "projection_round_seconds") / 5.0;
        assert!((positive(dizo, "step_seconds") - expected).abs() < 1e-12);
    }

    /// Tiny width at the real vocabulary (the Qwen tokenizer's ids need it), on the
    /// shared SST-2 data: one record per (depth, precision), every group reported, the
    /// reconstruction bit-identical, the reversible error at autograd's level.
    #[test]
    fn rev_grad_error_reports_every_group_against_fp64() {
        let _rng = qsched_models::test_util::rng_guard();
        let pinned = cpu();
        let a = RevGradErrorArgs {
            depths: vec![1, 3],
            shape: Qwen3Shape { hidden: 16, heads: 2, kv_heads: 1, head_dim: 8, intermediate: 32, vocab: 151_936 },
            batch: 2,
            seq: 12,
            precisions: vec![Precision::Fp32],
            data_dir: qsched_data::test_util::data_dir(),
            train_steps: 1,
            ..RevGradErrorArgs::default()
        };
        let (outcome, records) = collect(|emit| run_rev_grad_error(&pinned, &a, emit));
        assert_eq!(outcome, Outcome { measured: 2, failed: 0 }, "{records:?}");
        for (r, depth) in records.iter().zip([1, 3]) {
            assert_eq!(r["depth"], depth);
            assert_eq!(r["reconstruction_bit_identical"], true, "{r}");
            assert_eq!(r["train_losses"].as_array().unwrap().len(), 1);
            let groups = r["groups"].as_array().unwrap();
            assert_eq!(groups.len(), 2 + 3 * depth as usize, "{r}");
            assert_eq!(groups[0]["group"], "embedding");
            assert_eq!(groups[groups.len() - 1]["group"], "head");
            for g in groups {
                let (rev, plain) = (g["reconstruction"].as_f64().unwrap(), g["autograd"].as_f64().unwrap());
                assert!(plain > 0.0 && plain < 1e-4 && rev < 1e-4, "{g}");
            }
        }
        let a = RevGradErrorArgs { precisions: vec![Precision::Bf16], ..a };
        assert!(run_rev_grad_error(&pinned, &a, &mut |_| Ok(())).is_err(), "bf16 on CPU");
    }

    #[test]
    fn refusals_are_errors_not_fallbacks() {
        let pinned = cpu();
        let mut sink = |_: &Value| -> Result<()> { Ok(()) };
        let a = Qwen3DepthArgs { precision: Precision::Bf16, ..tiny_qwen(Head::Cls) };
        assert!(run_qwen3_depth(&pinned, &a, &mut sink).is_err(), "bf16 on CPU");
        let a = Qwen3DepthArgs { warmup: 0, ..tiny_qwen(Head::Cls) };
        assert!(run_qwen3_depth(&pinned, &a, &mut sink).is_err(), "no warm-up");
        let a = ZoOptArgs { weights: Weights::Fp16, methods: vec![ZoMethod::Ft], ..ZoOptArgs::default() };
        assert!(run_zo_opt(&pinned, &a, &mut sink).is_err(), "ft on fp16 weights");
    }

    #[test]
    fn median_and_fit() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        let (s, i) = linear_fit(&[2.0, 4.0, 8.0], &[5.0, 9.0, 17.0]);
        assert!((s - 2.0).abs() < 1e-12 && (i - 1.0).abs() < 1e-12);
    }
}
