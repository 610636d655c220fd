//! CTranslate2 checkpoints: a reader for `model.bin` and a converter from CTranslate2's
//! `WhisperSpec` (e.g. faster-whisper's models) to an HF-named Whisper encoder.
//!
//! ## `model.bin` (binary versions 1 to 6, little-endian)
//!
//! ```text
//! u32 binary_version
//! [v >= 2] string spec_name, u32 spec_revision
//! u32 n_variables, then per variable:
//!     string name; u8 rank; u32 dims[rank];
//!     [v >= 4] u8 dtype_id, u32 n_bytes      (dtype ids: 0 f32, 1 i8, 2 i16, 3 i32, 4 f16, 5 bf16)
//!     [v <  4] u8 item_size, u32 n_elements   (item size 4 -> f32, 2 -> i16, 1 -> i8)
//!     bytes data (row-major)
//! [v >= 3] u32 n_aliases, then per alias: string alias, string target
//! string = u16 length (including a trailing NUL), UTF-8 bytes, NUL
//! ```
//!
//! Scalars (e.g. `encoder/num_heads`) are rank-0 variables. Quantized weights (`int8`, `int16`
//! models) carry a sibling `{name}_scale`; the float weight is `q / scale` (per output row for
//! int8, one global scale for int16).
//!
//! ## WhisperSpec encoder → HF `WhisperEncoder` names
//!
//! | CTranslate2 (`encoder/…`) | HF (`model.encoder.…`) |
//! |---|---|
//! | `conv1/{weight,bias}`, `conv2/{weight,bias}` | `conv1.{weight,bias}`, `conv2.{weight,bias}` (same `[out, in, 3]` layout) |
//! | `position_encodings/encodings` `[1500, d]` | `embed_positions.weight` (see below) |
//! | `layer_{i}/self_attention/layer_norm/{gamma,beta}` | `layers.{i}.self_attn_layer_norm.{weight,bias}` |
//! | `layer_{i}/self_attention/linear_0/weight` `[3d, d]` | rows `0..d` → `layers.{i}.self_attn.q_proj.weight`, `d..2d` → `k_proj.weight`, `2d..3d` → `v_proj.weight` |
//! | `layer_{i}/self_attention/linear_0/bias` `[3d]` | `q_proj.bias`, (k part dropped), `v_proj.bias` |
//! | `layer_{i}/self_attention/linear_1/{weight,bias}` | `layers.{i}.self_attn.out_proj.{weight,bias}` |
//! | `layer_{i}/ffn/layer_norm/{gamma,beta}` | `layers.{i}.final_layer_norm.{weight,bias}` |
//! | `layer_{i}/ffn/linear_0/{weight,bias}` | `layers.{i}.fc1.{weight,bias}` |
//! | `layer_{i}/ffn/linear_1/{weight,bias}` | `layers.{i}.fc2.{weight,bias}` |
//! | `layer_norm/{gamma,beta}` | `layer_norm.{weight,bias}` |
//! | `num_heads` (scalar) | `encoder_attention_heads` in config.json |
//!
//! The fused q/k/v projection is `[q; k; v]` (CTranslate2's converters concatenate HF's
//! `q_proj`, `k_proj`, `v_proj` in that order and fill the missing k bias with zeros). A k bias
//! would not change the attention anyway (it adds the same `q·b` to every key's score, which
//! the softmax cancels), so dropping it is exact whatever it holds.
//!
//! Position encodings: Whisper's encoder positions are its fixed sinusoids. When the stored
//! table is half precision and equals [`sinusoids`] up to that precision, the converter writes
//! the f32 sinusoids (what OpenAI's and HF's checkpoints hold) instead of the rounded copy;
//! any other table is written as stored. Every tensor is written as f32 (widening f16/bf16 is
//! exact; quantized weights are dequantized). `convert ct2-whisper` writes the encoder only;
//! config.json still records the decoder's sizes so that HF-style Whisper configs parse.
//!
//! ## WhisperSpec decoder → HF `WhisperDecoder` names ([`whisper_decoder_tensors`])
//!
//! The same per-layer names as the encoder for self-attention and MLP, plus:
//!
//! | CTranslate2 (`decoder/…`) | HF (`model.decoder.…`) |
//! |---|---|
//! | `embeddings/weight` `[vocab, d]` (`projection/weight` is an alias: tied) | `embed_tokens.weight` |
//! | `position_encodings/encodings` `[448, d]` (learned) | `embed_positions.weight` |
//! | `layer_{i}/attention/layer_norm/{gamma,beta}` | `layers.{i}.encoder_attn_layer_norm.{weight,bias}` |
//! | `layer_{i}/attention/linear_0/{weight,bias}` | `layers.{i}.encoder_attn.q_proj.*` |
//! | `layer_{i}/attention/linear_1/weight` `[2d, d]` | rows `0..d` → `encoder_attn.k_proj.weight`, `d..2d` → `v_proj.weight` (k bias dropped) |
//! | `layer_{i}/attention/linear_2/{weight,bias}` | `layers.{i}.encoder_attn.out_proj.*` |

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use earguard_audio::decode::{SAMPLE_RATE, WINDOW_SAMPLES, WINDOW_SECONDS};
use earguard_audio::mel::{HOP_LENGTH, N_FFT, N_FRAMES};

