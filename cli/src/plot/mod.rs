//! `qsched plot` and `qsched plot-json`: figures as PNG or SVG files.
//!
//! Three layers, so the numbers are tested apart from the pixels:
//! - [`prep`] turns stored results and metric streams into [`Figure`]s (pure: means,
//!   bands and confidence intervals come from [`crate::render`]'s summaries);
//! - [`curves`] reads the curve files the BENCHMARKS figures are drawn from (pure);
//! - [`draw`] renders a [`Figure`] with `plotters` to SVG text or PNG bytes.
//!
//! This module owns the I/O around them: reading the store, writing the files. It does
//! not decide what a figure shows; that is [`prep`]'s and the curve file's.

pub mod curves;
pub mod draw;
pub mod prep;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use shared::shard::ShardState;
use shared::store::{METRIC_STREAM_MAXLEN, Store};

use crate::commands;

/// File format of a figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum ImageFormat {
    /// Scalable vector graphics: text stays text, small files, sharp at any size.
    Svg,
    /// A 1024 × 640 RGB bitmap.
    Png,
}

impl ImageFormat {
    /// The file extension.
    pub fn extension(self) -> &'static str {
        match self {
            ImageFormat::Svg => "svg",
            ImageFormat::Png => "png",
        }
    }
}

/// One figure, drawn to one file per format: `<name>.svg`, `<name>.png`.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    /// File stem: lower-case letters, digits, `-`, `_` and `.` only.
    pub name: String,
    /// Caption above the plot.
    pub title: String,
    /// Horizontal axis description.
    pub x_label: String,
    /// Vertical axis description.
    pub y_label: String,
    /// What is drawn.
    pub body: Body,
}

/// The kind of plot a figure is.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// Lines over a numeric x axis.
    Curves(Curves),
    /// One bar per category, optionally with whiskers.
    Bars(Vec<Bar>),
}

/// Lines over a numeric x axis, each with an optional band.
#[derive(Debug, Clone, PartialEq)]
pub struct Curves {
    /// The lines, drawn in order (colours and markers by position unless set).
    pub series: Vec<Series>,
    /// Logarithmic y axis (every value must then be positive).
    pub log_y: bool,
    /// Start a linear y axis at zero (memory, counts) rather than at the data.
    pub y_from_zero: bool,
    /// Where the legend goes.
    pub legend: LegendAt,
}

/// A corner of the plot area for the legend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LegendAt {
    /// Top left.
    UpperLeft,
    /// Top right (the default: curves that fall, such as losses, leave it free).
    #[default]
    UpperRight,
    /// Bottom left.
    LowerLeft,
    /// Bottom right.
    LowerRight,
}

/// One line of a [`Curves`] figure.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend entry.
    pub label: String,
    /// Points in x order.
    pub points: Vec<Point>,
    /// Palette colour index (default: the series' position).
    pub color: Option<usize>,
    /// Drawn dashed (e.g. a peer implementation next to ours in the same colour).
    pub dashed: bool,
}

/// One point of a [`Series`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// x.
    pub x: f64,
    /// y (the mean, for a series over seeds).
    pub y: f64,
    /// The shaded band around y at this x (low, high), if any.
    pub band: Option<(f64, f64)>,
}

/// One bar of a [`Body::Bars`] figure.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    /// Category label under the bar.
    pub label: String,
    /// Bar height.
    pub value: f64,
    /// Whisker (low, high), if any.
    pub whisker: Option<(f64, f64)>,
}

/// What a plot command wrote and what it left out.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plotted {
    /// Every file written, in figure order then format order.
    pub written: Vec<PathBuf>,
    /// One line per figure not drawn, saying why (for stderr).
    pub skipped: Vec<String>,
}

/// Writes each figure in each format under `out` (created if missing).
pub fn write_figures(figures: &[Figure], out: &Path, formats_given: &[ImageFormat]) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create the output directory {}", out.display()))?;
    // `--format svg,svg` writes each file once.
    let mut formats: Vec<ImageFormat> = Vec::new();
    for f in formats_given {
        if !formats.contains(f) {
            formats.push(*f);
        }
    }
    let mut written = Vec::new();
    for figure in figures {
        for format in &formats {
            let path = out.join(format!("{}.{}", figure.name, format.extension()));
            let bytes = match format {
                ImageFormat::Svg => draw::svg(figure)?.into_bytes(),
                ImageFormat::Png => draw::png(figure)?,
            };
            std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
            written.push(path);
        }
    }
    Ok(written)
}

/// `qsched plot RUN… --out DIR`: the runs' results pooled as `compare` pools them (same
/// checks: every run exists, a `--metric` the results report, no model × task with two
/// configurations), the metric stream of every succeeded shard, the figures of
/// [`prep::run_figures`]. A figure without data is skipped with a line in
/// [`Plotted::skipped`]; no figure at all is an error.
pub async fn plot_runs(
    store: &dyn Store,
    runs: &[String],
    metric: Option<&str>,
    out: &Path,
    formats: &[ImageFormat],
) -> Result<Plotted> {
    let (figures, skipped) = figures_of_runs(store, runs, metric).await?;
    let written = write_figures(&figures, out, formats)?;
    Ok(Plotted { written, skipped })
}

/// The figures of `runs` (pooled and checked as `compare` pools them) and one line per
/// figure left out for want of data; no figure at all is an error. `qsched plot` writes
/// them to files, the dashboard serves them.
pub async fn figures_of_runs(
    store: &dyn Store,
    runs: &[String],
    metric: Option<&str>,
) -> Result<(Vec<Figure>, Vec<String>)> {
    let (results, described) = commands::pooled_results(store, runs, metric, "plot").await?;
    let mut streams = prep::Streams::new();
    for r in results.iter().filter(|r| r.status == ShardState::Succeeded) {
        let points = store.metrics(&r.run, &r.shard, METRIC_STREAM_MAXLEN).await?;
        streams.insert((r.run.clone(), r.shard.clone()), points);
    }
    let (figures, skipped) = prep::run_figures(&results, &streams, metric, &described);
    if figures.is_empty() {
        bail!("nothing to plot in {described}: {}", skipped.join("; "));
    }
    Ok((figures, skipped))
}

/// `qsched plot-json FILE… --out DIR`: the figures of curve files (see [`curves`]).
pub fn plot_json(files: &[PathBuf], out: &Path, formats: &[ImageFormat]) -> Result<Plotted> {
    let mut figures = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
        let parsed = curves::parse(&text).with_context(|| format!("{} is not a valid curve file", file.display()))?;
        figures.extend(parsed);
    }
    curves::check_unique(&figures)?;
    Ok(Plotted { written: write_figures(&figures, out, formats)?, skipped: Vec::new() })
}
