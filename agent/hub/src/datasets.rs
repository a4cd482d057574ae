//! GLUE and SuperGLUE by name: the hub's parquet splits written in the layout and formats
//! the task loaders read (`<data>/glue/<Dir>/{train,dev}.{tsv,jsonl}`, see
//! `shared::ids::TaskId::layout` and the loaders' module table).
//!
//! Sources (dataset repositories, listed and fetched through the model cache's client):
//! - GLUE: `nyu-mll/glue` at `main`, one folder per config with
//!   `<config>/<split>-00000-of-00001.parquet` (`sst2`, `cola`, `mrpc`, `stsb`, `qnli`,
//!   `rte`, `wnli`, `mnli` with `validation_matched`, `qqp`).
//! - SuperGLUE: `aps/super_glue` at `refs/convert/parquet`, the hub's parquet conversion
//!   of the loading-script dataset, laid out `<config>/<split>/0000.parquet` (`cb`, `copa`,
//!   `boolq`, `wic`, `wsc`, `multirc`). `wsc` rather than `wsc.fixed`: the unfixed spans
//!   are the ones in the official SuperGLUE files.
//!
//! Files are found in the repository listing by either layout (`<config>/<split>-*.parquet`
//! or `<config>/<split>/*.parquet`, shards in name order), so a repository that moves from
//! one to the other still works, and `--glue`/`--superglue` can name another repository
//! or revision.
//!
//! What the hub's data lacks is written empty, never invented: CoLA's source and original
//! mark columns, MRPC's sentence ids, STS-B's genre/file/year/source columns, MNLI's
//! parses and annotator labels, QQP's question ids. The loaders read none of those.
//! Labels are written as the official files write them: GLUE RTE/QNLI as `entailment` /
//! `not_entailment`, MNLI's `gold_label` as a word, the others as `0`/`1`; SuperGLUE CB as
//! a word, BoolQ/WiC/WSC as `true`/`false`, COPA and MultiRC answers as `0`/`1`.
//!
//! STS-B scores are float32 in the hub's files: a score with more digits than float32
//! holds comes back rounded (GLUE's dev file has one, `2.33333333333333`, written here as
//! `2.3333333`; 14 train scores are like it), a difference below 1e-7. Nothing else is
//! changed by the round trip.
//!
//! Every written file is listed in `<data>/MANIFEST.json` with its sha256, row count,
//! source repository, revision, commit and parquet files. A file already in the data
//! folder that the manifest does not list is never overwritten without `force`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::json;
use shared::TaskId;
use shared::ids::FileFormat;

use crate::cache::write_atomic;
use crate::client::{Hub, Progress, sha256_hex};
use crate::error::{Error, Result};
use crate::id::{RepoId, RepoKind};
use crate::records::{Record, read_parquet};

/// The manifest's file name in the data folder.
pub const MANIFEST: &str = "MANIFEST.json";

/// A benchmark: a group of tasks with one source repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Benchmark {
    /// GLUE (TSV files).
    Glue,
    /// SuperGLUE (JSON Lines files).
    SuperGlue,
}

impl Benchmark {
    /// Both, in order.
    pub const ALL: [Benchmark; 2] = [Benchmark::Glue, Benchmark::SuperGlue];

    /// The command-line name.
    pub fn as_str(self) -> &'static str {
        match self {
            Benchmark::Glue => "glue",
            Benchmark::SuperGlue => "superglue",
        }
    }

    /// The default source repository and revision.
    pub fn default_repo(self) -> RepoId {
        let (org, name, rev) = match self {
            Benchmark::Glue => ("nyu-mll", "glue", "main"),
            Benchmark::SuperGlue => ("aps", "super_glue", "refs/convert/parquet"),
        };
        RepoId { kind: RepoKind::Dataset, org: org.into(), name: name.into(), revision: Some(rev.into()) }
    }

    /// The tasks fetched for it, in display order.
    pub fn tasks(self) -> Vec<TaskId> {
        TaskId::ALL.into_iter().filter(|t| source(*t).benchmark == self).collect()
    }
}

