//! Token ids for both input formats, and collation into tch tensors.
//!
//! Encoding (pure Rust):
//! - [`encode_classifier`]: the classification-format text, tokenized without special
//!   tokens, at most `max_seq_len` ids. When the joined text is too long, each piece is
//!   tokenized on its own and segments are cut at their end by priority, longest first
//!   (`prompts` documents the order per task); fixed pieces are never cut.
//! - [`encode_candidates`]: MeZO's prompt encoding: `[BOS=0] + tok(text)` for the prompt
//!   and each candidate, `option_len = len(full) − len(prompt)`, and, when a sequence is
//!   longer than `max_seq_len`, BOS plus its last `max_seq_len − 1` ids.
//!
//! Collation (the only tch code in the data layer) pads to the longest sequence in the
//! batch (not to `max_seq_len`) and builds every tensor on the device passed in:
//! - classifier batches are **right**-padded with the tokenizer's pad id;
//! - candidate batches are **left**-padded (pad id 1 for OPT), so option tokens sit at
//!   the end of every row.

use shared::TaskId;
use tch::{Device, Kind, Tensor};

use crate::data::prompts::{ClassifierText, Piece, classifier_text, prompt_text};
use crate::data::tasks::{Example, Label};
use crate::data::tokenize::TextTokenizer;
use crate::error::{Error, Result};

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
        return Err(Error::Unsupported(format!("max_seq_len {max_seq_len} is too short to encode anything")));
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
        return Err(Error::Unsupported(format!(
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
        return Err(Error::Unsupported(format!(
            "task '{task}': the example from line {} has empty text; a classifier needs at least one token",
            example.line
        )));
    }
    Ok(ClassifierExample { ids, label: example.label, truncated })
}

/// Encodes `example` in the prompt + label-word format (MeZO): `[BOS] + tok(prompt)`
/// and `[BOS] + tok(full)` per candidate. Fails for STS-B (`Error::Unsupported`), for a
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
        .ok_or_else(|| Error::Unsupported("the prompt format needs a tokenizer with a BOS token (OPT)".into()))?;
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
            Error::Unsupported(format!("task '{task}': candidate {full:?} adds no tokens to its prompt"))
        })?;
        if option_len > max_seq_len - 1 {
            return Err(Error::Unsupported(format!(
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

/// A classifier batch on one device.
#[derive(Debug)]
pub struct ClassifierBatch {
    /// `[B, T]` Int64, right-padded with the pad id.
    pub input_ids: Tensor,
    /// `[B, T]` Int64, 1 for tokens, 0 for padding.
    pub attention_mask: Tensor,
    /// `[B]` Int64 class ids, or `[B]` Float scores (STS-B).
    pub labels: Tensor,
    /// `[B]` Int64 position of each row's last token (where the head reads).
    pub last_index: Tensor,
    /// Non-pad tokens in the batch (for tokens/second).
    pub num_tokens: usize,
}

fn ids_tensor(flat: &[i64], rows: usize, cols: usize, device: Device) -> Result<Tensor> {
    Ok(Tensor::f_from_slice(flat)?.f_view([rows as i64, cols as i64])?.f_to_device(device)?)
}

/// Collates classifier examples: right padding to the longest row, labels as Int64
/// class ids or Float scores (all rows must agree).
pub fn collate_classifier(items: &[&ClassifierExample], pad_id: u32, device: Device) -> Result<ClassifierBatch> {
    let b = items.len();
    let t = items.iter().map(|e| e.ids.len()).max().unwrap_or(0);
    if b == 0 || t == 0 {
        return Err(Error::Unsupported("cannot collate an empty batch".into()));
    }
    let mut ids = vec![pad_id as i64; b * t];
    let mut mask = vec![0i64; b * t];
    let mut last = Vec::with_capacity(b);
    for (r, e) in items.iter().enumerate() {
        for (c, &id) in e.ids.iter().enumerate() {
            ids[r * t + c] = id as i64;
            mask[r * t + c] = 1;
        }
        last.push(e.ids.len() as i64 - 1);
    }
    let labels = match items[0].label {
        Label::Class(_) => {
            let v = items
                .iter()
                .map(|e| e.label.class().map(|c| c as i64))
                .collect::<Option<Vec<i64>>>()
                .ok_or_else(|| Error::Unsupported("a batch mixes class and score labels".into()))?;
            Tensor::f_from_slice(&v)?
        }
        Label::Score(_) => {
            let v = items
                .iter()
                .map(|e| match e.label {
                    Label::Score(s) => Some(s as f32),
                    Label::Class(_) => None,
                })
                .collect::<Option<Vec<f32>>>()
                .ok_or_else(|| Error::Unsupported("a batch mixes class and score labels".into()))?;
            Tensor::f_from_slice(&v)?
        }
    };
    Ok(ClassifierBatch {
        input_ids: ids_tensor(&ids, b, t, device)?,
        attention_mask: ids_tensor(&mask, b, t, device)?,
        labels: labels.f_to_device(device)?,
        last_index: Tensor::f_from_slice(&last)?.f_to_device(device)?,
        num_tokens: items.iter().map(|e| e.ids.len()).sum(),
    })
}

/// Which candidate rows a batch holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CandidateRows {
    /// Every candidate of every example (`N = B × C`): evaluation, and training with
    /// candidate CE.
    All,
    /// Only each example's gold candidate (`N = B`): training with the gold-only LM loss
    /// (COPA).
    GoldOnly,
}

/// A prompt-format batch on one device.
#[derive(Debug)]
pub struct CandidateBatch {
    /// `[N, T]` Int64, left-padded with the pad id; every row starts (after padding) with BOS.
    pub input_ids: Tensor,
    /// `[N, T]` Int64, 1 for tokens, 0 for padding.
    pub attention_mask: Tensor,
    /// `[N, T]` Float, 1.0 at the option tokens (the last `option_len` positions of each
    /// row), else 0.0. Its row sums are the option lengths (the mean's denominator).
    pub option_mask: Tensor,
    /// `[N, T]` Float: `option_mask` shifted one position left, i.e. 1.0 at the positions
    /// whose next-token log-probs count (the logits at `t` predict the option token at
    /// `t + 1`); the last column is always 0. Per-candidate mean option log-prob:
    /// `(log_softmax(logits)[:, :-1].gather(-1, ids[:, 1:]) * next_token_mask[:, :-1]).sum(1) / option_mask.sum(1)`.
    pub next_token_mask: Tensor,
    /// `[N]` Int64: the example (row of `gold`) each candidate row belongs to.
    pub example_index: Tensor,
    /// `[B]` Int64: the gold candidate index of each example (within its candidates).
    pub gold: Tensor,
    /// Examples in the batch (`B`).
    pub num_examples: usize,
    /// Candidate rows per example: `C` for [`CandidateRows::All`] (rows `b*C .. b*C+C`
    /// belong to example `b`, so mean log-probs reshape to `[B, C]`), 1 for `GoldOnly`.
    pub rows_per_example: usize,
    /// Which rows the batch holds.
    pub rows: CandidateRows,
    /// Non-pad tokens in the batch (for tokens/second).
    pub num_tokens: usize,
}

/// Collates prompt-format examples: left padding with `pad_id` to the longest row. With
/// [`CandidateRows::All`], every example must have the same number of candidates (one
/// task per batch).
pub fn collate_candidates(
    items: &[&CandidateExample],
    rows: CandidateRows,
    pad_id: u32,
    device: Device,
) -> Result<CandidateBatch> {
    let b = items.len();
    if b == 0 {
        return Err(Error::Unsupported("cannot collate an empty batch".into()));
    }
    let per = match rows {
        CandidateRows::All => items[0].candidates.len(),
        CandidateRows::GoldOnly => 1,
    };
    let mut seqs: Vec<(&Candidate, i64)> = Vec::with_capacity(b * per);
    for (i, e) in items.iter().enumerate() {
        if e.gold >= e.candidates.len() {
            return Err(Error::Unsupported(format!("gold {} outside {} candidates", e.gold, e.candidates.len())));
        }
        match rows {
            CandidateRows::All => {
                if e.candidates.len() != per {
                    return Err(Error::Unsupported(format!(
                        "a batch mixes examples with {per} and {} candidates",
                        e.candidates.len()
                    )));
                }
                seqs.extend(e.candidates.iter().map(|c| (c, i as i64)));
            }
            CandidateRows::GoldOnly => seqs.push((&e.candidates[e.gold], i as i64)),
        }
    }
    if let Some((c, _)) = seqs.iter().find(|(c, _)| c.option_len == 0 || c.option_len >= c.ids.len()) {
        return Err(Error::Unsupported(format!(
            "a candidate of {} tokens has option_len {}; it must be in 1..len (BOS first)",
            c.ids.len(),
            c.option_len
        )));
    }
    let n = seqs.len();
    let t = seqs.iter().map(|(c, _)| c.ids.len()).max().unwrap_or(0);
    if t == 0 {
        return Err(Error::Unsupported("cannot collate empty sequences".into()));
    }
    let mut ids = vec![pad_id as i64; n * t];
    let mut mask = vec![0i64; n * t];
    let mut option = vec![0f32; n * t];
    let mut next = vec![0f32; n * t];
    for (r, (c, _)) in seqs.iter().enumerate() {
        let pad = t - c.ids.len();
        for (k, &id) in c.ids.iter().enumerate() {
            ids[r * t + pad + k] = id as i64;
            mask[r * t + pad + k] = 1;
        }
        for slot in &mut option[r * t + t - c.option_len..(r + 1) * t] {
            *slot = 1.0;
        }
        // Option tokens never include position 0 (BOS), so the shift stays in the row.
        for slot in &mut next[r * t + t - 1 - c.option_len..(r + 1) * t - 1] {
            *slot = 1.0;
        }
    }
    let example_index: Vec<i64> = seqs.iter().map(|&(_, i)| i).collect();
    let gold: Vec<i64> = items.iter().map(|e| e.gold as i64).collect();
    Ok(CandidateBatch {
        input_ids: ids_tensor(&ids, n, t, device)?,
        attention_mask: ids_tensor(&mask, n, t, device)?,
        option_mask: Tensor::f_from_slice(&option)?.f_view([n as i64, t as i64])?.f_to_device(device)?,
        next_token_mask: Tensor::f_from_slice(&next)?.f_view([n as i64, t as i64])?.f_to_device(device)?,
        example_index: Tensor::f_from_slice(&example_index)?.f_to_device(device)?,
        gold: Tensor::f_from_slice(&gold)?.f_to_device(device)?,
        num_examples: b,
        rows_per_example: per,
        rows,
        num_tokens: seqs.iter().map(|(c, _)| c.ids.len()).sum(),
    })
}

/// Kind of the label tensor a task's classifier batches carry.
pub fn label_kind(task: TaskId) -> Kind {
    if task == TaskId::Stsb { Kind::Float } else { Kind::Int64 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::tasks::{Input, load_validation};
    use crate::data::test_data_dir;
    use crate::data::tokenize::tests::{opt, qwen};

    fn first(task: TaskId) -> Example {
        let (_, v) = load_validation(task, &test_data_dir()).unwrap();
        v.into_iter().next().unwrap()
    }

    fn to_vec_i64(t: &Tensor) -> Vec<i64> {
        Vec::<i64>::try_from(t.flatten(0, -1)).unwrap()
    }

    fn to_vec_f32(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(t.flatten(0, -1)).unwrap()
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
        assert!(matches!(err, Error::Unsupported(_)));
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

    #[test]
    fn classifier_collation_pads_right_with_masks_and_labels() {
        let a = ClassifierExample { ids: vec![5, 6, 7], label: Label::Class(1), truncated: false };
        let b = ClassifierExample { ids: vec![8], label: Label::Class(0), truncated: false };
        let batch = collate_classifier(&[&a, &b], 151_643, Device::Cpu).unwrap();
        assert_eq!(batch.input_ids.size(), vec![2, 3]);
        assert_eq!(to_vec_i64(&batch.input_ids), vec![5, 6, 7, 8, 151_643, 151_643]);
        assert_eq!(to_vec_i64(&batch.attention_mask), vec![1, 1, 1, 1, 0, 0]);
        assert_eq!(batch.labels.kind(), Kind::Int64);
        assert_eq!(to_vec_i64(&batch.labels), vec![1, 0]);
        assert_eq!(to_vec_i64(&batch.last_index), vec![2, 0]);
        assert_eq!(batch.num_tokens, 4);
        assert_eq!(batch.input_ids.device(), Device::Cpu);

        let s = ClassifierExample { ids: vec![1, 2], label: Label::Score(4.75), truncated: false };
        let batch = collate_classifier(&[&s], 0, Device::Cpu).unwrap();
        assert_eq!(batch.labels.kind(), label_kind(TaskId::Stsb));
        assert_eq!(to_vec_f32(&batch.labels), vec![4.75]);
        assert!(collate_classifier(&[&a, &s], 0, Device::Cpu).is_err(), "mixed label kinds");
        assert!(collate_classifier(&[], 0, Device::Cpu).is_err());
    }

    #[test]
    fn candidate_collation_pads_left_with_option_masks() {
        let ex1 = CandidateExample {
            candidates: vec![
                Candidate { ids: vec![0, 10, 11], option_len: 1 },
                Candidate { ids: vec![0, 10, 12, 13], option_len: 2 },
            ],
            gold: 1,
            truncated: false,
        };
        let ex2 = CandidateExample {
            candidates: vec![
                Candidate { ids: vec![0, 20], option_len: 1 },
                Candidate { ids: vec![0, 21], option_len: 1 },
            ],
            gold: 0,
            truncated: false,
        };
        let b = collate_candidates(&[&ex1, &ex2], CandidateRows::All, 1, Device::Cpu).unwrap();
        assert_eq!(b.input_ids.size(), vec![4, 4]);
        #[rustfmt::skip]
        assert_eq!(to_vec_i64(&b.input_ids), vec![
            1, 0, 10, 11,
            0, 10, 12, 13,
            1, 1, 0, 20,
            1, 1, 0, 21,
        ]);
        #[rustfmt::skip]
        assert_eq!(to_vec_i64(&b.attention_mask), vec![
            0, 1, 1, 1,
            1, 1, 1, 1,
            0, 0, 1, 1,
            0, 0, 1, 1,
        ]);
        #[rustfmt::skip]
        assert_eq!(to_vec_f32(&b.option_mask), vec![
            0., 0., 0., 1.,
            0., 0., 1., 1.,
            0., 0., 0., 1.,
            0., 0., 0., 1.,
        ]);
        #[rustfmt::skip]
        assert_eq!(to_vec_f32(&b.next_token_mask), vec![
            0., 0., 1., 0.,
            0., 1., 1., 0.,
            0., 0., 1., 0.,
            0., 0., 1., 0.,
        ]);
        assert_eq!(b.option_mask.kind(), Kind::Float);
        assert_eq!(to_vec_i64(&b.example_index), vec![0, 0, 1, 1]);
        assert_eq!(to_vec_i64(&b.gold), vec![1, 0]);
        assert_eq!((b.num_examples, b.rows_per_example, b.num_tokens), (2, 2, 11));

        let g = collate_candidates(&[&ex1, &ex2], CandidateRows::GoldOnly, 1, Device::Cpu).unwrap();
        assert_eq!(to_vec_i64(&g.input_ids), vec![0, 10, 12, 13, 1, 1, 0, 20]);
        assert_eq!(to_vec_f32(&g.option_mask), vec![0., 0., 1., 1., 0., 0., 0., 1.]);
        assert_eq!(to_vec_i64(&g.example_index), vec![0, 1]);
        assert_eq!((g.rows_per_example, g.num_tokens), (1, 6));

        let bad = CandidateExample {
            candidates: vec![Candidate { ids: vec![0, 5], option_len: 2 }],
            gold: 0,
            truncated: false,
        };
        assert!(collate_candidates(&[&bad], CandidateRows::All, 1, Device::Cpu).is_err(), "option covering BOS");
        let three = CandidateExample { candidates: vec![ex2.candidates[0].clone(); 3], gold: 0, truncated: false };
        assert!(collate_candidates(&[&ex1, &three], CandidateRows::All, 1, Device::Cpu).is_err());
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

    #[test]
    fn real_candidates_collate() {
        let dir = test_data_dir();
        let (_, cb) = load_validation(TaskId::Cb, &dir).unwrap();
        let enc: Vec<CandidateExample> =
            cb[..4].iter().map(|e| encode_candidates(TaskId::Cb, e, opt(), 128).unwrap()).collect();
        let refs: Vec<&CandidateExample> = enc.iter().collect();
        let b = collate_candidates(&refs, CandidateRows::All, opt().pad_id(), Device::Cpu).unwrap();
        let longest = enc.iter().flat_map(|e| e.candidates.iter().map(|c| c.ids.len())).max().unwrap();
        assert_eq!(b.input_ids.size(), vec![12, longest as i64]);
        let total: usize = enc.iter().flat_map(|e| e.candidates.iter().map(|c| c.ids.len())).sum();
        assert_eq!(b.num_tokens, total);
        assert_eq!(b.attention_mask.sum(Kind::Int64).int64_value(&[]), total as i64);
        // Every row's option tokens are attended (the option mask lies inside the attention mask).
        let unattended: Tensor = b.attention_mask.eq(0).to_kind(Kind::Float);
        let outside = (&b.option_mask * unattended).sum(Kind::Float).double_value(&[]);
        assert_eq!(outside, 0.0);
        // The last column holds a real token in every row (left padding).
        assert_eq!(b.attention_mask.select(1, -1).sum(Kind::Int64).int64_value(&[]), 12);
    }
}
