//! The Qwen2 / Llama decoder (HF `Qwen2ForCausalLM`, `LlamaForCausalLM`), with hook points.
//!
//! One block type serves both: pre-RMSNorm attention with RoPE and grouped-query heads
//! (Qwen2 adds q/k/v biases), then a pre-RMSNorm SwiGLU MLP. Weights may be dense (HF
//! safetensors) or quantized (GGUF) behind the same [`Linear`]. The KV cache lives outside the
//! model ([`KvCache`]) so one loaded model serves many sequences; batches are left-padded.

use candle_core::{DType, Device, IndexOp, Tensor, D};

use crate::config::DecoderConfig;
use crate::error::{ModelError, Result};
use crate::hooks::{run_hooks, Captures, HookKind, HookPoint, InterventionPlan, StepLayout};
use crate::lora::Proj;
use crate::weights::{Linear, WeightStore};

/// How the forward pass computes RMSNorm, RoPE and the attention softmax.
///
/// candle's fused kernels for these have no backward pass, so training runs the same
/// arithmetic composed from differentiable tensor ops. Both give the same numbers to f32
/// rounding (tests/differentiable.rs checks logits within 1e-5).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Ops {
    /// The fused kernels: fastest, inference only.
    #[default]
    Fused,
    /// Compositions of differentiable ops, so gradients reach adapters in every layer.
    Differentiable,
}

