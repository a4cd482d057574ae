//! Reversible Qwen3: the Qwen3 blocks in a two-stream additive coupling (RevNet,
//! Gomez et al. 2017, "The Reversible Residual Network"; Reformer's reversible layers),
//! trained with backpropagation by reconstruction so activation memory is flat in depth.
//!
//! Per layer, with `F = Attn ∘ RMSNorm_attn` and `G = MLP ∘ RMSNorm_mlp` (the two
//! residual branches of `qwen3::DecoderLayer`, reused, not copied):
//!
//! ```text
//! x1 = x2 = embed(ids)
//! y1 = x1 + F(x2)          x2 = y2 − G(y1)      (inverse)
//! y2 = x2 + G(y1)          x1 = y1 − F(x2)
//! hidden = RMSNorm((y1 + y2) / 2)  → LM head or last-non-pad classification head
//! ```
//!
//! This module owns the coupling, the two heads and the reconstruction backward. Block
//! code, config and state-dict names are Qwen3's (`model.layers.{i}.self_attn…`,
//! `input_layernorm`, `post_attention_layernorm`, `mlp…`, `model.norm`), so a Qwen3
//! checkpoint can initialise it. It is not an HF architecture: saved checkpoints carry
//! `model_type = "rev_qwen3"` so transformers refuses them rather than loading them as
//! plain Qwen3.

use tch::{Tensor, nn};

use super::common::{CheckedInputs, Linear, ensure};
use super::qwen3::{self, Config, LayerInputs, Qwen3Model};
use crate::{Error, Result};

/// The two-stream backbone shared by both heads.
#[derive(Debug)]
struct RevQwen3Model {
    inner: Qwen3Model,
}

impl RevQwen3Model {
    /// Runs the coupled layers from `(x1, x2)` in the current grad mode → `(y1, y2)`.
    fn streams(&self, h: &Tensor, li: &LayerInputs) -> Result<(Tensor, Tensor)> {
        let (mut x1, mut x2) = (h.shallow_clone(), h.shallow_clone());
        for layer in &self.inner.layers {
            let y1 = x1.f_add(&layer.attn_branch(&x2, li)?)?;
            let y2 = x2.f_add(&layer.mlp_branch(&y1)?)?;
            (x1, x2) = (y1, y2);
        }
        Ok((x1, x2))
    }

    /// `RMSNorm((y1 + y2) / 2)`.
    fn merge(&self, y1: &Tensor, y2: &Tensor) -> Result<Tensor> {
        self.inner.norm.forward(&y1.f_add(y2)?.f_div_scalar(2.0)?)
    }

    /// Ordinary autograd forward → final hidden states `[B, T, hidden]`.
    fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<(Tensor, CheckedInputs)> {
        // 1. Checks, shared mask and RoPE tables.
        let (inputs, li) = self.inner.prepare(ids, mask)?;
        // 2. Embed [B, T, hidden], duplicate into both streams, run the coupled layers.
        let h = self.inner.embed(&inputs.ids)?;
        let (y1, y2) = self.streams(&h, &li)?;
        // 3. Merge the streams and normalise.
        Ok((self.merge(&y1, &y2)?, inputs))
    }

