//! Hugging Face model directories: loading (`config.json` + `model.safetensors`, or a
//! sharded `model.safetensors.index.json` + shards) and saving (`config.json` +
//! `model.safetensors` that transformers 4.x and 5.x load, plus tokenizer files).
//!
//! Loading is strict: every model variable must come from the checkpoint with exactly
//! its shape, and every checkpoint tensor must be used, except a stored `lm_head.weight`
//! that duplicates the embedding of a tied model. fp32/fp16/bf16/fp64 tensors are
//! converted to the variables' kind on the variables' device. The architecture comes
//! from `architectures` in `config.json`.
//!
//! This module does not choose devices (the caller passes one) and does not tokenize.
//!
//! Length: loading and saving share the file names, dtype tables and architecture
//! dispatch, so they stay together; the tests are the last ~330 lines.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors, View};
use serde::Serialize;
use tch::{Device, Kind, Tensor, nn};

use super::common::{HfFields, kind_from_name, kind_name};
use super::{opt, qwen3, rev_qwen3};
use crate::error::{Error, Result};

/// Single-file weights.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Index of sharded weights.
pub const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";
/// Model config.
pub const CONFIG_FILE: &str = "config.json";
/// Tokenizer files copied by [`save_model_dir`] when present.
pub const TOKENIZER_FILES: [&str; 7] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
];

/// The architectures this crate loads (HF `architectures[0]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Architecture {
    /// `Qwen3ForCausalLM`.
    Qwen3ForCausalLM,
    /// `Qwen3ForSequenceClassification`.
    Qwen3ForSequenceClassification,
    /// `OPTForCausalLM`.
    #[serde(rename = "OPTForCausalLM")]
    OptForCausalLM,
    /// `RevQwen3ForCausalLM` (qsched only; `model_type = "rev_qwen3"`).
    RevQwen3ForCausalLM,
    /// `RevQwen3ForSequenceClassification` (qsched only; `model_type = "rev_qwen3"`).
    RevQwen3ForSequenceClassification,
}

const ALL_ARCHITECTURES: [Architecture; 5] = [
    Architecture::Qwen3ForCausalLM,
    Architecture::Qwen3ForSequenceClassification,
    Architecture::OptForCausalLM,
    Architecture::RevQwen3ForCausalLM,
    Architecture::RevQwen3ForSequenceClassification,
];

/// `model_type` of reversible Qwen3 checkpoints: not an HF type, so transformers
/// refuses them instead of loading them as plain Qwen3.
pub const REV_QWEN3_MODEL_TYPE: &str = "rev_qwen3";

impl Architecture {
    /// The HF class name.
    pub fn as_str(self) -> &'static str {
        match self {
            Architecture::Qwen3ForCausalLM => "Qwen3ForCausalLM",
            Architecture::Qwen3ForSequenceClassification => "Qwen3ForSequenceClassification",
            Architecture::OptForCausalLM => "OPTForCausalLM",
            Architecture::RevQwen3ForCausalLM => "RevQwen3ForCausalLM",
            Architecture::RevQwen3ForSequenceClassification => "RevQwen3ForSequenceClassification",
        }
    }

    /// Parses an HF class name.
    pub fn from_hf(name: &str) -> Option<Architecture> {
        ALL_ARCHITECTURES.into_iter().find(|a| a.as_str() == name)
    }

    /// The architecture named by a `config.json`.
    pub fn from_config(json: &serde_json::Value) -> Result<Architecture> {
        let list = HfFields::new(json)?.get("architectures").and_then(|v| v.as_array()).ok_or_else(|| {
            Error::config("architectures", "missing: cannot tell which model class the checkpoint holds")
        })?;
        let [one] = list.as_slice() else {
            return Err(Error::config("architectures", format!("expected exactly one entry, got {}", list.len())));
        };
        let name = one.as_str().unwrap_or_default();
        Architecture::from_hf(name).ok_or_else(|| {
            Error::config(
                "architectures",
                format!(
                    "unsupported architecture {one} (supported: {})",
                    ALL_ARCHITECTURES.map(Architecture::as_str).join(", ")
                ),
            )
        })
    }
}

/// A model that can be written as an HF checkpoint.
pub trait HfCheckpoint {
    /// HF class name written to `architectures`.
    fn architecture(&self) -> Architecture;
    /// `config.json` contents without `architectures` and `dtype` (added on save).
    fn hf_config(&self) -> serde_json::Value;
    /// Tensors to save, HF names, tied weights once.
    fn named_parameters(&self) -> Vec<(String, Tensor)>;
}

impl HfCheckpoint for qwen3::Qwen3ForCausalLM {
    fn architecture(&self) -> Architecture {
        Architecture::Qwen3ForCausalLM
    }
    fn hf_config(&self) -> serde_json::Value {
        self.config().to_hf_json()
    }
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        qwen3::Qwen3ForCausalLM::named_parameters(self)
    }
}

/// Adds the classification fields HF writes (`id2label`, `label2id`, `pad_token_id`).
fn with_labels(mut json: serde_json::Value, num_labels: i64, pad_token_id: i64) -> serde_json::Value {
    let id2label: BTreeMap<String, String> = (0..num_labels).map(|i| (i.to_string(), format!("LABEL_{i}"))).collect();
    let label2id: BTreeMap<String, i64> = (0..num_labels).map(|i| (format!("LABEL_{i}"), i)).collect();
    if let Some(map) = json.as_object_mut() {
        map.insert("id2label".into(), serde_json::json!(id2label));
        map.insert("label2id".into(), serde_json::json!(label2id));
        map.insert("pad_token_id".into(), serde_json::json!(pad_token_id));
    }
    json
}

/// Marks a Qwen3 config as reversible.
fn as_rev(mut json: serde_json::Value) -> serde_json::Value {
    if let Some(map) = json.as_object_mut() {
        map.insert("model_type".into(), serde_json::json!(REV_QWEN3_MODEL_TYPE));
    }
    json
}

impl HfCheckpoint for qwen3::Qwen3ForSequenceClassification {
    fn architecture(&self) -> Architecture {
        Architecture::Qwen3ForSequenceClassification
    }
    fn hf_config(&self) -> serde_json::Value {
        with_labels(self.config().to_hf_json(), self.num_labels(), self.pad_token_id())
    }
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        qwen3::Qwen3ForSequenceClassification::named_parameters(self)
    }
}

