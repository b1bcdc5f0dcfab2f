//! Charts drawn with plotters, each written as PNG (bitmap backend) and SVG (SVG backend).
//! Every chart function is generic over the backend and rendered twice by [`render`].
//! Conventions: a title, units on every axis, horizontal bars for configuration labels
//! (long labels are shortened with an ellipsis, full labels are in the report's tables).

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::error::{Error, Result};

pub const FONT: &str = "sans-serif";
pub const BLUE: RGBColor = RGBColor(31, 119, 180);
pub const ORANGE: RGBColor = RGBColor(255, 127, 14);
pub const GREEN: RGBColor = RGBColor(44, 160, 44);
pub const RED: RGBColor = RGBColor(214, 39, 40);
pub const PURPLE: RGBColor = RGBColor(148, 103, 189);
pub const GREY: RGBColor = RGBColor(127, 127, 127);
pub const LIGHT: RGBColor = RGBColor(235, 235, 235);
pub const PALETTE: [RGBColor; 6] = [BLUE, ORANGE, GREEN, RED, PURPLE, GREY];

type DResult = std::result::Result<(), String>;

fn e<E: std::fmt::Debug>(err: E) -> String {
    format!("{err:?}")
}

/// `n` segments (plotters' integer ranges are inclusive).
fn segs(
    n: usize,
) -> plotters::coord::ranged1d::SegmentedCoord<plotters::coord::types::RangedCoordusize> {
    (0..n.max(1) - 1).into_segmented()
}

/// Upper edge of segment `y` of `n`.
fn seg_top(y: usize, n: usize) -> SegmentValue<usize> {
    if y + 1 >= n {
        SegmentValue::Last
    } else {
        SegmentValue::Exact(y + 1)
    }
}

/// Files written for one chart.
#[derive(Clone, Debug)]
pub struct ChartFiles {
    pub png: PathBuf,
    pub svg: PathBuf,
    /// The SVG text, for embedding in HTML.
    pub svg_text: String,
    pub title: String,
}

/// Renders `draw` into `DIR/STEM.png` and `DIR/STEM.svg`.
macro_rules! render {
    ($dir:expr, $stem:expr, $title:expr, $size:expr, $f:ident, $($arg:expr),*) => {{
        let dir: &Path = $dir;
        let stem: &str = $stem;
        let size: (u32, u32) = $size;
        let png = dir.join(format!("{stem}.png"));
        let svg = dir.join(format!("{stem}.svg"));
        {
            let root = BitMapBackend::new(&png, size).into_drawing_area();
            root.fill(&WHITE).map_err(|x| Error::chart(stem, e(x)))?;
            $f(&root, $($arg),*).map_err(|x| Error::chart(stem, x))?;
            root.present().map_err(|x| Error::chart(stem, e(x)))?;
        }
        let mut svg_text = String::new();
        {
            let root = SVGBackend::with_string(&mut svg_text, size).into_drawing_area();
            root.fill(&WHITE).map_err(|x| Error::chart(stem, e(x)))?;
            $f(&root, $($arg),*).map_err(|x| Error::chart(stem, x))?;
            root.present().map_err(|x| Error::chart(stem, e(x)))?;
        }
        std::fs::write(&svg, &svg_text).map_err(|x| Error::io(&svg, "write", x))?;
        Ok::<ChartFiles, Error>(ChartFiles { png, svg, svg_text, title: $title.to_string() })
    }};
}

/// Pixel width of a label in the 13 px font (DejaVu Sans averages ~7.3 px per character).
fn label_px(s: &str) -> u32 {
    (s.chars().count() as f64 * 7.3) as u32 + 12
}

