//! Curve files: figures given as numbers in JSON, drawn by `qsched plot-json`. The
//! BENCHMARKS.md curves (peak memory over depth, reversible gradient error over depth)
//! are `docs/figures/*.json` in this format, transcribed from the tables they sit next to.
//!
//! ```json
//! {
//!   "source": "where every number comes from",
//!   "figures": [{
//!     "name": "file-stem", "title": "…", "x_label": "layers", "y_label": "peak GiB",
//!     "y_scale": "linear" | "log", "y_from_zero": false,
//!     "legend": "upper-left" | "upper-right" | "lower-left" | "lower-right",
//!     "source": "optional: the table and column",
//!     "series": [{ "label": "qwen3", "x": [2, 4], "y": [3.69, 5.35],
//!                  "color": 0, "dashed": false }]
//!   }]
//! }
//! ```
//!
//! Parsing checks everything drawing relies on (names usable as file names, x and y of
//! equal length, finite numbers, x increasing, positive y on a log axis, known colours),
//! so a bad file is an error naming the figure and series, never a broken image.

use anyhow::{Result, bail, ensure};
use serde::Deserialize;

use super::{Body, Curves, Figure, LegendAt, Point, Series, draw};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CurveFile {
    /// Where the numbers come from: a curve file without provenance is refused.
    source: String,
    figures: Vec<FigureSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FigureSpec {
    name: String,
    title: String,
    x_label: String,
    y_label: String,
    #[serde(default)]
    y_scale: Scale,
    #[serde(default)]
    y_from_zero: bool,
    #[serde(default)]
    legend: LegendAt,
    #[serde(default)]
    #[allow(dead_code)] // provenance for the reader of the file; not drawn
    source: Option<String>,
    series: Vec<SeriesSpec>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Scale {
    #[default]
    Linear,
    Log,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeriesSpec {
    label: String,
    x: Vec<f64>,
    y: Vec<f64>,
    #[serde(default)]
    color: Option<usize>,
    #[serde(default)]
    dashed: bool,
}

/// True for a name usable as a file stem everywhere: `[a-z0-9._-]`, not starting with a dot.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
}

/// The figures of a curve file, checked.
pub fn parse(text: &str) -> Result<Vec<Figure>> {
    let file: CurveFile = serde_json::from_str(text)?;
    ensure!(!file.source.trim().is_empty(), "the file's \"source\" is empty: say where the numbers come from");
    ensure!(!file.figures.is_empty(), "the file has no figures");
    let figures: Vec<Figure> = file.figures.into_iter().map(figure).collect::<Result<_>>()?;
    check_unique(&figures)?;
    Ok(figures)
}

/// Refuses two figures with the same name (one file would overwrite the other).
pub fn check_unique(figures: &[Figure]) -> Result<()> {
    let mut names: Vec<&str> = figures.iter().map(|f| f.name.as_str()).collect();
    names.sort();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        bail!("two figures are named '{}'", w[0]);
    }
    Ok(())
}

fn figure(spec: FigureSpec) -> Result<Figure> {
    let name = spec.name;
    ensure!(valid_name(&name), "figure name '{name}' is not a file stem of a-z, 0-9, '-', '_', '.'");
    ensure!(!spec.series.is_empty(), "figure '{name}' has no series");
    let log_y = spec.y_scale == Scale::Log;
    let series = spec
        .series
        .into_iter()
        .map(|s| {
            let label = &s.label;
            let at = format!("figure '{name}', series '{label}'");
            ensure!(!s.x.is_empty(), "{at}: no points");
            ensure!(s.x.len() == s.y.len(), "{at}: {} x values but {} y values", s.x.len(), s.y.len());
            ensure!(s.x.iter().chain(&s.y).all(|v| v.is_finite()), "{at}: a value is not a finite number");
            ensure!(s.x.windows(2).all(|w| w[0] < w[1]), "{at}: x is not increasing");
            ensure!(!log_y || s.y.iter().all(|y| *y > 0.0), "{at}: y must be positive on a log axis");
            if let Some(c) = s.color {
                ensure!(c < draw::PALETTE.len(), "{at}: color {c} is not one of 0..{}", draw::PALETTE.len());
            }
            let points = s.x.iter().zip(&s.y).map(|(x, y)| Point { x: *x, y: *y, band: None }).collect();
            Ok(Series { label: s.label, points, color: s.color, dashed: s.dashed })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Figure {
        name,
        title: spec.title,
        x_label: spec.x_label,
        y_label: spec.y_label,
        body: Body::Curves(Curves { series, log_y, y_from_zero: spec.y_from_zero, legend: spec.legend }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(figure: &str) -> String {
        format!(r#"{{"source": "a test", "figures": [{figure}]}}"#)
    }

    const GOOD: &str = r#"{"name": "peak", "title": "t", "x_label": "layers", "y_label": "GiB", "y_scale": "log",
        "legend": "upper-left", "series": [{"label": "a", "x": [2, 4], "y": [1.5, 3], "color": 1, "dashed": true}]}"#;

    #[test]
    fn a_curve_file_becomes_figures() {
        let figures = parse(&file(GOOD)).unwrap();
        assert_eq!(figures.len(), 1);
        let Body::Curves(c) = &figures[0].body else { panic!() };
        assert!(c.log_y && !c.y_from_zero && c.legend == LegendAt::UpperLeft);
        assert_eq!(c.series[0].points, [Point { x: 2.0, y: 1.5, band: None }, Point { x: 4.0, y: 3.0, band: None }]);
        assert_eq!((c.series[0].color, c.series[0].dashed), (Some(1), true));
    }

    #[test]
    fn bad_curve_files_are_refused_naming_what_is_wrong() {
        let bad = |from: &str, to: &str| parse(&file(&GOOD.replace(from, to))).unwrap_err().to_string();
        assert!(bad(r#""y": [1.5, 3]"#, r#""y": [1.5]"#).contains("series 'a': 2 x values but 1 y values"));
        assert!(bad(r#""x": [2, 4]"#, r#""x": [4, 2]"#).contains("x is not increasing"));
        assert!(bad("1.5, 3", "-1.5, 3").contains("y must be positive on a log axis"));
        assert!(bad(r#""name": "peak""#, r#""name": "../peak""#).contains("is not a file stem"));
        assert!(bad(r#""color": 1"#, r#""color": 99"#).contains("color 99 is not one of"));
        assert!(bad(r#""dashed""#, r#""dotted""#).contains("unknown field `dotted`"));
        let two = file(&format!("{GOOD}, {GOOD}"));
        assert_eq!(parse(&two).unwrap_err().to_string(), "two figures are named 'peak'");
        let unsourced = format!(r#"{{"source": " ", "figures": [{GOOD}]}}"#);
        assert!(parse(&unsourced).unwrap_err().to_string().contains("say where the numbers come from"));
        assert!(valid_name("ckpt_vs_rev-peak.8x1024") && !valid_name(".hidden") && !valid_name("A"));
    }

    fn repo_file(path: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The cells of the Markdown table whose header row starts with `header`, the first
    /// such table after the line that contains `after`.
    fn table(md: &str, after: &str, header: &str) -> Vec<Vec<String>> {
        let lines: Vec<&str> = md.lines().collect();
        let start = lines.iter().position(|l| l.contains(after)).unwrap_or_else(|| panic!("no line with {after}"));
        let head = start + lines[start..].iter().position(|l| l.starts_with(header)).expect("table header");
        lines[head + 2..]
            .iter()
            .take_while(|l| l.starts_with('|'))
            .map(|l| l.trim().trim_matches('|').split('|').map(|c| c.trim().to_owned()).collect())
            .collect()
    }

    /// The first number of a cell ("3.69 = 2.16 + …; 16.8", "1.00 (embedding)").
    fn first_number(cell: &str) -> f64 {
        let end = cell.find([' ', '=']).unwrap_or(cell.len());
        cell[..end].parse().unwrap_or_else(|e| panic!("{cell}: {e}"))
    }

    fn curves_of(figures: &[Figure], name: &str) -> Vec<(String, Vec<f64>, Vec<f64>)> {
        let f = figures.iter().find(|f| f.name == name).unwrap_or_else(|| panic!("no figure {name}"));
        let Body::Curves(c) = &f.body else { panic!("{name} is not curves") };
        c.series
            .iter()
            .map(|s| (s.label.clone(), s.points.iter().map(|p| p.x).collect(), s.points.iter().map(|p| p.y).collect()))
            .collect()
    }

    /// The BENCHMARKS.md figures are drawn from curve files transcribed from its tables:
    /// every number in them must be the table's (read back here from BENCHMARKS.md itself).
    #[test]
    fn curve_files_hold_the_numbers_of_the_benchmarks_tables() {
        let md = repo_file("BENCHMARKS.md");

        // §2b: peak GiB (the first number of each cell) per depth, one series per column.
        let figures = parse(&repo_file("docs/figures/ckpt_vs_rev.json")).unwrap();
        assert_eq!(figures.len(), 2);
        for (after, name) in
            [("**8 × 1024 tokens**", "ckpt_vs_rev_peak_8x1024"), ("**4 × 4096 tokens**", "ckpt_vs_rev_peak_4x4096")]
        {
            let rows = table(&md, after, "| depth | qwen3 | qwen3-ckpt | rev-qwen3 | HF qwen3 | HF qwen3-ckpt |");
            assert_eq!(rows.len(), 8, "{after}");
            let depths: Vec<f64> = rows.iter().map(|r| first_number(&r[0])).collect();
            let series = curves_of(&figures, name);
            let labels: Vec<&str> = series.iter().map(|s| s.0.as_str()).collect();
            assert_eq!(
                labels,
                [
                    "qwen3 (ours)",
                    "qwen3-ckpt (ours)",
                    "rev-qwen3 (ours)",
                    "transformers Qwen3",
                    "transformers Qwen3, gradient checkpointing"
                ]
            );
            for (column, (label, x, y)) in series.iter().enumerate() {
                assert_eq!(x, &depths, "{name} {label}");
                let table: Vec<f64> = rows.iter().map(|r| first_number(&r[column + 1])).collect();
                assert_eq!(y, &table, "{name} {label}");
            }
        }

        // §2c: the worst-group ratio and the layer-0 attention errors of both tables.
        let exact = table(&md, "The streams are int64", "| layers | precision | AdamW steps before |");
        let float = table(&md, "The same measurement of the float coupling", "| layers | precision | block inputs");
        assert_eq!((exact.len(), float.len()), (20, 10));
        let rows = |t: &[Vec<String>], precision: &str, steps: Option<&str>| -> Vec<Vec<String>> {
            t.iter().filter(|r| r[1] == precision && steps.is_none_or(|s| r[2] == s)).cloned().collect()
        };
        let layers = |rows: &[Vec<String>]| rows.iter().map(|r| first_number(&r[0])).collect::<Vec<_>>();
        let column = |rows: &[Vec<String>], i: usize| rows.iter().map(|r| first_number(&r[i])).collect::<Vec<_>>();
        // "2.66e-06 vs 2.66e-06": reconstruction (first) and autograd (second).
        let second = |rows: &[Vec<String>], i: usize| {
            rows.iter().map(|r| first_number(r[i].split(" vs ").nth(1).unwrap())).collect::<Vec<_>>()
        };
        let figures = parse(&repo_file("docs/figures/rev_grad_error.json")).unwrap();
        assert_eq!(figures.len(), 3);
        let (fp32, bf16) = ("fp32", "bf16-autocast");
        let worst = curves_of(&figures, "rev_grad_error_worst_ratio");
        let expected = [
            ("int64 coupling, fp32, at init", rows(&exact, fp32, Some("0")), 4),
            ("int64 coupling, bf16 autocast, at init", rows(&exact, bf16, Some("0")), 4),
            ("int64 coupling, fp32, after 200 AdamW steps", rows(&exact, fp32, Some("200")), 4),
            ("int64 coupling, bf16 autocast, after 200 AdamW steps", rows(&exact, bf16, Some("200")), 4),
            ("float coupling (replaced), fp32, at init", rows(&float, fp32, None), 3),
            ("float coupling (replaced), bf16 autocast, at init", rows(&float, bf16, None), 3),
        ];
        assert_eq!(worst.len(), expected.len());
        for ((label, x, y), (want, rows, ratio_column)) in worst.iter().zip(expected) {
            assert_eq!(label, want);
            assert_eq!((x, y), (&layers(&rows), &column(&rows, ratio_column)), "{label}");
        }
        for (precision, name) in
            [(fp32, "rev_grad_error_layer0_attention_fp32"), (bf16, "rev_grad_error_layer0_attention_bf16")]
        {
            let (ex, fl) = (rows(&exact, precision, Some("0")), rows(&float, precision, None));
            let series = curves_of(&figures, name);
            let expected = [
                ("reconstruction, int64 coupling", layers(&ex), column(&ex, 5)),
                ("autograd, same precision", layers(&ex), second(&ex, 5)),
                ("reconstruction, float coupling (replaced)", layers(&fl), column(&fl, 4)),
            ];
            assert_eq!(series.len(), expected.len());
            for ((label, x, y), (want, wx, wy)) in series.iter().zip(expected) {
                assert_eq!((label.as_str(), x, y), (want, &wx, &wy), "{name}");
            }
        }
    }

    /// The committed figures are what `qsched plot-json` draws from the committed curve
    /// files today (redraw with the command in BENCHMARKS.md when either changes).
    #[test]
    fn committed_benchmark_figures_are_drawn_from_their_curve_files() {
        for file in ["docs/figures/ckpt_vs_rev.json", "docs/figures/rev_grad_error.json"] {
            for figure in parse(&repo_file(file)).unwrap() {
                let committed = repo_file(&format!("docs/figures/{}.svg", figure.name));
                assert!(
                    draw::svg(&figure).unwrap() == committed,
                    "docs/figures/{}.svg is stale: qsched plot-json docs/figures/*.json --out docs/figures \
                     --format svg,png",
                    figure.name
                );
                let png = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join(format!("../docs/figures/{}.png", figure.name));
                let (w, h, _) = draw::tests::decode_png(&png);
                assert_eq!((w, h), draw::SIZE);
            }
        }
    }
}
