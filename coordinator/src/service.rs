//! The gRPC service: each call checks the worker token (an interceptor), locks the
//! [`State`](crate::state::State) for the rule, and journals accepted results before it
//! answers, so an accepted result survives a coordinator restart.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use hbac_common::proto::wire::coordinator_server::Coordinator;
use hbac_common::proto::wire::{self, lease_response, report_request};
use hbac_common::proto::{AUTH_HEADER, PROTOCOL_VERSION, Registration};
use hbac_common::storage::Store;
use tokio::time::Instant;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::plan::{Journal, Plan};
use crate::state::{JobDef, JobResult, JobState, LeaseOutcome, Progress, Refusal, RunState, State};

/// What the service and the run loop share.
pub struct Shared {
    pub state: Mutex<State>,
    pub plan: Plan,
    pub jobs: Vec<JobDef>,
    pub out: Store,
    /// Orders journal writes and holds the number of accepted results the journal on storage
    /// already includes (group commit: one write covers every result accepted before it).
    pub journal: tokio::sync::Mutex<usize>,
    /// Woken whenever a job ends or the run state changes.
    pub changed: tokio::sync::Notify,
    /// The run's CV score, set once the results are written: until then a run whose jobs are
    /// all done is "aggregating", not "finished".
    pub cv: std::sync::OnceLock<f64>,
}

impl Shared {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes sure the journal on storage includes the first `accepted` results: returns at
    /// once if a write that started after them has finished, else writes the latest state.
    pub async fn save_journal(&self, accepted: usize) -> hbac_common::Result<()> {
        let mut written = self.journal.lock().await;
        if *written >= accepted && accepted > 0 {
            return Ok(());
        }
        let (done, count) = {
            let s = self.lock();
            (s.done(), s.accepted)
        };
        Journal::save(&self.out, &self.plan, done).await?;
        *written = count;
        Ok(())
    }

    /// The run as `hbac status` and the progress view show it.
    pub fn status(&self) -> wire::StatusResponse {
        let s = self.lock();
        let now = Instant::now().into_std();
        let (state, error) = match &s.run {
            RunState::Running => ("running", String::new()),
            RunState::Finished if self.cv.get().is_some() => ("finished", String::new()),
            RunState::Finished => ("aggregating", String::new()),
            RunState::Failed(e) => ("failed", e.clone()),
        };
        let jobs = s
            .jobs
            .iter()
            .map(|j| {
                let (worker, mut p) = match &j.state {
                    JobState::Leased(l) => (l.worker.clone(), l.progress.clone()),
                    JobState::Done(r) => (r.worker.clone(), Progress::of_result(r)),
                    _ => (String::new(), Progress::default()),
                };
                if p.epochs == 0 {
                    // Not started (or no epoch reported yet): the planned number of epochs.
                    p.epochs = self.plan.epochs(&j.def.arch).unwrap_or(0);
                }
                wire::JobStatus {
                    job_id: j.def.id.clone(),
                    arch: j.def.arch.clone(),
                    fold: j.def.fold as u32,
                    state: j.state.name().into(),
                    worker,
                    attempt: j.attempts,
                    epoch: p.epoch as u32,
                    epochs: p.epochs as u32,
                    train_kl: p.train_kl,
                    valid_kl: p.valid_kl,
                    eta_s: matches!(j.state, JobState::Leased(_))
                        .then(|| p.eta())
                        .flatten(),
                }
            })
            .collect();
        wire::StatusResponse {
            state: state.into(),
            error,
            workers: s.live_workers(now) as u32,
            jobs,
            out_url: self.out.root().to_string(),
            cv_kl: self.cv.get().copied(),
        }
    }
}

/// A refused call (unknown session or worker) is NOT_FOUND with the reason.
impl From<Refusal> for Status {
    fn from(r: Refusal) -> Status {
        Status::not_found(r.to_string())
    }
}

/// Compares without an early exit, so response time does not reveal the token's prefix.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The interceptor that refuses calls without the shared token.
pub fn check_token(token: String) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone {
    let expected = format!("Bearer {token}");
    move |req: Request<()>| {
        let given = req
            .metadata()
            .get(AUTH_HEADER)
            .map(|v| v.as_bytes().to_vec())
            .unwrap_or_default();
        if same(&given, expected.as_bytes()) {
            Ok(req)
        } else {
            Err(Status::unauthenticated(
                "missing or wrong worker token (--token / HBAC_TOKEN, or --token-file)",
            ))
        }
    }
}

/// The `hbac.v1.Coordinator` service.
pub struct Service(pub Arc<Shared>);

fn now() -> std::time::Instant {
    Instant::now().into_std()
}

type MetricsStream = Pin<Box<Streaming<wire::EpochMetrics>>>;

#[tonic::async_trait]
impl Coordinator for Service {
    async fn register(
        &self,
        req: Request<wire::RegisterRequest>,
    ) -> Result<Response<wire::RegisterResponse>, Status> {
        let reg = Registration::try_from(req.into_inner())
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        let mut s = self.0.lock();
        let session = s.register(&reg.worker_id, reg.gpus, reg.backend.name(), now());
        info!(
            worker = reg.worker_id,
            gpus = reg.gpus,
            backend = reg.backend.name(),
            "worker registered"
        );
        Ok(Response::new(wire::RegisterResponse {
            protocol_version: PROTOCOL_VERSION,
            session,
            heartbeat_ms: s.settings.heartbeat().as_millis() as u64,
            lease_ttl_ms: s.settings.lease_ttl.as_millis() as u64,
        }))
    }

