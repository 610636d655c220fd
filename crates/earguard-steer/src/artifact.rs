//! Steering-vector artifacts: a directory users can share.
//!
//! ```text
//! my-vector/
//!   meta.json            what was fitted, on which model, from which data (pretty JSON)
//!   vectors.safetensors  one F32 tensor `direction.{l}` of shape [hidden] per layer l, and
//!                        for a conditional vector (CAST) one `condition.{l}` of the same shape
//! ```
//!
//! [`SteeringVector::save`] writes the whole directory next to its destination and swaps it
//! in with renames, so an interrupted save leaves either the old artifact or the new one,
//! never a mix. [`SteeringVector::load`] checks everything it reads: shapes, layer numbers,
//! the layer list in `meta.json`, finite values of sane size (see [`crate::limits`]), and
//! refuses tensors it does not know.
//! [`SteeringVector::check_compatible`] ties a vector to the model it was fitted on.
//!
//! ```
//! use std::collections::BTreeMap;
//! use candle_core::{Device, Tensor};
//! use earguard_model::HookKind;
//! use earguard_steer::artifact::{SteeringVector, VectorMeta};
//!
//! let mut meta = VectorMeta::new("pca", "tiny", "qwen2", "sha256:abc", 4, 2, HookKind::ResidPost);
//! meta.hyper_parameters = serde_json::json!({"n_pairs": 16});
//! let mut directions = BTreeMap::new();
//! directions.insert(1, Tensor::new(&[1f32, 0., 0., 0.], &Device::Cpu).unwrap());
//! let v = SteeringVector::new(meta, directions).unwrap();
//! assert_eq!(v.meta.layers, [1]);
//! # let dir = std::env::temp_dir().join(format!("earguard-doc-{}", std::process::id()));
//! v.save(&dir).unwrap();
//! let back = SteeringVector::load(&dir).unwrap();
//! assert_eq!(back.meta, v.meta);
//! # std::fs::remove_dir_all(&dir).unwrap();
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use earguard_model::{HookKind, HookPoint, ModelInfo};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Result, SteerError};

/// The `format_version` this build writes and the only one it reads.
pub const FORMAT_VERSION: u32 = 1;
/// File names inside an artifact directory.
pub const META_FILE: &str = "meta.json";
pub const VECTORS_FILE: &str = "vectors.safetensors";

/// A prompt set a vector was fitted on, pinned by content hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetRef {
    pub path: String,
    /// Hex sha256 of the file's bytes.
    pub sha256: String,
    pub n_items: usize,
    pub n_harmful: usize,
    pub n_benign: usize,
}

impl DatasetRef {
    /// Hash a JSONL prompt set and count its items by their `"label"` field
    /// (`"harmful"` or `"benign"`). Blank lines are skipped; a malformed line, a missing or
    /// unknown label is an error naming `file:line`.
    pub fn from_file(path: &Path) -> Result<DatasetRef> {
        // Bounded, regular files only, UTF-8; the BOM is hashed but not parsed.
        let text = earguard_data::read_jsonl_text(path)?;
        let sha256 = earguard_data::hex(&Sha256::digest(text.as_bytes()));
        let (mut n_items, mut n_harmful, mut n_benign) = (0, 0, 0);
        for (i, line) in earguard_data::jsonl_lines(&text) {
            let at = || format!("{}:{i}", path.display());
            let line = line.map_err(|e| SteerError::Invalid(format!("{}: {e}", at())))?;
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let value: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| SteerError::Invalid(format!("{}: not a JSON object: {e}", at())))?;
            match value.get("label").and_then(|l| l.as_str()) {
                Some("harmful") => n_harmful += 1,
                Some("benign") => n_benign += 1,
                Some(other) => {
                    return Err(SteerError::Invalid(format!(
                        "{}: label must be \"harmful\" or \"benign\", got \"{other}\"",
                        at()
                    )))
                }
                None => {
                    return Err(SteerError::Invalid(format!(
                        "{}: missing string field \"label\" (\"harmful\" or \"benign\")",
                        at()
                    )))
                }
            }
            n_items += 1;
        }
        Ok(DatasetRef {
            path: path.display().to_string(),
            sha256,
            n_items,
            n_harmful,
            n_benign,
        })
    }
}

