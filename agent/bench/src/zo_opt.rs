//! The zeroth-order OPT figure (`qbench zo-opt`): memory and step time of MeZO, DiZO,
//! AdamW fine-tuning and inference, through the trainer's method types.

use super::*;

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
