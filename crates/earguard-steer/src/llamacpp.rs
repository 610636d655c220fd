//! llama.cpp control vectors: export earguard steering vectors to them, import them.
//!
//! # The file format
//!
//! A GGUF file (version 2 or 3) with `general.architecture = "controlvector"`,
//! `controlvector.model_hint` (the model's architecture string, e.g. `qwen2`),
//! `controlvector.layer_count` (an integer) and one 1-D F32 tensor `direction.N` per steered
//! layer, N ≥ 1. llama.cpp reads neither the hint nor the layer count; writers disagree on
//! the count's meaning (llama.cpp's `cvector-generator` writes the number of tensors as an
//! i32, other tools the model's layer count). earguard writes the model's layer count
//! (`u32`) and, for provenance, the vector's `meta.json` as the string `earguard.meta`,
//! which llama.cpp ignores.
//!
//! # What llama.cpp does with `direction.N` (established by reading its source)
//!
//! **`direction.N` is added to the output of the 0-based block N, at every token position,
//! with a plus sign, times the user's strength** — i.e. earguard's
//! `HookKind::ResidPost.at(N)` with `Positions::All` and coefficient +strength. Evidence
//! (ggml-org/llama.cpp):
//!
//! 1. `common/common.cpp`, `common_control_vector_load_one`: parses the tensor name after
//!    `direction.` with `std::stoi`; an index `< 0` or unparsable is an error, and **index 0 is
//!    rejected** ("invalid (zero) direction tensor layer index"). Tensors must be F32 and
//!    1-D, all of one length. The values are accumulated, multiplied by the file's strength
//!    (`--control-vector` = 1.0, `--control-vector-scaled FILE S` = S), into a flat buffer at
//!    offset `n_embd * (N - 1)` ("layer 1 at [0]").
//! 2. `src/llama-adapter.cpp`, `llama_adapter_cvec::init`: pushes `nullptr` for layer 0
//!    ("there's never a tensor for layer 0") and creates one `[n_embd]` tensor for each
//!    `il` in `1..n_layer`. `llama_adapter_cvec::apply` fills `tensors[il]` from buffer
//!    offset `n_embd * (il - 1)`. Chaining 1 and 2: `tensors[il]` holds `direction.il`.
//!    Buffer rows past `n_layer - 1` are never read (a too-deep `direction.N` is silently
//!    ignored there; this module refuses it when it knows the model).
//! 3. `llama_adapter_cvec::apply_to` does `cur = ggml_add(ctx, cur, tensors[il])` when
//!    `layer_start <= il <= layer_end` (`tensor_for`): a plain addition, broadcast over all
//!    tokens of the batch (prompt and generated alike). `common_init_from_params` defaults
//!    the range to `1..=n_layer`.
//! 4. `src/models/qwen2.cpp` (and the other model builders, via
//!    `llm_graph_context::build_cvec` in `src/llama-graph.cpp`): inside
//!    `for (int il = 0; il < n_layer; ++il)`, after the FFN residual add,
//!    `cur = build_cvec(cur, il); cb(cur, "l_out", il);` — the edited tensor is the block's
//!    output and is the next block's input. `il` is the 0-based block index.
//!
//! So block 0's output (earguard `ResidPost(0)`) cannot be steered by a control vector:
//! [`export_control_vector`] reports such layers in [`ExportReport::skipped`]. (In the last
//! block llama.cpp has already dropped the rows whose logits are not wanted; the positions it
//! steers there are exactly the ones that reach the LM head, so this changes nothing.)
//!
//! Caveat for imports: llama.cpp's own `cvector-generator` (`tools/cvector-generator`,
//! `mean.hpp`/`pca.hpp`) fits on the `l_out` of block `il` and names the result
//! `direction.{il+1}`, so llama.cpp applies its vectors one block after where they were
//! measured. Import follows what llama.cpp *applies* (`direction.N` → `ResidPost(N)`), so an
//! imported vector behaves in earguard as it does in llama.cpp.
//!
//! ```
//! use earguard_steer::llamacpp::{layer_of_tensor_name, tensor_name_of_layer};
//! assert_eq!(tensor_name_of_layer(5).as_deref(), Some("direction.5"));
//! assert_eq!(tensor_name_of_layer(0), None); // block 0 is not representable
//! assert_eq!(layer_of_tensor_name("direction.5").unwrap(), 5);
//! assert!(layer_of_tensor_name("direction.0").is_err());
//! ```

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::fs;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value as GgufValue};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use earguard_model::{HookKind, ModelInfo};

