//! llama.cpp control vectors: the golden fixture written by llama.cpp's Python `gguf` package
//! (scripts/make_controlvector_fixture.py), export/import round trips, and bad inputs.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use earguard_model::{HookKind, ModelInfo};
use earguard_steer::artifact::{SteeringVector, VectorMeta};
use earguard_steer::llamacpp::{export_control_vector, import_control_vector, IMPORT_METHOD};
use earguard_steer::SteerError;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/llamacpp")
        .join(name)
}

/// The script's formula: direction.N[i] = (-1)^i * (N + i/8).
fn golden(n: usize) -> Vec<f32> {
    (0..8)
        .map(|i| {
            let sign = if i % 2 == 0 { 1.0 } else { -1.0 };
            sign * (n as f32 + i as f32 / 8.0)
        })
        .collect()
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "earguard-llamacpp-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn info(hidden: usize, layers: usize, identity: &str) -> ModelInfo {
    ModelInfo {
        name: "tiny-qwen".into(),
        path: PathBuf::from("/nowhere"),
        format: "gguf",
        architecture: "qwen2",
        n_layers: layers,
        hidden_size: hidden,
        intermediate_size: 4 * hidden,
        n_heads: 2,
        n_kv_heads: 1,
        head_dim: hidden / 2,
        vocab_size: 32,
        context_length: 128,
        tie_embeddings: true,
        quantization: "f32".into(),
        chat_template: false,
        identity: identity.into(),
        audio_tower: None,
        speech: None,
        adapter: None,
    }
}

fn ours(hook: HookKind, layers: &[usize]) -> SteeringVector {
    let mut meta = VectorMeta::new("sarsteer", "tiny-qwen", "qwen2", "id-aaa", 8, 4, hook);
    meta.extra = serde_json::json!({"alpha": 0.2});
    let dirs = layers
        .iter()
        .map(|&l| {
            // Values that exercise every bit pattern class: tiny, large (within the
            // direction limit of earguard_steer::limits), negative zero.
            let v: Vec<f32> = (0..8)
                .map(|i| match i {
                    0 => 1e-30,
                    1 => -2.0e4,
                    2 => -0.0,
                    _ => (l * 10 + i) as f32 / 3.0,
                })
                .collect();
            (l, Tensor::new(v.as_slice(), &Device::Cpu).unwrap())
        })
        .collect::<BTreeMap<_, _>>();
    SteeringVector::new(meta, dirs).unwrap()
}

