//! What `qsched plot` draws from a run, as [`Figure`]s: pure functions of the results and
//! the metric streams, no I/O.
//!
//! Figures (file stems):
//! - `loss_<model>_<task>`: training loss and dev loss over steps, the mean over seeds
//!   with a band of ± 1 sample standard deviation;
//! - `dev_<model>_<task>`: the dev-split metric (the task's primary one, or `--metric`)
//!   over steps, the same way;
//! - `metric_<task>`: per model, the test metric at the best dev evaluation, mean over
//!   seeds with 95 % confidence-interval whiskers (Student's t);
//! - `memory_<task>`, `wall_<task>`: per model, peak memory and wall time per shard, the
//!   same way.
//!
//! The bar figures are per task because a shard's memory, time and metric depend on its
//! task's data; models are compared within one. Statistics are
//! [`crate::render::summarize`] and [`crate::render::Summary::ci95`], the numbers
//! `qsched results` prints.

use std::collections::BTreeMap;

use shared::shard::{MetricPoint, ShardResult, ShardState};
use shared::{ModelId, TaskId};

use super::{Bar, Body, Curves, Figure, LegendAt, Point, Series};
use crate::render::{self, Aggregate, Summary};

/// Metric streams by (run, shard), oldest point first.
pub type Streams = BTreeMap<(String, String), Vec<MetricPoint>>;

/// One shard's values of `name` in its points of `kind` ("train", "dev"), by step.
///
/// A shard that was retried after a failure can have two points at a step (the resumed
/// attempt logs again from its checkpoint): the later one wins, since it belongs to the
/// attempt whose result is stored. Non-finite values are left out.
pub fn shard_curve(points: &[MetricPoint], kind: &str, name: &str) -> BTreeMap<u64, f64> {
    let mut curve = BTreeMap::new();
    for p in points.iter().filter(|p| p.kind == kind) {
        if let Some(v) = p.values.get(name).copied().filter(|v| v.is_finite()) {
            curve.insert(p.step, v);
        }
    }
    curve
}

/// At each step any shard logged: the mean over the shards that logged it, with the band
/// mean ± 1 sample standard deviation (zero width where one shard did). Steps line up
/// across seeds because results with different settings are never pooled.
pub fn over_seeds(curves: &[BTreeMap<u64, f64>]) -> Vec<Point> {
    let mut by_step: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    for curve in curves {
        for (step, v) in curve {
            by_step.entry(*step).or_default().push(*v);
        }
    }
    by_step
        .into_iter()
        .filter_map(|(step, values)| {
            let s = render::summarize(&values)?;
            Some(Point { x: step as f64, y: s.mean, band: Some((s.mean - s.std, s.mean + s.std)) })
        })
        .collect()
}

/// A bar for a summary: its mean, whiskers of the 95 % confidence interval of the mean
/// (none for n = 1), the model and n under it. `None` for a mean that is not a number (a
/// metric undefined on some seed, such as a correlation of constant predictions).
pub fn ci_bar(model: ModelId, s: Summary, scale: f64) -> Option<Bar> {
    if !s.mean.is_finite() {
        return None;
    }
    Some(Bar {
        label: format!("{model} (n={})", s.n),
        value: s.mean / scale,
        whisker: s.ci95().map(|h| ((s.mean - h) / scale, (s.mean + h) / scale)),
    })
}

/// A series of the mean over seeds of `name` in the `kind` points of `shards`; `None`
/// when no shard logged it.
fn seed_series(streams: &[&[MetricPoint]], kind: &str, name: &str, label: &str, color: usize) -> Option<Series> {
    let curves: Vec<BTreeMap<u64, f64>> =
        streams.iter().map(|s| shard_curve(s, kind, name)).filter(|c| !c.is_empty()).collect();
    if curves.is_empty() {
        return None;
    }
    Some(Series {
        label: format!("{label} (mean ± 1 std over {} seed(s))", curves.len()),
        points: over_seeds(&curves),
        color: Some(color),
        dashed: false,
    })
}

fn curves(series: Vec<Series>) -> Body {
    Body::Curves(Curves { series, log_y: false, y_from_zero: false, legend: LegendAt::UpperRight })
}