/// Everything `meta.json` records about a vector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VectorMeta {
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// How the directions were made: `sarsteer`, `refusal-direction`, `pca`, `llama-cpp-import`, …
    pub method: String,
    pub model_name: String,
    pub model_architecture: String,
    /// [`ModelInfo::identity`] of the model the vector was fitted on; empty when unknown.
    pub model_identity: String,
    pub hidden_size: usize,
    pub n_layers: usize,
    /// Hook kind of every direction, written as its name, e.g. `resid_post`.
    pub hook: HookKind,
    /// The layers that have a direction, ascending.
    pub layers: Vec<usize>,
    #[serde(default)]
    pub hyper_parameters: serde_json::Value,
    #[serde(default)]
    pub training_sets: Vec<DatasetRef>,
    pub earguard_version: String,
    /// Method-specific data (e.g. CAST thresholds); `null` when there is none.
    #[serde(default)]
    pub extra: serde_json::Value,
}

impl VectorMeta {
    /// A meta with the given model description and hook kind; no layers, no training sets,
    /// empty hyper-parameters and `extra`. [`SteeringVector::new`] fills in `layers`.
    pub fn new(
        method: &str,
        model_name: &str,
        model_architecture: &str,
        model_identity: &str,
        hidden_size: usize,
        n_layers: usize,
        hook: HookKind,
    ) -> VectorMeta {
        VectorMeta {
            format_version: FORMAT_VERSION,
            method: method.to_string(),
            model_name: model_name.to_string(),
            model_architecture: model_architecture.to_string(),
            model_identity: model_identity.to_string(),
            hidden_size,
            n_layers,
            hook,
            layers: Vec::new(),
            hyper_parameters: serde_json::Value::Object(Default::default()),
            training_sets: Vec::new(),
            earguard_version: env!("CARGO_PKG_VERSION").to_string(),
            extra: serde_json::Value::Null,
        }
    }

    /// [`VectorMeta::new`] with the model fields taken from `info` (its run identity: a vector
    /// fitted with an adapter on records it).
    pub fn for_model(method: &str, info: &ModelInfo, hook: HookKind) -> VectorMeta {
        VectorMeta::new(
            method,
            &info.name,
            info.architecture,
            &info.run_identity(),
            info.hidden_size,
            info.n_layers,
            hook,
        )
    }

    /// The hook point of layer `l` for this vector's hook kind.
    pub fn hook_point(&self, l: usize) -> HookPoint {
        self.hook.at(l)
    }

    /// "NAME (hidden H, N layers)", as compatibility errors describe a model.
    fn describe_model(&self) -> String {
        format!(
            "{} (hidden {}, {} layers)",
            self.model_name, self.hidden_size, self.n_layers
        )
    }
}

/// One direction per layer, with the meta that says where they came from.
#[derive(Debug, Clone)]
pub struct SteeringVector {
    pub meta: VectorMeta,
    /// Layer → direction, each an F32 CPU tensor of shape `[hidden_size]`.
    pub directions: BTreeMap<usize, Tensor>,
    /// The direction that decides whether the others are applied (CAST's condition), if any.
    pub condition: Option<ConditionDirection>,
}

/// A direction read at one layer to gate a vector (tensor `condition.{layer}` on disk).
#[derive(Debug, Clone)]
pub struct ConditionDirection {
    pub layer: usize,
    /// F32 CPU tensor of shape `[hidden_size]`.
    pub direction: Tensor,
}

impl SteeringVector {
    /// Build a vector: directions are converted to F32 on the CPU, `meta.layers` is set from
    /// their keys, and everything [`load`](Self::load) would check is checked.
    pub fn new(mut meta: VectorMeta, directions: BTreeMap<usize, Tensor>) -> Result<Self> {
        let directions = directions
            .into_iter()
            .map(|(l, t)| Ok((l, t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?)))
            .collect::<Result<BTreeMap<_, _>>>()?;
        meta.layers = directions.keys().copied().collect();
        let v = SteeringVector {
            meta,
            directions,
            condition: None,
        };
        v.validate()?;
        Ok(v)
    }

    /// The same vector gated by `direction` read at `layer` (checked like a direction).
    pub fn with_condition(mut self, layer: usize, direction: &Tensor) -> Result<Self> {
        let direction = direction.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
        self.condition = Some(ConditionDirection { layer, direction });
        self.validate()?;
        Ok(self)
    }

