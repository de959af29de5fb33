//! `hbac export --format onnx`: onnxruntime (from PyPI) runs the exported graphs and gives
//! hbac's probabilities.
//!
//! - Both architectures at full width, after a training step that moved every weight and set
//!   the BatchNorm statistics away from their initial values (so the folding is exercised), on
//!   odd-sized inputs (TensorFlow "same" padding's extra pixel), with and without the input
//!   pooling: every probability within 1e-4 of hbac's, checked with `onnx.checker` too.
//! - A finished run exported with `--run`: `tests/onnx/onnx_submission.py` rebuilds the
//!   submission from `ensemble.json`, the models and the test parquet files alone, equal to the
//!   run's `submission.csv` within 1e-4; `--checkpoint` writes one job's model; an unfinished
//!   run or a folder without a checkpoint is refused with nothing written.
//!
//! Python comes from `HBAC_PYTHON` (default `python3`) and needs numpy, pandas, pyarrow, onnx
//! and onnxruntime. Without them the tests say so and pass, unless `HBAC_REQUIRE_ONNXRUNTIME`
//! is set (CI sets it and installs them).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use burn::backend::{Autodiff, Flex};
use burn::module::{AutodiffModule, Module, ModuleMapper, Param};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::activation::softmax;
use burn::tensor::{Tensor, TensorData};
use hbac_worker::model::{Arch, ModelConfig};
use hbac_worker::train::loss::keras_kl;
use ndarray::{Array2, Array4};
use rand::{Rng, SeedableRng};

type B = Autodiff<Flex>;

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/onnx")
}

/// The Python with onnxruntime, or `None` (and a note) when there is none and CI does not
/// require it.
fn python() -> Option<String> {
    let python = std::env::var("HBAC_PYTHON").unwrap_or_else(|_| "python3".into());
    let found = Command::new(&python)
        .args(["-c", "import numpy, pandas, pyarrow, onnx, onnxruntime"])
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Some(python);
    }
    assert!(
        std::env::var_os("HBAC_REQUIRE_ONNXRUNTIME").is_none(),
        "HBAC_REQUIRE_ONNXRUNTIME is set but {python} cannot import numpy, pandas, pyarrow, onnx \
         and onnxruntime (pip install them, or set HBAC_PYTHON)"
    );
    eprintln!("SKIPPED: {python} lacks onnxruntime (pip install onnxruntime onnx pandas pyarrow)");
    None
}

fn run_python(python: &str, args: &[&str]) -> String {
    let out = Command::new(python).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{python} {args:?} failed:\n{text}");
    text
}

/// Moves BatchNorm's γ and β away from their trained values, per channel: γ × U(0.9, 1.1),
/// β + U(-0.03, 0.03).
struct PerturbBatchNorm {
    rng: rand_chacha::ChaCha8Rng,
    path: Vec<String>,
}

impl ModuleMapper<Flex> for PerturbBatchNorm {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(
        &mut self,
        param: Param<Tensor<Flex, D>>,
    ) -> Param<Tensor<Flex, D>> {
        let (scale, shift) = match self.path.last().map(String::as_str) {
            Some("gamma") => ((0.9f32, 1.1f32), (0.0f32, 0.0f32)),
            Some("beta") => ((1.0, 1.0), (-0.03, 0.03)),
            _ => return param,
        };
        let (id, tensor, mapper) = param.consume();
        let dims = tensor.dims();
        let mut draw = |(lo, hi): (f32, f32)| -> Tensor<Flex, D> {
            let v: Vec<f32> = (0..dims[0])
                .map(|_| {
                    if lo < hi {
                        self.rng.random_range(lo..hi)
                    } else {
                        lo
                    }
                })
                .collect();
            Tensor::from_data(TensorData::new(v, dims), &tensor.device())
        };
        let (a, b) = (draw(scale), draw(shift));
        Param::from_mapped_value(id, tensor * a + b, mapper)
    }
}

fn random_input(rng: &mut impl Rng, shape: [usize; 4]) -> Vec<f32> {
    (0..shape.iter().product::<usize>())
        .map(|_| rng.random_range(0.0f32..255.0))
        .collect()
}

