//! Zeroth-order training: MeZO (SPSA with seed-regenerated perturbations, in place) and
//! DiZO (MeZO plus divergence-driven layer projection). docs/zo_methods.md
//! §1.2 and §2.4 are the specification followed here.
//!
//! MeZO never stores a perturbation: the direction z of step t is regenerated from a
//! per-step seed for each of its four uses (+ε, −2ε, +ε, update), walking the parameters
//! in one fixed order (HF `named_parameters()` order), each z drawn in the parameter's
//! own dtype and device. Memory is therefore the inference footprint plus one
//! parameter-sized temporary.
//!
//! Trainable set: every parameter, `embed_tokens` included, for both methods, so that
//! MeZO and DiZO differ only by the projection (the DiZO repository drops `embed_tokens`
//! as a side effect; we do not, see docs/zo_methods.md §2.2).

use tch::{Kind, Tensor};

use shared::scale::DizoSettings;

use crate::batches::torch_seed;
use crate::error::{Error, Result};
use crate::optim::decays;

/// Draws z for `param` from the global generator (seeded by the caller).
fn direction(param: &Tensor) -> Result<Tensor> {
    Ok(param.f_randn_like()?)
}

/// θ ← θ + scale·z(seed), for every parameter in order.
pub fn perturb(params: &[(String, Tensor)], seed: u64, scale: f64) -> Result<()> {
    tch::manual_seed(torch_seed(seed));
    tch::no_grad(|| -> Result<()> {
        for (_, p) in params {
            // Scale z in place: one parameter-sized temporary, not two.
            let mut z = direction(p)?;
            let _ = z.f_mul_scalar_(scale)?;
            let mut p = p.shallow_clone();
            let _ = p.f_add_(&z)?;
        }
        Ok(())
    })
}

/// MeZO update θ ← θ − lr·(g·z(seed) + λ·θ) (λ only for decayed tensors).
pub fn update(params: &[(String, Tensor)], seed: u64, projected_grad: f64, lr: f64, weight_decay: f64) -> Result<()> {
    tch::manual_seed(torch_seed(seed));
    tch::no_grad(|| -> Result<()> {
        for (name, p) in params {
            let mut z = direction(p)?;
            let _ = z.f_mul_scalar_(-lr * projected_grad)?;
            let mut p = p.shallow_clone();
            if weight_decay > 0.0 && decays(name, &p.size()) {
                let _ = p.f_mul_scalar_(1.0 - lr * weight_decay)?;
            }
            let _ = p.f_add_(&z)?;
        }
        Ok(())
    })
}

/// Outcome of one SPSA estimate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpsaStep {
    /// ℓ(θ + εz).
    pub loss_plus: f64,
    /// ℓ(θ − εz).
    pub loss_minus: f64,
    /// (ℓ₊ − ℓ₋) / 2ε.
    pub projected_grad: f64,
}

impl SpsaStep {
    /// True when both losses are finite (otherwise the step is skipped and resampled).
    pub fn is_finite(&self) -> bool {
        self.loss_plus.is_finite() && self.loss_minus.is_finite()
    }
}

/// One two-sided SPSA estimate with in-place perturbation; θ is restored (+ε, −2ε, +ε)
/// before returning, also when the loss fails.
pub fn spsa(
    params: &[(String, Tensor)],
    seed: u64,
    eps: f64,
    loss: &mut dyn FnMut() -> Result<f64>,
) -> Result<SpsaStep> {
    perturb(params, seed, eps)?;
    let plus = loss();
    perturb(params, seed, -2.0 * eps)?;
    let minus = if plus.is_ok() { loss() } else { Ok(f64::NAN) };
    perturb(params, seed, eps)?;
    let (loss_plus, loss_minus) = (plus?, minus?);
    Ok(SpsaStep { loss_plus, loss_minus, projected_grad: (loss_plus - loss_minus) / (2.0 * eps) })
}

/// One projected tensor of DiZO: a K or V projection weight and its anchor.
#[derive(Debug)]
pub struct Projected {
    /// Parameter name.
    pub name: String,
    /// The live parameter.
    pub param: Tensor,
    /// θ⁰: the weights at the start of training (same dtype; on the parameter's device,
    /// or in pinned host memory with `anchors_on_host`).
    pub anchor: Tensor,
}

impl Projected {
    /// The anchor on the parameter's device (a copy when it is kept in host memory).
    fn anchor_on_device(&self) -> Result<Tensor> {
        let device = self.param.device();
        if self.anchor.device() == device {
            Ok(self.anchor.shallow_clone())
        } else {
            Ok(self.anchor.f_to_device(device)?)
        }
    }
}

/// DiZO's state: anchors of the projected tensors.
#[derive(Debug)]
pub struct Dizo {
    /// Settings.
    pub settings: DizoSettings,
    /// The projected tensors, in parameter order.
    pub projected: Vec<Projected>,
}

/// Which tensors DiZO projects: the K and V projection weights of every decoder layer
/// (the released DiZO code; the paper text says Q/V).
pub fn is_projected(name: &str) -> bool {
    name.ends_with("self_attn.k_proj.weight") || name.ends_with("self_attn.v_proj.weight")
}

