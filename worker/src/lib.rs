//! The hbac worker: models (MobileNetV3-Large, EfficientNetV2-B2), the data loader and
//! augmentations, the training loop, weight import, and the worker service loop (register,
//! lease, heartbeat, report). It never imports the coordinator, and it is backend-generic:
//! the `hbac` binary picks burn's CPU backend (flex) or CUDA by Cargo feature.
//!
//! * [`model`] — the two architectures, KerasCV-exact, and their parameter summary;
//! * [`ops`] — hbac's own fused conv + BatchNorm + activation ops (CPU and CubeCL kernels,
//!   autodiff), which the models run on;
//! * [`train`] — the reference training recipe (loss, schedule, augmentations, loader, loop);
//! * [`job`] — one (architecture, fold) job end to end, with every output published;
//! * [`client`] — the worker loop (register, lease, heartbeat, metrics, report);
//! * [`executor`] — leased orders run through [`job`];
//! * [`finished`] — a finished run's ensemble on new data, and its models as ONNX.

pub mod client;
pub mod executor;
pub mod finished;
pub mod job;
pub mod model;
pub mod ops;
pub mod train;

/// Why training could not run or finish.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Data(#[from] hbac_common::Error),
    #[error("spectrogram {0} is not loaded")]
    MissingSpectrogram(i64),
    #[error("EEG image {0} is not loaded")]
    MissingEegImage(String),
    #[error("the data loader stopped unexpectedly")]
    LoaderStopped,
    #[error("training diverged in epoch {epoch}: loss {loss}")]
    Diverged { epoch: usize, loss: f64 },
    #[error("invalid training configuration: {0}")]
    Config(String),
    #[error("cancelled")]
    Cancelled,
    /// The training or prediction thread panicked (a backend error such as a CUDA failure
    /// surfaces this way): worth another attempt, maybe on another machine.
    #[error("the training thread panicked: {0}")]
    Panicked(String),
    #[error(transparent)]
    Weights(#[from] crate::model::pretrained::ImportError),
}
