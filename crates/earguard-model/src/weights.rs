//! Weight stores: one interface over GGUF files and HF safetensors (single or sharded).
//!
//! The decoder asks for tensors by their HF checkpoint names (`model.layers.3.mlp.up_proj`);
//! the GGUF store translates them to llama.cpp names (`blk.3.ffn_up`). Quantized GGUF weights
//! stay quantized (`QMatMul`), dense ones become plain f32 tensors behind the same `Linear`, so
//! there is one forward pass for both formats.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Module, Tensor};

use crate::error::{ModelError, Result};
use crate::lora::Lora;

/// A linear layer whose weight may be quantized; `y = x Wᵀ (+ b)`, plus an optional low-rank
/// adapter's `scale · B A x` (see [`crate::lora`]).
#[derive(Debug, Clone)]
pub struct Linear {
    weight: QMatMul,
    bias: Option<Tensor>,
    out_features: usize,
    lora: Option<Lora>,
}

impl Linear {
    pub fn new(weight: QMatMul, bias: Option<Tensor>, out_features: usize) -> Self {
        Self {
            weight,
            bias,
            out_features,
            lora: None,
        }
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }

    pub fn in_features(&self) -> usize {
        match &self.weight {
            QMatMul::QTensor(q) => q.shape().dims()[1],
            QMatMul::Tensor(t) | QMatMul::TensorF16(t) => t.dims()[1],
        }
    }

    /// Attach (or with `None` remove) a low-rank adapter; its shapes must fit this layer.
    pub fn set_lora(&mut self, lora: Option<Lora>) -> Result<()> {
        if let Some(l) = &lora {
            let (a, b) = (l.a.dims(), l.b.dims());
            if a.get(1) != Some(&self.in_features()) || b.first() != Some(&self.out_features) {
                return Err(ModelError::Shape(format!(
                    "LoRA A {a:?} / B {b:?} do not fit a [{}, {}] layer",
                    self.out_features,
                    self.in_features()
                )));
            }
        }
        self.lora = lora;
        Ok(())
    }

    pub fn lora(&self) -> Option<&Lora> {
        self.lora.as_ref()
    }

    /// The weight `[out, in]` as dense f32 (dequantized if stored quantized).
    pub fn dense_weight(&self) -> Result<Tensor> {
        Ok(match &self.weight {
            QMatMul::QTensor(q) => q.dequantize(&q.device())?,
            QMatMul::Tensor(t) | QMatMul::TensorF16(t) => t.to_dtype(DType::F32)?,
        })
    }

    /// The bias, if the layer has one.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// A dense f32 layer with the adapter folded in: `W + scale · B A`, no adapter attached.
    pub fn merged(&self) -> Result<Linear> {
        let mut w = self.dense_weight()?;
        if let Some(l) = &self.lora {
            w = (w + l.update()?.to_dtype(DType::F32)?)?;
        }
        Ok(Self {
            weight: QMatMul::Tensor(w),
            bias: self.bias.clone(),
            out_features: self.out_features,
            lora: None,
        })
    }

    /// The same layer with a dense f32 weight (quantized and 16-bit weights widened): exact
    /// arithmetic where the quantized path rounds activations to 8 bits per block.
    pub fn dequantized(&self) -> Result<Linear> {
        Ok(Self {
            weight: QMatMul::Tensor(self.dense_weight()?),
            ..self.clone()
        })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = match &self.weight {
            // Training: gradient flows through x to earlier adapters, never into W.
            QMatMul::Tensor(w)
                if x.track_op() && x.device().is_cpu() && x.dtype() == DType::F32 =>
            {
                x.contiguous()?.apply_op1(FrozenMatmul(w.clone()))?
            }
            _ => self.weight.forward(x)?,
        };
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        match &self.lora {
            Some(l) => y + l.delta(x)?,
            None => Ok(y),
        }
    }
}

/// `x Wᵀ` for a frozen dense `W` `[out, in]` whose backward pass gives the gradient of `x` only.
/// candle's matmul backward also computes a weight-sized gradient for `W` and keeps it to the
/// end of the pass: a matmul per layer and the model's size in memory that nobody reads.
struct FrozenMatmul(Tensor);

impl candle_core::CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (Some((start, end)), candle_core::CpuStorage::F32(v)) =
            (layout.contiguous_offsets(), storage)
        else {
            candle_core::bail!("frozen-matmul takes a contiguous f32 input");
        };
        let x = Tensor::from_slice(&v[start..end], layout.shape(), &Device::Cpu)?;
        let y = x.broadcast_matmul(&self.0.t()?)?;
        let shape = y.shape().clone();
        Ok((
            candle_core::CpuStorage::F32(y.flatten_all()?.to_vec1()?),
            shape,
        ))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.broadcast_matmul(&self.0)?))
    }
}

