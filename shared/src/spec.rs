//! The benchmark spec: a TOML file and the same fields as `qsched submit` flags.
//!
//! Two stages, as ripgrep's low/high args: [`SpecFile`] mirrors the file (every field
//! optional, unknown fields refused), [`SpecInput`] adds the command-line values, and
//! [`SpecInput::resolve`] produces a [`BenchmarkSpec`] in which every default is applied,
//! every name is checked and the scale preset carries its overrides. Only resolved specs
//! reach the scheduler's expansion. Resolving does no I/O.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::device::DeviceClass;
use crate::error::Error;
use crate::ids::{Family, ModelId, TaskId};
use crate::scale::{self, ScalePreset};

/// A spec file as written by a user.
///
/// ```toml
/// name = "sst2-from-scratch"
/// scale = "small"
/// models = ["qwen3", "rev-qwen3"]
/// tasks = ["sst2"]
/// seeds = [1, 2, 3]
/// device = "cpu"                      # optional: the preset's device class otherwise
/// rev_qwen3_from_qwen3 = false        # required `true` to start rev-qwen3 from [model_dir] qwen3
/// [model_dir]
/// opt = "/models/opt-1.3b"            # optional: start OPT methods from a checkpoint
/// [preset.first_order]                # optional: override any preset field
/// max_steps = 500
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecFile {
    /// Human-readable name of the benchmark.
    pub name: Option<String>,
    /// Scale preset name.
    pub scale: Option<String>,
    /// Model ids.
    pub models: Option<Vec<String>>,
    /// Task ids.
    pub tasks: Option<Vec<String>>,
    /// Seeds.
    pub seeds: Option<Vec<u64>>,
    /// Device class for every shard.
    pub device: Option<String>,
    /// Checkpoint directory per family (`qwen3`, `opt`), as seen from the agents.
    pub model_dir: Option<BTreeMap<String, String>>,
    /// Initialise `rev-qwen3` from the `[model_dir] qwen3` checkpoint. Required (and only
    /// allowed) when the spec lists rev-qwen3 with a Qwen3 checkpoint: the reversible
    /// coupling computes a different function from the same weights, so this is a
    /// warm start, not "the pretrained model".
    pub rev_qwen3_from_qwen3: Option<bool>,
    /// Overrides merged into the scale preset (same structure as the preset).
    pub preset: Option<toml::Table>,
}

impl SpecFile {
    /// Parses spec text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<SpecFile, Error> {
        toml::from_str(text).map_err(|e| Error::SpecFile { path: path.to_owned(), message: e.to_string() })
    }

    /// Reads and parses a spec file.
    pub fn load(path: &Path) -> Result<SpecFile, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_owned(), source })?;
        SpecFile::parse(&text, path)
    }
}

/// Spec values from a file and from flags; flags win.
#[derive(Debug, Clone, Default)]
pub struct SpecInput {
    /// Parsed spec file, if one was given.
    pub file: SpecFile,
    /// `--scale`.
    pub scale: Option<String>,
    /// `--models`.
    pub models: Option<Vec<String>>,
    /// `--tasks`.
    pub tasks: Option<Vec<String>>,
    /// `--seeds`.
    pub seeds: Option<Vec<u64>>,
    /// `--device-class`.
    pub device: Option<String>,
    /// `--set path=value` overrides, applied after the file's `[preset]` table.
    pub set: Vec<String>,
}

/// Where a model's weights come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ModelInit {
    /// Random initialisation at the preset's shape, seeded by the shard seed.
    Random,
    /// A Hugging Face checkpoint directory on the agent host.
    Pretrained {
        /// Directory with `config.json` and safetensors weights.
        dir: String,
    },
    /// A Qwen3 checkpoint loaded into Reversible Qwen3 (spec field
    /// `rev_qwen3_from_qwen3 = true`). The parameter names and shapes match, but the
    /// two-stream coupling computes a different function from them, so the shard starts
    /// from the checkpoint's weights, not from its model; results record it.
    #[serde(rename = "qwen3-checkpoint-in-rev-qwen3")]
    Qwen3CheckpointInRevQwen3 {
        /// Directory of the Qwen3 checkpoint.
        dir: String,
    },
}

