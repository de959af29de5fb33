//! The spectrogram cache: parquet → `.npy`, once per data set (`hbac prepare`).
//!
//! Layout under the cache URL: `train_spectrograms/<id>.npy`, `test_spectrograms/<id>.npy`
//! (`float32 [400, T]`, NaN → 0, exactly what the reference notebook cached) and
//! `manifest.json`, written last, when every file referenced by `train.csv`/`test.csv` is in
//! place. Each `.npy` is published atomically, so re-running skips finished files and an
//! interrupted run never leaves a truncated file that looks complete. Files convert in
//! parallel; failures are collected and reported together, by file, after the rest finish.

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Location, Result};
use crate::hms::spectrogram::{self, Spectrogram};
use crate::hms::tables;
use crate::npy;
use crate::preprocess;
use crate::storage::Store;

/// Version of the cache layout, recorded in `manifest.json`.
pub const CACHE_FORMAT: u32 = 1;

/// Which half of the data set a spectrogram belongs to.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    #[default]
    Train,
    Test,
}

impl Split {
    /// Folder name, the same in the data set and in the cache.
    pub fn dir(self) -> &'static str {
        match self {
            Split::Train => "train_spectrograms",
            Split::Test => "test_spectrograms",
        }
    }

    /// The table that lists the split's rows.
    pub fn csv(self) -> &'static str {
        match self {
            Split::Train => "train.csv",
            Split::Test => "test.csv",
        }
    }
}

/// `manifest.json`: proof that a cache is complete for a data set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub data: String,
    pub train: usize,
    pub test: usize,
}

/// Counts and timings of one `prepare` run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PrepareSummary {
    /// Files converted by this run.
    pub converted: usize,
    /// Files already in the cache (skipped).
    pub skipped: usize,
    /// Parquet bytes read and `.npy` bytes written by this run.
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub seconds: f64,
    pub manifest: Manifest,
}

/// Read access to a prepared cache.
#[derive(Debug, Clone)]
pub struct Cache {
    store: Store,
}

impl Cache {
    /// Opens the cache at `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// Key of a spectrogram's `.npy` below the cache root.
    pub fn key(split: Split, id: i64) -> String {
        format!("{}/{id}.npy", split.dir())
    }

    /// URL of a spectrogram's `.npy`, for messages.
    pub fn url(&self, split: Split, id: i64) -> String {
        self.store.url(&Self::key(split, id))
    }

    /// Loads one cached spectrogram.
    pub async fn load(&self, split: Split, id: i64) -> Result<Spectrogram> {
        let key = Self::key(split, id);
        let bytes = self.store.get(&key).await?;
        let url = self.store.url(&key);
        tokio::task::spawn_blocking(move || npy::decode(&bytes, &url))
            .await
            .expect("decode task panicked")
    }

    /// Loads one cached EEG window image (`key` from [`crate::eeg_cache::key`]); a missing
    /// one says how to make it.
    pub async fn load_eeg(&self, key: &str) -> Result<crate::hms::eeg::EegImage> {
        let bytes = self.store.get(key).await.map_err(|e| match e {
            Error::NotFound { url, .. } => Error::NotFound {
                url,
                note: " (run `hbac prepare --eeg`: the EEG images are not in the cache)".into(),
            },
            e => e,
        })?;
        let url = self.store.url(key);
        tokio::task::spawn_blocking(move || crate::hms::eeg::decode(&bytes, &url))
            .await
            .expect("decode task panicked")
    }

    /// The manifest, or a clear error if the cache was never completed.
    pub async fn manifest(&self) -> Result<Manifest> {
        let bytes = self.store.get("manifest.json").await.map_err(|e| match e {
            Error::NotFound { url, .. } => Error::NotFound {
                url,
                note: " (run `hbac prepare` to complete the cache)".into(),
            },
            e => e,
        })?;
        serde_json::from_slice(&bytes).map_err(|e| {
            Error::invalid(
                Location::file(self.store.url("manifest.json")),
                e.to_string(),
            )
        })
    }
}

/// Where a data set first references a spectrogram, and its furthest label offset.
#[derive(Debug, Clone, Copy)]
struct Reference {
    /// CSV line that first names the file.
    line: u64,
    /// The label row with the largest window offset: (CSV line, offset in seconds).
    furthest: Option<(u64, f64)>,
}

