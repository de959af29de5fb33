//! The data commands end to end through the `hbac` binary: synth → prepare → folds → score,
//! and every kind of bad input the data layer must refuse with a clear, located error.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;

use common::{fails, files, hbac, ok, synth};
use hbac_common::hms::spectrogram::{FEATURES, read_spectrogram, write_spectrogram};
use hbac_common::hms::tables::parse_train_csv;
use hbac_common::npy;

#[test]
fn synth_prepare_folds_score_roundtrip() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth(tmp.path(), 8, 5);
    for f in [
        "train.csv",
        "test.csv",
        "sample_submission.csv",
        "test_labels.csv",
    ] {
        assert!(tmp.path().join(f).is_file(), "{f} missing");
    }
    let rows = parse_train_csv(
        &std::fs::read(tmp.path().join("train.csv")).unwrap(),
        "train.csv",
    )
    .unwrap();
    let specs: std::collections::BTreeSet<i64> = rows.iter().map(|r| r.spectrogram_id).collect();
    assert_eq!(
        files(&tmp.path().join("train_spectrograms")).len(),
        specs.len()
    );
    assert_eq!(files(&tmp.path().join("train_eegs")).len(), 1);

    // Same seed, same bytes.
    let again = tempfile::tempdir().unwrap();
    synth(again.path(), 8, 5);
    assert_eq!(
        std::fs::read(tmp.path().join("train.csv")).unwrap(),
        std::fs::read(again.path().join("train.csv")).unwrap()
    );
    let one = format!(
        "train_spectrograms/{}.parquet",
        specs.iter().next().unwrap()
    );
    assert_eq!(
        std::fs::read(tmp.path().join(&one)).unwrap(),
        std::fs::read(again.path().join(&one)).unwrap()
    );

    // Prepare writes one .npy per referenced spectrogram, equal to the decoded parquet.
    let out = ok(&["prepare", "--data", &data]);
    assert!(
        out.contains(&format!("{} converted, 0 already present", specs.len() + 3)),
        "{out}"
    );
    let cache = tmp.path().join("cache");
    assert_eq!(files(&cache.join("train_spectrograms")).len(), specs.len());
    assert_eq!(files(&cache.join("test_spectrograms")).len(), 3);
    let id = specs.iter().next().unwrap();
    let parquet =
        read_spectrogram(std::fs::read(tmp.path().join(&one)).unwrap().into(), "p").unwrap();
    let cached = npy::decode(
        &std::fs::read(cache.join(format!("train_spectrograms/{id}.npy"))).unwrap(),
        "n",
    )
    .unwrap();
    assert_eq!(cached, parquet);
    assert!(cached.data.iter().all(|v| v.is_finite()));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cache.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["train"], specs.len());
    // Resumable: a second run converts nothing.
    let out = ok(&["prepare", "--data", &data]);
    assert!(
        out.contains(&format!("0 converted, {} already present", specs.len() + 3)),
        "{out}"
    );

    // Folds: every row gets a fold, patients never straddle folds.
    let folds = tmp.path().join("folds.csv");
    ok(&[
        "folds",
        "--train-csv",
        &format!("{data}/train.csv"),
        "--k",
        "3",
        "--out",
        folds.to_str().unwrap(),
    ]);
    let text = std::fs::read_to_string(&folds).unwrap();
    let mut fold_of = std::collections::HashMap::new();
    for line in text.lines().skip(1) {
        let cols: Vec<&str> = line.split(',').collect();
        let prev = fold_of.insert(cols[7].to_string(), cols[15].to_string());
        assert!(
            prev.is_none_or(|p| p == cols[15]),
            "patient {} in two folds",
            cols[7]
        );
    }
    assert_eq!(text.lines().count(), rows.len() + 1);

    // Score: uniform predictions against the hidden test votes; the last line is the metric.
    let out = ok(&[
        "score",
        "--solution",
        &format!("{data}/test_labels.csv"),
        "--submission",
        &format!("{data}/sample_submission.csv"),
    ]);
    let last = out.lines().last().unwrap();
    let value: f64 = last
        .strip_prefix("kl_divergence ")
        .unwrap()
        .parse()
        .unwrap();
    // KL to the uniform distribution lies in (0, ln 6].
    assert!(value > 0.0 && value <= 6f64.ln() + 1e-9, "{last}");
}

