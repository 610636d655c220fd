//! Figures for evaluation reports: plain data in, `<stem>.png` and `<stem>.svg` out.
//!
//! - [`tradeoff`]: ASR (y) against ORR (x) in percent, one labelled point per defense or
//!   setting, Wilson intervals as error bars, the ideal corner marked; a sweep is joined in order.
//! - [`layer_norms`]: the per-layer L2 norm of fitted steering directions, one line per series.
//! - [`rate_curve`]: a rate (e.g. ASR) against a numeric setting, one line per series.
//! - [`pca_scatter`]: last-position representations projected to 2-D (see [`pca_2d`]), coloured
//!   and shaped by group, in the style of the RRS paper's Figure 2.
//!
//! Drawing uses `plotters` with its pure-Rust bitmap (PNG) and SVG backends. Text goes through
//! plotters' `ab_glyph` feature with DejaVu Sans embedded in the binary by the `dejavu` crate
//! (Bitstream Vera / DejaVu licence), registered under the generic family `sans-serif`: no
//! system font, fontconfig or freetype is needed, so the same PNG comes out on every machine.
//! The SVG names the family `sans-serif`, which a viewer maps to its own sans font.
//!
//! Every function checks its input first (empty sets, NaN or infinite values, rates outside
//! [0, 1], rows of different lengths) and answers [`EvalError::Invalid`]; failures to write or
//! draw a file are [`EvalError::Io`] naming that file. Nothing here panics on bad data.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::chart::MeshStyle;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;
use plotters_backend::text_anchor::{HPos, VPos};
use plotters_backend::{
    BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingErrorKind,
};

use crate::error::{EvalError, Result};

/// The family every text style here uses; the embedded DejaVu Sans is registered under it.
const FAMILY: &str = "sans-serif";

/// The two files a plot function wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlotFiles {
    pub png: PathBuf,
    pub svg: PathBuf,
}

/// One defense (or one setting of a sweep) on the ASR/ORR plane. Rates are fractions in
/// [0, 1] as [`crate::metrics::Rate`] holds them; the plot shows percent.
#[derive(Debug, Clone, PartialEq)]
pub struct TradeoffPoint {
    pub label: String,
    /// Attack success rate on harmful prompts (lower is better).
    pub asr: f64,
    /// Over-refusal rate on benign prompts (lower is better).
    pub orr: f64,
    /// 95 % interval of `asr`, drawn as a vertical error bar.
    pub asr_ci: Option<(f64, f64)>,
    /// 95 % interval of `orr`, drawn as a horizontal error bar.
    pub orr_ci: Option<(f64, f64)>,
}

/// One projected representation and the group it belongs to ("harmful", "benign",
/// "harmful/audio-text", …). Groups get colours and markers in order of first appearance.
#[derive(Debug, Clone, PartialEq)]
pub struct ScatterPoint {
    pub x: f32,
    pub y: f32,
    pub group: String,
}

// ---------------------------------------------------------------------------------------------
// Public entry points
// ---------------------------------------------------------------------------------------------

/// ASR (y) against ORR (x), both in percent on 0–100. Each point carries its label, error bars
/// from the intervals when given, and the ideal corner (low ASR, low ORR) is shaded and marked.
/// With `sweep`, the points are one defense at increasing strength and are joined in the
/// given order.
pub fn tradeoff(
    dir: &Path,
    stem: &str,
    points: &[TradeoffPoint],
    title: &str,
    sweep: bool,
) -> Result<PlotFiles> {
    if points.is_empty() {
        return Err(invalid("trade-off plot: no points to draw"));
    }
    for (i, p) in points.iter().enumerate() {
        let who = format!("trade-off point {i} ({:?})", p.label);
        check_rate(&who, "ASR", p.asr)?;
        check_rate(&who, "ORR", p.orr)?;
        if let Some(ci) = p.asr_ci {
            check_interval(&who, "ASR", p.asr, ci)?;
        }
        if let Some(ci) = p.orr_ci {
            check_interval(&who, "ORR", p.orr, ci)?;
        }
    }
    render(
        dir,
        stem,
        &Tradeoff {
            points,
            title,
            sweep,
        },
    )
}

/// Per-layer L2 norm of fitted directions: x is the layer index (from 0), y the norm, one line
/// with markers per `(name, norms)` series. Series may differ in length (models of different
/// depth); each must be non-empty, finite and non-negative.
pub fn layer_norms(
    dir: &Path,
    stem: &str,
    series: &[(String, Vec<f32>)],
    title: &str,
) -> Result<PlotFiles> {
    if series.is_empty() {
        return Err(invalid("layer-norm plot: no series to draw"));
    }
    for (name, norms) in series {
        if norms.is_empty() {
            return Err(invalid(format!(
                "layer-norm plot: series {name:?} has no layers"
            )));
        }
        if let Some((l, v)) = norms
            .iter()
            .enumerate()
            .find(|(_, v)| !v.is_finite() || **v < 0.0)
        {
            return Err(invalid(format!(
                "layer-norm plot: series {name:?} has norm {v} at layer {l} (norms must be finite and ≥ 0)"
            )));
        }
    }
    render(dir, stem, &LayerNorms { series, title })
}

