//! What the coordinator records about a job: its place in the plan ([`JobDef`]), its durable
//! record in the journal ([`JobEntry`], with the lease in force, [`LeaseEntry`], and the latest
//! saved training state, [`Saved`]), and its accepted result ([`JobResult`]). The state machine,
//! the journal and the plan all use these; this module uses none of them.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// One (architecture, fold) job of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobDef {
    pub id: String,
    pub arch: String,
    pub fold: usize,
}

/// An accepted result: which lease produced it, where its files are, and its `summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    #[serde(default)]
    pub lease_id: String,
    pub out_url: String,
    pub summary_json: String,
    pub attempt: u32,
    pub worker: String,
}

/// A job's durable record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobEntry {
    /// Leases granted.
    pub attempts: u32,
    /// Attempts that failed (a retryable error reported by the worker, a timeout, a stall).
    pub failures: u32,
    /// The workers those failures happened on.
    pub failed_on: BTreeSet<String>,
    /// Attempts lost with their worker (lease expiry, shutdown hand-back, drain).
    pub disruptions: u32,
    /// The latest saved training state: which attempt's folder, after how many epochs.
    pub saved: Option<Saved>,
    /// The lease in force, if any.
    pub lease: Option<LeaseEntry>,
    /// The accepted result.
    pub result: Option<JobResult>,
    /// Why the job failed for good.
    pub failed: Option<String>,
}

/// A saved training state a later attempt resumes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Saved {
    pub lease_id: String,
    pub epochs: usize,
}

/// A granted lease, as the journal keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseEntry {
    pub id: String,
    pub worker: String,
    pub slot: u32,
}
