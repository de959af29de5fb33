//! The gRPC service: each call checks the worker token (an interceptor), locks the
//! [`State`](crate::state::State) for the rule, and writes the journal before it answers a call
//! whose answer must survive a restart: a lease is granted, and a result acknowledged, only once
//! the journal holds it (else the call fails with UNAVAILABLE and the worker retries; a retry
//! of the same call is answered the same way). Calls are keyed by lease, not by session, so a
//! restarted coordinator serves the workers of its predecessor without a new registration.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use hbac_common::proto::wire::coordinator_server::Coordinator;
use hbac_common::proto::wire::{self, lease_response, report_request};
use hbac_common::proto::{AUTH_HEADER, PROTOCOL_VERSION, Registration};
use hbac_common::records::{EpochReport, SUMMARY};
use hbac_common::storage::Store;
use tokio::time::Instant;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::jobs::JobResult;
use crate::journal::JournalError;
use crate::shared::Shared;
use crate::state::{Ending, LeaseOutcome, Refusal};
use crate::view::RunView;

/// The folder of a reported attempt if its summary is there, or why not (a result is
/// accepted only with its files in place); storage trouble is UNAVAILABLE, for a retry.
async fn check_result(dir: &str) -> Result<Result<String, String>, Status> {
    let store = match Store::open(dir) {
        Ok(store) => store,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let present = store
        .exists(SUMMARY)
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    Ok(match present {
        true => Ok(dir.to_string()),
        false => Err(format!("{dir}/{SUMMARY} does not exist")),
    })
}

/// A refused call (unknown session or worker) is NOT_FOUND with the reason.
impl From<Refusal> for Status {
    fn from(r: Refusal) -> Status {
        Status::not_found(r.to_string())
    }
}

/// A journal that cannot be written is UNAVAILABLE: the worker retries (here, or with the
/// coordinator that replaced this one).
fn unavailable(e: JournalError) -> Status {
    warn!(error = %e, "journal not written; the call is refused for a retry");
    Status::unavailable(format!("the coordinator could not write its journal: {e}"))
}

/// Compares `given` with `expected` in a time that depends on neither the given token nor how
/// much of it matches: no early exit, and the loop runs over the expected length whatever the
/// given one is, so a wrong token reveals neither a prefix nor the length.
pub(crate) fn same(given: &[u8], expected: &[u8]) -> bool {
    let diff = (0..expected.len()).fold(given.len() ^ expected.len(), |acc, i| {
        acc | usize::from(given.get(i).copied().unwrap_or(0) ^ expected[i])
    });
    diff == 0
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
            heartbeat_ms: s.settings().heartbeat().as_millis() as u64,
            lease_ttl_ms: s.settings().lease_ttl.as_millis() as u64,
        }))
    }

    async fn lease(
        &self,
        req: Request<wire::LeaseRequest>,
    ) -> Result<Response<wire::LeaseResponse>, Status> {
        let req = req.into_inner();
        if let Some(e) = self.0.fence() {
            return Err(Status::unavailable(e.to_string()));
        }
        let (outcome, version) = {
            let mut s = self.0.lock();
            let outcome = s.lease(&req.session, req.slot, now())?;
            (outcome, s.version())
        };
        let outcome = match outcome {
            LeaseOutcome::Job(g) => {
                // Granted only once the journal holds the lease: a restarted coordinator
                // adopts it instead of running the job twice.
                self.0.commit(version).await.map_err(unavailable)?;
                let def = &self.0.jobs[g.job];
                let order = self.0.plan.order(def, &g.lease_id, g.resume.as_ref());
                info!(
                    job = def.id,
                    lease = g.lease_id,
                    attempt = g.attempt,
                    resume_epochs = g.resume.as_ref().map(|r| r.epochs),
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
        let verdict = match self.0.fence() {
            Some(e) => return Err(Status::unavailable(e.to_string())),
            None => {
                self.0
                    .lock()
                    .heartbeat(&req.session, &req.lease_id, (req.epoch, req.batch), now())
            }
        };
        Ok(Response::new(match verdict {
            Ok(()) => wire::HeartbeatResponse {
                cancel: false,
                reason: String::new(),
            },
            Err(reason) => wire::HeartbeatResponse {
                cancel: true,
                reason: reason.to_string(),
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
            let r = EpochReport::from(&m);
            s.epoch(&m.lease_id, &r, m.epochs as usize, m.saved);
        }
        // A saved state is journaled by the run loop's next write (not awaited here: losing
        // it costs at most that epoch).
        self.0.changed.notify_waiters();
        Ok(Response::new(wire::MetricsAck { received }))
    }

    async fn report(
        &self,
        req: Request<wire::ReportRequest>,
    ) -> Result<Response<wire::ReportResponse>, Status> {
        let req = req.into_inner();
        // Keyed by lease: a worker of the previous coordinator reports without registering.
        let worker = {
            let mut s = self.0.lock();
            s.touch(&req.session, now()).unwrap_or_default()
        };
        let verdict = match req.result {
            Some(report_request::Result::Success(s)) => {
                let r = JobResult {
                    lease_id: req.lease_id.clone(),
                    // Where the files are is the coordinator's to say, not the worker's.
                    out_url: String::new(),
                    summary_json: s.summary_json,
                    attempt: 0,
                    worker: worker.clone(),
                };
                // The job whose lease (or accepted result) this is; none: a late report,
                // refused by `complete` below without looking at storage.
                let job = self.0.lock().job_of_lease(&req.lease_id);
                let dir = job.map(|i| self.0.plan.attempt_dir(&self.0.jobs[i].id, &req.lease_id));
                let checked = match &dir {
                    Some(dir) => check_result(dir).await?,
                    None => Ok(String::new()),
                };
                match checked {
                    Ok(out_url) => {
                        let verdict = {
                            let mut s = self.0.lock();
                            s.complete(&req.lease_id, JobResult { out_url, ..r })
                                .map(|_| s.version())
                        };
                        match verdict {
                            Ok(version) => {
                                self.0.commit(version).await.map_err(unavailable)?;
                                info!(lease = req.lease_id, worker, "result accepted");
                                Ok(())
                            }
                            Err(e) => Err(e.to_string()),
                        }
                    }
                    Err(why) => {
                        // The files are not there: the attempt failed after all.
                        warn!(lease = req.lease_id, worker, why, "result refused");
                        let ending = Ending::Failed {
                            message: why.clone(),
                            retryable: true,
                        };
                        let version = {
                            let mut s = self.0.lock();
                            let _ = s.end(&req.lease_id, ending);
                            s.version()
                        };
                        self.0.commit(version).await.map_err(unavailable)?;
                        Err(why)
                    }
                }
            }
            Some(report_request::Result::Failure(f)) => {
                warn!(
                    lease = req.lease_id,
                    worker,
                    retryable = f.retryable,
                    lost = f.lost,
                    error = f.message,
                    "attempt ended without a result"
                );
                let ending = if f.lost {
                    Ending::Lost(f.message)
                } else {
                    Ending::Failed {
                        message: f.message,
                        retryable: f.retryable,
                    }
                };
                let (verdict, version) = {
                    let mut s = self.0.lock();
                    (
                        s.end(&req.lease_id, ending).map_err(|e| e.to_string()),
                        s.version(),
                    )
                };
                self.0.commit(version).await.map_err(unavailable)?;
                verdict
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
        Ok(Response::new(status(self.0.view())?))
    }

    async fn drain(
        &self,
        req: Request<wire::DrainRequest>,
    ) -> Result<Response<wire::DrainResponse>, Status> {
        let worker = req.into_inner().worker_id;
        let (sessions, jobs, version) = {
            let mut s = self.0.lock();
            let (sessions, jobs) = s.drain(&worker)?;
            (sessions, jobs, s.version())
        };
        self.0.commit(version).await.map_err(unavailable)?;
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

/// The run on the wire for `Status`: a summary in typed fields, and the whole [`RunView`] as
/// JSON (`run_json`), which `hbac status` reads. A view that does not encode is an internal
/// error, not an empty `run_json` (which a client reads as an older coordinator).
fn status(v: RunView) -> Result<wire::StatusResponse, Status> {
    let run_json = serde_json::to_string(&v)
        .map_err(|e| Status::internal(format!("encoding the run's status: {e}")))?;
    Ok(wire::StatusResponse {
        phase: v.phase.into(),
        error: v.error.unwrap_or_default(),
        workers: v.live_workers as u32,
        out_url: v.out,
        cv_kl: v.results.as_ref().map(|r| r.cv),
        jobs: v
            .jobs
            .into_iter()
            .map(|j| wire::JobStatus {
                phase: j.phase.into(),
                job_id: j.id,
                arch: j.arch,
                fold: j.fold as u32,
                worker: j.worker,
                attempt: j.attempt,
                epoch: j.epoch as u32,
                epochs: j.epochs as u32,
                train_kl: j.train_kl,
                valid_kl: j.valid_kl,
                eta_s: j.eta_s,
            })
            .collect(),
        run_json,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_only_when_equal_whatever_their_lengths() {
        assert!(same(b"Bearer abc", b"Bearer abc"));
        assert!(!same(b"Bearer abd", b"Bearer abc"));
        assert!(!same(b"Bearer ab", b"Bearer abc"), "a prefix");
        assert!(!same(b"Bearer abc\0", b"Bearer abc"), "a longer token");
        assert!(!same(b"", b"Bearer abc"));
    }
}