/// 2-D scatter of projected representations (e.g. from [`pca_2d`]), one colour and marker per
/// group, with a legend placed in the emptiest corner.
pub fn pca_scatter(
    dir: &Path,
    stem: &str,
    points: &[ScatterPoint],
    title: &str,
) -> Result<PlotFiles> {
    if points.is_empty() {
        return Err(invalid("PCA scatter: no points to draw"));
    }
    for (i, p) in points.iter().enumerate() {
        if !p.x.is_finite() || !p.y.is_finite() {
            return Err(invalid(format!(
                "PCA scatter: point {i} ({:?}) is at ({}, {}); coordinates must be finite",
                p.group, p.x, p.y
            )));
        }
        if p.group.is_empty() {
            return Err(invalid(format!(
                "PCA scatter: point {i} has an empty group name"
            )));
        }
    }
    render(dir, stem, &Scatter { points, title })
}

/// Centre `rows` (n × d) and project them onto their top two principal components (thin SVD of
/// the centred matrix, in f64). Signs are fixed so that, for each component, its loading of
/// largest magnitude is positive: the same data always gives the same picture. With a single
/// row or a single feature the missing coordinates are 0.
pub fn pca_2d(rows: &[Vec<f32>]) -> Result<Vec<(f32, f32)>> {
    let n = rows.len();
    if n == 0 {
        return Err(invalid("PCA: no rows"));
    }
    let d = rows[0].len();
    if d == 0 {
        return Err(invalid("PCA: rows have no features"));
    }
    for (i, r) in rows.iter().enumerate() {
        if r.len() != d {
            return Err(invalid(format!(
                "PCA: row {i} has {} features but row 0 has {d}",
                r.len()
            )));
        }
        if let Some((j, v)) = r.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(invalid(format!(
                "PCA: row {i} has a non-finite value {v} at feature {j}"
            )));
        }
    }
    let mut mean = vec![0f64; d];
    for r in rows {
        for (m, &v) in mean.iter_mut().zip(r) {
            *m += f64::from(v);
        }
    }
    for m in &mut mean {
        *m /= n as f64;
    }
    let centred = faer::Mat::<f64>::from_fn(n, d, |i, j| f64::from(rows[i][j]) - mean[j]);
    let svd = centred
        .thin_svd()
        .map_err(|e| invalid(format!("PCA: SVD did not converge: {e:?}")))?;
    let v = svd.V();
    let k = v.ncols().min(2);
    let mut axes: Vec<Vec<f64>> = Vec::with_capacity(2);
    for c in 0..k {
        let mut axis: Vec<f64> = (0..d).map(|j| v[(j, c)]).collect();
        // First index of the largest |loading|; flip the axis so that loading is positive.
        let mut best = 0;
        for j in 1..d {
            if axis[j].abs() > axis[best].abs() {
                best = j;
            }
        }
        if axis[best] < 0.0 {
            axis.iter_mut().for_each(|a| *a = -*a);
        }
        axes.push(axis);
    }
    let project = |i: usize, axis: Option<&Vec<f64>>| -> f32 {
        match axis {
            None => 0.0,
            Some(a) => (0..d).map(|j| centred[(i, j)] * a[j]).sum::<f64>() as f32,
        }
    };
    Ok((0..n)
        .map(|i| (project(i, axes.first()), project(i, axes.get(1))))
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Rendering harness: one figure, two backends
// ---------------------------------------------------------------------------------------------

type DrawResult<DB> =
    std::result::Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;
type Chart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A figure that can draw itself on any plotters backend.
trait Figure {
    /// Canvas size in pixels (the SVG uses the same user units).
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB>;
}

fn render<F: Figure>(dir: &Path, stem: &str, fig: &F) -> Result<PlotFiles> {
    check_stem(stem)?;
    ensure_font()?;
    std::fs::create_dir_all(dir).map_err(|e| EvalError::io(dir, e))?;
    let png = dir.join(format!("{stem}.png"));
    let svg = dir.join(format!("{stem}.svg"));
    {
        let root = Raster(BitMapBackend::new(&png, fig.size())).into_drawing_area();
        fig.draw(&root)
            .map_err(|e| EvalError::io(&png, format!("could not draw the plot: {e}")))?;
        root.present()
            .map_err(|e| EvalError::io(&png, format!("could not write the plot: {e}")))?;
    }
    {
        let root = SVGBackend::new(&svg, fig.size()).into_drawing_area();
        fig.draw(&root)
            .map_err(|e| EvalError::io(&svg, format!("could not draw the plot: {e}")))?;
        root.present()
            .map_err(|e| EvalError::io(&svg, format!("could not write the plot: {e}")))?;
    }
    Ok(PlotFiles { png, svg })
}

/// Register the embedded DejaVu Sans with plotters once per process.
fn ensure_font() -> Result<()> {
    static REGISTERED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let faces: [(FontStyle, &'static [u8]); 4] = [
                (FontStyle::Normal, dejavu::sans::regular()),
                (FontStyle::Bold, dejavu::sans::bold()),
                (FontStyle::Italic, dejavu::sans::oblique()),
                (FontStyle::Oblique, dejavu::sans::oblique()),
            ];
            for (style, bytes) in faces {
                plotters::style::register_font(FAMILY, style, bytes).map_err(|_| {
                    format!(
                        "the embedded DejaVu Sans ({}) is not a valid font",
                        style.as_str()
                    )
                })?;
            }
            Ok(())
        })
        .clone()
        .map_err(EvalError::Invalid)
}

