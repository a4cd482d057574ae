//! Task metrics, pure Rust (no tch).
//!
//! Per task ([`crate::facts::metric_names`], primary first):
//!
//! | task | metrics | primary |
//! |---|---|---|
//! | SST-2, QNLI, RTE, WNLI, MNLI, COPA, BoolQ, WiC, WSC | `accuracy` | `accuracy` |
//! | CoLA | `mcc`, `accuracy` | `mcc` |
//! | MRPC, QQP | `f1` (positive class 1), `accuracy` | `f1` |
//! | STS-B | `pearson`, `spearman`, `pearson_spearman` (their mean) | `pearson` |
//! | CB | `macro_f1`, `accuracy` | `macro_f1` |
//! | MultiRC | `f1a`, `em`, `accuracy` | `f1a` |
//!
//! Conventions for degenerate input, chosen so that no metric is ever NaN:
//! - empty input, mismatched lengths, class ids out of range and non-finite scores are
//!   errors (`Error::Metrics`), never a number;
//! - F1 with no positive predictions and no positive labels is 0 (as scikit-learn's
//!   `zero_division=0`); with positives on one side only it is 0 by the formula;
//! - macro-F1 averages over the classes present in the labels or the predictions
//!   (scikit-learn's default label set);
//! - MCC is 0 when its denominator is 0 (a constant predictor, or a single class), as in
//!   scikit-learn;
//! - Pearson and Spearman are 0 when either side has zero variance (a constant
//!   predictor carries no linear/rank association); they need at least 2 pairs.

use std::collections::{BTreeMap, HashMap, HashSet};

use shared::TaskId;

use crate::error::{Error, Result};
use crate::facts::task_info;

fn bad(message: String) -> Error {
    Error::Metrics(message)
}

fn check_pairs<A, B>(name: &str, a: &[A], b: &[B]) -> Result<()> {
    if a.len() != b.len() {
        return Err(bad(format!("{name}: {} predictions but {} labels", a.len(), b.len())));
    }
    if a.is_empty() {
        return Err(bad(format!("{name}: no examples (empty input has no metric value)")));
    }
    Ok(())
}

/// Fraction of predictions equal to their label.
pub fn accuracy(predicted: &[usize], labels: &[usize]) -> Result<f64> {
    check_pairs("accuracy", predicted, labels)?;
    let right = predicted.iter().zip(labels).filter(|(p, l)| p == l).count();
    Ok(right as f64 / labels.len() as f64)
}

/// F1 of one class from its counts: 2·tp / (2·tp + fp + fn), 0 when there is nothing to
/// count (no positive label and no positive prediction).
fn f1_from_counts(tp: usize, fp: usize, fn_: usize) -> f64 {
    let denom = 2 * tp + fp + fn_;
    if denom == 0 { 0.0 } else { (2 * tp) as f64 / denom as f64 }
}

fn class_counts(predicted: &[usize], labels: &[usize], class: usize) -> (usize, usize, usize) {
    let (mut tp, mut fp, mut fn_) = (0, 0, 0);
    for (&p, &l) in predicted.iter().zip(labels) {
        match (p == class, l == class) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, true) => fn_ += 1,
            (false, false) => {}
        }
    }
    (tp, fp, fn_)
}

/// F1 of the `positive` class (MRPC, QQP: positive = 1).
pub fn binary_f1(predicted: &[usize], labels: &[usize], positive: usize) -> Result<f64> {
    check_pairs("f1", predicted, labels)?;
    let (tp, fp, fn_) = class_counts(predicted, labels, positive);
    Ok(f1_from_counts(tp, fp, fn_))
}

/// Unweighted mean of per-class F1 over the classes present in labels or predictions (CB).
pub fn macro_f1(predicted: &[usize], labels: &[usize]) -> Result<f64> {
    check_pairs("macro_f1", predicted, labels)?;
    let mut classes: Vec<usize> = predicted.iter().chain(labels).copied().collect::<HashSet<_>>().into_iter().collect();
    classes.sort_unstable();
    let sum: f64 = classes
        .iter()
        .map(|&c| {
            let (tp, fp, fn_) = class_counts(predicted, labels, c);
            f1_from_counts(tp, fp, fn_)
        })
        .sum();
    Ok(sum / classes.len() as f64)
}

