//! AdamW (Loshchilov & Hutter; PyTorch's update order) with its state in the open, so a
//! checkpoint can save the moments and a resumed run continues bit-for-bit; and the learning
//! rate schedule (linear warm-up, then constant or linear decay).
//!
//! candle_nn::AdamW computes the same update (tests/optim.rs checks it step for step) but keeps
//! its moments private, which rules out resuming.

use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWParams {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWParams {
    /// β (0.9, 0.98) as in the RRS release; ε and weight decay are PyTorch's defaults.
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

#[derive(Debug)]
pub struct AdamW {
    pub params: AdamWParams,
    /// Updates taken so far.
    pub t: usize,
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
}

impl AdamW {
    pub fn new(vars: &[&Var], params: AdamWParams) -> Result<Self> {
        let zeros = |v: &&Var| v.as_tensor().zeros_like();
        Ok(Self {
            params,
            t: 0,
            m: vars.iter().map(zeros).collect::<candle_core::Result<_>>()?,
            v: vars.iter().map(zeros).collect::<candle_core::Result<_>>()?,
        })
    }

    /// One update with learning rate `lr`; `grads[i]` belongs to `vars[i]` (None: no gradient
    /// reached it this step, so only the decay and the moments' decay apply, as in PyTorch
    /// when the grad is zero).
    pub fn step(&mut self, vars: &[&Var], grads: &[Option<Tensor>], lr: f64) -> Result<()> {
        if vars.len() != self.m.len() || grads.len() != vars.len() {
            return Err(TrainError::Invalid(format!(
                "optimizer holds {} tensors, got {} vars and {} gradients",
                self.m.len(),
                vars.len(),
                grads.len()
            )));
        }
        let p = self.params;
        self.t += 1;
        let bc1 = 1.0 - p.beta1.powi(self.t as i32);
        let bc2 = 1.0 - p.beta2.powi(self.t as i32);
        for (i, var) in vars.iter().enumerate() {
            let theta = var.as_tensor();
            // Detached: candle's gradients keep the backward graph (of this step, reaching the
            // variables), and the moments would chain every step's graph into the next.
            let g = match &grads[i] {
                Some(g) => g.detach(),
                None => theta.zeros_like()?.detach(),
            };
            let m = ((&self.m[i] * p.beta1)? + (&g * (1.0 - p.beta1))?)?;
            let v = ((&self.v[i] * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
            let decayed = (theta * (1.0 - lr * p.weight_decay))?;
            let m_hat = (&m / bc1)?;
            let v_hat = (&v / bc2)?;
            let update = (m_hat / (v_hat.sqrt()? + p.eps)?)?;
            var.set(&(decayed - (update * lr)?)?)?;
            self.m[i] = m.detach();
            self.v[i] = v.detach();
        }
        Ok(())
    }
}

/// What the learning rate does after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    #[default]
    Constant,
    /// Linear to zero at the last step (HF Trainer's default).
    Linear,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub lr: f64,
    pub warmup_steps: usize,
    pub decay: Decay,
}

impl Schedule {
    /// The learning rate of (0-based) `step` out of `total`.
    pub fn lr_at(&self, step: usize, total: usize) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        match self.decay {
            Decay::Constant => self.lr,
            Decay::Linear => {
                let span = total.saturating_sub(self.warmup_steps).max(1) as f64;
                let done = (step - self.warmup_steps) as f64;
                self.lr * (1.0 - done / span).max(0.0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay() {
        let s = Schedule {
            lr: 1.0,
            warmup_steps: 4,
            decay: Decay::Linear,
        };
        let lrs: Vec<f64> = (0..8).map(|i| s.lr_at(i, 8)).collect();
        assert_eq!(lrs, [0.25, 0.5, 0.75, 1.0, 1.0, 0.75, 0.5, 0.25]);
        let c = Schedule {
            decay: Decay::Constant,
            ..s
        };
        assert_eq!(c.lr_at(100, 8), 1.0);
    }
}
