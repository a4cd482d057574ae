//! Named scale presets (`tiny`, `demo`, `small`, `medium`, `large`) with every field explicit.
//!
//! A preset fixes the shapes of both architectures, the data sizes and the training
//! settings of the first- and zeroth-order methods. Nothing is left to a library
//! default: the seed system this replaces silently ran `head_dim = 128` and an MLP width
//! of 11008 at every scale. A spec may override any field (`--set first_order.max_steps=500`),
//! and the resolved values travel inside each shard, so a result always records what ran.

use serde::{Deserialize, Serialize};

use crate::device::DeviceClass;
use crate::error::Error;

/// Qwen3 shape, with Hugging Face `Qwen3Config` field names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Qwen3Arch {
    /// Rows of the token embedding (must cover every tokenizer id).
    pub vocab_size: u32,
    /// Model width.
    pub hidden_size: u32,
    /// SwiGLU inner width.
    pub intermediate_size: u32,
    /// Number of decoder layers.
    pub num_hidden_layers: u32,
    /// Query heads.
    pub num_attention_heads: u32,
    /// Key/value heads (grouped-query attention).
    pub num_key_value_heads: u32,
    /// Per-head width (explicit, not hidden/heads).
    pub head_dim: u32,
    /// Longest sequence the RoPE table is built for.
    pub max_position_embeddings: u32,
    /// RoPE base θ.
    pub rope_theta: f64,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Whether the LM head shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Std of the normal initialisation of linear and embedding weights.
    pub initializer_range: f64,
}

/// OPT shape, with Hugging Face `OPTConfig` field names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptArch {
    /// Rows of the token embedding.
    pub vocab_size: u32,
    /// Model width.
    pub hidden_size: u32,
    /// FFN inner width.
    pub ffn_dim: u32,
    /// Number of decoder layers.
    pub num_hidden_layers: u32,
    /// Attention heads.
    pub num_attention_heads: u32,
    /// Learned position table size (the table has 2 extra rows, offset 2).
    pub max_position_embeddings: u32,
    /// Embedding width (differs from hidden_size only in the opt-350m layout).
    pub word_embed_proj_dim: u32,
    /// Pre-LN (true for every OPT size except 350m).
    pub do_layer_norm_before: bool,
    /// Std of the normal initialisation.
    pub init_std: f64,
}

/// How much data a shard uses (counts of examples; 0 means the whole split).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSettings {
    /// Training examples sampled (seeded) from the train split after the dev split is
    /// removed; 0 = all remaining.
    pub train_examples: u32,
    /// Dev examples held out of the train split for model selection (capped at a
    /// quarter of the train split).
    pub dev_examples: u32,
    /// Test examples sampled from the official validation split; 0 = all of it.
    pub test_examples: u32,
    /// Sequences are truncated to this many tokens.
    pub max_seq_len: u32,
}

/// Learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// Constant after warmup.
    Constant,
    /// Linear warmup, then linear decay to zero at `max_steps`.
    Linear,
    /// Linear warmup, then cosine decay to zero at `max_steps`.
    Cosine,
}

/// Numeric precision of training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// fp32 weights and compute.
    Fp32,
    /// fp32 master weights, bf16 autocast compute (CUDA only).
    Bf16,
}

impl Precision {
    /// How results name the precision that ran: `fp32`, `bf16-autocast` (fp32 weights,
    /// bf16 compute), the one place these labels are written.
    pub fn label(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16-autocast",
        }
    }
}

