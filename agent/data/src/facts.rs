//! The task-facts table: what each task is (display name, classes, metrics, primary
//! metric, grouping), read by the loaders, the prompt formats and the metrics alike.

use shared::TaskId;

/// Static facts about a task.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskInfo {
    /// The task.
    pub task: TaskId,
    /// Display name (`SST-2`).
    pub name: &'static str,
    /// Number of classes; 1 means regression (STS-B).
    pub num_labels: usize,
    /// Class names in class-index order (empty for regression).
    pub label_names: &'static [&'static str],
    /// Metric names computed by [`crate::metrics::compute_task_metrics`].
    pub metrics: &'static [&'static str],
    /// The metric used for model selection and headline reporting.
    pub primary_metric: &'static str,
    /// True when examples carry a `group` (MultiRC: answer options of one question).
    pub grouped: bool,
}

/// Facts about `task`.
pub fn task_info(task: TaskId) -> TaskInfo {
    const BINARY_FT: &[&str] = &["false", "true"];
    const ENTAIL2: &[&str] = &["entailment", "not_entailment"];
    let (name, label_names): (&str, &'static [&'static str]) = match task {
        TaskId::Sst2 => ("SST-2", &["negative", "positive"]),
        TaskId::Cola => ("CoLA", &["unacceptable", "acceptable"]),
        TaskId::Mrpc => ("MRPC", &["not_equivalent", "equivalent"]),
        TaskId::Stsb => ("STS-B", &[]),
        TaskId::Qnli => ("QNLI", ENTAIL2),
        TaskId::Rte => ("RTE", ENTAIL2),
        TaskId::Wnli => ("WNLI", &["not_entailment", "entailment"]),
        TaskId::Mnli => ("MNLI", &["entailment", "neutral", "contradiction"]),
        TaskId::Qqp => ("QQP", &["not_duplicate", "duplicate"]),
        TaskId::Cb => ("CB", &["entailment", "contradiction", "neutral"]),
        TaskId::Copa => ("COPA", &["choice1", "choice2"]),
        TaskId::Boolq => ("BoolQ", BINARY_FT),
        TaskId::Wic => ("WiC", BINARY_FT),
        TaskId::Wsc => ("WSC", BINARY_FT),
        TaskId::Multirc => ("MultiRC", BINARY_FT),
    };
    TaskInfo {
        task,
        name,
        num_labels: if task == TaskId::Stsb { 1 } else { label_names.len() },
        label_names,
        metrics: metric_names(task),
        primary_metric: primary_metric(task),
        grouped: task == TaskId::Multirc,
    }
}

/// Metric names computed for `task`, primary first.
pub fn metric_names(task: TaskId) -> &'static [&'static str] {
    match task {
        TaskId::Cola => &["mcc", "accuracy"],
        TaskId::Mrpc | TaskId::Qqp => &["f1", "accuracy"],
        TaskId::Stsb => &["pearson", "spearman", "pearson_spearman"],
        TaskId::Cb => &["macro_f1", "accuracy"],
        TaskId::Multirc => &["f1a", "em", "accuracy"],
        TaskId::Sst2
        | TaskId::Qnli
        | TaskId::Rte
        | TaskId::Wnli
        | TaskId::Mnli
        | TaskId::Copa
        | TaskId::Boolq
        | TaskId::Wic
        | TaskId::Wsc => &["accuracy"],
    }
}

/// The metric used for model selection and headline numbers.
pub fn primary_metric(task: TaskId) -> &'static str {
    metric_names(task)[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_info_is_consistent() {
        for task in TaskId::ALL {
            let info = task_info(task);
            assert!(info.metrics.contains(&info.primary_metric), "{task}");
            if task == TaskId::Stsb {
                assert_eq!((info.num_labels, info.label_names.len()), (1, 0));
            } else {
                assert_eq!(info.num_labels, info.label_names.len(), "{task}");
            }
        }
        assert_eq!(task_info(TaskId::Cb).label_names, &["entailment", "contradiction", "neutral"]);
        assert_eq!(task_info(TaskId::Rte).label_names[0], "entailment");
        assert!(task_info(TaskId::Multirc).grouped);
    }

    #[test]
    fn the_primary_metric_is_listed_first() {
        for task in TaskId::ALL {
            assert_eq!(primary_metric(task), metric_names(task)[0]);
        }
    }
}