/// The three faces text is drawn with (regular, bold, oblique), parsed once.
fn faces() -> Option<&'static [ab_glyph::FontRef<'static>; 3]> {
    static FACES: OnceLock<Option<[ab_glyph::FontRef<'static>; 3]>> = OnceLock::new();
    FACES
        .get_or_init(|| {
            let parse = |b: &'static [u8]| ab_glyph::FontRef::try_from_slice(b).ok();
            Some([
                parse(dejavu::sans::regular())?,
                parse(dejavu::sans::bold())?,
                parse(dejavu::sans::oblique())?,
            ])
        })
        .as_ref()
}

#[derive(Debug)]
struct NoFont;
impl std::fmt::Display for NoFont {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the embedded DejaVu Sans could not be parsed")
    }
}
impl std::error::Error for NoFont {}

/// plotters' bitmap backend with text rasterised here. plotters' own ab_glyph path places
/// each glyph at its bounding box rather than its origin (the left side bearing is lost, so
/// letter spacing is uneven: "a lways") and puts the baseline half an em down, so text rides
/// high in its layout box. This draws each glyph at its pen position with kerning and centres
/// the ascent–descent span in the same layout box plotters measures, so anchors line up.
struct Raster<'a>(BitMapBackend<'a>);

type RasterError = <BitMapBackend<'static> as DrawingBackend>::ErrorType;

impl DrawingBackend for Raster<'_> {
    type ErrorType = RasterError;

    fn get_size(&self) -> (u32, u32) {
        self.0.get_size()
    }
    fn ensure_prepared(&mut self) -> std::result::Result<(), DrawingErrorKind<RasterError>> {
        self.0.ensure_prepared()
    }
    fn present(&mut self) -> std::result::Result<(), DrawingErrorKind<RasterError>> {
        self.0.present()
    }
    fn draw_pixel(
        &mut self,
        p: BackendCoord,
        c: BackendColor,
    ) -> std::result::Result<(), DrawingErrorKind<RasterError>> {
        self.0.draw_pixel(p, c)
    }
    fn draw_line<S: BackendStyle>(
        &mut self,
        from: BackendCoord,
        to: BackendCoord,
        style: &S,
    ) -> std::result::Result<(), DrawingErrorKind<RasterError>> {
        self.0.draw_line(from, to, style)
    }
    fn draw_rect<S: BackendStyle>(
        &mut self,
        ul: BackendCoord,
        br: BackendCoord,
        style: &S,
        fill: bool,
    ) -> std::result::Result<(), DrawingErrorKind<RasterError>> {
        self.0.draw_rect(ul, br, style, fill)
    }
    fn draw_path<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        path: I,
        style: &S,
    ) -> std::result::Result<(), DrawingErrorKind<RasterError>> {
        self.0.draw_path(path, style)
    }
    fn draw_circle<S: BackendStyle>(
        &mut self,
        c: BackendCoord,
        r: u32,
        style: &S,
        fill: bool,
    ) -> std::result::Result<(), DrawingErrorKind<RasterError>> {
        self.0.draw_circle(c, r, style, fill)
    }
    fn fill_polygon<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        vert: I,
        style: &S,
    ) -> std::result::Result<(), DrawingErrorKind<RasterError>> {
        self.0.fill_polygon(vert, style)
    }
    fn blit_bitmap(
        &mut self,
        pos: BackendCoord,
        size: (u32, u32),
        src: &[u8],
    ) -> std::result::Result<(), DrawingErrorKind<RasterError>> {
        self.0.blit_bitmap(pos, size, src)
    }

    fn draw_text<TS: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &TS,
        pos: BackendCoord,
    ) -> std::result::Result<(), DrawingErrorKind<RasterError>> {
        use ab_glyph::{Font, ScaleFont};
        let colour = style.color();
        if colour.alpha == 0.0 || text.is_empty() {
            return Ok(());
        }
        let faces = faces().ok_or_else(|| DrawingErrorKind::FontError(Box::new(NoFont)))?;
        let font = match style.style() {
            FontStyle::Bold => &faces[1],
            FontStyle::Italic | FontStyle::Oblique => &faces[2],
            FontStyle::Normal => &faces[0],
        };
        let size = style.size() as f32;
        let scaled = font.as_scaled(size);
        // The layout box plotters measures (and anchors by): advance width × size / 1.24.
        let box_h = (f64::from(size) / 1.24) as i32;
        let baseline = (box_h as f32 + scaled.ascent() + scaled.descent()) / 2.0;
        let mut glyphs = Vec::with_capacity(text.len());
        let mut caret = 0f32;
        let mut prev = None;
        for c in text.chars() {
            let id = scaled.glyph_id(c);
            if let Some(p) = prev {
                caret += scaled.kern(p, id);
            }
            glyphs.push(id.with_scale_and_position(size, ab_glyph::point(caret, baseline)));
            caret += scaled.h_advance(id);
            prev = Some(id);
        }
        let width = caret as i32;
        let dx = match style.anchor().h_pos {
            HPos::Left => 0,
            HPos::Right => -width,
            HPos::Center => -width / 2,
        };
        let dy = match style.anchor().v_pos {
            VPos::Top => 0,
            VPos::Center => -box_h / 2,
            VPos::Bottom => -box_h,
        };
        let trans = style.transform();
        let (w, h) = self.0.get_size();
        let mut result = Ok(());
        for g in glyphs {
            let Some(outline) = font.outline_glyph(g) else {
                continue;
            };
            let b = outline.px_bounds();
            outline.draw(|gx, gy, cov| {
                if result.is_err() || cov <= 0.0 {
                    return;
                }
                let (x, y) = trans.transform(
                    b.min.x as i32 + gx as i32 + dx,
                    b.min.y as i32 + gy as i32 + dy,
                );
                let (x, y) = (pos.0 + x, pos.1 + y);
                if x >= 0 && y >= 0 && x < w as i32 && y < h as i32 {
                    let c = BackendColor {
                        alpha: colour.alpha * f64::from(cov.min(1.0)),
                        rgb: colour.rgb,
                    };
                    result = self.0.draw_pixel((x, y), c);
                }
            });
        }
        result
    }
}

