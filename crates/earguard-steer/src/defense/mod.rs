//! Defenses: one trait, one file per defense, selected by a spec string.
//!
//! A defense may rewrite the conversation before it is templated (prompt defenses) and may
//! return an intervention plan for each batch (steering, ablation, conditional steering).
//!
//! Spec grammar: `NAME[=ARTIFACT][:key=value,...]`, several joined with `+` (applied in order):
//!
//! | name | artifact | options |
//! |---|---|---|
//! | `none` | – | – |
//! | `prompt` | – | `variant=system\|prefix\|suffix\|adashield` |
//! | `sarsteer` | steering vector dir | `alpha=0.1`, `layers=0-27`, `beta=1.0`, `positions=last`, `normalize=false` |
//! | `text-steer` | a SARSteer fit made on text-only inputs | as sarsteer |
//! | `actadd` | refusal-direction dir | `layer=L`, `coeff=1.0` |
//! | `ablate` | refusal-direction dir | `layer=L`, `strength=1` (fraction of r̂ removed, in [0, 1]) |
//! | `cast` | cast dir (`earguard fit cast`) | `alpha=…`, `threshold=…` |
//! | `safecode` | – | `variant=paper\|reference`, `alpha=0.3`, `steps=5`, `top_k=20`, `boost=1`, `suppress=1`, `sigma=0.1` (text) or `snr=10` (audio, dB), `seed=0`, `judge=self\|MODEL`, `threshold=0`, `sampling=greedy\|reference` |
//!
//! An option is given at most once. Lists inside a value are separated by `|`
//! (`layers=3|5|7`, `layers=0-3|10-12`, `beta=1|0.5|1`), since `,` separates options. `layers`
//! takes single layers and inclusive ranges `a-b`; an empty list is an error. Numeric strengths
//! (`alpha`, `beta`, `coeff`) must be finite with magnitude at most 1e3 and `threshold` (a
//! cosine) in [-1, 1]; see [`crate::limits`] for why.
//!
//! Each name is a [`DefenseKind`], which declares the options it takes; a spec is checked
//! against them when it is parsed (and again when built, for specs made as values).
//!
//! ```
//! use earguard_steer::defense::{DefenseKind, DefensePart, DefenseSpec};
//! let spec: DefenseSpec = "ablate=vec/rd+sarsteer=vec/sar:alpha=0.2".parse().unwrap();
//! assert_eq!(spec.parts.len(), 2);
//! assert_eq!(spec.parts[1].kind, DefenseKind::Sarsteer);
//! assert_eq!(spec.parts[1].option_f64("alpha").unwrap(), Some(0.2));
//! // The same spec built as values.
//! let built = DefenseSpec {
//!     parts: vec![
//!         DefensePart::new(DefenseKind::Ablate, Some("vec/rd".into())),
//!         DefensePart::new(DefenseKind::Sarsteer, Some("vec/sar".into())).with("alpha", 0.2),
//!     ],
//! };
//! assert_eq!(built, spec);
//! ```

mod ablate;
mod actadd;
pub mod calibration;
mod cast;
mod prompt;
pub mod safecode;
mod sarsteer;

use std::fmt;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::str::FromStr;

use earguard_model::chat::ChatMessage;
use earguard_model::{InterventionPlan, Model};

use crate::error::{Result, SteerError};

pub use ablate::Ablate;
pub use actadd::ActAdd;
pub use cast::Cast;
pub use prompt::{SafetyPrompt, PROMPT_VARIANTS};
pub use safecode::{GuidedBatch, GuidedInput, SafeCode, ScoredVerdict, Variant, Verdict};
pub use sarsteer::{SarSteer, DEFAULT_ALPHA as SARSTEER_DEFAULT_ALPHA};

pub trait Defense: Send + Sync {
    /// The spec that recreates this defense (for reports and results).
    fn describe(&self) -> String;

    /// Rewrite the conversation before the chat template (prompt defenses).
    fn rewrite(&self, messages: Vec<ChatMessage>) -> Vec<ChatMessage> {
        messages
    }

    /// The plan applied to every forward call. It does not depend on the batch (a condition on
    /// the prompt, as CAST's, is a [`earguard_model::hooks::Gate`] the forward pass decides
    /// itself), so a run builds it once.
    fn plan(&self) -> Result<InterventionPlan> {
        Ok(InterventionPlan::new())
    }

    /// The decoding-time part of this defense, if it has one (SafeCoDe): generation then runs
    /// through [`SafeCode::generate`] instead of plain sampling.
    fn safecode(&self) -> Option<&SafeCode> {
        None
    }
}

