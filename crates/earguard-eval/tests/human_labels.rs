//! The substring judge scored against people on real responses: JailbreakBench's 100
//! three-annotator responses (`scripts/fetch-models.sh human-labels`). Pins the figure the
//! README reports (κ 0.65), so a change to the phrase list or to the κ arithmetic shows here.
//! Skipped with a note when the data is absent, unless `EARGUARD_REQUIRE_MODELS=1`.

use std::path::Path;

use earguard_eval::judge::{Judge, Substring};
use earguard_eval::judging::{judge_file, Fields};

#[test]
fn substring_judge_against_people_on_jailbreakbench() {
    let models = std::env::var_os("EARGUARD_MODELS").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models"),
        Into::into,
    );
    let data = models.join("human-labels/jbb-judge-comparison.jsonl");
    if !data.is_file() {
        assert!(
            std::env::var("EARGUARD_REQUIRE_MODELS").as_deref() != Ok("1"),
            "{} is missing and EARGUARD_REQUIRE_MODELS=1",
            data.display()
        );
        eprintln!(
            "SKIPPED: {} absent: run scripts/fetch-models.sh human-labels",
            data.display()
        );
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let judges: Vec<Box<dyn Judge>> = vec![Box::new(Substring::standard())];
    let fields = Fields {
        gold: Some("refused".into()),
        ..Fields::default()
    };
    let s = judge_file(&data, &fields, &judges, out.path(), 32, false).unwrap();
    assert_eq!(s.n, 100);
    assert_eq!(
        s.gold_refusal_rate.unwrap().k,
        57,
        "57 of 100 not jailbroken"
    );
    let g = s.judges[0].against_gold.as_ref().unwrap();
    // 41 refusals found, 2 false alarms, 16 refusals missed (mostly partial or polite ones).
    assert_eq!((g.tp, g.fp, g.fn_, g.tn), (41, 2, 16, 41));
    let k = g.kappa.value.unwrap();
    assert!((k - 0.6469).abs() < 1e-3, "{k}"); // (0.82 − 0.4902) / (1 − 0.4902)
    let (lo, hi) = (g.kappa.ci_low.unwrap(), g.kappa.ci_high.unwrap());
    assert!(lo < k && k < hi && hi - lo < 0.4, "{lo} {hi}");
}
