//! Model (method) and task identifiers as users type them on the command line.
//!
//! The set is closed: an unknown name is an error listing the accepted ones. A task's
//! file layout in a GLUE-style data directory lives here too, so that `qsched submit`
//! can refuse a run whose data is missing before anything is enqueued.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// A benchmark entry: a model family trained with one method (the shard field `model`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ModelId {
    /// Standard Qwen3 with a classification head, AdamW and backprop.
    #[serde(rename = "qwen3")]
    Qwen3,
    /// Standard Qwen3 with per-layer activation checkpointing: each decoder layer's input
    /// is stored, the layer is recomputed in the backward. AdamW; the baseline reversible
    /// backprop has to beat.
    #[serde(rename = "qwen3-ckpt")]
    Qwen3Ckpt,
    /// Reversible Qwen3 (two-stream coupling), AdamW with backprop by reconstruction.
    #[serde(rename = "rev-qwen3")]
    RevQwen3,
    /// OPT with prompts and label words, AdamW full fine-tune.
    #[serde(rename = "ft-opt")]
    FtOpt,
    /// OPT with prompts, MeZO (zeroth-order SGD with SPSA).
    #[serde(rename = "mezo-opt")]
    MezoOpt,
    /// OPT with prompts, DiZO (MeZO plus divergence-driven layer projection).
    #[serde(rename = "dizo-opt")]
    DizoOpt,
}

/// The architecture family a [`ModelId`] trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// Qwen3 (standard, checkpointed or reversible), classification-head format.
    Qwen3,
    /// OPT, prompt and label-word format.
    Opt,
}

impl ModelId {
    /// Every model id, in display order.
    pub const ALL: [ModelId; 6] =
        [ModelId::Qwen3, ModelId::Qwen3Ckpt, ModelId::RevQwen3, ModelId::FtOpt, ModelId::MezoOpt, ModelId::DizoOpt];

    /// The name used on the command line and in results.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelId::Qwen3 => "qwen3",
            ModelId::Qwen3Ckpt => "qwen3-ckpt",
            ModelId::RevQwen3 => "rev-qwen3",
            ModelId::FtOpt => "ft-opt",
            ModelId::MezoOpt => "mezo-opt",
            ModelId::DizoOpt => "dizo-opt",
        }
    }

    /// Which architecture this entry trains.
    pub fn family(self) -> Family {
        match self {
            ModelId::Qwen3 | ModelId::Qwen3Ckpt | ModelId::RevQwen3 => Family::Qwen3,
            ModelId::FtOpt | ModelId::MezoOpt | ModelId::DizoOpt => Family::Opt,
        }
    }

    /// True for the zeroth-order methods (MeZO, DiZO), which use the `zeroth_order` settings.
    pub fn is_zeroth_order(self) -> bool {
        matches!(self, ModelId::MezoOpt | ModelId::DizoOpt)
    }

    /// Why this method cannot train or score `task`, or `None` when it can.
    ///
    /// The one place that knows which model × task pairs are refused: spec resolution
    /// asks it so that `qsched submit` refuses such a pair before anything is recorded or
    /// enqueued (the agent keeps its own check for shards that come from elsewhere).
    pub fn unsupported_reason(self, task: TaskId) -> Option<&'static str> {
        match (self.family(), task) {
            // The OPT methods score the label words of a prompt; a similarity score in
            // [0, 5] has none, and a regression head is not what they benchmark.
            (Family::Opt, TaskId::Stsb) => Some(
                "STS-B is a regression task (similarity 0-5) and has no label words, which the OPT prompt \
                 methods (ft-opt, mezo-opt, dizo-opt) train and score; qwen3, qwen3-ckpt and rev-qwen3 \
                 train it with a regression head",
            ),
            _ => None,
        }
    }
}

impl FromStr for ModelId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        ModelId::ALL.into_iter().find(|m| m.as_str() == s).ok_or_else(|| {
            let known: Vec<_> = ModelId::ALL.iter().map(|m| m.as_str()).collect();
            Error::invalid("model", format!("unknown model '{s}'; known models: {}", known.join(", ")))
        })
    }
}

impl fmt::Display for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Qwen3 => "qwen3",
            Family::Opt => "opt",
        })
    }
}

