//! Tests that prove the training methods correct (issue "Training methods and the
//! GLUE+ task suite"): MeZO's projected gradient against autograd, exact-enough
//! restoration of θ after the ±ε probes, DiZO's γ estimate against autograd, DiZO's
//! re-initialisation and clipping (docs/zo_methods.md §1.2, §2.4), a method × task smoke
//! matrix through the worker, qwen3-ckpt training like qwen3, resume-equals-uninterrupted,
//! and the placement audit of optimizer state.
//!
//! Every test that draws random numbers or trains holds `rng_guard()`: libtorch's CPU
//! generator is process-global (`zo::perturb` and `run_shard` reseed it), and the guard
//! also pins libtorch to one intra-op thread, which makes CPU training bit-reproducible.
//! Measured values are printed with `eprintln!` (`cargo test -- --nocapture` shows them).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Instant;

use tch::{Device, Kind, Tensor, nn};

use shared::device::DeviceClass;
use shared::ids::Family;
use shared::scale::{self, DataSettings, DizoSettings};
use shared::shard::{ModelArch, Shard};
use shared::spec::ModelInit;
use shared::{DeviceSpec, ModelId, TaskId};

use crate::data::encode::{Candidate, CandidateExample, CandidateRows, collate_candidates};
use crate::error::{Error, Result};
use crate::metrics::metric_names;
use crate::models::opt::OptForCausalLM;
use crate::models::test_util::{randomize, rng_guard, tiny_opt};
use crate::protocol::{PROTOCOL_VERSION, ShardOutcome, WorkerEvent, WorkerRequest};
use crate::train::batches::torch_seed;
use crate::train::optim::AdamW;
use crate::train::task_model::{self, Batch, Net};
use crate::train::{checkpoint, zo};
use crate::worker::{self, EventSink, VecSink};

// ---------------------------------------------------------------------------------------
// Helpers: a tiny OPT with O(1) weights, prompt-format batches, values of parameters.

/// A tiny random OPT (vocab 64, hidden 32, 2 layers; `models::test_util::tiny_opt`) in
/// `kind`, weights redrawn at O(1) scale so that losses and gradients are far from zero.
fn tiny_opt_net(kind: Kind, pre_ln: bool, seed: i64) -> (nn::VarStore, Net) {
    tch::manual_seed(seed);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let m = OptForCausalLM::new(&vs.root(), &tiny_opt(pre_ln)).unwrap();
    if kind == Kind::Double {
        // set_data on the variables: the model's handles see fp64 too.
        vs.double();
    }
    let net = Net::Opt(m);
    randomize(&net.named_parameters(), seed + 1);
    assert!(net.named_parameters().iter().all(|(_, t)| t.kind() == kind));
    (vs, net)
}

fn candidate(ids: &[u32], option_len: usize) -> Candidate {
    Candidate { ids: ids.to_vec(), option_len }
}

/// Three two-candidate examples in the OPT prompt format (BOS 2, pad 1, ids < 64), with
/// different prompt and option lengths so that left padding and the option mask matter.
fn candidate_examples() -> Vec<CandidateExample> {
    vec![
        CandidateExample {
            candidates: vec![candidate(&[2, 10, 11, 12, 13, 40], 1), candidate(&[2, 10, 11, 12, 13, 41, 42], 2)],
            gold: 0,
            truncated: false,
        },
        CandidateExample {
            candidates: vec![
                candidate(&[2, 20, 21, 22, 23, 24, 25, 26, 40], 1),
                candidate(&[2, 20, 21, 22, 23, 24, 25, 26, 43], 1),
            ],
            gold: 1,
            truncated: false,
        },
        CandidateExample {
            candidates: vec![candidate(&[2, 30, 31, 50, 51, 52], 3), candidate(&[2, 30, 31, 53, 54], 2)],
            gold: 1,
            truncated: false,
        },
    ]
}

/// The batches of both training objectives: candidate cross-entropy (every row) and the
/// gold-only LM loss of COPA.
fn candidate_batches() -> Vec<(&'static str, Batch)> {
    let ex = candidate_examples();
    let items: Vec<&CandidateExample> = ex.iter().collect();
    [("candidate-ce", CandidateRows::All), ("gold-lm", CandidateRows::GoldOnly)]
        .into_iter()
        .map(|(name, rows)| (name, Batch::Candidates(collate_candidates(&items, rows, 1, Device::Cpu).unwrap())))
        .collect()
}

/// The ZO loss exactly as the driver computes it (`run_shard`): no graph, no dropout.
fn zo_loss(net: &Net, batch: &Batch) -> Result<f64> {
    tch::no_grad(|| Ok(task_model::batch_loss(net, batch, false)?.f_to_kind(Kind::Double)?.f_double_value(&[])?))
}

/// Deep copies of the parameter values.
fn snapshot(params: &[(String, Tensor)]) -> Vec<Tensor> {
    params.iter().map(|(_, t)| t.detach().copy()).collect()
}

/// z of `seed`, regenerated exactly as `zo::perturb` draws it: one `manual_seed`, then
/// `randn_like` per parameter in `named_parameters()` order.
fn directions(params: &[(String, Tensor)], seed: u64) -> Vec<Tensor> {
    tch::manual_seed(torch_seed(seed));
    tch::no_grad(|| params.iter().map(|(_, p)| p.randn_like()).collect())
}

