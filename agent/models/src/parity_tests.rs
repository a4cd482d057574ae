//! Parity with transformers: tiny checkpoints and reference logits written by
//! `ops/parity/make_fixtures.py` (torch 2.11; transformers 5.24 and, for the `*_tf4`
//! fixtures, 4.51.3) under `agent/models/tests/fixtures/parity/<name>/`, loaded here with
//! `load_model_dir` and compared in fp32 on CPU.
//!
//! Causal-LM logits are compared at every position except left-padding query rows (no
//! real token at or before them). Those rows attend to nothing in HF, whose output there
//! depends on the SDPA kernel; we let them attend to themselves. Their values are
//! padding and never used. Right-padding rows are compared in full: both HF and we let
//! them attend to the real prefix.

use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

use super::hf::{Architecture, HfCheckpoint, load_model_dir};
use super::test_util::rng_guard;
use crate::inspect::TokenBatch;

/// Tolerance of the brief: max |Δlogit| ≤ 1e-4 in fp32.
pub(crate) const TOL: f64 = 1e-4;

pub(crate) fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity").join(name)
}

pub(crate) fn read_reference(path: &Path) -> Tensor {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let view = st.tensor("logits").unwrap();
    let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
    Tensor::from_data_size(view.data(), &shape, Kind::Float)
}

/// Max |a − b| over the positions HF defines (see module docs); `[B, L]` logits in full.
pub(crate) fn max_diff(a: &Tensor, b: &Tensor, mask: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    let diff = (a - b).abs();
    if diff.dim() == 2 {
        return diff.max().double_value(&[]);
    }
    let defined = mask.cumsum(1, Kind::Int64).gt(0).unsqueeze(-1).expand_as(&diff);
    diff.masked_select(&defined).max().double_value(&[])
}

/// Loads fixture `name`, checks the parameter order against HF's, runs its tokens,
/// returns (max diff, architecture, logits scale).
fn run_fixture(name: &str) -> (f64, Architecture, f64) {
    let _rng = rng_guard();
    let dir = fixture_dir(name);
    let (_vs, model, info) = load_model_dir(&dir.join("model"), Device::Cpu).unwrap();
    // HF's named_parameters() order, recorded by the fixture script, is ours too.
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap();
    let hf_order: Vec<String> = serde_json::from_value(meta["named_parameters"].clone()).unwrap();
    let ours: Vec<String> = model.named_parameters().into_iter().map(|(n, _)| n).collect();
    assert_eq!(ours, hf_order, "{name}: named_parameters order differs from HF");
    let batch = TokenBatch::read(&dir.join("tokens.json"), model.vocab_size()).unwrap();
    let (ids, mask) = batch.to_tensors(Device::Cpu).unwrap();
    let logits = tch::no_grad(|| model.logits(&ids, &mask)).unwrap();
    let reference = read_reference(&dir.join("reference.safetensors"));
    let scale = reference.abs().max().double_value(&[]);
    (max_diff(&logits, &reference, &mask), info.architecture, scale)
}

fn check(name: &str, arch: Architecture) {
    let (diff, got, scale) = run_fixture(name);
    eprintln!("parity {name}: max |Δlogit| = {diff:.3e} (max |logit| {scale:.2})");
    assert_eq!(got, arch);
    // The fixtures use O(1) weights, so a 1e-4 agreement is meaningful.
    assert!(scale > 0.25, "{name}: logits too small ({scale}) for the tolerance to mean anything");
    assert!(diff <= TOL, "{name}: max |Δlogit| {diff:e} > {TOL:e}");
}

#[test]
fn parity_qwen3_lm_gqa_right_and_left_padding() {
    check("qwen3_lm", Architecture::Qwen3ForCausalLM);
}

#[test]
fn parity_qwen3_lm_tied_bf16_checkpoint() {
    check("qwen3_lm_tied_bf16", Architecture::Qwen3ForCausalLM);
}

#[test]
fn parity_qwen3_seq_cls_sharded_checkpoint() {
    check("qwen3_cls_sharded", Architecture::Qwen3ForSequenceClassification);
}

#[test]
fn parity_qwen3_regression_fp16_checkpoint() {
    check("qwen3_reg_fp16", Architecture::Qwen3ForSequenceClassification);
}

#[test]
fn parity_opt_pre_ln_left_padding() {
    check("opt_preln", Architecture::OptForCausalLM);
}

#[test]
fn parity_opt_post_ln_project_in_out_fp16() {
    check("opt_postln_proj", Architecture::OptForCausalLM);
}

#[test]
fn parity_qwen3_transformers4_config() {
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture_dir("qwen3_lm_tf4").join("model/config.json")).unwrap())
            .unwrap();
    // The fixture really is 4.x style.
    assert!(
        cfg.get("rope_theta").is_some() && cfg.get("rope_parameters").is_none() && cfg.get("torch_dtype").is_some()
    );
    check("qwen3_lm_tf4", Architecture::Qwen3ForCausalLM);
}

#[test]
fn parity_opt_transformers4_config() {
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture_dir("opt_tf4").join("model/config.json")).unwrap())
            .unwrap();
    assert!(cfg.get("torch_dtype").is_some() && cfg.get("dtype").is_none());
    check("opt_tf4", Architecture::OptForCausalLM);
}

#[test]
fn parity_transformers5_configs_are_5x_style() {
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture_dir("qwen3_lm").join("model/config.json")).unwrap())
            .unwrap();
    assert!(cfg.get("rope_parameters").is_some() && cfg.get("rope_theta").is_none() && cfg.get("dtype").is_some());
}
