//! The run's scheduling state, free of I/O: the jobs, their leases, attempts and saved training
//! states, the workers, and the deadlines (lease expiry, job timeout, stalled trainers,
//! no-worker grace). The service locks it for each call; time is passed in, so every rule is
//! unit-tested without waiting. Everything that must survive a restart is in
//! [`State::entries`], which the journal writes, and [`State::new`] restores it: leases included,
//! so a restarted coordinator adopts the jobs its predecessor's workers are still training.
//!
//! Budgets: an attempt lost with its worker (lease expiry, shutdown hand-back, drain) is a
//! *disruption*, counted against `max_disruptions`; an attempt that failed (a retryable error,
//! a timeout, a stalled trainer) counts against `max_attempts` *distinct workers* it failed on
//! (and twice that many failures in all); a non-retryable failure fails the run at once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use hbac_common::proto::wire::JobPhase;
use hbac_common::records::{EpochReport, JobSummary};
use rand::Rng;

use crate::jobs::{JobDef, JobEntry, JobResult, LeaseEntry, Saved};

/// Scheduling rules of a run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// A lease not renewed for this long expires and its job is re-queued.
    pub lease_ttl: Duration,
    /// Distinct workers a job may fail on before the run fails.
    pub max_attempts: u32,
    /// Attempts of one job that may be lost with their worker before the run fails.
    pub max_disruptions: u32,
    /// Hard limit on one attempt's wall time.
    pub job_timeout: Duration,
    /// A leased job whose heartbeats report no new batch for this long is stopped and re-queued.
    pub stall_timeout: Duration,
    /// Fail the run when no worker has been heard from for this long while work remains.
    pub worker_grace: Duration,
}

impl Settings {
    /// How often workers should renew a lease.
    pub fn heartbeat(&self) -> Duration {
        self.lease_ttl / 3
    }
}

/// Live progress of a leased job, from its epoch metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    pub epoch: usize,
    pub epochs: usize,
    pub train_kl: Option<f64>,
    pub valid_kl: Option<f64>,
    /// The total time of the `timed` epochs whose time is known here.
    pub seconds: f64,
    pub timed: usize,
    /// Training throughput of the latest epoch.
    pub samples_per_second: Option<f64>,
}

impl Progress {
    /// A finished job's final figures from its `summary.json`: every epoch run, the last
    /// epoch's train KL and the best (kept) validation KL. Unreadable summaries give none.
    pub fn of_result(r: &JobResult) -> Progress {
        JobSummary::parse(r.summary_json.as_bytes(), "summary.json")
            .map(|s| Progress::of_summary(&s))
            .unwrap_or_default()
    }

    /// [`Progress::of_result`] of an already parsed summary.
    pub fn of_summary(s: &JobSummary) -> Progress {
        Progress {
            epoch: s.history.len(),
            epochs: s.history.len(),
            train_kl: s.history.last().map(|e| e.train_kl),
            valid_kl: Some(s.valid_kl),
            seconds: s.history.iter().map(|e| e.seconds).sum(),
            timed: s.history.len(),
            samples_per_second: s.history.last().map(|e| e.samples_per_second),
        }
    }

