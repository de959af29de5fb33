//! The hbac coordinator: the run plan (architectures × folds), the job state machine with
//! leases, retries and timeouts, the journal in object storage, the gRPC service, Prometheus
//! metrics, and aggregation (CV score, ensemble, report). It never imports the worker: the
//! training configuration travels as opaque JSON.
//!
//! * [`plan`] — jobs and their orders;
//! * [`journal`] — the run's durable state in object storage and its single owner (fencing);
//! * [`state`] — the scheduling rules, free of I/O;
//! * [`service`] — the gRPC service over the state;
//! * [`server`] — starting and driving a run; [`metrics`] — `/metrics`;
//! * [`aggregate`] — CV score, ensemble, `submission.csv`, `report.json`, `cv.svg`.

pub mod aggregate;
pub mod journal;
pub mod metrics;
pub mod plan;
pub mod server;
pub mod service;
pub mod state;