use crate::artifact::{SteeringVector, VectorMeta};
use crate::error::{Result, SteerError};

/// `general.architecture` of a control vector.
pub const ARCHITECTURE: &str = "controlvector";
/// `meta.method` of imported vectors.
pub const IMPORT_METHOD: &str = "llama-cpp-import";
/// The only hook kind llama.cpp can apply.
pub const HOOK: HookKind = HookKind::ResidPost;

const KEY_ARCHITECTURE: &str = "general.architecture";
const KEY_ALIGNMENT: &str = "general.alignment";
const KEY_MODEL_HINT: &str = "controlvector.model_hint";
const KEY_LAYER_COUNT: &str = "controlvector.layer_count";
const KEY_EARGUARD_META: &str = "earguard.meta";

/// The tensor name llama.cpp reads for the output of block `layer`; `None` for block 0,
/// which llama.cpp cannot steer.
pub fn tensor_name_of_layer(layer: usize) -> Option<String> {
    (layer >= 1).then(|| format!("direction.{layer}"))
}

/// The block whose output a tensor named `direction.N` is added to (N), or why the name is
/// not one llama.cpp accepts. Only canonical decimal names are accepted.
pub fn layer_of_tensor_name(name: &str) -> Result<usize> {
    let digits = name.strip_prefix("direction.").ok_or_else(|| {
        SteerError::Artifact(format!(
            "unexpected tensor '{name}' (expected direction.<N>)"
        ))
    })?;
    let n = (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse::<usize>().ok())
        .flatten()
        .filter(|n| n.to_string() == digits)
        .ok_or_else(|| {
            SteerError::Artifact(format!(
                "tensor '{name}': the layer index must be a plain decimal number"
            ))
        })?;
    if n == 0 {
        return Err(SteerError::Artifact(format!(
            "tensor '{name}': llama.cpp rejects layer index 0 (it has no control-vector slot \
             for block 0)"
        )));
    }
    Ok(n)
}

/// A layer [`export_control_vector`] left out, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedLayer {
    pub layer: usize,
    pub reason: String,
}

/// What [`export_control_vector`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportReport {
    pub path: PathBuf,
    pub model_hint: String,
    /// `controlvector.layer_count` as written: the model's number of layers.
    pub layer_count: u32,
    /// Layers written, as `direction.{layer}` (= the 0-based block whose output it steers).
    pub written: Vec<usize>,
    /// Layers of the vector llama.cpp cannot represent.
    pub skipped: Vec<SkippedLayer>,
    /// Things the user should know about how llama.cpp will use the file.
    pub notes: Vec<String>,
}

impl fmt::Display for ExportReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let layers: Vec<String> = self.written.iter().map(|l| l.to_string()).collect();
        writeln!(
            f,
            "wrote {}: {} direction(s) for model_hint '{}' (blocks {})",
            self.path.display(),
            self.written.len(),
            self.model_hint,
            layers.join(", ")
        )?;
        for s in &self.skipped {
            writeln!(f, "skipped layer {}: {}", s.layer, s.reason)?;
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        write!(
            f,
            "use: llama-cli -m MODEL.gguf --control-vector-scaled {} STRENGTH",
            self.path.display()
        )
    }
}

