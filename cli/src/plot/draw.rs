//! Drawing a [`Figure`] with `plotters`: SVG text, or an RGB bitmap encoded as PNG.
//!
//! Text is laid out with DejaVu Sans compiled into the binary (`dejavu` crate, through
//! plotters' `ab_glyph` feature), so drawing needs no fontconfig or system fonts and does
//! not depend on what the host has installed: a figure drawn twice is the same bytes (the
//! committed BENCHMARKS figures are checked against a redraw). The SVG names the family
//! `sans-serif` for the viewer to render.

use std::ops::Range;
use std::sync::OnceLock;

use anyhow::{Result, anyhow};
use plotters::coord::Shift;
use plotters::coord::ranged1d::{AsRangedCoord, Ranged, SegmentValue, ValueFormatter};
use plotters::element::{Drawable, PointCollection};
use plotters::prelude::*;
use plotters::style::text_anchor;
use plotters_backend::{BackendCoord, DrawingErrorKind};

use super::{Bar, Body, Curves, Figure, LegendAt, Series};

/// Width and height of every figure, in pixels (SVG user units).
pub const SIZE: (u32, u32) = (1024, 640);

/// Series colours (Tableau 10: distinguishable, and legible in grey scale by marker).
pub const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Fill of the bars.
pub const BAR_COLOR: RGBColor = PALETTE[0];

/// Series with at most this many points get a marker at each point, so overlapping
/// lines (ours and a peer's with the same numbers) stay tell-apart; longer ones (training
/// curves) would be a smear of markers.
const MARKED_POINTS: usize = 40;

const FONT: &str = "sans-serif";

/// Registers the embedded font once per process.
fn font() -> Result<()> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
                .map_err(|_| "the embedded DejaVu Sans font did not load".to_owned())
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// The figure as an SVG document.
pub fn svg(figure: &Figure) -> Result<String> {
    font()?;
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, SIZE).into_drawing_area();
        draw(&root, figure).map_err(|e| anyhow!("drawing {}: {e}", figure.name))?;
        root.present().map_err(|e| anyhow!("drawing {}: {e}", figure.name))?;
    }
    Ok(out)
}

/// The figure as a PNG file's bytes (8-bit RGB).
pub fn png(figure: &Figure) -> Result<Vec<u8>> {
    font()?;
    let (w, h) = SIZE;
    let mut rgb = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area();
        draw(&root, figure).map_err(|e| anyhow!("drawing {}: {e}", figure.name))?;
        root.present().map_err(|e| anyhow!("drawing {}: {e}", figure.name))?;
    }
    let mut bytes = Vec::new();
    let mut encoder = ::png::Encoder::new(&mut bytes, w, h);
    encoder.set_color(::png::ColorType::Rgb);
    encoder.set_depth(::png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(|e| anyhow!("encoding {} as PNG: {e}", figure.name))?;
    writer.write_image_data(&rgb).map_err(|e| anyhow!("encoding {} as PNG: {e}", figure.name))?;
    writer.finish().map_err(|e| anyhow!("encoding {} as PNG: {e}", figure.name))?;
    Ok(bytes)
}

type DrawResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, figure: &Figure) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    match &figure.body {
        Body::Curves(c) => {
            let (x, y) = curve_ranges(c);
            if c.log_y {
                // One notation per axis: powers of ten once any decade needs them.
                let powers = y.start < 0.9e-3 || y.end > 1.1e5;
                let format = move |v: &f64| if powers { format!("{v:.0e}") } else { tick(*v) };
                draw_curves(root, figure, c, x, y.log_scale(), &format)
            } else {
                draw_curves(root, figure, c, x, y, &|v: &f64| tick(*v))
            }
        }
        Body::Bars(bars) => draw_bars(root, figure, bars),
    }
}

/// A number for a bar's label: few digits, more for small magnitudes.
fn short_number(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else if a >= 0.001 {
        format!("{v:.3}")
    } else {
        format!("{v:.1e}")
    }
}

