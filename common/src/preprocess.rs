//! The reference pipeline (KerasCV starter), bit for bit where it is defined:
//! sample selection, the 10-minute window at `offset // 2` rows, zero padding, clipping to
//! `[e^-4, e^8]`, natural log, per-sample standardisation, 3-channel tiling, and labels as
//! vote distributions (default) or one-hot consensus (reference parity).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Location, Result};
use crate::hms::eeg::{self, EegImage};
use crate::hms::spectrogram::{FEATURES, SECONDS_PER_ROW, Spectrogram, WINDOW};
use crate::hms::tables::TrainRow;
use crate::hms::{Class, N_CLASSES};

/// Elements in one normalised window (one channel).
pub const WINDOW_LEN: usize = FEATURES * WINDOW;
/// Channels the backbones take (the window tiled three times).
pub const CHANNELS: usize = 3;
/// Elements of one model input `[3, 400, 300]`.
pub const INPUT_LEN: usize = CHANNELS * WINDOW_LEN;

/// Which image a model sees (`--input`); every image has 3 identical channels, as the
/// ImageNet backbones expect.
///
/// - `kaggle` — the reference: Kaggle's spectrogram window, `[3, 400, 300]` (400 columns of
///   the parquet file in its order — LL, RL, LP, RP × 100 frequencies — by 300 rows of 2 s);
/// - `eeg` — the EEG window's mel image (`hbac prepare --eeg`), `[3, 512, 256]`: chains LL, RL,
///   LP, RP stacked top to bottom, each 128 mel bins (low to high) by 256 frames;
/// - `both` — the public starter's 512 × 512 tiling, `[3, 512, 512]`: on the left (columns
///   0–255) Kaggle's four chains, each in a 128-row band (its 100 frequencies in rows 14–113,
///   zero above and below) over the window's middle 256 rows (rows 22–277 of the 300; the
///   window standardised as for `kaggle`); on the right (columns 256–511) the EEG image.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Input {
    #[default]
    Kaggle,
    Eeg,
    Both,
}

impl Input {
    /// The model input of one sample, `[channels, height, width]`.
    pub fn shape(self) -> [usize; 3] {
        match self {
            Input::Kaggle => [CHANNELS, FEATURES, WINDOW],
            Input::Eeg => [CHANNELS, EEG_HEIGHT, eeg::FRAMES],
            Input::Both => [CHANNELS, EEG_HEIGHT, 2 * eeg::FRAMES],
        }
    }

    /// Elements of one sample's input.
    pub fn elements(self) -> usize {
        self.shape().iter().product()
    }

    /// Whether the image has Kaggle's spectrogram in it.
    pub fn uses_spectrograms(self) -> bool {
        self != Input::Eeg
    }

    /// Whether the image has the EEG's mel image in it (the `.npy` cache `hbac prepare --eeg`
    /// builds).
    pub fn uses_eegs(self) -> bool {
        self != Input::Kaggle
    }

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Input::Kaggle => "kaggle",
            Input::Eeg => "eeg",
            Input::Both => "both",
        }
    }
}

/// Rows of the EEG image as one plane: four chains of 128 mel bins.
pub const EEG_HEIGHT: usize = eeg::SHAPE[0] * eeg::N_MELS;
/// Rows of a 128-row band above and below Kaggle's 100 frequencies in the `both` image.
const BAND_PAD: usize = (eeg::N_MELS - FEATURES / 4) / 2;
/// Rows dropped at each end of Kaggle's 300-row window in the `both` image.
const TIME_CROP: usize = (WINDOW - eeg::FRAMES) / 2;

/// Writes the `eeg` model input `[3, 512, 256]` of an EEG image into `out`.
pub fn eeg_input(image: &EegImage, out: &mut [f32]) {
    assert_eq!(
        out.len(),
        Input::Eeg.elements(),
        "out must hold [3, 512, 256]"
    );
    let plane = image.data.len();
    for c in 0..CHANNELS {
        // [4, 128, 256] row-major is already the 512 × 256 plane, chains stacked.
        out[c * plane..(c + 1) * plane].copy_from_slice(&image.data);
    }
}