fn bits(v: &SteeringVector, l: usize) -> Vec<u32> {
    v.direction_values(l)
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

fn import_err(name: &str, info: Option<&ModelInfo>) -> SteerError {
    import_control_vector(&fixture(name), info).unwrap_err()
}

#[test]
fn golden_fixture_maps_direction_n_to_resid_post_n() {
    let v = import_control_vector(&fixture("qwen2_h8_l4.gguf"), None).unwrap();
    assert_eq!(v.meta.method, IMPORT_METHOD);
    assert_eq!(v.meta.hook, HookKind::ResidPost);
    assert_eq!(v.meta.layers, [1, 2, 3]);
    assert_eq!((v.meta.hidden_size, v.meta.n_layers), (8, 4));
    assert_eq!(v.meta.model_architecture, "qwen2");
    assert_eq!(v.meta.model_identity, "");
    assert_eq!(v.meta.extra["model_hint"], "qwen2");
    assert_eq!(v.meta.extra["layer_count"], 4);
    for n in 1..=3 {
        // direction.N steers the output of 0-based block N: our ResidPost(N).
        assert_eq!(v.meta.hook_point(n), HookKind::ResidPost.at(n));
        assert_eq!(v.direction_values(n).unwrap(), golden(n), "direction.{n}");
    }
    assert!(v.direction(0).is_none());

    // With the model: its fields are taken, shapes are checked, and it is compatible.
    let model = info(8, 4, "id-model");
    let w = import_control_vector(&fixture("qwen2_h8_l4.gguf"), Some(&model)).unwrap();
    assert_eq!(
        (w.meta.model_name.as_str(), w.meta.model_identity.as_str()),
        ("tiny-qwen", "id-model")
    );
    w.check_compatible(&model, false).unwrap();
    // Without a model the identity is unknown, so using it needs --force.
    let err = v.check_compatible(&model, false).unwrap_err().to_string();
    assert!(err.contains("--force"), "{err}");
    v.check_compatible(&model, true).unwrap();
}

#[test]
fn golden_fixture_re_exports_and_round_trips_exactly() {
    let tmp = TempDir::new("golden");
    let v = import_control_vector(&fixture("qwen2_h8_l4.gguf"), None).unwrap();
    let out = tmp.join("again.gguf");
    let report = export_control_vector(&v, &out).unwrap();
    assert_eq!(report.written, [1, 2, 3]);
    assert!(report.skipped.is_empty());
    assert_eq!(
        (report.model_hint.as_str(), report.layer_count),
        ("qwen2", 4)
    );
    let back = import_control_vector(&out, None).unwrap();
    assert_eq!(back.meta.layers, [1, 2, 3]);
    assert_eq!(back.meta.n_layers, 4);
    for n in 1..=3 {
        assert_eq!(bits(&back, n), bits(&v, n));
    }
}

#[test]
fn export_skips_block_zero_and_round_trips_bit_exactly() {
    let tmp = TempDir::new("export");
    let v = ours(HookKind::ResidPost, &[0, 1, 3]);
    let out = tmp.join("sub/dir/vec.gguf");
    let report = export_control_vector(&v, &out).unwrap();
    assert_eq!(report.written, [1, 3]);
    assert_eq!(report.skipped.len(), 1);
    assert_eq!(report.skipped[0].layer, 0);
    assert!(report.skipped[0].reason.contains("block 0"));
    assert_eq!(report.layer_count, 4);
    assert!(report.notes.iter().any(|n| n.contains("meta.extra")));
    let shown = report.to_string();
    assert!(
        shown.contains("skipped layer 0") && shown.contains("--control-vector-scaled"),
        "{shown}"
    );
    // Only the file itself is left in its directory.
    let names: Vec<_> = fs::read_dir(tmp.join("sub/dir"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, [std::ffi::OsString::from("vec.gguf")]);

    // Without a model: the embedded earguard meta restores the model description.
    let back = import_control_vector(&out, None).unwrap();
    assert_eq!(back.meta.layers, [1, 3]);
    assert_eq!(back.meta.method, IMPORT_METHOD);
    assert_eq!(back.meta.model_identity, "id-aaa");
    assert_eq!((back.meta.hidden_size, back.meta.n_layers), (8, 4));
    assert_eq!(back.meta.extra["source_meta"]["method"], "sarsteer");
    assert_eq!(back.meta.extra["source_meta"]["extra"]["alpha"], 0.2);
    for l in [1, 3] {
        assert_eq!(bits(&back, l), bits(&v, l), "layer {l}");
    }
    back.check_compatible(&info(8, 4, "id-aaa"), false).unwrap();
    // The identity of the original model is kept even when importing for another one.
    let other = info(8, 4, "id-other");
    let w = import_control_vector(&out, Some(&other)).unwrap();
    assert_eq!(w.meta.model_identity, "id-aaa");
    assert!(w
        .check_compatible(&other, false)
        .unwrap_err()
        .to_string()
        .contains("--force"));

    // Re-export of the import gives the same tensors again.
    let again = tmp.join("again.gguf");
    export_control_vector(&back, &again).unwrap();
    let back2 = import_control_vector(&again, None).unwrap();
    for l in [1, 3] {
        assert_eq!(bits(&back2, l), bits(&v, l));
    }
    // Overwriting an existing file works.
    export_control_vector(&back, &again).unwrap();
}

#[test]
fn export_refuses_other_hooks_and_unrepresentable_vectors() {
    let tmp = TempDir::new("refuse");
    let err =
        export_control_vector(&ours(HookKind::ResidPre, &[1, 2]), &tmp.join("x.gguf")).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("resid_pre") && msg.contains("resid_post"),
        "{msg}"
    );
    let err =
        export_control_vector(&ours(HookKind::ResidPost, &[0]), &tmp.join("x.gguf")).unwrap_err();
    assert!(err.to_string().contains("nothing to export"), "{err}");
    assert!(!tmp.join("x.gguf").exists());
    let err = export_control_vector(&ours(HookKind::ResidPost, &[1]), &tmp.0).unwrap_err();
    assert!(err.to_string().contains("is a directory"), "{err}");
}

#[test]
fn import_checks_the_model() {
    // Wrong hidden size.
    let err = import_err("qwen2_h8_l4.gguf", Some(&info(16, 4, "id")));
    assert!(matches!(err, SteerError::Incompatible(_)));
    let msg = err.to_string();
    assert!(
        msg.contains("hidden size 8") && msg.contains("hidden 16"),
        "{msg}"
    );
    // Wrong layer count: direction.3 needs at least 4 layers.
    let msg = import_err("qwen2_h8_l4.gguf", Some(&info(8, 3, "id"))).to_string();
    assert!(
        msg.contains("direction.3") && msg.contains("3 layers"),
        "{msg}"
    );
    // A deeper model is fine (layers beyond the file just have no direction).
    let v = import_control_vector(&fixture("qwen2_h8_l4.gguf"), Some(&info(8, 6, "id"))).unwrap();
    assert_eq!(v.meta.n_layers, 6);
}

#[test]
fn import_refuses_bad_files() {
    let cases = [
        (
            "bad_nan.gguf",
            &["direction.2", "layer 2", "non-finite"][..],
        ),
        ("bad_f16.gguf", &["direction.1", "F16", "F32"][..]),
        ("bad_zero_layer.gguf", &["direction.0", "index 0"][..]),
        (
            "bad_arch.gguf",
            &[
                "general.architecture",
                "'qwen2'",
                "not a llama.cpp control vector",
            ][..],
        ),
        ("bad_lengths.gguf", &["direction.2", "6 values", "8"][..]),
        ("bad_2d.gguf", &["direction.1", "1-D"][..]),
    ];
    for (name, needles) in cases {
        let msg = import_err(name, None).to_string();
        eprintln!("{msg}");
        assert!(msg.contains(name), "{name}: {msg}");
        for n in needles {
            assert!(msg.contains(n), "{name}: expected '{n}' in: {msg}");
        }
    }
}

/// A control vector of finite but absurd values (1e30) is refused at import, naming the layer.
#[test]
fn import_refuses_absurd_directions() {
    let tmp = TempDir::new("absurd");
    let mut bytes = fs::read(fixture("qwen2_h8_l4.gguf")).unwrap();
    let le = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let good = le(&golden(2));
    let at = bytes
        .windows(good.len())
        .position(|w| w == good.as_slice())
        .expect("direction.2's data in the fixture");
    bytes[at..at + good.len()].copy_from_slice(&le(&[1e30; 8]));
    let p = tmp.join("absurd.gguf");
    fs::write(&p, bytes).unwrap();
    let msg = import_control_vector(&p, None).unwrap_err().to_string();
    for needle in ["absurd.gguf", "layer 2", "norm", "limit"] {
        assert!(msg.contains(needle), "expected '{needle}' in: {msg}");
    }
}

#[test]
fn import_refuses_corrupt_and_missing_files() {
    let tmp = TempDir::new("corrupt");
    let msg = import_control_vector(&tmp.join("absent.gguf"), None)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("absent.gguf"), "{msg}");

    let bytes = fs::read(fixture("qwen2_h8_l4.gguf")).unwrap();
    let p = tmp.join("cut.gguf");
    // Every truncation short of the tensor data's end is refused (no panic, no garbage).
    for cut in (0..bytes.len()).step_by(7).chain([bytes.len() - 1]) {
        fs::write(&p, &bytes[..cut]).unwrap();
        let err = import_control_vector(&p, None);
        assert!(
            err.is_err(),
            "accepted a file cut at {cut} of {}",
            bytes.len()
        );
    }
    fs::write(&p, &bytes[..2]).unwrap();
    assert!(import_control_vector(&p, None)
        .unwrap_err()
        .to_string()
        .contains("not a GGUF file"));
    fs::write(&p, b"PK\x03\x04 this is a zip, not gguf at all").unwrap();
    assert!(import_control_vector(&p, None)
        .unwrap_err()
        .to_string()
        .contains("magic"));

    // Flipping any single byte of the header must give an error or a valid vector, never a
    // panic or a hang.
    let header_end = 0xa0;
    for i in 0..header_end {
        let mut b = bytes.clone();
        b[i] ^= 0xff;
        fs::write(&p, &b).unwrap();
        let _ = import_control_vector(&p, None);
    }

    // The golden file with NaN patched in (checked against Python's fixture independently).
    let mut b = bytes.clone();
    let target = golden(3)[5].to_le_bytes();
    let at = b.windows(4).rposition(|w| w == target).unwrap();
    b[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    fs::write(&p, &b).unwrap();
    let msg = import_control_vector(&p, None).unwrap_err().to_string();
    assert!(msg.contains("layer 3") && msg.contains("index 5"), "{msg}");
}

/// Writes the golden vector, exported by earguard, for the Python reader check in
/// scripts/make_controlvector_fixture.py (run with `--ignored`).
#[test]
#[ignore]
fn write_export_for_python_check() {
    let v = import_control_vector(&fixture("qwen2_h8_l4.gguf"), None).unwrap();
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("earguard_export_check.gguf");
    let report = export_control_vector(&v, &out).unwrap();
    println!("{report}");
}
