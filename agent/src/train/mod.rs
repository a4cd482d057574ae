//! Training methods and the shard driver.
//!
//! [`run_shard`] turns a shard into a result: load and split the task's real data,
//! encode it in the model's format, build the model on the pinned device, audit
//! placement, train with the shard's method, evaluate on dev (model selection) and test
//! every `eval_every` steps, checkpoint, and report the test metrics of the best dev
//! evaluation. Nothing here substitutes data or scores: a missing file, a token outside
//! the vocabulary or a diverged run is an error that fails the shard.

pub mod batches;
pub mod checkpoint;
pub mod optim;
pub mod task_model;
pub mod zo;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use tch::{Kind, Tensor, nn};
use tracing::{info, info_span, warn};

use shared::scale::Precision;
use shared::shard::Shard;

use crate::data::encode::{encode_candidates, encode_classifier};
use crate::data::prompts::{InputFormat, TrainObjective, check_supported, train_objective};
use crate::data::split::split_task;
use crate::data::tasks::{Example, load_task, task_info};
use crate::data::tokenize::{TextTokenizer, TokenizerKind};
use crate::device::PinnedDevice;
use crate::error::{Error, Result};
use crate::metrics::compute_task_metrics;
use crate::models::audit;
use crate::protocol::{ShardOutcome, WorkerEvent, WorkerRequest};
use crate::worker::EventSink;

use batches::{BatchOrder, step_seed, stream, torch_seed};
use checkpoint::{EvalRecord, LoopState};
use optim::AdamW;
use task_model::{Batch, Collected, Encoded, Net};

/// Purposes of per-step seeds (see [`batches::step_seed`]).
mod purpose {
    pub const INIT: u64 = 1;
    pub const DROPOUT: u64 = 2;
    pub const SPSA: u64 = 3;
    pub const DIZO_U: u64 = 4;
}

/// Consecutive non-finite steps after which a shard is declared diverged.
const MAX_CONSECUTIVE_NON_FINITE: u32 = 20;

/// One evaluation split with the MultiRC groups of its rows.
struct EvalSplit {
    data: Encoded,
    groups: Vec<u32>,
}

fn groups_of(examples: &[Example]) -> Vec<u32> {
    examples.iter().map(|e| e.group.unwrap_or(0)).collect()
}

fn encode_split(
    examples: &[Example],
    shard: &Shard,
    format: InputFormat,
    tok: &TextTokenizer,
) -> Result<(Encoded, usize)> {
    let max_len = shard.data.max_seq_len as usize;
    match format {
        InputFormat::ClassifierHead => {
            let v =
                examples.iter().map(|e| encode_classifier(shard.task, e, tok, max_len)).collect::<Result<Vec<_>>>()?;
            let truncated = v.iter().filter(|e| e.truncated).count();
            Ok((Encoded::Classifier(v), truncated))
        }
        InputFormat::PromptLabelWords => {
            let v =
                examples.iter().map(|e| encode_candidates(shard.task, e, tok, max_len)).collect::<Result<Vec<_>>>()?;
            let truncated = v.iter().filter(|e| e.truncated).count();
            Ok((Encoded::Candidates(v), truncated))
        }
    }
}

/// The training method with its state.
enum Method {
    /// AdamW with backprop (reconstruction for rev-qwen3, layer recomputation for qwen3-ckpt).
    FirstOrder(AdamW),
    /// MeZO, optionally with DiZO's projection.
    ZerothOrder { params: Vec<(String, Tensor)>, dizo: Option<zo::Dizo> },
}

impl Method {
    /// The method's state that must live on the training device (placement audit).
    fn state_tensors(&self) -> Vec<(String, &Tensor)> {
        match self {
            Method::FirstOrder(opt) => opt.state_tensors(),
            Method::ZerothOrder { dizo, .. } => dizo.as_ref().map(|d| d.device_anchor_tensors()).unwrap_or_default(),
        }
    }
}