impl HfCheckpoint for opt::OptForCausalLM {
    fn architecture(&self) -> Architecture {
        Architecture::OptForCausalLM
    }
    fn hf_config(&self) -> serde_json::Value {
        self.config().to_hf_json()
    }
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        opt::OptForCausalLM::named_parameters(self)
    }
}

impl HfCheckpoint for rev_qwen3::RevQwen3ForCausalLM {
    fn architecture(&self) -> Architecture {
        Architecture::RevQwen3ForCausalLM
    }
    fn hf_config(&self) -> serde_json::Value {
        as_rev(self.config().to_hf_json())
    }
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        rev_qwen3::RevQwen3ForCausalLM::named_parameters(self)
    }
}

impl HfCheckpoint for rev_qwen3::RevQwen3ForSequenceClassification {
    fn architecture(&self) -> Architecture {
        Architecture::RevQwen3ForSequenceClassification
    }
    fn hf_config(&self) -> serde_json::Value {
        as_rev(with_labels(self.config().to_hf_json(), self.num_labels(), self.pad_token_id()))
    }
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        rev_qwen3::RevQwen3ForSequenceClassification::named_parameters(self)
    }
}

/// A model built from a checkpoint directory.
#[derive(Debug)]
pub enum LoadedModel {
    /// Qwen3 causal LM.
    Qwen3Lm(qwen3::Qwen3ForCausalLM),
    /// Qwen3 sequence classification (or regression with one label).
    Qwen3Cls(qwen3::Qwen3ForSequenceClassification),
    /// OPT causal LM.
    OptLm(opt::OptForCausalLM),
    /// Reversible Qwen3 causal LM.
    RevQwen3Lm(rev_qwen3::RevQwen3ForCausalLM),
    /// Reversible Qwen3 sequence classification.
    RevQwen3Cls(rev_qwen3::RevQwen3ForSequenceClassification),
}

impl LoadedModel {
    /// Evaluation logits: `[B, T, vocab]` for a causal LM, `[B, num_labels]` for
    /// sequence classification.
    pub fn logits(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        match self {
            LoadedModel::Qwen3Lm(m) => m.forward(input_ids, attention_mask),
            LoadedModel::Qwen3Cls(m) => m.forward(input_ids, attention_mask),
            LoadedModel::OptLm(m) => m.forward(input_ids, attention_mask),
            LoadedModel::RevQwen3Lm(m) => m.forward(input_ids, attention_mask),
            LoadedModel::RevQwen3Cls(m) => m.forward(input_ids, attention_mask),
        }
    }

    /// Rows of the token embedding (valid ids are `0..vocab_size`).
    pub fn vocab_size(&self) -> i64 {
        match self {
            LoadedModel::Qwen3Lm(m) => m.config().vocab_size,
            LoadedModel::Qwen3Cls(m) => m.config().vocab_size,
            LoadedModel::OptLm(m) => m.config().vocab_size,
            LoadedModel::RevQwen3Lm(m) => m.config().vocab_size,
            LoadedModel::RevQwen3Cls(m) => m.config().vocab_size,
        }
    }

    fn as_checkpoint(&self) -> &dyn HfCheckpoint {
        match self {
            LoadedModel::Qwen3Lm(m) => m,
            LoadedModel::Qwen3Cls(m) => m,
            LoadedModel::OptLm(m) => m,
            LoadedModel::RevQwen3Lm(m) => m,
            LoadedModel::RevQwen3Cls(m) => m,
        }
    }
}

impl HfCheckpoint for LoadedModel {
    fn architecture(&self) -> Architecture {
        self.as_checkpoint().architecture()
    }
    fn hf_config(&self) -> serde_json::Value {
        self.as_checkpoint().hf_config()
    }
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        self.as_checkpoint().named_parameters()
    }
}

/// What [`load_model_dir`] found.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    /// HF architecture.
    pub architecture: Architecture,
    /// The resolved config (every default applied), HF names.
    pub config: serde_json::Value,
    /// Classification outputs (sequence classification only).
    pub num_labels: Option<i64>,
    /// Number of trainable scalars (tied weights once).
    pub parameter_count: i64,
    /// dtype(s) of the stored tensors, e.g. `"bfloat16"` (comma-separated if mixed).
    pub stored_dtype: String,
    /// `dtype` / `torch_dtype` declared in config.json, if any.
    pub declared_dtype: Option<String>,
    /// Kind of the model's variables after loading (tensors are converted to it).
    pub variable_dtype: String,
}

/// Reads and parses `dir/config.json`.
pub fn read_config(dir: &Path) -> Result<serde_json::Value> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::Checkpoint { path: path.clone(), message: format!("config.json is not valid JSON: {e}") })
}

/// Number of labels of a sequence-classification config: `num_labels`, else the size
/// of `id2label`, else HF's default of 2.
fn num_labels_of(json: &serde_json::Value) -> Result<i64> {
    let f = HfFields::new(json)?;
    if let Some(n) = f.int("num_labels")? {
        return Ok(n);
    }
    match f.get("id2label") {
        Some(v) => v.as_object().map(|m| m.len() as i64).ok_or_else(|| Error::config("id2label", "expected an object")),
        None => Ok(2),
    }
}

