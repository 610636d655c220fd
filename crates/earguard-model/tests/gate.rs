//! A gate (CAST's condition) is decided inside the prompt's own forward pass: one prefill of a
//! batch gives, row by row, what probing each prompt first and then steering only the rows
//! that met the condition gives. Tiny Qwen2 fixture (2 layers, hidden 64), f32; the rows of a
//! batch are compared with single-row runs within 1e-4 (padding changes the matmul shapes).

use candle_core::{DType, Device, Tensor};
use earguard_model::{
    prefill, Edit, HookKind, HookPoint, Intervention, InterventionPlan, KvCache, Logits, Positions,
    Prompt,
};

mod common;
use common::{load_decoder, max_diff};

const TOL: f32 = 1e-4;

fn prompts() -> Vec<Prompt> {
    vec![
        Prompt::text(vec![11, 42, 7, 300, 5, 91, 17]),
        Prompt::text(vec![250, 3, 77, 12]),
    ]
}

fn vector(seed: u64) -> Tensor {
    // A fixed pseudo-random vector of norm ~8 (large enough to move the logits).
    let mut s = seed;
    let v: Vec<f32> = (0..64)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        })
        .collect();
    (Tensor::new(v, &Device::Cpu).unwrap() * 2.0).unwrap()
}

fn gated(point: HookPoint, v: &Tensor) -> Intervention {
    Intervention {
        point,
        positions: Positions::Last,
        edit: Edit::Add(v.clone()),
        gated: true,
    }
}

/// Prefill `prompts` with `plan`, then feed `steps` fixed tokens; the logits of every call.
fn run(
    dec: &earguard_model::Decoder,
    prompts: &[Prompt],
    plan: &InterventionPlan,
    steps: &[u32],
) -> (Vec<Tensor>, KvCache) {
    let (out, mut cache) = prefill(dec, prompts, 0, plan, Logits::Last).unwrap();
    let mut all = vec![out.logits.unwrap()];
    for &t in steps {
        let ids = Tensor::new(vec![t; prompts.len()], &Device::Cpu)
            .unwrap()
            .unsqueeze(1)
            .unwrap();
        all.push(
            dec.forward(&ids, &mut cache, plan, Logits::Last)
                .unwrap()
                .logits
                .unwrap(),
        );
    }
    (all, cache)
}

/// The gate's cosine with `direction` for each prompt alone, probed at `point` without edits.
fn cosines(dec: &earguard_model::Decoder, point: HookPoint, direction: &Tensor) -> Vec<f32> {
    let norm = |t: &Tensor| {
        t.sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .sqrt()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    prompts()
        .iter()
        .map(|p| {
            let probe = InterventionPlan::new().capture(point, Positions::Last);
            let (out, _) = prefill(dec, std::slice::from_ref(p), 0, &probe, Logits::None).unwrap();
            let h = out.captures.get(point).unwrap().flatten_all().unwrap();
            let dot = (&h * direction)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            dot / (norm(&h) * norm(direction))
        })
        .collect()
}

#[test]
fn one_prefill_steers_the_rows_that_meet_the_condition() {
    let (dec, _) = load_decoder("tiny-qwen2");
    let gate_at = HookKind::ResidPost.at(0);
    let adds = [
        (HookKind::ResidPost.at(0), vector(1)),
        (HookKind::ResidPre.at(1), vector(2)),
        (HookKind::ResidPost.at(1), vector(3)),
    ];
    // The condition: prompt 0's own activation, so it scores cos 1 and prompt 1 lower.
    let probe = InterventionPlan::new().capture(gate_at, Positions::Last);
    let (out, _) = prefill(&dec, &prompts()[..1], 0, &probe, Logits::None).unwrap();
    let direction = out.captures.get(gate_at).unwrap().flatten_all().unwrap();
    let cos = cosines(&dec, gate_at, &direction);
    assert!((cos[0] - 1.0).abs() < 1e-4 && cos[1] < 0.99, "{cos:?}");
    let threshold = (cos[0] + cos[1]) / 2.0;

    let mut plan = InterventionPlan::new()
        .gate(gate_at, &direction, threshold)
        .unwrap();
    for (p, v) in &adds {
        plan.push(gated(*p, v));
    }
    let steps = [9, 400, 33];
    let (batch, cache) = run(&dec, &prompts(), &plan, &steps);
    assert_eq!(cache.gate(), Some(&[true, false][..]));

    // The two-pass reference: prompt 0 steered unconditionally, prompt 1 not at all.
    let mut steer = InterventionPlan::new();
    for (p, v) in &adds {
        steer = steer.add(*p, Positions::Last, v.clone());
    }
    let (on, _) = run(&dec, &prompts()[..1], &steer, &steps);
    let (off, _) = run(&dec, &prompts()[1..], &InterventionPlan::new(), &steps);
    let (plain, _) = run(&dec, &prompts()[..1], &InterventionPlan::new(), &steps);
    for (i, l) in batch.iter().enumerate() {
        let (row0, row1) = (l.get(0).unwrap(), l.get(1).unwrap());
        assert!(
            max_diff(&row0, &on[i].get(0).unwrap()) < TOL,
            "call {i}: steered row"
        );
        assert!(
            max_diff(&row1, &off[i].get(0).unwrap()) < TOL,
            "call {i}: unsteered row"
        );
        // The control: the edits do move the steered row.
        assert!(
            max_diff(&row0, &plain[i].get(0).unwrap()) > 0.1,
            "call {i}: no effect"
        );
    }
}

/// An edit the prompt's pass reaches before the gate waits for the generated tokens (as in
/// CAST's reference implementation), and a gate nobody passes steers nothing.
#[test]
fn edits_before_the_gate_start_with_the_generated_tokens() {
    let (dec, _) = load_decoder("tiny-qwen2");
    let gate_at = HookKind::ResidMid.at(1);
    let early = HookKind::ResidPre.at(0);
    let v = vector(4);
    let mut plan = InterventionPlan::new()
        .gate(gate_at, &vector(5), -1.0)
        .unwrap();
    plan.push(gated(early, &v));
    let steps = [9, 400];
    let one = &prompts()[..1];
    let (gated_run, cache) = run(&dec, one, &plan, &steps);
    assert_eq!(cache.gate(), Some(&[true][..]));
    let (plain, _) = run(&dec, one, &InterventionPlan::new(), &steps);
    assert!(
        max_diff(&gated_run[0], &plain[0]) < TOL,
        "the prompt is not steered"
    );
    assert!(
        max_diff(&gated_run[1], &plain[1]) > 0.1,
        "generated tokens are"
    );

    let mut never = InterventionPlan::new()
        .gate(gate_at, &vector(5), 1.0)
        .unwrap();
    never.push(gated(HookKind::ResidPost.at(1), &v));
    let (closed, cache) = run(&dec, one, &never, &steps);
    assert_eq!(cache.gate(), Some(&[false][..]));
    for (a, b) in closed.iter().zip(&plain) {
        assert!(max_diff(a, b) < TOL);
    }
    assert_eq!(plain[0].dtype(), DType::F32);
}
