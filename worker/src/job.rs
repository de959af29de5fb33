//! One training job end to end, as `hbac train` runs it and as a worker runs a leased job:
//! make sure the `.npy` cache is complete, split with the sklearn-exact folds, load the fold's
//! windows, train on its own thread (saving the full training state after every epoch, and
//! resuming from an earlier attempt's latest state when told to), then publish everything under
//! the output URL. The files and their formats are [`hbac_common::records`].

use std::collections::HashMap;
use std::sync::Arc;

use crate::ops::{FusedOps, TrainBackend};
use burn::module::Module;
use burn::tensor::backend::Backend;
use futures::{StreamExt, TryStreamExt};
use hbac_common::folds::{KFold, hms_folds};
use hbac_common::hms::spectrogram::WINDOW;
use hbac_common::hms::tables::{self, ProbRow, TestRow};
use hbac_common::hms::{Class, N_CLASSES};
use hbac_common::metric;
use hbac_common::plot::job_svg;
use hbac_common::prepare::{self, Cache, Split};
use hbac_common::preprocess::{self, Input, LabelMode, Sample, SampleSelection};
use hbac_common::records;
use hbac_common::storage::Store;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::TrainError;
use crate::model::Model;
use crate::model::pretrained::Pretrained;
use crate::train::data::WindowSet;
use crate::train::trainer::{
    EncodedState, EpochReport, TrainConfig, TrainHooks, TrainState, decode, encode, evaluate, train,
};

/// What to train and where everything lives.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub data: Store,
    pub cache: Store,
    pub out: Store,
    pub fold: usize,
    pub kfold: KFold,
    pub selection: SampleSelection,
    pub labels: LabelMode,
    pub train: TrainConfig,
    /// Files read or converted at once.
    pub io_concurrency: usize,
    /// An earlier attempt's folder: training resumes from its latest complete saved state
    /// (from scratch when it holds none).
    pub resume: Option<Store>,
}

/// `config.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    pub data: String,
    pub fold: usize,
    pub kfold: KFold,
    pub selection: SampleSelection,
    pub labels: LabelMode,
    pub train_samples: usize,
    /// Of those, the rows stage 2 trains on (`None`: one stage).
    #[serde(default)]
    pub stage2_samples: Option<usize>,
    pub valid_samples: usize,
    pub train: serde_json::Value,
    /// Epochs restored from an earlier attempt's saved state (0: trained from the start).
    #[serde(default)]
    pub resumed_epochs: usize,
}

pub use hbac_common::records::JobSummary;

async fn load_set(
    cache: &Cache,
    split: Split,
    input: Input,
    samples: Vec<Sample>,
    concurrency: usize,
) -> Result<WindowSet, TrainError> {
    let mut set = WindowSet {
        input,
        split,
        ..WindowSet::default()
    };
    let mut samples = samples;
    if input.uses_spectrograms() {
        // Each spectrogram is held only over the rows its samples' windows read.
        let mut spans: HashMap<i64, (usize, usize)> = HashMap::new();
        for s in &samples {
            let span = spans
                .entry(s.spectrogram_id)
                .or_insert((s.offset_rows, s.offset_rows));
            span.0 = span.0.min(s.offset_rows);
            span.1 = span.1.max(s.offset_rows);
        }
        let spectrograms: HashMap<_, _> = futures::stream::iter(spans)
            .map(|(id, (first, last))| async move {
                let spec = cache.load(split, id).await?;
                // An offset past the end stays as it is, for the batch to report with the file.
                let start = if last < spec.rows { first } else { 0 };
                let held = spec.crop(start, last + WINDOW);
                Ok::<_, TrainError>((id, (start, Arc::new(held))))
            })
            .buffer_unordered(concurrency.max(1))
            .try_collect()
            .await?;
        for s in &mut samples {
            s.offset_rows -= spectrograms[&s.spectrogram_id].0;
        }
        set.spectrograms = spectrograms
            .into_iter()
            .map(|(id, (_, spec))| (id, spec))
            .collect();
    }
    if input.uses_eegs() {
        let keys: std::collections::BTreeSet<String> =
            samples.iter().map(|s| set.eeg_key(s)).collect();
        set.eegs = futures::stream::iter(keys)
            .map(|key| async move {
                let image = cache.load_eeg(&key).await?;
                Ok::<_, TrainError>((key, Arc::new(image)))
            })
            .buffer_unordered(concurrency.max(1))
            .try_collect()
            .await?;
    }
    set.samples = samples;
    Ok(set)
}