/// An axis tick: ticks are round numbers, so the shortest exact form ("5", "2.5",
/// "0.001"), or a power of ten ("1e-6") for very small or large ones.
fn tick(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e5).contains(&a) {
        return format!("{v:.0e}");
    }
    let fixed = format!("{v:.6}");
    let trimmed = fixed.trim_end_matches('0').trim_end_matches('.');
    if trimmed == "-0" { "0".into() } else { trimmed.to_owned() }
}

/// x and y ranges covering every point and band, padded so markers at the edges show.
fn curve_ranges(c: &Curves) -> (Range<f64>, Range<f64>) {
    let points = c.series.iter().flat_map(|s| &s.points);
    let xs: Vec<f64> = points.clone().map(|p| p.x).collect();
    let ys: Vec<f64> = points.flat_map(|p| [p.y, p.band.map_or(p.y, |b| b.0), p.band.map_or(p.y, |b| b.1)]).collect();
    let (x0, x1) = min_max(&xs);
    let (y0, y1) = min_max(&ys);
    let pad = |lo: f64, hi: f64, frac: f64| {
        let span = if hi > lo { hi - lo } else { lo.abs().max(1.0) };
        (lo - span * frac, hi + span * frac)
    };
    let (x0, x1) = pad(x0, x1, 0.03);
    let (y0, y1) = if c.log_y {
        // Whole decades, so the axis is labelled at its ends, with room (a factor of 1.5)
        // between the data and the ends: values at exactly a power of ten (a ratio of
        // 1.00) would otherwise lie on the axis.
        let lo = (y0.max(f64::MIN_POSITIVE) / 1.5).log10().floor();
        let hi = (y1.max(y0) * 1.5).log10().ceil().max(lo + 1.0);
        // Just outside the decades, so rounding in plotters' key points keeps both ends
        // labelled.
        (10f64.powf(lo) * (1.0 - 1e-9), 10f64.powf(hi) * (1.0 + 1e-9))
    } else {
        let (lo, hi) = pad(y0, y1, 0.05);
        (if c.y_from_zero && y0 >= 0.0 { 0.0 } else { lo }, hi)
    };
    (x0..x1, y0..y1)
}

fn min_max(v: &[f64]) -> (f64, f64) {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if lo.is_finite() && hi.is_finite() { (lo, hi) } else { (0.0, 1.0) }
}

fn legend_position(at: LegendAt) -> SeriesLabelPosition {
    match at {
        LegendAt::UpperLeft => SeriesLabelPosition::UpperLeft,
        LegendAt::UpperRight => SeriesLabelPosition::UpperRight,
        LegendAt::LowerLeft => SeriesLabelPosition::LowerLeft,
        LegendAt::LowerRight => SeriesLabelPosition::LowerRight,
    }
}

/// The colour of the `i`th series.
pub fn series_color(s: &Series, i: usize) -> RGBColor {
    PALETTE[s.color.unwrap_or(i) % PALETTE.len()]
}

/// A point marker: shape `shape % 4` (circle, triangle, square, cross) in `color` at a
/// chart coordinate. One element type for every shape, so a series' markers are one
/// `draw_series` call (plotters' boxed `DynElement` would need a `'static` backend).
#[derive(Debug, Clone, Copy)]
struct Marker<C> {
    at: C,
    shape: usize,
    color: RGBColor,
}

impl<'a, C: 'a> PointCollection<'a, C> for &'a Marker<C> {
    type Point = &'a C;
    type IntoIter = std::iter::Once<&'a C>;
    fn point_iter(self) -> Self::IntoIter {
        std::iter::once(&self.at)
    }
}

impl<C, DB: DrawingBackend> Drawable<DB> for Marker<C> {
    fn draw<I: Iterator<Item = BackendCoord>>(
        &self,
        mut pos: I,
        backend: &mut DB,
        _: (u32, u32),
    ) -> Result<(), DrawingErrorKind<DB::ErrorType>> {
        match pos.next() {
            Some(at) => draw_marker(backend, at, self.shape, self.color),
            None => Ok(()),
        }
    }
}