#[test]
fn onnxruntime_gives_hbacs_probabilities_for_both_architectures() {
    let Some(python) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let device = Default::default();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    // (arch, input pooling, input [H, W]): odd sizes on the way down exercise "same" padding.
    let cases = [
        (Arch::EfficientNetV2B2, 1, [100, 75]),
        (Arch::MobileNetV3Large, 1, [100, 75]),
        (Arch::MobileNetV3Large, 2, [130, 98]),
    ];
    for (arch, downsample, [h, w]) in cases {
        // Keras momentum 0: after one training step the running statistics are that batch's.
        let config = ModelConfig::new(arch)
            .with_downsample(downsample)
            .with_bn_momentum(Some(0.0));
        let model = config.init_seeded::<B>(3, &device);
        let shape = [4, 3, h, w];
        let x = Tensor::<B, 4>::from_data(
            TensorData::new(random_input(&mut rng, shape), shape),
            &device,
        );
        let y = softmax(
            Tensor::<B, 2>::random([4, 6], burn::tensor::Distribution::Default, &device),
            1,
        );
        let loss = keras_kl(model.forward(x), y);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let model = AdamConfig::new().init().step(1e-3, model, grads).valid();
        let model = model.map(&mut PerturbBatchNorm {
            rng: rand_chacha::ChaCha8Rng::seed_from_u64(5),
            path: Vec::new(),
        });

        let shape = [3, 3, h, w];
        let input = random_input(&mut rng, shape);
        let x = Tensor::<Flex, 4>::from_data(TensorData::new(input.clone(), shape), &device);
        // The head rescaled so that these logits have unit spread: probabilities neither
        // saturated nor uniform, so that a wrong layer shows in them.
        let spread = model.forward(x.clone()).var(1).mean().sqrt().into_scalar();
        let mut model = model;
        model.head.weight = Param::from_tensor(model.head.weight.val() / spread);
        model.head.bias = model
            .head
            .bias
            .map(|b| Param::from_tensor(b.val() / spread));
        let probs = softmax(model.forward(x), 1)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let top = probs.iter().copied().fold(0.0f32, f32::max);
        assert!(
            top < 0.99 && top > 0.2,
            "{}: largest probability {top}: the check would be blind",
            arch.name()
        );
        let dir = tmp.path().join(format!("{}-{downsample}", arch.name()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("model.onnx"), model.to_onnx(&[]).unwrap()).unwrap();
        ndarray_npy::write_npy(
            dir.join("input.npy"),
            &Array4::from_shape_vec(shape, input).unwrap(),
        )
        .unwrap();
        ndarray_npy::write_npy(
            dir.join("expected.npy"),
            &Array2::from_shape_vec([3, 6], probs).unwrap(),
        )
        .unwrap();
        let printed = run_python(
            &python,
            &[
                scripts().join("check_model.py").to_str().unwrap(),
                dir.to_str().unwrap(),
            ],
        );
        eprintln!("{} (input pooled by {downsample}): {printed}", arch.name());
    }
}

#[test]
fn an_exported_run_makes_the_runs_submission_without_hbac() {
    let Some(python) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let data = common::synth(&tmp.path().join("data"), 10, 5);
    let run = tmp.path().join("run");
    let run_url = run.to_str().unwrap().to_string();
    common::ok(&[
        "local",
        "--data",
        &data,
        "--out",
        &run_url,
        "--k",
        "2",
        "--workers",
        "1",
        "--width",
        "0.25",
        "--downsample",
        "8",
        "--epochs",
        "1",
        "--batch-size",
        "16",
    ]);
    let out = tmp.path().join("onnx");
    let printed = common::ok(&["export", "--run", &run_url, "--out", out.to_str().unwrap()]);
    assert!(
        printed.contains("wrote 4 ONNX models and ensemble.json"),
        "{printed}"
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("ensemble.json")).unwrap()).unwrap();
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("report.json")).unwrap()).unwrap();
    let archs = manifest["architectures"].as_array().unwrap();
    assert_eq!(archs.len(), 2);
    for (i, a) in archs.iter().enumerate() {
        assert_eq!(a["arch"], report["archs"][i]);
        assert_eq!(a["weight"], report["weights"][i]);
        let folds: Vec<u64> = a["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["fold"].as_u64().unwrap())
            .collect();
        assert_eq!(folds, [0, 1]);
    }
    let printed = run_python(
        &python,
        &[
            scripts().join("onnx_submission.py").to_str().unwrap(),
            out.to_str().unwrap(),
            &data,
            tmp.path().join("onnx_submission.csv").to_str().unwrap(),
            "--compare",
            run.join("submission.csv").to_str().unwrap(),
        ],
    );
    eprintln!("{printed}");

    // One job's checkpoint.
    let job = std::fs::read_dir(run.join("jobs/efficientnetv2-b2-fold1"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let single = tmp.path().join("one.onnx");
    common::ok(&[
        "export",
        "--checkpoint",
        job.to_str().unwrap(),
        "--out",
        single.to_str().unwrap(),
    ]);
    run_python(
        &python,
        &[
            "-c",
            "import onnx, sys; a, b = (onnx.load(p) for p in sys.argv[1:]); \
             assert a.graph == b.graph, 'the graphs differ'",
            single.to_str().unwrap(),
            out.join("efficientnetv2-b2-fold1.onnx").to_str().unwrap(),
        ],
    );

    // Refused, naming what is missing, writing nothing.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let nothing = tmp.path().join("nothing.onnx");
    let err = common::fails(
        &[
            "export",
            "--checkpoint",
            empty.to_str().unwrap(),
            "--out",
            nothing.to_str().unwrap(),
        ],
        &[],
    );
    assert!(err.contains("checkpoint.mpk is missing"), "{err}");
    assert!(!nothing.exists());
    std::fs::remove_file(job.join("checkpoint.mpk")).unwrap();
    let partial = tmp.path().join("partial");
    let err = common::fails(
        &[
            "export",
            "--run",
            &run_url,
            "--out",
            partial.to_str().unwrap(),
        ],
        &[],
    );
    assert!(err.contains("checkpoint.mpk is missing"), "{err}");
    assert!(!partial.join("ensemble.json").exists());
}
