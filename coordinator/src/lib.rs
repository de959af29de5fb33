//! The hbac coordinator: the run plan (architectures × folds), the job state machine with
//! leases, retries and timeouts, the journal in object storage, the gRPC service, Prometheus
//! metrics, and aggregation (CV score, ensemble, report). It never imports the worker: the
//! training configuration travels as opaque JSON.
//!
//! * [`plan`] — jobs and their orders; [`jobs`] — what is recorded about each job (its
//!   definition, durable record, lease, saved state and result), used by the plan, the journal
//!   and the state;
//! * [`journal`] — the run's durable state in object storage and its single owner (fencing);
//! * [`state`] — the scheduling rules, free of I/O;
//! * [`service`] — the gRPC service over the state; [`shared`] — what it, the HTTP port and
//!   the run loop share (the locked state, the journal with group commit);
//! * [`server`] — starting and driving a run; [`error`] — how a run ends badly;
//! * [`view`] — the run as people look at it (one JSON document);
//! * [`http`] — the dashboard, `/api/run`, the figures, the run's files and [`metrics`]
//!   (Prometheus), on one HTTP port; [`report`] — the same page frozen into `report.html`;
//! * [`aggregate`] — CV score, ensemble, `submission.csv`, `report.json`, `cv.svg`.

pub mod aggregate;
pub mod error;
pub mod http;
pub mod jobs;
pub mod journal;
pub mod metrics;
pub mod plan;
pub mod report;
pub mod server;
pub mod service;
pub mod shared;
pub mod state;
pub mod view;
