//! Raw EEG → mel spectrograms, exactly as the public HMS reference computes them from
//! `train_eegs/` (and as librosa does, to ≤ 1e-3: `tests/golden/eeg/`).
//!
//! For a 50-second window (10,000 rows at 200 Hz, from `eeg_label_offset_seconds`):
//! 1. each bipolar difference of the four chains, in the order of Kaggle's spectrogram
//!    columns — LL: Fp1−F7, F7−T3, T3−T5, T5−O1; RL: Fp2−F8, F8−T4, T4−T6, T6−O2;
//!    LP: Fp1−F3, F3−C3, C3−P3, P3−O1; RP: Fp2−F4, F4−C4, C4−P4, P4−O2 — computed in float32,
//!    NaN replaced by the difference's mean over the window (all NaN: zeros);
//! 2. its power mel spectrogram, `librosa.feature.melspectrogram(y=x, sr=200, n_fft=1024,
//!    win_length=128, hop_length=len(x)//256, n_mels=128, fmin=0, fmax=20)`: a periodic Hann
//!    window of 128 samples centred in 1,024, frames centred with zero padding (257 frames,
//!    hop 39), power 2, Slaney mel scale and area normalisation;
//! 3. `power_to_db(S, ref=np.max)` (amin 1e-10, top_db 80) over all 257 frames, then
//!    `(db + 40) / 40`, then the first 256 frames;
//! 4. a chain's image is the mean of its four differences.
//!
//! The result, [`EegImage`], is float32 `[4, 128, 256]`: chains LL, RL, LP, RP; mel bins low to
//! high frequency; frames in time order. Its `.npy` ([`encode`]) is what `numpy.load` reads.

use std::sync::{Arc, OnceLock};

use arrow_array::{Array, Float32Array, Float64Array};
use bytes::Bytes;
use ndarray::{Array3, ArrayView3};
use ndarray_npy::{ReadNpyExt, WriteNpyExt};
use realfft::{RealFftPlanner, RealToComplex};

use crate::error::{Error, Location, Result};
use crate::hms::spectrogram::{CHAINS, EEG_COLUMNS, check_columns, check_float, open};

/// EEG samples per second.
pub const SAMPLE_RATE: usize = 200;
/// Rows in one labelled window: 50 s.
pub const WINDOW_ROWS: usize = 50 * SAMPLE_RATE;
/// FFT length.
pub const N_FFT: usize = 1024;
/// Hann window length, centred in the FFT frame.
pub const WIN_LENGTH: usize = 128;
/// Mel bands, 0–20 Hz.
pub const N_MELS: usize = 128;
/// Upper edge of the mel bands, Hz.
pub const FMAX: f64 = 20.0;
/// Frames kept per image (of the 257 librosa computes for a 50-s window).
pub const FRAMES: usize = 256;
/// Shape of one image: chains × mel bands × frames.
pub const SHAPE: [usize; 3] = [CHAINS.len(), N_MELS, FRAMES];
/// Each chain as a path of electrodes; consecutive pairs are its four differences.
pub const CHAIN_ELECTRODES: [[&str; 5]; 4] = [
    ["Fp1", "F7", "T3", "T5", "O1"],
    ["Fp2", "F8", "T4", "T6", "O2"],
    ["Fp1", "F3", "C3", "P3", "O1"],
    ["Fp2", "F4", "C4", "P4", "O2"],
];

const HOP: usize = WINDOW_ROWS / 256;
const BINS: usize = N_FFT / 2 + 1;
const AMIN: f64 = 1e-10;
const TOP_DB: f64 = 80.0;

/// A decoded EEG file: every column of [`EEG_COLUMNS`], NaN (and nulls) kept as NaN.
#[derive(Debug, Clone, PartialEq)]
pub struct Eeg {
    /// Rows (samples at 200 Hz).
    pub rows: usize,
    columns: Vec<Vec<f32>>,
}