/// Builds the model a checkpoint directory describes on `device` and loads its weights
/// (strictly; see [`load_weights`]). Variables are fp32 whatever the stored dtype.
pub fn load_model_dir(dir: &Path, device: Device) -> Result<(nn::VarStore, LoadedModel, ModelInfo)> {
    let json = read_config(dir)?;
    let architecture = Architecture::from_config(&json)?;
    let declared = HfFields::new(&json)?.declared_dtype()?.map(|k| kind_name(k).to_owned());
    let vs = nn::VarStore::new(device);
    let root = vs.root();
    let (model, config, num_labels) = match architecture {
        Architecture::Qwen3ForCausalLM => {
            let cfg = qwen3::Config::from_hf_json(&json)?;
            let m = qwen3::Qwen3ForCausalLM::new(&root, &cfg)?;
            (LoadedModel::Qwen3Lm(m), to_json(&cfg)?, None)
        }
        Architecture::Qwen3ForSequenceClassification => {
            let cfg = qwen3::Config::from_hf_json(&json)?;
            let (n, pad) = (num_labels_of(&json)?, classification_pad(&cfg)?);
            let m = qwen3::Qwen3ForSequenceClassification::new(&root, &cfg, n, pad)?;
            (LoadedModel::Qwen3Cls(m), to_json(&cfg)?, Some(n))
        }
        Architecture::RevQwen3ForCausalLM => {
            let cfg = qwen3::Config::from_hf_json_as(&json, REV_QWEN3_MODEL_TYPE)?;
            let m = rev_qwen3::RevQwen3ForCausalLM::new(&root, &cfg)?;
            (LoadedModel::RevQwen3Lm(m), to_json(&cfg)?, None)
        }
        Architecture::RevQwen3ForSequenceClassification => {
            let cfg = qwen3::Config::from_hf_json_as(&json, REV_QWEN3_MODEL_TYPE)?;
            let (n, pad) = (num_labels_of(&json)?, classification_pad(&cfg)?);
            let m = rev_qwen3::RevQwen3ForSequenceClassification::new(&root, &cfg, n, pad)?;
            (LoadedModel::RevQwen3Cls(m), to_json(&cfg)?, Some(n))
        }
        Architecture::OptForCausalLM => {
            let cfg = opt::Config::from_hf_json(&json)?;
            let m = opt::OptForCausalLM::new(&root, &cfg)?;
            (LoadedModel::OptLm(m), to_json(&cfg)?, None)
        }
    };
    let report = load_weights(&vs, dir)?;
    let parameter_count = model.named_parameters().iter().map(|(_, t)| t.numel() as i64).sum();
    let info = ModelInfo {
        architecture,
        config,
        num_labels,
        parameter_count,
        stored_dtype: report.stored_dtypes.iter().cloned().collect::<Vec<_>>().join(","),
        declared_dtype: declared,
        variable_dtype: kind_name(vs.kind()).to_owned(),
    };
    Ok((vs, model, info))
}

fn classification_pad(cfg: &qwen3::Config) -> Result<i64> {
    cfg.pad_token_id
        .ok_or_else(|| Error::config("pad_token_id", "sequence classification needs it to find each row's last token"))
}

fn to_json<T: Serialize>(value: &T) -> Result<serde_json::Value> {
    serde_json::to_value(value).map_err(|e| Error::Serialise { what: "config.json", message: e.to_string() })
}

/// Relaxations of [`load_weights`]'s strictness, by exact tensor name.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Model variables that may be absent from the checkpoint; they keep their initial
    /// values (e.g. `score.weight` when starting a classifier from a causal-LM checkpoint).
    pub allow_missing: Vec<String>,
    /// Checkpoint tensors to skip (e.g. `lm_head.weight` in that same case).
    pub ignore_unexpected: Vec<String>,
}

/// What [`load_weights`] did.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Variables filled from the checkpoint.
    pub loaded: usize,
    /// dtypes of the stored tensors (`"float32"`, `"bfloat16"`, ...).
    pub stored_dtypes: BTreeSet<String>,
    /// Variables left at their initial values (listed in `allow_missing`).
    pub kept_initial: Vec<String>,
    /// Checkpoint tensors skipped (listed in `ignore_unexpected`, or a tied duplicate).
    pub skipped: Vec<String>,
}

/// Strictly loads the weights of `dir` into `vs` (see [`load_weights_with`]).
pub fn load_weights(vs: &nn::VarStore, dir: &Path) -> Result<LoadReport> {
    load_weights_with(vs, dir, &LoadOptions::default())
}

/// Names of the embedding a tied `lm_head.weight` duplicates.
const TIED_EMBEDDINGS: [&str; 2] = ["model.embed_tokens.weight", "model.decoder.embed_tokens.weight"];
const LM_HEAD: &str = "lm_head.weight";