fn check_stem(stem: &str) -> Result<()> {
    if stem.is_empty() || stem == "." || stem == ".." || stem.contains(['/', '\\']) {
        return Err(invalid(format!(
            "plot file stem {stem:?} must be a plain, non-empty file name"
        )));
    }
    Ok(())
}

fn check_rate(who: &str, what: &str, v: f64) -> Result<()> {
    if !v.is_finite() || !(0.0..=1.0).contains(&v) {
        return Err(invalid(format!(
            "{who}: {what} = {v} is not a rate in [0, 1]"
        )));
    }
    Ok(())
}

fn check_interval(who: &str, what: &str, v: f64, (lo, hi): (f64, f64)) -> Result<()> {
    check_rate(who, &format!("{what} interval low"), lo)?;
    check_rate(who, &format!("{what} interval high"), hi)?;
    // Tolerate rounding: the value may sit a hair outside an interval computed elsewhere.
    const EPS: f64 = 1e-9;
    if lo > hi || v < lo - EPS || v > hi + EPS {
        return Err(invalid(format!(
            "{who}: {what} interval [{lo}, {hi}] does not contain the value {v}"
        )));
    }
    Ok(())
}

fn invalid(msg: impl Into<String>) -> EvalError {
    EvalError::Invalid(msg.into())
}

// ---------------------------------------------------------------------------------------------
// Style
// ---------------------------------------------------------------------------------------------

/// Okabe–Ito colours (distinguishable with the common colour-vision deficiencies), vermillion
/// and blue first so that a harmful/benign pair gets the RRS-style red/blue contrast.
const PALETTE: [RGBColor; 8] = [
    RGBColor(213, 94, 0),    // vermillion
    RGBColor(0, 114, 178),   // blue
    RGBColor(0, 158, 115),   // bluish green
    RGBColor(204, 121, 167), // reddish purple
    RGBColor(230, 159, 0),   // orange
    RGBColor(86, 180, 233),  // sky blue
    RGBColor(0, 0, 0),       // black
    RGBColor(120, 120, 120), // grey
];

fn colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

#[derive(Debug, Clone, Copy)]
enum Marker {
    Circle,
    Triangle,
    Square,
    Diamond,
    Cross,
}

const MARKERS: [Marker; 5] = [
    Marker::Circle,
    Marker::Triangle,
    Marker::Square,
    Marker::Diamond,
    Marker::Cross,
];

fn marker(i: usize) -> Marker {
    MARKERS[i % MARKERS.len()]
}

fn font(size: u32) -> TextStyle<'static> {
    TextStyle::from((FAMILY, size).into_font())
}

const GRID_BOLD: RGBColor = RGBColor(205, 205, 205);
const GRID_LIGHT: RGBColor = RGBColor(238, 238, 238);

/// Draw one group of points with `m` (and, for a line series, the line in the legend entry).
#[allow(clippy::too_many_arguments)]
fn draw_markers<'a, DB: DrawingBackend + 'a>(
    chart: &mut Chart<'a, DB>,
    pts: Vec<(f64, f64)>,
    m: Marker,
    colour: RGBColor,
    alpha: f64,
    r: i32,
    label: Option<String>,
    legend_line: bool,
) -> DrawResult<DB> {
    let fill = ShapeStyle::from(&colour.mix(alpha)).filled();
    let stroke = ShapeStyle::from(&colour.mix(alpha)).stroke_width(2);
    let edge = ShapeStyle::from(&colour).stroke_width(2);
    let line: Vec<(i32, i32)> = if legend_line {
        vec![(-12, 0), (12, 0)]
    } else {
        Vec::new()
    };
    macro_rules! series {
        ($elem:expr, $legend:expr) => {{
            let ann = chart.draw_series(pts.iter().map($elem))?;
            if let Some(label) = label {
                let line = line.clone();
                ann.label(label).legend(move |(x, y)| {
                    EmptyElement::at((x + 12, y)) + PathElement::new(line.clone(), edge) + $legend
                });
            }
        }};
    }
    match m {
        Marker::Circle => series!(|&p| Circle::new(p, r, fill), Circle::new((0, 0), r, fill)),
        Marker::Triangle => series!(
            |&p| TriangleMarker::new(p, r + 1, fill),
            TriangleMarker::new((0, 0), r + 1, fill)
        ),
        Marker::Square => series!(
            |&p| EmptyElement::at(p) + Rectangle::new([(-r + 1, -r + 1), (r - 1, r - 1)], fill),
            Rectangle::new([(-r + 1, -r + 1), (r - 1, r - 1)], fill)
        ),
        Marker::Diamond => series!(
            |&p| EmptyElement::at(p)
                + Polygon::new(vec![(0, -r - 1), (r + 1, 0), (0, r + 1), (-r - 1, 0)], fill),
            Polygon::new(vec![(0, -r - 1), (r + 1, 0), (0, r + 1), (-r - 1, 0)], fill)
        ),
        Marker::Cross => series!(|&p| Cross::new(p, r, stroke), Cross::new((0, 0), r, stroke)),
    }
    Ok(())
}

