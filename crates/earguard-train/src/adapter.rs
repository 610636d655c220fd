//! A set of LoRA adapters over a decoder, and its files in PEFT's format.
//!
//! PEFT saves `adapter_config.json` (`peft_type` "LORA", `r`, `lora_alpha`, `target_modules`,
//! …) and `adapter_model.safetensors` with keys
//! `base_model.model.model.layers.{i}.{self_attn|mlp}.{q_proj|…}.lora_{A|B}.weight`, `A` `[r, in]`
//! and `B` `[out, r]`. The scale is `lora_alpha / r` (`lora_alpha / √r` with `use_rslora`).
//! Reading refuses what earguard cannot apply exactly (DoRA, per-module rank patterns, biases,
//! `fan_in_fan_out`), rather than applying something else.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use earguard_model::lora::DropoutRng;
use earguard_model::{Decoder, Lora, Proj};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::{Result, TrainError};
use crate::fs::{save_tensors_atomic, write_json_atomic};

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
const KEY_PREFIX: &str = "base_model.model.model.layers.";
/// PEFT config fields earguard cannot apply; an adapter with any of them set is refused.
const UNSUPPORTED: &[&str] = &[
    "use_dora",
    "fan_in_fan_out",
    "lora_bias",
    "use_qalora",
    "use_bdlora",
    "rank_pattern",
    "alpha_pattern",
    "layer_replication",
    "modules_to_save",
    "trainable_token_indices",
    "target_parameters",
    "alora_invocation_tokens",
];

/// Whether a config value is set (not null, false, empty or zero-length).
fn is_set(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Null | serde_json::Value::Bool(false) => false,
        serde_json::Value::Object(m) => !m.is_empty(),
        serde_json::Value::Array(a) => !a.is_empty(),
        serde_json::Value::String(s) => !s.is_empty(),
        _ => true,
    }
}

/// Where adapters go and how big they are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f32,
    pub targets: Vec<Proj>,
    /// Decoder layers that get adapters; None = all.
    pub layers: Option<Vec<usize>>,
    /// Scale `alpha / √rank` instead of `alpha / rank` (PEFT's `use_rslora`).
    #[serde(default)]
    pub rslora: bool,
}

impl Default for LoraConfig {
    /// The RRS release's settings: r 16, α 4, dropout 0.1 on every linear layer.
    fn default() -> Self {
        Self {
            rank: 16,
            alpha: 4.0,
            dropout: 0.1,
            targets: Proj::ALL.to_vec(),
            layers: None,
            rslora: false,
        }
    }
}

impl LoraConfig {
    pub fn scale(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }

    fn validate(&self, n_layers: usize) -> Result<()> {
        if self.rank == 0 {
            return Err(TrainError::Invalid("LoRA rank must be at least 1".into()));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(TrainError::Invalid(format!(
                "lora_alpha must be positive, got {}",
                self.alpha
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(TrainError::Invalid(format!(
                "LoRA dropout must be in [0, 1), got {}",
                self.dropout
            )));
        }
        if self.targets.is_empty() {
            return Err(TrainError::Invalid("no LoRA target modules".into()));
        }
        if let Some(layers) = &self.layers {
            if layers.is_empty() {
                return Err(TrainError::Invalid("an empty LoRA layer list".into()));
            }
            if let Some(bad) = layers.iter().find(|&&l| l >= n_layers) {
                return Err(TrainError::Invalid(format!(
                    "LoRA layer {bad} does not exist: the model has {n_layers} layers (0..{})",
                    n_layers - 1
                )));
            }
        }
        Ok(())
    }

    fn layer_list(&self, n_layers: usize) -> Vec<usize> {
        match &self.layers {
            Some(l) => {
                let mut l = l.clone();
                l.sort_unstable();
                l.dedup();
                l
            }
            None => (0..n_layers).collect(),
        }
    }
}

/// One adapted layer: trainable `A` `[r, in]` and `B` `[out, r]`.
#[derive(Debug)]
pub struct AdapterItem {
    pub layer: usize,
    pub proj: Proj,
    pub a: Var,
    pub b: Var,
}

/// The adapters of one model; the base weights are never part of it.
#[derive(Debug)]
pub struct Adapter {
    pub config: LoraConfig,
    pub items: Vec<AdapterItem>,
}

fn key(layer: usize, proj: Proj, which: &str) -> String {
    format!("{KEY_PREFIX}{layer}.{}.lora_{which}.weight", proj.module())
}

/// Parse a PEFT key into (layer, module, "A"|"B").
fn parse_key(k: &str) -> Option<(usize, Proj, &str)> {
    let rest = k.strip_prefix(KEY_PREFIX)?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, which) = rest.rsplit_once(".lora_")?;
    let which = which.strip_suffix(".weight")?;
    let proj = Proj::ALL.into_iter().find(|p| p.module() == module)?;
    matches!(which, "A" | "B").then_some((layer.parse().ok()?, proj, which))
}

impl Adapter {
    /// Fresh adapters as PEFT initialises them: `A` uniform in ±1/√in (Kaiming-uniform with
    /// a = √5), `B` zero, so training starts from the base model exactly.
    pub fn init(dec: &Decoder, config: LoraConfig, seed: u64) -> Result<Self> {
        let n_layers = dec.config().n_layers;
        config.validate(n_layers)?;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut items = Vec::new();
        for layer in config.layer_list(n_layers) {
            for &proj in &config.targets {
                let lin = dec
                    .linear(layer, proj)
                    .ok_or_else(|| TrainError::Invalid(format!("layer {layer} has no {proj}")))?;
                let (inp, out) = (lin.in_features(), lin.out_features());
                let bound = 1.0 / (inp as f32).sqrt();
                let a: Vec<f32> = (0..config.rank * inp)
                    .map(|_| rng.random_range(-bound..bound))
                    .collect();
                let a = Tensor::from_vec(a, (config.rank, inp), dec.device())?;
                let b = Tensor::zeros((out, config.rank), DType::F32, dec.device())?;
                items.push(AdapterItem {
                    layer,
                    proj,
                    a: Var::from_tensor(&a)?,
                    b: Var::from_tensor(&b)?,
                });
            }
        }
        Ok(Self { config, items })
    }

    /// Every trainable tensor, `A` then `B` per item, in a fixed order.
    pub fn vars(&self) -> Vec<&Var> {
        self.items.iter().flat_map(|i| [&i.a, &i.b]).collect()
    }

    /// Put the adapters on `dec`'s layers; with `dropout`, training-mode dropout from that rng.
    pub fn attach(&self, dec: &mut Decoder, dropout: Option<&DropoutRng>) -> Result<()> {
        let scale = self.config.scale();
        let n_layers = dec.config().n_layers;
        for it in &self.items {
            let mut lora = Lora::new(it.a.as_tensor().clone(), it.b.as_tensor().clone(), scale)?;
            if let Some(rng) = dropout {
                lora = lora.with_dropout(self.config.dropout, rng.clone());
            }
            let lin = dec.linear_mut(it.layer, it.proj).ok_or_else(|| {
                TrainError::Invalid(format!(
                    "the adapter targets layer {} but the model has {}",
                    it.layer, n_layers
                ))
            })?;
            lin.set_lora(Some(lora))?;
        }
        Ok(())
    }

    /// `Σ ‖scale · B A‖²_F` over the adapters: the RRS penalty on the weight change.
    pub fn penalty(&self) -> Result<Tensor> {
        let scale = self.config.scale();
        let mut total: Option<Tensor> = None;
        for it in &self.items {
            let l = Lora::new(it.a.as_tensor().clone(), it.b.as_tensor().clone(), scale)?;
            let n = l.update_sq_norm()?;
            total = Some(match total {
                None => n,
                Some(t) => (t + n)?,
            });
        }
        total.ok_or_else(|| TrainError::Invalid("the adapter is empty".into()))
    }

    /// The tensors under PEFT's key names.
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        self.items
            .iter()
            .flat_map(|i| {
                [
                    (key(i.layer, i.proj, "A"), i.a.as_tensor().clone()),
                    (key(i.layer, i.proj, "B"), i.b.as_tensor().clone()),
                ]
            })
            .collect()
    }

    /// Overwrite the values from tensors named as [`Adapter::tensors`] names them.
    pub fn load_values(&self, tensors: &HashMap<String, Tensor>, from: &Path) -> Result<()> {
        for it in &self.items {
            for (which, var) in [("A", &it.a), ("B", &it.b)] {
                let k = key(it.layer, it.proj, which);
                let t = tensors
                    .get(&k)
                    .ok_or_else(|| TrainError::file(from, format!("missing tensor {k}")))?;
                if t.dims() != var.dims() {
                    return Err(TrainError::file(
                        from,
                        format!("{k} has shape {:?}, expected {:?}", t.dims(), var.dims()),
                    ));
                }
                var.set(&t.to_dtype(DType::F32)?)?;
            }
        }
        Ok(())
    }

    /// Write `adapter_config.json` and `adapter_model.safetensors` into `dir` (atomically).
    pub fn save_peft(&self, dir: &Path, base_model: &str) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::file(dir, e))?;
        let c = &self.config;
        let mut targets: Vec<&str> = c.targets.iter().map(|p| p.peft_name()).collect();
        targets.sort_unstable();
        let config = json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model,
            "r": c.rank,
            "lora_alpha": c.alpha,
            "lora_dropout": c.dropout,
            "target_modules": targets,
            "layers_to_transform": c.layers,
            "bias": "none",
            "use_rslora": c.rslora,
            "use_dora": false,
            "fan_in_fan_out": false,
            "init_lora_weights": true,
            "inference_mode": true,
            "modules_to_save": null,
            "rank_pattern": {},
            "alpha_pattern": {},
            "revision": null,
        });
        write_json_atomic(&dir.join(CONFIG_FILE), &config)?;
        save_tensors_atomic(&dir.join(WEIGHTS_FILE), &self.tensors())
    }

    /// Read an adapter that PEFT (or earguard) wrote.
    pub fn load_peft(dir: &Path, device: &Device) -> Result<Self> {
        let cfg_path = dir.join(CONFIG_FILE);
        let text = earguard_data::read_small_text(&cfg_path)
            .map_err(|e| TrainError::file(&cfg_path, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| TrainError::file(&cfg_path, format!("not valid JSON: {e}")))?;
        let bad = |m: String| TrainError::file(&cfg_path, m);
        let str_field = |k: &str| v.get(k).and_then(|x| x.as_str());
        if str_field("peft_type") != Some("LORA") {
            return Err(bad(format!(
                "peft_type is {:?}, only LORA adapters are supported",
                v.get("peft_type")
            )));
        }
        if let Some(b) = str_field("bias").filter(|b| *b != "none") {
            return Err(bad(format!(
                "bias \"{b}\" is not supported (only \"none\")"
            )));
        }
        // Features that change what the adapter computes: refuse them rather than ignore them.
        for feature in UNSUPPORTED {
            if v.get(*feature).is_some_and(is_set) {
                return Err(bad(format!("adapters with {feature} are not supported")));
            }
        }
        let rank = v
            .get("r")
            .and_then(|x| x.as_u64())
            .ok_or_else(|| bad("no integer \"r\"".into()))? as usize;
        let alpha = v
            .get("lora_alpha")
            .and_then(|x| x.as_f64())
            .ok_or_else(|| bad("no numeric \"lora_alpha\"".into()))?;
        let dropout = v
            .get("lora_dropout")
            .and_then(|x| x.as_f64())
            .unwrap_or(0.0) as f32;
        let rslora = v
            .get("use_rslora")
            .and_then(|x| x.as_bool())
            .unwrap_or(false);

        let w_path = dir.join(WEIGHTS_FILE);
        let tensors = candle_core::safetensors::load(&w_path, device)
            .map_err(|e| TrainError::file(&w_path, format!("cannot read: {e}")))?;
        let mut found: BTreeMap<(usize, Proj), [Option<Tensor>; 2]> = BTreeMap::new();
        for (k, t) in &tensors {
            let (layer, proj, which) = parse_key(k).ok_or_else(|| {
                TrainError::file(
                    &w_path,
                    format!("unexpected tensor {k} (not a LoRA A/B weight of a decoder layer)"),
                )
            })?;
            let slot = found.entry((layer, proj)).or_default();
            slot[usize::from(which == "B")] = Some(t.to_dtype(DType::F32)?);
        }
        if found.is_empty() {
            return Err(TrainError::file(&w_path, "holds no LoRA weights"));
        }
        let mut items = Vec::new();
        for ((layer, proj), [a, b]) in found {
            let (Some(a), Some(b)) = (a, b) else {
                return Err(TrainError::file(
                    &w_path,
                    format!("layer {layer} {proj} has only one of lora_A / lora_B"),
                ));
            };
            if a.dims().first() != Some(&rank) || b.dims().get(1) != Some(&rank) {
                return Err(TrainError::file(
                    &w_path,
                    format!(
                        "layer {layer} {proj}: A {:?} / B {:?} do not have rank r = {rank}",
                        a.dims(),
                        b.dims()
                    ),
                ));
            }
            items.push(AdapterItem {
                layer,
                proj,
                a: Var::from_tensor(&a)?,
                b: Var::from_tensor(&b)?,
            });
        }
        let mut targets: Vec<Proj> = items.iter().map(|i| i.proj).collect();
        targets.sort_unstable();
        targets.dedup();
        let mut layers: Vec<usize> = items.iter().map(|i| i.layer).collect();
        layers.dedup();
        Ok(Self {
            config: LoraConfig {
                rank,
                alpha,
                dropout,
                targets,
                layers: Some(layers),
                rslora,
            },
            items,
        })
    }
}