/// Every figure of `results` (pooled runs, described as `runs` in titles) and their
/// metric streams, and one line per figure left out for want of data.
pub fn run_figures(
    results: &[ShardResult],
    streams: &Streams,
    metric: Option<&str>,
    runs: &str,
) -> (Vec<Figure>, Vec<String>) {
    let aggregates = render::aggregate_by(results, metric);
    let mut figures = Vec::new();
    let mut skipped = Vec::new();
    let empty: Vec<MetricPoint> = Vec::new();
    for a in &aggregates {
        let shard_streams: Vec<&[MetricPoint]> = results
            .iter()
            .filter(|r| r.model == a.model && r.task == a.task && r.status == ShardState::Succeeded)
            .map(|r| streams.get(&(r.run.clone(), r.shard.clone())).unwrap_or(&empty).as_slice())
            .collect();
        let (model, task) = (a.model, a.task);
        let name = format!("loss_{model}_{task}");
        let loss: Vec<Series> = [("train", "train loss", 0), ("dev", "dev loss", 1)]
            .into_iter()
            .filter_map(|(kind, label, color)| seed_series(&shard_streams, kind, "loss", label, color))
            .collect();
        if loss.is_empty() {
            skipped.push(format!("{name}: no train or dev loss in the metric streams of {model} × {task} ({runs})"));
        } else {
            figures.push(Figure {
                name,
                title: format!("{model} × {task}: loss ({runs})"),
                x_label: "step".into(),
                y_label: "loss".into(),
                body: curves(loss),
            });
        }
        let name = format!("dev_{model}_{task}");
        match &a.metric {
            None => skipped.push(format!("{name}: {model} × {task} has no metric ({runs})")),
            Some(m) => match seed_series(&shard_streams, "dev", m, &format!("dev {m}"), 2) {
                None => skipped.push(format!("{name}: no dev {m} in the metric streams of {model} × {task} ({runs})")),
                Some(series) => figures.push(Figure {
                    name,
                    title: format!("{model} × {task}: dev {m} ({runs})"),
                    x_label: "step".into(),
                    y_label: format!("dev {m}"),
                    body: curves(vec![series]),
                }),
            },
        }
    }
    let mut tasks: Vec<TaskId> = aggregates.iter().map(|a| a.task).collect();
    tasks.sort();
    tasks.dedup();
    for task in tasks {
        let of_task: Vec<&Aggregate> = aggregates.iter().filter(|a| a.task == task).collect();
        summary_figures(task, &of_task, results, runs, &mut figures, &mut skipped);
    }
    (figures, skipped)
}

