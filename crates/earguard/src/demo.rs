//! `earguard demo`: the README's main job. On the default model, text-only, greedy: fit
//! SARSteer and the refusal direction on the FigStep mirror training set, evaluate none /
//! prompt / sarsteer / ablate / ablate+sarsteer (and ablate + SARSteer refitted with λ = 0), and
//! SafeCoDe (its verdict calibrated on the same training prompts; alone, and its reference
//! variant under the attack with the verdict put to the unattacked model) on a fixed subset of
//! AdvBench mirror pairs, print the table and write the report with plots.
//! Then the attack at partial strength (`ablate=RD:strength=s`, s = 0, 0.25, …, 1) with and
//! without SARSteer: ASR against s, the curve of a weakened refusal that a defense must restore.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use earguard_data::{Label, Mode};
use earguard_eval::judge::JudgeSpec;
use earguard_eval::plots::{self, ScatterPoint, TradeoffPoint};
use earguard_eval::report::Report;
use earguard_model::loader::DEFAULT_MODEL;
use earguard_model::{AudioCache, HookKind};
use earguard_steer::artifact::DatasetRef;
use earguard_steer::defense::{DefenseKind, DefensePart, DefenseSpec};
use earguard_steer::inputs::{InputStyle, DEFAULT_INSTRUCTION, DEFAULT_REFUSAL_SUFFIX};
use earguard_steer::pipeline::{refit_sarsteer, FitSetup, LayerSelection};

use crate::eval::{evaluate, prepare, print_table, tradeoff_point, EvalSettings};

#[derive(Args)]
pub struct DemoArgs {
    /// Model path or short name.
    #[arg(long, short, default_value = DEFAULT_MODEL)]
    pub model: String,
    /// Where shared/data lives (training and evaluation sets).
    #[arg(long, default_value = "../shared/data")]
    pub data_dir: PathBuf,
    /// AdvBench mirror pairs evaluated (each pair = one harmful + one benign prompt).
    #[arg(long, default_value_t = 20, value_parser = crate::args::positive)]
    pub pairs: usize,
    /// Tokens per response.
    #[arg(long, default_value_t = 32, value_parser = crate::args::positive)]
    pub max_tokens: usize,
    /// SARSteer strength.
    #[arg(long, default_value_t = 0.1, conflicts_with = "audio")]
    pub alpha: f64,
    /// A second SARSteer strength for the attack-strength curve (besides --alpha).
    #[arg(long, default_value_t = CURVE_ALPHA, conflicts_with = "audio")]
    pub curve_alpha: f64,
    /// Output directory (vectors, runs, report.md with plots; default out/demo, with --audio
    /// out/demo-audio). Re-running resumes.
    #[arg(long, short)]
    pub out: Option<PathBuf>,
    /// The spoken setting instead: the speech model built from --head, --whisper and --model,
    /// its comprehension gates (greedy WER, answers that address spoken questions), then ASR /
    /// ORR on spoken AdvBench mirror pairs in text-only, audio-text and audio-only modes.
    #[arg(long)]
    pub audio: bool,
    /// With --audio: how the speech model hears: Whisper's own decoder (the listener that
    /// meets both gates) or the trained CTC head (--head).
    #[arg(
        long,
        value_enum,
        default_value = "whisper-decoder",
        requires = "audio"
    )]
    pub listener: crate::args::ListenerArg,
    /// With --audio and the ctc-head listener: the trained speech head.
    #[arg(
        long,
        default_value = "heads/speech-qwen2.5-coder-1.5b",
        requires = "audio"
    )]
    pub head: PathBuf,
    /// With --audio: the Whisper encoder (CTranslate2 or HF directory; default whisper-base
    /// in the models directory, as scripts/fetch-models.sh installs it).
    #[arg(long, requires = "audio")]
    pub whisper: Option<PathBuf>,
    /// With --audio: the voice that speaks the questions and pairs: a Piper neural voice as
    /// piper:NAME (`scripts/fetch-models.sh piper-joe` installs the default, a person-like
    /// voice), or an espeak-ng voice (e.g. en-us: robotic), as `earguard tts --voices` takes
    /// them.
    #[arg(long, default_value = DEMO_VOICE, requires = "audio")]
    pub voice: String,
    /// With --audio: the head's posterior temperature.
    #[arg(long, default_value_t = 1.0, requires = "audio")]
    pub temperature: f32,
    /// With --audio: spoken harmless_val questions for the understanding gate (at least 2).
    #[arg(long, default_value_t = 40, value_parser = at_least_two, requires = "audio")]
    pub questions: usize,
    /// With --audio: also ask this model (e.g. qwen2.5-coder-1.5b-instruct) whether each
    /// spoken answer answers its question, with the judge's controls (see `speech understand
    /// --help`); reported beside the gate, not gated; some 10 min per 40 questions on 2 cores,
    /// with a second copy of the model in memory.
    #[arg(long, value_name = "MODEL", requires = "audio")]
    pub understanding_judge: Option<String>,
}

