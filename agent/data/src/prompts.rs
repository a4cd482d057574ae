//! The text of each example in the two input formats. Pure string work; tokenization and
//! truncation are in `encode`.
//!
//! # Classification-head format (Qwen3 methods `qwen3`, `rev-qwen3`)
//!
//! The model reads one text and classifies from its last non-pad token. Field values are
//! trimmed; no special tokens are added. The text is a list of pieces: fixed labels
//! (never truncated) and segments (truncated when the text exceeds `max_seq_len`; lower
//! `priority` is cut first, longest first within a priority; a segment keeps its start).
//!
//! | task | text | cut first |
//! |---|---|---|
//! | SST-2, CoLA | `{sentence}` | the sentence (end) |
//! | MRPC, STS-B | `Sentence 1: {s1}\nSentence 2: {s2}` | longer sentence |
//! | QQP | `Question 1: {q1}\nQuestion 2: {q2}` | longer question |
//! | RTE, WNLI, MNLI, CB | `Premise: {premise}\nHypothesis: {hypothesis}` | longer of the two |
//! | QNLI | `Sentence: {sentence}\nQuestion: {question}` | sentence, then question |
//! | BoolQ | `Passage: {passage}\nQuestion: {question}?` | passage, then question |
//! | COPA | `Premise: {premise}\nWhat was the {cause\|effect}?\nChoice 1: {c1}\nChoice 2: {c2}` | longest |
//! | WSC | `Text: {text}\nDoes the pronoun "{span2}" refer to "{span1}"?` (question fixed) | text |
//! | WiC | `Sentence 1: {s1}\nSentence 2: {s2}\nWord: {word}` | longer sentence, then word |
//! | MultiRC | `Paragraph: {p}\nQuestion: {q}\nAnswer: {a}` | paragraph, then question/answer |
//!
//! # Prompt + label-word format (OPT methods `ft-opt`, `mezo-opt`, `dizo-opt`)
//!
//! One text per candidate (class or COPA choice): the prompt, then the verbalized option.
//! As in MeZO's `encode_prompt`, spaces (only `' '`) are stripped from both ends of the
//! prompt and of every full text, so `option_len = len(tok(full)) − len(tok(prompt))`.
//! The templates of SST-2, RTE, CB, BoolQ (V3), WSC, WiC, MultiRC and COPA are MeZO's
//! (`large_models/templates.py`) verbatim:
//!
//! | task | prompt | options (class 0, 1, 2) |
//! |---|---|---|
//! | SST-2 | `{sentence.strip()} It was` | ` terrible`, ` great` |
//! | RTE | `{premise}\nDoes this mean that "{hypothesis}" is true? Yes or No?\n` | `Yes`, `No` |
//! | CB | `Suppose {premise} Can we infer that "{hypothesis}"? Yes, No, or Maybe?\n` | `Yes`, `No`, `Maybe` |
//! | BoolQ | `{passage} {Question}?\n` (first letter upper-cased, `?` added if missing) | `No`, `Yes` |
//! | WSC | `{text}\nIn the previous sentence, does the pronoun "{span2.lower()}" refer to {span1}? Yes or No?\n` | `No`, `Yes` |
//! | WiC | `Does the word "{word}" have the same meaning in these two sentences? Yes, No?\n{s1}\n{s2}\n` | `No`, `Yes` |
//! | MultiRC | `{paragraph}\nQuestion: {question}\nI found this answer "{answer}". Is that correct? Yes or No?\n` | `No`, `Yes` |
//! | COPA | premise without its final `.` + ` so ` (effect) / ` because ` (cause) | each choice, first word lower-cased unless it is `I` |
//!
//! Templates of our own, in the same style, for the tasks MeZO does not cover:
//!
//! | task | prompt | options (class 0, 1, 2) |
//! |---|---|---|
//! | CoLA | `{sentence}\nIs this sentence grammatically correct? Yes or No?\n` | `No`, `Yes` |
//! | MRPC | `{s1}\nDoes this sentence mean the same as "{s2}"? Yes or No?\n` | `No`, `Yes` |
//! | QQP | `{q1}\nIs this question asking the same thing as "{q2}"? Yes or No?\n` | `No`, `Yes` |
//! | QNLI | `{sentence}\nDoes this sentence answer the question "{question}"? Yes or No?\n` | `Yes`, `No` |
//! | WNLI | RTE's template | `No`, `Yes` (WNLI class 0 is not_entailment) |
//! | MNLI | CB's template | `Yes`, `Maybe`, `No` (entailment, neutral, contradiction) |
//!
//! STS-B (regression) has no label words: the pair is refused with `Error::NoLabelWords`.
//! Candidate order is class-index order (MeZO lists BoolQ's as `Yes`, `No`; only the
//! gold index changes). Training uses CE over the candidates' mean option log-probs,
//! except COPA, which MeZO trains with the LM loss of the gold candidate only
//! ([`TrainObjective`]).

