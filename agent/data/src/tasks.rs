//! Task loaders: each task's real file format parsed into typed examples.
//!
//! Every task has its own parser over the columns (TSV) or fields (JSONL) its files
//! really have; nothing guesses inputs from field names, and a malformed line is an error
//! naming the file and 1-based line number (no skipped lines, no default labels).
//!
//! File formats (under `<data>/glue/<Dir>/`, see `shared::ids::TaskId::layout`):
//!
//! | task | file | inputs used | label column → class index |
//! |---|---|---|---|
//! | SST-2 | TSV, header `sentence label` | sentence | `0` negative = 0, `1` positive = 1 |
//! | CoLA | TSV, **no header**, 4 columns `source label orig_mark sentence` | sentence (col 4) | col 2: `0` unacceptable = 0, `1` acceptable = 1 |
//! | MRPC | TSV (UTF-8 BOM), header `Quality #1 ID #2 ID #1 String #2 String` | `#1 String`, `#2 String` | `Quality`: `0` = 0, `1` paraphrase = 1 |
//! | STS-B | TSV, 10 columns | `sentence1`, `sentence2` | `score`: float in [0, 5] (regression) |
//! | QNLI | TSV `index question sentence label` | question, sentence | `entailment` = 0, `not_entailment` = 1 |
//! | RTE | TSV `index sentence1 sentence2 label` | sentence1 = premise, sentence2 = hypothesis | `entailment` = 0, `not_entailment` = 1 |
//! | WNLI | TSV `index sentence1 sentence2 label` | premise, hypothesis | `0` not_entailment = 0, `1` entailment = 1 |
//! | MNLI | TSV (GLUE, 12/16 columns) | `sentence1`, `sentence2` | `gold_label`: entailment = 0, neutral = 1, contradiction = 2 |
//! | QQP | TSV `id qid1 qid2 question1 question2 is_duplicate` | question1, question2 | `0` = 0, `1` duplicate = 1 |
//! | CB | JSONL | premise, hypothesis | entailment = 0, contradiction = 1, neutral = 2 |
//! | COPA | JSONL | premise, choice1, choice2, question (`cause`/`effect`) | `label` 0 = choice1, 1 = choice2 |
//! | BoolQ | JSONL | question, passage | false = 0, true = 1 |
//! | WiC | JSONL | word, sentence1, sentence2, start/end offsets | false = 0, true = 1 |
//! | WSC | JSONL | text, target.span1 (text, word index), target.span2 (pronoun) | false = 0, true = 1 |
//! | MultiRC | JSONL, one line per passage | paragraph, question, answer (one example per answer option) | answer `label` 0 = 0, 1 = 1 |
//!
//! The class-index conventions follow the Hugging Face `glue` / `super_glue` datasets (so
//! CB and MNLI order their three classes differently, as there). MultiRC is flattened to
//! one example per answer option; every option of a question shares a `group` id, which
//! the split keeps together and exact match is computed over.
//!
//! Length: one parser per task, each beside its file format; the tests (every task's real
//! files) are the last ~300 lines.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use shared::TaskId;
use shared::ids::FileFormat;

use crate::error::{Error, Result};

/// The text inputs of one example, typed by task shape.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// One sentence: SST-2, CoLA.
    Sentence {
        /// The sentence, as in the file.
        sentence: String,
    },
    /// Two sentences compared symmetrically: MRPC (`#1 String`, `#2 String`), STS-B.
    SentencePair {
        /// First sentence.
        sentence1: String,
        /// Second sentence.
        sentence2: String,
    },
    /// Two questions: QQP.
    QuestionPair {
        /// First question.
        question1: String,
        /// Second question.
        question2: String,
    },
    /// Entailment: RTE, WNLI, MNLI (GLUE `sentence1`/`sentence2`), CB.
    PremiseHypothesis {
        /// The premise (GLUE `sentence1`).
        premise: String,
        /// The hypothesis (GLUE `sentence2`).
        hypothesis: String,
    },
    /// QNLI: does the sentence contain the answer to the question?
    QuestionSentence {
        /// The question.
        question: String,
        /// The candidate answer sentence.
        sentence: String,
    },
    /// BoolQ: a yes/no question about a passage.
    QuestionPassage {
        /// The question (lower case, no `?`, as in the file).
        question: String,
        /// The passage (`Title -- text`).
        passage: String,
    },
    /// COPA: pick the more plausible cause or effect of the premise.
    Copa {
        /// The premise sentence.
        premise: String,
        /// First alternative.
        choice1: String,
        /// Second alternative.
        choice2: String,
        /// Whether the alternatives are causes or effects of the premise.
        relation: CopaRelation,
    },
    /// WSC: does the pronoun (span 2) refer to the noun phrase (span 1)?
    Wsc {
        /// The sentence(s).
        text: String,
        /// The candidate referent: text and word index in `text` (split on spaces).
        span1: WscSpan,
        /// The pronoun: text and word index.
        span2: WscSpan,
    },
    /// WiC: is `word` used with the same meaning in both sentences?
    Wic {
        /// The target word (lemma).
        word: String,
        /// First sentence.
        sentence1: String,
        /// Second sentence.
        sentence2: String,
        /// Character span `[start, end)` of the word in `sentence1`.
        span1: (usize, usize),
        /// Character span `[start, end)` of the word in `sentence2`.
        span2: (usize, usize),
    },
    /// MultiRC: is `answer` a correct answer to `question` about `paragraph`?
    MultiRc {
        /// The passage, shared by every answer option of the passage's questions.
        paragraph: Arc<str>,
        /// The question.
        question: String,
        /// One answer option.
        answer: String,
        /// `idx` of the passage line.
        passage_idx: u64,
        /// `idx` of the question.
        question_idx: u64,
    },
}

