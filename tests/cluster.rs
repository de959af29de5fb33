//! The distributed runner in one process: a coordinator on a loopback port (port 0) and
//! in-process workers training reduced models over real gRPC; a coordinator as a child process
//! for the crash-and-restart case. Waits poll with deadlines; nothing sleeps a fixed time.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hbac::backend::DeviceKind;
use hbac::local;
use hbac_common::folds::KFold;
use hbac_common::hms::tables::parse_prob_csv;
use hbac_common::preprocess::{LabelMode, SampleSelection};
use hbac_common::proto::wire::coordinator_client::CoordinatorClient;
use hbac_common::proto::wire::{JobPhase, RunPhase};
use hbac_common::proto::{Backend, wire};
use hbac_coordinator::journal::{self, Snapshot};
use hbac_coordinator::plan::Plan;
use hbac_coordinator::server::{self, Config, Handle};
use hbac_coordinator::state::Settings;
use hbac_coordinator::view::RunView;
use hbac_worker::client::{self, Ended, WorkerError, WorkerOptions};
use hbac_worker::executor::Executor;
use hbac_worker::model::{Arch, ModelConfig};
use hbac_worker::train::trainer::TrainConfig;
use tokio::sync::watch;

const TOKEN: &str = "s3cret-test-token";

fn train_config(arch: Arch) -> serde_json::Value {
    train_config_epochs(arch, 1)
}

fn train_config_epochs(arch: Arch, epochs: usize) -> serde_json::Value {
    let model = ModelConfig::new(arch)
        .with_width(0.25)
        .with_downsample(8)
        .with_bn_momentum(Some(0.9));
    let cfg = TrainConfig::new(model)
        .with_epochs(epochs)
        .with_batch_size(16)
        .with_loader_threads(1);
    serde_json::to_value(&cfg).unwrap()
}

fn plan(data: &str, out: &Path, k: usize) -> Plan {
    Plan {
        data: data.to_string(),
        cache: format!("{data}/cache"),
        out: out.display().to_string(),
        kfold: KFold {
            k,
            shuffle: true,
            seed: Some(42),
        },
        selection: SampleSelection::FirstPerSpectrogram,
        labels: LabelMode::Votes,
        archs: [Arch::MobileNetV3Large, Arch::EfficientNetV2B2]
            .iter()
            .map(|a| (a.name().to_string(), train_config(*a)))
            .collect(),
        io_concurrency: 4,
    }
}

fn settings(ttl_ms: u64, grace_ms: u64) -> Settings {
    Settings {
        lease_ttl: Duration::from_millis(ttl_ms),
        max_attempts: 3,
        max_disruptions: 20,
        job_timeout: Duration::from_secs(600),
        stall_timeout: Duration::from_secs(600),
        worker_grace: Duration::from_millis(grace_ms),
    }
}

async fn start(plan: Plan, settings: Settings) -> Handle {
    local::start_coordinator(Config {
        plan,
        settings,
        token: TOKEN.into(),
        tls: None,
        http: None,
        linger: Duration::from_millis(1500),
        id: "test-coordinator".into(),
    })
    .await
    .unwrap()
}

fn executor() -> Arc<dyn Executor> {
    hbac::backend::executor(DeviceKind::Cpu).unwrap()
}

fn options(addr: &str, id: &str, token: &str) -> WorkerOptions {
    WorkerOptions {
        coordinator: addr.to_string(),
        token: token.to_string(),
        worker_id: id.to_string(),
        slots: 1,
        backend: Backend::Cpu,
        tls: None,
        patience: local::PATIENCE,
        storage_roots: vec![],
    }
}

fn spawn_worker(addr: &str, id: &str) -> local::WorkerTask {
    // A shutdown signal that never fires: the sender lives as long as the run.
    let (tx, rx) = watch::channel(false);
    std::mem::forget(tx);
    local::spawn_worker(options(addr, id, TOKEN), executor(), rx)
}

