//! Training methods as types behind one small trait, [`Method`] (the shape of candle's
//! `Optimizer`): a step, plus the state tensors that checkpoints save and the placement
//! audit holds to the training device.
//!
//! - [`AdamWBackprop`]: fused AdamW after a backward by the network's own means: plain
//!   autograd, reconstruction for the reversible Qwen3 (`rev-qwen3`), or per-layer
//!   recomputation for checkpointed Qwen3 (`qwen3-ckpt`).
//! - [`Mezo`]: one two-sided SPSA estimate along a seeded direction, then the seeded update
//!   (`zo`).
//! - [`Dizo`]: MeZO plus a projection round every `interval` steps. The round schedule, the
//!   round's batch numbers and its u vectors belong to DiZO, not to the caller.
//!
//! A step reads everything it needs from a [`StepContext`]. The trainer (`train::run_shard`)
//! and the benchmark harness (`qsched_bench`) both call these steps and neither has one of
//! its own, so a benchmark figure measures the code that trains shards. Every random draw in
//! a step is seeded from (shard seed, [`SeedPurpose`], index), so a resumed shard repeats
//! the draws of an uninterrupted one.

use std::fmt;

use tch::{Device, Kind, Tensor};
use tracing::info;

use shared::scale::{DizoSettings, TrainSettings};
use shared::shard::Shard;

use crate::batches::{SeedPurpose, step_seed, torch_seed};
use crate::error::{Error, Result};
use crate::optim::AdamW;
use crate::task_model::{self, Batch, Net, scalar};
use crate::zo::{self, RoundReport};

/// Where DiZO reads the batches of its projection rounds: batch number `i` of DiZO's own
/// stream. Round `r` (counted from 1) reads batches `(r − 1)·J .. r·J`. The trainer
/// collates them from its seeded DiZO order over the training split; `qbench` hands out
/// its pre-made random batches.
pub type BatchSource<'a> = dyn FnMut(u64) -> Result<Batch> + 'a;

/// A [`BatchSource`] for callers whose method reads none: every call is an error.
pub fn no_batches(i: u64) -> Result<Batch> {
    Err(Error::Dizo(format!("no DiZO batch source was given (batch {i} was asked for)")))
}

/// What one training step reads.
pub struct StepContext<'a> {
    /// The network being trained.
    pub net: &'a Net,
    /// The step's batch, on the training device.
    pub batch: &'a Batch,
    /// The shard seed (per-step seeds derive from it).
    pub seed: u64,
    /// 0-based step index.
    pub step: u64,
    /// Learning rate of this step.
    pub lr: f64,
    /// Whether the forward runs under bf16 autocast.
    pub autocast: bool,
    /// Training settings (SPSA ε, weight decay, gradient clip).
    pub train: &'a TrainSettings,
    /// DiZO's round batches (other methods read none; see [`no_batches`]).
    pub dizo_batches: &'a mut BatchSource<'a>,
}

impl fmt::Debug for StepContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StepContext")
            .field("seed", &self.seed)
            .field("step", &self.step)
            .field("lr", &self.lr)
            .field("autocast", &self.autocast)
            .finish_non_exhaustive()
    }
}

