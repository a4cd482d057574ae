//! Token ids for both input formats (pure Rust; collation into tensors belongs to the
//! training methods).
//!
//! - [`encode_classifier`]: the classification-format text, tokenized without special
//!   tokens, at most `max_seq_len` ids. When the joined text is too long, each piece is
//!   tokenized on its own and segments are cut at their end by priority, longest first
//!   (`prompts` documents the order per task); fixed pieces are never cut.
//! - [`encode_candidates`]: MeZO's prompt encoding: `[BOS=0] + tok(text)` for the prompt
//!   and each candidate, `option_len = len(full) − len(prompt)`, and, when a sequence is
//!   longer than `max_seq_len`, BOS plus its last `max_seq_len − 1` ids.

use shared::TaskId;

use crate::error::{Error, Result};
use crate::prompts::{ClassifierText, Piece, classifier_text, prompt_text};
use crate::tasks::{Example, Label};
use crate::tokenize::TextTokenizer;

/// One example in the classification-head format.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassifierExample {
    /// Token ids (no special tokens), `1..=max_seq_len` of them.
    pub ids: Vec<u32>,
    /// Class index or regression score.
    pub label: Label,
    /// Whether the text was truncated to fit.
    pub truncated: bool,
}

/// One candidate sequence of the prompt format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// `[BOS] + prompt + option` ids, at most `max_seq_len`.
    pub ids: Vec<u32>,
    /// Number of option tokens at the end of `ids` (≥ 1).
    pub option_len: usize,
}

/// One example in the prompt format: a candidate per class (COPA: per choice).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CandidateExample {
    /// Candidates in class-index order.
    pub candidates: Vec<Candidate>,
    /// Index of the gold candidate.
    pub gold: usize,
    /// Whether any candidate was left-truncated.
    pub truncated: bool,
}

fn check_max_len(max_seq_len: usize) -> Result<()> {
    if max_seq_len < 2 {
        return Err(Error::Encoding(format!("max_seq_len {max_seq_len} is too short to encode anything")));
    }
    Ok(())
}

/// Token budget per segment so that `sum(lens) <= budget`: repeatedly shortens the
/// longest segment of the lowest priority that still has tokens.
fn segment_budget(lens: &[(usize, u8)], budget: usize) -> Vec<usize> {
    let mut keep: Vec<usize> = lens.iter().map(|&(l, _)| l).collect();
    let mut total: usize = keep.iter().sum();
    let mut priorities: Vec<u8> = lens.iter().map(|&(_, p)| p).collect();
    priorities.sort_unstable();
    priorities.dedup();
    for p in priorities {
        while total > budget {
            // First longest segment of this priority (ties go to the earlier one).
            let longest = (0..keep.len())
                .filter(|&i| lens[i].1 == p && keep[i] > 0)
                .max_by(|&a, &b| keep[a].cmp(&keep[b]).then(b.cmp(&a)));
            let Some(i) = longest else { break };
            // Cut down to the runner-up's length in one go (or just enough to fit).
            let second = (0..keep.len()).filter(|&j| j != i && lens[j].1 == p).map(|j| keep[j]).max().unwrap_or(0);
            let cut = (keep[i] - second).max(1).min(total - budget);
            keep[i] -= cut;
            total -= cut;
        }
    }
    keep
}

