//! Turning results and run state into tables, JSON, CSV and Markdown. Pure functions:
//! no I/O, so every format is unit-tested.

use std::collections::BTreeMap;

use comfy_table::{Table, presets};
use serde_json::{Value, json};

use shared::shard::{ShardResult, ShardState};
use shared::{ModelId, TaskId};

/// Output format of `results`, `compare`, `agents`, `scales` and `submit --wait`/`--local`;
/// every command that takes it honours each value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned table for terminals.
    Table,
    /// One JSON object per shard.
    Json,
    /// Aggregates as CSV.
    Csv,
    /// Aggregates as a Markdown table.
    Markdown,
}

/// One shard as `qsched results --format json` prints it.
pub fn result_json(r: &ShardResult) -> Value {
    json!({
        "run": r.run,
        "shard": r.shard,
        "model": r.model,
        "task": r.task,
        "seed": r.seed,
        "scale": r.scale,
        "device": r.measured.device,
        "gpu_name": r.measured.gpu_name,
        "host": r.host,
        "agent": r.agent,
        "status": r.status,
        "error": r.error,
        "metrics": r.measured.metrics,
        "dev_metrics": r.measured.dev_metrics,
        "primary_metric": r.measured.primary_metric,
        "best_step": r.measured.best_step,
        "steps": r.measured.steps,
        "peak_memory_bytes": r.measured.peak_memory_bytes,
        "peak_memory_kind": r.measured.peak_memory_kind,
        "wall_seconds": r.measured.wall_seconds,
        "train_seconds": r.measured.train_seconds,
        "steps_per_second": r.measured.steps_per_second,
        "tokens_per_second": r.measured.tokens_per_second,
        "skipped_steps": r.measured.skipped_steps,
        "precision": r.measured.precision,
        "threads": r.measured.threads,
        "parameters": r.measured.parameters,
        "split_sizes": r.measured.split_sizes,
        "data_checksums": r.measured.data_checksums,
        "attempt": r.attempt,
        "resumed_from_step": r.measured.resumed_from_step,
        "config": r.measured.config,
        "traceparent": r.traceparent,
    })
}

/// Mean, sample standard deviation and count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation (0 for a single value).
    pub std: f64,
    /// Number of values.
    pub n: usize,
}

/// Two-sided 95 % quantiles of Student's t, `t(0.975, df)` for df = 1..=30 (mpmath's
/// inverse regularised incomplete beta, 30 digits, rounded to f64). Seeds are few, so
/// the normal 1.96 would understate the interval badly (n = 3 needs 4.30).
const T_975: [f64; 30] = [
    12.706204736174705,
    4.302652729749464,
    3.1824463052837095,
    2.7764451051977943,
    2.5705818356363155,
    2.44691185114497,
    2.3646242515927853,
    2.3060041352041667,
    2.2621571627982053,
    2.228138851986275,
    2.2009851600916397,
    2.178812829667229,
    2.1603686564627926,
    2.144786687917804,
    2.1314495455597755,
    2.1199052992212546,
    2.109815577833317,
    2.1009220402410387,
    2.0930240544083096,
    2.085963447265865,
    2.0796138447276804,
    2.0738730679040263,
    2.0686576104190486,
    2.063898561628026,
    2.0595385527532977,
    2.055529438642873,
    2.0518305164802855,
    2.048407141795245,
    2.0452296421327043,
    2.042272456301238,
];

