//! Building blocks shared by every architecture: the bias-optional linear layer with HF
//! initialisation, input checking (shapes, placement, vocabulary range, mask values), the
//! causal + padding attention mask, and small dtype helpers.
//!
//! Nothing here chooses a device: tensors are created on the device of the variables or
//! inputs they serve. Architecture-specific layers live in their own files.

use tch::{Device, Kind, Tensor, nn};

use crate::error::{Error, Result};

/// A linear layer `y = x Wᵀ (+ b)` with HF parameter names (`weight`, `bias`) and HF's
/// `_init_weights` initialisation (weight ~ N(0, std), bias = 0).
#[derive(Debug)]
pub(crate) struct Linear {
    pub(crate) weight: Tensor,
    pub(crate) bias: Option<Tensor>,
}

impl Linear {
    /// Registers `weight` `[out, in]` (and `bias` `[out]` when asked) under `p`.
    pub(crate) fn new(p: &nn::Path, in_dim: i64, out_dim: i64, bias: bool, std: f64) -> Result<Self> {
        let weight = p.f_var("weight", &[out_dim, in_dim], nn::Init::Randn { mean: 0.0, stdev: std })?;
        let bias = if bias { Some(p.f_zeros("bias", &[out_dim])?) } else { None };
        Ok(Linear { weight, bias })
    }

    pub(crate) fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(xs.f_linear(&self.weight, self.bias.as_ref())?)
    }

    /// Appends `prefix.weight` (and `prefix.bias`) in HF registration order.
    pub(crate) fn push_params(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        out.push((format!("{prefix}.weight"), self.weight.shallow_clone()));
        if let Some(b) = &self.bias {
            out.push((format!("{prefix}.bias"), b.shallow_clone()));
        }
    }
}

/// An embedding table `[num, dim]` initialised as HF does: N(0, std), with the
/// `padding_idx` row zeroed. `padding_idx` also stops gradients into that row, exactly
/// like `torch.nn.Embedding(padding_idx=...)`.
pub(crate) fn embedding_var(p: &nn::Path, num: i64, dim: i64, std: f64, padding_idx: Option<i64>) -> Result<Tensor> {
    let weight = p.f_var("weight", &[num, dim], nn::Init::Randn { mean: 0.0, stdev: std })?;
    if let Some(idx) = padding_idx
        && (0..num).contains(&idx)
    {
        tch::no_grad(|| -> Result<()> {
            let _ = weight.f_narrow(0, idx, 1)?.f_zero_()?;
            Ok(())
        })?;
    }
    Ok(weight)
}

/// `padding_idx` argument of `torch.embedding` (-1 = none).
pub(crate) fn padding_idx_arg(pad: Option<i64>, num: i64) -> i64 {
    match pad {
        Some(idx) if (0..num).contains(&idx) => idx,
        _ => -1,
    }
}

/// Token ids and attention mask after validation, both `Int64` `[B, T]` on the model's
/// device.
#[derive(Debug)]
pub(crate) struct CheckedInputs {
    pub(crate) ids: Tensor,
    pub(crate) mask: Tensor,
    /// True when every mask entry is 1 (no padding): attention can use the causal fast path.
    pub(crate) all_ones: bool,
    pub(crate) batch: i64,
    pub(crate) seq: i64,
}

fn is_integer(kind: Kind) -> bool {
    matches!(kind, Kind::Int64 | Kind::Int | Kind::Int16 | Kind::Int8 | Kind::Uint8)
}