/// A GLUE or SuperGLUE task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskId {
    /// SST-2 sentiment (GLUE).
    Sst2,
    /// CoLA acceptability (GLUE).
    Cola,
    /// MRPC paraphrase (GLUE).
    Mrpc,
    /// STS-B similarity regression (GLUE).
    Stsb,
    /// QNLI question answering NLI (GLUE).
    Qnli,
    /// RTE entailment (GLUE).
    Rte,
    /// WNLI Winograd NLI (GLUE).
    Wnli,
    /// MNLI multi-genre NLI (GLUE).
    Mnli,
    /// QQP question pairs (GLUE).
    Qqp,
    /// CommitmentBank (SuperGLUE).
    Cb,
    /// Choice of plausible alternatives (SuperGLUE).
    Copa,
    /// Boolean questions (SuperGLUE).
    Boolq,
    /// Word in context (SuperGLUE).
    Wic,
    /// Winograd schema (SuperGLUE).
    Wsc,
    /// Multi-sentence reading comprehension (SuperGLUE).
    Multirc,
}

/// On-disk format of a task's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// GLUE tab-separated values (quoting off).
    Tsv,
    /// SuperGLUE JSON lines.
    Jsonl,
}

/// Where a task's splits live inside a data directory (`<data>/glue/<dir>/...`).
#[derive(Debug, Clone, Copy)]
pub struct TaskLayout {
    /// Folder name under `glue/`.
    pub dir: &'static str,
    /// File format.
    pub format: FileFormat,
    /// Train file names, in order of preference. The full split comes first; a task
    /// may also accept the 32-example FewGLUE subset, recorded as such in results.
    pub train: &'static [&'static str],
    /// The official validation split (our test split).
    pub validation: &'static str,
}

impl TaskId {
    /// Every task id, in display order.
    pub const ALL: [TaskId; 15] = [
        TaskId::Sst2,
        TaskId::Cola,
        TaskId::Mrpc,
        TaskId::Stsb,
        TaskId::Qnli,
        TaskId::Rte,
        TaskId::Wnli,
        TaskId::Mnli,
        TaskId::Qqp,
        TaskId::Cb,
        TaskId::Copa,
        TaskId::Boolq,
        TaskId::Wic,
        TaskId::Wsc,
        TaskId::Multirc,
    ];

    /// The name used on the command line and in results.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskId::Sst2 => "sst2",
            TaskId::Cola => "cola",
            TaskId::Mrpc => "mrpc",
            TaskId::Stsb => "stsb",
            TaskId::Qnli => "qnli",
            TaskId::Rte => "rte",
            TaskId::Wnli => "wnli",
            TaskId::Mnli => "mnli",
            TaskId::Qqp => "qqp",
            TaskId::Cb => "cb",
            TaskId::Copa => "copa",
            TaskId::Boolq => "boolq",
            TaskId::Wic => "wic",
            TaskId::Wsc => "wsc",
            TaskId::Multirc => "multirc",
        }
    }

    /// File layout of this task in a GLUE-style data directory.
    pub fn layout(self) -> TaskLayout {
        use FileFormat::{Jsonl, Tsv};
        let (dir, format, train, validation): (_, _, &'static [&'static str], _) = match self {
            TaskId::Sst2 => ("SST-2", Tsv, &["train.tsv"], "dev.tsv"),
            TaskId::Cola => ("CoLA", Tsv, &["train.tsv"], "dev.tsv"),
            TaskId::Mrpc => ("MRPC", Tsv, &["train.tsv"], "dev.tsv"),
            TaskId::Stsb => ("STS-B", Tsv, &["train.tsv"], "dev.tsv"),
            TaskId::Qnli => ("QNLI", Tsv, &["train.tsv"], "dev.tsv"),
            TaskId::Rte => ("RTE", Tsv, &["train.tsv"], "dev.tsv"),
            TaskId::Wnli => ("WNLI", Tsv, &["train.tsv"], "dev.tsv"),
            TaskId::Mnli => ("MNLI", Tsv, &["train.tsv"], "dev_matched.tsv"),
            TaskId::Qqp => ("QQP", Tsv, &["train.tsv"], "dev.tsv"),
            TaskId::Cb => ("CB", Jsonl, &["train.jsonl"], "dev.jsonl"),
            TaskId::Copa => ("COPA", Jsonl, &["train.jsonl"], "dev.jsonl"),
            TaskId::Boolq => ("BoolQ", Jsonl, &["train.jsonl", "train_fewglue32.jsonl"], "dev.jsonl"),
            TaskId::Wic => ("WiC", Jsonl, &["train.jsonl", "train_fewglue32.jsonl"], "dev.jsonl"),
            TaskId::Wsc => ("WSC", Jsonl, &["train.jsonl", "train_fewglue32.jsonl"], "dev.jsonl"),
            TaskId::Multirc => ("MultiRC", Jsonl, &["train.jsonl", "train_fewglue32.jsonl"], "dev.jsonl"),
        };
        TaskLayout { dir, format, train, validation }
    }

    /// The train file to use in `data_dir`, or an error naming the file that is missing.
    pub fn train_file(self, data_dir: &Path) -> Result<PathBuf, Error> {
        let layout = self.layout();
        let dir = data_dir.join("glue").join(layout.dir);
        for name in layout.train {
            let path = dir.join(name);
            if path.is_file() {
                return Ok(path);
            }
        }
        Err(Error::invalid(
            "data",
            format!(
                "task '{}' has no train split: {} does not exist (it can only be evaluated, not trained)",
                self.as_str(),
                dir.join(layout.train[0]).display()
            ),
        ))
    }

    /// The validation file in `data_dir`, or an error naming it.
    pub fn validation_file(self, data_dir: &Path) -> Result<PathBuf, Error> {
        let layout = self.layout();
        let path = data_dir.join("glue").join(layout.dir).join(layout.validation);
        if path.is_file() {
            Ok(path)
        } else {
            Err(Error::invalid(
                "data",
                format!("task '{}': validation file {} does not exist", self.as_str(), path.display()),
            ))
        }
    }
}