impl Eeg {
    /// Builds an EEG from `[rows, 20]` row-major values in [`EEG_COLUMNS`] order.
    pub fn from_rows(values: &[f32], rows: usize) -> Eeg {
        let n = EEG_COLUMNS.len();
        assert_eq!(values.len(), rows * n, "values must be [rows, 20]");
        let columns = (0..n)
            .map(|c| (0..rows).map(|t| values[t * n + c]).collect())
            .collect();
        Eeg { rows, columns }
    }

    /// One electrode's samples.
    pub fn column(&self, name: &str) -> &[f32] {
        let i = EEG_COLUMNS
            .iter()
            .position(|c| *c == name)
            .unwrap_or_else(|| panic!("{name} is not an EEG column"));
        &self.columns[i]
    }
}

/// Decodes an EEG parquet file (the 20 [`EEG_COLUMNS`], float, in order), keeping NaN.
pub fn read_eeg(bytes: Bytes, file: &str) -> Result<Eeg> {
    let builder = open(bytes, file)?;
    check_columns(builder.schema(), &EEG_COLUMNS, file)?;
    for f in builder.schema().fields() {
        check_float(f, file)?;
    }
    let rows = builder.metadata().file_metadata().num_rows() as usize;
    let reader = builder
        .with_batch_size(rows.max(1))
        .build()
        .map_err(|e| Error::invalid(Location::file(file), format!("unreadable parquet: {e}")))?;
    let mut columns: Vec<Vec<f32>> = (0..EEG_COLUMNS.len())
        .map(|_| Vec::with_capacity(rows))
        .collect();
    for batch in reader {
        let batch = batch.map_err(|e| {
            Error::invalid(Location::file(file), format!("corrupt parquet data: {e}"))
        })?;
        for (col, out) in batch.columns().iter().zip(&mut columns) {
            let start = out.len();
            if let Some(a) = col.as_any().downcast_ref::<Float32Array>() {
                out.extend_from_slice(a.values());
            } else if let Some(a) = col.as_any().downcast_ref::<Float64Array>() {
                out.extend(a.values().iter().map(|&v| v as f32));
            }
            if let Some(nulls) = col.nulls() {
                for i in (0..nulls.len()).filter(|&i| nulls.is_null(i)) {
                    out[start + i] = f32::NAN;
                }
            }
        }
    }
    for (c, v) in columns.iter().enumerate() {
        if v.len() != rows {
            return Err(Error::invalid(
                Location::file(file).field(EEG_COLUMNS[c]),
                format!("{} values, file metadata says {rows} rows", v.len()),
            ));
        }
    }
    Ok(Eeg { rows, columns })
}

/// The first row of the window at `offset_seconds`; an error naming `file` when the window does
/// not lie inside the recording.
pub fn window_start(eeg: &Eeg, offset_seconds: f64, file: &str) -> Result<usize> {
    if !(offset_seconds.is_finite() && offset_seconds >= 0.0) {
        return Err(Error::invalid(
            Location::file(file),
            format!("window offset {offset_seconds} s: must be a finite number ≥ 0"),
        ));
    }
    let start = (offset_seconds * SAMPLE_RATE as f64).round() as usize;
    if start + WINDOW_ROWS > eeg.rows {
        return Err(Error::invalid(
            Location::file(file),
            format!(
                "{} rows ({:.2} s at {SAMPLE_RATE} Hz): the 50-s window at {offset_seconds} s needs rows {start}..{}",
                eeg.rows,
                eeg.rows as f64 / SAMPLE_RATE as f64,
                start + WINDOW_ROWS
            ),
        ));
    }
    Ok(start)
}

/// One image, float32 `[4, 128, 256]` (see [`SHAPE`]), row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct EegImage {
    pub data: Vec<f32>,
}