impl std::str::FromStr for Benchmark {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "glue" => Ok(Benchmark::Glue),
            "superglue" => Ok(Benchmark::SuperGlue),
            _ => Err(Error::Unknown { what: "benchmark", name: s.into(), known: "glue superglue".into() }),
        }
    }
}

/// Where a task's splits come from in its benchmark's repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskSource {
    /// The benchmark (and so the repository).
    pub benchmark: Benchmark,
    /// The dataset config (folder in the repository).
    pub config: &'static str,
    /// The split written as the train file.
    pub train_split: &'static str,
    /// The split written as the validation (dev) file.
    pub validation_split: &'static str,
}

/// The source of `task`.
pub fn source(task: TaskId) -> TaskSource {
    use Benchmark::{Glue, SuperGlue};
    let (benchmark, config) = match task {
        TaskId::Sst2 => (Glue, "sst2"),
        TaskId::Cola => (Glue, "cola"),
        TaskId::Mrpc => (Glue, "mrpc"),
        TaskId::Stsb => (Glue, "stsb"),
        TaskId::Qnli => (Glue, "qnli"),
        TaskId::Rte => (Glue, "rte"),
        TaskId::Wnli => (Glue, "wnli"),
        TaskId::Mnli => (Glue, "mnli"),
        TaskId::Qqp => (Glue, "qqp"),
        TaskId::Cb => (SuperGlue, "cb"),
        TaskId::Copa => (SuperGlue, "copa"),
        TaskId::Boolq => (SuperGlue, "boolq"),
        TaskId::Wic => (SuperGlue, "wic"),
        TaskId::Wsc => (SuperGlue, "wsc"),
        TaskId::Multirc => (SuperGlue, "multirc"),
    };
    let validation_split = if task == TaskId::Mnli { "validation_matched" } else { "validation" };
    TaskSource { benchmark, config, train_split: "train", validation_split }
}

/// The tasks named by `benchmarks`, narrowed to `only` when given. A task in `only` that
/// belongs to none of `benchmarks` is an error naming its benchmark.
pub fn select_tasks(benchmarks: &[Benchmark], only: Option<&[TaskId]>) -> Result<Vec<TaskId>> {
    let all: Vec<TaskId> = benchmarks.iter().flat_map(|b| b.tasks()).collect();
    let Some(only) = only else { return Ok(all) };
    for task in only {
        if !all.contains(task) {
            return Err(Error::TaskNotSelected { task: task.to_string(), benchmark: source(*task).benchmark.as_str() });
        }
    }
    Ok(all.into_iter().filter(|t| only.contains(t)).collect())
}

/// Which split of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// The train split (`train.tsv` / `train.jsonl`).
    Train,
    /// The official validation split (`dev.tsv`, MNLI `dev_matched.tsv`, `dev.jsonl`).
    Validation,
}

/// The repository paths that hold `config`'s `split`, in shard order.
pub fn split_files(files: &[String], config: &str, split: &str) -> Vec<String> {
    let flat = format!("{config}/{split}-");
    let nested = format!("{config}/{split}/");
    let mut out: Vec<String> = files
        .iter()
        .filter(|f| f.ends_with(".parquet"))
        .filter(|f| {
            (f.starts_with(&flat) && !f[flat.len()..].contains('/'))
                || (f.starts_with(&nested) && !f[nested.len()..].contains('/'))
        })
        .cloned()
        .collect();
    out.sort();
    out
}

/// One file written into the data folder, as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrittenFile {
    /// Path relative to the data folder (`glue/SST-2/dev.tsv`).
    pub path: String,
    /// sha256 of the file.
    pub sha256: String,
    /// Data lines (no header; MultiRC: passages).
    pub rows: usize,
    /// Size in bytes.
    pub bytes: u64,
    /// The task.
    pub task: String,
    /// The split.
    pub split: Split,
    /// Source repository (`nyu-mll/glue`).
    pub repo: String,
    /// The revision asked for.
    pub revision: String,
    /// The commit it resolved to.
    pub commit: String,
    /// The parquet files read, in order.
    pub parquet: Vec<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Manifest {
    files: Vec<WrittenFile>,
}