/// Loads the weights of a checkpoint directory into the variables of `vs`, converting
/// dtype and moving to the variables' device.
///
/// Errors (naming the tensor): a variable with no checkpoint tensor, a checkpoint tensor
/// with no variable, a shape mismatch, a non-float dtype, a tensor in two shards, an
/// index entry whose shard lacks it. Accepted quietly as HF does: a checkpoint saved from
/// the bare backbone (keys without the `model.` prefix), and `lm_head.weight` in a
/// checkpoint of a tied model when it equals the embedding (or stands in for a missing
/// embedding).
pub fn load_weights_with(vs: &nn::VarStore, dir: &Path, opts: &LoadOptions) -> Result<LoadReport> {
    let shards = weight_files(dir)?;
    let mut vars = vs.variables();
    let var_names: HashSet<String> = vars.keys().cloned().collect();
    let err = |path: &Path, message: String| Error::Checkpoint { path: path.to_path_buf(), message };

    // Pass 1: headers only, to decide the key mapping before touching any variable.
    let mut stored_names: Vec<String> = Vec::new();
    for (file, expected) in &shards {
        let names = header_names(file)?;
        if let Some(expected) = expected
            && let Some(missing) = expected.iter().find(|n| !names.contains(*n))
        {
            return Err(err(file, format!("the index maps `{missing}` to this shard, which lacks it")));
        }
        stored_names.extend(names);
    }
    // A backbone-only checkpoint (HF `Qwen3Model`/`OPTModel`) has no `model.` prefix.
    let add_prefix =
        !stored_names.iter().any(|n| n.starts_with("model.")) && var_names.iter().any(|n| n.starts_with("model."));
    let map_name = |n: &str| {
        if add_prefix && n != LM_HEAD && !var_names.contains(n) { format!("model.{n}") } else { n.to_owned() }
    };

    let mut report = LoadReport::default();
    let mut seen: HashSet<String> = HashSet::new();
    let mut unexpected: Vec<String> = Vec::new();
    let mut tied_head: Option<(PathBuf, Tensor)> = None;
    for (file, _) in &shards {
        let bytes = std::fs::read(file).map_err(|e| Error::io(file, e))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| err(file, format!("not a safetensors file: {e}")))?;
        for (stored, view) in st.iter() {
            let name = map_name(stored);
            if !seen.insert(name.clone()) {
                return Err(err(file, format!("tensor `{stored}` is stored twice")));
            }
            let tensor = view_to_tensor(&view).map_err(|m| err(file, format!("tensor `{stored}`: {m}")))?;
            report.stored_dtypes.insert(kind_name(tensor.kind()).to_owned());
            if opts.ignore_unexpected.iter().any(|n| n == stored || *n == name) {
                report.skipped.push(stored.to_owned());
                continue;
            }
            match vars.get_mut(&name) {
                Some(var) => {
                    copy_into(var, &tensor).map_err(|m| err(file, format!("tensor `{stored}`: {m}")))?;
                    report.loaded += 1;
                }
                None if name == LM_HEAD => tied_head = Some((file.clone(), tensor)),
                None => unexpected.push(stored.to_owned()),
            }
        }
    }

    // A stored lm_head.weight without an lm_head variable: the model is tied. Accept it
    // if it equals the embedding, or use it as the embedding if that is absent.
    if let Some((file, head)) = tied_head {
        let embed = TIED_EMBEDDINGS.iter().find(|n| var_names.contains(**n));
        match embed {
            Some(embed) if !seen.contains(*embed) => {
                if let Some(var) = vars.get_mut(*embed) {
                    copy_into(var, &head).map_err(|m| err(&file, format!("tensor `{LM_HEAD}` (tied): {m}")))?;
                    seen.insert((*embed).to_owned());
                    report.loaded += 1;
                    report.skipped.push(format!("{LM_HEAD} (loaded as tied {embed})"));
                }
            }
            Some(embed) => {
                let same = vars.get(*embed).map(|v| equal_after_cast(v, &head)).transpose()?.unwrap_or(false);
                if same {
                    report.skipped.push(format!("{LM_HEAD} (tied duplicate of {embed})"));
                } else {
                    unexpected.push(format!(
                        "{LM_HEAD} (differs from the tied {embed}; the config says tie_word_embeddings)"
                    ));
                }
            }
            None => unexpected.push(LM_HEAD.to_owned()),
        }
    }

    let mut missing: Vec<String> = Vec::new();
    let mut names: Vec<&String> = var_names.iter().collect();
    names.sort();
    for name in names {
        if seen.contains(name) {
            continue;
        }
        if opts.allow_missing.iter().any(|n| n == name) {
            report.kept_initial.push(name.clone());
        } else {
            missing.push(name.clone());
        }
    }
    if !missing.is_empty() {
        return Err(err(
            dir,
            format!("{} model tensor(s) missing from the checkpoint: {}", missing.len(), preview(&missing)),
        ));
    }
    if !unexpected.is_empty() {
        unexpected.sort();
        return Err(err(
            dir,
            format!("{} unexpected checkpoint tensor(s): {}", unexpected.len(), preview(&unexpected)),
        ));
    }
    Ok(report)
}

fn preview(names: &[String]) -> String {
    let mut s = names.iter().take(8).map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
    if names.len() > 8 {
        s.push_str(&format!(", … ({} more)", names.len() - 8));
    }
    s
}

/// The weight files of a directory, each with the tensor names the index assigns to it
/// (`None` for the single-file layout).
fn weight_files(dir: &Path) -> Result<Vec<(PathBuf, Option<BTreeSet<String>>)>> {
    let single = dir.join(WEIGHTS_FILE);
    if single.is_file() {
        return Ok(vec![(single, None)]);
    }
    let index = dir.join(WEIGHTS_INDEX_FILE);
    if !index.is_file() {
        let hint = if dir.join("pytorch_model.bin").exists() {
            " (pytorch_model.bin is not supported; convert to safetensors)"
        } else {
            ""
        };
        return Err(Error::Checkpoint {
            path: dir.to_path_buf(),
            message: format!("no {WEIGHTS_FILE} or {WEIGHTS_INDEX_FILE}{hint}"),
        });
    }
    let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::Checkpoint { path: index.clone(), message: format!("not valid JSON: {e}") })?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::Checkpoint { path: index.clone(), message: "no `weight_map` object".into() })?;
    let mut by_file: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| Error::Checkpoint {
            path: index.clone(),
            message: format!("weight_map entry for `{tensor}` is not a file name"),
        })?;
        // Shards must sit in the directory itself.
        if file.contains('/') || file.contains('\\') || file.starts_with('.') {
            return Err(Error::Checkpoint {
                path: index.clone(),
                message: format!("shard name `{file}` is not a plain file name"),
            });
        }
        by_file.entry(file.to_owned()).or_default().insert(tensor.clone());
    }
    if by_file.is_empty() {
        return Err(Error::Checkpoint { path: index, message: "weight_map is empty".into() });
    }
    Ok(by_file.into_iter().map(|(file, names)| (dir.join(file), Some(names))).collect())
}

/// Tensor names in a safetensors file, read from its header only (the first 8 bytes
/// give the header length, then a JSON object keyed by tensor name).
fn header_names(file: &Path) -> Result<BTreeSet<String>> {
    use std::io::Read;
    /// Header sizes beyond this are not safetensors files (the format caps it at 100 MB).
    const MAX_HEADER: u64 = 100_000_000;
    let bad = |message: String| Error::Checkpoint { path: file.to_path_buf(), message };
    let mut f = std::fs::File::open(file).map_err(|e| Error::io(file, e))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER {
        return Err(bad(format!("not a safetensors file: header of {n} bytes")));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let json: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| bad(format!("not a safetensors file: header: {e}")))?;
    let map = json.as_object().ok_or_else(|| bad("not a safetensors file: header is not an object".into()))?;
    Ok(map.keys().filter(|k| *k != "__metadata__").cloned().collect())
}

/// A safetensors view as a CPU tensor of its stored kind (float kinds only).
fn view_to_tensor(view: &safetensors::tensor::TensorView<'_>) -> std::result::Result<Tensor, String> {
    let kind = match view.dtype() {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        other => return Err(format!("unsupported stored dtype {other:?} (expected F32, F16, BF16 or F64)")),
    };
    let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
    Tensor::f_from_data_size(view.data(), &shape, kind).map_err(|e| e.to_string())
}