/// COPA question type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopaRelation {
    /// The alternatives are possible causes of the premise ("… because …").
    Cause,
    /// The alternatives are possible effects of the premise ("… so …").
    Effect,
}

/// A WSC span: its text and the index of its first word in the text split on spaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WscSpan {
    /// The span as written in the file.
    pub text: String,
    /// Word index of the span's first word.
    pub index: usize,
}

/// The gold label of an example.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Label {
    /// A class index in `0..num_labels` (see the module table for each task's mapping).
    Class(usize),
    /// A regression target (STS-B similarity, 0–5).
    Score(f64),
}

impl Label {
    /// The class index, or `None` for a regression target.
    pub fn class(self) -> Option<usize> {
        match self {
            Label::Class(c) => Some(c),
            Label::Score(_) => None,
        }
    }
}

/// One labelled example.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// 1-based line in the source file (for MultiRC, the passage's line).
    pub line: usize,
    /// The inputs.
    pub input: Input,
    /// The gold label.
    pub label: Label,
    /// MultiRC only: a dense id of the (passage, question) pair, numbered in file order,
    /// shared by all answer options of one question. `None` for every other task.
    pub group: Option<u32>,
}

/// The train split of a task as loaded.
#[derive(Debug, Clone)]
pub struct TrainData {
    /// The examples, in file order.
    pub examples: Vec<Example>,
    /// The file they came from.
    pub path: PathBuf,
    /// True when the file is the 32-example FewGLUE subset (`train_fewglue32.jsonl`)
    /// rather than the full official train split; results must record this.
    pub fewglue_subset: bool,
}

/// A task's train split (when present) and official validation split.
#[derive(Debug, Clone)]
pub struct LoadedTask {
    /// The task.
    pub task: TaskId,
    /// The train split, `None` when the data directory has no train file for the task
    /// (evaluation only). Use [`LoadedTask::train`] to get it or a clear error.
    pub train_data: Option<TrainData>,
    /// The official validation split (our test pool), in file order.
    pub validation: Vec<Example>,
    /// The validation file.
    pub validation_path: PathBuf,
    /// The preferred train file, named in the error when no train file exists.
    expected_train_path: PathBuf,
}

impl LoadedTask {
    /// The train split, or an error naming the missing train file.
    pub fn train(&self) -> Result<&TrainData> {
        self.train_data.as_ref().ok_or_else(|| missing_train_error(self.task, &self.expected_train_path))
    }
}

fn missing_train_error(task: TaskId, path: &Path) -> Error {
    Error::data(
        path,
        format!("task '{task}' has no train split: the file does not exist, so the task can only be evaluated"),
    )
}

fn task_dir(task: TaskId, data_dir: &Path) -> PathBuf {
    data_dir.join("glue").join(task.layout().dir)
}

/// The train file to use: the first of the layout's candidates that exists (the full
/// split before the FewGLUE subset), or `None`.
pub fn find_train_file(task: TaskId, data_dir: &Path) -> Option<PathBuf> {
    let dir = task_dir(task, data_dir);
    task.layout().train.iter().map(|name| dir.join(name)).find(|p| p.is_file())
}

fn is_fewglue(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("train_fewglue"))
}

/// Loads the train split, or fails naming the missing train file.
pub fn load_train(task: TaskId, data_dir: &Path) -> Result<TrainData> {
    match find_train_file(task, data_dir) {
        Some(path) => Ok(TrainData { examples: load_file(task, &path)?, fewglue_subset: is_fewglue(&path), path }),
        None => Err(missing_train_error(task, &task_dir(task, data_dir).join(task.layout().train[0]))),
    }
}