/// Writes the `both` model input `[3, 512, 512]` of Kaggle's window at `offset` and an EEG
/// image into `out` (see [`Input`]); errors as [`model_input`].
pub fn both_input(
    spec: &Spectrogram,
    offset: usize,
    image: &EegImage,
    file: &str,
    out: &mut [f32],
) -> Result<()> {
    assert_eq!(
        out.len(),
        Input::Both.elements(),
        "out must hold [3, 512, 512]"
    );
    let mut kaggle = vec![0.0f32; INPUT_LEN];
    model_input(spec, offset, file, &mut kaggle)?;
    let (h, w, frames) = (EEG_HEIGHT, 2 * eeg::FRAMES, eeg::FRAMES);
    let plane = &mut out[..h * w];
    plane.fill(0.0);
    let band = FEATURES / 4;
    for chain in 0..4 {
        for f in 0..band {
            let src = &kaggle[(chain * band + f) * WINDOW + TIME_CROP..][..frames];
            let row = chain * eeg::N_MELS + BAND_PAD + f;
            plane[row * w..row * w + frames].copy_from_slice(src);
        }
    }
    for row in 0..h {
        plane[row * w + frames..(row + 1) * w]
            .copy_from_slice(&image.data[row * frames..(row + 1) * frames]);
    }
    let (first, rest) = out.split_at_mut(h * w);
    rest[..h * w].copy_from_slice(first);
    rest[h * w..].copy_from_slice(first);
    Ok(())
}

/// Which `train.csv` rows become training samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum SampleSelection {
    /// The first row of each `spectrogram_id`, in order of first appearance (the reference).
    #[default]
    #[value(name = "per-spectrogram", alias = "first-per-spectrogram")]
    FirstPerSpectrogram,
    /// Every labelled row.
    AllRows,
    /// For training, one sample per `eeg_id` and epoch: its rows' votes summed and normalised
    /// as the target, the window one of its rows drawn from the epoch's generator
    /// ([`group_by_eeg`]); validation scores every row.
    PerEeg,
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
    /// The row's `eeg_sub_id`, which names its EEG window's image (`None` for test rows: a
    /// test EEG is one 50-s window).
    #[serde(default)]
    pub eeg_sub_id: Option<i64>,
    pub patient_id: i64,
    pub spectrogram_id: i64,
    /// First spectrogram row of the window: `spectrogram_label_offset_seconds // 2`.
    pub offset_rows: usize,
    pub class: Class,
    /// Target distribution in vote-column order.
    pub target: [f32; N_CLASSES],
    /// Annotators' votes on the row, all classes together (the agreement `--min-votes` and
    /// `--stage2-min-votes` select on; 0 for test rows).
    #[serde(default)]
    pub votes: f32,
}

