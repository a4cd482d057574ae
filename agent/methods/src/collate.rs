//! Collation of encoded examples into tch tensors on one device: the step between the
//! data crate's plain token ids and a training or evaluation step.
//!
//! Padding goes to the longest sequence in the batch (not to `max_seq_len`):
//! - classifier batches are **right**-padded with the tokenizer's pad id;
//! - candidate batches are **left**-padded (pad id 1 for OPT), so option tokens sit at
//!   the end of every row.

use qsched_data::encode::{Candidate, CandidateExample, ClassifierExample};
use qsched_data::tasks::Label;
use tch::{Device, Tensor};

use crate::error::{Error, Result};

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
        return Err(Error::Collate("cannot collate an empty batch".into()));
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
                .ok_or_else(|| Error::Collate("a batch mixes class and score labels".into()))?;
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
                .ok_or_else(|| Error::Collate("a batch mixes class and score labels".into()))?;
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
        return Err(Error::Collate("cannot collate an empty batch".into()));
    }
    let per = match rows {
        CandidateRows::All => items[0].candidates.len(),
        CandidateRows::GoldOnly => 1,
    };
    let mut seqs: Vec<(&Candidate, i64)> = Vec::with_capacity(b * per);
    for (i, e) in items.iter().enumerate() {
        if e.gold >= e.candidates.len() {
            return Err(Error::Collate(format!("gold {} outside {} candidates", e.gold, e.candidates.len())));
        }
        match rows {
            CandidateRows::All => {
                if e.candidates.len() != per {
                    return Err(Error::Collate(format!(
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
        return Err(Error::Collate(format!(
            "a candidate of {} tokens has option_len {}; it must be in 1..len (BOS first)",
            c.ids.len(),
            c.option_len
        )));
    }
    let n = seqs.len();
    let t = seqs.iter().map(|(c, _)| c.ids.len()).max().unwrap_or(0);
    if t == 0 {
        return Err(Error::Collate("cannot collate empty sequences".into()));
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

#[cfg(test)]
mod tests {
    use super::*;
    use qsched_data::TaskId;
    use qsched_data::encode::encode_candidates;
    use qsched_data::tasks::load_validation;
    use qsched_data::test_util::{data_dir, opt};
    use tch::Kind;

    fn to_vec_i64(t: &Tensor) -> Vec<i64> {
        Vec::<i64>::try_from(t.flatten(0, -1)).unwrap()
    }

    fn to_vec_f32(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(t.flatten(0, -1)).unwrap()
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
        assert_eq!(batch.labels.kind(), Kind::Float);
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

    #[test]
    fn real_candidates_collate() {
        let dir = data_dir();
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