/// Loads the official validation split, or fails naming the missing file.
pub fn load_validation(task: TaskId, data_dir: &Path) -> Result<(PathBuf, Vec<Example>)> {
    let path = task_dir(task, data_dir).join(task.layout().validation);
    if !path.is_file() {
        return Err(Error::data(
            &path,
            format!(
                "task '{task}': the validation file does not exist, so the task can be neither trained nor evaluated"
            ),
        ));
    }
    let examples = load_file(task, &path)?;
    Ok((path, examples))
}

/// Loads a task: the validation split (required) and the train split when its file
/// exists. A train file that exists but is malformed is an error, not "no train data".
pub fn load_task(task: TaskId, data_dir: &Path) -> Result<LoadedTask> {
    let (validation_path, validation) = load_validation(task, data_dir)?;
    let train_data = match find_train_file(task, data_dir) {
        Some(_) => Some(load_train(task, data_dir)?),
        None => None,
    };
    Ok(LoadedTask {
        task,
        train_data,
        validation,
        validation_path,
        expected_train_path: task_dir(task, data_dir).join(task.layout().train[0]),
    })
}

/// Parses one file of `task` (train or validation; both have the same format).
pub fn load_file(task: TaskId, path: &Path) -> Result<Vec<Example>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = String::from_utf8(bytes).map_err(|e| Error::data(path, format!("not valid UTF-8: {e}")))?;
    let examples = match task.layout().format {
        FileFormat::Tsv => parse_tsv_task(task, path, &text)?,
        FileFormat::Jsonl => parse_jsonl_task(task, path, &text)?,
    };
    if examples.is_empty() {
        return Err(Error::data(path, "the file has no examples"));
    }
    Ok(examples)
}

// ---------------------------------------------------------------------------------------
// Line handling shared by both formats.

/// Splits a file into `(1-based line number, line)` pairs: strips a leading UTF-8 BOM
/// (MRPC has one) and a trailing `\r`, and drops only the empty piece after a final
/// newline. Every other line, empty or not, is returned so the parsers can reject it.
fn lines(text: &str) -> Vec<(usize, &str)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out: Vec<(usize, &str)> =
        text.split('\n').enumerate().map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l))).collect();
    if out.last().is_some_and(|(_, l)| l.is_empty()) {
        out.pop();
    }
    out
}

fn at_line(path: &Path, line: usize, message: impl std::fmt::Display) -> Error {
    Error::data(path, format!("line {line}: {message}"))
}

/// Maps a label string to its class index through the file's label values.
fn class_of(value: &str, values: &[&str]) -> std::result::Result<usize, String> {
    values
        .iter()
        .position(|v| *v == value)
        .ok_or_else(|| format!("unparsable label '{value}' (expected one of: {})", values.join(", ")))
}

// ---------------------------------------------------------------------------------------
// TSV (GLUE). Quoting is off: a line is split on '\t' and nothing else.

/// Which columns a TSV parser reads.
enum Columns<'a> {
    /// The file starts with a header; read these columns by name.
    Header(&'a [&'a str]),
    /// No header (CoLA): exactly `count` columns, read these 0-based positions.
    Fixed { count: usize, picks: &'a [usize] },
}

