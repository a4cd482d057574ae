//! The Qwen3 depth sweep (`qbench qwen3-depth`): peak memory and step time of qwen3,
//! qwen3-ckpt and rev-qwen3 over depth, through the trainer's AdamW step.

use super::*;

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

pub(crate) fn qwen3_shape_config(s: &Qwen3Shape, depth: i64, seq: i64) -> qwen3::Config {
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