use shared::{Family, ModelId, TaskId};

use crate::error::{Error, Result};
use crate::tasks::{CopaRelation, Example, Input, Label};

/// How a model family reads an example.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    /// One text, a classification (or regression) head on the last token (Qwen3).
    ClassifierHead,
    /// One prompt + verbalized option per candidate, scored by the LM (OPT).
    PromptLabelWords,
}

impl InputFormat {
    /// The format a model family uses.
    pub fn for_family(family: Family) -> Self {
        match family {
            Family::Qwen3 => InputFormat::ClassifierHead,
            Family::Opt => InputFormat::PromptLabelWords,
        }
    }

    /// The format a model (method) uses.
    pub fn for_model(model: ModelId) -> Self {
        Self::for_family(model.family())
    }
}

/// What the training loss of a prompt-format task is (MeZO §1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainObjective {
    /// Cross-entropy over candidates, each scored by its mean option-token log-prob.
    CandidateCe,
    /// Token-level LM cross-entropy on the gold candidate's option tokens only.
    GoldLm,
}

/// The training objective of `task` in the prompt format: COPA uses the gold-only LM
/// loss (MeZO `--train_as_classification False`), every other task candidate CE.
pub fn train_objective(task: TaskId) -> TrainObjective {
    match task {
        TaskId::Copa => TrainObjective::GoldLm,
        _ => TrainObjective::CandidateCe,
    }
}

/// Refuses method × task pairs that make no sense (STS-B regression with label words).
pub fn check_supported(task: TaskId, format: InputFormat) -> Result<()> {
    if task == TaskId::Stsb && format == InputFormat::PromptLabelWords {
        // Which methods this rules out is `ModelId::unsupported_reason`'s business.
        return Err(Error::NoLabelWords { task });
    }
    Ok(())
}

/// A piece of a classification-format text.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    /// Fixed text (field labels, separators); never truncated.
    Fixed(String),
    /// Example text; truncated at its end when needed, lower `priority` first.
    Segment {
        /// The text, including the space that separates it from the preceding label.
        text: String,
        /// Truncation order: 0 is cut before 1.
        priority: u8,
    },
}

/// A classification-format text as pieces (see the module table).
#[derive(Debug, Clone, PartialEq)]
pub struct ClassifierText {
    /// The pieces, in reading order.
    pub pieces: Vec<Piece>,
}

impl ClassifierText {
    /// The full text.
    pub fn joined(&self) -> String {
        self.pieces
            .iter()
            .map(|p| match p {
                Piece::Fixed(s) | Piece::Segment { text: s, .. } => s.as_str(),
            })
            .collect()
    }
}

fn mismatch(task: TaskId, input: &Input) -> Error {
    Error::ExampleShape { task, shape: shape_name(input) }
}

