//! Deterministic synthetic HMS data sets, in the exact Kaggle layout:
//! `train.csv`, `train_spectrograms/`, `train_eegs/` (a few, or all of them and `test_eegs/`
//! with `all_eegs`), `test.csv`, `test_spectrograms/`, `sample_submission.csv`, plus
//! `test_labels.csv` (the hidden test votes, so `hbac score` can grade a submission).
//!
//! Structure follows the real data: several spectrograms per patient, several labelled rows
//! per spectrogram at different offsets, files of 10–30 minutes, NaN gaps, vote counts from
//! 1–20 annotators. Every class leaves its own mark on the log power, scaled by how much the
//! annotators agree: Seizure — evolving rhythmic 3–8 Hz power on all chains; LPD/GPD —
//! periodic broadband discharges on one side / on both sides; LRDA/GRDA — continuous delta
//! (0.5–3 Hz) power on one side / on both sides; Other — background only. A good model can
//! therefore get far below the prior-only KL. The EEGs (`all_eegs`) carry the same class, on
//! the same side, as waveforms: see `eeg_signal`.

use futures::{FutureExt, StreamExt, TryStreamExt};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::error::Result;
use crate::hms::spectrogram::{self, BINS, FEATURES, WINDOW};
use crate::hms::tables::{self, ProbRow, TestRow, TrainRow};
use crate::hms::{Class, N_CLASSES};
use crate::storage::Store;

/// What to generate.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SynthConfig {
    /// Training patients (each with 1–3 spectrograms).
    pub patients: usize,
    /// Seed: the same seed gives byte-identical files.
    pub seed: u64,
    /// Test spectrograms (exactly 10 minutes each, one unseen patient each).
    pub test_spectrograms: usize,
    /// EEG parquet files written for the first training recordings (schema examples; 50 s of
    /// noise each). Ignored when `all_eegs` is set.
    pub eeg_files: usize,
    /// Write every training and test EEG (`train_eegs/`, `test_eegs/`), each long enough for
    /// all its labelled windows and carrying its recording's class signal (`eeg_signal`).
    #[serde(default)]
    pub all_eegs: bool,
    /// Strength of the class marks in log-power units (0 = pure noise; default 1.5).
    pub signal: f32,
    /// Files generated and written at once.
    pub concurrency: usize,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            patients: 40,
            seed: 42,
            test_spectrograms: 10,
            eeg_files: 3,
            all_eegs: false,
            signal: 1.5,
            concurrency: 4,
        }
    }
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SynthSummary {
    pub train_rows: usize,
    pub train_spectrograms: usize,
    pub test_spectrograms: usize,
    pub patients: usize,
    pub eeg_files: usize,
}

/// HMS-like class frequencies (Seizure, LPD, GPD, LRDA, GRDA, Other).
const CLASS_WEIGHTS: [f64; N_CLASSES] = [20933.0, 18861.0, 16640.0, 14856.0, 16702.0, 18808.0];

/// The class annotators confuse each class with most.
fn confusable(c: Class) -> Class {
    match c {
        Class::Seizure => Class::Lpd,
        Class::Lpd => Class::Gpd,
        Class::Gpd => Class::Lpd,
        Class::Lrda => Class::Grda,
        Class::Grda => Class::Lrda,
        Class::Other => Class::Seizure,
    }
}

/// One spectrogram (`rows` of 2 s) or EEG (`rows` samples at 200 Hz) file to generate.
#[derive(Debug, Clone)]
struct FilePlan {
    dir: &'static str,
    id: i64,
    rows: usize,
    class: Class,
    /// Fraction of annotators voting for `class` (drives the mark's amplitude).
    purity: f32,
    /// 0 = left chains, 1 = right chains (for the lateralised classes).
    side: usize,
    seed: u64,
}

fn pick_class(rng: &mut ChaCha8Rng) -> Class {
    let total: f64 = CLASS_WEIGHTS.iter().sum();
    let mut x = rng.random::<f64>() * total;
    for (i, w) in CLASS_WEIGHTS.iter().enumerate() {
        if x < *w {
            return Class::ALL[i];
        }
        x -= w;
    }
    Class::Other
}

