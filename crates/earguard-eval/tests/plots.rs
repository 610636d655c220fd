//! Plots render to PNG + SVG with the right content, and bad input is an error, not a panic.
//!
//! Set `EARGUARD_PLOT_DIR=/some/dir` to keep the rendered figures there for a look.

use std::path::{Path, PathBuf};

use earguard_eval::plots::{self, PlotFiles, ScatterPoint, TradeoffPoint};
use earguard_eval::EvalError;
use earguard_steer::fit::pca_2d;
use earguard_steer::SteerError;

/// Where a test renders: `$EARGUARD_PLOT_DIR/<name>` when set (kept), else a temp dir.
fn out_dir(name: &str) -> (Option<tempfile::TempDir>, PathBuf) {
    match std::env::var_os("EARGUARD_PLOT_DIR") {
        Some(d) => (None, PathBuf::from(d).join(name)),
        None => {
            let t = tempfile::tempdir().unwrap();
            let p = t.path().join(name);
            (Some(t), p)
        }
    }
}

fn check_files(files: &PlotFiles, dir: &Path, stem: &str, size: (u32, u32), texts: &[&str]) {
    assert_eq!(files.png, dir.join(format!("{stem}.png")));
    assert_eq!(files.svg, dir.join(format!("{stem}.svg")));
    let img = image::open(&files.png).expect("PNG decodes");
    assert_eq!((img.width(), img.height()), size);
    // Not a blank canvas: some pixels are far from white.
    let rgb = img.to_rgb8();
    let inked = rgb
        .pixels()
        .filter(|p| p.0.iter().any(|&c| c < 128))
        .count();
    assert!(inked > 1000, "PNG looks blank ({inked} dark pixels)");
    let svg = std::fs::read_to_string(&files.svg).unwrap();
    assert!(
        svg.starts_with("<svg"),
        "not an SVG: {}",
        &svg[..svg.len().min(80)]
    );
    assert!(svg.trim_end().ends_with("</svg>"));
    for t in texts {
        assert!(svg.contains(t), "SVG lacks {t:?}");
    }
}

/// Deterministic noise in [-1, 1) (an LCG; no rand needed).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// Two clusters in `d` dimensions, separated by ±`sep` along feature 0, plus a smaller
/// within-cluster spread along feature 1 and noise elsewhere.
fn two_clusters(
    n_each: usize,
    d: usize,
    sep: f32,
    seed: u64,
) -> (Vec<Vec<f32>>, Vec<&'static str>) {
    let mut rng = Lcg(seed);
    let mut rows = Vec::new();
    let mut groups = Vec::new();
    for (g, sign) in [("harmful", 1.0f32), ("benign", -1.0)] {
        for _ in 0..n_each {
            let mut r: Vec<f32> = (0..d).map(|_| 0.3 * rng.next()).collect();
            r[0] += sign * sep + 0.5 * rng.next();
            r[1] += 2.0 * rng.next();
            rows.push(r);
            groups.push(g);
        }
    }
    (rows, groups)
}

fn point(label: &str, asr: f64, orr: f64, n: usize) -> TradeoffPoint {
    let ci = |p: f64| {
        let half = 1.96 * (p * (1.0 - p) / n as f64).sqrt() + 0.5 / n as f64;
        ((p - half).max(0.0), (p + half).min(1.0))
    };
    TradeoffPoint {
        label: label.into(),
        asr,
        orr,
        asr_ci: Some(ci(asr)),
        orr_ci: Some(ci(orr)),
    }
}

#[test]
fn tradeoff_renders_labels_and_title() {
    let (_t, dir) = out_dir("tradeoff");
    let pts = vec![
        point("no defense", 0.62, 0.04, 200),
        point("RRS (refusal direction)", 0.08, 0.21, 200),
        point("SARSteer", 0.06, 0.05, 200),
        point("system prompt", 0.31, 0.09, 200),
        point("audio-to-text", 0.29, 0.08, 200),
        TradeoffPoint {
            label: "always refuse".into(),
            asr: 0.0,
            orr: 1.0,
            asr_ci: None,
            orr_ci: None,
        },
    ];
    let title = "Qwen2-Audio: ASR vs ORR";
    let files = plots::tradeoff(&dir, "tradeoff", &pts, title, false).unwrap();
    let mut texts = vec!["Qwen2-Audio: ASR vs ORR", "ideal", "ORR", "ASR"];
    texts.extend(pts.iter().map(|p| p.label.as_str()));
    check_files(&files, &dir, "tradeoff", (900, 820), &texts);
}

