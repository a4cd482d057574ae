//! OPT decoder with its tied language-model head (Hugging Face `modeling_opt.py`,
//! `OPTForCausalLM`), as used by the zeroth-order methods (MeZO, DiZO) and the
//! first-order OPT baseline.
//!
//! This module owns the OPT config (HF `OPTConfig` names; 4.x and 5.x `config.json`;
//! refusal of variants we do not implement) and the blocks: learned positions computed
//! from the attention mask (`cumsum(mask)·mask − 1`, table offset 2, so left padding with
//! pad id 1 does not shift positions), pre-LN layers (every size but 350m) or the post-LN
//! opt-350m layout with `project_in`/`project_out`, ReLU FFN, q scaled by `head_dim^-0.5`,
//! causal + padding mask, dropout only when training. See docs/zo_methods.md §5.
//!
//! Deviation from HF, on purpose: fully masked query rows (left-padding positions) attend
//! to themselves (finite, don't-care outputs) instead of kernel-dependent values.
//!
//! Length: one file per architecture; its tests are the last ~240 lines.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor, nn};

use super::common::{
    AttnMask, HfFields, Linear, TokenIds, attention, check_inputs, embedding_var, ensure, padding_idx_arg,
};
use crate::error::{Error, Result};

/// OPT's learned position table has two extra leading rows (HF `offset = 2`).
const POSITION_OFFSET: i64 = 2;
/// `nn.LayerNorm` default epsilon, which every OPT layer norm uses.
const LAYER_NORM_EPS: f64 = 1e-5;

/// Resolved OPT configuration (HF `OPTConfig` names, every default applied).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Rows of the token embedding.
    pub vocab_size: i64,
    /// Model width.
    pub hidden_size: i64,
    /// FFN inner width.
    pub ffn_dim: i64,
    /// Decoder layers.
    pub num_hidden_layers: i64,
    /// Attention heads (head_dim = hidden_size / heads).
    pub num_attention_heads: i64,
    /// Position table rows minus the offset of 2.
    pub max_position_embeddings: i64,
    /// Embedding width; differs from `hidden_size` only with `project_in`/`project_out`.
    pub word_embed_proj_dim: i64,
    /// Pre-LN (true) or the post-LN opt-350m layout (false).
    pub do_layer_norm_before: bool,
    /// Dropout on attention output and FFN output (training only).
    pub dropout: f64,
    /// Dropout on attention probabilities (training only).
    pub attention_dropout: f64,
    /// Std of the normal initialisation.
    pub init_std: f64,
    /// Padding id (embedding `padding_idx`; OPT pads on the left with 1).
    pub pad_token_id: Option<i64>,
    /// Beginning-of-sequence id.
    pub bos_token_id: Option<i64>,
    /// End-of-sequence id(s).
    pub eos_token_id: Option<TokenIds>,
}

impl Config {
    /// The config of a scale preset's OPT shape (released OPT values for the rest).
    pub fn from_arch(a: &shared::scale::OptArch) -> Config {
        Config {
            vocab_size: a.vocab_size.into(),
            hidden_size: a.hidden_size.into(),
            ffn_dim: a.ffn_dim.into(),
            num_hidden_layers: a.num_hidden_layers.into(),
            num_attention_heads: a.num_attention_heads.into(),
            max_position_embeddings: a.max_position_embeddings.into(),
            word_embed_proj_dim: a.word_embed_proj_dim.into(),
            do_layer_norm_before: a.do_layer_norm_before,
            dropout: 0.1,
            attention_dropout: 0.0,
            init_std: a.init_std,
            pad_token_id: Some(1),
            bos_token_id: Some(2),
            eos_token_id: Some(TokenIds::One(2)),
        }
    }