    /// The direction of layer `l`, if the vector has one.
    pub fn direction(&self, l: usize) -> Option<&Tensor> {
        self.directions.get(&l)
    }

    /// The directions of one layer as plain floats.
    pub fn direction_values(&self, l: usize) -> Result<Vec<f32>> {
        let t = self.directions.get(&l).ok_or_else(|| {
            SteerError::Invalid(format!("the vector has no direction for layer {l}"))
        })?;
        Ok(t.to_dtype(DType::F32)?.to_vec1::<f32>()?)
    }

    /// Check the invariants every saved or loaded vector satisfies.
    pub fn validate(&self) -> Result<()> {
        let m = &self.meta;
        if m.format_version != FORMAT_VERSION {
            return Err(SteerError::Artifact(format!(
                "format_version {} is not supported (this earguard reads version {FORMAT_VERSION}; \
                 the vector was written by earguard {})",
                m.format_version, m.earguard_version
            )));
        }
        if m.hidden_size == 0 || m.n_layers == 0 {
            return Err(SteerError::Artifact(format!(
                "hidden_size ({}) and n_layers ({}) must be positive",
                m.hidden_size, m.n_layers
            )));
        }
        if self.directions.is_empty() {
            return Err(SteerError::Artifact("the vector has no directions".into()));
        }
        let mut seen = BTreeSet::new();
        for &l in &m.layers {
            if !seen.insert(l) {
                return Err(SteerError::Artifact(format!(
                    "layer {l} is listed twice in \"layers\""
                )));
            }
        }
        let have: BTreeSet<usize> = self.directions.keys().copied().collect();
        if seen != have {
            return Err(SteerError::Artifact(format!(
                "\"layers\" lists {:?} but the tensors are for layers {:?}",
                m.layers,
                have.iter().collect::<Vec<_>>()
            )));
        }
        let condition = self
            .condition
            .iter()
            .map(|c| ("condition", c.layer, &c.direction));
        for (what, l, t) in self
            .directions
            .iter()
            .map(|(&l, t)| ("direction", l, t))
            .chain(condition)
        {
            if l >= m.n_layers {
                return Err(SteerError::Artifact(format!(
                    "{what} for layer {l}, but the model has only {} layers (0..{})",
                    m.n_layers,
                    m.n_layers - 1
                )));
            }
            if t.dtype() != DType::F32 {
                return Err(SteerError::Artifact(format!(
                    "{what} of layer {l} is {:?}, expected F32",
                    t.dtype()
                )));
            }
            if t.dims() != [m.hidden_size] {
                return Err(SteerError::Artifact(format!(
                    "{what} of layer {l} has shape {:?}, expected [{}] (hidden_size)",
                    t.dims(),
                    m.hidden_size
                )));
            }
            crate::limits::direction(&format!("{what} of layer {l}"), &t.to_vec1::<f32>()?)?;
        }
        Ok(())
    }

    /// Write `dir/vectors.safetensors` and `dir/meta.json`.
    ///
    /// The files are written into a fresh sibling directory first and swapped in by renames:
    /// an interrupted save leaves the old artifact (or none), never half of a new one. An
    /// existing `dir` is replaced only if it holds nothing but an artifact's two files.
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.validate()?;
        let mut meta = self.meta.clone();
        meta.layers = self.directions.keys().copied().collect();
        let meta_json = serde_json::to_string_pretty(&meta)
            .map_err(|e| SteerError::Artifact(format!("cannot serialise meta.json: {e}")))?;
        let condition = self
            .condition
            .iter()
            .map(|c| (format!("condition.{}", c.layer), c.direction.clone()));
        let tensors: HashMap<String, Tensor> = self
            .directions
            .iter()
            .map(|(l, t)| (format!("direction.{l}"), t.clone()))
            .chain(condition)
            .collect();

