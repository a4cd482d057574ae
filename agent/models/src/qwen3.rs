//! Qwen3 decoder (Hugging Face `modeling_qwen3.py`, transformers 4.51+ / 5.x) in tch:
//! causal LM and sequence classification heads.
//!
//! This module owns the Qwen3 config (HF `Qwen3Config` field names; parsing of 4.x- and
//! 5.x-style `config.json`, refusal of variants we do not implement) and the blocks
//! (RMSNorm, rotary embedding, QK-normed grouped-query attention, SwiGLU MLP, decoder
//! layer). The blocks are `pub(crate)` so the reversible variant (`rev_qwen3`) reuses
//! them. Checkpoint I/O lives in `hf`; device choice lives with the caller (`p.device()`).
//! It also owns the `qwen3-ckpt` training step, per-layer activation checkpointing
//! (`backward_checkpointed`): the same network and gradients as autograd through
//! `forward`, with each layer's input stored and the layer recomputed in the backward.
//!
//! Deviation from HF, on purpose: rows of the attention mask that would be fully masked
//! (left-padding positions) attend to themselves instead of producing kernel-dependent
//! values; those are padding positions and their outputs are don't-care. RMSNorm keeps
//! fp64 in fp64 (HF computes its statistics in fp32); fp32/fp16/bf16 behave as in HF.
//!
//! Length: one file per architecture, as transformers' `modeling_qwen3.py` (config, blocks,
//! both heads, the checkpointed backward); its tests are the last ~400 lines.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor, nn};

use super::common::{
    AttnMask, CheckedInputs, HfFields, Linear, TokenIds, attention, check_inputs, embedding_var, ensure,
    gather_positions, grad_or_zeros, last_non_pad_index, norm_compute_kind, padding_idx_arg, vjp,
};
use crate::error::{Error, Result};

/// Resolved Qwen3 configuration (HF `Qwen3Config` names, every default applied).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Rows of the token embedding.
    pub vocab_size: i64,
    /// Model width.
    pub hidden_size: i64,
    /// SwiGLU inner width.
    pub intermediate_size: i64,
    /// Decoder layers.
    pub num_hidden_layers: i64,
    /// Query heads.
    pub num_attention_heads: i64,
    /// Key/value heads (grouped-query attention).
    pub num_key_value_heads: i64,
    /// Per-head width (explicit; not hidden/heads).
    pub head_dim: i64,
    /// Context length the checkpoint was trained for (informational: RoPE is computed
    /// per forward, as in HF).
    pub max_position_embeddings: i64,
    /// RoPE base θ (default rope type only).
    pub rope_theta: f64,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Whether `lm_head` shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Std of the normal initialisation.
    pub initializer_range: f64,
    /// Padding id (`padding_idx` of the embedding; pooling id of classification).
    pub pad_token_id: Option<i64>,
    /// Beginning-of-sequence id (kept for round trips).
    pub bos_token_id: Option<i64>,
    /// End-of-sequence id(s) (kept for round trips).
    pub eos_token_id: Option<TokenIds>,
}

impl Config {
    /// The config of a scale preset's Qwen3 shape.
    pub fn from_arch(a: &shared::scale::Qwen3Arch) -> Config {
        Config {
            vocab_size: a.vocab_size.into(),
            hidden_size: a.hidden_size.into(),
            intermediate_size: a.intermediate_size.into(),
            num_hidden_layers: a.num_hidden_layers.into(),
            num_attention_heads: a.num_attention_heads.into(),
            num_key_value_heads: a.num_key_value_heads.into(),
            head_dim: a.head_dim.into(),
            max_position_embeddings: a.max_position_embeddings.into(),
            rope_theta: a.rope_theta,
            rms_norm_eps: a.rms_norm_eps,
            tie_word_embeddings: a.tie_word_embeddings,
            initializer_range: a.initializer_range,
            pad_token_id: None,
            bos_token_id: None,
            eos_token_id: None,
        }
    }

    /// Parses a Hugging Face `config.json` written by transformers 4.x (`rope_theta`
    /// top level, `rope_scaling`, `torch_dtype`) or 5.x (`rope_parameters`, `dtype`).
    ///
    /// Fields HF always writes for Qwen3 are required. Fields that transformers 4.x may
    /// omit because they equal the base-config default take the `Qwen3Config` default.
    /// Anything this implementation would silently compute differently is refused with
    /// the field named: non-default RoPE, sliding-window attention, attention biases,
    /// activations other than SiLU, attention dropout, quantization.
    pub fn from_hf_json(json: &serde_json::Value) -> Result<Config> {
        Self::from_hf_json_as(json, "qwen3")
    }

    /// [`Config::from_hf_json`] for a config whose `model_type` must be `model_type`
    /// (`"rev_qwen3"` for reversible checkpoints).
    pub(crate) fn from_hf_json_as(json: &serde_json::Value, model_type: &str) -> Result<Config> {
        let f = HfFields::new(json)?;
        f.expect_model_type(model_type)?;
        f.declared_dtype()?;

        let act = f.str("hidden_act")?.unwrap_or("silu");
        ensure(act == "silu", "hidden_act", format!("only \"silu\" is supported, got \"{act}\""))?;
        ensure(
            !f.bool("attention_bias")?.unwrap_or(false),
            "attention_bias",
            "biased q/k/v/o projections are not supported",
        )?;
        let dropout = f.float("attention_dropout")?.unwrap_or(0.0);
        ensure(dropout == 0.0, "attention_dropout", format!("only 0.0 is supported, got {dropout}"))?;
        ensure(
            !f.bool("use_sliding_window")?.unwrap_or(false),
            "use_sliding_window",
            "sliding-window attention is not supported",
        )?;

        let num_hidden_layers = f.req_int("num_hidden_layers")?;
        if let Some(types) = f.get("layer_types") {
            let list = types.as_array().ok_or_else(|| Error::config("layer_types", "expected a list"))?;
            ensure(
                list.len() as i64 == num_hidden_layers,
                "layer_types",
                format!("has {} entries for {num_hidden_layers} layers", list.len()),
            )?;
            if let Some(bad) = list.iter().find(|t| t.as_str() != Some("full_attention")) {
                return Err(Error::config(
                    "layer_types",
                    format!("only \"full_attention\" layers are supported, got {bad}"),
                ));
            }
        }

        let rope_theta = rope_theta(&f)?;
        let num_attention_heads = f.req_int("num_attention_heads")?;
        let cfg = Config {
            vocab_size: f.req_int("vocab_size")?,
            hidden_size: f.req_int("hidden_size")?,
            intermediate_size: f.req_int("intermediate_size")?,
            num_hidden_layers,
            num_attention_heads,
            // HF: `None` means multi-head attention.
            num_key_value_heads: f.int("num_key_value_heads")?.unwrap_or(num_attention_heads),
            head_dim: f.req_int("head_dim")?,
            max_position_embeddings: f.req_int("max_position_embeddings")?,
            rope_theta,
            rms_norm_eps: f.req_float("rms_norm_eps")?,
            // `Qwen3Config` defaults; 4.x omits base-config fields equal to the default.
            tie_word_embeddings: f.bool("tie_word_embeddings")?.unwrap_or(false),
            initializer_range: f.float("initializer_range")?.unwrap_or(0.02),
            pad_token_id: f.int("pad_token_id")?,
            bos_token_id: f.int("bos_token_id")?,
            eos_token_id: f.token_ids("eos_token_id")?,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Cross-field checks; constructors call this so `forward` never meets a bad shape.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            ensure(v > 0, name, format!("must be positive, got {v}"))?;
        }
        ensure(
            self.num_attention_heads % self.num_key_value_heads == 0,
            "num_key_value_heads",
            format!("{} does not divide num_attention_heads {}", self.num_key_value_heads, self.num_attention_heads),
        )?;
        ensure(
            self.head_dim % 2 == 0,
            "head_dim",
            format!("rotary embedding needs an even head_dim, got {}", self.head_dim),
        )?;
        ensure(self.rope_theta > 0.0, "rope_theta", format!("must be positive, got {}", self.rope_theta))?;
        ensure(self.rms_norm_eps > 0.0, "rms_norm_eps", format!("must be positive, got {}", self.rms_norm_eps))?;
        ensure(self.initializer_range >= 0.0, "initializer_range", "must not be negative")?;
        Ok(())
    }