use crate::error::{ModelError, Result};
use crate::whisper::sinusoids;

/// Element types of CTranslate2 variables (`DataType` in its C++ sources, in id order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ct2DType {
    F32,
    I8,
    I16,
    I32,
    F16,
    BF16,
}

impl Ct2DType {
    fn from_id(id: u8) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::I8,
            2 => Self::I16,
            3 => Self::I32,
            4 => Self::F16,
            5 => Self::BF16,
            _ => return None,
        })
    }

    pub fn size(&self) -> usize {
        match self {
            Self::I8 => 1,
            Self::I16 | Self::F16 | Self::BF16 => 2,
            Self::F32 | Self::I32 => 4,
        }
    }

    pub fn is_float(&self) -> bool {
        matches!(self, Self::F32 | Self::F16 | Self::BF16)
    }
}

/// One variable of a `model.bin`: its name, shape, type and where its bytes are.
#[derive(Debug, Clone)]
pub struct Ct2Variable {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: Ct2DType,
    range: std::ops::Range<usize>,
}

/// A parsed CTranslate2 `model.bin` (the whole file is held in memory).
pub struct Ct2Model {
    pub path: PathBuf,
    pub binary_version: u32,
    /// e.g. `WhisperSpec` (empty for binary version 1).
    pub spec: String,
    pub spec_revision: u32,
    variables: Vec<Ct2Variable>,
    by_name: HashMap<String, usize>,
    /// alias -> variable it shares data with.
    pub aliases: BTreeMap<String, String>,
    data: Vec<u8>,
}

impl std::fmt::Debug for Ct2Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ct2Model")
            .field("path", &self.path)
            .field("binary_version", &self.binary_version)
            .field("spec", &self.spec)
            .field("spec_revision", &self.spec_revision)
            .field("variables", &self.variables.len())
            .field("aliases", &self.aliases)
            .finish()
    }
}

/// Newest `model.bin` layout this reader knows.
pub const MAX_BINARY_VERSION: u32 = 6;

struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| {
                ModelError::file(
                    self.path,
                    format!(
                        "truncated: {what} needs {n} bytes at offset {} but the file has {} bytes",
                        self.pos,
                        self.data.len()
                    ),
                )
            })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.u16(what)? as usize;
        let at = self.pos;
        let b = self.take(n, what)?;
        let b = b.strip_suffix(&[0]).unwrap_or(b);
        String::from_utf8(b.to_vec())
            .map_err(|_| ModelError::file(self.path, format!("{what} at offset {at} is not UTF-8")))
    }
}

impl Ct2Model {
    /// Read and check a `model.bin`.
    pub fn read(path: &Path) -> Result<Self> {
        let data =
            std::fs::read(path).map_err(|e| ModelError::file(path, format!("cannot read: {e}")))?;
        Self::parse(data, path)
    }