impl FromStr for TaskId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        TaskId::ALL.into_iter().find(|t| t.as_str() == s).ok_or_else(|| {
            let known: Vec<_> = TaskId::ALL.iter().map(|t| t.as_str()).collect();
            Error::invalid("task", format!("unknown task '{s}'; known tasks: {}", known.join(" ")))
        })
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for m in ModelId::ALL {
            assert_eq!(m.as_str().parse::<ModelId>().unwrap(), m);
            assert_eq!(serde_json::to_string(&m).unwrap(), format!("\"{}\"", m.as_str()));
        }
        for t in TaskId::ALL {
            assert_eq!(t.as_str().parse::<TaskId>().unwrap(), t);
            assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{}\"", t.as_str()));
        }
    }

    #[test]
    fn unknown_names_list_the_known_ones() {
        let err = "gpt5".parse::<ModelId>().unwrap_err().to_string();
        assert!(err.contains("unknown model 'gpt5'") && err.contains("rev-qwen3"), "{err}");
        let err = "sst3".parse::<TaskId>().unwrap_err().to_string();
        assert!(err.contains("unknown task 'sst3'") && err.contains("multirc"), "{err}");
    }

    #[test]
    fn families() {
        assert_eq!(ModelId::RevQwen3.family(), Family::Qwen3);
        assert_eq!(ModelId::Qwen3Ckpt.family(), Family::Qwen3);
        assert!(!ModelId::Qwen3Ckpt.is_zeroth_order());
        assert_eq!("qwen3-ckpt".parse::<ModelId>().unwrap(), ModelId::Qwen3Ckpt);
        assert_eq!(ModelId::DizoOpt.family(), Family::Opt);
        assert!(ModelId::MezoOpt.is_zeroth_order());
        assert!(!ModelId::FtOpt.is_zeroth_order());
    }

    /// Exactly the OPT prompt methods × STS-B are refused, each with the reason.
    #[test]
    fn unsupported_pairs() {
        for m in ModelId::ALL {
            for t in TaskId::ALL {
                let refused = m.family() == Family::Opt && t == TaskId::Stsb;
                assert_eq!(m.unsupported_reason(t).is_some(), refused, "{m} × {t}");
            }
        }
        let why = ModelId::MezoOpt.unsupported_reason(TaskId::Stsb).unwrap();
        assert!(why.contains("regression") && why.contains("label words"), "{why}");
    }

    #[test]
    fn missing_train_file_is_named() {
        let dir = std::env::temp_dir().join(format!("qsched-ids-{}", std::process::id()));
        let err = TaskId::Qnli.train_file(&dir).unwrap_err().to_string();
        assert!(err.contains("QNLI/train.tsv") && err.contains("qnli"), "{err}");
    }
}
