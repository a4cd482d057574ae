//! The reversible gradient-error figure (`qbench rev-grad-error`): the reconstruction's
//! gradients against fp64 autograd, per depth and precision.

use super::*;
use crate::qwen3_depth::qwen3_shape_config;

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