    /// Backprop by reconstruction; `head` maps hidden states to logits.
    fn backward_by_reconstruction(
        &self,
        ids: &Tensor,
        mask: &Tensor,
        head: &dyn Fn(&Tensor, &CheckedInputs) -> Result<Tensor>,
        loss_fn: &mut dyn FnMut(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        // 1. Shared inputs (mask, RoPE tables) once for the forward and every block's
        //    recomputation.
        let (inputs, li) = self.inner.prepare(ids, mask)?;

        // 2. Forward without a graph; keep only the final streams.
        let (mut y1, mut y2) = tch::no_grad(|| -> Result<(Tensor, Tensor)> {
            let h = self.inner.embed(&inputs.ids)?;
            self.streams(&h, &li)
        })?;
        // Under autocast the forward cached a low-precision copy of every layer's
        // weights; drop them so the backward holds one block's copies at a time.
        crate::ffi::autocast_clear_cache();

        // 3. Head and loss with grad, on detached leaves: parameter gradients of the norm
        //    and head accumulate, and the leaves receive dL/dy1, dL/dy2.
        let leaf1 = y1.f_detach()?.f_set_requires_grad(true)?;
        let leaf2 = y2.f_detach()?.f_set_requires_grad(true)?;
        let loss = tch::with_grad(|| -> Result<Tensor> {
            let hidden = self.merge(&leaf1, &leaf2)?;
            loss_fn(&head(&hidden, &inputs)?)
        })?;
        if loss.numel() != 1 {
            return Err(Error::Unsupported(format!("loss_fn must return a scalar, got shape {:?}", loss.size())));
        }
        loss.f_backward()?;
        let mut g1 = grad_or_zeros(&leaf1)?;
        let mut g2 = grad_or_zeros(&leaf2)?;
        drop((leaf1, leaf2));

        // 4. Blocks in reverse. Each re-runs one branch with grad on a detached input,
        //    reconstructs the block input from that output, and backpropagates the
        //    incoming gradient as a vector–Jacobian product (surrogate (out·g).sum()).
        //    Only one branch's graph is alive at a time.
        for layer in self.inner.layers.iter().rev() {
            // 4a. G: y2 = x2 + G(y1)  ⇒  x2 = y2 − G(y1);  dL/dy1 += J_Gᵀ · dL/dy2.
            let y1_leaf = y1.f_detach()?.f_set_requires_grad(true)?;
            let g_out = tch::with_grad(|| layer.mlp_branch(&y1_leaf))?;
            let x2 = tch::no_grad(|| y2.f_sub(&g_out.f_detach()?))?;
            vjp(&g_out, &g2)?;
            let g1_total = g1.f_add(&grad_or_zeros(&y1_leaf)?)?;
            drop((g_out, y1_leaf, y2));

            // 4b. F: y1 = x1 + F(x2)  ⇒  x1 = y1 − F(x2);  dL/dx2 = dL/dy2 + J_Fᵀ · dL/dy1.
            let x2_leaf = x2.f_detach()?.f_set_requires_grad(true)?;
            let f_out = tch::with_grad(|| layer.attn_branch(&x2_leaf, &li))?;
            let x1 = tch::no_grad(|| y1.f_sub(&f_out.f_detach()?))?;
            vjp(&f_out, &g1_total)?;
            g2 = g2.f_add(&grad_or_zeros(&x2_leaf)?)?;
            g1 = g1_total;
            (y1, y2) = (x1, x2);
            crate::ffi::autocast_clear_cache();
        }

        // 5. Both streams started as the embedding: dL/dh = dL/dx1 + dL/dx2.
        let emb = tch::with_grad(|| self.inner.embed(&inputs.ids))?;
        vjp(&emb, &g1.f_add(&g2)?)?;
        Ok(loss.f_detach()?)
    }
}

/// Accumulates `Jᵀ·grad` into every leaf `out` depends on, by backpropagating the
/// surrogate `(out · grad).sum()` (tch's `run_backward` takes no output gradients).
fn vjp(out: &Tensor, grad: &Tensor) -> Result<()> {
    let surrogate = tch::with_grad(|| out.f_mul(grad)?.f_sum(None::<tch::Kind>))?;
    Ok(surrogate.f_backward()?)
}

/// The gradient a leaf received, or zeros if the loss did not depend on it.
fn grad_or_zeros(leaf: &Tensor) -> Result<Tensor> {
    let g = leaf.f_grad()?;
    if g.defined() { Ok(g.f_detach()?) } else { Ok(leaf.f_zeros_like()?) }
}

/// Reversible Qwen3 with a language-model head (tied or untied, as the config says).
#[derive(Debug)]
pub struct RevQwen3ForCausalLM {
    model: RevQwen3Model,
    lm_head: Option<Linear>,
}

impl RevQwen3ForCausalLM {
    /// Registers `model.*` and (untied) `lm_head.weight` under `p`, with Qwen3's names
    /// and initialisation.
    pub fn new(p: &nn::Path, cfg: &Config) -> Result<Self> {
        let inner = Qwen3Model::new(&(p / "model"), cfg)?;
        Ok(RevQwen3ForCausalLM { model: RevQwen3Model { inner }, lm_head: qwen3::lm_head(p, cfg)? })
    }

    /// The resolved config.
    pub fn config(&self) -> &Config {
        &self.model.inner.cfg
    }

    fn head(&self, hidden: &Tensor, _inputs: &CheckedInputs) -> Result<Tensor> {
        qwen3::lm_logits(hidden, &self.model.inner.embed_tokens, self.lm_head.as_ref())
    }