    /// Seconds left, from the mean time of the epochs timed so far.
    pub fn eta(&self) -> Option<f64> {
        (self.timed > 0 && self.epochs >= self.epoch)
            .then(|| self.seconds / self.timed as f64 * (self.epochs - self.epoch) as f64)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub id: String,
    /// The session that holds it; `None` for a lease adopted from the journal whose worker
    /// has not called this coordinator yet.
    pub session: Option<String>,
    pub worker: String,
    pub slot: u32,
    pub started: Instant,
    pub expires: Instant,
    pub progress: Progress,
    /// The latest (epoch, batch) the worker's heartbeats reported, and since when.
    pub position: (u32, u32),
    pub moved: Instant,
}

#[derive(Debug, Clone, PartialEq)]
pub enum JobState {
    Pending,
    Leased(Lease),
    Done(JobResult),
    Failed(String),
}

impl JobState {
    /// The phase on the wire.
    pub fn phase(&self) -> JobPhase {
        match self {
            JobState::Pending => JobPhase::Pending,
            JobState::Leased(_) => JobPhase::Leased,
            JobState::Done(_) => JobPhase::Done,
            JobState::Failed(_) => JobPhase::Failed,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Job {
    pub def: JobDef,
    /// Leases granted so far (the attempt number of the latest).
    pub attempts: u32,
    /// Attempts that failed, and the workers they failed on.
    pub failures: u32,
    pub failed_on: BTreeSet<String>,
    /// Attempts lost with their worker.
    pub disruptions: u32,
    /// The latest saved training state (the next attempt resumes from it).
    pub saved: Option<Saved>,
    pub state: JobState,
    /// The epochs reported to this coordinator, over all attempts (a re-run epoch replaces
    /// the earlier report); not journaled: after a restart it holds the epochs since.
    pub curve: Vec<EpochReport>,
}

#[derive(Debug, Clone)]
pub struct Worker {
    pub id: String,
    pub gpus: u32,
    pub backend: String,
    pub last_seen: Instant,
    /// Drained: no new lease; it exits once its jobs end.
    pub draining: bool,
}

/// Where the run stands.
#[derive(Debug, Clone, PartialEq)]
pub enum RunState {
    Running,
    /// Every job is done (aggregation may still be under way).
    Finished,
    Failed(String),
}

/// A lease granted to a worker slot.
#[derive(Debug, Clone, PartialEq)]
pub struct Granted {
    pub job: usize,
    pub lease_id: String,
    pub attempt: u32,
    /// The attempt folder whose saved state this attempt resumes from, with its epochs.
    pub resume: Option<Saved>,
}

/// The answer to a lease request.
#[derive(Debug, Clone, PartialEq)]
pub enum LeaseOutcome {
    Job(Granted),
    Wait(Duration),
    Stop(String),
    /// The worker is drained.
    Drain,
}

/// How an attempt ended without a result.
#[derive(Debug, Clone, PartialEq)]
pub enum Ending {
    /// The worker went away (lease expiry, shutdown hand-back, drain): a disruption.
    Lost(String),
    /// The attempt failed; `retryable`: another worker could succeed.
    Failed { message: String, retryable: bool },
}

/// Counters exported as Prometheus metrics.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    pub leases: u64,
    pub lease_expiries: u64,
    pub job_timeouts: u64,
    pub stalls: u64,
    pub retries: u64,
    pub disruptions: u64,
    pub epochs: u64,
    pub late_results: u64,
    pub adopted: u64,
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("unknown session {0}: register first (the coordinator may have restarted)")]
    UnknownSession(String),
    #[error("no worker {0:?} is registered (`hbac status` shows the workers holding jobs)")]
    UnknownWorker(String),
}

/// Why the state turns down a worker's call about a lease (a heartbeat, a result, an end):
/// the worker is told, and cancels or drops the attempt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    #[error("the run failed: {0}")]
    RunFailed(String),
    #[error("lease {0} is no longer current")]
    NotCurrent(String),
    #[error("unknown session")]
    UnknownSession,
    #[error("lease {0} is held by another session")]
    HeldElsewhere(String),
    #[error("lease {0} is no longer current; result discarded")]
    Discarded(String),
}

/// The whole scheduling state.
#[derive(Debug)]
pub struct State {
    settings: Settings,
    jobs: Vec<Job>,
    workers: HashMap<String, Worker>,
    /// Worker ids drained by `hbac drain` (kept across restarts).
    drained: BTreeSet<String>,
    run: RunState,
    counters: Counters,
    /// Bumped by every change the journal must keep.
    version: u64,
    /// Since when no worker has been heard from.
    idle_since: Instant,
    /// The coordinator generation that owns the run (part of every lease id it grants).
    generation: u64,
}

/// `n` random hexadecimal digits (sessions, lease ids, the local run's token).
pub fn random_hex(n: usize) -> String {
    let mut rng = rand::rng();
    (0..n)
        .map(|_| char::from_digit(rng.random_range(0..16), 16).unwrap_or('0'))
        .collect()
}

impl State {
    /// Sets the coordinator generation written into the lease ids granted from now on.
    pub fn set_generation(&mut self, generation: u64) {
        self.generation = generation;
    }

