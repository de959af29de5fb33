//! The run as people look at it: one JSON document, [`RunView`], built from a coordinator's
//! state. It is what `GET /api/run` answers, what the dashboard draws, what `hbac status` prints
//! (through the gRPC status, which is made from it) and what `hbac report` freezes into
//! `report.html`; live, the state is the coordinator's, and for a finished run it is restored
//! from the journal exactly as a restarted coordinator would.
//!
//! The format (`"format": 1`) only grows: fields are added, never renamed or removed.

use std::collections::BTreeMap;
use std::time::Instant;

use hbac_common::proto::wire::{JobPhase, RunPhase};
use hbac_common::records::{self, EpochReport, JobSummary};
use serde::{Deserialize, Serialize};

use crate::plan::Plan;
use crate::state::{Job, JobState, Progress, State};
use hbac_common::records::RunReport;

/// The version of the JSON layout.
pub const FORMAT: u32 = 1;

/// The whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunView {
    pub format: u32,
    /// `running`, `aggregating`, `finished` or `failed`.
    #[serde(with = "label::run")]
    pub phase: RunPhase,
    /// Why the run failed.
    pub error: Option<String>,
    /// The output root.
    pub out: String,
    /// Epochs trained so far (every job's), and in all.
    pub epochs_done: usize,
    pub epochs_total: usize,
    /// Seconds until every job is done: the epochs left at the mean epoch time so far, spread
    /// over the workers that can run them. `None` before the first epoch.
    pub eta_s: Option<f64>,
    pub jobs: Vec<JobView>,
    pub workers: Vec<WorkerView>,
    /// Workers heard from within a lease lifetime.
    pub live_workers: usize,
    /// The run's results (`report.json`) once it is finished.
    pub results: Option<RunReport>,
    /// The run's own files (relative to `out`), once written.
    pub files: Vec<String>,
}

/// One (architecture, fold) job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    pub id: String,
    pub arch: String,
    pub fold: usize,
    /// `pending`, `leased`, `done` or `failed`.
    #[serde(with = "label::job")]
    pub phase: JobPhase,
    /// The worker holding it, or the one whose result was accepted.
    pub worker: String,
    /// Attempts so far.
    pub attempt: u32,
    /// Epochs done, of `epochs`.
    pub epoch: usize,
    pub epochs: usize,
    /// The latest epoch's training KL and the validation KL (for a finished job: the kept,
    /// best epoch's).
    pub train_kl: Option<f64>,
    pub valid_kl: Option<f64>,
    pub samples_per_second: Option<f64>,
    pub eta_s: Option<f64>,
    /// Every epoch known here, in order.
    pub curve: Vec<EpochReport>,
    /// Stage 1's epochs when the job trains a second stage (where its figures mark stage 2).
    #[serde(default)]
    pub stage1_epochs: Option<usize>,
    /// Why it failed.
    pub error: Option<String>,
    /// The accepted attempt's folder (relative to `out`) and the files in it.
    pub folder: Option<String>,
    pub files: Vec<String>,
}

/// A worker registered with this coordinator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerView {
    pub id: String,
    pub backend: String,
    pub gpus: u32,
    /// Jobs it holds now.
    pub jobs: usize,
    /// Seconds since it was last heard from.
    pub last_seen_s: f64,
    pub draining: bool,
}

/// The files an accepted attempt leaves, as the dashboard links them.
const JOB_FILES: [&str; 6] = [
    records::SUMMARY,
    records::METRICS,
    records::LOSS,
    records::OOF,
    records::TEST,
    records::CONFIG,
];

/// The run's own files.
const RUN_FILES: [&str; 4] = ["report.json", "submission.csv", "oof.csv", "cv.svg"];