/// Votes of `n` annotators: each picks `class` with probability `purity`, else mostly its
/// confusable class, sometimes any class.
fn votes(rng: &mut ChaCha8Rng, class: Class, purity: f32, n: usize) -> [f64; N_CLASSES] {
    let mut v = [0.0; N_CLASSES];
    for _ in 0..n {
        let u = rng.random::<f32>();
        let c = if u < purity {
            class
        } else if u < purity + (1.0 - purity) * 0.7 {
            confusable(class)
        } else {
            Class::ALL[rng.random_range(0..N_CLASSES)]
        };
        v[c.index()] += 1.0;
    }
    v
}

fn consensus(v: &[f64; N_CLASSES], class: Class) -> Class {
    let max = v.iter().cloned().fold(0.0, f64::max);
    if v[class.index()] == max {
        class
    } else {
        Class::ALL[v.iter().position(|&x| x == max).expect("max exists")]
    }
}

fn unique_id(
    rng: &mut ChaCha8Rng,
    seen: &mut std::collections::HashSet<i64>,
    lo: i64,
    hi: i64,
) -> i64 {
    loop {
        let id = rng.random_range(lo..hi);
        if seen.insert(id) {
            return id;
        }
    }
}

/// Everything but the file contents, drawn from one sequential RNG.
struct Plan {
    train: Vec<TrainRow>,
    test: Vec<TestRow>,
    test_labels: Vec<ProbRow>,
    files: Vec<FilePlan>,
    eegs: Vec<(i64, u64)>,
    /// Every EEG recording, with the class signal of its spectrogram (`all_eegs`).
    all_eegs: Vec<FilePlan>,
}

fn plan(cfg: &SynthConfig) -> Plan {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut ids = std::collections::HashSet::new();
    let mut patients = std::collections::HashSet::new();
    let (mut train, mut files, mut eegs) = (Vec::new(), Vec::new(), Vec::new());
    let mut all_eegs = Vec::new();
    for _ in 0..cfg.patients {
        let patient = unique_id(&mut rng, &mut patients, 10_000, 65_536);
        let dominant = pick_class(&mut rng);
        for _ in 0..rng.random_range(1..=3) {
            let class = if rng.random::<f32>() < 0.7 {
                dominant
            } else {
                pick_class(&mut rng)
            };
            let extra = if rng.random::<f32>() < 0.15 {
                rng.random_range(300..=600)
            } else {
                rng.random_range(0..=300)
            };
            let rows = WINDOW + extra;
            let spec_id = unique_id(&mut rng, &mut ids, 100_000, 2_147_483_647);
            let eeg_id = unique_id(&mut rng, &mut ids, 1_000_000, 4_294_967_295);
            let purity = rng.random_range(0.45f32..1.0);
            let side = rng.random_range(0..2);
            files.push(FilePlan {
                dir: "train_spectrograms",
                id: spec_id,
                rows,
                class,
                purity,
                side,
                seed: rng.random(),
            });
            if eegs.len() < cfg.eeg_files {
                eegs.push((eeg_id, rng.random()));
            }
            // Several annotated 10-minute windows per file, sorted by offset like Kaggle's rows.
            let n_labels = rng.random_range(1..=5usize);
            let mut offsets: Vec<u32> = (0..n_labels)
                .map(|_| rng.random_range(0..=(2 * extra as u32 + 1)))
                .collect();
            offsets.sort_unstable();
            offsets.dedup();
            // The EEG covers every labelled 50-s window (no extra draws: the tables stay as
            // they are with or without `all_eegs`).
            let last = offsets.iter().map(|o| o % 50 * 2).max().unwrap_or(0) as usize;
            let spec = files.last().expect("pushed above");
            all_eegs.push(eeg_plan(spec, "train_eegs", eeg_id, (last + 50) * 200));
            let annotators = if rng.random::<f32>() < 0.6 {
                rng.random_range(1..=3)
            } else {
                rng.random_range(4..=20)
            };
            for (sub, off) in offsets.into_iter().enumerate() {
                let v = votes(&mut rng, class, purity, annotators);
                let label_id = unique_id(&mut rng, &mut ids, 1_000_000, 4_294_967_295);
                train.push(TrainRow {
                    eeg_id,
                    eeg_sub_id: sub as i64,
                    eeg_label_offset_seconds: f64::from(off % 50) * 2.0,
                    spectrogram_id: spec_id,
                    spectrogram_sub_id: sub as i64,
                    spectrogram_label_offset_seconds: f64::from(off),
                    label_id,
                    patient_id: patient,
                    expert_consensus: consensus(&v, class),
                    votes: v,
                });
            }
        }
    }
    let (mut test, mut test_labels) = (Vec::new(), Vec::new());
    for _ in 0..cfg.test_spectrograms {
        let patient = unique_id(&mut rng, &mut patients, 10_000, 65_536);
        let class = pick_class(&mut rng);
        let spec_id = unique_id(&mut rng, &mut ids, 100_000, 2_147_483_647);
        let eeg_id = unique_id(&mut rng, &mut ids, 1_000_000, 4_294_967_295);
        let purity = rng.random_range(0.45f32..1.0);
        let side = rng.random_range(0..2);
        files.push(FilePlan {
            dir: "test_spectrograms",
            id: spec_id,
            rows: WINDOW,
            class,
            purity,
            side,
            seed: rng.random(),
        });
        let spec = files.last().expect("pushed above");
        all_eegs.push(eeg_plan(spec, "test_eegs", eeg_id, 50 * 200));
        test.push(TestRow {
            spectrogram_id: spec_id,
            eeg_id,
            patient_id: patient,
        });
        test_labels.push(ProbRow {
            eeg_id,
            values: votes(&mut rng, class, purity, 10),
        });
    }
    Plan {
        train,
        test,
        test_labels,
        files,
        eegs,
        all_eegs,
    }
}

