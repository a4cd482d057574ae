//! A model together with its task format: building it for a shard, the training loss of
//! a batch, and predictions for evaluation.
//!
//! Qwen3 methods use the classification-head format (cross-entropy over classes, MSE for
//! STS-B). OPT methods use the prompt format: each candidate is scored by the mean
//! log-probability of its option tokens, the loss is cross-entropy over candidates (or,
//! for COPA, the gold candidate's token-level LM loss), and the prediction is the
//! best-scoring candidate (docs/zo_methods.md §1.3).
//!
//! The causal-LM forms ([`Net::Qwen3Lm`], [`Net::Qwen3LmCkpt`], [`Net::RevQwen3Lm`] with
//! [`Batch::Lm`]: next-token cross-entropy over all positions) are trained by no shard
//! today; `qbench` measures them (`qwen3-depth --head lm`, `rev-grad-error`) through the
//! same training step as the trainer's (`train::method`).

use tch::{Kind, Tensor, nn};

use shared::shard::{ModelArch, Shard};
use shared::spec::ModelInit;
use shared::{ModelId, TaskId};

use crate::collate::{CandidateBatch, CandidateRows, ClassifierBatch, collate_candidates, collate_classifier};
use crate::error::{Error, Result};
use qsched_data::encode::{CandidateExample, ClassifierExample};
use qsched_data::metrics::Predictions;
use qsched_data::prompts::TrainObjective;
use qsched_models::{hf, opt, qwen3, rev_qwen3};

/// The network being trained.
#[derive(Debug)]
pub enum Net {
    /// Standard Qwen3 classifier.
    Qwen3(qwen3::Qwen3ForSequenceClassification),
    /// Standard Qwen3 classifier trained with per-layer activation checkpointing.
    Qwen3Ckpt(qwen3::Qwen3ForSequenceClassification),
    /// Reversible Qwen3 classifier (trained by reconstruction).
    RevQwen3(rev_qwen3::RevQwen3ForSequenceClassification),
    /// OPT language model scoring prompt candidates.
    Opt(opt::OptForCausalLM),
    /// Qwen3 language model, next-token objective (autograd backprop).
    Qwen3Lm(qwen3::Qwen3ForCausalLM),
    /// Qwen3 language model, next-token objective, per-layer activation checkpointing.
    Qwen3LmCkpt(qwen3::Qwen3ForCausalLM),
    /// Reversible Qwen3 language model, next-token objective (trained by reconstruction).
    RevQwen3Lm(rev_qwen3::RevQwen3ForCausalLM),
}

/// Refuses a checkpoint the shard did not ask for in the form its model needs: a Qwen3
/// checkpoint reaches `rev-qwen3` only as [`ModelInit::Qwen3CheckpointInRevQwen3`] (the
/// spec's `rev_qwen3_from_qwen3 = true`), and that form only reaches `rev-qwen3`. When it
/// does, the worker log says that the model computes a different function from these
/// weights (the result's config records the shard's `init`).
fn check_init(shard: &Shard, dir: &std::path::Path) -> Result<()> {
    let converted = matches!(shard.init, ModelInit::Qwen3CheckpointInRevQwen3 { .. });
    match (shard.model, converted) {
        (ModelId::RevQwen3, true) => {
            tracing::warn!(
                dir = %dir.display(),
                "rev-qwen3 initialised from a Qwen3 checkpoint (rev_qwen3_from_qwen3 = true): same parameter \
                 names and shapes, but the reversible coupling computes a different function from them, so \
                 training starts from these weights, not from the checkpoint's model"
            );
            Ok(())
        }
        (ModelId::RevQwen3, false) => Err(Error::InitRefused(format!(
            "rev-qwen3 would load the Qwen3 checkpoint {} as if it were its own model; the spec must say \
             rev_qwen3_from_qwen3 = true to start from its weights",
            dir.display()
        ))),
        (model, true) => Err(Error::InitRefused(format!(
            "init kind qwen3-checkpoint-in-rev-qwen3 is only for rev-qwen3, not {model}"
        ))),
        (_, false) => Ok(()),
    }
}

