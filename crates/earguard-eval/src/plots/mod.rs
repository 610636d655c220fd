//! Figures for evaluation reports: plain data in, `<stem>.png` and `<stem>.svg` out.
//!
//! - [`tradeoff`]: ASR (y) against ORR (x) in percent, one labelled point per defense or
//!   setting, Wilson intervals as error bars, the ideal corner marked; a sweep is joined in order.
//! - [`layer_norms`]: the per-layer L2 norm of fitted steering directions, one line per series.
//! - [`rate_curve`]: a rate (e.g. ASR) against a numeric setting, one line per series.
//! - [`pca_scatter`]: last-position representations projected to 2-D (see `earguard_steer::fit::pca_2d`), coloured
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
//!
//! Layout: this file holds the entry points' shared harness (one figure, two backends) and the
//! input checks; [`text`] the embedded font and the glyph rasteriser; [`style`] palette, markers,
//! house chart/mesh/legend and tick labels; one file per figure family: [`tradeoff`],
//! [`lines`] (layer norms, rate curves) and [`scatter`].

use std::path::{Path, PathBuf};

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{EvalError, Result};

mod lines;
mod scatter;
mod style;
mod text;
mod tradeoff;

pub use lines::{layer_norms, loss_curve, rate_curve, CurvePoint, CurveSeries};
pub use scatter::{pca_scatter, ScatterPoint};
pub use tradeoff::{tradeoff, TradeoffPoint};

/// The two files a plot function wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlotFiles {
    pub png: PathBuf,
    pub svg: PathBuf,
}

pub(crate) type DrawResult<DB> =
    std::result::Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;
pub(crate) type Chart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A figure that can draw itself on any plotters backend.
pub(crate) trait Figure {
    /// Canvas size in pixels (the SVG uses the same user units).
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB>;
}

pub(crate) fn render<F: Figure>(dir: &Path, stem: &str, fig: &F) -> Result<PlotFiles> {
    check_stem(stem)?;
    text::ensure_font()?;
    std::fs::create_dir_all(dir).map_err(|e| EvalError::io(dir, e))?;
    let png = dir.join(format!("{stem}.png"));
    let svg = dir.join(format!("{stem}.svg"));
    {
        let root = text::Raster(BitMapBackend::new(&png, fig.size())).into_drawing_area();
        root.fill(&WHITE)
            .and_then(|()| fig.draw(&root))
            .map_err(|e| EvalError::io(&png, format!("could not draw the plot: {e}")))?;
        root.present()
            .map_err(|e| EvalError::io(&png, format!("could not write the plot: {e}")))?;
    }
    {
        let root = SVGBackend::new(&svg, fig.size()).into_drawing_area();
        root.fill(&WHITE)
            .and_then(|()| fig.draw(&root))
            .map_err(|e| EvalError::io(&svg, format!("could not draw the plot: {e}")))?;
        root.present()
            .map_err(|e| EvalError::io(&svg, format!("could not write the plot: {e}")))?;
    }
    Ok(PlotFiles { png, svg })
}

pub(crate) fn check_stem(stem: &str) -> Result<()> {
    if stem.is_empty() || stem == "." || stem == ".." || stem.contains(['/', '\\']) {
        return Err(invalid(format!(
            "plot file stem {stem:?} must be a plain, non-empty file name"
        )));
    }
    Ok(())
}

pub(crate) fn check_rate(who: &str, what: &str, v: f64) -> Result<()> {
    if !v.is_finite() || !(0.0..=1.0).contains(&v) {
        return Err(invalid(format!(
            "{who}: {what} = {v} is not a rate in [0, 1]"
        )));
    }
    Ok(())
}

pub(crate) fn check_interval(who: &str, what: &str, v: f64, (lo, hi): (f64, f64)) -> Result<()> {
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

pub(crate) fn invalid(msg: impl Into<String>) -> EvalError {
    EvalError::Invalid(msg.into())
}