/// Frobenius norm of `t` as f64 (computed in fp32 or wider).
fn norm(t: &Tensor) -> Result<f64> {
    let k = if t.kind() == Kind::Double { Kind::Double } else { Kind::Float };
    Ok(t.f_to_kind(k)?.f_norm()?.f_double_value(&[])?)
}

impl Dizo {
    /// Anchors the projected tensors of `params` at their current values.
    pub fn new(params: &[(String, Tensor)], settings: DizoSettings) -> Result<Self> {
        let offload = settings.anchors_on_host;
        let projected = params
            .iter()
            .filter(|(n, _)| is_projected(n))
            .map(|(n, p)| {
                let anchor = match p.device() {
                    tch::Device::Cuda(_) if offload => {
                        // Pinned, so the per-tensor copies back to the GPU are fast DMA.
                        p.f_detach()?.f_to_device(tch::Device::Cpu)?.f_pin_memory(p.device())?
                    }
                    _ => p.f_detach()?.copy(),
                };
                Ok(Projected { name: n.clone(), param: p.shallow_clone(), anchor })
            })
            .collect::<Result<Vec<_>>>()?;
        if projected.is_empty() {
            return Err(Error::Dizo("DiZO found no self_attn.k_proj/v_proj weights to project".into()));
        }
        if offload {
            tracing::info!("DiZO anchors are kept in host memory (dizo.anchors_on_host)");
        }
        Ok(Dizo { settings, projected })
    }

    /// ‖θ_l − θ⁰_l‖ for every projected tensor.
    pub fn divergences(&self) -> Result<Vec<f64>> {
        tch::no_grad(|| self.projected.iter().map(|p| norm(&p.param.f_sub(&p.anchor_on_device()?)?)).collect())
    }

    /// Whether `dizo.anchors_on_host` asks for the anchors in host memory. Read from the
    /// setting, not off the tensors, so an anchor misplaced by a bug still fails the audit.
    pub fn anchors_on_host(&self) -> bool {
        self.settings.anchors_on_host
    }

    /// θ_l ← θ⁰_l + r_l·(θ_l − θ⁰_l) for ratios `r`, in place.
    pub fn scale_displacements(&self, ratios: &[f64]) -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            for (p, &r) in self.projected.iter().zip(ratios) {
                // Computed in fp32 at least: in fp16 the divide-back of `unapply` would
                // leave a rounding residue (docs/zo_methods.md §2.4).
                let work = if p.param.kind() == Kind::Double { Kind::Double } else { Kind::Float };
                let anchor = p.anchor_on_device()?.f_to_kind(work)?;
                let delta = p.param.f_to_kind(work)?.f_sub(&anchor)?;
                let new = anchor.f_add(&delta.f_mul_scalar(r)?)?.f_to_kind(p.param.kind())?;
                let mut dst = p.param.shallow_clone();
                dst.f_copy_(&new)?;
            }
            Ok(())
        })
    }

    /// One projection round (docs/zo_methods.md §2.4): J SPSA iterations on γ with fresh
    /// batches, re-initialised at γ = ‖Δθ‖ and clipped to [(1−τ)‖Δθ‖, (1+τ)‖Δθ‖], then
    /// the projection is applied permanently. `loss(j)` evaluates the loss of the j-th
    /// round batch with the current weights; `normal(j)` draws the u vector of iteration j.
    /// Returns the final ratios γ_l/‖Δθ_l‖.
    pub fn projection_round(
        &self,
        loss: &mut dyn FnMut(usize) -> Result<f64>,
        normal: &mut dyn FnMut(usize, usize) -> Vec<f64>,
    ) -> Result<RoundReport> {
        let s = &self.settings;
        let l = self.projected.len();
        let mut gamma: Vec<f64> = Vec::new();
        let mut skipped = 0u32;
        let mut norms = self.divergences()?;
        for j in 0..s.inner_iters as usize {
            norms = self.divergences()?;
            if j == 0 {
                gamma = norms.clone(); // re-initialisation: ratio 1
            }
            if norms.iter().all(|&n| n == 0.0) {
                // Nothing has moved yet: there is no direction to rescale.
                break;
            }
            let u: Vec<f64> = normal(j, l)
                .into_iter()
                .zip(&norms)
                .map(|(u, &n)| {
                    let bound = s.clip_tau / s.eps_gamma * n;
                    u.clamp(-bound, bound)
                })
                .collect();
            let (lp, lm) = self.probe(&gamma, &u, &norms, &mut || loss(j))?;
            if !(lp.is_finite() && lm.is_finite()) {
                skipped += 1;
                continue;
            }
            let g = (lp - lm) / (2.0 * s.eps_gamma);
            for ((gl, ul), &n) in gamma.iter_mut().zip(&u).zip(&norms) {
                *gl = (*gl - s.step_gamma * n * g * ul).clamp((1.0 - s.clip_tau) * n, (1.0 + s.clip_tau) * n);
            }
        }
        let final_ratios: Vec<f64> =
            gamma.iter().zip(&norms).map(|(g, n)| if *n > 0.0 { g / (n + 1e-8) } else { 1.0 }).collect();
        self.scale_displacements(&final_ratios)?;
        Ok(RoundReport { ratios: final_ratios, skipped })
    }

    /// The two γ probes of one SPSA iteration: the loss with γ + ε_γ·u and with
    /// γ − ε_γ·u (each applied as displacement ratios γ/‖Δθ‖, then undone).
    pub fn probe(
        &self,
        gamma: &[f64],
        u: &[f64],
        norms: &[f64],
        loss: &mut dyn FnMut() -> Result<f64>,
    ) -> Result<(f64, f64)> {
        let eps = self.settings.eps_gamma;
        let ratios = |sign: f64| -> Vec<f64> {
            gamma.iter().zip(u).zip(norms).map(|((g, u), n)| (g + sign * eps * u) / (n + 1e-8)).collect()
        };
        let lp = self.with_ratios(&ratios(1.0), &mut *loss)?;
        let lm = self.with_ratios(&ratios(-1.0), &mut *loss)?;
        Ok((lp, lm))
    }

    /// Runs `f` with the displacements scaled by `ratios`, then restores them.
    fn with_ratios(&self, ratios: &[f64], f: impl FnOnce() -> Result<f64>) -> Result<f64> {
        self.scale_displacements(ratios)?;
        let out = f();
        let inverse: Vec<f64> = ratios.iter().map(|r| if *r != 0.0 { 1.0 / r } else { 1.0 }).collect();
        self.scale_displacements(&inverse)?;
        out
    }

    /// Anchors with names (checkpoints, memory accounting).
    pub fn anchor_tensors(&self) -> Vec<(String, &Tensor)> {
        self.projected.iter().map(|p| (format!("dizo.anchor.{}", p.name), &p.anchor)).collect()
    }

    /// The anchors the placement audit holds to the training device: all of them, or none
    /// when `dizo.anchors_on_host` keeps them in host memory by design.
    pub fn device_anchor_tensors(&self) -> Vec<(String, &Tensor)> {
        if self.anchors_on_host() { Vec::new() } else { self.anchor_tensors() }
    }
}