    /// Parses an HF `config.json` (transformers 4.x or 5.x, `torch_dtype` or `dtype`).
    ///
    /// The shape fields are required. Fields released OPT configs omit (`enable_bias`,
    /// `layer_norm_elementwise_affine`, `tie_word_embeddings`, ...) take the `OPTConfig`
    /// default. Refused, with the field named: activations other than ReLU, no biases,
    /// non-affine layer norms, `_remove_final_layer_norm`, layerdrop, an untied head, and
    /// post-LN without the `project_in`/`project_out` layout.
    pub fn from_hf_json(json: &serde_json::Value) -> Result<Config> {
        let f = HfFields::new(json)?;
        f.expect_model_type("opt")?;
        f.declared_dtype()?;

        let act = f.str("activation_function")?.unwrap_or("relu");
        ensure(act == "relu", "activation_function", format!("only \"relu\" is supported, got \"{act}\""))?;
        ensure(f.bool("enable_bias")?.unwrap_or(true), "enable_bias", "OPT without biases is not supported")?;
        ensure(
            f.bool("layer_norm_elementwise_affine")?.unwrap_or(true),
            "layer_norm_elementwise_affine",
            "layer norms without weight and bias are not supported",
        )?;
        ensure(
            !f.bool("_remove_final_layer_norm")?.unwrap_or(false),
            "_remove_final_layer_norm",
            "checkpoints without the decoder's final layer norm are not supported",
        )?;
        let layerdrop = f.float("layerdrop")?.unwrap_or(0.0);
        ensure(layerdrop == 0.0, "layerdrop", format!("only 0.0 is supported, got {layerdrop}"))?;
        ensure(
            f.bool("tie_word_embeddings")?.unwrap_or(true),
            "tie_word_embeddings",
            "an untied OPT lm_head is not supported",
        )?;

        let hidden_size = f.req_int("hidden_size")?;
        let cfg = Config {
            vocab_size: f.req_int("vocab_size")?,
            hidden_size,
            ffn_dim: f.req_int("ffn_dim")?,
            num_hidden_layers: f.req_int("num_hidden_layers")?,
            num_attention_heads: f.req_int("num_attention_heads")?,
            max_position_embeddings: f.req_int("max_position_embeddings")?,
            // HF: `None` means no projection.
            word_embed_proj_dim: f.int("word_embed_proj_dim")?.unwrap_or(hidden_size),
            do_layer_norm_before: f.bool("do_layer_norm_before")?.unwrap_or(true),
            dropout: f.float("dropout")?.unwrap_or(0.1),
            attention_dropout: f.float("attention_dropout")?.unwrap_or(0.0),
            init_std: f.float("init_std")?.unwrap_or(0.02),
            // `OPTConfig` defaults (4.x omits fields equal to them).
            pad_token_id: f.int_or("pad_token_id", Some(1))?,
            bos_token_id: f.int_or("bos_token_id", Some(2))?,
            eos_token_id: f.token_ids_or("eos_token_id", Some(TokenIds::One(2)))?,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Cross-field checks; constructors call this.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("ffn_dim", self.ffn_dim),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("max_position_embeddings", self.max_position_embeddings),
            ("word_embed_proj_dim", self.word_embed_proj_dim),
        ] {
            ensure(v > 0, name, format!("must be positive, got {v}"))?;
        }
        ensure(
            self.hidden_size % self.num_attention_heads == 0,
            "num_attention_heads",
            format!("{} does not divide hidden_size {}", self.num_attention_heads, self.hidden_size),
        )?;
        ensure(
            self.do_layer_norm_before || self.word_embed_proj_dim != self.hidden_size,
            "do_layer_norm_before",
            "post-LN (false) is only supported in the opt-350m layout with project_in/project_out \
             (word_embed_proj_dim != hidden_size)",
        )?;
        for (name, p) in [("dropout", self.dropout), ("attention_dropout", self.attention_dropout)] {
            ensure((0.0..1.0).contains(&p), name, format!("must be in [0, 1), got {p}"))?;
        }
        ensure(self.init_std >= 0.0, "init_std", "must not be negative")?;
        Ok(())
    }

    /// `config.json` fields transformers (4.x and 5.x) needs; the caller adds
    /// `architectures` and `dtype`.
    pub fn to_hf_json(&self) -> serde_json::Value {
        serde_json::json!({
            "model_type": "opt",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "ffn_dim": self.ffn_dim,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "max_position_embeddings": self.max_position_embeddings,
            "word_embed_proj_dim": self.word_embed_proj_dim,
            "do_layer_norm_before": self.do_layer_norm_before,
            "_remove_final_layer_norm": false,
            "activation_function": "relu",
            "enable_bias": true,
            "layer_norm_elementwise_affine": true,
            "dropout": self.dropout,
            "attention_dropout": self.attention_dropout,
            "layerdrop": 0.0,
            "init_std": self.init_std,
            "tie_word_embeddings": true,
            "use_cache": true,
            "pad_token_id": self.pad_token_id,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
        })
    }
}