    /// Parse the bytes of a `model.bin`; `path` is only used in errors.
    pub fn parse(data: Vec<u8>, path: &Path) -> Result<Self> {
        let mut c = Cursor {
            data: &data,
            pos: 0,
            path,
        };
        let version = c.u32("binary version")?;
        if version == 0 || version > MAX_BINARY_VERSION {
            return Err(ModelError::file(
                path,
                format!(
                    "not a CTranslate2 model.bin this reader knows (binary version {version}, \
                     supported 1 to {MAX_BINARY_VERSION})"
                ),
            ));
        }
        let (spec, spec_revision) = if version >= 2 {
            (c.string("spec name")?, c.u32("spec revision")?)
        } else {
            (String::new(), 1)
        };
        let n = c.u32("variable count")? as usize;
        let mut variables = Vec::with_capacity(n.min(1 << 16));
        let mut by_name = HashMap::new();
        for i in 0..n {
            let name = c.string(&format!("name of variable {i}"))?;
            let rank = c.u8(&format!("rank of {name}"))? as usize;
            if rank > 8 {
                return Err(ModelError::file(
                    path,
                    format!("variable {name} has rank {rank}"),
                ));
            }
            let mut shape = Vec::with_capacity(rank);
            for _ in 0..rank {
                shape.push(c.u32(&format!("shape of {name}"))? as usize);
            }
            let elems = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            let (dtype, n_bytes) = if version >= 4 {
                let id = c.u8(&format!("dtype of {name}"))?;
                let dtype = Ct2DType::from_id(id).ok_or_else(|| {
                    ModelError::file(path, format!("variable {name} has unknown dtype id {id}"))
                })?;
                (dtype, c.u32(&format!("size of {name}"))? as usize)
            } else {
                let item = c.u8(&format!("item size of {name}"))?;
                let count = c.u32(&format!("element count of {name}"))? as usize;
                let dtype = match item {
                    4 => Ct2DType::F32,
                    2 => Ct2DType::I16,
                    1 => Ct2DType::I8,
                    _ => {
                        return Err(ModelError::file(
                            path,
                            format!("variable {name} has item size {item}"),
                        ))
                    }
                };
                (dtype, count.saturating_mul(item as usize))
            };
            if elems.and_then(|e| e.checked_mul(dtype.size())) != Some(n_bytes) {
                return Err(ModelError::file(
                    path,
                    format!(
                        "variable {name}: {n_bytes} bytes do not fit shape {shape:?} of {dtype:?}"
                    ),
                ));
            }
            let start = c.pos;
            c.take(n_bytes, &format!("data of {name}"))?;
            by_name.insert(name.clone(), variables.len());
            variables.push(Ct2Variable {
                name,
                shape,
                dtype,
                range: start..start + n_bytes,
            });
        }
        let mut aliases = BTreeMap::new();
        if version >= 3 {
            let n = c.u32("alias count")? as usize;
            for _ in 0..n {
                let alias = c.string("alias name")?;
                let target = c.string(&format!("target of alias {alias}"))?;
                if !by_name.contains_key(&target) {
                    return Err(ModelError::file(
                        path,
                        format!("alias {alias} points to missing variable {target}"),
                    ));
                }
                aliases.insert(alias, target);
            }
        }
        if c.pos != data.len() {
            return Err(ModelError::file(
                path,
                format!(
                    "{} unexpected bytes after the last record",
                    data.len() - c.pos
                ),
            ));
        }
        Ok(Self {
            path: path.to_path_buf(),
            binary_version: version,
            spec,
            spec_revision,
            variables,
            by_name,
            aliases,
            data,
        })
    }

    /// All variables, in file order.
    pub fn variables(&self) -> &[Ct2Variable] {
        &self.variables
    }

    /// A variable by name (aliases resolved).
    pub fn get(&self, name: &str) -> Option<&Ct2Variable> {
        let name = self.aliases.get(name).map(String::as_str).unwrap_or(name);
        self.by_name.get(name).map(|&i| &self.variables[i])
    }

    fn require(&self, name: &str) -> Result<&Ct2Variable> {
        self.get(name)
            .ok_or_else(|| ModelError::file(&self.path, format!("missing variable {name}")))
    }

    pub fn bytes(&self, var: &Ct2Variable) -> &[u8] {
        &self.data[var.range.clone()]
    }