/// No defense.
pub struct NoDefense;

impl Defense for NoDefense {
    fn describe(&self) -> String {
        "none".into()
    }
}

/// Several defenses applied in order (e.g. `ablate+sarsteer`: the attack, then the defense).
pub struct Stack(pub Vec<Box<dyn Defense>>);

impl Defense for Stack {
    fn describe(&self) -> String {
        self.0
            .iter()
            .map(|d| d.describe())
            .collect::<Vec<_>>()
            .join("+")
    }

    fn rewrite(&self, messages: Vec<ChatMessage>) -> Vec<ChatMessage> {
        self.0.iter().fold(messages, |m, d| d.rewrite(m))
    }

    fn plan(&self) -> Result<InterventionPlan> {
        let mut plan = InterventionPlan::new();
        for d in &self.0 {
            plan = plan.extend(d.plan()?);
        }
        Ok(plan)
    }

    fn safecode(&self) -> Option<&SafeCode> {
        self.0.iter().find_map(|d| d.safecode())
    }
}

/// The defenses a spec can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DefenseKind {
    None,
    Prompt,
    Sarsteer,
    TextSteer,
    Actadd,
    Ablate,
    Cast,
    Safecode,
}

impl DefenseKind {
    pub const ALL: [DefenseKind; 8] = [
        DefenseKind::None,
        DefenseKind::Prompt,
        DefenseKind::Sarsteer,
        DefenseKind::TextSteer,
        DefenseKind::Actadd,
        DefenseKind::Ablate,
        DefenseKind::Cast,
        DefenseKind::Safecode,
    ];

    /// The name a spec uses.
    pub fn name(self) -> &'static str {
        match self {
            DefenseKind::None => "none",
            DefenseKind::Prompt => "prompt",
            DefenseKind::Sarsteer => "sarsteer",
            DefenseKind::TextSteer => "text-steer",
            DefenseKind::Actadd => "actadd",
            DefenseKind::Ablate => "ablate",
            DefenseKind::Cast => "cast",
            DefenseKind::Safecode => "safecode",
        }
    }

    /// The options its part of a spec may set.
    pub fn options(self) -> &'static [&'static str] {
        match self {
            DefenseKind::None => &[],
            DefenseKind::Prompt => &["variant"],
            DefenseKind::Sarsteer | DefenseKind::TextSteer => {
                &["alpha", "layers", "beta", "positions", "normalize"]
            }
            DefenseKind::Actadd => &["layer", "coeff"],
            DefenseKind::Ablate => &["layer", "strength"],
            DefenseKind::Cast => &["alpha", "threshold"],
            DefenseKind::Safecode => &[
                "variant",
                "alpha",
                "steps",
                "top_k",
                "boost",
                "suppress",
                "sigma",
                "snr",
                "seed",
                "judge",
                "threshold",
                "calibration",
                "sampling",
            ],
        }
    }

    pub fn takes(self, option: &str) -> bool {
        self.options().contains(&option)
    }

    /// Does it add to the residual stream (so the ablation attack must come before it)?
    fn steers(self) -> bool {
        matches!(
            self,
            DefenseKind::Sarsteer
                | DefenseKind::TextSteer
                | DefenseKind::Actadd
                | DefenseKind::Cast
        )
    }
}

impl fmt::Display for DefenseKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DefenseKind {
    type Err = SteerError;

    fn from_str(s: &str) -> Result<Self> {
        DefenseKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = DefenseKind::ALL.iter().map(|k| k.name()).collect();
                SteerError::Invalid(format!(
                    "unknown defense '{s}' (known: {})",
                    names.join(", ")
                ))
            })
    }
}

/// One component of a spec: `NAME[=ARTIFACT][:key=value,...]`.
#[derive(Debug, Clone, PartialEq)]
pub struct DefensePart {
    pub kind: DefenseKind,
    pub artifact: Option<PathBuf>,
    pub options: Vec<(String, String)>,
}

impl DefensePart {
    /// A part with no options.
    pub fn new(kind: DefenseKind, artifact: Option<PathBuf>) -> Self {
        Self {
            kind,
            artifact,
            options: Vec::new(),
        }
    }

    /// This part with option `key` set to `value` (replacing an earlier value).
    pub fn with(mut self, key: &str, value: impl fmt::Display) -> Self {
        self.options.retain(|(k, _)| k != key);
        self.options.push((key.to_string(), value.to_string()));
        self
    }

