//! Training on the tiny random Qwen2 fixture (crates/earguard-model/tests/fixtures/hf):
//! LoRA gradients against finite differences, the loss falling, AdamW against candle_nn's, and
//! a run stopped at step k and resumed against an uninterrupted one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use earguard_model::weights::{safetensor_files, SafeTensorWeights, WeightStore};
use earguard_model::{
    Decoder, DecoderConfig, HookKind, InterventionPlan, Logits, Ops, Positions, Proj, Prompt,
};
use earguard_train::objective::{FrozenPrefix, RepresentationTargets, Sample};
use earguard_train::optim::{AdamW, AdamWParams, Decay, Schedule};
use earguard_train::{train, Adapter, LoraConfig, Objective, RunOptions, TrainConfig};
use rand::rngs::StdRng;
use rand::SeedableRng;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../earguard-model/tests/fixtures/hf/tiny-qwen2")
}

fn tiny() -> Decoder {
    let dir = fixture();
    let p = dir.join("config.json");
    let cfg = DecoderConfig::from_hf_json(&std::fs::read_to_string(&p).unwrap(), &p).unwrap();
    let store =
        WeightStore::SafeTensors(SafeTensorWeights::open(safetensor_files(&dir).unwrap()).unwrap());
    Decoder::load(cfg, &store, "").unwrap()
}

/// Four short sequences, each with a random target for its last hidden state.
fn objective(dec: &Decoder) -> RepresentationTargets {
    let seqs: [&[u32]; 4] = [
        &[5, 17, 99, 4],
        &[250, 8, 3],
        &[40, 41, 42, 43, 44],
        &[7, 300],
    ];
    let d = dec.config().hidden_size;
    let samples = seqs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut rng = StdRng::seed_from_u64(i as u64);
            let t: Vec<f32> = (0..d)
                .map(|_| rand::Rng::random_range(&mut rng, -1.0..1.0))
                .collect();
            Sample {
                variants: vec![
                    Prompt::text(s.to_vec()),
                    Prompt::text([s, &[11u32][..]].concat()),
                ],
                target: Tensor::from_vec(t, d, &Device::Cpu).unwrap(),
            }
        })
        .collect();
    RepresentationTargets {
        samples,
        frozen: None,
    }
}

fn config(dropout: f32) -> LoraConfig {
    LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout,
        targets: Proj::ALL.to_vec(),
        layers: None,
        rslora: false,
    }
}

/// Normal values with standard deviation `std` from a seeded generator.
fn seeded(rng: &mut StdRng, dims: &[usize], std: f32) -> Tensor {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| {
            // Box-Muller from two uniforms.
            let (u1, u2): (f32, f32) = (
                rand::Rng::random_range(rng, 1e-7..1.0),
                rand::Rng::random(rng),
            );
            std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
        })
        .collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

/// The largest absolute entry of `t`.
fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

/// Loss of sample 0 (first variant) with every adapter attached: the decoder path only (the
/// penalty's own gradient is checked against its dense form in the library's unit tests).
fn loss_of(base: &Decoder, adapter: &Adapter, obj: &RepresentationTargets) -> Tensor {
    let mut dec = base.clone();
    dec.set_ops(Ops::Differentiable);
    adapter.attach(&mut dec, None).unwrap();
    // A rng whose first draw picks variant 0 is not guaranteed: use a one-variant objective.
    let one = RepresentationTargets {
        samples: vec![Sample {
            variants: vec![obj.samples[0].variants[0].clone()],
            target: obj.samples[0].target.clone(),
        }],
        frozen: None,
    };
    one.loss(&dec, 0, &mut StdRng::seed_from_u64(0)).unwrap()
}

