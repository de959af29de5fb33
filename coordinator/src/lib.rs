//! The hbac coordinator: the run plan (architectures × folds), the job state machine with
//! leases, retries and timeouts, the journal in object storage, the gRPC service, and
//! aggregation (CV score, ensemble, report). It never imports the worker.
//!
//! Status: the distributed runner is the next milestone (issue 4); today the coordinator's
//! inputs — folds, metric, data access — live in `hbac-common` and are reachable from the
//! `hbac folds`, `hbac score` and `hbac prepare` commands.