    /// The variable as stored, widened to f32 without rescaling.
    fn raw_f32(&self, var: &Ct2Variable) -> Result<Tensor> {
        let b = self.bytes(var);
        let dev = &Device::Cpu;
        let t = match var.dtype {
            Ct2DType::F32 => Tensor::from_raw_buffer(b, DType::F32, &var.shape, dev)?,
            Ct2DType::F16 => {
                Tensor::from_raw_buffer(b, DType::F16, &var.shape, dev)?.to_dtype(DType::F32)?
            }
            Ct2DType::BF16 => {
                Tensor::from_raw_buffer(b, DType::BF16, &var.shape, dev)?.to_dtype(DType::F32)?
            }
            Ct2DType::I8 => {
                let v: Vec<f32> = b.iter().map(|&x| x as i8 as f32).collect();
                Tensor::from_vec(v, var.shape.as_slice(), dev)?
            }
            Ct2DType::I16 => {
                let v: Vec<f32> = b
                    .chunks_exact(2)
                    .map(|x| i16::from_le_bytes([x[0], x[1]]) as f32)
                    .collect();
                Tensor::from_vec(v, var.shape.as_slice(), dev)?
            }
            Ct2DType::I32 => {
                let v: Vec<f32> = b
                    .chunks_exact(4)
                    .map(|x| i32::from_le_bytes([x[0], x[1], x[2], x[3]]) as f32)
                    .collect();
                Tensor::from_vec(v, var.shape.as_slice(), dev)?
            }
        };
        Ok(t)
    }

    /// A weight as f32: float variables widened, quantized ones divided by their `_scale`.
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        let var = self.require(name)?;
        let t = self.raw_f32(var)?;
        if var.dtype.is_float() {
            return Ok(t);
        }
        let Some(scale_var) = self.get(&format!("{name}_scale")) else {
            return Err(ModelError::file(
                &self.path,
                format!(
                    "variable {name} is {:?} without a {name}_scale to dequantize it",
                    var.dtype
                ),
            ));
        };
        let scale = self.raw_f32(scale_var)?;
        let rows = var.shape.first().copied().unwrap_or(1);
        let bshape: Vec<usize> = match scale.elem_count() {
            1 => vec![1; var.shape.len().max(1)],
            n if n == rows => {
                let mut s = vec![1; var.shape.len()];
                s[0] = rows;
                s
            }
            n => {
                return Err(ModelError::file(
                    &self.path,
                    format!("{name}_scale has {n} values for a weight with {rows} rows"),
                ))
            }
        };
        Ok(t.broadcast_div(&scale.reshape(bshape)?)?)
    }

    /// An integer scalar (e.g. `encoder/num_heads`).
    pub fn scalar(&self, name: &str) -> Result<i64> {
        let var = self.require(name)?;
        if var.shape.iter().product::<usize>() != 1 || var.dtype.is_float() {
            return Err(ModelError::file(
                &self.path,
                format!(
                    "{name} is not an integer scalar ({:?} {:?})",
                    var.dtype, var.shape
                ),
            ));
        }
        let b = self.bytes(var);
        Ok(match var.dtype {
            Ct2DType::I8 => b[0] as i8 as i64,
            Ct2DType::I16 => i16::from_le_bytes([b[0], b[1]]) as i64,
            _ => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64,
        })
    }

    /// Distinct `layer_{i}` indices under `scope/` (e.g. `encoder`): the layer count.
    pub fn layer_count(&self, scope: &str) -> usize {
        let prefix = format!("{scope}/layer_");
        self.variables
            .iter()
            .filter_map(|v| {
                v.name
                    .strip_prefix(&prefix)?
                    .split('/')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .map(|i| i + 1)
            .max()
            .unwrap_or(0)
    }
}

/// Convert a CTranslate2 Whisper directory (`model.bin`, optional `tokenizer.json`) into an HF
/// Whisper encoder checkpoint: `model.safetensors` (f32, `model.encoder.*` names, see the
/// module docs for the mapping), `config.json` (HF `WhisperConfig` fields),
/// `preprocessor_config.json` (HF `WhisperFeatureExtractor`) and a copy of `tokenizer.json`.
pub fn convert_ct2_whisper(in_dir: &Path, out_dir: &Path) -> Result<()> {
    let bin = in_dir.join("model.bin");
    if !bin.is_file() {
        return Err(ModelError::file(
            &bin,
            "missing: expected a CTranslate2 model directory",
        ));
    }
    let (tensors, config) = whisper_encoder_tensors(&read_whisper(&bin)?)?;
    std::fs::create_dir_all(out_dir)
        .map_err(|e| ModelError::file(out_dir, format!("cannot create: {e}")))?;
    let st = out_dir.join("model.safetensors");
    earguard_data::atomic::write_with(&st, |tmp| {
        candle_core::safetensors::save(&tensors, tmp).map_err(std::io::Error::other)
    })
    .map_err(|e| ModelError::file(&st, format!("cannot write: {e}")))?;
    let n_mels = config["num_mel_bins"].clone();
    write_json(&out_dir.join("config.json"), &config)?;
    let pre = serde_json::json!({
        "feature_extractor_type": "WhisperFeatureExtractor",
        "feature_size": n_mels,
        "sampling_rate": SAMPLE_RATE,
        "hop_length": HOP_LENGTH,
        "n_fft": N_FFT,
        "chunk_length": WINDOW_SECONDS,
        "n_samples": WINDOW_SAMPLES,
        "nb_max_frames": N_FRAMES,
        "padding_side": "right",
        "padding_value": 0.0,
        "return_attention_mask": false,
    });
    write_json(&out_dir.join("preprocessor_config.json"), &pre)?;
    let tok = in_dir.join("tokenizer.json");
    if tok.is_file() {
        let dest = out_dir.join("tokenizer.json");
        earguard_data::atomic::write_with(&dest, |tmp| std::fs::copy(&tok, tmp).map(|_| ()))
            .map_err(|e| ModelError::file(&dest, format!("cannot copy: {e}")))?;
    }
    Ok(())
}

/// Read a CTranslate2 `model.bin` that must be a Whisper model.
pub fn read_whisper(bin: &Path) -> Result<Ct2Model> {
    let model = Ct2Model::read(bin)?;
    if model.spec != "WhisperSpec" {
        return Err(ModelError::file(
            bin,
            format!(
                "is a CTranslate2 '{}' model, not a WhisperSpec one",
                model.spec
            ),
        ));
    }
    Ok(model)
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| ModelError::file(path, format!("cannot serialize: {e}")))?;
    earguard_data::atomic::write(path, (text + "\n").as_bytes())
        .map_err(|e| ModelError::file(path, format!("cannot write: {e}")))
}