    pub fn option(&self, key: &str) -> Option<&str> {
        self.options
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A real option, a coefficient within [`crate::limits::COEFFICIENT`] (|x| ≤ 1e3).
    pub fn option_f64(&self, key: &str) -> Result<Option<f64>> {
        self.option_f64_in(key, crate::limits::COEFFICIENT)
    }

    /// A real option that must be finite and inside `range`.
    pub fn option_f64_in(&self, key: &str, range: RangeInclusive<f64>) -> Result<Option<f64>> {
        self.option(key)
            .map(|v| {
                let x = v.parse::<f64>().map_err(|_| {
                    SteerError::Invalid(format!("{}: option {key}={v} is not a number", self.kind))
                })?;
                crate::limits::check_in(&format!("{}: option {key}", self.kind), x, range)
            })
            .transpose()
    }

    /// A list of coefficients separated by `|` (e.g. `beta=1|0.5|1`), each checked like
    /// [`option_f64`](Self::option_f64).
    pub fn option_f64_list(&self, key: &str) -> Result<Option<Vec<f64>>> {
        self.option(key)
            .map(|v| {
                v.split(LIST_SEPARATOR)
                    .map(|x| {
                        let n = x.trim().parse::<f64>().map_err(|_| {
                            SteerError::Invalid(format!(
                                "{}: option {key}={v}: '{x}' is not a number (expected numbers \
                                 separated by {LIST_SEPARATOR}, e.g. 1|0.5|1)",
                                self.kind
                            ))
                        })?;
                        crate::limits::coefficient(&format!("{}: option {key}", self.kind), n)
                    })
                    .collect()
            })
            .transpose()
    }

    /// A yes/no option: `true`/`false` (also `1`/`0`, `yes`/`no`).
    pub fn option_bool(&self, key: &str) -> Result<Option<bool>> {
        self.option(key)
            .map(|v| match v {
                "true" | "1" | "yes" => Ok(true),
                "false" | "0" | "no" => Ok(false),
                _ => Err(SteerError::Invalid(format!(
                    "{}: option {key}={v} must be true or false",
                    self.kind
                ))),
            })
            .transpose()
    }

    pub fn option_usize(&self, key: &str) -> Result<Option<usize>> {
        self.option(key)
            .map(|v| {
                v.parse::<usize>().map_err(|_| {
                    SteerError::Invalid(format!(
                        "{}: option {key}={v} is not a whole number",
                        self.kind
                    ))
                })
            })
            .transpose()
    }

    /// Refuse options this defense does not take, so a typo never silently does nothing.
    fn check_options(&self) -> Result<()> {
        // What the spec grammar splits on cannot be inside what it splits: a part built as a
        // value must print as a spec that parses back to it.
        if let Some(a) = &self.artifact {
            if a.to_string_lossy().contains(['+', ':']) {
                return Err(SteerError::Invalid(format!(
                    "{}: the path {} holds '+' or ':', which a defense spec cannot carry",
                    self.kind,
                    a.display()
                )));
            }
        }
        if let Some((k, v)) = self.options.iter().find(|(_, v)| v.contains(['+', ','])) {
            return Err(SteerError::Invalid(format!(
                "{}: option {k}={v} holds '+' or ',', which a defense spec cannot carry",
                self.kind
            )));
        }
        let known = self.kind.options();
        match self.options.iter().find(|(k, _)| !self.kind.takes(k)) {
            None => Ok(()),
            Some((k, _)) => Err(SteerError::Invalid(format!(
                "{} has no option '{k}' (known: {})",
                self.kind,
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ))),
        }
    }

    pub fn artifact(&self) -> Result<&PathBuf> {
        self.artifact.as_ref().ok_or_else(|| {
            SteerError::Invalid(format!(
                "{} needs a fitted vector: --defense {}=DIR (see earguard fit)",
                self.kind, self.kind
            ))
        })
    }

    /// Add an option unless the spec already sets it (CLI flags like `--alpha`).
    pub fn set_default(&mut self, key: &str, value: String) {
        if self.option(key).is_none() {
            self.options.push((key.to_string(), value));
        }
    }
}

impl fmt::Display for DefensePart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind)?;
        if let Some(a) = &self.artifact {
            write!(f, "={}", a.display())?;
        }
        if !self.options.is_empty() {
            let opts: Vec<String> = self
                .options
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            write!(f, ":{}", opts.join(","))?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DefenseSpec {
    pub parts: Vec<DefensePart>,
}

impl DefenseSpec {
    /// The spec of `parts` applied in order; `none` when there are none.
    pub fn of(parts: Vec<DefensePart>) -> Self {
        if parts.is_empty() {
            return Self {
                parts: vec![DefensePart::new(DefenseKind::None, None)],
            };
        }
        Self { parts }
    }

    /// Check what parsing checks, for specs built as values: every option is one its defense
    /// takes, and the ablation attack comes before any steering part.
    pub fn check(&self) -> Result<()> {
        for part in &self.parts {
            part.check_options()?;
        }
        // The attack edits the model's writes (embeddings, attention and MLP outputs); a
        // steering part listed before it, at those hook points, would be projected with them.
        let parts = &self.parts;
        if let (Some(first_steer), Some(last_ablate)) = (
            parts.iter().position(|p| p.kind.steers()),
            parts.iter().rposition(|p| p.kind == DefenseKind::Ablate),
        ) {
            if last_ablate > first_steer {
                return Err(SteerError::Invalid(format!(
                    "ablate must come before {}: the attack stands for the model's weights, and a \
                     defense listed before it would have its additions projected with the \
                     model's writes (e.g. ablate=RD+{}=DIR)",
                    parts[first_steer].kind, parts[first_steer].kind
                )));
            }
        }
        Ok(())
    }

    /// `--alpha`: the steering strength of every steering part (sarsteer, text-steer, cast) that
    /// does not set it. SafeCoDe's `alpha` is its contrast weight, another quantity: it keeps
    /// its own default.
    pub fn set_steering_alpha(&mut self, alpha: f64) {
        for part in self
            .parts
            .iter_mut()
            .filter(|p| p.kind.steers() && p.kind.takes("alpha"))
        {
            part.set_default("alpha", alpha.to_string());
        }
    }
}

impl FromStr for DefenseSpec {
    type Err = SteerError;

    fn from_str(s: &str) -> Result<Self> {
        let mut parts = Vec::new();
        for raw in s.split('+') {
            let (head, opts) = match raw.split_once(':') {
                Some((h, o)) => (h, Some(o)),
                None => (raw, None),
            };
            let (name, artifact) = match head.split_once('=') {
                Some((n, a)) => (n.trim(), Some(PathBuf::from(a.trim()))),
                None => (head.trim(), None),
            };
            let kind: DefenseKind = name.parse()?;
            let mut options = Vec::new();
            for kv in opts
                .into_iter()
                .flat_map(|o| o.split(','))
                .filter(|kv| !kv.is_empty())
            {
                let (k, v) = kv.split_once('=').ok_or_else(|| {
                    SteerError::Invalid(format!(
                        "option '{kv}' of {name} must be key=value (options are separated by \
                         ',', list items inside a value by '{LIST_SEPARATOR}', e.g. layers=3|5|7)"
                    ))
                })?;
                let k = k.trim();
                if options.iter().any(|(seen, _)| seen == k) {
                    return Err(SteerError::Invalid(format!(
                        "option '{k}' of {name} is given twice in '{raw}'"
                    )));
                }
                options.push((k.to_string(), v.trim().to_string()));
            }
            parts.push(DefensePart {
                kind,
                artifact,
                options,
            });
        }
        let spec = Self { parts };
        spec.check()?;
        Ok(spec)
    }
}

impl fmt::Display for DefenseSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s: Vec<String> = self.parts.iter().map(|p| p.to_string()).collect();
        f.write_str(&s.join("+"))
    }
}