    /// Ordinary autograd forward: `[B, T]` ids and mask → logits `[B, T, vocab]`.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let (hidden, inputs) = self.model.forward(input_ids, attention_mask)?;
        self.head(&hidden, &inputs)
    }

    /// Training step by reconstruction: computes `loss = loss_fn(logits)` and
    /// accumulates into every trainable variable's `.grad()` what `loss.backward()`
    /// would, keeping one block's graph at a time. Returns the detached loss.
    pub fn backward_by_reconstruction(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        loss_fn: &mut dyn FnMut(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        self.model.backward_by_reconstruction(input_ids, attention_mask, &|h, i| self.head(h, i), loss_fn)
    }

    /// Trainable tensors with Qwen3's HF names, in Qwen3's order.
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        self.model.inner.push_params("model", &mut out);
        if let Some(head) = &self.lm_head {
            head.push_params("lm_head", &mut out);
        }
        out
    }
}

/// Reversible Qwen3 with the sequence-classification head: `score` on the last non-pad
/// token (HF's rule); `num_labels = 1` is regression.
#[derive(Debug)]
pub struct RevQwen3ForSequenceClassification {
    model: RevQwen3Model,
    score: Linear,
    num_labels: i64,
    pad_token_id: i64,
}

impl RevQwen3ForSequenceClassification {
    /// As `Qwen3ForSequenceClassification::new`: the backbone's config carries
    /// `pad_token_id` (embedding `padding_idx`), and pooling uses it.
    pub fn new(p: &nn::Path, cfg: &Config, num_labels: i64, pad_token_id: i64) -> Result<Self> {
        ensure(num_labels >= 1, "num_labels", format!("must be at least 1, got {num_labels}"))?;
        let mut cfg = cfg.clone();
        cfg.pad_token_id = Some(pad_token_id);
        let inner = Qwen3Model::new(&(p / "model"), &cfg)?;
        let score = qwen3::score_head(p, &cfg, num_labels)?;
        Ok(RevQwen3ForSequenceClassification { model: RevQwen3Model { inner }, score, num_labels, pad_token_id })
    }

    /// The resolved config (with `pad_token_id` set).
    pub fn config(&self) -> &Config {
        &self.model.inner.cfg
    }

    /// Number of outputs (1 = regression).
    pub fn num_labels(&self) -> i64 {
        self.num_labels
    }

    /// The id whose positions are skipped when pooling.
    pub fn pad_token_id(&self) -> i64 {
        self.pad_token_id
    }

    fn head(&self, hidden: &Tensor, inputs: &CheckedInputs) -> Result<Tensor> {
        qwen3::classify(hidden, &inputs.ids, self.pad_token_id, &self.score)
    }

