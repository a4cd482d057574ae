//! Tests of the shard driver through the worker: every method × task with a local train
//! split at tiny scale, qwen3-ckpt training like qwen3, a Qwen3 checkpoint reaching
//! rev-qwen3 only when the spec asks, and resume-equals-uninterrupted. The methods' own
//! correctness tests are in the methods crate.
//!
//! Every test that trains holds `rng_guard()`: libtorch's CPU generator is process-global
//! (`run_shard` reseeds it), and the guard also pins libtorch to one intra-op thread,
//! which makes CPU training bit-reproducible.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Instant;

use tch::{Device, Tensor, nn};

use shared::device::DeviceClass;
use shared::ids::Family;
use shared::scale::{self, DataSettings, DizoSettings};
use shared::shard::{ModelArch, Shard};
use shared::spec::ModelInit;
use shared::{DeviceSpec, ModelId, TaskId};

use qsched_data::facts::metric_names;
use qsched_methods::task_model::{self, Net};
use qsched_models::test_util::rng_guard;

use crate::checkpoint;
use crate::error::{Error, Result};
use shared::shard::ShardMeasurements;

use crate::protocol::{EventSink, PROTOCOL_VERSION, VecSink, WorkerEvent, WorkerRequest};
use crate::worker;

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
        data_dir: qsched_data::test_util::data_dir(),
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

fn finished(events: &[WorkerEvent]) -> &ShardMeasurements {
    match events.last() {
        Some(WorkerEvent::Finished(o)) => o,
        other => panic!("expected Finished last, got {other:?}"),
    }
}

fn evaluations(o: &ShardMeasurements) -> &serde_json::Value {
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
    let primary = o.primary_metric.as_deref().unwrap_or_default();
    assert!(o.metrics.contains_key(primary), "{what}: primary {primary} missing");
    assert_eq!(primary, qsched_data::facts::primary_metric(shard.task));
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
                Err(e @ Error::UnsupportedPair { .. }) => assert!(e.to_string().contains("STS-B"), "{e}"),
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
    let audited = |o: &ShardMeasurements| o.config["placement_audit"]["tensors_on_device"].as_u64().unwrap();
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
        let cfg = qsched_models::qwen3::Config::from_arch(&scale::preset("tiny").unwrap().qwen3);
        let m = qsched_models::qwen3::Qwen3ForCausalLM::new(&vs.root(), &cfg).unwrap();
        qsched_models::hf::save_model_dir(&dir, &m, None).unwrap();
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
    assert!(
        matches!(err, qsched_methods::Error::InitRefused(_)) && err.to_string().contains("rev_qwen3_from_qwen3 = true"),
        "{err}"
    );
    let converted = ModelInit::Qwen3CheckpointInRevQwen3 { dir: dir_str.clone() };
    let err = build(ModelId::Qwen3, converted.clone()).unwrap_err();
    assert!(matches!(err, qsched_methods::Error::InitRefused(_)), "{err}");
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
