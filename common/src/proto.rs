//! The wire contract (`proto/hbac.proto`) and its conversion to domain types. Generated structs
//! never leave this module: the rest of hbac speaks the domain types below.

/// Generated prost/tonic code.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod wire {
    tonic::include_proto!("hbac.v1");
}

/// Version of the protocol in `proto/hbac.proto`; peers with another version are refused.
pub const PROTOCOL_VERSION: u32 = 1;

/// Training backend a worker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Cpu,
    Cuda,
}

/// A worker introducing itself to the coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub worker_id: String,
    pub gpus: u32,
    pub backend: Backend,
    pub token: String,
}

/// Why a registration could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("protocol version {got} is not supported (this build speaks {PROTOCOL_VERSION})")]
    Version { got: u32 },
    #[error("unknown backend {0:?}; expected \"cpu\" or \"cuda\"")]
    Backend(String),
}

impl From<&Registration> for wire::RegisterRequest {
    fn from(r: &Registration) -> Self {
        wire::RegisterRequest {
            protocol_version: PROTOCOL_VERSION,
            worker_id: r.worker_id.clone(),
            gpus: r.gpus,
            backend: match r.backend {
                Backend::Cpu => "cpu".into(),
                Backend::Cuda => "cuda".into(),
            },
            token: r.token.clone(),
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
            other => return Err(DecodeError::Backend(other.into())),
        };
        Ok(Registration {
            worker_id: r.worker_id,
            gpus: r.gpus,
            backend,
            token: r.token,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_roundtrip_and_version_check() {
        let r = Registration {
            worker_id: "w0".into(),
            gpus: 2,
            backend: Backend::Cuda,
            token: "t".into(),
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