#[test]
fn lora_gradients_match_finite_differences() {
    let base = tiny();
    let obj = objective(&base);
    let adapter = Adapter::init(&base, config(0.0), 1).unwrap();
    // Non-zero B everywhere, so gradients reach every A (and through layer 1 into layer 0).
    let mut rng = StdRng::seed_from_u64(42);
    for it in &adapter.items {
        it.b.set(&seeded(&mut rng, it.b.dims(), 0.3)).unwrap();
    }
    let loss = loss_of(&base, &adapter, &obj);
    let grads = loss.backward().unwrap();
    let vars = adapter.vars();

    // Directional derivative along a random direction over all LoRA tensors.
    // A unit-norm direction, so the finite-difference step is eps in parameter space.
    let dirs: Vec<Tensor> = vars
        .iter()
        .map(|v| seeded(&mut rng, v.dims(), 1.0))
        .collect();
    let norm: f64 = dirs
        .iter()
        .map(|d| scalar(&d.sqr().unwrap().sum_all().unwrap()))
        .sum::<f64>()
        .sqrt();
    let dirs: Vec<Tensor> = dirs.iter().map(|d| (d / norm).unwrap()).collect();
    let analytic: f64 = vars
        .iter()
        .zip(&dirs)
        .map(|(v, u)| {
            let g = grads
                .get(v.as_tensor())
                .expect("every LoRA tensor gets a gradient");
            scalar(&(g * u).unwrap().sum_all().unwrap())
        })
        .sum();
    let originals: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().copy().unwrap()).collect();
    let eps = 1e-2;
    let shifted = |sign: f64| -> f64 {
        for ((v, u), o) in vars.iter().zip(&dirs).zip(&originals) {
            v.set(&(o + (u * (sign * eps)).unwrap()).unwrap()).unwrap();
        }
        scalar(&loss_of(&base, &adapter, &obj))
    };
    let numeric = (shifted(1.0) - shifted(-1.0)) / (2.0 * eps);
    for (v, o) in vars.iter().zip(&originals) {
        v.set(o).unwrap();
    }
    let rel = (analytic - numeric).abs() / analytic.abs().max(1e-6);
    eprintln!(
        "directional derivative: autograd {analytic}, finite differences {numeric}, rel {rel:.2e}"
    );
    assert!(
        rel < 1e-2,
        "directional derivative: autograd {analytic} vs finite differences {numeric} (rel {rel})"
    );

    // Single coordinates of layer 0's q_proj A and layer 1's down_proj B.
    for (item, which, idx) in [(0usize, 'a', [1usize, 3usize]), (13, 'b', [5, 2])] {
        let it = &adapter.items[item];
        let var = if which == 'a' { &it.a } else { &it.b };
        let g: Vec<Vec<f32>> = grads.get(var.as_tensor()).unwrap().to_vec2().unwrap();
        let analytic = g[idx[0]][idx[1]] as f64;
        let orig = var.as_tensor().copy().unwrap();
        let bump = |delta: f32| -> f64 {
            let mut w: Vec<Vec<f32>> = orig.to_vec2().unwrap();
            w[idx[0]][idx[1]] += delta;
            var.set(&Tensor::new(w, &Device::Cpu).unwrap()).unwrap();
            scalar(&loss_of(&base, &adapter, &obj))
        };
        let e = 1e-2f32;
        let numeric = (bump(e) - bump(-e)) / (2.0 * e as f64);
        var.set(&orig).unwrap();
        let err = (analytic - numeric).abs();
        eprintln!("item {item} {which}{idx:?}: autograd {analytic}, finite differences {numeric}");
        assert!(
            err < 2e-2 * analytic.abs().max(1e-2),
            "{:?} layer {} {which}{idx:?}: autograd {analytic} vs finite differences {numeric}",
            it.proj,
            it.layer
        );
    }
    assert_eq!(adapter.items[13].proj, Proj::Down);
    assert_eq!(adapter.items[13].layer, 1);
}