    /// A run of `jobs`, restored from the journal's `entries` and `drained` workers: finished
    /// jobs stay done, and leases in force are adopted with a fresh expiry.
    pub fn new(
        jobs: Vec<JobDef>,
        entries: &BTreeMap<String, JobEntry>,
        drained: BTreeSet<String>,
        settings: Settings,
        now: Instant,
    ) -> Self {
        let mut counters = Counters::default();
        let jobs = jobs
            .into_iter()
            .map(|def| {
                let e = entries.get(&def.id).cloned().unwrap_or_default();
                let state = match (e.result, e.failed, e.lease) {
                    (Some(r), _, _) => JobState::Done(r),
                    (None, Some(why), _) => JobState::Failed(why),
                    (None, None, Some(l)) => {
                        counters.adopted += 1;
                        JobState::Leased(Lease {
                            id: l.id,
                            session: None,
                            worker: l.worker,
                            slot: l.slot,
                            started: now,
                            expires: now + settings.lease_ttl,
                            progress: Progress::default(),
                            position: (0, 0),
                            moved: now,
                        })
                    }
                    (None, None, None) => JobState::Pending,
                };
                Job {
                    def,
                    attempts: e.attempts,
                    failures: e.failures,
                    failed_on: e.failed_on,
                    disruptions: e.disruptions,
                    saved: e.saved,
                    state,
                    curve: Vec::new(),
                }
            })
            .collect();
        let mut s = Self {
            settings,
            jobs,
            workers: HashMap::new(),
            drained,
            run: RunState::Running,
            counters,
            version: 0,
            idle_since: now,
            generation: 0,
        };
        if let Some(why) = s.jobs.iter().find_map(|j| match &j.state {
            JobState::Failed(why) => Some(why.clone()),
            _ => None,
        }) {
            s.run = RunState::Failed(why);
        }
        s.check_finished();
        s
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn jobs(&self) -> &[Job] {
        &self.jobs
    }

    pub fn run(&self) -> &RunState {
        &self.run
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Bumped by every change the journal must keep.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Ends the run with an error found outside the scheduling rules (aggregation, journal).
    pub fn fail_run(&mut self, why: String) {
        if !matches!(self.run, RunState::Failed(_)) {
            self.run = RunState::Failed(why);
            self.version += 1;
        }
    }

    /// What the journal keeps: every job's record.
    pub fn entries(&self) -> BTreeMap<String, JobEntry> {
        self.jobs
            .iter()
            .map(|j| {
                let mut e = JobEntry {
                    attempts: j.attempts,
                    failures: j.failures,
                    failed_on: j.failed_on.clone(),
                    disruptions: j.disruptions,
                    saved: j.saved.clone(),
                    ..JobEntry::default()
                };
                match &j.state {
                    JobState::Pending => {}
                    JobState::Leased(l) => {
                        e.lease = Some(LeaseEntry {
                            id: l.id.clone(),
                            worker: l.worker.clone(),
                            slot: l.slot,
                        })
                    }
                    JobState::Done(r) => e.result = Some(r.clone()),
                    JobState::Failed(why) => e.failed = Some(why.clone()),
                }
                (j.def.id.clone(), e)
            })
            .collect()
    }

    /// The drained worker ids (the journal keeps them).
    pub fn drained(&self) -> BTreeSet<String> {
        self.drained.clone()
    }

    /// Registers a worker; returns its session id.
    pub fn register(&mut self, id: &str, gpus: u32, backend: &str, now: Instant) -> String {
        let session = random_hex(16);
        self.workers.insert(
            session.clone(),
            Worker {
                id: id.to_string(),
                gpus,
                backend: backend.to_string(),
                last_seen: now,
                draining: self.drained.contains(id),
            },
        );
        session
    }

    /// Marks `session` as alive.
    pub fn touch(&mut self, session: &str, now: Instant) -> Result<String, Refusal> {
        let w = self
            .workers
            .get_mut(session)
            .ok_or_else(|| Refusal::UnknownSession(session.to_string()))?;
        w.last_seen = now;
        Ok(w.id.clone())
    }

    /// Workers heard from within two lease lifetimes.
    pub fn live_workers(&self, now: Instant) -> usize {
        self.workers
            .values()
            .filter(|w| now.duration_since(w.last_seen) < 2 * self.settings.lease_ttl)
            .count()
    }

    /// The registered workers, by session.
    pub fn workers(&self) -> impl Iterator<Item = &Worker> {
        self.workers.values()
    }

    /// Drains `worker_id` (every registration, now and after a restart): no new lease for it.
    /// Returns how many registrations it has and how many jobs it still holds.
    pub fn drain(&mut self, worker_id: &str) -> Result<(usize, usize), Refusal> {
        let held = self
            .jobs
            .iter()
            .filter(|j| matches!(&j.state, JobState::Leased(l) if l.worker == worker_id))
            .count();
        let mut sessions = 0;
        for w in self.workers.values_mut().filter(|w| w.id == worker_id) {
            w.draining = true;
            sessions += 1;
        }
        if sessions == 0 && held == 0 {
            return Err(Refusal::UnknownWorker(worker_id.to_string()));
        }
        if self.drained.insert(worker_id.to_string()) {
            self.version += 1;
        }
        Ok((sessions, held))
    }

    /// A job for slot `slot` of `session`'s worker, if any is pending. A slot that already
    /// holds a lease gets the same lease again (its earlier answer was lost): asking twice
    /// never costs an attempt.
    pub fn lease(
        &mut self,
        session: &str,
        slot: u32,
        now: Instant,
    ) -> Result<LeaseOutcome, Refusal> {
        let worker = self.touch(session, now)?;
        match &self.run {
            RunState::Running => {}
            RunState::Finished => return Ok(LeaseOutcome::Stop("the run is finished".into())),
            RunState::Failed(e) => return Ok(LeaseOutcome::Stop(format!("the run failed: {e}"))),
        }
        let held = self.jobs.iter().position(|j| {
            matches!(&j.state, JobState::Leased(l)
                if l.slot == slot && (l.session.as_deref() == Some(session)
                    || (l.session.is_none() && l.worker == worker)))
        });
        if let Some(index) = held {
            let job = &mut self.jobs[index];
            let JobState::Leased(l) = &mut job.state else {
                unreachable!("matched above")
            };
            l.session = Some(session.to_string());
            l.expires = now + self.settings.lease_ttl;
            return Ok(LeaseOutcome::Job(Granted {
                job: index,
                lease_id: l.id.clone(),
                attempt: job.attempts,
                resume: job.saved.clone(),
            }));
        }
        if self.workers[session].draining {
            return Ok(LeaseOutcome::Drain);
        }
        let Some(index) = self.jobs.iter().position(|j| j.state == JobState::Pending) else {
            // Short waits: idle workers learn quickly that the run ended (see `linger`).
            return Ok(LeaseOutcome::Wait(
                self.settings.heartbeat().min(Duration::from_millis(500)),
            ));
        };
        let job = &mut self.jobs[index];
        job.attempts += 1;
        let lease_id = format!(
            "{}-g{}-a{}-{}",
            job.def.id,
            self.generation,
            job.attempts,
            random_hex(6)
        );
        job.state = JobState::Leased(Lease {
            id: lease_id.clone(),
            session: Some(session.to_string()),
            worker,
            slot,
            started: now,
            expires: now + self.settings.lease_ttl,
            progress: Progress::default(),
            position: (0, 0),
            moved: now,
        });
        self.counters.leases += 1;
        self.version += 1;
        Ok(LeaseOutcome::Job(Granted {
            job: index,
            lease_id,
            attempt: job.attempts,
            resume: job.saved.clone(),
        }))
    }

    /// The job whose current lease, or accepted result, is `lease_id`.
    pub fn job_of_lease(&self, lease_id: &str) -> Option<usize> {
        self.jobs.iter().position(|j| match &j.state {
            JobState::Leased(l) => l.id == lease_id,
            JobState::Done(r) => r.lease_id == lease_id,
            _ => false,
        })
    }

    fn leased(&mut self, lease_id: &str) -> Option<(usize, &mut Lease)> {
        self.jobs
            .iter_mut()
            .enumerate()
            .find_map(|(i, j)| match &mut j.state {
                JobState::Leased(l) if l.id == lease_id => Some((i, l)),
                _ => None,
            })
    }

    /// Renews a lease, with the worker's position in it (epoch, batch); an error orders the
    /// worker to cancel the job. A session this coordinator does not know is taken over
    /// when it holds an adopted lease (its worker registered with a predecessor).
    pub fn heartbeat(
        &mut self,
        session: &str,
        lease_id: &str,
        position: (u32, u32),
        now: Instant,
    ) -> Result<(), LeaseError> {
        if let RunState::Failed(e) = &self.run {
            return Err(LeaseError::RunFailed(e.clone()));
        }
        let ttl = self.settings.lease_ttl;
        let known = self.touch(session, now).is_ok();
        let Some((_, l)) = self.leased(lease_id) else {
            return Err(if known {
                LeaseError::NotCurrent(lease_id.to_string())
            } else {
                LeaseError::UnknownSession
            });
        };
        match &l.session {
            Some(s) if s == session => {}
            None => l.session = Some(session.to_string()),
            Some(_) => return Err(LeaseError::HeldElsewhere(lease_id.to_string())),
        }
        l.expires = now + ttl;
        if position != l.position {
            l.position = position;
            l.moved = now;
        }
        let worker = l.worker.clone();
        if !known {
            let draining = self.drained.contains(&worker);
            self.workers.insert(
                session.to_string(),
                Worker {
                    id: worker,
                    gpus: 0,
                    backend: String::new(),
                    last_seen: now,
                    draining,
                },
            );
        }
        Ok(())
    }

    /// Records epoch `r` (of `epochs`) of a leased job (the lease keeps the total of the epoch
    /// times for the ETA, the job its curve); `saved`: the attempt saved its training state after
    /// this epoch. False if the lease is not current.
    pub fn epoch(&mut self, lease_id: &str, r: &EpochReport, epochs: usize, saved: bool) -> bool {
        let Some((index, _)) = self.leased(lease_id) else {
            return false;
        };
        let job = &mut self.jobs[index];
        job.curve.retain(|e| e.epoch < r.epoch);
        job.curve.push(r.clone());
        let done = r.epoch + 1;
        let progress = Progress {
            epoch: done,
            epochs,
            train_kl: Some(r.train_kl),
            valid_kl: r.valid_kl,
            seconds: job.curve.iter().map(|e| e.seconds).sum(),
            timed: job.curve.len(),
            samples_per_second: Some(r.samples_per_second),
        };
        if let JobState::Leased(l) = &mut job.state {
            l.progress = progress;
        }
        let epochs = done;
        self.counters.epochs += 1;
        if saved && job.saved.as_ref().is_none_or(|s| s.epochs < epochs) {
            job.saved = Some(Saved {
                lease_id: lease_id.to_string(),
                epochs,
            });
            self.version += 1;
        }
        true
    }

    /// Accepts a job's result exactly once: only from its current lease. The same lease
    /// reporting again (its acknowledgement was lost) is answered the same way. Returns the
    /// job index.
    pub fn complete(&mut self, lease_id: &str, mut result: JobResult) -> Result<usize, LeaseError> {
        if let Some(index) = self
            .jobs
            .iter()
            .position(|j| matches!(&j.state, JobState::Done(r) if r.lease_id == lease_id))
        {
            return Ok(index);
        }
        let Some((index, lease)) = self.leased(lease_id) else {
            self.counters.late_results += 1;
            return Err(LeaseError::Discarded(lease_id.to_string()));
        };
        result.worker = lease.worker.clone();
        result.lease_id = lease_id.to_string();
        result.attempt = self.jobs[index].attempts;
        self.jobs[index].state = JobState::Done(result);
        self.version += 1;
        self.check_finished();
        Ok(index)
    }

    /// An attempt that ended without a result, as its worker reported it.
    pub fn end(&mut self, lease_id: &str, ending: Ending) -> Result<(), LeaseError> {
        let Some((index, _)) = self.leased(lease_id) else {
            self.counters.late_results += 1;
            return Err(LeaseError::NotCurrent(lease_id.to_string()));
        };
        self.end_attempt(index, ending);
        Ok(())
    }

    fn end_attempt(&mut self, index: usize, ending: Ending) {
        let s = &self.settings;
        let job = &mut self.jobs[index];
        let worker = match &job.state {
            JobState::Leased(l) => l.worker.clone(),
            _ => String::new(),
        };
        self.version += 1;
        let why = match ending {
            Ending::Lost(message) => {
                job.disruptions += 1;
                self.counters.disruptions += 1;
                if job.disruptions <= s.max_disruptions {
                    job.state = JobState::Pending;
                    self.counters.retries += 1;
                    return;
                }
                format!(
                    "job {} lost its worker {} times (the disruption budget); last: {message}",
                    job.def.id, job.disruptions
                )
            }
            Ending::Failed {
                message,
                retryable: true,
            } => {
                job.failures += 1;
                job.failed_on.insert(worker);
                if (job.failed_on.len() as u32) < s.max_attempts
                    && job.failures < 2 * s.max_attempts
                {
                    job.state = JobState::Pending;
                    self.counters.retries += 1;
                    return;
                }
                format!(
                    "job {} failed {} times on {} workers (the retry budget); last: {message}",
                    job.def.id,
                    job.failures,
                    job.failed_on.len()
                )
            }
            Ending::Failed {
                message,
                retryable: false,
            } => format!("job {} failed: {message}", job.def.id),
        };
        job.state = JobState::Failed(why.clone());
        if self.run == RunState::Running {
            self.run = RunState::Failed(why);
        }
    }

    fn check_finished(&mut self) {
        if self.run == RunState::Running
            && self
                .jobs
                .iter()
                .all(|j| matches!(j.state, JobState::Done(_)))
        {
            self.run = RunState::Finished;
        }
    }

    /// Applies the deadlines at `now`: expired leases are disruptions; timed-out and stalled
    /// attempts are retryable failures; the run fails when no worker has been heard from for
    /// the grace period.
    pub fn tick(&mut self, now: Instant) {
        let (timeout, stall) = (self.settings.job_timeout, self.settings.stall_timeout);
        for i in 0..self.jobs.len() {
            let JobState::Leased(l) = &self.jobs[i].state else {
                continue;
            };
            if now >= l.expires {
                let msg = format!("lease of worker {} expired (no heartbeat)", l.worker);
                self.counters.lease_expiries += 1;
                self.end_attempt(i, Ending::Lost(msg));
            } else if now.duration_since(l.started) >= timeout {
                let msg = format!("attempt exceeded the job timeout of {timeout:?}");
                self.counters.job_timeouts += 1;
                self.end_attempt(i, failed(msg));
            } else if now.duration_since(l.moved) >= stall {
                let msg = format!(
                    "worker {} trained no batch for {stall:?} (stuck at epoch {}, batch {})",
                    l.worker, l.position.0, l.position.1
                );
                self.counters.stalls += 1;
                self.end_attempt(i, failed(msg));
            }
        }
        if self.live_workers(now) > 0 {
            self.idle_since = now;
        } else if self.run == RunState::Running
            && now.duration_since(self.idle_since) >= self.settings.worker_grace
        {
            let left = self
                .jobs
                .iter()
                .filter(|j| !matches!(j.state, JobState::Done(_)))
                .count();
            self.run = RunState::Failed(format!(
                "no worker has been connected for {:?}; {left} job(s) not done",
                self.settings.worker_grace
            ));
        }
    }

    /// Results of the finished jobs, by job id.
    pub fn done(&self) -> HashMap<String, JobResult> {
        self.jobs
            .iter()
            .filter_map(|j| match &j.state {
                JobState::Done(r) => Some((j.def.id.clone(), r.clone())),
                _ => None,
            })
            .collect()
    }
}

/// A retryable failure.
fn failed(message: String) -> Ending {
    Ending::Failed {
        message,
        retryable: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            lease_ttl: Duration::from_secs(10),
            max_attempts: 2,
            max_disruptions: 3,
            job_timeout: Duration::from_secs(100),
            stall_timeout: Duration::from_secs(50),
            worker_grace: Duration::from_secs(30),
        }
    }

    fn jobs(n: usize) -> Vec<JobDef> {
        (0..n)
            .map(|f| JobDef {
                id: format!("a-fold{f}"),
                arch: "a".into(),
                fold: f,
            })
            .collect()
    }

    fn fresh(n: usize, t0: Instant) -> State {
        State::new(jobs(n), &BTreeMap::new(), BTreeSet::new(), settings(), t0)
    }

    /// The state a restarted coordinator builds from `s`'s journal entries.
    fn restart(s: &State, n: usize, now: Instant) -> State {
        State::new(jobs(n), &s.entries(), s.drained(), settings(), now)
    }

    fn result() -> JobResult {
        JobResult {
            lease_id: String::new(),
            out_url: "x".into(),
            summary_json: "{}".into(),
            attempt: 0,
            worker: String::new(),
        }
    }

    fn granted(o: LeaseOutcome) -> Granted {
        match o {
            LeaseOutcome::Job(g) => g,
            other => panic!("expected a job, got {other:?}"),
        }
    }

    fn lost(why: &str) -> Ending {
        Ending::Lost(why.into())
    }

    #[test]
    fn a_drained_worker_keeps_its_job_and_gets_no_new_one() {
        let t0 = Instant::now();
        let mut s = fresh(3, t0);
        let a = s.register("a", 1, "cpu", t0);
        let b = s.register("b", 1, "cpu", t0);
        let g = granted(s.lease(&a, 0, t0).unwrap());
        assert_eq!(s.drain("a").unwrap(), (1, 1));
        assert_eq!(
            s.drain("nobody"),
            Err(Refusal::UnknownWorker("nobody".into()))
        );
        assert_eq!(s.lease(&a, 1, t0).unwrap(), LeaseOutcome::Drain);
        // Its lease still renews and its result is still accepted.
        assert!(s.heartbeat(&a, &g.lease_id, (0, 1), t0).is_ok());
        granted(s.lease(&b, 0, t0).unwrap());
        // The drain survives a restart and applies to a new registration of the same id.
        let mut r = restart(&s, 3, t0);
        let a2 = r.register("a", 1, "cpu", t0);
        assert_eq!(r.lease(&a2, 1, t0).unwrap(), LeaseOutcome::Drain);
    }

    #[test]
    fn a_finished_job_shows_its_last_train_and_best_valid_kl() {
        let result = |summary: &str| JobResult {
            summary_json: summary.into(),
            ..result()
        };
        let summary = r#"{"best_epoch": 0, "valid_kl": 0.5, "oof_kaggle_kl": 0.6,
            "prior_kaggle_kl": 1.2, "history": [
            {"epoch": 0, "lr": 0.001, "train_kl": 1.0, "valid_kl": 0.5, "seconds": 2.0,
             "samples_per_second": 4.0, "best": true},
            {"epoch": 1, "lr": 0.001, "train_kl": 0.8, "valid_kl": 0.7, "seconds": 3.0,
             "samples_per_second": 4.0, "best": false}]}"#;
        let p = Progress::of_result(&result(summary));
        assert_eq!((p.epoch, p.epochs), (2, 2));
        assert_eq!(
            (p.train_kl, p.valid_kl, p.seconds),
            (Some(0.8), Some(0.5), 5.0)
        );
        assert_eq!(
            Progress::of_result(&result("not json")),
            Progress::default()
        );
    }

