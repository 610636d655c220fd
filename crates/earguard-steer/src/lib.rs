//! earguard-steer: activation capture, direction fitting, defenses and steering-vector artifacts.
