//! The reference pipeline (KerasCV starter), bit for bit where it is defined:
//! sample selection, the 10-minute window at `offset // 2` rows, zero padding, clipping to
//! `[e^-4, e^8]`, natural log, per-sample standardisation, 3-channel tiling, and labels as
//! vote distributions (default) or one-hot consensus (reference parity).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Location, Result};
use crate::hms::spectrogram::{FEATURES, SECONDS_PER_ROW, Spectrogram, WINDOW};
use crate::hms::tables::TrainRow;
use crate::hms::{Class, N_CLASSES};

/// Elements in one normalised window (one channel).
pub const WINDOW_LEN: usize = FEATURES * WINDOW;
/// Channels the backbones take (the window tiled three times).
pub const CHANNELS: usize = 3;
/// Elements of one model input `[3, 400, 300]`.
pub const INPUT_LEN: usize = CHANNELS * WINDOW_LEN;

/// Which `train.csv` rows become training samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum SampleSelection {
    /// The first row of each `spectrogram_id`, in order of first appearance (the reference).
    #[default]
    FirstPerSpectrogram,
    /// Every labelled row.
    AllRows,
}

/// How a row's label becomes a training target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LabelMode {
    /// Votes divided by their total: the competition's target.
    #[default]
    Votes,
    /// One-hot `expert_consensus`, as the KerasCV notebook trained.
    OneHot,
}

/// One training sample: where its window is and what it should predict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Index of the source row in `train.csv` (0-based, data rows only).
    pub row: usize,
    pub label_id: i64,
    pub eeg_id: i64,
    pub patient_id: i64,
    pub spectrogram_id: i64,
    /// First spectrogram row of the window: `spectrogram_label_offset_seconds // 2`.
    pub offset_rows: usize,
    pub class: Class,
    /// Target distribution in vote-column order.
    pub target: [f32; N_CLASSES],
}

/// `offset // 2` of the reference: the window's first row for a label offset in seconds.
pub fn offset_rows(offset_seconds: f64) -> usize {
    (offset_seconds / SECONDS_PER_ROW).floor() as usize
}

/// The target of a row under `mode`.
pub fn target(row: &TrainRow, mode: LabelMode) -> [f32; N_CLASSES] {
    let mut t = [0.0f32; N_CLASSES];
    match mode {
        LabelMode::Votes => {
            let total: f64 = row.votes.iter().sum();
            for (o, v) in t.iter_mut().zip(row.votes) {
                *o = (v / total) as f32;
            }
        }
        LabelMode::OneHot => t[row.expert_consensus.index()] = 1.0,
    }
    t
}

/// Turns validated `train.csv` rows into samples.
pub fn select_samples(
    rows: &[TrainRow],
    selection: SampleSelection,
    labels: LabelMode,
) -> Vec<Sample> {
    let mut seen = std::collections::HashSet::new();
    rows.iter()
        .enumerate()
        .filter(|(_, r)| selection == SampleSelection::AllRows || seen.insert(r.spectrogram_id))
        .map(|(i, r)| Sample {
            row: i,
            label_id: r.label_id,
            eeg_id: r.eeg_id,
            patient_id: r.patient_id,
            spectrogram_id: r.spectrogram_id,
            offset_rows: offset_rows(r.spectrogram_label_offset_seconds),
            class: r.expert_consensus,
            target: target(r, labels),
        })
        .collect()
}

/// Writes the model input `[3, 400, 300]` for the window starting at `offset` into `out`:
/// columns `[offset, offset + 300)`, zero-padded past the end, then clipped, logged,
/// standardised and tiled. An offset at or past the end of the file is an error naming `file`.
pub fn model_input(spec: &Spectrogram, offset: usize, file: &str, out: &mut [f32]) -> Result<()> {
    assert_eq!(out.len(), INPUT_LEN, "out must hold [3, 400, 300]");
    if offset >= spec.rows {
        return Err(Error::invalid(
            Location::file(file),
            format!(
                "label offset {} s (row {offset}) is past the end of the spectrogram ({} rows, {} s)",
                offset as f64 * SECONDS_PER_ROW,
                spec.rows,
                spec.rows as f64 * SECONDS_PER_ROW
            ),
        ));
    }
    let (first, rest) = out.split_at_mut(WINDOW_LEN);
    let take = WINDOW.min(spec.rows - offset);
    for f in 0..FEATURES {
        let src = &spec.data[f * spec.rows + offset..f * spec.rows + offset + take];
        let dst = &mut first[f * WINDOW..(f + 1) * WINDOW];
        dst[..take].copy_from_slice(src);
        dst[take..].fill(0.0);
    }
    normalize(first);
    rest[..WINDOW_LEN].copy_from_slice(first);
    rest[WINDOW_LEN..].copy_from_slice(first);
    Ok(())
}