        let name = dir.file_name().ok_or_else(|| {
            SteerError::Invalid(format!(
                "{}: not a usable artifact directory name",
                dir.display()
            ))
        })?;
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&parent).map_err(|e| SteerError::io(&parent, e))?;
        if dir.exists() {
            check_replaceable(dir)?;
        }

        let stamp = unique_stamp();
        let name = name.to_string_lossy();
        let tmp = parent.join(format!(".{name}.tmp-{stamp}"));
        fs::create_dir(&tmp).map_err(|e| SteerError::io(&tmp, e))?;
        let written = (|| -> Result<()> {
            let vectors = tmp.join(VECTORS_FILE);
            candle_core::safetensors::save(&tensors, &vectors)
                .map_err(|e| SteerError::io(&vectors, e))?;
            sync_file(&vectors)?;
            let meta_path = tmp.join(META_FILE);
            let mut f = fs::File::create(&meta_path).map_err(|e| SteerError::io(&meta_path, e))?;
            f.write_all(meta_json.as_bytes())
                .and_then(|_| f.write_all(b"\n"))
                .and_then(|_| f.sync_all())
                .map_err(|e| SteerError::io(&meta_path, e))?;
            Ok(())
        })();
        if let Err(e) = written {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }

        if dir.exists() {
            let old = parent.join(format!(".{name}.old-{stamp}"));
            if let Err(e) = fs::rename(dir, &old) {
                let _ = fs::remove_dir_all(&tmp);
                return Err(SteerError::io(
                    dir,
                    format!("cannot replace the existing artifact: {e}"),
                ));
            }
            if let Err(e) = fs::rename(&tmp, dir) {
                let _ = fs::rename(&old, dir);
                let _ = fs::remove_dir_all(&tmp);
                return Err(SteerError::io(dir, e));
            }
            let _ = fs::remove_dir_all(&old);
        } else if let Err(e) = fs::rename(&tmp, dir) {
            let _ = fs::remove_dir_all(&tmp);
            return Err(SteerError::io(dir, e));
        }
        // Make the renames durable where the platform allows syncing a directory.
        if let Ok(d) = fs::File::open(&parent) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Read and check an artifact directory.
    pub fn load(dir: &Path) -> Result<Self> {
        let bad = |file: &str, msg: String| {
            SteerError::Artifact(format!("{}: {msg}", dir.join(file).display()))
        };
        if !dir.is_dir() {
            return Err(SteerError::Artifact(format!(
                "{}: not a directory (a steering vector is a directory holding {META_FILE} and \
                 {VECTORS_FILE})",
                dir.display()
            )));
        }
        let meta_path = dir.join(META_FILE);
        if !meta_path.is_file() {
            return Err(bad(
                META_FILE,
                format!(
                    "missing: {} is not a steering-vector artifact (expected {META_FILE} and \
                     {VECTORS_FILE})",
                    dir.display()
                ),
            ));
        }
        let text = earguard_data::read_small_text(&meta_path)
            .map_err(|e| SteerError::io(&meta_path, e))?;
        let meta: VectorMeta =
            serde_json::from_str(&text).map_err(|e| bad(META_FILE, format!("malformed: {e}")))?;

        let vectors_path = dir.join(VECTORS_FILE);
        if !vectors_path.is_file() {
            return Err(bad(VECTORS_FILE, "missing".into()));
        }
        let bytes = fs::read(&vectors_path).map_err(|e| SteerError::io(&vectors_path, e))?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|e| {
            bad(
                VECTORS_FILE,
                format!("not a readable safetensors file: {e}"),
            )
        })?;

        let mut directions = BTreeMap::new();
        let mut condition = None;
        let mut names: Vec<_> = tensors.into_iter().collect();
        names.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, t) in names {
            let (what, layer) = tensor_layer(&name).ok_or_else(|| {
                bad(
                    VECTORS_FILE,
                    format!(
                        "unexpected tensor '{name}' (only direction.<layer> and one \
                         condition.<layer> are allowed)"
                    ),
                )
            })?;
            if t.dtype() != DType::F32 {
                return Err(bad(
                    VECTORS_FILE,
                    format!("{what} of layer {layer} is {:?}, expected F32", t.dtype()),
                ));
            }
            if what == "direction" {
                directions.insert(layer, t);
            } else if condition.is_some() {
                return Err(bad(
                    VECTORS_FILE,
                    "more than one condition.<layer> tensor".into(),
                ));
            } else {
                condition = Some(ConditionDirection {
                    layer,
                    direction: t,
                });
            }
        }
        let v = SteeringVector {
            meta,
            directions,
            condition,
        };
        v.validate().map_err(|e| match e {
            SteerError::Artifact(m) => SteerError::Artifact(format!("{}: {m}", dir.display())),
            other => other,
        })?;
        Ok(v)
    }

    /// Check that this vector fits `info`'s model. Hidden size and layer count must always
    /// match; the model identity must match unless `force`.
    pub fn check_compatible(&self, info: &ModelInfo, force: bool) -> Result<()> {
        let m = &self.meta;
        if m.hidden_size != info.hidden_size || m.n_layers != info.n_layers {
            return Err(SteerError::Incompatible(format!(
                "vector was fitted on {}; this model is {} (hidden {}, {} layers)",
                m.describe_model(),
                info.name,
                info.hidden_size,
                info.n_layers
            )));
        }
        // Fitted on this checkpoint (a LoRA adapter on top does not change that), or on this
        // checkpoint with this very adapter.
        if force || m.model_identity == info.identity || m.model_identity == info.run_identity() {
            return Ok(());
        }
        if m.model_identity.is_empty() {
            return Err(SteerError::Incompatible(format!(
                "vector (method '{}') records no model identity, so it cannot be matched to {}; \
                 its shape fits (hidden {}, {} layers) — pass --force to use it anyway",
                m.method, info.name, info.hidden_size, info.n_layers
            )));
        }
        Err(SteerError::Incompatible(format!(
            "vector was fitted on {} (identity {}); this model is {} (identity {}): same shape \
             but a different checkpoint — pass --force to use it anyway",
            m.model_name,
            short(&m.model_identity),
            info.name,
            short(&info.identity)
        )))
    }
}

