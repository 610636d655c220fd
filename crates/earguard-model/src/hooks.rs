//! Hook points and intervention plans: how callers read and edit the residual stream.
//!
//! Hooks are data, not callbacks: a forward call takes an [`InterventionPlan`] listing edits
//! (add a vector, project out a direction) and captures, each at a [`HookPoint`] and for a
//! [`Positions`] selector. An edit may be *gated*: applied only to the rows a [`Gate`] switched
//! on, a decision the forward pass itself takes from the prompt (CAST's condition), so a plan
//! never depends on the batch and a conditional defense needs no probing pass. An empty plan is
//! checked once per forward call and costs nothing else.
//!
//! ```
//! use earguard_model::hooks::{HookKind, HookPoint, InterventionPlan, Positions};
//! use candle_core::{Device, Tensor};
//! let v = Tensor::zeros(8, candle_core::DType::F32, &Device::Cpu).unwrap();
//! let plan = InterventionPlan::new()
//!     .add(HookKind::ResidPost.at(3), Positions::Last, v)
//!     .capture(HookKind::ResidPost.at(3), Positions::Last);
//! assert_eq!(plan.captures().len(), 1);
//! assert_eq!(
//!     "blocks.3.hook_resid_post".parse::<HookPoint>().unwrap(),
//!     HookPoint::Block { kind: HookKind::ResidPost, layer: 3 }
//! );
//! ```

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// What a hook inside a block reads or edits; with a layer it makes a [`HookPoint`].
///
/// Serialised (and parsed) as its snake_case name, e.g. `resid_post`: the name steering-vector
/// artifacts record and `--hook` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[cfg_attr(feature = "clap", value(rename_all = "snake_case"))]
pub enum HookKind {
    /// Input of block l (the residual stream before it).
    ResidPre,
    /// Attention output of block l, before it is added to the residual stream.
    AttnOut,
    /// The residual stream inside block l, after the attention output is added and before the
    /// MLP reads it (TransformerLens `hook_resid_mid`).
    ResidMid,
    /// MLP output of block l, before it is added to the residual stream.
    MlpOut,
    /// Output of block l (the residual stream after it).
    ResidPost,
}

impl HookKind {
    /// Every kind, in the order a block runs them.
    pub const ALL: [HookKind; 5] = [
        HookKind::ResidPre,
        HookKind::AttnOut,
        HookKind::ResidMid,
        HookKind::MlpOut,
        HookKind::ResidPost,
    ];

    /// `resid_pre`, `attn_out`, `resid_mid`, `mlp_out` or `resid_post`.
    pub fn name(self) -> &'static str {
        match self {
            HookKind::ResidPre => "resid_pre",
            HookKind::AttnOut => "attn_out",
            HookKind::ResidMid => "resid_mid",
            HookKind::MlpOut => "mlp_out",
            HookKind::ResidPost => "resid_post",
        }
    }

    /// This kind's hook point in block `layer`.
    pub fn at(self, layer: usize) -> HookPoint {
        HookPoint::Block { kind: self, layer }
    }
}

impl fmt::Display for HookKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for HookKind {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self> {
        HookKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = HookKind::ALL.iter().map(|k| k.name()).collect();
                ModelError::Invalid(format!(
                    "unknown hook kind '{s}' (expected one of {})",
                    names.join(", ")
                ))
            })
    }
}

/// A place in the forward pass, named as in TransformerLens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HookPoint {
    /// A hook of kind `kind` in block `layer`.
    Block { kind: HookKind, layer: usize },
    /// Output of the final RMSNorm, what the LM head reads.
    FinalNorm,
}

impl HookPoint {
    pub fn layer(&self) -> Option<usize> {
        match *self {
            HookPoint::Block { layer, .. } => Some(layer),
            HookPoint::FinalNorm => None,
        }
    }

    /// The kind of a block's hook point (None for FinalNorm).
    pub fn kind(&self) -> Option<HookKind> {
        match *self {
            HookPoint::Block { kind, .. } => Some(kind),
            HookPoint::FinalNorm => None,
        }
    }
}

impl fmt::Display for HookPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HookPoint::Block { kind, layer } => write!(f, "blocks.{layer}.hook_{kind}"),
            HookPoint::FinalNorm => write!(f, "ln_final.hook_normalized"),
        }
    }
}

impl FromStr for HookPoint {
    type Err = ModelError;