#[derive(Debug, Clone)]
struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    fn load(store: &WeightStore, module: &str, hidden: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: store.tensor_shaped(module, "weight", &[hidden])?,
            eps: eps as f32,
        })
    }

    fn forward(&self, x: &Tensor, ops: Ops) -> candle_core::Result<Tensor> {
        match ops {
            Ops::Fused => candle_nn::ops::rms_norm(x, &self.weight, self.eps),
            Ops::Differentiable => {
                let dtype = x.dtype();
                let x = x.to_dtype(DType::F32)?;
                let rms = (x.sqr()?.mean_keepdim(D::Minus1)? + self.eps as f64)?.sqrt()?;
                x.broadcast_div(&rms)?
                    .broadcast_mul(&self.weight)?
                    .to_dtype(dtype)
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
}

#[derive(Debug, Clone)]
struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

#[derive(Debug, Clone)]
struct Block {
    attn_norm: RmsNorm,
    attn: Attention,
    mlp_norm: RmsNorm,
    mlp: Mlp,
}

/// Rotary tables for every position up to the context length.
#[derive(Debug, Clone)]
struct Rope {
    cos: Tensor,
    sin: Tensor,
    interleaved: bool,
}

impl Rope {
    fn new(cfg: &DecoderConfig, device: &Device) -> Result<Self> {
        let half = cfg.head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / cfg.rope_theta.powf(2.0 * i as f32 / cfg.head_dim as f32))
            .collect();
        let inv_freq = Tensor::from_vec(inv_freq, (1, half), device)?;
        let pos = Tensor::arange(0u32, cfg.context_length as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((cfg.context_length, 1))?;
        let angles = pos.matmul(&inv_freq)?;
        Ok(Self {
            cos: angles.cos()?,
            sin: angles.sin()?,
            interleaved: cfg.rope_interleaved,
        })
    }

    /// cos/sin for this call: `[seq, half]` when every row starts at the same position,
    /// `[batch, seq, half]` when rows are padded differently.
    fn tables(&self, layout: &StepLayout) -> Result<(Tensor, Tensor)> {
        if layout.pad.iter().all(|&p| p == 0) {
            return Ok((
                self.cos.narrow(0, layout.start, layout.seq)?,
                self.sin.narrow(0, layout.start, layout.seq)?,
            ));
        }
        // Each row's positions count from its first real token, as HF does with position_ids.
        let ids: Vec<u32> = layout
            .pad
            .iter()
            .flat_map(|&p| {
                (0..layout.seq).map(move |i| (layout.start + i).saturating_sub(p) as u32)
            })
            .collect();
        let ids = Tensor::from_vec(ids, layout.batch * layout.seq, self.cos.device())?;
        let shape = (layout.batch, layout.seq, ());
        Ok((
            self.cos.index_select(&ids, 0)?.reshape(shape)?,
            self.sin.index_select(&ids, 0)?.reshape(shape)?,
        ))
    }

    fn apply(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        ops: Ops,
    ) -> candle_core::Result<Tensor> {
        match (ops, self.interleaved) {
            (Ops::Fused, true) => candle_nn::rotary_emb::rope_i(x, cos, sin),
            (Ops::Fused, false) => candle_nn::rotary_emb::rope(x, cos, sin),
            (Ops::Differentiable, interleaved) => rope_composed(x, cos, sin, interleaved),
        }
    }
}

/// RoPE from differentiable ops, for `x` `[batch, heads, seq, head_dim]` and tables `[seq, half]`
/// or `[batch, seq, half]`. Each pair `(x₁, x₂)` becomes `(x₁ cos − x₂ sin, x₂ cos + x₁ sin)`;
/// the pairs are the two halves of a head (HF "rotate half") or adjacent entries (interleaved).
fn rope_composed(
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    interleaved: bool,
) -> candle_core::Result<Tensor> {
    let (b, h, s, d) = x.dims4()?;
    let half = d / 2;
    let table = |t: &Tensor| -> candle_core::Result<Tensor> {
        let t = match t.rank() {
            2 => t.reshape((1, 1, s, half))?,
            _ => t.reshape((b, 1, s, half))?,
        };
        t.to_dtype(x.dtype())
    };
    let (cos, sin) = (table(cos)?, table(sin)?);
    let (x1, x2) = if interleaved {
        let pairs = x.reshape((b, h, s, half, 2))?;
        (
            pairs.narrow(4, 0, 1)?.squeeze(4)?,
            pairs.narrow(4, 1, 1)?.squeeze(4)?,
        )
    } else {
        (x.narrow(3, 0, half)?, x.narrow(3, half, half)?)
    };
    let r1 = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
    let r2 = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
    if interleaved {
        Tensor::stack(&[r1, r2], 4)?.reshape((b, h, s, d))
    } else {
        Tensor::cat(&[r1, r2], 3)
    }
}

/// Softmax over the last dimension from differentiable ops (the max is a constant shift).
fn softmax_composed(x: &Tensor) -> candle_core::Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// Per-layer keys and values of the sequences in a batch, plus their padding.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
    prompt_end: usize,
    pad: Vec<usize>,
    /// Each row's gate decision, once the prompt's pass has reached the plan's gate.
    gate: Option<Vec<bool>>,
    /// The first layer holding keys and values ([`Decoder::forward_from`]): a cache filled
    /// from layer L cannot serve a forward that starts below L.
    first_layer: usize,
}

impl KvCache {
    /// An empty cache for `batch` rows with the given left padding (all zeros if unpadded).
    pub fn new(n_layers: usize, pad: Vec<usize>) -> Self {
        Self {
            layers: vec![None; n_layers],
            len: 0,
            prompt_end: 0,
            pad,
            gate: None,
            first_layer: 0,
        }
    }

    /// Number of columns (padded timeline) already cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn batch(&self) -> usize {
        self.pad.len()
    }

    pub fn pad(&self) -> &[usize] {
        &self.pad
    }

    /// Which rows the plan's gate switched on (None before the gate was reached, or without
    /// one): e.g. which prompts met CAST's condition.
    pub fn gate(&self) -> Option<&[bool]> {
        self.gate.as_deref()
    }

    /// Keep the first `n` rows of the batch and drop the rest (a contrast batch's companion
    /// rows once they are no longer needed).
    pub fn keep_rows(&mut self, n: usize) -> Result<()> {
        if n == 0 || n > self.batch() {
            return Err(ModelError::Invalid(format!(
                "cannot keep {n} rows of a cache of {}",
                self.batch()
            )));
        }
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.narrow(0, 0, n)?;
            *v = v.narrow(0, 0, n)?;
        }
        self.pad.truncate(n);
        if let Some(g) = &mut self.gate {
            g.truncate(n);
        }
        Ok(())
    }
}

/// Which logits a forward call returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// `[batch, vocab]` at the last position: all generation needs.
    Last,
    /// `[batch, seq, vocab]`.
    All,
    /// Skip the LM head (activation capture only).
    None,
}

#[derive(Debug)]
pub struct ForwardOutput {
    pub logits: Option<Tensor>,
    pub captures: Captures,
}

/// A loaded Qwen2/Llama decoder.
#[derive(Debug, Clone)]
pub struct Decoder {
    cfg: DecoderConfig,
    embed: Tensor,
    blocks: Vec<Block>,
    norm: RmsNorm,
    lm_head: Linear,
    rope: Rope,
    device: Device,
    ops: Ops,
}