/// Settings of one family of training methods (first- or zeroth-order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSettings {
    /// Optimizer steps.
    pub max_steps: u32,
    /// Examples per step.
    pub batch_size: u32,
    /// Examples per evaluation batch.
    pub eval_batch_size: u32,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Schedule shape.
    pub lr_schedule: LrSchedule,
    /// Linear warmup steps.
    pub warmup_steps: u32,
    /// Decoupled weight decay (not applied to biases and norms).
    pub weight_decay: f64,
    /// Gradient-norm clip for first-order methods; 0 = off.
    pub grad_clip: f64,
    /// AdamW β1.
    pub adam_beta1: f64,
    /// AdamW β2.
    pub adam_beta2: f64,
    /// AdamW ε.
    pub adam_eps: f64,
    /// SPSA perturbation scale ε for zeroth-order methods.
    pub zo_eps: f64,
    /// Evaluate on dev every this many steps (and at the end).
    pub eval_every: u32,
    /// Stop after this many evaluations without dev improvement; 0 = never.
    pub early_stopping_patience: u32,
    /// Write a checkpoint every this many steps (and at the end); 0 = only at the end.
    pub checkpoint_every: u32,
    /// Training precision.
    pub precision: Precision,
}

/// DiZO's projection settings (docs/zo_methods.md §2.3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DizoSettings {
    /// κ: a projection round every this many steps.
    pub interval: u32,
    /// J: inner SPSA iterations on γ per round.
    pub inner_iters: u32,
    /// ε_γ: γ perturbation scale.
    pub eps_gamma: f64,
    /// η_γ: γ step size.
    pub step_gamma: f64,
    /// τ: γ/‖Δθ‖ is clipped to [1−τ, 1+τ].
    pub clip_tau: f64,
    /// Keep the anchors θ⁰ in (pinned) host memory instead of on the GPU. The reference
    /// code keeps them on the GPU (+~15% of the parameters); on the host each projection
    /// round copies them in one tensor at a time, trading a little time for memory.
    pub anchors_on_host: bool,
}

/// A complete named preset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScalePreset {
    /// Preset name.
    pub name: String,
    /// One line for `qsched scales`.
    pub description: String,
    /// Device class the shards go to unless the spec says otherwise.
    pub device_class: DeviceClass,
    /// Qwen3 shape (qwen3, qwen3-ckpt, rev-qwen3).
    pub qwen3: Qwen3Arch,
    /// OPT shape (ft-opt, mezo-opt, dizo-opt).
    pub opt: OptArch,
    /// Data sizes.
    pub data: DataSettings,
    /// AdamW methods: qwen3, qwen3-ckpt, rev-qwen3, ft-opt.
    pub first_order: TrainSettings,
    /// SPSA methods: mezo-opt, dizo-opt.
    pub zeroth_order: TrainSettings,
    /// DiZO projection.
    pub dizo: DizoSettings,
}

/// Qwen3 vocabulary size (151,643 BPE tokens plus special tokens, padded as released).
pub const QWEN3_VOCAB: u32 = 151_936;
/// OPT vocabulary size (50,265 tokenizer entries padded to 50,272 as released).
pub const OPT_VOCAB: u32 = 50_272;

/// Names of the built-in presets, smallest first.
pub const SCALE_NAMES: [&str; 5] = ["tiny", "demo", "small", "medium", "large"];

fn qwen3(hidden: u32, inter: u32, layers: u32, heads: u32, kv: u32, head_dim: u32, theta: f64) -> Qwen3Arch {
    Qwen3Arch {
        vocab_size: QWEN3_VOCAB,
        hidden_size: hidden,
        intermediate_size: inter,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: kv,
        head_dim,
        max_position_embeddings: 2048,
        rope_theta: theta,
        rms_norm_eps: 1e-6,
        tie_word_embeddings: true,
        initializer_range: 0.02,
    }
}

fn opt(hidden: u32, ffn: u32, layers: u32, heads: u32, proj: u32, pre_ln: bool) -> OptArch {
    OptArch {
        vocab_size: OPT_VOCAB,
        hidden_size: hidden,
        ffn_dim: ffn,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        max_position_embeddings: 2048,
        word_embed_proj_dim: proj,
        do_layer_norm_before: pre_ln,
        init_std: 0.02,
    }
}