    /// Accepts TransformerLens names (`blocks.5.hook_resid_post`, `ln_final.hook_normalized`)
    /// and short ones (`resid_post.5`, `final_norm`).
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            ModelError::Invalid(format!(
                "unknown hook point '{s}' (expected e.g. blocks.5.hook_resid_post, resid_post.5, \
                 attn_out.5, resid_mid.5, mlp_out.5, resid_pre.5 or final_norm)"
            ))
        };
        if s == "final_norm" || s == "ln_final.hook_normalized" {
            return Ok(HookPoint::FinalNorm);
        }
        let (kind, layer) = if let Some(rest) = s.strip_prefix("blocks.") {
            let (l, hook) = rest.split_once('.').ok_or_else(bad)?;
            (hook.strip_prefix("hook_").ok_or_else(bad)?, l)
        } else {
            s.split_once('.').ok_or_else(bad)?
        };
        let layer: usize = layer.parse().map_err(|_| bad())?;
        Ok(kind.parse::<HookKind>().map_err(|_| bad())?.at(layer))
    }
}

impl Serialize for HookPoint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HookPoint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Which sequence positions of a forward call an edit or capture touches.
///
/// "Prompt" is what the first forward call on an empty cache fed in; everything after is
/// "generated". Ranges count tokens of each row from its first real (non-padding) token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Positions {
    /// The last position of every forward call (the last prompt token at prefill, then each
    /// new token).
    Last,
    All,
    PromptOnly,
    GeneratedOnly,
    /// Token indices `start..end` of each row.
    Range {
        start: usize,
        end: usize,
    },
}

impl FromStr for Positions {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "last" => Ok(Positions::Last),
            "all" => Ok(Positions::All),
            "prompt" | "prompt-only" | "prompt_only" => Ok(Positions::PromptOnly),
            "generated" | "generated-only" | "generated_only" => Ok(Positions::GeneratedOnly),
            _ => {
                let bad = || {
                    ModelError::Invalid(format!(
                        "unknown positions '{s}' (last, all, prompt-only, generated-only, START..END)"
                    ))
                };
                let (a, b) = s.split_once("..").ok_or_else(bad)?;
                let start = a.parse().map_err(|_| bad())?;
                let end = b.parse().map_err(|_| bad())?;
                if end <= start {
                    return Err(bad());
                }
                Ok(Positions::Range { start, end })
            }
        }
    }
}

/// What an edit does to the hidden state `x` at the selected positions.
#[derive(Debug, Clone)]
pub enum Edit {
    /// `x ← x + c·v`.
    Add(Tensor),
    /// `x ← x − c·s·(x·r̂) r̂` with r̂ the unit direction and `s` the strength (c = s = 1
    /// removes the component; s = 0.5 halves it).
    ProjectOut { unit: Tensor, strength: f64 },
}

#[derive(Debug, Clone)]
pub struct Intervention {
    pub point: HookPoint,
    pub positions: Positions,
    pub edit: Edit,
    /// Apply only to the rows the plan's [`Gate`] switched on (and, at the prompt's forward
    /// call, only at points the forward reaches after the gate has decided).
    pub gated: bool,
}

/// A per-row switch the forward pass decides for itself: on the first forward call of a
/// sequence (the prompt, on an empty cache), when the forward reaches `point`, a row is
/// switched on when the cosine similarity between its last prompt position's hidden state (as
/// it arrives at `point`, before that point's edits) and `unit` exceeds `threshold`. The
/// decision is kept in the [`KvCache`](crate::KvCache) for the rest of the sequence and drives
/// every gated edit.
///
/// This is CAST's rule as its reference implementation runs it (IBM activation-steering,
/// `LeashLayer`, "last" comparison mode): the condition is read once, on the prompt, inside
/// the same pass; behaviour edits at points the prompt's pass reaches before the condition
/// layer steer only the generated tokens.
#[derive(Debug, Clone)]
pub struct Gate {
    pub point: HookPoint,
    /// Unit direction (normalised by [`InterventionPlan::gate`]).
    pub unit: Tensor,
    pub threshold: f32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capture {
    pub point: HookPoint,
    pub positions: Positions,
}

#[derive(Debug, Clone, Default)]
pub struct InterventionPlan {
    edits: Vec<Intervention>,
    captures: Vec<Capture>,
    gates: Vec<Gate>,
}

impl InterventionPlan {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.edits.is_empty() && self.captures.is_empty() && self.gates.is_empty()
    }

    pub fn edits(&self) -> &[Intervention] {
        &self.edits
    }

    pub fn captures(&self) -> &[Capture] {
        &self.captures
    }