/// Builds the network of a shard in `vs` — random init, or the checkpoint directory
/// `pretrained` that the caller resolved from the shard's `init` (inside the agent's model
/// roots) — and returns it with its resolved configuration as JSON.
pub fn build_net(
    vs: &nn::VarStore,
    shard: &Shard,
    pretrained: Option<&std::path::Path>,
    num_labels: i64,
    pad_id: i64,
) -> Result<(Net, serde_json::Value)> {
    let root = vs.root();
    if let Some(dir) = pretrained {
        check_init(shard, dir)?;
    }
    let net = match (&shard.arch, shard.model) {
        (ModelArch::Qwen3(arch), ModelId::Qwen3 | ModelId::Qwen3Ckpt | ModelId::RevQwen3) => {
            let cfg = match pretrained {
                Some(dir) => qwen3::Config::from_hf_json(&hf::read_config(dir)?)?,
                None => qwen3::Config::from_arch(arch),
            };
            let net = match shard.model {
                ModelId::Qwen3 => {
                    Net::Qwen3(qwen3::Qwen3ForSequenceClassification::new(&root, &cfg, num_labels, pad_id)?)
                }
                ModelId::Qwen3Ckpt => {
                    Net::Qwen3Ckpt(qwen3::Qwen3ForSequenceClassification::new(&root, &cfg, num_labels, pad_id)?)
                }
                _ => Net::RevQwen3(rev_qwen3::RevQwen3ForSequenceClassification::new(&root, &cfg, num_labels, pad_id)?),
            };
            (net, cfg.to_hf_json())
        }
        (ModelArch::Opt(arch), ModelId::FtOpt | ModelId::MezoOpt | ModelId::DizoOpt) => {
            let cfg = match pretrained {
                Some(dir) => opt::Config::from_hf_json(&hf::read_config(dir)?)?,
                None => opt::Config::from_arch(arch),
            };
            (Net::Opt(opt::OptForCausalLM::new(&root, &cfg)?), cfg.to_hf_json())
        }
        (arch, model) => {
            return Err(Error::ModelFormat(format!(
                "model '{model}' cannot train a {} architecture",
                match arch {
                    ModelArch::Qwen3(_) => "qwen3",
                    ModelArch::Opt(_) => "opt",
                }
            )));
        }
    };
    if let Some(dir) = pretrained {
        // A classification head is new for a causal-LM checkpoint: it keeps its random init.
        let opts = hf::LoadOptions { allow_missing: vec!["score.weight".into()], ..Default::default() };
        hf::load_weights_with(vs, dir, &opts)?;
    }
    Ok(net)
}

impl Net {
    /// Trainable tensors in HF `named_parameters()` order.
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        match self {
            Net::Qwen3(m) | Net::Qwen3Ckpt(m) => m.named_parameters(),
            Net::RevQwen3(m) => m.named_parameters(),
            Net::Opt(m) => m.named_parameters(),
            Net::Qwen3Lm(m) | Net::Qwen3LmCkpt(m) => m.named_parameters(),
            Net::RevQwen3Lm(m) => m.named_parameters(),
        }
    }

    /// Number of trainable scalars.
    pub fn parameter_count(&self) -> u64 {
        self.named_parameters().iter().map(|(_, t)| t.numel() as u64).sum()
    }

    /// The model's vocabulary size (token ids must stay below it).
    pub fn vocab_size(&self) -> i64 {
        match self {
            Net::Qwen3(m) | Net::Qwen3Ckpt(m) => m.config().vocab_size,
            Net::RevQwen3(m) => m.config().vocab_size,
            Net::Opt(m) => m.config().vocab_size,
            Net::Qwen3Lm(m) | Net::Qwen3LmCkpt(m) => m.config().vocab_size,
            Net::RevQwen3Lm(m) => m.config().vocab_size,
        }
    }
}

/// Encoded examples of one split, in the format of the model.
#[derive(Debug, Clone)]
pub enum Encoded {
    /// Classification-head format.
    Classifier(Vec<ClassifierExample>),
    /// Prompt format.
    Candidates(Vec<CandidateExample>),
}

impl Encoded {
    /// Number of examples.
    pub fn len(&self) -> usize {
        match self {
            Encoded::Classifier(v) => v.len(),
            Encoded::Candidates(v) => v.len(),
        }
    }

