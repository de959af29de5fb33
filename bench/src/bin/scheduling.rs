//! Scheduling overhead of the coordinator, with stand-in trainers (no training):
//!
//! * `swarm`: N simulated workers register, lease jobs, heartbeat each job H times and report
//!   it, all against one in-process coordinator over loopback gRPC. Prints RPC latency
//!   p50/p99 per call kind, jobs/s, and the process's CPU time per job.
//! * `speedup`: k jobs of a fixed duration on 1 worker vs on k workers, through the real worker
//!   loop (`hbac_worker::client::run`); efficiency = T(1) / (k × T(k)).
//!
//! `cargo run --release -p hbac-bench --bin scheduling -- swarm --workers 1000 --jobs 5000`
//! `cargo run --release -p hbac-bench --bin scheduling -- speedup --k 5 --seconds 2`

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use hbac_common::folds::KFold;
use hbac_common::preprocess::{LabelMode, SampleSelection};
use hbac_common::proto::wire::{self, lease_response, report_request};
use hbac_common::proto::{Backend, JobOrder, PROTOCOL_VERSION};
use hbac_coordinator::plan::Plan;
use hbac_coordinator::server::{self, Config, Handle};
use hbac_coordinator::state::Settings;
use hbac_worker::client::{self, WorkerOptions};
use hbac_worker::executor::{Events, Executor, Outcome};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    Swarm {
        #[arg(long, default_value_t = 1000)]
        workers: usize,
        #[arg(long, default_value_t = 5000)]
        jobs: usize,
        /// Heartbeats per job before its report.
        #[arg(long, default_value_t = 3)]
        heartbeats: usize,
    },
    Speedup {
        #[arg(long, default_value_t = 5)]
        k: usize,
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
    },
}

const TOKEN: &str = "bench";

async fn coordinator(jobs: usize, dir: &std::path::Path) -> Handle {
    let plan = Plan {
        data: dir.join("data").display().to_string(),
        cache: dir.join("cache").display().to_string(),
        out: dir.join("out").display().to_string(),
        kfold: KFold {
            k: jobs,
            shuffle: true,
            seed: Some(42),
        },
        selection: SampleSelection::FirstPerSpectrogram,
        labels: LabelMode::Votes,
        archs: vec![("fake".into(), serde_json::json!({}))],
        io_concurrency: 1,
    };
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    server::start(
        Config {
            plan,
            settings: Settings {
                lease_ttl: Duration::from_secs(60),
                max_attempts: 3,
                max_disruptions: 20,
                job_timeout: Duration::from_secs(3600),
                stall_timeout: Duration::from_secs(3600),
                worker_grace: Duration::from_secs(600),
            },
            token: TOKEN.into(),
            tls: None,
            http: None,
            linger: Duration::from_secs(2),
            id: "bench".into(),
        },
        listener,
    )
    .await
    .unwrap()
}

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