/// Starts worker "victim", kills it (as a dead process would stop) once it holds a job that
/// has reported `epochs` epochs, and starts worker "survivor": returns the victim's job and
/// the survivor.
async fn kill_the_victim(
    handle: &Handle,
    epochs: usize,
) -> (String, tokio::task::JoinHandle<Result<Ended, WorkerError>>) {
    let addr = format!("http://{}", handle.addr);
    let victim = spawn_worker(&addr, "victim");
    let shared = handle.shared.clone();
    let held = |s: &RunView| {
        s.jobs
            .iter()
            .find(|j| j.phase == JobPhase::Leased && j.worker == "victim" && j.epoch >= epochs)
            .map(|j| j.id.clone())
    };
    until(120, "the victim to hold a job", || {
        held(&shared.view()).is_some()
    })
    .await;
    let job = held(&shared.view()).expect("held");
    victim.abort();
    (job, spawn_worker(&addr, "survivor"))
}

/// Polls `f` every 50 ms until it holds, failing after `secs`.
async fn until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The latest journal snapshot in `out`, if one is there.
fn snapshot(out: &Path) -> Option<Snapshot> {
    let dir = out.join(journal::DIR);
    let latest = std::fs::read_dir(&dir)
        .ok()?
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".json")?.parse::<u64>().ok()?;
            Some(name)
        })
        .max()?;
    serde_json::from_slice(&std::fs::read(dir.join(latest)).ok()?).ok()
}

fn journal(out: &Path) -> Snapshot {
    snapshot(out).expect("a journal")
}

