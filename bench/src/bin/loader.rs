//! Window loader benchmark: normalised `[3, 400, 300]` samples per second from the `.npy`
//! cache, on every core, in two modes:
//! * `cold` — each sample reads and decodes its `.npy` from the cache, then windows and
//!   normalises (what a loader without a spectrogram cache in memory does);
//! * `warm` — spectrograms already in memory, windowing and normalisation only.
//!
//! `cargo run --release -p hbac-bench --bin loader -- --data DIR [--cache URL]`

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use hbac_common::hms::tables::parse_train_csv;
use hbac_common::npy;
use hbac_common::prepare::{Cache, Split};
use hbac_common::preprocess::{self, INPUT_LEN, LabelMode, SampleSelection};
use hbac_common::storage::Store;

#[derive(Parser)]
struct Args {
    /// Data set root (holds train.csv).
    #[arg(long)]
    data: String,
    /// Cache root [default: <data>/cache].
    #[arg(long)]
    cache: Option<String>,
    /// Worker threads [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Passes over the samples per mode.
    #[arg(long, default_value_t = 3)]
    passes: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let rt = tokio::runtime::Runtime::new()?;
    let data = Store::open(&args.data)?;
    let cache_store = match &args.cache {
        Some(c) => Store::open(c)?,
        None => data.sub("cache"),
    };
    let csv = rt.block_on(data.get("train.csv"))?;
    let rows = parse_train_csv(&csv, &data.url("train.csv"))?;
    let samples = preprocess::select_samples(&rows, SampleSelection::AllRows, LabelMode::Votes);
    let cache = Cache::new(cache_store.clone());
    let n = samples.len() * args.passes;

    // Cold: read + decode + window + normalise per sample.
    let cold = per_second(n, threads, |i, out| {
        let sm = &samples[i % samples.len()];
        let key = Cache::key(Split::Train, sm.spectrogram_id);
        let bytes = rt.block_on(cache_store.get(&key)).expect("cached");
        let spec = npy::decode(&bytes, &key).expect("valid npy");
        preprocess::model_input(&spec, sm.offset_rows, &key, out).expect("window");
    });

    // Warm: spectrograms in memory.
    let mut specs = std::collections::HashMap::new();
    for sm in &samples {
        if let std::collections::hash_map::Entry::Vacant(e) = specs.entry(sm.spectrogram_id) {
            e.insert(rt.block_on(cache.load(Split::Train, sm.spectrogram_id))?);
        }
    }
    let warm = per_second(n, threads, |i, out| {
        let sm = &samples[i % samples.len()];
        preprocess::model_input(&specs[&sm.spectrogram_id], sm.offset_rows, "mem", out)
            .expect("window");
    });

    println!(
        "loader samples={} threads={threads} passes={}",
        samples.len(),
        args.passes
    );
    println!("loader cold_samples_per_s {cold:.1}");
    println!("loader warm_samples_per_s {warm:.1}");
    Ok(())
}

/// Runs `work(i, buffer)` for `i` in `0..n` on `threads` threads; returns items per second.
fn per_second(n: usize, threads: usize, work: impl Fn(usize, &mut [f32]) + Sync) -> f64 {
    let next = AtomicUsize::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut out = vec![0.0f32; INPUT_LEN];
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    work(i, &mut out);
                    std::hint::black_box(&out);
                }
            });
        }
    });
    n as f64 / start.elapsed().as_secs_f64()
}
