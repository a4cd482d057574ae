//! The shard driver.
//!
//! [`run_shard`] turns a shard into a result: load and split the task's real data,
//! encode it in the model's format, build the model on the pinned device, audit
//! placement, train with the shard's method (`qsched_methods::method`), evaluate on dev (model
//! selection) and test every `eval_every` steps, checkpoint, and report the test metrics
//! of the best dev evaluation. Nothing here substitutes data or scores: a missing file, a
//! token outside the vocabulary or a diverged run is an error that fails the shard.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use tch::{Tensor, nn};
use tracing::{info, info_span, warn};

use shared::scale::Precision;
use shared::shard::Shard;

use qsched_data::encode::{encode_candidates, encode_classifier};
use qsched_data::facts::task_info;
use qsched_data::metrics::compute_task_metrics;
use qsched_data::prompts::{InputFormat, TrainObjective, train_objective};
use qsched_data::split::{TaskSplits, split_task};
use qsched_data::tasks::{Example, load_task};
use qsched_data::tokenize::{TextTokenizer, TokenizerKind};
use qsched_methods::batches::{BatchOrder, SeedPurpose, step_seed, stream, torch_seed};
use qsched_methods::method::{self, Method, StepContext};
use qsched_methods::optim;
use qsched_methods::task_model::{self, Batch, Collected, Encoded, Net, scalar};
use qsched_models::audit;
use qsched_models::device::PinnedDevice;

use crate::checkpoint::{self, EvalRecord, LoopState, ShardDir};
use crate::error::{Error, Result};
use shared::shard::ShardMeasurements;

use crate::protocol::{EventSink, WorkerEvent, WorkerRequest};

/// Consecutive non-finite steps after which a shard is declared diverged.
const MAX_CONSECUTIVE_NON_FINITE: u32 = 20;