    /// Ordinary autograd forward: `[B, T]` ids and mask → `[B, num_labels]`.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let (hidden, inputs) = self.model.forward(input_ids, attention_mask)?;
        self.head(&hidden, &inputs)
    }

    /// Training step by reconstruction (see [`RevQwen3ForCausalLM::backward_by_reconstruction`]).
    pub fn backward_by_reconstruction(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        loss_fn: &mut dyn FnMut(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        self.model.backward_by_reconstruction(input_ids, attention_mask, &|h, i| self.head(h, i), loss_fn)
    }

    /// Trainable tensors with Qwen3's HF names: `model.*`, then `score.weight`.
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        self.model.inner.push_params("model", &mut out);
        self.score.push_params("score", &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::test_util::{max_abs, randomize, rng_guard, rows, tiny_qwen3};
    use tch::{Device, Kind, Reduction};

    fn config(layers: i64, tied: bool) -> Config {
        let mut cfg = tiny_qwen3(tied);
        cfg.num_hidden_layers = layers;
        cfg
    }

    /// A batch with a full row, a right-padded row and a left-padded row.
    fn batch() -> (Tensor, Tensor) {
        let ids = rows(&[&[5, 9, 13, 2, 40, 7, 22], &[3, 8, 60, 11, 0, 0, 0], &[0, 0, 17, 4, 33, 51, 6]]);
        let mask = rows(&[&[1, 1, 1, 1, 1, 1, 1], &[1, 1, 1, 1, 0, 0, 0], &[0, 0, 1, 1, 1, 1, 1]]);
        (ids, mask)
    }

    /// Next-token cross-entropy over real positions (pads ignored).
    fn lm_loss(mask: &Tensor) -> impl FnMut(&Tensor) -> Result<Tensor> + '_ {
        move |logits: &Tensor| {
            let v = logits.size()[2];
            let targets = Tensor::arange(logits.size()[0] * logits.size()[1], (Kind::Int64, Device::Cpu)).remainder(v);
            let targets = targets.where_scalarother(&mask.view([-1]).ne(0), -100);
            Ok(logits.f_view([-1, v])?.f_cross_entropy_loss(&targets, None::<Tensor>, Reduction::Mean, -100, 0.0)?)
        }
    }

    fn zero_grads(params: &[(String, Tensor)]) {
        for (_, t) in params {
            t.shallow_clone().zero_grad();
        }
    }

    fn grads(params: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
        params.iter().map(|(n, t)| (n.clone(), t.grad().detach().copy())).collect()
    }

    /// max |a − b| / max |b| per parameter, asserting every gradient is defined and nonzero.
    fn worst_relative_error(ours: &[(String, Tensor)], reference: &[(String, Tensor)]) -> (f64, String) {
        let mut worst = (0.0, String::new());
        for ((n, a), (_, b)) in ours.iter().zip(reference) {
            assert!(a.defined() && b.defined(), "{n}: gradient missing");
            let scale = b.abs().max().double_value(&[]);
            assert!(scale > 0.0, "{n}: zero reference gradient");
            let rel = max_abs(a, b) / scale;
            if rel > worst.0 {
                worst = (rel, n.clone());
            }
        }
        worst
    }

    #[test]
    fn forward_is_the_documented_two_stream_coupling_and_inverts() {
        let _rng = rng_guard();
        let mut vs = nn::VarStore::new(Device::Cpu);
        let m = RevQwen3ForCausalLM::new(&vs.root(), &config(3, false)).unwrap();
        vs.double();
        randomize(&m.named_parameters(), 11);
        let (ids, mask) = batch();
        let logits = m.forward(&ids, &mask).unwrap();
        assert_eq!(logits.size(), [3, 7, 64]);

        // The coupling written out from the Qwen3 blocks.
        let inner = &m.model.inner;
        let (inputs, li) = inner.prepare(&ids, &mask).unwrap();
        let h = inner.embed(&inputs.ids).unwrap();
        let (mut x1, mut x2) = (h.shallow_clone(), h.shallow_clone());
        let mut stages = vec![];
        for layer in &inner.layers {
            let y1 = &x1 + layer.attn_branch(&x2, &li).unwrap();
            let y2 = &x2 + layer.mlp_branch(&y1).unwrap();
            stages.push((x1, x2));
            (x1, x2) = (y1, y2);
        }
        let hidden = inner.norm.forward(&((&x1 + &x2) / 2.0)).unwrap();
        let expected = hidden.linear(&m.lm_head.as_ref().unwrap().weight, None::<Tensor>);
        assert!(max_abs(&logits, &expected) < 1e-12);

        // Each block's inputs are recovered from its outputs (what the backward relies on).
        let (mut y1, mut y2) = (x1, x2);
        for (layer, (x1, x2)) in inner.layers.iter().zip(stages).rev() {
            let r2 = &y2 - layer.mlp_branch(&y1).unwrap();
            let r1 = &y1 - layer.attn_branch(&r2, &li).unwrap();
            assert!(max_abs(&r1, &x1) < 1e-10 && max_abs(&r2, &x2) < 1e-10);
            (y1, y2) = (r1, r2);
        }
    }

    /// Autograd through `forward` vs `backward_by_reconstruction` on a padded batch;
    /// returns the worst relative error and the embedding's.
    fn compare_lm_gradients(kind: Kind, layers: i64, tied: bool, tol: f64) -> (f64, f64) {
        let mut vs = nn::VarStore::new(Device::Cpu);
        let m = RevQwen3ForCausalLM::new(&vs.root(), &config(layers, tied)).unwrap();
        vs.set_kind(kind);
        let params = m.named_parameters();
        randomize(&params, 12);
        let (ids, mask) = batch();

        // Reference: ordinary autograd through the plain forward.
        zero_grads(&params);
        let loss_ref = lm_loss(&mask)(&m.forward(&ids, &mask).unwrap()).unwrap();
        loss_ref.backward();
        let reference = grads(&params);

        // Reconstruction.
        zero_grads(&params);
        let loss = m.backward_by_reconstruction(&ids, &mask, &mut lm_loss(&mask)).unwrap();
        assert!(!loss.requires_grad());
        assert!((loss.double_value(&[]) - loss_ref.double_value(&[])).abs() < 1e-6);
        let ours = grads(&params);

        let (worst, name) = worst_relative_error(&ours, &reference);
        eprintln!("rev-qwen3 {kind:?} {layers} layers: worst relative gradient error {worst:.2e} ({name})");
        assert!(worst <= tol, "{name}: relative gradient error {worst:e} > {tol:e}");
        let e = |g: &[(String, Tensor)]| {
            g.iter().find(|(n, _)| n == "model.embed_tokens.weight").unwrap().1.shallow_clone()
        };
        let embed_rel = max_abs(&e(&ours), &e(&reference)) / e(&reference).abs().max().double_value(&[]);
        assert!(embed_rel <= tol, "embedding gradient: relative error {embed_rel:e}");
        (worst, embed_rel)
    }

    #[test]
    fn reconstruction_gradients_match_autograd_fp64() {
        let _rng = rng_guard();
        compare_lm_gradients(Kind::Double, 4, true, 1e-9);
    }

    #[test]
    fn reconstruction_gradients_match_autograd_fp32() {
        let _rng = rng_guard();
        compare_lm_gradients(Kind::Float, 4, true, 1e-4);
    }

    /// Untied, so the embedding's gradient comes only through the reversible stack
    /// (step 5 of the backward: dL/dx1 + dL/dx2), not from a tied head.
    #[test]
    fn reconstruction_embedding_gradient_matches_autograd() {
        let _rng = rng_guard();
        let (_, embed64) = compare_lm_gradients(Kind::Double, 4, false, 1e-9);
        let (_, embed32) = compare_lm_gradients(Kind::Float, 4, false, 1e-4);
        eprintln!("rev-qwen3 embedding gradient relative error: fp64 {embed64:.2e}, fp32 {embed32:.2e}");
    }

    #[test]
    fn classification_regression_gradients_match_and_accumulate() {
        let _rng = rng_guard();
        let mut vs = nn::VarStore::new(Device::Cpu);
        let m = RevQwen3ForSequenceClassification::new(&vs.root(), &config(4, false), 1, 0).unwrap();
        vs.double();
        let params = m.named_parameters();
        randomize(&params, 13);
        let (ids, mask) = batch();
        let target = Tensor::from_slice(&[0.5f64, -1.0, 2.0]).view([3, 1]);
        let mse = |out: &Tensor| Ok(out.f_mse_loss(&target, Reduction::Mean)?);

        zero_grads(&params);
        let out = m.forward(&ids, &mask).unwrap();
        assert_eq!(out.size(), [3, 1]);
        mse(&out).unwrap().backward();
        let reference = grads(&params);

        zero_grads(&params);
        // Called inside no_grad on purpose: the step must enable grad where it needs it.
        let _ = tch::no_grad(|| m.backward_by_reconstruction(&ids, &mask, &mut |o| mse(o))).unwrap();
        let (worst, name) = worst_relative_error(&grads(&params), &reference);
        assert!(worst <= 1e-9, "{name}: {worst:e}");

        // Like loss.backward(), a second call adds to the gradients.
        let _ = m.backward_by_reconstruction(&ids, &mask, &mut |o| mse(o)).unwrap();
        for ((n, twice), (_, once)) in grads(&params).iter().zip(&reference) {
            assert!(max_abs(twice, &(once * 2.0)) <= 1e-9 * once.abs().max().double_value(&[]).max(1e-30), "{n}");
        }
    }

    #[test]
    fn loss_fn_must_return_a_scalar() {
        let _rng = rng_guard();
        let vs = nn::VarStore::new(Device::Cpu);
        let m = RevQwen3ForCausalLM::new(&vs.root(), &config(1, true)).unwrap();
        let (ids, mask) = batch();
        let e = m.backward_by_reconstruction(&ids, &mask, &mut |l| Ok(l.shallow_clone())).unwrap_err();
        assert!(e.to_string().contains("scalar"), "{e}");
    }
}