    /// The gate gated edits follow, if the plan has one.
    pub fn gate_of(&self) -> Option<&Gate> {
        self.gates.first()
    }

    /// Set the plan's gate (`direction` is normalised here; `threshold` is a cosine, in
    /// [-1, 1]). A plan holds one gate: [`Self::validate`] refuses a second.
    pub fn gate(mut self, point: HookPoint, direction: &Tensor, threshold: f32) -> Result<Self> {
        if !(-1.0..=1.0).contains(&threshold) {
            return Err(ModelError::Invalid(format!(
                "gate threshold {threshold} at {point} is not a cosine in [-1, 1]"
            )));
        }
        let unit = unit(direction, point)?;
        self.gates.push(Gate {
            point,
            unit,
            threshold,
        });
        Ok(self)
    }

    pub fn push(&mut self, edit: Intervention) {
        self.edits.push(edit);
    }

    pub fn add(mut self, point: HookPoint, positions: Positions, vector: Tensor) -> Self {
        self.edits.push(Intervention {
            point,
            positions,
            edit: Edit::Add(vector),
            gated: false,
        });
        self
    }

    /// Project `direction` (normalised here) out of the hidden state.
    pub fn project_out(
        self,
        point: HookPoint,
        positions: Positions,
        direction: &Tensor,
    ) -> Result<Self> {
        self.project_out_fraction(point, positions, direction, 1.0)
    }

    /// Remove the fraction `strength` (in [0, 1]) of the hidden state's component along
    /// `direction` (normalised here).
    pub fn project_out_fraction(
        mut self,
        point: HookPoint,
        positions: Positions,
        direction: &Tensor,
        strength: f64,
    ) -> Result<Self> {
        if !(0.0..=1.0).contains(&strength) {
            return Err(ModelError::Invalid(format!(
                "projection strength {strength} at {point} is outside [0, 1]"
            )));
        }
        let unit = unit(direction, point)?;
        self.edits.push(Intervention {
            point,
            positions,
            edit: Edit::ProjectOut { unit, strength },
            gated: false,
        });
        Ok(self)
    }

    pub fn capture(mut self, point: HookPoint, positions: Positions) -> Self {
        self.captures.push(Capture { point, positions });
        self
    }

    /// Append every edit, capture and gate of `other`.
    pub fn extend(mut self, other: InterventionPlan) -> Self {
        self.edits.extend(other.edits);
        self.captures.extend(other.captures);
        self.gates.extend(other.gates);
        self
    }

    /// Check every edit against the model's shape before any forward work is done.
    pub fn validate(&self, n_layers: usize, hidden: usize) -> Result<()> {
        let check_point = |p: &HookPoint| match p.layer() {
            Some(l) if l >= n_layers => Err(ModelError::Shape(format!(
                "hook point {p} is past the model's last layer {}",
                n_layers - 1
            ))),
            _ => Ok(()),
        };
        for e in &self.edits {
            check_point(&e.point)?;
            let v = match &e.edit {
                Edit::Add(v) | Edit::ProjectOut { unit: v, .. } => v,
            };
            if v.dims() != [hidden] {
                return Err(ModelError::Shape(format!(
                    "edit at {} has shape {:?}, the model's hidden size is {hidden}",
                    e.point,
                    v.dims()
                )));
            }
            if e.gated && self.gates.is_empty() {
                return Err(ModelError::Invalid(format!(
                    "edit at {} is gated but the plan has no gate",
                    e.point
                )));
            }
        }
        for c in &self.captures {
            check_point(&c.point)?;
        }
        if self.gates.len() > 1 {
            return Err(ModelError::Invalid(format!(
                "a plan holds one gate, this one has {} (stack at most one conditional defense)",
                self.gates.len()
            )));
        }
        for g in &self.gates {
            check_point(&g.point)?;
            if g.unit.dims() != [hidden] {
                return Err(ModelError::Shape(format!(
                    "gate at {} has shape {:?}, the model's hidden size is {hidden}",
                    g.point,
                    g.unit.dims()
                )));
            }
        }
        Ok(())
    }
}

/// `direction / |direction|`, refusing a zero or non-finite norm.
fn unit(direction: &Tensor, point: HookPoint) -> Result<Tensor> {
    let norm = direction
        .to_dtype(DType::F32)?
        .sqr()?
        .sum_all()?
        .sqrt()?
        .to_scalar::<f32>()?;
    if !norm.is_finite() || norm == 0.0 {
        return Err(ModelError::Invalid(format!(
            "cannot use a direction of norm {norm} at {point}"
        )));
    }
    Ok((direction / f64::from(norm))?)
}