impl Decoder {
    /// How RMSNorm, RoPE and softmax are computed ([`Ops::Fused`] unless set).
    pub fn ops(&self) -> Ops {
        self.ops
    }

    pub fn set_ops(&mut self, ops: Ops) {
        self.ops = ops;
    }

    /// Layer `layer`'s linear `proj`, or None past the last layer.
    pub fn linear(&self, layer: usize, proj: Proj) -> Option<&Linear> {
        let b = self.blocks.get(layer)?;
        Some(match proj {
            Proj::Q => &b.attn.q,
            Proj::K => &b.attn.k,
            Proj::V => &b.attn.v,
            Proj::O => &b.attn.o,
            Proj::Gate => &b.mlp.gate,
            Proj::Up => &b.mlp.up,
            Proj::Down => &b.mlp.down,
        })
    }

    /// Mutable access, to attach or remove adapters.
    pub fn linear_mut(&mut self, layer: usize, proj: Proj) -> Option<&mut Linear> {
        let b = self.blocks.get_mut(layer)?;
        Some(match proj {
            Proj::Q => &mut b.attn.q,
            Proj::K => &mut b.attn.k,
            Proj::V => &mut b.attn.v,
            Proj::O => &mut b.attn.o,
            Proj::Gate => &mut b.mlp.gate,
            Proj::Up => &mut b.mlp.up,
            Proj::Down => &mut b.mlp.down,
        })
    }

    pub fn lm_head(&self) -> &Linear {
        &self.lm_head
    }

    /// The same decoder with every linear weight dense f32 (GGUF blocks dequantized). Memory is
    /// the f32 size (about 4 bytes a parameter); numerics are exact where the quantized path
    /// rounds activations, which makes small differences between plans measurable.
    pub fn dequantized(&self) -> Result<Self> {
        let mut out = self.clone();
        for b in &mut out.blocks {
            for l in [
                &mut b.attn.q,
                &mut b.attn.k,
                &mut b.attn.v,
                &mut b.attn.o,
                &mut b.mlp.gate,
                &mut b.mlp.up,
                &mut b.mlp.down,
            ] {
                *l = l.dequantized()?;
            }
        }
        out.lm_head = out.lm_head.dequantized()?;
        Ok(out)
    }

    /// The first `n` layers alone (`1..=n_layers`; embeddings, norm and head kept): their
    /// last `resid_post` is the residual stream entering layer `n` of the whole model (see
    /// [`Self::forward_from`]). Shares the weights, copies nothing.
    pub fn first_layers(&self, n: usize) -> Result<Self> {
        if n == 0 || n > self.cfg.n_layers {
            return Err(ModelError::Invalid(format!(
                "cannot keep {n} layers of {}",
                self.cfg.n_layers
            )));
        }
        let mut out = self.clone();
        out.blocks.truncate(n);
        out.cfg.n_layers = n;
        Ok(out)
    }