impl RunView {
    /// The view of `state`, for a run of `plan` whose output root is `out`; `results` once
    /// aggregated.
    pub fn of(
        state: &State,
        plan: &Plan,
        out: &str,
        results: Option<&RunReport>,
        now: Instant,
    ) -> Self {
        let (phase, error) = phase(state, results.is_some());
        let jobs: Vec<JobView> = state
            .jobs()
            .iter()
            .map(|j| job_view(j, plan, out))
            .collect();
        let mut workers: Vec<WorkerView> = state
            .workers()
            .map(|w| WorkerView {
                id: w.id.clone(),
                backend: w.backend.clone(),
                gpus: w.gpus,
                jobs: jobs
                    .iter()
                    .filter(|j| j.phase == JobPhase::Leased && j.worker == w.id)
                    .count(),
                last_seen_s: now.saturating_duration_since(w.last_seen).as_secs_f64(),
                draining: w.draining,
            })
            .collect();
        workers.sort_by(|a, b| a.id.cmp(&b.id));
        let epochs_done = jobs.iter().map(|j| j.epoch.min(j.epochs)).sum();
        let epochs_total = jobs.iter().map(|j| j.epochs).sum();
        let live_workers = state.live_workers(now);
        let eta_s = eta(&jobs, live_workers);
        RunView {
            format: FORMAT,
            phase,
            error,
            out: out.to_string(),
            epochs_done,
            epochs_total,
            eta_s,
            jobs,
            workers,
            live_workers,
            results: results.cloned(),
            files: match results {
                Some(_) => RUN_FILES.iter().map(|f| f.to_string()).collect(),
                None => Vec::new(),
            },
        }
    }

    /// Every job's curve as `(architecture, fold, epochs)`, for [`hbac_common::plot::cv_svg`].
    pub fn curves(&self) -> Vec<(String, usize, Vec<EpochReport>)> {
        self.jobs
            .iter()
            .map(|j| (j.arch.clone(), j.fold, j.curve.clone()))
            .collect()
    }

    /// The architectures, in plan order.
    pub fn archs(&self) -> Vec<String> {
        let mut archs: Vec<String> = Vec::new();
        for j in &self.jobs {
            if !archs.contains(&j.arch) {
                archs.push(j.arch.clone());
            }
        }
        archs
    }

    /// The run's figure (small multiples), as `cv.svg` draws it.
    pub fn cv_svg(&self) -> String {
        let archs = self.archs();
        let stage1: Vec<Option<usize>> = archs
            .iter()
            .map(|a| {
                self.jobs
                    .iter()
                    .find(|j| &j.arch == a)
                    .and_then(|j| j.stage1_epochs)
            })
            .collect();
        hbac_common::plot::cv_svg(&archs, &self.curves(), &stage1)
    }

    /// Job `id`'s figure, as its `loss.svg` draws it.
    pub fn job_svg(&self, id: &str) -> Option<String> {
        let j = self.jobs.iter().find(|j| j.id == id)?;
        let title = format!("{} fold {}", j.arch, j.fold);
        Some(hbac_common::plot::job_svg(
            &title,
            j.fold,
            &j.curve,
            j.stage1_epochs,
        ))
    }

    /// Every figure by name (`cv` and each job id), for a page that has no server behind it.
    pub fn figures(&self) -> BTreeMap<String, String> {
        let mut f = BTreeMap::from([("cv".to_string(), self.cv_svg())]);
        for j in &self.jobs {
            if let Some(svg) = self.job_svg(&j.id) {
                f.insert(j.id.clone(), svg);
            }
        }
        f
    }
}

fn phase(state: &State, aggregated: bool) -> (RunPhase, Option<String>) {
    match state.run() {
        crate::state::RunState::Running => (RunPhase::Running, None),
        crate::state::RunState::Finished if aggregated => (RunPhase::Finished, None),
        crate::state::RunState::Finished => (RunPhase::Aggregating, None),
        crate::state::RunState::Failed(e) => (RunPhase::Failed, Some(e.clone())),
    }
}

