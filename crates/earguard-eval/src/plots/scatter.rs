//! The 2-D scatter of projected representations (PCA of last-position activations).

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::style::{
    chart_2d, colour, draw_legend, draw_markers, format_tick, marker, mesh, tick_decimals,
};
use super::{invalid, render, DrawResult, Figure, PlotFiles};
use crate::error::Result;

/// One projected representation and the group it belongs to ("harmful", "benign",
/// "harmful/audio-text", …). Groups get colours and markers in order of first appearance.
#[derive(Debug, Clone, PartialEq)]
pub struct ScatterPoint {
    pub x: f32,
    pub y: f32,
    pub group: String,
}

/// 2-D scatter of projected representations (e.g. from `earguard_steer::fit::pca_2d`), one colour and marker per
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

struct Scatter<'a> {
    points: &'a [ScatterPoint],
    title: &'a str,
}

impl Figure for Scatter<'_> {
    fn size(&self) -> (u32, u32) {
        (900, 760)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
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
        draw_legend(&mut chart, pos, 30)
    }
}