/// The EEG of a spectrogram's recording: the same class, agreement and side, its own seed.
fn eeg_plan(spec: &FilePlan, dir: &'static str, id: i64, rows: usize) -> FilePlan {
    FilePlan {
        dir,
        id,
        rows,
        seed: spec.seed.rotate_left(29) ^ 0x5EE6_0000_0000_0001,
        ..spec.clone()
    }
}

/// Frequency of bin `k` in Hz.
fn hz(k: usize) -> f32 {
    (k as f32 + 3.0) * 0.195_312_5
}

/// The `[rows, 400]` power values of one file (with NaN gaps), from its own seed.
fn spectrogram_values(f: &FilePlan, signal: f32) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(f.seed);
    let noise = Normal::new(0.0f32, 0.6).expect("valid");
    let mut logp = vec![0.0f32; f.rows * FEATURES];
    // Background: 1/f-like spectrum with a per-file gain and slow drift.
    let gain = rng.random_range(-0.5f32..0.5);
    for t in 0..f.rows {
        let drift = 0.3 * (t as f32 / 40.0 + gain * 7.0).sin();
        for c in 0..4 {
            for k in 0..BINS {
                logp[t * FEATURES + c * BINS + k] =
                    2.5 + gain + drift - 1.3 * hz(k).ln() + noise.sample(&mut rng);
            }
        }
    }
    let amp = signal * (0.4 + 0.6 * f.purity);
    let both = [0usize, 1, 2, 3];
    let one_side = if f.side == 0 { [0usize, 2] } else { [1, 3] };
    let period = rng.random_range(2..=4usize);
    let phase = rng.random_range(0..period);
    let mut add = |t: usize, chains: &[usize], lo_hz: f32, hi_hz: f32, a: f32| {
        for &c in chains {
            for k in (0..BINS).filter(|&k| (lo_hz..=hi_hz).contains(&hz(k))) {
                logp[t * FEATURES + c * BINS + k] += a;
            }
        }
    };
    for t in 0..f.rows {
        match f.class {
            Class::Seizure => {
                // Evolving rhythm: a 2 Hz-wide band sweeping between 3 and 8 Hz.
                let centre = 5.5 + 2.5 * (t as f32 / 25.0).sin();
                add(t, &both, centre - 1.0, centre + 1.0, amp * 1.2);
            }
            Class::Lpd | Class::Gpd => {
                let chains: &[usize] = if f.class == Class::Lpd {
                    &one_side
                } else {
                    &both
                };
                if t % period == phase {
                    add(t, chains, 0.5, 15.0, amp);
                }
            }
            Class::Lrda | Class::Grda => {
                let chains: &[usize] = if f.class == Class::Lrda {
                    &one_side
                } else {
                    &both
                };
                add(t, chains, 0.5, 3.0, amp);
            }
            Class::Other => {}
        }
    }
    let mut values: Vec<f32> = logp.into_iter().map(f32::exp).collect();
    // Missing data: a NaN gap of whole rows in some files, and stray NaN cells.
    if rng.random::<f32>() < 0.3 {
        let len = rng.random_range(3..=30).min(f.rows / 4);
        let start = rng.random_range(0..f.rows - len);
        values[start * FEATURES..(start + len) * FEATURES].fill(f32::NAN);
    }
    for _ in 0..rng.random_range(0..20) {
        let i = rng.random_range(0..values.len());
        values[i] = f32::NAN;
    }
    values
}