/// Checks model inputs instead of letting libtorch fail deep inside (or, on CUDA, abort
/// with a device-side assert): 2-D integer ids, a 0/1 mask of the same shape, both on
/// `device`, every id inside `[0, vocab_size)`. Ids are never clamped.
pub(crate) fn check_inputs(ids: &Tensor, mask: &Tensor, vocab_size: i64, device: Device) -> Result<CheckedInputs> {
    let size = ids.size();
    if size.len() != 2 || size[0] < 1 || size[1] < 1 {
        return Err(Error::Inputs(format!("input_ids must be [batch, seq] with batch, seq ≥ 1, got {size:?}")));
    }
    if mask.size() != size {
        return Err(Error::Inputs(format!(
            "attention_mask shape {:?} differs from input_ids shape {size:?}",
            mask.size()
        )));
    }
    if !is_integer(ids.kind()) {
        return Err(Error::Inputs(format!("input_ids must be integer, got {:?}", ids.kind())));
    }
    if !(is_integer(mask.kind()) || mask.kind() == Kind::Bool || mask.is_floating_point()) {
        return Err(Error::Inputs(format!("attention_mask has unsupported kind {:?}", mask.kind())));
    }
    let misplaced: Vec<String> = [("input_ids", ids), ("attention_mask", mask)]
        .iter()
        .filter(|(_, t)| t.device() != device)
        .map(|(n, t)| format!("{n}@{:?}", t.device()))
        .collect();
    if !misplaced.is_empty() {
        return Err(Error::Placement {
            device: format!("{device:?}"),
            count: misplaced.len(),
            examples: misplaced.join(", "),
        });
    }
    let ids = ids.f_to_kind(Kind::Int64)?;
    let lo = ids.f_min()?.f_int64_value(&[])?;
    let hi = ids.f_max()?.f_int64_value(&[])?;
    if lo < 0 || hi >= vocab_size {
        let bad = if lo < 0 { lo } else { hi };
        return Err(Error::Tokenizer(format!("token id {bad} is outside the model vocabulary [0, {vocab_size})")));
    }
    let is_one = mask.f_eq(1)?;
    let is_zero = mask.f_eq(0)?;
    if is_one.f_logical_or(&is_zero)?.f_logical_not()?.f_any()?.f_int64_value(&[])? != 0 {
        return Err(Error::Inputs("attention_mask values must be 0 or 1".into()));
    }
    let all_ones = is_one.f_all()?.f_int64_value(&[])? != 0;
    let mask = is_one.f_to_kind(Kind::Int64)?;
    Ok(CheckedInputs { ids, mask, all_ones, batch: size[0], seq: size[1] })
}

/// The attention mask one forward pass shares across all layers.
#[derive(Debug)]
pub(crate) enum AttnMask {
    /// No padding: plain causal attention (`is_causal = true` fast path of SDPA).
    Causal,
    /// Boolean `[B, 1, T, T]`, true = may attend.
    Explicit(Tensor),
}

impl AttnMask {
    /// Causal mask combined with the key padding mask. A query row that would attend to
    /// nothing (a left-padding position: no real key at or before it) is allowed to attend
    /// to itself only, so SDPA never sees a fully masked row (which would give NaN or
    /// depend on the kernel). Such rows are padding; their outputs are don't-care but
    /// finite, and the mask stays causal everywhere.
    pub(crate) fn build(inputs: &CheckedInputs) -> Result<AttnMask> {
        if inputs.all_ones {
            return Ok(AttnMask::Causal);
        }
        let (b, t) = (inputs.batch, inputs.seq);
        let device = inputs.mask.device();
        // 1. causal [1, 1, T, T]: key j ≤ query i.
        let causal = Tensor::f_ones([t, t], (Kind::Bool, device))?.f_tril(0)?.f_view([1, 1, t, t])?;
        // 2. key padding [B, 1, 1, T].
        let keys = inputs.mask.f_ne(0)?.f_view([b, 1, 1, t])?;
        // 3. allowed [B, 1, T, T].
        let allowed = causal.f_logical_and(&keys)?;
        // 4. rows with nothing allowed attend to themselves.
        let empty_row = allowed.f_any_dim(-1, true)?.f_logical_not()?;
        let diag = Tensor::f_eye(t, (Kind::Bool, device))?.f_view([1, 1, t, t])?;
        Ok(AttnMask::Explicit(allowed.f_logical_or(&diag.f_logical_and(&empty_row)?)?))
    }
}