/// Shortens a label to `max` characters with an ellipsis.
pub fn ellipsize(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

const MAX_LABEL_CHARS: usize = 64;

fn label_area(labels: &[String]) -> u32 {
    labels
        .iter()
        .map(|l| label_px(l))
        .max()
        .unwrap_or(60)
        .clamp(60, label_px(&"x".repeat(MAX_LABEL_CHARS)))
}

/// Formats a value compactly: 3 significant digits or so, no trailing zeros.
pub fn num(v: f64) -> String {
    let a = v.abs();
    let s = if a == 0.0 {
        return "0".into();
    } else if a >= 100_000.0 {
        return format!("{:.0}k", v / 1000.0);
    } else if a >= 100.0 {
        return format!("{v:.0}");
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    };
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// One row of a horizontal bar / interval chart.
#[derive(Clone, Debug)]
pub struct BarRow {
    pub label: String,
    pub value: f64,
    /// Whisker (interval or range), if any.
    pub lo: Option<f64>,
    pub hi: Option<f64>,
    /// Individual observations drawn as dots.
    pub points: Vec<f64>,
    pub color: RGBColor,
}

#[derive(Clone, Debug)]
pub struct BarChart {
    pub title: String,
    pub x_label: String,
    /// Rows top to bottom.
    pub rows: Vec<BarRow>,
    /// Draw bars from 0 (true) or only a marker at the value (false).
    pub bars: bool,
    /// Vertical reference line (e.g. 1.0 for ratios, 0 for changes).
    pub reference: Option<f64>,
    /// Shaded band on the x axis (e.g. +-delta).
    pub band: Option<(f64, f64)>,
    /// Legend entries (color, text) drawn under the title.
    pub legend: Vec<(RGBColor, String)>,
}

pub fn bar_chart(dir: &Path, stem: &str, c: &BarChart) -> Result<ChartFiles> {
    let labels: Vec<String> = c
        .rows
        .iter()
        .map(|r| ellipsize(&r.label, MAX_LABEL_CHARS))
        .collect();
    let h = 110 + 24 * c.rows.len().max(1) as u32 + if c.legend.is_empty() { 0 } else { 22 };
    let w = 760 + label_area(&labels);
    render!(dir, stem, &c.title, (w, h), draw_bars, c, &labels)
}

fn draw_bars<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    c: &BarChart,
    labels: &[String],
) -> DResult {
    let n = c.rows.len().max(1);
    let mut xmin = c.reference.unwrap_or(f64::INFINITY);
    let mut xmax = c.reference.unwrap_or(f64::NEG_INFINITY);
    for r in &c.rows {
        for v in [Some(r.value), r.lo, r.hi]
            .into_iter()
            .flatten()
            .chain(r.points.iter().copied())
        {
            xmin = xmin.min(v);
            xmax = xmax.max(v);
        }
    }
    if let Some((a, b)) = c.band {
        xmin = xmin.min(a);
        xmax = xmax.max(b);
    }
    if c.bars {
        xmin = xmin.min(0.0);
    }
    if !xmin.is_finite() || !xmax.is_finite() {
        xmin = 0.0;
        xmax = 1.0;
    }
    let span = (xmax - xmin).max(xmax.abs() * 0.05).max(1e-9);
    let x0 = if c.bars && xmin >= 0.0 {
        0.0
    } else {
        xmin - span * 0.05
    };
    let x1 = xmax + span * 0.08;
    let body = root.titled(&c.title, (FONT, 20)).map_err(e)?;
    let body = if c.legend.is_empty() {
        body
    } else {
        let (top, rest) = body.split_vertically(26);
        draw_legend(&top, &c.legend)?;
        rest
    };
    let mut chart = ChartBuilder::on(&body)
        .margin_left(10)
        .margin_right(25)
        .margin_top(10)
        .x_label_area_size(45)
        .y_label_area_size(label_area(labels))
        .build_cartesian_2d(x0..x1, segs(n))
        .map_err(e)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) if *i < labels.len() => labels[labels.len() - 1 - *i].clone(),
            _ => String::new(),
        })
        .x_label_formatter(&|v| num(*v))
        .x_desc(&c.x_label)
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 14))
        .draw()
        .map_err(e)?;
    if let Some((a, b)) = c.band {
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(a, SegmentValue::Exact(0)), (b, SegmentValue::Last)],
                RGBColor(200, 230, 200).mix(0.5).filled(),
            )))
            .map_err(e)?;
    }
    let nrows = c.rows.len();
    for (k, r) in c.rows.iter().enumerate() {
        let y = nrows - 1 - k;
        if c.bars {
            let mut rect = Rectangle::new(
                [
                    (x0.max(0.0), SegmentValue::Exact(y)),
                    (r.value, seg_top(y, n)),
                ],
                r.color.mix(0.75).filled(),
            );
            rect.set_margin(4, 4, 0, 0);
            chart.draw_series(std::iter::once(rect)).map_err(e)?;
        }
        if let (Some(lo), Some(hi)) = (r.lo, r.hi) {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![
                        (lo, SegmentValue::CenterOf(y)),
                        (hi, SegmentValue::CenterOf(y)),
                    ],
                    BLACK.stroke_width(2),
                )))
                .map_err(e)?;
        }
        chart
            .draw_series(
                r.points.iter().map(|p| {
                    Circle::new((*p, SegmentValue::CenterOf(y)), 2, BLACK.mix(0.5).filled())
                }),
            )
            .map_err(e)?;
        if !c.bars {
            chart
                .draw_series(std::iter::once(Circle::new(
                    (r.value, SegmentValue::CenterOf(y)),
                    5,
                    r.color.filled(),
                )))
                .map_err(e)?;
        }
    }
    if let Some(rf) = c.reference {
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(rf, SegmentValue::Exact(0)), (rf, SegmentValue::Last)],
                BLACK.mix(0.6).stroke_width(1),
            )))
            .map_err(e)?;
    }
    Ok(())
}

