//! Reversible Qwen3: the Qwen3 blocks in a two-stream additive coupling (RevNet,
//! Gomez et al. 2017, "The Reversible Residual Network"; Reformer's reversible layers),
//! trained with backpropagation by reconstruction so activation memory is flat in depth.
//! The streams are fixed-point integers, so the reconstruction is exact (MacKay et al.
//! 2018, "Reversible Recurrent Neural Networks").
//!
//! Per layer, with `F = Attn ∘ RMSNorm_attn` and `G = MLP ∘ RMSNorm_mlp` (the two
//! residual branches of `qwen3::DecoderLayer`, reused, not copied), streams `x1`, `x2`
//! held as int64 tensors on a grid of 2⁻³² ([`STREAM_FRACTION_BITS`]),
//! `q(v) = trunc(v · 2³²)` (int64) and `dq(n) = n · 2⁻³²` in the model's kind:
//!
//! ```text
//! x1 = x2 = q(embed(ids))
//! y1 = x1 + q(F(dq(x2)))       x2 = y2 − q(G(dq(y1)))      (inverse, integer arithmetic)
//! y2 = x2 + q(G(dq(y1)))       x1 = y1 − q(F(dq(x2)))
//! hidden = RMSNorm((dq(y1) + dq(y2)) / 2)  → LM head or last-non-pad classification head
//! ```
//!
//! Adding and subtracting integers is exact, so the backward recovers every block's input
//! bit for bit, however large the streams grow (with float streams `(x + f) − f ≠ x`, and
//! the error grew from the top of the stack down into the embedding). Each branch output
//! is quantised once, in the kind it was computed in (under bf16 autocast the branches
//! compute in bf16; scaling by 2³² is exact, so the integers are those of its fp32 cast).
//! `q` is straight-through: the
//! gradient is autograd's gradient of this quantised network with `dq ∘ q` taken as the
//! identity. [`RevQwen3ForCausalLM::forward`] (training by autograd, eval, inference)
//! computes the same quantised network as the reconstruction backward, so train and eval
//! agree.
//!
//! The fp64 reference (tests, `qbench rev-grad-error`) is this same code with fp64
//! weights: same weights, same grid, same straight-through `q`, branches in fp64. We
//! take that, not the unquantised network, as "the same network" because it is the
//! function the fp32 reconstruction and fp32 autograd both implement, so their errors
//! against it are rounding errors only. The two references differ by the quantisation
//! itself, less than 2⁻³² ≈ 2.3e-10 absolute per addition (`q` truncates toward zero:
//! one cast, where rounding to nearest would cost another pass over every value).
//!
//! Range: the grid holds ±2³¹ in int64 (±2⁶³ integers). An embedding or branch output of
//! magnitude ≥ the largest power of two not above 2³⁰ / (layers + 1) (2²⁵ ≈ 3.4e7 at 28
//! layers), or a non-finite one, makes the output NaN (as a float
//! network's non-finite activations would), so the trainer's non-finite-loss handling
//! still sees it; below that no stream leaves ±2³⁰ and no integer addition can wrap.
//! Trained Qwen3 hidden states (including the "massive activations" of a few channels,
//! O(10³–10⁴)) are far inside. The grid step 2.3e-10 is finer than an fp32 ulp for any
//! value above ~2e-3 in magnitude; smaller values are truncated to within 2.3e-10.
//!
//! Exactness needs the recomputed branch output to be bit-identical to the forward's
//! (same input bits, so the same kernels must run): the forward therefore runs each
//! branch exactly as the backward recomputes it (grad enabled, on a fresh leaf holding
//! `dq(x)`, graph dropped at once), so SDPA's backend choice, which can depend on
//! `requires_grad`, is the same in both passes. Beyond that the caller must keep the
//! kernels deterministic for fixed shapes between the two passes: cuBLAS is for a fixed
//! shape, stream and workspace (`CUBLAS_WORKSPACE_CONFIG` pins the workspace); TF32
//! settings must not change between forward and backward; autocast's low-precision
//! weight copies are recast from the same fp32 weights, which gives the same bits; no
//! dropout inside the branches (Qwen3 has none). `backward_by_reconstruction_checked`
//! reports per layer whether the reconstruction was bit-identical.
//!
//! Memory: the backward keeps the two final int64 streams (8 bytes per value each) and
//! one branch's graph at a time; the forward before it also holds one branch's graph at
//! a time (the price of running branches as the recomputation does).
//!
//! This module owns the coupling, the fixed-point grid, the two heads, the
//! reconstruction backward and its diagnostics (per-layer reconstruction check,
//! per-parameter-group gradient error). Block code, config and state-dict names are
//! Qwen3's (`model.layers.{i}.self_attn…`, `input_layernorm`, `post_attention_layernorm`,
//! `mlp…`, `model.norm`), so a Qwen3 checkpoint can initialise it. It is not an HF
//! architecture: saved checkpoints carry `model_type = "rev_qwen3"` so transformers
//! refuses them rather than loading them as plain Qwen3.
//!
//! Length: one file per architecture; its tests are the last ~340 lines.

