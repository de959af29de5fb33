//! EEG → mel spectrogram: hbac equals the public HMS reference computed with librosa from PyPI
//! (`tests/golden/eeg/make_eeg_golden.py`) to ≤ 1e-3 on a recording with NaN gaps, an all-NaN
//! electrode, a flat electrode and a window that ends on the file's last row.

mod common;

use std::path::{Path, PathBuf};

use common::{fails, ok};
use hbac_common::hms::eeg;
use hbac_common::hms::spectrogram::{EEG_COLUMNS, write_eeg};

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