/// Matthews correlation coefficient, multiclass form (scikit-learn's); 0 when undefined.
pub fn matthews_corrcoef(predicted: &[usize], labels: &[usize]) -> Result<f64> {
    check_pairs("mcc", predicted, labels)?;
    let s = labels.len() as f64;
    let mut p_k: HashMap<usize, f64> = HashMap::new();
    let mut t_k: HashMap<usize, f64> = HashMap::new();
    let mut correct = 0.0;
    for (&p, &l) in predicted.iter().zip(labels) {
        *p_k.entry(p).or_default() += 1.0;
        *t_k.entry(l).or_default() += 1.0;
        if p == l {
            correct += 1.0;
        }
    }
    let pt: f64 = p_k.iter().map(|(k, p)| p * t_k.get(k).copied().unwrap_or(0.0)).sum();
    let pp: f64 = p_k.values().map(|p| p * p).sum();
    let tt: f64 = t_k.values().map(|t| t * t).sum();
    let cov_pt = correct * s - pt;
    let cov_pp = s * s - pp;
    let cov_tt = s * s - tt;
    let denom = (cov_pp * cov_tt).sqrt();
    Ok(if denom == 0.0 { 0.0 } else { cov_pt / denom })
}

fn check_scores(name: &str, x: &[f64], y: &[f64]) -> Result<()> {
    check_pairs(name, x, y)?;
    if x.len() < 2 {
        return Err(bad(format!("{name}: needs at least 2 pairs, got {}", x.len())));
    }
    if let Some(v) = x.iter().chain(y).find(|v| !v.is_finite()) {
        return Err(bad(format!("{name}: non-finite value {v}")));
    }
    Ok(())
}

fn pearson_unchecked(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    let mx = x.iter().sum::<f64>() / n;
    let my = y.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        let (dx, dy) = (a - mx, b - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    if sxx == 0.0 || syy == 0.0 {
        return 0.0;
    }
    // Rounding can push |r| a hair past 1.
    (sxy / (sxx.sqrt() * syy.sqrt())).clamp(-1.0, 1.0)
}

/// Pearson correlation; 0 when either side is constant.
pub fn pearson(x: &[f64], y: &[f64]) -> Result<f64> {
    check_scores("pearson", x, y)?;
    Ok(pearson_unchecked(x, y))
}

/// 1-based ranks with ties given their average rank.
fn average_ranks(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut ranks = vec![0.0; v.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && v[order[j + 1]] == v[order[i]] {
            j += 1;
        }
        // Positions i..=j (0-based) share the mean of ranks i+1..=j+1.
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            ranks[k] = rank;
        }
        i = j + 1;
    }
    ranks
}

/// Spearman rank correlation (Pearson of average ranks); 0 when either side is constant.
pub fn spearman(x: &[f64], y: &[f64]) -> Result<f64> {
    check_scores("spearman", x, y)?;
    Ok(pearson_unchecked(&average_ranks(x), &average_ranks(y)))
}

/// MultiRC exact match: the fraction of groups (questions) whose every answer option is
/// predicted right.
pub fn exact_match(predicted: &[usize], labels: &[usize], groups: &[u32]) -> Result<f64> {
    check_pairs("em", predicted, labels)?;
    if groups.len() != labels.len() {
        return Err(bad(format!("em: {} groups for {} labels", groups.len(), labels.len())));
    }
    let mut all_right: HashMap<u32, bool> = HashMap::new();
    for ((p, l), g) in predicted.iter().zip(labels).zip(groups) {
        let e = all_right.entry(*g).or_insert(true);
        *e &= p == l;
    }
    let right = all_right.values().filter(|&&r| r).count();
    Ok(right as f64 / all_right.len() as f64)
}

