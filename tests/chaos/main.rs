//! Chaos: a real `hbac coordinator` and real `hbac worker` processes on loopback, with seeded,
//! logged faults — workers SIGKILLed (and replaced), the coordinator SIGKILLed and restarted, a
//! second coordinator started on the owned run, a TCP proxy per worker that slows, black-holes
//! and resets its link and loses replies after forwarding the request ([`proxy`]), and a store
//! under the coordinator that fails writes or commits them and loses the reply, and aborts the
//! coordinator right after a chosen journal write or in the middle of aggregation
//! (`HBAC_STORE_FAULTS`, see `hbac_common::storage::faults`) — and a checker:
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
//! HBAC_CHAOS_EPOCHS=60 HBAC_CHAOS_WORKERS=3 HBAC_CHAOS_NET_FAULTS=40 HBAC_CHAOS_JOURNAL_CRASHES=3
//! cargo test --test chaos -- --nocapture`.

#[path = "../common/mod.rs"]
mod common;
mod proxy;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hbac_common::proto::wire::{self, JobPhase, RunPhase};
use hbac_coordinator::jobs::JobResult;
use hbac_coordinator::journal::{self, Snapshot};
use proxy::{Proxy, Weather};
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
    /// Link faults on the workers' proxies.
    net_faults: usize,
    /// Coordinators aborted right after a journal write commits.
    journal_crashes: usize,
    /// One coordinator aborted in the middle of aggregation.
    aggregation_crash: bool,
    /// Failed and lost-reply writes under the coordinator.
    store_faults: bool,
    k: usize,
    epochs: usize,
}

/// The SIGABRT of a coordinator that `HBAC_STORE_FAULTS` crashed.
const ABORTED: i32 = 6;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Starts `hbac ARGS` with `env`, its output appended to `log`.
fn spawn(args: &[String], env: &[(&str, String)], log: &Path) -> Child {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_hbac"))
        .args(args)
        .env("HBAC_TOKEN", TOKEN)
        .env("RUST_LOG", "info")
        .envs(env.iter().map(|(k, v)| (k, v)))
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

    /// Starts the coordinator; `crash` is the write after which it aborts, if any.
    fn coordinator(&self, generation: u64, crash: Option<&str>) -> Child {
        let mut faults = format!("seed={}", self.scenario.seed + generation);
        if self.scenario.store_faults {
            faults.push_str(",fail=0.03,lose=0.03");
        }
        if let Some(c) = crash {
            faults.push_str(&format!(",crash={c}"));
        }
        spawn(
            &self.coordinator_args(self.port),
            &[("HBAC_STORE_FAULTS", faults)],
            &self.dir.join("coordinator.log"),
        )
    }

    /// Starts worker `id` behind its own proxy.
    async fn worker(&self, id: &str) -> (String, Child, Arc<Proxy>) {
        let proxy = Arc::new(Proxy::start(self.port).await);
        let args = [
            "worker",
            "--coordinator",
            &format!("http://127.0.0.1:{}", proxy.port),
            "--id",
            id,
            "--patience",
            "60",
            "--storage-root",
            &format!("{},{}", self.data, self.out.display()),
        ]
        .map(String::from);
        let child = spawn(&args, &[], &self.dir.join(format!("{id}.log")));
        (id.to_string(), child, proxy)
    }
}