/// Write `vec` as a llama.cpp control vector at `out`.
///
/// Only `resid_post` vectors can be exported (llama.cpp adds to block outputs). Layer 0 is
/// reported in [`ExportReport::skipped`]; a vector with nothing else is refused. The
/// directions are written unscaled: the strength is chosen on llama.cpp's command line. The
/// file is written to a temporary name and renamed into place.
pub fn export_control_vector(vec: &SteeringVector, out: &Path) -> Result<ExportReport> {
    vec.validate()?;
    let meta = &vec.meta;
    if meta.hook != HOOK {
        return Err(SteerError::Invalid(format!(
            "cannot export a '{}' vector: llama.cpp control vectors are added to each block's \
             output (resid_post) only; fit the vector at resid_post to export it",
            meta.hook
        )));
    }
    let layer_count = u32::try_from(meta.n_layers).map_err(|_| {
        SteerError::Invalid(format!("n_layers {} does not fit a u32", meta.n_layers))
    })?;
    let mut written = Vec::new();
    let mut skipped = Vec::new();
    let mut tensors = Vec::new();
    for (&l, t) in &vec.directions {
        match tensor_name_of_layer(l) {
            Some(name) => {
                written.push(l);
                tensors.push((name, t.clone()));
            }
            None => skipped.push(SkippedLayer {
                layer: l,
                reason: "llama.cpp cannot steer the output of block 0 (its loader rejects \
                         direction.0 and it keeps no control vector for layer 0)"
                    .into(),
            }),
        }
    }
    if written.is_empty() {
        return Err(SteerError::Invalid(format!(
            "nothing to export: the vector only has layer(s) {:?}, which llama.cpp cannot steer",
            meta.layers
        )));
    }
    let mut notes = vec![
        "llama.cpp adds each direction, unscaled in the file, to the block output at every \
         position, times the strength given with --control-vector-scaled (1.0 with \
         --control-vector); earguard's defenses choose their own scale (e.g. sarsteer alpha)"
            .to_string(),
    ];
    if !meta.extra.is_null() && meta.method != IMPORT_METHOD {
        notes.push(
            "meta.extra (method-specific settings such as CAST conditions) has no llama.cpp \
             equivalent and is only kept as provenance in earguard.meta"
                .into(),
        );
    }
    let meta_json = serde_json::to_string(meta)
        .map_err(|e| SteerError::Artifact(format!("cannot serialise meta: {e}")))?;
    let kv = [
        (KEY_ARCHITECTURE, GgufValue::String(ARCHITECTURE.into())),
        (
            KEY_MODEL_HINT,
            GgufValue::String(meta.model_architecture.clone()),
        ),
        (KEY_LAYER_COUNT, GgufValue::U32(layer_count)),
        (KEY_EARGUARD_META, GgufValue::String(meta_json)),
    ];
    let bytes = gguf::write_f32_vectors(&kv, &tensors)?;
    write_output(out, &bytes)?;
    Ok(ExportReport {
        path: out.to_path_buf(),
        model_hint: meta.model_architecture.clone(),
        layer_count,
        written,
        skipped,
        notes,
    })
}

