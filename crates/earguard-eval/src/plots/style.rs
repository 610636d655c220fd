//! The house style: palette, markers, chart frame, grid, legends and tick labels.

use plotters::chart::MeshStyle;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::text::font;
use super::{Chart, DrawResult};

/// Okabe–Ito colours (distinguishable with the common colour-vision deficiencies), vermillion
/// and blue first so that a harmful/benign pair gets the RRS-style red/blue contrast.
pub(super) const PALETTE: [RGBColor; 8] = [
    RGBColor(213, 94, 0),    // vermillion
    RGBColor(0, 114, 178),   // blue
    RGBColor(0, 158, 115),   // bluish green
    RGBColor(204, 121, 167), // reddish purple
    RGBColor(230, 159, 0),   // orange
    RGBColor(86, 180, 233),  // sky blue
    RGBColor(0, 0, 0),       // black
    RGBColor(120, 120, 120), // grey
];

pub(super) fn colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Marker {
    Circle,
    Triangle,
    Square,
    Diamond,
    Cross,
}

pub(super) const MARKERS: [Marker; 5] = [
    Marker::Circle,
    Marker::Triangle,
    Marker::Square,
    Marker::Diamond,
    Marker::Cross,
];

pub(super) fn marker(i: usize) -> Marker {
    MARKERS[i % MARKERS.len()]
}

pub(super) const GRID_BOLD: RGBColor = RGBColor(205, 205, 205);
pub(super) const GRID_LIGHT: RGBColor = RGBColor(238, 238, 238);

/// Draw one group of points with `m` (and, for a line series, the line in the legend entry).
#[allow(clippy::too_many_arguments)]
pub(super) fn draw_markers<'a, DB: DrawingBackend + 'a>(
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
pub(super) fn chart_2d<'a, DB: DrawingBackend>(
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
pub(super) fn mesh<'a, 'b, DB: DrawingBackend>(
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
pub(super) fn draw_line<'a, DB: DrawingBackend + 'a>(
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

/// The legend box at `pos`, `area` pixels wide for each entry's sample.
pub(super) fn draw_legend<'a, DB: DrawingBackend + 'a>(
    chart: &mut Chart<'a, DB>,
    pos: SeriesLabelPosition,
    area: u32,
) -> DrawResult<DB> {
    chart
        .configure_series_labels()
        .position(pos)
        .margin(12)
        .legend_area_size(area)
        .label_font(font(17))
        .background_style(WHITE.mix(0.9))
        .border_style(GRID_BOLD)
        .draw()?;
    Ok(())
}

/// How many decimals the tick labels of `lo..hi` need when plotters puts at most `max` of them
/// there: its step is the smallest 1, 2 or 5 × 10^k that gives at most `max` ticks.
pub(super) fn tick_decimals(lo: f64, hi: f64, max: usize) -> usize {
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
pub(super) fn format_tick(v: f64, decimals: usize) -> String {
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