#[test]
fn tradeoff_sweep_joins_points() {
    let (_t, dir) = out_dir("sweep");
    let alphas = [0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0];
    let pts: Vec<TradeoffPoint> = alphas
        .iter()
        .map(|&a: &f64| {
            let asr = 0.6 * (-2.0 * a).exp();
            let orr = 0.03 + 0.12 * a * a;
            point(&format!("α={a}"), asr, orr.min(1.0), 150)
        })
        .collect();
    let files = plots::tradeoff(&dir, "sweep", &pts, "SARSteer strength sweep", true).unwrap();
    let svg = std::fs::read_to_string(&files.svg).unwrap();
    assert!(svg.contains("<polyline"), "a sweep is drawn as a line");
    check_files(
        &files,
        &dir,
        "sweep",
        (900, 820),
        &["SARSteer strength sweep", "α=0.5", "α=2"],
    );

    // Without the flag the same points are not joined.
    let files = plots::tradeoff(&dir, "scatter", &pts, "not a sweep", false).unwrap();
    let svg = std::fs::read_to_string(&files.svg).unwrap();
    let polylines = svg.matches("<polyline").count();
    let with_sweep = std::fs::read_to_string(dir.join("sweep.svg"))
        .unwrap()
        .matches("<polyline")
        .count();
    assert!(polylines < with_sweep);
}

#[test]
fn layer_norms_renders_each_series() {
    let (_t, dir) = out_dir("norms");
    let bump = |peak: f32, height: f32, layers: usize| -> Vec<f32> {
        (0..layers)
            .map(|l| 0.5 + height * (-((l as f32 - peak) / 5.0).powi(2)).exp())
            .collect()
    };
    let series = vec![
        ("RRS refusal direction".to_string(), bump(14.0, 9.0, 32)),
        ("SARSteer (λ=1)".to_string(), bump(18.0, 4.0, 32)),
        ("text-only".to_string(), bump(11.0, 6.5, 28)),
    ];
    let files =
        plots::layer_norms(&dir, "layer_norms", &series, "Direction norm per layer").unwrap();
    check_files(
        &files,
        &dir,
        "layer_norms",
        (1000, 620),
        &[
            "Direction norm per layer",
            "RRS refusal direction",
            "SARSteer (λ=1)",
            "text-only",
            "layer",
        ],
    );
}

#[test]
fn pca_separates_clusters_and_scatter_renders() {
    let (_t, dir) = out_dir("pca");
    let (rows, groups) = two_clusters(60, 24, 4.0, 7);
    let xy = pca_2d(&rows).unwrap();
    assert_eq!(xy.len(), rows.len());
    // The separating feature 0 dominates PC 1 and its loading is made positive, so "harmful"
    // (+sep) lands right of every "benign" (−sep).
    for ((x, _), g) in xy.iter().zip(&groups) {
        match *g {
            "harmful" => assert!(*x > 1.0, "harmful at x = {x}"),
            _ => assert!(*x < -1.0, "benign at x = {x}"),
        }
    }
    // PC 2 picks up the within-cluster spread along feature 1: a real second axis.
    let y_spread = xy.iter().map(|p| p.1.abs()).fold(0f32, f32::max);
    assert!(y_spread > 0.5, "PC 2 spread {y_spread}");

    let mut points: Vec<ScatterPoint> = xy
        .iter()
        .zip(&groups)
        .map(|(&(x, y), g)| ScatterPoint {
            x,
            y,
            group: g.to_string(),
        })
        .collect();
    // A third, cross-modal group between the two, as in the audio/text comparison.
    let mut rng = Lcg(99);
    for _ in 0..30 {
        points.push(ScatterPoint {
            x: 1.0 + rng.next(),
            y: 0.8 * rng.next(),
            group: "harmful/audio-text".into(),
        });
    }
    let files = plots::pca_scatter(
        &dir,
        "pca",
        &points,
        "Last-position representations (layer 16)",
    )
    .unwrap();
    check_files(
        &files,
        &dir,
        "pca",
        (900, 760),
        &[
            "Last-position representations (layer 16)",
            "harmful",
            "benign",
            "harmful/audio-text",
            "PC 1",
            "PC 2",
        ],
    );
}