fn draw_legend<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    legend: &[(RGBColor, String)],
) -> DResult {
    if legend.is_empty() {
        return Ok(());
    }
    let mut x = 20i32;
    let y = 6i32;
    for (color, text) in legend {
        root.draw(&Rectangle::new([(x, y), (x + 14, y + 12)], color.filled()))
            .map_err(e)?;
        root.draw(&Text::new(
            text.clone(),
            (x + 20, y - 1),
            (FONT, 13).into_font(),
        ))
        .map_err(e)?;
        x += 40 + label_px(text) as i32;
    }
    Ok(())
}

/// Several values per row (e.g. latency percentiles), log-scaled x axis, one marker per series.
#[derive(Clone, Debug)]
pub struct MultiChart {
    pub title: String,
    pub x_label: String,
    pub series: Vec<String>,
    /// Vertical reference line (e.g. 1.0 for ratios).
    pub reference: Option<f64>,
    /// (label, one value per series).
    pub rows: Vec<(String, Vec<Option<f64>>)>,
}

pub fn multi_log_chart(dir: &Path, stem: &str, c: &MultiChart) -> Result<ChartFiles> {
    let labels: Vec<String> = c
        .rows
        .iter()
        .map(|r| ellipsize(&r.0, MAX_LABEL_CHARS))
        .collect();
    let h = 150 + 24 * c.rows.len().max(1) as u32;
    let w = 760 + label_area(&labels);
    render!(dir, stem, &c.title, (w, h), draw_multi, c, &labels)
}

