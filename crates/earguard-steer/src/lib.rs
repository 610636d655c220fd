//! earguard-steer: activation capture, direction fitting, defenses and steering-vector artifacts.
//!
//! The pipeline: [`inputs`] turns a prompt item into a conversation for a mode; [`capture`]
//! records last-position activations over a prompt set; [`fit`] turns them into directions;
//! [`artifact`] saves and checks them; [`defense`] applies them at inference time.

pub mod artifact;
pub mod capture;
pub mod defense;
pub mod error;
pub mod fit;
pub mod inputs;
pub mod limits;
pub mod llamacpp;
pub mod pipeline;

pub use error::{Result, SteerError};