fn truncate_pieces(text: &ClassifierText, tok: &TextTokenizer, max_seq_len: usize) -> Result<Vec<u32>> {
    let ids: Vec<Vec<u32>> = text
        .pieces
        .iter()
        .map(|p| {
            tok.encode(match p {
                Piece::Fixed(s) | Piece::Segment { text: s, .. } => s,
            })
        })
        .collect::<Result<_>>()?;
    let fixed: usize =
        text.pieces.iter().zip(&ids).filter(|(p, _)| matches!(p, Piece::Fixed(_))).map(|(_, i)| i.len()).sum();
    if fixed >= max_seq_len {
        return Err(Error::Encoding(format!(
            "max_seq_len {max_seq_len} leaves no room for the example text: the format's fixed labels alone take {fixed} tokens"
        )));
    }
    let seg_lens: Vec<(usize, u8)> = text
        .pieces
        .iter()
        .zip(&ids)
        .filter_map(|(p, i)| match p {
            Piece::Segment { priority, .. } => Some((i.len(), *priority)),
            Piece::Fixed(_) => None,
        })
        .collect();
    let mut keep = segment_budget(&seg_lens, max_seq_len - fixed).into_iter();
    let mut out = Vec::with_capacity(max_seq_len);
    for (p, i) in text.pieces.iter().zip(&ids) {
        match p {
            Piece::Fixed(_) => out.extend_from_slice(i),
            Piece::Segment { .. } => {
                let k = keep.next().unwrap_or(0);
                out.extend_from_slice(&i[..k]);
            }
        }
    }
    Ok(out)
}

/// Encodes `example` in the classification-head format (no special tokens).
pub fn encode_classifier(
    task: TaskId,
    example: &Example,
    tok: &TextTokenizer,
    max_seq_len: usize,
) -> Result<ClassifierExample> {
    check_max_len(max_seq_len)?;
    let text = classifier_text(task, example)?;
    let ids = tok.encode(&text.joined())?;
    let (ids, truncated) =
        if ids.len() <= max_seq_len { (ids, false) } else { (truncate_pieces(&text, tok, max_seq_len)?, true) };
    if ids.is_empty() {
        return Err(Error::Encoding(format!(
            "task '{task}': the example from line {} has empty text; a classifier needs at least one token",
            example.line
        )));
    }
    Ok(ClassifierExample { ids, label: example.label, truncated })
}

