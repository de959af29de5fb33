//! `hbac train` and `hbac predict` end to end on synthetic data, on the CPU, with reduced
//! models: the model really learns (fold-0 validation KL ≤ 60 % of the prior-only KL), every
//! output is written in its format, and the checkpoint reproduces the test predictions.

mod common;

use common::{ok, synth};
use hbac_common::hms::tables::parse_prob_csv;
use serde_json::Value;

/// The `hbac train` arguments of a reduced model (width 0.25, input pooled by 8) with a
/// learning rate and BatchNorm momentum suited to a few hundred steps.
fn reduced_args<'a>(
    data: &'a str,
    out: &'a str,
    arch: &'a str,
    epochs: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "train",
        "--data",
        data,
        "--out",
        out,
        "--arch",
        arch,
        "--width",
        "0.25",
        "--downsample",
        "8",
        "--batch-size",
        "16",
        "--lr-max",
        "3e-3",
        "--bn-momentum",
        "0.9",
        "--epochs",
        epochs,
        "--loader-threads",
        "1",
    ];
    args.extend_from_slice(extra);
    args
}

/// Trains a reduced model; returns stdout.
fn reduced(data: &str, out: &str, arch: &str, epochs: usize, extra: &[&str]) -> String {
    let epochs = epochs.to_string();
    ok(&reduced_args(data, out, arch, &epochs, extra))
}

#[test]
fn a_reduced_mobilenet_learns_the_synthetic_classes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth(&tmp.path().join("data"), 40, 42);
    let out = tmp.path().join("run");
    // Every labelled row, the reference augmentations, 20 epochs.
    let stdout = reduced(
        &data,
        out.to_str().unwrap(),
        "mobilenetv3-large",
        20,
        &["--all-rows"],
    );
    println!("{stdout}");
    let summary: Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    let (oof, prior) = (
        summary["oof_kaggle_kl"].as_f64().unwrap(),
        summary["prior_kaggle_kl"].as_f64().unwrap(),
    );
    // A model that learns nothing scores about the prior (ratio ~1). Over seeds 42 and 1–6 this
    // run scores 0.40–0.55 × the prior; rounding-level changes in the kernels (summation order)
    // move one 20-epoch run anywhere in that spread, so the bound sits just above it.
    assert!(
        oof <= 0.6 * prior,
        "fold-0 OOF KL {oof} vs prior-only {prior}"
    );

    // Outputs: one metrics line per epoch, a plot, OOF rows for the validation fold.
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 20);
    let svg = std::fs::read_to_string(out.join("loss.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("valid"));
    let config: Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    // With every labelled row, eeg_ids repeat in oof.csv (label_id is the row key).
    let oof = std::fs::read_to_string(out.join("oof.csv")).unwrap();
    let mut lines = oof.lines();
    assert_eq!(
        lines.next().unwrap(),
        "eeg_id,seizure_vote,lpd_vote,gpd_vote,lrda_vote,grda_vote,other_vote,fold,label_id"
    );
    let rows: Vec<Vec<f64>> = lines
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len() as u64, config["valid_samples"].as_u64().unwrap());
    assert!(
        rows.iter()
            .all(|r| (r[1..7].iter().sum::<f64>() - 1.0).abs() < 1e-4 && r[7] == 0.0)
    );
    // The checkpoint reproduces the test predictions written by train.
    let sub = tmp.path().join("submission.csv");
    ok(&[
        "predict",
        "--checkpoint",
        out.to_str().unwrap(),
        "--data",
        &data,
        "--out",
        sub.to_str().unwrap(),
    ]);
    let a = parse_prob_csv(&std::fs::read(out.join("test.csv")).unwrap(), "test.csv").unwrap();
    let b = parse_prob_csv(&std::fs::read(&sub).unwrap(), "submission.csv").unwrap();
    assert_eq!(a.len(), 3);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.eeg_id, y.eeg_id);
        for (p, q) in x.values.iter().zip(&y.values) {
            assert!((p - q).abs() < 1e-6, "{p} vs {q}");
        }
    }
    // And the submission scores against the hidden test labels.
    let scored = ok(&[
        "score",
        "--solution",
        &format!("{data}/test_labels.csv"),
        "--submission",
        sub.to_str().unwrap(),
    ]);
    assert!(scored.lines().last().unwrap().starts_with("kl_divergence "));
}

