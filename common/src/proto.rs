//! The wire contract (`proto/hbac.proto`): generated code, the protocol version, and the domain
//! types that cross it (registration, the JSON job order). Generated structs are used only at
//! the RPC edges (the coordinator's service, the worker's client).

/// Generated prost/tonic code.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod wire {
    tonic::include_proto!("hbac.v1");
}

/// Version of the protocol in `proto/hbac.proto`; peers with another version are refused.
pub const PROTOCOL_VERSION: u32 = 2;

/// Training backend a worker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Cpu,
    Cuda,
    Wgpu,
}

/// The serialized descriptor set of `proto/hbac.proto`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("hbac_descriptor");

impl wire::RunPhase {
    /// The name people read (`hbac status`, JSON, the dashboard).
    pub fn label(self) -> &'static str {
        match self {
            wire::RunPhase::Unspecified => "unknown",
            wire::RunPhase::Running => "running",
            wire::RunPhase::Aggregating => "aggregating",
            wire::RunPhase::Finished => "finished",
            wire::RunPhase::Failed => "failed",
        }
    }

    /// The phase of a [`label`](Self::label).
    pub fn from_label(label: &str) -> Option<Self> {
        [
            Self::Running,
            Self::Aggregating,
            Self::Finished,
            Self::Failed,
            Self::Unspecified,
        ]
        .into_iter()
        .find(|p| p.label() == label)
    }
}

impl wire::JobPhase {
    /// The name people read (`hbac status`, JSON, the dashboard).
    pub fn label(self) -> &'static str {
        match self {
            wire::JobPhase::Unspecified => "unknown",
            wire::JobPhase::Pending => "pending",
            wire::JobPhase::Leased => "leased",
            wire::JobPhase::Done => "done",
            wire::JobPhase::Failed => "failed",
        }
    }

    /// The phase of a [`label`](Self::label).
    pub fn from_label(label: &str) -> Option<Self> {
        [
            Self::Pending,
            Self::Leased,
            Self::Done,
            Self::Failed,
            Self::Unspecified,
        ]
        .into_iter()
        .find(|p| p.label() == label)
    }
}

impl Backend {
    /// The wire / command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Cuda => "cuda",
            Backend::Wgpu => "wgpu",
        }
    }
}

/// A worker introducing itself to the coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub worker_id: String,
    pub gpus: u32,
    pub backend: Backend,
}

/// Why a registration could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("protocol version {got} is not supported (this build speaks {PROTOCOL_VERSION})")]
    Version { got: u32 },
    #[error("unknown backend {0:?}; expected \"cpu\", \"cuda\" or \"wgpu\"")]
    Backend(String),
}

impl From<&Registration> for wire::RegisterRequest {
    fn from(r: &Registration) -> Self {
        wire::RegisterRequest {
            protocol_version: PROTOCOL_VERSION,
            worker_id: r.worker_id.clone(),
            gpus: r.gpus,
            backend: r.backend.name().into(),
        }
    }
}

impl TryFrom<wire::RegisterRequest> for Registration {
    type Error = DecodeError;
    fn try_from(r: wire::RegisterRequest) -> Result<Self, DecodeError> {
        if r.protocol_version != PROTOCOL_VERSION {
            return Err(DecodeError::Version {
                got: r.protocol_version,
            });
        }
        let backend = match r.backend.as_str() {
            "cpu" => Backend::Cpu,
            "cuda" => Backend::Cuda,
            "wgpu" => Backend::Wgpu,
            other => return Err(DecodeError::Backend(other.into())),
        };
        Ok(Registration {
            worker_id: r.worker_id,
            gpus: r.gpus,
            backend,
        })
    }
}

/// Everything a worker needs to run one (architecture, fold) job; travels as JSON in a lease.
/// The training configuration is opaque here (the worker's `TrainConfig`), so the coordinator
/// never depends on the trainer.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct JobOrder {
    pub job_id: String,
    pub arch: String,
    pub fold: usize,
    /// Data set root URL (train.csv, spectrograms, optional test.csv).
    pub data: String,
    /// Shared `.npy` cache URL: converted once per data set, read by every worker.
    pub cache: String,
    /// Where this attempt writes its files (unique per lease).
    pub out: String,
    pub kfold: crate::folds::KFold,
    pub selection: crate::preprocess::SampleSelection,
    pub labels: crate::preprocess::LabelMode,
    pub train: serde_json::Value,
    pub io_concurrency: usize,
    /// An earlier attempt's folder (below the run's output root) holding saved training states:
    /// this attempt resumes from the latest complete one.
    #[serde(default)]
    pub resume: Option<String>,
}

/// The token a peer presents, as gRPC metadata: `authorization: Bearer <token>`.
pub const AUTH_HEADER: &str = "authorization";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_roundtrip_and_version_check() {
        let r = Registration {
            worker_id: "w0".into(),
            gpus: 2,
            backend: Backend::Cuda,
        };
        let wire = wire::RegisterRequest::from(&r);
        assert_eq!(Registration::try_from(wire.clone()).unwrap(), r);
        let old = wire::RegisterRequest {
            protocol_version: 0,
            ..wire.clone()
        };
        assert_eq!(
            Registration::try_from(old).unwrap_err(),
            DecodeError::Version { got: 0 }
        );
        let odd = wire::RegisterRequest {
            backend: "tpu".into(),
            ..wire
        };
        assert!(
            Registration::try_from(odd)
                .unwrap_err()
                .to_string()
                .contains("tpu")
        );
    }
}