/// Build the defense a spec names, loading and checking its artifacts against `model`.
/// `force` skips only the model-identity check of artifacts (never the shape checks).
pub fn build(spec: &DefenseSpec, model: &Model, force: bool) -> Result<Box<dyn Defense>> {
    spec.check()?;
    let mut built: Vec<Box<dyn Defense>> = Vec::new();
    for part in &spec.parts {
        let d: Box<dyn Defense> = match part.kind {
            DefenseKind::None => Box::new(NoDefense),
            DefenseKind::Prompt => Box::new(SafetyPrompt::from_part(part)?),
            DefenseKind::Sarsteer | DefenseKind::TextSteer => {
                Box::new(SarSteer::from_part(part, model, force)?)
            }
            DefenseKind::Actadd => Box::new(ActAdd::from_part(part, model, force)?),
            DefenseKind::Ablate => Box::new(Ablate::from_part(part, model, force)?),
            DefenseKind::Cast => Box::new(Cast::from_part(part, model, force)?),
            DefenseKind::Safecode => Box::new(SafeCode::from_part(part, model, force)?),
        };
        built.push(d);
    }
    Ok(match built.len() {
        1 => built.pop().expect("one defense"),
        _ => Box::new(Stack(built)),
    })
}

/// What separates the items of a list inside an option value (`layers=3|5|7`,
/// `beta=1|0.5|1`): `,` already separates options and `+` defenses.
pub const LIST_SEPARATOR: char = '|';