/// Attempt directories a job's workers created.
fn attempts(out: &Path, job: &str) -> usize {
    std::fs::read_dir(out.join("jobs").join(job))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn rows(path: &Path) -> HashMap<i64, [f64; 6]> {
    parse_prob_csv(&std::fs::read(path).unwrap(), "x")
        .unwrap()
        .into_iter()
        .map(|r| (r.eeg_id, r.values))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_workers_run_every_job_once_and_ensemble_the_folds() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::synth(&tmp.path().join("data"), 12, 7);
    let out = tmp.path().join("run");
    let handle = start(plan(&data, &out, 3), settings(5_000, 60_000)).await;
    let addr = format!("http://{}", handle.addr);
    // Before any worker: every job pending, with the epochs its configuration plans.
    let before = handle.shared.view();
    assert!(
        before
            .jobs
            .iter()
            .all(|j| j.phase == JobPhase::Pending && j.epochs == 1)
    );
    let workers: Vec<_> = (0..3)
        .map(|i| spawn_worker(&addr, &format!("w{i}")))
        .collect();
    let shared = handle.shared.clone();
    let report = handle.wait().await.unwrap();
    for w in workers {
        assert_eq!(w.await.unwrap().unwrap(), Ended::RunOver);
    }
    // The status says finished only with the results written, and shows each job's figures.
    let status = shared.view();
    assert_eq!(status.phase, RunPhase::Finished);
    assert_eq!(status.results.as_ref().map(|r| r.cv), Some(report.cv));
    for j in &status.jobs {
        assert_eq!(
            (j.phase, j.epoch, j.epochs),
            (JobPhase::Done, 1, 1),
            "{}",
            j.id
        );
        assert!(j.train_kl.is_some() && j.valid_kl.is_some(), "{}", j.id);
    }
    // Every job done exactly once, by one attempt.
    let j = journal(&out);
    assert_eq!(j.done().len(), 6);
    for (job, r) in &j.done() {
        assert_eq!(r.attempt, 1, "{job}");
        assert_eq!(attempts(&out, job), 1, "{job}");
    }
    assert_eq!(report.jobs.len(), 6);
    assert!(report.cv.is_finite() && report.cv > 0.0);
    // Each architecture's submission is the mean of its folds' test predictions, and the
    // ensemble is their weighted mean.
    let mut per_arch = Vec::new();
    for arch in ["mobilenetv3-large", "efficientnetv2-b2"] {
        let folds: Vec<_> = (0..3)
            .map(|f| {
                rows(&Path::new(&j.done()[&format!("{arch}-fold{f}")].out_url).join("test.csv"))
            })
            .collect();
        let sub = rows(&out.join(format!("submission-{arch}.csv")));
        assert_eq!(sub.len(), folds[0].len());
        for (id, p) in &sub {
            for c in 0..6 {
                let mean = folds.iter().map(|f| f[id][c]).sum::<f64>() / 3.0;
                assert!((p[c] - mean).abs() < 1e-9, "{arch} {id}");
            }
        }
        per_arch.push(sub);
    }
    let sub = rows(&out.join("submission.csv"));
    for (id, p) in &sub {
        for c in 0..6 {
            let blend =
                report.weights[0] * per_arch[0][id][c] + report.weights[1] * per_arch[1][id][c];
            // The blend is renormalised; rows of float32 probabilities sum to 1 within ~1e-7.
            assert!((p[c] - blend).abs() < 1e-6, "{id}: {} vs {blend}", p[c]);
        }
    }
    let svg = std::fs::read_to_string(out.join("cv.svg")).unwrap();
    // Small multiples: a panel per architecture, a legend entry per fold.
    for text in [
        "mobilenetv3-large",
        "efficientnetv2-b2",
        "fold 2",
        "best epoch",
    ] {
        assert!(svg.contains(text), "cv.svg lacks {text:?}");
    }
    assert_eq!(svg.matches("fold 2").count(), 2, "fold 2 in both panels");
    let report_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report_json["jobs"].as_array().unwrap().len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_worker_s_job_finishes_elsewhere_with_one_result() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::synth(&tmp.path().join("data"), 12, 7);
    let out = tmp.path().join("run");
    let handle = start(plan(&data, &out, 2), settings(1_000, 60_000)).await;
    let (job, survivor) = kill_the_victim(&handle, 0).await;
    let report = handle.wait().await.unwrap();
    survivor.await.unwrap().unwrap();
    let j = journal(&out);
    assert_eq!(j.done().len(), 4);
    let r = &j.done()[&job];
    assert_eq!((r.worker.as_str(), r.attempt), ("survivor", 2), "{job}");
    assert_eq!(report.jobs.iter().filter(|l| l.job == job).count(), 1);
}

/// A job id, its `oof.csv` and `test.csv`, and its (train, valid) KL per epoch.
type JobOutputs = (String, Vec<u8>, Vec<u8>, Vec<(f64, f64)>);

/// What must not depend on whether a job's training was interrupted: its out-of-fold and test
/// predictions (byte for byte) and every epoch's train and validation KL.
fn outputs(out: &Path) -> Vec<JobOutputs> {
    let mut v: Vec<_> = journal(out)
        .done()
        .into_iter()
        .map(|(job, r)| {
            let dir = Path::new(&r.out_url);
            let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
            let s: serde_json::Value = serde_json::from_str(&r.summary_json).unwrap();
            let losses = s["history"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    (
                        e["train_kl"].as_f64().unwrap(),
                        e["valid_kl"].as_f64().unwrap(),
                    )
                })
                .collect();
            (job, read("oof.csv"), read("test.csv"), losses)
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_killed_mid_training_resumes_from_its_last_epoch_bit_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::synth(&tmp.path().join("data"), 12, 7);
    let three_epochs = |out: &Path| {
        let mut p = plan(&data, out, 2);
        p.archs = vec![(
            Arch::MobileNetV3Large.name().to_string(),
            train_config_epochs(Arch::MobileNetV3Large, 3),
        )];
        p
    };
    // The reference: one worker, nothing interrupted.
    let calm = tmp.path().join("calm");
    let handle = start(three_epochs(&calm), settings(1_000, 60_000)).await;
    let worker = spawn_worker(&format!("http://{}", handle.addr), "w");
    handle.wait().await.unwrap();
    worker.await.unwrap().unwrap();

    // The same run, its first job's worker killed once that job has saved an epoch.
    let out = tmp.path().join("run");
    let handle = start(three_epochs(&out), settings(1_000, 60_000)).await;
    let (job, survivor) = kill_the_victim(&handle, 1).await;
    handle.wait().await.unwrap();
    survivor.await.unwrap().unwrap();
    let j = journal(&out);
    let entry = &j.jobs[&job];
    assert_eq!(
        (entry.attempts, entry.disruptions, entry.failures),
        (2, 1, 0)
    );
    // The second attempt trained only the epochs the first had not saved.
    let r = &j.done()[&job];
    assert_eq!((r.worker.as_str(), r.attempt), ("survivor", 2));
    let summary: serde_json::Value = serde_json::from_str(&r.summary_json).unwrap();
    assert_eq!(summary["history"].as_array().unwrap().len(), 3);
    let saved = entry.saved.as_ref().unwrap();
    assert_eq!(saved.epochs, 3, "{saved:?}");
    let first_attempt = out.join("jobs").join(&job);
    let resumed_at = std::fs::read_dir(&first_attempt)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path() != Path::new(&r.out_url))
        .flat_map(|e| std::fs::read_dir(e.path().join("state")).unwrap())
        .count();
    assert!(resumed_at >= 1, "the killed attempt saved its state");
    // Bit-identical to the uninterrupted run: predictions and losses.
    assert_eq!(outputs(&out), outputs(&calm));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_coordinator_resumes_without_rerunning_finished_jobs() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::synth(&tmp.path().join("data"), 12, 7);
    let out = tmp.path().join("run");
    let port = common::free_port();
    let coordinator = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_hbac"))
            .args(common::coordinator_args(&data, &out, port, 2, 1))
            .args(["--linger", "1"])
            .env("HBAC_TOKEN", TOKEN)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut first = coordinator();
    let worker = spawn_worker(&format!("http://127.0.0.1:{port}"), "w");
    until(120, "a first accepted result", || {
        snapshot(&out).is_some_and(|j| !j.done().is_empty())
    })
    .await;
    first.kill().unwrap();
    first.wait().unwrap();
    let before = journal(&out).done();
    let mut second = coordinator();
    let status = tokio::task::spawn_blocking(move || second.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "restarted coordinator failed");
    assert_eq!(worker.await.unwrap().unwrap(), Ended::RunOver);
    let after = journal(&out).done();
    assert_eq!(after.len(), 2);
    for (job, r) in &before {
        assert_eq!(&after[job], r, "{job} was not re-run");
    }
    // The job in flight at the crash was adopted, not restarted: one attempt for every job.
    for (job, r) in &after {
        assert_eq!((attempts(&out, job), r.attempt), (1, 1), "{job}");
    }
    assert!(out.join("submission.csv").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_coordinator_on_an_owned_run_leases_nothing_and_exits_with_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::synth(&tmp.path().join("data"), 12, 7);
    let out = tmp.path().join("run");
    let first = start(plan(&data, &out, 2), settings(2_000, 60_000)).await;
    let second = std::process::Command::new(env!("CARGO_BIN_EXE_hbac"))
        .args([
            "coordinator",
            "--data",
            &data,
            "--out",
            out.to_str().unwrap(),
        ])
        .args(["--listen", "127.0.0.1:0", "--k", "2", "--lease-ttl", "2"])
        .env("HBAC_TOKEN", TOKEN)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("is owned by coordinator \"test-coordinator\""),
        "{stderr}"
    );
    // It claimed no generation: the first still owns the run, and all its jobs are pending.
    assert!(!out.join("journal/owner-000002").exists());
    let status = first.shared.view();
    assert_eq!(status.phase, RunPhase::Running);
    assert!(status.jobs.iter().all(|j| j.phase == JobPhase::Pending));
    let latest = journal(&out);
    assert_eq!(
        (latest.owner.id.as_str(), latest.owner.generation),
        ("test-coordinator", 1)
    );
    first.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_workers_the_run_fails_after_the_grace_period() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::synth(&tmp.path().join("data"), 6, 7);
    let out = tmp.path().join("run");
    let handle = start(plan(&data, &out, 2), settings(1_000, 800)).await;
    let started = Instant::now();
    let err = handle.wait().await.unwrap_err().to_string();
    assert!(err.contains("no worker has been connected"), "{err}");
    assert!(err.contains("4 job(s) not done"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_or_protocol_version_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::synth(&tmp.path().join("data"), 6, 7);
    let out = tmp.path().join("run");
    let handle = start(plan(&data, &out, 2), settings(1_000, 60_000)).await;
    let addr = format!("http://{}", handle.addr);
    let (_tx, rx) = watch::channel(false);
    let err = client::run(options(&addr, "intruder", "wrong"), executor(), rx)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing or wrong worker token"), "{err}");

    let mut c = client::connect(&addr, TOKEN, None).unwrap();
    let err = c
        .register(wire::RegisterRequest {
            protocol_version: 99,
            worker_id: "old".into(),
            gpus: 1,
            backend: "cpu".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(
        err.message().contains("protocol version 99"),
        "{}",
        err.message()
    );
    // Health is served without a token.
    let mut raw = CoordinatorClient::connect(addr.clone()).await.unwrap();
    let err = raw.status(wire::StatusRequest {}).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    handle.abort();
}

/// A worker process confined to its storage roots refuses an order whose pretrained weights
/// lie elsewhere, without reading them; an order it cannot train (a MixUp alpha of -1) fails
/// at once, not retried, with the field named, instead of panicking on every worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_process_refuses_orders_outside_its_roots_and_invalid_orders() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::synth(&tmp.path().join("data"), 6, 7);
    let secret = tmp.path().join("elsewhere/weights.pth");
    std::fs::create_dir_all(secret.parent().unwrap()).unwrap();
    std::fs::write(&secret, b"not for this worker").unwrap();
    let worker = |addr: &str, out: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_hbac"))
            .args(["worker", "--coordinator", &format!("http://{addr}")])
            .args(["--id", "confined", "--patience", "10", "--storage-root"])
            .arg(format!("{data},{}", out.display()))
            .env("HBAC_TOKEN", TOKEN)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let stderr_of = |mut child: std::process::Child| {
        tokio::task::spawn_blocking(move || {
            let _ = child.wait();
            let mut text = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut text).unwrap();
            text
        })
    };

    let out = tmp.path().join("run-roots");
    let mut confined = plan(&data, &out, 2);
    confined.archs.truncate(1);
    confined.archs[0].1["pretrained"] = secret.display().to_string().into();
    let handle = start(confined, settings(5_000, 60_000)).await;
    let child = worker(&handle.addr.to_string(), &out);
    let err = handle.wait().await.unwrap_err().to_string();
    let stderr = stderr_of(child).await.unwrap();
    let path = secret.display().to_string();
    assert!(
        err.contains("outside its storage roots") && err.contains(&path),
        "{err}"
    );
    // Every attempt was refused before anything was read.
    let failures: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("job failed"))
        .collect();
    assert!(!failures.is_empty(), "{stderr}");
    assert!(
        failures
            .iter()
            .all(|l| l.contains("outside its storage roots")),
        "{stderr}"
    );

    let out = tmp.path().join("run-invalid");
    let mut invalid = plan(&data, &out, 2);
    invalid.archs.truncate(1);
    invalid.archs[0].1["augment"]["mixup_alpha"] = (-1.0).into();
    let handle = start(invalid, settings(5_000, 60_000)).await;
    let shared = handle.shared.clone();
    let child = worker(&handle.addr.to_string(), &out);
    let err = handle.wait().await.unwrap_err().to_string();
    let stderr = stderr_of(child).await.unwrap();
    assert!(err.contains("train.augment.mixup_alpha"), "{err}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Refused as not retryable: the failing job ran one attempt, not the budget of three.
    let attempts: Vec<u32> = shared.view().jobs.iter().map(|j| j.attempt).collect();
    assert!(attempts.iter().all(|a| *a <= 1), "{attempts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_input_fails_the_run_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::synth(&tmp.path().join("data"), 6, 7);
    let spectra = tmp.path().join("data/train_spectrograms");
    let victim = std::fs::read_dir(&spectra)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::write(&victim, b"not parquet").unwrap();
    let out = tmp.path().join("run");
    let handle = start(plan(&data, &out, 2), settings(2_000, 60_000)).await;
    let worker = spawn_worker(&format!("http://{}", handle.addr), "w");
    let err = handle.wait().await.unwrap_err().to_string();
    let name = victim.file_name().unwrap().to_str().unwrap();
    assert!(err.contains(name), "{err}");
    // The worker is told to stop and exits cleanly.
    assert_eq!(worker.await.unwrap().unwrap(), Ended::RunOver);
    // A failed run leaves no submission.
    assert!(!out.join("submission.csv").exists());
}

/// A CA, a server certificate for 127.0.0.1 / localhost and a client certificate, in PEM.
struct Pki {
    ca: String,
    server: (String, String),
    client: (String, String),
}

fn pki(name: &str) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} CA"));
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf = |sans: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(sans)
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    Pki {
        ca: ca.pem(),
        server: leaf(vec!["localhost".into(), "127.0.0.1".into()]),
        client: leaf(vec![format!("{name}-worker")]),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mutual_tls_runs_the_job_and_refuses_clients_without_a_trusted_certificate() {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};
    let good = pki("cluster");
    let rogue = pki("rogue");
    let tmp = tempfile::tempdir().unwrap();
    let data = common::synth(&tmp.path().join("data"), 6, 7);
    let out = tmp.path().join("run");
    let mut plan = plan(&data, &out, 2);
    plan.archs.truncate(1);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let handle = server::start(
        Config {
            plan,
            settings: settings(5_000, 60_000),
            token: TOKEN.into(),
            tls: Some(
                ServerTlsConfig::new()
                    .identity(Identity::from_pem(&good.server.0, &good.server.1))
                    .client_ca_root(Certificate::from_pem(&good.ca)),
            ),
            http: None,
            linger: Duration::from_millis(1500),
            id: "test-coordinator".into(),
        },
        listener,
    )
    .await
    .unwrap();
    let https = format!("https://{}", handle.addr);
    let tls = |ca: &str, client: Option<&(String, String)>| {
        let t = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
        match client {
            Some((cert, key)) => t.identity(Identity::from_pem(cert, key)),
            None => t,
        }
    };
    let status = |tls: Option<ClientTlsConfig>, url: String| async move {
        let mut c = client::connect(&url, TOKEN, tls).unwrap();
        c.status(wire::StatusRequest {}).await
    };

    // Refused: plain text, no client certificate, a client certificate from another CA, and a
    // server the client does not trust.
    let addr = handle.addr;
    assert!(status(None, format!("http://{addr}")).await.is_err());
    assert!(
        status(Some(tls(&good.ca, None)), https.clone())
            .await
            .is_err()
    );
    let other = Some(tls(&good.ca, Some(&rogue.client)));
    assert!(status(other, https.clone()).await.is_err());
    let untrusted = Some(tls(&rogue.ca, Some(&good.client)));
    let err = status(untrusted, https.clone()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");

    // Accepted: the status call and a whole run from a worker with a trusted certificate.
    let ok = status(Some(tls(&good.ca, Some(&good.client))), https.clone()).await;
    assert_eq!(ok.unwrap().into_inner().jobs.len(), 2);
    let mut opts = options(&https, "tls-worker", TOKEN);
    opts.tls = Some(tls(&good.ca, Some(&good.client)));
    let (_tx, rx) = watch::channel(false);
    let worker = tokio::spawn(client::run(opts, executor(), rx));
    handle.wait().await.unwrap();
    assert_eq!(worker.await.unwrap().unwrap(), Ended::RunOver);
    assert_eq!(journal(&out).done().len(), 2);
    assert!(out.join("submission.csv").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_hands_the_lease_back_and_the_worker_exits_non_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::synth(&tmp.path().join("data"), 6, 7);
    let out = tmp.path().join("run");
    let mut plan = plan(&data, &out, 2);
    plan.archs.truncate(1);
    plan.archs[0].1["epochs"] = 200.into(); // still training when the signal comes
    // A lease lifetime far beyond the test: only a hand-back can re-queue the job.
    let handle = start(plan, settings(120_000, 60_000)).await;
    let mut worker = std::process::Command::new(env!("CARGO_BIN_EXE_hbac"))
        .args([
            "worker",
            "--coordinator",
            &format!("http://{}", handle.addr),
        ])
        .args(["--id", "term", "--log-format", "json"])
        .env("HBAC_TOKEN", TOKEN)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let shared = handle.shared.clone();
    let training = || {
        shared
            .view()
            .jobs
            .iter()
            .any(|j| j.worker == "term" && j.epoch >= 1)
    };
    until(120, "the worker's first epoch", training).await;
    let term = std::process::Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let exited = tokio::task::spawn_blocking(move || {
        let status = worker.wait().unwrap();
        let mut stderr = String::new();
        std::io::Read::read_to_string(worker.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        (status, stderr)
    });
    let (status, stderr) = tokio::time::timeout(Duration::from_secs(60), exited)
        .await
        .expect("the worker stops within a minute of SIGTERM")
        .unwrap();
    assert!(!status.success(), "a signalled worker must not exit 0");
    assert!(stderr.contains("handed back"), "{stderr}");
    // The job is pending again at once (the lease has not expired), with its attempt counted.
    let s = handle.shared.view();
    let job = s
        .jobs
        .iter()
        .find(|j| j.attempt == 1)
        .expect("the leased job");
    assert_eq!(job.phase, JobPhase::Pending, "{job:?}");
    assert_eq!(handle.shared.lock().counters().lease_expiries, 0);
    handle.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drained_worker_finishes_its_job_then_leaves_the_rest_to_others() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::synth(&tmp.path().join("data"), 8, 7);
    let out = tmp.path().join("run");
    let mut plan = plan(&data, &out, 3);
    plan.archs.truncate(1);
    plan.archs[0].1["epochs"] = 4.into();
    let handle = start(plan, settings(60_000, 60_000)).await;
    let addr = format!("http://{}", handle.addr);
    let drained = spawn_worker(&addr, "drained");
    let shared = handle.shared.clone();
    until(60, "a job leased to the worker", || {
        shared.view().jobs.iter().any(|j| j.worker == "drained")
    })
    .await;
    let mut admin = client::connect(&addr, TOKEN, None).unwrap();
    let r = admin
        .drain(wire::DrainRequest {
            worker_id: "drained".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.sessions, r.jobs), (1, 1));
    let err = admin
        .drain(wire::DrainRequest {
            worker_id: "nobody".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(err.message().contains("nobody"), "{}", err.message());
    // The drained worker ends after finishing the job it held, which counts.
    let ended = tokio::time::timeout(Duration::from_secs(120), drained)
        .await
        .unwrap();
    assert_eq!(ended.unwrap().unwrap(), Ended::Drained);
    let done_by_drained = || {
        journal(&out)
            .done()
            .values()
            .filter(|r| r.worker == "drained")
            .count()
    };
    assert_eq!(done_by_drained(), 1);
    // Another worker does the rest; the drained one took nothing more.
    let other = spawn_worker(&addr, "other");
    let report = handle.wait().await.unwrap();
    assert_eq!(other.await.unwrap().unwrap(), Ended::RunOver);
    assert_eq!(report.jobs.len(), 3);
    assert_eq!(done_by_drained(), 1);
    assert_eq!(journal(&out).done().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_exits_with_its_own_code() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::synth(&tmp.path().join("data"), 6, 7);
    let out = tmp.path().join("run").display().to_string();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_hbac"))
            .args(["coordinator", "--data", &data, "--out", &out, "--k", "2"])
            .args([
                "--listen",
                "127.0.0.1:0",
                "--worker-grace",
                "0.5",
                "--linger",
                "0",
            ])
            .env("HBAC_TOKEN", TOKEN)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(hbac::cli::RUN_FAILED_EXIT_CODE.into()),
        "{stderr}"
    );
    assert!(stderr.contains("no worker has been connected"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hbac_status_reaches_a_mutual_tls_coordinator_with_its_certificate() {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let pki = pki("cli");
    let tmp = tempfile::tempdir().unwrap();
    let data = common::synth(&tmp.path().join("data"), 6, 7);
    let out = tmp.path().join("run");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let handle = server::start(
        Config {
            plan: plan(&data, &out, 2),
            settings: settings(5_000, 60_000),
            token: TOKEN.into(),
            tls: Some(
                ServerTlsConfig::new()
                    .identity(Identity::from_pem(&pki.server.0, &pki.server.1))
                    .client_ca_root(Certificate::from_pem(&pki.ca)),
            ),
            http: None,
            linger: Duration::from_millis(100),
            id: "test-coordinator".into(),
        },
        listener,
    )
    .await
    .unwrap();
    let file = |name: &str, text: &str| {
        let path = tmp.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let (ca, cert, key) = (
        file("ca.pem", &pki.ca),
        file("client.pem", &pki.client.0),
        file("client.key", &pki.client.1),
    );
    let url = format!("https://{}", handle.addr);
    let run = move |with_cert: bool| {
        let mut args = vec!["status", "--coordinator", &url, "--tls-ca", &ca];
        if with_cert {
            args.extend(["--tls-cert", &cert, "--tls-key", &key]);
        }
        common::hbac(&args, &[("HBAC_TOKEN", TOKEN)])
    };
    let (with, without) = tokio::task::spawn_blocking(move || (run(true), run(false)))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&with.stdout);
    assert!(
        with.status.success(),
        "{}",
        String::from_utf8_lossy(&with.stderr)
    );
    assert!(stdout.contains("run running"), "{stdout}");
    assert!(
        !without.status.success(),
        "no client certificate must be refused"
    );
    handle.abort();
}