/// The training samples and, for per-eeg selection, their groups by `eeg_id`
/// ([`preprocess::group_by_eeg`]); rows (or recordings) with fewer than `min_votes` votes left
/// out.
fn training_units(
    mut samples: Vec<Sample>,
    selection: SampleSelection,
    min_votes: Option<f64>,
) -> (Vec<Sample>, Vec<Vec<usize>>) {
    let min = min_votes.unwrap_or(f64::NEG_INFINITY);
    if selection != SampleSelection::PerEeg {
        samples.retain(|s| s.votes as f64 >= min);
        return (samples, Vec::new());
    }
    let groups = preprocess::group_by_eeg(&mut samples);
    let mut kept = Vec::with_capacity(samples.len());
    let mut kept_groups = Vec::with_capacity(groups.len());
    for g in groups {
        // Every member carries the recording's total.
        if samples[g[0]].votes as f64 >= min {
            kept_groups.push((kept.len()..kept.len() + g.len()).collect());
            kept.extend(g.iter().map(|&i| samples[i].clone()));
        }
    }
    (kept, kept_groups)
}

/// Prediction rows keyed by `key` (`label_id` for scoring, `eeg_id` for Kaggle files).
fn prob_rows(
    samples: &[Sample],
    preds: &[[f32; N_CLASSES]],
    key: fn(&Sample) -> i64,
) -> Vec<ProbRow> {
    samples
        .iter()
        .zip(preds)
        .map(|(s, p)| ProbRow {
            eeg_id: key(s),
            values: p.map(f64::from),
        })
        .collect()
}

