//! What the hbac coordinator and its workers both speak.
//!
//! * [`proto`] — the generated gRPC code and its conversion to domain types (the only place
//!   generated structs are touched);
//! * [`storage`] — dataset and run URLs (`file://`, `s3://`, `gs://`, `az://`, `memory://`, or a
//!   plain path) opened through `object_store`;
//! * [`hms`] — the Kaggle HMS file formats, validated column by column;
//! * [`npy`] — the `.npy` spectrogram cache format (`numpy.load` reads it);
//! * [`preprocess`] — the reference pipeline: sample selection, windows, normalisation, labels;
//! * [`prepare`] — the parquet → `.npy` cache conversion (`hbac prepare`);
//! * [`eeg_cache`] — the EEG window → mel-spectrogram image cache (`hbac prepare --eeg`);
//! * [`folds`] — scikit-learn-exact `StratifiedGroupKFold`, including numpy's legacy RNG;
//! * [`metric`] — the Kaggle KL-divergence score and the Keras KL loss;
//! * [`synth`] — deterministic synthetic HMS data sets with learnable class signal;
//! * [`plot`] — SVG loss-vs-epoch figures;
//! * [`onnx`] — the ONNX model format `hbac export` writes, and a graph builder;
//! * [`records`] — the typed files of a job attempt (summary, metrics, saved training states);
//! * [`progress`] — progress bars shared by every long-running command.

pub mod eeg_cache;
pub mod ensemble;
pub mod error;
pub mod folds;
pub mod hms;
pub mod metric;
pub mod npy;
pub mod onnx;
pub mod plot;
pub mod prepare;
pub mod preprocess;
pub mod progress;
pub mod proto;
pub mod records;
pub mod storage;
pub mod synth;

pub use error::{Error, Result};
