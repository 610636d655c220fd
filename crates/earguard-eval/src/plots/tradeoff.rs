//! The ASR/ORR trade-off plot.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use super::style::{chart_2d, colour, mesh};
use super::text::{font, FAMILY};
use super::{check_interval, check_rate, invalid, render, DrawResult, Figure, PlotFiles};
use crate::error::Result;

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