/// The image of the 50-s window of `eeg` at `offset_seconds` (module docs: the reference's
/// recipe). `file` names the recording in errors.
pub fn eeg_image(eeg: &Eeg, offset_seconds: f64, file: &str) -> Result<EegImage> {
    let start = window_start(eeg, offset_seconds, file)?;
    let plan = Plan::get();
    let mut data = vec![0.0f32; SHAPE.iter().product()];
    let plane = N_MELS * FRAMES;
    for (chain, electrodes) in CHAIN_ELECTRODES.iter().enumerate() {
        let mut sum = vec![0.0f64; plane];
        for pair in electrodes.windows(2) {
            let (a, b) = (eeg.column(pair[0]), eeg.column(pair[1]));
            let x: Vec<f32> = (start..start + WINDOW_ROWS).map(|t| a[t] - b[t]).collect();
            let scaled = plan.scaled_db(&fill_nan_with_mean(x));
            for (s, v) in sum.iter_mut().zip(scaled) {
                *s += v;
            }
        }
        for (d, s) in data[chain * plane..(chain + 1) * plane].iter_mut().zip(sum) {
            *d = (s / 4.0) as f32;
        }
    }
    Ok(EegImage { data })
}

/// NaN → the mean of the other samples; all NaN → zeros (the reference's `np.nanmean` fill).
fn fill_nan_with_mean(mut x: Vec<f32>) -> Vec<f64> {
    let (sum, n) = x
        .iter()
        .filter(|v| !v.is_nan())
        .fold((0.0f64, 0usize), |(s, n), &v| (s + f64::from(v), n + 1));
    let fill = if n == 0 { 0.0 } else { (sum / n as f64) as f32 };
    for v in &mut x {
        if v.is_nan() || n == 0 {
            *v = fill;
        }
    }
    x.into_iter().map(f64::from).collect()
}

/// What every image shares: the window, the mel filter bank, the FFT plan.
struct Plan {
    window: [f64; WIN_LENGTH],
    /// Per mel band: first FFT bin with a non-zero weight, and the weights from there.
    mel: Vec<(usize, Vec<f64>)>,
    fft: Arc<dyn RealToComplex<f64>>,
}

impl Plan {
    fn get() -> &'static Plan {
        static PLAN: OnceLock<Plan> = OnceLock::new();
        PLAN.get_or_init(|| {
            let window = std::array::from_fn(|n| {
                0.5 - 0.5 * (2.0 * std::f64::consts::PI * n as f64 / WIN_LENGTH as f64).cos()
            });
            let mel = mel_filters()
                .into_iter()
                .map(|w| {
                    let first = w.iter().position(|&v| v != 0.0).unwrap_or(0);
                    let last = w.iter().rposition(|&v| v != 0.0).map_or(0, |l| l + 1);
                    (first, w[first..last.max(first)].to_vec())
                })
                .collect();
            let fft = RealFftPlanner::<f64>::new().plan_fft_forward(N_FFT);
            Plan { window, mel, fft }
        })
    }

    /// `(power_to_db(melspectrogram(x), ref=max) + 40) / 40`, `[N_MELS, FRAMES]` row-major.
    fn scaled_db(&self, x: &[f64]) -> Vec<f64> {
        let frames = 1 + x.len() / HOP; // centred frames over the zero-padded signal
        let mut input = self.fft.make_input_vec();
        let mut spectrum = self.fft.make_output_vec();
        let mut scratch = self.fft.make_scratch_vec();
        let mut power = vec![0.0f64; BINS];
        let mut mel = vec![0.0f64; N_MELS * frames];
        for t in 0..frames {
            // The window's 128 samples sit at 448..576 of the 1,024-sample frame, which starts
            // 512 samples before sample t × hop: signal samples t × hop − 64 + n. Where they sit
            // inside the frame changes only the phase, not the power.
            input.fill(0.0);
            for (n, w) in self.window.iter().enumerate() {
                let i = (t * HOP + n) as isize - (WIN_LENGTH / 2) as isize;
                if i >= 0 && (i as usize) < x.len() {
                    input[n] = w * x[i as usize];
                }
            }
            self.fft
                .process_with_scratch(&mut input, &mut spectrum, &mut scratch)
                .expect("buffers come from the plan");
            for (p, c) in power.iter_mut().zip(&spectrum) {
                *p = c.norm_sqr();
            }
            for (m, (first, w)) in self.mel.iter().enumerate() {
                mel[m * frames + t] = w.iter().zip(&power[*first..]).map(|(a, b)| a * b).sum();
            }
        }
        let reference = mel.iter().copied().fold(0.0f64, f64::max);
        let ref_db = 10.0 * reference.max(AMIN).log10();
        let db: Vec<f64> = mel
            .iter()
            .map(|&v| 10.0 * v.max(AMIN).log10() - ref_db)
            .collect();
        let floor = db.iter().copied().fold(f64::NEG_INFINITY, f64::max) - TOP_DB;
        (0..N_MELS)
            .flat_map(|m| (0..FRAMES).map(move |t| (m, t)))
            .map(|(m, t)| (db[m * frames + t].max(floor) + 40.0) / 40.0)
            .collect()
    }
}