/// Affine layer norm (`weight` ones, `bias` zeros), eps 1e-5.
#[derive(Debug)]
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
}

impl LayerNorm {
    fn new(p: &nn::Path, dim: i64) -> Result<Self> {
        Ok(LayerNorm { weight: p.f_ones("weight", &[dim])?, bias: p.f_zeros("bias", &[dim])? })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let dim = self.weight.size()[0];
        Ok(xs.f_layer_norm([dim].as_slice(), Some(&self.weight), Some(&self.bias), LAYER_NORM_EPS, true)?)
    }

    fn push_params(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        out.push((format!("{prefix}.weight"), self.weight.shallow_clone()));
        out.push((format!("{prefix}.bias"), self.bias.shallow_clone()));
    }
}

/// Multi-head self-attention with biases; q is scaled before the product.
#[derive(Debug)]
struct OptAttention {
    k_proj: Linear,
    v_proj: Linear,
    q_proj: Linear,
    out_proj: Linear,
    num_heads: i64,
    head_dim: i64,
    attention_dropout: f64,
}

impl OptAttention {
    fn new(p: &nn::Path, cfg: &Config) -> Result<Self> {
        let (d, std) = (cfg.hidden_size, cfg.init_std);
        // Registration order k, v, q, out (HF), which fixes named_parameters order.
        Ok(OptAttention {
            k_proj: Linear::new(&(p / "k_proj"), d, d, true, std)?,
            v_proj: Linear::new(&(p / "v_proj"), d, d, true, std)?,
            q_proj: Linear::new(&(p / "q_proj"), d, d, true, std)?,
            out_proj: Linear::new(&(p / "out_proj"), d, d, true, std)?,
            num_heads: cfg.num_attention_heads,
            head_dim: d / cfg.num_attention_heads,
            attention_dropout: cfg.attention_dropout,
        })
    }

    /// `[B, T, hidden]` → `[B, T, hidden]`.
    fn forward(&self, xs: &Tensor, mask: &AttnMask, train: bool) -> Result<Tensor> {
        let (b, t) = (xs.size()[0], xs.size()[1]);
        let (h, d) = (self.num_heads, self.head_dim);
        // 1. q = q_proj(x)·d^-0.5 (scaled before QKᵀ, as HF), heads split to [B, H, T, D].
        let q =
            self.q_proj.forward(xs)?.f_mul_scalar((d as f64).powf(-0.5))?.f_view([b, t, h, d])?.f_transpose(1, 2)?;
        let k = self.k_proj.forward(xs)?.f_view([b, t, h, d])?.f_transpose(1, 2)?;
        let v = self.v_proj.forward(xs)?.f_view([b, t, h, d])?.f_transpose(1, 2)?;
        // 2. Attention with scale 1 (q already scaled) → [B, H, T, D].
        let p = if train { self.attention_dropout } else { 0.0 };
        let out = attention(&q, &k, &v, mask, p, 1.0)?;
        // 3. Merge heads → [B, T, hidden] and project.
        self.out_proj.forward(&out.f_transpose(1, 2)?.f_reshape([b, t, h * d])?)
    }

    fn push_params(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        self.k_proj.push_params(&format!("{prefix}.k_proj"), out);
        self.v_proj.push_params(&format!("{prefix}.v_proj"), out);
        self.q_proj.push_params(&format!("{prefix}.q_proj"), out);
        self.out_proj.push_params(&format!("{prefix}.out_proj"), out);
    }
}

/// One OPT layer, pre-LN or post-LN.
#[derive(Debug)]
struct OptDecoderLayer {
    self_attn: OptAttention,
    self_attn_layer_norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    final_layer_norm: LayerNorm,
    pre_ln: bool,
    dropout: f64,
}