/// What a projection round did.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundReport {
    /// Final γ/‖Δθ‖ per projected tensor.
    pub ratios: Vec<f64>,
    /// Inner iterations skipped for a non-finite loss.
    pub skipped: u32,
}

impl RoundReport {
    /// Mean of the final ratios (0 when there are none).
    pub fn mean_ratio(&self) -> f64 {
        self.ratios.iter().sum::<f64>() / self.ratios.len().max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Vec<(String, Tensor)> {
        tch::manual_seed(0);
        vec![
            ("a.weight".into(), Tensor::randn([3, 4], (Kind::Float, tch::Device::Cpu))),
            ("a.bias".into(), Tensor::randn([4], (Kind::Float, tch::Device::Cpu))),
        ]
    }

    fn values(p: &[(String, Tensor)]) -> Vec<Vec<f32>> {
        p.iter().map(|(_, t)| Vec::<f32>::try_from(t.flatten(0, -1)).unwrap()).collect()
    }

    // These draw from libtorch's process-global generator: hold the shared RNG lock, or a
    // concurrently running seeded test (train::tests, the model tests) sees foreign draws.
    use qsched_models::test_util::rng_guard;

    #[test]
    fn perturbation_is_regenerated_from_the_seed() {
        let _g = rng_guard();
        let p = params();
        let before = values(&p);
        perturb(&p, 42, 1e-3).unwrap();
        let plus = values(&p);
        perturb(&p, 42, -1e-3).unwrap();
        let back = values(&p);
        assert_ne!(before, plus);
        for (a, b) in before.iter().flatten().zip(back.iter().flatten()) {
            // fp32: +εz then −εz restores within one rounding step of the value.
            assert!((a - b).abs() <= 1e-6 * a.abs().max(1.0), "{a} vs {b}");
        }
    }

    #[test]
    fn spsa_restores_parameters_even_when_the_loss_fails() {
        let _g = rng_guard();
        let p = params();
        let before = values(&p);
        let mut calls = 0;
        let r = spsa(&p, 7, 1e-3, &mut || {
            calls += 1;
            Err(Error::Diverged("boom".into()))
        });
        assert!(r.is_err());
        assert_eq!(calls, 1);
        for (a, b) in before.iter().flatten().zip(values(&p).iter().flatten()) {
            assert!((a - b).abs() <= 1e-6 * a.abs().max(1.0));
        }
    }

    #[test]
    fn projected_names() {
        assert!(is_projected("model.decoder.layers.3.self_attn.k_proj.weight"));
        assert!(is_projected("model.decoder.layers.3.self_attn.v_proj.weight"));
        assert!(!is_projected("model.decoder.layers.3.self_attn.k_proj.bias"));
        assert!(!is_projected("model.decoder.layers.3.self_attn.q_proj.weight"));
    }
}