/// librosa's `filters.mel(sr=200, n_fft=1024, n_mels=128, fmin=0, fmax=20)`: triangles between
/// Slaney-mel-spaced edges (linear in Hz below 1 kHz), each scaled by 2 / its width in Hz.
fn mel_filters() -> Vec<Vec<f64>> {
    let f_sp = 200.0 / 3.0; // Slaney: 3 mels per 200 Hz below 1 kHz
    let max_mel = FMAX / f_sp;
    let edges: Vec<f64> = (0..N_MELS + 2)
        .map(|i| max_mel * i as f64 / (N_MELS + 1) as f64 * f_sp)
        .collect();
    let freq = |k: usize| k as f64 * SAMPLE_RATE as f64 / N_FFT as f64;
    (0..N_MELS)
        .map(|i| {
            let (lo, mid, hi) = (edges[i], edges[i + 1], edges[i + 2]);
            let norm = 2.0 / (hi - lo);
            (0..BINS)
                .map(|k| {
                    let lower = (freq(k) - lo) / (mid - lo);
                    let upper = (hi - freq(k)) / (hi - mid);
                    lower.min(upper).max(0.0) * norm
                })
                .collect()
        })
        .collect()
}

/// Encodes an image as `.npy` (`<f4`, C order, shape `(4, 128, 256)`).
pub fn encode(image: &EegImage) -> Bytes {
    let arr = ArrayView3::from_shape((SHAPE[0], SHAPE[1], SHAPE[2]), &image.data)
        .expect("an image is [4, 128, 256]");
    let mut buf = Vec::with_capacity(image.data.len() * 4 + 128);
    arr.write_npy(&mut buf).expect("in-memory write");
    Bytes::from(buf)
}