/// `t(0.975, df)`: the table up to 30 degrees of freedom, beyond it the Cornish–Fisher
/// expansion around the normal quantile (within 4e-5 of the exact value at df = 31 and
/// closer after).
pub fn t_quantile_975(df: usize) -> f64 {
    if let Some(t) = df.checked_sub(1).and_then(|i| T_975.get(i)) {
        return *t;
    }
    let z = 1.959963984540054_f64;
    let v = df as f64;
    z + (z.powi(3) + z) / (4.0 * v)
        + (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / (96.0 * v * v)
        + (3.0 * z.powi(7) + 19.0 * z.powi(5) + 17.0 * z.powi(3) - 15.0 * z) / (384.0 * v.powi(3))
}

impl Summary {
    /// Half-width of the two-sided 95 % confidence interval of the mean (Student's t with
    /// n − 1 degrees of freedom times the standard error); `None` for a single value, whose
    /// spread is unknown.
    pub fn ci95(&self) -> Option<f64> {
        (self.n > 1).then(|| t_quantile_975(self.n - 1) * self.std / (self.n as f64).sqrt())
    }
}

/// Summary of `values`; `None` when empty.
pub fn summarize(values: &[f64]) -> Option<Summary> {
    if values.is_empty() {
        return None;
    }
    let n = values.len();
    let mean = values.iter().sum::<f64>() / n as f64;
    let std =
        if n > 1 { (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n as f64 - 1.0)).sqrt() } else { 0.0 };
    Some(Summary { mean, std, n })
}

/// Aggregate of one model × task over seeds.
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregate {
    /// Model id.
    pub model: ModelId,
    /// Task id.
    pub task: TaskId,
    /// Primary metric name.
    pub metric: Option<String>,
    /// Primary metric over succeeded shards.
    pub primary: Option<Summary>,
    /// Every metric over succeeded shards.
    pub metrics: BTreeMap<String, Summary>,
    /// Peak memory (bytes) over succeeded shards.
    pub peak_memory: Option<Summary>,
    /// Wall seconds over succeeded shards.
    pub wall_seconds: Option<Summary>,
    /// Training tokens per second over succeeded shards.
    pub tokens_per_second: Option<Summary>,
    /// Shards that did not succeed.
    pub failed: usize,
    /// Seeds of the succeeded shards.
    pub seeds: Vec<u64>,
}

/// Groups results by model × task, summarising `metric` (default: the primary metric).
pub fn aggregate_by(results: &[ShardResult], metric: Option<&str>) -> Vec<Aggregate> {
    let mut order: Vec<(ModelId, TaskId)> = Vec::new();
    let mut groups: BTreeMap<(ModelId, TaskId), Vec<&ShardResult>> = BTreeMap::new();
    let mut sorted: Vec<&ShardResult> = results.iter().collect();
    sorted.sort_by_key(|r| (r.model, r.task, r.seed));
    for r in sorted {
        let key = (r.model, r.task);
        if !order.contains(&key) {
            order.push(key);
        }
        groups.entry(key).or_default().push(r);
    }
    order
        .into_iter()
        .map(|key| {
            let rs = &groups[&key];
            let ok: Vec<&&ShardResult> = rs.iter().filter(|r| r.status == ShardState::Succeeded).collect();
            let metric =
                metric.map(str::to_owned).or_else(|| ok.iter().find_map(|r| r.measured.primary_metric.clone()));
            let mut names: Vec<String> = ok.iter().flat_map(|r| r.measured.metrics.keys().cloned()).collect();
            names.sort();
            names.dedup();
            let metrics = names
                .into_iter()
                .filter_map(|n| {
                    let v: Vec<f64> = ok.iter().filter_map(|r| r.measured.metrics.get(&n).copied()).collect();
                    summarize(&v).map(|s| (n, s))
                })
                .collect::<BTreeMap<_, _>>();
            let primary = metric.as_ref().and_then(|m| metrics.get(m).copied());
            let col = |f: fn(&ShardResult) -> f64| summarize(&ok.iter().map(|r| f(r)).collect::<Vec<_>>());
            Aggregate {
                model: key.0,
                task: key.1,
                metric,
                primary,
                metrics,
                peak_memory: col(|r| r.measured.peak_memory_bytes as f64),
                wall_seconds: col(|r| r.measured.wall_seconds),
                tokens_per_second: col(|r| r.measured.tokens_per_second),
                failed: rs.len() - ok.len(),
                seeds: ok.iter().map(|r| r.seed).collect(),
            }
        })
        .collect()
}