fn draw_marker<DB: DrawingBackend>(
    backend: &mut DB,
    (x, y): BackendCoord,
    shape: usize,
    color: RGBColor,
) -> Result<(), DrawingErrorKind<DB::ErrorType>> {
    let fill = color.filled();
    match shape % 4 {
        0 => backend.draw_circle((x, y), 4, &fill, true),
        1 => backend.fill_polygon([(x, y - 6), (x - 5, y + 4), (x + 5, y + 4)], &fill),
        2 => backend.draw_rect((x - 4, y - 4), (x + 4, y + 4), &fill, true),
        _ => {
            let stroke = color.stroke_width(2);
            backend.draw_line((x - 4, y - 4), (x + 4, y + 4), &stroke)?;
            backend.draw_line((x - 4, y + 4), (x + 4, y - 4), &stroke)
        }
    }
}

/// A whisker from its low to its high end (chart coordinates), with caps.
#[derive(Debug, Clone, Copy)]
struct Whisker<C> {
    ends: [C; 2],
}

impl<'a, C: 'a> PointCollection<'a, C> for &'a Whisker<C> {
    type Point = &'a C;
    type IntoIter = &'a [C; 2];
    fn point_iter(self) -> Self::IntoIter {
        &self.ends
    }
}

impl<C, DB: DrawingBackend> Drawable<DB> for Whisker<C> {
    fn draw<I: Iterator<Item = BackendCoord>>(
        &self,
        mut pos: I,
        backend: &mut DB,
        _: (u32, u32),
    ) -> Result<(), DrawingErrorKind<DB::ErrorType>> {
        let (Some(lo), Some(hi)) = (pos.next(), pos.next()) else { return Ok(()) };
        let style = BLACK.stroke_width(2);
        backend.draw_line(lo, hi, &style)?;
        for (x, y) in [lo, hi] {
            backend.draw_line((x - 9, y), (x + 9, y), &style)?;
        }
        Ok(())
    }
}

/// A legend entry's sample: the series' line (dashed if it is) with its marker.
#[derive(Debug, Clone, Copy)]
struct LegendSample {
    at: BackendCoord,
    line: ShapeStyle,
    dashed: bool,
    marker: Option<(usize, RGBColor)>,
}

impl<'a> PointCollection<'a, BackendCoord> for &'a LegendSample {
    type Point = &'a BackendCoord;
    type IntoIter = std::iter::Once<&'a BackendCoord>;
    fn point_iter(self) -> Self::IntoIter {
        std::iter::once(&self.at)
    }
}

impl<DB: DrawingBackend> Drawable<DB> for LegendSample {
    fn draw<I: Iterator<Item = BackendCoord>>(
        &self,
        mut pos: I,
        backend: &mut DB,
        _: (u32, u32),
    ) -> Result<(), DrawingErrorKind<DB::ErrorType>> {
        let Some((x, y)) = pos.next() else { return Ok(()) };
        let segments: &[(i32, i32)] = if self.dashed { &[(0, 8), (13, 21), (26, 30)] } else { &[(0, 30)] };
        for (from, to) in segments {
            backend.draw_line((x + from, y), (x + to, y), &self.line)?;
        }
        match self.marker {
            Some((shape, color)) => draw_marker(backend, (x + 15, y), shape, color),
            None => Ok(()),
        }
    }
}