#[test]
fn efficientnet_trains_end_to_end_with_the_full_recipe() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth(&tmp.path().join("data"), 12, 7);
    let out = tmp.path().join("run");
    // Reference augmentations and AdamW, two epochs: everything runs and is written.
    let stdout = reduced(
        &data,
        out.to_str().unwrap(),
        "efficientnetv2-b2",
        2,
        &["--optimizer", "adamw", "--fold", "1", "--k", "3"],
    );
    assert!(stdout.contains("epoch 2/2"), "{stdout}");
    for f in [
        "config.json",
        "metrics.jsonl",
        "checkpoint.mpk",
        "oof.csv",
        "test.csv",
        "loss.svg",
        "summary.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let oof = std::fs::read_to_string(out.join("oof.csv")).unwrap();
    assert!(
        oof.lines()
            .skip(1)
            .all(|l| l.split(',').nth(7) == Some("1")),
        "fold column is 1"
    );
}

fn timm_fixture(name: &str) -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/timm")
        .join(name)
        .display()
        .to_string()
}

#[test]
fn training_starts_from_timm_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth(&tmp.path().join("data"), 12, 5);
    let out = tmp.path().join("run");
    let weights = timm_fixture("mobilenetv3-large.safetensors");
    // The committed fixture is timm's MobileNetV3 at width 0.35.
    ok(&[
        "train",
        "--data",
        &data,
        "--out",
        out.to_str().unwrap(),
        "--arch",
        "mobilenetv3-large",
        "--width",
        "0.35",
        "--downsample",
        "8",
        "--batch-size",
        "16",
        "--epochs",
        "1",
        "--loader-threads",
        "1",
        "--pretrained",
        &weights,
    ]);
    let config: Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["train"]["pretrained"], Value::from(weights));
    assert!(out.join("checkpoint.mpk").exists());
}

#[test]
fn weights_that_do_not_fit_fail_before_any_output() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth(&tmp.path().join("data"), 12, 5);
    let out = tmp.path().join("run");
    let weights = timm_fixture("efficientnetv2-b2.pth");
    let base = [
        "train",
        "--data",
        &data,
        "--out",
        out.to_str().unwrap(),
        "--arch",
        "efficientnetv2-b2",
        "--epochs",
        "1",
    ];
    // Full width against the width-0.25 file: the first shape problem is named by key.
    let mut args = base.to_vec();
    args.extend(["--pretrained", &weights]);
    let err = common::fails(&args, &[]);
    assert!(
        err.contains("efficientnetv2-b2.pth does not fit efficientnetv2-b2 (width 1)"),
        "{err}"
    );
    assert!(
        err.contains("`conv_stem.weight` has shape [8, 3, 3, 3]"),
        "{err}"
    );
    // A missing file is named.
    let mut args = base.to_vec();
    let missing = tmp.path().join("nope.safetensors");
    args.extend(["--pretrained", missing.to_str().unwrap()]);
    let err = common::fails(&args, &[]);
    assert!(err.contains("nope.safetensors"), "{err}");
    assert!(
        common::files(&out).is_empty(),
        "nothing written: {:?}",
        common::files(&out)
    );
}

/// `hbac train --device wgpu` end to end with a reduced model (a build with `--features wgpu`
/// and a Vulkan / Metal / DX12 adapter; CI runs it on Mesa's lavapipe): every epoch is
/// reported with a finite loss, the outputs are written, and `hbac predict` on the same device
/// reproduces the job's test predictions from its checkpoint.
#[cfg(feature = "wgpu")]
#[test]
fn hbac_train_and_predict_run_on_wgpu() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth(&tmp.path().join("data"), 12, 7);
    let out = tmp.path().join("run");
    let stdout = reduced(
        &data,
        out.to_str().unwrap(),
        "mobilenetv3-large",
        2,
        &["--device", "wgpu"],
    );
    println!("{stdout}");
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 2);
    for line in metrics.lines() {
        let m: Value = serde_json::from_str(line).unwrap();
        let kl = m["train_kl"].as_f64().unwrap();
        assert!(kl.is_finite() && kl > 0.0, "{line}");
    }
    let predicted = tmp.path().join("predicted.csv");
    ok(&[
        "predict",
        "--data",
        &data,
        "--checkpoint",
        out.to_str().unwrap(),
        "--device",
        "wgpu",
        "--out",
        predicted.to_str().unwrap(),
    ]);
    let job = parse_prob_csv(&std::fs::read(out.join("test.csv")).unwrap(), "test.csv").unwrap();
    let again = parse_prob_csv(&std::fs::read(&predicted).unwrap(), "predicted.csv").unwrap();
    assert!(!job.is_empty());
    assert_eq!(job.len(), again.len());
    for (x, y) in job.iter().zip(&again) {
        assert_eq!(x.eeg_id, y.eeg_id);
        for (p, q) in x.values.iter().zip(&y.values) {
            assert!((p - q).abs() < 1e-5, "{p} vs {q}");
        }
    }
}