/// Runs one shard to completion on `pinned` and returns what it measured.
pub fn run_shard(
    request: &WorkerRequest,
    pinned: &PinnedDevice,
    sink: &mut dyn EventSink,
    started: Instant,
) -> Result<ShardMeasurements> {
    let shard = &request.shard;
    let format = InputFormat::for_model(shard.model);
    // The same refusal `qsched submit` makes (a shard published by hand still gets it).
    if let Some(reason) = shard.model.unsupported_reason(shard.task) {
        return Err(Error::UnsupportedPair { model: shard.model, task: shard.task, reason: reason.to_owned() });
    }
    let autocast = shard.train.precision == Precision::Bf16;
    if autocast {
        pinned.set_autocast_bf16()?;
    }
    let pretrained = pretrained_dir(request)?;

    // 1. Data: the task's real files, split by the shard seed.
    let data = ShardData::load(request, format, pretrained.as_deref())?;
    sink.alive(0)?;

    // 2. Model on the pinned device; random init seeded by the shard seed.
    tch::manual_seed(torch_seed(step_seed(shard.seed, SeedPurpose::Init, 0)));
    let vs = nn::VarStore::new(pinned.device);
    let num_labels = task_info(shard.task).num_labels as i64;
    let pad_id = i64::from(data.tok.pad_id());
    let (net, model_config) = task_model::build_net(&vs, shard, pretrained.as_deref(), num_labels, pad_id)?;
    data.tok.check_model_vocab(net.vocab_size() as usize)?;
    let params = net.named_parameters();

    // 3. Method.
    let mut method = method::for_shard(shard, &params)?;

    // 4. Resume from a checkpoint of an earlier attempt, if there is one.
    let ckpt_dir =
        request.checkpoint_dir.as_ref().map(|root| ShardDir::new(root, &shard.run_id, &shard.shard_id)).transpose()?;
    let run = Run {
        shard,
        pinned,
        net: &net,
        params: &params,
        data: &data,
        objective: train_objective(shard.task),
        pad: data.tok.pad_id(),
        autocast,
        ckpt_dir: ckpt_dir.as_ref(),
    };
    let (mut state, resumed_from_step) = run.resume(method.as_mut())?;

    // 5. Placement audit: parameters, optimizer state and a batch, all on the device.
    let audited = run.audit(method.as_ref())?;
    info!(tensors = audited, device = %pinned.spec, "placement audit passed: parameters, optimizer state and batch");

    // 6. Train, evaluating and checkpointing on the way.
    sink.emit(WorkerEvent::Started {
        device: pinned.spec.to_string(),
        gpu_name: pinned.gpu_name.clone(),
        total_steps: u64::from(shard.train.max_steps),
        resumed_from_step,
    })?;
    run.train(method.as_mut(), &mut state, resumed_from_step, sink)?;

    // 7. The test metrics of the best dev evaluation.
    let best = state
        .best
        .and_then(|i| state.history.get(i))
        .ok_or_else(|| Error::Diverged("no evaluation completed".into()))?
        .clone();
    let memory = pinned.memory()?;
    let config = serde_json::json!({
        "shard": shard,
        // A Qwen3 checkpoint in the reversible coupling is a different function: say so
        // at the top level, not only inside `shard.init`.
        "rev_qwen3_from_qwen3": matches!(shard.init, shared::spec::ModelInit::Qwen3CheckpointInRevQwen3 { .. }),
        "model_config": model_config,
        "input_format": format!("{format:?}"),
        "train_objective": format!("{:?}", run.objective),
        "train_file": data.train_file,
        "train_file_is_fewglue_subset": data.splits.fewglue_subset,
        "test_file": data.test_file,
        "train_examples_truncated": data.train_truncated,
        "tokenizer": data.tok.source().display().to_string(),
        "evaluations": state.history,
        "stopped_early": state.stopped_early,
        "placement_audit": { "device": pinned.spec.to_string(), "tensors_on_device": audited },
        "zo_trainable": if shard.model.is_zeroth_order() { "all parameters (embed_tokens included)" } else { "" },
    });
    let (steps, train_seconds) = (state.step, state.train_seconds);
    let per_second = |n: u64| if train_seconds > 0.0 { n as f64 / train_seconds } else { 0.0 };
    Ok(ShardMeasurements {
        device: pinned.spec.to_string(),
        gpu_name: pinned.gpu_name.clone(),
        metrics: best.test,
        dev_metrics: best.dev,
        primary_metric: Some(task_info(shard.task).primary_metric.to_owned()),
        best_step: Some(best.step),
        steps,
        peak_memory_bytes: memory.peak,
        peak_memory_kind: pinned.memory_kind().to_owned(),
        wall_seconds: started.elapsed().as_secs_f64(),
        train_seconds,
        steps_per_second: per_second(steps),
        tokens_per_second: per_second(state.train_tokens),
        skipped_steps: state.skipped_steps,
        precision: shard.train.precision.label().to_owned(),
        threads: tch::get_num_threads() as u32,
        parameters: net.parameter_count(),
        split_sizes: data.split_sizes(),
        data_checksums: data.checksums,
        config,
        resumed_from_step,
    })
}

/// The pretrained checkpoint the shard starts from, resolved inside the operator's model
/// roots (the only place one is read from).
fn pretrained_dir(request: &WorkerRequest) -> Result<Option<PathBuf>> {
    match &request.shard.init {
        shared::spec::ModelInit::Random => Ok(None),
        shared::spec::ModelInit::Pretrained { dir } | shared::spec::ModelInit::Qwen3CheckpointInRevQwen3 { dir } => {
            Ok(Some(crate::confine::model_dir(dir, &request.model_roots)?))
        }
    }
}