fn draw_multi<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    c: &MultiChart,
    labels: &[String],
) -> DResult {
    let n = c.rows.len().max(1);
    let vals: Vec<f64> = c
        .rows
        .iter()
        .flat_map(|r| r.1.iter().flatten().copied())
        .filter(|v| *v > 0.0)
        .collect();
    let lo = vals.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (mut lo, mut hi) = if lo.is_finite() {
        (lo / 1.5, hi * 1.5)
    } else {
        (1.0, 10.0)
    };
    if let Some(r) = c.reference {
        lo = lo.min(r / 1.5);
        hi = hi.max(r * 1.5);
    }
    let body = root.titled(&c.title, (FONT, 20)).map_err(e)?;
    let (top, body) = body.split_vertically(26);
    let legend: Vec<(RGBColor, String)> = c
        .series
        .iter()
        .enumerate()
        .map(|(s, name)| (PALETTE[s % PALETTE.len()], name.clone()))
        .collect();
    draw_legend(&top, &legend)?;
    let mut chart = ChartBuilder::on(&body)
        .margin_left(10)
        .margin_right(25)
        .margin_top(10)
        .x_label_area_size(45)
        .y_label_area_size(label_area(labels))
        .build_cartesian_2d(
            (lo..hi).log_scale().with_key_points(log_ticks(lo, hi)),
            segs(n),
        )
        .map_err(e)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) if *i < labels.len() => labels[labels.len() - 1 - *i].clone(),
            _ => String::new(),
        })
        .x_label_formatter(&|v| num(*v))
        .x_desc(&c.x_label)
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 14))
        .draw()
        .map_err(e)?;
    let nrows = c.rows.len();
    for (k, (_, vals)) in c.rows.iter().enumerate() {
        let y = nrows - 1 - k;
        let pts: Vec<f64> = vals.iter().flatten().copied().collect();
        if pts.len() > 1 {
            let a = pts.iter().copied().fold(f64::INFINITY, f64::min);
            let b = pts.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![
                        (a, SegmentValue::CenterOf(y)),
                        (b, SegmentValue::CenterOf(y)),
                    ],
                    GREY.mix(0.6).stroke_width(1),
                )))
                .map_err(e)?;
        }
    }
    if let Some(rf) = c.reference {
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(rf, SegmentValue::Exact(0)), (rf, SegmentValue::Last)],
                BLACK.mix(0.6).stroke_width(1),
            )))
            .map_err(e)?;
    }
    for s in 0..c.series.len() {
        let color = PALETTE[s % PALETTE.len()];
        chart
            .draw_series(c.rows.iter().enumerate().filter_map(|(k, (_, vals))| {
                vals.get(s).copied().flatten().map(|v| {
                    Circle::new(
                        (v, SegmentValue::CenterOf(nrows - 1 - k)),
                        5,
                        color.filled(),
                    )
                })
            }))
            .map_err(e)?;
    }
    Ok(())
}

/// 1-2-5 ticks per decade within [lo, hi] (1-10 per decade when that gives too few).
pub fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut out = Vec::new();
    for mult in [
        &[1.0, 2.0, 5.0][..],
        &[1.0, 2.0, 3.0, 5.0, 7.0][..],
        &[1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0][..],
    ] {
        out.clear();
        let mut p = 10f64.powf(lo.log10().floor());
        while p <= hi {
            for m in mult {
                let v = p * m;
                if v >= lo && v <= hi {
                    out.push(v);
                }
            }
            p *= 10.0;
        }
        if out.len() >= 4 {
            break;
        }
    }
    out
}

/// A heatmap of a value over two dimensions.
#[derive(Clone, Debug)]
pub struct Heatmap {
    pub title: String,
    pub x_dim: String,
    pub y_dim: String,
    pub x_values: Vec<String>,
    pub y_values: Vec<String>,
    /// values[y][x]
    pub values: Vec<Vec<Option<f64>>>,
    pub unit: String,
    /// The scale's "better" end is named at the top (higher) or bottom (lower).
    pub higher_is_better: bool,
}

/// Width of the colour scale to the right of a heatmap.
const SCALE_W: u32 = 130;

pub fn heatmap(dir: &Path, stem: &str, c: &Heatmap) -> Result<ChartFiles> {
    let ylab: Vec<String> = c.y_values.iter().map(|v| ellipsize(v, 24)).collect();
    let w = (label_area(&ylab) + 150 + SCALE_W + 120 * c.x_values.len() as u32).max(560);
    let h = (170 + 56 * c.y_values.len() as u32).max(300);
    render!(dir, stem, &c.title, (w, h), draw_heatmap, c, &ylab)
}