fn train_config(epochs: usize, lr: f64) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 2,
        schedule: Schedule {
            lr,
            warmup_steps: 2,
            decay: Decay::Constant,
        },
        adamw: AdamWParams::default(),
        penalty: 1.0,
        seed: 7,
        checkpoint_every: 3,
    }
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("earguard-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn tiny_fixture_loss_decreases() {
    let base = tiny();
    let obj = objective(&base);
    let adapter = Adapter::init(&base, config(0.1), 3).unwrap();
    let dir = scratch("decrease");
    let report = train(
        &base,
        &adapter,
        &obj,
        &train_config(15, 2e-2),
        &dir,
        &RunOptions::default(),
    )
    .unwrap();
    assert_eq!(report.losses.len(), 30);
    eprintln!("losses: {:?}", report.losses);
    let first: f32 = report.losses[..4].iter().sum::<f32>() / 4.0;
    let last: f32 = report.losses[26..].iter().sum::<f32>() / 4.0;
    assert!(
        last < 0.7 * first,
        "loss should fall: first 4 steps {first}, last 4 steps {last}"
    );
    // The base weights are untouched: only the adapters were variables.
    let fresh = tiny();
    let q0 = |d: &Decoder| d.linear(0, Proj::Q).unwrap().dense_weight().unwrap();
    assert_eq!(
        (q0(&base) - q0(&fresh))
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap(),
        0.0
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn resumed_run_ends_where_an_uninterrupted_one_does() {
    let base = tiny();
    let obj = objective(&base);
    let cfg = train_config(3, 5e-3); // 6 steps, checkpoints after steps 3 and 6

    let whole_dir = scratch("whole");
    let whole = Adapter::init(&base, config(0.1), 5).unwrap();
    train(
        &base,
        &whole,
        &obj,
        &cfg,
        &whole_dir,
        &RunOptions::default(),
    )
    .unwrap();

    let split_dir = scratch("split");
    let first = Adapter::init(&base, config(0.1), 5).unwrap();
    let stop = RunOptions {
        stop_after: Some(4),
        ..Default::default()
    };
    let r = train(&base, &first, &obj, &cfg, &split_dir, &stop).unwrap();
    assert_eq!(r.steps, 4);
    // A new process: fresh adapter values (different seed), everything from the checkpoint.
    let second = Adapter::init(&base, config(0.1), 99).unwrap();
    let r = train(
        &base,
        &second,
        &obj,
        &cfg,
        &split_dir,
        &RunOptions::default(),
    )
    .unwrap();
    assert_eq!(r.resumed_from, Some(4));
    assert_eq!(r.losses.len(), 6);

    let (a, b) = (whole.tensors(), second.tensors());
    assert_eq!(a.len(), b.len());
    for (k, t) in &a {
        let d = max_abs(&(t - &b[k]).unwrap());
        assert!(d <= 1e-6, "{k} differs by {d} after resuming");
    }
    for d in [whole_dir, split_dir] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn adamw_matches_candle_nn() {
    use candle_nn::Optimizer;
    let dev = Device::Cpu;
    let init = Tensor::randn(0f32, 1.0, (3, 4), &dev).unwrap();
    let ours = Var::from_tensor(&init).unwrap();
    let theirs = Var::from_tensor(&init).unwrap();
    let p = AdamWParams::default();
    let mut opt = AdamW::new(&[&ours], p).unwrap();
    let mut reference = candle_nn::AdamW::new(
        vec![theirs.clone()],
        candle_nn::ParamsAdamW {
            lr: 0.1,
            beta1: p.beta1,
            beta2: p.beta2,
            eps: p.eps,
            weight_decay: p.weight_decay,
        },
    )
    .unwrap();
    for step in 0..5 {
        let lr = 0.1 / (step + 1) as f64;
        let target = Tensor::randn(0f32, 1.0, (3, 4), &dev).unwrap();
        let g1 = (ours.as_tensor() - &target)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        opt.step(&[&ours], &[g1.get(ours.as_tensor()).cloned()], lr)
            .unwrap();
        reference.set_learning_rate(lr);
        let g2 = (theirs.as_tensor() - &target)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        reference.step(&g2).unwrap();
        let d = (ours.as_tensor() - theirs.as_tensor())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            d < 1e-6,
            "step {step}: ours and candle_nn's AdamW differ by {d}"
        );
    }
}

/// Adapters on layer 1 only, so layer 0 is frozen.
fn top_layer_config(dropout: f32) -> LoraConfig {
    LoraConfig {
        layers: Some(vec![1]),
        ..config(dropout)
    }
}

#[test]
fn a_frozen_prefix_trains_the_same_adapter() {
    let base = tiny();
    let obj = objective(&base);
    let cfg = train_config(4, 1e-2);
    let run = |frozen: Option<Arc<FrozenPrefix>>, name: &str| {
        let adapter = Adapter::init(&base, top_layer_config(0.1), 5).unwrap();
        let obj = RepresentationTargets {
            frozen,
            ..obj.clone()
        };
        let dir = scratch(name);
        let report = train(&base, &adapter, &obj, &cfg, &dir, &RunOptions::default()).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        (adapter.tensors(), report.losses)
    };
    let prefix = Arc::new(FrozenPrefix::below(&base, 1).unwrap());
    let (whole, whole_losses) = run(None, "prefix-whole");
    let (cut, cut_losses) = run(Some(prefix.clone()), "prefix-cut");
    // 4 samples × 2 variants at most; 4 epochs draw some of each.
    assert!((1..=8).contains(&prefix.len()), "{} memoised", prefix.len());
    assert_eq!(prefix.layer(), 1);
    for (a, b) in whole_losses.iter().zip(&cut_losses) {
        assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "loss {a} vs {b}");
    }
    // The training moved the adapters, and both runs moved them alike.
    let moved: f32 = whole
        .iter()
        .filter(|(k, _)| k.contains("lora_B"))
        .map(|(_, t)| max_abs(t))
        .fold(0.0, f32::max);
    assert!(moved > 1e-3, "the adapters did not move ({moved})");
    for (k, t) in &whole {
        let d = max_abs(&(t - &cut[k]).unwrap());
        assert!(d <= 1e-5, "{k}: the runs differ by {d}");
    }
}

#[test]
fn a_forward_from_a_layer_refuses_hooks_below_it() {
    let base = tiny();
    let hidden = base.config().hidden_size;
    let x = Tensor::zeros((1, 3, hidden), DType::F32, &Device::Cpu).unwrap();
    let below = InterventionPlan::new().capture(HookKind::ResidPre.at(0), Positions::All);
    let err = base
        .forward_from(
            1,
            x.clone(),
            &mut base.new_cache(vec![0]),
            &below,
            Logits::None,
        )
        .unwrap_err();
    assert!(err.to_string().contains("below layer 1"), "{err}");
    assert!(base
        .forward_from(
            2,
            x,
            &mut base.new_cache(vec![0]),
            &InterventionPlan::new(),
            Logits::Last
        )
        .is_err());
    // A cache filled from layer 1 cannot continue a generation through layer 0.
    let mut cache = base.new_cache(vec![0]);
    let y = Tensor::zeros((1, 3, hidden), DType::F32, &Device::Cpu).unwrap();
    base.forward_from(1, y, &mut cache, &InterventionPlan::new(), Logits::Last)
        .unwrap();
    let next = Tensor::new(&[[5u32]], &Device::Cpu).unwrap();
    let err = base
        .forward(&next, &mut cache, &InterventionPlan::new(), Logits::Last)
        .unwrap_err();
    assert!(err.to_string().contains("no keys below layer 1"), "{err}");
    assert!(base.first_layers(0).is_err());
    assert!(base.first_layers(3).is_err());
}