fn job_view(j: &Job, plan: &Plan, out: &str) -> JobView {
    let planned = plan.epochs(&j.def.arch).unwrap_or(0);
    let (worker, mut p, curve, error, folder) = match &j.state {
        JobState::Leased(l) => (
            l.worker.clone(),
            l.progress.clone(),
            j.curve.clone(),
            None,
            None,
        ),
        JobState::Done(r) => {
            // Parsed once: the figures and the curve come from the same summary.
            let summary = JobSummary::parse(r.summary_json.as_bytes(), records::SUMMARY).ok();
            let progress = summary
                .as_ref()
                .map(Progress::of_summary)
                .unwrap_or_default();
            let history = summary.map(|s| s.history).unwrap_or_default();
            let folder = r
                .out_url
                .strip_prefix(out)
                .map(|f| f.trim_matches('/').to_string());
            (r.worker.clone(), progress, history, None, folder)
        }
        JobState::Failed(why) => (
            String::new(),
            Progress::default(),
            j.curve.clone(),
            Some(why.clone()),
            None,
        ),
        JobState::Pending => (
            String::new(),
            Progress::default(),
            j.curve.clone(),
            None,
            None,
        ),
    };
    if p.epochs == 0 {
        p.epochs = planned;
    }
    let leased = matches!(j.state, JobState::Leased(_));
    JobView {
        id: j.def.id.clone(),
        arch: j.def.arch.clone(),
        fold: j.def.fold,
        phase: j.state.phase(),
        worker,
        attempt: j.attempts,
        epoch: p.epoch,
        epochs: p.epochs,
        train_kl: p.train_kl,
        valid_kl: p.valid_kl,
        samples_per_second: p.samples_per_second,
        eta_s: leased.then(|| p.eta()).flatten(),
        curve,
        stage1_epochs: plan.train(&j.def.arch).and_then(records::stage1_epochs),
        error,
        files: match folder {
            Some(_) => JOB_FILES.iter().map(|f| f.to_string()).collect(),
            None => Vec::new(),
        },
        folder,
    }
}

/// The epochs left at the mean epoch time so far, over the workers that can share them.
fn eta(jobs: &[JobView], workers: usize) -> Option<f64> {
    let epochs: Vec<&EpochReport> = jobs.iter().flat_map(|j| &j.curve).collect();
    if epochs.is_empty() {
        return None;
    }
    let mean = epochs.iter().map(|e| e.seconds).sum::<f64>() / epochs.len() as f64;
    let open: Vec<&JobView> = jobs
        .iter()
        .filter(|j| matches!(j.phase, JobPhase::Pending | JobPhase::Leased))
        .collect();
    let left: usize = open.iter().map(|j| j.epochs.saturating_sub(j.epoch)).sum();
    let lanes = workers.clamp(1, open.len().max(1));
    Some(left as f64 * mean / lanes as f64)
}

