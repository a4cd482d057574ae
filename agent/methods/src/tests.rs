//! Tests that prove the training methods correct: MeZO's projected gradient against
//! autograd, exact-enough restoration of θ after the ±ε probes, DiZO's γ estimate against
//! autograd, DiZO's re-initialisation and clipping (docs/zo_methods.md §1.2, §2.4), and the
//! placement audit of optimizer state. The shard driver's tests (method × task smoke
//! matrix, resume-equals-uninterrupted) are the agent's.
//!
//! Every test that draws random numbers holds `rng_guard()`: libtorch's CPU generator is
//! process-global (`zo::perturb` reseeds it), and the guard also pins libtorch to one
//! intra-op thread, which makes CPU runs bit-reproducible. Measured values are printed
//! with `eprintln!` (`cargo test -- --nocapture` shows them).

use tch::{Device, Kind, Tensor, nn};

use qsched_data::encode::{Candidate, CandidateExample};
use qsched_models::opt::OptForCausalLM;
use qsched_models::test_util::{randomize, rng_guard, tiny_opt};
use shared::scale::{self, DizoSettings};

use crate::batches::torch_seed;
use crate::collate::{CandidateRows, collate_candidates};
use crate::error::Result;
use crate::optim::AdamW;
use crate::task_model::{self, Batch, Net};
use crate::zo;

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
        let decay = crate::optim::decays(name, &p.size());
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
    qsched_models::audit::ensure_on_device(Device::Cpu, state.iter().map(|(n, t)| (n.as_str(), *t))).unwrap();
    let err = qsched_models::audit::ensure_on_device(Device::Cuda(0), state.iter().map(|(n, t)| (n.as_str(), *t)))
        .unwrap_err();
    match &err {
        qsched_models::Error::Placement { device, count, examples } => {
            assert_eq!(device, "Cuda(0)");
            assert_eq!(*count, 6);
            assert!(examples.starts_with("optimizer.exp_avg.model.fc.weight@Cpu"), "{examples}");
            assert!(examples.contains("optimizer.exp_avg_sq.model.fc.weight@Cpu"), "{examples}");
        }
        other => panic!("expected a placement error, got {other}"),
    }
}
