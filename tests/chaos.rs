//! Chaos: a real `hbac coordinator` and real `hbac worker` processes on loopback, with seeded,
//! logged faults — workers SIGKILLed (and replaced), the coordinator SIGKILLed and restarted, a
//! second coordinator started on the owned run — and a checker:
//!
//! * the run finishes, within a bound, with every job accepted exactly once;
//! * every result seen in the journal during the run is in the final journal unchanged, and the
//!   set of finished jobs only grows;
//! * `report.json` lists exactly the journal's results;
//! * the CV score equals that of the same run without faults (training resumes bit-identically);
//! * the second coordinator leased nothing and exited 1.
//!
//! It measures the completed epochs trained twice, the time from a worker kill to its job's
//! re-lease, and the time from a coordinator restart to its first answer. The CI-sized run is
//! the default; the full-size figures in bench/RESULTS.md come from the same test with
//! `HBAC_CHAOS_WORKER_KILLS=50 HBAC_CHAOS_COORDINATOR_KILLS=5 HBAC_CHAOS_K=5
//! HBAC_CHAOS_EPOCHS=60 HBAC_CHAOS_WORKERS=3 cargo test --test chaos -- --nocapture`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hbac_common::proto::wire;
use hbac_coordinator::journal::{self, Snapshot};
use hbac_coordinator::state::JobResult;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const TOKEN: &str = "chaos-token";

/// What to run and which faults to inject.
#[derive(Debug, Clone)]
struct Scenario {
    seed: u64,
    workers: usize,
    worker_kills: usize,
    coordinator_kills: usize,
    second_coordinator: bool,
    k: usize,
    epochs: usize,
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Starts `hbac ARGS`, its output appended to `log`.
fn spawn(args: &[String], log: &Path) -> Child {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_hbac"))
        .args(args)
        .env("HBAC_TOKEN", TOKEN)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap()
}

struct Run {
    dir: PathBuf,
    data: String,
    out: PathBuf,
    port: u16,
    scenario: Scenario,
}

impl Run {
    fn coordinator_args(&self, port: u16) -> Vec<String> {
        let (k, epochs) = (self.scenario.k, self.scenario.epochs);
        let mut args = common::coordinator_args(&self.data, &self.out, port, k, epochs);
        args.extend(["--linger", "5"].map(String::from));
        args
    }

    fn coordinator(&self) -> Child {
        spawn(
            &self.coordinator_args(self.port),
            &self.dir.join("coordinator.log"),
        )
    }