/// Where a model's tensors come from.
pub enum WeightStore {
    Gguf(GgufWeights),
    SafeTensors(SafeTensorWeights),
    /// Tensors already in memory under HF names (e.g. converted from a CTranslate2 file as it
    /// loads), with the file they came from for messages.
    Memory(MemoryWeights),
}

pub struct MemoryWeights {
    pub tensors: HashMap<String, Tensor>,
    pub origin: PathBuf,
    device: Device,
}

impl MemoryWeights {
    pub fn new(tensors: HashMap<String, Tensor>, origin: PathBuf) -> Self {
        Self {
            tensors,
            origin,
            device: Device::Cpu,
        }
    }

    fn load(&self, name: &str) -> Result<Tensor> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| ModelError::file(&self.origin, format!("tensor {name} not found")))?;
        Ok(t.to_dtype(DType::F32)?.to_device(&self.device)?)
    }
}

pub struct GgufWeights {
    pub path: PathBuf,
    pub content: Content,
    file: Mutex<File>,
    /// Where tensors are placed (CPU unless [`WeightStore::on`] says otherwise).
    device: Device,
    /// Widen [`SCALAR_ON_CPU`] linear weights to f32 on CPU (see
    /// [`WIDEN_SCALAR_BLOCKS_BELOW_BYTES`]).
    widen_scalar: bool,
}

pub struct SafeTensorWeights {
    pub paths: Vec<PathBuf>,
    tensors: MmapedSafetensors,
    /// Which file holds each tensor, so errors can name it.
    owner: HashMap<String, usize>,
    /// Keep f16/bf16 linear weights in f16 instead of widening them to f32 (see
    /// [`keep_half_linears`]).
    half_linears: bool,
    /// Where tensors are placed (CPU unless [`WeightStore::on`] says otherwise).
    device: Device,
}

/// Widened to f32, a checkpoint stored in f16/bf16 doubles in size: a 7B Qwen2-Audio would need
/// ~33 GB. Above this many f32 bytes, linear weights stay 16-bit (f16 matmuls, f32 everywhere
/// else). `EARGUARD_WEIGHTS=f32` or `=f16` overrides the choice either way.
pub const HALF_LINEARS_ABOVE_BYTES: u64 = 8 << 30;

fn is_half<D>(stored: D) -> bool
where
    DType: TryFrom<D>,
{
    matches!(DType::try_from(stored), Ok(DType::F16 | DType::BF16))
}

/// GGUF block types whose CPU matrix product candle 0.11 runs on its scalar fallback
/// (`vec_dot_unopt`: no AVX or NEON kernel, unlike Q4_0, Q8_0 and the K-quants).
const SCALAR_ON_CPU: [GgmlDType; 4] = [
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q8_1,
];

/// On CPU, linear weights of a [`SCALAR_ON_CPU`] type are widened to dense f32 at load when
/// all of them together take at most this many f32 bytes: an f32 matmul runs several times
/// faster than the scalar block product (SmolLM2-135M's Q4_1 takes ~0.5 GB widened).
/// `EARGUARD_WEIGHTS=quantized` keeps them quantized.
pub const WIDEN_SCALAR_BLOCKS_BELOW_BYTES: u64 = 4 << 30;

/// Whether a checkpoint with `half_params` parameters stored in f16/bf16 keeps its linear
/// weights 16-bit.
pub fn keep_half_linears(half_params: u64) -> bool {
    match std::env::var("EARGUARD_WEIGHTS").as_deref() {
        Ok("f32") => false,
        Ok("f16") => half_params > 0,
        _ => half_params * 4 > HALF_LINEARS_ABOVE_BYTES,
    }
}

