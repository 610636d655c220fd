//! Line charts: per-layer direction norms, rates against a numeric setting, training losses.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::style::{chart_2d, colour, draw_legend, draw_line, format_tick, mesh, tick_decimals};
use super::{check_interval, check_rate, invalid, render, DrawResult, Figure, PlotFiles};
use crate::error::Result;

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

struct LayerNorms<'a> {
    series: &'a [(String, Vec<f32>)],
    title: &'a str,
}

impl Figure for LayerNorms<'_> {
    fn size(&self) -> (u32, u32) {
        (1000, 620)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
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
        draw_legend(&mut chart, pos, 34)
    }
}

/// `(x, rate, 95 % interval of the rate)`: one point of a [`CurveSeries`].
pub type CurvePoint = (f64, f64, Option<(f64, f64)>);

/// One line of a [`rate_curve`]: a rate (fraction in [0, 1], with its 95 % interval) at each
/// value of a setting, e.g. ASR against the ablation attack's strength.
#[derive(Debug, Clone, PartialEq)]
pub struct CurveSeries {
    pub label: String,
    /// `(x, rate, interval)`, drawn in the given order.
    pub points: Vec<CurvePoint>,
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
        draw_legend(&mut chart, SeriesLabelPosition::UpperLeft, 34)
    }
}

/// A training loss against the optimizer step: the per-step loss as a thin line and its mean
/// over each epoch (`steps_per_epoch` steps) as markers at the epoch's last step.
pub fn loss_curve(
    dir: &Path,
    stem: &str,
    losses: &[f32],
    steps_per_epoch: usize,
    title: &str,
) -> Result<PlotFiles> {
    if losses.is_empty() || steps_per_epoch == 0 {
        return Err(invalid("loss curve: no steps to draw"));
    }
    if let Some((i, v)) = losses.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(invalid(format!("loss curve: step {} has loss {v}", i + 1)));
    }
    render(
        dir,
        stem,
        &LossCurve {
            losses,
            steps_per_epoch,
            title,
        },
    )
}

struct LossCurve<'a> {
    losses: &'a [f32],
    steps_per_epoch: usize,
    title: &'a str,
}

impl Figure for LossCurve<'_> {
    fn size(&self) -> (u32, u32) {
        (1000, 620)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let n = self.losses.len() as f64;
        let (lo, hi) = self
            .losses
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        let (lo, hi) = (f64::from(lo), f64::from(hi));
        let span = if hi > lo { hi - lo } else { hi.abs().max(1.0) };
        let y = (lo - 0.05 * span)..(hi + 0.12 * span);
        let mut chart = chart_2d(root, self.title, (60, 80), 0.5..n + 0.5, y.clone())?;
        let y_dec = tick_decimals(y.start, y.end, 8);
        mesh(&mut chart, "optimizer step", "loss")
            .x_labels(10)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_labels(8)
            .y_label_formatter(&|v| format_tick(*v, y_dec))
            .draw()?;
        let steps: Vec<(f64, f64)> = self
            .losses
            .iter()
            .enumerate()
            .map(|(i, &v)| ((i + 1) as f64, f64::from(v)))
            .collect();
        chart
            .draw_series(LineSeries::new(steps, colour(0).mix(0.45).stroke_width(1)))?
            .label("per step")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], colour(0).mix(0.45)));
        let epochs: Vec<(f64, f64)> = self
            .losses
            .chunks(self.steps_per_epoch)
            .enumerate()
            .map(|(e, c)| {
                let mean = c.iter().map(|&v| f64::from(v)).sum::<f64>() / c.len() as f64;
                ((e * self.steps_per_epoch + c.len()) as f64, mean)
            })
            .collect();
        draw_line(&mut chart, epochs, 1, 5, "epoch mean")?;
        draw_legend(&mut chart, SeriesLabelPosition::UpperRight, 34)
    }
}