#[test]
fn train_resume_continues_an_interrupted_run_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth(&tmp.path().join("data"), 12, 3);
    let (full, cut, resumed) = (
        tmp.path().join("full"),
        tmp.path().join("cut"),
        tmp.path().join("resumed"),
    );
    reduced(&data, full.to_str().unwrap(), "mobilenetv3-large", 3, &[]);
    // An interruption after epoch 2: what the run had saved by then.
    let saved = full.join("state").join("epoch-0002");
    let into = cut.join("state").join("epoch-0002");
    std::fs::create_dir_all(&into).unwrap();
    for f in std::fs::read_dir(&saved).unwrap().flatten() {
        std::fs::copy(f.path(), into.join(f.file_name())).unwrap();
    }
    reduced(
        &data,
        resumed.to_str().unwrap(),
        "mobilenetv3-large",
        3,
        &["--resume", cut.to_str().unwrap()],
    );
    let read = |d: &std::path::Path, f: &str| std::fs::read(d.join(f)).unwrap();
    assert_eq!(read(&resumed, "oof.csv"), read(&full, "oof.csv"));
    assert_eq!(read(&resumed, "test.csv"), read(&full, "test.csv"));
    let losses = |d: &std::path::Path| -> Vec<(f64, Option<f64>)> {
        std::fs::read_to_string(d.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                (v["train_kl"].as_f64().unwrap(), v["valid_kl"].as_f64())
            })
            .collect()
    };
    assert_eq!(losses(&resumed), losses(&full));
    let config: Value = serde_json::from_slice(&read(&resumed, "config.json")).unwrap();
    assert_eq!(config["resumed_epochs"], 2);
    // A state of another configuration is refused with a message, not trained on.
    let other = tmp.path().join("other");
    let args = ["--seed", "9", "--resume", cut.to_str().unwrap()];
    let out = common::hbac(
        &reduced_args(
            &data,
            other.to_str().unwrap(),
            "mobilenetv3-large",
            "3",
            &args,
        ),
        &[],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("does not belong to this run"), "{stderr}");
}

/// `hbac model check --device wgpu`: one training step of both reduced architectures on the GPU
/// against the CPU, within the check's tolerances, and no burn matmul autotuned on the way (on
/// CUDA each autotuned shape compiles every candidate kernel, seconds each: a first H200 step
/// spent minutes there). Only the loss's reductions may be tuned, and what was tuned lands in
/// `$HBAC_KERNEL_CACHE`.
#[cfg(feature = "wgpu")]
#[test]
fn model_check_on_wgpu_matches_the_cpu_and_autotunes_no_matmul() {
    let cache = tempfile::tempdir().unwrap();
    let out = common::ok_with(
        &[
            "model", "check", "--device", "wgpu", "--width", "0.25", "--batch", "2",
        ],
        &[("HBAC_KERNEL_CACHE", cache.path().to_str().unwrap())],
    );
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("grad_check "))
        .collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines.iter().all(|l| l.ends_with(" ok")), "{out}");
    let mut tuned = Vec::new();
    let mut dirs = vec![cache.path().to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            if e.path().is_dir() {
                dirs.push(e.path());
            } else {
                tuned.push(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    assert!(
        tuned
            .iter()
            .all(|f| !f.contains("matmul") && !f.contains("conv")),
        "autotuned: {tuned:?}"
    );
}

#[test]
fn two_stage_training_and_min_votes_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth(&tmp.path().join("data"), 12, 5);
    let out = tmp.path().join("two");
    let stdout = reduced(
        &data,
        out.to_str().unwrap(),
        "mobilenetv3-large",
        2,
        &[
            "--all-rows",
            "--min-votes",
            "2",
            "--stage2-min-votes",
            "8",
            "--stage2-epochs",
            "2",
            "--stage2-lr",
            "1e-3",
        ],
    );
    let lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with("epoch ")).collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert!(lines[1].starts_with("epoch 2/4 [stage 1]"), "{stdout}");
    assert!(
        lines[2].starts_with("epoch 3/4 [stage 2] lr 1.000e-3"),
        "{stdout}"
    );
    let config: Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["train"]["min_votes"], 2.0);
    assert_eq!(config["train"]["stage2"]["epochs"], 2);
    let (train, stage2) = (
        config["train_samples"].as_u64().unwrap(),
        config["stage2_samples"].as_u64().unwrap(),
    );
    assert!(0 < stage2 && stage2 < train, "{stage2} of {train}");
    let summary: Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    // The kept epoch is the best of either stage.
    let valid: Vec<f64> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["valid_kl"]
                .as_f64()
                .unwrap()
        })
        .collect();
    let argmin = (0..valid.len())
        .min_by(|&a, &b| valid[a].total_cmp(&valid[b]))
        .unwrap();
    assert_eq!(
        summary["best_epoch"].as_u64().unwrap() as usize,
        argmin,
        "{valid:?}"
    );

    // A threshold no row reaches fails naming the file and the flag; stage-2 flags go together.
    let none = tmp.path().join("none");
    let err = common::fails(
        &reduced_args(
            &data,
            none.to_str().unwrap(),
            "mobilenetv3-large",
            "1",
            &["--min-votes", "1000"],
        ),
        &[],
    );
    assert!(
        err.contains("train.csv") && err.contains("--min-votes"),
        "{err}"
    );
    assert!(!none.join("summary.json").exists());
    let err = common::fails(
        &reduced_args(
            &data,
            none.to_str().unwrap(),
            "mobilenetv3-large",
            "1",
            &["--stage2-epochs", "2"],
        ),
        &[],
    );
    assert!(err.contains("--stage2-min-votes"), "{err}");
}