    async fn lease(
        &self,
        req: Request<wire::LeaseRequest>,
    ) -> Result<Response<wire::LeaseResponse>, Status> {
        let req = req.into_inner();
        let outcome = self.0.lock().lease(&req.session, now())?;
        let outcome = match outcome {
            LeaseOutcome::Job(g) => {
                let def = &self.0.jobs[g.job];
                let order = self.0.plan.order(def, &g.lease_id);
                info!(
                    job = def.id,
                    lease = g.lease_id,
                    attempt = g.attempt,
                    "leased"
                );
                lease_response::Outcome::Lease(wire::Lease {
                    lease_id: g.lease_id,
                    job_id: def.id.clone(),
                    arch: def.arch.clone(),
                    fold: def.fold as u32,
                    attempt: g.attempt,
                    order_json: serde_json::to_string(&order).expect("serialisable"),
                })
            }
            LeaseOutcome::Wait(d) => lease_response::Outcome::WaitMs(d.as_millis() as u64),
            LeaseOutcome::Stop(why) => lease_response::Outcome::Stop(why),
            LeaseOutcome::Drain => lease_response::Outcome::Drain("drained by `hbac drain`".into()),
        };
        Ok(Response::new(wire::LeaseResponse {
            outcome: Some(outcome),
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<wire::HeartbeatRequest>,
    ) -> Result<Response<wire::HeartbeatResponse>, Status> {
        let req = req.into_inner();
        let verdict = self.0.lock().heartbeat(&req.session, &req.lease_id, now());
        Ok(Response::new(match verdict {
            Ok(()) => wire::HeartbeatResponse {
                cancel: false,
                reason: String::new(),
            },
            Err(reason) => wire::HeartbeatResponse {
                cancel: true,
                reason,
            },
        }))
    }

    async fn stream_metrics(
        &self,
        req: Request<Streaming<wire::EpochMetrics>>,
    ) -> Result<Response<wire::MetricsAck>, Status> {
        let mut stream: MetricsStream = Box::pin(req.into_inner());
        let mut received = 0;
        while let Some(m) = stream.next().await {
            let m = m?;
            received += 1;
            let mut s = self.0.lock();
            let _ = s.touch(&m.session, now());
            s.epoch(
                &m.lease_id,
                Progress {
                    epoch: m.epoch as usize,
                    epochs: m.epochs as usize,
                    train_kl: Some(m.train_kl),
                    valid_kl: m.valid_kl,
                    seconds: m.seconds,
                },
            );
        }
        Ok(Response::new(wire::MetricsAck { received }))
    }

    async fn report(
        &self,
        req: Request<wire::ReportRequest>,
    ) -> Result<Response<wire::ReportResponse>, Status> {
        let req = req.into_inner();
        let worker = self.0.lock().touch(&req.session, now())?;
        let verdict = match req.result {
            Some(report_request::Result::Success(s)) => {
                let r = JobResult {
                    out_url: s.out_url,
                    summary_json: s.summary_json,
                    attempt: 0,
                    worker: worker.clone(),
                };
                let verdict = {
                    let mut s = self.0.lock();
                    s.complete(&req.lease_id, r).map(|_| s.accepted)
                };
                if let Ok(accepted) = verdict {
                    info!(lease = req.lease_id, worker, "result accepted");
                    if let Err(e) = self.0.save_journal(accepted).await {
                        warn!(error = %e, "could not write the journal; will retry with the next change");
                    }
                }
                verdict.map(|_| ())
            }
            Some(report_request::Result::Failure(f)) => {
                warn!(
                    lease = req.lease_id,
                    worker,
                    retryable = f.retryable,
                    error = f.message,
                    "attempt failed"
                );
                self.0.lock().fail(&req.lease_id, &f.message, f.retryable)
            }
            None => {
                return Err(Status::invalid_argument(
                    "a report needs a success or a failure",
                ));
            }
        };
        self.0.changed.notify_waiters();
        Ok(Response::new(match verdict {
            Ok(()) => wire::ReportResponse {
                accepted: true,
                reason: String::new(),
            },
            Err(reason) => wire::ReportResponse {
                accepted: false,
                reason,
            },
        }))
    }

    async fn status(
        &self,
        _req: Request<wire::StatusRequest>,
    ) -> Result<Response<wire::StatusResponse>, Status> {
        Ok(Response::new(self.0.status()))
    }

    async fn drain(
        &self,
        req: Request<wire::DrainRequest>,
    ) -> Result<Response<wire::DrainResponse>, Status> {
        let worker = req.into_inner().worker_id;
        let (sessions, jobs) = self.0.lock().drain(&worker)?;
        info!(worker, jobs, "draining");
        self.0.changed.notify_waiters();
        Ok(Response::new(wire::DrainResponse {
            sessions: sessions as u32,
            jobs: jobs as u32,
        }))
    }
}

/// How long the run loop sleeps between deadline checks.
pub fn tick_period(lease_ttl: Duration) -> Duration {
    (lease_ttl / 10).clamp(Duration::from_millis(20), Duration::from_millis(500))
}
