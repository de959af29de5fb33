//! The run plan: every (architecture × fold) job with its order, and which plans are the same
//! run (a restarted coordinator resumes only its own).

use hbac_common::folds::KFold;
use hbac_common::preprocess::{LabelMode, SampleSelection};
use hbac_common::proto::JobOrder;
use hbac_common::storage::Store;
use serde::{Deserialize, Serialize};

use crate::jobs::{JobDef, Saved};

/// What to run: data, folds, and one training configuration per architecture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub data: String,
    pub cache: String,
    pub out: String,
    pub kfold: KFold,
    pub selection: SampleSelection,
    pub labels: LabelMode,
    /// `(architecture, training configuration as JSON)`, in report order.
    pub archs: Vec<(String, serde_json::Value)>,
    pub io_concurrency: usize,
}

/// Where a run reads and writes, as a user names them.
#[derive(Debug, Clone)]
pub struct Locations {
    /// The data set (Kaggle's files).
    pub data: String,
    /// The shared cache of converted inputs [default: the data set's `cache/`].
    pub cache: Option<String>,
    /// The run's folder, created if missing.
    pub out: String,
}

/// A plan that cannot run.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Storage(#[from] hbac_common::Error),
    #[error("the plan names no architecture")]
    NoArchitecture,
    #[error("architecture {0} is named twice")]
    Duplicate(String),
    #[error("k = {0}: a split needs at least 2 folds")]
    Folds(usize),
}

impl Plan {
    /// The plan of a run: `archs` are `(architecture, its training configuration as JSON)`
    /// in report order; the URLs are normalised and the output folder created.
    pub fn new(
        at: &Locations,
        kfold: KFold,
        selection: SampleSelection,
        labels: LabelMode,
        archs: Vec<(String, serde_json::Value)>,
        io_concurrency: usize,
    ) -> Result<Plan, PlanError> {
        if archs.is_empty() {
            return Err(PlanError::NoArchitecture);
        }
        for (i, (arch, _)) in archs.iter().enumerate() {
            if archs[..i].iter().any(|(a, _)| a == arch) {
                return Err(PlanError::Duplicate(arch.clone()));
            }
        }
        if kfold.k < 2 {
            return Err(PlanError::Folds(kfold.k));
        }
        let data = Store::open(&at.data)?;
        let cache = match &at.cache {
            Some(c) => c.clone(),
            None => data.url("cache"),
        };
        Ok(Plan {
            data: data.root().to_string(),
            cache,
            out: Store::create(&at.out)?.root().to_string(),
            kfold,
            selection,
            labels,
            archs,
            io_concurrency,
        })
    }

    /// Every job, architecture-major.
    pub fn jobs(&self) -> Vec<JobDef> {
        self.archs
            .iter()
            .flat_map(|(arch, _)| {
                (0..self.kfold.k).map(move |fold| JobDef {
                    id: format!("{arch}-fold{fold}"),
                    arch: arch.clone(),
                    fold,
                })
            })
            .collect()
    }

    /// `arch`'s training configuration (the worker's `TrainConfig` as JSON).
    pub fn train(&self, arch: &str) -> Option<&serde_json::Value> {
        self.archs.iter().find(|(a, _)| a == arch).map(|(_, t)| t)
    }

    /// Epochs `arch`'s training configuration asks for, both stages (the coordinator never
    /// links the trainer, so it reads the fields from the JSON it forwards).
    pub fn epochs(&self, arch: &str) -> Option<usize> {
        let (_, train) = self.archs.iter().find(|(a, _)| a == arch)?;
        hbac_common::records::planned_epochs(train)
    }

    /// Whether `other` is the same run: equal but for the tuning knobs a restart on another
    /// machine may change (`--jobs`, loader threads).
    pub fn same_run(&self, other: &Plan) -> bool {
        fn identity(p: &Plan) -> Plan {
            let mut p = p.clone();
            p.io_concurrency = 0;
            for (_, train) in &mut p.archs {
                if let Some(t) = train.as_object_mut() {
                    t.remove("loader_threads");
                }
            }
            p
        }
        identity(self) == identity(other)
    }

    /// The folder of one attempt of `job` (computed here, never taken from a worker).
    pub fn attempt_dir(&self, job: &str, lease_id: &str) -> String {
        format!("{}/jobs/{job}/{lease_id}", self.out)
    }

    /// The order for one attempt of `job`; its files go to its [`Plan::attempt_dir`], and it
    /// resumes from the attempt that saved `resume`.
    pub fn order(&self, job: &JobDef, lease_id: &str, resume: Option<&Saved>) -> JobOrder {
        let train = self
            .archs
            .iter()
            .find(|(a, _)| *a == job.arch)
            .map(|(_, t)| t.clone())
            .unwrap_or_default();
        JobOrder {
            job_id: job.id.clone(),
            arch: job.arch.clone(),
            fold: job.fold,
            data: self.data.clone(),
            cache: self.cache.clone(),
            out: self.attempt_dir(&job.id, lease_id),
            kfold: self.kfold,
            selection: self.selection,
            labels: self.labels,
            train,
            io_concurrency: self.io_concurrency,
            resume: resume.map(|s| self.attempt_dir(&job.id, &s.lease_id)),
        }
    }
}

/// A plan of one architecture `arch` (training configuration `config`) × 2 folds on in-memory
/// data, writing to `out`: the unit tests' run.
#[cfg(test)]
pub(crate) fn test_plan(out: &str, arch: &str, config: serde_json::Value) -> Plan {
    Plan {
        data: "memory://data".into(),
        cache: "memory://cache".into(),
        out: out.into(),
        kfold: KFold {
            k: 2,
            shuffle: true,
            seed: Some(42),
        },
        selection: Default::default(),
        labels: Default::default(),
        archs: vec![(arch.into(), config)],
        io_concurrency: 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(archs: &[&str], k: usize, out: &std::path::Path) -> Result<Plan, PlanError> {
        let at = Locations {
            data: out.join("data").display().to_string(),
            cache: None,
            out: out.join("run").display().to_string(),
        };
        let kfold = KFold {
            k,
            shuffle: true,
            seed: Some(42),
        };
        let archs = archs
            .iter()
            .map(|a| (a.to_string(), serde_json::json!({"epochs": 2})))
            .collect();
        Plan::new(
            &at,
            kfold,
            SampleSelection::AllRows,
            LabelMode::Votes,
            archs,
            4,
        )
    }

    #[test]
    fn a_plan_normalises_its_urls_and_refuses_what_cannot_run() {
        let dir = tempfile::tempdir().unwrap();
        let e = plan(&["a"], 3, dir.path()).unwrap_err();
        assert!(
            matches!(e, PlanError::Storage(_)) && e.to_string().contains("data"),
            "a missing data set is named: {e}"
        );
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let p = plan(&["a", "b"], 3, dir.path()).unwrap();
        assert_eq!(p.jobs().len(), 6);
        assert!(p.cache.ends_with("/data/cache"), "{}", p.cache);
        assert!(
            dir.path().join("run").is_dir(),
            "the output folder is created"
        );
        assert_eq!(p.epochs("a"), Some(2));
        let e = plan(&[], 3, dir.path()).unwrap_err();
        assert!(matches!(e, PlanError::NoArchitecture), "{e}");
        let e = plan(&["a", "a"], 3, dir.path()).unwrap_err();
        assert_eq!(e.to_string(), "architecture a is named twice");
        let e = plan(&["a"], 1, dir.path()).unwrap_err();
        assert!(matches!(e, PlanError::Folds(1)), "{e}");
    }
}