/// `demo --audio`'s voice: with it, Whisper's decoder meets the ASR gate (espeak-ng's robotic
/// en-us does not).
pub const DEMO_VOICE: &str = "piper:en_US-joe-medium";

fn at_least_two(s: &str) -> std::result::Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 2 => Ok(n),
        _ => Err(format!(
            "'{s}': must be at least 2 (the gate compares answers)"
        )),
    }
}

/// The attack strengths of the curve (fraction of the refusal component removed).
const STRENGTHS: [f64; 5] = [0.0, 0.25, 0.5, 0.75, 1.0];
/// Default second α of the curve.
const CURVE_ALPHA: f64 = 0.3;

pub fn run(args: DemoArgs) -> Result<()> {
    if args.audio {
        let out = args.out.clone().unwrap_or_else(|| "out/demo-audio".into());
        return crate::demo_audio::run(&args, &out);
    }
    let out = args.out.clone().unwrap_or_else(|| "out/demo".into());
    let t0 = Instant::now();
    let train = args.data_dir.join("figstep_mirror_train.jsonl");
    let eval_set = args.data_dir.join("advbench_mirror.jsonl");
    for p in [&train, &eval_set] {
        if !p.is_file() {
            anyhow::bail!(
                "{} not found: pass --data-dir pointing at shared/data",
                p.display()
            );
        }
    }
    let model = crate::args::load_model(&args.model, false)?;
    let (harmful, benign, refs) =
        crate::fit::read_sets(std::slice::from_ref(&train), &[], &[], false)?;
    std::fs::create_dir_all(&out)?;

    let setup = FitSetup {
        model: &model,
        style: InputStyle::new(Mode::TextOnly),
        hook: HookKind::ResidPost,
        batch_size: 8,
        work_dir: Some(out.join("captures")),
        progress: crate::progress_bars(),
        training_sets: refs.clone(),
        audio: AudioCache::new(),
    };
    let sar_dir = out.join("vectors/sarsteer");
    let rd_dir = out.join("vectors/refusal-direction");
    eprintln!(
        "[demo] fitting SARSteer on {} harmful + {} benign prompts",
        harmful.len(),
        benign.len()
    );
    let sar = setup.sarsteer(&harmful, &benign, DEFAULT_REFUSAL_SUFFIX, 10, 1.0)?;
    sar.save(&sar_dir)?;
    eprintln!("[demo] fitting the refusal direction (with layer search)");
    let n = 8.min(harmful.len()).min(benign.len());
    let selection = LayerSelection {
        harmful: harmful[harmful.len() - n..].to_vec(),
        harmless: benign[benign.len() - n..].to_vec(),
        max_fraction: 0.8,
        max_kl: 0.1,
    };
    let rd = setup.refusal_direction(&harmful, &benign, Some(&selection))?;
    rd.save(&rd_dir)?;
    // The same fit without safe-space ablation (λ = 0), refitted from the cached captures: on
    // this text model the benign subspace holds much of the suffix contrast's refusal part.
    let sar0_dir = out.join("vectors/sarsteer-lambda0");
    refit_sarsteer(&sar, &out.join("captures"), 10, 0.0)?.save(&sar0_dir)?;
    // SafeCoDe's verdict threshold, calibrated on the same training prompts.
    let cal_dir = out.join("vectors/safecode-calibration");
    let calibrated = earguard_steer::defense::calibration::Calibration::load(&cal_dir)
        .is_ok_and(|c| c.model_identity == model.info.run_identity());
    if !calibrated {
        eprintln!(
            "[demo] calibrating SafeCoDe's verdict on {} harmful + {} benign prompts",
            harmful.len(),
            benign.len()
        );
        crate::fit::calibrate_safecode(&setup, "safecode", &harmful, &benign, 8)?.save(&cal_dir)?;
    }
    let fit_seconds = t0.elapsed().as_secs_f64();

    let settings = EvalSettings {
        model: args.model.clone(),
        data: vec![eval_set],
        mode: Mode::TextOnly,
        instruction: DEFAULT_INSTRUCTION.into(),
        system: None,
        samples: 1,
        temperature: 0.0,
        top_p: None,
        max_tokens: args.max_tokens,
        seed: 0,
        judges: vec![JudgeSpec::Substring, JudgeSpec::RefusalScore],
        batch_size: 8,
        limit: Some(args.pairs),
        skip_bad_lines: false,
        force: false,
        alpha: Some(args.alpha),
        tokens: Default::default(),
        adapter: Default::default(),
    };
    let prepared = prepare(&settings)?;
    let sarsteer = |dir: &Path| DefensePart::new(DefenseKind::Sarsteer, Some(dir.to_path_buf()));
    let ablate = DefensePart::new(DefenseKind::Ablate, Some(rd_dir.clone()));
    let safecode =
        DefensePart::new(DefenseKind::Safecode, None).with("calibration", cal_dir.display());
    let runs: Vec<(&str, DefenseSpec)> = vec![
        ("none", DefenseSpec::of(vec![])),
        (
            "prompt",
            DefenseSpec::of(vec![DefensePart::new(DefenseKind::Prompt, None)]),
        ),
        ("sarsteer", DefenseSpec::of(vec![sarsteer(&sar_dir)])),
        ("ablate", DefenseSpec::of(vec![ablate.clone()])),
        (
            "ablate+sarsteer",
            DefenseSpec::of(vec![ablate.clone(), sarsteer(&sar_dir)]),
        ),
        (
            "ablate+sarsteer-lambda0",
            DefenseSpec::of(vec![ablate.clone(), sarsteer(&sar0_dir).with("alpha", 0.2)]),
        ),
        ("safecode", DefenseSpec::of(vec![safecode.clone()])),
        // Under the attack the self-verdict is attacked too: the verdict is put to the
        // unattacked model, and the reference variant forces a refusal on "unsafe".
        (
            "ablate+safecode-reference",
            DefenseSpec::of(vec![
                ablate.clone(),
                safecode
                    .with("variant", "reference")
                    .with("judge", &args.model),
            ]),
        ),
    ];
    let base_dir = out.join("runs/none");
    let run_one = |name: &str, spec: &DefenseSpec| -> Result<Report> {
        eprintln!("[demo] evaluating {name}");
        let baseline = (name != "none").then_some(base_dir.as_path());
        evaluate(
            &model,
            &settings,
            &prepared,
            spec,
            None,
            baseline,
            &out.join("runs").join(name),
        )
    };
    let mut reports: Vec<(String, Report)> = Vec::new();
    for (name, spec) in &runs {
        reports.push((name.to_string(), run_one(name, spec)?));
    }

    // ASR against the attack's strength, undefended and with SARSteer at two strengths. The
    // ends of a curve (s = 0: no attack; s = 1: the full attack) reuse the runs above when the
    // spec is the same.
    let curve_defenses = [
        ("none".to_string(), None),
        (format!("sarsteer α {}", args.alpha), Some(args.alpha)),
        (
            format!("sarsteer α {}", args.curve_alpha),
            Some(args.curve_alpha),
        ),
    ];
    let mut curve = Vec::new();
    for (label, alpha) in &curve_defenses {
        let mut points = Vec::new();
        for s in STRENGTHS {
            let attack = if s == 0.0 {
                None
            } else if s == 1.0 {
                Some(ablate.clone())
            } else {
                Some(ablate.clone().with("strength", s))
            };
            let steer = alpha.map(|a| {
                if a == args.alpha {
                    sarsteer(&sar_dir)
                } else {
                    sarsteer(&sar_dir).with("alpha", a)
                }
            });
            let spec = DefenseSpec::of([attack, steer].into_iter().flatten().collect());
            let done = runs.iter().position(|(_, sp)| *sp == spec);
            let r = match done {
                Some(i) => reports[i].1.clone(),
                None => {
                    let tag = alpha.map_or("none".into(), |a| format!("sarsteer-a{a}"));
                    run_one(&format!("curve/{tag}/s{s}"), &spec)?
                }
            };
            points.push((s, r));
        }
        curve.push((label.clone(), points));
    }
    let series: Vec<plots::CurveSeries> = curve
        .iter()
        .map(|(label, points)| plots::CurveSeries {
            label: label.clone(),
            points: points
                .iter()
                .filter_map(|(s, r)| {
                    let ci = r.asr_rate.ci_low.zip(r.asr_rate.ci_high);
                    Some((*s, r.asr?, ci))
                })
                .collect(),
        })
        .collect();
    plots::rate_curve(
        &out,
        "attack_strength",
        &series,
        "ablation strength s (fraction of the refusal component removed)",
        "ASR (%)",
        "ASR under a weakened refusal (AdvBench mirror, text-only)",
    )?;

    // Plots: the trade-off of every defense, per-layer norms of the fitted directions, and a
    // 2-D PCA of harmful vs benign representations at the selected layer.
    let points: Vec<TradeoffPoint> = reports
        .iter()
        .filter_map(|(n, r)| tradeoff_point(r, n))
        .collect();
    plots::tradeoff(
        &out,
        "tradeoff",
        &points,
        "Defenses on AdvBench mirror pairs (text-only)",
        false,
    )?;
    let norms = |v: &earguard_steer::artifact::SteeringVector| -> Result<Vec<f32>> {
        v.directions
            .values()
            .map(|t| Ok(t.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?))
            .collect()
    };
    plots::layer_norms(
        &out,
        "layer_norms",
        &[
            ("SARSteer v_l".into(), norms(&sar)?),
            ("refusal direction r_l".into(), norms(&rd)?),
        ],
        "Per-layer norm of fitted directions",
    )?;
    let layer = rd
        .meta
        .extra
        .get("selected_layer")
        .and_then(|v| v.as_u64())
        .unwrap_or(0) as usize;
    pca_plot(&out, layer)?;

    let table: Vec<(String, &Report)> = reports.iter().map(|(n, r)| (n.clone(), r)).collect();
    println!();
    println!(
        "earguard demo — {} on {} AdvBench mirror pairs, text-only, greedy, {} tokens",
        model.info.name, args.pairs, args.max_tokens
    );
    print_table(&table);
    write_summary(&args, &out, &reports, &curve, &refs, layer, fit_seconds)?;
    println!(
        "report: {} ({:.0} s in all)",
        out.join("report.md").display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// PCA of the captured last-position activations (harmful vs benign) at one layer.
fn pca_plot(out: &Path, layer: usize) -> Result<()> {
    let mut rows = Vec::new();
    let mut groups = Vec::new();
    for (name, label) in [("harmful", Label::Harmful), ("benign", Label::Benign)] {
        let acts = earguard_steer::capture::read_finished(&out.join("captures").join(name))
            .with_context(|| format!("reading {name} captures"))?;
        let at = acts.narrow(1, layer, 1)?.squeeze(1)?.to_vec2::<f32>()?;
        groups.extend(std::iter::repeat_n(label.to_string(), at.len()));
        rows.extend(at);
    }
    let xy = earguard_steer::fit::pca_2d(&rows)?;
    let points: Vec<ScatterPoint> = xy
        .into_iter()
        .zip(groups)
        .map(|((x, y), group)| ScatterPoint { x, y, group })
        .collect();
    plots::pca_scatter(
        out,
        "pca",
        &points,
        &format!("Last-position representations, layer {layer} (PCA)"),
    )?;
    Ok(())
}

fn write_summary(
    args: &DemoArgs,
    out: &Path,
    reports: &[(String, Report)],
    curve: &[(String, Vec<(f64, Report)>)],
    refs: &[DatasetRef],
    layer: usize,
    fit_s: f64,
) -> Result<()> {
    use std::fmt::Write as _;
    let mut md = String::new();
    writeln!(md, "# earguard demo\n")?;
    writeln!(
        md,
        "Model `{}`, text-only, greedy, {} tokens per response, substring judge (SPEC §2).",
        args.model, args.max_tokens
    )?;
    writeln!(md, "SARSteer (k = 10, λ = 1, α = {}; `-lambda0`: refitted with λ = 0 and applied at α = 0.2) and the refusal direction (selected layer {layer}) were fitted on", args.alpha)?;
    for r in refs {
        writeln!(
            md,
            "`{}` ({} harmful + {} benign, sha256 {}…)",
            r.path,
            r.n_harmful,
            r.n_benign,
            &r.sha256[..12]
        )?;
    }
    writeln!(
        md,
        "in {fit_s:.0} s, then evaluated on the first {} pairs of `advbench_mirror.jsonl`.\n",
        args.pairs
    )?;
    if let Some((_, r)) = reports.first() {
        writeln!(md, "{}\n", r.judge_trust.sentence(&r.judge))?;
    }
    writeln!(md, "| defense | ASR (harmful answered) | ORR (benign refused) | degenerate | mirror pairs split | NSI vs none |")?;
    writeln!(md, "|---|---|---|---|---|---|")?;
    for (name, r) in reports {
        let split = r
            .pairs
            .as_ref()
            .map_or("–".into(), |p| p.split_correctly.display_percent());
        let nsi = r
            .baseline
            .as_ref()
            .and_then(|b| b.nsi)
            .map_or("–".into(), |v| format!("{:+.1} pts", 100.0 * v));
        writeln!(
            md,
            "| `{name}` | {} | {} | {} | {split} | {nsi} |",
            r.asr_rate.display_percent(),
            r.orr_rate.display_percent(),
            r.degenerate_rate.display_percent()
        )?;
    }
    writeln!(
        md,
        "\n## Weakened refusal: the attack at partial strength\n\n`ablate=RD:strength=s` removes \
         the fraction s of the refusal component from what the model writes (s = 0: no attack; \
         s = 1: the attack above). ASR (ORR) per strength:\n"
    )?;
    write!(md, "| defense |")?;
    for s in STRENGTHS {
        write!(md, " s = {s} |")?;
    }
    writeln!(md, "\n|---|{}", "---|".repeat(STRENGTHS.len()))?;
    for (label, points) in curve {
        write!(md, "| {label} |")?;
        for (_, r) in points {
            write!(
                md,
                " {} ({}) |",
                r.asr_rate.display_percent(),
                r.orr_rate.display_percent()
            )?;
        }
        writeln!(md)?;
    }
    writeln!(
        md,
        "\n![ASR against attack strength](attack_strength.png)\n\nEach run's responses and \
         report: `runs/<defense>/` (the curve's: `runs/curve/`).\n"
    )?;
    writeln!(
        md,
        "![ASR vs ORR](tradeoff.png)\n\n![Per-layer norms](layer_norms.png)\n\n![PCA](pca.png)"
    )?;
    crate::write_file(&out.join("report.md"), md.as_bytes())?;
    let json = serde_json::json!({
        "model": args.model,
        "pairs": args.pairs,
        "selected_layer": layer,
        "runs": reports.iter().map(|(n, r)| serde_json::json!({"defense": n, "asr": r.asr, "orr": r.orr, "n_harmful": r.n_harmful, "n_benign": r.n_benign, "degenerate": r.degenerate_rate.value, "nsi": r.baseline.as_ref().and_then(|b| b.nsi)})).collect::<Vec<_>>(),
        "attack_strength_curve": curve.iter().map(|(label, points)| serde_json::json!({
            "defense": label,
            "points": points.iter().map(|(s, r)| serde_json::json!({"strength": s, "asr": r.asr, "orr": r.orr, "degenerate": r.degenerate_rate.value})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    });
    crate::write_file(
        &out.join("report.json"),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    Ok(())
}