/// Where one forward call sits in its sequences: what position selectors need to know.
#[derive(Debug, Clone)]
pub(crate) struct StepLayout {
    /// Batch size and number of new positions in this call.
    pub batch: usize,
    pub seq: usize,
    /// Column (in the padded timeline) of this call's first position.
    pub start: usize,
    /// Columns below this are prompt.
    pub prompt_end: usize,
    /// Left padding of each row.
    pub pad: Vec<usize>,
}

impl StepLayout {
    /// 0/1 weights `[batch, seq, 1]` for a selector, over the rows switched on (all when
    /// `rows` is None); None when the selector touches nothing in this call.
    pub fn weights(
        &self,
        positions: Positions,
        rows: Option<&[bool]>,
        device: &Device,
    ) -> Result<Option<Tensor>> {
        let (b, q) = (self.batch, self.seq);
        let mut w = vec![0f32; b * q];
        let mut any = false;
        for row in 0..b {
            if rows.is_some_and(|r| !r[row]) {
                continue;
            }
            for i in 0..q {
                let col = self.start + i;
                let on = match positions {
                    Positions::Last => i == q - 1,
                    Positions::All => col >= self.pad[row],
                    Positions::PromptOnly => col < self.prompt_end && col >= self.pad[row],
                    Positions::GeneratedOnly => col >= self.prompt_end,
                    Positions::Range { start, end } => {
                        let tok = col.checked_sub(self.pad[row]);
                        tok.is_some_and(|t| t >= start && t < end)
                    }
                };
                if on {
                    w[row * q + i] = 1.0;
                    any = true;
                }
            }
        }
        if !any {
            return Ok(None);
        }
        Ok(Some(Tensor::from_vec(w, (b, q, 1), device)?))
    }
}

/// Decide the gate at `point` if the plan's gate sits there and the sequence has not decided
/// it yet (the prompt's forward call), apply every edit of `plan` at `point` to `x`
/// (`[batch, seq, hidden]`), then record captures. `gate` is the sequence's decision, one flag
/// per row, kept by the cache between calls.
pub(crate) fn run_hooks(
    plan: &InterventionPlan,
    point: HookPoint,
    layout: &StepLayout,
    x: Tensor,
    gate: &mut Option<Vec<bool>>,
    captured: &mut Vec<(HookPoint, Tensor)>,
) -> Result<Tensor> {
    let _span = tracing::trace_span!("hooks", %point).entered();
    if let Some(g) = plan.gates.iter().find(|g| g.point == point) {
        if gate.is_none() && layout.start == 0 {
            *gate = Some(decide(g, &x)?);
        }
    }
    let mut x = x;
    for e in plan.edits.iter().filter(|e| e.point == point) {
        let rows = match (e.gated, gate.as_deref()) {
            (false, _) => None,
            (true, Some(rows)) => Some(rows),
            // Not decided yet: the prompt's pass has not reached the gate.
            (true, None) => continue,
        };
        let Some(w) = layout.weights(e.positions, rows, x.device())? else {
            continue;
        };
        x = match &e.edit {
            Edit::Add(v) => {
                // Edits are built on the CPU; the residual stream may live elsewhere.
                let v = v
                    .to_device(x.device())?
                    .to_dtype(x.dtype())?
                    .reshape((1, 1, ()))?;
                (&x + w.broadcast_mul(&v)?)?
            }
            Edit::ProjectOut { unit, strength } => {
                let r = unit.to_device(x.device())?.to_dtype(x.dtype())?;
                // s·(x·r̂) for every position: [b, q, 1]
                let coef = (x
                    .broadcast_mul(&r.reshape((1, 1, ()))?)?
                    .sum_keepdim(D::Minus1)?
                    * *strength)?;
                (&x - (coef * w)?.broadcast_mul(&r.reshape((1, 1, ()))?)?)?
            }
        };
    }
    for c in plan.captures.iter().filter(|c| c.point == point) {
        if let Some(t) = select_capture(c.positions, layout, &x)? {
            captured.push((point, t));
        }
    }
    Ok(x)
}