/// Parse a layer list: items separated by `|`, each a layer `a` or an inclusive range `a-b`
/// (e.g. `4-20` or `3|5|7` or `0-3|10-12`). The result is sorted and deduplicated; an empty
/// list, a reversed range and a layer the model does not have are errors.
pub fn parse_layers(s: &str, n_layers: usize) -> Result<Vec<usize>> {
    let bad = |why: String| SteerError::Invalid(format!("layers '{s}': {why}"));
    if s.trim().is_empty() {
        return Err(bad(
            "the list is empty, so nothing would be steered (name layers, e.g. layers=4-20, \
             or leave out layers= to use every layer of the vector)"
                .into(),
        ));
    }
    let mut out = Vec::new();
    for piece in s.split(LIST_SEPARATOR).map(str::trim) {
        let number = |x: &str| {
            x.trim().parse::<usize>().map_err(|_| {
                bad(format!(
                    "'{piece}' is not a layer or range (expected e.g. 4-20 or 3|5|7)"
                ))
            })
        };
        let (a, b) = match piece.split_once('-') {
            Some((a, b)) => (number(a)?, number(b)?),
            None => {
                let x = number(piece)?;
                (x, x)
            }
        };
        if a > b {
            return Err(bad(format!(
                "reversed range {a}-{b} (write the lower layer first: {b}-{a})"
            )));
        }
        if b >= n_layers {
            return Err(bad(format!(
                "layer {b} is out of range for a model with {n_layers} layers (0-{})",
                n_layers.saturating_sub(1)
            )));
        }
        out.extend(a..=b);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// The layer a refusal-direction artifact recommends (`extra.selected_layer`), or `fallback`.
pub(crate) fn selected_layer(
    vector: &crate::artifact::SteeringVector,
    part: &DefensePart,
) -> Result<usize> {
    if let Some(l) = part.option_usize("layer")? {
        return Ok(l);
    }
    if let Some(l) = vector
        .meta
        .extra
        .get("selected_layer")
        .and_then(|v| v.as_u64())
    {
        return Ok(l as usize);
    }
    // No selection recorded: the middle layer, where refusal directions are usually strongest.
    let layers: Vec<usize> = vector.directions.keys().copied().collect();
    layers
        .get(layers.len() / 2)
        .copied()
        .ok_or_else(|| SteerError::Artifact("the vector has no directions".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print() {
        let s: DefenseSpec = "ablate=a/b:layer=12+sarsteer=c:alpha=0.2,layers=3-5"
            .parse()
            .unwrap();
        assert_eq!(s.parts[0].kind, DefenseKind::Ablate);
        assert_eq!(s.parts[0].option_usize("layer").unwrap(), Some(12));
        assert_eq!(
            s.to_string(),
            "ablate=a/b:layer=12+sarsteer=c:alpha=0.2,layers=3-5"
        );
        assert!("sarsteer=x:alpha".parse::<DefenseSpec>().is_err());
        assert!("magic"
            .parse::<DefenseSpec>()
            .unwrap_err()
            .to_string()
            .contains("unknown defense"));
        let bad: DefenseSpec = "sarsteer=x:alpha=abc".parse().unwrap();
        assert!(bad.parts[0].option_f64("alpha").is_err());
    }

    /// Each kind parses from its name and declares its options: an option it does not take is
    /// refused when the spec is parsed, or checked, for a spec built as values.
    #[test]
    fn kinds_declare_their_options() {
        for k in DefenseKind::ALL {
            assert_eq!(k.name().parse::<DefenseKind>().unwrap(), k);
        }
        let e = "actadd=v:alpha=1"
            .parse::<DefenseSpec>()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("actadd has no option 'alpha' (known: layer, coeff)"),
            "{e}"
        );
        let built = DefenseSpec::of(vec![DefensePart::new(DefenseKind::None, None).with("k", 1)]);
        let e = built.check().unwrap_err().to_string();
        assert!(e.contains("none has no option 'k' (known: none)"), "{e}");
        let built = DefenseSpec::of(vec![
            DefensePart::new(DefenseKind::Cast, Some("c".into())),
            DefensePart::new(DefenseKind::Ablate, Some("a".into())),
        ]);
        assert!(built.check().is_err());
        // --alpha goes to the parts that take it and leave it unset.
        let mut spec: DefenseSpec = "prompt+sarsteer=v+cast=c:alpha=0.5".parse().unwrap();
        spec.set_steering_alpha(0.3);
        assert_eq!(
            spec.to_string(),
            "prompt+sarsteer=v:alpha=0.3+cast=c:alpha=0.5"
        );
        // What the grammar splits on cannot be in a value built by hand.
        for bad in [
            DefensePart::new(DefenseKind::Safecode, None).with("judge", "a,b"),
            DefensePart::new(DefenseKind::Safecode, None).with("calibration", "x+y"),
            DefensePart::new(DefenseKind::Ablate, Some("out:1/rd".into())),
        ] {
            let e = DefenseSpec::of(vec![bad]).check().unwrap_err().to_string();
            assert!(e.contains("cannot carry"), "{e}");
        }
        // ... but only steering parts take --alpha: SafeCoDe's contrast α is not a strength.
        let mut spec: DefenseSpec = "sarsteer=v+safecode".parse().unwrap();
        spec.set_steering_alpha(0.1);
        assert_eq!(spec.to_string(), "sarsteer=v:alpha=0.1+safecode");
        assert_eq!(DefenseSpec::of(vec![]).to_string(), "none");
    }

    #[test]
    fn ablate_comes_before_the_defenses() {
        assert!("ablate=a+sarsteer=b".parse::<DefenseSpec>().is_ok());
        assert!("prompt+ablate=a+actadd=b".parse::<DefenseSpec>().is_ok());
        for spec in [
            "actadd=b:layer=0+ablate=a",
            "sarsteer=b+ablate=a",
            "ablate=a+cast=c+ablate=a",
        ] {
            let e = spec.parse::<DefenseSpec>().unwrap_err().to_string();
            assert!(e.contains("ablate must come before"), "{spec}: {e}");
        }
    }

    #[test]
    fn layer_lists() {
        assert_eq!(parse_layers("2-4|7", 10).unwrap(), [2, 3, 4, 7]);
        assert_eq!(parse_layers("5", 10).unwrap(), [5]);
        assert!(parse_layers("5-30", 28)
            .unwrap_err()
            .to_string()
            .contains("out of range"));
        assert!(parse_layers("x", 28).is_err());
        let e = parse_layers("5-2", 28).unwrap_err().to_string();
        assert!(
            e.contains("reversed range 5-2") && !e.contains("out of range"),
            "{e}"
        );
        // Only '|' separates items: empty lists and other separators are refused.
        for bad in ["", " ", "3|", "3;5", "3 5", "3,5"] {
            assert!(parse_layers(bad, 28).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn options_are_typed_bounded_and_given_once() {
        let part = |s: &str| s.parse::<DefenseSpec>().unwrap().parts.remove(0);
        for (spec, key) in [
            ("sarsteer=v:alpha=1e39", "alpha"),
            ("sarsteer=v:alpha=nan", "alpha"),
            ("sarsteer=v:alpha=inf", "alpha"),
            ("actadd=v:coeff=1e30", "coeff"),
            ("actadd=v:coeff=-1001", "coeff"),
        ] {
            let e = part(spec).option_f64(key).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains("out of range"), "{spec}: {e}");
        }
        for beta in ["beta=nan", "beta=1|nan", "beta=1|1e30", "beta=1|x"] {
            let p = part(&format!("sarsteer=v:{beta}"));
            assert!(p.option_f64_list("beta").is_err(), "{beta}");
        }
        assert_eq!(
            part("sarsteer=v:beta=1|0.5")
                .option_f64_list("beta")
                .unwrap(),
            Some(vec![1.0, 0.5])
        );
        assert!(part("cast=v:threshold=2")
            .option_f64_in("threshold", -1.0..=1.0)
            .is_err());
        assert!(part("sarsteer=v:normalize=maybe")
            .option_bool("normalize")
            .is_err());
        let e = "sarsteer=v:alpha=0.1,alpha=0.2"
            .parse::<DefenseSpec>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("'alpha'") && e.contains("twice"), "{e}");
        let e = "sarsteer=v:layers=3,5"
            .parse::<DefenseSpec>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("layers=3|5|7"), "{e}");
    }
}