/// Runs the job on `device`, reporting through `hooks`.
pub async fn run<B: TrainBackend>(
    spec: &JobSpec,
    device: B::Device,
    hooks: impl TrainHooks + Send + 'static,
) -> Result<JobSummary, TrainError> {
    // Weights first: a bad file fails the job before any data work.
    let init = match &spec.train.pretrained {
        Some(url) => {
            let weights = Pretrained::parse(url, Store::read_url(url).await?.to_vec())?;
            let m = &spec.train.model;
            weights.apply(m.init::<B::InnerBackend>(&device), m)?;
            Some(weights)
        }
        None => None,
    };
    prepare::prepare(&spec.data, &spec.cache, spec.io_concurrency).await?;
    if spec.train.input.uses_eegs() {
        hbac_common::eeg_cache::prepare(&spec.data, &spec.cache, spec.io_concurrency).await?;
    }
    let cache = Cache::new(spec.cache.clone());
    let csv_url = spec.data.url("train.csv");
    let rows = tables::parse_train_csv(&spec.data.get("train.csv").await?, &csv_url)?;
    let split = hms_folds(&rows, &spec.kfold)?;
    if spec.fold >= spec.kfold.k {
        return Err(TrainError::Config(format!(
            "fold {} does not exist with k = {}",
            spec.fold, spec.kfold.k
        )));
    }
    let samples = preprocess::select_samples(&rows, spec.selection, spec.labels);
    let (valid, train_samples): (Vec<Sample>, Vec<Sample>) = samples
        .into_iter()
        .partition(|s| split.fold[s.row] == spec.fold);
    // Training units: a row each, or (per-eeg) a recording's rows, one drawn per epoch.
    let (train_samples, groups) =
        training_units(train_samples, spec.selection, spec.train.min_votes);
    if train_samples.is_empty() {
        return Err(TrainError::Config(format!(
            "{csv_url}: none of fold {}'s training rows has at least {} votes (--min-votes)",
            spec.fold,
            spec.train.min_votes.unwrap_or(0.0)
        )));
    }
    let units = if groups.is_empty() {
        train_samples.len()
    } else {
        groups.len()
    };
    let input = spec.train.input;
    let mut train_set = load_set(
        &cache,
        Split::Train,
        input,
        train_samples,
        spec.io_concurrency,
    )
    .await?;
    train_set.groups = groups;
    let stage2_samples = spec
        .train
        .stage2
        .map(|s| train_set.units_with_votes(s.min_votes).len());
    let train_set = Arc::new(train_set);
    let valid_set =
        Arc::new(load_set(&cache, Split::Train, input, valid, spec.io_concurrency).await?);
    let resume = match &spec.resume {
        Some(dir) => latest_state(dir).await?,
        None => None,
    };
    if let Some(s) = &resume {
        info!(epochs = s.state.epochs, from = %spec.resume.as_ref().map(|d| d.root()).unwrap_or_default(), "resuming from a saved training state");
    }
    let record = JobRecord {
        data: spec.data.root().to_string(),
        fold: spec.fold,
        kfold: spec.kfold,
        selection: spec.selection,
        labels: spec.labels,
        train_samples: units,
        stage2_samples,
        valid_samples: valid_set.len(),
        train: serde_json::to_value(&spec.train).expect("serialisable"),
        resumed_epochs: resume.as_ref().map_or(0, |s| s.state.epochs),
    };
    spec.out
        .put(
            records::CONFIG,
            serde_json::to_vec_pretty(&record).expect("serialisable"),
        )
        .await?;

    // Train on a blocking thread; after every epoch, save its state and publish metrics.jsonl
    // from there, before the epoch is reported.
    let (cfg, out, handle) = (
        spec.train.clone(),
        spec.out.clone(),
        tokio::runtime::Handle::current(),
    );
    let (tset, vset, oof_set) = (train_set.clone(), valid_set.clone(), valid_set.clone());
    let trained = tokio::task::spawn_blocking(move || {
        struct Publish<H> {
            inner: H,
            out: Store,
            handle: tokio::runtime::Handle,
            history: Vec<EpochReport>,
            error: Option<hbac_common::Error>,
        }
        impl<H: TrainHooks> TrainHooks for Publish<H> {
            fn batch(&mut self, e: usize, d: usize, t: usize) {
                self.inner.batch(e, d, t)
            }
            fn wants_checkpoints(&self) -> bool {
                true
            }
            fn checkpoint(&mut self, s: &EncodedState) -> Result<(), TrainError> {
                self.handle.block_on(save_state(&self.out, s))?;
                Ok(())
            }
            fn epoch(&mut self, r: &EpochReport) {
                self.history.push(r.clone());
                if let Err(e) = self.handle.block_on(
                    self.out
                        .put(records::METRICS, records::metrics_jsonl(&self.history)),
                ) {
                    self.error.get_or_insert(e);
                }
                self.inner.epoch(r)
            }
            fn cancelled(&self) -> bool {
                self.inner.cancelled()
            }
        }
        /// Lends the hooks to the trainer while keeping them here.
        struct Lend<'a, H>(&'a mut H);
        impl<H: TrainHooks> TrainHooks for Lend<'_, H> {
            fn batch(&mut self, e: usize, d: usize, t: usize) {
                self.0.batch(e, d, t)
            }
            fn wants_checkpoints(&self) -> bool {
                self.0.wants_checkpoints()
            }
            fn checkpoint(&mut self, s: &EncodedState) -> Result<(), TrainError> {
                self.0.checkpoint(s)
            }
            fn epoch(&mut self, r: &EpochReport) {
                self.0.epoch(r)
            }
            fn cancelled(&self) -> bool {
                self.0.cancelled()
            }
        }
        let mut publish = Publish {
            inner: hooks,
            out,
            handle,
            history: resume
                .as_ref()
                .map(|s| s.state.history.clone())
                .unwrap_or_default(),
            error: None,
        };
        let vset = (!vset.is_empty()).then_some(vset);
        let trained = train::<B>(
            &cfg,
            tset,
            vset,
            init.as_ref(),
            resume,
            &device,
            Lend(&mut publish),
        )?;
        if let Some(e) = publish.error {
            return Err(e.into());
        }
        let (valid_kl, oof) = match trained.history[trained.best_epoch].valid_kl {
            Some(kl) => (
                kl,
                evaluate(
                    &trained.model,
                    &oof_set,
                    cfg.batch_size,
                    cfg.loader_threads,
                    &device,
                )?
                .1,
            ),
            None => (f64::NAN, vec![]),
        };
        let bytes = encode::<B::InnerBackend, _>(trained.model.clone().into_record())?;
        Ok::<_, TrainError>((trained, valid_kl, oof, bytes, device))
    })
    .await
    .map_err(|e| TrainError::Panicked(panic_message(e)))??;
    let (trained, valid_kl, oof, checkpoint, device) = trained;
    spec.out.put(records::CHECKPOINT, checkpoint).await?;

    // Out-of-fold predictions and their score against the prior-only baseline.
    let targets: Vec<[f32; N_CLASSES]> = train_set.samples.iter().map(|s| s.target).collect();
    let prior = metric::prior(&targets);
    let label_id = |s: &Sample| s.label_id;
    let valid_targets: Vec<[f32; N_CLASSES]> = valid_set.samples.iter().map(|s| s.target).collect();
    let solution = prob_rows(&valid_set.samples, &valid_targets, label_id);
    let (oof_kaggle_kl, prior_kaggle_kl) = if oof.is_empty() {
        (f64::NAN, f64::NAN)
    } else {
        let pred = prob_rows(&valid_set.samples, &oof, label_id);
        let base: Vec<ProbRow> = solution
            .iter()
            .map(|r| ProbRow {
                eeg_id: r.eeg_id,
                values: prior,
            })
            .collect();
        (
            metric::kaggle_kl(&solution, "valid", &pred, "oof")?,
            metric::kaggle_kl(&solution, "valid", &base, "prior")?,
        )
    };
    let oof_rows = prob_rows(&valid_set.samples, &oof, |s| s.eeg_id);
    let mut csv = tables::write_prob_csv(
        &oof_rows,
        Some(("fold", &vec![spec.fold as i64; oof_rows.len()])),
    );
    csv = tables::append_column(
        &csv,
        records::OOF,
        "label_id",
        &valid_set
            .samples
            .iter()
            .map(|s| s.label_id.to_string())
            .collect::<Vec<_>>(),
    )?;
    spec.out.put(records::OOF, csv).await?;

    // Test predictions, if the data set has a test split.
    if spec.data.exists("test.csv").await? {
        let rows = predict_test(
            trained.model.clone(),
            spec.train.input,
            &spec.data,
            &cache,
            Batching {
                batch_size: spec.train.batch_size,
                threads: spec.train.loader_threads,
                concurrency: spec.io_concurrency,
            },
            device,
        )
        .await?;
        spec.out
            .put(records::TEST, tables::write_prob_csv(&rows, None))
            .await?;
    }

    let title = format!("{} fold {}", spec.train.model.arch, spec.fold);
    spec.out
        .put(
            records::LOSS,
            job_svg(
                &title,
                spec.fold,
                &trained.history,
                spec.train.stage2.map(|_| spec.train.epochs),
            ),
        )
        .await?;
    let summary = JobSummary {
        best_epoch: trained.best_epoch,
        valid_kl,
        oof_kaggle_kl,
        prior_kaggle_kl,
        history: trained.history,
    };
    spec.out.put(records::SUMMARY, summary.to_json()).await?;
    Ok(summary)
}

