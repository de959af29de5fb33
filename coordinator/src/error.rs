//! How a run ends badly ([`RunError`]): what `server` returns and the HTTP port reports.

use crate::journal::JournalError;

/// How a run ended badly.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Data(#[from] hbac_common::Error),
    #[error("the run failed: {0}")]
    Failed(String),
    #[error("gRPC server: {0}")]
    Transport(String),
    #[error("dashboard: {0}")]
    Http(String),
    #[error(transparent)]
    Journal(#[from] JournalError),
}