#[test]
fn prepare_names_every_bad_file_keeps_good_ones_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth(tmp.path(), 6, 11);
    let rows = parse_train_csv(
        &std::fs::read(tmp.path().join("train.csv")).unwrap(),
        "train.csv",
    )
    .unwrap();
    let mut ids: Vec<i64> = rows.iter().map(|r| r.spectrogram_id).collect();
    ids.dedup();
    assert!(ids.len() >= 5, "need at least 5 files, got {}", ids.len());
    let path = |id: i64| tmp.path().join(format!("train_spectrograms/{id}.parquet"));
    let backup: Vec<Vec<u8>> = ids[..4]
        .iter()
        .map(|&id| std::fs::read(path(id)).unwrap())
        .collect();
    std::fs::remove_file(path(ids[0])).unwrap(); // missing
    std::fs::write(path(ids[1]), b"").unwrap(); // empty
    std::fs::write(path(ids[2]), b"id,value\n1,2\n").unwrap(); // not parquet
    let short = write_spectrogram(&vec![1.0; 120 * FEATURES], 120).unwrap();
    std::fs::write(path(ids[3]), &short).unwrap(); // shorter than 300 rows

    let err = fails(&["prepare", "--data", &data], &[]);
    assert!(
        err.contains(&format!("4 of {} items failed", ids.len() + 3)),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{}.parquet: not found (referenced by {data}/train.csv line",
            ids[0]
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("{}.parquet: empty file", ids[1])),
        "{err}"
    );
    assert!(
        err.contains(&format!("{}.parquet: not a readable parquet file", ids[2])),
        "{err}"
    );
    assert!(
        err.contains(&format!("{}.parquet: 120 rows", ids[3])),
        "{err}"
    );
    let cache = tmp.path().join("cache");
    let cached = files(&cache.join("train_spectrograms"));
    assert_eq!(
        cached.len(),
        ids.len() - 4,
        "good files are kept: {cached:?}"
    );
    for id in &ids[..4] {
        assert!(!cached.contains(&format!("{id}.npy")));
    }
    assert!(
        !cache.join("manifest.json").exists(),
        "an incomplete cache must not look complete"
    );

    // Fix the inputs: the next run converts only the four.
    for (id, bytes) in ids[..4].iter().zip(&backup) {
        std::fs::write(path(*id), bytes).unwrap();
    }
    let out = ok(&["prepare", "--data", &data]);
    assert!(
        out.contains(&format!(
            "4 converted, {} already present",
            ids.len() - 4 + 3
        )),
        "{out}"
    );
    assert!(cache.join("manifest.json").exists());
}

#[test]
fn prepare_refuses_label_offsets_past_the_end_of_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth(tmp.path(), 3, 2);
    let csv = tmp.path().join("train.csv");
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let mut cols: Vec<String> = lines[2].split(',').map(String::from).collect();
    cols[5] = "99999.0".into();
    lines[2] = cols.join(",");
    std::fs::write(&csv, lines.join("\n") + "\n").unwrap();
    let err = fails(&["prepare", "--data", &data], &[]);
    assert!(
        err.contains("train.csv, line 3, column \"spectrogram_label_offset_seconds\""),
        "{err}"
    );
    assert!(err.contains("offset 99999 s is past the end of"), "{err}");
}