fn relative(data_dir: &Path, path: &Path) -> String {
    path.strip_prefix(data_dir).unwrap_or(path).display().to_string()
}

/// Runs one shard to completion on `pinned` and returns what it measured.
pub fn run_shard(
    request: &WorkerRequest,
    pinned: &PinnedDevice,
    sink: &mut dyn EventSink,
    started: Instant,
) -> Result<ShardOutcome> {
    let shard = &request.shard;
    let device = pinned.device;
    let info = task_info(shard.task);
    let format = InputFormat::for_model(shard.model);
    check_supported(shard.task, format)?;
    let precision = shard.train.precision;
    if precision == Precision::Bf16 {
        pinned.set_autocast_bf16()?;
    }

    // A pretrained checkpoint is read only from inside the operator's model roots.
    let pretrained = match &shard.init {
        shared::spec::ModelInit::Random => None,
        shared::spec::ModelInit::Pretrained { dir } | shared::spec::ModelInit::Qwen3CheckpointInRevQwen3 { dir } => {
            Some(crate::confine::model_dir(dir, &request.model_roots)?)
        }
    };

    // 1. Data: the task's real files, split by the shard seed.
    let span = info_span!("shard.data", task = %shard.task);
    let (splits, tok) = {
        let _e = span.enter();
        let loaded = load_task(shard.task, &request.data_dir)?;
        let splits = split_task(&loaded, &shard.data, shard.seed)?;
        let tok_dir = match &pretrained {
            Some(dir) if dir.join("tokenizer.json").is_file() || dir.join("vocab.json").is_file() => dir.clone(),
            _ => request.data_dir.join("tokenizers").join(TokenizerKind::for_family(shard.model.family()).dir_name()),
        };
        let tok = TextTokenizer::load(TokenizerKind::for_family(shard.model.family()), &tok_dir)?;
        (splits, tok)
    };
    let mut checksums = BTreeMap::new();
    for path in [&splits.train_path, &splits.test_path] {
        checksums.insert(relative(&request.data_dir, path), crate::data::sha256_file(path)?);
    }
    for name in ["tokenizer.json", "vocab.json", "merges.txt"] {
        let p = tok.source().join(name);
        if p.is_file() {
            checksums.insert(relative(&request.data_dir, &p), crate::data::sha256_file(&p)?);
        }
    }
    let (train, train_truncated) = encode_split(&splits.train, shard, format, &tok)?;
    let (dev, _) = encode_split(&splits.dev, shard, format, &tok)?;
    let (test, _) = encode_split(&splits.test, shard, format, &tok)?;
    if train.is_empty() || dev.is_empty() || test.is_empty() {
        return Err(Error::data(
            &splits.train_path,
            format!("empty split: train {}, dev {}, test {}", train.len(), dev.len(), test.len()),
        ));
    }
    sink.alive(0)?;
    let dev = EvalSplit { data: dev, groups: groups_of(&splits.dev) };
    let test = EvalSplit { data: test, groups: groups_of(&splits.test) };
    let objective = train_objective(shard.task);
    let split_sizes = BTreeMap::from([
        ("train".to_owned(), train.len() as u64),
        ("dev".to_owned(), dev.data.len() as u64),
        ("test".to_owned(), test.data.len() as u64),
    ]);

    // 2. Model on the pinned device; random init seeded by the shard seed.
    tch::manual_seed(torch_seed(step_seed(shard.seed, purpose::INIT, 0)));
    let vs = nn::VarStore::new(device);
    let (net, model_config) =
        task_model::build_net(&vs, shard, pretrained.as_deref(), info.num_labels as i64, i64::from(tok.pad_id()))?;
    tok.check_model_vocab(net.vocab_size() as usize)?;
    let params = net.named_parameters();
    let parameters = net.parameter_count();

    // 3. Method.
    let mut method = if shard.model.is_zeroth_order() {
        let dizo = match &shard.dizo {
            Some(settings) => Some(zo::Dizo::new(&params, settings.clone())?),
            None => None,
        };
        Method::ZerothOrder { params: shallow(&params), dizo }
    } else {
        Method::FirstOrder(AdamW::new(shallow(&params), &shard.train))
    };

    // 4. Resume from a checkpoint of an earlier attempt, if there is one.
    let ckpt_dir = request
        .checkpoint_dir
        .as_ref()
        .map(|root| checkpoint::ShardDir::new(root, &shard.run_id, &shard.shard_id))
        .transpose()?;
    let mut state = LoopState::new(&shard.shard_id);
    let mut resumed_from_step = None;
    if let Some(dir) = &ckpt_dir
        && let Some((saved, tensors)) = checkpoint::load(dir, &shard.shard_id)?
    {
        let mut live: Vec<(String, &Tensor)> = params.iter().map(|(n, t)| (n.clone(), t)).collect();
        live.extend(method.state_tensors());
        checkpoint::restore(dir.path(), &tensors, &live)?;
        if let Method::FirstOrder(opt) = &mut method {
            opt.step = saved.optimizer_step;
        }
        info!(step = saved.step, "resumed from checkpoint");
        resumed_from_step = Some(saved.step);
        state = saved;
    }

    // 5. Placement audit: parameters, optimizer state and a batch, all on the device.
    let pad = tok.pad_id();
    let bs = shard.train.batch_size as usize;
    let mut order = BatchOrder::new(train.len(), bs, shard.seed, stream::BATCHES);
    let audited;
    {
        let probe = task_model::collate(&train, &order.indices(0), objective, true, pad, device)?;
        let mut tensors: Vec<(String, &Tensor)> = params.iter().map(|(n, t)| (n.clone(), t)).collect();
        tensors.extend(method.state_tensors());
        tensors.extend(probe.tensors().into_iter().map(|(n, t)| (n.to_owned(), t)));
        audit::ensure_on_device(device, tensors.iter().map(|(n, t)| (n.as_str(), *t)))?;
        audited = tensors.len();
        info!(tensors = audited, device = %pinned.spec, "placement audit passed: parameters, optimizer state and batch");
    }

    let total_steps = u64::from(shard.train.max_steps);
    sink.emit(WorkerEvent::Started {
        device: pinned.spec.to_string(),
        gpu_name: pinned.gpu_name.clone(),
        total_steps,
        resumed_from_step,
    })?;
    let log_every = (total_steps / 50).clamp(1, 25);
    let eval_every = u64::from(shard.train.eval_every.max(1));
    let ckpt_every = u64::from(shard.train.checkpoint_every);
    let mut dizo_order = BatchOrder::new(train.len(), bs, shard.seed, stream::DIZO);
    let mut consecutive_bad = 0u32;
    let mut recent_loss = Vec::new();
    let run_span = info_span!("shard.loop", total_steps, resumed_from = ?resumed_from_step);
    let _loop = run_span.enter();
    let autocast = precision == Precision::Bf16;

    while state.step < total_steps && !state.stopped_early {
        let step = state.step;
        let lr = optim::learning_rate(&shard.train, step);
        let batch = task_model::collate(&train, &order.indices(step), objective, true, pad, device)?;
        order.forget_before(step);
        let t0 = Instant::now();
        let loss = match &mut method {
            Method::FirstOrder(opt) => first_order_step(&net, opt, &batch, shard, step, lr, autocast)?,
            Method::ZerothOrder { params, dizo } => {
                let z_seed = step_seed(shard.seed, purpose::SPSA, step);
                let r = zo::spsa(params, z_seed, shard.train.zo_eps, &mut || {
                    tch::no_grad(|| tch::autocast(autocast, || scalar(task_model::batch_loss(&net, &batch, false)?)))
                })?;
                if r.is_finite() {
                    zo::update(params, z_seed, r.projected_grad, lr, shard.train.weight_decay)?;
                    if let Some(d) = dizo.as_ref() {
                        let interval = u64::from(d.settings.interval.max(1));
                        if (step + 1).is_multiple_of(interval) {
                            let round = (step + 1) / interval;
                            dizo_round(
                                &net,
                                d,
                                &train,
                                &mut dizo_order,
                                round,
                                objective,
                                pad,
                                device,
                                shard.seed,
                                autocast,
                            )?;
                        }
                    }
                    Some(r.loss_plus)
                } else {
                    None
                }
            }
        };
        if matches!(device, tch::Device::Cuda(_)) {
            pinned.synchronize();
        }
        state.train_seconds += t0.elapsed().as_secs_f64();
        state.step += 1;
        sink.alive(state.step)?;
        match loss {
            Some(l) => {
                consecutive_bad = 0;
                state.train_tokens += batch.num_tokens() as u64;
                recent_loss.push(l);
            }
            None => {
                state.skipped_steps += 1;
                consecutive_bad += 1;
                warn!(step, "non-finite loss; step skipped");
                if consecutive_bad >= MAX_CONSECUTIVE_NON_FINITE {
                    return Err(Error::Diverged(format!(
                        "{consecutive_bad} consecutive non-finite losses at step {step} (lr {lr:e})"
                    )));
                }
            }
        }
        if state.step.is_multiple_of(log_every) || state.step == total_steps {
            let mean = if recent_loss.is_empty() {
                f64::NAN
            } else {
                recent_loss.iter().sum::<f64>() / recent_loss.len() as f64
            };
            recent_loss.clear();
            let mut values =
                BTreeMap::from([("lr".to_owned(), lr), ("skipped".to_owned(), state.skipped_steps as f64)]);
            if mean.is_finite() {
                values.insert("loss".to_owned(), mean);
            }
            if state.train_seconds > 0.0 {
                values.insert("tokens_per_second".to_owned(), state.train_tokens as f64 / state.train_seconds);
            }
            sink.emit(WorkerEvent::Metrics { step: state.step, total_steps, kind: "train".into(), values })?;
        }
        let last = state.step == total_steps;
        if state.step.is_multiple_of(eval_every) || last {
            evaluate_and_track(&net, &dev, &test, shard, objective, pad, device, autocast, &mut state, sink)?;
        }
        if let Some(dir) = &ckpt_dir
            && ((ckpt_every > 0 && state.step.is_multiple_of(ckpt_every)) || last || state.stopped_early)
        {
            if let Method::FirstOrder(opt) = &method {
                state.optimizer_step = opt.step;
            }
            let mut tensors: Vec<(String, &Tensor)> = params.iter().map(|(n, t)| (n.clone(), t)).collect();
            tensors.extend(method.state_tensors());
            checkpoint::save(dir, &state, &tensors)?;
        }
    }
    drop(_loop);

    let best = state
        .best
        .and_then(|i| state.history.get(i))
        .ok_or_else(|| Error::Diverged("no evaluation completed".into()))?
        .clone();
    let memory = pinned.memory()?;
    let steps = state.step;
    let train_seconds = state.train_seconds;
    let config = serde_json::json!({
        "shard": shard,
        // A Qwen3 checkpoint in the reversible coupling is a different function: say so
        // at the top level, not only inside `shard.init`.
        "rev_qwen3_from_qwen3": matches!(shard.init, shared::spec::ModelInit::Qwen3CheckpointInRevQwen3 { .. }),
        "model_config": model_config,
        "input_format": format!("{format:?}"),
        "train_objective": format!("{objective:?}"),
        "train_file": relative(&request.data_dir, &splits.train_path),
        "train_file_is_fewglue_subset": splits.fewglue_subset,
        "test_file": relative(&request.data_dir, &splits.test_path),
        "train_examples_truncated": train_truncated,
        "tokenizer": tok.source().display().to_string(),
        "evaluations": state.history,
        "stopped_early": state.stopped_early,
        "placement_audit": { "device": pinned.spec.to_string(), "tensors_on_device": audited },
        "zo_trainable": if shard.model.is_zeroth_order() { "all parameters (embed_tokens included)" } else { "" },
    });
    Ok(ShardOutcome {
        device: pinned.spec.to_string(),
        gpu_name: pinned.gpu_name.clone(),
        metrics: best.test.clone(),
        dev_metrics: best.dev.clone(),
        primary_metric: info.primary_metric.to_owned(),
        best_step: best.step,
        steps,
        peak_memory_bytes: memory.peak,
        peak_memory_kind: pinned.memory_kind().to_owned(),
        wall_seconds: started.elapsed().as_secs_f64(),
        train_seconds,
        steps_per_second: if train_seconds > 0.0 { steps as f64 / train_seconds } else { 0.0 },
        tokens_per_second: if train_seconds > 0.0 { state.train_tokens as f64 / train_seconds } else { 0.0 },
        skipped_steps: state.skipped_steps,
        precision: match precision {
            Precision::Fp32 => "fp32".into(),
            Precision::Bf16 => "bf16-autocast".into(),
        },
        threads: tch::get_num_threads() as u32,
        parameters,
        split_sizes,
        data_checksums: checksums,
        config,
        resumed_from_step,
    })
}