fn draw_curves<DB: DrawingBackend, Y>(
    root: &DrawingArea<DB, Shift>,
    figure: &Figure,
    c: &Curves,
    x: Range<f64>,
    y: Y,
    y_tick: &dyn Fn(&f64) -> String,
) -> DrawResult<DB>
where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(root)
        .caption(&figure.title, (FONT, 22))
        .margin(20)
        .x_label_area_size(56)
        .y_label_area_size(84)
        .build_cartesian_2d(x, y)?;
    chart
        .configure_mesh()
        .x_desc(&figure.x_label)
        .y_desc(&figure.y_label)
        .x_label_formatter(&|v: &f64| tick(*v))
        .y_label_formatter(y_tick)
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 17))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    // Bands first, so no line is hidden under another series' band.
    for (i, s) in c.series.iter().enumerate() {
        let band: Vec<(f64, (f64, f64))> = s.points.iter().filter_map(|p| Some((p.x, p.band?))).collect();
        if band.len() >= 2 && band.iter().any(|(_, (lo, hi))| hi > lo) {
            let outline: Vec<(f64, f64)> = band
                .iter()
                .map(|(x, (_, hi))| (*x, *hi))
                .chain(band.iter().rev().map(|(x, (lo, _))| (*x, *lo)))
                .collect();
            chart.draw_series(std::iter::once(Polygon::new(outline, series_color(s, i).mix(0.18).filled())))?;
        }
    }
    for (i, s) in c.series.iter().enumerate() {
        let color = series_color(s, i);
        let line = color.stroke_width(2);
        let points: Vec<(f64, f64)> = s.points.iter().map(|p| (p.x, p.y)).collect();
        let marked = points.len() <= MARKED_POINTS;
        let anno = if s.dashed {
            chart.draw_series(DashedLineSeries::new(points.clone(), 9, 6, line))?
        } else {
            chart.draw_series(LineSeries::new(points.clone(), line))?
        };
        let dashed = s.dashed;
        anno.label(&s.label).legend(move |at| LegendSample { at, line, dashed, marker: marked.then_some((i, color)) });
        if marked {
            chart.draw_series(points.iter().map(|&at| Marker { at, shape: i, color }))?;
        }
    }
    chart
        .configure_series_labels()
        .position(legend_position(c.legend))
        .margin(12)
        .legend_area_size(40)
        .label_font((FONT, 15))
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(160, 160, 160))
        .draw()?;
    Ok(())
}