/// Runs SDPA with the shared mask. `q`, `k`, `v` are `[B, H, T, D]` (k, v already
/// expanded to the query heads).
pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &AttnMask,
    dropout: f64,
    scale: f64,
) -> Result<Tensor> {
    let t = q.size()[2];
    let out = match mask {
        // HF passes is_causal only for more than one query; with one query it is the same.
        AttnMask::Causal => {
            Tensor::f_scaled_dot_product_attention(q, k, v, None::<Tensor>, dropout, t > 1, scale, false)?
        }
        AttnMask::Explicit(m) => {
            Tensor::f_scaled_dot_product_attention(q, k, v, Some(m), dropout, false, scale, false)?
        }
    };
    Ok(out)
}

/// HF's pooling index for sequence classification, exactly as
/// `GenericForSequenceClassification` computes it: the rightmost position whose token is
/// not `pad_token_id` (`(arange(T) * (ids != pad)).argmax(-1)`; 0 for an all-pad row).
/// Works for left and right padding. Returns `Int64` `[B]`.
pub(crate) fn last_non_pad_index(ids: &Tensor, pad_token_id: i64) -> Result<Tensor> {
    let t = ids.size()[1];
    let non_pad = ids.f_ne(pad_token_id)?.f_to_kind(Kind::Int)?;
    let token_indices = Tensor::f_arange(t, (Kind::Int, ids.device()))?;
    Ok(token_indices.f_mul(&non_pad)?.f_argmax(-1, false)?)
}

/// Gathers `hidden[b, index[b], :]`: `[B, T, D]`, `[B]` → `[B, D]`.
pub(crate) fn gather_positions(hidden: &Tensor, index: &Tensor) -> Result<Tensor> {
    let (b, d) = (hidden.size()[0], hidden.size()[2]);
    let idx = index.f_view([b, 1, 1])?.f_expand([b, 1, d], false)?;
    Ok(hidden.f_gather(1, &idx, false)?.f_squeeze_dim(1)?)
}

/// The HF `dtype` / `torch_dtype` name of a floating kind.
pub fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Float => "float32",
        Kind::Half => "float16",
        Kind::BFloat16 => "bfloat16",
        Kind::Double => "float64",
        _ => "unsupported",
    }
}

/// Parses an HF `dtype` / `torch_dtype` value (`"float32"`, `"torch.bfloat16"`, ...).
pub(crate) fn kind_from_name(name: &str) -> Option<Kind> {
    match name.strip_prefix("torch.").unwrap_or(name) {
        "float32" | "float" => Some(Kind::Float),
        "float16" | "half" => Some(Kind::Half),
        "bfloat16" => Some(Kind::BFloat16),
        "float64" | "double" => Some(Kind::Double),
        _ => None,
    }
}

/// Kind used for normalisation statistics: HF upcasts half precision to fp32; fp32 and
/// fp64 stay as they are (HF would downcast fp64 to fp32, which only matters for our
/// fp64 gradient tests).
pub(crate) fn norm_compute_kind(kind: Kind) -> Kind {
    match kind {
        Kind::Half | Kind::BFloat16 => Kind::Float,
        k => k,
    }
}

/// Typed, field-named access to a Hugging Face `config.json` object. `null` reads as
/// absent (HF writes `null` for unset optional fields).
#[derive(Debug, Clone, Copy)]
pub(crate) struct HfFields<'a> {
    map: &'a serde_json::Map<String, serde_json::Value>,
}

impl<'a> HfFields<'a> {
    pub(crate) fn new(json: &'a serde_json::Value) -> Result<Self> {
        match json.as_object() {
            Some(map) => Ok(HfFields { map }),
            None => Err(Error::config("<root>", "config.json must be a JSON object")),
        }
    }