/// HF-named encoder tensors and the HF config of a WhisperSpec model.
pub fn whisper_encoder_tensors(
    model: &Ct2Model,
) -> Result<(HashMap<String, Tensor>, serde_json::Value)> {
    let err = |m: String| ModelError::file(&model.path, m);
    let conv1 = model.tensor("encoder/conv1/weight")?;
    let (d, n_mels, k) = conv1
        .dims3()
        .map_err(|_| err(format!("encoder/conv1/weight has shape {:?}", conv1.dims())))?;
    if k != 3 {
        return Err(err(format!(
            "encoder/conv1/weight has kernel size {k}, Whisper's is 3"
        )));
    }
    let n_heads = model.scalar("encoder/num_heads")?;
    if n_heads <= 0 || d % n_heads as usize != 0 {
        return Err(err(format!(
            "encoder/num_heads {n_heads} does not divide d_model {d}"
        )));
    }
    let n_layers = model.layer_count("encoder");
    if n_layers == 0 {
        return Err(err("the model has no encoder/layer_* variables".into()));
    }
    let mut r = Renamer::new(model, "encoder/", "model.encoder.");
    r.mark_used("num_heads");
    for conv in ["conv1", "conv2"] {
        r.linear(conv, conv)?;
    }
    let pos_name = "encoder/position_encodings/encodings";
    let pos = r.get("position_encodings/encodings")?;
    let (n_pos, pd) = pos
        .dims2()
        .map_err(|_| err(format!("{pos_name} has shape {:?}", pos.dims())))?;
    if pd != d {
        return Err(err(format!("{pos_name} has width {pd}, d_model is {d}")));
    }
    r.put(
        "embed_positions.weight",
        exact_positions(model, pos_name, pos)?,
    );
    let mut ffn_dim = 0;
    for l in 0..n_layers {
        let c = |s: &str| format!("layer_{l}/{s}");
        let h = |s: &str| format!("layers.{l}.{s}");
        r.self_attention(l, d)?;
        ffn_dim = r.ffn(&c("ffn"), &h(""))?;
    }
    r.norm("layer_norm", "layer_norm")?;
    let out = r.finish()?;

    let mut config = serde_json::json!({
        "architectures": ["WhisperForConditionalGeneration"],
        "model_type": "whisper",
        "d_model": d,
        "encoder_layers": n_layers,
        "encoder_attention_heads": n_heads,
        "encoder_ffn_dim": ffn_dim,
        "num_mel_bins": n_mels,
        "max_source_positions": n_pos,
        "activation_function": "gelu",
        "scale_embedding": false,
        "torch_dtype": "float32",
        "earguard_converted_from": format!(
            "CTranslate2 {} revision {} (binary version {}); encoder weights only",
            model.spec, model.spec_revision, model.binary_version
        ),
    });
    // The decoder's sizes, so that the config is a complete WhisperConfig.
    if let (Some(embed), Ok(heads)) = (
        model.get("decoder/embeddings/weight"),
        model.scalar("decoder/num_heads"),
    ) {
        let obj = config
            .as_object_mut()
            .ok_or_else(|| err("config is not an object".into()))?;
        obj.insert(
            "vocab_size".into(),
            embed.shape.first().copied().unwrap_or(0).into(),
        );
        obj.insert("decoder_layers".into(), model.layer_count("decoder").into());
        obj.insert("decoder_attention_heads".into(), heads.into());
        if let Some(p) = model.get("decoder/position_encodings/encodings") {
            obj.insert(
                "max_target_positions".into(),
                p.shape.first().copied().unwrap_or(0).into(),
            );
        }
        if let Some(f) = model.get("decoder/layer_0/ffn/linear_0/weight") {
            obj.insert(
                "decoder_ffn_dim".into(),
                f.shape.first().copied().unwrap_or(0).into(),
            );
        }
    }
    Ok((out, config))
}

