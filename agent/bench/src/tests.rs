//! Tests of the harness on CPU: records, protocol checks, and the methods it calls.

use super::*;

fn cpu() -> PinnedDevice {
    qsched_models::device::pin(DeviceSpec::Cpu).unwrap()
}

fn collect(f: impl FnOnce(&mut Emit<'_>) -> Result<Outcome>) -> (Outcome, Vec<Value>) {
    let mut records = Vec::new();
    let outcome = f(&mut |v: &Value| {
        records.push(v.clone());
        Ok(())
    })
    .unwrap();
    (outcome, records)
}

fn positive(r: &Value, k: &str) -> f64 {
    let v = r[k].as_f64().unwrap_or_else(|| panic!("{k} missing in {r}"));
    assert!(v.is_finite() && v > 0.0, "{k} = {v} in {r}");
    v
}

fn tiny_qwen(head: Head) -> Qwen3DepthArgs {
    Qwen3DepthArgs {
        depths: vec![1, 2],
        hidden: 32,
        heads: 4,
        kv_heads: 2,
        head_dim: 8,
        intermediate: 48,
        vocab: 128,
        batch: 2,
        seq: 16,
        steps: 2,
        warmup: 1,
        head,
        ..Qwen3DepthArgs::default()
    }
}

#[test]
fn qwen3_depth_reports_memory_and_time_for_every_model_and_head() {
    // Weights and batches come from libtorch's global generator: hold the guard so
    // tests running in parallel cannot reseed it between the models compared below.
    let _rng = qsched_models::test_util::rng_guard();
    let pinned = cpu();
    for head in [Head::Cls, Head::Lm] {
        let a = Qwen3DepthArgs {
            models: vec![QwenModel::Qwen3, QwenModel::Qwen3Ckpt, QwenModel::RevQwen3],
            ..tiny_qwen(head)
        };
        let (outcome, records) = collect(|emit| run_qwen3_depth(&pinned, &a, emit));
        assert_eq!(outcome, Outcome { measured: 6, failed: 0 });
        let measurements: Vec<&Value> = records.iter().filter(|r| r["record"] == "measurement").collect();
        assert_eq!(measurements.len(), 6);
        for r in &measurements {
            for k in [
                "step_seconds",
                "tokens_per_second",
                "peak_memory_bytes",
                "static_memory_bytes",
                "parameters",
                "loss_last",
            ] {
                positive(r, k);
            }
            let (peak, stat) = (r["peak_memory_bytes"].as_u64().unwrap(), r["static_memory_bytes"].as_u64().unwrap());
            // On CPU both figures are the whole process's RSS, which other tests running
            // in parallel grow and shrink between the two readings; only the allocator
            // counters of a CUDA device are exact enough to order them.
            if r["memory_kind"] == "cuda_allocated_peak" {
                assert!(peak >= stat, "{r}");
            }
            let gradient = r["gradient_memory_bytes"].as_i64().unwrap();
            assert_eq!(r["activation_bytes"].as_i64().unwrap(), peak as i64 - stat as i64 - gradient);
            assert_eq!(r["zero_grad"], "set_to_none");
            assert_eq!(r["step_seconds_all"].as_array().unwrap().len(), 2);
            assert_eq!(r["head"], head.label());
        }
        let rev: Vec<&&Value> = measurements.iter().filter(|r| r["model"] == "rev-qwen3").collect();
        assert_eq!(rev.len(), 2);
        assert!(rev.iter().all(|r| r["backward"] == "reconstruction"));
        let ckpt: Vec<&&Value> = measurements.iter().filter(|r| r["model"] == "qwen3-ckpt").collect();
        assert_eq!(ckpt.len(), 2);
        assert!(ckpt.iter().all(|r| r["backward"].as_str().unwrap().starts_with("checkpointed")));
        // Same weights, same batches, same network: the checkpointed step's losses are
        // plain Qwen3's (the first timed loss comes before any update could differ by
        // more than rounding).
        for d in [1, 2] {
            let loss = |m: &str| {
                measurements.iter().find(|r| r["model"] == m && r["depth"] == d).unwrap()["loss_first"]
                    .as_f64()
                    .unwrap()
            };
            let (p, c) = (loss("qwen3"), loss("qwen3-ckpt"));
            assert!((p - c).abs() <= 1e-5 * p.abs(), "depth {d}: qwen3 {p} vs qwen3-ckpt {c}");
        }
        // Same weights shape: both models have the same parameter count at a depth.
        let count = |m: &str, d: i64| {
            measurements.iter().find(|r| r["model"] == m && r["depth"] == d).unwrap()["parameters"].as_u64().unwrap()
        };
        assert_eq!(count("qwen3", 2), count("rev-qwen3", 2));
        assert_eq!(count("qwen3", 2), count("qwen3-ckpt", 2));
        assert!(count("qwen3", 2) > count("qwen3", 1));
        let summaries: Vec<&Value> = records.iter().filter(|r| r["record"] == "summary").collect();
        assert_eq!(summaries.len(), 3);
        for s in summaries {
            assert!(s["activation_slope_bytes_per_layer"].as_f64().unwrap().is_finite());
            assert_eq!(s["gradient_memory_bytes"].as_array().unwrap().len(), 2);
            assert_eq!(s["depths"], json!([1, 2]));
        }
    }
}

#[test]
fn zo_opt_reports_every_method_with_ratios_to_inference() {
    let pinned = cpu();
    let a = ZoOptArgs {
        hidden: 32,
        layers: 2,
        heads: 4,
        ffn: 64,
        vocab: 128,
        batch: 2,
        seq: 16,
        steps: 2,
        warmup: 1,
        // Listed out of order: inference still runs first.
        methods: vec![ZoMethod::Mezo, ZoMethod::Ft, ZoMethod::Inference, ZoMethod::Dizo],
        zo_lr: 1e-3,
        dizo: DizoSettings { interval: 5, inner_iters: 2, ..ZoOptArgs::default().dizo },
        ..ZoOptArgs::default()
    };
    let (outcome, records) = collect(|emit| run_zo_opt(&pinned, &a, emit));
    assert_eq!(outcome, Outcome { measured: 4, failed: 0 }, "{records:?}");
    assert_eq!(records[0]["method"], "inference");
    for r in &records {
        for k in ["step_seconds", "tokens_per_second", "peak_memory_bytes", "static_memory_bytes", "parameters"] {
            positive(r, k);
        }
        assert_eq!(r["rows"], 4);
        assert_eq!(r["tokens_per_step"], 64);
        if r["method"] != "inference" {
            positive(r, "peak_ratio_to_inference");
            positive(r, "step_ratio_to_inference");
        }
    }
    let dizo = records.iter().find(|r| r["method"] == "dizo").unwrap();
    positive(dizo, "projection_round_seconds");
    positive(dizo, "anchor_bytes");
    let expected = positive(dizo, "mezo_step_seconds") + positive(dizo, "projection_round_seconds") / 5.0;
    assert!((positive(dizo, "step_seconds") - expected).abs() < 1e-12);
}

/// Tiny width at the real vocabulary (the Qwen tokenizer's ids need it), on the
/// shared SST-2 data: one record per (depth, precision), every group reported, the
/// reconstruction bit-identical, the reversible error at autograd's level.
#[test]
fn rev_grad_error_reports_every_group_against_fp64() {
    let _rng = qsched_models::test_util::rng_guard();
    let pinned = cpu();
    let a = RevGradErrorArgs {
        depths: vec![1, 3],
        shape: Qwen3Shape { hidden: 16, heads: 2, kv_heads: 1, head_dim: 8, intermediate: 32, vocab: 151_936 },
        batch: 2,
        seq: 12,
        precisions: vec![Precision::Fp32],
        data_dir: qsched_data::test_util::data_dir(),
        train_steps: 1,
        ..RevGradErrorArgs::default()
    };
    let (outcome, records) = collect(|emit| run_rev_grad_error(&pinned, &a, emit));
    assert_eq!(outcome, Outcome { measured: 2, failed: 0 }, "{records:?}");
    for (r, depth) in records.iter().zip([1, 3]) {
        assert_eq!(r["depth"], depth);
        assert_eq!(r["reconstruction_bit_identical"], true, "{r}");
        assert_eq!(r["train_losses"].as_array().unwrap().len(), 1);
        let groups = r["groups"].as_array().unwrap();
        assert_eq!(groups.len(), 2 + 3 * depth as usize, "{r}");
        assert_eq!(groups[0]["group"], "embedding");
        assert_eq!(groups[groups.len() - 1]["group"], "head");
        for g in groups {
            let (rev, plain) = (g["reconstruction"].as_f64().unwrap(), g["autograd"].as_f64().unwrap());
            assert!(plain > 0.0 && plain < 1e-4 && rev < 1e-4, "{g}");
        }
    }
    let a = RevGradErrorArgs { precisions: vec![Precision::Bf16], ..a };
    assert!(run_rev_grad_error(&pinned, &a, &mut |_| Ok(())).is_err(), "bf16 on CPU");
}

#[test]
fn refusals_are_errors_not_fallbacks() {
    let pinned = cpu();
    let mut sink = |_: &Value| -> Result<()> { Ok(()) };
    let a = Qwen3DepthArgs { precision: Precision::Bf16, ..tiny_qwen(Head::Cls) };
    assert!(run_qwen3_depth(&pinned, &a, &mut sink).is_err(), "bf16 on CPU");
    let a = Qwen3DepthArgs { warmup: 0, ..tiny_qwen(Head::Cls) };
    assert!(run_qwen3_depth(&pinned, &a, &mut sink).is_err(), "no warm-up");
    let a = ZoOptArgs { weights: Weights::Fp16, methods: vec![ZoMethod::Ft], ..ZoOptArgs::default() };
    assert!(run_zo_opt(&pinned, &a, &mut sink).is_err(), "ft on fp16 weights");
}

#[test]
fn median_and_fit() {
    assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
    assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    let (s, i) = linear_fit(&[2.0, 4.0, 8.0], &[5.0, 9.0, 17.0]);
    assert!((s - 2.0).abs() < 1e-12 && (i - 1.0).abs() < 1e-12);
}