#[test]
fn eeg_and_both_inputs_train_predict_and_say_what_they_took() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    ok(&[
        "synth",
        "--out",
        data.to_str().unwrap(),
        "--patients",
        "12",
        "--seed",
        "8",
        "--test",
        "3",
        "--eegs",
    ]);
    let data = data.to_str().unwrap();
    for input in ["eeg", "both"] {
        let out = tmp.path().join(input);
        let stdout = reduced(
            data,
            out.to_str().unwrap(),
            "efficientnetv2-b2",
            2,
            &["--input", input],
        );
        assert_eq!(
            stdout.lines().filter(|l| l.starts_with("epoch ")).count(),
            2,
            "{stdout}"
        );
        let config: Value =
            serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["train"]["input"], input);
        // The EEG images were computed into the cache on the way.
        assert!(
            std::path::Path::new(data)
                .join("cache/train_eeg_spectrograms")
                .read_dir()
                .unwrap()
                .count()
                > 0
        );
        // The job's own test predictions, and `predict --checkpoint` from a test-only folder,
        // agree: the test EEGs' images are made there from test_eegs/.
        let hidden = tmp.path().join(format!("hidden-{input}"));
        std::fs::create_dir_all(&hidden).unwrap();
        let test_csv = std::path::Path::new(data).join("test.csv");
        std::fs::copy(test_csv, hidden.join("test.csv")).unwrap();
        for d in ["test_spectrograms", "test_eegs"] {
            common::copy_dir(&std::path::Path::new(data).join(d), &hidden.join(d));
        }
        let sub = tmp.path().join(format!("{input}.csv"));
        ok(&[
            "predict",
            "--checkpoint",
            out.to_str().unwrap(),
            "--data",
            hidden.to_str().unwrap(),
            "--out",
            sub.to_str().unwrap(),
        ]);
        let read = |p: &std::path::Path| parse_prob_csv(&std::fs::read(p).unwrap(), "x").unwrap();
        let (got, want) = (read(&sub), read(&out.join("test.csv")));
        assert_eq!(got.len(), 3);
        for (a, b) in got.iter().zip(&want) {
            assert_eq!(a.eeg_id, b.eeg_id);
            for (p, q) in a.values.iter().zip(&b.values) {
                assert!((p - q).abs() < 1e-6, "{input}: {p} vs {q}");
            }
        }
    }
}

#[test]
fn per_eeg_samples_train_one_window_per_recording_and_epoch() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth(&tmp.path().join("data"), 12, 6);
    let csv = std::fs::read_to_string(std::path::Path::new(&data).join("train.csv")).unwrap();
    let out = tmp.path().join("per-eeg");
    reduced(
        &data,
        out.to_str().unwrap(),
        "mobilenetv3-large",
        2,
        &[
            "--samples",
            "per-eeg",
            "--stage2-min-votes",
            "5",
            "--stage2-epochs",
            "1",
        ],
    );
    let config: Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["selection"], "per-eeg");
    // Training units are the fold's recordings; validation keeps every row of its fold.
    let rows = csv.lines().count() - 1;
    let eegs: std::collections::HashSet<&str> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    let (train, valid) = (
        config["train_samples"].as_u64().unwrap() as usize,
        config["valid_samples"].as_u64().unwrap() as usize,
    );
    assert!(
        train < eegs.len() && valid > 0,
        "{train} of {} recordings",
        eegs.len()
    );
    assert!(train + valid < rows, "{train} + {valid} of {rows} rows");
    let oof = std::fs::read_to_string(out.join("oof.csv")).unwrap();
    assert_eq!(oof.lines().count() - 1, valid);
}