    #[test]
    fn lease_ids_carry_the_owner_generation() {
        let t0 = Instant::now();
        let mut s = fresh(2, t0);
        s.set_generation(7);
        let w = s.register("w", 1, "cpu", t0);
        let g = granted(s.lease(&w, 0, t0).unwrap());
        assert!(g.lease_id.contains("-g7-a1-"), "{}", g.lease_id);
    }

    #[test]
    fn every_job_is_leased_once_then_workers_wait_then_stop() {
        let t0 = Instant::now();
        let mut s = fresh(2, t0);
        let w = s.register("w", 2, "cpu", t0);
        let a = granted(s.lease(&w, 0, t0).unwrap());
        let b = granted(s.lease(&w, 1, t0).unwrap());
        assert_ne!(a.job, b.job);
        assert!(matches!(s.lease(&w, 2, t0).unwrap(), LeaseOutcome::Wait(_)));
        s.complete(&a.lease_id, result()).unwrap();
        assert_eq!(*s.run(), RunState::Running);
        s.complete(&b.lease_id, result()).unwrap();
        assert_eq!(*s.run(), RunState::Finished);
        assert!(matches!(s.lease(&w, 0, t0).unwrap(), LeaseOutcome::Stop(_)));
    }

    #[test]
    fn asking_again_for_a_slot_returns_its_lease_without_a_new_attempt() {
        let t0 = Instant::now();
        let mut s = fresh(2, t0);
        let w = s.register("w", 1, "cpu", t0);
        let first = granted(s.lease(&w, 0, t0).unwrap());
        let again = granted(s.lease(&w, 0, t0).unwrap());
        assert_eq!(first, again);
        assert_eq!(s.jobs()[first.job].attempts, 1);
        assert_eq!(s.counters().leases, 1);
    }