    /// True when there are no examples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A next-token (causal-LM) batch on one device.
#[derive(Debug)]
pub struct LmBatch {
    /// `[B, T]` Int64 token ids.
    pub input_ids: Tensor,
    /// `[B, T]` Int64, 1 for tokens, 0 for padding.
    pub attention_mask: Tensor,
    /// `[B·T]` Int64 next-token targets, −100 where no token follows (ignored).
    pub targets: Tensor,
    /// Non-pad tokens in the batch.
    pub num_tokens: usize,
}

/// A batch on the device.
#[derive(Debug)]
pub enum Batch {
    /// Classification-head batch.
    Classifier(ClassifierBatch),
    /// Prompt-format batch.
    Candidates(CandidateBatch),
    /// Next-token batch (causal-LM networks).
    Lm(LmBatch),
}

impl Batch {
    /// Non-pad tokens in the batch.
    pub fn num_tokens(&self) -> usize {
        match self {
            Batch::Classifier(b) => b.num_tokens,
            Batch::Candidates(b) => b.num_tokens,
            Batch::Lm(b) => b.num_tokens,
        }
    }

    /// The same batch through new handles to the same tensors (no data copied).
    pub fn shallow_clone(&self) -> Batch {
        match self {
            Batch::Classifier(b) => Batch::Classifier(ClassifierBatch {
                input_ids: b.input_ids.shallow_clone(),
                attention_mask: b.attention_mask.shallow_clone(),
                labels: b.labels.shallow_clone(),
                last_index: b.last_index.shallow_clone(),
                num_tokens: b.num_tokens,
            }),
            Batch::Candidates(b) => Batch::Candidates(CandidateBatch {
                input_ids: b.input_ids.shallow_clone(),
                attention_mask: b.attention_mask.shallow_clone(),
                option_mask: b.option_mask.shallow_clone(),
                next_token_mask: b.next_token_mask.shallow_clone(),
                example_index: b.example_index.shallow_clone(),
                gold: b.gold.shallow_clone(),
                num_examples: b.num_examples,
                rows_per_example: b.rows_per_example,
                rows: b.rows,
                num_tokens: b.num_tokens,
            }),
            Batch::Lm(b) => Batch::Lm(LmBatch {
                input_ids: b.input_ids.shallow_clone(),
                attention_mask: b.attention_mask.shallow_clone(),
                targets: b.targets.shallow_clone(),
                num_tokens: b.num_tokens,
            }),
        }
    }

