//! earguard-eval: measure a defense's trade-off — harmful requests refused (ASR down) without
//! benign ones refused (ORR flat) — following SPEC §5.
//!
//! [`runner`] generates responses in batches with resume and shards, [`judge`] decides which
//! responses are refusals, [`judging`] judges any file of responses (and scores judges against
//! human labels; [`trust`] scores a report's judge against people), [`degenerate`] sets apart responses that are neither, [`metrics`]
//! turns verdicts into rates with intervals, and [`report`] writes report.json / report.md with
//! plots.

pub mod degenerate;
pub mod error;
pub mod judge;
pub mod judging;
pub mod metrics;
pub mod plots;

pub use error::{EvalError, Result};
pub mod report;
pub mod runner;
pub mod trust;
pub mod understanding;