/// A training method with its state.
pub trait Method: fmt::Debug {
    /// One training step on `ctx.batch`. Returns the step's loss, or `None` when the loss
    /// was not finite: the step then changed no weight, and the caller counts it as skipped.
    fn step(&mut self, ctx: &mut StepContext<'_>) -> Result<Option<f64>>;

    /// The method's state tensors with their checkpoint names: saved and restored with the
    /// weights, and held to the training device by the placement audit.
    fn state_tensors(&self) -> Vec<(String, &Tensor)>;

    /// Optimizer steps taken, for a method that counts them (AdamW's bias correction);
    /// checkpoints store it as `optimizer_step`.
    fn optimizer_step(&self) -> Option<u64> {
        None
    }

    /// Restores the count of [`Method::optimizer_step`] from a checkpoint.
    fn set_optimizer_step(&mut self, _step: u64) {}
}

/// The method `shard` trains with, over `params` (the network's tensors, in order).
pub fn for_shard(shard: &Shard, params: &[(String, Tensor)]) -> Result<Box<dyn Method>> {
    if !shard.model.is_zeroth_order() {
        return Ok(Box::new(AdamWBackprop::new(params, &shard.train)));
    }
    Ok(match &shard.dizo {
        Some(settings) => Box::new(Dizo::new(params, settings.clone())?),
        None => Box::new(Mezo::new(params)),
    })
}

/// Handles to the same tensors (no data copied).
fn shallow(params: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    params.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect()
}

/// The loss the zeroth-order methods evaluate: an ordinary forward of `batch` under
/// `no_grad`, dropout off. (`qbench zo-opt`'s `inference` measures this too.)
pub fn forward_loss(net: &Net, batch: &Batch, autocast: bool) -> Result<f64> {
    tch::no_grad(|| tch::autocast(autocast, || scalar(&task_model::batch_loss(net, batch, false)?)))
}

// ---------------------------------------------------------------------------------------
// AdamW with backprop.

/// AdamW (the fused kernel) after a backward: reconstruction for the reversible Qwen3,
/// per-layer recomputation for checkpointed Qwen3, plain autograd otherwise.
#[derive(Debug)]
pub struct AdamWBackprop {
    opt: AdamW,
}

impl AdamWBackprop {
    /// Moments for `params`, created on each parameter's own device.
    pub fn new(params: &[(String, Tensor)], train: &TrainSettings) -> Self {
        AdamWBackprop { opt: AdamW::new(shallow(params), train) }
    }

    /// Releases every gradient (see [`AdamW::zero_grad`]).
    pub fn zero_grad(&mut self) -> Result<()> {
        self.opt.zero_grad()
    }
}

impl Method for AdamWBackprop {
    fn step(&mut self, ctx: &mut StepContext<'_>) -> Result<Option<f64>> {
        tch::manual_seed(torch_seed(step_seed(ctx.seed, SeedPurpose::Dropout, ctx.step)));
        self.opt.zero_grad()?;
        let Some(loss) = backward(ctx.net, ctx.batch, ctx.autocast)? else {
            self.opt.zero_grad()?;
            return Ok(None);
        };
        let value = scalar(&loss)?;
        if !value.is_finite() {
            self.opt.zero_grad()?;
            return Ok(None);
        }
        self.opt.clip_grad_norm(ctx.train.grad_clip)?;
        self.opt.step(ctx.lr)?;
        Ok(Some(value))
    }

    fn state_tensors(&self) -> Vec<(String, &Tensor)> {
        self.opt.state_tensors()
    }

    fn optimizer_step(&self) -> Option<u64> {
        Some(self.opt.step)
    }