    /// Build the decoder from a weight store; `prefix` is "" for causal LMs and
    /// "language_model." inside Qwen2-Audio.
    pub fn load(cfg: DecoderConfig, store: &WeightStore, prefix: &str) -> Result<Self> {
        cfg.validate()?;
        let device = store.device().clone();
        let (d, hd) = (cfg.hidden_size, cfg.head_dim);
        let m = |s: &str| format!("{prefix}{s}");
        let embed =
            store.tensor_shaped(&m("model.embed_tokens"), "weight", &[cfg.vocab_size, d])?;
        let qwen_bias = cfg.architecture == crate::config::Architecture::Qwen2;
        let mut blocks = Vec::with_capacity(cfg.n_layers);
        for l in 0..cfg.n_layers {
            let p = m(&format!("model.layers.{l}"));
            let lin =
                |name: &str, out, inp, bias| store.linear(&format!("{p}.{name}"), out, inp, bias);
            blocks.push(Block {
                attn_norm: RmsNorm::load(
                    store,
                    &format!("{p}.input_layernorm"),
                    d,
                    cfg.rms_norm_eps,
                )?,
                attn: Attention {
                    q: lin("self_attn.q_proj", cfg.n_heads * hd, d, qwen_bias)?,
                    k: lin("self_attn.k_proj", cfg.n_kv_heads * hd, d, qwen_bias)?,
                    v: lin("self_attn.v_proj", cfg.n_kv_heads * hd, d, qwen_bias)?,
                    o: lin("self_attn.o_proj", d, cfg.n_heads * hd, false)?,
                    n_heads: cfg.n_heads,
                    n_kv_heads: cfg.n_kv_heads,
                    head_dim: hd,
                },
                mlp_norm: RmsNorm::load(
                    store,
                    &format!("{p}.post_attention_layernorm"),
                    d,
                    cfg.rms_norm_eps,
                )?,
                mlp: Mlp {
                    gate: lin("mlp.gate_proj", cfg.intermediate_size, d, false)?,
                    up: lin("mlp.up_proj", cfg.intermediate_size, d, false)?,
                    down: lin("mlp.down_proj", d, cfg.intermediate_size, false)?,
                },
            });
        }
        let norm = RmsNorm::load(store, &m("model.norm"), d, cfg.rms_norm_eps)?;
        let lm_head = if store.contains(&m("lm_head"), "weight") {
            store.linear(&m("lm_head"), cfg.vocab_size, d, false)?
        } else if cfg.tie_embeddings {
            // Tied: the LM head reads the embedding matrix (kept quantized for GGUF).
            store.linear(&m("model.embed_tokens"), cfg.vocab_size, d, false)?
        } else {
            return Err(ModelError::Invalid(format!(
                "the checkpoint has no {} and its config does not tie embeddings",
                m("lm_head.weight")
            )));
        };
        let rope = Rope::new(&cfg, &device)?;
        Ok(Self {
            cfg,
            embed,
            blocks,
            norm,
            lm_head,
            rope,
            device,
            ops: Ops::Fused,
        })
    }

    pub fn config(&self) -> &DecoderConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn new_cache(&self, pad: Vec<usize>) -> KvCache {
        KvCache::new(self.cfg.n_layers, pad)
    }

    /// The input embedding table `[vocab, hidden]`.
    pub fn embedding_table(&self) -> &Tensor {
        &self.embed
    }