struct Steps {
    max_steps: u32,
    batch: u32,
    lr: f64,
    warmup: u32,
    eval_every: u32,
}

fn first_order(s: Steps) -> TrainSettings {
    TrainSettings {
        max_steps: s.max_steps,
        batch_size: s.batch,
        eval_batch_size: 64,
        learning_rate: s.lr,
        lr_schedule: LrSchedule::Linear,
        warmup_steps: s.warmup,
        weight_decay: 0.01,
        grad_clip: 1.0,
        adam_beta1: 0.9,
        adam_beta2: 0.999,
        adam_eps: 1e-8,
        zo_eps: 0.0,
        eval_every: s.eval_every,
        early_stopping_patience: 0,
        checkpoint_every: s.eval_every,
        precision: Precision::Fp32,
    }
}

fn zeroth_order(s: Steps, zo_eps: f64) -> TrainSettings {
    TrainSettings {
        max_steps: s.max_steps,
        batch_size: s.batch,
        eval_batch_size: 64,
        learning_rate: s.lr,
        lr_schedule: LrSchedule::Constant,
        warmup_steps: s.warmup,
        weight_decay: 0.0,
        grad_clip: 0.0,
        adam_beta1: 0.9,
        adam_beta2: 0.999,
        adam_eps: 1e-8,
        zo_eps,
        eval_every: s.eval_every,
        early_stopping_patience: 0,
        checkpoint_every: s.eval_every,
        precision: Precision::Fp32,
    }
}

/// The DiZO paper's settings (docs/zo_methods.md §2.3), which the GPU presets use as they are.
impl Default for DizoSettings {
    fn default() -> Self {
        DizoSettings {
            interval: 50,
            inner_iters: 10,
            eps_gamma: 0.1,
            step_gamma: 2.0,
            clip_tau: 0.2,
            anchors_on_host: false,
        }
    }
}