/// HF-named decoder tensors (`model.decoder.*`, the names candle-transformers' and HF's
/// Whisper decoders read) of a WhisperSpec model: the token embeddings (also its output
/// projection, tied), the learned positions, and per layer the self-attention (fused
/// q/k/v as in the encoder), the cross-attention (`attention/linear_0` q, `linear_1` fused
/// k/v, `linear_2` out) and the MLP. Refused when the decoder is not Whisper's (embeddings
/// scaled, post-norm, ALiBi) or a variable would be left behind.
pub fn whisper_decoder_tensors(model: &Ct2Model) -> Result<HashMap<String, Tensor>> {
    let err = |m: String| ModelError::file(&model.path, m);
    let embed = model.tensor("decoder/embeddings/weight")?;
    let (_, d) = embed.dims2().map_err(|_| {
        err(format!(
            "decoder/embeddings/weight has shape {:?}",
            embed.dims()
        ))
    })?;
    for (flag, want) in [
        ("scale_embeddings", 0),
        ("pre_norm", 1),
        ("alibi", 0),
        ("start_from_zero_embedding", 0),
    ] {
        let name = format!("decoder/{flag}");
        if model.get(&name).is_some() && model.scalar(&name)? != want {
            return Err(err(format!(
                "{name} is {}, Whisper's decoder has {want}",
                model.scalar(&name)?
            )));
        }
    }
    let n_layers = model.layer_count("decoder");
    if n_layers == 0 {
        return Err(err("the model has no decoder/layer_* variables".into()));
    }
    let mut r = Renamer::new(model, "decoder/", "model.decoder.");
    for known in [
        "num_heads",
        "activation",
        "alignment_heads",
        "alignment_layer",
        "scale_embeddings",
        "pre_norm",
        "alibi",
        "start_from_zero_embedding",
    ] {
        r.mark_used(known);
    }
    let e = r.get("embeddings/weight")?;
    r.put("embed_tokens.weight", e);
    let p = r.get("position_encodings/encodings")?;
    r.put("embed_positions.weight", p);
    for l in 0..n_layers {
        let c = |s: &str| format!("layer_{l}/{s}");
        let h = |s: &str| format!("layers.{l}.{s}");
        r.self_attention(l, d)?;
        r.split(&c("attention/linear_0"), &h("encoder_attn"), &["q"], d)?;
        r.split(&c("attention/linear_1"), &h("encoder_attn"), &["k", "v"], d)?;
        r.linear(&c("attention/linear_2"), &h("encoder_attn.out_proj"))?;
        r.norm(&c("attention/layer_norm"), &h("encoder_attn_layer_norm"))?;
        r.ffn(&c("ffn"), &h(""))?;
    }
    r.norm("layer_norm", "layer_norm")?;
    r.finish()
}

/// Renames one scope of a CTranslate2 model (`encoder/`, `decoder/`) to HF names, recording
/// what it read so that [`Renamer::finish`] can refuse a variable left behind.
struct Renamer<'a> {
    model: &'a Ct2Model,
    ct2: &'static str,
    hf: &'static str,
    out: HashMap<String, Tensor>,
    used: std::collections::HashSet<String>,
}

