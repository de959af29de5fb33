//! The EEG image cache: every labelled 50-s EEG window → its mel-spectrogram image
//! ([`crate::hms::eeg`]), once per data set (`hbac prepare --eeg`).
//!
//! Layout under the cache URL, beside the spectrogram cache ([`crate::prepare`]):
//! * `train_eeg_spectrograms/<eeg_id>_<eeg_sub_id>.npy` — the window of `train.csv`'s row at
//!   `eeg_label_offset_seconds`;
//! * `test_eeg_spectrograms/<eeg_id>.npy` — a test EEG's first (and only) 50 s;
//! * `eeg_manifest.json`, written last, when every window is in place.
//!
//! Each image is float32 `[4, 128, 256]` (512 KiB; Kaggle's 106,800 training rows take about
//! 55 GB). Each `.npy` is published atomically: re-running skips finished windows and reads an
//! EEG file only if one of its windows is missing. Files are processed in parallel; failures are
//! collected and reported together, by file, after the rest finish.

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Location, Result};
use crate::hms::{eeg, tables};
use crate::prepare::Split;
use crate::storage::Store;

/// Version of the EEG cache layout, recorded in `eeg_manifest.json`.
pub const EEG_CACHE_FORMAT: u32 = 1;

/// `eeg_manifest.json`: proof that the EEG cache is complete for a data set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EegManifest {
    pub format: u32,
    pub data: String,
    /// Windows (train rows with distinct `eeg_id`, `eeg_sub_id`) and test EEGs.
    pub train: usize,
    pub test: usize,
}

/// Counts and timings of one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EegPrepareSummary {
    /// Images computed by this run, and those already in the cache.
    pub converted: usize,
    pub skipped: usize,
    /// EEG files read.
    pub files: usize,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub seconds: f64,
    pub manifest: EegManifest,
}

/// The folder of a split's EEG images.
pub fn dir(split: Split) -> &'static str {
    match split {
        Split::Train => "train_eeg_spectrograms",
        Split::Test => "test_eeg_spectrograms",
    }
}

fn eeg_dir(split: Split) -> &'static str {
    match split {
        Split::Train => "train_eegs",
        Split::Test => "test_eegs",
    }
}

/// Key of a window's image below the cache root (`sub_id` is `None` for a test EEG).
pub fn key(split: Split, eeg_id: i64, sub_id: Option<i64>) -> String {
    match sub_id {
        Some(s) => format!("{}/{eeg_id}_{s}.npy", dir(split)),
        None => format!("{}/{eeg_id}.npy", dir(split)),
    }
}

/// One window to compute: its image key, offset and the CSV line that asks for it.
#[derive(Debug, Clone)]
struct Window {
    key: String,
    offset: f64,
    line: u64,
}

/// Windows per EEG file that `train.csv` and (if present) `test.csv` reference, of `splits`.
async fn referenced(data: &Store, splits: &[Split]) -> Result<Vec<(Split, i64, Vec<Window>)>> {
    let mut out = Vec::new();
    let file = data.url("train.csv");
    let mut train: BTreeMap<i64, Vec<Window>> = BTreeMap::new();
    let mut seen = HashSet::new();
    let rows = if splits.contains(&Split::Train) {
        tables::parse_train_csv(&data.get("train.csv").await?, &file)?
    } else {
        Vec::new()
    };
    for (i, r) in rows.iter().enumerate() {
        if seen.insert((r.eeg_id, r.eeg_sub_id)) {
            train.entry(r.eeg_id).or_default().push(Window {
                key: key(Split::Train, r.eeg_id, Some(r.eeg_sub_id)),
                offset: r.eeg_label_offset_seconds,
                line: i as u64 + 2,
            });
        }
    }
    out.extend(train.into_iter().map(|(id, w)| (Split::Train, id, w)));
    let test = match data.get("test.csv").await {
        _ if !splits.contains(&Split::Test) => Vec::new(),
        Ok(b) => tables::parse_test_csv(&b, &data.url("test.csv"))?,
        Err(Error::NotFound { .. }) => Vec::new(),
        Err(e) => return Err(e),
    };
    let mut seen = HashSet::new();
    for (i, r) in test.iter().enumerate() {
        if seen.insert(r.eeg_id) {
            let window = Window {
                key: key(Split::Test, r.eeg_id, None),
                offset: 0.0,
                line: i as u64 + 2,
            };
            out.push((Split::Test, r.eeg_id, vec![window]));
        }
    }
    Ok(out)
}

