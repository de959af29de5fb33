//! The run plan: every (architecture × fold) job with its order, and the journal that lets a
//! restarted coordinator resume without re-running finished jobs.

use std::collections::HashMap;

use hbac_common::folds::KFold;
use hbac_common::preprocess::{LabelMode, SampleSelection};
use hbac_common::proto::JobOrder;
use hbac_common::storage::Store;
use hbac_common::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::state::{JobDef, JobResult};

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

impl Plan {
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

    /// Epochs `arch`'s training configuration asks for (the coordinator never links the
    /// trainer, so it reads the field from the JSON it forwards).
    pub fn epochs(&self, arch: &str) -> Option<usize> {
        let (_, train) = self.archs.iter().find(|(a, _)| a == arch)?;
        train.get("epochs")?.as_u64().map(|e| e as usize)
    }

    /// The order for one attempt of `job`; its files go to `jobs/<job>/<lease>/`.
    pub fn order(&self, job: &JobDef, lease_id: &str) -> JobOrder {
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
            out: format!("{}/jobs/{}/{lease_id}", self.out, job.id),
            kfold: self.kfold,
            selection: self.selection,
            labels: self.labels,
            train,
            io_concurrency: self.io_concurrency,
        }
    }
}

/// `journal.json` in the output root: the plan and every accepted result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Journal {
    pub version: u32,
    pub plan: Plan,
    pub done: HashMap<String, JobResult>,
}

pub const JOURNAL: &str = "journal.json";

impl Journal {
    /// The accepted results of an earlier coordinator of the same plan, or none for a fresh
    /// output root. A journal of another plan is an error: resuming it would mix two runs.
    pub async fn resume(out: &Store, plan: &Plan) -> Result<HashMap<String, JobResult>> {
        if !out.exists(JOURNAL).await? {
            return Ok(HashMap::new());
        }
        let url = out.url(JOURNAL);
        let journal: Journal = serde_json::from_slice(&out.get(JOURNAL).await?)
            .map_err(|e| Error::invalid(hbac_common::error::Location::file(&url), e.to_string()))?;
        if journal.plan != *plan {
            return Err(Error::invalid(
                hbac_common::error::Location::file(&url),
                "this output root holds a run with another plan (data, folds, architectures or \
                 training settings differ); use a new --out, or delete the journal to start over"
                    .to_string(),
            ));
        }
        Ok(journal.done)
    }

    /// Writes the journal atomically.
    pub async fn save(out: &Store, plan: &Plan, done: HashMap<String, JobResult>) -> Result<()> {
        let journal = Journal {
            version: 1,
            plan: plan.clone(),
            done,
        };
        out.put(
            JOURNAL,
            serde_json::to_vec_pretty(&journal).expect("serialisable"),
        )
        .await
    }
}