/// Groups `samples` by `eeg_id` (groups in order of first appearance, members in order): each
/// member's target becomes its recording's — the members' votes summed, then normalised
/// (`target × votes` summed; with one-hot labels, the members' targets averaged) — and its
/// `votes` the recording's total. The trainer draws one member of each group per epoch.
pub fn group_by_eeg(samples: &mut [Sample]) -> Vec<Vec<usize>> {
    let mut index: std::collections::HashMap<i64, usize> = std::collections::HashMap::new();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, s) in samples.iter().enumerate() {
        let g = *index.entry(s.eeg_id).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(i);
    }
    for members in &groups {
        let votes: f64 = members.iter().map(|&i| samples[i].votes as f64).sum();
        let mut sum = [0.0f64; N_CLASSES];
        for &i in members {
            // Rows without a vote count (one-hot targets of a hand-made table) weigh 1.
            let w = if votes > 0.0 {
                samples[i].votes as f64
            } else {
                1.0
            };
            for (o, &t) in sum.iter_mut().zip(&samples[i].target) {
                *o += t as f64 * w;
            }
        }
        let total: f64 = sum.iter().sum();
        let target = sum.map(|v| (v / total.max(f64::MIN_POSITIVE)) as f32);
        for &i in members {
            samples[i].target = target;
            samples[i].votes = votes as f32;
        }
    }
    groups
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
        .filter(|(_, r)| {
            selection != SampleSelection::FirstPerSpectrogram || seen.insert(r.spectrogram_id)
        })
        .map(|(i, r)| Sample {
            row: i,
            label_id: r.label_id,
            eeg_id: r.eeg_id,
            eeg_sub_id: Some(r.eeg_sub_id),
            patient_id: r.patient_id,
            spectrogram_id: r.spectrogram_id,
            offset_rows: offset_rows(r.spectrogram_label_offset_seconds),
            class: r.expert_consensus,
            target: target(r, labels),
            votes: r.votes.iter().sum::<f64>() as f32,
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
    fn per_eeg_groups_sum_the_votes_of_a_recording() {
        let mut r = vec![
            row(5, 1, 0.0, [0.0, 3.0, 1.0, 0.0, 0.0, 0.0]),
            row(6, 2, 7.0, [0.0, 1.0, 0.0, 0.0, 0.0, 0.0]),
            row(3, 3, 13.0, [1.0, 1.0, 0.0, 0.0, 0.0, 2.0]),
        ];
        r[2].eeg_id = 2;
        let mut s = select_samples(&r, SampleSelection::PerEeg, LabelMode::Votes);
        assert_eq!(s.len(), 3, "every row is a window to draw from");
        let groups = group_by_eeg(&mut s);
        assert_eq!(groups, vec![vec![0, 1], vec![2]]);
        // eeg 1: votes (0,3,1,0,0,0) + (0,1,0,0,0,0) = (0,4,1,0,0,0) of 5.
        assert_eq!(s[0].target, [0.0, 0.8, 0.2, 0.0, 0.0, 0.0]);
        assert_eq!(s[1].target, s[0].target);
        assert_eq!((s[0].votes, s[2].votes), (5.0, 4.0));
        assert_eq!(s[2].target, [0.25, 0.25, 0.0, 0.0, 0.0, 0.5]);
    }

    #[test]
    fn eeg_and_both_inputs_tile_as_documented() {
        // EEG image value = chain·1e6 + mel·1e3 + frame, so every cell says where it came from.
        let mut data = Vec::new();
        for chain in 0..4 {
            for mel in 0..128 {
                for frame in 0..256 {
                    data.push((chain * 1_000_000 + mel * 1000 + frame) as f32);
                }
            }
        }
        let image = EegImage { data };
        let mut eeg = vec![0.0; Input::Eeg.elements()];
        eeg_input(&image, &mut eeg);
        assert_eq!(Input::Eeg.shape(), [3, 512, 256]);
        let at = |x: &[f32], w: usize, c: usize, r: usize, col: usize| x[(c * 512 + r) * w + col];
        assert_eq!(at(&eeg, 256, 0, 0, 0), 0.0);
        assert_eq!(
            at(&eeg, 256, 2, 128 * 3 + 5, 7),
            3_005_007.0,
            "chain RP, mel 5, frame 7"
        );

        // Kaggle: a spectrogram whose standardised window is known: feature f, row t.
        let rows = 300;
        let spec_data: Vec<f32> = (0..FEATURES)
            .flat_map(|f| (0..rows).map(move |t| 1.0 + ((f * 7 + t * 3) % 50) as f32))
            .collect();
        let spec = Spectrogram {
            rows,
            data: spec_data,
        };
        let mut kaggle = vec![0.0; INPUT_LEN];
        model_input(&spec, 0, "s", &mut kaggle).unwrap();
        let mut both = vec![f32::NAN; Input::Both.elements()];
        both_input(&spec, 0, &image, "s", &mut both).unwrap();
        assert_eq!(Input::Both.shape(), [3, 512, 512]);
        for c in 0..3 {
            for chain in 0..4 {
                for r in 0..128 {
                    let row = chain * 128 + r;
                    for col in [0, 1, 100, 255] {
                        let got = at(&both, 512, c, row, col);
                        let want = if (14..114).contains(&r) {
                            let f = chain * 100 + r - 14;
                            kaggle[f * 300 + 22 + col]
                        } else {
                            0.0
                        };
                        assert_eq!(got, want, "chain {chain} row {r} col {col}");
                    }
                    for col in [256, 300, 511] {
                        assert_eq!(
                            at(&both, 512, c, row, col),
                            image.data[row * 256 + col - 256]
                        );
                    }
                }
            }
        }
        // A window past the end is an error naming the file, as for the kaggle input.
        let e = both_input(&spec, 300, &image, "spectrograms/9.parquet", &mut both).unwrap_err();
        assert!(e.to_string().contains("spectrograms/9.parquet"), "{e}");
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