/// The bar figures of one task: metric, peak memory, wall time.
fn summary_figures(
    task: TaskId,
    aggregates: &[&Aggregate],
    results: &[ShardResult],
    runs: &str,
    figures: &mut Vec<Figure>,
    skipped: &mut Vec<String>,
) {
    const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
    const MIB: f64 = 1024.0 * 1024.0;
    let whiskers = "mean over seeds, whiskers: 95 % CI of the mean";
    let mut push = |name: String, title: String, y_label: String, bars: Vec<Bar>, why_none: &str| {
        if bars.is_empty() {
            skipped.push(format!("{name}: {why_none} ({runs})"));
        } else {
            figures.push(Figure { name, title, x_label: "model".into(), y_label, body: Body::Bars(bars) });
        }
    };

    // The metric: the task's primary one (or --metric); models reporting another one are
    // not put on the same axis.
    let metric = aggregates.iter().find_map(|a| a.primary.and(a.metric.clone()));
    let bars: Vec<Bar> =
        aggregates.iter().filter(|a| a.metric == metric).filter_map(|a| ci_bar(a.model, a.primary?, 1.0)).collect();
    let m = metric.unwrap_or_default();
    push(
        format!("metric_{task}"),
        format!("{task}: test {m} ({runs}; {whiskers})"),
        format!("test {m}"),
        bars,
        &format!("no succeeded shard of {task} reports a metric"),
    );

    let memory: Vec<(ModelId, Summary)> = aggregates.iter().filter_map(|a| Some((a.model, a.peak_memory?))).collect();
    let (scale, unit) = if memory.iter().any(|(_, s)| s.mean >= GIB) { (GIB, "GiB") } else { (MIB, "MiB") };
    let mut kinds: Vec<&str> = results
        .iter()
        .filter(|r| r.task == task && r.status == ShardState::Succeeded)
        .map(|r| r.measured.peak_memory_kind.as_str())
        .collect();
    kinds.sort();
    kinds.dedup();
    push(
        format!("memory_{task}"),
        format!("{task}: peak memory per shard ({runs}; {whiskers})"),
        format!("peak memory ({unit}; {})", kinds.join(", ")),
        memory.into_iter().filter_map(|(model, s)| ci_bar(model, s, scale)).collect(),
        &format!("no succeeded shard of {task}"),
    );

    let wall: Vec<Bar> = aggregates.iter().filter_map(|a| ci_bar(a.model, a.wall_seconds?, 1.0)).collect();
    push(
        format!("wall_{task}"),
        format!("{task}: wall time per shard ({runs}; {whiskers})"),
        "wall time (s)".into(),
        wall,
        &format!("no succeeded shard of {task}"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::tests::result;

    fn point(step: u64, kind: &str, values: &[(&str, f64)]) -> MetricPoint {
        MetricPoint {
            step,
            kind: kind.into(),
            values: values.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
            at: 0.0,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn a_shard_curve_keeps_the_last_point_of_a_step_and_only_finite_values() {
        let points = vec![
            point(10, "train", &[("loss", 0.9)]),
            point(20, "train", &[("loss", 0.8)]),
            point(20, "dev", &[("loss", 5.0)]),
            // A retried attempt resumed from step 10 and logged step 20 again.
            point(20, "train", &[("loss", 0.7)]),
            point(30, "train", &[("loss", f64::NAN)]),
            point(40, "train", &[("lr", 1e-3)]),
        ];
        let curve = shard_curve(&points, "train", "loss");
        assert_eq!(curve, BTreeMap::from([(10, 0.9), (20, 0.7)]));
        assert_eq!(shard_curve(&points, "dev", "loss"), BTreeMap::from([(20, 5.0)]));
        assert!(shard_curve(&points, "test", "loss").is_empty());
    }

    #[test]
    fn the_mean_over_seeds_has_a_one_std_band_at_each_step() {
        let seeds = vec![
            BTreeMap::from([(10, 1.0), (20, 0.5)]),
            BTreeMap::from([(10, 2.0), (20, 0.5)]),
            // This seed stopped early: step 30 is its alone.
            BTreeMap::from([(10, 3.0), (20, 0.5), (30, 0.25)]),
        ];
        let points = over_seeds(&seeds);
        assert_eq!(points.len(), 3);
        // 1, 2, 3: mean 2, sample std 1.
        assert_eq!((points[0].x, points[0].y), (10.0, 2.0));
        let (lo, hi) = points[0].band.unwrap();
        assert!(close(lo, 1.0) && close(hi, 3.0), "{lo} {hi}");
        assert_eq!(points[1].band, Some((0.5, 0.5)));
        assert_eq!((points[2].x, points[2].y, points[2].band), (30.0, 0.25, Some((0.25, 0.25))));
    }

    #[test]
    fn a_bar_has_the_95_percent_interval_of_the_mean_or_none_for_one_seed() {
        let s = render::summarize(&[0.8, 0.9, 1.0]).unwrap();
        let bar = ci_bar(ModelId::Qwen3, s, 1.0).unwrap();
        let h = 4.302652729749464 * 0.1 / 3f64.sqrt();
        assert_eq!(bar.label, "qwen3 (n=3)");
        let (lo, hi) = bar.whisker.unwrap();
        assert!(close(bar.value, 0.9) && close(lo, 0.9 - h) && close(hi, 0.9 + h), "{bar:?}");
        let one = ci_bar(ModelId::RevQwen3, render::summarize(&[2048.0]).unwrap(), 1024.0).unwrap();
        assert_eq!((one.label.as_str(), one.value, one.whisker), ("rev-qwen3 (n=1)", 2.0, None));
        assert_eq!(ci_bar(ModelId::Qwen3, render::summarize(&[f64::NAN, 0.5]).unwrap(), 1.0), None);
    }

    /// Two qwen3 seeds with streams, one rev-qwen3 seed without any, a failed ft-opt.
    fn run() -> (Vec<ShardResult>, Streams) {
        let mut results = vec![
            result(ModelId::Qwen3, 1, Some(0.8)),
            result(ModelId::Qwen3, 2, Some(0.9)),
            result(ModelId::RevQwen3, 1, Some(0.7)),
            result(ModelId::FtOpt, 1, None),
        ];
        results[0].measured.peak_memory_bytes = 2 << 30;
        results[1].measured.peak_memory_bytes = 4 << 30;
        results[1].measured.wall_seconds = 4.0;
        for (i, r) in results.iter_mut().enumerate() {
            r.shard = format!("s{i}");
        }
        let mut streams = Streams::new();
        for (i, (loss, acc)) in [(1.0, 0.6), (3.0, 0.8)].into_iter().enumerate() {
            let points = vec![
                point(10, "train", &[("loss", loss)]),
                point(20, "train", &[("loss", loss / 2.0)]),
                point(20, "dev", &[("loss", loss), ("accuracy", acc)]),
                point(20, "test", &[("accuracy", 0.0)]),
            ];
            streams.insert(("r".into(), format!("s{i}")), points);
        }
        (results, streams)
    }

    #[test]
    fn a_run_gives_curves_per_model_and_task_and_bars_per_task_and_says_what_it_skipped() {
        let (results, streams) = run();
        let (figures, skipped) = run_figures(&results, &streams, None, "run r");
        let names: Vec<&str> = figures.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["loss_qwen3_sst2", "dev_qwen3_sst2", "metric_sst2", "memory_sst2", "wall_sst2"]);
        assert_eq!(
            skipped,
            [
                "loss_rev-qwen3_sst2: no train or dev loss in the metric streams of rev-qwen3 × sst2 (run r)",
                "dev_rev-qwen3_sst2: no dev accuracy in the metric streams of rev-qwen3 × sst2 (run r)",
                "loss_ft-opt_sst2: no train or dev loss in the metric streams of ft-opt × sst2 (run r)",
                "dev_ft-opt_sst2: ft-opt × sst2 has no metric (run r)",
            ]
        );

        let Body::Curves(loss) = &figures[0].body else { panic!("{:?}", figures[0]) };
        assert_eq!(loss.series.len(), 2);
        assert_eq!(loss.series[0].label, "train loss (mean ± 1 std over 2 seed(s))");
        // Train loss at step 10: 1 and 3, mean 2 ± √2.
        let p = loss.series[0].points[0];
        let (lo, hi) = p.band.unwrap();
        assert!(p.y == 2.0 && close(hi - p.y, 2f64.sqrt()) && close(p.y - lo, 2f64.sqrt()), "{p:?}");
        assert_eq!(loss.series[1].points.len(), 1);
        let Body::Curves(dev) = &figures[1].body else { panic!() };
        assert_eq!(dev.series[0].points.len(), 1);
        assert!(close(dev.series[0].points[0].y, 0.7), "{dev:?}");

        // Bars: the test metric of each model that has one; the failed model has none.
        let Body::Bars(bars) = &figures[2].body else { panic!() };
        assert_eq!(bars.iter().map(|b| b.label.as_str()).collect::<Vec<_>>(), ["qwen3 (n=2)", "rev-qwen3 (n=1)"]);
        assert!(close(bars[0].value, 0.85) && bars[0].whisker.is_some() && bars[1].whisker.is_none());
        assert!(figures[2].title.contains("95 % CI"), "{}", figures[2].title);
        // Memory in GiB once a mean reaches 1 GiB: qwen3 (2 + 4) / 2 = 3 GiB.
        let Body::Bars(memory) = &figures[3].body else { panic!() };
        assert_eq!(figures[3].y_label, "peak memory (GiB; host_rss_peak)");
        assert!(close(memory[0].value, 3.0), "{memory:?}");
        let Body::Bars(wall) = &figures[4].body else { panic!() };
        assert!(close(wall[0].value, 3.0) && close(wall[1].value, 2.0), "{wall:?}");
    }

    #[test]
    fn another_metric_than_the_primary_one_is_plotted_when_asked_for() {
        let (mut results, mut streams) = run();
        for r in &mut results {
            if r.status == ShardState::Succeeded {
                r.measured.metrics.insert("f1".into(), 0.5);
            }
        }
        for points in streams.values_mut() {
            points.push(point(20, "dev", &[("f1", 0.25)]));
        }
        let (figures, _) = run_figures(&results, &streams, Some("f1"), "run r");
        let dev = figures.iter().find(|f| f.name == "dev_qwen3_sst2").unwrap();
        assert_eq!(dev.y_label, "dev f1");
        let metric = figures.iter().find(|f| f.name == "metric_sst2").unwrap();
        assert_eq!(metric.y_label, "test f1");
    }
}