impl ModelInit {
    /// The checkpoint directory, if the weights come from one.
    pub fn dir(&self) -> Option<&str> {
        match self {
            ModelInit::Random => None,
            ModelInit::Pretrained { dir } | ModelInit::Qwen3CheckpointInRevQwen3 { dir } => Some(dir),
        }
    }

    fn random() -> ModelInit {
        ModelInit::Random
    }

    fn is_random(&self) -> bool {
        *self == ModelInit::Random
    }
}

/// A fully resolved benchmark: what the scheduler expands into shards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchmarkSpec {
    /// Name of the benchmark.
    pub name: String,
    /// The preset with overrides applied.
    pub preset: ScalePreset,
    /// Model ids, deduplicated, in the order given.
    pub models: Vec<ModelId>,
    /// Task ids, deduplicated, in the order given.
    pub tasks: Vec<TaskId>,
    /// Seeds, deduplicated, in the order given.
    pub seeds: Vec<u64>,
    /// Device class of every shard.
    pub device_class: DeviceClass,
    /// Weight source per family.
    pub qwen3_init: ModelInit,
    /// Weight source per family.
    pub opt_init: ModelInit,
    /// Weight source of `rev-qwen3`: random, or the Qwen3 checkpoint when the spec says
    /// `rev_qwen3_from_qwen3 = true`. Left out of the serialized spec when random, so
    /// specs without it keep their hash.
    #[serde(default = "ModelInit::random", skip_serializing_if = "ModelInit::is_random")]
    pub rev_qwen3_init: ModelInit,
}

// The defaults when neither file nor flags say otherwise make the default run, the one
// `qsched submit --local` with no other flags runs (the README's first command): every
// model on SST-2, one seed, at the `demo` preset, sized so that it ends in minutes on a
// 2-core CPU and the methods' results differ for real. Its figures are in the README.

/// Default scale preset.
pub const DEFAULT_SCALE: &str = "demo";
/// Default seeds.
pub const DEFAULT_SEEDS: [u64; 1] = [1];
/// Default tasks.
pub const DEFAULT_TASKS: [TaskId; 1] = [TaskId::Sst2];