/// The built-in preset called `name`, or an error listing the known names.
pub fn preset(name: &str) -> Result<ScalePreset, Error> {
    let p = match name {
        "tiny" => ScalePreset {
            name: "tiny".into(),
            description: "seconds on a CPU: CI and smoke tests".into(),
            device_class: DeviceClass::Cpu,
            qwen3: qwen3(64, 192, 2, 4, 2, 16, 10_000.0),
            opt: opt(64, 256, 2, 4, 64, true),
            data: DataSettings { train_examples: 2000, dev_examples: 100, test_examples: 200, max_seq_len: 64 },
            first_order: first_order(Steps { max_steps: 40, batch: 16, lr: 1e-3, warmup: 4, eval_every: 20 }),
            zeroth_order: zeroth_order(Steps { max_steps: 40, batch: 16, lr: 1e-4, warmup: 0, eval_every: 20 }, 1e-3),
            dizo: DizoSettings { interval: 10, inner_iters: 2, ..DizoSettings::default() },
        },
        // The default run (`qsched submit --local` with no other flags): `tiny`'s shapes,
        // trained long enough on enough of SST-2 that the first-order methods leave the
        // majority class while the zeroth-order ones, from random weights, do not; short
        // enough for every method to run once in a few minutes on a 2-core CPU.
        "demo" => ScalePreset {
            name: "demo".into(),
            description: "the default run: every method once on SST-2 in minutes on a 2-core CPU".into(),
            device_class: DeviceClass::Cpu,
            qwen3: qwen3(64, 192, 2, 4, 2, 16, 10_000.0),
            opt: opt(64, 256, 2, 4, 64, true),
            data: DataSettings { train_examples: 8000, dev_examples: 500, test_examples: 0, max_seq_len: 64 },
            first_order: first_order(Steps { max_steps: 300, batch: 16, lr: 1e-3, warmup: 10, eval_every: 100 }),
            zeroth_order: zeroth_order(Steps { max_steps: 300, batch: 16, lr: 1e-4, warmup: 0, eval_every: 100 }, 1e-3),
            dizo: DizoSettings { interval: 10, inner_iters: 2, ..DizoSettings::default() },
        },
        "small" => ScalePreset {
            name: "small".into(),
            description: "minutes on a 2-core CPU: the from-scratch GLUE comparison".into(),
            device_class: DeviceClass::Cpu,
            qwen3: qwen3(128, 384, 2, 4, 2, 32, 10_000.0),
            opt: opt(128, 512, 2, 4, 128, true),
            data: DataSettings { train_examples: 0, dev_examples: 500, test_examples: 0, max_seq_len: 128 },
            first_order: first_order(Steps { max_steps: 2000, batch: 32, lr: 1e-3, warmup: 100, eval_every: 500 }),
            zeroth_order: zeroth_order(
                Steps { max_steps: 2000, batch: 16, lr: 1e-4, warmup: 0, eval_every: 500 },
                1e-3,
            ),
            dizo: DizoSettings { interval: 50, ..DizoSettings::default() },
        },
        "medium" => ScalePreset {
            name: "medium".into(),
            description: "one GPU: Qwen3 at 12 layers, OPT-350m shape (post-LN, project_in/out)".into(),
            device_class: DeviceClass::Cuda,
            qwen3: qwen3(768, 2048, 12, 12, 4, 64, 1_000_000.0),
            opt: opt(1024, 4096, 24, 16, 512, false),
            data: DataSettings { train_examples: 0, dev_examples: 500, test_examples: 0, max_seq_len: 256 },
            first_order: first_order(Steps { max_steps: 4000, batch: 32, lr: 3e-4, warmup: 200, eval_every: 500 }),
            zeroth_order: zeroth_order(
                Steps { max_steps: 10_000, batch: 16, lr: 1e-6, warmup: 0, eval_every: 1000 },
                1e-3,
            ),
            dizo: DizoSettings::default(),
        },
        "large" => ScalePreset {
            name: "large".into(),
            description: "one GPU: Qwen3-0.6B shape, OPT-1.3b shape".into(),
            device_class: DeviceClass::Cuda,
            qwen3: qwen3(1024, 3072, 28, 16, 8, 128, 1_000_000.0),
            opt: opt(2048, 8192, 24, 32, 2048, true),
            data: DataSettings { train_examples: 0, dev_examples: 500, test_examples: 0, max_seq_len: 256 },
            first_order: first_order(Steps { max_steps: 4000, batch: 16, lr: 1e-4, warmup: 200, eval_every: 500 }),
            zeroth_order: zeroth_order(
                Steps { max_steps: 20_000, batch: 16, lr: 1e-6, warmup: 0, eval_every: 4000 },
                1e-3,
            ),
            dizo: DizoSettings::default(),
        },
        other => {
            return Err(Error::invalid(
                "scale",
                format!("unknown scale '{other}'; known scales: {}", SCALE_NAMES.join(", ")),
            ));
        }
    };
    Ok(p)
}

/// All built-in presets, smallest first.
pub fn all_presets() -> Vec<ScalePreset> {
    SCALE_NAMES.iter().filter_map(|n| preset(n).ok()).collect()
}

impl Qwen3Arch {
    /// Parameter count of the classification model (backbone + score head, tied LM head
    /// not counted) for `num_labels` outputs.
    pub fn classifier_parameters(&self, num_labels: u64) -> u64 {
        let h = self.hidden_size as u64;
        let q = (self.num_attention_heads * self.head_dim) as u64;
        let kv = (self.num_key_value_heads * self.head_dim) as u64;
        let attn = h * q + 2 * h * kv + q * h + 2 * self.head_dim as u64;
        let mlp = 3 * h * self.intermediate_size as u64;
        let layer = attn + mlp + 2 * h;
        self.vocab_size as u64 * h + self.num_hidden_layers as u64 * layer + h + h * num_labels
    }