#[test]
fn pca_signs_are_stable() {
    let (rows, _) = two_clusters(40, 16, 3.0, 11);
    let a = pca_2d(&rows).unwrap();
    // Same data again: identical.
    assert_eq!(a, pca_2d(&rows).unwrap());
    // Rows in reverse order: the same coordinates for the same rows (the SVD's arbitrary sign
    // is fixed by the largest loading, not by row order).
    let rev: Vec<Vec<f32>> = rows.iter().rev().cloned().collect();
    let b = pca_2d(&rev).unwrap();
    for (i, &(x, y)) in a.iter().enumerate() {
        let (bx, by) = b[rows.len() - 1 - i];
        assert!(
            (x - bx).abs() < 1e-3 && (y - by).abs() < 1e-3,
            "row {i}: {:?} vs {:?}",
            (x, y),
            (bx, by)
        );
    }
    // Negating every row flips the data, but the sign rule keeps the loading positive, so the
    // projections are negated too: the picture mirrors the data, not the solver.
    let neg: Vec<Vec<f32>> = rows
        .iter()
        .map(|r| r.iter().map(|v| -v).collect())
        .collect();
    let c = pca_2d(&neg).unwrap();
    for (&(x, _), &(cx, _)) in a.iter().zip(&c) {
        assert!((x + cx).abs() < 1e-3, "{x} vs {cx}");
    }
    // Projections are centred.
    let mean_x: f32 = a.iter().map(|p| p.0).sum::<f32>() / a.len() as f32;
    assert!(mean_x.abs() < 1e-3);
}

#[test]
fn pca_degenerate_shapes() {
    // One row: nothing to vary; the origin.
    assert_eq!(pca_2d(&[vec![1.0, 2.0, 3.0]]).unwrap(), vec![(0.0, 0.0)]);
    // One feature: PC 1 is that feature (centred, positive), PC 2 is 0.
    let xy = pca_2d(&[vec![1.0], vec![3.0], vec![5.0]]).unwrap();
    let want = [(-2.0, 0.0), (0.0, 0.0), (2.0, 0.0)];
    for (got, want) in xy.iter().zip(want) {
        assert!(
            (got.0 - want.0).abs() < 1e-5 && got.1 == want.1,
            "{got:?} vs {want:?}"
        );
    }
}

fn assert_pca_invalid<T: std::fmt::Debug>(r: Result<T, SteerError>, needle: &str) {
    match r {
        Err(SteerError::Invalid(m)) => assert!(m.contains(needle), "{m:?} lacks {needle:?}"),
        other => panic!("expected Invalid containing {needle:?}, got {other:?}"),
    }
}

fn assert_invalid<T: std::fmt::Debug>(r: Result<T, EvalError>, needle: &str) {
    match r {
        Err(EvalError::Invalid(m)) => assert!(m.contains(needle), "{m:?} lacks {needle:?}"),
        other => panic!("expected Invalid containing {needle:?}, got {other:?}"),
    }
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    // pca_2d
    assert_pca_invalid(pca_2d(&[]), "no rows");
    assert_pca_invalid(pca_2d(&[vec![], vec![]]), "no features");
    assert_pca_invalid(pca_2d(&[vec![1.0, 2.0], vec![1.0]]), "row 1 has 1 features");
    assert_pca_invalid(pca_2d(&[vec![1.0, f32::NAN]]), "non-finite");
    // tradeoff
    assert_invalid(plots::tradeoff(dir, "t", &[], "t", false), "no points");
    let ok = point("a", 0.5, 0.5, 100);
    let nan = TradeoffPoint {
        asr: f64::NAN,
        ..ok.clone()
    };
    assert_invalid(plots::tradeoff(dir, "t", &[nan], "t", false), "ASR");
    let pct = TradeoffPoint {
        orr: 35.0,
        ..ok.clone()
    };
    assert_invalid(
        plots::tradeoff(dir, "t", &[pct], "t", false),
        "not a rate in [0, 1]",
    );
    let bad_ci = TradeoffPoint {
        asr_ci: Some((0.6, 0.7)),
        ..ok.clone()
    };
    assert_invalid(
        plots::tradeoff(dir, "t", &[bad_ci], "t", false),
        "does not contain",
    );
    assert_invalid(
        plots::tradeoff(dir, "a/b", std::slice::from_ref(&ok), "t", false),
        "stem",
    );
    assert_invalid(plots::tradeoff(dir, "", &[ok], "t", false), "stem");
    // layer_norms
    assert_invalid(plots::layer_norms(dir, "n", &[], "t"), "no series");
    assert_invalid(
        plots::layer_norms(dir, "n", &[("s".into(), vec![])], "t"),
        "no layers",
    );
    assert_invalid(
        plots::layer_norms(dir, "n", &[("s".into(), vec![1.0, f32::INFINITY])], "t"),
        "layer 1",
    );
    assert_invalid(
        plots::layer_norms(dir, "n", &[("s".into(), vec![-1.0])], "t"),
        "≥ 0",
    );
    // pca_scatter
    assert_invalid(plots::pca_scatter(dir, "p", &[], "t"), "no points");
    let nanp = ScatterPoint {
        x: f32::NAN,
        y: 0.0,
        group: "g".into(),
    };
    assert_invalid(plots::pca_scatter(dir, "p", &[nanp], "t"), "finite");
    let nog = ScatterPoint {
        x: 0.0,
        y: 0.0,
        group: String::new(),
    };
    assert_invalid(plots::pca_scatter(dir, "p", &[nog], "t"), "empty group");
    // Nothing was written for rejected input.
    assert_eq!(std::fs::read_dir(dir).unwrap().count(), 0);
}

