//! `hbac predict --run`: a finished run's ensemble on a test set reproduces the run's own
//! `submission.csv`, also from a folder holding only the test set; an unfinished run, a missing
//! checkpoint, a test row without its file and a run written by a newer hbac (journal format
//! version) are refused with the path named and nothing written.

mod common;

use std::path::Path;
use std::process::Command;

use common::{copy_dir, fails, ok};
use hbac_common::hms::tables::parse_prob_csv;

fn submission(path: &Path) -> Vec<(i64, [f64; 6])> {
    let rows = parse_prob_csv(&std::fs::read(path).unwrap(), "submission").unwrap();
    rows.into_iter().map(|r| (r.eeg_id, r.values)).collect()
}

#[test]
fn predict_run_reproduces_the_runs_submission_and_refuses_what_it_cannot_use() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::synth(&tmp.path().join("data"), 10, 5);
    let run = tmp.path().join("run");
    let status = Command::new(env!("CARGO_BIN_EXE_hbac"))
        .args(["local", "--data", &data, "--out"])
        .arg(&run)
        .args([
            "--k",
            "2",
            "--workers",
            "1",
            "--width",
            "0.25",
            "--downsample",
            "8",
        ])
        .args(["--epochs", "2", "--batch-size", "16"])
        .env("RUST_LOG", "warn")
        .status()
        .unwrap();
    assert!(status.success());
    let want = submission(&run.join("submission.csv"));
    assert_eq!(want.len(), 3, "the synthetic test set has 3 rows");
    let run_url = run.to_str().unwrap();

    // Only the test set, in a folder of its own (no train.csv): the same submission.
    let hidden = tmp.path().join("hidden");
    std::fs::create_dir_all(&hidden).unwrap();
    std::fs::copy(Path::new(&data).join("test.csv"), hidden.join("test.csv")).unwrap();
    copy_dir(
        &Path::new(&data).join("test_spectrograms"),
        &hidden.join("test_spectrograms"),
    );
    let out = tmp.path().join("sub.csv");
    let printed = ok(&[
        "predict",
        "--run",
        run_url,
        "--data",
        hidden.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(printed.contains("the ensemble of 4 jobs"), "{printed}");
    let got = submission(&out);
    assert_eq!(got.len(), want.len());
    let mut worst = 0.0f64;
    for ((id_a, a), (id_b, b)) in got.iter().zip(&want) {
        assert_eq!(id_a, id_b);
        for k in 0..6 {
            worst = worst.max((a[k] - b[k]).abs());
        }
    }
    println!("max difference to the run's submission.csv: {worst:e}");
    assert!(
        worst <= 1e-6,
        "max difference to the run's submission.csv: {worst}"
    );

    // The run folder moved (downloaded from a bucket, uploaded as a Kaggle data set): its jobs
    // are found under its new root.
    let moved = tmp.path().join("moved-run");
    std::fs::rename(&run, &moved).unwrap();
    let out2 = tmp.path().join("sub2.csv");
    ok(&[
        "predict",
        "--run",
        moved.to_str().unwrap(),
        "--data",
        hidden.to_str().unwrap(),
        "--out",
        out2.to_str().unwrap(),
    ]);
    assert_eq!(submission(&out2), got);
    std::fs::rename(&moved, &run).unwrap();

    // A test row whose spectrogram is missing: named, nothing written.
    let spec = std::fs::read_dir(hidden.join("test_spectrograms"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    std::fs::remove_file(spec.path()).unwrap();
    std::fs::remove_dir_all(hidden.join("cache")).unwrap();
    let bad_out = tmp.path().join("bad.csv");
    let err = fails(
        &[
            "predict",
            "--run",
            run_url,
            "--data",
            hidden.to_str().unwrap(),
            "--out",
            bad_out.to_str().unwrap(),
        ],
        &[],
    );
    let name = spec.file_name().into_string().unwrap();
    assert!(
        err.contains(&name) && err.contains("test.csv line"),
        "{err}"
    );
    assert!(!bad_out.exists());

    // A job's checkpoint missing: named, nothing written.
    let job = std::fs::read_dir(run.join("jobs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let checkpoint = std::fs::read_dir(&job)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find_map(|attempt| {
            let c = attempt.join("checkpoint.mpk");
            c.exists().then_some(c)
        })
        .or_else(|| Some(job.join("checkpoint.mpk")).filter(|c| c.exists()))
        .expect("a job folder holds a checkpoint");
    let moved = checkpoint.with_extension("moved");
    std::fs::rename(&checkpoint, &moved).unwrap();
    let err = fails(
        &[
            "predict",
            "--run",
            run_url,
            "--data",
            &data,
            "--out",
            bad_out.to_str().unwrap(),
        ],
        &[],
    );
    assert!(err.contains("checkpoint.mpk is missing"), "{err}");
    assert!(!bad_out.exists());
    std::fs::rename(&moved, &checkpoint).unwrap();

    // Not a finished run: no report.json yet, or no run at all.
    std::fs::rename(run.join("report.json"), run.join("report.moved")).unwrap();
    let err = fails(
        &[
            "predict",
            "--run",
            run_url,
            "--data",
            &data,
            "--out",
            bad_out.to_str().unwrap(),
        ],
        &[],
    );
    assert!(err.contains("is not finished"), "{err}");
    let err = fails(
        &[
            "predict",
            "--run",
            &data,
            "--data",
            &data,
            "--out",
            bad_out.to_str().unwrap(),
        ],
        &[],
    );
    assert!(err.contains("not the output root of an hbac run"), "{err}");
    assert!(!bad_out.exists());

    // A run written by a newer hbac (its journal's format version) is refused as such.
    std::fs::rename(run.join("report.moved"), run.join("report.json")).unwrap();
    let journal = run.join("journal");
    let mut entries: Vec<_> = std::fs::read_dir(&journal)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    entries.sort();
    let last = entries.pop().unwrap();
    let mut entry: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&last).unwrap()).unwrap();
    entry["version"] = 99.into();
    std::fs::write(&last, serde_json::to_vec(&entry).unwrap()).unwrap();
    let err = fails(
        &[
            "predict",
            "--run",
            run_url,
            "--data",
            &data,
            "--out",
            bad_out.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        err.contains("journal format version 99") && err.contains(last.to_str().unwrap()),
        "{err}"
    );
    assert!(!bad_out.exists());
}