impl BenchmarkSpec {
    /// The pretrained checkpoint directories the spec names (for agents run by the same
    /// user, these are the model roots to allow).
    pub fn model_dirs(&self) -> Vec<std::path::PathBuf> {
        let mut dirs: Vec<std::path::PathBuf> = Vec::new();
        for dir in [&self.qwen3_init, &self.opt_init, &self.rev_qwen3_init].into_iter().filter_map(ModelInit::dir) {
            let dir = std::path::PathBuf::from(dir);
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        dirs
    }

    /// Weight source for a model id.
    pub fn init_for(&self, model: ModelId) -> &ModelInit {
        match (model, model.family()) {
            (ModelId::RevQwen3, _) => &self.rev_qwen3_init,
            (_, Family::Qwen3) => &self.qwen3_init,
            (_, Family::Opt) => &self.opt_init,
        }
    }

    /// Checks that every data file the shards need exists under `data_dir`.
    pub fn check_data(&self, data_dir: &Path) -> Result<(), Error> {
        let tokenizers = data_dir.join("tokenizers");
        for model in &self.models {
            let tok = match model.family() {
                Family::Qwen3 => "qwen",
                Family::Opt => "opt",
            };
            for f in ["vocab.json", "merges.txt"] {
                let p = tokenizers.join(tok).join(f);
                if !p.is_file() && !tokenizers.join(tok).join("tokenizer.json").is_file() {
                    return Err(Error::invalid("data", format!("tokenizer file {} does not exist", p.display())));
                }
            }
        }
        for task in &self.tasks {
            task.train_file(data_dir)?;
            task.validation_file(data_dir)?;
        }
        Ok(())
    }
}

fn dedup<T: PartialEq + Clone>(items: Vec<T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(items.len());
    for i in items {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

/// Merges `overlay` into `base` recursively (tables merge, everything else replaces).
fn merge_toml(base: &mut toml::Table, overlay: &toml::Table) {
    for (k, v) in overlay {
        match (base.get_mut(k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge_toml(b, o),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

/// Parses one `--set a.b.c=value` into a nested table. The value is read as TOML
/// (`500`, `1e-4`, `true`, `"cpu"`), or as a bare string when it is not valid TOML.
fn parse_set(expr: &str) -> Result<toml::Table, Error> {
    let (path, raw) = expr
        .split_once('=')
        .ok_or_else(|| Error::invalid("--set", format!("'{expr}' is not of the form path.to.field=value")))?;
    let path = path.trim();
    if path.is_empty() || path.split('.').any(|p| p.is_empty()) {
        return Err(Error::invalid("--set", format!("'{expr}' has an empty field name")));
    }
    let raw = raw.trim();
    let value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").unwrap_or(toml::Value::String(raw.to_owned())),
        Err(_) => toml::Value::String(raw.to_owned()),
    };
    let mut parts: Vec<&str> = path.split('.').collect();
    let last = parts.pop().unwrap_or_default();
    let mut table = toml::Table::new();
    table.insert(last.to_owned(), value);
    for p in parts.into_iter().rev() {
        let mut outer = toml::Table::new();
        outer.insert(p.to_owned(), toml::Value::Table(table));
        table = outer;
    }
    Ok(table)
}

fn apply_overrides(preset: ScalePreset, overlays: &[toml::Table]) -> Result<ScalePreset, Error> {
    if overlays.is_empty() {
        return Ok(preset);
    }
    let name = preset.name.clone();
    let mut table = toml::Table::try_from(&preset).map_err(|e| Error::invalid("preset", e.to_string()))?;
    for o in overlays {
        merge_toml(&mut table, o);
    }
    let resolved: ScalePreset = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| Error::invalid("preset override", e.to_string()))?;
    if resolved.name != name {
        return Err(Error::invalid("preset override", "the preset name cannot be overridden; use --scale"));
    }
    Ok(resolved)
}

impl SpecInput {
    /// Applies defaults, checks every name and value, and returns the resolved spec.
    pub fn resolve(self) -> Result<BenchmarkSpec, Error> {
        let f = self.file;
        let scale_name = self.scale.or(f.scale).unwrap_or_else(|| DEFAULT_SCALE.to_owned());
        let base = scale::preset(&scale_name)?;

        let mut overlays = Vec::new();
        if let Some(t) = f.preset {
            overlays.push(t);
        }
        for s in &self.set {
            overlays.push(parse_set(s)?);
        }
        let preset = apply_overrides(base, &overlays)?;
        preset.validate()?;

        let given_models = self.models.or(f.models);
        let models_by_default = given_models.is_none();
        let models = match given_models {
            Some(list) => list.iter().map(|m| m.trim().parse()).collect::<Result<Vec<ModelId>, _>>()?,
            None => ModelId::ALL.to_vec(),
        };
        let tasks = match self.tasks.or(f.tasks) {
            Some(list) => list.iter().map(|t| t.trim().parse()).collect::<Result<Vec<TaskId>, _>>()?,
            None => DEFAULT_TASKS.to_vec(),
        };
        let seeds = self.seeds.or(f.seeds).unwrap_or_else(|| DEFAULT_SEEDS.to_vec());
        if models.is_empty() || tasks.is_empty() || seeds.is_empty() {
            return Err(Error::invalid("spec", "models, tasks and seeds must each list at least one value"));
        }
        check_pairs(&models, &tasks, models_by_default)?;
        let device_class = match self.device.or(f.device) {
            Some(d) => d.parse()?,
            None => preset.device_class,
        };
        let mut qwen3_init = ModelInit::Random;
        let mut opt_init = ModelInit::Random;
        for (family, dir) in f.model_dir.unwrap_or_default() {
            if !std::path::Path::new(&dir).is_absolute() {
                return Err(Error::invalid(
                    "model_dir",
                    format!("'{dir}' for {family} is not an absolute path (it names a directory on the agent hosts)"),
                ));
            }
            let init = ModelInit::Pretrained { dir };
            match family.as_str() {
                "qwen3" => qwen3_init = init,
                "opt" => opt_init = init,
                other => {
                    return Err(Error::invalid(
                        "model_dir",
                        format!("unknown family '{other}'; expected 'qwen3' or 'opt'"),
                    ));
                }
            }
        }
        let rev_qwen3_init = rev_qwen3_init(&qwen3_init, f.rev_qwen3_from_qwen3, models.contains(&ModelId::RevQwen3))?;
        let name = f.name.unwrap_or_else(|| format!("{scale_name}-benchmark"));
        Ok(BenchmarkSpec {
            name,
            preset,
            models: dedup(models),
            tasks: dedup(tasks),
            seeds: dedup(seeds),
            device_class,
            qwen3_init,
            opt_init,
            rev_qwen3_init,
        })
    }
}

/// Refuses a matrix with a model × task pair that cannot run, naming every such pair and
/// why, so that `qsched submit` fails before anything is recorded or enqueued instead of
/// the agents failing those shards one by one.
fn check_pairs(models: &[ModelId], tasks: &[TaskId], models_by_default: bool) -> Result<(), Error> {
    // Pairs grouped by reason, in matrix order.
    let mut refused: Vec<(&'static str, Vec<String>)> = Vec::new();
    for &model in models {
        for &task in tasks {
            let Some(why) = model.unsupported_reason(task) else { continue };
            let pair = format!("{model} × {task}");
            match refused.iter_mut().find(|(w, _)| *w == why) {
                Some((_, pairs)) => {
                    if !pairs.contains(&pair) {
                        pairs.push(pair);
                    }
                }
                None => refused.push((why, vec![pair])),
            }
        }
    }
    if refused.is_empty() {
        return Ok(());
    }
    let reasons: Vec<String> =
        refused.iter().map(|(why, pairs)| format!("{} cannot run: {why}", pairs.join(", "))).collect();
    let hint = if models_by_default {
        "; the spec names no models, so it has every one: list the ones to run (--models or `models = [...]`)"
    } else {
        "; drop those models or tasks from the spec"
    };
    Err(Error::invalid("spec", format!("{}{hint}", reasons.join("; "))))
}

/// The weight source of `rev-qwen3`. A Qwen3 checkpoint computes a different function in
/// the reversible coupling (the residual stream is split into two coupled streams), so
/// starting rev-qwen3 from one must be asked for by name, never implied by `[model_dir]`.
fn rev_qwen3_init(qwen3: &ModelInit, from_qwen3: Option<bool>, lists_rev: bool) -> Result<ModelInit, Error> {
    match (qwen3, from_qwen3.unwrap_or(false)) {
        (ModelInit::Pretrained { dir }, true) => Ok(ModelInit::Qwen3CheckpointInRevQwen3 { dir: dir.clone() }),
        (ModelInit::Pretrained { dir }, false) if lists_rev => Err(Error::invalid(
            "rev_qwen3_from_qwen3",
            format!(
                "the spec lists rev-qwen3 and names the Qwen3 checkpoint [model_dir] qwen3 = \"{dir}\", but \
                 rev-qwen3 computes a different function from those weights (its two-stream reversible \
                 coupling is not Qwen3's residual stack), so it would not start from the checkpoint's model; \
                 set `rev_qwen3_from_qwen3 = true` at the top level of the spec to initialise it from the \
                 checkpoint's weights anyway (results record it), or drop rev-qwen3 from `models`"
            ),
        )),
        (ModelInit::Pretrained { .. }, false) => Ok(ModelInit::Random),
        (_, true) => Err(Error::invalid(
            "rev_qwen3_from_qwen3",
            "is true but the spec names no Qwen3 checkpoint ([model_dir] qwen3 = \"/path\")",
        )),
        (_, false) => Ok(ModelInit::Random),
    }
}

/// Resolves the data directory: the flag, then `QSCHED_DATA_DIR`.
pub fn data_dir_from(flag: Option<PathBuf>) -> Option<PathBuf> {
    flag.or_else(|| std::env::var_os("QSCHED_DATA_DIR").map(PathBuf::from))
}

#[cfg(test)]
#[allow(clippy::field_reassign_with_default)] // each case changes one flag of the defaults
mod tests {
    use super::*;

    fn input(text: &str) -> SpecInput {
        SpecInput { file: SpecFile::parse(text, Path::new("spec.toml")).unwrap(), ..Default::default() }
    }

    #[test]
    fn defaults() {
        let spec = SpecInput::default().resolve().unwrap();
        assert_eq!(spec.preset.name, "demo");
        assert_eq!(spec.name, "demo-benchmark");
        assert_eq!(spec.models, ModelId::ALL.to_vec());
        assert_eq!(spec.tasks, vec![TaskId::Sst2]);
        assert_eq!(spec.seeds, vec![1]);
        assert_eq!(spec.device_class, DeviceClass::Cpu);
    }

    #[test]
    fn file_and_flags_with_overrides() {
        let mut i = input(
            r#"
            name = "x"
            scale = "small"
            models = ["qwen3", "qwen3", "rev-qwen3"]
            tasks = ["sst2", "mrpc"]
            [preset.first_order]
            max_steps = 123
            "#,
        );
        i.seeds = Some(vec![7]);
        i.set = vec!["first_order.learning_rate=2e-4".into(), "data.max_seq_len=96".into()];
        let spec = i.resolve().unwrap();
        assert_eq!(spec.name, "x");
        assert_eq!(spec.models, vec![ModelId::Qwen3, ModelId::RevQwen3]);
        assert_eq!(spec.seeds, vec![7]);
        assert_eq!(spec.preset.first_order.max_steps, 123);
        assert_eq!(spec.preset.first_order.learning_rate, 2e-4);
        assert_eq!(spec.preset.data.max_seq_len, 96);
        // Untouched fields keep the preset's values.
        assert_eq!(spec.preset.first_order.batch_size, scale::preset("small").unwrap().first_order.batch_size);
    }

    #[test]
    fn bad_inputs_are_named() {
        let err = SpecFile::parse("scale = [", Path::new("bad.toml")).unwrap_err().to_string();
        assert!(err.contains("bad.toml"), "{err}");
        let err = SpecFile::parse("colour = 1", Path::new("s.toml")).unwrap_err().to_string();
        assert!(err.contains("colour"), "{err}");

        let mut i = SpecInput::default();
        i.models = Some(vec!["bert".into()]);
        assert!(i.resolve().unwrap_err().to_string().contains("unknown model 'bert'"));

        let mut i = SpecInput::default();
        i.scale = Some("xl".into());
        assert!(i.resolve().unwrap_err().to_string().contains("unknown scale 'xl'"));

        let mut i = SpecInput::default();
        i.set = vec!["first_order.max_stepz=3".into()];
        let err = i.resolve().unwrap_err().to_string();
        assert!(err.contains("max_stepz"), "{err}");

        let mut i = SpecInput::default();
        i.set = vec!["first_order.max_steps=many".into()];
        assert!(i.resolve().is_err());

        let mut i = SpecInput::default();
        i.set = vec!["novalue".into()];
        assert!(i.resolve().unwrap_err().to_string().contains("path.to.field=value"));

        let mut i = SpecInput::default();
        i.device = Some("gpu".into());
        assert!(i.resolve().unwrap_err().to_string().contains("'gpu'"));

        let i = input("seeds = []");
        assert!(i.resolve().unwrap_err().to_string().contains("at least one"));

        let i = input("[preset.qwen3]\nnum_key_value_heads = 3");
        assert!(i.resolve().unwrap_err().to_string().contains("multiple of num_key_value_heads"));
    }

    /// A pair the agents would refuse is refused here, before anything is recorded.
    #[test]
    fn unsupported_model_task_pairs_are_refused_at_resolution() {
        let mut i = SpecInput::default();
        i.models = Some(vec!["qwen3".into(), "mezo-opt".into(), "dizo-opt".into()]);
        i.tasks = Some(vec!["sst2".into(), "stsb".into()]);
        let err = i.resolve().unwrap_err().to_string();
        assert!(err.starts_with("invalid spec: mezo-opt × stsb, dizo-opt × stsb cannot run: STS-B"), "{err}");
        assert!(err.contains("regression") && err.contains("drop those models or tasks"), "{err}");
        assert!(!err.contains("qwen3 × stsb"), "{err}");
        // Every model by default: the message says the models came by default.
        let mut i = SpecInput::default();
        i.tasks = Some(vec!["stsb".into()]);
        let err = i.resolve().unwrap_err().to_string();
        assert!(err.contains("ft-opt × stsb") && err.contains("names no models"), "{err}");
        // The Qwen3 methods train STS-B.
        let mut i = SpecInput::default();
        i.models = Some(vec!["qwen3".into(), "qwen3-ckpt".into(), "rev-qwen3".into()]);
        i.tasks = Some(vec!["stsb".into()]);
        assert_eq!(i.resolve().unwrap().tasks, vec![TaskId::Stsb]);
    }

    #[test]
    fn model_dirs() {
        let spec = input("[model_dir]\nopt = \"/m/opt-1.3b\"").resolve().unwrap();
        assert_eq!(spec.init_for(ModelId::MezoOpt), &ModelInit::Pretrained { dir: "/m/opt-1.3b".into() });
        assert_eq!(spec.init_for(ModelId::Qwen3), &ModelInit::Random);
        assert!(input("[model_dir]\nllama = \"/x\"").resolve().is_err());
        assert_eq!(spec.model_dirs(), vec![std::path::PathBuf::from("/m/opt-1.3b")]);
        let err = input("[model_dir]\nopt = \"models/opt\"").resolve().unwrap_err().to_string();
        assert!(err.contains("not an absolute path"), "{err}");
    }

    /// A Qwen3 checkpoint with rev-qwen3 listed is refused unless the spec says
    /// `rev_qwen3_from_qwen3 = true`; the message says why and names the field.
    #[test]
    fn rev_qwen3_from_a_qwen3_checkpoint_needs_the_explicit_field() {
        let dir = "[model_dir]\nqwen3 = \"/m/qwen3-0.6b\"\n";
        let err = input(&format!("models = [\"qwen3\", \"rev-qwen3\"]\n{dir}")).resolve().unwrap_err().to_string();
        assert!(err.contains("rev_qwen3_from_qwen3 = true") && err.contains("different function"), "{err}");
        // Every model by default includes rev-qwen3: refused too.
        assert!(input(dir).resolve().is_err());

        let spec = input(&format!("rev_qwen3_from_qwen3 = true\nmodels = [\"qwen3\", \"rev-qwen3\"]\n{dir}"))
            .resolve()
            .unwrap();
        let qwen3 = ModelInit::Pretrained { dir: "/m/qwen3-0.6b".into() };
        assert_eq!(spec.init_for(ModelId::Qwen3), &qwen3);
        assert_eq!(spec.init_for(ModelId::Qwen3Ckpt), &qwen3);
        let rev = spec.init_for(ModelId::RevQwen3);
        assert_eq!(rev, &ModelInit::Qwen3CheckpointInRevQwen3 { dir: "/m/qwen3-0.6b".into() });
        // The shard carries it under `init`, so every result's config shows it.
        let json = serde_json::to_value(rev).unwrap();
        assert_eq!(json, serde_json::json!({"kind": "qwen3-checkpoint-in-rev-qwen3", "dir": "/m/qwen3-0.6b"}));
        assert_eq!(serde_json::from_value::<ModelInit>(json).unwrap(), *rev);
        assert_eq!(spec.model_dirs(), vec![std::path::PathBuf::from("/m/qwen3-0.6b")]);

        // Without rev-qwen3 the checkpoint needs no field; the field without a checkpoint is refused.
        let spec = input(&format!("models = [\"qwen3\", \"qwen3-ckpt\"]\n{dir}")).resolve().unwrap();
        assert_eq!(spec.init_for(ModelId::RevQwen3), &ModelInit::Random);
        let err = input("rev_qwen3_from_qwen3 = true").resolve().unwrap_err().to_string();
        assert!(err.contains("rev_qwen3_from_qwen3") && err.contains("no Qwen3 checkpoint"), "{err}");
        // A random-init spec serializes as before (no new key: its hash is unchanged).
        let plain = serde_json::to_value(SpecInput::default().resolve().unwrap()).unwrap();
        assert!(plain.get("rev_qwen3_init").is_none());
    }
}