/// Spectrogram ids a data set references.
async fn referenced(data: &Store, split: Split) -> Result<BTreeMap<i64, Reference>> {
    let file = data.url(split.csv());
    let mut ids = BTreeMap::new();
    match split {
        Split::Train => {
            let bytes = data.get(split.csv()).await?;
            for (i, r) in tables::parse_train_csv(&bytes, &file)?.iter().enumerate() {
                let line = i as u64 + 2;
                let off = r.spectrogram_label_offset_seconds;
                let e = ids.entry(r.spectrogram_id).or_insert(Reference {
                    line,
                    furthest: None,
                });
                if e.furthest.is_none_or(|(_, o)| off > o) {
                    e.furthest = Some((line, off));
                }
            }
        }
        Split::Test => {
            let bytes = match data.get(split.csv()).await {
                Ok(b) => b,
                Err(Error::NotFound { .. }) => return Ok(ids),
                Err(e) => return Err(e),
            };
            for (i, r) in tables::parse_test_csv(&bytes, &file)?.iter().enumerate() {
                ids.entry(r.spectrogram_id).or_insert(Reference {
                    line: i as u64 + 2,
                    furthest: None,
                });
            }
        }
    }
    Ok(ids)
}

/// Converts every spectrogram that `train.csv` and (if present) `test.csv` reference into the
/// cache, skipping those already there, `concurrency` files at a time.
pub async fn prepare(data: &Store, cache: &Store, concurrency: usize) -> Result<PrepareSummary> {
    prepare_splits(data, cache, &[Split::Train, Split::Test], concurrency).await
}

/// [`prepare`] for some splits only: `[Split::Test]` prepares a data set that holds only a test
/// set (`hbac predict`). The manifest, which vouches for the training split, is written only
/// when it is among them.
pub async fn prepare_splits(
    data: &Store,
    cache: &Store,
    splits: &[Split],
    concurrency: usize,
) -> Result<PrepareSummary> {
    let start = Instant::now();
    let mut todo = Vec::new();
    let mut counts = BTreeMap::new();
    let mut skipped = 0;
    for &split in splits {
        let ids = referenced(data, split).await?;
        counts.insert(split, ids.len());
        let done: HashSet<String> = cache
            .list(split.dir())
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        for (id, reference) in ids {
            if done.contains(&format!("{id}.npy")) {
                skipped += 1;
            } else {
                todo.push((split, id, reference));
            }
        }
    }
    let bar = crate::progress::bar(todo.len() as u64, "prepare");
    let total = todo.len();
    let results: Vec<Result<(u64, u64)>> = futures::stream::iter(todo)
        .map(|(split, id, reference)| {
            let (data, cache, bar) = (data.clone(), cache.clone(), bar.clone());
            async move {
                let r = convert(&data, &cache, split, id, reference)
                    .await
                    .map_err(|e| match e {
                        Error::NotFound { url, .. } => Error::NotFound {
                            url,
                            note: format!(
                                " (referenced by {} line {})",
                                data.url(split.csv()),
                                reference.line
                            ),
                        },
                        e => e,
                    });
                bar.inc(1);
                r
            }
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
        return Err(Error::Many { total, errors });
    }
    let manifest = Manifest {
        format: CACHE_FORMAT,
        data: data.root().to_string(),
        train: counts.get(&Split::Train).copied().unwrap_or(0),
        test: counts.get(&Split::Test).copied().unwrap_or(0),
    };
    if splits.contains(&Split::Train) {
        cache
            .put(
                "manifest.json",
                serde_json::to_vec_pretty(&manifest).expect("serialisable"),
            )
            .await?;
    }
    Ok(PrepareSummary {
        converted: total,
        skipped,
        bytes_read: read,
        bytes_written: written,
        seconds: start.elapsed().as_secs_f64(),
        manifest,
    })
}

/// Reads, decodes, checks label offsets against the file's length, encodes and publishes one
/// file; returns (bytes read, bytes written).
async fn convert(
    data: &Store,
    cache: &Store,
    split: Split,
    id: i64,
    reference: Reference,
) -> Result<(u64, u64)> {
    let src = format!("{}/{id}.parquet", split.dir());
    let bytes = data.get(&src).await?;
    let n_in = bytes.len() as u64;
    let url = data.url(&src);
    let csv = data.url(split.csv());
    let npy = tokio::task::spawn_blocking(move || {
        let s = spectrogram::read_spectrogram(bytes, &url)?;
        if let Some((line, seconds)) = reference.furthest
            && preprocess::offset_rows(seconds) >= s.rows
        {
            return Err(Error::invalid(
                Location::file(csv)
                    .line(line)
                    .field("spectrogram_label_offset_seconds"),
                format!(
                    "offset {seconds} s is past the end of {url} ({} rows = {} s)",
                    s.rows,
                    s.rows * 2
                ),
            ));
        }
        Ok(npy::encode(&s))
    })
    .await
    .expect("decode task panicked")?;
    let n_out = npy.len() as u64;
    cache.put(&Cache::key(split, id), npy).await?;
    Ok((n_in, n_out))
}