    /// Token embeddings `[batch, seq, hidden]` for ids `[batch, seq]`.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        let flat = ids.flatten_all()?;
        let ids_u32 = flat.to_dtype(DType::U32)?.to_vec1::<u32>()?;
        if let Some(bad) = ids_u32.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
            return Err(ModelError::Invalid(format!(
                "token id {bad} is outside the vocabulary of {} tokens",
                self.cfg.vocab_size
            )));
        }
        Ok(self
            .embed
            .index_select(&flat, 0)?
            .reshape((b, s, self.cfg.hidden_size))?)
    }

    /// Run token ids `[batch, seq]` through the model, appending to `cache`.
    pub fn forward(
        &self,
        ids: &Tensor,
        cache: &mut KvCache,
        plan: &InterventionPlan,
        logits: Logits,
    ) -> Result<ForwardOutput> {
        let x = self.embed(ids)?;
        self.forward_embeds(x, cache, plan, logits)
    }

    /// Run input embeddings `[batch, seq, hidden]` (e.g. text merged with audio features).
    pub fn forward_embeds(
        &self,
        x: Tensor,
        cache: &mut KvCache,
        plan: &InterventionPlan,
        logits: Logits,
    ) -> Result<ForwardOutput> {
        self.forward_from(0, x, cache, plan, logits)
    }

    /// Run the residual stream `x` `[batch, seq, hidden]` entering layer `from` (its
    /// `resid_pre`, e.g. captured once from a frozen model) through layers `from..` and the
    /// head. The layers below are skipped, so their cache stays empty: a single forward, not
    /// the start of a generation. The plan may not hook a layer below `from`.
    pub fn forward_from(
        &self,
        from: usize,
        x: Tensor,
        cache: &mut KvCache,
        plan: &InterventionPlan,
        logits: Logits,
    ) -> Result<ForwardOutput> {
        if from >= self.cfg.n_layers {
            return Err(ModelError::Invalid(format!(
                "cannot start at layer {from}: the model has {} layers",
                self.cfg.n_layers
            )));
        }
        if from > 0 {
            let points = plan.edits().iter().map(|e| e.point);
            let points = points.chain(plan.captures().iter().map(|c| c.point));
            let points = points.chain(plan.gate_of().map(|g| g.point));
            if let Some(p) = points
                .into_iter()
                .find(|p| p.layer().is_some_and(|l| l < from))
            {
                return Err(ModelError::Invalid(format!(
                    "hook point {p} lies below layer {from}, where this forward starts"
                )));
            }
        }
        if from > 0 && !cache.is_empty() {
            return Err(ModelError::Invalid(format!(
                "a forward from layer {from} needs an empty cache (it leaves layers below \
                 {from} without keys)"
            )));
        }
        if from < cache.first_layer {
            return Err(ModelError::Invalid(format!(
                "this cache holds no keys below layer {}: it was filled by a forward from \
                 there, and cannot continue from layer {from}",
                cache.first_layer
            )));
        }
        cache.first_layer = from;
        let (b, q, d) = x.dims3()?;
        if d != self.cfg.hidden_size {
            return Err(ModelError::Shape(format!(
                "input embeddings have hidden size {d}, the model expects {}",
                self.cfg.hidden_size
            )));
        }
        if b != cache.batch() {
            return Err(ModelError::Shape(format!(
                "batch of {b} rows but the cache was made for {}",
                cache.batch()
            )));
        }
        if q == 0 {
            return Err(ModelError::Invalid(
                "forward called with no positions".into(),
            ));
        }
        let start = cache.len;
        if start + q > self.cfg.context_length {
            return Err(ModelError::PromptTooLong {
                n_tokens: start + q,
                context: self.cfg.context_length,
            });
        }
        if cache.pad.iter().any(|&p| p >= start + q) {
            return Err(ModelError::Invalid("a batch row is all padding".into()));
        }
        let hooked = !plan.is_empty();
        if hooked {
            plan.validate(self.cfg.n_layers, d)?;
        }
        let prompt_end = if start == 0 { q } else { cache.prompt_end };
        let layout = StepLayout {
            batch: b,
            seq: q,
            start,
            prompt_end,
            pad: cache.pad.clone(),
        };
        let (cos, sin) = self.rope.tables(&layout)?;
        let mask = attention_mask(&layout, &self.device)?;
        let mut captured = Vec::new();
        let mut gate = cache.gate.take();
        // Hooks run only when the plan has something to do: an empty plan costs one branch.
        let mut hook = |point: HookPoint, t: Tensor| -> Result<Tensor> {
            if hooked {
                run_hooks(plan, point, &layout, t, &mut gate, &mut captured)
            } else {
                Ok(t)
            }
        };

        let ops = self.ops;
        let mut x = x;
        for (l, block) in self.blocks.iter().enumerate().skip(from) {
            let kv = &mut cache.layers[l];
            x = hook(HookKind::ResidPre.at(l), x)?;
            let h = block.attn_norm.forward(&x, ops)?;
            let a = block
                .attn
                .forward(&h, &self.rope, &cos, &sin, mask.as_ref(), kv, ops)?;
            let a = hook(HookKind::AttnOut.at(l), a)?;
            x = hook(HookKind::ResidMid.at(l), (x + a)?)?;
            let h = block.mlp_norm.forward(&x, ops)?;
            let m = block.mlp.forward(&h)?;
            let m = hook(HookKind::MlpOut.at(l), m)?;
            x = (x + m)?;
            x = hook(HookKind::ResidPost.at(l), x)?;
        }
        cache.len = start + q;
        cache.prompt_end = prompt_end;

        // One reduction at the last position: NaN, infinity or overflow there means the
        // arithmetic broke down (typically an edit far too strong), and text sampled from it
        // would be garbage. Edits stay in the residual stream, so the last layer sees them.
        let last = x.i((.., q - 1, ..))?;
        ensure_finite(&last, "hidden states", plan)?;
        let logits = match logits {
            Logits::None => {
                if plan
                    .captures()
                    .iter()
                    .any(|c| c.point == HookPoint::FinalNorm)
                {
                    let h = self.norm.forward(&x, ops)?;
                    hook(HookPoint::FinalNorm, h)?;
                }
                None
            }
            Logits::Last => {
                let h = self
                    .norm
                    .forward(&x.i((.., q - 1..q, ..))?.contiguous()?, ops)?;
                let h = hook(HookPoint::FinalNorm, h)?;
                let logits = self.lm_head.forward(&h)?.squeeze(1)?;
                ensure_finite(&logits, "logits", plan)?;
                Some(logits)
            }
            Logits::All => {
                let h = self.norm.forward(&x, ops)?;
                let h = hook(HookPoint::FinalNorm, h)?;
                let logits = self.lm_head.forward(&h)?;
                ensure_finite(&logits.i((.., q - 1, ..))?, "logits", plan)?;
                Some(logits)
            }
        };
        cache.gate = gate;
        Ok(ForwardOutput {
            logits,
            captures: Captures { items: captured },
        })
    }
}