/// Copies `src` into `var` after an exact shape check (`copy_` would broadcast).
fn copy_into(var: &mut Tensor, src: &Tensor) -> std::result::Result<(), String> {
    if var.size() != src.size() {
        return Err(format!("checkpoint shape {:?} but the model expects {:?}", src.size(), var.size()));
    }
    tch::no_grad(|| var.f_copy_(src)).map_err(|e| e.to_string())
}

fn equal_after_cast(var: &Tensor, stored: &Tensor) -> Result<bool> {
    if var.size() != stored.size() {
        return Ok(false);
    }
    let stored = stored.f_to_device(var.device())?.f_to_kind(var.kind())?;
    Ok(tch::no_grad(|| var.f_equal(&stored))?)
}

/// A tensor presented to the safetensors writer; bytes are copied out one tensor at a
/// time, so saving never holds a second copy of the whole model.
struct SaveView<'a> {
    tensor: &'a Tensor,
    dtype: Dtype,
    shape: Vec<usize>,
    failure: &'a RefCell<Option<String>>,
}

impl View for SaveView<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        let mut buf = vec![0u8; self.data_len()];
        if let Err(e) = self.tensor.f_copy_data_u8(&mut buf, self.tensor.numel()) {
            // View::data cannot fail; remember the error and fail the save afterwards.
            *self.failure.borrow_mut() = Some(e.to_string());
        }
        buf.into()
    }
    fn data_len(&self) -> usize {
        self.tensor.numel() * self.tensor.kind().elt_size_in_bytes()
    }
}

