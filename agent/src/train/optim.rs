//! AdamW with decoupled weight decay, learning-rate schedules and gradient clipping.
//!
//! Written here rather than taken from `tch::nn::Optimizer` because the optimizer state
//! must be visible: the placement audit checks that every moment tensor sits on the pinned
//! device, and checkpoints save and restore the moments so a resumed shard continues
//! exactly where it stopped.

use tch::{Kind, Tensor};

use shared::scale::{LrSchedule, TrainSettings};

use crate::error::{Error, Result};

/// Learning rate at `step` (0-based) for the settings' schedule.
pub fn learning_rate(t: &TrainSettings, step: u64) -> f64 {
    let peak = t.learning_rate;
    let warmup = u64::from(t.warmup_steps);
    let total = u64::from(t.max_steps).max(1);
    if warmup > 0 && step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let progress = if total > warmup { (step - warmup) as f64 / (total - warmup) as f64 } else { 1.0 };
    let progress = progress.clamp(0.0, 1.0);
    match t.lr_schedule {
        LrSchedule::Constant => peak,
        LrSchedule::Linear => peak * (1.0 - progress),
        LrSchedule::Cosine => peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
    }
}

/// Whether a parameter gets weight decay: not biases, not norm weights (HF convention:
/// names containing "bias" or "norm"), not any 1-D tensor.
pub fn decays(name: &str, shape: &[i64]) -> bool {
    !(name.contains("bias") || name.contains("norm") || shape.len() < 2)
}

/// One parameter and its AdamW moments.
#[derive(Debug)]
pub struct AdamParam {
    /// HF state-dict name.
    pub name: String,
    /// The variable (shares storage with the model).
    pub param: Tensor,
    /// First moment.
    pub exp_avg: Tensor,
    /// Second moment.
    pub exp_avg_sq: Tensor,
    /// Whether weight decay applies.
    pub decay: bool,
}

/// AdamW over a fixed list of named parameters.
#[derive(Debug)]
pub struct AdamW {
    /// Parameters with their state, in model order.
    pub params: Vec<AdamParam>,
    /// Steps taken (for bias correction).
    pub step: u64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
}

impl AdamW {
    /// State for `params` (moments created on each parameter's own device).
    pub fn new(params: Vec<(String, Tensor)>, t: &TrainSettings) -> Self {
        let params = params
            .into_iter()
            .map(|(name, param)| {
                let decay = decays(&name, &param.size());
                let exp_avg = param.zeros_like().detach();
                let exp_avg_sq = param.zeros_like().detach();
                AdamParam { name, param, exp_avg, exp_avg_sq, decay }
            })
            .collect();
        AdamW { params, step: 0, beta1: t.adam_beta1, beta2: t.adam_beta2, eps: t.adam_eps, weight_decay: t.weight_decay }
    }