fn shape_name(input: &Input) -> &'static str {
    match input {
        Input::Sentence { .. } => "Sentence",
        Input::SentencePair { .. } => "SentencePair",
        Input::QuestionPair { .. } => "QuestionPair",
        Input::PremiseHypothesis { .. } => "PremiseHypothesis",
        Input::QuestionSentence { .. } => "QuestionSentence",
        Input::QuestionPassage { .. } => "QuestionPassage",
        Input::Copa { .. } => "Copa",
        Input::Wsc { .. } => "Wsc",
        Input::Wic { .. } => "Wic",
        Input::MultiRc { .. } => "MultiRc",
    }
}

fn fixed(s: &str) -> Piece {
    Piece::Fixed(s.to_string())
}

/// A labelled segment: `" " + value.trim()`, so that it tokenizes as in the joined text.
fn seg(value: &str, priority: u8) -> Piece {
    Piece::Segment { text: format!(" {}", value.trim()), priority }
}

/// BoolQ's question as MeZO writes it: first letter upper-cased, `?` appended if missing.
fn question_mark(q: &str) -> String {
    let q = q.trim();
    let mut chars = q.chars();
    let mut out: String = match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    };
    if !out.ends_with('?') {
        out.push('?');
    }
    out
}

/// The classification-head text of `example` (see the module table).
pub fn classifier_text(task: TaskId, example: &Example) -> Result<ClassifierText> {
    let input = &example.input;
    let pieces = match (task, input) {
        (TaskId::Sst2 | TaskId::Cola, Input::Sentence { sentence }) => {
            vec![Piece::Segment { text: sentence.trim().to_string(), priority: 0 }]
        }
        (TaskId::Mrpc | TaskId::Stsb, Input::SentencePair { sentence1, sentence2 }) => {
            vec![fixed("Sentence 1:"), seg(sentence1, 0), fixed("\nSentence 2:"), seg(sentence2, 0)]
        }
        (TaskId::Qqp, Input::QuestionPair { question1, question2 }) => {
            vec![fixed("Question 1:"), seg(question1, 0), fixed("\nQuestion 2:"), seg(question2, 0)]
        }
        (TaskId::Rte | TaskId::Wnli | TaskId::Mnli | TaskId::Cb, Input::PremiseHypothesis { premise, hypothesis }) => {
            vec![fixed("Premise:"), seg(premise, 0), fixed("\nHypothesis:"), seg(hypothesis, 0)]
        }
        (TaskId::Qnli, Input::QuestionSentence { question, sentence }) => {
            vec![fixed("Sentence:"), seg(sentence, 0), fixed("\nQuestion:"), seg(question, 1)]
        }
        (TaskId::Boolq, Input::QuestionPassage { question, passage }) => {
            vec![fixed("Passage:"), seg(passage, 0), fixed("\nQuestion:"), seg(&question_mark(question), 1)]
        }
        (TaskId::Copa, Input::Copa { premise, choice1, choice2, relation }) => {
            let what = match relation {
                CopaRelation::Cause => "\nWhat was the cause?",
                CopaRelation::Effect => "\nWhat was the effect?",
            };
            vec![
                fixed("Premise:"),
                seg(premise, 0),
                fixed(what),
                fixed("\nChoice 1:"),
                seg(choice1, 0),
                fixed("\nChoice 2:"),
                seg(choice2, 0),
            ]
        }
        (TaskId::Wsc, Input::Wsc { text, span1, span2 }) => vec![
            fixed("Text:"),
            seg(text, 0),
            Piece::Fixed(format!("\nDoes the pronoun \"{}\" refer to \"{}\"?", span2.text.trim(), span1.text.trim())),
        ],
        (TaskId::Wic, Input::Wic { word, sentence1, sentence2, .. }) => vec![
            fixed("Sentence 1:"),
            seg(sentence1, 0),
            fixed("\nSentence 2:"),
            seg(sentence2, 0),
            fixed("\nWord:"),
            seg(word, 1),
        ],
        (TaskId::Multirc, Input::MultiRc { paragraph, question, answer, .. }) => vec![
            fixed("Paragraph:"),
            seg(paragraph, 0),
            fixed("\nQuestion:"),
            seg(question, 1),
            fixed("\nAnswer:"),
            seg(answer, 1),
        ],
        _ => return Err(mismatch(task, input)),
    };
    Ok(ClassifierText { pieces })
}