    /// The `config.json` fields transformers (4.x and 5.x) needs to rebuild this model;
    /// the caller adds `architectures`, `dtype` and head-specific fields. RoPE is written
    /// both ways (`rope_theta` for 4.x, `rope_parameters` for 5.x).
    pub fn to_hf_json(&self) -> serde_json::Value {
        serde_json::json!({
            "model_type": "qwen3",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rope_theta": self.rope_theta,
            "rope_scaling": null,
            "rope_parameters": { "rope_type": "default", "rope_theta": self.rope_theta },
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "initializer_range": self.initializer_range,
            "attention_bias": false,
            "attention_dropout": 0.0,
            "use_sliding_window": false,
            "sliding_window": null,
            "max_window_layers": self.num_hidden_layers,
            "layer_types": vec!["full_attention"; self.num_hidden_layers.max(0) as usize],
            "use_cache": true,
            "pad_token_id": self.pad_token_id,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
        })
    }
}

/// θ from `rope_parameters` (5.x) or top-level `rope_theta` (4.x); refuses scaled RoPE.
fn rope_theta(f: &HfFields<'_>) -> Result<f64> {
    let rope_type_of = |v: &serde_json::Value| -> Option<String> {
        v.get("rope_type").or_else(|| v.get("type")).and_then(|t| t.as_str()).map(str::to_owned)
    };
    if let Some(scaling) = f.get("rope_scaling") {
        let t = rope_type_of(scaling);
        if t.as_deref() != Some("default") {
            return Err(Error::config("rope_scaling", format!("only default RoPE is supported, got {scaling}")));
        }
    }
    let nested = match f.get("rope_parameters") {
        None => None,
        Some(rp) => {
            if !rp.is_object() {
                return Err(Error::config("rope_parameters", format!("expected an object, got {rp}")));
            }
            if let Some(t) = rope_type_of(rp)
                && t != "default"
            {
                return Err(Error::config(
                    "rope_parameters.rope_type",
                    format!("only \"default\" is supported, got \"{t}\""),
                ));
            }
            match rp.get("rope_theta").filter(|v| !v.is_null()) {
                None => None,
                Some(v) => Some(v.as_f64().ok_or_else(|| {
                    Error::config("rope_parameters.rope_theta", format!("expected a number, got {v}"))
                })?),
            }
        }
    };
    let top = f.float("rope_theta")?;
    match (nested, top) {
        (Some(a), Some(b)) if a != b => {
            Err(Error::config("rope_theta", format!("top-level {b} disagrees with rope_parameters.rope_theta {a}")))
        }
        (Some(a), _) => Ok(a),
        (None, Some(b)) => Ok(b),
        (None, None) => Err(Error::config(
            "rope_theta",
            "required field is missing (neither rope_theta nor rope_parameters.rope_theta)",
        )),
    }
}

/// Root-mean-square norm with a learned scale (`weight`, initialised to ones).
#[derive(Debug)]
pub(crate) struct RmsNorm {
    pub(crate) weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub(crate) fn new(p: &nn::Path, dim: i64, eps: f64) -> Result<Self> {
        Ok(RmsNorm { weight: p.f_ones("weight", &[dim])?, eps })
    }

    /// `weight * (x / sqrt(mean(x²) + eps))`, statistics in fp32 for half kinds (as HF).
    pub(crate) fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let kind = xs.kind();
        let x = xs.f_to_kind(norm_compute_kind(kind))?;
        let variance = x.f_pow_tensor_scalar(2)?.f_mean_dim([-1i64].as_slice(), true, None::<Kind>)?;
        let normed = x.f_mul(&variance.f_add_scalar(self.eps)?.f_rsqrt()?)?.f_to_kind(kind)?;
        Ok(self.weight.f_mul(&normed)?)
    }

    pub(crate) fn push_params(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        out.push((format!("{prefix}.weight"), self.weight.shallow_clone()));
    }
}

/// Default rotary embedding: `inv_freq = 1 / θ^(2i/d)` in fp32 (as HF), cos/sin tables
/// built per forward for positions `0..T` (HF Qwen3 uses `arange` positions, not the
/// mask's cumulative sum).
#[derive(Debug)]
pub(crate) struct Rope {
    inv_freq: Tensor,
}

impl Rope {
    pub(crate) fn new(cfg: &Config, device: tch::Device) -> Result<Self> {
        let d = cfg.head_dim;
        let exponents = Tensor::f_arange_start_step(0, d, 2, (Kind::Float, device))?.f_div_scalar(d as f64)?;
        let inv_freq = Tensor::f_pow_scalar(cfg.rope_theta, &exponents)?.f_reciprocal()?;
        Ok(Rope { inv_freq })
    }

    /// `(cos, sin)`, each `[T, head_dim]` in `kind`.
    pub(crate) fn tables(&self, t: i64, kind: Kind) -> Result<(Tensor, Tensor)> {
        let positions = Tensor::f_arange(t, (Kind::Float, self.inv_freq.device()))?;
        // 1. freqs [T, d/2] = pos ⊗ inv_freq, in fp32.
        let freqs = positions.f_unsqueeze(1)?.f_mul(&self.inv_freq.f_unsqueeze(0)?)?;
        // 2. emb [T, d] = cat(freqs, freqs) (HF rotate-half layout).
        let emb = Tensor::f_cat(&[&freqs, &freqs], -1)?;
        Ok((emb.f_cos()?.f_to_kind(kind)?, emb.f_sin()?.f_to_kind(kind)?))
    }
}

/// RoPE, `x·cos + rotate_half(x)·sin` (HF `apply_rotary_pos_emb`), with the second product
/// and the sum computed in place on fresh temporaries: autograd keeps a product's inputs,
/// not its output, so this is allowed and gives the same bits, while at most three
/// `[B, H, T, D]` tensors are alive at once instead of five. With fp32 q/k this is the
/// largest transient of a layer's forward, and where the peak of a recomputing backward
/// (checkpointed or reversible) falls.
fn rope(xs: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let mut rotated = rotate_half(xs)?;
    let _ = rotated.f_mul_(sin)?;
    let mut out = xs.f_mul(cos)?;
    let _ = out.f_add_(&rotated)?;
    Ok(out)
}