    #[test]
    fn an_expired_lease_is_requeued_as_a_disruption_and_its_late_result_discarded() {
        let t0 = Instant::now();
        let mut s = fresh(1, t0);
        let w1 = s.register("w1", 1, "cpu", t0);
        let w2 = s.register("w2", 1, "cpu", t0);
        let first = granted(s.lease(&w1, 0, t0).unwrap());
        // w2 keeps heartbeating its session; w1's lease is never renewed.
        let t1 = t0 + Duration::from_secs(11);
        s.touch(&w2, t1).unwrap();
        s.tick(t1);
        assert_eq!(s.counters().lease_expiries, 1);
        assert_eq!((s.jobs()[0].disruptions, s.jobs()[0].failures), (1, 0));
        assert_eq!(
            s.heartbeat(&w1, &first.lease_id, (0, 0), t1),
            Err(LeaseError::NotCurrent(first.lease_id.clone()))
        );
        let second = granted(s.lease(&w2, 0, t1).unwrap());
        assert_eq!(second.attempt, 2);
        assert_eq!(
            s.complete(&first.lease_id, result()),
            Err(LeaseError::Discarded(first.lease_id.clone())),
            "late result"
        );
        s.complete(&second.lease_id, result()).unwrap();
        // The same lease reporting again is acknowledged again, and changes nothing.
        let version = s.version();
        assert_eq!(s.complete(&second.lease_id, result()), Ok(0));
        assert_eq!(s.version(), version);
        assert_eq!(s.counters().late_results, 1);
        match &s.jobs()[0].state {
            JobState::Done(r) => assert_eq!(
                (r.worker.as_str(), r.attempt, r.lease_id.as_str()),
                ("w2", 2, second.lease_id.as_str())
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn heartbeats_with_progress_keep_a_lease_alive_and_a_stalled_trainer_is_stopped() {
        let t0 = Instant::now();
        let mut s = fresh(1, t0);
        let w = s.register("w", 1, "cpu", t0);
        let g = granted(s.lease(&w, 0, t0).unwrap());
        for k in 1..=5 {
            let t = t0 + Duration::from_secs(8 * k);
            s.heartbeat(&w, &g.lease_id, (0, k as u32), t).unwrap();
            s.tick(t);
        }
        assert!(matches!(s.jobs()[0].state, JobState::Leased(_)));
        // Heartbeats go on, the batch does not move: stopped after the stall timeout.
        let stuck = t0 + Duration::from_secs(40);
        for k in 1..=7 {
            let t = stuck + Duration::from_secs(8 * k);
            let _ = s.heartbeat(&w, &g.lease_id, (0, 5), t);
            s.tick(t);
        }
        assert_eq!(s.counters().stalls, 1);
        assert_eq!(s.jobs()[0].state, JobState::Pending);
        assert_eq!(s.jobs()[0].failures, 1);
        let t = stuck + Duration::from_secs(60);
        assert!(s.heartbeat(&w, &g.lease_id, (0, 5), t).is_err(), "cancel");
    }

    #[test]
    fn failures_count_per_worker_and_disruptions_have_their_own_budget() {
        let t0 = Instant::now();
        let retry = |m: &str| Ending::Failed {
            message: m.into(),
            retryable: true,
        };
        let mut s = fresh(2, t0);
        let a = s.register("a", 1, "cpu", t0);
        let b = s.register("b", 1, "cpu", t0);
        // Lost workers do not use up the failure budget.
        for _ in 0..3 {
            let g = granted(s.lease(&a, 0, t0).unwrap());
            s.end(&g.lease_id, lost("shutting down")).unwrap();
        }
        assert_eq!(*s.run(), RunState::Running);
        // Two failures on the same worker: still within budget (one distinct worker).
        for _ in 0..2 {
            let g = granted(s.lease(&a, 0, t0).unwrap());
            s.end(&g.lease_id, retry("CUDA error")).unwrap();
        }
        assert_eq!(*s.run(), RunState::Running);
        // A failure on a second worker spends the budget of 2 distinct workers.
        let g = granted(s.lease(&b, 0, t0).unwrap());
        s.end(&g.lease_id, retry("CUDA error")).unwrap();
        let RunState::Failed(why) = s.run() else {
            panic!("{:?}", s.run())
        };
        assert!(why.contains("on 2 workers"), "{why}");

        let mut s = fresh(1, t0);
        let a = s.register("a", 1, "cpu", t0);
        for _ in 0..4 {
            let g = granted(s.lease(&a, 0, t0).unwrap());
            s.end(&g.lease_id, lost("node pre-empted")).unwrap();
        }
        assert!(matches!(s.run(), RunState::Failed(e) if e.contains("disruption budget")));

        let mut s = fresh(2, t0);
        let w = s.register("w", 1, "cpu", t0);
        let g = granted(s.lease(&w, 0, t0).unwrap());
        let corrupt = Ending::Failed {
            message: "corrupt file x.parquet".into(),
            retryable: false,
        };
        s.end(&g.lease_id, corrupt).unwrap();
        assert_eq!(
            *s.run(),
            RunState::Failed("job a-fold0 failed: corrupt file x.parquet".into())
        );
        // A run that failed for good stays failed after a restart.
        assert!(matches!(restart(&s, 2, t0).run(), RunState::Failed(_)));
    }

    #[test]
    fn no_worker_within_the_grace_period_fails_the_run() {
        let t0 = Instant::now();
        let mut s = fresh(1, t0);
        s.tick(t0 + Duration::from_secs(29));
        assert_eq!(*s.run(), RunState::Running);
        s.tick(t0 + Duration::from_secs(31));
        assert!(matches!(s.run(), RunState::Failed(e) if e.contains("no worker")));
    }

    #[test]
    fn a_job_over_its_timeout_is_retried() {
        let t0 = Instant::now();
        let mut s = fresh(1, t0);
        let w = s.register("w", 1, "cpu", t0);
        let g = granted(s.lease(&w, 0, t0).unwrap());
        let t = t0 + Duration::from_secs(101);
        s.heartbeat(&w, &g.lease_id, (3, 1), t).unwrap();
        s.tick(t);
        assert_eq!(s.counters().job_timeouts, 1);
        assert_eq!(s.jobs()[0].state, JobState::Pending);
    }

    #[test]
    fn a_restarted_coordinator_adopts_leases_keeps_counts_and_resumes_from_saved_states() {
        let t0 = Instant::now();
        let mut s = fresh(3, t0);
        let w = s.register("w", 2, "cpu", t0);
        let done = granted(s.lease(&w, 0, t0).unwrap());
        s.complete(&done.lease_id, result()).unwrap();
        let running = granted(s.lease(&w, 0, t0).unwrap());
        let epoch = |e: usize| EpochReport {
            epoch: e - 1,
            lr: 1e-3,
            train_kl: 1.0,
            valid_kl: Some(1.0),
            seconds: 1.0,
            samples_per_second: 10.0,
            best: true,
        };
        assert!(s.epoch(&running.lease_id, &epoch(2), 5, true));
        let t1 = t0 + Duration::from_secs(60);
        let mut r = restart(&s, 3, t1);
        assert_eq!(r.counters().adopted, 1);
        assert!(matches!(r.jobs()[0].state, JobState::Done(_)), "kept");
        // The worker's old session is unknown here; its heartbeat is accepted all the same.
        r.heartbeat(&w, &running.lease_id, (2, 1), t1).unwrap();
        assert_eq!(r.live_workers(t1), 1);
        // Its epochs and its result are accepted from the adopted lease.
        assert!(r.epoch(&running.lease_id, &epoch(3), 5, true));
        r.complete(&running.lease_id, result()).unwrap();
        assert!(matches!(&r.jobs()[1].state, JobState::Done(d) if d.attempt == 1));
        // The third job was never leased: attempt 1 here, not attempt 0 or 2.
        let next = granted(r.lease(&w, 1, t1).unwrap());
        assert_eq!((next.job, next.attempt), (2, 1));
        // A job whose worker died after saving state resumes from it on its next attempt.
        r.epoch(&next.lease_id, &epoch(4), 5, true);
        let t2 = t1 + Duration::from_secs(11);
        r.tick(t2);
        let w2 = r.register("w2", 1, "cpu", t2);
        let again = granted(r.lease(&w2, 0, t2).unwrap());
        assert_eq!(again.attempt, 2);
        assert_eq!(
            again.resume,
            Some(Saved {
                lease_id: next.lease_id.clone(),
                epochs: 4
            })
        );
    }

    /// A seeded random walk over the lease state machine with coordinator restarts: whatever
    /// happens, an accepted result never changes or disappears, each job is accepted from one
    /// lease, attempts never go down, and a job is never leased to two slots at once.
    #[test]
    fn model_check_of_leases_results_and_restarts() {
        use rand::SeedableRng;
        const N: usize = 4;
        for seed in 0..300u64 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let mut now = Instant::now();
            let mut s = fresh(N, now);
            let mut sessions: Vec<String> = Vec::new();
            // Leases with the session that got them (only that worker knows the id).
            let mut held: Vec<(String, String)> = Vec::new();
            let mut accepted: HashMap<String, JobResult> = HashMap::new();
            let mut attempts = [0u32; N];
            for step in 0..120 {
                now += Duration::from_millis(rng.random_range(0..4000));
                match rng.random_range(0..100) {
                    0..10 => sessions.push(s.register(&format!("w{step}"), 2, "cpu", now)),
                    10..35 if !sessions.is_empty() => {
                        let w = &sessions[rng.random_range(0..sessions.len())];
                        if let Ok(LeaseOutcome::Job(g)) = s.lease(w, rng.random_range(0..2), now) {
                            held.push((g.lease_id, w.clone()));
                        }
                    }
                    35..55 if !held.is_empty() => {
                        let (l, w) = &held[rng.random_range(0..held.len())];
                        let _ = s.heartbeat(w, l, (0, step), now);
                    }
                    55..70 if !held.is_empty() => {
                        let l = held[rng.random_range(0..held.len())].0.clone();
                        if let Ok(i) = s.complete(&l, result()) {
                            let JobState::Done(r) = &s.jobs()[i].state else {
                                panic!("seed {seed}: accepted but not done")
                            };
                            let id = s.jobs()[i].def.id.clone();
                            let first = accepted.entry(id).or_insert_with(|| r.clone());
                            assert_eq!(first, r, "seed {seed}: a result changed");
                        }
                    }
                    70..80 if !held.is_empty() => {
                        let l = held[rng.random_range(0..held.len())].0.clone();
                        let _ = s.end(&l, lost("bye"));
                    }
                    80..90 => s.tick(now),
                    90..96 => s = restart(&s, N, now),
                    _ => {}
                }
                for (i, j) in s.jobs().iter().enumerate() {
                    assert!(j.attempts >= attempts[i], "seed {seed}: attempts went down");
                    attempts[i] = j.attempts;
                    if let Some(r) = accepted.get(&j.def.id) {
                        assert_eq!(
                            j.state,
                            JobState::Done(r.clone()),
                            "seed {seed}: an accepted result was lost"
                        );
                    }
                }
                let mut slots: Vec<(String, u32)> = s
                    .jobs()
                    .iter()
                    .filter_map(|j| match &j.state {
                        JobState::Leased(l) => Some((l.session.clone()?, l.slot)),
                        _ => None,
                    })
                    .collect();
                let before = slots.len();
                slots.sort();
                slots.dedup();
                assert_eq!(slots.len(), before, "seed {seed}: two jobs on one slot");
            }
        }
    }
}