impl OptDecoderLayer {
    fn new(p: &nn::Path, cfg: &Config) -> Result<Self> {
        let (d, std) = (cfg.hidden_size, cfg.init_std);
        Ok(OptDecoderLayer {
            self_attn: OptAttention::new(&(p / "self_attn"), cfg)?,
            self_attn_layer_norm: LayerNorm::new(&(p / "self_attn_layer_norm"), d)?,
            fc1: Linear::new(&(p / "fc1"), d, cfg.ffn_dim, true, std)?,
            fc2: Linear::new(&(p / "fc2"), cfg.ffn_dim, d, true, std)?,
            final_layer_norm: LayerNorm::new(&(p / "final_layer_norm"), d)?,
            pre_ln: cfg.do_layer_norm_before,
            dropout: cfg.dropout,
        })
    }

    /// Pre-LN: `h = x + Attn(LN1(x))`, `out = h + FFN(LN2(h))`.
    /// Post-LN: `h = LN1(x + Attn(x))`, `out = LN2(h + FFN(h))`.
    fn forward(&self, xs: &Tensor, mask: &AttnMask, train: bool) -> Result<Tensor> {
        // 1. Attention block.
        let attn_in = if self.pre_ln { self.self_attn_layer_norm.forward(xs)? } else { xs.shallow_clone() };
        let attn = self.self_attn.forward(&attn_in, mask, train)?.f_dropout(self.dropout, train)?;
        let mut h = xs.f_add(&attn)?;
        if !self.pre_ln {
            h = self.self_attn_layer_norm.forward(&h)?;
        }
        // 2. FFN block: fc2(relu(fc1(·))).
        let ffn_in = if self.pre_ln { self.final_layer_norm.forward(&h)? } else { h.shallow_clone() };
        let ffn = self.fc2.forward(&self.fc1.forward(&ffn_in)?.f_relu()?)?.f_dropout(self.dropout, train)?;
        let out = h.f_add(&ffn)?;
        if self.pre_ln { Ok(out) } else { self.final_layer_norm.forward(&out) }
    }

    fn push_params(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        self.self_attn.push_params(&format!("{prefix}.self_attn"), out);
        self.self_attn_layer_norm.push_params(&format!("{prefix}.self_attn_layer_norm"), out);
        self.fc1.push_params(&format!("{prefix}.fc1"), out);
        self.fc2.push_params(&format!("{prefix}.fc2"), out);
        self.final_layer_norm.push_params(&format!("{prefix}.final_layer_norm"), out);
    }
}

/// OPT with its tied LM head (HF `OPTForCausalLM`; parameters under `model.decoder`).
#[derive(Debug)]
pub struct OptForCausalLM {
    embed_tokens: Tensor,
    embed_positions: Tensor,
    project_out: Option<Linear>,
    project_in: Option<Linear>,
    final_layer_norm: Option<LayerNorm>,
    layers: Vec<OptDecoderLayer>,
    padding_idx: i64,
    cfg: Config,
}