/// Encodes `example` in the prompt + label-word format (MeZO): `[BOS] + tok(prompt)`
/// and `[BOS] + tok(full)` per candidate. Fails for STS-B (`Error::NoLabelWords`), for a
/// tokenizer without BOS, and when an option alone does not fit in `max_seq_len`.
pub fn encode_candidates(
    task: TaskId,
    example: &Example,
    tok: &TextTokenizer,
    max_seq_len: usize,
) -> Result<CandidateExample> {
    check_max_len(max_seq_len)?;
    let bos = tok
        .bos_id()
        .ok_or_else(|| Error::Encoding("the prompt format needs a tokenizer with a BOS token (OPT)".into()))?;
    let texts = prompt_text(task, example)?;
    let with_bos = |s: &str| -> Result<Vec<u32>> {
        let mut ids = Vec::with_capacity(s.len() / 3 + 2);
        ids.push(bos);
        ids.extend(tok.encode(s)?);
        Ok(ids)
    };
    let prompt_len = with_bos(&texts.prompt)?.len();
    let mut truncated = false;
    let mut candidates = Vec::with_capacity(texts.candidates.len());
    for full in &texts.candidates {
        let mut ids = with_bos(full)?;
        let option_len = ids.len().checked_sub(prompt_len).filter(|&n| n > 0).ok_or_else(|| {
            Error::Encoding(format!("task '{task}': candidate {full:?} adds no tokens to its prompt"))
        })?;
        if option_len > max_seq_len - 1 {
            return Err(Error::Encoding(format!(
                "task '{task}': an option of {option_len} tokens does not fit in max_seq_len {max_seq_len}"
            )));
        }
        if ids.len() > max_seq_len {
            // MeZO: keep BOS and the last max_seq_len - 1 tokens (the option is at the end).
            let cut = ids.len() - (max_seq_len - 1);
            ids.drain(1..cut);
            truncated = true;
        }
        candidates.push(Candidate { ids, option_len });
    }
    Ok(CandidateExample { candidates, gold: texts.gold, truncated })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::{Input, load_validation};
    use crate::test_util::data_dir as test_data_dir;
    use crate::test_util::{opt, qwen};

    fn first(task: TaskId) -> Example {
        let (_, v) = load_validation(task, &test_data_dir()).unwrap();
        v.into_iter().next().unwrap()
    }

    #[test]
    fn sst2_candidates_have_bos_and_one_option_token() {
        let e = encode_candidates(TaskId::Sst2, &first(TaskId::Sst2), opt(), 256).unwrap();
        assert_eq!(e.gold, 1);
        assert_eq!(e.candidates.len(), 2);
        // Reference ids (tiktoken, see tokenize tests): prompt then " terrible" / " great".
        let prompt: Vec<u32> = vec![0, 405, 128, 29, 10, 18452, 8, 747, 7920, 3251, 479, 85, 21];
        for (c, word) in e.candidates.iter().zip([6587u32, 372]) {
            assert_eq!(c.ids[0], 0, "BOS id 0 first");
            assert_eq!(c.option_len, 1, "' great' and ' terrible' are one token each");
            assert_eq!(c.ids[..c.ids.len() - 1], prompt[..]);
            assert_eq!(*c.ids.last().unwrap(), word);
        }
        assert!(!e.truncated);
    }

    #[test]
    fn option_len_is_the_option_token_count() {
        // RTE: prompt ends in "\n", options "Yes"/"No" are one token each.
        let e = encode_candidates(TaskId::Rte, &first(TaskId::Rte), opt(), 512).unwrap();
        assert_eq!(e.candidates.iter().map(|c| c.option_len).collect::<Vec<_>>(), vec![1, 1]);
        assert_eq!(*e.candidates[0].ids.last().unwrap(), opt().encode("Yes").unwrap()[0]);
        // COPA: the option is the whole (lower-cased) choice, " the toilet filled with water."
        let copa = first(TaskId::Copa);
        let e = encode_candidates(TaskId::Copa, &copa, opt(), 512).unwrap();
        for (c, option) in e.candidates.iter().zip([" the toilet filled with water.", " water flowed from the spout."])
        {
            let want = opt().encode(option).unwrap();
            assert_eq!(c.option_len, want.len());
            assert_eq!(c.ids[c.ids.len() - c.option_len..], want[..]);
        }
        // CB: three candidates.
        let e = encode_candidates(TaskId::Cb, &first(TaskId::Cb), opt(), 512).unwrap();
        assert_eq!(e.candidates.len(), 3);
        assert!(e.candidates.iter().all(|c| c.option_len == 1 && c.ids[0] == 0));
    }

    #[test]
    fn long_prompts_are_left_truncated_keeping_bos() {
        let full = encode_candidates(TaskId::Boolq, &first(TaskId::Boolq), opt(), 4096).unwrap();
        let short = encode_candidates(TaskId::Boolq, &first(TaskId::Boolq), opt(), 32).unwrap();
        assert!(short.truncated && !full.truncated);
        for (s, f) in short.candidates.iter().zip(&full.candidates) {
            assert_eq!(s.ids.len(), 32);
            assert_eq!(s.ids[0], 0);
            assert_eq!(s.ids[1..], f.ids[f.ids.len() - 31..], "the last 31 tokens are kept");
            assert_eq!(s.option_len, f.option_len);
        }
        // An option longer than the budget is an error, not a silently cut option.
        let err = encode_candidates(TaskId::Copa, &first(TaskId::Copa), opt(), 4).unwrap_err().to_string();
        assert!(err.contains("does not fit in max_seq_len 4"), "{err}");
    }

    #[test]
    fn stsb_candidates_are_refused_and_qwen_has_no_bos() {
        let err = encode_candidates(TaskId::Stsb, &first(TaskId::Stsb), opt(), 128).unwrap_err();
        assert!(matches!(err, Error::NoLabelWords { task: TaskId::Stsb }), "{err}");
        let err = encode_candidates(TaskId::Sst2, &first(TaskId::Sst2), qwen(), 128).unwrap_err();
        assert!(err.to_string().contains("BOS"), "{err}");
    }

    #[test]
    fn classifier_encoding_and_truncation() {
        let q = qwen();
        let sst2 = encode_classifier(TaskId::Sst2, &first(TaskId::Sst2), q, 128).unwrap();
        // "it 's a charming and often affecting journey ." (reference ids via tiktoken).
        assert_eq!(sst2.ids, vec![275, 364, 82, 264, 34409, 323, 3545, 27887, 11618, 659]);
        assert_eq!(sst2.label, Label::Class(1));
        assert!(!sst2.truncated);
        let cut = encode_classifier(TaskId::Sst2, &first(TaskId::Sst2), q, 4).unwrap();
        assert_eq!(cut.ids, sst2.ids[..4], "single sentences keep their start");

        // BoolQ: the passage is cut, the question survives whole.
        let boolq = first(TaskId::Boolq);
        let e = encode_classifier(TaskId::Boolq, &boolq, q, 40).unwrap();
        assert!(e.truncated);
        assert_eq!(e.ids.len(), 40);
        let question = q.encode("\nQuestion: Does ethanol take more energy make that produces?").unwrap();
        assert_eq!(e.ids[40 - question.len()..], question[..]);
        let start = q.encode("Passage: Ethanol fuel").unwrap();
        assert_eq!(e.ids[..start.len()], start[..], "the passage keeps its start");

        // Pairs: the longer segment is cut first, down to the shorter one's length.
        let ex = Example {
            line: 1,
            input: Input::PremiseHypothesis {
                premise: "one two three four five six seven eight nine ten".into(),
                hypothesis: "alpha beta".into(),
            },
            label: Label::Class(0),
            group: None,
        };
        let full = encode_classifier(TaskId::Rte, &ex, q, 512).unwrap();
        let e = encode_classifier(TaskId::Rte, &ex, q, full.ids.len() - 3).unwrap();
        assert_eq!(q.decode(&e.ids).unwrap(), "Premise: one two three four five six seven\nHypothesis: alpha beta");
        // Fixed labels that cannot fit are an error.
        assert!(encode_classifier(TaskId::Rte, &ex, q, 5).is_err());
    }

    #[test]
    fn segment_budget_cuts_lowest_priority_longest_first() {
        assert_eq!(segment_budget(&[(10, 0), (4, 0)], 10), vec![6, 4]);
        assert_eq!(segment_budget(&[(10, 0), (4, 0)], 6), vec![3, 3]);
        assert_eq!(segment_budget(&[(10, 0), (4, 1)], 6), vec![2, 4], "priority 0 first");
        assert_eq!(segment_budget(&[(10, 0), (4, 1)], 3), vec![0, 3]);
        assert_eq!(segment_budget(&[(5, 0), (5, 0)], 7), vec![3, 4]);
        assert_eq!(segment_budget(&[(5, 0)], 9), vec![5]);
    }

    /// Every task with a validation file encodes in both formats at the `tiny` preset's
    /// max_seq_len (64), within the models' vocabularies.
    #[test]
    fn every_task_encodes_at_tiny_length() {
        let dir = test_data_dir();
        let (qwen_vocab, opt_vocab) = (shared::scale::QWEN3_VOCAB as usize, shared::scale::OPT_VOCAB as usize);
        for task in TaskId::ALL {
            let Ok((_, examples)) = load_validation(task, &dir) else { continue };
            for e in examples.iter().take(EXAMPLES_PER_TASK) {
                let c = encode_classifier(task, e, qwen(), 64)
                    .unwrap_or_else(|err| panic!("{task} line {}: {err}", e.line));
                assert!((1..=64).contains(&c.ids.len()));
                TextTokenizer::check_ids(&c.ids, qwen_vocab).unwrap();
                if task == TaskId::Stsb {
                    continue;
                }
                let p =
                    encode_candidates(task, e, opt(), 64).unwrap_or_else(|err| panic!("{task} line {}: {err}", e.line));
                for cand in &p.candidates {
                    assert!(cand.ids.len() <= 64 && cand.ids[0] == 0 && cand.option_len >= 1);
                    TextTokenizer::check_ids(&cand.ids, opt_vocab).unwrap();
                }
            }
        }
    }

    /// Examples per task in `every_task_encodes_at_tiny_length` (all of them were checked
    /// once by hand with `usize::MAX`; 200 keeps the test fast).
    const EXAMPLES_PER_TASK: usize = 200;
}