impl GgufWeights {
    /// Open a GGUF file and check that every tensor's bytes lie inside it, so a truncated
    /// download fails here with a clear message rather than halfway through loading.
    pub fn open(path: &Path) -> Result<Self> {
        let mut file =
            File::open(path).map_err(|e| ModelError::file(path, format!("cannot open: {e}")))?;
        let len = file
            .metadata()
            .map_err(|e| ModelError::file(path, format!("cannot stat: {e}")))?
            .len();
        let mut magic = [0u8; 4];
        file.read_exact(&mut magic)
            .map_err(|_| ModelError::file(path, "file is too short to be GGUF"))?;
        if &magic != b"GGUF" {
            return Err(ModelError::file(path, "not a GGUF file (bad magic bytes)"));
        }
        file.rewind().map_err(|e| ModelError::file(path, e))?;
        let content = Content::read(&mut file)
            .map_err(|e| ModelError::file(path, format!("corrupt GGUF header: {e}")))?;
        for (name, info) in &content.tensor_infos {
            let block = info.ggml_dtype.block_size();
            let n = info.shape.elem_count();
            if block == 0 || n % block != 0 {
                return Err(ModelError::file(
                    path,
                    format!("tensor {name} has {n} elements, not a multiple of its block size"),
                ));
            }
            let bytes = (n / block * info.ggml_dtype.type_size()) as u64;
            let end = content
                .tensor_data_offset
                .saturating_add(info.offset)
                .saturating_add(bytes);
            if end > len {
                return Err(ModelError::file(
                    path,
                    format!(
                        "truncated: tensor {name} ends at byte {end} but the file has {len} bytes"
                    ),
                ));
            }
        }
        let scalar_f32_bytes: u64 = content
            .tensor_infos
            .values()
            .filter(|i| i.shape.rank() == 2 && SCALAR_ON_CPU.contains(&i.ggml_dtype))
            .map(|i| 4 * i.shape.elem_count() as u64)
            .sum();
        let widen_scalar = scalar_f32_bytes > 0
            && scalar_f32_bytes <= WIDEN_SCALAR_BLOCKS_BELOW_BYTES
            && std::env::var("EARGUARD_WEIGHTS").as_deref() != Ok("quantized");
        if widen_scalar {
            tracing::info!(
                "{}: widening its Q4_1/Q5_0/Q5_1/Q8_1 weights to f32 ({} MiB): candle has no SIMD \
                 kernel for them on CPU (EARGUARD_WEIGHTS=quantized keeps them)",
                path.display(),
                scalar_f32_bytes >> 20
            );
        }
        Ok(Self {
            path: path.to_path_buf(),
            content,
            file: Mutex::new(file),
            device: Device::Cpu,
            widen_scalar,
        })
    }

    /// Whether `q` is loaded as a dense f32 weight instead of its blocks.
    fn widens(&self, q: &QTensor) -> bool {
        self.widen_scalar && self.device.is_cpu() && SCALAR_ON_CPU.contains(&q.dtype())
    }

    fn qtensor(&self, gguf_name: &str) -> Result<QTensor> {
        if !self.content.tensor_infos.contains_key(gguf_name) {
            return Err(ModelError::file(
                &self.path,
                format!("missing tensor {gguf_name}"),
            ));
        }
        let mut file = self
            .file
            .lock()
            .map_err(|_| ModelError::file(&self.path, "file handle poisoned"))?;
        self.content
            .tensor(&mut *file, gguf_name, &self.device)
            .map_err(|e| ModelError::file(&self.path, format!("reading tensor {gguf_name}: {e}")))
    }

    /// The most common weight type of the 2-D tensors, e.g. "Q4_K" (with "mix" if several).
    pub fn quantization(&self) -> String {
        let mut counts: HashMap<GgmlDType, usize> = HashMap::new();
        for info in self.content.tensor_infos.values() {
            if info.shape.rank() == 2 {
                *counts.entry(info.ggml_dtype).or_default() += 1;
            }
        }
        let mut by_count: Vec<_> = counts.into_iter().collect();
        by_count.sort_by(|a, b| {
            b.1.cmp(&a.1)
                .then(format!("{:?}", a.0).cmp(&format!("{:?}", b.0)))
        });
        let name = match by_count.as_slice() {
            [] => "none".into(),
            [(t, _)] => format!("{t:?}"),
            [(t, _), ..] => format!("{t:?} mix"),
        };
        if self.widen_scalar && self.device.is_cpu() {
            format!("{name}, Q4_1/Q5_0/Q5_1/Q8_1 linears widened to f32")
        } else {
            name
        }
    }
}