/// Clip to `[e^-4, e^8]`, natural log, then `(x - mean) / (std + 1e-6)` over the whole window
/// (population std), in `f32` like the reference's TensorFlow ops; sums accumulate in `f64`.
pub fn normalize(x: &mut [f32]) {
    let lo = (-4.0f32).exp();
    let hi = 8.0f32.exp();
    let mut sum = 0.0f64;
    for v in x.iter_mut() {
        *v = v.clamp(lo, hi).ln();
        sum += *v as f64;
    }
    let mean = (sum / x.len() as f64) as f32;
    let mut sq = 0.0f64;
    for v in x.iter_mut() {
        *v -= mean;
        sq += (*v as f64) * (*v as f64);
    }
    let std = (sq / x.len() as f64).sqrt() as f32;
    let scale = std + 1e-6;
    for v in x.iter_mut() {
        *v /= scale;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(spec: i64, label: i64, offset: f64, votes: [f64; 6]) -> TrainRow {
        TrainRow {
            eeg_id: 1,
            eeg_sub_id: 0,
            eeg_label_offset_seconds: 0.0,
            spectrogram_id: spec,
            spectrogram_sub_id: 0,
            spectrogram_label_offset_seconds: offset,
            label_id: label,
            patient_id: 9,
            expert_consensus: Class::Lpd,
            votes,
        }
    }

    #[test]
    fn first_row_per_spectrogram_in_order_and_targets() {
        let rows = vec![
            row(5, 1, 0.0, [0.0, 3.0, 1.0, 0.0, 0.0, 0.0]),
            row(5, 2, 7.0, [0.0, 1.0, 0.0, 0.0, 0.0, 0.0]),
            row(3, 3, 13.0, [1.0, 1.0, 0.0, 0.0, 0.0, 2.0]),
        ];
        let s = select_samples(
            &rows,
            SampleSelection::FirstPerSpectrogram,
            LabelMode::Votes,
        );
        assert_eq!(s.iter().map(|s| s.label_id).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(s[0].target, [0.0, 0.75, 0.25, 0.0, 0.0, 0.0]);
        assert_eq!(s[1].offset_rows, 6, "13 s // 2 = 6 rows");
        let all = select_samples(&rows, SampleSelection::AllRows, LabelMode::OneHot);
        assert_eq!(all.len(), 3);
        assert_eq!(all[1].offset_rows, 3);
        assert_eq!(all[2].target, [0.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn window_pads_and_matches_numpy_reference() {
        // Feature f, time t has value (t + 1) * (f + 1) / 100; offset 250 of 310 rows leaves 60.
        let rows = 310;
        let data: Vec<f32> = (0..FEATURES)
            .flat_map(|f| (0..rows).map(move |t| ((t + 1) * (f + 1)) as f32 / 100.0))
            .collect();
        let spec = Spectrogram { rows, data };
        let mut out = vec![0.0; INPUT_LEN];
        model_input(&spec, 250, "s.npy", &mut out).unwrap();
        // Reference in float64 numpy terms: pad with 0, clip, log, standardise.
        let mut raw = vec![0.0f64; WINDOW_LEN];
        for f in 0..FEATURES {
            for t in 0..60 {
                raw[f * WINDOW + t] = ((250 + t + 1) * (f + 1)) as f64 / 100.0;
            }
        }
        let logs: Vec<f64> = raw
            .iter()
            .map(|v| v.clamp((-4f64).exp(), 8f64.exp()).ln())
            .collect();
        let mean = logs.iter().sum::<f64>() / logs.len() as f64;
        let std = (logs.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / logs.len() as f64).sqrt();
        for i in [0, 59, 60, 299, 1234, WINDOW_LEN - 1] {
            let want = (logs[i] - mean) / (std + 1e-6);
            assert!(
                (out[i] as f64 - want).abs() < 1e-4,
                "{i}: {} vs {want}",
                out[i]
            );
            assert_eq!(out[i], out[WINDOW_LEN + i]);
            assert_eq!(out[i], out[2 * WINDOW_LEN + i]);
        }
        // Padding became ln(e^-4) before standardising: all padded cells are equal.
        assert_eq!(out[60], out[299]);
    }

    #[test]
    fn offset_past_end_is_an_error_naming_the_file() {
        let spec = Spectrogram {
            rows: 300,
            data: vec![1.0; 300 * FEATURES],
        };
        let mut out = vec![0.0; INPUT_LEN];
        let e = model_input(&spec, 300, "cache/train_spectrograms/42.npy", &mut out)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("42.npy") && e.contains("past the end") && e.contains("600 s"),
            "{e}"
        );
    }

    #[test]
    fn normalise_has_zero_mean_unit_std() {
        let mut x: Vec<f32> = (0..1000).map(|i| (i % 37) as f32 + 0.1).collect();
        normalize(&mut x);
        let mean: f64 = x.iter().map(|&v| v as f64).sum::<f64>() / 1000.0;
        let var: f64 = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / 1000.0;
        assert!(
            mean.abs() < 1e-5 && (var.sqrt() - 1.0).abs() < 1e-4,
            "{mean} {var}"
        );
    }
}