/// What a training thread that panicked said (a CUDA error surfaces this way).
fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic without a message".into()),
        Err(e) => e.to_string(),
    }
}

/// Saves `s` under `out/state/epoch-NNNN/`, `state.json` last (a folder without it is never
/// resumed from), then drops the state two epochs older (the previous one stays until this
/// one's epoch has surely been reported).
async fn save_state(out: &Store, s: &EncodedState) -> hbac_common::Result<()> {
    let dir = out.sub(&records::state_dir(s.state.epochs));
    dir.put(TrainState::MODEL, s.model.clone()).await?;
    dir.put(TrainState::OPTIMIZER, s.optimizer.clone()).await?;
    dir.put(TrainState::BEST, s.best.clone()).await?;
    dir.put(TrainState::FILE, s.state.to_json()).await?;
    if let Some(old) = s.state.epochs.checked_sub(2).filter(|e| *e > 0) {
        let old = out.sub(&records::state_dir(old));
        for name in [
            TrainState::FILE,
            TrainState::MODEL,
            TrainState::OPTIMIZER,
            TrainState::BEST,
        ] {
            old.delete(name).await?;
        }
    }
    Ok(())
}

/// The latest complete training state saved in an attempt's folder `dir`, if any.
pub async fn latest_state(dir: &Store) -> Result<Option<EncodedState>, TrainError> {
    let mut epochs: Vec<usize> = dir
        .list("state")
        .await?
        .into_iter()
        .filter_map(|(key, _)| {
            let (folder, file) = key.split_once('/')?;
            (file == TrainState::FILE).then_some(())?;
            folder.strip_prefix("epoch-")?.parse().ok()
        })
        .collect();
    epochs.sort_unstable();
    let Some(&latest) = epochs.last() else {
        warn!(
            dir = dir.root(),
            "no saved training state; training from the start"
        );
        return Ok(None);
    };
    let d = dir.sub(&records::state_dir(latest));
    let state = TrainState::parse(&d.get(TrainState::FILE).await?, &d.url(TrainState::FILE))?;
    if state.epochs != latest {
        return Err(TrainError::Config(format!(
            "{}: says {} epochs but lies in the folder of {latest}",
            d.url(TrainState::FILE),
            state.epochs
        )));
    }
    Ok(Some(EncodedState {
        state,
        model: d.get(TrainState::MODEL).await?.to_vec(),
        optimizer: d.get(TrainState::OPTIMIZER).await?.to_vec(),
        best: d.get(TrainState::BEST).await?.to_vec(),
    }))
}

