//! Steering-vector artifacts: save/load round trips, validation, compatibility, datasets.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use earguard_model::{HookKind, ModelInfo};
use earguard_steer::artifact::{DatasetRef, SteeringVector, VectorMeta};
use earguard_steer::SteerError;

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "earguard-artifact-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn info(name: &str, hidden: usize, layers: usize, identity: &str) -> ModelInfo {
    ModelInfo {
        name: name.into(),
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

fn values(layer: usize, hidden: usize) -> Vec<f32> {
    (0..hidden)
        .map(|i| layer as f32 * 0.5 - i as f32 * 0.25 + 0.1)
        .collect()
}

fn vector(hidden: usize, n_layers: usize, layers: &[usize]) -> SteeringVector {
    let mut meta = VectorMeta::new(
        "sarsteer",
        "tiny-qwen",
        "qwen2",
        "id-aaa",
        hidden,
        n_layers,
        HookKind::ResidPost,
    );
    meta.hyper_parameters = serde_json::json!({"k": 3, "lambda": 0.5});
    meta.extra = serde_json::json!({"threshold": 0.25});
    let dirs = layers
        .iter()
        .map(|&l| {
            (
                l,
                Tensor::new(values(l, hidden).as_slice(), &Device::Cpu).unwrap(),
            )
        })
        .collect::<BTreeMap<_, _>>();
    SteeringVector::new(meta, dirs).unwrap()
}

fn write_meta(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("meta.json");
    let mut v: serde_json::Value = serde_json::from_str(&fs::read_to_string(&p).unwrap()).unwrap();
    edit(&mut v);
    fs::write(p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

fn write_tensors(dir: &Path, tensors: Vec<(&str, Tensor)>) {
    let map: std::collections::HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(n, t)| (n.to_string(), t))
        .collect();
    candle_core::safetensors::save(&map, dir.join("vectors.safetensors")).unwrap();
}

fn load_err(dir: &Path) -> String {
    SteeringVector::load(dir).unwrap_err().to_string()
}

#[test]
fn save_load_round_trip_is_exact() {
    let tmp = TempDir::new("rt");
    let dir = tmp.path().join("vec");
    let v = vector(6, 5, &[0, 2, 4]);
    v.save(&dir).unwrap();
    assert!(dir.join("meta.json").is_file() && dir.join("vectors.safetensors").is_file());
    let back = SteeringVector::load(&dir).unwrap();
    assert_eq!(back.meta, v.meta);
    assert_eq!(back.meta.layers, [0, 2, 4]);
    for l in [0, 2, 4] {
        assert_eq!(back.direction_values(l).unwrap(), values(l, 6));
    }
    // meta.json is pretty and carries the version of this build.
    let text = fs::read_to_string(dir.join("meta.json")).unwrap();
    assert!(text.contains("\n  \"format_version\": 1"));
    assert!(text.contains(&format!(
        "\"earguard_version\": \"{}\"",
        env!("CARGO_PKG_VERSION")
    )));
    // No temporary directories are left beside it.
    let names: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, [std::ffi::OsString::from("vec")]);
}

#[test]
fn save_replaces_an_existing_artifact_but_not_a_foreign_directory() {
    let tmp = TempDir::new("replace");
    let dir = tmp.path().join("vec");
    vector(4, 3, &[1]).save(&dir).unwrap();
    vector(4, 3, &[0, 2]).save(&dir).unwrap();
    assert_eq!(SteeringVector::load(&dir).unwrap().meta.layers, [0, 2]);

    let other = tmp.path().join("notes");
    fs::create_dir(&other).unwrap();
    fs::write(other.join("README.md"), "mine").unwrap();
    let err = vector(4, 3, &[1]).save(&other).unwrap_err().to_string();
    assert!(err.contains("README.md"), "{err}");
    assert_eq!(fs::read_to_string(other.join("README.md")).unwrap(), "mine");

    // A new relative-free nested path is created.
    let nested = tmp.path().join("a/b/c");
    vector(4, 3, &[1]).save(&nested).unwrap();
    assert!(SteeringVector::load(&nested).is_ok());
}

#[test]
fn new_refuses_bad_directions() {
    let meta = VectorMeta::new("pca", "m", "qwen2", "id", 4, 3, HookKind::ResidPost);
    let t = |v: &[f32]| Tensor::new(v, &Device::Cpu).unwrap();
    let mut nan = BTreeMap::new();
    nan.insert(2, t(&[0.0, f32::NAN, 0.0, 0.0]));
    let err = SteeringVector::new(meta.clone(), nan)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("layer 2") && err.contains("non-finite"),
        "{err}"
    );

    let mut short = BTreeMap::new();
    short.insert(1, t(&[0.0, 1.0]));
    let err = SteeringVector::new(meta.clone(), short)
        .unwrap_err()
        .to_string();
    assert!(err.contains("layer 1") && err.contains("[4]"), "{err}");

    let mut deep = BTreeMap::new();
    deep.insert(3, t(&[0.0; 4]));
    let err = SteeringVector::new(meta.clone(), deep)
        .unwrap_err()
        .to_string();
    assert!(err.contains("layer 3") && err.contains("3 layers"), "{err}");

    assert!(SteeringVector::new(meta.clone(), BTreeMap::new()).is_err());

    // A condition is checked like a direction.
    let mut one = BTreeMap::new();
    one.insert(0, t(&[1.0; 4]));
    let v = SteeringVector::new(meta, one).unwrap();
    let err = v
        .clone()
        .with_condition(3, &t(&[1.0; 4]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("condition for layer 3"), "{err}");
    let err = v.with_condition(1, &t(&[1.0; 3])).unwrap_err().to_string();
    assert!(err.contains("condition of layer 1 has shape [3]"), "{err}");
}

/// The hook kind is written as its name, as earlier versions wrote it; a name that is not a
/// kind is refused naming the kinds.
#[test]
fn hook_kinds_are_names_on_disk() {
    let tmp = TempDir::new("hook");
    let dir = tmp.path().join("vec");
    vector(4, 3, &[1]).save(&dir).unwrap();
    let text = fs::read_to_string(dir.join("meta.json")).unwrap();
    assert!(text.contains("\"hook\": \"resid_post\""), "{text}");
    write_meta(&dir, |m| m["hook"] = "mlp_out".into());
    assert_eq!(
        SteeringVector::load(&dir).unwrap().meta.hook,
        HookKind::MlpOut
    );
    for bad in ["nowhere", "final_norm"] {
        write_meta(&dir, |m| m["hook"] = bad.into());
        let err = load_err(&dir);
        assert!(
            err.contains("meta.json") && err.contains(bad) && err.contains("resid_post"),
            "{err}"
        );
    }
}

/// A conditional vector keeps its condition in vectors.safetensors as `condition.{layer}`.
#[test]
fn conditions_round_trip_in_the_tensor_file() {
    let tmp = TempDir::new("condition");
    let dir = tmp.path().join("vec");
    let cond = Tensor::new(&[0.5f32, -0.5, 0.25, 0.0], &Device::Cpu).unwrap();
    let v = vector(4, 3, &[0, 2]).with_condition(1, &cond).unwrap();
    v.save(&dir).unwrap();
    let back = SteeringVector::load(&dir).unwrap();
    let c = back.condition.expect("condition");
    assert_eq!(c.layer, 1);
    assert_eq!(
        c.direction.to_vec1::<f32>().unwrap(),
        [0.5, -0.5, 0.25, 0.0]
    );
    assert_eq!(back.meta.layers, [0, 2]);
    let names = candle_core::safetensors::load(dir.join("vectors.safetensors"), &Device::Cpu)
        .unwrap()
        .into_keys()
        .collect::<std::collections::BTreeSet<_>>();
    assert_eq!(
        names,
        ["condition.1", "direction.0", "direction.2"]
            .map(String::from)
            .into()
    );
    // A plain vector has none.
    vector(4, 3, &[0]).save(&dir).unwrap();
    assert!(SteeringVector::load(&dir).unwrap().condition.is_none());
    // Two conditions, or one past the model, are refused.
    let t = |v: &[f32]| Tensor::new(v, &Device::Cpu).unwrap();
    write_tensors(
        &dir,
        vec![
            ("direction.0", t(&[0.0; 4])),
            ("condition.1", t(&[1.0; 4])),
            ("condition.2", t(&[1.0; 4])),
        ],
    );
    assert!(load_err(&dir).contains("more than one condition"));
    write_tensors(
        &dir,
        vec![("direction.0", t(&[0.0; 4])), ("condition.7", t(&[1.0; 4]))],
    );
    let err = load_err(&dir);
    assert!(err.contains("condition for layer 7"), "{err}");
}

#[test]
fn missing_files_are_clear_errors() {
    let tmp = TempDir::new("missing");
    let err = load_err(&tmp.path().join("absent"));
    assert!(err.contains("not a directory"), "{err}");

    let dir = tmp.path().join("vec");
    vector(4, 3, &[1]).save(&dir).unwrap();
    fs::remove_file(dir.join("meta.json")).unwrap();
    let err = load_err(&dir);
    assert!(
        err.contains("meta.json") && err.contains("missing"),
        "{err}"
    );

    vector(4, 3, &[1]).save(&dir).unwrap();
    fs::remove_file(dir.join("vectors.safetensors")).unwrap();
    let err = load_err(&dir);
    assert!(
        err.contains("vectors.safetensors") && err.contains("missing"),
        "{err}"
    );
}

#[test]
fn malformed_meta_and_corrupt_tensors_are_refused() {
    let tmp = TempDir::new("corrupt");
    let dir = tmp.path().join("vec");
    vector(4, 3, &[1, 2]).save(&dir).unwrap();

    fs::write(dir.join("meta.json"), "{ not json").unwrap();
    let err = load_err(&dir);
    assert!(
        err.contains("meta.json") && err.contains("malformed"),
        "{err}"
    );

    vector(4, 3, &[1, 2]).save(&dir).unwrap();
    write_meta(&dir, |m| m["format_version"] = 2.into());
    assert!(load_err(&dir).contains("format_version 2"));

    vector(4, 3, &[1, 2]).save(&dir).unwrap();
    fs::write(dir.join("vectors.safetensors"), b"\x10\x00\x00\x00garbage").unwrap();
    let err = load_err(&dir);
    assert!(
        err.contains("vectors.safetensors") && err.contains("safetensors"),
        "{err}"
    );
}

#[test]
fn load_checks_layers_shapes_names_and_values() {
    let tmp = TempDir::new("validate");
    let dir = tmp.path().join("vec");
    let t = |v: &[f32]| Tensor::new(v, &Device::Cpu).unwrap();

    // Layers in meta.json disagree with the tensors.
    vector(4, 3, &[1, 2]).save(&dir).unwrap();
    write_meta(&dir, |m| m["layers"] = serde_json::json!([1]));
    let err = load_err(&dir);
    assert!(err.contains("\"layers\" lists [1]"), "{err}");

    // Wrong hidden size.
    vector(4, 3, &[1]).save(&dir).unwrap();
    write_tensors(&dir, vec![("direction.1", t(&[1.0, 2.0, 3.0]))]);
    let err = load_err(&dir);
    assert!(
        err.contains("layer 1") && err.contains("[3]") && err.contains("[4]"),
        "{err}"
    );

    // 2-D tensor.
    write_tensors(
        &dir,
        vec![(
            "direction.1",
            Tensor::zeros((2, 2), candle_core::DType::F32, &Device::Cpu).unwrap(),
        )],
    );
    assert!(load_err(&dir).contains("shape [2, 2]"));

    // Layer beyond the model.
    vector(4, 3, &[1]).save(&dir).unwrap();
    write_meta(&dir, |m| m["layers"] = serde_json::json!([5]));
    write_tensors(&dir, vec![("direction.5", t(&[0.0; 4]))]);
    let err = load_err(&dir);
    assert!(err.contains("layer 5") && err.contains("3 layers"), "{err}");

    // NaN / inf, with the layer named.
    vector(4, 3, &[1]).save(&dir).unwrap();
    write_tensors(
        &dir,
        vec![("direction.1", t(&[0.0, f32::INFINITY, 0.0, 0.0]))],
    );
    let err = load_err(&dir);
    assert!(
        err.contains("layer 1") && err.contains("non-finite"),
        "{err}"
    );

    // Finite but absurd: 1e30 everywhere would overflow the model's f32 activations.
    vector(4, 3, &[1]).save(&dir).unwrap();
    write_tensors(&dir, vec![("direction.1", t(&[1e30; 4]))]);
    let err = load_err(&dir);
    assert!(
        err.contains("layer 1") && err.contains("norm") && err.contains("limit"),
        "{err}"
    );

    // Unknown tensor names and non-canonical numbers.
    vector(4, 3, &[1]).save(&dir).unwrap();
    write_tensors(
        &dir,
        vec![("direction.1", t(&[0.0; 4])), ("bias", t(&[0.0; 4]))],
    );
    assert!(load_err(&dir).contains("unexpected tensor 'bias'"));
    write_tensors(&dir, vec![("direction.01", t(&[0.0; 4]))]);
    assert!(load_err(&dir).contains("unexpected tensor 'direction.01'"));

    // Non-F32 storage.
    write_tensors(
        &dir,
        vec![(
            "direction.1",
            t(&[0.0; 4]).to_dtype(candle_core::DType::F16).unwrap(),
        )],
    );
    assert!(load_err(&dir).contains("expected F32"));
}

#[test]
fn compatibility_shapes_always_identity_unless_forced() {
    let v = vector(6, 5, &[1, 3]);
    v.check_compatible(&info("tiny-qwen", 6, 5, "id-aaa"), false)
        .unwrap();

    let err = v
        .check_compatible(&info("smol", 4, 7, "id-aaa"), true)
        .unwrap_err();
    assert!(matches!(err, SteerError::Incompatible(_)));
    assert_eq!(
        err.to_string(),
        "vector was fitted on tiny-qwen (hidden 6, 5 layers); this model is smol (hidden 4, 7 layers)"
    );
    // Layer count alone.
    assert!(v
        .check_compatible(&info("deeper", 6, 6, "id-aaa"), true)
        .is_err());

    let other = info("tiny-qwen-ft", 6, 5, "id-bbb");
    let err = v.check_compatible(&other, false).unwrap_err().to_string();
    assert!(
        err.contains("--force") && err.contains("tiny-qwen-ft"),
        "{err}"
    );
    v.check_compatible(&other, true).unwrap();

    let mut anon = v.clone();
    anon.meta.model_identity.clear();
    let err = anon
        .check_compatible(&other, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no model identity") && err.contains("--force"),
        "{err}"
    );
}

#[test]
fn meta_for_model_copies_the_model() {
    let i = info("tiny-qwen", 6, 5, "id-aaa");
    let m = VectorMeta::for_model("pca", &i, HookKind::ResidPre);
    assert_eq!(
        (m.model_name.as_str(), m.model_architecture.as_str()),
        ("tiny-qwen", "qwen2")
    );
    assert_eq!(
        (m.hidden_size, m.n_layers, m.model_identity.as_str()),
        (6, 5, "id-aaa")
    );
    assert_eq!(m.format_version, 1);
    assert_eq!(m.hook, HookKind::ResidPre);
    assert!(m.extra.is_null());
}

#[test]
fn dataset_refs_hash_and_count() {
    let tmp = TempDir::new("data");
    let p = tmp.path().join("set.jsonl");
    let text = "{\"id\":\"1\",\"label\":\"harmful\",\"text\":\"a\"}\n\n{\"id\":\"2\",\"label\":\"benign\",\"text\":\"b\"}\r\n{\"id\":\"3\",\"label\":\"benign\",\"text\":\"c\"}";
    fs::write(&p, text).unwrap();
    let d = DatasetRef::from_file(&p).unwrap();
    assert_eq!((d.n_items, d.n_harmful, d.n_benign), (3, 1, 2));
    use sha2::Digest;
    let want: String = sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(d.sha256, want);
    assert_eq!(d.path, p.display().to_string());

    // A byte-order mark is hashed with the file but not parsed as part of line 1.
    let bom = format!("\u{feff}{text}");
    fs::write(&p, &bom).unwrap();
    let d = DatasetRef::from_file(&p).unwrap();
    assert_eq!((d.n_items, d.n_harmful, d.n_benign), (3, 1, 2));
    assert_ne!(d.sha256, want);

    fs::write(&p, "{\"label\":\"harmful\"}\n{oops\n").unwrap();
    let err = DatasetRef::from_file(&p).unwrap_err().to_string();
    assert!(err.contains(&format!("{}:2", p.display())), "{err}");

    fs::write(&p, "{\"label\":\"spicy\"}\n").unwrap();
    let err = DatasetRef::from_file(&p).unwrap_err().to_string();
    assert!(err.contains(":1") && err.contains("spicy"), "{err}");

    fs::write(&p, "{\"text\":\"x\"}\n").unwrap();
    assert!(DatasetRef::from_file(&p)
        .unwrap_err()
        .to_string()
        .contains("label"));

    assert!(DatasetRef::from_file(&tmp.path().join("none.jsonl")).is_err());
}

#[test]
fn training_sets_survive_the_round_trip() {
    let tmp = TempDir::new("sets");
    let p = tmp.path().join("set.jsonl");
    fs::write(&p, "{\"label\":\"harmful\"}\n").unwrap();
    let mut v = vector(4, 3, &[1]);
    v.meta
        .training_sets
        .push(DatasetRef::from_file(&p).unwrap());
    let dir = tmp.path().join("vec");
    v.save(&dir).unwrap();
    assert_eq!(
        SteeringVector::load(&dir).unwrap().meta.training_sets,
        v.meta.training_sets
    );
}