/// Bytes as MiB/GiB.
pub fn human_bytes(b: f64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if b >= 1024.0 * MIB { format!("{:.2} GiB", b / (1024.0 * MIB)) } else { format!("{:.1} MiB", b / MIB) }
}

fn pm(s: Option<Summary>, digits: usize) -> String {
    match s {
        Some(s) => format!("{:.*} ± {:.*}", digits, s.mean, digits, s.std),
        None => "—".into(),
    }
}

const HEADERS: [&str; 9] =
    ["model", "task", "metric", "mean ± std", "n", "failed", "peak memory", "wall s", "tokens/s"];

fn rows(aggs: &[Aggregate]) -> Vec<[String; 9]> {
    // (shown as "—" where the metric does not exist for a task)
    aggs.iter()
        .map(|a| {
            [
                a.model.to_string(),
                a.task.to_string(),
                a.metric.clone().unwrap_or_else(|| "—".into()),
                pm(a.primary, 4),
                a.primary.map_or(0, |s| s.n).to_string(),
                a.failed.to_string(),
                a.peak_memory.map_or("—".into(), |s| human_bytes(s.mean)),
                a.wall_seconds.map_or("—".into(), |s| format!("{:.1}", s.mean)),
                a.tokens_per_second.map_or("—".into(), |s| format!("{:.0}", s.mean)),
            ]
        })
        .collect()
}

/// Renders results in `format`, summarising each shard's primary metric.
pub fn render_results(results: &[ShardResult], format: Format) -> String {
    render_results_by(results, format, None)
}

/// Renders results in `format`, summarising `metric` (default: the primary metric).
pub fn render_results_by(results: &[ShardResult], format: Format, metric: Option<&str>) -> String {
    match format {
        Format::Json => {
            let mut sorted: Vec<&ShardResult> = results.iter().collect();
            sorted.sort_by_key(|r| (r.model, r.task, r.seed));
            let arr: Vec<Value> = sorted.into_iter().map(result_json).collect();
            serde_json::to_string_pretty(&arr).unwrap_or_else(|_| "[]".into())
        }
        Format::Table => {
            let mut t = Table::new();
            t.load_preset(presets::UTF8_FULL_CONDENSED).set_header(HEADERS);
            for r in rows(&aggregate_by(results, metric)) {
                t.add_row(r);
            }
            let mut out = t.to_string();
            let failures: Vec<&ShardResult> = results.iter().filter(|r| r.status != ShardState::Succeeded).collect();
            for f in failures {
                out.push_str(&format!(
                    "\n{} {} seed {} {}: {}",
                    f.model,
                    f.task,
                    f.seed,
                    f.status.as_str(),
                    f.error.as_deref().unwrap_or("")
                ));
            }
            out
        }
        Format::Csv => {
            let mut out =
                String::from("model,task,metric,mean,std,n,failed,peak_memory_bytes,wall_seconds,tokens_per_second\n");
            for a in aggregate_by(results, metric) {
                let (mean, std, n) = a
                    .primary
                    .map_or((String::new(), String::new(), 0), |s| (format!("{}", s.mean), format!("{}", s.std), s.n));
                out.push_str(&format!(
                    "{},{},{},{},{},{},{},{},{},{}\n",
                    a.model,
                    a.task,
                    a.metric.unwrap_or_default(),
                    mean,
                    std,
                    n,
                    a.failed,
                    a.peak_memory.map_or(String::new(), |s| format!("{:.0}", s.mean)),
                    a.wall_seconds.map_or(String::new(), |s| format!("{:.3}", s.mean)),
                    a.tokens_per_second.map_or(String::new(), |s| format!("{:.1}", s.mean)),
                ));
            }
            out
        }
        Format::Markdown => {
            let mut out = format!("| {} |\n|{}\n", HEADERS.join(" | "), "---|".repeat(HEADERS.len()));
            for r in rows(&aggregate_by(results, metric)) {
                out.push_str(&format!("| {} |\n", r.join(" | ")));
            }
            out
        }
    }
}

