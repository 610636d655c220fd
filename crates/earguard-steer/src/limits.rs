//! The ranges every steering strength and every stored direction must lie in.
//!
//! A defense adds `coefficient × direction` to the residual stream, and the next RMSNorm
//! squares and sums that stream in f32 (largest value ≈ 3.4e38). A strength of 1e39, NaN, or a
//! direction of 1e30 values overflows there: every later activation is NaN and the model
//! writes nothing — which a keyword judge would count as a refusal. So both are bounded where
//! they are parsed or loaded:
//!
//! - a coefficient (α, β, `coeff`, λ, …) is finite with |x| ≤ [`MAX_COEFFICIENT`] = 1e3;
//! - a direction is finite with root-mean-square entry ≤ [`MAX_DIRECTION_RMS`] = 1e4, i.e.
//!   norm ≤ 1e4·√hidden.
//!
//! Real settings sit far inside (SARSteer's α is 0.1, ActAdd's coefficient a few units, fitted
//! directions have norms of 1–100), while even two coefficients at the bound times a direction
//! at the bound give entries of RMS 1e10, whose squares summed over any real hidden size stay
//! below 1e26: the arithmetic cannot overflow.

use std::ops::RangeInclusive;

use crate::error::{Result, SteerError};

/// The largest |coefficient| accepted for a strength (α, β, `coeff`, λ).
pub const MAX_COEFFICIENT: f64 = 1e3;
/// The largest root-mean-square entry of a direction (its norm over √hidden).
pub const MAX_DIRECTION_RMS: f64 = 1e4;
/// The range of a coefficient: `-MAX_COEFFICIENT..=MAX_COEFFICIENT`.
pub const COEFFICIENT: RangeInclusive<f64> = -MAX_COEFFICIENT..=MAX_COEFFICIENT;

/// `x` if it is finite and inside `range`; otherwise an error naming `what` and the range.
pub fn check_in(what: &str, x: f64, range: RangeInclusive<f64>) -> Result<f64> {
    if x.is_finite() && range.contains(&x) {
        return Ok(x);
    }
    let why = if range == COEFFICIENT && x.is_finite() {
        " (larger strengths overflow the model's f32 activations, and it writes nothing)"
    } else {
        ""
    };
    Err(SteerError::Invalid(format!(
        "{what} = {} is out of range: expected a finite number in [{}, {}]{why}",
        number(x),
        number(*range.start()),
        number(*range.end())
    )))
}

/// `x` as a person writes it: `0.1`, `1000`, `1e39` (not 40 digits).
fn number(x: f64) -> String {
    if x.is_finite() && x != 0.0 && !(1e-4..1e6).contains(&x.abs()) {
        format!("{x:e}")
    } else {
        x.to_string()
    }
}

/// [`check_in`] with the coefficient range.
pub fn coefficient(what: &str, x: f64) -> Result<f64> {
    check_in(what, x, COEFFICIENT)
}

/// Check that a direction's entries are finite and of RMS ≤ [`MAX_DIRECTION_RMS`]; the
/// error names `what` (e.g. "direction of layer 3").
pub fn direction(what: &str, values: &[f32]) -> Result<()> {
    if let Some(i) = values.iter().position(|x| !x.is_finite()) {
        return Err(SteerError::Artifact(format!(
            "{what} has a non-finite value ({}) at index {i}",
            values[i]
        )));
    }
    let sum_sq: f64 = values.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
    let rms = (sum_sq / values.len().max(1) as f64).sqrt();
    if rms > MAX_DIRECTION_RMS {
        return Err(SteerError::Artifact(format!(
            "{what} has norm {:.3e}, above the limit of {MAX_DIRECTION_RMS:e}·√hidden = {:.3e} \
             (root-mean-square entry {rms:.3e} > {MAX_DIRECTION_RMS:e}); a direction that large \
             overflows the model's f32 activations — it is not a real steering vector",
            sum_sq.sqrt(),
            MAX_DIRECTION_RMS * (values.len() as f64).sqrt()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coefficients_are_finite_and_bounded() {
        assert_eq!(coefficient("alpha", 0.1).unwrap(), 0.1);
        assert_eq!(coefficient("alpha", -1e3).unwrap(), -1e3);
        for bad in [1e39, -1e30, f64::NAN, f64::INFINITY, 1000.5] {
            let e = coefficient("alpha", bad).unwrap_err().to_string();
            assert!(e.contains("alpha") && e.contains("out of range"), "{e}");
        }
        assert!(check_in("threshold", 1.5, -1.0..=1.0).is_err());
        let e = coefficient("alpha", 1e39).unwrap_err().to_string();
        assert!(
            e.starts_with(
                "alpha = 1e39 is out of range: expected a finite number in [-1000, 1000]"
            ),
            "{e}"
        );
    }

    #[test]
    fn directions_are_finite_and_sane() {
        direction("d", &[3.0, -4.0]).unwrap();
        direction("d", &[1e4; 16]).unwrap();
        let e = direction("direction of layer 2", &[1e30; 16])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("direction of layer 2") && e.contains("norm"),
            "{e}"
        );
        let e = direction("d", &[1.0, f32::NAN]).unwrap_err().to_string();
        assert!(e.contains("non-finite value (NaN) at index 1"), "{e}");
    }
}