/// How a test set is predicted: batch size, loader threads, files read at once.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    pub batch_size: usize,
    pub threads: usize,
    pub concurrency: usize,
}

/// Predicts every row of the data set's `test.csv` (whole 10-minute windows, offset 0) with
/// a model taking `input`: one Kaggle submission row per `eeg_id`.
pub async fn predict_test<B: FusedOps>(
    model: Model<B>,
    input: Input,
    data: &Store,
    cache: &Cache,
    b: Batching,
    device: B::Device,
) -> Result<Vec<ProbRow>, TrainError> {
    let test_rows = tables::parse_test_csv(&data.get("test.csv").await?, &data.url("test.csv"))?;
    let set = load_test_set(cache, input, test_samples(&test_rows), b.concurrency).await?;
    predict_set(&model, set, b.batch_size, b.threads, device).await
}

/// `test.csv` rows as samples: the whole 10-minute window (offset 0) of each.
pub fn test_samples(rows: &[TestRow]) -> Vec<Sample> {
    let uniform = [1.0 / N_CLASSES as f32; N_CLASSES];
    rows.iter()
        .enumerate()
        .map(|(i, t)| Sample {
            row: i,
            label_id: t.eeg_id,
            eeg_id: t.eeg_id,
            eeg_sub_id: None,
            patient_id: t.patient_id,
            spectrogram_id: t.spectrogram_id,
            offset_rows: 0,
            class: Class::Other,
            target: uniform,
            votes: 0.0,
        })
        .collect()
}

/// Loads the test samples' windows from the cache (a whole test set, or a chunk of one).
pub async fn load_test_set(
    cache: &Cache,
    input: Input,
    samples: Vec<Sample>,
    concurrency: usize,
) -> Result<Arc<WindowSet>, TrainError> {
    Ok(Arc::new(
        load_set(cache, Split::Test, input, samples, concurrency).await?,
    ))
}

/// One model's probabilities for a loaded test set: a row per sample, keyed by `eeg_id`.
pub async fn predict_set<B: FusedOps>(
    model: &Model<B>,
    set: Arc<WindowSet>,
    batch_size: usize,
    threads: usize,
    device: B::Device,
) -> Result<Vec<ProbRow>, TrainError> {
    let preds = {
        let (set, model) = (set.clone(), model.clone());
        tokio::task::spawn_blocking(move || {
            evaluate(&model, &set, batch_size, threads, &device).map(|r| r.1)
        })
        .await
        .map_err(|e| TrainError::Panicked(panic_message(e)))??
    };
    Ok(prob_rows(&set.samples, &preds, |s| s.eeg_id))
}

/// Loads a job's best weights (`checkpoint.mpk`) and its training configuration
/// (`config.json`: the model, and the input it takes) from the job's output directory.
pub async fn load_checkpoint<B: Backend>(
    dir: &Store,
    device: &B::Device,
) -> Result<(Model<B>, TrainConfig), TrainError> {
    let record: JobRecord = serde_json::from_slice(&dir.get(records::CONFIG).await?)
        .map_err(|e| TrainError::Config(format!("{}: {e}", dir.url(records::CONFIG))))?;
    let train: TrainConfig = serde_json::from_value(record.train).map_err(|e| {
        TrainError::Config(format!(
            "{}: training config: {e}",
            dir.url(records::CONFIG)
        ))
    })?;
    let bytes = dir.get(records::CHECKPOINT).await?;
    let weights = decode::<B, _>(bytes.to_vec(), &dir.url(records::CHECKPOINT), device)?;
    let model = train.model.init::<B>(device).load_record(weights);
    Ok((model, train))
}