    /// The field's value unless absent or `null`.
    pub(crate) fn get(&self, name: &str) -> Option<&'a serde_json::Value> {
        self.map.get(name).filter(|v| !v.is_null())
    }

    pub(crate) fn int(&self, name: &str) -> Result<Option<i64>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => match v.as_i64() {
                Some(i) => Ok(Some(i)),
                // HF configs sometimes write integral floats (e.g. `1000000.0`) for ints.
                None => match v.as_f64() {
                    Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Some(f as i64)),
                    _ => Err(Error::config(name, format!("expected an integer, got {v}"))),
                },
            },
        }
    }

    pub(crate) fn req_int(&self, name: &str) -> Result<i64> {
        self.int(name)?.ok_or_else(|| Error::config(name, "required field is missing"))
    }

    pub(crate) fn float(&self, name: &str) -> Result<Option<f64>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| Error::config(name, format!("expected a number, got {v}"))),
        }
    }

    pub(crate) fn req_float(&self, name: &str) -> Result<f64> {
        self.float(name)?.ok_or_else(|| Error::config(name, "required field is missing"))
    }

    pub(crate) fn bool(&self, name: &str) -> Result<Option<bool>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => {
                v.as_bool().map(Some).ok_or_else(|| Error::config(name, format!("expected true or false, got {v}")))
            }
        }
    }

    pub(crate) fn str(&self, name: &str) -> Result<Option<&'a str>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| Error::config(name, format!("expected a string, got {v}"))),
        }
    }

    /// `eos_token_id`-style fields: an integer or a list of integers.
    pub(crate) fn token_ids(&self, name: &str) -> Result<Option<TokenIds>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => serde_json::from_value(v.clone())
                .map(Some)
                .map_err(|_| Error::config(name, format!("expected an integer or a list of integers, got {v}"))),
        }
    }

    /// An optional id: absent → `default` (the config class default, which 4.x does not
    /// write), `null` → none, integer → that id.
    pub(crate) fn int_or(&self, name: &str, default: Option<i64>) -> Result<Option<i64>> {
        if self.map.contains_key(name) { self.int(name) } else { Ok(default) }
    }

    /// Like [`HfFields::int_or`] for `eos_token_id`-style fields.
    pub(crate) fn token_ids_or(&self, name: &str, default: Option<TokenIds>) -> Result<Option<TokenIds>> {
        if self.map.contains_key(name) { self.token_ids(name) } else { Ok(default) }
    }

    /// Checks `model_type` when present.
    pub(crate) fn expect_model_type(&self, expected: &str) -> Result<()> {
        match self.str("model_type")? {
            Some(t) if t != expected => {
                Err(Error::config("model_type", format!("expected \"{expected}\", got \"{t}\"")))
            }
            _ => Ok(()),
        }
    }

    /// The declared storage dtype: `dtype` (transformers 5.x) or `torch_dtype` (4.x).
    /// Refuses anything that is not a float kind we can convert (e.g. quantized models).
    pub(crate) fn declared_dtype(&self) -> Result<Option<Kind>> {
        if let Some(q) = self.get("quantization_config") {
            return Err(Error::config("quantization_config", format!("quantized checkpoints are not supported ({q})")));
        }
        for name in ["dtype", "torch_dtype"] {
            if let Some(s) = self.str(name)? {
                // transformers writes "auto" only for configs that never held weights.
                if s == "auto" {
                    continue;
                }
                return kind_from_name(s)
                    .map(Some)
                    .ok_or_else(|| Error::config(name, format!("unsupported dtype \"{s}\"")));
            }
        }
        Ok(None)
    }
}

/// A token id field that HF allows as one id or a list (`eos_token_id`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    /// One id.
    One(i64),
    /// Several ids.
    Many(Vec<i64>),
}

/// Shorthand for a config error on a field when a condition fails.
pub(crate) fn ensure(cond: bool, field: &str, message: impl Into<String>) -> Result<()> {
    if cond { Ok(()) } else { Err(Error::config(field, message)) }
}

/// Accumulates `Jᵀ·grad` into every leaf `out` depends on (a vector–Jacobian product; the
/// recomputing backwards call it once per block). `grad` is cast to `out`'s kind.
pub(crate) fn vjp(out: &Tensor, grad: &Tensor) -> Result<()> {
    if grad.kind() == out.kind() {
        crate::ffi::backward_with_grad(out, grad)
    } else {
        crate::ffi::backward_with_grad(out, &grad.f_to_kind(out.kind())?)
    }
}

/// The gradient a leaf received, or zeros if the loss did not depend on it.
pub(crate) fn grad_or_zeros(leaf: &Tensor) -> Result<Tensor> {
    let g = leaf.f_grad()?;
    if g.defined() { Ok(g.f_detach()?) } else { Ok(leaf.f_zeros_like()?) }
}