/// A chart with the house caption and margins; `areas` are the x and y label areas in pixels.
fn chart_2d<'a, DB: DrawingBackend>(
    root: &'a DrawingArea<DB, Shift>,
    title: &str,
    areas: (u32, u32),
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
) -> std::result::Result<Chart<'a, DB>, DrawingAreaErrorKind<DB::ErrorType>> {
    ChartBuilder::on(root)
        .caption(title, font(28))
        .margin(24)
        .x_label_area_size(areas.0)
        .y_label_area_size(areas.1)
        .build_cartesian_2d(x, y)
}

/// The grid and axis labels in the house style; callers add ticks and formatters, then draw.
fn mesh<'a, 'b, DB: DrawingBackend>(
    chart: &'b mut Chart<'a, DB>,
    x_desc: &str,
    y_desc: &str,
) -> MeshStyle<'a, 'b, RangedCoordf64, RangedCoordf64, DB> {
    let mut m = chart.configure_mesh();
    m.x_desc(x_desc)
        .y_desc(y_desc)
        .label_style(font(18))
        .axis_desc_style(font(20))
        .max_light_lines(1)
        .bold_line_style(GRID_BOLD)
        .light_line_style(GRID_LIGHT);
    m
}

/// One series as a line through markers, with its legend entry.
fn draw_line<'a, DB: DrawingBackend + 'a>(
    chart: &mut Chart<'a, DB>,
    pts: Vec<(f64, f64)>,
    i: usize,
    r: i32,
    label: &str,
) -> DrawResult<DB> {
    chart.draw_series(LineSeries::new(
        pts.iter().copied(),
        ShapeStyle::from(&colour(i)).stroke_width(2),
    ))?;
    draw_markers(
        chart,
        pts,
        marker(i),
        colour(i),
        1.0,
        r,
        Some(label.to_string()),
        true,
    )
}

/// The legend box of line charts, at `pos`.
fn draw_legend<'a, DB: DrawingBackend + 'a>(
    chart: &mut Chart<'a, DB>,
    pos: SeriesLabelPosition,
) -> DrawResult<DB> {
    chart
        .configure_series_labels()
        .position(pos)
        .margin(12)
        .legend_area_size(34)
        .label_font(font(17))
        .background_style(WHITE.mix(0.9))
        .border_style(GRID_BOLD)
        .draw()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Trade-off plot
// ---------------------------------------------------------------------------------------------

struct Tradeoff<'a> {
    points: &'a [TradeoffPoint],
    title: &'a str,
    sweep: bool,
}

/// A placed text box in absolute pixels: (x0, y0, x1, y1).
type PxBox = (i32, i32, i32, i32);

fn overlap(a: PxBox, b: PxBox) -> i64 {
    let w = (a.2.min(b.2) - a.0.max(b.0)).max(0) as i64;
    let h = (a.3.min(b.3) - a.1.max(b.1)).max(0) as i64;
    w * h
}