/// Read a llama.cpp control vector as a `resid_post` steering vector
/// (`direction.N` → layer N, see the module docs), `method = "llama-cpp-import"`.
///
/// With `info`, the hidden size must equal the model's and every N must be a layer of it;
/// the model fields come from `info` (or from an `earguard.meta` the file carries, which
/// keeps the original model identity). Without `info`, `n_layers` is the file's
/// `layer_count` or, if larger, the deepest direction + 1 (a lower bound: some writers store
/// the number of tensors there), and the identity is empty unless `earguard.meta` gives it.
pub fn import_control_vector(path: &Path, info: Option<&ModelInfo>) -> Result<SteeringVector> {
    let bad = |msg: String| SteerError::Artifact(format!("{}: {msg}", path.display()));
    let file = fs::File::open(path).map_err(|e| SteerError::io(path, e))?;
    let mut r = gguf::Reader::new(BufReader::new(file)).map_err(|e| SteerError::io(path, e))?;
    let header = r.read_header().map_err(|e| bad(e.to_string()))?;

    match header.get(KEY_ARCHITECTURE) {
        Some(gguf::Value::Str(a)) if a == ARCHITECTURE => {}
        Some(gguf::Value::Str(a)) => {
            return Err(bad(format!(
                "general.architecture is '{a}', not '{ARCHITECTURE}': this is not a llama.cpp \
                 control vector (a model file?)"
            )))
        }
        Some(_) => return Err(bad("general.architecture is not a string".into())),
        None => {
            return Err(bad(format!(
                "no general.architecture key: not a llama.cpp control vector \
                 (expected '{ARCHITECTURE}')"
            )))
        }
    }
    let model_hint = match header.get(KEY_MODEL_HINT) {
        Some(gguf::Value::Str(h)) => Some(h.clone()),
        Some(_) => return Err(bad(format!("{KEY_MODEL_HINT} is not a string"))),
        None => None,
    };
    let layer_count = match header.get(KEY_LAYER_COUNT) {
        Some(v) => Some(
            v.as_usize()
                .ok_or_else(|| bad(format!("{KEY_LAYER_COUNT} is not a non-negative integer")))?,
        ),
        None => None,
    };
    let embedded: Option<VectorMeta> = match header.get(KEY_EARGUARD_META) {
        Some(gguf::Value::Str(s)) => Some(
            serde_json::from_str(s)
                .map_err(|e| bad(format!("malformed {KEY_EARGUARD_META}: {e}")))?,
        ),
        Some(_) => return Err(bad(format!("{KEY_EARGUARD_META} is not a string"))),
        None => None,
    };

    if header.tensors.is_empty() {
        return Err(bad("no direction tensors".into()));
    }
    let mut hidden: Option<usize> = None;
    let mut layers = Vec::with_capacity(header.tensors.len());
    for t in &header.tensors {
        let layer = layer_of_tensor_name(&t.name).map_err(|e| match e {
            SteerError::Artifact(m) => bad(m),
            other => other,
        })?;
        if t.ggml_type != gguf::GGML_TYPE_F32 {
            return Err(bad(format!(
                "tensor '{}' is {}, but llama.cpp control vectors must be F32",
                t.name,
                gguf::type_name(t.ggml_type)
            )));
        }
        let n = t.dims.first().copied().unwrap_or(0);
        if t.dims.iter().skip(1).any(|&d| d != 1) || n == 0 {
            return Err(bad(format!(
                "tensor '{}' has shape {:?}; a direction must be 1-D and non-empty",
                t.name, t.dims
            )));
        }
        let n = usize::try_from(n).map_err(|_| bad(format!("tensor '{}' is too large", t.name)))?;
        match hidden {
            None => hidden = Some(n),
            Some(h) if h != n => {
                return Err(bad(format!(
                    "tensor '{}' has {n} values but earlier directions have {h}",
                    t.name
                )))
            }
            Some(_) => {}
        }
        layers.push(layer);
    }
    let hidden = hidden.unwrap_or(0);
    let deepest = layers.iter().copied().max().unwrap_or(0);

    if let Some(m) = &embedded {
        if m.hidden_size != hidden || deepest >= m.n_layers {
            return Err(bad(format!(
                "{KEY_EARGUARD_META} describes hidden {} and {} layers, but the tensors have \
                 {hidden} values and reach layer {deepest}",
                m.hidden_size, m.n_layers
            )));
        }
    }
    let n_layers = if let Some(info) = info {
        if hidden != info.hidden_size {
            return Err(SteerError::Incompatible(format!(
                "{}: control vector has hidden size {hidden}; model {} has hidden {} ({} layers)",
                path.display(),
                info.name,
                info.hidden_size,
                info.n_layers
            )));
        }
        if deepest >= info.n_layers {
            return Err(SteerError::Incompatible(format!(
                "{}: control vector has direction.{deepest} (block {deepest}), but model {} has \
                 only {} layers (blocks 0..{}); it was made for a deeper model",
                path.display(),
                info.name,
                info.n_layers,
                info.n_layers.saturating_sub(1)
            )));
        }
        info.n_layers
    } else if let Some(m) = &embedded {
        m.n_layers
    } else {
        layer_count.unwrap_or(0).max(deepest + 1)
    };

    let mut directions = BTreeMap::new();
    for (t, &layer) in header.tensors.iter().zip(&layers) {
        let values = r
            .read_f32s(header.data_offset, t.offset, hidden)
            .map_err(|e| bad(format!("tensor '{}': {e}", t.name)))?;
        if let Some(i) = values.iter().position(|x| !x.is_finite()) {
            return Err(bad(format!(
                "tensor '{}' (layer {layer}) has a non-finite value ({}) at index {i}",
                t.name, values[i]
            )));
        }
        directions.insert(layer, Tensor::from_vec(values, hidden, &Device::Cpu)?);
    }

    let hint = model_hint.clone().unwrap_or_default();
    let mut meta = match (&embedded, info) {
        (Some(m), _) => VectorMeta::new(
            IMPORT_METHOD,
            &m.model_name,
            &m.model_architecture,
            &m.model_identity,
            hidden,
            n_layers,
            HOOK,
        ),
        (None, Some(info)) => VectorMeta::new(
            IMPORT_METHOD,
            &info.name,
            info.architecture,
            &info.identity,
            hidden,
            n_layers,
            HOOK,
        ),
        (None, None) => {
            let name = if hint.is_empty() {
                "unknown"
            } else {
                hint.as_str()
            };
            VectorMeta::new(IMPORT_METHOD, name, &hint, "", hidden, n_layers, HOOK)
        }
    };
    if let Some(m) = &embedded {
        meta.training_sets = m.training_sets.clone();
    }
    let mut extra = serde_json::Map::new();
    extra.insert("source".into(), path.display().to_string().into());
    extra.insert("model_hint".into(), model_hint.into());
    extra.insert("layer_count".into(), layer_count.into());
    if let Some(m) = embedded {
        let value = serde_json::to_value(m)
            .map_err(|e| bad(format!("cannot keep {KEY_EARGUARD_META}: {e}")))?;
        extra.insert("source_meta".into(), value);
    }
    meta.extra = serde_json::Value::Object(extra);
    SteeringVector::new(meta, directions).map_err(|e| match e {
        SteerError::Artifact(m) => bad(m),
        other => other,
    })
}