impl SafeTensorWeights {
    pub fn open(paths: Vec<PathBuf>) -> Result<Self> {
        let mut owner = HashMap::new();
        for (i, p) in paths.iter().enumerate() {
            // Parse each header on its own first so a corrupt shard is named.
            let single = unsafe { MmapedSafetensors::new(p) }
                .map_err(|e| ModelError::file(p, format!("not a valid safetensors file: {e}")))?;
            for (name, _) in single.tensors() {
                owner.insert(name, i);
            }
        }
        let tensors = unsafe { MmapedSafetensors::multi(&paths) }
            .map_err(|e| ModelError::file(&paths[0], format!("cannot map safetensors: {e}")))?;
        let half_params: u64 = owner
            .keys()
            .filter_map(|n| tensors.get(n).ok())
            .filter(|v| is_half(v.dtype()))
            .map(|v| v.shape().iter().product::<usize>() as u64)
            .sum();
        Ok(Self {
            paths,
            tensors,
            owner,
            half_linears: keep_half_linears(half_params),
            device: Device::Cpu,
        })
    }

    /// A linear layer's weight: 16-bit when the policy keeps half-precision linears and the
    /// checkpoint stores it so, else f32.
    fn linear_weight(&self, name: &str) -> Result<QMatMul> {
        let half = self.half_linears && self.tensors.get(name).is_ok_and(|v| is_half(v.dtype()));
        if !half {
            return Ok(QMatMul::Tensor(self.load(name)?));
        }
        let t = self.load_raw(name)?;
        Ok(QMatMul::TensorF16(t.to_dtype(DType::F16)?))
    }

    fn load(&self, name: &str) -> Result<Tensor> {
        // The CPU kernels are fastest and exact in f32; bf16/f16 checkpoints are widened once.
        Ok(self.load_raw(name)?.to_dtype(DType::F32)?)
    }

    /// A tensor in its stored dtype.
    fn load_raw(&self, name: &str) -> Result<Tensor> {
        let Some(&i) = self.owner.get(name) else {
            let first = self.paths.first().cloned().unwrap_or_default();
            return Err(ModelError::file(first, format!("missing tensor {name}")));
        };
        let t = self
            .tensors
            .load(name, &self.device)
            .map_err(|e| ModelError::file(&self.paths[i], format!("reading tensor {name}: {e}")))?;
        Ok(t)
    }

    pub fn dtype(&self) -> String {
        self.owner
            .keys()
            .next()
            .and_then(|n| self.tensors.get(n).ok())
            .map(|v| format!("{:?}", v.dtype()).to_lowercase())
            .map(|d| {
                if self.half_linears {
                    format!("{d} (linear layers kept f16)")
                } else {
                    d
                }
            })
            .unwrap_or_else(|| "none".into())
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.owner.keys().map(String::as_str)
    }
}

/// The safetensors files of an HF directory: the shards listed by the index, or the single file.
pub fn safetensor_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text =
            earguard_data::read_small_text(&index).map_err(|e| ModelError::file(&index, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::file(&index, format!("malformed index: {e}")))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| ModelError::file(&index, "index has no weight_map object"))?;
        let mut files: Vec<String> = map
            .values()
            .filter_map(|f| f.as_str().map(str::to_string))
            .collect();
        files.sort();
        files.dedup();
        let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
        if let Some(missing) = paths.iter().find(|p| !p.is_file()) {
            return Err(ModelError::file(
                missing,
                "shard listed in the index is missing",
            ));
        }
        return Ok(paths);
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    Err(ModelError::file(
        dir,
        "has no model.safetensors nor model.safetensors.index.json",
    ))
}