/// Handles to the same tensors (no data copied).
fn shallow(params: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    params.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect()
}

fn scalar(t: Tensor) -> Result<f64> {
    Ok(t.f_to_kind(Kind::Double)?.f_double_value(&[])?)
}

/// One AdamW step; `None` when the loss was not finite (gradients discarded).
fn first_order_step(
    net: &Net,
    opt: &mut AdamW,
    batch: &Batch,
    shard: &Shard,
    step: u64,
    lr: f64,
    autocast: bool,
) -> Result<Option<f64>> {
    tch::manual_seed(torch_seed(step_seed(shard.seed, purpose::DROPOUT, step)));
    opt.zero_grad()?;
    let loss = match (net, batch) {
        (Net::RevQwen3(m), Batch::Classifier(b)) => tch::autocast(autocast, || {
            m.backward_by_reconstruction(&b.input_ids, &b.attention_mask, &mut |logits| {
                task_model::classifier_loss(logits, b)
            })
        })?,
        (Net::Qwen3Ckpt(m), Batch::Classifier(b)) => tch::autocast(autocast, || {
            m.backward_checkpointed(&b.input_ids, &b.attention_mask, &mut |logits| {
                task_model::classifier_loss(logits, b)
            })
        })?,
        _ => {
            let loss = tch::autocast(autocast, || task_model::batch_loss(net, batch, true))?;
            let value = scalar(loss.shallow_clone())?;
            if !value.is_finite() {
                opt.zero_grad()?;
                return Ok(None);
            }
            loss.f_backward()?;
            loss
        }
    };
    let value = scalar(loss)?;
    if !value.is_finite() {
        opt.zero_grad()?;
        return Ok(None);
    }
    opt.clip_grad_norm(shard.train.grad_clip)?;
    opt.step(lr)?;
    Ok(Some(value))
}