/// Refuse `t` (`[batch, n]`) if a row's squared norm is not finite in f32: the row holds NaN
/// or infinity, or values so large that the next RMSNorm overflows and silently zeroes them.
/// Names the row and, when the plan edits activations, blames the edits.
fn ensure_finite(t: &Tensor, what: &'static str, plan: &InterventionPlan) -> Result<()> {
    let sums = t
        .to_dtype(DType::F32)?
        .sqr()?
        .sum(D::Minus1)?
        .to_vec1::<f32>()?;
    match sums.iter().position(|s| !s.is_finite()) {
        None => Ok(()),
        Some(row) => Err(ModelError::NonFinite {
            what,
            row,
            edits: plan.edits().len(),
        }),
    }
}

/// Additive attention mask `[batch, 1, seq, kv]`: causal, and hiding each row's left padding.
/// None when a single unpadded position needs no mask. A padding query attends to itself so its
/// softmax row stays finite (its output is never used).
fn attention_mask(layout: &StepLayout, device: &Device) -> Result<Option<Tensor>> {
    let padded = layout.pad.iter().any(|&p| p > 0);
    if layout.seq == 1 && !padded {
        return Ok(None);
    }
    let kv = layout.start + layout.seq;
    let rows = if padded { layout.batch } else { 1 };
    let mut m = vec![0f32; rows * layout.seq * kv];
    for r in 0..rows {
        for i in 0..layout.seq {
            let col = layout.start + i;
            for j in 0..kv {
                let visible = j <= col && (j >= layout.pad[r] || j == col);
                if !visible {
                    m[(r * layout.seq + i) * kv + j] = f32::NEG_INFINITY;
                }
            }
        }
    }
    Ok(Some(Tensor::from_vec(
        m,
        (rows, 1, layout.seq, kv),
        device,
    )?))
}

impl Attention {
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        x: &Tensor,
        rope: &Rope,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: &mut Option<(Tensor, Tensor)>,
        ops: Ops,
    ) -> Result<Tensor> {
        let (b, q_len, _) = x.dims3()?;
        let heads = |t: Tensor, n: usize| -> candle_core::Result<Tensor> {
            t.reshape((b, q_len, n, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = heads(self.q.forward(x)?, self.n_heads)?;
        let k = heads(self.k.forward(x)?, self.n_kv_heads)?;
        let v = heads(self.v.forward(x)?, self.n_kv_heads)?;
        let q = rope.apply(&q, cos, sin, ops)?;
        let k = rope.apply(&k, cos, sin, ops)?;
        let (k, v) = match cache.take() {
            None => (k, v),
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
        };
        *cache = Some((k.clone(), v.clone()));
        let rep = self.n_heads / self.n_kv_heads;
        let k = repeat_kv(k, rep)?;
        let v = repeat_kv(v, rep)?;
        let scores = (q.matmul(&k.t()?)? / (self.head_dim as f64).sqrt())?;
        let scores = match mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        let probs = match ops {
            Ops::Fused => candle_nn::ops::softmax_last_dim(&scores)?,
            Ops::Differentiable => softmax_composed(&scores)?,
        };
        let y = probs.matmul(&v.contiguous()?)?;
        let y = y
            .transpose(1, 2)?
            .reshape((b, q_len, self.n_heads * self.head_dim))?;
        Ok(self.o.forward(&y)?)
    }
}

/// Share each key/value head among `rep` query heads (grouped-query attention).
fn repeat_kv(x: Tensor, rep: usize) -> candle_core::Result<Tensor> {
    if rep == 1 {
        return Ok(x);
    }
    let (b, n_kv, s, hd) = x.dims4()?;
    x.unsqueeze(2)?
        .expand((b, n_kv, rep, s, hd))?
        .reshape((b, n_kv * rep, s, hd))
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let gate = candle_nn::ops::silu(&self.gate.forward(x)?)?;
        self.down.forward(&(gate * self.up.forward(x)?)?)
    }
}

/// Log-softmax over the last dimension, for scores and judges.
pub fn log_softmax(logits: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::log_softmax(logits, D::Minus1)?)
}