/// `cat(-x₂, x₁)` over the last dim (HF `rotate_half`).
fn rotate_half(xs: &Tensor) -> Result<Tensor> {
    let half = xs.size()[3] / 2;
    let x1 = xs.f_narrow(-1, 0, half)?;
    let x2 = xs.f_narrow(-1, half, half)?;
    Ok(Tensor::f_cat(&[&x2.f_neg()?, &x1], -1)?)
}

/// Inputs every layer of one forward shares: RoPE tables and the attention mask. Built
/// once per forward (and once per reversible backward), never per layer.
#[derive(Debug)]
pub(crate) struct LayerInputs {
    pub(crate) cos: Tensor,
    pub(crate) sin: Tensor,
    pub(crate) mask: AttnMask,
}

/// Grouped-query self-attention with per-head RMSNorm on q and k before RoPE.
#[derive(Debug)]
pub(crate) struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    num_heads: i64,
    num_kv_heads: i64,
    head_dim: i64,
}

impl Attention {
    pub(crate) fn new(p: &nn::Path, cfg: &Config) -> Result<Self> {
        let (h, kv, d, std) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.initializer_range);
        Ok(Attention {
            q_proj: Linear::new(&(p / "q_proj"), cfg.hidden_size, h * d, false, std)?,
            k_proj: Linear::new(&(p / "k_proj"), cfg.hidden_size, kv * d, false, std)?,
            v_proj: Linear::new(&(p / "v_proj"), cfg.hidden_size, kv * d, false, std)?,
            o_proj: Linear::new(&(p / "o_proj"), h * d, cfg.hidden_size, false, std)?,
            q_norm: RmsNorm::new(&(p / "q_norm"), d, cfg.rms_norm_eps)?,
            k_norm: RmsNorm::new(&(p / "k_norm"), d, cfg.rms_norm_eps)?,
            num_heads: h,
            num_kv_heads: kv,
            head_dim: d,
        })
    }

    /// `[B, T, hidden]` → `[B, T, hidden]`.
    pub(crate) fn forward(&self, xs: &Tensor, li: &LayerInputs) -> Result<Tensor> {
        let (b, t) = (xs.size()[0], xs.size()[1]);
        let (h, kv, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        // 1. Project and split heads; QK-norm acts per head on the last dim:
        //    q [B, T, H, D] → [B, H, T, D]; k, v [B, KV, T, D].
        let q = self.q_norm.forward(&self.q_proj.forward(xs)?.f_view([b, t, h, d])?)?.f_transpose(1, 2)?;
        let k = self.k_norm.forward(&self.k_proj.forward(xs)?.f_view([b, t, kv, d])?)?.f_transpose(1, 2)?;
        let v = self.v_proj.forward(xs)?.f_view([b, t, kv, d])?.f_transpose(1, 2)?;
        // 2. RoPE: x·cos + rotate_half(x)·sin, tables [T, D] broadcast over B and heads.
        let q = rope(&q, &li.cos, &li.sin)?;
        let k = rope(&k, &li.cos, &li.sin)?;
        // 3. Attention [B, H, T, D]. Like HF: SDPA's native GQA without a mask, expanded
        //    k/v ([B, KV, T, D] → [B, H, T, D]) with an explicit mask.
        let scale = (d as f64).powf(-0.5);
        let out = match (&li.mask, h / kv) {
            (AttnMask::Causal, rep) if rep > 1 => {
                Tensor::f_scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, t > 1, scale, true)?
            }
            (mask, rep) => {
                let (k, v) = (repeat_kv(&k, rep)?, repeat_kv(&v, rep)?);
                attention(&q, &k, &v, mask, 0.0, scale)?
            }
        };
        // 4. Merge heads [B, H, T, D] → [B, T, H·D] and project out.
        let merged = out.f_transpose(1, 2)?.f_reshape([b, t, h * d])?;
        self.o_proj.forward(&merged)
    }

    pub(crate) fn push_params(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        self.q_proj.push_params(&format!("{prefix}.q_proj"), out);
        self.k_proj.push_params(&format!("{prefix}.k_proj"), out);
        self.v_proj.push_params(&format!("{prefix}.v_proj"), out);
        self.o_proj.push_params(&format!("{prefix}.o_proj"), out);
        self.q_norm.push_params(&format!("{prefix}.q_norm"), out);
        self.k_norm.push_params(&format!("{prefix}.k_norm"), out);
    }
}

/// `[B, KV, T, D]` → `[B, KV·rep, T, D]`, each kv head repeated `rep` times (HF `repeat_kv`).
fn repeat_kv(xs: &Tensor, rep: i64) -> Result<Tensor> {
    if rep == 1 {
        return Ok(xs.shallow_clone());
    }
    let s = xs.size();
    let (b, kv, t, d) = (s[0], s[1], s[2], s[3]);
    Ok(xs.f_unsqueeze(2)?.f_expand([b, kv, rep, t, d], false)?.f_reshape([b, kv * rep, t, d])?)
}

/// SwiGLU feed-forward: `down(silu(gate(x)) · up(x))`.
#[derive(Debug)]
pub(crate) struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    pub(crate) fn new(p: &nn::Path, cfg: &Config) -> Result<Self> {
        let (hid, inter, std) = (cfg.hidden_size, cfg.intermediate_size, cfg.initializer_range);
        Ok(Mlp {
            gate_proj: Linear::new(&(p / "gate_proj"), hid, inter, false, std)?,
            up_proj: Linear::new(&(p / "up_proj"), hid, inter, false, std)?,
            down_proj: Linear::new(&(p / "down_proj"), inter, hid, false, std)?,
        })
    }

    pub(crate) fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let gated = self.gate_proj.forward(xs)?.f_silu()?.f_mul(&self.up_proj.forward(xs)?)?;
        self.down_proj.forward(&gated)
    }

    pub(crate) fn push_params(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        self.gate_proj.push_params(&format!("{prefix}.gate_proj"), out);
        self.up_proj.push_params(&format!("{prefix}.up_proj"), out);
        self.down_proj.push_params(&format!("{prefix}.down_proj"), out);
    }
}

/// One pre-norm decoder layer. Its two residual branches are exposed separately because
/// the reversible model couples them differently: `F = attn ∘ input_layernorm`,
/// `G = mlp ∘ post_attention_layernorm`.
#[derive(Debug)]
pub(crate) struct DecoderLayer {
    self_attn: Attention,
    mlp: Mlp,
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
}

impl DecoderLayer {
    pub(crate) fn new(p: &nn::Path, cfg: &Config) -> Result<Self> {
        Ok(DecoderLayer {
            self_attn: Attention::new(&(p / "self_attn"), cfg)?,
            mlp: Mlp::new(&(p / "mlp"), cfg)?,
            input_layernorm: RmsNorm::new(&(p / "input_layernorm"), cfg.hidden_size, cfg.rms_norm_eps)?,
            post_attention_layernorm: RmsNorm::new(
                &(p / "post_attention_layernorm"),
                cfg.hidden_size,
                cfg.rms_norm_eps,
            )?,
        })
    }

    /// F(x) = Attn(RMSNorm_attn(x)).
    pub(crate) fn attn_branch(&self, xs: &Tensor, li: &LayerInputs) -> Result<Tensor> {
        self.self_attn.forward(&self.input_layernorm.forward(xs)?, li)
    }