/// Decodes an image `.npy`, checking dtype and shape.
pub fn decode(bytes: &[u8], file: &str) -> Result<EegImage> {
    let arr = Array3::<f32>::read_npy(bytes).map_err(|e| {
        Error::invalid(
            Location::file(file),
            format!("not a float32 3-D .npy array: {e}"),
        )
    })?;
    if arr.shape() != SHAPE {
        return Err(Error::invalid(
            Location::file(file),
            format!("shape {:?}, expected {SHAPE:?}", arr.shape()),
        ));
    }
    Ok(EegImage {
        data: arr.iter().copied().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hms::spectrogram::write_eeg;

    fn sine_eeg(rows: usize) -> Vec<f32> {
        let n = EEG_COLUMNS.len();
        (0..rows * n)
            .map(|i| {
                let (t, c) = ((i / n) as f32, (i % n) as f32);
                20.0 * (t * 0.01 * (c + 1.0)).sin() + c
            })
            .collect()
    }

    #[test]
    fn the_filter_bank_is_slaney_normalised_and_covers_0_to_20_hz() {
        let bank = mel_filters();
        assert_eq!(bank.len(), N_MELS);
        // Slaney area normalisation: each triangle integrates (over Hz) to 1; on the FFT grid
        // the sum of weights × bin width approximates it for the bands wider than a bin.
        let width = SAMPLE_RATE as f64 / N_FFT as f64;
        let areas: Vec<f64> = bank.iter().map(|w| w.iter().sum::<f64>() * width).collect();
        let mean = areas.iter().sum::<f64>() / areas.len() as f64;
        assert!((mean - 1.0).abs() < 0.05, "mean area {mean}");
        // Nothing above 20 Hz (bin 103 = 20.1 Hz).
        assert!(bank.iter().all(|w| w[103..].iter().all(|&v| v == 0.0)));
        assert!(bank[0][0] == 0.0 && bank[0][1] > 0.0, "{:?}", &bank[0][..3]);
    }

    #[test]
    fn an_image_has_the_reference_shape_range_and_chain_order() {
        let rows = WINDOW_ROWS + 2 * SAMPLE_RATE;
        let mut values = sine_eeg(rows);
        // Make only the RL chain's electrodes flat (equal): its four differences are all 0.
        for t in 0..rows {
            for e in ["Fp2", "F8", "T4", "T6", "O2"] {
                let c = EEG_COLUMNS.iter().position(|c| *c == e).unwrap();
                values[t * EEG_COLUMNS.len() + c] = 7.0;
            }
        }
        let eeg = read_eeg(write_eeg(&values, rows).unwrap(), "e.parquet").unwrap();
        let img = eeg_image(&eeg, 2.0, "e.parquet").unwrap();
        assert_eq!(img.data.len(), 4 * 128 * 256);
        let plane = 128 * 256;
        // All-zero differences: power 0 everywhere, ref 0 → 0 dB → (0 + 40) / 40 = 1.
        assert!(img.data[plane..2 * plane].iter().all(|&v| v == 1.0));
        // Others: dB in [-80, 0] → values in [-1, 1], the maximum of each difference is 1.
        let ll = &img.data[..plane];
        assert!(ll.iter().all(|&v| (-1.0..=1.0).contains(&v)));
        assert!(ll.iter().any(|&v| v > 0.5) && ll.iter().any(|&v| v < 0.5));
        // Round trip through .npy.
        let back = decode(&encode(&img), "x.npy").unwrap();
        assert_eq!(back, img);
    }

    #[test]
    fn a_window_outside_the_recording_names_the_file() {
        let rows = WINDOW_ROWS - 1;
        let eeg = read_eeg(write_eeg(&sine_eeg(rows), rows).unwrap(), "x/9.parquet").unwrap();
        let e = eeg_image(&eeg, 0.0, "x/9.parquet").unwrap_err().to_string();
        assert!(e.contains("x/9.parquet") && e.contains("9999 rows"), "{e}");
        let rows = WINDOW_ROWS + 10;
        let eeg = read_eeg(write_eeg(&sine_eeg(rows), rows).unwrap(), "x/8.parquet").unwrap();
        assert!(eeg_image(&eeg, 0.0, "x/8.parquet").is_ok());
        let e = eeg_image(&eeg, 1.0, "x/8.parquet").unwrap_err().to_string();
        assert!(
            e.contains("x/8.parquet") && e.contains("rows 200..10200"),
            "{e}"
        );
        let e = eeg_image(&eeg, f64::NAN, "x/8.parquet")
            .unwrap_err()
            .to_string();
        assert!(e.contains("offset"), "{e}");
    }

    #[test]
    fn a_file_without_the_eeg_columns_names_the_file_and_column() {
        let rows = 300;
        let spec = crate::hms::spectrogram::write_spectrogram(
            &vec![1.0; rows * crate::hms::spectrogram::FEATURES],
            rows,
        )
        .unwrap();
        let e = read_eeg(spec, "y/5.parquet").unwrap_err().to_string();
        assert!(
            e.contains("y/5.parquet") && e.contains("Fp1") && e.contains("missing column"),
            "{e}"
        );
    }

    #[test]
    fn nan_is_filled_with_the_mean_and_all_nan_with_zero() {
        let x = fill_nan_with_mean(vec![1.0, f32::NAN, 3.0]);
        assert_eq!(x, [1.0, 2.0, 3.0]);
        assert_eq!(fill_nan_with_mean(vec![f32::NAN; 3]), [0.0; 3]);
    }
}