fn eeg_values(seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let noise = Normal::new(0.0f32, 15.0).expect("valid");
    let rows = 10_000;
    (0..rows * 20)
        .map(|i| {
            let (t, c) = (i / 20, i % 20);
            40.0 * (t as f32 * 0.05 * (1.0 + c as f32 * 0.1)).sin() + noise.sample(&mut rng)
        })
        .collect()
}

/// Electrodes (positions in [`spectrogram::EEG_COLUMNS`]) of the left and right hemisphere,
/// the midline and the EKG.
const LEFT: [usize; 8] = [0, 1, 2, 3, 4, 5, 6, 7];
const RIGHT: [usize; 8] = [11, 12, 13, 14, 15, 16, 17, 18];
const MIDLINE: [usize; 3] = [8, 9, 10];
const EKG: usize = 19;

/// A recording's `[rows, 20]` samples (µV at 200 Hz, with NaN gaps), from its own seed.
///
/// Background: brown-ish noise, white noise, an occipital alpha rhythm, a heartbeat on EKG.
/// Each class adds what a neurologist would see, scaled by the annotators' agreement and
/// `signal`, through per-electrode gains (so that bipolar differences keep it): Seizure — a
/// rhythm evolving from 3 to 8 Hz and growing, both hemispheres; LPD/GPD — sharp biphasic
/// discharges every 0.7–1.5 s on one hemisphere / on both; LRDA/GRDA — 1–2.5 Hz rhythmic
/// delta on one hemisphere / on both; Other — background only.
fn eeg_signal(f: &FilePlan, signal: f32) -> Vec<f32> {
    const N: usize = spectrogram::EEG_COLUMNS.len();
    const HZ: f32 = 200.0;
    let tau = std::f32::consts::TAU;
    let mut rng = ChaCha8Rng::seed_from_u64(f.seed);
    let white = Normal::new(0.0f32, 4.0).expect("valid");
    let step = Normal::new(0.0f32, 1.5).expect("valid");
    let gains: [f32; N] = std::array::from_fn(|_| rng.random_range(0.2f32..1.0));
    let alpha_hz = rng.random_range(8.5f32..11.0);
    let rate = rng.random_range(0.7f32..1.5); // discharge period (s) or delta frequency / 2
    let delta_hz = rng.random_range(1.0f32..2.5);
    let amp = 60.0 * signal / 1.5 * (0.4 + 0.6 * f.purity);
    let side: &[usize] = if f.side == 0 { &LEFT } else { &RIGHT };
    let both: Vec<usize> = LEFT.iter().chain(&RIGHT).chain(&MIDLINE).copied().collect();
    let (class_chans, class_gain): (&[usize], f32) = match f.class {
        Class::Lpd | Class::Lrda => (side, 1.0),
        Class::Seizure | Class::Gpd | Class::Grda => (&both, 1.0),
        Class::Other => (&[], 0.0),
    };
    let seconds = f.rows as f32 / HZ;
    let mut seizure_phase = 0.0f32;
    let mut brown = [0.0f32; N];
    let mut values = vec![0.0f32; f.rows * N];
    for t in 0..f.rows {
        let s = t as f32 / HZ;
        let class_value = class_gain
            * match f.class {
                Class::Seizure => {
                    let progress = s / seconds;
                    seizure_phase += tau * (3.0 + 5.0 * progress) / HZ;
                    amp * (0.5 + progress) * seizure_phase.sin()
                }
                Class::Lpd | Class::Gpd => {
                    let since = s % rate;
                    let spike = (-(since / 0.02).powi(2)).exp();
                    let wave = (-((since - 0.08) / 0.06).powi(2)).exp();
                    4.0 * amp * (spike - 0.4 * wave)
                }
                Class::Lrda | Class::Grda => 1.5 * amp * (tau * delta_hz * s).sin(),
                Class::Other => 0.0,
            };
        let alpha = 10.0 * (tau * alpha_hz * s).sin();
        let row = &mut values[t * N..(t + 1) * N];
        for (c, v) in row.iter_mut().enumerate() {
            brown[c] = 0.98 * brown[c] + step.sample(&mut rng);
            *v = brown[c] + white.sample(&mut rng);
            if matches!(c, 7 | 18 | 10) {
                *v += alpha * gains[c];
            }
        }
        for &c in class_chans {
            row[c] += class_value * gains[c];
        }
        let beat = (s * 1.2) % 1.0;
        row[EKG] = 400.0 * (-(beat / 0.015).powi(2)).exp() + white.sample(&mut rng);
    }
    // Missing data: a 1–5 s NaN gap on one electrode in some recordings; rarely a dead one.
    if rng.random::<f32>() < 0.3 {
        let c = rng.random_range(0..N - 1);
        let len = rng.random_range(200..=1000).min(f.rows / 4);
        let start = rng.random_range(0..f.rows - len);
        for t in start..start + len {
            values[t * N + c] = f32::NAN;
        }
    }
    if rng.random::<f32>() < 0.05 {
        let c = rng.random_range(0..N - 1);
        for t in 0..f.rows {
            values[t * N + c] = f32::NAN;
        }
    }
    values
}