fn relative(data_dir: &Path, path: &Path) -> String {
    path.strip_prefix(data_dir).unwrap_or(path).display().to_string()
}

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
            let v = examples
                .iter()
                .map(|e| encode_classifier(shard.task, e, tok, max_len))
                .collect::<Result<Vec<_>, qsched_data::Error>>()?;
            let truncated = v.iter().filter(|e| e.truncated).count();
            Ok((Encoded::Classifier(v), truncated))
        }
        InputFormat::PromptLabelWords => {
            let v = examples
                .iter()
                .map(|e| encode_candidates(shard.task, e, tok, max_len))
                .collect::<Result<Vec<_>, qsched_data::Error>>()?;
            let truncated = v.iter().filter(|e| e.truncated).count();
            Ok((Encoded::Candidates(v), truncated))
        }
    }
}

/// A shard's data: its splits, tokenizer and encoded examples, and what the result
/// records about them.
struct ShardData {
    splits: TaskSplits,
    tok: TextTokenizer,
    /// SHA-256 of the split files and tokenizer files, by path under the data directory.
    checksums: BTreeMap<String, String>,
    train_file: String,
    test_file: String,
    train: Encoded,
    train_truncated: usize,
    dev: EvalSplit,
    test: EvalSplit,
}

impl ShardData {
    /// Loads the task's real files, splits them by the shard seed and encodes every split
    /// in `format`; an empty split is an error.
    fn load(request: &WorkerRequest, format: InputFormat, pretrained: Option<&Path>) -> Result<Self> {
        let shard = &request.shard;
        let span = info_span!("shard.data", task = %shard.task);
        let (splits, tok) = {
            let _e = span.enter();
            let loaded = load_task(shard.task, &request.data_dir)?;
            let splits = split_task(&loaded, &shard.data, shard.seed)?;
            let kind = TokenizerKind::for_family(shard.model.family());
            let tok_dir = match pretrained {
                Some(dir) if dir.join("tokenizer.json").is_file() || dir.join("vocab.json").is_file() => {
                    dir.to_path_buf()
                }
                _ => request.data_dir.join("tokenizers").join(kind.dir_name()),
            };
            let tok = TextTokenizer::load(kind, &tok_dir)?;
            (splits, tok)
        };
        let mut checksums = BTreeMap::new();
        for path in [&splits.train_path, &splits.test_path] {
            checksums.insert(relative(&request.data_dir, path), qsched_data::sha256_file(path)?);
        }
        for name in ["tokenizer.json", "vocab.json", "merges.txt"] {
            let p = tok.source().join(name);
            if p.is_file() {
                checksums.insert(relative(&request.data_dir, &p), qsched_data::sha256_file(&p)?);
            }
        }
        let (train, train_truncated) = encode_split(&splits.train, shard, format, &tok)?;
        let (dev, _) = encode_split(&splits.dev, shard, format, &tok)?;
        let (test, _) = encode_split(&splits.test, shard, format, &tok)?;
        if train.is_empty() || dev.is_empty() || test.is_empty() {
            return Err(Error::EmptySplit {
                path: splits.train_path.clone(),
                message: format!("empty split: train {}, dev {}, test {}", train.len(), dev.len(), test.len()),
            });
        }
        Ok(ShardData {
            checksums,
            train_file: relative(&request.data_dir, &splits.train_path),
            test_file: relative(&request.data_dir, &splits.test_path),
            train,
            train_truncated,
            dev: EvalSplit { data: dev, groups: groups_of(&splits.dev) },
            test: EvalSplit { data: test, groups: groups_of(&splits.test) },
            splits,
            tok,
        })
    }

    fn split_sizes(&self) -> BTreeMap<String, u64> {
        BTreeMap::from([
            ("train".to_owned(), self.train.len() as u64),
            ("dev".to_owned(), self.dev.data.len() as u64),
            ("test".to_owned(), self.test.data.len() as u64),
        ])
    }
}

/// What the training loop, evaluation and checkpoints of one shard read.
struct Run<'a> {
    shard: &'a Shard,
    pinned: &'a PinnedDevice,
    net: &'a Net,
    params: &'a [(String, Tensor)],
    data: &'a ShardData,
    objective: TrainObjective,
    pad: u32,
    autocast: bool,
    ckpt_dir: Option<&'a ShardDir>,
}

