//! The run's scheduling state, free of I/O: the jobs, their leases and attempts, the workers,
//! and the deadlines (lease expiry, job timeout, no-worker grace). The service locks it for each
//! call; time is passed in, so every rule is unit-tested without waiting.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand::Rng;
use serde::{Deserialize, Serialize};

/// Scheduling rules of a run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// A lease not renewed for this long expires and its job is re-queued.
    pub lease_ttl: Duration,
    /// Attempts per job (leases that ended without a result) before the run fails.
    pub max_attempts: u32,
    /// Hard limit on one attempt's wall time.
    pub job_timeout: Duration,
    /// Fail the run when no worker has been heard from for this long while work remains.
    pub worker_grace: Duration,
}

impl Settings {
    /// How often workers should renew a lease.
    pub fn heartbeat(&self) -> Duration {
        self.lease_ttl / 3
    }
}

/// One (architecture, fold) job of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobDef {
    pub id: String,
    pub arch: String,
    pub fold: usize,
}

/// An accepted result: where the attempt's files are, and its `summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    pub out_url: String,
    pub summary_json: String,
    pub attempt: u32,
    pub worker: String,
}

/// Live progress of a leased job, from its epoch metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    pub epoch: usize,
    pub epochs: usize,
    pub train_kl: Option<f64>,
    pub valid_kl: Option<f64>,
    pub seconds: f64,
}

impl Progress {
    /// A finished job's final figures from its `summary.json`: every epoch run, the last
    /// epoch's train KL and the best (kept) validation KL. Unreadable summaries give none.
    pub fn of_result(r: &JobResult) -> Progress {
        #[derive(Deserialize)]
        struct Epoch {
            train_kl: f64,
            seconds: f64,
        }
        #[derive(Deserialize)]
        struct Summary {
            valid_kl: f64,
            history: Vec<Epoch>,
        }
        match serde_json::from_str::<Summary>(&r.summary_json) {
            Ok(s) => Progress {
                epoch: s.history.len(),
                epochs: s.history.len(),
                train_kl: s.history.last().map(|e| e.train_kl),
                valid_kl: Some(s.valid_kl),
                seconds: s.history.iter().map(|e| e.seconds).sum(),
            },
            Err(_) => Progress::default(),
        }
    }