/// Computes every referenced window's image into `cache`, skipping those already there,
/// `concurrency` EEG files at a time; writes `eeg_manifest.json` last.
pub async fn prepare(data: &Store, cache: &Store, concurrency: usize) -> Result<EegPrepareSummary> {
    prepare_splits(data, cache, &[Split::Train, Split::Test], concurrency).await
}

/// [`prepare`] for the windows of `splits` only (`[Split::Test]`: a test set without
/// `train.csv`, for `hbac predict`); the manifest is written only when both are prepared.
pub async fn prepare_splits(
    data: &Store,
    cache: &Store,
    splits: &[Split],
    concurrency: usize,
) -> Result<EegPrepareSummary> {
    let start = Instant::now();
    let files = referenced(data, splits).await?;
    let mut done = HashSet::new();
    for &split in splits {
        for (k, _) in cache.list(dir(split)).await? {
            done.insert(format!("{}/{k}", dir(split)));
        }
    }
    let count = |s: Split| -> usize {
        files
            .iter()
            .filter(|(split, ..)| *split == s)
            .map(|(_, _, w)| w.len())
            .sum()
    };
    let (train, test) = (count(Split::Train), count(Split::Test));
    let mut todo = Vec::new();
    for (split, id, windows) in files {
        let missing: Vec<Window> = windows
            .into_iter()
            .filter(|w| !done.contains(&w.key))
            .collect();
        if !missing.is_empty() {
            todo.push((split, id, missing));
        }
    }
    let total_windows: usize = todo.iter().map(|(_, _, w)| w.len()).sum();
    let skipped = train + test - total_windows;
    let bar = crate::progress::bar(total_windows as u64, "eeg images");
    let n_files = todo.len();
    let results: Vec<Result<(u64, u64)>> = futures::stream::iter(todo)
        .map(|(split, id, windows)| {
            let (data, cache, bar) = (data.clone(), cache.clone(), bar.clone());
            async move { convert(&data, &cache, split, id, windows, &bar).await }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    bar.finish_and_clear();
    let (mut read, mut written, mut errors) = (0, 0, Vec::new());
    for r in results {
        match r {
            Ok((i, o)) => {
                read += i;
                written += o;
            }
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        return Err(Error::Many {
            total: n_files,
            errors,
        });
    }
    let manifest = EegManifest {
        format: EEG_CACHE_FORMAT,
        data: data.root().to_string(),
        train,
        test,
    };
    if splits.contains(&Split::Train) && splits.contains(&Split::Test) {
        cache
            .put(
                "eeg_manifest.json",
                serde_json::to_vec_pretty(&manifest).expect("serialisable"),
            )
            .await?;
    }
    Ok(EegPrepareSummary {
        converted: total_windows,
        skipped,
        files: n_files,
        bytes_read: read,
        bytes_written: written,
        seconds: start.elapsed().as_secs_f64(),
        manifest,
    })
}

/// Reads one EEG file and publishes the images of its missing windows; returns (bytes read,
/// bytes written). A window outside the recording is an error at its CSV line.
async fn convert(
    data: &Store,
    cache: &Store,
    split: Split,
    id: i64,
    windows: Vec<Window>,
    bar: &indicatif::ProgressBar,
) -> Result<(u64, u64)> {
    let src = format!("{}/{id}.parquet", eeg_dir(split));
    let csv = data.url(split.csv());
    let first_line = windows[0].line;
    let bytes = data.get(&src).await.map_err(|e| match e {
        Error::NotFound { url, .. } => Error::NotFound {
            url,
            note: format!(" (referenced by {csv} line {first_line})"),
        },
        e => e,
    })?;
    let n_in = bytes.len() as u64;
    let url = data.url(&src);
    let images = tokio::task::spawn_blocking(move || {
        let recording = eeg::read_eeg(bytes, &url)?;
        windows
            .into_iter()
            .map(|w| {
                let image = eeg::eeg_image(&recording, w.offset, &url).map_err(|e| {
                    Error::invalid(
                        Location::file(csv.clone())
                            .line(w.line)
                            .field("eeg_label_offset_seconds"),
                        e.to_string(),
                    )
                })?;
                Ok((w.key, eeg::encode(&image)))
            })
            .collect::<Result<Vec<_>>>()
    })
    .await
    .expect("EEG image task panicked")?;
    let mut n_out = 0;
    for (key, npy) in images {
        n_out += npy.len() as u64;
        cache.put(&key, npy).await?;
        bar.inc(1);
    }
    Ok((n_in, n_out))
}