impl<'a> Renamer<'a> {
    fn new(model: &'a Ct2Model, ct2: &'static str, hf: &'static str) -> Self {
        Self {
            model,
            ct2,
            hf,
            out: HashMap::new(),
            used: Default::default(),
        }
    }

    fn mark_used(&mut self, rel: &str) {
        self.used.insert(format!("{}{rel}", self.ct2));
    }

    fn get(&mut self, rel: &str) -> Result<Tensor> {
        let name = format!("{}{rel}", self.ct2);
        let t = self.model.tensor(&name)?;
        self.used.insert(name);
        Ok(t)
    }

    fn put(&mut self, rel: &str, t: Tensor) {
        self.out.insert(format!("{}{rel}", self.hf), t);
    }

    /// `{weight,bias}` → `{weight,bias}`.
    fn linear(&mut self, ct2: &str, hf: &str) -> Result<()> {
        for p in ["weight", "bias"] {
            let t = self.get(&format!("{ct2}/{p}"))?;
            self.put(&format!("{hf}.{p}"), t);
        }
        Ok(())
    }

    /// A layer norm's `{gamma,beta}` → `{weight,bias}`.
    fn norm(&mut self, ct2: &str, hf: &str) -> Result<()> {
        for (c, h) in [("gamma", "weight"), ("beta", "bias")] {
            let t = self.get(&format!("{ct2}/{c}"))?;
            self.put(&format!("{hf}.{h}"), t);
        }
        Ok(())
    }

    /// A fused projection (`parts` stacked by rows, each `[d, d]`) → `{hf}.{part}_proj.*`.
    /// The k bias is dropped: HF's Whisper has none (CTranslate2 stores zeros), and it could
    /// not change the attention anyway (it adds the same `q·b` to every key's score).
    fn split(&mut self, ct2: &str, hf: &str, parts: &[&str], d: usize) -> Result<()> {
        let n = parts.len();
        let (w_name, b_name) = (format!("{ct2}/weight"), format!("{ct2}/bias"));
        let scope = self.ct2;
        let w = self.get(&w_name)?;
        let b = self.get(&b_name)?;
        if w.dims() != [n * d, d] || b.dims() != [n * d] {
            return Err(ModelError::file(
                &self.model.path,
                format!(
                    "{scope}{w_name} / {scope}{b_name} have shapes {:?} / {:?}, expected [{}, {d}] / [{}] ({})",
                    w.dims(),
                    b.dims(),
                    n * d,
                    n * d,
                    parts.join(", ")
                ),
            ));
        }
        for (i, part) in parts.iter().enumerate() {
            self.put(
                &format!("{hf}.{part}_proj.weight"),
                w.narrow(0, i * d, d)?.contiguous()?,
            );
            if *part != "k" {
                self.put(
                    &format!("{hf}.{part}_proj.bias"),
                    b.narrow(0, i * d, d)?.contiguous()?,
                );
            }
        }
        Ok(())
    }

    /// Layer `l`'s self-attention (fused q/k/v, output, pre-norm), shared by encoder and decoder.
    fn self_attention(&mut self, l: usize, d: usize) -> Result<()> {
        let (c, h) = (format!("layer_{l}/self_attention"), format!("layers.{l}."));
        self.split(
            &format!("{c}/linear_0"),
            &format!("{h}self_attn"),
            &["q", "k", "v"],
            d,
        )?;
        self.linear(&format!("{c}/linear_1"), &format!("{h}self_attn.out_proj"))?;
        self.norm(
            &format!("{c}/layer_norm"),
            &format!("{h}self_attn_layer_norm"),
        )
    }

    /// A pre-norm MLP (`{ct2}/layer_norm`, `linear_0`, `linear_1`) → `{hf}final_layer_norm`,
    /// `fc1`, `fc2`; its hidden width.
    fn ffn(&mut self, ct2: &str, hf: &str) -> Result<usize> {
        self.norm(
            &format!("{ct2}/layer_norm"),
            &format!("{hf}final_layer_norm"),
        )?;
        self.linear(&format!("{ct2}/linear_0"), &format!("{hf}fc1"))?;
        self.linear(&format!("{ct2}/linear_1"), &format!("{hf}fc2"))?;
        Ok(self.out[&format!("{}{hf}fc1.weight", self.hf)].dim(0)?)
    }

