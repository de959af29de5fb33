//! `hbac folds` equals scikit-learn's `StratifiedGroupKFold` on the golden data sets that
//! `tests/golden/make_folds_golden.py` produced with scikit-learn from PyPI: same fold for
//! every row, same warnings, same errors, with and without shuffling.

use std::path::{Path, PathBuf};

use hbac_common::folds::{KFold, hms_folds};
use hbac_common::hms::tables::parse_train_csv;
use serde_json::Value;

fn golden() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn datasets() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(golden())
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            (p.extension()? == "json")
                .then(|| p.file_stem().unwrap().to_string_lossy().into_owned())
        })
        .collect();
    names.sort();
    names
}

fn kfold(case: &Value) -> KFold {
    KFold {
        k: case["k"].as_u64().unwrap() as usize,
        shuffle: case["shuffle"].as_bool().unwrap(),
        seed: case["seed"].as_u64(),
    }
}

#[test]
fn every_golden_case_matches_sklearn() {
    let names = datasets();
    assert!(names.len() >= 6, "golden data sets missing: {names:?}");
    let (mut shuffled, mut plain, mut errors) = (0, 0, 0);
    for name in names {
        let dir = golden();
        let csv = std::fs::read(dir.join(format!("{name}.csv"))).unwrap();
        let rows = parse_train_csv(&csv, &name).unwrap();
        let gold: Value =
            serde_json::from_slice(&std::fs::read(dir.join(format!("{name}.json"))).unwrap())
                .unwrap();
        for case in gold["cases"].as_array().unwrap() {
            let kf = kfold(case);
            let got = hms_folds(&rows, &kf);
            if let Some(msg) = case.get("error") {
                let err = got.expect_err(&format!("{name} {kf:?}: sklearn raised {msg}"));
                assert_eq!(err.to_string(), msg.as_str().unwrap(), "{name} {kf:?}");
                errors += 1;
                continue;
            }
            let split = got.unwrap_or_else(|e| panic!("{name} {kf:?}: {e}"));
            let want: Vec<usize> = case["folds"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            let diff = split.fold.iter().zip(&want).filter(|(a, b)| a != b).count();
            assert_eq!(
                diff,
                0,
                "{name} {kf:?}: {diff} of {} rows differ from scikit-learn",
                want.len()
            );
            let warns: Vec<&str> = case["warnings"]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| w.as_str().unwrap())
                .collect();
            assert_eq!(split.warnings, warns, "{name} {kf:?}");
            if kf.shuffle {
                shuffled += 1
            } else {
                plain += 1
            }
        }
    }
    assert!(
        shuffled >= 10 && plain >= 4 && errors >= 5,
        "coverage: {shuffled} shuffled, {plain} plain, {errors} errors"
    );
}

#[test]
fn cli_writes_input_rows_in_order_with_fold_column() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("folds.csv");
    let input = golden().join("hms_like.csv");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_hbac"))
        .args([
            "folds",
            "--train-csv",
            input.to_str().unwrap(),
            "--k",
            "5",
            "--shuffle",
            "--seed",
            "42",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let gold: Value =
        serde_json::from_slice(&std::fs::read(golden().join("hms_like.json")).unwrap()).unwrap();
    let case = gold["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["k"] == 5 && c["shuffle"] == true && c["seed"] == 42)
        .unwrap();
    let written = std::fs::read_to_string(&out).unwrap();
    let original = std::fs::read_to_string(&input).unwrap();
    let mut lines = written.lines();
    assert_eq!(
        lines.next().unwrap(),
        format!("{},fold", original.lines().next().unwrap())
    );
    for ((w, o), f) in lines
        .zip(original.lines().skip(1))
        .zip(case["folds"].as_array().unwrap())
    {
        assert_eq!(w, format!("{o},{f}"));
    }
    assert_eq!(written.lines().count(), original.lines().count());
}