impl Figure for Tradeoff<'_> {
    fn size(&self) -> (u32, u32) {
        (900, 820)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        root.fill(&WHITE)?;
        let (lo, hi) = (-4.0, 104.0);
        let mut chart = chart_2d(root, self.title, (64, 78), lo..hi, lo..hi)?;
        mesh(
            &mut chart,
            "ORR: benign prompts refused (%)",
            "ASR: harmful prompts answered (%)",
        )
        .x_labels(11)
        .y_labels(11)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;

        // The ideal corner: nothing harmful answered, nothing benign refused.
        let corner = 12.0;
        let steps = 24;
        let mut wedge = vec![(lo, lo), (corner, lo)];
        for s in 0..=steps {
            let a = std::f64::consts::FRAC_PI_2 * s as f64 / steps as f64;
            wedge.push(((corner * a.cos()).max(lo), (corner * a.sin()).max(lo)));
        }
        wedge.push((lo, corner));
        chart.draw_series(std::iter::once(Polygon::new(
            wedge,
            ShapeStyle::from(&RGBColor(0, 158, 115).mix(0.12)).filled(),
        )))?;
        let pts: Vec<(f64, f64)> = self
            .points
            .iter()
            .map(|p| (100.0 * p.orr, 100.0 * p.asr))
            .collect();
        let point_colour = |i: usize| if self.sweep { colour(1) } else { colour(i) };

        if self.sweep && pts.len() > 1 {
            chart.draw_series(LineSeries::new(
                pts.iter().copied(),
                ShapeStyle::from(&colour(1).mix(0.55)).stroke_width(2),
            ))?;
        }
        // Error bars under the markers.
        for (i, p) in self.points.iter().enumerate() {
            let c = ShapeStyle::from(&point_colour(i).mix(0.75)).stroke_width(2);
            let (x, y) = pts[i];
            if let Some((a, b)) = p.asr_ci {
                chart.draw_series(std::iter::once(ErrorBar::new_vertical(
                    x,
                    100.0 * a,
                    y,
                    100.0 * b,
                    c,
                    10,
                )))?;
            }
            if let Some((a, b)) = p.orr_ci {
                chart.draw_series(std::iter::once(ErrorBar::new_horizontal(
                    y,
                    100.0 * a,
                    x,
                    100.0 * b,
                    c,
                    10,
                )))?;
            }
        }
        let r = 7;
        for (i, &p) in pts.iter().enumerate() {
            let fill = ShapeStyle::from(&point_colour(i)).filled();
            chart.draw_series(std::iter::once(Circle::new(p, r, fill)))?;
            chart.draw_series(std::iter::once(Circle::new(
                p,
                r,
                ShapeStyle::from(&WHITE).stroke_width(1),
            )))?;
        }

        // Labels: for each point in turn, the candidate position that overlaps least with what
        // is already drawn (markers and labels count most, error bars and the sweep line less)
        // and stays inside the plot.
        let label_style = font(17);
        let (xr, yr) = chart.plotting_area().get_pixel_range();
        let px: Vec<(i32, i32)> = pts.iter().map(|p| chart.backend_coord(p)).collect();
        let mut taken: Vec<(PxBox, i64)> = Vec::new();
        taken.extend(
            px.iter()
                .map(|&(x, y)| ((x - r - 2, y - r - 2, x + r + 2, y + r + 2), 4)),
        );
        for (i, p) in self.points.iter().enumerate() {
            let (x, y) = pts[i];
            let (cx, cy) = px[i];
            if let Some((a, b)) = p.asr_ci {
                let (top, bottom) = (
                    chart.backend_coord(&(x, 100.0 * b)).1,
                    chart.backend_coord(&(x, 100.0 * a)).1,
                );
                taken.push(((cx - 6, top - 1, cx + 6, bottom + 1), 1));
            }
            if let Some((a, b)) = p.orr_ci {
                let (left, right) = (
                    chart.backend_coord(&(100.0 * a, y)).0,
                    chart.backend_coord(&(100.0 * b, y)).0,
                );
                taken.push(((left - 1, cy - 6, right + 1, cy + 6), 1));
            }
        }
        if self.sweep {
            for seg in px.windows(2) {
                let ((x0, y0), (x1, y1)) = (seg[0], seg[1]);
                let steps = ((x1 - x0).abs().max((y1 - y0).abs()) / 6).max(1);
                for s in 0..=steps {
                    let x = x0 + (x1 - x0) * s / steps;
                    let y = y0 + (y1 - y0) * s / steps;
                    taken.push(((x - 3, y - 3, x + 3, y + 3), 1));
                }
            }
        }
        // "ideal" inside the shaded corner, where it covers the least.
        let ideal_style = TextStyle::from((FAMILY, 17).into_font().style(FontStyle::Italic))
            .color(&RGBColor(0, 120, 86));
        let ideal_text = "ideal";
        let (iw, ih) = root.estimate_text_size(ideal_text, &ideal_style)?;
        let (iw, ih) = (iw as i32, ih as i32);
        let mut ideal = (i64::MAX, (0.0, 0.0), (0, 0, 0, 0));
        for (rank, at) in [(0.8, 0.8), (0.8, 5.0), (4.5, 0.8), (0.8, -3.4), (-3.4, 6.5)]
            .into_iter()
            .enumerate()
        {
            let (ax, ay) = chart.backend_coord(&at);
            let b = (ax, ay - ih, ax + iw, ay);
            let cost = taken
                .iter()
                .map(|&(t, weight)| weight * overlap(b, t))
                .sum::<i64>()
                * 100
                + rank as i64;
            if cost < ideal.0 {
                ideal = (cost, at, b);
            }
        }
        chart.draw_series(std::iter::once(
            EmptyElement::at(ideal.1) + Text::new(ideal_text, (0, -ih), ideal_style.clone()),
        ))?;
        taken.push((ideal.2, 3));

        for (i, p) in self.points.iter().enumerate() {
            if p.label.is_empty() {
                continue;
            }
            let (w, h) = root.estimate_text_size(&p.label, &label_style)?;
            let (w, h) = (w as i32, h as i32);
            let (cx, cy) = px[i];
            let g = r + 5;
            let mut candidates = Vec::new();
            for k in [1, 2, 4] {
                let g = g * k;
                candidates.extend([
                    (g, -h / 2),
                    (-w - g, -h / 2),
                    (-w / 2, -h - g),
                    (-w / 2, g),
                    (g * 3 / 4, -h - g * 3 / 4),
                    (g * 3 / 4, g * 3 / 4),
                    (-w - g * 3 / 4, -h - g * 3 / 4),
                    (-w - g * 3 / 4, g * 3 / 4),
                ]);
            }
            let mut best = (i64::MAX, 0usize);
            for (rank, &(dx, dy)) in candidates.iter().enumerate() {
                let b = (cx + dx, cy + dy, cx + dx + w, cy + dy + h);
                let mut cost: i64 = taken
                    .iter()
                    .map(|&(t, weight)| weight * overlap(b, t))
                    .sum();
                let inside = overlap(b, (xr.start, yr.start, xr.end, yr.end));
                cost += 50 * ((w * h) as i64 - inside);
                cost = cost * 100 + rank as i64; // prefer near, plain positions on a tie
                if cost < best.0 {
                    best = (cost, rank);
                }
            }
            let (dx, dy) = candidates[best.1];
            let b = (cx + dx, cy + dy, cx + dx + w, cy + dy + h);
            taken.push(((b.0 - 8, b.1 - 3, b.2 + 8, b.3 + 3), 4)); // keep neighbours apart
            let anchor = pts[i];
            if best.1 >= 8 {
                // Pushed away from its marker: a leader line to the nearest point of the label.
                let tx = cx.clamp(b.0, b.2) - cx;
                let ty = cy.clamp(b.1, b.3) - cy;
                chart.draw_series(std::iter::once(
                    EmptyElement::at(anchor)
                        + PathElement::new(
                            vec![(0, 0), (tx, ty)],
                            ShapeStyle::from(&BLACK.mix(0.4)).stroke_width(1),
                        ),
                ))?;
            }
            chart.draw_series(std::iter::once(
                EmptyElement::at(anchor)
                    + Text::new(p.label.clone(), (dx, dy), label_style.clone()),
            ))?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Layer norms
// ---------------------------------------------------------------------------------------------

struct LayerNorms<'a> {
    series: &'a [(String, Vec<f32>)],
    title: &'a str,
}

impl Figure for LayerNorms<'_> {
    fn size(&self) -> (u32, u32) {
        (1000, 620)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        root.fill(&WHITE)?;
        let layers = self.series.iter().map(|(_, v)| v.len()).max().unwrap_or(1);
        let top = self
            .series
            .iter()
            .flat_map(|(_, v)| v.iter())
            .fold(0f32, |m, &v| m.max(v)) as f64;
        let top = if top > 0.0 { top * 1.12 } else { 1.0 };
        let last = (layers - 1) as f64;
        let pad = (0.03 * last).max(0.4);
        let mut chart = chart_2d(root, self.title, (60, 72), -pad..last + pad, 0.0..top)?;
        // Integer layer ticks only: a step of 1, 2, 5, 10, … (plotters' own sequence) giving at
        // most ~16 labels, and exactly as many ticks requested as that step puts on the axis, so
        // plotters picks that step and every grid line is labelled.
        let step = [1usize, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
            .into_iter()
            .find(|s| layers.div_ceil(*s) <= 16)
            .unwrap_or(1000);
        let st = step as f64;
        let x_ticks = (((last + pad) / st).floor() - (-pad / st).ceil()) as usize + 1;
        let y_dec = tick_decimals(0.0, top, 8);
        mesh(&mut chart, "layer", "L2 norm of the direction")
            .x_labels(x_ticks)
            .x_label_formatter(&|v| {
                let r = v.round();
                if (v - r).abs() < 1e-6 && r >= 0.0 && (r as usize).is_multiple_of(step) {
                    format!("{r:.0}")
                } else {
                    String::new()
                }
            })
            .y_labels(8)
            .y_label_formatter(&|v| format_tick(*v, y_dec))
            .draw()?;

        for (i, (name, norms)) in self.series.iter().enumerate() {
            let pts: Vec<(f64, f64)> = norms
                .iter()
                .enumerate()
                .map(|(l, &v)| (l as f64, f64::from(v)))
                .collect();
            let r = if layers > 48 { 3 } else { 5 };
            draw_line(&mut chart, pts, i, r, name)?;
        }
        // Legend in the corner the lines leave emptiest (norms usually peak mid-depth).
        let upper = self
            .series
            .iter()
            .flat_map(|(_, v)| v.iter().enumerate())
            .filter(|(l, v)| (*l as f64) >= 0.6 * last && f64::from(**v) > 0.6 * top)
            .count();
        let upper_left = self
            .series
            .iter()
            .flat_map(|(_, v)| v.iter().enumerate())
            .filter(|(l, v)| (*l as f64) <= 0.4 * last && f64::from(**v) > 0.6 * top)
            .count();
        let pos = if upper <= upper_left {
            SeriesLabelPosition::UpperRight
        } else {
            SeriesLabelPosition::UpperLeft
        };
        draw_legend(&mut chart, pos)
    }
}

// ---------------------------------------------------------------------------------------------
// PCA scatter
// ---------------------------------------------------------------------------------------------

struct Scatter<'a> {
    points: &'a [ScatterPoint],
    title: &'a str,
}