    fn set_optimizer_step(&mut self, step: u64) {
        self.opt.step = step;
    }
}

/// The training loss of `batch` with its gradients accumulated into the parameters, by
/// the network's own backward. Returns the loss, or `None` (and no gradients) when plain
/// autograd's loss was not finite before its backward.
fn backward(net: &Net, batch: &Batch, autocast: bool) -> Result<Option<Tensor>> {
    let loss = match (net, batch) {
        (Net::RevQwen3(m), Batch::Classifier(b)) => tch::autocast(autocast, || {
            m.backward_by_reconstruction(&b.input_ids, &b.attention_mask, &mut |logits| {
                Ok(task_model::classifier_loss(logits, b)?)
            })
        })?,
        (Net::RevQwen3Lm(m), Batch::Lm(b)) => tch::autocast(autocast, || {
            m.backward_by_reconstruction(&b.input_ids, &b.attention_mask, &mut |logits| {
                Ok(task_model::lm_loss(logits, &b.targets)?)
            })
        })?,
        (Net::Qwen3Ckpt(m), Batch::Classifier(b)) => tch::autocast(autocast, || {
            m.backward_checkpointed(&b.input_ids, &b.attention_mask, &mut |logits| {
                Ok(task_model::classifier_loss(logits, b)?)
            })
        })?,
        (Net::Qwen3LmCkpt(m), Batch::Lm(b)) => tch::autocast(autocast, || {
            m.backward_checkpointed(&b.input_ids, &b.attention_mask, &mut |logits| {
                Ok(task_model::lm_loss(logits, &b.targets)?)
            })
        })?,
        _ => {
            let loss = tch::autocast(autocast, || task_model::batch_loss(net, batch, true))?;
            if !scalar(&loss)?.is_finite() {
                return Ok(None);
            }
            loss.f_backward()?;
            loss
        }
    };
    Ok(Some(loss))
}

// ---------------------------------------------------------------------------------------
// MeZO.

/// MeZO: SPSA along z(seed of the step), then θ ← θ − lr·(g·z + λ·θ), all in place.
#[derive(Debug)]
pub struct Mezo {
    params: Vec<(String, Tensor)>,
}

impl Mezo {
    /// MeZO over `params` (every tensor is trainable; handles, no copies).
    pub fn new(params: &[(String, Tensor)]) -> Self {
        Mezo { params: shallow(params) }
    }
}

impl Method for Mezo {
    fn step(&mut self, ctx: &mut StepContext<'_>) -> Result<Option<f64>> {
        let z_seed = step_seed(ctx.seed, SeedPurpose::Spsa, ctx.step);
        let (net, batch, autocast) = (ctx.net, ctx.batch, ctx.autocast);
        let r = zo::spsa(&self.params, z_seed, ctx.train.zo_eps, &mut || forward_loss(net, batch, autocast))?;
        if !r.is_finite() {
            return Ok(None);
        }
        zo::update(&self.params, z_seed, r.projected_grad, ctx.lr, ctx.train.weight_decay)?;
        Ok(Some(r.loss_plus))
    }

    /// None: z is regenerated from the seed, never stored.
    fn state_tensors(&self) -> Vec<(String, &Tensor)> {
        Vec::new()
    }
}

// ---------------------------------------------------------------------------------------
// DiZO.

/// DiZO: MeZO steps, and after every `interval`-th successful one a projection round
/// (`zo::Dizo::projection_round`) on J batches of DiZO's own stream.
#[derive(Debug)]
pub struct Dizo {
    mezo: Mezo,
    projection: zo::Dizo,
}

impl Dizo {
    /// Anchors the projected tensors of `params` at their current values (θ⁰).
    pub fn new(params: &[(String, Tensor)], settings: DizoSettings) -> Result<Self> {
        let projection = zo::Dizo::new(params, settings)?;
        Ok(Dizo { mezo: Mezo::new(params), projection })
    }

    /// The projection state: settings, projected tensors and their anchors.
    pub fn projection(&self) -> &zo::Dizo {
        &self.projection
    }

    /// The MeZO part of a step alone (what [`Method::step`] runs before a due round).
    pub fn mezo_step(&mut self, ctx: &mut StepContext<'_>) -> Result<Option<f64>> {
        self.mezo.step(ctx)
    }

    /// The round that follows step `step` (0-based), if one is due: round `r` (counted
    /// from 1) runs after step `r·interval − 1`.
    pub fn round_after(&self, step: u64) -> Option<u64> {
        let interval = u64::from(self.projection.settings.interval.max(1));
        (step + 1).is_multiple_of(interval).then_some((step + 1) / interval)
    }

