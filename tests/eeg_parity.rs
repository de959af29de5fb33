//! EEG → mel spectrogram: hbac equals the public HMS reference computed with librosa from PyPI
//! (`tests/golden/eeg/make_eeg_golden.py`) to ≤ 1e-3 on a recording with NaN gaps, an all-NaN
//! electrode, a flat electrode and a window that ends on the file's last row.

mod common;

use std::path::{Path, PathBuf};

use common::{fails, ok};
use hbac_common::hms::Class;
use hbac_common::hms::eeg;
use hbac_common::hms::spectrogram::{EEG_COLUMNS, FEATURES, write_eeg, write_spectrogram};
use hbac_common::hms::tables::{TestRow, TrainRow, write_test_csv, write_train_csv};

fn golden() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/eeg")
}

#[test]
fn eeg_images_equal_librosa_golden_files() {
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(golden().join("cases.json")).unwrap()).unwrap();
    let file = golden().join(meta["recording"].as_str().unwrap());
    let name = file.display().to_string();
    let recording = eeg::read_eeg(std::fs::read(&file).unwrap().into(), &name).unwrap();
    let cases = meta["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 2, "{meta}");
    for case in cases {
        let offset = case["offset_seconds"].as_f64().unwrap();
        let npy = golden().join(case["image"].as_str().unwrap());
        let want = eeg::decode(&std::fs::read(&npy).unwrap(), &npy.display().to_string()).unwrap();
        let got = eeg::eeg_image(&recording, offset, &name).unwrap();
        let (mut worst, mut at) = (0.0f32, 0);
        for (i, (a, b)) in got.data.iter().zip(&want.data).enumerate() {
            let d = (a - b).abs();
            if d > worst || d.is_nan() {
                (worst, at) = (d, i);
            }
        }
        let plane = eeg::N_MELS * eeg::FRAMES;
        println!(
            "offset {offset} s: max |hbac − librosa| = {worst:.2e} at chain {}, mel {}, frame {}",
            at / plane,
            at % plane / eeg::FRAMES,
            at % eeg::FRAMES
        );
        assert!(
            worst <= 1e-3,
            "offset {offset} s: max difference {worst} at {at}"
        );
        // The all-NaN electrode (T3) zeroes two of LL's four differences: each contributes
        // exactly (0 + 40) / 40 = 1 / 4 to every LL pixel, so none can fall below -0.5.
        assert!(got.data[..plane].iter().all(|&v| v >= -0.5));
    }
}