impl Figure for Scatter<'_> {
    fn size(&self) -> (u32, u32) {
        (900, 760)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        root.fill(&WHITE)?;
        let mut groups: Vec<&str> = Vec::new();
        for p in self.points {
            if !groups.contains(&p.group.as_str()) {
                groups.push(&p.group);
            }
        }
        let span = |f: fn(&ScatterPoint) -> f32| {
            let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
            for p in self.points {
                lo = lo.min(f64::from(f(p)));
                hi = hi.max(f64::from(f(p)));
            }
            let w = hi - lo;
            let pad = if w > 0.0 {
                0.06 * w
            } else {
                lo.abs().max(1.0) * 0.5
            };
            (lo - pad, hi + pad)
        };
        let (x0, x1) = span(|p| p.x);
        let (y0, y1) = span(|p| p.y);
        // Head-room above the data for the legend, sized by the number of groups.
        let legend_room = (y1 - y0) * (0.06 * groups.len() as f64 + 0.04);
        let y1 = y1 + legend_room;
        let (x_dec, y_dec) = (tick_decimals(x0, x1, 8), tick_decimals(y0, y1, 8));
        let mut chart = chart_2d(root, self.title, (60, 72), x0..x1, y0..y1)?;
        mesh(&mut chart, "PC 1", "PC 2")
            .x_labels(8)
            .y_labels(8)
            .x_label_formatter(&|v| format_tick(*v, x_dec))
            .y_label_formatter(&|v| format_tick(*v, y_dec))
            .draw()?;

        let n = self.points.len();
        let r = if n > 2000 {
            3
        } else if n > 400 {
            4
        } else {
            5
        };
        let alpha = if n > 400 { 0.55 } else { 0.75 };
        for (gi, g) in groups.iter().enumerate() {
            let pts: Vec<(f64, f64)> = self
                .points
                .iter()
                .filter(|p| p.group == *g)
                .map(|p| (f64::from(p.x), f64::from(p.y)))
                .collect();
            draw_markers(
                &mut chart,
                pts,
                marker(gi),
                colour(gi),
                alpha,
                r,
                Some((*g).to_string()),
                false,
            )?;
        }
        // Legend at the top, on the side the points crowd less.
        let mid = 0.5 * (x0 + x1);
        let high = y1 - legend_room - 0.25 * (y1 - legend_room - y0);
        let right = self
            .points
            .iter()
            .filter(|p| f64::from(p.x) > mid && f64::from(p.y) > high)
            .count();
        let left = self
            .points
            .iter()
            .filter(|p| f64::from(p.x) <= mid && f64::from(p.y) > high)
            .count();
        let pos = if right <= left {
            SeriesLabelPosition::UpperRight
        } else {
            SeriesLabelPosition::UpperLeft
        };
        chart
            .configure_series_labels()
            .position(pos)
            .margin(12)
            .legend_area_size(30)
            .label_font(font(17))
            .background_style(WHITE.mix(0.9))
            .border_style(GRID_BOLD)
            .draw()?;
        Ok(())
    }
}