/// What `fetch` reports while it works.
#[derive(Debug)]
pub enum FetchEvent<'a> {
    /// A repository revision was resolved.
    Resolved {
        /// The repository.
        repo: &'a RepoId,
        /// Its commit.
        commit: &'a str,
    },
    /// Bytes of a parquet file arrived.
    Download(Progress<'a>),
    /// A task file was written.
    Wrote(&'a WrittenFile),
}

/// Options of [`fetch`].
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// The GLUE repository (default [`Benchmark::default_repo`]).
    pub glue: RepoId,
    /// The SuperGLUE repository.
    pub superglue: RepoId,
    /// Overwrite files the manifest does not list.
    pub force: bool,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            glue: Benchmark::Glue.default_repo(),
            superglue: Benchmark::SuperGlue.default_repo(),
            force: false,
        }
    }
}

/// Fetches the train and validation splits of `tasks` and writes them into `data_dir`
/// (see the module docs), updating the manifest. Returns the files written.
pub fn fetch(
    hub: &Hub,
    data_dir: &Path,
    tasks: &[TaskId],
    options: &FetchOptions,
    on_event: &mut dyn FnMut(FetchEvent<'_>),
) -> Result<Vec<WrittenFile>> {
    let manifest_path = data_dir.join(MANIFEST);
    let mut manifest = read_manifest(&manifest_path)?;
    // Refuse before any download: every target is free or ours.
    if !options.force {
        for &task in tasks {
            for split in [Split::Train, Split::Validation] {
                let rel = target_path(task, split);
                let path = data_dir.join(&rel);
                if path.exists() && !manifest.files.iter().any(|f| f.path == rel) {
                    return Err(Error::WouldOverwrite { path, manifest: manifest_path });
                }
            }
        }
    }
    let mut listings: BTreeMap<Benchmark, (RepoId, String, Vec<String>)> = BTreeMap::new();
    let mut written = Vec::new();
    for &task in tasks {
        let src = source(task);
        if let std::collections::btree_map::Entry::Vacant(slot) = listings.entry(src.benchmark) {
            let repo = match src.benchmark {
                Benchmark::Glue => options.glue.clone(),
                Benchmark::SuperGlue => options.superglue.clone(),
            };
            let (commit, files) = list_repo(hub, &repo)?;
            on_event(FetchEvent::Resolved { repo: &repo, commit: &commit });
            slot.insert((repo, commit, files));
        }
        let (repo, commit, files) = &listings[&src.benchmark];
        for (split, split_name) in [(Split::Train, src.train_split), (Split::Validation, src.validation_split)] {
            let parquet = split_files(files, src.config, split_name);
            if parquet.is_empty() {
                let pattern = format!("{0}/{1}-*.parquet or {0}/{1}/*.parquet", src.config, split_name);
                // Offline, the cache may simply not have them: say so rather than blame the repo.
                if hub.config().offline {
                    return Err(Error::Offline {
                        repo: repo.path(),
                        revision: repo.revision().to_string(),
                        what: format!("the parquet files of {task} {split_name} ({pattern})"),
                        cache: hub.cache(repo).dir().to_path_buf(),
                    });
                }
                return Err(Error::NoDataFiles {
                    repo: repo.path(),
                    revision: repo.revision().to_string(),
                    what: format!("{task} {split_name}"),
                    pattern,
                });
            }
            let mut rows = Vec::new();
            for file in &parquet {
                let local = hub.download(repo, commit, file, &mut |p| on_event(FetchEvent::Download(p)))?;
                let mut part = read_parquet(&local)?;
                rows.append(&mut part);
            }
            let label = format!("{}@{}:{}", repo.path(), commit, parquet.join("+"));
            let (text, lines) = convert(task, &rows, &label)?;
            let rel = target_path(task, split);
            write_atomic(&data_dir.join(&rel), text.as_bytes())?;
            let entry = WrittenFile {
                sha256: sha256_hex(text.as_bytes()),
                rows: lines,
                bytes: text.len() as u64,
                task: task.to_string(),
                split,
                repo: repo.path(),
                revision: repo.revision().to_string(),
                commit: commit.clone(),
                parquet,
                path: rel,
            };
            manifest.files.retain(|f| f.path != entry.path);
            manifest.files.push(entry.clone());
            manifest.files.sort_by(|a, b| a.path.cmp(&b.path));
            // Written after each file, so an interrupted fetch still lists what it wrote.
            write_manifest(&manifest_path, &manifest)?;
            on_event(FetchEvent::Wrote(&entry));
            written.push(entry);
        }
    }
    Ok(written)
}

/// The commit and file list of a dataset revision: from the hub, or offline from the
/// cached snapshot's files.
fn list_repo(hub: &Hub, repo: &RepoId) -> Result<(String, Vec<String>)> {
    if !hub.config().offline {
        let listing = hub.list(repo)?;
        return Ok((listing.commit, listing.files.into_iter().map(|f| f.rfilename).collect()));
    }
    let commit = hub.cached_commit(repo)?;
    let dir = hub.cache(repo).snapshot_dir(&commit);
    if !dir.is_dir() {
        return Err(Error::Offline {
            repo: repo.path(),
            revision: repo.revision().to_string(),
            what: format!("the snapshot of commit {commit}"),
            cache: hub.cache(repo).dir().to_path_buf(),
        });
    }
    let mut files = Vec::new();
    walk(&dir, &dir, &mut files)?;
    Ok((commit, files))
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("cannot list", dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("cannot list", dir, e))?;
        let path = entry.path();
        if path.is_dir() {
            walk(root, &path, out)?;
        } else if let Ok(rel) = path.strip_prefix(root) {
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
    Ok(())
}

/// `glue/<Dir>/<file>` of a task's split, from the loaders' layout.
pub fn target_path(task: TaskId, split: Split) -> String {
    let layout = task.layout();
    let file = match split {
        Split::Train => layout.train[0],
        Split::Validation => layout.validation,
    };
    format!("glue/{}/{file}", layout.dir)
}

fn read_manifest(path: &Path) -> Result<Manifest> {
    match std::fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map_err(|source| Error::Json { what: path.display().to_string(), source })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Manifest::default()),
        Err(e) => Err(Error::io("cannot read", path, e)),
    }
}