#[test]
fn hbac_eeg_spectrogram_writes_the_npy_and_refuses_bad_files_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let recording = golden().join("recording.parquet");
    let out = tmp.path().join("img.npy");
    let printed = ok(&[
        "eeg-spectrogram",
        "--eeg",
        recording.to_str().unwrap(),
        "--offset",
        "20",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(printed.contains("[4, 128, 256]"), "{printed}");
    let got = eeg::decode(&std::fs::read(&out).unwrap(), "img.npy").unwrap();
    let want = eeg::decode(
        &std::fs::read(golden().join("recording_20s.npy")).unwrap(),
        "golden",
    )
    .unwrap();
    let worst = got
        .data
        .iter()
        .zip(&want.data)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst <= 1e-3, "{worst}");

    // Too short for the window (70 s file, window at 25 s needs 75 s): named, nothing written.
    let bad_out = tmp.path().join("bad.npy");
    let err = fails(
        &[
            "eeg-spectrogram",
            "--eeg",
            recording.to_str().unwrap(),
            "--offset",
            "25",
            "--out",
            bad_out.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        err.contains("recording.parquet") && err.contains("14000 rows"),
        "{err}"
    );
    assert!(!bad_out.exists());

    // A recording shorter than any window (100 rows), and a truncated file.
    let rows = 100;
    let mut wrong = write_eeg(&vec![0.0; rows * EEG_COLUMNS.len()], rows)
        .unwrap()
        .to_vec();
    let wrong_path = tmp.path().join("77.parquet");
    std::fs::write(&wrong_path, &wrong).unwrap();
    wrong.truncate(40);
    let garbage_path = tmp.path().join("78.parquet");
    std::fs::write(&garbage_path, &wrong).unwrap();
    let err = fails(
        &[
            "eeg-spectrogram",
            "--eeg",
            wrong_path.to_str().unwrap(),
            "--out",
            bad_out.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        err.contains("77.parquet") && err.contains("100 rows"),
        "{err}"
    );
    let err = fails(
        &[
            "eeg-spectrogram",
            "--eeg",
            garbage_path.to_str().unwrap(),
            "--out",
            bad_out.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        err.contains("78.parquet") && err.contains("not a readable parquet"),
        "{err}"
    );
    assert!(!bad_out.exists());
}

fn row(eeg_id: i64, sub: i64, offset: f64) -> TrainRow {
    TrainRow {
        eeg_id,
        eeg_sub_id: sub,
        eeg_label_offset_seconds: offset,
        spectrogram_id: eeg_id + 1,
        spectrogram_sub_id: sub,
        spectrogram_label_offset_seconds: 0.0,
        label_id: eeg_id * 10 + sub,
        patient_id: 1,
        expert_consensus: Class::Lpd,
        votes: [0.0, 3.0, 0.0, 0.0, 0.0, 1.0],
    }
}

/// A recording of `seconds` at 200 Hz, a different rhythm per `seed`.
fn recording(seconds: usize, seed: f32) -> Vec<f32> {
    let n = EEG_COLUMNS.len();
    (0..seconds * 200 * n)
        .map(|i| {
            let (t, c) = ((i / n) as f32 / 200.0, (i % n) as f32);
            25.0 * (t * (1.0 + seed + 0.2 * c)).sin() + 5.0 * (t * 57.0 * (c + 1.0)).sin()
        })
        .collect()
}

#[test]
fn prepare_eeg_caches_every_labelled_window_resumes_and_names_bad_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    for sub in ["train_eegs", "test_eegs"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    // EEG 100: 60 s, windows at 0 and 10 s (10 s twice: a duplicate row); EEG 200: 50 s, one
    // window; test EEG 300: 50 s.
    let rows = vec![
        row(100, 0, 0.0),
        row(100, 1, 10.0),
        TrainRow {
            label_id: 9999,
            ..row(100, 1, 10.0)
        },
        row(200, 0, 0.0),
    ];
    std::fs::write(d.join("train.csv"), write_train_csv(&rows)).unwrap();
    let test = [TestRow {
        spectrogram_id: 301,
        eeg_id: 300,
        patient_id: 2,
    }];
    std::fs::write(d.join("test.csv"), write_test_csv(&test)).unwrap();
    for (id, seconds, dir) in [
        (100, 60, "train_eegs"),
        (200, 50, "train_eegs"),
        (300, 50, "test_eegs"),
    ] {
        let bytes = write_eeg(&recording(seconds, id as f32 / 100.0), seconds * 200).unwrap();
        std::fs::write(d.join(format!("{dir}/{id}.parquet")), bytes).unwrap();
    }
    // The spectrogram cache needs the spectrogram files; a 300-row file per referenced id.
    for (dir, ids) in [
        ("train_spectrograms", vec![101, 201]),
        ("test_spectrograms", vec![301]),
    ] {
        std::fs::create_dir_all(d.join(dir)).unwrap();
        for id in ids {
            let v = vec![1.0f32; 300 * FEATURES];
            std::fs::write(
                d.join(format!("{dir}/{id}.parquet")),
                write_spectrogram(&v, 300).unwrap(),
            )
            .unwrap();
        }
    }
    let data = d.to_str().unwrap();
    let out = ok(&["prepare", "--data", data, "--eeg"]);
    assert!(
        out.contains("4 computed from 3 EEG files, 0 already present (3 train windows, 1 test)"),
        "{out}"
    );
    let cache = d.join("cache");
    for (key, file, offset) in [
        (
            "train_eeg_spectrograms/100_0.npy",
            "train_eegs/100.parquet",
            0.0,
        ),
        (
            "train_eeg_spectrograms/100_1.npy",
            "train_eegs/100.parquet",
            10.0,
        ),
        (
            "train_eeg_spectrograms/200_0.npy",
            "train_eegs/200.parquet",
            0.0,
        ),
        (
            "test_eeg_spectrograms/300.npy",
            "test_eegs/300.parquet",
            0.0,
        ),
    ] {
        let cached = eeg::decode(&std::fs::read(cache.join(key)).unwrap(), key).unwrap();
        let rec = eeg::read_eeg(std::fs::read(d.join(file)).unwrap().into(), file).unwrap();
        assert_eq!(cached, eeg::eeg_image(&rec, offset, file).unwrap(), "{key}");
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cache.join("eeg_manifest.json")).unwrap()).unwrap();
    assert_eq!(
        (manifest["train"].as_u64(), manifest["test"].as_u64()),
        (Some(3), Some(1))
    );

    // Re-running computes only what is missing.
    std::fs::remove_file(cache.join("train_eeg_spectrograms/100_1.npy")).unwrap();
    let out = ok(&["prepare", "--data", data, "--eeg"]);
    assert!(
        out.contains("1 computed from 1 EEG files, 3 already present"),
        "{out}"
    );

    // A window past the end of its recording names the CSV line and the file; the other
    // windows are still written, the manifest is not.
    let mut bad = rows.clone();
    bad.push(row(200, 1, 4.0));
    std::fs::write(d.join("train.csv"), write_train_csv(&bad)).unwrap();
    std::fs::remove_file(cache.join("eeg_manifest.json")).unwrap();
    let err = fails(&["prepare", "--data", data, "--eeg"], &[]);
    assert!(
        err.contains("train.csv")
            && err.contains("line 6")
            && err.contains("eeg_label_offset_seconds")
            && err.contains("200.parquet")
            && err.contains("10000 rows"),
        "{err}"
    );
    assert!(!cache.join("eeg_manifest.json").exists());
    assert!(!cache.join("train_eeg_spectrograms/200_1.npy").exists());

    // A missing EEG file is named with the CSV line that references it.
    std::fs::write(d.join("train.csv"), write_train_csv(&rows)).unwrap();
    std::fs::remove_file(d.join("test_eegs/300.parquet")).unwrap();
    std::fs::remove_file(cache.join("test_eeg_spectrograms/300.npy")).unwrap();
    let err = fails(&["prepare", "--data", data, "--eeg"], &[]);
    assert!(
        err.contains("test_eegs/300.parquet") && err.contains("test.csv line 2"),
        "{err}"
    );
    assert!(!cache.join("eeg_manifest.json").exists());
}

#[test]
fn synth_eegs_then_prepare_eeg_images_every_window() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let out = ok(&[
        "synth",
        "--out",
        d,
        "--patients",
        "4",
        "--test",
        "2",
        "--eegs",
    ]);
    let rows = hbac_common::hms::tables::parse_train_csv(
        &std::fs::read(tmp.path().join("train.csv")).unwrap(),
        "train.csv",
    )
    .unwrap();
    let eegs: std::collections::BTreeSet<i64> = rows.iter().map(|r| r.eeg_id).collect();
    assert!(
        out.contains(&format!("{} EEG files", eegs.len() + 2)),
        "{out}"
    );
    let windows: std::collections::BTreeSet<(i64, i64)> =
        rows.iter().map(|r| (r.eeg_id, r.eeg_sub_id)).collect();
    let out = ok(&["prepare", "--data", d, "--eeg"]);
    assert!(
        out.contains(&format!(
            "{} computed from {} EEG files, 0 already present ({} train windows, 2 test)",
            windows.len() + 2,
            eegs.len() + 2,
            windows.len()
        )),
        "{out}"
    );
}