    /// G(x) = MLP(RMSNorm_mlp(x)).
    pub(crate) fn mlp_branch(&self, xs: &Tensor) -> Result<Tensor> {
        self.mlp.forward(&self.post_attention_layernorm.forward(xs)?)
    }

    /// Standard residual layer: `h = x + F(x)`, `out = h + G(h)`.
    pub(crate) fn forward(&self, xs: &Tensor, li: &LayerInputs) -> Result<Tensor> {
        let h = xs.f_add(&self.attn_branch(xs, li)?)?;
        Ok(h.f_add(&self.mlp_branch(&h)?)?)
    }

    /// HF registration order: self_attn, mlp, input_layernorm, post_attention_layernorm.
    pub(crate) fn push_params(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        self.self_attn.push_params(&format!("{prefix}.self_attn"), out);
        self.mlp.push_params(&format!("{prefix}.mlp"), out);
        self.input_layernorm.push_params(&format!("{prefix}.input_layernorm"), out);
        self.post_attention_layernorm.push_params(&format!("{prefix}.post_attention_layernorm"), out);
    }
}

/// The Qwen3 backbone (`model.*` in HF checkpoints): embedding, layers, final norm.
/// Shared with the reversible variant, which uses its embedding, layers and norm with a
/// different coupling.
#[derive(Debug)]
pub(crate) struct Qwen3Model {
    pub(crate) embed_tokens: Tensor,
    pub(crate) layers: Vec<DecoderLayer>,
    pub(crate) norm: RmsNorm,
    rope: Rope,
    padding_idx: i64,
    pub(crate) cfg: Config,
}

impl Qwen3Model {
    /// `p` is the backbone's own path (`root / "model"`).
    pub(crate) fn new(p: &nn::Path, cfg: &Config) -> Result<Self> {
        cfg.validate()?;
        let embed_tokens = embedding_var(
            &(p / "embed_tokens"),
            cfg.vocab_size,
            cfg.hidden_size,
            cfg.initializer_range,
            cfg.pad_token_id,
        )?;
        let layers_p = p / "layers";
        let layers =
            (0..cfg.num_hidden_layers).map(|i| DecoderLayer::new(&(&layers_p / i), cfg)).collect::<Result<Vec<_>>>()?;
        Ok(Qwen3Model {
            embed_tokens,
            layers,
            norm: RmsNorm::new(&(p / "norm"), cfg.hidden_size, cfg.rms_norm_eps)?,
            rope: Rope::new(cfg, p.device())?,
            padding_idx: padding_idx_arg(cfg.pad_token_id, cfg.vocab_size),
            cfg: cfg.clone(),
        })
    }

    /// Validates inputs and builds what all layers share (mask, RoPE tables).
    pub(crate) fn prepare(&self, ids: &Tensor, mask: &Tensor) -> Result<(CheckedInputs, LayerInputs)> {
        let inputs = check_inputs(ids, mask, self.cfg.vocab_size, self.embed_tokens.device())?;
        let (cos, sin) = self.rope.tables(inputs.seq, self.embed_tokens.kind())?;
        let mask = AttnMask::build(&inputs)?;
        Ok((inputs, LayerInputs { cos, sin, mask }))
    }

    /// `[B, T]` ids → `[B, T, hidden]` embeddings.
    pub(crate) fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(Tensor::f_embedding(&self.embed_tokens, ids, self.padding_idx, false, false)?)
    }

    /// `[B, T]` ids and mask → final-normed hidden states `[B, T, hidden]`.
    pub(crate) fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<(Tensor, CheckedInputs)> {
        // 1. Checks, shared mask and RoPE tables.
        let (inputs, li) = self.prepare(ids, mask)?;
        // 2. Embed [B, T, hidden].
        let mut h = self.embed(&inputs.ids)?;
        // 3. Decoder layers.
        for layer in &self.layers {
            h = layer.forward(&h, &li)?;
        }
        // 4. Final RMSNorm.
        Ok((self.norm.forward(&h)?, inputs))
    }

    /// Per-layer activation checkpointing; `head` maps final-normed hidden states to
    /// the head's output. Computes `loss = loss_fn(head(norm(layers(embed(ids)))))` and
    /// accumulates into every parameter's `.grad()` what `loss.backward()` would, while
    /// keeping only each layer's input (`L × B × T × hidden` values) plus one layer's
    /// graph at a time. Returns the detached loss.
    pub(crate) fn backward_checkpointed(
        &self,
        ids: &Tensor,
        mask: &Tensor,
        head: &dyn Fn(&Tensor, &CheckedInputs) -> Result<Tensor>,
        loss_fn: &mut dyn FnMut(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        // 1. Shared inputs (mask, RoPE tables) once for the forward and every recompute.
        let (inputs, li) = self.prepare(ids, mask)?;

        // 2. Forward without a graph, storing each layer's input (the checkpoints).
        let mut checkpoints: Vec<Tensor> = Vec::with_capacity(self.layers.len());
        let mut h = tch::no_grad(|| self.embed(&inputs.ids))?;
        for layer in &self.layers {
            let next = tch::no_grad(|| layer.forward(&h, &li))?;
            checkpoints.push(h);
            h = next;
            // Autocast caches low-precision weight copies per layer; without this every
            // layer's copies would stay alive for the whole step and grow with depth.
            crate::ffi::autocast_clear_cache();
        }

        // 3. Final norm, head and loss with grad on a leaf holding the last layer's
        //    output: the norm and head accumulate their gradients, the leaf receives dL/dh.
        let leaf = h.f_detach()?.f_set_requires_grad(true)?;
        drop(h);
        let loss = tch::with_grad(|| -> Result<Tensor> { loss_fn(&head(&self.norm.forward(&leaf)?, &inputs)?) })?;
        loss.f_backward()?;
        let mut grad = grad_or_zeros(&leaf)?;
        drop(leaf);

        // 4. Layers in reverse: recompute the layer with grad from its checkpoint and
        //    backpropagate dL/d(output) as a vector–Jacobian product. The checkpoint is
        //    freed as soon as its layer is done, so memory falls as the backward proceeds.
        for (layer, x) in self.layers.iter().zip(checkpoints).rev() {
            let x_leaf = x.f_detach()?.f_set_requires_grad(true)?;
            drop(x);
            let out = tch::with_grad(|| layer.forward(&x_leaf, &li))?;
            vjp(&out, &grad)?;
            drop(out);
            grad = grad_or_zeros(&x_leaf)?;
            crate::ffi::autocast_clear_cache();
        }

        // 5. Embedding (also the tied LM head: both gradients accumulate in one .grad).
        let emb = tch::with_grad(|| self.embed(&inputs.ids))?;
        vjp(&emb, &grad)?;
        Ok(loss.f_detach()?)
    }

    /// Backbone parameters in HF order: embed_tokens, layers.{i}.*, norm.
    pub(crate) fn push_params(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        out.push((format!("{prefix}.embed_tokens.weight"), self.embed_tokens.shallow_clone()));
        for (i, layer) in self.layers.iter().enumerate() {
            layer.push_params(&format!("{prefix}.layers.{i}"), out);
        }
        self.norm.push_params(&format!("{prefix}.norm"), out);
    }
}