/// Check that `out` names a file, create its directory, and write `bytes` there atomically.
fn write_output(out: &Path, bytes: &[u8]) -> Result<()> {
    out.file_name().ok_or_else(|| {
        SteerError::Invalid(format!("{}: not a usable output file name", out.display()))
    })?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if out.is_dir() {
        return Err(SteerError::Invalid(format!(
            "{}: is a directory; give a file name such as vector.gguf",
            out.display()
        )));
    }
    fs::create_dir_all(&parent).map_err(|e| SteerError::io(&parent, e))?;
    earguard_data::atomic::write(out, bytes).map_err(|e| SteerError::io(out, e))
}

/// The small part of GGUF a control vector needs: a bounds-checked reader that never trusts
/// a length it has not checked against the file, and the writer (candle's).
///
/// Why our own reader and not candle's `gguf_file::Content::read`, which the model crate
/// uses for trusted model files: on a malformed control vector candle's reader (0.11)
/// panics or silently changes the file's meaning, where llama.cpp refuses it —
/// - `general.alignment = 0` divides by zero (`div_ceil(0)`): a panic, not an error;
/// - a repeated tensor name or metadata key overwrites the earlier one in its `HashMap`
///   (llama.cpp's `gguf_init_from_file` rejects duplicates), so `direction.N` could silently
///   change;
/// - strings that are not UTF-8 are decoded lossily and trailing NULs dropped, so a corrupt
///   `earguard.meta` or model hint would be read as different text;
/// - GGUF version 1 is accepted (llama.cpp refuses it), and a big-endian file is reported as
///   an unknown version.
///
/// The writer has none of these concerns, so export uses candle's `gguf_file::write`; our
/// reader and candle's writer check each other in the tests below and in
/// tests/artifact_llamacpp.rs (llama.cpp's own Python writer made the golden fixture).
mod gguf {
    use super::*;