/// Writes `dir/config.json` and `dir/model.safetensors` (HF names, metadata
/// `format = pt`, tied weights once as transformers saves them, dtype = the variables'
/// kind, written as both `dtype` and `torch_dtype`) so that transformers 4.x and 5.x load
/// the directory and compute the same logits. Copies known tokenizer files from
/// `tokenizer_dir` when given. Files are written to a temporary name and renamed, so an
/// interrupted save never leaves a truncated checkpoint under the final name.
pub fn save_model_dir(dir: &Path, model: &dyn HfCheckpoint, tokenizer_dir: Option<&Path>) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    if dir.join(WEIGHTS_INDEX_FILE).exists() {
        return Err(Error::Checkpoint {
            path: dir.to_path_buf(),
            message: format!("holds a sharded checkpoint ({WEIGHTS_INDEX_FILE}); refusing to mix layouts"),
        });
    }
    let params = model.named_parameters();
    let kinds: BTreeSet<&'static str> = params.iter().map(|(_, t)| kind_name(t.kind())).collect();
    let dtype = match kinds.iter().collect::<Vec<_>>().as_slice() {
        [one] if kind_from_name(one).is_some() => (*one).to_owned(),
        _ => {
            return Err(Error::Checkpoint {
                path: dir.to_path_buf(),
                message: format!("cannot save parameters of kinds {kinds:?}; expected one float kind"),
            });
        }
    };

    // 1. config.json
    let mut config = model.hf_config();
    if let Some(map) = config.as_object_mut() {
        map.insert("architectures".into(), serde_json::json!([model.architecture().as_str()]));
        map.insert("dtype".into(), serde_json::json!(dtype));
        map.insert("torch_dtype".into(), serde_json::json!(dtype));
    }
    let text = serde_json::to_string_pretty(&config)
        .map_err(|e| Error::Serialise { what: "config.json", message: e.to_string() })?;
    write_atomically(&dir.join(CONFIG_FILE), |tmp| {
        std::fs::write(tmp, text.as_bytes()).map_err(|e| Error::io(tmp, e))
    })?;

    // 2. model.safetensors
    let contiguous: Vec<(String, Tensor)> =
        params.into_iter().map(|(n, t)| Ok((n, t.f_detach()?.f_contiguous()?))).collect::<Result<_>>()?;
    let failure = RefCell::new(None);
    let views = contiguous
        .iter()
        .map(|(n, t)| {
            let dtype = match t.kind() {
                Kind::Float => Dtype::F32,
                Kind::Half => Dtype::F16,
                Kind::BFloat16 => Dtype::BF16,
                Kind::Double => Dtype::F64,
                k => {
                    return Err(Error::Checkpoint {
                        path: dir.to_path_buf(),
                        message: format!("tensor `{n}` has kind {k:?}, expected a float kind"),
                    });
                }
            };
            let shape = t.size().iter().map(|&d| d as usize).collect();
            Ok((n.clone(), SaveView { tensor: t, dtype, shape, failure: &failure }))
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata = HashMap::from([("format".to_owned(), "pt".to_owned())]);
    write_atomically(&dir.join(WEIGHTS_FILE), |tmp| {
        safetensors::serialize_to_file(views, Some(metadata), tmp)
            .map_err(|e| Error::Checkpoint { path: tmp.to_path_buf(), message: e.to_string() })?;
        match failure.borrow_mut().take() {
            Some(message) => Err(Error::Checkpoint { path: tmp.to_path_buf(), message }),
            None => Ok(()),
        }
    })?;

    // 3. tokenizer files
    if let Some(tok) = tokenizer_dir {
        let mut copied = 0;
        for name in TOKENIZER_FILES {
            let src = tok.join(name);
            if src.is_file() {
                let dst = dir.join(name);
                std::fs::copy(&src, &dst).map_err(|e| Error::io(&dst, e))?;
                copied += 1;
            }
        }
        if copied == 0 {
            return Err(Error::Tokenizer(format!(
                "{} holds none of the tokenizer files {TOKENIZER_FILES:?}",
                tok.display()
            )));
        }
    }
    Ok(())
}

/// Runs `write` on `path.tmp`, then renames it to `path`; removes the temporary on error.
fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    if let Err(e) = write(&tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect;
    use crate::parity_tests::{TOL, fixture_dir, max_diff};
    use crate::test_util::{randomize, rng_guard, rows, tiny_opt, tiny_qwen3};

    /// Right-, un- and left-padded rows (Qwen3) / left-padded and full rows (OPT).
    fn qwen3_batch() -> (Tensor, Tensor) {
        (
            rows(&[&[5, 9, 13, 2, 40, 0, 0], &[3, 8, 60, 11, 7, 1, 9], &[0, 0, 0, 17, 4, 33, 51]]),
            rows(&[&[1, 1, 1, 1, 1, 0, 0], &[1, 1, 1, 1, 1, 1, 1], &[0, 0, 0, 1, 1, 1, 1]]),
        )
    }

    fn opt_batch() -> (Tensor, Tensor) {
        (rows(&[&[1, 1, 2, 9, 13, 20], &[2, 8, 60, 11, 7, 9]]), rows(&[&[0, 0, 1, 1, 1, 1], &[1, 1, 1, 1, 1, 1]]))
    }

    fn write_tokens(path: &Path, ids: &Tensor, mask: &Tensor) {
        let ids: Vec<Vec<i64>> = Vec::try_from(ids).unwrap();
        let mask: Vec<Vec<i64>> = Vec::try_from(mask).unwrap();
        std::fs::write(path, serde_json::json!({"input_ids": ids, "attention_mask": mask}).to_string()).unwrap();
    }

    /// Saves `model`, reloads it, checks logits are identical, and runs `inspect` on the
    /// saved directory (its output becomes `qsched_logits.json` for check_saved.py).
    fn round_trip(dir: &Path, model: &dyn HfCheckpoint, logits: Tensor, ids: &Tensor, mask: &Tensor) {
        save_model_dir(dir, model, None).unwrap();
        let (_vs, loaded, info) = load_model_dir(dir, Device::Cpu).unwrap();
        assert_eq!(info.architecture, model.architecture());
        assert_eq!(info.stored_dtype, "float32");
        let again = tch::no_grad(|| loaded.logits(ids, mask)).unwrap();
        assert!(again.equal(&logits), "{}: reloaded logits differ", dir.display());
        // Same names and values, in the same order.
        let (a, b) = (model.named_parameters(), loaded.named_parameters());
        assert_eq!(a.len(), b.len());
        assert!(a.iter().zip(&b).all(|((na, ta), (nb, tb))| na == nb && ta.equal(tb)));

        write_tokens(&dir.join("tokens.json"), ids, mask);
        let mut out = Vec::new();
        inspect::run(dir, Some(&dir.join("tokens.json")), Device::Cpu, &mut out).unwrap();
        std::fs::write(dir.join("qsched_logits.json"), &out).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let printed: Vec<f32> =
            json["logits"].to_string().replace(['[', ']'], " ").split(',').map(|s| s.trim().parse().unwrap()).collect();
        let printed = Tensor::from_slice(&printed).view(logits.size().as_slice());
        assert!(printed.equal(&logits.to_kind(Kind::Float)), "inspect printed different logits");
    }

    /// Set QSCHED_SAVE_CHECK_DIR=/some/dir to keep the checkpoints for
    /// `ops/parity/check_saved.py DIR/<name> DIR/<name>/tokens.json`.
    #[test]
    fn saved_checkpoints_reload_with_identical_logits() {
        let _rng = rng_guard();
        let tmp = tempfile::tempdir().unwrap();
        let keep = std::env::var_os("QSCHED_SAVE_CHECK_DIR").map(PathBuf::from);
        let root = keep.unwrap_or_else(|| tmp.path().to_path_buf());
        let (qi, qm) = qwen3_batch();
        let (oi, om) = opt_batch();

        let vs = nn::VarStore::new(Device::Cpu);
        let m = qwen3::Qwen3ForCausalLM::new(&vs.root(), &tiny_qwen3(true)).unwrap();
        randomize(&m.named_parameters(), 21);
        round_trip(&root.join("qwen3_lm_tied"), &m, m.forward(&qi, &qm).unwrap(), &qi, &qm);

        let vs = nn::VarStore::new(Device::Cpu);
        let m = qwen3::Qwen3ForSequenceClassification::new(&vs.root(), &tiny_qwen3(false), 3, 0).unwrap();
        randomize(&m.named_parameters(), 22);
        round_trip(&root.join("qwen3_cls"), &m, m.forward(&qi, &qm).unwrap(), &qi, &qm);

        for (name, pre_ln) in [("opt_preln", true), ("opt_postln_proj", false)] {
            let vs = nn::VarStore::new(Device::Cpu);
            let m = opt::OptForCausalLM::new(&vs.root(), &tiny_opt(pre_ln)).unwrap();
            randomize(&m.named_parameters(), 23);
            round_trip(&root.join(name), &m, m.forward(&oi, &om).unwrap(), &oi, &om);
        }

        // Reversible models are qsched-only: they round-trip here but are not for transformers.
        let vs = nn::VarStore::new(Device::Cpu);
        let m = rev_qwen3::RevQwen3ForSequenceClassification::new(&vs.root(), &tiny_qwen3(true), 2, 0).unwrap();
        randomize(&m.named_parameters(), 24);
        let dir = tmp.path().join("rev_cls");
        round_trip(&dir, &m, m.forward(&qi, &qm).unwrap(), &qi, &qm);
        assert_eq!(read_config(&dir).unwrap()["model_type"], REV_QWEN3_MODEL_TYPE);
        let vs = nn::VarStore::new(Device::Cpu);
        let m = rev_qwen3::RevQwen3ForCausalLM::new(&vs.root(), &tiny_qwen3(false)).unwrap();
        randomize(&m.named_parameters(), 25);
        round_trip(&tmp.path().join("rev_lm"), &m, m.forward(&qi, &qm).unwrap(), &qi, &qm);
    }

    /// A saved tiny tied Qwen3 LM in a fresh directory.
    fn saved_qwen3(tied: bool) -> (tempfile::TempDir, nn::VarStore, qwen3::Qwen3ForCausalLM) {
        let dir = tempfile::tempdir().unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        let m = qwen3::Qwen3ForCausalLM::new(&vs.root(), &tiny_qwen3(tied)).unwrap();
        randomize(&m.named_parameters(), 26);
        save_model_dir(dir.path(), &m, None).unwrap();
        (dir, vs, m)
    }

    /// Rewrites `dir/model.safetensors` through `edit`.
    fn edit_weights(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) {
        let path = dir.join(WEIGHTS_FILE);
        let mut tensors = Tensor::read_safetensors(&path).unwrap();
        edit(&mut tensors);
        Tensor::write_safetensors(&tensors, &path).unwrap();
    }

    fn load_err(dir: &Path) -> String {
        match load_model_dir(dir, Device::Cpu) {
            Ok(_) => panic!("{} loaded", dir.display()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn loading_is_strict_and_names_the_tensor() {
        let _rng = rng_guard();
        let (dir, _vs, _m) = saved_qwen3(false);
        let p = dir.path();
        let original = std::fs::read(p.join(WEIGHTS_FILE)).unwrap();
        let restore = || std::fs::write(p.join(WEIGHTS_FILE), &original).unwrap();

        edit_weights(p, |t| t.retain(|(n, _)| n != "model.layers.1.mlp.up_proj.weight"));
        let e = load_err(p);
        assert!(e.contains("missing") && e.contains("model.layers.1.mlp.up_proj.weight"), "{e}");
        restore();

        edit_weights(p, |t| {
            t.push(("model.layers.9.extra.weight".into(), Tensor::zeros([2], (Kind::Float, Device::Cpu))))
        });
        let e = load_err(p);
        assert!(e.contains("unexpected") && e.contains("model.layers.9.extra.weight"), "{e}");
        restore();

        edit_weights(p, |t| {
            let i = t.iter().position(|(n, _)| n == "model.norm.weight").unwrap();
            t[i].1 = Tensor::ones([1, 32], (Kind::Float, Device::Cpu));
        });
        let e = load_err(p);
        assert!(e.contains("model.norm.weight") && e.contains("[1, 32]") && e.contains("[32]"), "{e}");
        restore();

        edit_weights(p, |t| {
            let i = t.iter().position(|(n, _)| n == "model.norm.weight").unwrap();
            t[i].1 = Tensor::ones([32], (Kind::Int64, Device::Cpu));
        });
        let e = load_err(p);
        assert!(e.contains("model.norm.weight") && e.contains("dtype"), "{e}");
        restore();
        load_model_dir(p, Device::Cpu).unwrap();
    }

    #[test]
    fn tied_lm_head_duplicates_are_accepted_only_when_equal() {
        let _rng = rng_guard();
        let (dir, _vs, m) = saved_qwen3(true);
        let p = dir.path();
        let ids = rows(&[&[1, 2, 3, 4]]);
        let mask = rows(&[&[1, 1, 1, 1]]);
        let expected = m.forward(&ids, &mask).unwrap();
        // Saved the transformers way: no lm_head.weight.
        assert!(Tensor::read_safetensors(p.join(WEIGHTS_FILE)).unwrap().iter().all(|(n, _)| n != LM_HEAD));

        // A checkpoint that stores the tied head too (equal): accepted.
        edit_weights(p, |t| {
            let e = t.iter().find(|(n, _)| n == "model.embed_tokens.weight").unwrap().1.copy();
            t.push((LM_HEAD.into(), e));
        });
        let (_v, loaded, _) = load_model_dir(p, Device::Cpu).unwrap();
        assert!(loaded.logits(&ids, &mask).unwrap().equal(&expected));
        // Only the head stored (no embedding): it stands in for the embedding.
        edit_weights(p, |t| t.retain(|(n, _)| n != "model.embed_tokens.weight"));
        let (_v, loaded, _) = load_model_dir(p, Device::Cpu).unwrap();
        assert!(loaded.logits(&ids, &mask).unwrap().equal(&expected));
        // Both stored but different: the config's tie is wrong for these weights.
        edit_weights(p, |t| {
            let h = t.iter().find(|(n, _)| n == LM_HEAD).unwrap().1.copy();
            t.push(("model.embed_tokens.weight".into(), &h * 2.0));
        });
        let e = load_err(p);
        assert!(e.contains(LM_HEAD) && e.contains("tie_word_embeddings"), "{e}");
    }

    #[test]
    fn backbone_only_checkpoints_load_without_the_model_prefix() {
        let _rng = rng_guard();
        let (dir, _vs, m) = saved_qwen3(true);
        edit_weights(dir.path(), |t| {
            for (n, _) in t.iter_mut() {
                *n = n.trim_start_matches("model.").to_owned();
            }
        });
        let ids = rows(&[&[1, 2, 3, 4]]);
        let mask = rows(&[&[1, 1, 1, 1]]);
        let (_v, loaded, _) = load_model_dir(dir.path(), Device::Cpu).unwrap();
        assert!(loaded.logits(&ids, &mask).unwrap().equal(&m.forward(&ids, &mask).unwrap()));
    }

    #[test]
    fn pretrained_start_of_a_classifier_from_a_causal_lm_checkpoint() {
        let _rng = rng_guard();
        let (dir, _vs, lm) = saved_qwen3(false);
        let vs = nn::VarStore::new(Device::Cpu);
        let cls = qwen3::Qwen3ForSequenceClassification::new(&vs.root(), &tiny_qwen3(false), 2, 0).unwrap();
        let e = load_weights(&vs, dir.path()).unwrap_err().to_string();
        assert!(e.contains("score.weight"), "{e}");
        let opts = LoadOptions { allow_missing: vec!["score.weight".into()], ignore_unexpected: vec![LM_HEAD.into()] };
        let report = load_weights_with(&vs, dir.path(), &opts).unwrap();
        assert_eq!(report.kept_initial, ["score.weight"]);
        assert_eq!(report.skipped, [LM_HEAD]);
        let lm_params = lm.named_parameters();
        for (n, t) in cls.named_parameters().iter().filter(|(n, _)| n.starts_with("model.")) {
            let src = &lm_params.iter().find(|(m, _)| m == n).unwrap().1;
            assert!(t.equal(src), "{n} not loaded");
        }
    }

    #[test]
    fn saving_copies_tokenizer_files_and_keeps_the_variable_dtype() {
        let _rng = rng_guard();
        let tok = tempfile::tempdir().unwrap();
        std::fs::write(tok.path().join("tokenizer.json"), "{}").unwrap();
        std::fs::write(tok.path().join("tokenizer_config.json"), "{}").unwrap();
        std::fs::write(tok.path().join("unrelated.txt"), "x").unwrap();
        let mut vs = nn::VarStore::new(Device::Cpu);
        let m = opt::OptForCausalLM::new(&vs.root(), &tiny_opt(true)).unwrap();
        vs.bfloat16();
        let dir = tempfile::tempdir().unwrap();
        save_model_dir(dir.path(), &m, Some(tok.path())).unwrap();
        assert!(dir.path().join("tokenizer.json").is_file() && dir.path().join("tokenizer_config.json").is_file());
        assert!(!dir.path().join("unrelated.txt").exists());
        let cfg = read_config(dir.path()).unwrap();
        assert_eq!((cfg["dtype"].as_str(), cfg["torch_dtype"].as_str()), (Some("bfloat16"), Some("bfloat16")));
        let (_vs, loaded, info) = load_model_dir(dir.path(), Device::Cpu).unwrap();
        assert_eq!((info.stored_dtype.as_str(), info.variable_dtype.as_str()), ("bfloat16", "float32"));
        for ((n, a), (_, b)) in m.named_parameters().iter().zip(loaded.named_parameters()) {
            assert!(a.to_kind(Kind::Float).equal(&b), "{n}");
        }
        // A tokenizer directory without tokenizer files is an error, not a silent skip.
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(save_model_dir(dir.path(), &m, Some(empty.path())), Err(Error::Tokenizer(_))));
    }

    #[test]
    fn directory_problems_are_clear_errors() {
        let _rng = rng_guard();
        let (dir, _vs, m) = saved_qwen3(true);
        let p = dir.path();
        // Unknown architecture.
        let mut cfg = read_config(p).unwrap();
        cfg["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
        std::fs::write(p.join(CONFIG_FILE), cfg.to_string()).unwrap();
        let e = load_err(p);
        assert!(e.contains("architectures") && e.contains("LlamaForCausalLM"), "{e}");
        cfg.as_object_mut().unwrap().remove("architectures");
        std::fs::write(p.join(CONFIG_FILE), cfg.to_string()).unwrap();
        assert!(load_err(p).contains("architectures"));
        // No weights, only a pickle.
        std::fs::remove_file(p.join(WEIGHTS_FILE)).unwrap();
        std::fs::write(p.join("pytorch_model.bin"), b"x").unwrap();
        cfg["architectures"] = serde_json::json!(["Qwen3ForCausalLM"]);
        std::fs::write(p.join(CONFIG_FILE), cfg.to_string()).unwrap();
        let e = load_err(p);
        assert!(e.contains(WEIGHTS_FILE) && e.contains("pytorch_model.bin"), "{e}");
        // Saving over a sharded checkpoint is refused rather than leaving two layouts.
        std::fs::write(p.join(WEIGHTS_INDEX_FILE), "{}").unwrap();
        assert!(save_model_dir(p, &m, None).is_err());
        // A missing config.
        assert!(matches!(load_model_dir(&p.join("nope"), Device::Cpu), Err(Error::Io { .. })));
    }

    #[test]
    fn sharded_index_must_agree_with_the_shards() {
        let _rng = rng_guard();
        let dir = tempfile::tempdir().unwrap();
        let src = fixture_dir("qwen3_cls_sharded").join("model");
        for entry in std::fs::read_dir(&src).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
        load_model_dir(dir.path(), Device::Cpu).unwrap();
        let index_path = dir.path().join(WEIGHTS_INDEX_FILE);
        let mut index: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&index_path).unwrap()).unwrap();
        let map = index["weight_map"].as_object_mut().unwrap();
        let (name, file) = map.iter().next().map(|(n, f)| (n.clone(), f.as_str().unwrap().to_owned())).unwrap();
        let other = map.values().find(|f| f.as_str() != Some(file.as_str())).unwrap().clone();
        map.insert(name.clone(), other);
        std::fs::write(&index_path, index.to_string()).unwrap();
        let e = load_err(dir.path());
        assert!(e.contains(&name) && e.contains("lacks"), "{e}");
    }

    #[test]
    fn inspect_prints_a_summary_and_reference_logits() {
        let _rng = rng_guard();
        let dir = fixture_dir("qwen3_lm_tied_bf16");
        let mut out = Vec::new();
        inspect::run(&dir.join("model"), None, Device::Cpu, &mut out).unwrap();
        let summary: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(summary["architecture"], "Qwen3ForCausalLM");
        assert_eq!(summary["stored_dtype"], "bfloat16");
        assert_eq!(summary["declared_dtype"], "bfloat16");
        assert_eq!(summary["config"]["num_hidden_layers"], 3);
        // 128·32 embedding (tied) + 3 layers + final norm.
        let layer = 32 * 32 + 2 * 32 * 8 + 32 * 32 + 2 * 8 + 3 * 32 * 48 + 2 * 32;
        assert_eq!(summary["parameter_count"], 128 * 32 + 3 * layer + 32);

        let mut out = Vec::new();
        inspect::run(&dir.join("model"), Some(&dir.join("tokens.json")), Device::Cpu, &mut out).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let logits: Vec<Vec<Vec<f32>>> = serde_json::from_value(json["logits"].clone()).unwrap();
        let flat: Vec<f32> = logits.iter().flatten().flatten().copied().collect();
        let logits = Tensor::from_slice(&flat).view([logits.len() as i64, logits[0].len() as i64, -1]);
        let batch = inspect::TokenBatch::read(&dir.join("tokens.json"), 128).unwrap();
        let (_, mask) = batch.to_tensors(Device::Cpu).unwrap();
        let reference = crate::parity_tests::read_reference(&dir.join("reference.safetensors"));
        assert!(max_diff(&logits, &reference, &mask) <= TOL);

        // Out-of-vocabulary ids are refused, not clamped.
        let tmp = tempfile::tempdir().unwrap();
        let bad = tmp.path().join("bad.json");
        std::fs::write(&bad, r#"{"input_ids": [[1, 2, 128]]}"#).unwrap();
        let e = inspect::run(&dir.join("model"), Some(&bad), Device::Cpu, &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("128") && e.to_string().contains("vocabulary"), "{e}");
    }
}