/// The prompt-format texts of one example.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptText {
    /// The prompt alone (the text before the option), spaces stripped at both ends.
    pub prompt: String,
    /// One full text (prompt + option) per candidate, in class-index order.
    pub candidates: Vec<String>,
    /// Index of the gold candidate.
    pub gold: usize,
}

/// Label words of the label-word tasks, in class-index order. `None` for COPA (its
/// options are the choices) and STS-B (none).
pub fn label_words(task: TaskId) -> Option<&'static [&'static str]> {
    const NO_YES: &[&str] = &["No", "Yes"];
    const YES_NO: &[&str] = &["Yes", "No"];
    match task {
        TaskId::Sst2 => Some(&["terrible", "great"]),
        TaskId::Rte | TaskId::Qnli => Some(YES_NO),
        TaskId::Cb => Some(&["Yes", "No", "Maybe"]),
        TaskId::Mnli => Some(&["Yes", "Maybe", "No"]),
        TaskId::Boolq
        | TaskId::Wsc
        | TaskId::Wic
        | TaskId::Multirc
        | TaskId::Cola
        | TaskId::Mrpc
        | TaskId::Qqp
        | TaskId::Wnli => Some(NO_YES),
        TaskId::Copa | TaskId::Stsb => None,
    }
}

/// MeZO's COPA capitalisation: the choice's first word lower-cased unless it is "I".
fn copa_option(choice: &str) -> String {
    let mut words: Vec<String> = choice.split(' ').map(str::to_string).collect();
    if let Some(first) = words.first_mut()
        && first != "I"
    {
        *first = first.to_lowercase();
    }
    words.join(" ")
}

/// The prompt text before the option (unstripped), for the label-word tasks.
fn label_word_prompt(task: TaskId, input: &Input) -> Result<String> {
    let yes_no_q = |a: &str, q: String| format!("{a}\n{q} Yes or No?\n");
    Ok(match (task, input) {
        (TaskId::Sst2, Input::Sentence { sentence }) => format!("{} It was", sentence.trim()),
        (TaskId::Rte | TaskId::Wnli, Input::PremiseHypothesis { premise, hypothesis }) => {
            format!("{premise}\nDoes this mean that \"{hypothesis}\" is true? Yes or No?\n")
        }
        (TaskId::Cb | TaskId::Mnli, Input::PremiseHypothesis { premise, hypothesis }) => {
            format!("Suppose {premise} Can we infer that \"{hypothesis}\"? Yes, No, or Maybe?\n")
        }
        (TaskId::Boolq, Input::QuestionPassage { question, passage }) => {
            // MeZO does not trim the question before capitalising; the GLUE files have
            // no surrounding spaces, so trimming only guards against stray ones.
            format!("{passage} {}\n", question_mark(question))
        }
        (TaskId::Wsc, Input::Wsc { text, span1, span2 }) => format!(
            "{text}\nIn the previous sentence, does the pronoun \"{}\" refer to {}? Yes or No?\n",
            span2.text.to_lowercase(),
            span1.text
        ),
        (TaskId::Wic, Input::Wic { word, sentence1, sentence2, .. }) => format!(
            "Does the word \"{word}\" have the same meaning in these two sentences? Yes, No?\n{sentence1}\n{sentence2}\n"
        ),
        (TaskId::Multirc, Input::MultiRc { paragraph, question, answer, .. }) => format!(
            "{paragraph}\nQuestion: {question}\nI found this answer \"{answer}\". Is that correct? Yes or No?\n"
        ),
        (TaskId::Cola, Input::Sentence { sentence }) => {
            yes_no_q(sentence.trim(), "Is this sentence grammatically correct?".into())
        }
        (TaskId::Mrpc, Input::SentencePair { sentence1, sentence2 }) => {
            yes_no_q(sentence1.trim(), format!("Does this sentence mean the same as \"{}\"?", sentence2.trim()))
        }
        (TaskId::Qqp, Input::QuestionPair { question1, question2 }) => {
            yes_no_q(question1.trim(), format!("Is this question asking the same thing as \"{}\"?", question2.trim()))
        }
        (TaskId::Qnli, Input::QuestionSentence { question, sentence }) => {
            yes_no_q(sentence.trim(), format!("Does this sentence answer the question \"{}\"?", question.trim()))
        }
        _ => return Err(mismatch(task, input)),
    })
}

