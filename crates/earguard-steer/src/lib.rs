//! earguard-steer: activation capture, direction fitting, defenses and steering-vector artifacts.

pub mod error;

pub use error::{Result, SteerError};