    /// Every tensor of the batch with a name (for the placement audit).
    pub fn tensors(&self) -> Vec<(&'static str, &Tensor)> {
        match self {
            Batch::Classifier(b) => vec![
                ("batch.input_ids", &b.input_ids),
                ("batch.attention_mask", &b.attention_mask),
                ("batch.labels", &b.labels),
                ("batch.last_index", &b.last_index),
            ],
            Batch::Candidates(b) => vec![
                ("batch.input_ids", &b.input_ids),
                ("batch.attention_mask", &b.attention_mask),
                ("batch.option_mask", &b.option_mask),
                ("batch.example_index", &b.example_index),
                ("batch.gold", &b.gold),
            ],
            Batch::Lm(b) => vec![
                ("batch.input_ids", &b.input_ids),
                ("batch.attention_mask", &b.attention_mask),
                ("batch.targets", &b.targets),
            ],
        }
    }
}

/// Collates the examples at `indices` for training (`train = true` selects the training
/// rows of the objective) or evaluation.
pub fn collate(
    data: &Encoded,
    indices: &[usize],
    objective: TrainObjective,
    train: bool,
    pad_id: u32,
    device: tch::Device,
) -> Result<Batch> {
    match data {
        Encoded::Classifier(v) => {
            let items: Vec<&ClassifierExample> = indices.iter().map(|&i| &v[i]).collect();
            Ok(Batch::Classifier(collate_classifier(&items, pad_id, device)?))
        }
        Encoded::Candidates(v) => {
            let items: Vec<&CandidateExample> = indices.iter().map(|&i| &v[i]).collect();
            let rows =
                if train && objective == TrainObjective::GoldLm { CandidateRows::GoldOnly } else { CandidateRows::All };
            Ok(Batch::Candidates(collate_candidates(&items, rows, pad_id, device)?))
        }
    }
}

/// Mean log-probability of each row's option tokens, `[N]`.
///
/// Options sit at the end of every (left-padded) row, so only the last `K + 1`
/// positions' hidden states go through the LM head, `K` = the longest option in the
/// batch: the vocabulary projection of every prompt position is never materialised.
pub fn option_scores(net: &opt::OptForCausalLM, b: &CandidateBatch, train: bool) -> Result<Tensor> {
    let t = b.input_ids.size()[1];
    let k = b.option_mask.f_sum_dim_intlist(1, false, Kind::Float)?.f_max()?.f_int64_value(&[])?;
    let k = k.clamp(1, t - 1);
    let hidden = net.hidden_states_t(&b.input_ids, &b.attention_mask, train)?;
    // Positions t-k-1 .. t-2 predict tokens t-k .. t-1.
    let h = hidden.f_narrow(1, t - k - 1, k)?;
    let work = score_kind(h.kind());
    let logits = net.logits_from_hidden(&h)?.f_to_kind(work)?;
    let targets = b.input_ids.f_narrow(1, t - k, k)?;
    let mask = b.option_mask.f_narrow(1, t - k, k)?.f_to_kind(work)?;
    let lp = logits.f_log_softmax(-1, work)?.f_gather(-1, &targets.f_unsqueeze(-1)?, false)?.f_squeeze_dim(-1)?;
    let sum = (lp * &mask).f_sum_dim_intlist(1, false, work)?;
    Ok(sum.f_div(&mask.f_sum_dim_intlist(1, false, work)?)?)
}

/// Precision of log-probabilities and losses: fp32 for fp32/bf16/fp16 activations (an
/// upcast under autocast), fp64 kept as fp64. Before, fp64 was cast down to fp32 here,
/// which capped the fp64 gradient checks in `train::tests` at fp32 rounding; fp32 and
/// bf16 training is unchanged.
fn score_kind(kind: Kind) -> Kind {
    if kind == Kind::Double { Kind::Double } else { Kind::Float }
}

/// Loss of a prompt-format batch from its option scores.
pub fn candidate_loss(scores: &Tensor, b: &CandidateBatch) -> Result<Tensor> {
    match b.rows {
        CandidateRows::All => {
            let logits = scores.f_view([b.num_examples as i64, b.rows_per_example as i64])?;
            let work = score_kind(scores.kind());
            Ok(logits.f_log_softmax(-1, work)?.f_nll_loss::<Tensor>(&b.gold, None, tch::Reduction::Mean, -100)?)
        }
        // Teacher-forced LM loss on the gold option tokens (per-candidate token mean,
        // averaged over examples).
        CandidateRows::GoldOnly => Ok(scores.f_neg()?.f_mean(score_kind(scores.kind()))?),
    }
}

/// Loss of a classifier batch: cross-entropy, or MSE for a regression head. Only libtorch
/// can fail here, so the model's backward can call it as its loss function.
pub fn classifier_loss(logits: &Tensor, b: &ClassifierBatch) -> Result<Tensor, tch::TchError> {
    let logits = logits.f_to_kind(Kind::Float)?;
    if b.labels.kind() == Kind::Float {
        Ok(logits.f_squeeze_dim(-1)?.f_mse_loss(&b.labels, tch::Reduction::Mean)?)
    } else {
        Ok(logits.f_log_softmax(-1, Kind::Float)?.f_nll_loss::<Tensor>(&b.labels, None, tch::Reduction::Mean, -100)?)
    }
}

/// Next-token loss as HF's `ForCausalLMLoss`: fp32 logits `[B·T, V]`, mean
/// cross-entropy, targets −100 ignored.
pub fn lm_loss(logits: &Tensor, targets: &Tensor) -> Result<Tensor, tch::TchError> {
    let v = logits.size()[2];
    logits.f_to_kind(Kind::Float)?.f_view([-1, v])?.f_cross_entropy_loss(
        targets,
        None::<Tensor>,
        tch::Reduction::Mean,
        -100,
        0.0,
    )
}

/// Classifier logits for a batch (ordinary autograd forward).
pub fn classifier_logits(net: &Net, b: &ClassifierBatch) -> Result<Tensor> {
    match net {
        Net::Qwen3(m) | Net::Qwen3Ckpt(m) => Ok(m.forward(&b.input_ids, &b.attention_mask)?),
        Net::RevQwen3(m) => Ok(m.forward(&b.input_ids, &b.attention_mask)?),
        Net::Opt(_) => {
            Err(Error::ModelFormat("OPT is trained in the prompt format, not with a classifier head".into()))
        }
        Net::Qwen3Lm(_) | Net::Qwen3LmCkpt(_) | Net::RevQwen3Lm(_) => {
            Err(Error::ModelFormat("a causal-LM network has no classifier head".into()))
        }
    }
}

/// Loss of any batch with an ordinary forward pass (used by zeroth-order methods and for
/// dev loss).
pub fn batch_loss(net: &Net, batch: &Batch, train: bool) -> Result<Tensor> {
    match (net, batch) {
        (Net::Opt(m), Batch::Candidates(b)) => candidate_loss(&option_scores(m, b, train)?, b),
        (Net::Qwen3Lm(m) | Net::Qwen3LmCkpt(m), Batch::Lm(b)) => {
            Ok(lm_loss(&m.forward(&b.input_ids, &b.attention_mask)?, &b.targets)?)
        }
        (Net::RevQwen3Lm(m), Batch::Lm(b)) => Ok(lm_loss(&m.forward(&b.input_ids, &b.attention_mask)?, &b.targets)?),
        (_, Batch::Classifier(b)) => Ok(classifier_loss(&classifier_logits(net, b)?, b)?),
        _ => Err(Error::ModelFormat("batch format does not match the model".into())),
    }
}

/// A one-element tensor as f64 (copied to the host: a device synchronisation).
pub fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.f_to_kind(Kind::Double)?.f_double_value(&[])?)
}