/// `lm_head` logits: the untied head or, when tied, the embedding matrix.
pub(crate) fn lm_logits(hidden: &Tensor, embed_tokens: &Tensor, lm_head: Option<&Linear>) -> Result<Tensor> {
    match lm_head {
        Some(head) => head.forward(hidden),
        None => Ok(hidden.f_linear(embed_tokens, None::<Tensor>)?),
    }
}

/// Qwen3 with a language-model head (HF `Qwen3ForCausalLM`).
#[derive(Debug)]
pub struct Qwen3ForCausalLM {
    pub(crate) model: Qwen3Model,
    lm_head: Option<Linear>,
}

impl Qwen3ForCausalLM {
    /// Registers `model.*` and (untied) `lm_head.weight` under `p`, initialised as HF's
    /// `_init_weights` (normal(0, initializer_range) for linear and embedding, ones for
    /// norms); deterministic for a fixed `tch::manual_seed`.
    pub fn new(p: &nn::Path, cfg: &Config) -> Result<Self> {
        let model = Qwen3Model::new(&(p / "model"), cfg)?;
        Ok(Qwen3ForCausalLM { model, lm_head: lm_head(p, cfg)? })
    }

    /// The resolved config.
    pub fn config(&self) -> &Config {
        &self.model.cfg
    }

    /// `input_ids`, `attention_mask` `[B, T]` (1 = real token, padding on either side) →
    /// logits `[B, T, vocab]` in the model's kind.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let (hidden, _) = self.model.forward(input_ids, attention_mask)?;
        lm_logits(&hidden, &self.model.embed_tokens, self.lm_head.as_ref())
    }

    /// Training step with per-layer activation checkpointing (method `qwen3-ckpt`):
    /// computes `loss = loss_fn(logits)` and accumulates into every parameter's
    /// `.grad()` what `loss.backward()` on [`Self::forward`] would, storing only each
    /// layer's input and recomputing the layer in the backward. Returns the detached loss.
    pub fn backward_checkpointed(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        loss_fn: &mut dyn FnMut(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let head =
            |hidden: &Tensor, _: &CheckedInputs| lm_logits(hidden, &self.model.embed_tokens, self.lm_head.as_ref());
        self.model.backward_checkpointed(input_ids, attention_mask, &head, loss_fn)
    }

    /// Trainable tensors with HF names in HF `named_parameters()` order (a tied
    /// `lm_head` is not listed).
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        self.model.push_params("model", &mut out);
        if let Some(head) = &self.lm_head {
            head.push_params("lm_head", &mut out);
        }
        out
    }
}

/// Qwen3 with a sequence-classification head (HF `Qwen3ForSequenceClassification`):
/// `score` (no bias) applied to the last non-pad token. `num_labels = 1` is regression.
#[derive(Debug)]
pub struct Qwen3ForSequenceClassification {
    pub(crate) model: Qwen3Model,
    score: Linear,
    num_labels: i64,
    pad_token_id: i64,
}

impl Qwen3ForSequenceClassification {
    /// As HF, the backbone's config carries `pad_token_id` (so the embedding gets
    /// `padding_idx = pad_token_id`, whose row is zero-initialised and receives no
    /// gradient), and pooling uses the same id.
    pub fn new(p: &nn::Path, cfg: &Config, num_labels: i64, pad_token_id: i64) -> Result<Self> {
        ensure(num_labels >= 1, "num_labels", format!("must be at least 1, got {num_labels}"))?;
        let mut cfg = cfg.clone();
        cfg.pad_token_id = Some(pad_token_id);
        let model = Qwen3Model::new(&(p / "model"), &cfg)?;
        let score = score_head(p, &cfg, num_labels)?;
        Ok(Qwen3ForSequenceClassification { model, score, num_labels, pad_token_id })
    }

    /// The resolved config (with `pad_token_id` set).
    pub fn config(&self) -> &Config {
        &self.model.cfg
    }

    /// Number of outputs (1 = regression).
    pub fn num_labels(&self) -> i64 {
        self.num_labels
    }

    /// The id whose positions are skipped when pooling.
    pub fn pad_token_id(&self) -> i64 {
        self.pad_token_id
    }

    /// `[B, T]` ids and mask → `[B, num_labels]` scores of the last non-pad token.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let (hidden, inputs) = self.model.forward(input_ids, attention_mask)?;
        classify(&hidden, &inputs.ids, self.pad_token_id, &self.score)
    }

    /// Training step with per-layer activation checkpointing (see
    /// [`Qwen3ForCausalLM::backward_checkpointed`]); `loss_fn` maps `[B, num_labels]`
    /// scores to the loss.
    pub fn backward_checkpointed(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        loss_fn: &mut dyn FnMut(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let head =
            |hidden: &Tensor, inputs: &CheckedInputs| classify(hidden, &inputs.ids, self.pad_token_id, &self.score);
        self.model.backward_checkpointed(input_ids, attention_mask, &head, loss_fn)
    }

    /// Trainable tensors with HF names in HF order: `model.*`, then `score.weight`.
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        self.model.push_params("model", &mut out);
        self.score.push_params("score", &mut out);
        out
    }
}

/// Pools `hidden` `[B, T, hidden]` at the last non-pad token and scores it → `[B, L]`.
/// (HF scores every position and then gathers; gathering first is the same per row.)
pub(crate) fn classify(hidden: &Tensor, ids: &Tensor, pad_token_id: i64, score: &Linear) -> Result<Tensor> {
    let last = last_non_pad_index(ids, pad_token_id)?;
    score.forward(&gather_positions(hidden, &last)?)
}

/// A classification head built on its own (the reversible model reuses it).
pub(crate) fn score_head(p: &nn::Path, cfg: &Config, num_labels: i64) -> Result<Linear> {
    Linear::new(&(p / "score"), cfg.hidden_size, num_labels, false, cfg.initializer_range)
}