    pub const GGML_TYPE_F32: u32 = 0;
    const MAGIC: &[u8; 4] = b"GGUF";
    const DEFAULT_ALIGNMENT: u64 = 32;
    const MAX_DIMS: u32 = 4;
    const MAX_DEPTH: usize = 4;

    /// Metadata values; arrays are read (to skip them) but not kept.
    #[derive(Debug, Clone, PartialEq)]
    pub enum Value {
        U32(u32),
        Int(i128),
        Float(f64),
        Bool(bool),
        Str(String),
        Array,
    }

    impl Value {
        pub fn as_usize(&self) -> Option<usize> {
            match *self {
                Value::U32(v) => usize::try_from(v).ok(),
                Value::Int(v) => usize::try_from(v).ok(),
                _ => None,
            }
        }
    }

    pub fn type_name(t: u32) -> String {
        match t {
            0 => "F32".into(),
            1 => "F16".into(),
            30 => "BF16".into(),
            28 => "F64".into(),
            other => format!("ggml type {other} (quantized or unknown)"),
        }
    }

    pub struct TensorInfo {
        pub name: String,
        /// ggml order: `dims[0]` is the contiguous (row) length.
        pub dims: Vec<u64>,
        pub ggml_type: u32,
        pub offset: u64,
    }

    pub struct Header {
        pub kv: Vec<(String, Value)>,
        pub tensors: Vec<TensorInfo>,
        pub data_offset: u64,
    }

    impl Header {
        pub fn get(&self, key: &str) -> Option<&Value> {
            self.kv.iter().find(|(k, _)| k == key).map(|(_, v)| v)
        }
    }

    pub struct Reader<R> {
        r: R,
        pos: u64,
        len: u64,
    }