/// The phases in JSON: their labels (`"running"`, `"leased"`, …).
mod label {
    macro_rules! phase {
        ($name:ident, $ty:ty) => {
            pub mod $name {
                use serde::{Deserialize, Deserializer, Serializer};

                pub fn serialize<S: Serializer>(p: &$ty, s: S) -> Result<S::Ok, S::Error> {
                    s.serialize_str(p.label())
                }

                pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
                    let label = String::deserialize(d)?;
                    <$ty>::from_label(&label)
                        .ok_or_else(|| serde::de::Error::custom(format!("unknown phase {label:?}")))
                }
            }
        };
    }
    phase!(run, hbac_common::proto::wire::RunPhase);
    phase!(job, hbac_common::proto::wire::JobPhase);
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::time::Duration;

    use super::*;
    use crate::state::{LeaseOutcome, Settings};

    fn plan(arch: &str) -> Plan {
        crate::plan::test_plan("memory://out", arch, serde_json::json!({"epochs": 3}))
    }

    fn settings() -> Settings {
        let s = Duration::from_secs(60);
        Settings {
            lease_ttl: s,
            max_attempts: 3,
            max_disruptions: 3,
            job_timeout: s,
            stall_timeout: s,
            worker_grace: s,
        }
    }

    fn epoch(e: usize) -> EpochReport {
        EpochReport {
            epoch: e,
            lr: 1e-3,
            train_kl: 1.0 - e as f64 / 10.0,
            valid_kl: Some(1.1),
            seconds: 2.0,
            samples_per_second: 50.0,
            best: true,
        }
    }

    /// Two jobs of `arch`, the first leased by worker `worker` with two epochs reported.
    fn running(arch: &str, worker: &str) -> (Plan, State, Instant) {
        let plan = plan(arch);
        let t0 = Instant::now();
        let mut s = State::new(
            plan.jobs(),
            &BTreeMap::new(),
            BTreeSet::new(),
            settings(),
            t0,
        );
        let session = s.register(worker, 1, "cpu", t0);
        let LeaseOutcome::Job(g) = s.lease(&session, 0, t0).unwrap() else {
            panic!("no lease")
        };
        for e in 0..2 {
            assert!(s.epoch(&g.lease_id, &epoch(e), 3, true));
        }
        // A re-run epoch replaces the earlier report.
        assert!(s.epoch(&g.lease_id, &epoch(1), 3, true));
        (plan, s, t0)
    }

    #[test]
    fn a_running_job_shows_its_progress_curve_and_worker() {
        let (plan, s, t0) = running("a", "w1");
        let v = RunView::of(&s, &plan, "memory://out", None, t0 + Duration::from_secs(4));
        assert_eq!(v.phase, RunPhase::Running);
        assert_eq!((v.epochs_done, v.epochs_total), (2, 6));
        let (j, p) = (&v.jobs[0], &v.jobs[1]);
        assert_eq!(
            (j.phase, j.worker.as_str(), j.attempt),
            (JobPhase::Leased, "w1", 1)
        );
        assert_eq!((j.epoch, j.epochs), (2, 3));
        assert_eq!(j.curve.iter().map(|e| e.epoch).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(j.samples_per_second, Some(50.0));
        assert_eq!(j.eta_s, Some(2.0), "one epoch left at 2 s");
        assert_eq!((p.phase, p.epoch, p.epochs), (JobPhase::Pending, 0, 3));
        assert!(p.files.is_empty() && p.folder.is_none());
        // 4 epochs left at 2 s each, on the one worker.
        assert_eq!(v.eta_s, Some(8.0));
        assert_eq!(v.workers.len(), 1);
        assert_eq!((v.workers[0].jobs, v.workers[0].last_seen_s), (1, 4.0));
        // The JSON speaks labels and reads back the same.
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["phase"], "running");
        assert_eq!(json["jobs"][0]["phase"], "leased");
        let back: RunView = serde_json::from_value(json).unwrap();
        assert_eq!(back, v);
        // The gRPC status says the same.
        assert!(v.cv_svg().contains("fold 0"));
        assert!(v.job_svg("nope").is_none());
    }

    #[test]
    fn report_html_keeps_every_string_inside_its_script_element() {
        let evil = "a</script><script>alert(1)</script><!--";
        let (plan, s, t0) = running(evil, "<img src=x onerror=alert(2)>");
        let v = RunView::of(&s, &plan, "memory://out", None, t0);
        let page = crate::report::html(&v);
        assert!(
            !page.contains("</script><script>alert(1)"),
            "the name broke out"
        );
        assert!(!page.contains("<img src=x"));
        assert!(!page.contains(r#"src="app.js""#) && !page.contains(r#"href="style.css""#));
        assert!(page.contains("Content-Security-Policy"));
        // The embedded snapshot reads back to the view and its figures.
        let start = page
            .find(r#"<script id="snapshot" type="application/json">"#)
            .unwrap();
        let json = &page[start..];
        let json = &json[json.find('>').unwrap() + 1..json.find("</script>").unwrap()];
        let snap: serde_json::Value = serde_json::from_str(json).unwrap();
        let back: RunView = serde_json::from_value(snap["run"].clone()).unwrap();
        assert_eq!(back, v);
        assert_eq!(
            snap["figures"].as_object().unwrap().len(),
            3,
            "cv and each job"
        );
    }
}
