//! Trained models as ONNX files (`hbac export`), for use outside hbac. One job's best checkpoint
//! (`--checkpoint`) becomes one `.onnx`; a finished run (`--run`) becomes a folder with every
//! job's model and `ensemble.json` — which models, their folds, the architectures' blend
//! weights from `report.json`, and the preprocessing the models expect — written last, so a
//! folder with `ensemble.json` is complete. The graph itself: [`crate::model::export`].

use burn::tensor::backend::Backend;
use hbac_common::hms::VOTE_COLUMNS;
use hbac_common::preprocess::Input;
use hbac_common::records;
use hbac_common::storage::Store;
use serde::Serialize;

use super::{FinishedError, FinishedRun};
use crate::job;
use crate::model::export::{INPUT, OUTPUT};

/// How each input kind is made from a data set's files.
pub fn preprocessing_text(input: Input) -> &'static str {
    match input {
        Input::Kaggle => PREPROCESSING,
        Input::Eeg => EEG_PREPROCESSING,
        Input::Both => BOTH_PREPROCESSING,
    }
}

/// The `eeg` input from a data set's files.
pub const EEG_PREPROCESSING: &str = "For each test.csv row, the EEG \
test_eegs/<eeg_id>.parquet (for a train.csv row, train_eegs/<eeg_id>.parquet from \
eeg_label_offset_seconds), 50 s = 10,000 rows at 200 Hz, as `hbac eeg-spectrogram` computes \
it (librosa's melspectrogram of each bipolar pair, n_fft 1024, win_length 128, hop len//256, \
128 mels, fmax 20; power_to_db(ref=max); (db + 40) / 40; 256 frames; a chain the mean of its \
4 pairs): float32 [4 chains LL, RL, LP, RP, 128 mels low to high, 256 frames], the chains \
stacked as rows: [512, 256], in all 3 channels: [3, 512, 256] per row.";

/// The `both` input from a data set's files.
pub const BOTH_PREPROCESSING: &str = "[3, 512, 512] per row: columns 0-255 hold Kaggle's \
spectrogram window made as for the `kaggle` input ([400, 300] standardised), chain k (its 100 \
frequencies) in rows 128k+14 .. 128k+113 over the window's rows 22 .. 277 (zeros elsewhere); \
columns 256-511 hold the `eeg` input's [512, 256] plane; the same plane in all 3 channels.";

/// What the models' input is, from a data set's files (the reference pipeline).
pub const PREPROCESSING: &str = "For each test.csv row, the spectrogram \
test_spectrograms/<spectrogram_id>.parquet without its `time` column (400 columns, in the \
file's order): rows [0, 300), the first 10 minutes (for a train.csv row, from row \
spectrogram_label_offset_seconds // 2), zero-padded past the end of the file; NaN -> 0; \
clipped to [e^-4, e^8]; natural log; standardised over the whole window as \
(x - mean) / (population std + 1e-6); transposed to [400 columns, 300 rows]; the same window \
in all 3 channels: float32 [3, 400, 300] per row, batched as [N, 3, 400, 300].";

/// `ensemble.json`: how a run's exported models make its submission.
#[derive(Debug, Serialize)]
pub struct Ensemble {
    pub format: u32,
    pub run: String,
    /// The run's out-of-fold Kaggle KL of the blend.
    pub cv: f64,
    pub input: Io,
    pub output: Io,
    /// Per input kind the models take, how it is made from the data set's files.
    pub preprocessing: std::collections::BTreeMap<&'static str, &'static str>,
    pub blend: &'static str,
    pub architectures: Vec<ArchModels>,
}

/// A graph input or output.
#[derive(Debug, Serialize)]
pub struct Io {
    pub name: &'static str,
    pub shape: Vec<serde_json::Value>,
    pub columns: Option<Vec<&'static str>>,
}

/// One architecture's weight in the blend and its models.
#[derive(Debug, Serialize)]
pub struct ArchModels {
    pub arch: String,
    pub weight: f64,
    pub cv: Option<f64>,
    pub models: Vec<ModelFile>,
}