    /// Cross-field checks; called when a spec is resolved.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::invalid("qwen3 shape", m));
        for (field, value) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if value == 0 {
                return bad(format!("{field} must be positive"));
            }
        }
        for (field, value) in [("rope_theta", self.rope_theta), ("rms_norm_eps", self.rms_norm_eps)] {
            if !(value.is_finite() && value > 0.0) {
                return bad(format!("{field} {value} must be a positive finite number"));
            }
        }
        if !(self.initializer_range.is_finite() && self.initializer_range >= 0.0) {
            return bad(format!("initializer_range {} must be finite and not negative", self.initializer_range));
        }
        if self.num_key_value_heads == 0 || !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            return bad(format!(
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!("head_dim ({}) must be even for RoPE", self.head_dim));
        }
        Ok(())
    }
}

impl OptArch {
    /// Parameter count (tied LM head counted once).
    pub fn parameters(&self) -> u64 {
        let h = self.hidden_size as u64;
        let f = self.ffn_dim as u64;
        let e = self.word_embed_proj_dim as u64;
        let layer = 4 * (h * h + h) + 2 * (2 * h) + (h * f + f) + (f * h + h);
        let proj = if e != h { 2 * e * h } else { 0 };
        let final_ln = if self.do_layer_norm_before { 2 * h } else { 0 };
        self.vocab_size as u64 * e
            + (self.max_position_embeddings as u64 + 2) * h
            + self.num_hidden_layers as u64 * layer
            + proj
            + final_ln
    }

    /// Cross-field checks; called when a spec is resolved.
    pub fn validate(&self) -> Result<(), Error> {
        for (field, value) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("ffn_dim", self.ffn_dim),
            ("num_hidden_layers", self.num_hidden_layers),
            ("max_position_embeddings", self.max_position_embeddings),
            ("word_embed_proj_dim", self.word_embed_proj_dim),
        ] {
            if value == 0 {
                return Err(Error::invalid("opt shape", format!("{field} must be positive")));
            }
        }
        if !(self.init_std.is_finite() && self.init_std >= 0.0) {
            return Err(Error::invalid(
                "opt shape",
                format!("init_std {} must be finite and not negative", self.init_std),
            ));
        }
        if self.num_attention_heads == 0 || !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(Error::invalid(
                "opt shape",
                format!(
                    "hidden_size ({}) must be a multiple of num_attention_heads ({})",
                    self.hidden_size, self.num_attention_heads
                ),
            ));
        }
        if !self.do_layer_norm_before && self.word_embed_proj_dim == self.hidden_size {
            // HF OPT only pairs post-LN with the 350m projection layout; refuse guesses.
            return Err(Error::invalid(
                "opt shape",
                "do_layer_norm_before = false is only supported with word_embed_proj_dim != hidden_size (the opt-350m layout)",
            ));
        }
        Ok(())
    }
}