/// How many decimals the tick labels of `lo..hi` need when plotters puts at most `max` of them
/// there: its step is the smallest 1, 2 or 5 × 10^k that gives at most `max` ticks.
fn tick_decimals(lo: f64, hi: f64, max: usize) -> usize {
    let span = hi - lo;
    if !(span.is_finite() && span > 0.0) || max == 0 {
        return 2;
    }
    let mut step = span;
    let top = span.log10().ceil() as i32 + 1;
    'outer: for k in (top - 14..=top).rev() {
        for m in [5.0, 2.0, 1.0] {
            let s = m * 10f64.powi(k);
            if (hi / s).floor() - (lo / s).ceil() + 1.0 > max as f64 {
                break 'outer;
            }
            step = s;
        }
    }
    (-(step.log10() + 1e-9).floor()).clamp(0.0, 10.0) as usize
}

/// A tick label with `decimals` places (one more if the value needs it), never "-0".
fn format_tick(v: f64, decimals: usize) -> String {
    let scaled = v * 10f64.powi(decimals as i32);
    let d = if (scaled - scaled.round()).abs() > 1e-6 * scaled.abs().max(1.0) {
        decimals + 1
    } else {
        decimals
    };
    let s = format!("{v:.d$}");
    if s.trim_start_matches('-')
        .chars()
        .all(|c| c == '0' || c == '.')
    {
        s.trim_start_matches('-').to_string()
    } else {
        s
    }
}

// ---------------------------------------------------------------------------------------------
// Rate curve
// ---------------------------------------------------------------------------------------------

/// One line of a [`rate_curve`]: a rate (fraction in [0, 1], with its 95 % interval) at each
/// value of a setting, e.g. ASR against the ablation attack's strength.
#[derive(Debug, Clone, PartialEq)]
pub struct CurveSeries {
    pub label: String,
    /// `(x, rate, interval)`, drawn in the given order.
    pub points: Vec<(f64, f64, Option<(f64, f64)>)>,
}

/// A rate in percent (y, 0–100) against a numeric setting (x), one line with markers and
/// Wilson error bars per series.
pub fn rate_curve(
    dir: &Path,
    stem: &str,
    series: &[CurveSeries],
    x_desc: &str,
    y_desc: &str,
    title: &str,
) -> Result<PlotFiles> {
    if series.iter().all(|s| s.points.is_empty()) {
        return Err(invalid("rate curve: no points to draw"));
    }
    for s in series {
        for &(x, v, ci) in &s.points {
            if !x.is_finite() {
                return Err(invalid(format!(
                    "rate curve: series {:?} has x = {x}",
                    s.label
                )));
            }
            match ci {
                Some(ci) => check_interval("rate curve", &s.label, v, ci)?,
                None => check_rate("rate curve", &s.label, v)?,
            }
        }
    }
    render(
        dir,
        stem,
        &RateCurve {
            series,
            x_desc,
            y_desc,
            title,
        },
    )
}

struct RateCurve<'a> {
    series: &'a [CurveSeries],
    x_desc: &'a str,
    y_desc: &'a str,
    title: &'a str,
}

impl Figure for RateCurve<'_> {
    fn size(&self) -> (u32, u32) {
        (1000, 620)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        root.fill(&WHITE)?;
        let xs = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.0));
        let (lo, hi) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(x), b.max(x))
        });
        let pad = if hi > lo { 0.04 * (hi - lo) } else { 0.5 };
        let mut chart = chart_2d(root, self.title, (60, 72), lo - pad..hi + pad, 0.0..105.0)?;
        let x_dec = tick_decimals(lo, hi, 10);
        mesh(&mut chart, self.x_desc, self.y_desc)
            .x_labels(10)
            .x_label_formatter(&|v| format_tick(*v, x_dec))
            .y_labels(11)
            .y_label_formatter(&|v| format!("{v:.0}"))
            .draw()?;
        for (i, s) in self.series.iter().enumerate() {
            let pts: Vec<(f64, f64)> = s.points.iter().map(|p| (p.0, 100.0 * p.1)).collect();
            chart.draw_series(s.points.iter().filter_map(|&(x, _, ci)| {
                ci.map(|(a, b)| {
                    PathElement::new(
                        vec![(x, 100.0 * a), (x, 100.0 * b)],
                        ShapeStyle::from(&colour(i).mix(0.5)).stroke_width(2),
                    )
                })
            }))?;
            draw_line(&mut chart, pts, i, 6, &s.label)?;
        }
        draw_legend(&mut chart, SeriesLabelPosition::UpperLeft)
    }
}