impl Run<'_> {
    /// The training examples at `indices` as a training batch on the device.
    fn train_batch(&self, indices: &[usize]) -> qsched_methods::Result<Batch> {
        task_model::collate(&self.data.train, indices, self.objective, true, self.pad, self.pinned.device)
    }

    /// The batch order of the training loop (`stream`: [`stream::BATCHES`] for the steps,
    /// [`stream::DIZO`] for DiZO's rounds).
    fn order(&self, stream: u64) -> BatchOrder {
        BatchOrder::new(self.data.train.len(), self.shard.train.batch_size as usize, self.shard.seed, stream)
    }

    /// Parameters and the method's state, with their checkpoint names.
    fn named_tensors<'m>(&'m self, method: &'m dyn Method) -> Vec<(String, &'m Tensor)> {
        let mut tensors: Vec<(String, &Tensor)> = self.params.iter().map(|(n, t)| (n.clone(), t)).collect();
        tensors.extend(method.state_tensors());
        tensors
    }

    /// Restores the weights and method state of an earlier attempt's checkpoint, if there
    /// is one; returns the loop state to continue from and the step it was saved at.
    fn resume(&self, method: &mut dyn Method) -> Result<(LoopState, Option<u64>)> {
        if let Some(dir) = self.ckpt_dir
            && let Some((saved, tensors)) = checkpoint::load(dir, &self.shard.shard_id)?
        {
            checkpoint::restore(dir.path(), &tensors, &self.named_tensors(method))?;
            method.set_optimizer_step(saved.optimizer_step);
            info!(step = saved.step, "resumed from checkpoint");
            let step = saved.step;
            return Ok((saved, Some(step)));
        }
        Ok((LoopState::new(&self.shard.shard_id), None))
    }

    /// Checks that parameters, method state and a training batch are on the pinned
    /// device; returns how many tensors it checked.
    fn audit(&self, method: &dyn Method) -> Result<usize> {
        let probe = self.train_batch(&self.order(stream::BATCHES).indices(0))?;
        let mut tensors = self.named_tensors(method);
        tensors.extend(probe.tensors().into_iter().map(|(n, t)| (n.to_owned(), t)));
        audit::ensure_on_device(self.pinned.device, tensors.iter().map(|(n, t)| (n.as_str(), *t)))?;
        Ok(tensors.len())
    }

    /// Trains from `state.step` to `max_steps` (or early stopping): per step the batch,
    /// the method's step, a log line every `log_every` steps, dev and test evaluation every
    /// `eval_every`, a checkpoint every `checkpoint_every` and at the end.
    fn train(
        &self,
        method: &mut dyn Method,
        state: &mut LoopState,
        resumed_from_step: Option<u64>,
        sink: &mut dyn EventSink,
    ) -> Result<()> {
        let t = &self.shard.train;
        let total_steps = u64::from(t.max_steps);
        let log_every = (total_steps / 50).clamp(1, 25);
        let eval_every = u64::from(t.eval_every.max(1));
        let ckpt_every = u64::from(t.checkpoint_every);
        let mut order = self.order(stream::BATCHES);
        let mut dizo_order = self.order(stream::DIZO);
        let mut dizo_batches = |i: u64| self.train_batch(&dizo_order.indices(i));
        let mut consecutive_bad = 0u32;
        let mut recent_loss = Vec::new();
        let span = info_span!("shard.loop", total_steps, resumed_from = ?resumed_from_step);
        let _loop = span.enter();

        while state.step < total_steps && !state.stopped_early {
            let step = state.step;
            let lr = optim::learning_rate(t, step);
            let batch = self.train_batch(&order.indices(step))?;
            order.forget_before(step);
            let t0 = Instant::now();
            let loss = method.step(&mut StepContext {
                net: self.net,
                batch: &batch,
                seed: self.shard.seed,
                step,
                lr,
                autocast: self.autocast,
                train: t,
                dizo_batches: &mut dizo_batches,
            })?;
            if matches!(self.pinned.device, tch::Device::Cuda(_)) {
                self.pinned.synchronize();
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
            let last = state.step == total_steps;
            if state.step.is_multiple_of(log_every) || last {
                emit_train_metrics(sink, state, total_steps, lr, &mut recent_loss)?;
            }
            if state.step.is_multiple_of(eval_every) || last {
                self.evaluate_and_track(state, sink)?;
            }
            if (ckpt_every > 0 && state.step.is_multiple_of(ckpt_every)) || last || state.stopped_early {
                self.save_checkpoint(method, state)?;
            }
        }
        Ok(())
    }

    /// Saves weights, method state and loop state (when the shard has a checkpoint
    /// directory).
    fn save_checkpoint(&self, method: &dyn Method, state: &mut LoopState) -> Result<()> {
        let Some(dir) = self.ckpt_dir else { return Ok(()) };
        if let Some(step) = method.optimizer_step() {
            state.optimizer_step = step;
        }
        checkpoint::save(dir, state, &self.named_tensors(method))
    }

    /// Metrics and mean loss of `split` with the current weights.
    fn evaluate(&self, split: &EvalSplit, sink: &mut dyn EventSink, step: u64) -> Result<(BTreeMap<String, f64>, f64)> {
        let shard = self.shard;
        let n = split.data.len();
        let ebs = shard.train.eval_batch_size as usize;
        let mut collected = Collected::default();
        let mut loss_sum = 0.0;
        let mut batches = 0usize;
        tch::no_grad(|| -> Result<()> {
            let mut start = 0;
            while start < n {
                let idx: Vec<usize> = (start..(start + ebs).min(n)).collect();
                let batch =
                    task_model::collate(&split.data, &idx, self.objective, false, self.pad, self.pinned.device)?;
                tch::autocast(self.autocast, || -> qsched_methods::Result<()> {
                    loss_sum += scalar(&task_model::batch_loss(self.net, &batch, false)?)?;
                    task_model::predict(self.net, &batch, &mut collected)
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

    /// Evaluates dev and test, records them, tracks the best dev evaluation (early
    /// stopping) and reports both.
    fn evaluate_and_track(&self, state: &mut LoopState, sink: &mut dyn EventSink) -> Result<()> {
        let shard = self.shard;
        let (dev_metrics, dev_loss) = self.evaluate(&self.data.dev, sink, state.step)?;
        let (test_metrics, _) = self.evaluate(&self.data.test, sink, state.step)?;
        let primary = task_info(shard.task).primary_metric;
        let value = dev_metrics.get(primary).copied().unwrap_or(f64::NAN);
        let improved = match state.best.and_then(|i| state.history.get(i)) {
            None => true,
            Some(best) => value > best.dev.get(primary).copied().unwrap_or(f64::NEG_INFINITY),
        };
        state.history.push(EvalRecord {
            step: state.step,
            dev: dev_metrics.clone(),
            test: test_metrics.clone(),
            dev_loss,
        });
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
}

/// Reports the mean training loss since the last report, the learning rate, skipped
/// steps and throughput.
fn emit_train_metrics(
    sink: &mut dyn EventSink,
    state: &LoopState,
    total_steps: u64,
    lr: f64,
    recent_loss: &mut Vec<f64>,
) -> Result<()> {
    let mean =
        if recent_loss.is_empty() { f64::NAN } else { recent_loss.iter().sum::<f64>() / recent_loss.len() as f64 };
    recent_loss.clear();
    let mut values = BTreeMap::from([("lr".to_owned(), lr), ("skipped".to_owned(), state.skipped_steps as f64)]);
    if mean.is_finite() {
        values.insert("loss".to_owned(), mean);
    }
    if state.train_seconds > 0.0 {
        values.insert("tokens_per_second".to_owned(), state.train_tokens as f64 / state.train_seconds);
    }
    sink.emit(WorkerEvent::Metrics { step: state.step, total_steps, kind: "train".into(), values })
}