/// What identifies an adapter's content: the sha256 (hex) of its config and weights files,
/// each prefixed by its length. A run records it, so an adapter changed in place is not taken
/// for the one a run started with.
pub fn adapter_sha256(dir: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for name in [CONFIG_FILE, WEIGHTS_FILE] {
        let path = dir.join(name);
        let bytes = std::fs::read(&path).map_err(|e| TrainError::file(&path, e))?;
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    Ok(earguard_data::hex(&h.finalize()))
}

/// Load the PEFT adapter in `dir` onto `dec` (inference: no dropout).
pub fn apply_adapter(dec: &mut Decoder, dir: &Path) -> Result<LoraConfig> {
    let adapter = Adapter::load_peft(dir, dec.device())?;
    adapter.attach(dec, None)?;
    Ok(adapter.config)
}

/// What [`merge`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct MergeSummary {
    /// Linear weights with the adapter folded in.
    pub merged: usize,
    /// Tensors written in all.
    pub tensors: usize,
    /// Other files copied (config, tokenizer, …).
    pub copied: Vec<String>,
}

/// Fold the PEFT adapter in `adapter_dir` into the HF safetensors checkpoint in `base_dir` and
/// write a checkpoint of the same layout to `out_dir`: each adapted `…layers.{i}.{module}.weight`
/// becomes `W + scale·B·A` (computed in f32, stored in W's dtype), every other tensor and every
/// other file of the directory (config, tokenizer, index) is copied unchanged. Every adapter
/// item must find its weight exactly once.
pub fn merge(base_dir: &Path, adapter_dir: &Path, out_dir: &Path) -> Result<MergeSummary> {
    let adapter = Adapter::load_peft(adapter_dir, &Device::Cpu)?;
    let scale = adapter.config.scale();
    let mut wanted: HashMap<String, &AdapterItem> = adapter
        .items
        .iter()
        .map(|i| (format!("layers.{}.{}.weight", i.layer, i.proj.module()), i))
        .collect();
    let files = earguard_model::weights::safetensor_files(base_dir)
        .map_err(|e| TrainError::file(base_dir, e.to_string()))?;
    // Written beside `out_dir` and renamed into place at the end: a failed merge leaves no
    // directory that could be taken for a model (or block the next try).
    let name = out_dir
        .file_name()
        .ok_or_else(|| TrainError::file(out_dir, "the output needs a directory name"))?;
    let final_dir = out_dir;
    let tmp = out_dir.with_file_name(format!(
        ".{}.partial-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    let result = merge_into(&files, base_dir, &tmp, &mut wanted, scale);
    match result {
        Ok(summary) => {
            std::fs::rename(&tmp, final_dir).map_err(|e| TrainError::file(final_dir, e))?;
            Ok(summary)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

fn merge_into(
    files: &[std::path::PathBuf],
    base_dir: &Path,
    out_dir: &Path,
    wanted: &mut HashMap<String, &AdapterItem>,
    scale: f64,
) -> Result<MergeSummary> {
    std::fs::create_dir_all(out_dir).map_err(|e| TrainError::file(out_dir, e))?;
    let mut summary = MergeSummary {
        merged: 0,
        tensors: 0,
        copied: Vec::new(),
    };
    for file in files {
        let mut tensors = candle_core::safetensors::load(file, &Device::Cpu)
            .map_err(|e| TrainError::file(file, format!("cannot read: {e}")))?;
        for (name, t) in tensors.iter_mut() {
            // The decoder's weights only: `model.layers.…` (Qwen2) or
            // `language_model.model.layers.…` (Qwen2-Audio), never the audio tower's layers.
            let Some(suffix) = name
                .strip_prefix("language_model.")
                .unwrap_or(name)
                .strip_prefix("model.")
                .filter(|s| wanted.contains_key(*s))
            else {
                continue;
            };
            let item = wanted.remove(suffix).expect("checked above");
            let update = (item.b.as_tensor().matmul(item.a.as_tensor())? * scale)?;
            if update.dims() != t.dims() {
                return Err(TrainError::file(
                    file,
                    format!(
                        "{name} is {:?} but the adapter's update is {:?}",
                        t.dims(),
                        update.dims()
                    ),
                ));
            }
            *t = (t.to_dtype(DType::F32)? + update)?.to_dtype(t.dtype())?;
            summary.merged += 1;
        }
        summary.tensors += tensors.len();
        let name = file.file_name().expect("a safetensors file has a name");
        save_tensors_atomic(&out_dir.join(name), &tensors)?;
    }
    if let Some(missing) = wanted.keys().next() {
        return Err(TrainError::file(
            base_dir,
            format!(
                "no weight {missing} for the adapter ({} of its modules unmatched): is this the \
                 adapter's base model?",
                wanted.len()
            ),
        ));
    }
    let entries = std::fs::read_dir(base_dir).map_err(|e| TrainError::file(base_dir, e))?;
    for entry in entries {
        let path = entry.map_err(|e| TrainError::file(base_dir, e))?.path();
        let is_weights = path.extension().is_some_and(|e| e == "safetensors");
        if path.is_file() && !is_weights {
            let name = path.file_name().expect("a file has a name");
            std::fs::copy(&path, out_dir.join(name)).map_err(|e| TrainError::file(&path, e))?;
            summary.copied.push(name.to_string_lossy().into_owned());
        }
    }
    summary.copied.sort();
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peft_keys_round_trip() {
        for p in Proj::ALL {
            for w in ["A", "B"] {
                let k = key(7, p, w);
                assert_eq!(parse_key(&k), Some((7, p, w)), "{k}");
            }
        }
        assert_eq!(
            key(3, Proj::Q, "A"),
            "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight"
        );
        assert_eq!(parse_key("base_model.model.lm_head.lora_A.weight"), None);
        assert_eq!(
            parse_key("base_model.model.model.layers.1.mlp.up_proj.lora_C.weight"),
            None
        );
    }
}