/// llama.cpp's name for an HF decoder tensor name (without the `.weight`/`.bias` suffix).
fn gguf_name(hf: &str) -> Option<String> {
    let hf = hf.strip_prefix("language_model.").unwrap_or(hf);
    match hf {
        "model.embed_tokens" => return Some("token_embd".into()),
        "model.norm" => return Some("output_norm".into()),
        "lm_head" => return Some("output".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, part) = rest.split_once('.')?;
    let suffix = match part {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{suffix}"))
}

impl WeightStore {
    /// The same store, placing the tensors it hands out on `device`.
    pub fn on(mut self, device: &Device) -> Self {
        match &mut self {
            WeightStore::Gguf(g) => g.device = device.clone(),
            WeightStore::SafeTensors(s) => s.device = device.clone(),
            WeightStore::Memory(m) => m.device = device.clone(),
        }
        self
    }

    /// Where the tensors this store hands out live.
    pub fn device(&self) -> &Device {
        match self {
            WeightStore::Gguf(g) => &g.device,
            WeightStore::SafeTensors(s) => &s.device,
            WeightStore::Memory(m) => &m.device,
        }
    }

    fn resolve(&self, module: &str, leaf: &str) -> Result<String> {
        match self {
            WeightStore::SafeTensors(_) | WeightStore::Memory(_) => Ok(format!("{module}.{leaf}")),
            WeightStore::Gguf(g) => gguf_name(module)
                .map(|n| format!("{n}.{leaf}"))
                .ok_or_else(|| ModelError::file(&g.path, format!("no GGUF name for {module}"))),
        }
    }

    /// Does `module.leaf` (e.g. `lm_head` + `weight`) exist in this checkpoint?
    pub fn contains(&self, module: &str, leaf: &str) -> bool {
        let Ok(name) = self.resolve(module, leaf) else {
            return false;
        };
        match self {
            WeightStore::Gguf(g) => g.content.tensor_infos.contains_key(&name),
            WeightStore::SafeTensors(s) => s.owner.contains_key(&name),
            WeightStore::Memory(m) => m.tensors.contains_key(&name),
        }
    }

    /// A dense f32 tensor (GGUF quantized tensors are dequantized).
    pub fn tensor(&self, module: &str, leaf: &str) -> Result<Tensor> {
        let name = self.resolve(module, leaf)?;
        match self {
            WeightStore::Gguf(g) => Ok(g.qtensor(&name)?.dequantize(&g.device)?),
            WeightStore::SafeTensors(s) => s.load(&name),
            WeightStore::Memory(m) => m.load(&name),
        }
    }

    /// A tensor whose shape must be exactly `dims`, or a clear error naming it.
    pub fn tensor_shaped(&self, module: &str, leaf: &str, dims: &[usize]) -> Result<Tensor> {
        let t = self.tensor(module, leaf)?;
        if t.dims() != dims {
            return Err(self.shape_error(module, leaf, dims, t.dims()));
        }
        Ok(t)
    }

    fn shape_error(&self, module: &str, leaf: &str, want: &[usize], got: &[usize]) -> ModelError {
        let path = match self {
            WeightStore::Gguf(g) => g.path.clone(),
            WeightStore::SafeTensors(s) => s.paths.first().cloned().unwrap_or_default(),
            WeightStore::Memory(m) => m.origin.clone(),
        };
        ModelError::file(
            path,
            format!("tensor {module}.{leaf} has shape {got:?}, the config implies {want:?}"),
        )
    }

    /// A `[out, in]` linear layer, quantized if the checkpoint is.
    pub fn linear(&self, module: &str, out: usize, inp: usize, bias: bool) -> Result<Linear> {
        let weight = match self {
            WeightStore::Gguf(g) => {
                let q = g.qtensor(&self.resolve(module, "weight")?)?;
                if q.shape().dims() != [out, inp] {
                    return Err(self.shape_error(module, "weight", &[out, inp], q.shape().dims()));
                }
                if g.widens(&q) {
                    QMatMul::Tensor(q.dequantize(&g.device)?)
                } else {
                    QMatMul::from_arc(Arc::new(q))?
                }
            }
            WeightStore::SafeTensors(s) => {
                let name = self.resolve(module, "weight")?;
                let w = s.linear_weight(&name)?;
                let dims = match &w {
                    QMatMul::Tensor(t) | QMatMul::TensorF16(t) => t.dims().to_vec(),
                    QMatMul::QTensor(q) => q.shape().dims().to_vec(),
                };
                if dims != [out, inp] {
                    return Err(self.shape_error(module, "weight", &[out, inp], &dims));
                }
                w
            }
            WeightStore::Memory(m) => {
                let w = m.load(&self.resolve(module, "weight")?)?;
                if w.dims() != [out, inp] {
                    return Err(self.shape_error(module, "weight", &[out, inp], w.dims()));
                }
                QMatMul::Tensor(w)
            }
        };
        let bias = if bias {
            Some(self.tensor_shaped(module, "bias", &[out])?)
        } else {
            None
        };
        Ok(Linear::new(weight, bias, out))
    }

    /// Short description of the weight format for `inspect`.
    pub fn quantization(&self) -> String {
        match self {
            WeightStore::Gguf(g) => g.quantization(),
            WeightStore::SafeTensors(s) => s.dtype(),
            WeightStore::Memory(_) => "f32 (converted on load)".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::gguf_name;

    #[test]
    fn hf_names_map_to_llama_cpp_names() {
        assert_eq!(
            gguf_name("model.layers.3.mlp.up_proj").as_deref(),
            Some("blk.3.ffn_up")
        );
        assert_eq!(
            gguf_name("model.embed_tokens").as_deref(),
            Some("token_embd")
        );
        assert_eq!(
            gguf_name("language_model.model.layers.0.self_attn.o_proj").as_deref(),
            Some("blk.0.attn_output")
        );
        assert_eq!(gguf_name("model.layers.0.unknown"), None);
    }
}
