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

/// An epoch's metrics on the wire: 1-based `epoch` of `epochs`, for `lease_id` of `session`;
/// `saved`: the attempt saved its full training state after this epoch.
pub fn epoch_metrics(
    r: &crate::records::EpochReport,
    session: &str,
    lease_id: &str,
    epochs: u32,
    saved: bool,
) -> wire::EpochMetrics {
    wire::EpochMetrics {
        session: session.to_string(),
        lease_id: lease_id.to_string(),
        epoch: r.epoch as u32 + 1,
        epochs,
        lr: r.lr,
        train_kl: r.train_kl,
        valid_kl: r.valid_kl,
        seconds: r.seconds,
        samples_per_second: r.samples_per_second,
        best: r.best,
        saved,
    }
}

impl From<&wire::EpochMetrics> for crate::records::EpochReport {
    /// The epoch back to 0-based (a 0 on the wire, which no worker sends, reads as epoch 0).
    fn from(m: &wire::EpochMetrics) -> Self {
        crate::records::EpochReport {
            epoch: (m.epoch as usize).saturating_sub(1),
            lr: m.lr,
            train_kl: m.train_kl,
            valid_kl: m.valid_kl,
            seconds: m.seconds,
            samples_per_second: m.samples_per_second,
            best: m.best,
        }
    }
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
    fn epoch_reports_cross_the_wire_one_based_and_come_back() {
        let r = crate::records::EpochReport {
            epoch: 4,
            lr: 1e-4,
            train_kl: 0.7,
            valid_kl: Some(0.8),
            seconds: 12.5,
            samples_per_second: 30.0,
            best: true,
        };
        let m = epoch_metrics(&r, "s", "L1", 13, true);
        assert_eq!((m.epoch, m.epochs, m.saved), (5, 13, true));
        assert_eq!(crate::records::EpochReport::from(&m), r);
    }

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