#[test]
fn single_points_and_flat_data_still_render() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("nested/dir"); // created on demand
    let one = [TradeoffPoint {
        label: "only".into(),
        asr: 1.0,
        orr: 0.0,
        asr_ci: None,
        orr_ci: None,
    }];
    plots::tradeoff(&dir, "one", &one, "one point", true).unwrap();
    plots::layer_norms(&dir, "flat", &[("zero".into(), vec![0.0])], "all zero").unwrap();
    let same = vec![
        ScatterPoint {
            x: 2.0,
            y: 2.0,
            group: "g".into()
        };
        3
    ];
    let f = plots::pca_scatter(&dir, "same", &same, "one spot").unwrap();
    assert!(f.png.exists() && f.svg.exists());
}

#[test]
fn unwritable_target_names_the_file() {
    let t = tempfile::tempdir().unwrap();
    // A directory squatting on the PNG's name makes the write fail.
    std::fs::create_dir(t.path().join("x.png")).unwrap();
    let pts = [TradeoffPoint {
        label: "a".into(),
        asr: 0.5,
        orr: 0.5,
        asr_ci: None,
        orr_ci: None,
    }];
    match plots::tradeoff(t.path(), "x", &pts, "t", false) {
        Err(e @ EvalError::Io { .. }) => assert!(e.to_string().contains("x.png"), "{e}"),
        other => panic!("expected an I/O error, got {other:?}"),
    }
    // `dir` that is a file: creating it fails, naming it.
    let file = t.path().join("plain");
    std::fs::write(&file, b"").unwrap();
    match plots::tradeoff(&file, "x", &pts, "t", false) {
        Err(e @ EvalError::Io { .. }) => assert!(e.to_string().contains("plain"), "{e}"),
        other => panic!("expected an I/O error, got {other:?}"),
    }
}

#[test]
fn rate_curve_renders_and_checks_rates() {
    let (_t, dir) = out_dir("curve");
    let line = |label: &str, rates: [f64; 5]| plots::CurveSeries {
        label: label.to_string(),
        points: [0.0, 0.25, 0.5, 0.75, 1.0]
            .into_iter()
            .zip(rates)
            .map(|(s, r)| (s, r, Some(((r - 0.1).max(0.0), (r + 0.1).min(1.0)))))
            .collect(),
    };
    let series = vec![
        line("none", [0.1, 0.2, 0.5, 0.9, 1.0]),
        line("sarsteer α 0.1", [0.05, 0.1, 0.3, 0.7, 0.95]),
    ];
    let files = plots::rate_curve(
        &dir,
        "attack_strength",
        &series,
        "ablation strength",
        "ASR (%)",
        "ASR against attack strength",
    )
    .unwrap();
    check_files(
        &files,
        &dir,
        "attack_strength",
        (1000, 620),
        &[
            "ASR against attack strength",
            "sarsteer α 0.1",
            "ablation strength",
        ],
    );
    for bad in [
        vec![line("x", [0.1, 0.2, 1.5, 0.9, 1.0])],
        vec![plots::CurveSeries {
            label: "nan".into(),
            points: vec![(f64::NAN, 0.5, None)],
        }],
        vec![plots::CurveSeries {
            label: "outside".into(),
            points: vec![(0.5, 0.5, Some((0.6, 0.7)))],
        }],
        vec![],
    ] {
        let e = plots::rate_curve(&dir, "bad", &bad, "x", "y", "t").unwrap_err();
        assert!(matches!(e, EvalError::Invalid(_)), "{e}");
    }
}

#[test]
fn loss_curve_draws_steps_and_epoch_means() {
    let (_t, dir) = out_dir("loss");
    let losses: Vec<f32> = (0..30)
        .map(|i| 5.0 * (-0.1 * i as f32).exp() + 0.2)
        .collect();
    let files = plots::loss_curve(&dir, "loss", &losses, 10, "RRS training loss").unwrap();
    let svg = std::fs::read_to_string(&files.svg).unwrap();
    assert!(
        svg.matches("<polyline").count() >= 2,
        "steps and epoch means"
    );
    check_files(
        &files,
        &dir,
        "loss",
        (1000, 620),
        &[
            "RRS training loss",
            "per step",
            "epoch mean",
            "optimizer step",
        ],
    );
    assert!(plots::loss_curve(&dir, "bad", &[1.0, f32::NAN], 1, "x").is_err());
    assert!(plots::loss_curve(&dir, "empty", &[], 1, "x").is_err());
}