    /// Projection round `round` (counted from 1): its J batches are numbers
    /// `(round − 1)·J + j` of `ctx.dizo_batches`, all read before the round starts, and
    /// iteration j's u vector is seeded by ([`SeedPurpose::DizoU`], the same number).
    /// Reads `ctx.net`, `ctx.seed`, `ctx.autocast` and `ctx.dizo_batches` only.
    pub fn round(&self, ctx: &mut StepContext<'_>, round: u64) -> Result<RoundReport> {
        let j_total = u64::from(self.projection.settings.inner_iters);
        let first =
            round.checked_sub(1).ok_or_else(|| Error::Dizo("DiZO projection rounds are counted from 1".into()))?
                * j_total;
        let batches = (0..j_total).map(|j| (ctx.dizo_batches)(first + j)).collect::<Result<Vec<_>>>()?;
        let (net, seed, autocast) = (ctx.net, ctx.seed, ctx.autocast);
        self.projection.projection_round(&mut |j| forward_loss(net, &batches[j], autocast), &mut |j, n| {
            tch::manual_seed(torch_seed(step_seed(seed, SeedPurpose::DizoU, first + j as u64)));
            let u = Tensor::randn([n as i64], (Kind::Double, Device::Cpu));
            Vec::<f64>::try_from(&u).unwrap_or_else(|_| vec![0.0; n])
        })
    }
}

impl Method for Dizo {
    fn step(&mut self, ctx: &mut StepContext<'_>) -> Result<Option<f64>> {
        let loss = self.mezo_step(ctx)?;
        if loss.is_some()
            && let Some(round) = self.round_after(ctx.step)
        {
            let report = self.round(ctx, round)?;
            info!(round, mean_ratio = report.mean_ratio(), skipped = report.skipped, "DiZO projection");
        }
        Ok(loss)
    }

    /// The anchors on the training device; none with `dizo.anchors_on_host`, where they are
    /// neither audited nor checkpointed: they are θ⁰, which a resumed shard rebuilds from
    /// its seeded initialisation before restoring the trained weights.
    fn state_tensors(&self) -> Vec<(String, &Tensor)> {
        self.projection.device_anchor_tensors()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collate::{CandidateRows, collate_candidates};
    use qsched_data::encode::{Candidate, CandidateExample};
    use qsched_models::opt::OptForCausalLM;
    use qsched_models::test_util::{rng_guard, tiny_opt};

    fn dizo_settings(interval: u32, inner_iters: u32) -> DizoSettings {
        DizoSettings { interval, inner_iters, ..DizoSettings::default() }
    }

    #[test]
    fn dizo_rounds_follow_every_interval_th_step() {
        let params = vec![(
            "model.layers.0.self_attn.k_proj.weight".to_owned(),
            Tensor::ones([2, 2], (Kind::Float, Device::Cpu)),
        )];
        let d = Dizo::new(&params, dizo_settings(5, 2)).unwrap();
        let due: Vec<(u64, u64)> = (0..16).filter_map(|s| d.round_after(s).map(|r| (s, r))).collect();
        assert_eq!(due, vec![(4, 1), (9, 2), (14, 3)]);
    }

    /// Round r reads batches (r − 1)·J .. r·J of its source, in order, before it starts
    /// (`qbench` read r·J + j before it called this code); round 0 does not exist.
    #[test]
    fn dizo_round_reads_its_batches_by_number() {
        let _g = rng_guard();
        tch::manual_seed(0);
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let net = Net::Opt(OptForCausalLM::new(&vs.root(), &tiny_opt(true)).unwrap());
        let d = Dizo::new(&net.named_parameters(), dizo_settings(5, 3)).unwrap();
        let candidate = |last: u32| Candidate { ids: vec![2, 5, 6, last], option_len: 1 };
        let example = CandidateExample { candidates: vec![candidate(7), candidate(8)], gold: 0, truncated: false };
        let batch = Batch::Candidates(collate_candidates(&[&example], CandidateRows::All, 1, Device::Cpu).unwrap());
        let train = shared::scale::preset("tiny").unwrap().zeroth_order;
        let mut asked = Vec::new();
        let mut source = |i: u64| -> Result<Batch> {
            asked.push(i);
            Ok(batch.shallow_clone())
        };
        let mut ctx = StepContext {
            net: &net,
            batch: &batch,
            seed: 1,
            step: 9,
            lr: 0.0,
            autocast: false,
            train: &train,
            dizo_batches: &mut source,
        };
        d.round(&mut ctx, 2).unwrap();
        assert!(d.round(&mut ctx, 0).is_err());
        assert_eq!(asked, vec![3, 4, 5]);
    }
}