use tch::{Kind, Tensor, nn};

use super::common::{CheckedInputs, Linear, ensure, grad_or_zeros, vjp};
use super::qwen3::{self, Config, DecoderLayer, LayerInputs, Qwen3Model};
use crate::error::{Error, Result};

/// Fraction bits of the fixed-point streams: a stream value is `n · 2^-STREAM_FRACTION_BITS`
/// for an int64 `n`.
pub const STREAM_FRACTION_BITS: i32 = 32;

/// The fixed-point grid of one model: quantisation, dequantisation into the model's
/// float kind, and the range guard.
///
/// Each operation is one elementwise pass where ATen allows it: these passes run over
/// `B × T × hidden` values twice per block in each direction, and they are most of what
/// the coupling costs over a plain residual stream.
#[derive(Debug)]
struct Grid {
    /// The model's parameter kind (fp32, or fp64 for references); `dq` returns it.
    kind: Kind,
    /// Largest magnitude an embedding or branch output may have (see the module docs): a
    /// power of two, so the comparison is exact in any float kind (a bf16 branch output
    /// is compared in bf16).
    limit: f64,
    /// `2⁻³²` as a 0-dim tensor of `kind`: an int64 tensor times a 0-dim float tensor is
    /// computed and returned in that float kind in one pass (type promotion lets the
    /// 0-dim operand decide when it is of a higher category), with no int→float copy.
    inv_scale: Tensor,
}

impl Grid {
    fn new(model: &Qwen3Model) -> Result<Grid> {
        let layers = model.layers.len() as f64;
        let kind = model.embed_tokens.kind();
        let inv_scale = Tensor::f_scalar_tensor(2f64.powi(-STREAM_FRACTION_BITS), (kind, tch::Device::Cpu))?;
        let limit = 2f64.powi((2f64.powi(30) / (layers + 1.0)).log2().floor() as i32);
        Ok(Grid { kind, limit, inv_scale })
    }

    /// `q(v) = trunc(v · 2³²)` as int64, computed in `v`'s own kind: scaling by a power of
    /// two is exact in binary floating point, so a bf16 branch output gives the same
    /// integers as its fp32 cast would, without the cast.
    fn q(&self, v: &Tensor) -> Result<Tensor> {
        Ok(v.f_detach()?.f_mul_scalar(2f64.powi(STREAM_FRACTION_BITS))?.f_to_kind(Kind::Int64)?)
    }

    /// A fresh leaf requiring grad holding `dq(n)`: a branch's input in both passes.
    fn leaf(&self, n: &Tensor) -> Result<Tensor> {
        Ok(self.dq(n)?.f_set_requires_grad(true)?)
    }

    /// `dq(n) = n · 2⁻³²` in the model's kind (no graph: callers attach one).
    fn dq(&self, n: &Tensor) -> Result<Tensor> {
        Ok(n.f_mul(&self.inv_scale)?)
    }

    /// `¬(−limit < min ∧ max < limit)` over every value `range` recorded, a 0-dim bool
    /// tensor (no host sync; NaN propagates through min and max and fails both tests).
    fn out_of_range(&self, range: &Range) -> Result<Tensor> {
        let lo = Tensor::f_stack(&range.lows, 0)?.f_min()?;
        let hi = Tensor::f_stack(&range.highs, 0)?.f_max()?;
        Ok(hi.f_lt(self.limit)?.f_logical_and(&lo.f_gt(-self.limit)?)?.f_logical_not()?)
    }

    /// The value `dq(n)` with `carrier`'s graph attached as the identity (straight-through
    /// `q`): `dq(n) + (carrier − carrier.detach())`, which adds an exact zero.
    fn straight_through(&self, n: &Tensor, carrier: &Tensor) -> Result<Tensor> {
        let value = self.dq(n)?;
        if !carrier.requires_grad() {
            return Ok(value);
        }
        Ok(value.f_add(&carrier.f_sub(&carrier.f_detach()?)?)?)
    }
}