fn write_manifest(path: &Path, manifest: &Manifest) -> Result<()> {
    let mut text = serde_json::to_string_pretty(manifest)
        .map_err(|source| Error::Json { what: path.display().to_string(), source })?;
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

/// The data folder's manifest entries (empty when it has none).
pub fn manifest_entries(data_dir: &Path) -> Result<Vec<WrittenFile>> {
    Ok(read_manifest(&data_dir.join(MANIFEST))?.files)
}

// ---------------------------------------------------------------------------------------
// Rows → task files (pure).

/// Writes `rows` of `task` in the task's file format. Returns the text and the number of
/// data lines. `source_label` names the rows' origin in errors.
pub fn convert(task: TaskId, rows: &[Record], source_label: &str) -> Result<(String, usize)> {
    let at = |row: usize| move |message: String| Error::Row { source_file: source_label.to_string(), row, message };
    match task.layout().format {
        FileFormat::Tsv => {
            let (header, columns) = tsv_columns(task);
            let mut text = String::new();
            if let Some(h) = header {
                text.push_str(h);
                text.push('\n');
            }
            for (i, row) in rows.iter().enumerate() {
                let fields = tsv_row(task, row).map_err(at(i))?;
                debug_assert_eq!(fields.len(), columns);
                for (j, f) in fields.iter().enumerate() {
                    if f.contains(['\t', '\n', '\r']) {
                        return Err(at(i)(format!("a field holds a tab or line break, which TSV cannot carry: {f:?}")));
                    }
                    if j > 0 {
                        text.push('\t');
                    }
                    text.push_str(f);
                }
                text.push('\n');
            }
            Ok((text, rows.len()))
        }
        FileFormat::Jsonl => {
            let objects = if task == TaskId::Multirc {
                multirc_passages(rows, source_label)?
            } else {
                rows.iter().enumerate().map(|(i, r)| jsonl_row(task, r).map_err(at(i))).collect::<Result<Vec<_>>>()?
            };
            let mut text = String::new();
            for o in &objects {
                text.push_str(&o.to_string());
                text.push('\n');
            }
            Ok((text, objects.len()))
        }
    }
}

/// The header line (with MRPC's BOM; none for CoLA) and the column count of a GLUE file.
fn tsv_columns(task: TaskId) -> (Option<&'static str>, usize) {
    match task {
        TaskId::Sst2 => (Some("sentence\tlabel"), 2),
        TaskId::Cola => (None, 4),
        TaskId::Mrpc => (Some("\u{feff}Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"), 5),
        TaskId::Stsb => {
            (Some("index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"), 10)
        }
        TaskId::Qnli => (Some("index\tquestion\tsentence\tlabel"), 4),
        TaskId::Rte | TaskId::Wnli => (Some("index\tsentence1\tsentence2\tlabel"), 4),
        TaskId::Mnli => (
            Some(
                "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t\
                 sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label",
            ),
            12,
        ),
        TaskId::Qqp => (Some("id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate"), 6),
        _ => (None, 0),
    }
}

/// The class name of label `value` among `names` (index = label), or an error.
fn class(row: &Record, names: &[&'static str]) -> std::result::Result<&'static str, String> {
    let label = row.int("label")?;
    usize::try_from(label)
        .ok()
        .and_then(|i| names.get(i).copied())
        .ok_or_else(|| format!("label {label} is not one of 0..{} (a test split without labels?)", names.len() - 1))
}

fn tsv_row(task: TaskId, r: &Record) -> std::result::Result<Vec<String>, String> {
    const BIN: &[&str] = &["0", "1"];
    const ENTAIL2: &[&str] = &["entailment", "not_entailment"];
    let s = |name: &str| r.str(name).map(str::to_string);
    let idx = || r.int("idx").map(|i| i.to_string());
    let e = String::new;
    Ok(match task {
        TaskId::Sst2 => vec![s("sentence")?, class(r, BIN)?.into()],
        TaskId::Cola => vec![e(), class(r, BIN)?.into(), e(), s("sentence")?],
        TaskId::Mrpc => vec![class(r, BIN)?.into(), e(), e(), s("sentence1")?, s("sentence2")?],
        TaskId::Stsb => {
            let score = r.number_text("label")?;
            let mut v = vec![idx()?];
            v.extend(std::iter::repeat_with(e).take(6));
            v.extend([s("sentence1")?, s("sentence2")?, score]);
            v
        }
        TaskId::Qnli => vec![idx()?, s("question")?, s("sentence")?, class(r, ENTAIL2)?.into()],
        TaskId::Rte => vec![idx()?, s("sentence1")?, s("sentence2")?, class(r, ENTAIL2)?.into()],
        TaskId::Wnli => vec![idx()?, s("sentence1")?, s("sentence2")?, class(r, BIN)?.into()],
        TaskId::Mnli => {
            let mut v = vec![idx()?];
            v.extend(std::iter::repeat_with(e).take(7));
            v.extend([
                s("premise")?,
                s("hypothesis")?,
                e(),
                class(r, &["entailment", "neutral", "contradiction"])?.into(),
            ]);
            v
        }
        TaskId::Qqp => vec![idx()?, e(), e(), s("question1")?, s("question2")?, class(r, BIN)?.into()],
        other => return Err(format!("task '{other}' is not written as TSV")),
    })
}

fn jsonl_row(task: TaskId, r: &Record) -> std::result::Result<serde_json::Value, String> {
    let s = |name: &str| r.str(name).map(str::to_string);
    let boolean = || class(r, &["false", "true"]).map(|c| c == "true");
    Ok(match task {
        TaskId::Cb => json!({
            "premise": s("premise")?, "hypothesis": s("hypothesis")?,
            "label": class(r, &["entailment", "contradiction", "neutral"])?, "idx": r.int("idx")?,
        }),
        TaskId::Copa => {
            let label: u8 = if class(r, &["0", "1"])? == "1" { 1 } else { 0 };
            json!({
                "premise": s("premise")?, "choice1": s("choice1")?, "choice2": s("choice2")?,
                "question": s("question")?, "label": label, "idx": r.int("idx")?,
            })
        }
        TaskId::Boolq => json!({
            "question": s("question")?, "passage": s("passage")?, "idx": r.int("idx")?, "label": boolean()?,
        }),
        TaskId::Wic => json!({
            "word": s("word")?, "sentence1": s("sentence1")?, "sentence2": s("sentence2")?,
            "idx": r.int("idx")?, "label": boolean()?,
            "start1": r.int("start1")?, "start2": r.int("start2")?, "end1": r.int("end1")?, "end2": r.int("end2")?,
        }),
        TaskId::Wsc => json!({
            "text": s("text")?,
            "target": {
                "span2_index": r.int("span2_index")?, "span1_index": r.int("span1_index")?,
                "span1_text": s("span1_text")?, "span2_text": s("span2_text")?,
            },
            "idx": r.int("idx")?, "label": boolean()?,
        }),
        other => return Err(format!("task '{other}' is not written as flat JSON lines")),
    })
}

/// MultiRC's flat rows (one per answer option, `idx {paragraph, question, answer}`) put
/// back into the official one-line-per-passage form, passages and questions in the order
/// they first appear.
fn multirc_passages(rows: &[Record], source_label: &str) -> Result<Vec<serde_json::Value>> {
    struct Question {
        idx: i64,
        text: String,
        answers: Vec<serde_json::Value>,
    }
    struct Passage {
        idx: i64,
        text: String,
        questions: Vec<Question>,
    }
    let mut passages: Vec<Passage> = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let err = |message: String| Error::Row { source_file: source_label.to_string(), row: i, message };
        let ids = r.group("idx").map_err(err)?;
        let (p, q, a) =
            (ids.int("paragraph").map_err(err)?, ids.int("question").map_err(err)?, ids.int("answer").map_err(err)?);
        let paragraph = r.str("paragraph").map_err(err)?;
        let question = r.str("question").map_err(err)?;
        let label: u8 = if class(r, &["0", "1"]).map_err(err)? == "1" { 1 } else { 0 };
        let answer = json!({"text": r.str("answer").map_err(err)?, "idx": a, "label": label});
        let passage = match passages.iter_mut().position(|x| x.idx == p) {
            Some(k) => &mut passages[k],
            None => {
                passages.push(Passage { idx: p, text: paragraph.to_string(), questions: Vec::new() });
                let last = passages.len() - 1;
                &mut passages[last]
            }
        };
        if passage.text != paragraph {
            return Err(err(format!("passage {p} has two different texts")));
        }
        match passage.questions.iter_mut().find(|x| x.idx == q) {
            Some(existing) if existing.text != question => {
                return Err(err(format!("question {q} of passage {p} has two different texts")));
            }
            Some(existing) => existing.answers.push(answer),
            None => passage.questions.push(Question { idx: q, text: question.to_string(), answers: vec![answer] }),
        }
    }
    Ok(passages
        .into_iter()
        .map(|p| {
            let questions: Vec<serde_json::Value> = p
                .questions
                .into_iter()
                .map(|q| json!({"question": q.text, "answers": q.answers, "idx": q.idx}))
                .collect();
            json!({"idx": p.idx, "passage": {"text": p.text, "questions": questions}})
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::Value;
    use Value::{Int, Str};

    fn record(fields: &[(&str, Value)]) -> Record {
        Record(fields.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
    }

    fn st(s: &str) -> Value {
        Str(s.into())
    }

    #[test]
    fn every_task_has_a_source_and_a_benchmark() {
        assert_eq!(Benchmark::Glue.tasks().len(), 9);
        assert_eq!(
            Benchmark::SuperGlue.tasks(),
            vec![TaskId::Cb, TaskId::Copa, TaskId::Boolq, TaskId::Wic, TaskId::Wsc, TaskId::Multirc]
        );
        assert_eq!(source(TaskId::Mnli).validation_split, "validation_matched");
        assert_eq!(target_path(TaskId::Mnli, Split::Validation), "glue/MNLI/dev_matched.tsv");
        assert_eq!(target_path(TaskId::Boolq, Split::Train), "glue/BoolQ/train.jsonl");
        assert_eq!("SuperGLUE".parse::<Benchmark>().unwrap(), Benchmark::SuperGlue);
        assert!("glu".parse::<Benchmark>().unwrap_err().to_string().contains("unknown benchmark 'glu'"));
    }

    #[test]
    fn task_selection() {
        let all = select_tasks(&[Benchmark::Glue, Benchmark::SuperGlue], None).unwrap();
        assert_eq!(all.len(), 15);
        let some = select_tasks(&[Benchmark::Glue], Some(&[TaskId::Rte, TaskId::Sst2])).unwrap();
        assert_eq!(some, vec![TaskId::Sst2, TaskId::Rte]);
        let err = select_tasks(&[Benchmark::Glue], Some(&[TaskId::Cb])).unwrap_err().to_string();
        assert!(err.contains("'cb'") && err.contains("superglue"), "{err}");
    }

    #[test]
    fn split_files_in_both_layouts() {
        let files: Vec<String> = [
            "README.md",
            "sst2/train-00000-of-00001.parquet",
            "sst2/validation-00000-of-00001.parquet",
            "sst2/test-00000-of-00001.parquet",
            "mnli/validation_matched-00000-of-00001.parquet",
            "mnli/validation_mismatched-00000-of-00001.parquet",
            "wsc.fixed/train/0000.parquet",
            "wsc/train/0001.parquet",
            "wsc/train/0000.parquet",
            "wsc/partial-train/0000.parquet",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(split_files(&files, "sst2", "train"), vec!["sst2/train-00000-of-00001.parquet"]);
        assert_eq!(split_files(&files, "mnli", "validation_matched").len(), 1);
        assert_eq!(split_files(&files, "wsc", "train"), vec!["wsc/train/0000.parquet", "wsc/train/0001.parquet"]);
        assert!(split_files(&files, "cb", "train").is_empty());
    }

    #[test]
    fn glue_rows_become_glue_tsv() {
        let sst2 = [record(&[("sentence", st("it 's a charming journey . ")), ("label", Int(1)), ("idx", Int(0))])];
        assert_eq!(
            convert(TaskId::Sst2, &sst2, "x").unwrap(),
            ("sentence\tlabel\nit 's a charming journey . \t1\n".into(), 1)
        );
        let cola = [record(&[("sentence", st("The more we study verbs.")), ("label", Int(0)), ("idx", Int(3))])];
        assert_eq!(convert(TaskId::Cola, &cola, "x").unwrap().0, "\t0\t\tThe more we study verbs.\n");
        let rte = [record(&[("sentence1", st("A")), ("sentence2", st("B")), ("label", Int(1)), ("idx", Int(7))])];
        assert_eq!(
            convert(TaskId::Rte, &rte, "x").unwrap().0,
            "index\tsentence1\tsentence2\tlabel\n7\tA\tB\tnot_entailment\n"
        );
        let mrpc = [record(&[("sentence1", st("a")), ("sentence2", st("b")), ("label", Int(1)), ("idx", Int(0))])];
        assert!(convert(TaskId::Mrpc, &mrpc, "x").unwrap().0.starts_with("\u{feff}Quality\t#1 ID"));
        let stsb =
            [record(&[("sentence1", st("a")), ("sentence2", st("b")), ("label", Value::F32(3.8)), ("idx", Int(1))])];
        assert_eq!(convert(TaskId::Stsb, &stsb, "x").unwrap().0.lines().nth(1), Some("1\t\t\t\t\t\t\ta\tb\t3.8"));
        let mnli = [record(&[("premise", st("p")), ("hypothesis", st("h")), ("label", Int(2)), ("idx", Int(0))])];
        let line = convert(TaskId::Mnli, &mnli, "x").unwrap().0;
        assert!(line.ends_with("\tp\th\t\tcontradiction\n"), "{line}");
        assert_eq!(line.lines().nth(1).unwrap().split('\t').count(), 12);
    }

    #[test]
    fn bad_rows_are_errors_naming_the_row() {
        let test_split = [record(&[("sentence", st("s")), ("label", Int(-1)), ("idx", Int(0))])];
        let err = convert(TaskId::Sst2, &test_split, "glue/sst2/test").unwrap_err().to_string();
        assert!(err.contains("glue/sst2/test row 0: label -1"), "{err}");
        let tab = [record(&[("sentence", st("a\tb")), ("label", Int(0)), ("idx", Int(0))])];
        assert!(convert(TaskId::Sst2, &tab, "f").unwrap_err().to_string().contains("tab or line break"));
        let missing = [record(&[("label", Int(0))])];
        let err = convert(TaskId::Sst2, &missing, "f").unwrap_err().to_string();
        assert!(err.contains("no column 'sentence' (columns: label)"), "{err}");
    }

    #[test]
    fn superglue_rows_become_superglue_jsonl() {
        let cb = [record(&[("premise", st("p")), ("hypothesis", st("h")), ("idx", Int(0)), ("label", Int(1))])];
        let line: serde_json::Value = serde_json::from_str(convert(TaskId::Cb, &cb, "x").unwrap().0.trim()).unwrap();
        assert_eq!(line["label"], "contradiction");
        let wsc = [record(&[
            ("text", st("Mark told Pete many lies about himself.")),
            ("span1_index", Int(0)),
            ("span2_index", Int(5)),
            ("span1_text", st("Mark")),
            ("span2_text", st("himself")),
            ("idx", Int(0)),
            ("label", Int(1)),
        ])];
        let line: serde_json::Value = serde_json::from_str(convert(TaskId::Wsc, &wsc, "x").unwrap().0.trim()).unwrap();
        assert_eq!((line["target"]["span2_index"].as_i64(), line["label"].as_bool()), (Some(5), Some(true)));
    }

    #[test]
    fn multirc_rows_regroup_into_passages() {
        let row = |p: i64, q: i64, a: i64, question: &str, answer: &str, label: i64| {
            record(&[
                ("paragraph", st(&format!("text {p}"))),
                ("question", st(question)),
                ("answer", st(answer)),
                ("idx", Value::Group(record(&[("paragraph", Int(p)), ("question", Int(q)), ("answer", Int(a))]))),
                ("label", Int(label)),
            ])
        };
        let rows = [
            row(0, 0, 0, "q0", "No", 0),
            row(0, 0, 1, "q0", "Yes", 1),
            row(0, 1, 2, "q1", "x", 0),
            row(1, 2, 3, "q2", "y", 1),
        ];
        let (text, lines) = convert(TaskId::Multirc, &rows, "x").unwrap();
        assert_eq!(lines, 2);
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["idx"], 0);
        assert_eq!(first["passage"]["text"], "text 0");
        assert_eq!(first["passage"]["questions"].as_array().unwrap().len(), 2);
        assert_eq!(first["passage"]["questions"][0]["answers"][1], json!({"text": "Yes", "idx": 1, "label": 1}));
        let bad = [row(0, 0, 0, "q0", "No", 0), row(0, 0, 1, "other", "Yes", 1)];
        assert!(convert(TaskId::Multirc, &bad, "x").unwrap_err().to_string().contains("two different texts"));
    }
}
