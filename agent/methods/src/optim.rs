//! AdamW with decoupled weight decay, learning-rate schedules and gradient clipping.
//!
//! The state is held here rather than in `tch::nn::Optimizer` because it must be
//! visible: the placement audit checks that every moment tensor sits on the pinned
//! device, and checkpoints save and restore the moments so a resumed shard continues
//! exactly where it stopped. The update itself is libtorch's fused multi-tensor AdamW
//! (the kernel behind `torch.optim.AdamW(fused=True)`, CPU and CUDA), reached through the
//! C++ shim: one pass over all parameters instead of a dozen elementwise kernels each.

use tch::{Kind, Tensor};

use shared::scale::{LrSchedule, TrainSettings};

use crate::error::Result;
use qsched_models::ffi;

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
    /// Step counter (float scalar on the parameter's device, as the fused kernel wants).
    pub step: Tensor,
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
                let step = Tensor::zeros([], (Kind::Float, param.device()));
                AdamParam { name, param, exp_avg, exp_avg_sq, step, decay }
            })
            .collect();
        AdamW {
            params,
            step: 0,
            beta1: t.adam_beta1,
            beta2: t.adam_beta2,
            eps: t.adam_eps,
            weight_decay: t.weight_decay,
        }
    }

    /// Releases every gradient (sets it to none, as PyTorch's `zero_grad()` does by
    /// default since 2.0): gradients exist only from a backward to the optimizer step,
    /// so a step's peak memory is what the method needs, not that plus a zeroed copy of
    /// every gradient kept from the step before. The next backward allocates them anew;
    /// `step` skips a parameter without a gradient, as torch.optim does.
    pub fn zero_grad(&mut self) -> Result<()> {
        let params: Vec<&Tensor> = self.params.iter().map(|p| &p.param).collect();
        Ok(ffi::release_grads(&params)?)
    }

    fn grads(&self) -> Vec<Tensor> {
        self.params.iter().map(|p| p.param.grad()).filter(Tensor::defined).collect()
    }

    /// Scales gradients so their global norm is at most `max_norm` (0 = no clipping);
    /// returns the norm before clipping.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> Result<f64> {
        Ok(ffi::clip_grad_norm(&self.grads(), max_norm)?)
    }

    /// One AdamW update at learning rate `lr`. Parameters without a gradient are skipped,
    /// as torch.optim does.
    pub fn step(&mut self, lr: f64) -> Result<()> {
        self.step += 1;
        let mut decayed = ffi::AdamGroup::default();
        let mut plain = ffi::AdamGroup::default();
        for p in &self.params {
            let g = p.param.grad();
            if !g.defined() {
                continue;
            }
            let group = if p.decay && self.weight_decay > 0.0 { &mut decayed } else { &mut plain };
            group.params.push(&p.param);
            group.grads.push(g);
            group.exp_avgs.push(&p.exp_avg);
            group.exp_avg_sqs.push(&p.exp_avg_sq);
            group.steps.push(&p.step);
        }
        ffi::fused_adamw(&decayed, lr, self.beta1, self.beta2, self.weight_decay, self.eps)?;
        ffi::fused_adamw(&plain, lr, self.beta1, self.beta2, 0.0, self.eps)?;
        Ok(())
    }

    /// Every state tensor with a name (for the placement audit and checkpoints).
    pub fn state_tensors(&self) -> Vec<(String, &Tensor)> {
        let mut out = Vec::with_capacity(self.params.len() * 3);
        for p in &self.params {
            out.push((format!("optimizer.exp_avg.{}", p.name), &p.exp_avg));
            out.push((format!("optimizer.exp_avg_sq.{}", p.name), &p.exp_avg_sq));
            out.push((format!("optimizer.step.{}", p.name), &p.step));
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
            opt.zero_grad().unwrap();
            (&p * &p).sum(Kind::Float).backward();
            opt.step(0.1).unwrap();
        }
        let v: Vec<f32> = Vec::try_from(p.detach().reshape([2])).unwrap();
        assert!((v[0] - 0.698_911_2).abs() < 1e-5, "{v:?}");
        assert!((v[1] + 1.694_944_5).abs() < 1e-5, "{v:?}");
    }

    /// `zero_grad` frees the gradients (set to none), and the next backward starts from
    /// nothing rather than adding to a stale gradient.
    #[test]
    fn zero_grad_releases_gradients() {
        let p = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
        let q = Tensor::from_slice(&[3.0f32]).set_requires_grad(true);
        let mut opt = AdamW::new(vec![("w".into(), p.shallow_clone()), ("v".into(), q.shallow_clone())], &settings());
        (&p * &p).sum(Kind::Float).backward();
        assert!(p.grad().defined() && !q.grad().defined());
        opt.zero_grad().unwrap();
        assert!(!p.grad().defined(), "gradient must be released, not zeroed");
        (&p * 3.0).sum(Kind::Float).backward();
        assert_eq!(Vec::<f32>::try_from(p.grad()).unwrap(), vec![3.0, 3.0]);
        // A step with some gradients missing updates only the others.
        let before = Vec::<f32>::try_from(q.detach()).unwrap();
        opt.step(0.1).unwrap();
        assert_eq!(Vec::<f32>::try_from(q.detach()).unwrap(), before);
    }

    #[test]
    fn clipping() {
        let p = Tensor::from_slice(&[3.0f32, 4.0]).set_requires_grad(true);
        let mut opt = AdamW::new(vec![("w".into(), p.shallow_clone())], &settings());
        (&p * &p).sum(Kind::Float).backward(); // grad = (6, 8), norm 10
        let before = opt.clip_grad_norm(1.0).unwrap();
        assert!((before - 10.0).abs() < 1e-5);
        // Clipping to 0 measures without scaling: the clipped norm is 1.
        assert!((opt.clip_grad_norm(0.0).unwrap() - 1.0).abs() < 1e-4);
    }
}
