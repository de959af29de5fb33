//! The whole pipeline on a real S3-compatible server: `hbac synth` writes the data set to
//! `s3://`, `hbac local` reads it, builds the `.npy` cache, journals and writes every output
//! there, and `hbac score` grades the submission straight from the bucket. Then the failure
//! cases: a wrong secret key, an unknown access key and an unreachable endpoint must each stop
//! with a clear error naming the URL, leaving no result behind.
//!
//! The server comes from `.ci/run` (s3s-fs, which checks request signatures), announced by
//! `HBAC_TEST_S3_ENDPOINT`, `HBAC_TEST_S3_BUCKET`, `HBAC_TEST_S3_ACCESS_KEY` and
//! `HBAC_TEST_S3_SECRET_KEY`. Without them the test says so and passes, except under CI (`CI`
//! set), where it fails.

mod common;

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use common::{fails, ok_with};
use hbac_common::storage::Store;

struct Server {
    endpoint: String,
    bucket: String,
    access_key: String,
    secret_key: String,
}

fn server() -> Option<Server> {
    let var = |k: &str| std::env::var(k).ok();
    let found = (|| {
        Some(Server {
            endpoint: var("HBAC_TEST_S3_ENDPOINT")?,
            bucket: var("HBAC_TEST_S3_BUCKET")?,
            access_key: var("HBAC_TEST_S3_ACCESS_KEY")?,
            secret_key: var("HBAC_TEST_S3_SECRET_KEY")?,
        })
    })();
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "under CI the S3 server must be running (HBAC_TEST_S3_* unset; see .ci/run)"
        );
        eprintln!(
            "skipped: no S3 server (set HBAC_TEST_S3_ENDPOINT, _BUCKET, _ACCESS_KEY, _SECRET_KEY)"
        );
    }
    found
}

impl Server {
    fn env<'a>(&'a self, access_key: &'a str, secret_key: &'a str) -> Vec<(&'a str, &'a str)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", access_key),
            ("AWS_SECRET_ACCESS_KEY", secret_key),
            ("AWS_REGION", "us-east-1"),
        ]
    }

    fn good(&self) -> Vec<(&str, &str)> {
        self.env(&self.access_key, &self.secret_key)
    }
}

#[test]
fn the_whole_pipeline_runs_on_s3_and_bad_credentials_fail_clearly() {
    let Some(s3) = server() else { return };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let root = format!("s3://{}/test-{}-{nanos}", s3.bucket, std::process::id());
    let data = format!("{root}/data");
    let run = format!("{root}/run");
    let good = s3.good();

    ok_with(
        &["synth", "--out", &data, "--patients", "10", "--test", "4"],
        &good,
    );
    let stdout = ok_with(
        &[
            "local",
            "--data",
            &data,
            "--out",
            &run,
            "--quick",
            "--k",
            "2",
            "--epochs",
            "1",
            "--workers",
            "2",
        ],
        &good,
    );
    assert!(stdout.contains("cv ensemble: kaggle kl"), "{stdout}");
    // The submission is read back from the bucket and graded against the hidden test votes.
    let score = ok_with(
        &[
            "score",
            "--solution",
            &format!("{data}/test_labels.csv"),
            "--submission",
            &format!("{run}/submission.csv"),
        ],
        &good,
    );
    let kl: f64 = score
        .lines()
        .last()
        .and_then(|l| l.strip_prefix("kl_divergence "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(kl.is_finite() && kl > 0.0, "{score}");

    // Everything else landed in the bucket too: the journal (every job once), the report, the
    // per-job folders and the shared .npy cache.
    // SAFETY: this test binary holds one test, so no other thread reads the environment.
    unsafe {
        for (k, v) in &good {
            std::env::set_var(k, v);
        }
    }
    let tokio = tokio::runtime::Runtime::new().unwrap();
    tokio.block_on(async {
        let out = Store::open(&run).unwrap();
        let journal = hbac_coordinator::journal::read(&out)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(journal.done().len(), 4, "{journal:?}");
        assert!(
            journal.owner.released,
            "a finished run lets go of its journal"
        );
        // The journal's fencing rests on conditional creates: the server must refuse a second
        // create of the same key (If-None-Match: *), not overwrite it.
        assert!(out.put_new("fence-probe", "first").await.unwrap());
        assert!(!out.put_new("fence-probe", "second").await.unwrap());
        assert_eq!(&out.get("fence-probe").await.unwrap()[..], b"first");
        let report: serde_json::Value =
            serde_json::from_slice(&out.get("report.json").await.unwrap()).unwrap();
        assert!(report["cv"].as_f64().unwrap().is_finite(), "{report}");
        for key in ["oof.csv", "cv.svg", "submission-mobilenetv3-large.csv"] {
            assert!(out.exists(key).await.unwrap(), "{run}/{key} missing");
        }
        let jobs = out.list("jobs").await.unwrap();
        assert!(
            jobs.iter().any(|(k, _)| k.ends_with("checkpoint.mpk")),
            "{jobs:?}"
        );
        let cache = Store::open(&format!("{data}/cache")).unwrap();
        assert!(cache.exists("manifest.json").await.unwrap());
        let npy = cache.list("train_spectrograms").await.unwrap();
        assert!(!npy.is_empty() && npy.iter().all(|(k, n)| k.ends_with(".npy") && *n > 0));
    });

    // A wrong secret key: the server refuses the signature; hbac names the URL and stops.
    let wrong_secret = s3.env(&s3.access_key, "not-the-secret");
    let err = fails(
        &["synth", "--out", &format!("{root}/denied")],
        &wrong_secret,
    );
    assert!(
        err.contains("access denied") && err.contains(&root),
        "{err}"
    );
    let err = fails(
        &[
            "local",
            "--data",
            &data,
            "--out",
            &format!("{root}/denied-run"),
            "--quick",
        ],
        &wrong_secret,
    );
    assert!(
        err.contains("access denied") && err.contains(&root),
        "{err}"
    );
    // An access key the server does not know.
    let unknown = s3.env("nobody", &s3.secret_key);
    let folds_out = format!("{root}/folds.csv");
    let folds = [
        "folds",
        "--train-csv",
        &format!("{data}/train.csv"),
        "--k",
        "2",
        "--out",
        &folds_out,
    ];
    let err = fails(&folds, &unknown);
    assert!(
        err.contains("access denied") && err.contains("train.csv"),
        "{err}"
    );
    tokio.block_on(async {
        let denied = Store::open(&format!("{root}/denied-run")).unwrap();
        assert!(
            denied.list("").await.unwrap().is_empty(),
            "a refused run wrote output"
        );
    });

    // An endpoint nobody listens on: a few quick retries, then an error naming the URL.
    let started = Instant::now();
    let dead = [
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
        ("AWS_ACCESS_KEY_ID", s3.access_key.as_str()),
        ("AWS_SECRET_ACCESS_KEY", s3.secret_key.as_str()),
        ("AWS_REGION", "us-east-1"),
    ];
    let err = fails(&folds, &dead);
    assert!(err.contains("train.csv"), "{err}");
    assert!(
        started.elapsed().as_secs() < 60,
        "gave up only after {:?}",
        started.elapsed()
    );
}