/// Parses a TSV file, handing the selected columns of every data row to `row`.
fn parse_tsv(
    path: &Path,
    text: &str,
    columns: Columns<'_>,
    mut row: impl FnMut(&[&str]) -> std::result::Result<(Input, Label), String>,
) -> Result<Vec<Example>> {
    let all = lines(text);
    let (count, picks, data): (usize, Vec<usize>, &[(usize, &str)]) = match columns {
        Columns::Header(names) => {
            let Some(((_, header), rest)) = all.split_first() else {
                return Err(Error::data(path, "empty file: expected a header line"));
            };
            let header: Vec<&str> = header.split('\t').collect();
            let picks = names
                .iter()
                .map(|name| {
                    header.iter().position(|h| h == name).ok_or_else(|| {
                        at_line(path, 1, format!("header has no column '{name}' (header: {})", header.join(" | ")))
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            (header.len(), picks, rest)
        }
        Columns::Fixed { count, picks } => (count, picks.to_vec(), &all[..]),
    };
    let mut out = Vec::with_capacity(data.len());
    let mut fields = Vec::with_capacity(count);
    for &(n, line) in data {
        fields.clear();
        fields.extend(line.split('\t'));
        if fields.len() != count {
            return Err(at_line(path, n, format!("expected {count} tab-separated columns, found {}", fields.len())));
        }
        let selected: Vec<&str> = picks.iter().map(|&i| fields[i]).collect();
        let (input, label) = row(&selected).map_err(|m| at_line(path, n, m))?;
        out.push(Example { line: n, input, label, group: None });
    }
    Ok(out)
}

fn parse_tsv_task(task: TaskId, path: &Path, text: &str) -> Result<Vec<Example>> {
    let s = |v: &str| v.to_string();
    match task {
        TaskId::Sst2 => parse_tsv(path, text, Columns::Header(&["sentence", "label"]), |c| {
            Ok((Input::Sentence { sentence: s(c[0]) }, Label::Class(class_of(c[1], &["0", "1"])?)))
        }),
        // GLUE CoLA: source, label, original acceptability mark, sentence; no header.
        TaskId::Cola => parse_tsv(path, text, Columns::Fixed { count: 4, picks: &[1, 3] }, |c| {
            Ok((Input::Sentence { sentence: s(c[1]) }, Label::Class(class_of(c[0], &["0", "1"])?)))
        }),
        TaskId::Mrpc => parse_tsv(path, text, Columns::Header(&["Quality", "#1 String", "#2 String"]), |c| {
            Ok((
                Input::SentencePair { sentence1: s(c[1]), sentence2: s(c[2]) },
                Label::Class(class_of(c[0], &["0", "1"])?),
            ))
        }),
        TaskId::Stsb => parse_tsv(path, text, Columns::Header(&["sentence1", "sentence2", "score"]), |c| {
            let score: f64 = c[2].parse().map_err(|_| format!("unparsable score '{}'", c[2]))?;
            if !(0.0..=5.0).contains(&score) {
                return Err(format!("score {score} outside [0, 5]"));
            }
            Ok((Input::SentencePair { sentence1: s(c[0]), sentence2: s(c[1]) }, Label::Score(score)))
        }),
        TaskId::Qnli => parse_tsv(path, text, Columns::Header(&["question", "sentence", "label"]), |c| {
            Ok((
                Input::QuestionSentence { question: s(c[0]), sentence: s(c[1]) },
                Label::Class(class_of(c[2], &["entailment", "not_entailment"])?),
            ))
        }),
        TaskId::Rte => parse_tsv(path, text, Columns::Header(&["sentence1", "sentence2", "label"]), |c| {
            Ok((
                Input::PremiseHypothesis { premise: s(c[0]), hypothesis: s(c[1]) },
                Label::Class(class_of(c[2], &["entailment", "not_entailment"])?),
            ))
        }),
        TaskId::Wnli => parse_tsv(path, text, Columns::Header(&["sentence1", "sentence2", "label"]), |c| {
            Ok((
                Input::PremiseHypothesis { premise: s(c[0]), hypothesis: s(c[1]) },
                Label::Class(class_of(c[2], &["0", "1"])?),
            ))
        }),
        TaskId::Mnli => parse_tsv(path, text, Columns::Header(&["sentence1", "sentence2", "gold_label"]), |c| {
            Ok((
                Input::PremiseHypothesis { premise: s(c[0]), hypothesis: s(c[1]) },
                Label::Class(class_of(c[2], &["entailment", "neutral", "contradiction"])?),
            ))
        }),
        TaskId::Qqp => parse_tsv(path, text, Columns::Header(&["question1", "question2", "is_duplicate"]), |c| {
            Ok((
                Input::QuestionPair { question1: s(c[0]), question2: s(c[1]) },
                Label::Class(class_of(c[2], &["0", "1"])?),
            ))
        }),
        other => Err(Error::NotStoredAs { task: other, format: "TSV" }),
    }
}

// ---------------------------------------------------------------------------------------
// JSONL (SuperGLUE). One JSON object per line; only the fields below are read, extra
// fields (idx, version, ...) are ignored, missing or mistyped ones are errors.

#[derive(Deserialize)]
struct CbRow {
    premise: String,
    hypothesis: String,
    label: String,
}

#[derive(Deserialize)]
struct CopaRow {
    premise: String,
    choice1: String,
    choice2: String,
    question: String,
    label: u64,
}

#[derive(Deserialize)]
struct BoolqRow {
    question: String,
    passage: String,
    label: bool,
}

#[derive(Deserialize)]
struct WicRow {
    word: String,
    sentence1: String,
    sentence2: String,
    start1: usize,
    end1: usize,
    start2: usize,
    end2: usize,
    label: bool,
}

#[derive(Deserialize)]
struct WscTarget {
    span1_index: usize,
    span1_text: String,
    span2_index: usize,
    span2_text: String,
}

#[derive(Deserialize)]
struct WscRow {
    text: String,
    target: WscTarget,
    label: bool,
}

#[derive(Deserialize)]
struct MultircAnswer {
    text: String,
    label: u64,
}

#[derive(Deserialize)]
struct MultircQuestion {
    question: String,
    answers: Vec<MultircAnswer>,
    idx: u64,
}

#[derive(Deserialize)]
struct MultircPassage {
    text: String,
    questions: Vec<MultircQuestion>,
}

#[derive(Deserialize)]
struct MultircRow {
    idx: u64,
    passage: MultircPassage,
}

/// Parses every line of a JSONL file as `T` and hands it to `f`, which appends examples.
fn parse_jsonl<T: DeserializeOwned>(
    path: &Path,
    text: &str,
    mut f: impl FnMut(T, usize, &mut Vec<Example>) -> std::result::Result<(), String>,
) -> Result<Vec<Example>> {
    let mut out = Vec::new();
    for (n, line) in lines(text) {
        if line.trim().is_empty() {
            return Err(at_line(path, n, "empty line"));
        }
        let row: T = serde_json::from_str(line).map_err(|e| at_line(path, n, format!("bad JSON record: {e}")))?;
        f(row, n, &mut out).map_err(|m| at_line(path, n, m))?;
    }
    Ok(out)
}

fn binary(label: bool) -> Label {
    Label::Class(usize::from(label))
}

fn zero_one(label: u64) -> std::result::Result<usize, String> {
    match label {
        0 | 1 => Ok(label as usize),
        other => Err(format!("unparsable label {other} (expected 0 or 1)")),
    }
}

fn parse_jsonl_task(task: TaskId, path: &Path, text: &str) -> Result<Vec<Example>> {
    let one = |out: &mut Vec<Example>, line, input, label| out.push(Example { line, input, label, group: None });
    match task {
        TaskId::Cb => parse_jsonl(path, text, |r: CbRow, n, out| {
            let label = class_of(&r.label, &["entailment", "contradiction", "neutral"])?;
            one(out, n, Input::PremiseHypothesis { premise: r.premise, hypothesis: r.hypothesis }, Label::Class(label));
            Ok(())
        }),
        TaskId::Copa => parse_jsonl(path, text, |r: CopaRow, n, out| {
            let relation = match r.question.as_str() {
                "cause" => CopaRelation::Cause,
                "effect" => CopaRelation::Effect,
                other => return Err(format!("unknown COPA question '{other}' (expected cause or effect)")),
            };
            let input = Input::Copa { premise: r.premise, choice1: r.choice1, choice2: r.choice2, relation };
            one(out, n, input, Label::Class(zero_one(r.label)?));
            Ok(())
        }),
        TaskId::Boolq => parse_jsonl(path, text, |r: BoolqRow, n, out| {
            one(out, n, Input::QuestionPassage { question: r.question, passage: r.passage }, binary(r.label));
            Ok(())
        }),
        TaskId::Wic => parse_jsonl(path, text, |r: WicRow, n, out| {
            let input = Input::Wic {
                word: r.word,
                sentence1: r.sentence1,
                sentence2: r.sentence2,
                span1: (r.start1, r.end1),
                span2: (r.start2, r.end2),
            };
            one(out, n, input, binary(r.label));
            Ok(())
        }),
        TaskId::Wsc => parse_jsonl(path, text, |r: WscRow, n, out| {
            let t = r.target;
            let input = Input::Wsc {
                text: r.text,
                span1: WscSpan { text: t.span1_text, index: t.span1_index },
                span2: WscSpan { text: t.span2_text, index: t.span2_index },
            };
            one(out, n, input, binary(r.label));
            Ok(())
        }),
        TaskId::Multirc => {
            let mut next_group: u32 = 0;
            parse_jsonl(path, text, |r: MultircRow, n, out| {
                if r.passage.questions.is_empty() {
                    return Err("passage has no questions".into());
                }
                let paragraph: Arc<str> = Arc::from(r.passage.text);
                for q in r.passage.questions {
                    if q.answers.is_empty() {
                        return Err(format!("question {} has no answer options", q.idx));
                    }
                    let group = next_group;
                    next_group = next_group.checked_add(1).ok_or("more than 2^32 questions")?;
                    for a in q.answers {
                        let input = Input::MultiRc {
                            paragraph: Arc::clone(&paragraph),
                            question: q.question.clone(),
                            answer: a.text,
                            passage_idx: r.idx,
                            question_idx: q.idx,
                        };
                        out.push(Example {
                            line: n,
                            input,
                            label: Label::Class(zero_one(a.label)?),
                            group: Some(group),
                        });
                    }
                }
                Ok(())
            })
        }
        other => Err(Error::NotStoredAs { task: other, format: "JSONL" }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::task_info;
    use crate::test_util::data_dir as test_data_dir;

    fn class_counts(examples: &[Example], n: usize) -> Vec<usize> {
        let mut counts = vec![0; n];
        for e in examples {
            counts[e.label.class().unwrap()] += 1;
        }
        counts
    }

    /// Row counts from PROVENANCE.md (train, validation), and the train file kind.
    #[test]
    fn every_present_task_loads_with_provenance_counts() {
        let dir = test_data_dir();
        // (task, Some((train rows, FewGLUE subset)) or None without train file, validation rows)
        type Expected = (TaskId, Option<(usize, bool)>, usize);
        let expected: &[Expected] = &[
            (TaskId::Sst2, Some((67_349, false)), 872),
            (TaskId::Cola, Some((8_551, false)), 1_043),
            (TaskId::Mrpc, Some((3_668, false)), 408),
            (TaskId::Stsb, Some((5_749, false)), 1_500),
            (TaskId::Rte, Some((2_490, false)), 277),
            (TaskId::Wnli, Some((635, false)), 71),
            (TaskId::Qnli, None, 5_463),
            (TaskId::Cb, Some((250, false)), 56),
            (TaskId::Copa, Some((400, false)), 100),
            (TaskId::Boolq, Some((32, true)), 3_270),
            (TaskId::Wic, Some((32, true)), 638),
            (TaskId::Wsc, Some((32, true)), 104),
            // MultiRC counts answer rows: FewGLUE has 32 passages / 154 answer options.
            (TaskId::Multirc, Some((154, true)), 4_848),
        ];
        for &(task, train, val) in expected {
            let t = load_task(task, &dir).unwrap_or_else(|e| panic!("{task}: {e}"));
            assert_eq!(t.validation.len(), val, "{task} validation");
            match train {
                Some((n, fewglue)) => {
                    let tr = t.train().unwrap();
                    assert_eq!(tr.examples.len(), n, "{task} train");
                    assert_eq!(tr.fewglue_subset, fewglue, "{task} fewglue");
                    assert!(tr.path.is_file());
                }
                None => assert!(t.train_data.is_none(), "{task}"),
            }
            let info = task_info(task);
            for e in t.validation.iter().chain(t.train_data.iter().flat_map(|d| d.examples.iter())) {
                match e.label {
                    Label::Class(c) => assert!(c < info.num_labels, "{task} class {c}"),
                    Label::Score(s) => assert!(task == TaskId::Stsb && (0.0..=5.0).contains(&s)),
                }
            }
        }
    }

    #[test]
    fn label_distributions_match_provenance() {
        let dir = test_data_dir();
        // SST-2 dev: 428 negative / 444 positive.
        let (_, sst2) = load_validation(TaskId::Sst2, &dir).unwrap();
        assert_eq!(class_counts(&sst2, 2), vec![428, 444]);
        // RTE dev: 146 entailment (0) / 131 not_entailment (1).
        let (_, rte) = load_validation(TaskId::Rte, &dir).unwrap();
        assert_eq!(class_counts(&rte, 2), vec![146, 131]);
        // QNLI dev: 2,702 entailment / 2,761 not_entailment.
        let (_, qnli) = load_validation(TaskId::Qnli, &dir).unwrap();
        assert_eq!(class_counts(&qnli, 2), vec![2_702, 2_761]);
        // MRPC train: 1,194 negative / 2,474 paraphrase.
        let mrpc = load_train(TaskId::Mrpc, &dir).unwrap();
        assert_eq!(class_counts(&mrpc.examples, 2), vec![1_194, 2_474]);
        // CB dev (counted from the file): 23 entailment / 28 contradiction / 5 neutral.
        let (_, cb) = load_validation(TaskId::Cb, &dir).unwrap();
        assert_eq!(class_counts(&cb, 3), vec![23, 28, 5]);
        // WSC dev: 66 false / 38 true (MeZO: majority class = 63.5%).
        let (_, wsc) = load_validation(TaskId::Wsc, &dir).unwrap();
        assert_eq!(class_counts(&wsc, 2), vec![66, 38]);
    }

    #[test]
    fn multirc_groups_are_questions() {
        let (_, dev) = load_validation(TaskId::Multirc, &test_data_dir()).unwrap();
        let mut groups: Vec<u32> = dev.iter().map(|e| e.group.unwrap()).collect();
        groups.dedup();
        // 953 questions over 83 passages; groups are contiguous and dense.
        assert_eq!(groups.len(), 953);
        assert_eq!(groups, (0..953).collect::<Vec<u32>>());
        let Input::MultiRc { paragraph, question, answer, passage_idx, question_idx } = &dev[0].input else {
            panic!("not MultiRC: {:?}", dev[0].input)
        };
        assert!(paragraph.starts_with("What causes a change in motion?"));
        assert_eq!(question, "Would the mass of a baseball affect how much force you have to use to pick it up?");
        assert_eq!((answer.as_str(), *passage_idx, *question_idx), ("No", 0, 0));
        assert_eq!(dev[0].label, Label::Class(0));
        assert_eq!(dev[1].label, Label::Class(1));
        // The paragraph is shared, not copied, between the options of a passage.
        let Input::MultiRc { paragraph: p1, .. } = &dev[1].input else { panic!() };
        assert!(Arc::ptr_eq(paragraph, p1));
    }

    #[test]
    fn real_rows_parse_into_the_right_fields() {
        let dir = test_data_dir();
        let (_, mrpc) = load_validation(TaskId::Mrpc, &dir).unwrap();
        // The BOM is stripped (the header was found) and the first row is line 2.
        assert_eq!(mrpc[0].line, 2);
        assert_eq!(mrpc[0].label, Label::Class(1));
        let Input::SentencePair { sentence1, sentence2 } = &mrpc[0].input else { panic!() };
        assert!(sentence1.starts_with("He said the foodservice pie business"));
        assert!(sentence2.starts_with("\" The foodservice pie business"), "quotes kept: {sentence2}");

        let (_, cola) = load_validation(TaskId::Cola, &dir).unwrap();
        assert_eq!(cola[0].line, 1);
        assert_eq!(
            cola[0].input,
            Input::Sentence { sentence: "The sailors rode the breeze clear of the rocks.".into() }
        );

        let (_, stsb) = load_validation(TaskId::Stsb, &dir).unwrap();
        assert_eq!(stsb[1].label, Label::Score(4.75));
        assert_eq!(
            stsb[1].input,
            Input::SentencePair {
                sentence1: "A young child is riding a horse.".into(),
                sentence2: "A child is riding a horse.".into()
            }
        );

        let (_, copa) = load_validation(TaskId::Copa, &dir).unwrap();
        assert_eq!(
            copa[0].input,
            Input::Copa {
                premise: "The man turned on the faucet.".into(),
                choice1: "The toilet filled with water.".into(),
                choice2: "Water flowed from the spout.".into(),
                relation: CopaRelation::Effect,
            }
        );
        assert_eq!(copa[0].label, Label::Class(1));

        let (_, wsc) = load_validation(TaskId::Wsc, &dir).unwrap();
        let Input::Wsc { span1, span2, .. } = &wsc[0].input else { panic!() };
        assert_eq!((span1.text.as_str(), span1.index, span2.text.as_str(), span2.index), ("anyone", 32, "him", 47));

        let (_, wic) = load_validation(TaskId::Wic, &dir).unwrap();
        let Input::Wic { word, span1, span2, .. } = &wic[0].input else { panic!() };
        assert_eq!((word.as_str(), *span1, *span2), ("class", (25, 30), (85, 90)));
    }

    #[test]
    fn missing_train_and_validation_files_are_named() {
        let dir = test_data_dir();
        // QNLI: evaluation works, asking for train data names the missing file.
        let qnli = load_task(TaskId::Qnli, &dir).unwrap();
        let err = qnli.train().unwrap_err().to_string();
        assert!(err.contains("QNLI/train.tsv") && err.contains("no train split"), "{err}");
        for task in [TaskId::Mnli, TaskId::Qqp] {
            let err = load_train(task, &dir).unwrap_err().to_string();
            let dir_name = task.layout().dir;
            assert!(err.contains(&format!("{dir_name}/train.tsv")), "{err}");
            let err = load_task(task, &dir).unwrap_err().to_string();
            let val = format!("{dir_name}/{}", task.layout().validation);
            assert!(err.contains(&val) && err.contains("validation file does not exist"), "{err}");
        }
    }

    fn write(dir: &Path, rel: &str, content: &str) -> PathBuf {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
        path
    }

    #[test]
    fn malformed_tsv_lines_are_errors_with_file_and_line() {
        let tmp = tempfile::tempdir().unwrap();
        let cases: &[(TaskId, &str, &str)] = &[
            // Wrong column count on line 3.
            (
                TaskId::Sst2,
                "sentence\tlabel\ngood .\t1\nbad .\t0\textra\n",
                "line 3: expected 2 tab-separated columns, found 3",
            ),
            // Unparsable label.
            (TaskId::Sst2, "sentence\tlabel\ngood .\tpositive\n", "line 2: unparsable label 'positive'"),
            // A blank line in the middle is a malformed row, not skipped.
            (
                TaskId::Sst2,
                "sentence\tlabel\ngood .\t1\n\nbad .\t0\n",
                "line 3: expected 2 tab-separated columns, found 1",
            ),
            // Missing header column.
            (TaskId::Rte, "index\tsentence1\tsentence2\n0\ta\tb\n", "line 1: header has no column 'label'"),
            (TaskId::Rte, "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n", "line 2: unparsable label 'maybe'"),
            (TaskId::Cola, "gj04\t1\t\tok\ngj04\t1\tnot enough\n", "line 2: expected 4 tab-separated columns, found 3"),
            (TaskId::Stsb, &stsb_row("5.5"), "line 2: score 5.5 outside [0, 5]"),
            (TaskId::Stsb, &stsb_row("high"), "line 2: unparsable score 'high'"),
            (TaskId::Sst2, "", "empty file"),
            (TaskId::Sst2, "sentence\tlabel\n", "no examples"),
        ];
        for (i, (task, content, want)) in cases.iter().enumerate() {
            let path = write(tmp.path(), &format!("{i}/train.tsv"), content);
            let err = load_file(*task, &path).unwrap_err().to_string();
            assert!(err.contains(&path.display().to_string()) && err.contains(want), "case {i}: {err}");
        }
    }

    /// MNLI and QQP have no files in the shared data directory; these rows follow the GLUE
    /// distribution's headers (MNLI's dev files carry five annotator labels before the gold one).
    #[test]
    fn mnli_and_qqp_rows_in_the_glue_layout_parse() {
        let tmp = tempfile::tempdir().unwrap();
        let mnli_header = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t\
                           sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\t\
                           label5\tgold_label";
        let mnli = format!(
            "{mnli_header}\n0\t1\t1n\tfiction\tb\tb\tp\tp\tA man sleeps.\tNobody sleeps.\tcontradiction\t\
             contradiction\tneutral\tcontradiction\tcontradiction\tcontradiction\n\
             1\t2\t2e\tslate\tb\tb\tp\tp\tIt rains.\tIt is wet.\tentailment\tentailment\tentailment\t\
             entailment\tentailment\tentailment\n"
        );
        let path = write(tmp.path(), "MNLI/dev_matched.tsv", &mnli);
        let rows = load_file(TaskId::Mnli, &path).unwrap();
        assert_eq!(rows.len(), 2);
        assert!(matches!(
            &rows[0].input,
            Input::PremiseHypothesis { premise, hypothesis } if premise == "A man sleeps." && hypothesis == "Nobody sleeps."
        ));
        assert!(matches!(rows[0].label, Label::Class(2)) && matches!(rows[1].label, Label::Class(0)));

        let qqp = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n\
                   7\t13\t14\tHow do I learn Rust?\tWhat is the best way to learn Rust?\t1\n\
                   8\t15\t16\tWhy is the sky blue?\tHow tall is Everest?\t0\n";
        let path = write(tmp.path(), "QQP/dev.tsv", qqp);
        let rows = load_file(TaskId::Qqp, &path).unwrap();
        assert_eq!(rows.len(), 2);
        assert!(matches!(
            &rows[0].input,
            Input::QuestionPair { question1, question2 }
                if question1 == "How do I learn Rust?" && question2 == "What is the best way to learn Rust?"
        ));
        assert!(matches!(rows[0].label, Label::Class(1)) && matches!(rows[1].label, Label::Class(0)));
        let bad = write(
            tmp.path(),
            "QQP/train.tsv",
            "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n1\t1\t2\ta\tb\tyes\n",
        );
        let err = load_file(TaskId::Qqp, &bad).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("unparsable label 'yes'"), "{err}");
    }

    fn stsb_row(score: &str) -> String {
        let header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore";
        format!("{header}\n0\tg\tf\ty\t0\tnone\tnone\tA.\tB.\t{score}\n")
    }

    #[test]
    fn malformed_jsonl_lines_are_errors_with_file_and_line() {
        let tmp = tempfile::tempdir().unwrap();
        let good_cb = r#"{"premise": "p", "hypothesis": "h", "label": "neutral", "idx": 0}"#;
        let cases: &[(TaskId, String, &str)] = &[
            (TaskId::Cb, format!("{good_cb}\n{{\"premise\": \"p\"\n"), "line 2: bad JSON record"),
            (
                TaskId::Cb,
                format!("{good_cb}\n{}\n", good_cb.replace("neutral", "unknown")),
                "line 2: unparsable label 'unknown'",
            ),
            (TaskId::Cb, format!("{good_cb}\n\n{good_cb}\n"), "line 2: empty line"),
            // A missing field is a bad record, not a default.
            (
                TaskId::Boolq,
                r#"{"question": "q", "passage": "p"}"#.to_string(),
                "line 1: bad JSON record: missing field `label`",
            ),
            (
                TaskId::Copa,
                r#"{"premise": "p", "choice1": "a", "choice2": "b", "question": "why", "label": 0}"#.to_string(),
                "line 1: unknown COPA question 'why'",
            ),
            (
                TaskId::Copa,
                r#"{"premise": "p", "choice1": "a", "choice2": "b", "question": "cause", "label": 2}"#.to_string(),
                "line 1: unparsable label 2",
            ),
            (
                TaskId::Multirc,
                r#"{"idx": 0, "passage": {"text": "t", "questions": [{"question": "q", "idx": 0, "answers": []}]}}"#
                    .to_string(),
                "line 1: question 0 has no answer options",
            ),
        ];
        for (i, (task, content, want)) in cases.iter().enumerate() {
            let path = write(tmp.path(), &format!("{i}/dev.jsonl"), content);
            let err = load_file(*task, &path).unwrap_err().to_string();
            assert!(err.contains(&path.display().to_string()) && err.contains(want), "case {i}: {err}");
        }
    }
}
