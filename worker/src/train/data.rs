//! Feeding the trainer: samples (from `hbac-common`'s reference preprocessing) turned into
//! batches of the set's [`Input`] (`[N, 3, 400, 300]` for Kaggle's spectrograms) by a pool of
//! loader threads, each batch built ahead of the training step and handed over in order
//! through bounded channels.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};

use hbac_common::eeg_cache;
use hbac_common::hms::N_CLASSES;
use hbac_common::hms::eeg::EegImage;
use hbac_common::hms::spectrogram::Spectrogram;
use hbac_common::prepare::Split;
use hbac_common::preprocess::{self, Input, Sample};

use crate::TrainError;

/// Samples with what their images are made of in memory: Kaggle's spectrograms (by
/// `spectrogram_id`) and EEG images (by their cache key), as the set's input needs.
#[derive(Debug, Clone, Default)]
pub struct WindowSet {
    pub samples: Vec<Sample>,
    pub input: Input,
    /// Train or test: where the samples' EEG images are.
    pub split: Split,
    pub spectrograms: HashMap<i64, Arc<Spectrogram>>,
    pub eegs: HashMap<String, Arc<EegImage>>,
    /// Training units when samples come in groups (per-eeg: a recording's rows, one drawn per
    /// epoch); empty: every sample is a unit of its own.
    pub groups: Vec<Vec<usize>>,
}

/// One batch on the host.
#[derive(Debug, Clone)]
pub struct HostBatch {
    /// Indices into the set's samples.
    pub indices: Vec<usize>,
    /// One sample's input, `[channels, height, width]`.
    pub shape: [usize; 3],
    /// `[n, channels, height, width]` row-major.
    pub inputs: Vec<f32>,
    /// `[n, 6]` targets.
    pub targets: Vec<f32>,
}

impl WindowSet {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The cache key of a sample's EEG image.
    pub fn eeg_key(&self, s: &Sample) -> String {
        eeg_cache::key(self.split, s.eeg_id, s.eeg_sub_id)
    }

    /// The training units: [`WindowSet::groups`], or each sample alone.
    pub fn units(&self) -> Vec<Vec<usize>> {
        if self.groups.is_empty() {
            (0..self.samples.len()).map(|i| vec![i]).collect()
        } else {
            self.groups.clone()
        }
    }

    /// The training units whose samples have at least `min_votes` votes (a recording's members
    /// all carry its total): the units a second stage trains on.
    pub fn units_with_votes(&self, min_votes: f64) -> Vec<Vec<usize>> {
        self.units()
            .into_iter()
            .filter(|u| self.samples[u[0]].votes as f64 >= min_votes)
            .collect()
    }

    /// Builds the batch of `indices`.
    pub fn batch(&self, indices: &[usize]) -> Result<HostBatch, TrainError> {
        let len = self.input.elements();
        let mut inputs = vec![0.0f32; indices.len() * len];
        let mut targets = Vec::with_capacity(indices.len() * N_CLASSES);
        for (&i, out) in indices.iter().zip(inputs.chunks_mut(len)) {
            let s = &self.samples[i];
            let file = format!("spectrogram {}", s.spectrogram_id);
            let spec = || {
                self.spectrograms
                    .get(&s.spectrogram_id)
                    .ok_or(TrainError::MissingSpectrogram(s.spectrogram_id))
            };
            let eeg = || {
                let key = self.eeg_key(s);
                self.eegs.get(&key).ok_or(TrainError::MissingEegImage(key))
            };
            match self.input {
                Input::Kaggle => preprocess::model_input(spec()?, s.offset_rows, &file, out)?,
                Input::Eeg => preprocess::eeg_input(eeg()?, out),
                Input::Both => preprocess::both_input(spec()?, s.offset_rows, eeg()?, &file, out)?,
            }
            targets.extend_from_slice(&s.target);
        }
        Ok(HostBatch {
            indices: indices.to_vec(),
            shape: self.input.shape(),
            inputs,
            targets,
        })
    }
}

/// Builds `batches` on `threads` threads, at most `ahead` batches ahead per thread; the
/// returned iterator yields them in order. Threads stop when the iterator is dropped.
pub fn prefetch(
    set: Arc<WindowSet>,
    batches: Vec<Vec<usize>>,
    threads: usize,
    ahead: usize,
) -> impl Iterator<Item = Result<HostBatch, TrainError>> {
    let threads = threads.clamp(1, batches.len().max(1));
    let mut receivers: Vec<Receiver<Result<HostBatch, TrainError>>> = Vec::with_capacity(threads);
    let batches = Arc::new(batches);
    for t in 0..threads {
        let (tx, rx) = sync_channel(ahead.max(1));
        let (set, batches) = (set.clone(), batches.clone());
        std::thread::Builder::new()
            .name(format!("hbac-loader-{t}"))
            .spawn(move || {
                for b in (t..batches.len()).step_by(threads) {
                    if tx.send(set.batch(&batches[b])).is_err() {
                        return; // consumer gone
                    }
                }
            })
            .expect("spawn loader thread");
        receivers.push(rx);
    }
    let n = batches.len();
    (0..n).map(move |b| {
        receivers[b % threads]
            .recv()
            .unwrap_or(Err(TrainError::LoaderStopped))
    })
}