impl ScalePreset {
    /// Checks every cross-field constraint of the preset.
    pub fn validate(&self) -> Result<(), Error> {
        self.qwen3.validate()?;
        self.opt.validate()?;
        for (name, t) in [("first_order", &self.first_order), ("zeroth_order", &self.zeroth_order)] {
            if t.max_steps == 0 || t.batch_size == 0 || t.eval_batch_size == 0 {
                return Err(Error::invalid(name, "max_steps, batch_size and eval_batch_size must be positive"));
            }
            if !(t.learning_rate.is_finite() && t.learning_rate > 0.0) {
                return Err(Error::invalid(name, format!("learning_rate {} must be positive", t.learning_rate)));
            }
            for (field, value) in [("weight_decay", t.weight_decay), ("grad_clip", t.grad_clip)] {
                if !(value.is_finite() && value >= 0.0) {
                    return Err(Error::invalid(name, format!("{field} {value} must be finite and not negative")));
                }
            }
            for (field, value) in [("adam_beta1", t.adam_beta1), ("adam_beta2", t.adam_beta2)] {
                if !(0.0..1.0).contains(&value) {
                    return Err(Error::invalid(name, format!("{field} {value} must be in [0, 1)")));
                }
            }
            if !(t.adam_eps.is_finite() && t.adam_eps > 0.0) {
                return Err(Error::invalid(name, format!("adam_eps {} must be a positive finite number", t.adam_eps)));
            }
        }
        let eps = self.zeroth_order.zo_eps;
        if !(eps.is_finite() && eps > 0.0) {
            return Err(Error::invalid("zeroth_order.zo_eps", format!("{eps} must be a positive finite number")));
        }
        if self.data.dev_examples == 0 {
            return Err(Error::invalid(
                "data.dev_examples",
                "must be positive: the dev split selects the checkpoint (train_examples and test_examples take 0 for the whole split)",
            ));
        }
        if self.data.max_seq_len < 8 {
            return Err(Error::invalid("data.max_seq_len", "must be at least 8"));
        }
        if self.data.max_seq_len > self.qwen3.max_position_embeddings
            || self.data.max_seq_len > self.opt.max_position_embeddings
        {
            return Err(Error::invalid("data.max_seq_len", "exceeds max_position_embeddings"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_that_cannot_run_are_refused_with_their_reason() {
        let base = preset("tiny").unwrap();
        type Edit = Box<dyn Fn(&mut ScalePreset)>;
        let cases: Vec<(&str, Edit)> = vec![
            ("vocab_size must be positive", Box::new(|p| p.qwen3.vocab_size = 0)),
            ("rope_theta -1 must be a positive finite number", Box::new(|p| p.qwen3.rope_theta = -1.0)),
            ("rms_norm_eps NaN", Box::new(|p| p.qwen3.rms_norm_eps = f64::NAN)),
            ("ffn_dim must be positive", Box::new(|p| p.opt.ffn_dim = 0)),
            ("zo_eps", Box::new(|p| p.zeroth_order.zo_eps = f64::INFINITY)),
            ("adam_beta2 1 must be in [0, 1)", Box::new(|p| p.first_order.adam_beta2 = 1.0)),
            ("weight_decay -0.1", Box::new(|p| p.first_order.weight_decay = -0.1)),
            ("data.dev_examples", Box::new(|p| p.data.dev_examples = 0)),
        ];
        for (needle, edit) in cases {
            let mut p = base.clone();
            edit(&mut p);
            let err = p.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{needle}: {err}");
        }
        let mut whole = base.clone();
        whole.data.train_examples = 0;
        whole.data.test_examples = 0;
        whole.validate().expect("0 train/test examples means the whole split");
    }

    #[test]
    fn every_preset_is_valid() {
        for p in all_presets() {
            p.validate().unwrap_or_else(|e| panic!("{}: {e}", p.name));
        }
        assert_eq!(all_presets().len(), 5);
    }

    #[test]
    fn large_matches_released_shapes() {
        let large = preset("large").unwrap();
        // Qwen3-0.6B: 28 layers, 16 q heads, 8 kv heads, head_dim 128, hidden 1024.
        assert_eq!(large.qwen3.num_hidden_layers, 28);
        assert_eq!(large.qwen3.head_dim, 128);
        // 596,049,920 parameters in Qwen3-0.6B (tied): backbone without a head.
        let backbone = large.qwen3.classifier_parameters(0);
        assert_eq!(backbone, 596_049_920);
        // OPT-1.3b: 1,315,758,080 parameters.
        assert_eq!(large.opt.parameters(), 1_315_758_080);
        // OPT-350m layout at medium: 331,196,416 parameters.
        assert_eq!(preset("medium").unwrap().opt.parameters(), 331_196_416);
    }

    #[test]
    fn unknown_scale() {
        let err = preset("huge").unwrap_err().to_string();
        assert!(err.contains("unknown scale 'huge'") && err.contains("tiny, demo, small, medium, large"));
    }
}