fn draw_bars<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, figure: &Figure, bars: &[Bar]) -> DrawResult<DB> {
    let tops: Vec<f64> = bars
        .iter()
        .flat_map(|b| [b.value, b.whisker.map_or(b.value, |w| w.0), b.whisker.map_or(b.value, |w| w.1)])
        .collect();
    let (lo, hi) = min_max(&tops);
    // Bars grow from zero; room above the tallest for its value label.
    let (lo, hi) = (lo.min(0.0), hi.max(0.0));
    let span = if hi > lo { hi - lo } else { 1.0 };
    let y = (lo - if lo < 0.0 { span * 0.08 } else { 0.0 })..(hi + span * 0.12);
    let n = bars.len() as i32;
    let mut chart = ChartBuilder::on(root)
        .caption(&figure.title, (FONT, 20))
        .margin(20)
        .x_label_area_size(56)
        .y_label_area_size(84)
        // A segmented range holds its end: 0..n - 1 is n slots.
        .build_cartesian_2d((0..n - 1).into_segmented(), y)?;
    let label = |v: &SegmentValue<i32>| match v {
        SegmentValue::CenterOf(i) => bars.get(*i as usize).map(|b| b.label.clone()).unwrap_or_default(),
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(bars.len())
        .x_label_formatter(&label)
        .y_label_formatter(&|v: &f64| tick(*v))
        .x_desc(&figure.x_label)
        .y_desc(&figure.y_label)
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 17))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    chart.draw_series(bars.iter().enumerate().map(|(i, b)| {
        let i = i as i32;
        let mut rect =
            Rectangle::new([(SegmentValue::Exact(i), 0.0), (SegmentValue::Exact(i + 1), b.value)], BAR_COLOR.filled());
        rect.set_margin(0, 0, 24, 24);
        rect
    }))?;
    chart.draw_series(bars.iter().enumerate().filter_map(|(i, b)| {
        let (lo, hi) = b.whisker?;
        Some(Whisker { ends: [(SegmentValue::CenterOf(i as i32), lo), (SegmentValue::CenterOf(i as i32), hi)] })
    }))?;
    // The mean above the bar (and its whisker); the interval is what the whisker shows.
    chart.draw_series(bars.iter().enumerate().map(|(i, b)| {
        let top = b.whisker.map_or(b.value, |(_, hi)| hi.max(b.value)).max(0.0);
        let style = (FONT, 15)
            .into_font()
            .color(&BLACK)
            .pos(text_anchor::Pos::new(text_anchor::HPos::Center, text_anchor::VPos::Bottom));
        EmptyElement::at((SegmentValue::CenterOf(i as i32), top)) + Text::new(short_number(b.value), (0, -6), style)
    }))?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::plot::ImageFormat;
    use crate::plot::{Point, write_figures};

    /// Two curves (one with a band, one dashed), on a linear or a log axis.
    pub(crate) fn curves_figure(log_y: bool) -> Figure {
        let band = |y: f64| Some((y * 0.8, y * 1.2));
        Figure {
            name: format!("curves_{}", if log_y { "log" } else { "linear" }),
            title: "a title".into(),
            x_label: "step".into(),
            y_label: "loss".into(),
            body: Body::Curves(Curves {
                series: vec![
                    Series {
                        label: "train loss".into(),
                        points: (1..=50)
                            .map(|s| Point { x: s as f64, y: 1.0 / s as f64, band: band(1.0 / s as f64) })
                            .collect(),
                        color: None,
                        dashed: false,
                    },
                    Series {
                        label: "dev loss".into(),
                        points: vec![Point { x: 10.0, y: 0.5, band: None }, Point { x: 50.0, y: 0.05, band: None }],
                        color: None,
                        dashed: false,
                    },
                    Series {
                        label: "a peer".into(),
                        points: vec![Point { x: 10.0, y: 0.6, band: None }, Point { x: 50.0, y: 0.06, band: None }],
                        color: Some(1),
                        dashed: true,
                    },
                ],
                log_y,
                y_from_zero: !log_y,
                legend: LegendAt::UpperRight,
            }),
        }
    }

    pub(crate) fn bars_figure() -> Figure {
        Figure {
            name: "bars".into(),
            title: "sst2: test accuracy".into(),
            x_label: "model".into(),
            y_label: "test accuracy".into(),
            body: Body::Bars(vec![
                Bar { label: "qwen3 (n=3)".into(), value: 0.8, whisker: Some((0.7, 0.9)) },
                Bar { label: "rev-qwen3 (n=1)".into(), value: 0.75, whisker: None },
                Bar { label: "ft-opt (n=3)".into(), value: -0.1, whisker: Some((-0.2, 0.0)) },
            ]),
        }
    }

    /// Decodes a PNG file: (width, height, RGB bytes).
    pub(crate) fn decode_png(path: &std::path::Path) -> (u32, u32, Vec<u8>) {
        let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
        let mut reader = ::png::Decoder::new(file).read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.color_type, info.bit_depth), (::png::ColorType::Rgb, ::png::BitDepth::Eight));
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }

    /// Pixels in the central region (the plot area, away from captions and labels) that
    /// are not the white background.
    pub(crate) fn inked_pixels_in_plot_area(w: u32, h: u32, rgb: &[u8]) -> usize {
        let mut inked = 0;
        for y in h / 5..h * 4 / 5 {
            for x in w / 5..w * 4 / 5 {
                let i = ((y * w + x) * 3) as usize;
                if rgb[i..i + 3] != [255, 255, 255] {
                    inked += 1;
                }
            }
        }
        inked
    }

    /// The `(x, y)` points of an SVG `polyline` element.
    pub(crate) fn polyline_points(node: roxmltree::Node<'_, '_>) -> Vec<(f64, f64)> {
        node.attribute("points")
            .unwrap_or("")
            .split_whitespace()
            .filter_map(|p| {
                let (x, y) = p.split_once(',')?;
                Some((x.parse().ok()?, y.parse().ok()?))
            })
            .collect()
    }

    /// The stroke or fill colour of an SVG element as plotters writes it (`#RRGGBB`).
    pub(crate) fn hex(c: RGBColor) -> String {
        format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)
    }

    #[test]
    fn every_figure_kind_is_written_as_png_and_svg_that_open_with_content() {
        let dir = tempfile::tempdir().unwrap();
        let figures = [curves_figure(false), curves_figure(true), bars_figure()];
        let written = write_figures(&figures, dir.path(), &[ImageFormat::Png, ImageFormat::Svg]).unwrap();
        let names: Vec<String> =
            written.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(
            names,
            ["curves_linear.png", "curves_linear.svg", "curves_log.png", "curves_log.svg", "bars.png", "bars.svg"]
        );
        for (figure, pair) in figures.iter().zip(written.chunks(2)) {
            let (w, h, rgb) = decode_png(&pair[0]);
            assert_eq!((w, h), SIZE, "{}", figure.name);
            let inked = inked_pixels_in_plot_area(w, h, &rgb);
            assert!(inked > 2000, "{}: {inked} non-background pixels in the plot area", figure.name);

            let text = std::fs::read_to_string(&pair[1]).unwrap();
            let doc = roxmltree::Document::parse(&text).unwrap();
            let svg = doc.root_element();
            assert_eq!(svg.tag_name().name(), "svg");
            assert_eq!((svg.attribute("width"), svg.attribute("height")), (Some("1024"), Some("640")));
            // plotters writes a text element's content between line breaks.
            let has_text =
                |t: &str| doc.descendants().any(|n| n.has_tag_name("text") && n.text().map(str::trim) == Some(t));
            assert!(has_text(&figure.title), "{}: title", figure.name);
            match &figure.body {
                Body::Curves(c) => {
                    for (i, s) in c.series.iter().enumerate().filter(|(_, s)| !s.dashed) {
                        let color = hex(series_color(s, i));
                        // The line itself: a polyline in the series' colour through every point.
                        let longest = doc
                            .descendants()
                            .filter(|n| n.has_tag_name("polyline") && n.attribute("stroke") == Some(color.as_str()))
                            .map(|n| polyline_points(n).len())
                            .max();
                        assert_eq!(longest, Some(s.points.len()), "{}: {}", figure.name, s.label);
                        assert!(has_text(&s.label), "legend {}", s.label);
                    }
                    // The band of the first series: a filled polygon in its colour.
                    let band = hex(series_color(&c.series[0], 0));
                    assert!(
                        doc.descendants()
                            .any(|n| n.has_tag_name("polygon") && n.attribute("fill") == Some(band.as_str())),
                        "{}: no band",
                        figure.name
                    );
                }
                Body::Bars(bars) => {
                    let fill = hex(BAR_COLOR);
                    let rects = doc
                        .descendants()
                        .filter(|n| n.has_tag_name("rect") && n.attribute("fill") == Some(fill.as_str()))
                        .count();
                    assert_eq!(rects, bars.len());
                    for b in bars {
                        assert!(has_text(&b.label), "label {}", b.label);
                    }
                }
            }
        }
    }

    #[test]
    fn drawing_is_deterministic() {
        let f = curves_figure(true);
        assert_eq!(svg(&f).unwrap(), svg(&f).unwrap());
        assert_eq!(png(&f).unwrap(), png(&f).unwrap());
    }

    #[test]
    fn ticks_are_exact_and_short() {
        assert_eq!(
            [0.0, 5.0, 2.5, 25.0, 0.001, 1000.0, 1e-6, 1e5, -0.0, 0.30000000000000004].map(tick),
            ["0", "5", "2.5", "25", "0.001", "1000", "1e-6", "1e5", "0", "0.3"]
        );
    }

    #[test]
    fn numbers_are_short() {
        assert_eq!(
            [0.0, 1234.4, 12.34, 1.234, 0.1234, 0.00001234].map(short_number),
            ["0", "1234", "12.3", "1.23", "0.123", "1.2e-5"]
        );
    }
}