async fn swarm(workers: usize, jobs: usize, heartbeats: usize) {
    let dir = tempfile::tempdir().unwrap();
    let handle = coordinator(jobs, dir.path()).await;
    let addr = format!("http://{}", handle.addr);
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    let tasks: Vec<_> = (0..workers)
        .map(|i| {
            let addr = addr.clone();
            tokio::spawn(async move {
                let mut c = client::connect(&addr, TOKEN, None).unwrap();
                let mut lat: [Vec<f64>; 4] = Default::default();
                let timed = Instant::now();
                // 1,000 simultaneous connects can overflow the accept backlog: retry, as
                // the real worker does.
                let session = loop {
                    let r = c
                        .register(wire::RegisterRequest {
                            protocol_version: PROTOCOL_VERSION,
                            worker_id: format!("w{i}"),
                            gpus: 1,
                            backend: "cpu".into(),
                        })
                        .await;
                    match r {
                        Ok(r) => break r.into_inner().session,
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                };
                lat[0].push(timed.elapsed().as_secs_f64());
                loop {
                    let t = Instant::now();
                    let Ok(r) = c
                        .lease(wire::LeaseRequest {
                            session: session.clone(),
                            slot: 0,
                        })
                        .await
                    else {
                        break; // the coordinator closed after the run
                    };
                    let r = r.into_inner();
                    lat[1].push(t.elapsed().as_secs_f64());
                    let lease = match r.outcome {
                        Some(lease_response::Outcome::Lease(l)) => l,
                        Some(lease_response::Outcome::WaitMs(ms)) => {
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                            continue;
                        }
                        _ => break,
                    };
                    for _ in 0..heartbeats {
                        let t = Instant::now();
                        c.heartbeat(wire::HeartbeatRequest {
                            session: session.clone(),
                            lease_id: lease.lease_id.clone(),
                            epoch: 1,
                            batch: 1,
                        })
                        .await
                        .unwrap();
                        lat[2].push(t.elapsed().as_secs_f64());
                    }
                    // The coordinator accepts a result only with its summary in place.
                    let order: serde_json::Value = serde_json::from_str(&lease.order_json).unwrap();
                    let out = std::path::PathBuf::from(order["out"].as_str().unwrap());
                    std::fs::create_dir_all(&out).unwrap();
                    std::fs::write(out.join("summary.json"), "{}").unwrap();
                    let t = Instant::now();
                    c.report(wire::ReportRequest {
                        session: session.clone(),
                        lease_id: lease.lease_id.clone(),
                        result: Some(report_request::Result::Success(wire::Success {
                            out_url: "none".into(),
                            summary_json: "{}".into(),
                        })),
                    })
                    .await
                    .unwrap();
                    lat[3].push(t.elapsed().as_secs_f64());
                }
                lat
            })
        })
        .collect();
    let mut all: [Vec<f64>; 4] = Default::default();
    for t in tasks {
        for (k, v) in t.await.unwrap().into_iter().enumerate() {
            all[k].extend(v);
        }
    }
    let (wall, cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
    // Aggregation fails here (stand-in jobs write no predictions); only scheduling is timed.
    let _ = handle.wait().await;
    println!("swarm: {workers} workers, {jobs} jobs, {heartbeats} heartbeats/job");
    for (name, v) in ["register", "lease", "heartbeat", "report"]
        .iter()
        .zip(all.iter_mut())
    {
        println!(
            "  {name:9} n={:6} p50 {:.2} ms p99 {:.2} ms",
            v.len(),
            pct(v, 0.5) * 1e3,
            pct(v, 0.99) * 1e3
        );
    }
    println!(
        "  wall {wall:.2} s, {:.0} jobs/s, process CPU {cpu:.2} s ({:.2} ms per job; clients and server share the process)",
        jobs as f64 / wall,
        cpu / jobs as f64 * 1e3
    );
}

/// Sleeps for the job's duration, honouring cancellation; writes only the summary (the
/// coordinator accepts a result with its summary in place).
struct Sleeper(Duration);

impl Executor for Sleeper {
    fn execute(
        &self,
        order: JobOrder,
        _slot: usize,
        events: Events,
    ) -> Pin<Box<dyn Future<Output = Outcome> + Send>> {
        let d = self.0;
        Box::pin(async move {
            let out = hbac_common::storage::Store::create(&order.out).unwrap();
            out.put(hbac_common::records::SUMMARY, "{}").await.unwrap();
            let end = Instant::now() + d;
            while Instant::now() < end {
                if events.cancel.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok("{}".into())
        })
    }
}

async fn run_workers(k: usize, workers: usize, d: Duration) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let handle = coordinator(k, dir.path()).await;
    let addr = format!("http://{}", handle.addr);
    let t0 = Instant::now();
    let shared = handle.shared.clone();
    let tasks: Vec<_> = (0..workers)
        .map(|i| {
            let opts = WorkerOptions {
                coordinator: addr.clone(),
                token: TOKEN.into(),
                worker_id: format!("w{i}"),
                slots: 1,
                backend: Backend::Cpu,
                tls: None,
                patience: Duration::from_secs(10),
                storage_roots: vec![],
            };
            let (_tx, rx) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                let _keep = _tx;
                client::run(opts, Arc::new(Sleeper(d)), rx).await
            })
        })
        .collect();
    while shared.view().phase == wire::RunPhase::Running {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let wall = t0.elapsed().as_secs_f64();
    for t in tasks {
        let _ = t.await;
    }
    let _ = handle.wait().await;
    wall
}

#[tokio::main]
async fn main() {
    match Cli::parse().mode {
        Mode::Swarm {
            workers,
            jobs,
            heartbeats,
        } => swarm(workers, jobs, heartbeats).await,
        Mode::Speedup { k, seconds } => {
            let d = Duration::from_secs_f64(seconds);
            let one = run_workers(k, 1, d).await;
            let many = run_workers(k, k, d).await;
            println!(
                "speedup: {k} jobs of {seconds} s: 1 worker {one:.2} s, {k} workers {many:.2} s, efficiency {:.1} %",
                one / (k as f64 * many) * 100.0
            );
        }
    }
}