/// `("direction", l)` for a tensor named `direction.{l}`, `("condition", l)` for
/// `condition.{l}` (the layer written plainly: no sign, no leading zeros); None otherwise.
fn tensor_layer(name: &str) -> Option<(&'static str, usize)> {
    let (what, l) = name.split_once('.')?;
    let what = ["direction", "condition"]
        .into_iter()
        .find(|&w| w == what)?;
    let layer = l
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| l.parse::<usize>().ok())
        .flatten()
        .filter(|layer| layer.to_string() == l)?;
    Some((what, layer))
}

/// An existing destination may be replaced only if it is an artifact (or empty).
fn check_replaceable(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        return Err(SteerError::Invalid(format!(
            "{}: exists and is not a directory; choose another output path",
            dir.display()
        )));
    }
    let mut foreign = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| SteerError::io(dir, e))? {
        let entry = entry.map_err(|e| SteerError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != META_FILE && name != VECTORS_FILE {
            foreign.push(name);
        }
    }
    if !foreign.is_empty() {
        foreign.sort();
        return Err(SteerError::Invalid(format!(
            "{}: refusing to replace a directory that holds files other than a steering vector \
             ({}); choose a new or empty directory",
            dir.display(),
            foreign.join(", ")
        )));
    }
    Ok(())
}

fn sync_file(path: &Path) -> Result<()> {
    fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| SteerError::io(path, e))
}

/// Process id plus a clock reading and a counter: unique among concurrent saves.
pub(crate) fn unique_stamp() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The first characters of an identity, enough to tell two apart in a message.
fn short(identity: &str) -> &str {
    let end = identity
        .char_indices()
        .nth(16)
        .map(|(i, _)| i)
        .unwrap_or(identity.len());
    &identity[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_identity_is_char_safe() {
        assert_eq!(short("abc"), "abc");
        assert_eq!(short("0123456789abcdefXYZ"), "0123456789abcdef");
        assert_eq!(short("ééééééééééééééééé").chars().count(), 16);
    }

    #[test]
    fn hook_points_follow_the_kind() {
        let m = VectorMeta::new("pca", "m", "qwen2", "id", 4, 3, HookKind::MlpOut);
        assert_eq!(m.hook_point(2), HookKind::MlpOut.at(2));
    }

    #[test]
    fn tensor_names_carry_their_layer() {
        assert_eq!(tensor_layer("direction.12"), Some(("direction", 12)));
        assert_eq!(tensor_layer("condition.0"), Some(("condition", 0)));
        for bad in [
            "direction.",
            "direction.01",
            "direction.+1",
            "cond.1",
            "direction1",
        ] {
            assert_eq!(tensor_layer(bad), None, "{bad}");
        }
    }
}