/// Which rows switch the gate on: cosine(x at the last position, unit) > threshold.
fn decide(gate: &Gate, x: &Tensor) -> Result<Vec<bool>> {
    let q = x.dim(1)?;
    let h = x.narrow(1, q - 1, 1)?.squeeze(1)?.to_dtype(DType::F32)?;
    let u = gate.unit.to_device(h.device())?.to_dtype(DType::F32)?;
    let dot = h.matmul(&u.unsqueeze(1)?)?.squeeze(1)?;
    let norm = h.sqr()?.sum(1)?.sqrt()?;
    let cos = (dot / norm)?.to_vec1::<f32>()?;
    tracing::debug!(point = %gate.point, ?cos, threshold = gate.threshold, "gate");
    Ok(cos.into_iter().map(|c| c > gate.threshold).collect())
}

/// The captured slice: `[batch, hidden]` for `Last`, `[batch, n, hidden]` otherwise (padding
/// and unselected positions are zeroed so rows stay aligned).
fn select_capture(positions: Positions, layout: &StepLayout, x: &Tensor) -> Result<Option<Tensor>> {
    if positions == Positions::Last {
        return Ok(Some(
            x.narrow(1, layout.seq - 1, 1)?.squeeze(1)?.contiguous()?,
        ));
    }
    match layout.weights(positions, None, x.device())? {
        None => Ok(None),
        Some(w) => Ok(Some(x.broadcast_mul(&w.to_dtype(x.dtype())?)?)),
    }
}

/// Captures made during one forward call, in the order they happened.
#[derive(Debug, Clone, Default)]
pub struct Captures {
    pub items: Vec<(HookPoint, Tensor)>,
}