    /// Seconds left, from the mean epoch time so far (`seconds` is the total of the epochs
    /// reported).
    pub fn eta(&self) -> Option<f64> {
        (self.epoch > 0 && self.epochs >= self.epoch)
            .then(|| self.seconds / self.epoch as f64 * (self.epochs - self.epoch) as f64)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub id: String,
    pub session: String,
    pub worker: String,
    pub started: Instant,
    pub expires: Instant,
    pub progress: Progress,
}

#[derive(Debug, Clone, PartialEq)]
pub enum JobState {
    Pending,
    Leased(Lease),
    Done(JobResult),
    Failed(String),
}

impl JobState {
    pub fn name(&self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Leased(_) => "leased",
            JobState::Done(_) => "done",
            JobState::Failed(_) => "failed",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Job {
    pub def: JobDef,
    /// Leases granted so far (the attempt number of the latest).
    pub attempts: u32,
    pub state: JobState,
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

/// Counters exported as Prometheus metrics.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    pub leases: u64,
    pub lease_expiries: u64,
    pub job_timeouts: u64,
    pub retries: u64,
    pub epochs: u64,
    pub late_results: u64,
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("unknown session {0}: register first (the coordinator may have restarted)")]
    UnknownSession(String),
    #[error("no worker {0:?} is registered (`hbac status` shows the workers holding jobs)")]
    UnknownWorker(String),
}

/// The whole scheduling state.
#[derive(Debug)]
pub struct State {
    pub settings: Settings,
    pub jobs: Vec<Job>,
    pub workers: HashMap<String, Worker>,
    pub run: RunState,
    pub counters: Counters,
    /// Results accepted by this coordinator so far (orders journal writes).
    pub accepted: usize,
    /// Since when no worker has been heard from (`None` while one is).
    idle_since: Instant,
}

/// `n` random hexadecimal digits (sessions, lease ids, the local run's token).
pub fn random_hex(n: usize) -> String {
    let mut rng = rand::rng();
    (0..n)
        .map(|_| char::from_digit(rng.random_range(0..16), 16).unwrap_or('0'))
        .collect()
}

impl State {
    /// A run of `jobs`; those in `done` (from the journal) are finished already.
    pub fn new(
        jobs: Vec<JobDef>,
        done: &HashMap<String, JobResult>,
        settings: Settings,
        now: Instant,
    ) -> Self {
        let jobs = jobs
            .into_iter()
            .map(|def| {
                let state = match done.get(&def.id) {
                    Some(r) => JobState::Done(r.clone()),
                    None => JobState::Pending,
                };
                Job {
                    attempts: done.get(&def.id).map_or(0, |r| r.attempt),
                    def,
                    state,
                }
            })
            .collect();
        let mut s = Self {
            settings,
            jobs,
            workers: HashMap::new(),
            run: RunState::Running,
            counters: Counters::default(),
            accepted: 0,
            idle_since: now,
        };
        s.check_finished();
        s
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
                draining: false,
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

    /// Drains every registration of `worker_id`: no new lease for it. Returns how many
    /// registrations were drained and how many jobs they still hold.
    pub fn drain(&mut self, worker_id: &str) -> Result<(usize, usize), Refusal> {
        let mut sessions = Vec::new();
        for (session, w) in self.workers.iter_mut().filter(|(_, w)| w.id == worker_id) {
            w.draining = true;
            sessions.push(session.clone());
        }
        if sessions.is_empty() {
            return Err(Refusal::UnknownWorker(worker_id.to_string()));
        }
        let held = self
            .jobs
            .iter()
            .filter(|j| matches!(&j.state, JobState::Leased(l) if sessions.contains(&l.session)))
            .count();
        Ok((sessions.len(), held))
    }

    /// A job for one slot of `session`'s worker, if any is pending.
    pub fn lease(&mut self, session: &str, now: Instant) -> Result<LeaseOutcome, Refusal> {
        let worker = self.touch(session, now)?;
        match &self.run {
            RunState::Running => {}
            RunState::Finished => return Ok(LeaseOutcome::Stop("the run is finished".into())),
            RunState::Failed(e) => return Ok(LeaseOutcome::Stop(format!("the run failed: {e}"))),
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
        let lease_id = format!("{}-a{}-{}", job.def.id, job.attempts, random_hex(6));
        job.state = JobState::Leased(Lease {
            id: lease_id.clone(),
            session: session.to_string(),
            worker,
            started: now,
            expires: now + self.settings.lease_ttl,
            progress: Progress::default(),
        });
        self.counters.leases += 1;
        Ok(LeaseOutcome::Job(Granted {
            job: index,
            lease_id,
            attempt: job.attempts,
        }))
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

    /// Renews a lease; `Err(reason)` orders the worker to cancel the job.
    pub fn heartbeat(&mut self, session: &str, lease_id: &str, now: Instant) -> Result<(), String> {
        if self.touch(session, now).is_err() {
            return Err("unknown session".into());
        }
        if let RunState::Failed(e) = &self.run {
            return Err(format!("the run failed: {e}"));
        }
        let ttl = self.settings.lease_ttl;
        match self.leased(lease_id) {
            Some((_, l)) => {
                l.expires = now + ttl;
                Ok(())
            }
            None => Err(format!("lease {lease_id} is no longer current")),
        }
    }

    /// Records one epoch of a leased job (`p.seconds` is that epoch's time; the lease keeps
    /// the running total for the ETA); false if the lease is not current.
    pub fn epoch(&mut self, lease_id: &str, p: Progress) -> bool {
        match self.leased(lease_id) {
            Some((_, l)) => {
                let seconds = l.progress.seconds + p.seconds;
                l.progress = Progress { seconds, ..p };
                self.counters.epochs += 1;
                true
            }
            None => false,
        }
    }

    /// Accepts a job's result exactly once: only from its current lease. Returns the job index.
    pub fn complete(&mut self, lease_id: &str, mut result: JobResult) -> Result<usize, String> {
        let Some((index, lease)) = self.leased(lease_id) else {
            self.counters.late_results += 1;
            return Err(format!(
                "lease {lease_id} is no longer current; result discarded"
            ));
        };
        result.worker = lease.worker.clone();
        result.attempt = self.jobs[index].attempts;
        self.jobs[index].state = JobState::Done(result);
        self.accepted += 1;
        self.check_finished();
        Ok(index)
    }

    /// A failed attempt: re-queued while retryable and within the budget, else the run fails.
    pub fn fail(&mut self, lease_id: &str, message: &str, retryable: bool) -> Result<(), String> {
        let Some((index, _)) = self.leased(lease_id) else {
            self.counters.late_results += 1;
            return Err(format!("lease {lease_id} is no longer current"));
        };
        self.end_attempt(index, message, retryable);
        Ok(())
    }

    fn end_attempt(&mut self, index: usize, message: &str, retryable: bool) {
        let max = self.settings.max_attempts;
        let job = &mut self.jobs[index];
        if retryable && job.attempts < max {
            job.state = JobState::Pending;
            self.counters.retries += 1;
            return;
        }
        let why = if retryable {
            format!(
                "job {} failed {} times (the retry budget); last: {message}",
                job.def.id, job.attempts
            )
        } else {
            format!("job {} failed: {message}", job.def.id)
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

    /// Applies the deadlines at `now`: expired leases and timed-out jobs end their attempt
    /// (retryable), and the run fails when no worker has been heard from for the grace period.
    pub fn tick(&mut self, now: Instant) {
        let timeout = self.settings.job_timeout;
        for i in 0..self.jobs.len() {
            let JobState::Leased(l) = &self.jobs[i].state else {
                continue;
            };
            if now >= l.expires {
                let msg = format!("lease of worker {} expired (no heartbeat)", l.worker);
                self.counters.lease_expiries += 1;
                self.end_attempt(i, &msg, true);
            } else if now.duration_since(l.started) >= timeout {
                let msg = format!("attempt exceeded the job timeout of {timeout:?}");
                self.counters.job_timeouts += 1;
                self.end_attempt(i, &msg, true);
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

    /// Results of the finished jobs, by job id (what the journal keeps).
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

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            lease_ttl: Duration::from_secs(10),
            max_attempts: 2,
            job_timeout: Duration::from_secs(100),
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

    fn result() -> JobResult {
        JobResult {
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

    #[test]
    fn a_drained_worker_keeps_its_job_and_gets_no_new_one() {
        let t0 = Instant::now();
        let mut s = State::new(jobs(3), &HashMap::new(), settings(), t0);
        let a = s.register("a", 1, "cpu", t0);
        let b = s.register("b", 1, "cpu", t0);
        let g = granted(s.lease(&a, t0).unwrap());
        assert_eq!(s.drain("a").unwrap(), (1, 1));
        assert_eq!(
            s.drain("nobody"),
            Err(Refusal::UnknownWorker("nobody".into()))
        );
        assert_eq!(s.lease(&a, t0).unwrap(), LeaseOutcome::Drain);
        // Its lease still renews and its result is still accepted.
        assert!(s.heartbeat(&a, &g.lease_id, t0).is_ok());
        granted(s.lease(&b, t0).unwrap());
    }

    #[test]
    fn a_finished_job_shows_its_last_train_and_best_valid_kl() {
        let result = |summary: &str| JobResult {
            out_url: "u".into(),
            summary_json: summary.into(),
            attempt: 1,
            worker: "w".into(),
        };
        let summary = r#"{"best_epoch": 0, "valid_kl": 0.5, "history": [
            {"epoch": 0, "train_kl": 1.0, "valid_kl": 0.5, "seconds": 2.0},
            {"epoch": 1, "train_kl": 0.8, "valid_kl": 0.7, "seconds": 3.0}]}"#;
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
    fn every_job_is_leased_once_then_workers_wait_then_stop() {
        let t0 = Instant::now();
        let mut s = State::new(jobs(2), &HashMap::new(), settings(), t0);
        let w = s.register("w", 1, "cpu", t0);
        let a = granted(s.lease(&w, t0).unwrap());
        let b = granted(s.lease(&w, t0).unwrap());
        assert_ne!(a.job, b.job);
        assert!(matches!(s.lease(&w, t0).unwrap(), LeaseOutcome::Wait(_)));
        s.complete(&a.lease_id, result()).unwrap();
        assert_eq!(s.run, RunState::Running);
        s.complete(&b.lease_id, result()).unwrap();
        assert_eq!(s.run, RunState::Finished);
        assert!(matches!(s.lease(&w, t0).unwrap(), LeaseOutcome::Stop(_)));
    }

    #[test]
    fn an_expired_lease_is_requeued_and_its_late_result_discarded() {
        let t0 = Instant::now();
        let mut s = State::new(jobs(1), &HashMap::new(), settings(), t0);
        let w1 = s.register("w1", 1, "cpu", t0);
        let w2 = s.register("w2", 1, "cpu", t0);
        let first = granted(s.lease(&w1, t0).unwrap());
        // w2 keeps heartbeating its session; w1's lease is never renewed.
        let t1 = t0 + Duration::from_secs(11);
        s.touch(&w2, t1).unwrap();
        s.tick(t1);
        assert_eq!(s.counters.lease_expiries, 1);
        assert!(s.heartbeat(&w1, &first.lease_id, t1).is_err());
        let second = granted(s.lease(&w2, t1).unwrap());
        assert_eq!(second.attempt, 2);
        assert!(
            s.complete(&first.lease_id, result()).is_err(),
            "late result"
        );
        s.complete(&second.lease_id, result()).unwrap();
        assert!(
            s.complete(&second.lease_id, result()).is_err(),
            "exactly once"
        );
        assert_eq!(s.counters.late_results, 2);
        match &s.jobs[0].state {
            JobState::Done(r) => assert_eq!((r.worker.as_str(), r.attempt), ("w2", 2)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn heartbeats_keep_a_lease_alive() {
        let t0 = Instant::now();
        let mut s = State::new(jobs(1), &HashMap::new(), settings(), t0);
        let w = s.register("w", 1, "cpu", t0);
        let g = granted(s.lease(&w, t0).unwrap());
        for k in 1..=5 {
            let t = t0 + Duration::from_secs(8 * k);
            s.heartbeat(&w, &g.lease_id, t).unwrap();
            s.tick(t);
        }
        assert!(matches!(s.jobs[0].state, JobState::Leased(_)));
    }

    #[test]
    fn retry_budget_and_non_retryable_failures_fail_the_run() {
        let t0 = Instant::now();
        let mut s = State::new(jobs(2), &HashMap::new(), settings(), t0);
        let w = s.register("w", 1, "cpu", t0);
        let g = granted(s.lease(&w, t0).unwrap());
        s.fail(&g.lease_id, "node died", true).unwrap();
        assert_eq!(s.run, RunState::Running);
        let g = granted(s.lease(&w, t0).unwrap());
        assert_eq!(g.attempt, 2);
        s.fail(&g.lease_id, "node died", true).unwrap();
        let RunState::Failed(why) = &s.run else {
            panic!("{:?}", s.run)
        };
        assert!(why.contains("failed 2 times"), "{why}");

        let mut s = State::new(jobs(2), &HashMap::new(), settings(), t0);
        let w = s.register("w", 1, "cpu", t0);
        let g = granted(s.lease(&w, t0).unwrap());
        s.fail(&g.lease_id, "corrupt file x.parquet", false)
            .unwrap();
        assert_eq!(
            s.run,
            RunState::Failed("job a-fold0 failed: corrupt file x.parquet".into())
        );
    }

    #[test]
    fn no_worker_within_the_grace_period_fails_the_run() {
        let t0 = Instant::now();
        let mut s = State::new(jobs(1), &HashMap::new(), settings(), t0);
        s.tick(t0 + Duration::from_secs(29));
        assert_eq!(s.run, RunState::Running);
        s.tick(t0 + Duration::from_secs(31));
        assert!(matches!(&s.run, RunState::Failed(e) if e.contains("no worker")));
    }

    #[test]
    fn a_job_over_its_timeout_is_retried() {
        let t0 = Instant::now();
        let mut s = State::new(jobs(1), &HashMap::new(), settings(), t0);
        let w = s.register("w", 1, "cpu", t0);
        let g = granted(s.lease(&w, t0).unwrap());
        let t = t0 + Duration::from_secs(101);
        s.heartbeat(&w, &g.lease_id, t).unwrap();
        s.tick(t);
        assert_eq!(s.counters.job_timeouts, 1);
        assert_eq!(s.jobs[0].state, JobState::Pending);
    }

    #[test]
    fn journaled_jobs_are_not_run_again() {
        let t0 = Instant::now();
        let done: HashMap<_, _> = [("a-fold0".to_string(), result())].into();
        let mut s = State::new(jobs(2), &done, settings(), t0);
        let w = s.register("w", 1, "cpu", t0);
        let g = granted(s.lease(&w, t0).unwrap());
        assert_eq!(s.jobs[g.job].def.id, "a-fold1");
        assert!(matches!(s.lease(&w, t0).unwrap(), LeaseOutcome::Wait(_)));
    }
}