/// The last `n` lines of a log.
fn tail(log: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
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
    /// Black holes played (each may cost a lease, hence an epoch).
    black_holes: i64,
    /// Replies the proxies dropped after forwarding the request.
    lost_replies: u64,
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
    // Which write the next coordinator aborts after: journal writes first, then aggregation.
    let (mut journal_crashes, mut aggregation_crash) = (0, !scenario.aggregation_crash);
    let mut generation = 0;
    let mut crash_point = |rng: &mut ChaCha8Rng, crashes: usize, aggregated: bool| {
        generation += 1;
        let point = if crashes < scenario.journal_crashes {
            Some(format!("journal/@{}", rng.random_range(2..12)))
        } else if !aggregated {
            Some("submission.csv@1".to_string())
        } else {
            None
        };
        (generation, point)
    };
    let (g, mut crash) = crash_point(&mut rng, journal_crashes, aggregation_crash);
    let mut coordinator = run.coordinator(g, crash.as_deref());
    let mut workers = Vec::new();
    for i in 0..scenario.workers {
        workers.push(run.worker(&format!("w{i}")).await);
    }
    let mut next_id = scenario.workers;
    let (mut worker_kills, mut coordinator_kills, mut net_faults) = (0, 0, 0);
    let mut second = scenario.second_coordinator;
    let mut seen = BTreeMap::new();
    // A killed worker's job, the worker, and when: its re-lease is timed.
    let mut pending: Vec<(String, String, Instant)> = Vec::new();
    let mut restarted: Option<Instant> = None;
    let deadline = start + Duration::from_secs(900);
    let mut injected_last = false;
    loop {
        assert!(
            Instant::now() < deadline,
            "the run did not end in time: {:?}",
            o.faults
        );
        if let Some(exit) = coordinator.try_wait().unwrap() {
            if exit.success() {
                break;
            }
            // Only the crash it was given may end a coordinator early.
            let planned = crash.take().filter(|_| exit.signal() == Some(ABORTED));
            let Some(point) = planned else {
                panic!(
                    "the coordinator failed ({exit}); its log ends:\n{}",
                    tail(&dir.join("coordinator.log"), 40)
                );
            };
            if point.starts_with("journal/") {
                journal_crashes += 1;
            } else {
                aggregation_crash = true;
            }
            o.faults.push(format!(
                "{:.1}s coordinator aborted after write {point}",
                start.elapsed().as_secs_f64()
            ));
            let (g, c) = crash_point(&mut rng, journal_crashes, aggregation_crash);
            crash = c;
            coordinator = run.coordinator(g, crash.as_deref());
            restarted = Some(Instant::now());
            continue;
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
                        && matches!(j.phase(), JobPhase::Done | JobPhase::Leased)
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
        // Right after an injection the next one may be due already: look again at once.
        if !injected_last {
            let pause = Duration::from_millis(rng.random_range(100..300));
            tokio::time::sleep(pause).await;
        }
        injected_last = false;
        // Faults only while the run is still going (a worker started after the end would wait
        // for a coordinator that is gone).
        if coordinator.try_wait().unwrap().is_some() {
            continue;
        }
        let Some(st) = status(run.port)
            .await
            .filter(|s| s.phase() == RunPhase::Running)
        else {
            continue;
        };
        // Faults are paced by the run's progress, so that all of them land before its end
        // however fast this machine trains: the i-th of n once (i+1)/(n+1) of half the epochs
        // are done. Each injection takes the harness up to ~2 s (a coordinator restart, the
        // second coordinator's refusal) while the workers go on training, so the second half
        // is the slack that lets a fast machine's last faults land (a CI run once ended at
        // 70 % with one fault left).
        let planned = scenario.worker_kills
            + scenario.coordinator_kills
            + scenario.net_faults
            + usize::from(scenario.second_coordinator);
        let injected = worker_kills
            + coordinator_kills
            + net_faults
            + usize::from(!second && scenario.second_coordinator);
        let (done, all) = st.jobs.iter().fold((0, 0), |(d, a), j| {
            (d + j.epoch.min(j.epochs) as usize, a + j.epochs as usize)
        });
        let due = 0.5 * (injected + 1) as f64 / (planned + 1) as f64;
        if injected >= planned || (done as f64) < due * all as f64 {
            continue;
        }
        let progress = format!(
            " at {:.0} % of the epochs",
            100.0 * done as f64 / all as f64
        );
        let before = o.faults.len();
        let left_w = scenario.worker_kills - worker_kills;
        let left_c = scenario.coordinator_kills - coordinator_kills;
        let left_n = scenario.net_faults - net_faults;
        if left_n > 0 && rng.random_range(0..left_w + left_c + left_n) < left_n {
            net_faults += 1;
            // A worker that holds a job, if any: its link carries heartbeats and reports.
            let busy: Vec<usize> = (0..workers.len())
                .filter(|i| st.jobs.iter().any(|j| j.worker == workers[*i].0))
                .collect();
            let i = match busy.is_empty() {
                true => rng.random_range(0..workers.len()),
                false => busy[rng.random_range(0..busy.len())],
            };
            let (id, _, proxy) = &workers[i];
            let (weather, ms) = match rng.random_range(0..4) {
                0 => (
                    Weather::Slow(Duration::from_millis(rng.random_range(50..300))),
                    3000,
                ),
                1 => {
                    o.black_holes += 1;
                    (Weather::BlackHole, rng.random_range(300..1500))
                }
                2 => (Weather::LoseReplies, rng.random_range(1000..3000)),
                _ => (Weather::Clear, 0),
            };
            if weather == Weather::Clear {
                proxy.cut();
            } else {
                proxy.set(weather);
                let p = proxy.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    p.set(Weather::Clear);
                });
            }
            o.faults.push(format!(
                "{:.1}s link of {id}: {} for {ms} ms",
                start.elapsed().as_secs_f64(),
                match weather {
                    Weather::Clear => "connections reset".to_string(),
                    w => format!("{w:?}"),
                }
            ));
        } else if second && rng.random_range(0..left_w + left_c + 1) == 0 {
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
            let (g, c) = crash_point(&mut rng, journal_crashes, aggregation_crash);
            crash = c;
            coordinator = run.coordinator(g, crash.as_deref());
            restarted = Some(Instant::now());
        } else if left_w > 0 {
            let i = rng.random_range(0..workers.len());
            let (id, mut child, proxy) = workers.swap_remove(i);
            o.lost_replies += proxy.lost();
            let held = st
                .jobs
                .iter()
                .find(|j| j.worker == id && j.phase() == JobPhase::Leased);
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
            next_id += 1;
            workers.push(run.worker(&format!("w{}", next_id - 1)).await);
        }
        injected_last = o.faults.len() > before;
        if injected_last {
            o.faults.last_mut().unwrap().push_str(&progress);
        }
    }
    o.seconds = start.elapsed().as_secs_f64();
    for (id, mut w, proxy) in workers {
        // Told the run is over, they exit 0 by themselves.
        let exit = tokio::task::block_in_place(|| w.wait().unwrap());
        assert!(
            exit.success(),
            "a worker failed; its log ends:\n{}",
            tail(&dir.join(format!("{id}.log")), 40)
        );
        o.lost_replies += proxy.lost();
    }
    assert_eq!(
        (worker_kills, coordinator_kills, second, net_faults),
        (
            scenario.worker_kills,
            scenario.coordinator_kills,
            false,
            scenario.net_faults
        ),
        "the run ended before every fault was injected: {:?}",
        o.faults
    );
    assert_eq!(
        (journal_crashes, aggregation_crash),
        (scenario.journal_crashes, true),
        "a planned crash did not happen: {:?}",
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
        net_faults: env_or("HBAC_CHAOS_NET_FAULTS", 8),
        journal_crashes: env_or("HBAC_CHAOS_JOURNAL_CRASHES", 1),
        aggregation_crash: true,
        store_faults: true,
        k: env_or("HBAC_CHAOS_K", 3),
        epochs: env_or("HBAC_CHAOS_EPOCHS", 40),
    };
    let calm = Scenario {
        workers: 1,
        worker_kills: 0,
        coordinator_kills: 0,
        second_coordinator: false,
        net_faults: 0,
        journal_crashes: 0,
        aggregation_crash: false,
        store_faults: false,
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
         coordinator restart → answering n={} median {:.2} s max {:.2} s; \
         replies lost after forwarding {}",
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
        chaos.lost_replies,
    );
    assert_eq!(
        chaos.cv, reference.cv,
        "the same CV as the run without faults"
    );
    assert_eq!(reference.repeated_epochs, 0);
    // At most the epoch in flight is lost per kill (its state saved but not yet reported), or
    // per black hole (which may outlast a lease).
    let kills =
        (faults.worker_kills + faults.coordinator_kills + faults.journal_crashes + 1) as i64;
    assert!(
        chaos.repeated_epochs <= kills + chaos.black_holes,
        "{} completed epochs trained twice for {kills} kills and {} black holes",
        chaos.repeated_epochs,
        chaos.black_holes
    );
}