/// Predictions and gold labels of one evaluation.
#[derive(Debug, Clone, Copy)]
pub enum Predictions<'a> {
    /// Classification: predicted and gold class ids; `groups` is required for MultiRC.
    Classes {
        /// Predicted class ids.
        predicted: &'a [usize],
        /// Gold class ids.
        labels: &'a [usize],
        /// MultiRC question ids (`Example::group`), one per row.
        groups: Option<&'a [u32]>,
    },
    /// Regression (STS-B): predicted and gold scores.
    Scores {
        /// Predicted scores.
        predicted: &'a [f64],
        /// Gold scores.
        labels: &'a [f64],
    },
}

/// A task's metric values with stable names.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskMetrics {
    /// Metric name → value (names from [`crate::facts::metric_names`]).
    pub values: BTreeMap<String, f64>,
    /// Name of the primary metric (a key of `values`).
    pub primary: &'static str,
}

/// Computes every metric of `task` (see the module table).
pub fn compute_task_metrics(task: TaskId, predictions: Predictions<'_>) -> Result<TaskMetrics> {
    let info = task_info(task);
    let mut values = BTreeMap::new();
    match (task, predictions) {
        (TaskId::Stsb, Predictions::Scores { predicted, labels }) => {
            let p = pearson(predicted, labels)?;
            let s = spearman(predicted, labels)?;
            values.insert("pearson".to_string(), p);
            values.insert("spearman".to_string(), s);
            values.insert("pearson_spearman".to_string(), (p + s) / 2.0);
        }
        (TaskId::Stsb, Predictions::Classes { .. }) => {
            return Err(bad("STS-B is a regression task: pass Predictions::Scores".into()));
        }
        (_, Predictions::Scores { .. }) => {
            return Err(bad(format!("task '{task}' is a classification task: pass Predictions::Classes")));
        }
        (_, Predictions::Classes { predicted, labels, groups }) => {
            if let Some(c) = predicted.iter().chain(labels).find(|&&c| c >= info.num_labels) {
                return Err(bad(format!("task '{task}': class id {c} outside 0..{}", info.num_labels)));
            }
            values.insert("accuracy".to_string(), accuracy(predicted, labels)?);
            match task {
                TaskId::Cola => {
                    values.insert("mcc".to_string(), matthews_corrcoef(predicted, labels)?);
                }
                TaskId::Mrpc | TaskId::Qqp => {
                    values.insert("f1".to_string(), binary_f1(predicted, labels, 1)?);
                }
                TaskId::Cb => {
                    values.insert("macro_f1".to_string(), macro_f1(predicted, labels)?);
                }
                TaskId::Multirc => {
                    let groups = groups.ok_or_else(|| bad("MultiRC metrics need the question groups".into()))?;
                    values.insert("f1a".to_string(), binary_f1(predicted, labels, 1)?);
                    values.insert("em".to_string(), exact_match(predicted, labels, groups)?);
                }
                _ => {}
            }
        }
    }
    debug_assert_eq!(values.len(), info.metrics.len());
    Ok(TaskMetrics { values, primary: info.primary_metric })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    #[test]
    fn accuracy_by_hand() {
        // 3 of 4 right.
        close(accuracy(&[0, 1, 1, 0], &[0, 1, 0, 0]).unwrap(), 0.75);
    }

    #[test]
    fn binary_f1_by_hand() {
        // pred [1,1,0,1,0,0] vs gold [1,0,0,1,1,0]: tp = 2 (rows 0, 3), fp = 1 (row 1),
        // fn = 1 (row 4) → F1 = 2·2 / (2·2 + 1 + 1) = 4/6.
        close(binary_f1(&[1, 1, 0, 1, 0, 0], &[1, 0, 0, 1, 1, 0], 1).unwrap(), 4.0 / 6.0);
        // No positive prediction: tp = 0 → 0 (not NaN), with or without positive labels.
        close(binary_f1(&[0, 0, 0], &[1, 0, 1], 1).unwrap(), 0.0);
        close(binary_f1(&[0, 0], &[0, 0], 1).unwrap(), 0.0);
        // All-positive predictor on MRPC dev (279 of 408 positive): 2·279 / (2·279 + 129)
        // = 558/687 = 0.8122..., the seed system's "MRPC F1 0.8122".
        let labels: Vec<usize> = (0..408).map(|i| usize::from(i < 279)).collect();
        close(binary_f1(&[1; 408], &labels, 1).unwrap(), 558.0 / 687.0);
    }

    #[test]
    fn macro_f1_by_hand() {
        // gold [0,0,1,1,2,2], pred [0,1,1,1,2,0]:
        // class 0: tp 1, fp 1 (row 5), fn 1 (row 1) → 2/4 = 0.5
        // class 1: tp 2, fp 1 (row 1), fn 0         → 4/5 = 0.8
        // class 2: tp 1, fp 0, fn 1 (row 5)         → 2/3
        // mean = (0.5 + 0.8 + 2/3) / 3
        close(macro_f1(&[0, 1, 1, 1, 2, 0], &[0, 0, 1, 1, 2, 2]).unwrap(), (0.5 + 0.8 + 2.0 / 3.0) / 3.0);
        // Single class, all right: only class 0 is present → 1.0.
        close(macro_f1(&[0, 0], &[0, 0]).unwrap(), 1.0);
        // Constant predictor [0,0,0] vs gold [0,1,1]: class 0: tp 1, fp 2, fn 0 → 2/4 = 0.5;
        // class 1: tp 0, fp 0, fn 2 → 0. Mean = 0.25.
        close(macro_f1(&[0, 0, 0], &[0, 1, 1]).unwrap(), 0.25);
    }

    #[test]
    fn mcc_by_hand() {
        // gold [1,1,1,0,0,0], pred [1,1,0,0,0,1]: TP 2, TN 2, FP 1, FN 1
        // MCC = (2·2 − 1·1) / sqrt((2+1)(2+1)(2+1)(2+1)) = 3/9.
        close(matthews_corrcoef(&[1, 1, 0, 0, 0, 1], &[1, 1, 1, 0, 0, 0]).unwrap(), 1.0 / 3.0);
        close(matthews_corrcoef(&[1, 0, 1, 0], &[1, 0, 1, 0]).unwrap(), 1.0);
        close(matthews_corrcoef(&[0, 1, 0, 1], &[1, 0, 1, 0]).unwrap(), -1.0);
        // Constant predictor: denominator 0 → 0 by convention (CoLA's all-acceptable baseline).
        close(matthews_corrcoef(&[1, 1, 1, 1], &[1, 0, 1, 0]).unwrap(), 0.0);
        // Single class in labels and predictions: also 0.
        close(matthews_corrcoef(&[1, 1], &[1, 1]).unwrap(), 0.0);
    }

    #[test]
    fn pearson_spearman_by_hand() {
        // x = [1,2,3,4], y = [2,4,5,9]: dx = [-1.5,-.5,.5,1.5], dy = [-3,-1,0,4]
        // Σdxdy = 4.5 + .5 + 0 + 6 = 11, Σdx² = 5, Σdy² = 26 → r = 11 / sqrt(130).
        close(pearson(&[1.0, 2.0, 3.0, 4.0], &[2.0, 4.0, 5.0, 9.0]).unwrap(), 11.0 / 130f64.sqrt());
        // Spearman with a tie: x = [1,2,2,3] → ranks [1, 2.5, 2.5, 4]; y = [1,3,2,4] → [1,3,2,4].
        // dx = [-1.5,0,0,1.5], dy = [-1.5,.5,-.5,1.5]: Σdxdy = 4.5, Σdx² = 4.5, Σdy² = 5
        // → ρ = 4.5 / sqrt(22.5).
        close(spearman(&[1.0, 2.0, 2.0, 3.0], &[1.0, 3.0, 2.0, 4.0]).unwrap(), 4.5 / 22.5f64.sqrt());
        assert_eq!(average_ranks(&[3.0, 1.0, 3.0, 3.0]), vec![3.0, 1.0, 3.0, 3.0]);
        // Monotone but non-linear: Spearman 1, Pearson < 1.
        close(spearman(&[1.0, 2.0, 3.0], &[1.0, 10.0, 100.0]).unwrap(), 1.0);
        // Constant predictor: 0, not NaN.
        close(pearson(&[2.5, 2.5, 2.5], &[1.0, 2.0, 4.0]).unwrap(), 0.0);
        close(spearman(&[2.5, 2.5, 2.5], &[1.0, 2.0, 4.0]).unwrap(), 0.0);
        assert!(pearson(&[1.0], &[1.0]).is_err(), "one pair has no correlation");
        assert!(pearson(&[1.0, f64::NAN], &[1.0, 2.0]).unwrap_err().to_string().contains("non-finite"));
    }

    #[test]
    fn multirc_by_hand() {
        // groups [0,0,1,1,1,2], gold [1,0,1,1,0,0], pred [1,0,1,0,0,1]
        // EM: group 0 all right; group 1 wrong at row 3; group 2 wrong at row 5 → 1/3.
        // F1a: tp = 2 (rows 0, 2), fp = 1 (row 5), fn = 1 (row 3) → 4/6.
        let (p, l, g) = ([1, 0, 1, 0, 0, 1], [1, 0, 1, 1, 0, 0], [0u32, 0, 1, 1, 1, 2]);
        close(exact_match(&p, &l, &g).unwrap(), 1.0 / 3.0);
        let m =
            compute_task_metrics(TaskId::Multirc, Predictions::Classes { predicted: &p, labels: &l, groups: Some(&g) })
                .unwrap();
        close(m.values["f1a"], 4.0 / 6.0);
        close(m.values["em"], 1.0 / 3.0);
        close(m.values["accuracy"], 4.0 / 6.0);
        assert_eq!(m.primary, "f1a");
        let err =
            compute_task_metrics(TaskId::Multirc, Predictions::Classes { predicted: &p, labels: &l, groups: None });
        assert!(err.is_err());
    }

    #[test]
    fn empty_and_mismatched_inputs_are_errors() {
        assert!(accuracy(&[], &[]).unwrap_err().to_string().contains("no examples"));
        assert!(binary_f1(&[1], &[1, 0], 1).unwrap_err().to_string().contains("1 predictions but 2 labels"));
        assert!(matthews_corrcoef(&[], &[]).is_err());
        assert!(spearman(&[], &[]).is_err());
        assert!(exact_match(&[1], &[1], &[]).is_err());
    }

    #[test]
    fn task_metric_sets_have_stable_names() {
        let cola = compute_task_metrics(
            TaskId::Cola,
            Predictions::Classes { predicted: &[1, 1, 0, 0, 0, 1], labels: &[1, 1, 1, 0, 0, 0], groups: None },
        )
        .unwrap();
        assert_eq!(cola.values.keys().collect::<Vec<_>>(), vec!["accuracy", "mcc"]);
        close(cola.values[cola.primary], 1.0 / 3.0);

        let stsb = compute_task_metrics(
            TaskId::Stsb,
            Predictions::Scores { predicted: &[1.0, 2.0, 3.0, 4.0], labels: &[2.0, 4.0, 5.0, 9.0] },
        )
        .unwrap();
        assert_eq!(stsb.values.keys().collect::<Vec<_>>(), vec!["pearson", "pearson_spearman", "spearman"]);
        close(stsb.values["spearman"], 1.0);
        close(stsb.values["pearson_spearman"], (11.0 / 130f64.sqrt() + 1.0) / 2.0);
        assert_eq!(stsb.primary, "pearson");

        let cb = compute_task_metrics(
            TaskId::Cb,
            Predictions::Classes { predicted: &[0, 1, 1, 1, 2, 0], labels: &[0, 0, 1, 1, 2, 2], groups: None },
        )
        .unwrap();
        assert_eq!(cb.primary, "macro_f1");
        close(cb.values["accuracy"], 4.0 / 6.0);

        // Class ids outside the task's range and the wrong prediction kind are refused.
        assert!(
            compute_task_metrics(TaskId::Rte, Predictions::Classes { predicted: &[2], labels: &[0], groups: None })
                .is_err()
        );
        assert!(
            compute_task_metrics(TaskId::Stsb, Predictions::Classes { predicted: &[0], labels: &[0], groups: None })
                .is_err()
        );
        assert!(
            compute_task_metrics(TaskId::Sst2, Predictions::Scores { predicted: &[0.0, 1.0], labels: &[0.0, 1.0] })
                .is_err()
        );
    }
}
