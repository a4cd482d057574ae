//! Helpers for the model tests: tiny configs, O(1)-scale random weights (HF's std 0.02
//! makes every output so small that a tolerance test would prove nothing), batches.

use std::sync::{Mutex, MutexGuard};

use tch::{Device, Kind, Tensor};

use super::{opt, qwen3};
use crate::Error;

static RNG: Mutex<()> = Mutex::new(());

/// libtorch's CPU generator is process-global and tests run in parallel: every test that
/// draws random numbers (building a model draws its init) holds this guard, so a seeded
/// test sees exactly its own draws.
///
/// It also pins libtorch to one intra-op thread: the tensors here are tiny, and OpenMP
/// workers spinning on a shared 2-core machine made a 1 s suite take a minute.
pub fn rng_guard() -> MutexGuard<'static, ()> {
    static ONE_THREAD: std::sync::Once = std::sync::Once::new();
    ONE_THREAD.call_once(|| tch::set_num_threads(1));
    RNG.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A tiny Qwen3 with GQA (4 query heads, 2 kv heads) and head_dim ≠ hidden/heads.
pub fn tiny_qwen3(tied: bool) -> qwen3::Config {
    qwen3::Config {
        vocab_size: 64,
        hidden_size: 32,
        intermediate_size: 48,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 16,
        max_position_embeddings: 128,
        rope_theta: 10_000.0,
        rms_norm_eps: 1e-6,
        tie_word_embeddings: tied,
        initializer_range: 0.02,
        pad_token_id: None,
        bos_token_id: None,
        eos_token_id: None,
    }
}

/// A tiny OPT, pre-LN or the post-LN project_in/out layout.
pub fn tiny_opt(pre_ln: bool) -> opt::Config {
    opt::Config {
        vocab_size: 64,
        hidden_size: 32,
        ffn_dim: 48,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        max_position_embeddings: 32,
        word_embed_proj_dim: if pre_ln { 32 } else { 16 },
        do_layer_norm_before: pre_ln,
        dropout: 0.1,
        attention_dropout: 0.0,
        init_std: 0.02,
        pad_token_id: Some(1),
        bos_token_id: Some(2),
        eos_token_id: None,
    }
}

/// Redraws parameters at O(1) scale: linear N(0, 1/fan_in), embeddings N(0, 1), norm
/// scales 1 + N(0, 0.2²), biases N(0, 0.1²).
pub fn randomize(params: &[(String, Tensor)], seed: i64) {
    tch::manual_seed(seed);
    tch::no_grad(|| {
        for (name, t) in params {
            let mut t = t.shallow_clone();
            let r = Tensor::randn(t.size(), (t.kind(), t.device()));
            let v = if name.ends_with("bias") {
                r * 0.1
            } else if name.contains("norm") {
                r * 0.2 + 1.0
            } else if name.contains("embed") {
                r
            } else {
                r / (t.size()[1] as f64).sqrt()
            };
            t.copy_(&v);
        }
    });
}

/// `[B, T]` Int64 tensor on the CPU.
pub fn rows(rows: &[&[i64]]) -> Tensor {
    let t = rows[0].len() as i64;
    let flat: Vec<i64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_slice(&flat).view([rows.len() as i64, t])
}

/// All-ones mask like `ids`.
pub fn ones_like(ids: &Tensor) -> Tensor {
    Tensor::ones(ids.size(), (Kind::Int64, Device::Cpu))
}

/// Max |a − b|.
pub fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

/// The config field an error names, or a panic with the error.
pub fn config_field(e: Error) -> String {
    match e {
        Error::Config { field, .. } => field,
        other => panic!("expected a config error, got {other}"),
    }
}

/// Clears every parameter's gradient.
pub fn zero_grads(params: &[(String, Tensor)]) {
    for (_, t) in params {
        t.shallow_clone().zero_grad();
    }
}

/// A copy of every parameter's gradient.
pub fn grads(params: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    params.iter().map(|(n, t)| (n.clone(), t.grad().detach().copy())).collect()
}

/// Worst over parameters of max |a − b| / max |b|, and which parameter; every gradient
/// must exist and be nonzero, so a parameter a backward forgot cannot pass as 0 = 0.
pub fn worst_relative_error(ours: &[(String, Tensor)], reference: &[(String, Tensor)]) -> (f64, String) {
    assert_eq!(ours.len(), reference.len());
    let mut worst = (0.0, String::new());
    for ((n, a), (m, b)) in ours.iter().zip(reference) {
        assert_eq!(n, m);
        assert!(a.defined() && b.defined(), "{n}: gradient missing");
        let scale = b.abs().max().double_value(&[]);
        assert!(scale > 0.0, "{n}: zero reference gradient");
        let rel = max_abs(a, b) / scale;
        if rel > worst.0 {
            worst = (rel, n.clone());
        }
    }
    worst
}