#[allow(clippy::too_many_arguments)]
fn dizo_round(
    net: &Net,
    dizo: &zo::Dizo,
    train: &Encoded,
    order: &mut BatchOrder,
    round: u64,
    objective: TrainObjective,
    pad: u32,
    device: tch::Device,
    seed: u64,
    autocast: bool,
) -> Result<()> {
    let j_total = u64::from(dizo.settings.inner_iters);
    let mut batches = Vec::with_capacity(j_total as usize);
    for j in 0..j_total {
        let idx = order.indices((round - 1) * j_total + j);
        batches.push(task_model::collate(train, &idx, objective, true, pad, device)?);
    }
    let report = dizo.projection_round(
        &mut |j| tch::no_grad(|| tch::autocast(autocast, || scalar(task_model::batch_loss(net, &batches[j], false)?))),
        &mut |j, n| {
            tch::manual_seed(torch_seed(step_seed(seed, purpose::DIZO_U, (round - 1) * j_total + j as u64)));
            let u = Tensor::randn([n as i64], (Kind::Double, tch::Device::Cpu));
            Vec::<f64>::try_from(&u).unwrap_or_else(|_| vec![0.0; n])
        },
    )?;
    let mean_ratio = report.ratios.iter().sum::<f64>() / report.ratios.len().max(1) as f64;
    info!(round, mean_ratio, skipped = report.skipped, "DiZO projection");
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn evaluate(
    net: &Net,
    split: &EvalSplit,
    shard: &Shard,
    objective: TrainObjective,
    pad: u32,
    device: tch::Device,
    autocast: bool,
    sink: &mut dyn EventSink,
    step: u64,
) -> Result<(BTreeMap<String, f64>, f64)> {
    let n = split.data.len();
    let ebs = shard.train.eval_batch_size as usize;
    let mut collected = Collected::default();
    let mut loss_sum = 0.0;
    let mut batches = 0usize;
    tch::no_grad(|| -> Result<()> {
        let mut start = 0;
        while start < n {
            let idx: Vec<usize> = (start..(start + ebs).min(n)).collect();
            let batch = task_model::collate(&split.data, &idx, objective, false, pad, device)?;
            tch::autocast(autocast, || -> Result<()> {
                loss_sum += scalar(task_model::batch_loss(net, &batch, false)?)?;
                task_model::predict(net, &batch, &mut collected)
            })?;
            batches += 1;
            start += ebs;
            sink.alive(step)?;
        }
        Ok(())
    })?;
    let metrics = compute_task_metrics(shard.task, collected.predictions(shard.task, &split.groups))?;
    Ok((metrics.values, loss_sum / batches.max(1) as f64))
}

#[allow(clippy::too_many_arguments)]
fn evaluate_and_track(
    net: &Net,
    dev: &EvalSplit,
    test: &EvalSplit,
    shard: &Shard,
    objective: TrainObjective,
    pad: u32,
    device: tch::Device,
    autocast: bool,
    state: &mut LoopState,
    sink: &mut dyn EventSink,
) -> Result<()> {
    let (dev_metrics, dev_loss) = evaluate(net, dev, shard, objective, pad, device, autocast, sink, state.step)?;
    let (test_metrics, _) = evaluate(net, test, shard, objective, pad, device, autocast, sink, state.step)?;
    let primary = task_info(shard.task).primary_metric;
    let value = dev_metrics.get(primary).copied().unwrap_or(f64::NAN);
    let improved = match state.best.and_then(|i| state.history.get(i)) {
        None => true,
        Some(best) => value > best.dev.get(primary).copied().unwrap_or(f64::NEG_INFINITY),
    };
    state.history.push(EvalRecord { step: state.step, dev: dev_metrics.clone(), test: test_metrics.clone(), dev_loss });
    if improved {
        state.best = Some(state.history.len() - 1);
        state.evals_since_best = 0;
    } else {
        state.evals_since_best += 1;
        let patience = shard.train.early_stopping_patience;
        if patience > 0 && state.evals_since_best >= patience {
            info!(step = state.step, "early stopping: dev {primary} has not improved for {patience} evaluations");
            state.stopped_early = true;
        }
    }
    let mut dev_values = dev_metrics;
    dev_values.insert("loss".into(), dev_loss);
    sink.emit(WorkerEvent::Metrics {
        step: state.step,
        total_steps: u64::from(shard.train.max_steps),
        kind: "dev".into(),
        values: dev_values,
    })?;
    sink.emit(WorkerEvent::Metrics {
        step: state.step,
        total_steps: u64::from(shard.train.max_steps),
        kind: "test".into(),
        values: test_metrics,
    })?;
    info!(step = state.step, dev = value, improved, "evaluated");
    Ok(())
}