    /// Clears every gradient.
    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            let mut g = p.param.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    }

    /// Global L2 norm of the gradients.
    pub fn grad_norm(&self) -> Result<f64> {
        let mut total = 0.0f64;
        tch::no_grad(|| -> Result<()> {
            for p in &self.params {
                let g = p.param.grad();
                if g.defined() {
                    let n = g.f_norm()?.f_to_kind(Kind::Double)?;
                    let v = f64::try_from(&n).map_err(Error::Torch)?;
                    total += v * v;
                }
            }
            Ok(())
        })?;
        Ok(total.sqrt())
    }

    /// Scales gradients so their global norm is at most `max_norm`; returns the norm before.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> Result<f64> {
        let norm = self.grad_norm()?;
        if max_norm > 0.0 && norm > max_norm {
            let scale = max_norm / (norm + 1e-6);
            tch::no_grad(|| {
                for p in &mut self.params {
                    let mut g = p.param.grad();
                    if g.defined() {
                        let _ = g.g_mul_scalar_(scale);
                    }
                }
            });
        }
        Ok(norm)
    }

    /// One AdamW update at learning rate `lr`.
    pub fn step(&mut self, lr: f64) -> Result<()> {
        self.step += 1;
        let bc1 = 1.0 - self.beta1.powi(self.step as i32);
        let bc2 = 1.0 - self.beta2.powi(self.step as i32);
        let step_size = lr / bc1;
        let (b1, b2, eps, wd) = (self.beta1, self.beta2, self.eps, self.weight_decay);
        tch::no_grad(|| -> Result<()> {
            for p in &mut self.params {
                let g = p.param.grad();
                if !g.defined() {
                    continue;
                }
                if p.decay && wd > 0.0 {
                    let _ = p.param.f_mul_scalar_(1.0 - lr * wd)?;
                }
                let _ = p.exp_avg.f_mul_scalar_(b1)?.f_add_(&g.f_mul_scalar(1.0 - b1)?)?;
                let _ = p.exp_avg_sq.f_mul_scalar_(b2)?.f_addcmul_(&g, &g.f_mul_scalar(1.0 - b2)?)?;
                let denom = p.exp_avg_sq.f_sqrt()?.f_div_scalar(bc2.sqrt())?.f_add_scalar(eps)?;
                let _ = p.param.f_addcdiv_(&p.exp_avg.f_mul_scalar(-step_size)?, &denom)?;
            }
            Ok(())
        })
    }

    /// Every state tensor with a name (for the placement audit and checkpoints).
    pub fn state_tensors(&self) -> Vec<(String, &Tensor)> {
        let mut out = Vec::with_capacity(self.params.len() * 2);
        for p in &self.params {
            out.push((format!("optimizer.exp_avg.{}", p.name), &p.exp_avg));
            out.push((format!("optimizer.exp_avg_sq.{}", p.name), &p.exp_avg_sq));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::scale;

    fn settings() -> TrainSettings {
        let mut t = scale::preset("tiny").unwrap().first_order;
        t.max_steps = 100;
        t.warmup_steps = 10;
        t.learning_rate = 1.0;
        t
    }

    #[test]
    fn schedules() {
        let mut t = settings();
        assert!((learning_rate(&t, 0) - 0.1).abs() < 1e-12);
        assert!((learning_rate(&t, 9) - 1.0).abs() < 1e-12);
        // Linear: halfway through the 90 decay steps.
        assert!((learning_rate(&t, 55) - 0.5).abs() < 1e-12);
        assert!(learning_rate(&t, 100).abs() < 1e-12);
        t.lr_schedule = LrSchedule::Cosine;
        assert!((learning_rate(&t, 55) - 0.5).abs() < 1e-12);
        t.lr_schedule = LrSchedule::Constant;
        assert_eq!(learning_rate(&t, 99), 1.0);
    }

    #[test]
    fn decay_rules() {
        assert!(decays("model.layers.0.mlp.up_proj.weight", &[4, 4]));
        assert!(!decays("model.layers.0.input_layernorm.weight", &[4]));
        assert!(!decays("model.decoder.layers.0.fc1.bias", &[4]));
        assert!(!decays("model.norm.weight", &[4]));
    }

    /// Reference: the AdamW algorithm as documented for `torch.optim.AdamW`, evaluated in
    /// plain Python on p = (1, −2), loss Σp², lr 0.1, betas (0.9, 0.999), eps 1e-8, wd 0.01:
    /// ```python
    /// for t in 1..3: g = 2p; p *= 1 - lr*wd; m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g*g
    ///                p -= lr/(1-b1**t) * m / (sqrt(v)/sqrt(1-b2**t) + eps)
    /// # → p = (0.6989111831582322, -1.6949445143849768)
    /// ```
    #[test]
    fn matches_torch_adamw() {
        let mut t = settings();
        t.weight_decay = 0.01;
        let p = Tensor::from_slice(&[1.0f32, -2.0]).reshape([1, 2]).set_requires_grad(true);
        let mut opt = AdamW::new(vec![("w".into(), p.shallow_clone())], &t);
        for _ in 0..3 {
            opt.zero_grad();
            (&p * &p).sum(Kind::Float).backward();
            opt.step(0.1).unwrap();
        }
        let v: Vec<f32> = Vec::try_from(p.detach().reshape([2])).unwrap();
        assert!((v[0] - 0.698_911_2).abs() < 1e-5, "{v:?}");
        assert!((v[1] + 1.694_944_5).abs() < 1e-5, "{v:?}");
    }

    #[test]
    fn clipping() {
        let p = Tensor::from_slice(&[3.0f32, 4.0]).set_requires_grad(true);
        let mut opt = AdamW::new(vec![("w".into(), p.shallow_clone())], &settings());
        (&p * &p).sum(Kind::Float).backward(); // grad = (6, 8), norm 10
        let before = opt.clip_grad_norm(1.0).unwrap();
        assert!((before - 10.0).abs() < 1e-5);
        assert!((opt.grad_norm().unwrap() - 1.0).abs() < 1e-4);
    }
}