/// Predictions of one evaluation batch, appended to `out`.
pub fn predict(net: &Net, batch: &Batch, out: &mut Collected) -> Result<()> {
    match (net, batch) {
        (Net::Opt(m), Batch::Candidates(b)) => {
            let scores = option_scores(m, b, false)?;
            let pred = scores.f_view([b.num_examples as i64, b.rows_per_example as i64])?.f_argmax(-1, false)?;
            out.classes
                .extend(Vec::<i64>::try_from(&pred.f_to_device(tch::Device::Cpu)?)?.into_iter().map(|c| c as usize));
            out.labels
                .extend(Vec::<i64>::try_from(&b.gold.f_to_device(tch::Device::Cpu)?)?.into_iter().map(|c| c as usize));
        }
        (_, Batch::Classifier(b)) => {
            let logits = classifier_logits(net, b)?.f_to_kind(Kind::Float)?.f_to_device(tch::Device::Cpu)?;
            if b.labels.kind() == Kind::Float {
                out.scores.extend(Vec::<f32>::try_from(&logits.f_squeeze_dim(-1)?)?.into_iter().map(f64::from));
                out.score_labels
                    .extend(Vec::<f32>::try_from(&b.labels.f_to_device(tch::Device::Cpu)?)?.into_iter().map(f64::from));
            } else {
                let pred = logits.f_argmax(-1, false)?;
                out.classes.extend(Vec::<i64>::try_from(&pred)?.into_iter().map(|c| c as usize));
                out.labels.extend(
                    Vec::<i64>::try_from(&b.labels.f_to_device(tch::Device::Cpu)?)?.into_iter().map(|c| c as usize),
                );
            }
        }
        _ => return Err(Error::ModelFormat("batch format does not match the model".into())),
    }
    Ok(())
}

/// Predictions gathered over an evaluation split.
#[derive(Debug, Default)]
pub struct Collected {
    /// Predicted classes.
    pub classes: Vec<usize>,
    /// Gold classes.
    pub labels: Vec<usize>,
    /// Predicted scores (regression).
    pub scores: Vec<f64>,
    /// Gold scores (regression).
    pub score_labels: Vec<f64>,
}

impl Collected {
    /// As metric input (`groups` for MultiRC).
    pub fn predictions<'a>(&'a self, task: TaskId, groups: &'a [u32]) -> Predictions<'a> {
        if !self.scores.is_empty() {
            Predictions::Scores { predicted: &self.scores, labels: &self.score_labels }
        } else {
            Predictions::Classes {
                predicted: &self.classes,
                labels: &self.labels,
                groups: (task == TaskId::Multirc).then_some(groups),
            }
        }
    }
}