#[test]
fn bad_csvs_fail_with_located_errors_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    synth(tmp.path(), 3, 1);
    let csv = tmp.path().join("train.csv");
    let text = std::fs::read_to_string(&csv).unwrap();
    let out = tmp.path().join("folds.csv");
    let header = text.lines().next().unwrap();
    let with_line = |i: usize, f: &dyn Fn(&mut Vec<String>)| {
        let mut lines: Vec<String> = text.lines().map(String::from).collect();
        let mut cols: Vec<String> = lines[i].split(',').map(String::from).collect();
        f(&mut cols);
        lines[i] = cols.join(",");
        lines.join("\n") + "\n"
    };
    let cases: Vec<(String, &str)> = vec![
        (
            text.replacen("expert_consensus", "consensus", 1),
            "line 1, column \"expert_consensus\": missing column",
        ),
        (
            text.replacen(header, &format!("{header},note"), 1),
            "line 1, column \"note\": unexpected column",
        ),
        (
            text.replacen("eeg_id,eeg_sub_id", "eeg_sub_id,eeg_id", 1),
            "column 1 should be \"eeg_id\"",
        ),
        (
            with_line(2, &|c| c[8] = "Artifact".into()),
            "line 3, column \"expert_consensus\": unknown class \"Artifact\"",
        ),
        (
            with_line(1, &|c| c[7] = "abc".into()),
            "line 2, column \"patient_id\": not a number: \"abc\"",
        ),
        (
            with_line(1, &|c| c[9..15].iter_mut().for_each(|v| *v = "0".into())),
            "line 2: all six vote columns are 0",
        ),
        (
            with_line(2, &|c| {
                c[6] = text
                    .lines()
                    .nth(1)
                    .unwrap()
                    .split(',')
                    .nth(6)
                    .unwrap()
                    .into()
            }),
            "line 3, column \"label_id\": duplicate label_id",
        ),
        (
            text.lines().take(3).collect::<Vec<_>>().join("\n") + "\n1,2,3\n",
            "line 4: 3 fields, header has 15",
        ),
    ];
    for (bad, want) in cases {
        std::fs::write(&csv, &bad).unwrap();
        let err = fails(
            &[
                "folds",
                "--train-csv",
                csv.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
            &[],
        );
        assert!(
            err.contains("train.csv") && err.contains(want),
            "want {want:?} in {err}"
        );
        assert!(!out.exists(), "no output on error");
    }
    std::fs::write(&csv, &text).unwrap();
    let err = fails(
        &[
            "folds",
            "--train-csv",
            tmp.path().join("nope.csv").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert!(err.contains("nope.csv: not found"), "{err}");
    let err = fails(
        &[
            "folds",
            "--train-csv",
            csv.to_str().unwrap(),
            "--k",
            "5",
            "--seed",
            "3",
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        err.contains("Setting a random_state has no effect"),
        "{err}"
    );
}

#[test]
fn score_reports_errors_and_exits_nonzero() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth(tmp.path(), 2, 3);
    let sub = tmp.path().join("sub.csv");
    let sample = std::fs::read_to_string(tmp.path().join("sample_submission.csv")).unwrap();
    let first_data_line = sample.lines().nth(1).unwrap().to_string();
    std::fs::write(&sub, sample.replace(&first_data_line, "")).unwrap();
    let err = fails(
        &[
            "score",
            "--solution",
            &format!("{data}/test_labels.csv"),
            "--submission",
            sub.to_str().unwrap(),
        ],
        &[],
    );
    assert!(err.contains("sub.csv") && err.contains("missing"), "{err}");
    std::fs::write(&sub, sample.replacen("0.16666666666666666", "NaN", 1)).unwrap();
    let err = fails(
        &[
            "score",
            "--solution",
            &format!("{data}/test_labels.csv"),
            "--submission",
            sub.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        err.contains("sub.csv, line 2, column \"seizure_vote\"") && err.contains("finite"),
        "{err}"
    );
}

#[test]
fn mistyped_and_unreachable_urls_fail_fast_naming_the_url() {
    let err = fails(&["prepare", "--data", "s4://bucket/hms"], &[]);
    assert!(
        err.contains("s4://bucket/hms") && err.contains("unsupported scheme"),
        "{err}"
    );
    let err = fails(&["prepare", "--data", "s3:/bucket/hms"], &[]);
    assert!(err.contains("s3:/bucket/hms"), "{err}");
    // A closed port on loopback: connection refused, reported after a few quick retries.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let start = std::time::Instant::now();
    let err = fails(
        &["prepare", "--data", "s3://hms-bucket/data"],
        &s3_env(&endpoint),
    );
    assert!(err.contains("s3://hms-bucket/data/train.csv"), "{err}");
    assert!(start.elapsed().as_secs() < 60, "took {:?}", start.elapsed());
}

#[test]
fn wrong_credentials_are_reported_as_access_denied() {
    // A loopback S3 stand-in that refuses every request the way S3 refuses a bad key.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().take(20) {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 8192];
            let _ = s.read(&mut buf);
            let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>InvalidAccessKeyId</Code><Message>The AWS Access Key Id you provided does not exist in our records.</Message></Error>";
            let _ = write!(
                s,
                "HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let err = fails(
        &["prepare", "--data", "s3://hms-bucket/data"],
        &s3_env(&endpoint),
    );
    assert!(
        err.contains("s3://hms-bucket/data/train.csv") && err.contains("access denied"),
        "{err}"
    );
    assert!(err.contains("AWS_ACCESS_KEY_ID"), "{err}");
}

fn s3_env(endpoint: &str) -> Vec<(&'static str, &str)> {
    vec![
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
        ("AWS_SECRET_ACCESS_KEY", "wrong-secret"),
        ("AWS_REGION", "us-east-1"),
    ]
}

#[test]
fn interrupted_synth_output_never_looks_complete() {
    // train.csv is written last: a data set without it is refused by prepare with a clear error.
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().to_str().unwrap();
    std::fs::create_dir_all(tmp.path().join("train_spectrograms")).unwrap();
    let err = fails(&["prepare", "--data", data], &[]);
    assert!(err.contains("train.csv: not found"), "{err}");
    let out = hbac(
        &[
            "prepare",
            "--data",
            tmp.path().join("missing-dir").to_str().unwrap(),
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing-dir: not found"));
}