/// Viridis-like colour for t in [0,1].
pub fn viridis(t: f64) -> RGBColor {
    const STOPS: [(f64, f64, f64); 5] = [
        (68.0, 1.0, 84.0),
        (59.0, 82.0, 139.0),
        (33.0, 145.0, 140.0),
        (94.0, 201.0, 98.0),
        (253.0, 231.0, 37.0),
    ];
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    } * 4.0;
    let i = (t.floor() as usize).min(3);
    let f = t - i as f64;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    RGBColor(
        (a.0 + (b.0 - a.0) * f) as u8,
        (a.1 + (b.1 - a.1) * f) as u8,
        (a.2 + (b.2 - a.2) * f) as u8,
    )
}

fn draw_heatmap<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    c: &Heatmap,
    ylab: &[String],
) -> DResult {
    let nx = c.x_values.len().max(1);
    let ny = c.y_values.len().max(1);
    let vals: Vec<f64> = c.values.iter().flatten().flatten().copied().collect();
    let lo = vals.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let titled = root.titled(&c.title, (FONT, 20)).map_err(e)?;
    let (bw, _) = titled.dim_in_pixel();
    let (body, scale) = titled.split_horizontally(bw.saturating_sub(SCALE_W));
    draw_scale(&scale, lo, hi, &c.unit, c.higher_is_better)?;
    let mut chart = ChartBuilder::on(&body)
        .margin(15)
        .x_label_area_size(50)
        .y_label_area_size(label_area(ylab) + 20)
        .build_cartesian_2d(segs(nx), segs(ny))
        .map_err(e)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(nx)
        .y_labels(ny)
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) if *i < c.x_values.len() => ellipsize(&c.x_values[*i], 18),
            _ => String::new(),
        })
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) if *i < ylab.len() => ylab[*i].clone(),
            _ => String::new(),
        })
        .x_desc(&c.x_dim)
        .y_desc(&c.y_dim)
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 14))
        .draw()
        .map_err(e)?;
    for (y, row) in c.values.iter().enumerate() {
        for (x, v) in row.iter().enumerate() {
            let (color, text, dark) = match v {
                Some(v) => {
                    let t = if hi > lo { (v - lo) / (hi - lo) } else { 0.5 };
                    (viridis(t), format!("{} {}", num(*v), c.unit), t < 0.6)
                }
                None => (LIGHT, "n/a".to_string(), false),
            };
            let mut rect = Rectangle::new(
                [
                    (SegmentValue::Exact(x), SegmentValue::Exact(y)),
                    (seg_top(x, nx), seg_top(y, ny)),
                ],
                color.filled(),
            );
            rect.set_margin(1, 1, 1, 1);
            chart.draw_series(std::iter::once(rect)).map_err(e)?;
            let style = TextStyle::from((FONT, 13).into_font())
                .color(if dark { &WHITE } else { &BLACK })
                .pos(Pos::new(HPos::Center, VPos::Center));
            chart
                .draw_series(std::iter::once(Text::new(
                    text,
                    (SegmentValue::CenterOf(x), SegmentValue::CenterOf(y)),
                    style,
                )))
                .map_err(e)?;
        }
    }
    Ok(())
}