/// The minimum and maximum of every value quantised in one pass (the embedding and each
/// branch output), kept as 0-dim tensors and reduced once by [`Grid::out_of_range`]: one
/// reduction kernel per branch instead of a chain of tiny ones.
#[derive(Debug, Default)]
struct Range {
    lows: Vec<Tensor>,
    highs: Vec<Tensor>,
}

impl Range {
    fn record(&mut self, v: &Tensor) -> Result<()> {
        let (lo, hi) = v.f_detach()?.f_aminmax(None, false)?;
        self.lows.push(lo);
        self.highs.push(hi);
        Ok(())
    }
}

/// One stream in the autograd forward: its grid integers and their dequantised value,
/// which carries the straight-through graph.
struct Stream {
    n: Tensor,
    v: Tensor,
}

impl Stream {
    /// `self + q(branch)`, with the gradient passing to both as in `x + branch`.
    fn add(&self, grid: &Grid, branch: &Tensor) -> Result<Stream> {
        let n = self.n.f_add(&grid.q(branch)?)?;
        let v = grid.straight_through(&n, &self.v.f_add(branch)?)?;
        Ok(Stream { n, v })
    }
}

/// Runs one branch with grad on `leaf` (from [`Grid::leaf`]) and returns its output (with
/// graph, in the kind the branch computed it: bf16 under autocast). The forward and the
/// backward both call this, so the recomputation dispatches the same kernels as the
/// forward. The output is not cast to the model's kind: `q` reads it as it is, and `vjp`
/// casts the incoming gradient instead.
fn run_branch(leaf: &Tensor, branch: &dyn Fn(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    tch::with_grad(|| branch(leaf))
}

fn attn(layer: &DecoderLayer, li: &LayerInputs) -> impl Fn(&Tensor) -> Result<Tensor> {
    move |x| layer.attn_branch(x, li)
}

fn mlp(layer: &DecoderLayer) -> impl Fn(&Tensor) -> Result<Tensor> {
    move |x| layer.mlp_branch(x)
}

/// The two-stream backbone shared by both heads.
#[derive(Debug)]
struct RevQwen3Model {
    inner: Qwen3Model,
}

impl RevQwen3Model {
    /// `RMSNorm((dq(y1) + dq(y2)) / 2)`, NaN everywhere when `bad` (a stream value left
    /// the grid's safe range).
    fn merge(&self, y1: &Tensor, y2: &Tensor, bad: &Tensor) -> Result<Tensor> {
        let hidden = self.inner.norm.forward(&y1.f_add(y2)?.f_div_scalar(2.0)?)?;
        Ok(hidden.f_masked_fill(bad, f64::NAN)?)
    }

    /// Ordinary autograd forward of the quantised network → final hidden states
    /// `[B, T, hidden]`. Gradients pass through `q` as the identity.
    fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<(Tensor, CheckedInputs)> {
        // 1. Checks, shared mask and RoPE tables.
        let (inputs, li) = self.inner.prepare(ids, mask)?;
        let grid = Grid::new(&self.inner)?;
        // 2. Embed [B, T, hidden], quantise, duplicate into both streams.
        let h = self.inner.embed(&inputs.ids)?;
        let mut range = Range::default();
        range.record(&h)?;
        let n = grid.q(&h)?;
        let v = grid.straight_through(&n, &h)?;
        let mut x1 = Stream { n: n.shallow_clone(), v: v.shallow_clone() };
        let mut x2 = Stream { n, v };
        // 3. Coupled layers.
        for layer in &self.inner.layers {
            let f = layer.attn_branch(&x2.v, &li)?.f_to_kind(grid.kind)?;
            range.record(&f)?;
            x1 = x1.add(&grid, &f)?;
            let g = layer.mlp_branch(&x1.v)?.f_to_kind(grid.kind)?;
            range.record(&g)?;
            x2 = x2.add(&grid, &g)?;
        }
        // 4. Merge the streams and normalise.
        Ok((self.merge(&x1.v, &x2.v, &grid.out_of_range(&range)?)?, inputs))
    }

    /// Backprop by reconstruction; `head` maps hidden states to logits. With `probe`,
    /// the forward also keeps every block's input streams (diagnostic only: memory then
    /// grows with depth) and the backward appends, per layer from the top, how its
    /// reconstruction compares.
    fn backward_by_reconstruction(
        &self,
        ids: &Tensor,
        mask: &Tensor,
        head: &dyn Fn(&Tensor, &CheckedInputs) -> Result<Tensor>,
        loss_fn: &mut dyn FnMut(&Tensor) -> Result<Tensor>,
        mut probe: Option<&mut Vec<LayerReconstruction>>,
    ) -> Result<Tensor> {
        // 1. Shared inputs (mask, RoPE tables) once for the forward and every block's
        //    recomputation.
        let (inputs, li) = self.inner.prepare(ids, mask)?;
        let grid = Grid::new(&self.inner)?;

        // 2. Forward, keeping only the final integer streams. Each branch runs as the
        //    backward will re-run it (`run_branch`); its graph is dropped at once.
        let mut stored: Option<Vec<(Tensor, Tensor)>> = probe.as_ref().map(|_| Vec::new());
        let h = tch::no_grad(|| self.inner.embed(&inputs.ids))?;
        let mut range = Range::default();
        range.record(&h)?;
        let mut y1 = grid.q(&h)?;
        let mut y2 = y1.shallow_clone();
        drop(h);
        for layer in &self.inner.layers {
            if let Some(s) = stored.as_mut() {
                s.push((y1.shallow_clone(), y2.shallow_clone()));
            }
            let f = run_branch(&grid.leaf(&y2)?, &attn(layer, &li))?.f_detach()?;
            range.record(&f)?;
            y1 = y1.f_add(&grid.q(&f)?)?;
            let g = run_branch(&grid.leaf(&y1)?, &mlp(layer))?.f_detach()?;
            range.record(&g)?;
            y2 = y2.f_add(&grid.q(&g)?)?;
            // Under autocast each branch cached low-precision copies of its weights;
            // drop them so at most one block's copies are alive.
            crate::ffi::autocast_clear_cache();
        }
        let bad = grid.out_of_range(&range)?;
        drop(range);

        // 3. Head and loss with grad, on leaves holding dq(y1), dq(y2): parameter
        //    gradients of the norm and head accumulate, and the leaves receive dL/dy1,
        //    dL/dy2 (straight through dq).
        let leaf1 = grid.dq(&y1)?.f_set_requires_grad(true)?;
        let leaf2 = grid.dq(&y2)?.f_set_requires_grad(true)?;
        let loss = tch::with_grad(|| -> Result<Tensor> {
            let hidden = self.merge(&leaf1, &leaf2, &bad)?;
            loss_fn(&head(&hidden, &inputs)?)
        })?;
        if loss.numel() != 1 {
            return Err(Error::Inputs(format!("loss_fn must return a scalar, got shape {:?}", loss.size())));
        }
        loss.f_backward()?;
        let mut g1 = grad_or_zeros(&leaf1)?;
        let mut g2 = grad_or_zeros(&leaf2)?;
        drop((leaf1, leaf2));

        // 4. Blocks in reverse. Each re-runs one branch on the exact block input,
        //    subtracts its quantised output in integers (exact), and backpropagates the
        //    incoming gradient as a vector–Jacobian product. Only one branch's graph is
        //    alive at a time. The peak of the whole step falls in the bottom block's
        //    attention recomputation (every layer's gradient is allocated by then; RoPE's
        //    temporaries are the largest transient): there, unless a probe compares them,
        //    both streams are freed as soon as the branch's input leaf exists, since x1
        //    and x2 of the bottom block feed nothing below it.
        let mut streams = Some((y1, y2));
        for (i, layer) in self.inner.layers.iter().enumerate().rev() {
            let Some((y1, y2)) = streams.take() else { break };
            let bottom = i == 0 && probe.is_none();
            // 4a. G: y2 = x2 + q(G(y1))  ⇒  x2 = y2 − q(G(y1));  dL/dy1 += J_Gᵀ · dL/dy2.
            // The streams and gradients are updated in place: the stored outputs become the
            // block's inputs without a second copy alive (the final streams are fresh
            // tensors of the forward, aliased by nothing else).
            let y1_leaf = grid.leaf(&y1)?;
            let g_out = run_branch(&y1_leaf, &mlp(layer))?;
            let mut x2 = y2;
            let _ = x2.f_sub_(&grid.q(&g_out)?)?;
            vjp(&g_out, &g2)?;
            let _ = g1.f_add_(&grad_or_zeros(&y1_leaf)?)?;
            drop((g_out, y1_leaf));

            // 4b. F: y1 = x1 + q(F(x2))  ⇒  x1 = y1 − q(F(x2));  dL/dx2 = dL/dy2 + J_Fᵀ · dL/dy1.
            let x2_leaf = grid.leaf(&x2)?;
            let mut kept = if bottom {
                drop((y1, x2));
                None
            } else {
                Some((y1, x2))
            };
            let f_out = run_branch(&x2_leaf, &attn(layer, &li))?;
            if let Some((x1, _)) = kept.as_mut() {
                let _ = x1.f_sub_(&grid.q(&f_out)?)?;
            }
            vjp(&f_out, &g1)?;
            let _ = g2.f_add_(&grad_or_zeros(&x2_leaf)?)?;
            drop((f_out, x2_leaf));

            if let (Some(report), Some(stored), Some((x1, x2))) = (probe.as_mut(), stored.as_mut(), kept.as_ref()) {
                let (f1, f2) =
                    stored.pop().ok_or_else(|| Error::GradientCheck("probe: no stored block input".into()))?;
                report.push(LayerReconstruction::compare(i, (x1, x2), (&f1, &f2))?);
            }
            streams = kept;
            crate::ffi::autocast_clear_cache();
        }

        // 5. Both streams started as q(embedding): dL/dh = dL/dx1 + dL/dx2. The streams
        //    (kept only when probing) are no longer needed.
        drop(streams);
        let _ = g1.f_add_(&g2)?;
        drop(g2);
        let emb = tch::with_grad(|| self.inner.embed(&inputs.ids))?;
        vjp(&emb, &g1)?;
        Ok(loss.f_detach()?)
    }
}

/// One block's inputs as the reconstruction backward recovered them, compared with the
/// forward's (a diagnostic: see `backward_by_reconstruction_checked`).
#[derive(Debug, Clone, PartialEq)]
pub struct LayerReconstruction {
    /// Layer index.
    pub layer: usize,
    /// Both reconstructed input streams equal the forward's bit for bit.
    pub bit_identical: bool,
    /// max |x1_reconstructed − x1_forward| in stream units (grid steps × 2⁻³²).
    pub x1_max_abs_error: f64,
    /// max |x2_reconstructed − x2_forward| in stream units.
    pub x2_max_abs_error: f64,
}

impl LayerReconstruction {
    fn compare(layer: usize, rebuilt: (&Tensor, &Tensor), forward: (&Tensor, &Tensor)) -> Result<Self> {
        let err = |a: &Tensor, b: &Tensor| -> Result<f64> {
            let steps = a.f_sub(b)?.f_abs()?.f_max()?.f_to_kind(Kind::Double)?.f_double_value(&[])?;
            Ok(steps * 2f64.powi(-STREAM_FRACTION_BITS))
        };
        let (e1, e2) = (err(rebuilt.0, forward.0)?, err(rebuilt.1, forward.1)?);
        Ok(LayerReconstruction {
            layer,
            bit_identical: e1 == 0.0 && e2 == 0.0,
            x1_max_abs_error: e1,
            x2_max_abs_error: e2,
        })
    }
}

/// The parameter group a Qwen3 parameter's gradient is reported under: `embedding`,
/// `layers.{i}.attention` (q/k/v/o projections), `layers.{i}.mlp`, `layers.{i}.norms`
/// (input, post-attention, q and k norms) and `head` (final norm, `lm_head`, `score`).
pub fn parameter_group(name: &str) -> String {
    let name = name.strip_prefix("model.").unwrap_or(name);
    if name.starts_with("embed_tokens") {
        return "embedding".into();
    }
    if let Some(rest) = name.strip_prefix("layers.") {
        let (index, within) = rest.split_once('.').unwrap_or((rest, ""));
        let part = if within.contains("norm") {
            "norms"
        } else if within.starts_with("self_attn") {
            "attention"
        } else if within.starts_with("mlp") {
            "mlp"
        } else {
            "other"
        };
        return format!("layers.{index}.{part}");
    }
    "head".into()
}

/// Absolute floor of a reference gradient norm in [`group_relative_errors`], so a group
/// whose reference gradient is exactly zero reports its absolute error instead of a
/// division by zero.
pub const GROUP_NORM_FLOOR: f64 = 1e-30;

/// Per parameter group (in first-seen order of `reference`), the relative error
/// `‖g − g_ref‖ / max(‖g_ref‖, GROUP_NORM_FLOOR)` over the group's concatenated
/// gradients, computed in fp64. Both lists name the same parameters in the
/// same order; a missing gradient is an error. Computed on the gradients' device; only
/// the sums come back.
pub fn group_relative_errors(ours: &[(String, Tensor)], reference: &[(String, Tensor)]) -> Result<Vec<(String, f64)>> {
    if ours.len() != reference.len() {
        return Err(Error::GradientCheck(format!(
            "{} gradients vs {} reference gradients",
            ours.len(),
            reference.len()
        )));
    }
    // (group, Σ‖Δ‖², Σ‖ref‖²)
    let mut sums: Vec<(String, f64, f64)> = Vec::new();
    for ((name, g), (ref_name, r)) in ours.iter().zip(reference) {
        if name != ref_name {
            return Err(Error::GradientCheck(format!("gradient order differs: {name} vs {ref_name}")));
        }
        if !g.defined() || !r.defined() {
            return Err(Error::GradientCheck(format!("{name}: gradient missing")));
        }
        let to64 = |t: &Tensor| t.f_to_kind(Kind::Double);
        let (g, r) = (to64(g)?, to64(r)?);
        let diff = g.f_sub(&r)?.f_square()?.f_sum(None::<Kind>)?.f_double_value(&[])?;
        let norm = r.f_square()?.f_sum(None::<Kind>)?.f_double_value(&[])?;
        let group = parameter_group(name);
        match sums.iter_mut().find(|(n, _, _)| *n == group) {
            Some(entry) => {
                entry.1 += diff;
                entry.2 += norm;
            }
            None => sums.push((group, diff, norm)),
        }
    }
    Ok(sums.into_iter().map(|(n, d, r)| (n, d.sqrt() / r.sqrt().max(GROUP_NORM_FLOOR))).collect())
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
        self.model.backward_by_reconstruction(input_ids, attention_mask, &|h, i| self.head(h, i), loss_fn, None)
    }

    /// [`Self::backward_by_reconstruction`] as a diagnostic: the forward also keeps every
    /// block's input streams (so memory grows with depth: not for training) and the
    /// backward compares each reconstructed input with them. Returns the loss and one
    /// entry per layer, bottom first. The gradients are the same as the plain call's.
    pub fn backward_by_reconstruction_checked(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        loss_fn: &mut dyn FnMut(&Tensor) -> Result<Tensor>,
    ) -> Result<(Tensor, Vec<LayerReconstruction>)> {
        let mut report = Vec::new();
        let loss = self.model.backward_by_reconstruction(
            input_ids,
            attention_mask,
            &|h, i| self.head(h, i),
            loss_fn,
            Some(&mut report),
        )?;
        report.reverse();
        Ok((loss, report))
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
        self.model.backward_by_reconstruction(input_ids, attention_mask, &|h, i| self.head(h, i), loss_fn, None)
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
    use crate::test_util::{grads, max_abs, randomize, rng_guard, rows, tiny_qwen3, worst_relative_error, zero_grads};
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

        // The coupling written out from the Qwen3 blocks, with the grid spelled out.
        let scale = 2f64.powi(32);
        let q = |v: Tensor| (v * scale).to_kind(Kind::Int64); // trunc toward zero
        let dq = |n: &Tensor| n.to_kind(Kind::Double) / scale;
        let inner = &m.model.inner;
        let (inputs, li) = inner.prepare(&ids, &mask).unwrap();
        let h = q(inner.embed(&inputs.ids).unwrap());
        let (mut x1, mut x2) = (h.shallow_clone(), h);
        let mut stages = vec![];
        for layer in &inner.layers {
            let y1 = &x1 + q(layer.attn_branch(&dq(&x2), &li).unwrap());
            let y2 = &x2 + q(layer.mlp_branch(&dq(&y1)).unwrap());
            stages.push((x1, x2));
            (x1, x2) = (y1, y2);
        }
        assert_eq!(x1.kind(), Kind::Int64);
        let hidden = inner.norm.forward(&((dq(&x1) + dq(&x2)) / 2.0)).unwrap();
        let expected = hidden.linear(&m.lm_head.as_ref().unwrap().weight, None::<Tensor>);
        assert!(logits.equal(&expected), "forward differs from the written-out coupling");

        // Each block's inputs are recovered from its outputs exactly (integer arithmetic).
        let (mut y1, mut y2) = (x1, x2);
        for (layer, (x1, x2)) in inner.layers.iter().zip(stages).rev() {
            let r2 = &y2 - q(layer.mlp_branch(&dq(&y1)).unwrap());
            let r1 = &y1 - q(layer.attn_branch(&dq(&r2), &li).unwrap());
            assert!(r1.equal(&x1) && r2.equal(&x2));
            (y1, y2) = (r1, r2);
        }
    }

    /// A non-finite (or out-of-range) branch output cannot hide in an integer stream:
    /// the output becomes NaN, as a float network's would, in both the forward and the
    /// reconstruction step's loss.
    #[test]
    fn non_finite_activations_give_a_non_finite_loss() {
        let _rng = rng_guard();
        let vs = nn::VarStore::new(Device::Cpu);
        let m = RevQwen3ForCausalLM::new(&vs.root(), &config(2, false)).unwrap();
        let params = m.named_parameters();
        randomize(&params, 14);
        let (ids, mask) = batch();
        assert!(m.forward(&ids, &mask).unwrap().isfinite().all().int64_value(&[]) == 1);
        let w = &params.iter().find(|(n, _)| n == "model.layers.0.mlp.down_proj.weight").unwrap().1;
        tch::no_grad(|| {
            let _ = w.get(0).get(0).fill_(f64::INFINITY);
        });
        assert!(m.forward(&ids, &mask).unwrap().isnan().all().int64_value(&[]) == 1);
        let loss = m.backward_by_reconstruction(&ids, &mask, &mut lm_loss(&mask)).unwrap();
        assert!(loss.double_value(&[]).is_nan());
        tch::no_grad(|| {
            let _ = w.get(0).get(0).fill_(1e12);
        });
        assert!(m.forward(&ids, &mask).unwrap().isnan().all().int64_value(&[]) == 1);
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

    /// The `small` preset's Qwen3 shape (hidden 128, 4/2 heads × 32, MLP 384) and HF
    /// init (std 0.02, norms at one), at `layers` layers. The vocabulary is cut to 512
    /// (it only sizes the embedding and head, not the streams) and the head is untied,
    /// so the embedding's gradient comes only through the reversible stack, where the
    /// reconstruction error is born.
    fn preset_config(layers: i64) -> Config {
        let mut cfg = Config::from_arch(&shared::scale::preset("small").unwrap().qwen3);
        cfg.num_hidden_layers = layers;
        cfg.vocab_size = 512;
        cfg.tie_word_embeddings = false;
        cfg
    }

    /// Next-token cross-entropy (targets = the following real token; pads and each
    /// row's last position ignored), in fp32 at least as the trainer computes it.
    fn next_token_loss<'a>(ids: &'a Tensor, mask: &'a Tensor) -> impl FnMut(&Tensor) -> Result<Tensor> + 'a {
        move |logits: &Tensor| {
            let (b, t, v) = (logits.size()[0], logits.size()[1], logits.size()[2]);
            let next =
                Tensor::cat(&[ids.narrow(1, 1, t - 1), Tensor::full([b, 1], -100, (Kind::Int64, ids.device()))], 1);
            let next_real =
                Tensor::cat(&[mask.narrow(1, 1, t - 1), Tensor::zeros([b, 1], (Kind::Int64, mask.device()))], 1);
            let targets = next.where_scalarother(&next_real.ne(0), -100).view([-1]);
            let logits =
                if logits.kind() == Kind::Double { logits.shallow_clone() } else { logits.to_kind(Kind::Float) };
            Ok(logits.f_view([-1, v])?.f_cross_entropy_loss(&targets, None::<Tensor>, Reduction::Mean, -100, 0.0)?)
        }
    }

    /// Exactness at depth, at the preset's width and init: (a) every block input the
    /// backward reconstructs equals the forward's bit for bit; (b) per parameter group,
    /// the fp32 reconstruction gradient is within 1.5× of plain fp32 autograd's error,
    /// both measured against autograd through the same network in fp64
    /// (`GROUP_NORM_FLOOR` guards the division).
    #[test]
    fn reconstruction_is_exact_and_as_accurate_as_fp32_autograd_at_depth() {
        let _rng = rng_guard();
        tch::manual_seed(21);
        let cfg = preset_config(12);
        let vs32 = nn::VarStore::new(Device::Cpu);
        let m32 = RevQwen3ForCausalLM::new(&vs32.root(), &cfg).unwrap();
        let mut vs64 = nn::VarStore::new(Device::Cpu);
        let m64 = RevQwen3ForCausalLM::new(&vs64.root(), &cfg).unwrap();
        vs64.copy(&vs32).unwrap();
        vs64.double();
        let ids = Tensor::randint_low(1, cfg.vocab_size, [2, 96], (Kind::Int64, Device::Cpu));
        let mask = Tensor::ones([2, 96], (Kind::Int64, Device::Cpu));
        let _ = mask.get(1).narrow(0, 80, 16).fill_(0);

        // Reference: autograd through the fp64 network.
        let p64 = m64.named_parameters();
        zero_grads(&p64);
        next_token_loss(&ids, &mask)(&m64.forward(&ids, &mask).unwrap()).unwrap().backward();
        let reference = grads(&p64);

        // Plain fp32 autograd through the same network.
        let p32 = m32.named_parameters();
        zero_grads(&p32);
        next_token_loss(&ids, &mask)(&m32.forward(&ids, &mask).unwrap()).unwrap().backward();
        let plain = grads(&p32);

        // fp32 reconstruction, with the reconstructed inputs checked against the forward's.
        zero_grads(&p32);
        let (_, report) =
            m32.backward_by_reconstruction_checked(&ids, &mask, &mut next_token_loss(&ids, &mask)).unwrap();
        let rev = grads(&p32);

        let plain_err = group_relative_errors(&plain, &reference).unwrap();
        let rev_err = group_relative_errors(&rev, &reference).unwrap();
        let mut failures = Vec::new();
        for ((group, p), (_, r)) in plain_err.iter().zip(&rev_err) {
            eprintln!("{group:>22}: reconstruction {r:.3e}  autograd {p:.3e}  ratio {:.2}", r / p);
            if r.is_nan() || *r > 1.5 * p {
                failures.push(format!("{group}: {r:.3e} > 1.5 × {p:.3e}"));
            }
        }
        assert_eq!(report.len(), 12);
        for l in &report {
            eprintln!(
                "layer {:>2}: bit-identical {}  max |Δx1| {:.3e}  max |Δx2| {:.3e}",
                l.layer, l.bit_identical, l.x1_max_abs_error, l.x2_max_abs_error
            );
            if !l.bit_identical {
                failures.push(format!("layer {} inputs not reconstructed bit for bit", l.layer));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
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

    /// The exactness test on a GPU (`--features cuda-tests`, on a CUDA host), at the
    /// `small` width and 12 layers, in fp32 and under bf16 autocast: every block input is
    /// reconstructed bit for bit, and every parameter group's gradient error is within
    /// 1.5× of plain autograd's in the same precision (both against fp64 autograd of the
    /// same network on the GPU).
    #[cfg(feature = "cuda-tests")]
    #[test]
    fn cuda_reconstruction_is_exact_in_fp32_and_bf16() {
        let _rng = rng_guard();
        let pinned = crate::device::pin(shared::DeviceSpec::Cuda(0)).unwrap();
        let device = pinned.device;
        tch::manual_seed(21);
        let cfg = preset_config(12);
        let vs32 = nn::VarStore::new(device);
        let m32 = RevQwen3ForCausalLM::new(&vs32.root(), &cfg).unwrap();
        let mut vs64 = nn::VarStore::new(device);
        let m64 = RevQwen3ForCausalLM::new(&vs64.root(), &cfg).unwrap();
        vs64.copy(&vs32).unwrap();
        vs64.double();
        let ids = Tensor::randint_low(1, cfg.vocab_size, [4, 256], (Kind::Int64, device));
        let mask = Tensor::ones([4, 256], (Kind::Int64, device));
        let _ = mask.get(1).narrow(0, 200, 56).fill_(0);
        let p64 = m64.named_parameters();
        zero_grads(&p64);
        next_token_loss(&ids, &mask)(&m64.forward(&ids, &mask).unwrap()).unwrap().backward();
        let reference = grads(&p64);
        pinned.set_autocast_bf16().unwrap();
        let mut failures = Vec::new();
        for autocast in [false, true] {
            let p32 = m32.named_parameters();
            zero_grads(&p32);
            tch::autocast(autocast, || {
                next_token_loss(&ids, &mask)(&m32.forward(&ids, &mask).unwrap()).unwrap().backward()
            });
            let plain = grads(&p32);
            zero_grads(&p32);
            let (_, report) = tch::autocast(autocast, || {
                m32.backward_by_reconstruction_checked(&ids, &mask, &mut next_token_loss(&ids, &mask)).unwrap()
            });
            let rev = grads(&p32);
            let label = if autocast { "bf16 autocast" } else { "fp32" };
            let plain_err = group_relative_errors(&plain, &reference).unwrap();
            let rev_err = group_relative_errors(&rev, &reference).unwrap();
            for ((group, p), (_, r)) in plain_err.iter().zip(&rev_err) {
                eprintln!("{label} {group:>22}: reconstruction {r:.3e}  autograd {p:.3e}  ratio {:.2}", r / p);
                if r.is_nan() || *r > 1.5 * p {
                    failures.push(format!("{label} {group}: {r:.3e} > 1.5 × {p:.3e}"));
                }
            }
            assert_eq!(report.len(), 12);
            for l in report.iter().filter(|l| !l.bit_identical) {
                failures.push(format!("{label}: layer {} inputs not reconstructed bit for bit", l.layer));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}