/// An untied LM head built on its own (the reversible model reuses it).
pub(crate) fn lm_head(p: &nn::Path, cfg: &Config) -> Result<Option<Linear>> {
    if cfg.tie_word_embeddings {
        Ok(None)
    } else {
        Ok(Some(Linear::new(&(p / "lm_head"), cfg.hidden_size, cfg.vocab_size, false, cfg.initializer_range)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{
        config_field, grads, max_abs, ones_like, randomize, rng_guard, rows, tiny_qwen3, worst_relative_error,
        zero_grads,
    };
    use tch::Device;

    /// A complete transformers-5.x style config.
    fn hf5() -> serde_json::Value {
        serde_json::json!({
            "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 64, "hidden_size": 32,
            "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "head_dim": 16, "hidden_act": "silu", "max_position_embeddings": 128, "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}, "tie_word_embeddings": true,
            "attention_bias": false, "attention_dropout": 0.0, "use_sliding_window": false, "sliding_window": null,
            "layer_types": ["full_attention", "full_attention"], "dtype": "bfloat16", "initializer_range": 0.02,
            "bos_token_id": 151643, "eos_token_id": [151645, 151643], "pad_token_id": null
        })
    }

    fn with(mut v: serde_json::Value, key: &str, value: serde_json::Value) -> serde_json::Value {
        v.as_object_mut().unwrap().insert(key.into(), value);
        v
    }

    fn without(mut v: serde_json::Value, key: &str) -> serde_json::Value {
        v.as_object_mut().unwrap().remove(key);
        v
    }

    #[test]
    fn config_reads_transformers_4x_and_5x_styles_alike() {
        let c5 = Config::from_hf_json(&hf5()).unwrap();
        assert_eq!(c5.rope_theta, 1e6);
        assert_eq!(c5.eos_token_id, Some(TokenIds::Many(vec![151645, 151643])));
        // 4.x: rope_theta at the top, rope_scaling null, torch_dtype, no layer_types,
        // sliding_window set but unused.
        let v4 = without(without(hf5(), "rope_parameters"), "dtype");
        let v4 = without(
            with(
                with(with(v4, "rope_theta", 1e6.into()), "rope_scaling", serde_json::Value::Null),
                "torch_dtype",
                "bfloat16".into(),
            ),
            "layer_types",
        );
        let v4 = with(v4, "sliding_window", 4096.into());
        assert_eq!(Config::from_hf_json(&v4).unwrap(), c5);
        // Both present and equal is fine; `rope_scaling` of the default type is fine.
        let both = with(hf5(), "rope_theta", 1e6.into());
        assert_eq!(Config::from_hf_json(&both).unwrap(), c5);
        let default_scaling = with(v4.clone(), "rope_scaling", serde_json::json!({"rope_type": "default"}));
        assert_eq!(Config::from_hf_json(&default_scaling).unwrap(), c5);
        // Omitted base-config fields take the Qwen3Config defaults.
        let bare = without(without(hf5(), "tie_word_embeddings"), "initializer_range");
        let c = Config::from_hf_json(&bare).unwrap();
        assert!(!c.tie_word_embeddings);
        assert_eq!(c.initializer_range, 0.02);
        // num_key_value_heads null = multi-head attention.
        let mha = with(hf5(), "num_key_value_heads", serde_json::Value::Null);
        assert_eq!(Config::from_hf_json(&mha).unwrap().num_key_value_heads, 4);
    }

    #[test]
    fn config_refuses_unsupported_values_naming_the_field() {
        use serde_json::json as j;
        let cases: Vec<(serde_json::Value, &str)> = vec![
            (with(hf5(), "rope_scaling", j!({"rope_type": "yarn", "factor": 4.0})), "rope_scaling"),
            (with(hf5(), "rope_scaling", j!({"type": "linear", "factor": 2.0})), "rope_scaling"),
            (
                with(hf5(), "rope_parameters", j!({"rope_type": "llama3", "rope_theta": 1e6})),
                "rope_parameters.rope_type",
            ),
            (with(hf5(), "rope_theta", j!(10000.0)), "rope_theta"),
            (without(hf5(), "rope_parameters"), "rope_theta"),
            (with(hf5(), "use_sliding_window", j!(true)), "use_sliding_window"),
            (with(hf5(), "layer_types", j!(["full_attention", "sliding_attention"])), "layer_types"),
            (with(hf5(), "layer_types", j!(["full_attention"])), "layer_types"),
            (with(hf5(), "attention_bias", j!(true)), "attention_bias"),
            (with(hf5(), "attention_dropout", j!(0.1)), "attention_dropout"),
            (with(hf5(), "hidden_act", j!("gelu")), "hidden_act"),
            (with(hf5(), "dtype", j!("int8")), "dtype"),
            (without(with(hf5(), "torch_dtype", j!("float8_e4m3fn")), "dtype"), "torch_dtype"),
            (with(hf5(), "quantization_config", j!({"quant_method": "bitsandbytes"})), "quantization_config"),
            (with(hf5(), "model_type", j!("llama")), "model_type"),
            (without(hf5(), "vocab_size"), "vocab_size"),
            (without(hf5(), "head_dim"), "head_dim"),
            (without(hf5(), "rms_norm_eps"), "rms_norm_eps"),
            (with(hf5(), "hidden_size", j!("32")), "hidden_size"),
            (with(hf5(), "num_key_value_heads", j!(3)), "num_key_value_heads"),
            (with(hf5(), "head_dim", j!(15)), "head_dim"),
            (with(hf5(), "eos_token_id", j!("x")), "eos_token_id"),
        ];
        for (json, field) in cases {
            let e = Config::from_hf_json(&json).expect_err(field);
            assert!(e.to_string().contains(field), "{e}");
            assert_eq!(config_field(e), field);
        }
    }

    #[test]
    fn config_from_scale_presets_matches_the_preset_parameter_count() {
        let _rng = rng_guard();
        for name in ["tiny", "small"] {
            let preset = shared::scale::preset(name).unwrap();
            let cfg = Config::from_arch(&preset.qwen3);
            cfg.validate().unwrap();
            let vs = nn::VarStore::new(Device::Cpu);
            let m = Qwen3ForSequenceClassification::new(&vs.root(), &cfg, 3, 0).unwrap();
            let n: u64 = m.named_parameters().iter().map(|(_, t)| t.numel() as u64).sum();
            assert_eq!(n, preset.qwen3.classifier_parameters(3), "{name}");
        }
    }

    #[test]
    fn named_parameters_cover_the_var_store_once_in_hf_order() {
        let _rng = rng_guard();
        for tied in [true, false] {
            let vs = nn::VarStore::new(Device::Cpu);
            let m = Qwen3ForCausalLM::new(&vs.root(), &tiny_qwen3(tied)).unwrap();
            let names: Vec<String> = m.named_parameters().into_iter().map(|(n, _)| n).collect();
            let mut sorted = names.clone();
            sorted.sort();
            let mut vars: Vec<String> = vs.variables().into_keys().collect();
            vars.sort();
            assert_eq!(sorted, vars);
            assert_eq!(names[0], "model.embed_tokens.weight");
            let layer0: Vec<&str> = names[1..12].iter().map(|s| s.trim_start_matches("model.layers.0.")).collect();
            assert_eq!(
                layer0,
                [
                    "self_attn.q_proj.weight",
                    "self_attn.k_proj.weight",
                    "self_attn.v_proj.weight",
                    "self_attn.o_proj.weight",
                    "self_attn.q_norm.weight",
                    "self_attn.k_norm.weight",
                    "mlp.gate_proj.weight",
                    "mlp.up_proj.weight",
                    "mlp.down_proj.weight",
                    "input_layernorm.weight",
                    "post_attention_layernorm.weight"
                ]
            );
            assert_eq!(names.last().unwrap(), if tied { "model.norm.weight" } else { "lm_head.weight" });
        }
    }

    #[test]
    fn random_init_is_deterministic_for_a_seed_and_follows_hf() {
        let _rng = rng_guard();
        let build = |seed| {
            tch::manual_seed(seed);
            let vs = nn::VarStore::new(Device::Cpu);
            let m = Qwen3ForSequenceClassification::new(&vs.root(), &tiny_qwen3(false), 2, 0).unwrap();
            (vs, m.named_parameters())
        };
        let (_a, pa) = build(7);
        let (_b, pb) = build(7);
        let (_c, pc) = build(8);
        for ((n, a), (_, b)) in pa.iter().zip(&pb) {
            assert!(a.equal(b), "{n} differs for the same seed");
        }
        let p = |ps: &[(String, Tensor)], name: &str| ps.iter().find(|(n, _)| n == name).unwrap().1.shallow_clone();
        assert!(!p(&pa, "model.layers.0.mlp.up_proj.weight").equal(&p(&pc, "model.layers.0.mlp.up_proj.weight")));
        // HF _init_weights: N(0, 0.02) weights, ones for norms, zero padding row.
        let embed = p(&pa, "model.embed_tokens.weight");
        let std = embed.std(true).double_value(&[]);
        assert!((std - 0.02).abs() < 0.002, "embedding std {std}");
        assert_eq!(embed.get(0).abs().sum(Kind::Float).double_value(&[]), 0.0, "pad row zeroed");
        assert!(p(&pa, "model.layers.1.self_attn.k_norm.weight").eq(1.0).all().int64_value(&[]) == 1);
    }

    fn random_lm(tied: bool) -> (nn::VarStore, Qwen3ForCausalLM) {
        let vs = nn::VarStore::new(Device::Cpu);
        let m = Qwen3ForCausalLM::new(&vs.root(), &tiny_qwen3(tied)).unwrap();
        randomize(&m.named_parameters(), 3);
        (vs, m)
    }

    #[test]
    fn causal_mask_later_tokens_never_change_earlier_positions() {
        let _rng = rng_guard();
        let (_vs, m) = random_lm(false);
        let a = rows(&[&[5, 9, 13, 2, 40, 7, 22, 31]]);
        let b = rows(&[&[5, 9, 13, 2, 41, 60, 3, 30]]); // differs from position 4 on
        for mask in [ones_like(&a), rows(&[&[1, 1, 1, 1, 1, 1, 0, 0]]), rows(&[&[0, 0, 1, 1, 1, 1, 1, 1]])] {
            let la = m.forward(&a, &mask).unwrap();
            let lb = m.forward(&b, &mask).unwrap();
            let d_early = max_abs(&la.narrow(1, 0, 4), &lb.narrow(1, 0, 4));
            let d_late = max_abs(&la.narrow(1, 4, 1), &lb.narrow(1, 4, 1));
            assert!(d_early < 1e-6, "earlier positions moved by {d_early}");
            assert!(d_late > 1e-2, "the changed position must change ({d_late})");
        }
    }

    #[test]
    fn padding_never_changes_real_positions() {
        let _rng = rng_guard();
        let (_vs, m) = random_lm(true);
        let real: [i64; 5] = [5, 9, 13, 2, 40];
        let plain = m.forward(&rows(&[&real]), &ones_like(&rows(&[&real]))).unwrap();
        // Right padding (garbage pad ids): real positions are untouched.
        let ids = rows(&[&[5, 9, 13, 2, 40, 17, 63, 0]]);
        let right = m.forward(&ids, &rows(&[&[1, 1, 1, 1, 1, 0, 0, 0]])).unwrap();
        let d = max_abs(&right.narrow(1, 0, 5), &plain);
        assert!(d < 1e-5, "right padding moved real logits by {d}");
        // Left padding: HF Qwen3 keeps arange positions, so real tokens sit at shifted
        // positions; RoPE is relative, so only rounding changes.
        let ids = rows(&[&[33, 0, 8, 5, 9, 13, 2, 40]]);
        let left = m.forward(&ids, &rows(&[&[0, 0, 0, 1, 1, 1, 1, 1]])).unwrap();
        assert!(left.isfinite().all().int64_value(&[]) == 1, "padding rows must be finite");
        let d = max_abs(&left.narrow(1, 3, 5), &plain);
        assert!(d < 1e-4, "left padding moved real logits by {d}");
        // Rows of a batch do not interact.
        let batch = rows(&[&[5, 9, 13, 2, 40, 0, 0], &[1, 2, 3, 4, 5, 6, 7]]);
        let mask = rows(&[&[1, 1, 1, 1, 1, 0, 0], &[1, 1, 1, 1, 1, 1, 1]]);
        let d = max_abs(&m.forward(&batch, &mask).unwrap().get(0).narrow(0, 0, 5), &plain.get(0));
        assert!(d < 1e-5, "batching moved real logits by {d}");
    }

    #[test]
    fn classification_pools_the_last_non_pad_token_on_either_side() {
        let _rng = rng_guard();
        let vs = nn::VarStore::new(Device::Cpu);
        let m = Qwen3ForSequenceClassification::new(&vs.root(), &tiny_qwen3(true), 3, 0).unwrap();
        randomize(&m.named_parameters(), 4);
        let real = rows(&[&[5, 9, 13, 2]]);
        let plain = m.forward(&real, &ones_like(&real)).unwrap();
        assert_eq!(plain.size(), [1, 3]);
        let ids = rows(&[&[5, 9, 13, 2, 0, 0], &[0, 0, 5, 9, 13, 2]]);
        let mask = rows(&[&[1, 1, 1, 1, 0, 0], &[0, 0, 1, 1, 1, 1]]);
        let out = m.forward(&ids, &mask).unwrap();
        assert!(max_abs(&out.get(0), &plain.get(0)) < 1e-5);
        assert!(max_abs(&out.get(1), &plain.get(0)) < 1e-4);
        // The pooled position is HF's: with no pad id the last position, whatever the mask.
        let idx = super::super::common::last_non_pad_index(&rows(&[&[3, 0, 4, 0, 0], &[0, 0, 0, 0, 0]]), 0).unwrap();
        assert_eq!(Vec::<i64>::try_from(&idx).unwrap(), vec![2, 0]);
    }

    #[test]
    fn bad_inputs_are_errors_not_clamps() {
        let _rng = rng_guard();
        let (_vs, m) = random_lm(false);
        let ids = rows(&[&[5, 64, 1]]);
        let e = m.forward(&ids, &ones_like(&ids)).unwrap_err();
        assert!(matches!(e, Error::Tokenizer(_)) && e.to_string().contains("64"), "{e}");
        let ids = rows(&[&[5, -1, 1]]);
        assert!(matches!(m.forward(&ids, &ones_like(&ids)).unwrap_err(), Error::Tokenizer(_)));
        let ids = rows(&[&[5, 6, 1]]);
        assert!(m.forward(&ids, &rows(&[&[1, 1]])).is_err());
        assert!(m.forward(&ids, &rows(&[&[1, 2, 1]])).is_err());
        assert!(m.forward(&ids.to_kind(Kind::Float), &ones_like(&ids)).is_err());
    }

    // --- qwen3-ckpt: per-layer activation checkpointing -----------------------------

    /// A full row, a right-padded row and a left-padded row (pad id 0).
    fn padded_batch() -> (Tensor, Tensor) {
        let ids = rows(&[&[5, 9, 13, 2, 40, 7, 22], &[3, 8, 60, 11, 0, 0, 0], &[0, 0, 17, 4, 33, 51, 6]]);
        let mask = rows(&[&[1, 1, 1, 1, 1, 1, 1], &[1, 1, 1, 1, 0, 0, 0], &[0, 0, 1, 1, 1, 1, 1]]);
        (ids, mask)
    }

    fn layers(n: i64, tied: bool) -> Config {
        let mut cfg = tiny_qwen3(tied);
        cfg.num_hidden_layers = n;
        cfg
    }

    /// Next-token cross-entropy over real positions (pads ignored), in the logits' kind.
    fn lm_loss(ids: &Tensor, mask: &Tensor) -> impl FnMut(&Tensor) -> Result<Tensor> + 'static {
        let (b, t) = (ids.size()[0], ids.size()[1]);
        let next = Tensor::cat(&[ids.narrow(1, 1, t - 1), Tensor::full([b, 1], -100, (Kind::Int64, Device::Cpu))], 1);
        let real = Tensor::cat(&[mask.narrow(1, 1, t - 1), Tensor::zeros([b, 1], (Kind::Int64, Device::Cpu))], 1);
        let targets = next.where_scalarother(&real.ne(0), -100).view([-1]);
        move |logits: &Tensor| {
            let v = logits.size()[2];
            Ok(logits.f_view([-1, v])?.f_cross_entropy_loss(
                &targets,
                None::<Tensor>,
                tch::Reduction::Mean,
                -100,
                0.0,
            )?)
        }
    }

    /// Plain autograd through `forward` vs `backward_checkpointed`, LM head, padded
    /// batch; returns the worst relative gradient error.
    fn compare_lm(kind: Kind, tied: bool) -> f64 {
        let mut vs = nn::VarStore::new(Device::Cpu);
        let m = Qwen3ForCausalLM::new(&vs.root(), &layers(4, tied)).unwrap();
        vs.set_kind(kind);
        let params = m.named_parameters();
        randomize(&params, 31);
        let (ids, mask) = padded_batch();

        zero_grads(&params);
        let loss_ref = lm_loss(&ids, &mask)(&m.forward(&ids, &mask).unwrap()).unwrap();
        loss_ref.backward();
        let reference = grads(&params);

        zero_grads(&params);
        let loss = m.backward_checkpointed(&ids, &mask, &mut lm_loss(&ids, &mask)).unwrap();
        assert!(!loss.requires_grad());
        assert_eq!(loss.double_value(&[]), loss_ref.double_value(&[]), "the forward is the same computation");
        let (worst, name) = worst_relative_error(&grads(&params), &reference);
        eprintln!("qwen3-ckpt lm {kind:?} tied={tied}: worst relative gradient error {worst:.2e} ({name})");
        worst
    }

    /// Tolerances: the checkpointed backward runs the same kernels on the same inputs as
    /// autograd (the recomputed layer sees the stored input bit for bit on CPU) and only
    /// regroups the accumulation of the residual and tied-embedding gradients, so it can
    /// differ by rounding alone: a few ulps of the kind, amplified by at most the depth
    /// of the network (4 layers). 1e-12 in fp64 (ulp 2.2e-16) and 1e-5 in fp32 (ulp
    /// 1.2e-7) leave two to three orders of magnitude of margin for that, and are far
    /// below what a wrong gradient (a missed term, a wrong layer) gives: O(1).
    const FP64_TOL: f64 = 1e-12;
    const FP32_TOL: f64 = 1e-5;

    #[test]
    fn checkpointed_lm_gradients_match_autograd_fp64_and_fp32() {
        let _rng = rng_guard();
        for tied in [true, false] {
            assert!(compare_lm(Kind::Double, tied) <= FP64_TOL);
            assert!(compare_lm(Kind::Float, tied) <= FP32_TOL);
        }
    }

    /// Classification (cross-entropy, 3 labels) and regression (MSE, 1 label) heads on a
    /// padded batch, fp64 and fp32; also: called inside `no_grad` (the step must enable
    /// grad itself) and a second call adds to the gradients like `loss.backward()`.
    #[test]
    fn checkpointed_classification_gradients_match_autograd_and_accumulate() {
        let _rng = rng_guard();
        for (kind, tol) in [(Kind::Double, FP64_TOL), (Kind::Float, FP32_TOL)] {
            for labels in [3i64, 1] {
                let mut vs = nn::VarStore::new(Device::Cpu);
                let m = Qwen3ForSequenceClassification::new(&vs.root(), &layers(4, false), labels, 0).unwrap();
                vs.set_kind(kind);
                let params = m.named_parameters();
                randomize(&params, 32);
                let (ids, mask) = padded_batch();
                let loss_of = |out: &Tensor| -> Result<Tensor> {
                    if labels == 1 {
                        let target = Tensor::from_slice(&[0.5, -1.0, 2.0]).to_kind(kind).view([3, 1]);
                        Ok(out.f_mse_loss(&target, tch::Reduction::Mean)?)
                    } else {
                        let target = Tensor::from_slice(&[2i64, 0, 1]);
                        Ok(out.f_cross_entropy_loss(&target, None::<Tensor>, tch::Reduction::Mean, -100, 0.0)?)
                    }
                };

                zero_grads(&params);
                loss_of(&m.forward(&ids, &mask).unwrap()).unwrap().backward();
                let reference = grads(&params);

                zero_grads(&params);
                let _ = tch::no_grad(|| m.backward_checkpointed(&ids, &mask, &mut |o| loss_of(o))).unwrap();
                let (worst, name) = worst_relative_error(&grads(&params), &reference);
                eprintln!(
                    "qwen3-ckpt cls {kind:?} labels={labels}: worst relative gradient error {worst:.2e} ({name})"
                );
                assert!(worst <= tol, "{name}: {worst:e} > {tol:e}");

                let _ = m.backward_checkpointed(&ids, &mask, &mut |o| loss_of(o)).unwrap();
                let doubled: Vec<(String, Tensor)> = reference.iter().map(|(n, g)| (n.clone(), g * 2.0)).collect();
                let (worst, name) = worst_relative_error(&grads(&params), &doubled);
                assert!(worst <= tol, "accumulation: {name}: {worst:e}");
            }
        }
    }

    /// The padding row of the embedding gets no gradient, as in autograd (padding_idx).
    #[test]
    fn checkpointed_backward_keeps_the_padding_row_frozen_and_needs_a_scalar_loss() {
        let _rng = rng_guard();
        let vs = nn::VarStore::new(Device::Cpu);
        let m = Qwen3ForSequenceClassification::new(&vs.root(), &layers(2, false), 2, 0).unwrap();
        let params = m.named_parameters();
        randomize(&params, 33);
        let (ids, mask) = padded_batch();
        let target = Tensor::from_slice(&[1i64, 0, 1]);
        zero_grads(&params);
        let _ = m
            .backward_checkpointed(&ids, &mask, &mut |o| {
                Ok(o.f_cross_entropy_loss(&target, None::<Tensor>, tch::Reduction::Mean, -100, 0.0)?)
            })
            .unwrap();
        let embed = params[0].1.grad();
        assert_eq!(embed.get(0).abs().sum(Kind::Float).double_value(&[]), 0.0, "pad row must get no gradient");
        assert!(embed.get(5).abs().sum(Kind::Float).double_value(&[]) > 0.0);
        // A non-scalar loss is libtorch's error, not a silent sum.
        assert!(m.backward_checkpointed(&ids, &mask, &mut |o| Ok(o.shallow_clone())).is_err());
    }

    #[test]
    fn config_round_trips_through_hf_json() {
        let mut cfg = tiny_qwen3(true);
        cfg.pad_token_id = Some(0);
        cfg.eos_token_id = Some(TokenIds::One(2));
        assert_eq!(Config::from_hf_json(&cfg.to_hf_json()).unwrap(), cfg);
    }
}
