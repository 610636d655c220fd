//! Low-rank adapters (LoRA, Hu et al. 2022) on the decoder's linear layers.
//!
//! A [`Linear`](crate::weights::Linear) may carry one [`Lora`]: its output becomes
//! `W x + b + scale · B (A drop(x))`, with `A` `[r, in]`, `B` `[out, r]` and `scale = α / r`
//! (PEFT's convention). The base weight is never touched, so the adapter can be trained (its
//! `A`/`B` are then candle `Var`s), stacked with inference-time defenses, or merged.
//!
//! Dropout acts on the adapter's input only (as PEFT's `lora_dropout`) and only while a
//! [`DropoutRng`] is attached: masks come from that seeded generator, so a training run (and a
//! run resumed from a checkpoint) draws the same masks every time.

use std::sync::{Arc, Mutex};

use candle_core::Tensor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A linear layer of a decoder block that can carry an adapter, in PEFT's names.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Proj {
    #[serde(rename = "q_proj")]
    Q,
    #[serde(rename = "k_proj")]
    K,
    #[serde(rename = "v_proj")]
    V,
    #[serde(rename = "o_proj")]
    O,
    #[serde(rename = "gate_proj")]
    Gate,
    #[serde(rename = "up_proj")]
    Up,
    #[serde(rename = "down_proj")]
    Down,
}

impl Proj {
    pub const ALL: [Proj; 7] = [
        Proj::Q,
        Proj::K,
        Proj::V,
        Proj::O,
        Proj::Gate,
        Proj::Up,
        Proj::Down,
    ];

    /// The module's name in HF checkpoints and PEFT's `target_modules` (`q_proj`, …).
    pub fn peft_name(self) -> &'static str {
        match self {
            Proj::Q => "q_proj",
            Proj::K => "k_proj",
            Proj::V => "v_proj",
            Proj::O => "o_proj",
            Proj::Gate => "gate_proj",
            Proj::Up => "up_proj",
            Proj::Down => "down_proj",
        }
    }

    /// Its path inside a decoder layer (`self_attn.q_proj`, `mlp.up_proj`).
    pub fn module(self) -> &'static str {
        match self {
            Proj::Q => "self_attn.q_proj",
            Proj::K => "self_attn.k_proj",
            Proj::V => "self_attn.v_proj",
            Proj::O => "self_attn.o_proj",
            Proj::Gate => "mlp.gate_proj",
            Proj::Up => "mlp.up_proj",
            Proj::Down => "mlp.down_proj",
        }
    }

    /// Parse `q_proj` (or the short `q`).
    pub fn parse(name: &str) -> Option<Proj> {
        Proj::ALL
            .into_iter()
            .find(|p| p.peft_name() == name || p.peft_name().strip_suffix("_proj") == Some(name))
    }
}

impl std::fmt::Display for Proj {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.peft_name())
    }
}

/// The seeded generator that draws every dropout mask of a training step. Shared by all the
/// adapters of a model; the trainer reseeds it before each forward pass.
#[derive(Debug, Clone)]
pub struct DropoutRng(Arc<Mutex<StdRng>>);

impl DropoutRng {
    pub fn new(seed: u64) -> Self {
        Self(Arc::new(Mutex::new(StdRng::seed_from_u64(seed))))
    }

    pub fn reseed(&self, seed: u64) {
        if let Ok(mut g) = self.0.lock() {
            *g = StdRng::seed_from_u64(seed);
        }
    }

    /// A `[n]` mask of `0` (dropped, probability `p`) and `1/(1-p)` (kept).
    fn mask(&self, n: usize, p: f32) -> Vec<f32> {
        let keep = 1.0 / (1.0 - p);
        let mut g = match self.0.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        (0..n)
            .map(|_| if g.random::<f32>() < p { 0.0 } else { keep })
            .collect()
    }
}

/// One adapter: `scale · B A`, `A` `[r, in]`, `B` `[out, r]`.
#[derive(Debug, Clone)]
pub struct Lora {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
    dropout: Option<(f32, DropoutRng)>,
}

impl Lora {
    /// An adapter without dropout (inference, or training with `lora_dropout` 0).
    pub fn new(a: Tensor, b: Tensor, scale: f64) -> candle_core::Result<Self> {
        let (r, _) = a.dims2()?;
        let (_, rb) = b.dims2()?;
        if r != rb {
            candle_core::bail!("LoRA A has rank {r} but B has {rb}");
        }
        Ok(Self {
            a,
            b,
            scale,
            dropout: None,
        })
    }

    /// Drop adapter inputs with probability `p`, masks drawn from `rng` (training only).
    pub fn with_dropout(mut self, p: f32, rng: DropoutRng) -> Self {
        self.dropout = (p > 0.0).then_some((p, rng));
        self
    }

    pub fn rank(&self) -> usize {
        self.a.dims()[0]
    }

    /// `scale · B (A drop(x))` for `x` `[..., in]`.
    pub fn delta(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = match &self.dropout {
            None => x.clone(),
            Some((p, rng)) => {
                let mask = Tensor::from_vec(rng.mask(x.elem_count(), *p), x.shape(), x.device())?
                    .to_dtype(x.dtype())?;
                (x * mask)?
            }
        };
        let a = self.a.to_dtype(x.dtype())?;
        let b = self.b.to_dtype(x.dtype())?;
        let h = x.broadcast_matmul(&a.t()?)?;
        h.broadcast_matmul(&b.t()?)? * self.scale
    }

    /// `scale · B A` `[out, in]`: the update merging folds into the base weight.
    pub fn update(&self) -> candle_core::Result<Tensor> {
        self.b.matmul(&self.a)? * self.scale
    }

    /// `‖scale · B A‖²_F`, computed as `scale² · Σ (BᵀB) ⊙ (AAᵀ)` (`[r, r]`, never `[out, in]`).
    pub fn update_sq_norm(&self) -> candle_core::Result<Tensor> {
        let btb = self.b.t()?.matmul(&self.b)?;
        let aat = self.a.matmul(&self.a.t()?)?;
        (btb * aat)?.sum_all()?.affine(self.scale * self.scale, 0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn names_round_trip() {
        for p in Proj::ALL {
            assert_eq!(Proj::parse(p.peft_name()), Some(p));
        }
        assert_eq!(Proj::parse("q"), Some(Proj::Q));
        assert_eq!(Proj::parse("qkv"), None);
    }

    #[test]
    fn update_norm_matches_the_dense_product() {
        let dev = Device::Cpu;
        let a = Tensor::randn(0f32, 1.0, (3, 7), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, (5, 3), &dev).unwrap();
        let l = Lora::new(a, b, 0.25).unwrap();
        let dense: f32 = l
            .update()
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        let fast: f32 = l.update_sq_norm().unwrap().to_scalar().unwrap();
        assert!(
            (dense - fast).abs() < 1e-4 * dense.abs(),
            "{dense} vs {fast}"
        );
    }

    #[test]
    fn dropout_masks_repeat_after_reseeding() {
        let rng = DropoutRng::new(1);
        let first = rng.mask(100, 0.5);
        rng.reseed(1);
        assert_eq!(first, rng.mask(100, 0.5));
        let dropped = first.iter().filter(|&&m| m == 0.0).count();
        assert!(
            (20..80).contains(&dropped),
            "{dropped} of 100 dropped at p = 0.5"
        );
        assert!(first.iter().all(|&m| m == 0.0 || m == 2.0));
    }
}