/// One CSV field (RFC 4180): quoted when it holds a comma, a quote or a line break, so
/// values such as "2 × 64, 4/2 × 16" stay one column.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_owned() }
}

/// One CSV line of `fields`, with its newline.
pub fn csv_line<S: AsRef<str>>(fields: &[S]) -> String {
    let mut line = fields.iter().map(|f| csv_field(f.as_ref())).collect::<Vec<_>>().join(",");
    line.push('\n');
    line
}

/// A Markdown table of `headers` and `rows` (a `|` inside a cell is escaped).
pub fn markdown_table<S: AsRef<str>>(headers: &[&str], rows: &[Vec<S>]) -> String {
    let cell = |c: &str| c.replace('|', "\\|");
    let mut out = format!("| {} |\n|{}\n", headers.join(" | "), "---|".repeat(headers.len()));
    for r in rows {
        out.push_str(&format!("| {} |\n", r.iter().map(|c| cell(c.as_ref())).collect::<Vec<_>>().join(" | ")));
    }
    out
}

/// Names of the metrics that succeeded results report, sorted: what `--metric` accepts.
pub fn metric_names(results: &[ShardResult]) -> Vec<String> {
    let mut names: Vec<String> = results
        .iter()
        .filter(|r| r.status == ShardState::Succeeded)
        .flat_map(|r| r.measured.metrics.keys().cloned())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Models with at least one succeeded result, in display order: what `--baseline` accepts.
pub fn models_with_results(results: &[ShardResult]) -> Vec<ModelId> {
    let mut models: Vec<ModelId> =
        results.iter().filter(|r| r.status == ShardState::Succeeded).map(|r| r.model).collect();
    models.sort();
    models.dedup();
    models
}

/// Shard fields that differ between the seeds and runs of one configuration.
const PER_SHARD_FIELDS: [&str; 4] = ["run_id", "shard_id", "index", "seed"];

/// The settings a result's shard ran with (architecture, weights, data sizes, training
/// settings, scale, device class), less the fields that differ between its seeds and
/// runs. A successful result records its shard under `config.shard`, a failed one as
/// `config` itself. `None` when the result records no configuration.
pub fn settings_of(r: &ShardResult) -> Option<Value> {
    let shard = match &r.measured.config {
        Value::Null => return None,
        Value::Object(m) if m.get("shard").is_some_and(Value::is_object) => m["shard"].clone(),
        other => other.clone(),
    };
    Some(match shard {
        Value::Object(mut m) => {
            for field in PER_SHARD_FIELDS {
                m.remove(field);
            }
            Value::Object(m)
        }
        other => other,
    })
}

/// One setting that differs: its dotted path and the two values (JSON; `absent` when
/// one side lacks it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingDifference {
    /// Dotted path, e.g. `train.max_steps`.
    pub path: String,
    /// Value in the first run.
    pub first: String,
    /// Value in the second run.
    pub second: String,
}

/// Results of one model × task that ran with different settings and so must not be
/// summarised together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsConflict {
    /// Model.
    pub model: ModelId,
    /// Task.
    pub task: TaskId,
    /// Run of the first configuration.
    pub first_run: String,
    /// Run of the second configuration.
    pub second_run: String,
    /// What differs, with `scale` first, then in path order.
    pub differences: Vec<SettingDifference>,
}

fn flatten(path: &str, v: &Value, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, x) in m {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                flatten(&p, x, out);
            }
        }
        other => {
            out.insert(if path.is_empty() { "config".to_owned() } else { path.to_owned() }, other.to_string());
        }
    }
}