impl OptForCausalLM {
    /// Registers `model.decoder.*` under `p` in HF order, initialised as HF's
    /// `_init_weights` (normal(0, init_std) for linear and embedding with the pad row
    /// zeroed, biases zero, layer norms ones/zeros); deterministic for a fixed
    /// `tch::manual_seed`.
    pub fn new(p: &nn::Path, cfg: &Config) -> Result<Self> {
        cfg.validate()?;
        let dp = p / "model" / "decoder";
        let (d, e, std) = (cfg.hidden_size, cfg.word_embed_proj_dim, cfg.init_std);
        let embed_tokens = embedding_var(&(&dp / "embed_tokens"), cfg.vocab_size, e, std, cfg.pad_token_id)?;
        let embed_positions =
            embedding_var(&(&dp / "embed_positions"), cfg.max_position_embeddings + POSITION_OFFSET, d, std, None)?;
        let (project_out, project_in) = if e != d {
            (
                Some(Linear::new(&(&dp / "project_out"), d, e, false, std)?),
                Some(Linear::new(&(&dp / "project_in"), e, d, false, std)?),
            )
        } else {
            (None, None)
        };
        let final_layer_norm =
            if cfg.do_layer_norm_before { Some(LayerNorm::new(&(&dp / "final_layer_norm"), d)?) } else { None };
        let layers_p = &dp / "layers";
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| OptDecoderLayer::new(&(&layers_p / i), cfg))
            .collect::<Result<Vec<_>>>()?;
        Ok(OptForCausalLM {
            embed_tokens,
            embed_positions,
            project_out,
            project_in,
            final_layer_norm,
            layers,
            padding_idx: padding_idx_arg(cfg.pad_token_id, cfg.vocab_size),
            cfg: cfg.clone(),
        })
    }

    /// The resolved config.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Evaluation forward (no dropout): `[B, T]` → logits `[B, T, vocab]`.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        self.forward_t(input_ids, attention_mask, false)
    }

    /// `input_ids`, `attention_mask` `[B, T]` (left padding with pad id 1 is the OPT
    /// convention; either side works) → logits `[B, T, vocab]`. Dropout only when `train`.
    pub fn forward_t(&self, input_ids: &Tensor, attention_mask: &Tensor, train: bool) -> Result<Tensor> {
        let h = self.hidden_states_t(input_ids, attention_mask, train)?;
        self.logits_from_hidden(&h)
    }

    /// The tied LM head alone: hidden states `[…, E]` (as returned by
    /// [`Self::hidden_states_t`]) → logits `[…, vocab]`. Scoring code applies it to the few
    /// positions it needs instead of materialising `[B, T, vocab]`.
    pub fn logits_from_hidden(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(hidden.f_linear(&self.embed_tokens, None::<Tensor>)?)
    }

    /// The decoder's output before the LM head: `[B, T]` → `[B, T, word_embed_proj_dim]`
    /// (after the final layer norm and `project_out` where the layout has them).
    pub fn hidden_states_t(&self, input_ids: &Tensor, attention_mask: &Tensor, train: bool) -> Result<Tensor> {
        // 1. Checks and the shared causal + padding mask.
        let inputs = check_inputs(input_ids, attention_mask, self.cfg.vocab_size, self.embed_tokens.device())?;
        let mask = AttnMask::build(&inputs)?;
        // 2. Positions from the mask: cumsum(mask)·mask − 1 (pads → −1), looked up at +2.
        let positions = inputs
            .mask
            .f_cumsum(1, Kind::Int64)?
            .f_mul(&inputs.mask)?
            .f_sub_scalar(1)?
            .f_add_scalar(POSITION_OFFSET)?;
        let table_rows = self.cfg.max_position_embeddings + POSITION_OFFSET;
        let top = positions.f_max()?.f_int64_value(&[])?;
        if top >= table_rows {
            return Err(Error::Inputs(format!(
                "{} real tokens exceed OPT max_position_embeddings {}",
                top - POSITION_OFFSET + 1,
                self.cfg.max_position_embeddings
            )));
        }
        let pos_embeds = Tensor::f_embedding(&self.embed_positions, &positions, -1, false, false)?;
        // 3. Token embeddings [B, T, E] (→ [B, T, hidden] through project_in).
        let mut h = Tensor::f_embedding(&self.embed_tokens, &inputs.ids, self.padding_idx, false, false)?;
        if let Some(pin) = &self.project_in {
            h = pin.forward(&h)?;
        }
        // 4. h = tokens + positions [B, T, hidden]; decoder layers.
        h = h.f_add(&pos_embeds)?;
        for layer in &self.layers {
            h = layer.forward(&h, &mask, train)?;
        }
        // 5. Final layer norm (pre-LN only), project_out (350m layout) → [B, T, E].
        if let Some(ln) = &self.final_layer_norm {
            h = ln.forward(&h)?;
        }
        if let Some(pout) = &self.project_out {
            h = pout.forward(&h)?;
        }
        Ok(h)
    }

    /// Trainable tensors with HF names in HF `named_parameters()` order: embed_tokens,
    /// embed_positions, [project_out, project_in], [final_layer_norm], then per layer
    /// k, v, q, out_proj, self_attn_layer_norm, fc1, fc2, final_layer_norm. The tied
    /// `lm_head` is not listed.
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let pre = "model.decoder";
        let mut out = vec![
            (format!("{pre}.embed_tokens.weight"), self.embed_tokens.shallow_clone()),
            (format!("{pre}.embed_positions.weight"), self.embed_positions.shallow_clone()),
        ];
        if let Some(l) = &self.project_out {
            l.push_params(&format!("{pre}.project_out"), &mut out);
        }
        if let Some(l) = &self.project_in {
            l.push_params(&format!("{pre}.project_in"), &mut out);
        }
        if let Some(ln) = &self.final_layer_norm {
            ln.push_params(&format!("{pre}.final_layer_norm"), &mut out);
        }
        for (i, layer) in self.layers.iter().enumerate() {
            layer.push_params(&format!("{pre}.layers.{i}"), &mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{config_field, max_abs, ones_like, randomize, rng_guard, rows, tiny_opt};
    use serde_json::json;
    use tch::Device;

    /// facebook/opt-125m's config.json as released (transformers 4.21: torch_dtype, no
    /// enable_bias / layer_norm_elementwise_affine / tie_word_embeddings).
    fn opt_125m() -> serde_json::Value {
        json!({
            "_name_or_path": "facebook/opt-125m", "activation_dropout": 0.0, "activation_function": "relu",
            "architectures": ["OPTForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 2,
            "do_layer_norm_before": true, "dropout": 0.1, "eos_token_id": 2, "ffn_dim": 3072, "hidden_size": 768,
            "init_std": 0.02, "layerdrop": 0.0, "max_position_embeddings": 2048, "model_type": "opt",
            "num_attention_heads": 12, "num_hidden_layers": 12, "pad_token_id": 1, "prefix": "</s>",
            "torch_dtype": "float16", "transformers_version": "4.21.0.dev0", "use_cache": true,
            "vocab_size": 50272, "word_embed_proj_dim": 768
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
    fn config_reads_released_and_5x_configs() {
        let c = Config::from_hf_json(&opt_125m()).unwrap();
        assert_eq!(
            c,
            Config::from_arch(&shared::scale::OptArch {
                vocab_size: 50272,
                hidden_size: 768,
                ffn_dim: 3072,
                num_hidden_layers: 12,
                num_attention_heads: 12,
                max_position_embeddings: 2048,
                word_embed_proj_dim: 768,
                do_layer_norm_before: true,
                init_std: 0.02,
            })
        );
        // opt-350m: post-LN with the 512 ↔ 1024 projections.
        let c350 = Config::from_hf_json(&with(
            with(opt_125m(), "do_layer_norm_before", json!(false)),
            "word_embed_proj_dim",
            json!(512),
        ))
        .unwrap();
        assert!(!c350.do_layer_norm_before);
        // 5.x style: dtype, every field written; null word_embed_proj_dim = hidden_size;
        // explicit null pad id stays none (absent means the OPTConfig default, 1).
        let v5 = with(with(without(opt_125m(), "torch_dtype"), "dtype", json!("float32")), "enable_bias", json!(true));
        let v5 =
            with(with(v5, "word_embed_proj_dim", serde_json::Value::Null), "pad_token_id", serde_json::Value::Null);
        let c5 = Config::from_hf_json(&v5).unwrap();
        assert_eq!((c5.word_embed_proj_dim, c5.pad_token_id), (768, None));
        assert_eq!(Config::from_hf_json(&without(opt_125m(), "pad_token_id")).unwrap().pad_token_id, Some(1));
        assert_eq!(Config::from_hf_json(&c.to_hf_json()).unwrap(), c);
    }

    #[test]
    fn config_refuses_unsupported_values_naming_the_field() {
        let cases: Vec<(serde_json::Value, &str)> = vec![
            (with(opt_125m(), "activation_function", json!("gelu")), "activation_function"),
            (with(opt_125m(), "enable_bias", json!(false)), "enable_bias"),
            (with(opt_125m(), "layer_norm_elementwise_affine", json!(false)), "layer_norm_elementwise_affine"),
            (with(opt_125m(), "_remove_final_layer_norm", json!(true)), "_remove_final_layer_norm"),
            (with(opt_125m(), "do_layer_norm_before", json!(false)), "do_layer_norm_before"),
            (with(opt_125m(), "layerdrop", json!(0.1)), "layerdrop"),
            (with(opt_125m(), "tie_word_embeddings", json!(false)), "tie_word_embeddings"),
            (with(opt_125m(), "model_type", json!("gpt2")), "model_type"),
            (with(opt_125m(), "torch_dtype", json!("int4")), "torch_dtype"),
            (with(opt_125m(), "num_attention_heads", json!(7)), "num_attention_heads"),
            (with(opt_125m(), "dropout", json!(1.5)), "dropout"),
            (without(opt_125m(), "ffn_dim"), "ffn_dim"),
            (without(opt_125m(), "max_position_embeddings"), "max_position_embeddings"),
        ];
        for (json, field) in cases {
            let e = Config::from_hf_json(&json).expect_err(field);
            assert_eq!(config_field(e), field);
        }
    }

    #[test]
    fn presets_build_with_the_preset_parameter_count() {
        let _rng = rng_guard();
        for name in ["tiny", "small"] {
            let preset = shared::scale::preset(name).unwrap();
            let vs = nn::VarStore::new(Device::Cpu);
            let m = OptForCausalLM::new(&vs.root(), &Config::from_arch(&preset.opt)).unwrap();
            let n: u64 = m.named_parameters().iter().map(|(_, t)| t.numel() as u64).sum();
            assert_eq!(n, preset.opt.parameters(), "{name}");
        }
    }

    #[test]
    fn named_parameters_follow_hf_registration_order() {
        let _rng = rng_guard();
        for pre_ln in [true, false] {
            let vs = nn::VarStore::new(Device::Cpu);
            let m = OptForCausalLM::new(&vs.root(), &tiny_opt(pre_ln)).unwrap();
            let names: Vec<String> = m
                .named_parameters()
                .into_iter()
                .map(|(n, _)| n.trim_start_matches("model.decoder.").to_owned())
                .collect();
            let head: Vec<&str> = names.iter().take(4).map(String::as_str).collect();
            if pre_ln {
                assert_eq!(
                    head,
                    [
                        "embed_tokens.weight",
                        "embed_positions.weight",
                        "final_layer_norm.weight",
                        "final_layer_norm.bias"
                    ]
                );
            } else {
                assert_eq!(
                    head,
                    ["embed_tokens.weight", "embed_positions.weight", "project_out.weight", "project_in.weight"]
                );
            }
            let layer: Vec<&str> = names.iter().skip(4).take(16).map(|n| n.trim_start_matches("layers.0.")).collect();
            assert_eq!(
                layer,
                [
                    "self_attn.k_proj.weight",
                    "self_attn.k_proj.bias",
                    "self_attn.v_proj.weight",
                    "self_attn.v_proj.bias",
                    "self_attn.q_proj.weight",
                    "self_attn.q_proj.bias",
                    "self_attn.out_proj.weight",
                    "self_attn.out_proj.bias",
                    "self_attn_layer_norm.weight",
                    "self_attn_layer_norm.bias",
                    "fc1.weight",
                    "fc1.bias",
                    "fc2.weight",
                    "fc2.bias",
                    "final_layer_norm.weight",
                    "final_layer_norm.bias"
                ]
            );
            assert_eq!(names.len(), vs.variables().len());
        }
    }

    #[test]
    fn random_init_is_deterministic_for_a_seed() {
        let _rng = rng_guard();
        let build = |seed| {
            tch::manual_seed(seed);
            let vs = nn::VarStore::new(Device::Cpu);
            let m = OptForCausalLM::new(&vs.root(), &tiny_opt(false)).unwrap();
            (vs, m.named_parameters())
        };
        let ((_a, pa), (_b, pb), (_c, pc)) = (build(1), build(1), build(2));
        assert!(pa.iter().zip(&pb).all(|((_, a), (_, b))| a.equal(b)));
        assert!(!pa[0].1.equal(&pc[0].1));
        // The pad row (id 1) of embed_tokens is zero, as HF's padding_idx init.
        assert_eq!(pa[0].1.get(1).abs().sum(Kind::Float).double_value(&[]), 0.0);
    }

    fn random_opt(pre_ln: bool) -> (nn::VarStore, OptForCausalLM) {
        let vs = nn::VarStore::new(Device::Cpu);
        let m = OptForCausalLM::new(&vs.root(), &tiny_opt(pre_ln)).unwrap();
        randomize(&m.named_parameters(), 5);
        (vs, m)
    }

    #[test]
    fn causal_mask_later_tokens_never_change_earlier_positions() {
        let _rng = rng_guard();
        for pre_ln in [true, false] {
            let (_vs, m) = random_opt(pre_ln);
            let a = rows(&[&[1, 1, 2, 9, 13, 20, 40, 7]]);
            let b = rows(&[&[1, 1, 2, 9, 13, 21, 3, 8]]);
            for mask in [ones_like(&a), rows(&[&[0, 0, 1, 1, 1, 1, 1, 1]])] {
                let (la, lb) = (m.forward(&a, &mask).unwrap(), m.forward(&b, &mask).unwrap());
                assert!(max_abs(&la.narrow(1, 0, 5), &lb.narrow(1, 0, 5)) < 1e-6);
                assert!(max_abs(&la.narrow(1, 5, 1), &lb.narrow(1, 5, 1)) > 1e-2);
            }
        }
    }

    #[test]
    fn padding_never_changes_real_positions_either_side() {
        let _rng = rng_guard();
        for pre_ln in [true, false] {
            let (_vs, m) = random_opt(pre_ln);
            let real = rows(&[&[2, 9, 13, 20, 40]]);
            let plain = m.forward(&real, &ones_like(&real)).unwrap();
            // Left padding with pad id 1 (OPT's convention): positions come from the mask,
            // so real tokens keep positions 0..5 and their logits.
            let left = m.forward(&rows(&[&[1, 1, 1, 2, 9, 13, 20, 40]]), &rows(&[&[0, 0, 0, 1, 1, 1, 1, 1]])).unwrap();
            assert!(left.isfinite().all().int64_value(&[]) == 1);
            let d = max_abs(&left.narrow(1, 3, 5), &plain);
            assert!(d < 1e-5, "left padding moved real logits by {d}");
            let right = m.forward(&rows(&[&[2, 9, 13, 20, 40, 1, 1]]), &rows(&[&[1, 1, 1, 1, 1, 0, 0]])).unwrap();
            let d = max_abs(&right.narrow(1, 0, 5), &plain);
            assert!(d < 1e-5, "right padding moved real logits by {d}");
        }
    }

    #[test]
    fn dropout_only_in_training() {
        let _rng = rng_guard();
        let (_vs, m) = random_opt(true);
        let ids = rows(&[&[2, 9, 13, 20, 40, 7]]);
        let mask = ones_like(&ids);
        let eval = m.forward(&ids, &mask).unwrap();
        assert!(eval.equal(&m.forward_t(&ids, &mask, false).unwrap()));
        let train = m.forward_t(&ids, &mask, true).unwrap();
        assert!(max_abs(&train, &eval) > 1e-3, "dropout 0.1 must change training outputs");
        let mut cfg = tiny_opt(true);
        cfg.dropout = 0.0;
        let vs = nn::VarStore::new(Device::Cpu);
        let m0 = OptForCausalLM::new(&vs.root(), &cfg).unwrap();
        assert!(m0.forward_t(&ids, &mask, true).unwrap().equal(&m0.forward(&ids, &mask).unwrap()));
    }

    #[test]
    fn too_many_tokens_for_the_position_table_is_an_error() {
        let _rng = rng_guard();
        let (_vs, m) = random_opt(true);
        let ids = Tensor::full([1, 33], 5, (Kind::Int64, Device::Cpu));
        let e = m.forward(&ids, &ones_like(&ids)).unwrap_err();
        assert!(e.to_string().contains("max_position_embeddings"), "{e}");
        // 33 columns with 32 real tokens fit.
        let mask = Tensor::ones([1, 33], (Kind::Int64, Device::Cpu));
        let _ = mask.narrow(1, 0, 1).fill_(0);
        assert!(m.forward(&ids, &mask).is_ok());
    }
}