    /// The renamed tensors, unless a variable of the scope was not read (quantization scales
    /// belong to their weights).
    fn finish(self) -> Result<HashMap<String, Tensor>> {
        if let Some(v) = self.model.variables().iter().find(|v| {
            v.name.starts_with(self.ct2)
                && !v.name.ends_with("_scale")
                && !self.used.contains(&v.name)
        }) {
            return Err(ModelError::file(
                &self.model.path,
                format!(
                    "variable {} has no HF counterpart in this converter",
                    v.name
                ),
            ));
        }
        Ok(self.out)
    }
}

/// The position table to write: Whisper's f32 sinusoids when the stored table is a
/// half-precision copy of them, else the stored values.
fn exact_positions(model: &Ct2Model, name: &str, stored: Tensor) -> Result<Tensor> {
    let tol = match model.get(name).map(|v| v.dtype) {
        Some(Ct2DType::F16) => 1e-3,
        Some(Ct2DType::BF16) => 8e-3,
        _ => return Ok(stored),
    };
    let (n, d) = stored.dims2()?;
    let exact = sinusoids(n, d)?;
    let diff = (&exact - &stored)?.abs()?.max_all()?.to_scalar::<f32>()?;
    Ok(if diff <= tol { exact } else { stored })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&((s.len() + 1) as u16).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    fn var(out: &mut Vec<u8>, name: &str, shape: &[u32], dtype: u8, data: &[u8]) {
        string(out, name);
        out.push(shape.len() as u8);
        for d in shape {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.push(dtype);
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(data);
    }

    fn tiny() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&6u32.to_le_bytes());
        string(&mut b, "WhisperSpec");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&3u32.to_le_bytes());
        var(&mut b, "encoder/num_heads", &[], 2, &4i16.to_le_bytes());
        let w: Vec<u8> = [1.0f32, -2.0, 3.0, 4.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        var(&mut b, "a/weight", &[2, 2], 0, &w);
        var(&mut b, "q/weight", &[2, 1], 1, &[10u8, (-20i8) as u8]);
        b.extend_from_slice(&1u32.to_le_bytes());
        string(&mut b, "b/weight");
        string(&mut b, "a/weight");
        b
    }

    #[test]
    fn reads_variables_scalars_and_aliases() {
        let m = Ct2Model::parse(tiny(), Path::new("model.bin")).unwrap();
        assert_eq!(
            (m.binary_version, m.spec.as_str(), m.spec_revision),
            (6, "WhisperSpec", 3)
        );
        assert_eq!(m.scalar("encoder/num_heads").unwrap(), 4);
        let t = m.tensor("b/weight").unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(t, vec![vec![1.0, -2.0], vec![3.0, 4.0]]);
        let err = m.tensor("q/weight").unwrap_err().to_string();
        assert!(err.contains("model.bin") && err.contains("_scale"), "{err}");
    }

    #[test]
    fn truncated_and_foreign_files_are_refused_with_the_path() {
        let b = tiny();
        let err = Ct2Model::parse(b[..b.len() - 3].to_vec(), Path::new("x/model.bin")).unwrap_err();
        assert!(
            err.to_string().contains("x/model.bin") && err.to_string().contains("truncated"),
            "{err}"
        );
        let err = Ct2Model::parse(b"GGUF\0\0\0\0".to_vec(), Path::new("m.bin")).unwrap_err();
        assert!(err.to_string().contains("binary version"), "{err}");
        let mut extra = b.clone();
        extra.push(0);
        assert!(Ct2Model::parse(extra, Path::new("m.bin")).is_err());
    }

    #[test]
    fn int8_weights_are_dequantized_per_row() {
        let mut b = Vec::new();
        b.extend_from_slice(&6u32.to_le_bytes());
        string(&mut b, "S");
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&2u32.to_le_bytes());
        var(&mut b, "w", &[2, 1], 1, &[10u8, (-20i8) as u8]);
        let s: Vec<u8> = [2.0f32, 4.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        var(&mut b, "w_scale", &[2], 0, &s);
        b.extend_from_slice(&0u32.to_le_bytes());
        let m = Ct2Model::parse(b, Path::new("m.bin")).unwrap();
        assert_eq!(
            m.tensor("w").unwrap().to_vec2::<f32>().unwrap(),
            vec![vec![5.0], vec![-5.0]]
        );
    }
}