fn differences(a: &Value, b: &Value) -> Vec<SettingDifference> {
    let (mut fa, mut fb) = (BTreeMap::new(), BTreeMap::new());
    flatten("", a, &mut fa);
    flatten("", b, &mut fb);
    let mut paths: Vec<&String> = fa.keys().chain(fb.keys()).collect();
    paths.sort_by_key(|p| (p.as_str() != "scale", p.as_str()));
    paths.dedup();
    let absent = || "absent".to_owned();
    paths
        .into_iter()
        .filter(|p| fa.get(*p) != fb.get(*p))
        .map(|p| SettingDifference {
            path: p.clone(),
            first: fa.get(p).cloned().unwrap_or_else(absent),
            second: fb.get(p).cloned().unwrap_or_else(absent),
        })
        .collect()
}

/// Every model × task whose results ran with more than one configuration (the first two
/// found), in model × task order. Results that record no configuration are not compared.
pub fn settings_conflicts(results: &[ShardResult]) -> Vec<SettingsConflict> {
    let mut sorted: Vec<&ShardResult> = results.iter().collect();
    sorted.sort_by(|a, b| (a.model, a.task, &a.run, a.seed).cmp(&(b.model, b.task, &b.run, b.seed)));
    let mut first: BTreeMap<(ModelId, TaskId), (&str, Value)> = BTreeMap::new();
    let mut conflicts: BTreeMap<(ModelId, TaskId), SettingsConflict> = BTreeMap::new();
    for r in sorted {
        let key = (r.model, r.task);
        let Some(settings) = settings_of(r) else { continue };
        if conflicts.contains_key(&key) {
            continue;
        }
        match first.get(&key) {
            None => {
                first.insert(key, (r.run.as_str(), settings));
            }
            Some((run, reference)) if *reference != settings => {
                conflicts.insert(
                    key,
                    SettingsConflict {
                        model: r.model,
                        task: r.task,
                        first_run: (*run).to_owned(),
                        second_run: r.run.clone(),
                        differences: differences(reference, &settings),
                    },
                );
            }
            Some(_) => {}
        }
    }
    conflicts.into_values().collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use shared::shard::ShardMeasurements;

    pub(crate) fn result(model: ModelId, seed: u64, acc: Option<f64>) -> ShardResult {
        let mut metrics = BTreeMap::new();
        if let Some(a) = acc {
            metrics.insert("accuracy".to_owned(), a);
        }
        ShardResult {
            run: "r".into(),
            shard: format!("s{seed}"),
            model,
            task: TaskId::Sst2,
            seed,
            scale: "tiny".into(),
            host: "h".into(),
            agent: "a".into(),
            status: if acc.is_some() { ShardState::Succeeded } else { ShardState::Failed },
            error: acc.is_none().then(|| "boom".to_owned()),
            measured: ShardMeasurements {
                device: "cpu".into(),
                gpu_name: None,
                metrics,
                dev_metrics: BTreeMap::new(),
                primary_metric: acc.is_some().then(|| "accuracy".to_owned()),
                best_step: Some(10),
                steps: 10,
                peak_memory_bytes: 100 * 1024 * 1024,
                peak_memory_kind: "host_rss_peak".into(),
                wall_seconds: 2.0,
                train_seconds: 1.0,
                steps_per_second: 10.0,
                tokens_per_second: 1000.0,
                skipped_steps: 0,
                precision: "fp32".into(),
                threads: 2,
                parameters: 1,
                split_sizes: BTreeMap::new(),
                data_checksums: BTreeMap::new(),
                config: Value::Null,
                resumed_from_step: None,
            },
            attempt: 1,
            started_at: 0.0,
            finished_at: 0.0,
            traceparent: None,
        }
    }

    #[test]
    fn summary_math() {
        // mean of 0.8, 0.9, 1.0 = 0.9; sample variance = (0.01+0+0.01)/2 = 0.01; std = 0.1
        let s = summarize(&[0.8, 0.9, 1.0]).unwrap();
        assert!((s.mean - 0.9).abs() < 1e-12 && (s.std - 0.1).abs() < 1e-12 && s.n == 3);
        assert_eq!(summarize(&[0.5]).unwrap().std, 0.0);
        assert!(summarize(&[]).is_none());
    }

    #[test]
    fn confidence_interval_of_the_mean() {
        // n = 3, std 0.1: t(0.975, 2) · 0.1 / √3.
        let s = summarize(&[0.8, 0.9, 1.0]).unwrap();
        assert!((s.ci95().unwrap() - 4.302652729749464 * 0.1 / 3f64.sqrt()).abs() < 1e-12);
        assert_eq!(summarize(&[0.5]).unwrap().ci95(), None);
        // The expansion beyond the table joins it and tends to the normal quantile.
        assert!((t_quantile_975(31) - 2.0395134463964086).abs() < 5e-5);
        assert!((t_quantile_975(120) - 1.979930405082441).abs() < 1e-6);
        assert!((t_quantile_975(100_000) - 1.96).abs() < 1e-3);
    }

    #[test]
    fn aggregates_by_model_and_task_counting_failures() {
        let rs = vec![
            result(ModelId::Qwen3, 1, Some(0.8)),
            result(ModelId::Qwen3, 2, Some(0.9)),
            result(ModelId::Qwen3, 3, None),
            result(ModelId::RevQwen3, 1, Some(0.7)),
            result(ModelId::Qwen3Ckpt, 1, Some(0.75)),
        ];
        let a = aggregate_by(&rs, None);
        assert_eq!(a.len(), 3);
        assert_eq!(a[0].model, ModelId::Qwen3);
        // qwen3-ckpt is its own row, between qwen3 and rev-qwen3 (ModelId order).
        assert_eq!((a[1].model, a[2].model), (ModelId::Qwen3Ckpt, ModelId::RevQwen3));
        assert_eq!(a[0].primary.unwrap().n, 2);
        assert!((a[0].primary.unwrap().mean - 0.85).abs() < 1e-12);
        assert_eq!(a[0].failed, 1);
        assert_eq!(a[0].seeds, vec![1, 2]);
        assert_eq!(a[1].failed, 0);
    }

    #[test]
    fn every_format_renders() {
        let rs = vec![result(ModelId::Qwen3, 1, Some(0.8)), result(ModelId::Qwen3, 2, None)];
        let json: Value = serde_json::from_str(&render_results(&rs, Format::Json)).unwrap();
        let arr = json.as_array().unwrap();
        assert_eq!(arr.len(), 2);
        for key in [
            "run",
            "shard",
            "model",
            "task",
            "seed",
            "scale",
            "device",
            "status",
            "metrics",
            "peak_memory_bytes",
            "wall_seconds",
        ] {
            assert!(arr[0].get(key).is_some(), "missing {key}");
        }
        assert_eq!(arr[0]["metrics"]["accuracy"], 0.8);
        assert_eq!(arr[1]["status"], "failed");
        let csv = render_results(&rs, Format::Csv);
        assert_eq!(csv.lines().count(), 2);
        assert!(csv.lines().nth(1).unwrap().starts_with("qwen3,sst2,accuracy,0.8,0,1,1,"));
        let md = render_results(&rs, Format::Markdown);
        assert!(md.contains("| qwen3 | sst2 | accuracy | 0.8000 ± 0.0000 | 1 | 1 |"), "{md}");
        let table = render_results(&rs, Format::Table);
        assert!(table.contains("0.8000 ± 0.0000") && table.contains("boom"), "{table}");
        // Another metric than the primary one, and one a task does not have.
        let by = aggregate_by(&rs, Some("accuracy"));
        assert!((by[0].primary.unwrap().mean - 0.8).abs() < 1e-12);
        assert!(aggregate_by(&rs, Some("mcc"))[0].primary.is_none());
    }

    /// A succeeded result as an agent records it: the shard under `config.shard`.
    pub(crate) fn ran_with(run: &str, model: ModelId, seed: u64, acc: f64, max_steps: u64) -> ShardResult {
        let mut r = result(model, seed, Some(acc));
        r.run = run.into();
        r.measured.config = json!({
            "shard": {
                "run_id": run, "shard_id": format!("{run}{seed}"), "index": seed, "seed": seed,
                "model": model, "task": "sst2", "scale": "tiny",
                "train": {"max_steps": max_steps, "learning_rate": 0.001},
            },
            "evaluations": [{"step": max_steps}],
        });
        r
    }

    #[test]
    fn settings_leave_out_what_differs_between_seeds_and_runs() {
        let a = ran_with("r1", ModelId::Qwen3, 1, 0.8, 10);
        let b = ran_with("r2", ModelId::Qwen3, 2, 0.9, 10);
        assert_eq!(settings_of(&a), settings_of(&b));
        assert!(settings_of(&a).unwrap().get("seed").is_none());
        // A failed result records the shard as `config` itself.
        let mut failed = result(ModelId::Qwen3, 3, None);
        failed.measured.config = a.measured.config["shard"].clone();
        assert_eq!(settings_of(&failed), settings_of(&a));
        assert!(settings_conflicts(&[a, b, failed]).is_empty());
        assert_eq!(settings_of(&result(ModelId::Qwen3, 1, None)), None);
    }

    #[test]
    fn a_model_and_task_with_two_configurations_is_a_conflict_naming_what_differs() {
        let rs = vec![
            ran_with("r-short", ModelId::Qwen3, 1, 0.6, 10),
            ran_with("r-short", ModelId::Qwen3, 2, 0.6, 10),
            ran_with("r-long", ModelId::Qwen3, 1, 0.9, 400),
            // Another model with one configuration in both runs: no conflict.
            ran_with("r-short", ModelId::RevQwen3, 1, 0.6, 10),
            ran_with("r-long", ModelId::RevQwen3, 2, 0.6, 10),
        ];
        let c = settings_conflicts(&rs);
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!((c[0].model, c[0].task), (ModelId::Qwen3, TaskId::Sst2));
        assert_eq!((c[0].first_run.as_str(), c[0].second_run.as_str()), ("r-long", "r-short"));
        assert_eq!(
            c[0].differences,
            vec![SettingDifference { path: "train.max_steps".into(), first: "400".into(), second: "10".into() }]
        );
    }

    #[test]
    fn valid_metric_and_model_names_come_from_succeeded_results() {
        let mut f1 = result(ModelId::RevQwen3, 1, Some(0.5));
        f1.measured.metrics.insert("f1".into(), 0.4);
        let rs = vec![result(ModelId::Qwen3, 1, Some(0.8)), f1, result(ModelId::FtOpt, 1, None)];
        assert_eq!(metric_names(&rs), vec!["accuracy", "f1"]);
        assert_eq!(models_with_results(&rs), vec![ModelId::Qwen3, ModelId::RevQwen3]);
    }

    #[test]
    fn csv_fields_with_commas_or_quotes_are_quoted() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("2 × 64, 4/2 × 16"), "\"2 × 64, 4/2 × 16\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_line(&["a", "b,c"]), "a,\"b,c\"\n");
        assert_eq!(markdown_table(&["x"], &[vec!["a|b"]]), "| x |\n|---|\n| a\\|b |\n");
    }

    #[test]
    fn bytes() {
        assert_eq!(human_bytes(512.0 * 1024.0 * 1024.0), "512.0 MiB");
        assert_eq!(human_bytes(3.0 * 1024.0 * 1024.0 * 1024.0), "3.00 GiB");
    }
}