/// The colour scale of a heatmap: a vertical viridis bar from `lo` (bottom) to `hi` (top).
fn draw_scale<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    lo: f64,
    hi: f64,
    unit: &str,
    higher_is_better: bool,
) -> DResult {
    if !(lo.is_finite() && hi.is_finite()) {
        return Ok(());
    }
    let (_, h) = area.dim_in_pixel();
    let (top, bottom) = (40i32, h as i32 - 70);
    let steps = 40;
    let x0 = 15i32;
    for i in 0..steps {
        let t = i as f64 / (steps - 1) as f64;
        let y1 = bottom - ((bottom - top) as f64 * (i + 1) as f64 / steps as f64) as i32;
        let y0 = bottom - ((bottom - top) as f64 * i as f64 / steps as f64) as i32;
        area.draw(&Rectangle::new(
            [(x0, y1), (x0 + 22, y0)],
            viridis(t).filled(),
        ))
        .map_err(e)?;
    }
    let style = TextStyle::from((FONT, 12).into_font()).color(&BLACK);
    let label = |v: f64| format!("{} {unit}", num(v));
    area.draw(&Text::new(label(hi), (x0 + 28, top - 6), style.clone()))
        .map_err(e)?;
    area.draw(&Text::new(
        label((lo + hi) / 2.0),
        (x0 + 28, (top + bottom) / 2 - 6),
        style.clone(),
    ))
    .map_err(e)?;
    area.draw(&Text::new(label(lo), (x0 + 28, bottom - 6), style.clone()))
        .map_err(e)?;
    let better = if higher_is_better {
        ("better", "worse")
    } else {
        ("worse", "better")
    };
    area.draw(&Text::new(better.0, (x0, top - 24), style.clone()))
        .map_err(e)?;
    area.draw(&Text::new(better.1, (x0, bottom + 8), style))
        .map_err(e)?;
    Ok(())
}

/// Time-series panels sharing the time axis.
#[derive(Clone, Debug)]
pub struct Panel {
    pub y_label: String,
    pub series: Vec<(String, Vec<Option<f64>>)>,
}

#[derive(Clone, Debug)]
pub struct SeriesChart {
    pub title: String,
    pub t: Vec<f64>,
    pub panels: Vec<Panel>,
}

pub fn series_chart(dir: &Path, stem: &str, c: &SeriesChart) -> Result<ChartFiles> {
    let h = 60 + 230 * c.panels.len().max(1) as u32;
    render!(dir, stem, &c.title, (1100, h), draw_series_panels, c)
}

fn draw_series_panels<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    c: &SeriesChart,
) -> DResult {
    let body = root.titled(&c.title, (FONT, 20)).map_err(e)?;
    let areas = body.split_evenly((c.panels.len().max(1), 1));
    let t0 = c.t.iter().copied().fold(f64::INFINITY, f64::min);
    let t1 = c.t.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (t0, t1) = if t0.is_finite() && t1 > t0 {
        (t0, t1)
    } else {
        (0.0, 1.0)
    };
    for (panel, area) in c.panels.iter().zip(areas.iter()) {
        let ymax = panel
            .series
            .iter()
            .flat_map(|s| s.1.iter().flatten())
            .copied()
            .fold(0.0f64, f64::max);
        let ymax = if ymax > 0.0 { ymax * 1.25 } else { 1.0 };
        let mut chart = ChartBuilder::on(area)
            .margin_left(10)
            .margin_right(25)
            .margin_top(8)
            .x_label_area_size(40)
            .y_label_area_size(75)
            .build_cartesian_2d(t0..t1, 0.0..ymax)
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("time from start of measured window (s); shaded: ramp-up")
            .y_desc(&panel.y_label)
            .y_label_formatter(&|v| num(*v))
            .label_style((FONT, 12))
            .axis_desc_style((FONT, 13))
            .draw()
            .map_err(e)?;
        if t0 < 0.0 {
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(t0, 0.0), (0.0f64.min(t1), ymax)],
                    LIGHT.mix(0.7).filled(),
                )))
                .map_err(e)?;
        }
        for (s, (name, vals)) in panel.series.iter().enumerate() {
            let color = PALETTE[s % PALETTE.len()];
            let pts: Vec<(f64, f64)> =
                c.t.iter()
                    .zip(vals)
                    .filter_map(|(t, v)| v.map(|v| (*t, v)))
                    .collect();
            chart
                .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                .map_err(e)?
                .label(name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(GREY)
            .label_font((FONT, 12))
            .draw()
            .map_err(e)?;
    }
    Ok(())
}