fn strip_spaces(s: &str) -> String {
    s.trim_matches(' ').to_string()
}

/// The prompt-format texts of `example`: the prompt and one full text per candidate.
pub fn prompt_text(task: TaskId, example: &Example) -> Result<PromptText> {
    check_supported(task, InputFormat::PromptLabelWords)?;
    let Label::Class(gold) = example.label else {
        return Err(Error::NoLabelWords { task });
    };
    let (prompt, options): (String, Vec<String>) = match (task, &example.input) {
        (TaskId::Copa, Input::Copa { premise, choice1, choice2, relation }) => {
            let premise = premise.trim_end();
            let premise = premise.strip_suffix('.').unwrap_or(premise);
            let conj = match relation {
                CopaRelation::Effect => " so ",
                CopaRelation::Cause => " because ",
            };
            (format!("{premise}{conj}"), vec![copa_option(choice1), copa_option(choice2)])
        }
        (TaskId::Copa, other) => return Err(mismatch(task, other)),
        (_, input) => {
            let prompt = label_word_prompt(task, input)?;
            let words = label_words(task).ok_or(Error::NoLabelWords { task })?;
            // SST-2's words follow "It was" after a space (" great"); every other
            // template ends with "\n" and the word follows directly.
            let sep = if task == TaskId::Sst2 { " " } else { "" };
            (prompt, words.iter().map(|w| format!("{sep}{w}")).collect())
        }
    };
    if gold >= options.len() {
        return Err(Error::GoldOutOfRange { task, gold, candidates: options.len() });
    }
    let candidates = options.iter().map(|o| strip_spaces(&format!("{prompt}{o}"))).collect();
    Ok(PromptText { prompt: strip_spaces(&prompt), candidates, gold })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::load_validation;
    use crate::test_util::data_dir as test_data_dir;

    fn first(task: TaskId) -> Example {
        let (_, v) = load_validation(task, &test_data_dir()).unwrap();
        v.into_iter().next().unwrap()
    }

    #[test]
    fn sst2_prompt_is_mezo_exact() {
        // dev.tsv line 2: "it 's a charming and often affecting journey . \t1"
        let p = prompt_text(TaskId::Sst2, &first(TaskId::Sst2)).unwrap();
        assert_eq!(p.prompt, "it 's a charming and often affecting journey . It was");
        assert_eq!(
            p.candidates,
            vec![
                "it 's a charming and often affecting journey . It was terrible",
                "it 's a charming and often affecting journey . It was great"
            ]
        );
        assert_eq!(p.gold, 1);
    }

    #[test]
    fn rte_prompt_is_mezo_exact() {
        let p = prompt_text(TaskId::Rte, &first(TaskId::Rte)).unwrap();
        let prompt = "Dana Reeve, the widow of the actor Christopher Reeve, has died of lung cancer at age 44, according to \
                      the Christopher Reeve Foundation.\nDoes this mean that \"Christopher Reeve had an accident.\" is true? \
                      Yes or No?\n";
        assert_eq!(p.prompt, prompt, "only spaces are stripped: the trailing newline stays");
        assert_eq!(p.candidates, vec![format!("{prompt}Yes"), format!("{prompt}No")]);
        assert_eq!(p.gold, 1, "not_entailment");
    }

    #[test]
    fn cb_prompt_is_mezo_exact() {
        let p = prompt_text(TaskId::Cb, &first(TaskId::Cb)).unwrap();
        let prompt = "Suppose Valence the void-brain, Valence the virtuous valet. Why couldn't the figger choose his own \
                      portion of titanic anatomy to shaft? Did he think he was helping? Can we infer that \"Valence was \
                      helping\"? Yes, No, or Maybe?\n";
        assert_eq!(p.prompt, prompt);
        assert_eq!(p.candidates, vec![format!("{prompt}Yes"), format!("{prompt}No"), format!("{prompt}Maybe")]);
        assert_eq!(p.gold, 1, "contradiction");
    }

    #[test]
    fn copa_prompt_is_mezo_exact() {
        // {"premise": "The man turned on the faucet.", "choice1": "The toilet filled with water.",
        //  "choice2": "Water flowed from the spout.", "question": "effect", "label": 1}
        let p = prompt_text(TaskId::Copa, &first(TaskId::Copa)).unwrap();
        assert_eq!(p.prompt, "The man turned on the faucet so");
        assert_eq!(
            p.candidates,
            vec![
                "The man turned on the faucet so the toilet filled with water.",
                "The man turned on the faucet so water flowed from the spout."
            ]
        );
        assert_eq!(p.gold, 1);
        // "I" keeps its capital; a cause uses " because ".
        assert_eq!(copa_option("I ran."), "I ran.");
        let ex = Example {
            line: 1,
            input: Input::Copa {
                premise: "My body cast a shadow over the grass.".into(),
                choice1: "The sun was rising.".into(),
                choice2: "I moved.".into(),
                relation: CopaRelation::Cause,
            },
            label: Label::Class(0),
            group: None,
        };
        let p = prompt_text(TaskId::Copa, &ex).unwrap();
        assert_eq!(p.candidates[0], "My body cast a shadow over the grass because the sun was rising.");
        assert_eq!(p.candidates[1], "My body cast a shadow over the grass because I moved.");
    }

    #[test]
    fn wsc_prompt_is_mezo_exact() {
        let p = prompt_text(TaskId::Wsc, &first(TaskId::Wsc)).unwrap();
        let prompt = "Bernard , who had not told the government official that he was less than 21 when he filed for a \
                      homestead claim, did not consider that he had done anything dishonest. Still, anyone who knew that \
                      he was 19 years old could take his claim away from him .\nIn the previous sentence, does the pronoun \
                      \"him\" refer to anyone? Yes or No?\n";
        assert_eq!(p.prompt, prompt);
        assert_eq!(p.candidates, vec![format!("{prompt}No"), format!("{prompt}Yes")]);
        assert_eq!(p.gold, 0);
    }

    #[test]
    fn boolq_wic_multirc_prompts_follow_mezo() {
        let p = prompt_text(TaskId::Boolq, &first(TaskId::Boolq)).unwrap();
        assert!(p.prompt.starts_with("Ethanol fuel -- All biomass goes through"));
        assert!(p.prompt.ends_with(" Does ethanol take more energy make that produces?\n"), "{:?}", p.prompt);
        let p = prompt_text(TaskId::Wic, &first(TaskId::Wic)).unwrap();
        assert_eq!(
            p.prompt,
            "Does the word \"class\" have the same meaning in these two sentences? Yes, No?\nAn emerging professional \
             class.\nApologizing for losing your temper, even though you were badly provoked, showed real class.\n"
        );
        let p = prompt_text(TaskId::Multirc, &first(TaskId::Multirc)).unwrap();
        assert!(p.prompt.ends_with(
            "\nQuestion: Would the mass of a baseball affect how much force you have to use to pick it up?\nI found this \
             answer \"No\". Is that correct? Yes or No?\n"
        ));
        assert_eq!(p.candidates[1], format!("{}Yes", p.prompt));
    }

    #[test]
    fn own_templates_have_one_candidate_per_class() {
        let dir = test_data_dir();
        for task in [TaskId::Cola, TaskId::Mrpc, TaskId::Qnli, TaskId::Wnli] {
            let (_, v) = load_validation(task, &dir).unwrap();
            let p = prompt_text(task, &v[0]).unwrap();
            assert_eq!(p.candidates.len(), 2, "{task}");
            assert!(p.prompt.ends_with("Yes or No?\n"), "{task}: {:?}", p.prompt);
            assert!(p.candidates.iter().all(|c| c.starts_with(&p.prompt)), "{task}");
        }
        let ex = Example {
            line: 1,
            input: Input::PremiseHypothesis { premise: "A.".into(), hypothesis: "B".into() },
            label: Label::Class(1),
            group: None,
        };
        let p = prompt_text(TaskId::Mnli, &ex).unwrap();
        assert_eq!(p.candidates[1], "Suppose A. Can we infer that \"B\"? Yes, No, or Maybe?\nMaybe", "neutral");
    }

    #[test]
    fn stsb_with_label_words_is_refused() {
        let err = prompt_text(TaskId::Stsb, &first(TaskId::Stsb)).unwrap_err();
        assert!(matches!(err, Error::NoLabelWords { .. }), "{err}");
        assert!(err.to_string().contains("STS-B is a regression task"), "{err}");
        assert!(check_supported(TaskId::Stsb, InputFormat::for_model(ModelId::MezoOpt)).is_err());
        assert!(check_supported(TaskId::Stsb, InputFormat::for_model(ModelId::Qwen3)).is_ok());
        for task in TaskId::ALL {
            if task != TaskId::Stsb {
                assert!(check_supported(task, InputFormat::PromptLabelWords).is_ok(), "{task}");
            }
        }
    }

    #[test]
    fn objectives() {
        assert_eq!(train_objective(TaskId::Copa), TrainObjective::GoldLm);
        assert_eq!(train_objective(TaskId::Sst2), TrainObjective::CandidateCe);
        assert_eq!(train_objective(TaskId::Multirc), TrainObjective::CandidateCe);
    }

    #[test]
    fn classifier_texts_are_readable() {
        let dir = test_data_dir();
        let (_, rte) = load_validation(TaskId::Rte, &dir).unwrap();
        assert_eq!(
            classifier_text(TaskId::Rte, &rte[0]).unwrap().joined(),
            "Premise: Dana Reeve, the widow of the actor Christopher Reeve, has died of lung cancer at age 44, according \
             to the Christopher Reeve Foundation.\nHypothesis: Christopher Reeve had an accident."
        );
        let (_, sst2) = load_validation(TaskId::Sst2, &dir).unwrap();
        assert_eq!(
            classifier_text(TaskId::Sst2, &sst2[0]).unwrap().joined(),
            "it 's a charming and often affecting journey ."
        );
        let (_, boolq) = load_validation(TaskId::Boolq, &dir).unwrap();
        let t = classifier_text(TaskId::Boolq, &boolq[0]).unwrap().joined();
        assert!(
            t.starts_with("Passage: Ethanol fuel --")
                && t.ends_with("\nQuestion: Does ethanol take more energy make that produces?")
        );
        let (_, copa) = load_validation(TaskId::Copa, &dir).unwrap();
        assert_eq!(
            classifier_text(TaskId::Copa, &copa[0]).unwrap().joined(),
            "Premise: The man turned on the faucet.\nWhat was the effect?\nChoice 1: The toilet filled with water.\nChoice 2: \
             Water flowed from the spout."
        );
        // A task/input mismatch is an error, not a guess.
        assert!(classifier_text(TaskId::Rte, &sst2[0]).is_err());
    }
}
