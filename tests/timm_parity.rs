//! Pretrained-weight import: our backbones with timm's weights give timm's pooled features.
//!
//! Fixtures (`tests/golden/timm/`) come from `make_timm_fixtures.py` (torch + timm): reduced
//! widths of `tf_mobilenetv3_large_100` (safetensors) and `tf_efficientnetv2_b2` (PyTorch
//! `.pth`), random weights and BatchNorm statistics, an odd-sized input, and timm's
//! `forward_features` + global average pool. Full-width fixtures made with `--full` are
//! checked by the ignored test when `HBAC_TIMM_FULL` names their folder.

use std::path::{Path, PathBuf};

use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use hbac_worker::model::pretrained::{ImportError, Pretrained};
use hbac_worker::model::{Arch, ModelConfig};
use ndarray::ArrayD;

type B = Flex;

fn golden() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/timm")
}

struct Fixture {
    arch: Arch,
    width: f64,
    weights: PathBuf,
    input: ArrayD<f32>,
    features: ArrayD<f32>,
}

fn fixture(dir: &Path, arch: &str) -> Fixture {
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(format!("{arch}.json"))).unwrap()).unwrap();
    let npy = |suffix: &str| -> ArrayD<f32> {
        ndarray_npy::read_npy(dir.join(format!("{arch}.{suffix}.npy"))).unwrap()
    };
    Fixture {
        arch: arch.parse().unwrap(),
        width: meta["width"].as_f64().unwrap(),
        weights: dir.join(meta["weights"].as_str().unwrap()),
        input: npy("input"),
        features: npy("features"),
    }
}

fn config(arch: Arch, width: f64) -> ModelConfig {
    ModelConfig::new(arch).with_width(width).with_rescale(false)
}

fn load(path: &Path) -> Pretrained {
    Pretrained::parse(&path.display().to_string(), std::fs::read(path).unwrap()).unwrap()
}

/// Largest absolute difference between our pooled features and timm's.
fn parity(f: &Fixture) -> f32 {
    let device = Default::default();
    let model = config(f.arch, f.width).init::<B>(&device);
    let model = load(&f.weights)
        .apply(model, &config(f.arch, f.width))
        .unwrap();
    let shape: [usize; 4] = f.input.shape().try_into().unwrap();
    let x = Tensor::<B, 4>::from_data(
        TensorData::new(f.input.iter().copied().collect::<Vec<_>>(), shape),
        &device,
    );
    let ours = model.features(x).into_data().to_vec::<f32>().unwrap();
    assert_eq!(ours.len(), f.features.len(), "feature width");
    ours.iter()
        .zip(f.features.iter())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

#[test]
fn mobilenetv3_from_safetensors_matches_timm() {
    let f = fixture(&golden(), "mobilenetv3-large");
    assert!(f.weights.extension().unwrap() == "safetensors");
    let diff = parity(&f);
    println!("max |ours - timm| = {diff:e}");
    assert!(diff <= 1e-4, "max |ours - timm| = {diff}");
}

#[test]
fn efficientnetv2_from_pth_matches_timm() {
    let f = fixture(&golden(), "efficientnetv2-b2");
    assert!(f.weights.extension().unwrap() == "pth");
    let diff = parity(&f);
    println!("max |ours - timm| = {diff:e}");
    assert!(diff <= 1e-4, "max |ours - timm| = {diff}");
}

/// Random weights are far from the imported ones: without the import the features differ, so
/// the parity above is the import's doing.
#[test]
fn fresh_weights_do_not_match() {
    let f = fixture(&golden(), "mobilenetv3-large");
    let device = Default::default();
    let model = config(f.arch, f.width).init::<B>(&device);
    let shape: [usize; 4] = f.input.shape().try_into().unwrap();
    let x = Tensor::<B, 4>::from_data(
        TensorData::new(f.input.iter().copied().collect::<Vec<_>>(), shape),
        &device,
    );
    let ours = model.features(x).into_data().to_vec::<f32>().unwrap();
    let diff = ours
        .iter()
        .zip(f.features.iter())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(diff > 1e-2, "fresh weights already match ({diff})");
}

#[test]
fn wrong_architecture_or_width_is_a_clear_error() {
    let device = Default::default();
    let f = fixture(&golden(), "efficientnetv2-b2");
    let weights = load(&f.weights);
    // EfficientNetV2 weights into MobileNetV3: missing keys, named.
    let cfg = config(Arch::MobileNetV3Large, 0.35);
    let err = weights.apply(cfg.init::<B>(&device), &cfg).err().unwrap();
    let msg = err.to_string();
    assert!(matches!(err, ImportError::Mismatch { .. }), "{msg}");
    assert!(msg.contains("efficientnetv2-b2.pth"), "{msg}");
    assert!(msg.contains("does not fit mobilenetv3-large"), "{msg}");
    assert!(msg.contains("tf_mobilenetv3_large_100"), "{msg}");
    assert!(msg.contains("blocks."), "{msg}");
    // The right architecture at the wrong width: shapes, named by key.
    let cfg = config(Arch::EfficientNetV2B2, 0.5);
    let msg = weights
        .apply(cfg.init::<B>(&device), &cfg)
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("`conv_stem.weight` has shape [8, 3, 3, 3]"),
        "{msg}"
    );
}

#[test]
fn a_file_that_is_not_a_state_dict_is_refused() {
    let err = Pretrained::parse("weights.pth", b"certainly not a checkpoint".to_vec())
        .err()
        .unwrap();
    assert!(matches!(err, ImportError::Unreadable { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("weights.pth: not a safetensors or PyTorch"),
        "{err}"
    );
    // A truncated safetensors file.
    let bytes = std::fs::read(golden().join("mobilenetv3-large.safetensors")).unwrap();
    let err = Pretrained::parse("cut.safetensors", bytes[..bytes.len() / 2].to_vec())
        .err()
        .unwrap();
    assert!(err.to_string().starts_with("cut.safetensors:"), "{err}");
}

/// The published widths, through the same mapping: run with
/// `HBAC_TIMM_FULL=DIR cargo test --test timm_parity -- --ignored` after
/// `python tests/golden/timm/make_timm_fixtures.py DIR --full`.
#[test]
#[ignore = "needs full-width fixtures (HBAC_TIMM_FULL)"]
fn full_width_models_match_timm() {
    let dir = PathBuf::from(std::env::var("HBAC_TIMM_FULL").expect("HBAC_TIMM_FULL"));
    for arch in ["mobilenetv3-large", "efficientnetv2-b2"] {
        let f = fixture(&dir, arch);
        assert_eq!(f.width, 1.0);
        let diff = parity(&f);
        println!("{arch}: max |ours - timm| = {diff:e}");
        assert!(diff <= 1e-4, "{arch}: max |ours - timm| = {diff}");
    }
}