/// One exported job.
#[derive(Debug, Serialize)]
pub struct ModelFile {
    pub file: String,
    pub job: String,
    pub fold: usize,
    pub oof_kl: f64,
    /// The image it takes (`kaggle`, `eeg`, `both`) and that image's `[channels, height,
    /// width]`.
    pub input: Input,
    pub shape: [usize; 3],
}

/// One job's best checkpoint (its output folder `dir`) as ONNX bytes, with `metadata`; the
/// weights are loaded on `B` (the CPU is enough).
pub async fn checkpoint_onnx<B: Backend>(
    dir: &Store,
    metadata: &[(String, String)],
) -> Result<Vec<u8>, FinishedError> {
    for file in [records::CHECKPOINT, records::CONFIG] {
        if !dir.exists(file).await? {
            return Err(FinishedError::Invalid(format!(
                "{} is missing: {} is not a finished job's output folder",
                dir.url(file),
                dir.root()
            )));
        }
    }
    let device = Default::default();
    let (model, train) = job::load_checkpoint::<B>(dir, &device)
        .await
        .map_err(|source| FinishedError::Train {
            context: format!("loading the checkpoint in {}", dir.root()),
            source,
        })?;
    let mut meta = vec![
        ("hbac.job_dir".to_string(), dir.root().to_string()),
        (
            "hbac.input_image".to_string(),
            train.input.name().to_string(),
        ),
    ];
    meta.extend_from_slice(metadata);
    model
        .to_onnx(&meta)
        .map_err(|source| FinishedError::Export {
            context: format!("exporting the model in {}", dir.root()),
            source,
        })
}

/// Every job of `run` into `out` (`<job>.onnx`), then `ensemble.json`; returns the manifest.
pub async fn export_run<B: Backend>(
    run: &FinishedRun,
    out: &Store,
) -> Result<Ensemble, FinishedError> {
    let bar = hbac_common::progress::bar(run.jobs.len() as u64, "export");
    let mut architectures: Vec<ArchModels> = run
        .report
        .archs
        .iter()
        .zip(&run.report.weights)
        .map(|(arch, &weight)| ArchModels {
            arch: arch.clone(),
            weight,
            cv: run.report.cv_by_arch.get(arch).copied(),
            models: Vec::new(),
        })
        .collect();
    let mut preprocessing = std::collections::BTreeMap::new();
    for ((arch, id, dir), &input) in run.jobs.iter().zip(&run.inputs) {
        preprocessing.insert(input.name(), preprocessing_text(input));
        let line = run
            .report
            .jobs
            .iter()
            .find(|l| &l.job == id)
            .ok_or_else(|| {
                FinishedError::Invalid(format!("job {id} is not in the report of {}", run.url))
            })?;
        let meta = [
            ("hbac.run".to_string(), run.url.clone()),
            ("hbac.job".to_string(), id.clone()),
            ("hbac.fold".to_string(), line.fold.to_string()),
            (
                "hbac.blend_weight".to_string(),
                run.report.weights[*arch].to_string(),
            ),
        ];
        let bytes = checkpoint_onnx::<B>(dir, &meta).await?;
        let file = format!("{id}.onnx");
        out.put(&file, bytes).await?;
        architectures[*arch].models.push(ModelFile {
            file,
            job: id.clone(),
            fold: line.fold,
            oof_kl: line.oof_kl,
            input,
            shape: input.shape(),
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    let batch = || serde_json::Value::from("batch");
    let ensemble = Ensemble {
        format: 1,
        run: run.url.clone(),
        cv: run.report.cv,
        input: Io {
            name: INPUT,
            shape: vec![batch(), 3.into(), "height".into(), "width".into()],
            columns: None,
        },
        output: Io {
            name: OUTPUT,
            shape: vec![batch(), VOTE_COLUMNS.len().into()],
            columns: Some(VOTE_COLUMNS.to_vec()),
        },
        preprocessing,
        blend: "per architecture, the mean of its models' probabilities; then the sum over \
                architectures of weight × that mean",
        architectures,
    };
    let json = serde_json::to_vec_pretty(&ensemble).map_err(|e| {
        FinishedError::Invalid(format!(
            "{}: cannot write JSON: {e}",
            out.url("ensemble.json")
        ))
    })?;
    out.put("ensemble.json", json).await?;
    Ok(ensemble)
}
