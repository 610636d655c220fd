//! Text for the figures: DejaVu Sans embedded and registered with plotters, and the glyph
//! rasteriser the PNG backend draws text with.

use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::FontStyle;
use plotters_backend::text_anchor::{HPos, VPos};
use plotters_backend::{
    BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingErrorKind,
};

use crate::error::{EvalError, Result};

/// The family every text style here uses; the embedded DejaVu Sans is registered under it.
pub(super) const FAMILY: &str = "sans-serif";

/// The house text style at `size` pixels.
pub(super) fn font(size: u32) -> TextStyle<'static> {
    TextStyle::from((FAMILY, size).into_font())
}

/// Register the embedded DejaVu Sans with plotters once per process.
pub(super) fn ensure_font() -> Result<()> {
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
pub(super) struct Raster<'a>(pub(super) BitMapBackend<'a>);

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