/// Σ_p ∇_p ℓ · z_p from autograd (z regenerated from `seed`).
fn autograd_directional(net: &Net, batch: &Batch, seed: u64) -> f64 {
    let params = net.named_parameters();
    for (_, p) in &params {
        let mut g = p.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
    task_model::batch_loss(net, batch, false).unwrap().backward();
    let z = directions(&params, seed);
    params
        .iter()
        .zip(&z)
        .map(|((_, p), z)| {
            let g = p.grad();
            // A parameter without a gradient (none here) contributes 0.
            if g.defined() { (g * z).sum(Kind::Double).double_value(&[]) } else { 0.0 }
        })
        .sum()
}

/// Σ_p ∇_p ℓ · z_p from autograd for explicit directions `z`.
fn autograd_along(net: &Net, batch: &Batch, z: &[Tensor]) -> f64 {
    let params = net.named_parameters();
    task_model::batch_loss(net, batch, false).unwrap().backward();
    params.iter().zip(z).map(|((_, p), z)| (p.grad() * z).sum(Kind::Double).double_value(&[])).sum()
}

/// (ℓ(θ + εz) − ℓ(θ − εz)) / 2ε for explicit directions, θ restored exactly afterwards.
fn central_difference(net: &Net, batch: &Batch, z: &[Tensor], eps: f64) -> f64 {
    let params = net.named_parameters();
    let saved = snapshot(&params);
    let at = |scale: f64| {
        tch::no_grad(|| {
            for (((_, p), s), z) in params.iter().zip(&saved).zip(z) {
                p.shallow_clone().copy_(&(s + z * scale));
            }
        });
        zo_loss(net, batch).unwrap()
    };
    let (plus, minus) = (at(eps), at(-eps));
    at(0.0);
    (plus - minus) / (2.0 * eps)
}

/// An fp64 model with exactly the weights of the fp32 `net` (widening is exact).
fn fp64_copy(net: &Net, pre_ln: bool) -> (nn::VarStore, Net) {
    let mut vs = nn::VarStore::new(Device::Cpu);
    let copy = Net::Opt(OptForCausalLM::new(&vs.root(), &tiny_opt(pre_ln)).unwrap());
    vs.double();
    tch::no_grad(|| {
        for ((_, dst), (_, src)) in copy.named_parameters().iter().zip(net.named_parameters()) {
            dst.shallow_clone().copy_(&src.to_kind(Kind::Double));
        }
    });
    (vs, copy)
}

fn unit_roundoff(kind: Kind) -> f64 {
    match kind {
        Kind::Double => f64::EPSILON / 2.0,           // 2^-53
        Kind::Float => f64::from(f32::EPSILON) / 2.0, // 2^-24
        other => panic!("no unit roundoff for {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// 1. MeZO's projected gradient is the directional derivative along z.

/// `zo::spsa(..).projected_grad` = (ℓ(θ+εz) − ℓ(θ−εz))/2ε against autograd's Σ ∇ℓ·z,
/// for both OPT layouts and both training objectives.
///
/// Error sources of the central difference: truncation ≈ ε²‖z‖³·|ℓ'''|/6 along the
/// unit direction (‖z‖ ≈ √d ≈ 135 for the ~18k parameters here, so the step ε‖z‖ is
/// large: 0.13 at ε = 1e-3, with O(1) weights), the ReLU kinks of the FFN that the probes
/// cross (ℓ is only piecewise smooth, so the error need not shrink monotonically with ε),
/// and rounding.
/// * fp64, ε = 1e-6: truncation ≲ 1e-8 relative (measured ε² scaling down to 5e-7 at
///   ε = 1e-5 in the worst case), rounding u·|ℓ|/ε ~ 1e-10 → asserted 1e-6 relative. A
///   one-sided difference would be off by ~ε‖z‖²|ℓ''|/2 and a mis-scaled one by 2×.
/// * fp64, ε = 1e-3 and 1e-4: within 2e-2 relative (measured up to 1.5e-2).
/// * fp32, ε = 1e-3 (the production setting): error ≤ truncation + rounding, each
///   bounded separately on an fp64 copy of the same weights and the same z: truncation
///   = |central difference in fp64 − autograd in fp64| (measured up to 0.13 absolute,
///   7% relative: it dominates), rounding ≤ the first-order bound computed in the test
///   (measured ≤ 1e-3 absolute, ~30× inside its bound).
#[test]
fn mezo_projected_gradient_matches_autograd() {
    let _g = rng_guard();
    for pre_ln in [true, false] {
        for (name, batch) in candidate_batches() {
            // fp64: the tight check.
            let (_vs, net) = tiny_opt_net(Kind::Double, pre_ln, 11);
            let params = net.named_parameters();
            let seed = 0xC0FFEE;
            let exact = autograd_directional(&net, &batch, seed);
            assert!(exact.abs() > 1e-2, "{name}: directional derivative {exact} too small to test anything");
            let mut errors = Vec::new();
            for eps in [1e-3, 1e-4, 1e-6] {
                let r = zo::spsa(&params, seed, eps, &mut || zo_loss(&net, &batch)).unwrap();
                errors.push((r.projected_grad - exact).abs() / exact.abs());
            }
            eprintln!(
                "mezo grad fp64 pre_ln={pre_ln} {name}: Σ∇ℓ·z = {exact:.6}, rel err at ε=1e-3,1e-4,1e-6: {:.2e} {:.2e} {:.2e}",
                errors[0], errors[1], errors[2]
            );
            assert!(errors[2] < 1e-6, "{name}: fp64 relative error {:e} at ε = 1e-6", errors[2]);
            assert!(errors[0] < 2e-2 && errors[1] < 2e-2, "{name}: fp64 relative errors {errors:?}");

            // fp32 at the production ε = 1e-3, split into its two error sources with an
            // fp64 copy of the same weights and the same z (fp32 draws, widened exactly).
            let (_vs32, net32) = tiny_opt_net(Kind::Float, pre_ln, 11);
            let (_vs64, net64) = fp64_copy(&net32, pre_ln);
            let params32 = net32.named_parameters();
            let z64: Vec<Tensor> = directions(&params32, seed).iter().map(|z| z.to_kind(Kind::Double)).collect();
            let ad32 = autograd_directional(&net32, &batch, seed);
            let ad64 = autograd_along(&net64, &batch, &z64);
            let cd64 = central_difference(&net64, &batch, &z64, 1e-3);
            let loss_err = (zo_loss(&net32, &batch).unwrap() - zo_loss(&net64, &batch).unwrap()).abs();
            let r = zo::spsa(&params32, seed, 1e-3, &mut || zo_loss(&net32, &batch)).unwrap();
            let truncation = (cd64 - ad64).abs();
            let rounding = (r.projected_grad - cd64).abs();
            eprintln!(
                "mezo grad fp32 pre_ln={pre_ln} {name}: Σ∇ℓ·z = {ad32:.6} (fp64 {ad64:.6}), spsa {:.6}; truncation {truncation:.2e}, fp32 rounding {rounding:.2e}, |ℓ32−ℓ64| {loss_err:.2e}",
                r.projected_grad
            );
            // fp32 autograd itself is accurate (a sanity check of the reference).
            assert!((ad32 - ad64).abs() <= 1e-4 * ad64.abs().max(1.0), "{name}: autograd fp32 {ad32} vs fp64 {ad64}");
            // Rounding, to first order: every coordinate of fl(θ ± εz) is off by at most
            // u·(|θ_i| + ε|z_i|), which moves each of ℓ± by at most S = Σ_i |∂ℓ/∂θ_i|·u·
            // (|θ_i| + ε|z_i|) (∂ℓ from the fp64 copy); the forward pass itself rounds ℓ by
            // about |ℓ32 − ℓ64| at θ (allowed 4× for the perturbed weights). Both losses,
            // divided by 2ε.
            let u = unit_roundoff(Kind::Float);
            let s: f64 = net64
                .named_parameters()
                .iter()
                .zip(&z64)
                .map(|((_, p), z)| {
                    (p.grad().abs() * (p.abs() + z.abs() * 1e-3)).sum(Kind::Double).double_value(&[]) * u
                })
                .sum();
            let rounding_budget = 2.0 * (s + 4.0 * loss_err) / (2.0 * 1e-3);
            eprintln!("    rounding budget {rounding_budget:.2e} (first-order perturbation bound S = {s:.2e})");
            assert!(rounding <= rounding_budget, "{name}: fp32 rounding {rounding:e} > {rounding_budget:e}");
            // Total: the truncation of the exact central difference at this ε (measured in
            // fp64 on the same weights and z) plus the rounding budget.
            let err = (r.projected_grad - ad32).abs();
            assert!(
                err <= truncation + rounding_budget + (ad32 - ad64).abs(),
                "{name}: fp32 spsa {} vs autograd {ad32}: error {err:e}",
                r.projected_grad
            );
            assert!(r.loss_plus.is_finite() && r.loss_minus.is_finite() && r.loss_plus != r.loss_minus);
        }
    }
}

/// `zo::update` moves θ by exactly −lr·g·z (z regenerated from the seed), plus decoupled
/// weight decay only on decayed tensors.
#[test]
fn mezo_update_is_minus_lr_g_z() {
    let _g = rng_guard();
    let (_vs, net) = tiny_opt_net(Kind::Double, true, 5);
    let params = net.named_parameters();
    let before = snapshot(&params);
    let (seed, g, lr, wd) = (77, 0.37, 1e-2, 0.1);
    zo::update(&params, seed, g, lr, wd).unwrap();
    let z = directions(&params, seed);
    for (((name, p), b), z) in params.iter().zip(&before).zip(&z) {
        let decay = crate::train::optim::decays(name, &p.size());
        let shrunk = if decay { b * (1.0 - lr * wd) } else { b.shallow_clone() };
        let expected = shrunk + z * (-lr * g);
        let dev = (p - &expected).abs().max().double_value(&[]);
        assert!(dev <= 1e-15, "{name}: update off by {dev:e}");
    }
}

// ---------------------------------------------------------------------------------------
// 2. θ is restored after the +ε, −2ε, +ε walk.

/// After `spsa` every parameter is back where it was, within rounding.
///
/// The three in-place adds are x₁ = fl(θ + a), x₂ = fl(x₁ − 2a), x₃ = fl(x₂ + a) with
/// a = fl(εz) (−2ε·z rounds to exactly −2a: a power-of-two scale). In exact arithmetic
/// x₃ = θ; each add rounds by at most u·|xᵢ| ≤ u·(|θ| + 2|a|), so
///     |x₃ − θ| ≤ 3u·(|θ| + 2ε|z|)   elementwise (u = 2⁻²⁴ fp32, 2⁻⁵³ fp64).
/// Not bit-exact in either precision (θ + a is generally not representable): the test
/// reports the fraction of changed elements and the max deviation.
#[test]
fn spsa_restores_parameters_within_rounding() {
    let _g = rng_guard();
    for kind in [Kind::Float, Kind::Double] {
        let (_vs, net) = tiny_opt_net(kind, true, 3);
        let (_, batch) = candidate_batches().remove(0);
        let params = net.named_parameters();
        let before = snapshot(&params);
        let loss_before = zo_loss(&net, &batch).unwrap();
        let (seed, eps) = (1234, 1e-3);
        let mut losses = Vec::new();
        zo::spsa(&params, seed, eps, &mut || {
            let l = zo_loss(&net, &batch)?;
            losses.push(l);
            Ok(l)
        })
        .unwrap();
        assert_eq!(losses.len(), 2);
        let z = directions(&params, seed);
        let u = unit_roundoff(kind);
        let (mut max_dev, mut max_ratio, mut changed, mut total) = (0f64, 0f64, 0i64, 0i64);
        for (((name, p), b), z) in params.iter().zip(&before).zip(&z) {
            let dev = (p - b).abs().to_kind(Kind::Double);
            let bound = (b.abs() + z.abs() * (2.0 * eps)).to_kind(Kind::Double) * (3.0 * u) + 1e-300;
            let ratio = (&dev / &bound).max().double_value(&[]);
            assert!(ratio <= 1.0, "{kind:?} {name}: restore error {ratio} × the rounding bound");
            max_ratio = max_ratio.max(ratio);
            max_dev = max_dev.max(dev.max().double_value(&[]));
            changed += p.ne_tensor(b).sum(Kind::Int64).int64_value(&[]);
            total += p.numel() as i64;
        }
        eprintln!(
            "spsa restore {kind:?}: max |Δθ| = {max_dev:.3e}, max/bound = {max_ratio:.3}, {changed}/{total} elements not bit-exact"
        );
        // The loss at the restored θ moves by |Δℓ| ≤ Σ_i |∂ℓ/∂θ_i|·|Δθ_i| ≤ 3u·Σ_i
        // |∂ℓ/∂θ_i|·(|θ_i| + 2ε|z_i|): a few hundred u for these weights (cf. S in the
        // gradient test) → asserted 1e3·u·|ℓ|; measured ~1.6u·|ℓ| in both precisions.
        let loss_after = zo_loss(&net, &batch).unwrap();
        eprintln!("    loss before {loss_before:.17e}, after {loss_after:.17e}");
        assert!(
            (loss_after - loss_before).abs() <= 1e3 * u * loss_before.abs(),
            "{kind:?}: {loss_before} → {loss_after}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 3. DiZO's γ probe estimates Σ_l u_l · dL/dγ_l.

fn dizo_settings(eps_gamma: f64) -> DizoSettings {
    DizoSettings { interval: 1, inner_iters: 3, eps_gamma, step_gamma: 2.0, clip_tau: 0.2, anchors_on_host: false }
}

/// With anchors θ⁰ (initial weights) and θ moved away from them, L(γ) = ℓ(θ⁰ +
/// (γ_l/‖Δ_l‖)·Δ_l) has dL/dγ_l = ∇_{θ_l}ℓ · Δ_l/‖Δ_l‖ at γ = ‖Δ‖. `Dizo::probe` must give
/// (ℓ₊ − ℓ₋)/(2ε_γ) ≈ Σ_l u_l · dL/dγ_l, and restore the weights.
///
/// Tolerances: the probe moves each ratio by ε_γ·u/‖Δ‖ (‖Δ‖ ≈ 3.2 here).
/// * fp64, ε_γ = 1e-4: ratio steps ~3e-5, truncation ~1e-9 relative, rounding
///   u·|ℓ|/ε_γ ~1e-12 → asserted 1e-6 (measured ~2e-8).
/// * ε_γ = 0.1 (the default): ratio steps ~3%, which cross ReLU kinks and give a
///   truncation of ~1e-2 relative (measured 1.1e-2 fp64, 2.2e-2 fp32) → asserted 5e-2.
/// * fp32, ε_γ = 1e-2: ratio steps ~0.3%, truncation ~1e-4, rounding
///   6e-8·|ℓ|/1e-2 ~2e-5 against a signal of ~0.2 → asserted 5e-3.
///
/// The probe's ratio uses ‖Δ‖ + 1e-8 (reference code), a 3e-9 relative shift.
///
/// Restore bound: apply + unapply is 8 roundings per element (θ−θ⁰, ·r, +θ⁰, the scalar
/// r and 1/r, and the same back), each ≤ u times |θ⁰|, |θ| or max(r, 1/r)·|Δ|; two probes
///     |θ' − θ| ≤ 16u·(|θ⁰| + |θ| + 2|Δ|)   (asserted; u of the parameter kind).
#[test]
fn dizo_probe_matches_autograd_and_restores_weights() {
    let _g = rng_guard();
    for kind in [Kind::Double, Kind::Float] {
        let (_vs, net) = tiny_opt_net(kind, true, 21);
        let params = net.named_parameters();
        let dizo = zo::Dizo::new(&params, dizo_settings(0.1)).unwrap();
        assert_eq!(dizo.projected.len(), 4, "k_proj and v_proj weights of 2 layers");
        // Move θ away from θ⁰: a random displacement of every parameter.
        tch::manual_seed(99);
        tch::no_grad(|| {
            for (_, p) in &params {
                let mut p = p.shallow_clone();
                let _ = p.g_add_(&(p.randn_like() * 0.1));
            }
        });
        let (_, batch) = candidate_batches().remove(0);
        let norms = dizo.divergences().unwrap();
        assert!(norms.iter().all(|&n| n > 1.0), "{norms:?}");

        // Autograd: dL/dγ_l = ∇θ_l ℓ · Δ_l / ‖Δ_l‖.
        task_model::batch_loss(&net, &batch, false).unwrap().backward();
        let dl_dgamma: Vec<f64> = dizo
            .projected
            .iter()
            .zip(&norms)
            .map(|(p, n)| {
                let delta = (&p.param - &p.anchor).detach();
                (p.param.grad() * delta).sum(Kind::Double).double_value(&[]) / n
            })
            .collect();
        tch::manual_seed(7);
        let u: Vec<f64> = Vec::try_from(Tensor::randn([norms.len() as i64], (Kind::Double, Device::Cpu))).unwrap();
        let exact: f64 = u.iter().zip(&dl_dgamma).map(|(u, d)| u * d).sum();
        assert!(exact.abs() > 1e-2, "Σ u·dL/dγ = {exact} too small to test anything");

        let cases: &[(f64, f64)] =
            if kind == Kind::Double { &[(1e-4, 1e-6), (0.1, 5e-2)] } else { &[(1e-2, 5e-3), (0.1, 5e-2)] };
        for &(eps_gamma, tol) in cases {
            let dizo = zo::Dizo {
                settings: dizo_settings(eps_gamma),
                projected: dizo.projected.iter().map(clone_projected).collect(),
            };
            let before = snapshot(&params);
            let (lp, lm) = dizo.probe(&norms, &u, &norms, &mut || zo_loss(&net, &batch)).unwrap();
            let estimate = (lp - lm) / (2.0 * eps_gamma);
            let err = (estimate - exact).abs() / exact.abs();
            let u_r = unit_roundoff(kind);
            let mut max_ratio = 0f64;
            for (((name, p), b), (_, a)) in params.iter().zip(&before).zip(anchors_or_self(&dizo, &params)) {
                let dev = (p - b).abs().to_kind(Kind::Double);
                let bound = (a.abs() + b.abs() + (b - &a).abs() * 2.0).to_kind(Kind::Double) * (16.0 * u_r) + 1e-300;
                let ratio = (&dev / &bound).max().double_value(&[]);
                assert!(ratio <= 1.0, "{kind:?} {name}: probe restore error {ratio} × the bound");
                if !zo::is_projected(name) {
                    assert!(p.equal(b), "{name} is not projected and must not change at all");
                }
                max_ratio = max_ratio.max(ratio);
            }
            eprintln!(
                "dizo probe {kind:?} ε_γ={eps_gamma}: Σu·dL/dγ = {exact:.6}, estimate {estimate:.6}, rel err {err:.2e}; restore max/bound {max_ratio:.3}"
            );
            assert!(err < tol, "{kind:?} ε_γ={eps_gamma}: relative error {err:e} ≥ {tol:e}");
        }
    }
}

fn clone_projected(p: &zo::Projected) -> zo::Projected {
    zo::Projected { name: p.name.clone(), param: p.param.shallow_clone(), anchor: p.anchor.shallow_clone() }
}

/// For every parameter, its DiZO anchor (projected tensors) or itself (others), so the
/// restore bound has a θ⁰ for each.
fn anchors_or_self(dizo: &zo::Dizo, params: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    params
        .iter()
        .map(|(n, t)| {
            let a = dizo.projected.iter().find(|p| &p.name == n).map(|p| p.anchor.shallow_clone());
            (n.clone(), a.unwrap_or_else(|| t.detach().copy()))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// 4. DiZO's projection round: re-initialisation and clipping (docs/zo_methods.md §2.4).

/// Synthetic fp64 parameters: three projected tensors (two shapes) and one that is not.
fn synthetic_params() -> Vec<(String, Tensor)> {
    tch::manual_seed(5);
    let t = |shape: &[i64]| Tensor::randn(shape, (Kind::Double, Device::Cpu));
    vec![
        ("model.decoder.layers.0.self_attn.k_proj.weight".into(), t(&[4, 4])),
        ("model.decoder.layers.0.self_attn.v_proj.weight".into(), t(&[4, 4])),
        ("model.decoder.layers.0.self_attn.q_proj.weight".into(), t(&[4, 4])),
        ("model.decoder.layers.1.self_attn.k_proj.weight".into(), t(&[3, 5])),
    ]
}

/// Anchors at the current values, then every tensor moved by N(0, 0.3²) (‖Δ‖ ≈ 1.2).
fn anchored_and_moved(settings: DizoSettings) -> (Vec<(String, Tensor)>, zo::Dizo) {
    let params = synthetic_params();
    let dizo = zo::Dizo::new(&params, settings).unwrap();
    assert_eq!(dizo.projected.len(), 3);
    tch::manual_seed(6);
    for (_, p) in &params {
        let mut p = p.shallow_clone();
        let _ = p.g_add_(&(p.randn_like() * 0.3));
    }
    (params, dizo)
}

/// ‖Δ_l‖ now, divided by `n0`: the ratio the current weights realise.
fn current_ratios(dizo: &zo::Dizo, n0: &[f64]) -> Vec<f64> {
    dizo.divergences().unwrap().iter().zip(n0).map(|(n, n0)| n / n0).collect()
}

/// The ratio a projection round reports for γ = c·‖Δ‖: the reference applies
/// r = γ/(‖Δ‖ + 1e-8), so "exactly c" means c·n/(n + 1e-8), within 1e-8/n of c.
fn applied(c: f64, n: f64) -> f64 {
    c * n / (n + 1e-8)
}

/// (a) A loss that does not depend on θ: g = 0 in every inner iteration, so γ keeps its
/// re-initialised value ‖Δ‖ (ratio 1) and the permanent projection leaves θ unchanged
/// (up to the reference's 1e-8 guard, |Δθ| ≤ 1e-8·|Δ|/‖Δ‖, plus rounding). A second round
/// after an upward one shows γ is re-initialised from the new ‖Δ‖, not carried over.
#[test]
fn dizo_constant_loss_keeps_ratio_one() {
    let _g = rng_guard();
    let (params, dizo) = anchored_and_moved(dizo_settings(0.1));
    let n0 = dizo.divergences().unwrap();
    let before = snapshot(&params);
    let mut calls = 0;
    let mut normal = |_j: usize, n: usize| -> Vec<f64> { (0..n).map(|i| [1.3, -0.7, 0.4][i % 3]).collect() };
    let report = dizo
        .projection_round(
            &mut |_j| {
                calls += 1;
                Ok(2.5)
            },
            &mut normal,
        )
        .unwrap();
    assert_eq!(calls, 2 * dizo.settings.inner_iters as usize, "two probes per inner iteration");
    assert_eq!(report.skipped, 0);
    for (r, n) in report.ratios.iter().zip(&n0) {
        assert!((r - applied(1.0, *n)).abs() <= 1e-15, "ratio {r} for ‖Δ‖ = {n}");
        assert!((r - 1.0).abs() <= 1e-8 / n + 1e-15);
    }
    let mut max_dev = 0f64;
    for ((name, p), b) in params.iter().zip(&before) {
        let dev = (p - b).abs().max().double_value(&[]);
        max_dev = max_dev.max(dev);
        assert!(dev <= 1e-8 + 1e-14, "{name} moved by {dev:e}");
        if !zo::is_projected(name) {
            assert!(p.equal(b), "{name} is not projected");
        }
    }
    eprintln!("dizo constant loss: ratios {:?}, max |Δθ| {max_dev:.2e}", report.ratios);

    // Re-initialisation: an upward round (ratio 1+τ), then a constant-loss round must start
    // again at ratio 1 of the *new* ‖Δ‖ = (1+τ)‖Δ⁰‖.
    let up = dizo
        .projection_round(&mut |_| Ok(-current_ratios(&dizo, &n0).iter().sum::<f64>()), &mut |_, n| vec![1.0; n])
        .unwrap();
    let n1 = dizo.divergences().unwrap();
    for ((r, a), b) in up.ratios.iter().zip(&n0).zip(&n1) {
        assert!((r - 1.2).abs() < 1e-7 && (b / a - 1.2).abs() < 1e-7, "{r} {a} {b}");
    }
    let again = dizo.projection_round(&mut |_| Ok(0.0), &mut normal).unwrap();
    for (r, n) in again.ratios.iter().zip(&n1) {
        assert!((r - applied(1.0, *n)).abs() <= 1e-15);
    }
}

/// (b) A loss that rewards larger displacements, L = −mean_l ‖Δ_l‖/‖Δ⁰_l‖, drives every
/// ratio to the clip bound 1+τ; the mirror loss drives them to 1−τ. With u > 0 for every
/// layer each SPSA update moves every γ_l the same way: g ≈ ∓mean(u_l/‖Δ_l‖) ≈ ∓0.6, so
/// the ratio step η_γ·|g|·u_l ≥ 0.6 ≫ τ and the first update already clips; later probes
/// (ratios 1±τ ± ε_γu/‖Δ‖) keep pushing the same way.
#[test]
fn dizo_ratios_clip_at_one_plus_and_minus_tau() {
    let _g = rng_guard();
    for (sign, target) in [(1.0, 1.2), (-1.0, 0.8)] {
        let (params, dizo) = anchored_and_moved(dizo_settings(0.1));
        let n0 = dizo.divergences().unwrap();
        let q_before = params[2].1.copy();
        let report = dizo
            .projection_round(
                &mut |_j| Ok(-sign * current_ratios(&dizo, &n0).iter().sum::<f64>() / n0.len() as f64),
                &mut |_j, n| (0..n).map(|i| 0.5 + 0.25 * i as f64).collect(),
            )
            .unwrap();
        let realised = current_ratios(&dizo, &n0);
        eprintln!("dizo clip sign {sign}: ratios {:?}, realised ‖Δ‖/‖Δ⁰‖ {realised:?}", report.ratios);
        for ((r, n), got) in report.ratios.iter().zip(&n0).zip(&realised) {
            // γ sits exactly on the bound; the applied ratio differs from it only by the
            // reference's +1e-8 in the denominator (and n drifts by rounding in the round).
            assert!((r - applied(target, *n)).abs() <= 1e-12, "ratio {r}, bound {target}, ‖Δ‖ {n}");
            assert!((r - target).abs() <= target * 1e-8 / n + 1e-12);
            assert!((got - r).abs() <= 1e-12, "weights realise {got}, reported {r}");
        }
        assert!(params[2].1.equal(&q_before), "q_proj is not projected");
    }
}

/// (c) u is clipped to ±(τ/ε_γ)·‖Δ_l‖ before probing, so a probe never moves a ratio by
/// more than τ: with u = (+10⁶, −10⁶, 0.5) the first (+) probe sees ratios
/// (1+τ, 1−τ, 1 + ε_γ·0.5/‖Δ‖) and the (−) probe the mirror images.
#[test]
fn dizo_u_is_clipped_to_tau_over_eps() {
    let _g = rng_guard();
    let (_params, dizo) = anchored_and_moved(DizoSettings { inner_iters: 1, ..dizo_settings(0.1) });
    let n0 = dizo.divergences().unwrap();
    let mut seen: Vec<Vec<f64>> = Vec::new();
    dizo.projection_round(
        &mut |_| {
            seen.push(current_ratios(&dizo, &n0));
            Ok(0.0)
        },
        &mut |_, n| {
            assert_eq!(n, 3);
            vec![1e6, -1e6, 0.5]
        },
    )
    .unwrap();
    assert_eq!(seen.len(), 2);
    let (tau, eps) = (0.2, 0.1);
    let expected_plus = [applied(1.0 + tau, n0[0]), applied(1.0 - tau, n0[1]), (n0[2] + eps * 0.5) / (n0[2] + 1e-8)];
    let expected_minus = [applied(1.0 - tau, n0[0]), applied(1.0 + tau, n0[1]), (n0[2] - eps * 0.5) / (n0[2] + 1e-8)];
    for (got, want) in seen[0].iter().zip(&expected_plus).chain(seen[1].iter().zip(&expected_minus)) {
        assert!((got - want).abs() < 1e-12, "probe ratio {got}, expected {want}");
    }
    eprintln!("dizo u clipping: probe ratios + {:?}, − {:?}", seen[0], seen[1]);
}

/// Edge cases of a round: nothing has moved yet (no loss evaluated, ratios 1, weights
/// bit-identical) and non-finite probe losses (every iteration skipped, ratio 1).
#[test]
fn dizo_round_edge_cases() {
    let _g = rng_guard();
    let params = synthetic_params();
    let dizo = zo::Dizo::new(&params, dizo_settings(0.1)).unwrap();
    let before = snapshot(&params);
    let report =
        dizo.projection_round(&mut |_| panic!("no loss without a displacement"), &mut |_, n| vec![1.0; n]).unwrap();
    assert_eq!(report.ratios, vec![1.0; 3]);
    assert!(params.iter().zip(&before).all(|((_, p), b)| p.equal(b)));

    let (_params, dizo) = anchored_and_moved(dizo_settings(0.1));
    let n0 = dizo.divergences().unwrap();
    let report = dizo.projection_round(&mut |_| Ok(f64::NAN), &mut |_, n| vec![1.0; n]).unwrap();
    assert_eq!(report.skipped, dizo.settings.inner_iters);
    for (r, n) in report.ratios.iter().zip(&n0) {
        assert!((r - applied(1.0, *n)).abs() <= 1e-15);
    }
}

// ---------------------------------------------------------------------------------------
// 5. Every method × task with a local train split, through the worker, at tiny scale.

const TASKS: [TaskId; 12] = [
    TaskId::Sst2,
    TaskId::Cola,
    TaskId::Mrpc,
    TaskId::Stsb,
    TaskId::Rte,
    TaskId::Wnli,
    TaskId::Cb,
    TaskId::Copa,
    TaskId::Boolq,
    TaskId::Wic,
    TaskId::Wsc,
    TaskId::Multirc,
];

/// A shard as `scheduler::expand` builds it from the `tiny` preset, shrunk for a test:
/// 4 steps of 4 examples, evaluation at step 4, 16/8/8 train/dev/test examples, DiZO
/// rounds every 2 steps with 2 inner iterations.
fn tiny_shard(model: ModelId, task: TaskId, seed: u64) -> Shard {
    let p = scale::preset("tiny").unwrap();
    let arch = match model.family() {
        Family::Qwen3 => ModelArch::Qwen3(p.qwen3.clone()),
        Family::Opt => ModelArch::Opt(p.opt.clone()),
    };
    let mut train = if model.is_zeroth_order() { p.zeroth_order.clone() } else { p.first_order.clone() };
    train.max_steps = 4;
    train.batch_size = 4;
    train.eval_batch_size = 16;
    train.warmup_steps = train.warmup_steps.min(1);
    train.eval_every = 4;
    train.checkpoint_every = 0;
    let dizo = (model == ModelId::DizoOpt).then(|| DizoSettings { interval: 2, inner_iters: 2, ..p.dizo.clone() });
    Shard {
        run_id: shared::RunId::new("r-train-tests").unwrap(),
        shard_id: shared::ShardId::new(format!("{model}-{task}-{seed}")).unwrap(),
        index: 0,
        model,
        task,
        seed,
        scale: p.name.clone(),
        device_class: DeviceClass::Cpu,
        arch,
        init: ModelInit::Random,
        data: DataSettings { train_examples: 16, dev_examples: 8, test_examples: 8, max_seq_len: 64 },
        train,
        dizo,
    }
}

fn request(shard: Shard, checkpoint_dir: Option<&Path>) -> WorkerRequest {
    WorkerRequest {
        protocol_version: PROTOCOL_VERSION,
        shard,
        device: DeviceSpec::Cpu,
        data_dir: crate::data::test_data_dir(),
        checkpoint_dir: checkpoint_dir.map(Path::to_path_buf),
        model_roots: Vec::new(),
        threads: 1,
        traceparent: None,
        attempt: 1,
    }
}

/// Runs a request under the RNG guard; the events and the result.
fn run_request(req: &WorkerRequest, sink: &mut dyn EventSink) -> Result<()> {
    let _g = rng_guard();
    worker::run(req, sink)
}

fn finished(events: &[WorkerEvent]) -> &ShardOutcome {
    match events.last() {
        Some(WorkerEvent::Finished(o)) => o,
        other => panic!("expected Finished last, got {other:?}"),
    }
}

fn evaluations(o: &ShardOutcome) -> &serde_json::Value {
    &o.config["evaluations"]
}

/// Asserts a finished smoke run: metrics named as `metric_names(task)`, all finite, the
/// primary one present, every split non-empty, `steps == max_steps`, and the event
/// stream Started → train/dev/test metrics → Finished.
fn check_outcome(shard: &Shard, events: &[WorkerEvent]) {
    let o = finished(events);
    let what = format!("{} × {}", shard.model, shard.task);
    let names: BTreeSet<&str> = metric_names(shard.task).iter().copied().collect();
    for (split, m) in [("test", &o.metrics), ("dev", &o.dev_metrics)] {
        let got: BTreeSet<&str> = m.keys().map(String::as_str).collect();
        assert_eq!(got, names, "{what}: {split} metric names");
        assert!(m.values().all(|v| v.is_finite()), "{what}: {split} metrics {m:?}");
    }
    assert!(o.metrics.contains_key(&o.primary_metric), "{what}: primary {} missing", o.primary_metric);
    assert_eq!(o.primary_metric, crate::metrics::primary_metric(shard.task));
    for split in ["train", "dev", "test"] {
        assert!(o.split_sizes.get(split).is_some_and(|&n| n > 0), "{what}: split sizes {:?}", o.split_sizes);
    }
    assert_eq!(o.steps, u64::from(shard.train.max_steps), "{what}");
    assert_eq!(o.skipped_steps, 0, "{what}");
    assert_eq!(o.resumed_from_step, None);
    assert!(o.parameters > 0 && o.threads == 1);
    assert!(
        matches!(events.first(), Some(WorkerEvent::Started { total_steps: 4, resumed_from_step: None, .. })),
        "{what}"
    );
    let kinds: BTreeSet<&str> = events
        .iter()
        .filter_map(|e| match e {
            WorkerEvent::Metrics { kind, values, .. } => {
                assert!(values.values().all(|v| v.is_finite()), "{what}: {kind} {values:?}");
                Some(kind.as_str())
            }
            _ => None,
        })
        .collect();
    assert_eq!(kinds, BTreeSet::from(["dev", "test", "train"]), "{what}");
    let train_loss = events.iter().any(
        |e| matches!(e, WorkerEvent::Metrics { kind, values, .. } if kind == "train" && values.contains_key("loss")),
    );
    assert!(train_loss, "{what}: no training loss reported");
}

/// Runs `model` on every task; OPT × STS-B must be refused as unsupported.
fn smoke(model: ModelId) -> BTreeMap<TaskId, Vec<WorkerEvent>> {
    let t0 = Instant::now();
    let mut out = BTreeMap::new();
    for task in TASKS {
        let shard = tiny_shard(model, task, 3);
        let mut sink = VecSink::default();
        let t = Instant::now();
        let result = run_request(&request(shard.clone(), None), &mut sink);
        if task == TaskId::Stsb && model.family() == Family::Opt {
            match result {
                Err(Error::Unsupported(msg)) => assert!(msg.contains("STS-B"), "{msg}"),
                other => panic!("{model} × STS-B must be refused as unsupported, got {other:?}"),
            }
            assert!(sink.0.is_empty(), "nothing starts for an unsupported pair");
            continue;
        }
        result.unwrap_or_else(|e| panic!("{model} × {task}: {}", worker::error_chain(&e)));
        check_outcome(&shard, &sink.0);
        eprintln!("smoke {model} × {task}: {:.2}s, {:?}", t.elapsed().as_secs_f64(), finished(&sink.0).metrics);
        out.insert(task, sink.0);
    }
    eprintln!("smoke {model}: all tasks in {:.1}s", t0.elapsed().as_secs_f64());
    out
}

#[test]
fn smoke_qwen3_every_task() {
    smoke(ModelId::Qwen3);
}

#[test]
fn smoke_qwen3_ckpt_every_task() {
    smoke(ModelId::Qwen3Ckpt);
}

/// `qwen3-ckpt` is `qwen3` with a checkpointed backward: through the trainer, on the same
/// shard (seed, data, init), every step's training loss, the evaluation history and the
/// final metrics agree to fp32 rounding, and the placement audit covered the same tensors:
/// every parameter, its three AdamW state tensors and the batch's four.
#[test]
fn qwen3_ckpt_trains_like_qwen3_through_the_trainer() {
    let run = |model: ModelId| {
        let mut shard = tiny_shard(model, TaskId::Mrpc, 11);
        shard.train.max_steps = 8;
        let mut sink = VecSink::default();
        run_request(&request(shard, None), &mut sink).unwrap();
        sink.0
    };
    let (plain, ckpt) = (run(ModelId::Qwen3), run(ModelId::Qwen3Ckpt));
    let (lp, lc) = (train_losses(&plain, 0), train_losses(&ckpt, 0));
    assert_eq!(lp.len(), 8);
    let worst = lp.iter().zip(&lc).map(|((_, a), (_, b))| (a - b).abs() / a.abs()).fold(0.0, f64::max);
    eprintln!("qwen3-ckpt vs qwen3 through the trainer: worst relative loss difference over 8 steps {worst:.2e}");
    assert!(lp.iter().zip(&lc).all(|((s, _), (t, _))| s == t));
    assert!(worst <= 1e-5, "training losses differ by {worst:e}: {lp:?} vs {lc:?}");
    let (op, oc) = (finished(&plain), finished(&ckpt));
    assert_eq!(op.best_step, oc.best_step);
    for (name, v) in &op.metrics {
        assert!((v - oc.metrics[name]).abs() <= 1e-6, "{name}: {v} vs {}", oc.metrics[name]);
    }
    let audited = |o: &ShardOutcome| o.config["placement_audit"]["tensors_on_device"].as_u64().unwrap();
    let params = scale::preset("tiny").unwrap().qwen3.num_hidden_layers as u64 * 11 + 3; // embed, norm, score
    assert_eq!(audited(oc), 4 * params + 4, "parameters, AdamW state (3 per parameter) and the batch");
    assert_eq!(audited(op), audited(oc));
    assert_eq!(oc.config["shard"]["model"], "qwen3-ckpt");
}

/// A Qwen3 checkpoint reaches rev-qwen3 only as the spec's explicit
/// `rev_qwen3_from_qwen3 = true` (init kind `qwen3-checkpoint-in-rev-qwen3`): a plain
/// `pretrained` init is refused, the converted kind loads the checkpoint's weights, runs
/// through the trainer, and the result's config records it (top-level flag and
/// `shard.init`); the converted kind is refused for any other model.
#[test]
fn qwen3_checkpoint_reaches_rev_qwen3_only_when_the_spec_asks() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("qwen3-tiny");
    let weight = {
        let _g = rng_guard();
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = crate::models::qwen3::Config::from_arch(&scale::preset("tiny").unwrap().qwen3);
        let m = crate::models::qwen3::Qwen3ForCausalLM::new(&vs.root(), &cfg).unwrap();
        crate::models::hf::save_model_dir(&dir, &m, None).unwrap();
        m.named_parameters().into_iter().find(|(n, _)| n == "model.layers.0.mlp.up_proj.weight").unwrap().1.copy()
    };
    let dir_str = dir.to_str().unwrap().to_owned();
    let build = |model: ModelId, init: ModelInit| {
        let mut shard = tiny_shard(model, TaskId::Sst2, 1);
        shard.init = init;
        let vs = nn::VarStore::new(Device::Cpu);
        task_model::build_net(&vs, &shard, Some(&dir), 2, 0).map(|(net, _)| (vs, net))
    };

    let err = build(ModelId::RevQwen3, ModelInit::Pretrained { dir: dir_str.clone() }).unwrap_err();
    assert!(matches!(err, Error::Refused(_)) && err.to_string().contains("rev_qwen3_from_qwen3 = true"), "{err}");
    let converted = ModelInit::Qwen3CheckpointInRevQwen3 { dir: dir_str.clone() };
    let err = build(ModelId::Qwen3, converted.clone()).unwrap_err();
    assert!(matches!(err, Error::Refused(_)), "{err}");
    let (_vs, net) = build(ModelId::RevQwen3, converted.clone()).unwrap();
    assert!(matches!(net, Net::RevQwen3(_)));
    let loaded = net.named_parameters().into_iter().find(|(n, _)| n == "model.layers.0.mlp.up_proj.weight").unwrap().1;
    assert!(loaded.equal(&weight), "the checkpoint's weights are loaded");

    // Through the trainer: the result's config says so.
    let mut shard = tiny_shard(ModelId::RevQwen3, TaskId::Sst2, 1);
    shard.init = converted;
    let mut req = request(shard, None);
    req.model_roots = vec![root.path().to_path_buf()];
    let mut sink = VecSink::default();
    run_request(&req, &mut sink).unwrap();
    let config = &finished(&sink.0).config;
    assert_eq!(config["rev_qwen3_from_qwen3"], true);
    assert_eq!(config["shard"]["init"]["kind"], "qwen3-checkpoint-in-rev-qwen3");
    assert_eq!(config["shard"]["init"]["dir"], dir_str);
}

#[test]
fn smoke_rev_qwen3_every_task() {
    smoke(ModelId::RevQwen3);
}

#[test]
fn smoke_ft_opt_every_task() {
    smoke(ModelId::FtOpt);
}

#[test]
fn smoke_mezo_opt_every_task() {
    smoke(ModelId::MezoOpt);
}

/// DiZO on every task, plus: with no projection round (interval > max_steps) DiZO is
/// bit-identical to MeZO (they differ only by the projection), and with rounds at steps
/// 2 and 4 its evaluation differs from MeZO's (a round ran and moved the weights).
#[test]
fn smoke_dizo_opt_every_task() {
    let dizo = smoke(ModelId::DizoOpt);
    let mut mezo = VecSink::default();
    run_request(&request(tiny_shard(ModelId::MezoOpt, TaskId::Sst2, 3), None), &mut mezo).unwrap();
    let mut no_round = VecSink::default();
    let mut shard = tiny_shard(ModelId::DizoOpt, TaskId::Sst2, 3);
    shard.dizo.as_mut().unwrap().interval = 100;
    run_request(&request(shard, None), &mut no_round).unwrap();
    let (m, d0, d) = (finished(&mezo.0), finished(&no_round.0), finished(&dizo[&TaskId::Sst2]));
    assert_eq!(evaluations(d0), evaluations(m), "DiZO without a round must equal MeZO");
    assert_ne!(evaluations(d), evaluations(m), "DiZO rounds must change the weights");
}

/// QNLI ships no train file: training it fails with an error naming `QNLI/train.tsv`.
#[test]
fn training_a_task_without_train_split_names_the_file() {
    let mut sink = VecSink::default();
    let err = run_request(&request(tiny_shard(ModelId::Qwen3, TaskId::Qnli, 3), None), &mut sink).unwrap_err();
    let msg = worker::error_chain(&err);
    assert!(matches!(err, Error::Data { .. }), "{msg}");
    assert!(msg.contains("QNLI/train.tsv"), "{msg}");
    assert!(!err.is_retryable());
}

// ---------------------------------------------------------------------------------------
// 6. A resumed shard ends exactly where an uninterrupted one does.

/// Forwards events until the first metrics event after `after_step`, then fails the way
/// a dead supervisor pipe does: the worker stops there (a simulated kill).
struct KillAfter {
    events: VecSink,
    after_step: u64,
}

impl EventSink for KillAfter {
    fn emit(&mut self, event: WorkerEvent) -> Result<()> {
        if let WorkerEvent::Metrics { step, .. } = &event
            && *step > self.after_step
        {
            return Err(Error::Worker { message: "simulated kill".into(), retryable: true });
        }
        self.events.emit(event)
    }
}

fn train_losses(events: &[WorkerEvent], from: u64) -> Vec<(u64, f64)> {
    events
        .iter()
        .filter_map(|e| match e {
            WorkerEvent::Metrics { step, kind, values, .. } if kind == "train" && *step > from => {
                Some((*step, values["loss"]))
            }
            _ => None,
        })
        .collect()
}

/// 12 steps, checkpoints every 4, evaluations every 4. Run A uninterrupted; run B is
/// killed after the step-8 checkpoint; run C resumes B's checkpoint. C must report
/// `resumed_from_step == Some(8)` and match A bit for bit: outcome metrics, the full
/// evaluation history, the per-step training losses after step 8, and the final
/// checkpoint (weights, optimizer moments, DiZO anchors).
fn resume_equals_uninterrupted(model: ModelId) {
    let mut shard = tiny_shard(model, TaskId::Sst2, 5);
    shard.train.max_steps = 12;
    shard.train.eval_every = 4;
    shard.train.checkpoint_every = 4;
    if let Some(d) = shard.dizo.as_mut() {
        d.interval = 3; // rounds at steps 3, 6, 9, 12: one on each side of the kill
    }
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());

    let mut a = VecSink::default();
    run_request(&request(shard.clone(), Some(dir_a.path())), &mut a).unwrap();
    let outcome_a = finished(&a.0).clone();
    assert_eq!(outcome_a.resumed_from_step, None);

    let mut killed = KillAfter { events: VecSink::default(), after_step: 8 };
    let err = run_request(&request(shard.clone(), Some(dir_b.path())), &mut killed).unwrap_err();
    assert!(matches!(err, Error::Worker { .. }), "{err}");
    let ckpt = checkpoint::ShardDir::new(dir_b.path(), &shard.run_id, &shard.shard_id).unwrap();
    let (saved, _) = checkpoint::load(&ckpt, &shard.shard_id).unwrap().expect("a checkpoint at step 8");
    assert_eq!(saved.step, 8);
    assert_eq!(saved.history.len(), 2, "evaluations at steps 4 and 8");

    // Keep a copy of the step-8 checkpoint for the negative control below.
    let dir_d = tempfile::tempdir().unwrap();
    let ckpt_d = checkpoint::ShardDir::new(dir_d.path(), &shard.run_id, &shard.shard_id).unwrap();
    let (state_8, tensors_8) = checkpoint::load(&ckpt, &shard.shard_id).unwrap().unwrap();
    let mut tampered: Vec<(String, Tensor)> = tensors_8.into_iter().collect();
    tampered.sort_by(|a, b| a.0.cmp(&b.0));

    let mut c = VecSink::default();
    run_request(&request(shard.clone(), Some(dir_b.path())), &mut c).unwrap();
    let outcome_c = finished(&c.0);
    assert!(matches!(c.0.first(), Some(WorkerEvent::Started { resumed_from_step: Some(8), .. })));
    assert_eq!(outcome_c.resumed_from_step, Some(8));
    assert_eq!(outcome_c.steps, 12);
    assert_eq!(outcome_c.metrics, outcome_a.metrics, "{model}: test metrics");
    assert_eq!(outcome_c.dev_metrics, outcome_a.dev_metrics);
    assert_eq!(outcome_c.best_step, outcome_a.best_step);
    assert_eq!(evaluations(outcome_c), evaluations(&outcome_a), "{model}: evaluation history");
    assert_eq!(evaluations(&outcome_a).as_array().map(Vec::len), Some(3));
    let (la, lc) = (train_losses(&a.0, 8), train_losses(&c.0, 8));
    assert_eq!(la.len(), 4);
    assert_eq!(lc, la, "{model}: training losses of steps 9..12");

    // Final checkpoints: every tensor bit-identical.
    let final_a = checkpoint::load(
        &checkpoint::ShardDir::new(dir_a.path(), &shard.run_id, &shard.shard_id).unwrap(),
        &shard.shard_id,
    )
    .unwrap()
    .unwrap();
    let final_c = checkpoint::load(&ckpt, &shard.shard_id).unwrap().unwrap();
    assert_eq!(final_a.0.step, 12);
    assert_eq!(final_a.0.history, final_c.0.history);
    assert_eq!(final_a.1.len(), final_c.1.len());
    if model == ModelId::DizoOpt {
        assert!(final_a.1.keys().any(|k| k.starts_with("dizo.anchor.")), "DiZO anchors are checkpointed");
    }
    for (name, t) in &final_a.1 {
        assert!(t.equal(&final_c.1[name]), "{model}: {name} differs after resume");
    }
    eprintln!("resume {model}: evaluations {}", evaluations(&outcome_a));

    // Negative control: the state that only the checkpoint carries (AdamW moments; DiZO
    // anchors) is really what the resumed run uses. Tampering with it in the step-8
    // checkpoint must change the end of training, so the equality above is not vacuous.
    let prefix = if model == ModelId::DizoOpt { "dizo.anchor." } else { "optimizer.exp_avg." };
    let mut touched = 0;
    for (name, t) in &mut tampered {
        if name.starts_with(prefix) {
            *t = &*t * 0.5;
            touched += 1;
        }
    }
    assert!(touched > 0, "no {prefix}* tensors in the checkpoint");
    let refs: Vec<(String, &Tensor)> = tampered.iter().map(|(n, t)| (n.clone(), t)).collect();
    checkpoint::save(&ckpt_d, &state_8, &refs).unwrap();
    let mut d = VecSink::default();
    run_request(&request(shard.clone(), Some(dir_d.path())), &mut d).unwrap();
    let outcome_d = finished(&d.0);
    assert_eq!(outcome_d.resumed_from_step, Some(8));
    assert_ne!(train_losses(&d.0, 8), la, "{model}: tampered {prefix}* made no difference");
}

#[test]
fn resume_equals_uninterrupted_qwen3() {
    resume_equals_uninterrupted(ModelId::Qwen3);
}

#[test]
fn resume_equals_uninterrupted_dizo_opt() {
    resume_equals_uninterrupted(ModelId::DizoOpt);
}

// ---------------------------------------------------------------------------------------
// 7. The placement audit sees optimizer state.

/// AdamW moments live next to their parameters; audited against cuda:0, CPU moments are
/// reported by their optimizer names (CPU-only: nothing is allocated on CUDA).
#[test]
fn placement_audit_names_misplaced_optimizer_state() {
    let w = Tensor::zeros([3, 2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let b = Tensor::zeros([2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let settings = scale::preset("tiny").unwrap().first_order;
    let opt = AdamW::new(vec![("model.fc.weight".into(), w), ("model.fc.bias".into(), b)], &settings);
    let state = opt.state_tensors();
    assert_eq!(state.len(), 6);
    crate::models::audit::ensure_on_device(Device::Cpu, state.iter().map(|(n, t)| (n.as_str(), *t))).unwrap();
    let err = crate::models::audit::ensure_on_device(Device::Cuda(0), state.iter().map(|(n, t)| (n.as_str(), *t)))
        .unwrap_err();
    match &err {
        Error::Placement { device, count, examples } => {
            assert_eq!(device, "Cuda(0)");
            assert_eq!(*count, 6);
            assert!(examples.starts_with("optimizer.exp_avg.model.fc.weight@Cpu"), "{examples}");
            assert!(examples.contains("optimizer.exp_avg_sq.model.fc.weight@Cpu"), "{examples}");
        }
        other => panic!("expected a placement error, got {other}"),
    }
}