    fn err(msg: impl Into<String>) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, msg.into())
    }

    impl<R: Read + Seek> Reader<R> {
        pub fn new(mut r: R) -> std::io::Result<Self> {
            let len = r.seek(SeekFrom::End(0))?;
            r.seek(SeekFrom::Start(0))?;
            Ok(Reader { r, pos: 0, len })
        }

        fn remaining(&self) -> u64 {
            self.len.saturating_sub(self.pos)
        }

        fn bytes(&mut self, n: u64, what: &str) -> std::io::Result<Vec<u8>> {
            if n > self.remaining() {
                return Err(err(format!(
                    "truncated or corrupt GGUF: {what} needs {n} bytes at offset {}, the file \
                     has {} left",
                    self.pos,
                    self.remaining()
                )));
            }
            let mut buf = vec![0u8; n as usize];
            self.r.read_exact(&mut buf)?;
            self.pos += n;
            Ok(buf)
        }

        fn array<const N: usize>(&mut self, what: &str) -> std::io::Result<[u8; N]> {
            let b = self.bytes(N as u64, what)?;
            let mut a = [0u8; N];
            a.copy_from_slice(&b);
            Ok(a)
        }

        fn u32(&mut self, what: &str) -> std::io::Result<u32> {
            Ok(u32::from_le_bytes(self.array(what)?))
        }

        fn u64(&mut self, what: &str) -> std::io::Result<u64> {
            Ok(u64::from_le_bytes(self.array(what)?))
        }

        fn string(&mut self, what: &str) -> std::io::Result<String> {
            let n = self.u64(what)?;
            let b = self.bytes(n, what)?;
            String::from_utf8(b).map_err(|_| err(format!("{what} is not valid UTF-8")))
        }

        fn value(&mut self, t: u32, depth: usize, key: &str) -> std::io::Result<Value> {
            Ok(match t {
                0 => Value::Int(self.array::<1>(key)?[0].into()),
                1 => Value::Int(i8::from_le_bytes(self.array(key)?).into()),
                2 => Value::Int(u16::from_le_bytes(self.array(key)?).into()),
                3 => Value::Int(i16::from_le_bytes(self.array(key)?).into()),
                4 => Value::U32(self.u32(key)?),
                5 => Value::Int(i32::from_le_bytes(self.array(key)?).into()),
                6 => Value::Float(f32::from_le_bytes(self.array(key)?).into()),
                7 => match self.array::<1>(key)?[0] {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    b => return Err(err(format!("{key}: bad bool byte {b}"))),
                },
                8 => Value::Str(self.string(key)?),
                9 => {
                    if depth >= MAX_DEPTH {
                        return Err(err(format!("{key}: arrays nested too deeply")));
                    }
                    let et = self.u32(key)?;
                    let n = self.u64(key)?;
                    // Every element takes at least one byte: a length beyond the file is corrupt.
                    if n > self.remaining() {
                        return Err(err(format!(
                            "{key}: array of {n} elements is longer than the file"
                        )));
                    }
                    for _ in 0..n {
                        self.value(et, depth + 1, key)?;
                    }
                    Value::Array
                }
                10 => Value::Int(self.u64(key)?.into()),
                11 => Value::Int(i64::from_le_bytes(self.array(key)?).into()),
                12 => Value::Float(f64::from_le_bytes(self.array(key)?)),
                other => return Err(err(format!("{key}: unknown GGUF value type {other}"))),
            })
        }

        pub fn read_header(&mut self) -> std::io::Result<Header> {
            let magic: [u8; 4] = self
                .array("magic")
                .map_err(|_| err("not a GGUF file (too short for the header)"))?;
            if &magic != MAGIC {
                return Err(err(format!(
                    "not a GGUF file (magic {magic:02x?}, expected \"GGUF\")"
                )));
            }
            let version = self.u32("version")?;
            match version {
                2 | 3 => {}
                1 => {
                    return Err(err(
                        "GGUF version 1 is not supported (llama.cpp refuses it too)",
                    ))
                }
                v if (1..=3).contains(&v.swap_bytes()) => {
                    return Err(err("big-endian GGUF files are not supported"))
                }
                v => return Err(err(format!("unsupported GGUF version {v}"))),
            }
            let n_tensors = self.u64("tensor count")?;
            let n_kv = self.u64("metadata count")?;
            // A key/value takes at least 13 bytes and a tensor info at least 24.
            if n_kv
                .saturating_mul(13)
                .saturating_add(n_tensors.saturating_mul(24))
                > self.remaining()
            {
                return Err(err(format!(
                    "corrupt GGUF header: {n_tensors} tensors and {n_kv} metadata entries cannot \
                     fit in a {}-byte file",
                    self.len
                )));
            }
            let mut kv: Vec<(String, Value)> = Vec::new();
            let mut keys = HashSet::new();
            for _ in 0..n_kv {
                let key = self.string("metadata key")?;
                let t = self.u32(&key)?;
                let v = self.value(t, 0, &key)?;
                if !keys.insert(key.clone()) {
                    return Err(err(format!("duplicate metadata key '{key}'")));
                }
                kv.push((key, v));
            }
            let mut tensors = Vec::new();
            let mut names = HashSet::new();
            for _ in 0..n_tensors {
                let name = self.string("tensor name")?;
                let n_dims = self.u32(&name)?;
                if n_dims == 0 || n_dims > MAX_DIMS {
                    return Err(err(format!("tensor '{name}' has {n_dims} dimensions")));
                }
                let dims = (0..n_dims)
                    .map(|_| self.u64(&name))
                    .collect::<std::io::Result<Vec<_>>>()?;
                let ggml_type = self.u32(&name)?;
                let offset = self.u64(&name)?;
                if !names.insert(name.clone()) {
                    return Err(err(format!("duplicate tensor '{name}'")));
                }
                tensors.push(TensorInfo {
                    name,
                    dims,
                    ggml_type,
                    offset,
                });
            }
            let alignment = match kv.iter().find(|(k, _)| k == KEY_ALIGNMENT).map(|(_, v)| v) {
                None => DEFAULT_ALIGNMENT,
                Some(Value::U32(a)) if a.is_power_of_two() => u64::from(*a),
                Some(v) => return Err(err(format!("invalid {KEY_ALIGNMENT} {v:?}"))),
            };
            let data_offset = self.pos.div_ceil(alignment) * alignment;
            Ok(Header {
                kv,
                tensors,
                data_offset,
            })
        }

        /// `n` little-endian f32 values at `data_offset + offset`.
        pub fn read_f32s(
            &mut self,
            data_offset: u64,
            offset: u64,
            n: usize,
        ) -> std::io::Result<Vec<f32>> {
            let start = data_offset
                .checked_add(offset)
                .filter(|&s| s <= self.len)
                .ok_or_else(|| {
                    err(format!(
                        "data offset {offset} lies beyond the end of the file"
                    ))
                })?;
            self.r.seek(SeekFrom::Start(start))?;
            self.pos = start;
            let nbytes = (n as u64)
                .checked_mul(4)
                .ok_or_else(|| err("tensor size overflows"))?;
            let b = self.bytes(nbytes, "tensor data")?;
            Ok(b.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect())
        }
    }

    /// A GGUF file with the given metadata and 1-D F32 tensors, written by candle's GGUF
    /// writer (version 2, which llama.cpp reads like 3; every tensor, the last one included,
    /// padded to the default 32-byte alignment as ggml expects).
    pub fn write_f32_vectors(
        kv: &[(&str, GgufValue)],
        tensors: &[(String, Tensor)],
    ) -> Result<Vec<u8>> {
        let tensors = tensors
            .iter()
            .map(|(name, t)| Ok((name.as_str(), QTensor::quantize(t, GgmlDType::F32)?)))
            .collect::<Result<Vec<_>>>()?;
        let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (*n, t)).collect();
        let kv: Vec<(&str, &GgufValue)> = kv.iter().map(|(k, v)| (*k, v)).collect();
        let mut out = std::io::Cursor::new(Vec::new());
        gguf_file::write(&mut out, &kv, &tensors)?;
        Ok(out.into_inner())
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use std::io::Cursor;

        fn vector(values: &[f32]) -> Tensor {
            Tensor::new(values, &Device::Cpu).unwrap()
        }

        #[test]
        fn writer_and_reader_agree() {
            let kv = [
                (
                    "general.architecture",
                    GgufValue::String("controlvector".into()),
                ),
                ("n", GgufValue::U32(7)),
            ];
            let tensors = vec![("direction.1".to_string(), vector(&[1.5, -2.0, 3.25]))];
            let bytes = write_f32_vectors(&kv, &tensors).unwrap();
            assert_eq!(bytes.len() % 32, 0);
            let mut r = Reader::new(Cursor::new(bytes)).unwrap();
            let h = r.read_header().unwrap();
            assert_eq!(h.get("n"), Some(&Value::U32(7)));
            assert_eq!(h.tensors[0].dims, [3]);
            assert_eq!(
                r.read_f32s(h.data_offset, h.tensors[0].offset, 3).unwrap(),
                [1.5, -2.0, 3.25]
            );
        }

        #[test]
        fn every_truncation_is_an_error_not_a_panic() {
            let kv = [(
                "general.architecture",
                GgufValue::String("controlvector".into()),
            )];
            let tensors = vec![("direction.1".to_string(), vector(&[1.0; 8]))];
            let bytes = write_f32_vectors(&kv, &tensors).unwrap();
            for cut in 0..bytes.len() - 32 {
                let mut r = Reader::new(Cursor::new(bytes[..cut].to_vec())).unwrap();
                let ok = r
                    .read_header()
                    .and_then(|h| r.read_f32s(h.data_offset, h.tensors[0].offset, 8));
                assert!(ok.is_err(), "cut at {cut} was accepted");
            }
        }

        #[test]
        fn huge_lengths_are_refused_before_allocating() {
            let mut b = Vec::new();
            b.extend_from_slice(b"GGUF");
            b.extend_from_slice(&3u32.to_le_bytes());
            b.extend_from_slice(&0u64.to_le_bytes());
            b.extend_from_slice(&1u64.to_le_bytes());
            b.extend_from_slice(&u64::MAX.to_le_bytes()); // key length
            b.extend_from_slice(&[0u8; 16]);
            let mut r = Reader::new(Cursor::new(b)).unwrap();
            assert!(r.read_header().is_err());
        }
    }
}