impl Captures {
    pub fn get(&self, point: HookPoint) -> Option<&Tensor> {
        self.items.iter().find(|(p, _)| *p == point).map(|(_, t)| t)
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// `[hidden]` zeros, handy for no-op edits in tests and defaults.
pub fn zeros(hidden: usize) -> Result<Tensor> {
    Ok(Tensor::zeros(hidden, DType::F32, &Device::Cpu)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_names_round_trip() {
        for p in [
            HookKind::ResidPre.at(0),
            HookKind::AttnOut.at(7),
            HookKind::ResidMid.at(3),
            HookKind::MlpOut.at(2),
            HookKind::ResidPost.at(27),
            HookPoint::FinalNorm,
        ] {
            assert_eq!(p.to_string().parse::<HookPoint>().unwrap(), p);
        }
        assert_eq!(
            "mlp_out.4".parse::<HookPoint>().unwrap(),
            HookKind::MlpOut.at(4)
        );
        assert!("blocks.x.hook_resid_post".parse::<HookPoint>().is_err());
        assert!("resid_side.3".parse::<HookPoint>().is_err());
        assert!("final_norm.3".parse::<HookPoint>().is_err());
    }

    /// A kind is named the same way by its Display, FromStr and serde (the name artifacts
    /// record), and names its hook points.
    #[test]
    fn hook_kinds_round_trip() {
        for kind in HookKind::ALL {
            let name = kind.to_string();
            assert_eq!(name.parse::<HookKind>().unwrap(), kind);
            assert_eq!(serde_json::to_value(kind).unwrap(), name.as_str());
            assert_eq!(
                serde_json::from_value::<HookKind>(name.clone().into()).unwrap(),
                kind
            );
            let point = kind.at(4);
            assert_eq!((point.kind(), point.layer()), (Some(kind), Some(4)));
            assert_eq!(point.to_string(), format!("blocks.4.hook_{name}"));
        }
        assert_eq!(HookPoint::FinalNorm.kind(), None);
        let e = "final_norm".parse::<HookKind>().unwrap_err().to_string();
        assert!(
            e.contains("resid_pre, attn_out, resid_mid, mlp_out, resid_post"),
            "{e}"
        );
    }

    #[test]
    fn positions_select_the_right_columns() {
        // Two rows, row 1 left-padded by 2; prefill of 4 columns.
        let layout = StepLayout {
            batch: 2,
            seq: 4,
            start: 0,
            prompt_end: 4,
            pad: vec![0, 2],
        };
        let w = |p| {
            layout
                .weights(p, None, &Device::Cpu)
                .unwrap()
                .map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        };
        assert_eq!(
            w(Positions::Last).unwrap(),
            [0., 0., 0., 1., 0., 0., 0., 1.]
        );
        assert_eq!(w(Positions::All).unwrap(), [1., 1., 1., 1., 0., 0., 1., 1.]);
        assert_eq!(
            w(Positions::Range { start: 1, end: 2 }).unwrap(),
            [0., 1., 0., 0., 0., 0., 0., 1.]
        );
        assert!(w(Positions::GeneratedOnly).is_none());
        let decode = StepLayout {
            batch: 2,
            seq: 1,
            start: 4,
            prompt_end: 4,
            pad: vec![0, 2],
        };
        let some = decode.weights(Positions::GeneratedOnly, Some(&[false, true]), &Device::Cpu);
        assert_eq!(
            some.unwrap()
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            [0., 1.]
        );
    }

    #[test]
    fn project_out_removes_the_component() {
        let layout = StepLayout {
            batch: 1,
            seq: 1,
            start: 0,
            prompt_end: 1,
            pad: vec![0],
        };
        let x = Tensor::new(&[[[3f32, 4.0]]], &Device::Cpu).unwrap();
        let dir = Tensor::new(&[0f32, 2.0], &Device::Cpu).unwrap();
        let plan = InterventionPlan::new()
            .project_out(HookKind::ResidPost.at(0), Positions::All, &dir)
            .unwrap();
        let mut cap = vec![];
        let y = run_hooks(
            &plan,
            HookKind::ResidPost.at(0),
            &layout,
            x,
            &mut None,
            &mut cap,
        )
        .unwrap();
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            [3.0, 0.0]
        );
    }

    /// The gate decides per row at the prompt's call, from the hidden state as it arrives;
    /// gated edits follow it then and in later calls; an edit the prompt's pass reaches before
    /// the gate waits for the next call.
    #[test]
    fn a_gate_switches_rows_inside_the_pass() {
        let dev = Device::Cpu;
        let (before, at) = (HookKind::ResidPre.at(0), HookKind::ResidPost.at(0));
        let one = Tensor::new(&[0f32, 1.0], &dev).unwrap();
        let gated = |point| Intervention {
            point,
            positions: Positions::Last,
            edit: Edit::Add(Tensor::new(&[10f32, 0.0], &dev).unwrap()),
            gated: true,
        };
        let mut plan = InterventionPlan::new()
            .gate(at, &(&one * 3.0).unwrap(), 0.5)
            .unwrap();
        plan.push(gated(at));
        plan.push(gated(before));
        plan.validate(1, 2).unwrap();
        let prompt = StepLayout {
            batch: 2,
            seq: 2,
            start: 0,
            prompt_end: 2,
            pad: vec![0, 0],
        };
        // Row 0's last position points along the gate (cos 1), row 1's away from it (cos 0).
        let x = Tensor::new(&[[[1f32, 1.0], [0.0, 2.0]], [[1.0, 1.0], [2.0, 0.0]]], &dev).unwrap();
        let (mut gate, mut cap) = (None, vec![]);
        let y = run_hooks(&plan, before, &prompt, x.clone(), &mut gate, &mut cap).unwrap();
        assert_eq!(gate, None);
        assert_eq!(y.to_vec3::<f32>().unwrap(), x.to_vec3::<f32>().unwrap());
        let y = run_hooks(&plan, at, &prompt, x, &mut gate, &mut cap).unwrap();
        assert_eq!(gate, Some(vec![true, false]));
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            [1., 1., 10., 2., 1., 1., 2., 0.]
        );
        // A later call keeps the decision (the gate is not re-read) and both edits follow it.
        let step = StepLayout {
            start: 2,
            seq: 1,
            ..prompt
        };
        let x = Tensor::new(&[[[0f32, 0.0]], [[0.0, 5.0]]], &dev).unwrap();
        let y = run_hooks(&plan, before, &step, x, &mut gate, &mut cap).unwrap();
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            [10., 0., 0., 5.]
        );
        // Gated edits need a gate; a plan holds one.
        let mut lone = InterventionPlan::new();
        lone.push(gated(at));
        assert!(lone
            .validate(1, 2)
            .unwrap_err()
            .to_string()
            .contains("no gate"));
        let two = plan.clone().extend(plan);
        assert!(two
            .validate(1, 2)
            .unwrap_err()
            .to_string()
            .contains("one gate"));
    }

    #[test]
    fn bad_plans_are_refused() {
        let v = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
        let plan =
            InterventionPlan::new().add(HookKind::ResidPost.at(1), Positions::Last, v.clone());
        assert!(plan
            .validate(2, 4)
            .unwrap_err()
            .to_string()
            .contains("hidden size is 4"));
        let plan = InterventionPlan::new().add(HookKind::ResidPost.at(5), Positions::Last, v);
        assert!(plan
            .validate(2, 3)
            .unwrap_err()
            .to_string()
            .contains("past the model's last"));
        let zero = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
        assert!(InterventionPlan::new()
            .project_out(HookKind::ResidPost.at(0), Positions::All, &zero)
            .is_err());
    }
}