    fn worker(&self, id: &str) -> Child {
        let args = [
            "worker",
            "--coordinator",
            &format!("http://127.0.0.1:{}", self.port),
            "--id",
            id,
            "--patience",
            "60",
            "--storage-root",
            &format!("{},{}", self.data, self.out.display()),
        ]
        .map(String::from);
        spawn(&args, &self.dir.join(format!("{id}.log")))
    }
}

/// The run's status, or `None` while the coordinator does not answer.
async fn status(port: u16) -> Option<wire::StatusResponse> {
    let url = format!("http://127.0.0.1:{port}");
    let mut c = hbac_worker::client::connect(&url, TOKEN, None).ok()?;
    let mut req = tonic::Request::new(wire::StatusRequest {});
    req.set_timeout(Duration::from_millis(500));
    Some(c.status(req).await.ok()?.into_inner())
}

/// Figures one run yields.
#[derive(Debug, Default)]
struct Outcome {
    cv: f64,
    seconds: f64,
    results: BTreeMap<String, JobResult>,
    /// Completed epochs trained more than once, over all jobs.
    repeated_epochs: i64,
    /// Seconds from a worker kill to the re-lease of the job it held.
    relets: Vec<f64>,
    /// Seconds from a coordinator restart to its first answer.
    recoveries: Vec<f64>,
    faults: Vec<String>,
}

/// Epochs each attempt folder trained: its latest saved state minus the state it resumed from.
fn trained_epochs(out: &Path) -> i64 {
    let mut total = 0;
    for job in std::fs::read_dir(out.join("jobs")).unwrap().flatten() {
        for attempt in std::fs::read_dir(job.path()).unwrap().flatten() {
            let dir = attempt.path();
            let saved = std::fs::read_dir(dir.join("state"))
                .map(|d| {
                    d.flatten()
                        .filter(|e| e.path().join("state.json").exists())
                        .filter_map(|e| {
                            let name = e.file_name().into_string().ok()?;
                            name.strip_prefix("epoch-")?.parse::<i64>().ok()
                        })
                        .max()
                        .unwrap_or(0)
                })
                .unwrap_or(0);
            let resumed = std::fs::read(dir.join("config.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| v["resumed_epochs"].as_i64())
                .unwrap_or(0);
            total += (saved - resumed).max(0);
        }
    }
    total
}

/// Checks the journal against what was seen before: finished jobs only grow and never change.
fn check_journal(out: &Path, seen: &mut BTreeMap<String, JobResult>) {
    let Ok(store) = hbac_common::storage::Store::open(out.to_str().unwrap()) else {
        return; // not created yet
    };
    let Ok(Some(snap)) = tokio::runtime::Handle::current().block_on(journal::read(&store)) else {
        return;
    };
    let done = snap.done();
    for (job, r) in seen.iter() {
        assert_eq!(
            done.get(job),
            Some(r),
            "{job}: an accepted result changed or vanished"
        );
    }
    seen.extend(done);
}

async fn run(scenario: Scenario, dir: &Path, data: &str) -> Outcome {
    std::fs::create_dir_all(dir).unwrap();
    let run = Run {
        dir: dir.to_path_buf(),
        data: data.to_string(),
        out: dir.join("run"),
        port: common::free_port(),
        scenario: scenario.clone(),
    };
    let mut rng = ChaCha8Rng::seed_from_u64(scenario.seed);
    let mut o = Outcome::default();
    let start = Instant::now();
    let mut coordinator = run.coordinator();
    let mut workers: Vec<(String, Child)> = (0..scenario.workers)
        .map(|i| {
            let id = format!("w{i}");
            (id.clone(), run.worker(&id))
        })
        .collect();
    let mut next_id = scenario.workers;
    let (mut worker_kills, mut coordinator_kills) = (0, 0);
    let mut second = scenario.second_coordinator;
    let mut seen = BTreeMap::new();
    // A killed worker's job, the worker, and when: its re-lease is timed.
    let mut pending: Vec<(String, String, Instant)> = Vec::new();
    let mut restarted: Option<Instant> = None;
    let deadline = start + Duration::from_secs(900);
    loop {
        assert!(
            Instant::now() < deadline,
            "the run did not end in time: {:?}",
            o.faults
        );
        if let Some(exit) = coordinator.try_wait().unwrap() {
            assert!(
                exit.success(),
                "the coordinator failed: see {}",
                dir.display()
            );
            break;
        }
        let st = status(run.port).await;
        if let (Some(t), Some(_)) = (restarted, &st) {
            o.recoveries.push(t.elapsed().as_secs_f64());
            restarted = None;
        }
        if let Some(st) = &st {
            pending.retain(|(job, dead, t)| {
                let relet = st.jobs.iter().any(|j| {
                    &j.job_id == job
                        && (j.state == "done" || j.state == "leased")
                        && !j.worker.is_empty()
                        && &j.worker != dead
                });
                if relet {
                    o.relets.push(t.elapsed().as_secs_f64());
                }
                !relet
            });
        }
        tokio::task::block_in_place(|| check_journal(&run.out, &mut seen));
        let pause = Duration::from_millis(rng.random_range(500..1500));
        tokio::time::sleep(pause).await;
        // Faults only while the run is still going (a worker started after the end would wait
        // for a coordinator that is gone).
        if coordinator.try_wait().unwrap().is_some() {
            continue;
        }
        let Some(st) = status(run.port).await.filter(|s| s.state == "running") else {
            continue;
        };
        let left_w = scenario.worker_kills - worker_kills;
        let left_c = scenario.coordinator_kills - coordinator_kills;
        if second && rng.random_bool(0.3) {
            second = false;
            let out = tokio::task::block_in_place(|| {
                Command::new(env!("CARGO_BIN_EXE_hbac"))
                    .args(run.coordinator_args(common::free_port()))
                    .env("HBAC_TOKEN", TOKEN)
                    .output()
                    .unwrap()
            });
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "second coordinator: {stderr}");
            assert!(stderr.contains("is owned by coordinator"), "{stderr}");
            o.faults.push(format!(
                "{:.1}s second coordinator refused",
                start.elapsed().as_secs_f64()
            ));
        } else if left_c > 0 && rng.random_range(0..left_w + left_c) < left_c {
            let _ = coordinator.kill();
            coordinator.wait().unwrap();
            coordinator_kills += 1;
            o.faults.push(format!(
                "{:.1}s coordinator SIGKILL",
                start.elapsed().as_secs_f64()
            ));
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..1500))).await;
            coordinator = run.coordinator();
            restarted = Some(Instant::now());
        } else if left_w > 0 {
            let i = rng.random_range(0..workers.len());
            let (id, mut child) = workers.swap_remove(i);
            let held = st
                .jobs
                .iter()
                .find(|j| j.worker == id && j.state == "leased");
            let _ = child.kill();
            child.wait().unwrap();
            worker_kills += 1;
            o.faults.push(format!(
                "{:.1}s worker {id} SIGKILL (held {})",
                start.elapsed().as_secs_f64(),
                held.map_or("nothing", |j| j.job_id.as_str())
            ));
            if let Some(j) = held {
                pending.push((j.job_id.clone(), id.clone(), Instant::now()));
            }
            let id = format!("w{next_id}");
            next_id += 1;
            workers.push((id.clone(), run.worker(&id)));
        }
    }
    o.seconds = start.elapsed().as_secs_f64();
    for (_, mut w) in workers {
        // Told the run is over, they exit 0 by themselves.
        let exit = tokio::task::block_in_place(|| w.wait().unwrap());
        assert!(exit.success(), "a worker failed: see {}", dir.display());
    }
    assert_eq!(
        (worker_kills, coordinator_kills, second),
        (scenario.worker_kills, scenario.coordinator_kills, false),
        "the run ended before every fault was injected: {:?}",
        o.faults
    );
    tokio::task::block_in_place(|| check_journal(&run.out, &mut seen));
    let snap: Snapshot = tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(async {
            let out = hbac_common::storage::Store::open(run.out.to_str().unwrap()).unwrap();
            journal::read(&out).await.unwrap().unwrap()
        })
    });
    o.results = snap.done().into_iter().collect();
    assert_eq!(o.results.len(), scenario.k, "every job accepted");
    assert_eq!(o.results, seen, "the final journal is what was seen");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.out.join("report.json")).unwrap()).unwrap();
    let listed: BTreeMap<String, (String, u64)> = report["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            let job = j["job"].as_str().unwrap().to_string();
            (
                job,
                (
                    j["out"].as_str().unwrap().to_string(),
                    j["attempt"].as_u64().unwrap(),
                ),
            )
        })
        .collect();
    let journaled: BTreeMap<String, (String, u64)> = o
        .results
        .iter()
        .map(|(job, r)| (job.clone(), (r.out_url.clone(), r.attempt as u64)))
        .collect();
    assert_eq!(listed, journaled, "report.json lists the journal's results");
    o.cv = report["cv"].as_f64().unwrap();
    let needed = (scenario.k * scenario.epochs) as i64;
    o.repeated_epochs = trained_epochs(&run.out) - needed;
    assert!(
        o.repeated_epochs >= 0,
        "fewer epochs trained than the run needs"
    );
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_survives_killed_workers_and_coordinators_with_the_same_result() {
    let faults = Scenario {
        seed: env_or("HBAC_CHAOS_SEED", 7) as u64,
        workers: env_or("HBAC_CHAOS_WORKERS", 2),
        worker_kills: env_or("HBAC_CHAOS_WORKER_KILLS", 3),
        coordinator_kills: env_or("HBAC_CHAOS_COORDINATOR_KILLS", 2),
        second_coordinator: true,
        k: env_or("HBAC_CHAOS_K", 3),
        epochs: env_or("HBAC_CHAOS_EPOCHS", 20),
    };
    let calm = Scenario {
        workers: 1,
        worker_kills: 0,
        coordinator_kills: 0,
        second_coordinator: false,
        ..faults.clone()
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = common::synth(&tmp.path().join("data"), 16, 5);
    let reference = run(calm, &tmp.path().join("calm"), &data).await;
    let chaos = run(faults.clone(), &tmp.path().join("chaos"), &data).await;
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let (mut relets, mut recoveries) = (chaos.relets.clone(), chaos.recoveries.clone());
    println!(
        "chaos {faults:?}\n  faults: {:#?}\n  calm run {:.1} s, chaos run {:.1} s; CV {} vs {}\n  \
         repeated epochs {} (of {} needed); kill → re-lease n={} median {:.2} s max {:.2} s; \
         coordinator restart → answering n={} median {:.2} s max {:.2} s",
        chaos.faults,
        reference.seconds,
        chaos.seconds,
        reference.cv,
        chaos.cv,
        chaos.repeated_epochs,
        faults.k * faults.epochs,
        relets.len(),
        median(&mut relets),
        relets.iter().copied().fold(0.0, f64::max),
        recoveries.len(),
        median(&mut recoveries),
        recoveries.iter().copied().fold(0.0, f64::max),
    );
    assert_eq!(
        chaos.cv, reference.cv,
        "the same CV as the run without faults"
    );
    assert_eq!(reference.repeated_epochs, 0);
    // At most the epoch in flight is lost per kill (its state saved but not yet reported).
    let kills = (faults.worker_kills + faults.coordinator_kills) as i64;
    assert!(
        chaos.repeated_epochs <= kills,
        "{} completed epochs trained twice for {kills} kills",
        chaos.repeated_epochs
    );
}
