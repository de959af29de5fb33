//! Feeding the trainer: samples (from `hbac-common`'s reference preprocessing) turned into
//! `[N, 3, 400, 300]` batches by a pool of loader threads, each batch built ahead of the
//! training step and handed over in order through bounded channels.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};

use hbac_common::hms::N_CLASSES;
use hbac_common::hms::spectrogram::Spectrogram;
use hbac_common::preprocess::{self, INPUT_LEN, Sample};

use crate::TrainError;

/// Samples with their spectrograms in memory.
#[derive(Debug, Clone, Default)]
pub struct WindowSet {
    pub samples: Vec<Sample>,
    pub spectrograms: HashMap<i64, Arc<Spectrogram>>,
}

/// One batch on the host.
#[derive(Debug, Clone)]
pub struct HostBatch {
    /// Indices into the set's samples.
    pub indices: Vec<usize>,
    /// `[n, 3, 400, 300]` row-major.
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

    /// Builds the batch of `indices`.
    pub fn batch(&self, indices: &[usize]) -> Result<HostBatch, TrainError> {
        let mut inputs = vec![0.0f32; indices.len() * INPUT_LEN];
        let mut targets = Vec::with_capacity(indices.len() * N_CLASSES);
        for (&i, out) in indices.iter().zip(inputs.chunks_mut(INPUT_LEN)) {
            let s = &self.samples[i];
            let spec = self
                .spectrograms
                .get(&s.spectrogram_id)
                .ok_or(TrainError::MissingSpectrogram(s.spectrogram_id))?;
            preprocess::model_input(
                spec,
                s.offset_rows,
                &format!("spectrogram {}", s.spectrogram_id),
                out,
            )?;
            targets.extend_from_slice(&s.target);
        }
        Ok(HostBatch {
            indices: indices.to_vec(),
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