/// Writes a complete synthetic data set under `out`, showing progress.
pub async fn generate(cfg: &SynthConfig, out: &Store) -> Result<SynthSummary> {
    let p = plan(cfg);
    // (recording, with its class signal): every EEG, or the first few as schema examples.
    let eegs: Vec<(FilePlan, bool)> = if cfg.all_eegs {
        p.all_eegs.iter().map(|e| (e.clone(), true)).collect()
    } else {
        let example = |&(id, seed): &(i64, u64)| FilePlan {
            dir: "train_eegs",
            id,
            rows: 10_000,
            class: Class::Other,
            purity: 0.0,
            side: 0,
            seed,
        };
        p.eegs.iter().map(|e| (example(e), false)).collect()
    };
    let eeg_files = eegs.len();
    let total = p.files.len() + eeg_files;
    let bar = crate::progress::bar(total as u64, "synth");
    let signal = cfg.signal;
    let spec_jobs = p.files.iter().cloned().map(|f| {
        let out = out.clone();
        let bar = bar.clone();
        async move {
            let key = format!("{}/{}.parquet", f.dir, f.id);
            let bytes = tokio::task::spawn_blocking(move || {
                spectrogram::write_spectrogram(&spectrogram_values(&f, signal), f.rows)
            })
            .await
            .expect("generator task panicked")?;
            out.put(&key, bytes).await?;
            bar.inc(1);
            Ok::<_, crate::Error>(())
        }
        .boxed()
    });
    let eeg_jobs = eegs.into_iter().map(|(e, with_signal)| {
        let out = out.clone();
        let bar = bar.clone();
        let key = format!("{}/{}.parquet", e.dir, e.id);
        async move {
            let bytes = tokio::task::spawn_blocking(move || {
                let values = if with_signal {
                    eeg_signal(&e, signal)
                } else {
                    eeg_values(e.seed)
                };
                spectrogram::write_eeg(&values, e.rows)
            })
            .await
            .expect("generator task panicked")?;
            out.put(&key, bytes).await?;
            bar.inc(1);
            Ok(())
        }
        .boxed()
    });
    futures::stream::iter(spec_jobs.chain(eeg_jobs))
        .buffer_unordered(cfg.concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    bar.finish_and_clear();
    // The tables go last: a data set whose train.csv exists is complete.
    let uniform = 1.0 / N_CLASSES as f64;
    let sample: Vec<ProbRow> = p
        .test
        .iter()
        .map(|t| ProbRow {
            eeg_id: t.eeg_id,
            values: [uniform; N_CLASSES],
        })
        .collect();
    out.put(
        "sample_submission.csv",
        tables::write_prob_csv(&sample, None),
    )
    .await?;
    out.put(
        "test_labels.csv",
        tables::write_prob_csv(&p.test_labels, None),
    )
    .await?;
    out.put("test.csv", tables::write_test_csv(&p.test)).await?;
    out.put("train.csv", tables::write_train_csv(&p.train))
        .await?;
    Ok(SynthSummary {
        train_rows: p.train.len(),
        train_spectrograms: p
            .files
            .iter()
            .filter(|f| f.dir == "train_spectrograms")
            .count(),
        test_spectrograms: p.test.len(),
        patients: cfg.patients,
        eeg_files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_is_deterministic_and_realistic() {
        let cfg = SynthConfig {
            patients: 30,
            ..Default::default()
        };
        let a = plan(&cfg);
        let b = plan(&cfg);
        assert_eq!(a.train, b.train);
        let c = plan(&SynthConfig {
            seed: 7,
            ..cfg.clone()
        });
        assert_ne!(a.train, c.train);
        // Several rows per spectrogram, several spectrograms per patient, unique label ids.
        let specs: std::collections::HashSet<_> =
            a.train.iter().map(|r| r.spectrogram_id).collect();
        assert!(a.train.len() > specs.len());
        let pats: std::collections::HashSet<_> = a.train.iter().map(|r| r.patient_id).collect();
        assert_eq!(pats.len(), 30);
        assert!(specs.len() > pats.len());
        let labels: std::collections::HashSet<_> = a.train.iter().map(|r| r.label_id).collect();
        assert_eq!(labels.len(), a.train.len());
        // Every class present; offsets leave a full window in the file.
        for c in Class::ALL {
            assert!(
                a.train.iter().any(|r| r.expert_consensus == c),
                "{c} missing"
            );
        }
        for r in &a.train {
            let f = a.files.iter().find(|f| f.id == r.spectrogram_id).unwrap();
            assert!(
                crate::preprocess::offset_rows(r.spectrogram_label_offset_seconds) + WINDOW
                    <= f.rows
            );
        }
        // Vote totals vary (1 to 20 annotators).
        let totals: std::collections::HashSet<u64> = a
            .train
            .iter()
            .map(|r| r.votes.iter().sum::<f64>() as u64)
            .collect();
        assert!(totals.len() > 3, "{totals:?}");
    }

    #[test]
    fn class_marks_are_visible_in_band_power() {
        // Delta power (0.5-3 Hz) on the left chains is higher for LRDA-left than for Other.
        let base = FilePlan {
            dir: "x",
            id: 1,
            rows: 300,
            class: Class::Other,
            purity: 1.0,
            side: 0,
            seed: 3,
        };
        let delta_left = |v: &[f32]| {
            let mut s = 0.0f64;
            for t in 0..300 {
                for k in (0..BINS).filter(|&k| hz(k) <= 3.0) {
                    let x = v[t * FEATURES + k];
                    if !x.is_nan() {
                        s += (x as f64).ln();
                    }
                }
            }
            s
        };
        let other = spectrogram_values(&base, 1.5);
        let lrda = spectrogram_values(
            &FilePlan {
                class: Class::Lrda,
                ..base.clone()
            },
            1.5,
        );
        assert!(delta_left(&lrda) > delta_left(&other) + 1000.0);
        assert!(other.iter().any(|v| v.is_nan()) || lrda.iter().any(|v| v.is_nan()));
    }

    /// Features of one chain of an EEG image: (delta contrast, frame-to-frame jumps of the broadband power, dominant
    /// mel band in the first and the last quarter).
    fn chain_features(img: &crate::hms::eeg::EegImage, chain: usize) -> (f32, f32, f32, f32) {
        use crate::hms::eeg::{FRAMES, N_MELS};
        let px = |m: usize, t: usize| img.data[(chain * N_MELS + m) * FRAMES + t];
        let band = |lo: usize, hi: usize, t: usize| {
            (lo..hi).map(|m| px(m, t)).sum::<f32>() / (hi - lo) as f32
        };
        let mean = |f: &dyn Fn(usize) -> f32| (0..FRAMES).map(f).sum::<f32>() / FRAMES as f32;
        // Mel band m is centred on 20 (m + 1) / 129 Hz: 2..16 ≈ 0.5–2.5 Hz, 32.. ≈ 5–20 Hz.
        let delta = mean(&|t| band(2, 16, t) - band(32, 128, t));
        let high: Vec<f32> = (0..FRAMES).map(|t| band(32, 128, t)).collect();
        // Discharges make the broadband power jump from frame to frame (a NaN gap only twice).
        let spread =
            high.windows(2).map(|w| (w[1] - w[0]).abs()).sum::<f32>() / (FRAMES - 1) as f32;
        let peak = |ts: std::ops::Range<usize>| {
            let n = ts.len() as f32;
            let profile: Vec<f32> = (4..64)
                .map(|m| ts.clone().map(|t| px(m, t)).sum::<f32>() / n)
                .collect();
            let best = profile
                .iter()
                .enumerate()
                .fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b });
            (best.0 + 4) as f32
        };
        (delta, spread, peak(0..64), peak(192..256))
    }

    #[test]
    fn synthetic_eegs_carry_their_class_on_the_right_side() {
        use crate::hms::eeg::{Eeg, eeg_image};
        let image = |class: Class, side: usize, seed: u64| {
            let f = FilePlan {
                dir: "train_eegs",
                id: 1,
                rows: 10_000,
                class,
                purity: 1.0,
                side,
                seed,
            };
            let eeg = Eeg::from_rows(&eeg_signal(&f, 1.5), f.rows);
            eeg_image(&eeg, 0.0, "synthetic").unwrap()
        };
        // Chains: 0 LL, 1 RL (right), 2 LP, 3 RP (right).
        let side_mean = |img: &crate::hms::eeg::EegImage,
                         right: bool,
                         pick: fn((f32, f32, f32, f32)) -> f32| {
            let chains = if right { [1, 3] } else { [0, 2] };
            chains
                .iter()
                .map(|&c| pick(chain_features(img, c)))
                .sum::<f32>()
                / 2.0
        };
        let delta = |f: (f32, f32, f32, f32)| f.0;
        let spread = |f: (f32, f32, f32, f32)| f.1;
        for seed in [1u64, 2, 3] {
            let other = image(Class::Other, 0, seed);
            for side in [0, 1] {
                let lrda = image(Class::Lrda, side, seed);
                let (hit, miss) = (
                    side_mean(&lrda, side == 1, delta),
                    side_mean(&lrda, side == 0, delta),
                );
                println!("seed {seed} LRDA side {side}: delta contrast {hit:.3} vs {miss:.3}");
                assert!(
                    hit > miss + 0.1,
                    "LRDA side {side}, seed {seed}: {hit} vs {miss}"
                );
                let lpd = image(Class::Lpd, side, seed);
                let (hit, miss) = (
                    side_mean(&lpd, side == 1, spread),
                    side_mean(&lpd, side == 0, spread),
                );
                println!("seed {seed} LPD side {side}: broadband jumps {hit:.3} vs {miss:.3}");
                assert!(
                    hit > 1.5 * miss,
                    "LPD side {side}, seed {seed}: {hit} vs {miss}"
                );
            }
            let grda = image(Class::Grda, 0, seed);
            let gpd = image(Class::Gpd, 0, seed);
            for right in [false, true] {
                let (g, o) = (
                    side_mean(&grda, right, delta),
                    side_mean(&other, right, delta),
                );
                assert!(
                    g > o + 0.1,
                    "GRDA right={right} seed {seed}: {g} vs Other {o}"
                );
                let (g, o) = (
                    side_mean(&gpd, right, spread),
                    side_mean(&other, right, spread),
                );
                assert!(
                    g > 1.5 * o,
                    "GPD right={right} seed {seed}: {g} vs Other {o}"
                );
            }
            let sz = image(Class::Seizure, 0, seed);
            let (first, last) = (0..4)
                .map(|c| chain_features(&sz, c))
                .fold((0.0, 0.0), |a, f| (a.0 + f.2 / 4.0, a.1 + f.3 / 4.0));
            println!("seed {seed} Seizure: dominant mel band {first:.1} → {last:.1}");
            assert!(
                last > first + 10.0,
                "seizure rhythm must evolve upwards: {first} → {last}"
            );
        }
    }

    #[test]
    fn every_eeg_covers_its_windows_and_the_tables_do_not_change() {
        let cfg = SynthConfig {
            patients: 12,
            ..Default::default()
        };
        let p = plan(&cfg);
        let all = plan(&SynthConfig {
            all_eegs: true,
            ..cfg.clone()
        });
        assert_eq!(p.train, all.train);
        assert_eq!(p.test, all.test);
        for r in &p.train {
            let e = p
                .all_eegs
                .iter()
                .find(|e| e.id == r.eeg_id && e.dir == "train_eegs")
                .unwrap();
            assert!(
                r.eeg_label_offset_seconds * 200.0 + 10_000.0 <= e.rows as f64,
                "{r:?}"
            );
        }
        for t in &p.test {
            let e = p
                .all_eegs
                .iter()
                .find(|e| e.id == t.eeg_id && e.dir == "test_eegs")
                .unwrap();
            assert_eq!(e.rows, 10_000);
        }
    }
}
