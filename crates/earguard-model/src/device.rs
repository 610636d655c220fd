//! Where a model runs: `cpu`, `cuda[:N]` or `metal[:N]`, as the user names it.
//!
//! CUDA and Metal come from candle's backends, compiled in by this crate's `cuda` / `metal`
//! cargo features (the `earguard` binary forwards its own). A build without the backend a name
//! asks for refuses it with the feature to build with, rather than failing later in a kernel.

use candle_core::Device;

use crate::error::{ModelError, Result};

/// The names [`parse`] accepts, for help texts.
pub const DEVICE_NAMES: &str = "cpu, cuda[:N], metal[:N]";

/// A device named `cpu`, `cuda`, `cuda:N`, `metal` or `metal:N` (ordinal N, default 0).
pub fn parse(name: &str) -> Result<Device> {
    let name = name.trim();
    let (kind, ordinal) = match name.split_once(':') {
        Some((k, n)) => {
            let n: usize = n.parse().map_err(|_| {
                ModelError::Invalid(format!(
                    "device '{name}': '{n}' is not a device number (expected {DEVICE_NAMES})"
                ))
            })?;
            (k, Some(n))
        }
        None => (name, None),
    };
    let missing = |feature: &str| {
        ModelError::Invalid(format!(
            "device '{name}': this build of earguard has no {feature} support; rebuild with \
             `cargo build --release --features {feature}` (CPU works everywhere: --device cpu)"
        ))
    };
    match kind.to_ascii_lowercase().as_str() {
        "cpu" if ordinal.is_none() => Ok(Device::Cpu),
        "cuda" if !candle_core::utils::cuda_is_available() => Err(missing("cuda")),
        "cuda" => Ok(Device::new_cuda(ordinal.unwrap_or(0)).map_err(|e| {
            ModelError::Invalid(format!("device '{name}': cannot open the CUDA device: {e}"))
        })?),
        "metal" if !candle_core::utils::metal_is_available() => Err(missing("metal")),
        "metal" => Ok(Device::new_metal(ordinal.unwrap_or(0)).map_err(|e| {
            ModelError::Invalid(format!(
                "device '{name}': cannot open the Metal device: {e}"
            ))
        })?),
        _ => Err(ModelError::Invalid(format!(
            "unknown device '{name}' (expected {DEVICE_NAMES})"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_parses_and_bad_names_are_refused() {
        assert!(parse("cpu").unwrap().is_cpu());
        assert!(parse(" CPU ").unwrap().is_cpu());
        for bad in ["gpu", "cpu:1", "cuda:x", "cuda:-1", "", "metal:"] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains("device"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_backend_this_build_lacks_names_the_feature() {
        if !candle_core::utils::cuda_is_available() {
            let e = parse("cuda:0").unwrap_err().to_string();
            assert!(
                e.contains("no cuda support") && e.contains("--features cuda"),
                "{e}"
            );
        }
        if !candle_core::utils::metal_is_available() {
            let e = parse("metal").unwrap_err().to_string();
            assert!(
                e.contains("no metal support") && e.contains("--features metal"),
                "{e}"
            );
        }
    }
}
