//! Each subcommand: turn its arguments into library calls and print a short summary.

use anyhow::Result;
use hbac_common::eeg_cache;
use hbac_common::folds::{self, KFold};
use hbac_common::hms::{eeg, tables};
use hbac_common::metric;
use hbac_common::prepare;
use hbac_common::storage::Store;
use hbac_common::synth::{self, SynthConfig};
use tracing::{info, warn};

use crate::backend::{DeviceKind, OnBackend, Task, run_on};
use crate::cli::{
    Command, EegSpectrogramArgs, ExportArgs, ExportFormat, FoldsArgs, ModelBenchArgs,
    ModelCheckArgs, ModelCommand, ModelSummaryArgs, PredictArgs, PrepareArgs, ScoreArgs, SynthArgs,
    TrainArgs,
};
use hbac_worker::ops::TrainBackend;

/// Runs one subcommand to completion.
pub async fn run(command: Command) -> Result<()> {
    match command {
        Command::Synth(a) => synth(a).await,
        Command::Prepare(a) => prepare(a).await,
        Command::EegSpectrogram(a) => eeg_spectrogram(a).await,
        Command::Folds(a) => folds(a).await,
        Command::Score(a) => score(a).await,
        Command::Model(ModelCommand::Summary(a)) => model_summary(a),
        Command::Model(ModelCommand::Bench(a)) => model_bench(a),
        Command::Model(ModelCommand::Check(a)) => model_check(a),
        Command::Train(a) => train(*a).await,
        Command::Predict(a) => predict(a).await,
        Command::Export(a) => export(a).await,
        Command::Local(a) => crate::runner::local(*a).await,
        Command::Coordinator(a) => crate::runner::coordinator(*a).await,
        Command::Worker(a) => crate::runner::worker(*a).await,
        Command::Status(a) => crate::runner::status(a).await,
        Command::Drain(a) => crate::runner::drain(a).await,
        Command::Report(a) => crate::runner::report(a).await,
        Command::Device(a) => {
            println!("{}", crate::backend::describe(a.device)?);
            if a.device != DeviceKind::Cpu
                && let Some(dir) = crate::backend::kernel_cache_dir()
            {
                println!("kernel cache: {}", dir.display());
            }
            Ok(())
        }
    }
}

/// `1234567` → `1,234,567`.
fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn model_bench(a: ModelBenchArgs) -> Result<()> {
    use hbac_worker::model::Arch;
    use hbac_worker::model::layers::Path;
    use hbac_worker::train::bench::{StepBench, report};
    anyhow::ensure!(
        a.width > 0.0 && a.width.is_finite(),
        "--width must be positive"
    );
    anyhow::ensure!(
        a.batch > 0 && a.steps > 0,
        "--batch and --steps must be positive"
    );
    println!(
        "train_step device={:?} path={} batch={} input=[3,400,300] width={}",
        a.device,
        if a.stock { "stock" } else { "fused" },
        a.batch,
        a.width
    );
    for arch in a.arch.map_or(Arch::ALL.to_vec(), |x| vec![x]) {
        let bench = StepBench {
            arch,
            width: a.width,
            batch: a.batch,
            warmup: a.warmup,
            steps: a.steps,
            path: if a.stock { Path::Stock } else { Path::Fused },
        };
        let times = run_on(a.device, BenchSteps(&bench))?.map_err(anyhow::Error::msg)?;
        println!("{}", report(&bench, &times));
    }
    Ok(())
}

fn model_check(a: ModelCheckArgs) -> Result<()> {
    use hbac_worker::model::Arch;
    use hbac_worker::model::layers::Path;
    use hbac_worker::train::bench::{StepBench, compare_steps, step_gradients};
    anyhow::ensure!(
        a.width > 0.0 && a.width.is_finite(),
        "--width must be positive"
    );
    anyhow::ensure!(a.batch > 0, "--batch must be positive");
    let mut failed = Vec::new();
    for arch in a.arch.map_or(Arch::ALL.to_vec(), |x| vec![x]) {
        let bench = StepBench {
            arch,
            width: a.width,
            batch: a.batch,
            warmup: 0,
            steps: 1,
            path: Path::Fused,
        };
        let cpu = step_gradients::<burn::backend::Autodiff<crate::backend::Cpu>>(
            &bench,
            a.seed,
            &Default::default(),
        );
        let dev = run_on(a.device, GradientSteps(&bench, a.seed))?;
        let (cpu, dev) = (
            cpu.map_err(anyhow::Error::msg)?,
            dev.map_err(anyhow::Error::msg)?,
        );
        let c = compare_steps(&cpu, &dev).map_err(anyhow::Error::msg)?;
        let ok = c.loss_rel <= a.loss_tol && c.grad_rel_max <= a.grad_tol;
        println!(
            "grad_check arch={arch} device={:?} batch={} width={} loss_cpu={:.7} loss_device={:.7} loss_rel={:.2e} grad_rel_median={:.2e} grad_rel_max={:.2e} worst={} params={} {}",
            a.device,
            a.batch,
            a.width,
            cpu.loss,
            dev.loss,
            c.loss_rel,
            c.grad_rel_median,
            c.grad_rel_max,
            c.worst,
            c.params,
            if ok { "ok" } else { "FAILED" }
        );
        if !ok {
            failed.push(arch.to_string());
        }
    }
    anyhow::ensure!(
        failed.is_empty(),
        "{} differ from the CPU beyond --loss-tol {} / --grad-tol {}",
        failed.join(", "),
        a.loss_tol,
        a.grad_tol
    );
    Ok(())
}

fn model_summary(a: ModelSummaryArgs) -> Result<()> {
    use hbac_worker::model::{ModelConfig, summary::summarize};
    anyhow::ensure!(
        a.width > 0.0 && a.width.is_finite(),
        "--width must be positive"
    );
    let device = Default::default();
    let cfg = ModelConfig::new(a.arch)
        .with_width(a.width)
        .with_num_classes(a.num_classes);
    let model = cfg.init::<crate::backend::Cpu>(&device);
    let s = summarize::<crate::backend::Cpu, _>(&model);
    println!("{} (width {}, {} classes)", a.arch, a.width, a.num_classes);
    println!(
        "{:<46} {:>12} {:>10}  tensors",
        "layer", "trainable", "bn stats"
    );
    for l in &s.layers {
        println!(
            "{:<46} {:>12} {:>10}  {}",
            l.path,
            thousands(l.trainable),
            thousands(l.non_trainable),
            l.tensors.join(", ")
        );
    }
    println!("backbone params: {}", thousands(s.total_under("backbone")));
    println!("total params: {}", thousands(s.total()));
    println!("trainable params: {}", thousands(s.trainable));
    println!("non-trainable params: {}", thousands(s.non_trainable));
    Ok(())
}

async fn synth(a: SynthArgs) -> Result<()> {
    let out = Store::create(&a.out)?;
    let cfg = SynthConfig {
        patients: a.patients,
        seed: a.seed,
        test_spectrograms: a.test_spectrograms,
        eeg_files: a.eeg_files,
        all_eegs: a.eegs,
        signal: a.signal,
        concurrency: a.jobs,
    };
    anyhow::ensure!(cfg.patients > 0, "--patients must be at least 1");
    let s = synth::generate(&cfg, &out).await?;
    println!(
        "wrote {}: {} train rows, {} train spectrograms, {} patients, {} test spectrograms, {} EEG files",
        out.root(),
        s.train_rows,
        s.train_spectrograms,
        s.patients,
        s.test_spectrograms,
        s.eeg_files
    );
    Ok(())
}

async fn prepare(a: PrepareArgs) -> Result<()> {
    let data = Store::open(&a.data)?;
    let cache = match &a.cache {
        Some(c) => Store::create(c)?,
        None => Store::create(&data.url("cache"))?,
    };
    info!(
        data = data.root(),
        cache = cache.root(),
        "preparing spectrogram cache"
    );
    let s = prepare::prepare(&data, &cache, a.jobs).await?;
    let mb = |b: u64| b as f64 / 1e6;
    println!(
        "cache {}: {} converted, {} already present ({} train, {} test); read {:.1} MB, wrote {:.1} MB in {:.2} s ({:.1} files/s, {:.1} MB/s parquet)",
        cache.root(),
        s.converted,
        s.skipped,
        s.manifest.train,
        s.manifest.test,
        mb(s.bytes_read),
        mb(s.bytes_written),
        s.seconds,
        s.converted as f64 / s.seconds.max(1e-9),
        mb(s.bytes_read) / s.seconds.max(1e-9),
    );
    if a.eeg {
        let e = eeg_cache::prepare(&data, &cache, a.jobs).await?;
        println!(
            "EEG images in {}: {} computed from {} EEG files, {} already present ({} train windows, {} test); read {:.1} MB, wrote {:.1} MB in {:.2} s ({:.1} images/s)",
            cache.root(),
            e.converted,
            e.files,
            e.skipped,
            e.manifest.train,
            e.manifest.test,
            mb(e.bytes_read),
            mb(e.bytes_written),
            e.seconds,
            e.converted as f64 / e.seconds.max(1e-9),
        );
    }
    Ok(())
}

async fn read_file(url: &str) -> Result<(bytes::Bytes, String)> {
    let (parent, name) = hbac_common::storage::parent_and_name(url)?;
    let store = Store::open(&parent)?;
    Ok((store.get(&name).await?, store.url(&name)))
}

async fn write_file(url: &str, bytes: Vec<u8>) -> Result<()> {
    Ok(Store::write_url(url, bytes).await?)
}

async fn export(a: ExportArgs) -> Result<()> {
    let ExportFormat::Onnx = a.format;
    if let Some(run) = &a.run {
        let run = crate::predict::open_run(run).await?;
        let out = a.out.as_deref().unwrap_or("onnx");
        let ensemble = hbac_worker::finished::export::export_run::<crate::backend::Cpu>(
            &run,
            &Store::create(out)?,
        )
        .await?;
        let models: usize = ensemble.architectures.iter().map(|a| a.models.len()).sum();
        let weights: Vec<String> = ensemble
            .architectures
            .iter()
            .map(|a| format!("{} {:.2}", a.arch, a.weight))
            .collect();
        println!(
            "wrote {models} ONNX models and ensemble.json (weights {}) of {} to {out}",
            weights.join(", "),
            run.url
        );
        return Ok(());
    }
    let dir = Store::open(
        a.checkpoint
            .as_deref()
            .expect("clap requires --run or --checkpoint"),
    )?;
    let out = a.out.as_deref().unwrap_or("model.onnx");
    let bytes =
        hbac_worker::finished::export::checkpoint_onnx::<crate::backend::Cpu>(&dir, &[]).await?;
    let size = bytes.len();
    write_file(out, bytes).await?;
    println!(
        "wrote {out} ({:.1} MB) from {}",
        size as f64 / 1e6,
        dir.root()
    );
    Ok(())
}

async fn eeg_spectrogram(a: EegSpectrogramArgs) -> Result<()> {
    let (bytes, file) = read_file(&a.eeg).await?;
    let recording = eeg::read_eeg(bytes, &file)?;
    let image = eeg::eeg_image(&recording, a.offset, &file)?;
    write_file(&a.out, eeg::encode(&image).to_vec()).await?;
    let (lo, hi) = image
        .data
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| {
            (l.min(v), h.max(v))
        });
    println!(
        "wrote {}: float32 {:?} (chains LL, RL, LP, RP × mel bands × frames) from {file} at {} s; values {lo:.3}..{hi:.3}",
        a.out,
        eeg::SHAPE,
        a.offset
    );
    Ok(())
}

async fn folds(a: FoldsArgs) -> Result<()> {
    let (bytes, file) = read_file(&a.train_csv).await?;
    let rows = tables::parse_train_csv(&bytes, &file)?;
    let split = folds::hms_folds(
        &rows,
        &KFold {
            k: a.k,
            shuffle: a.shuffle,
            seed: a.seed,
        },
    )?;
    for w in &split.warnings {
        warn!("{w}");
    }
    let labels: Vec<String> = split.fold.iter().map(ToString::to_string).collect();
    write_file(
        &a.out,
        tables::append_column(&bytes, &file, "fold", &labels)?,
    )
    .await?;
    let mut sizes = vec![0usize; a.k];
    for &f in &split.fold {
        sizes[f] += 1;
    }
    println!(
        "wrote {} ({} rows): rows per fold {:?}",
        a.out,
        rows.len(),
        sizes
    );
    Ok(())
}

async fn score(a: ScoreArgs) -> Result<()> {
    let (sol, sol_file) = read_file(&a.solution).await?;
    let (sub, sub_file) = read_file(&a.submission).await?;
    let solution = tables::parse_prob_csv(&sol, &sol_file)?;
    let submission = tables::parse_prob_csv(&sub, &sub_file)?;
    let kl = metric::kaggle_kl(&solution, &sol_file, &submission, &sub_file)?;
    println!("rows {}", solution.len());
    println!("kl_divergence {kl}");
    Ok(())
}

/// The cache for a data set: `--cache` or `<data>/cache`.
pub(crate) fn cache_store(data: &Store, cache: &Option<String>) -> Result<Store> {
    Ok(match cache {
        Some(c) => Store::create(c)?,
        None => Store::create(&data.url("cache"))?,
    })
}

/// Progress bar per epoch and one line per finished epoch.
struct EpochProgress {
    bar: Option<indicatif::ProgressBar>,
    epochs: usize,
    /// Stage 1's epochs when there is a second stage.
    stage1: Option<usize>,
}

impl hbac_worker::train::trainer::TrainHooks for EpochProgress {
    fn batch(&mut self, epoch: usize, done: usize, total: usize) {
        let bar = self.bar.get_or_insert_with(|| {
            hbac_common::progress::bar(total as u64, &format!("epoch {}", epoch + 1))
        });
        bar.set_position(done as u64);
    }

    fn epoch(&mut self, r: &hbac_worker::train::trainer::EpochReport) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        let valid = r.valid_kl.map_or("-".to_string(), |v| format!("{v:.4}"));
        let stage = match self.stage1 {
            Some(first) if r.epoch >= first => " [stage 2]",
            Some(_) => " [stage 1]",
            None => "",
        };
        println!(
            "epoch {}/{}{stage} lr {:.3e} train_kl {:.4} valid_kl {valid}{} {:.1} samples/s {:.1} s",
            r.epoch + 1,
            self.epochs,
            r.lr,
            r.train_kl,
            if r.best { " (best)" } else { "" },
            r.samples_per_second,
            r.seconds
        );
    }
}

async fn train(a: TrainArgs) -> Result<()> {
    use hbac_worker::job::JobSpec;

    let data = Store::open(&a.data)?;
    let recipe = hbac_worker::train::recipe::Recipe::from(&a.recipe);
    let cfg = recipe.train_config(a.arch)?;
    let (epochs, stage1) = (cfg.total_epochs(), cfg.stage2.map(|_| cfg.epochs));
    let spec = JobSpec {
        cache: cache_store(&data, &a.cache)?,
        out: Store::create(&a.out)?,
        data,
        fold: a.fold,
        kfold: recipe.kfold,
        selection: recipe.selection(),
        labels: recipe.labels,
        train: cfg,
        io_concurrency: a.jobs,
        resume: a.resume.as_deref().map(Store::open).transpose()?,
    };
    info!(arch = %a.arch, fold = a.fold, out = spec.out.root(), device = ?a.device, "training");
    let hooks = EpochProgress {
        bar: None,
        epochs,
        stage1,
    };
    let s = run_on(a.device, TrainJob { spec: &spec, hooks })?.await?;
    println!(
        "best epoch {} valid_kl {:.4}; out-of-fold kaggle kl {:.4} (prior-only {:.4}); outputs in {}",
        s.best_epoch + 1,
        s.valid_kl,
        s.oof_kaggle_kl,
        s.prior_kaggle_kl,
        spec.out.root()
    );
    Ok(())
}

async fn predict(a: PredictArgs) -> Result<()> {
    use hbac_worker::job;
    if let Some(run) = &a.run {
        let run = crate::predict::open_run(run).await?;
        let data = Store::open(&a.data)?;
        let cache = cache_store(&data, &a.cache)?;
        let settings = hbac_worker::finished::predict::Settings {
            batch_size: a.batch_size,
            threads: 2,
            concurrency: a.jobs,
        };
        let rows = crate::predict::predict_run(&run, &data, &cache, settings, a.device).await?;
        write_file(&a.out, tables::write_prob_csv(&rows, None)).await?;
        let weights: Vec<String> = run
            .report
            .archs
            .iter()
            .zip(&run.report.weights)
            .map(|(arch, w)| format!("{arch} {w:.2}"))
            .collect();
        println!(
            "wrote {} ({} rows): the ensemble of {} jobs of {} (weights {}; its CV {:.4})",
            a.out,
            rows.len(),
            run.jobs.len(),
            run.url,
            weights.join(", "),
            run.report.cv
        );
        return Ok(());
    }
    let checkpoint = a
        .checkpoint
        .as_deref()
        .expect("clap requires --run or --checkpoint");
    let data = Store::open(&a.data)?;
    let cache = cache_store(&data, &a.cache)?;
    let test = [hbac_common::prepare::Split::Test];
    hbac_common::prepare::prepare_splits(&data, &cache, &test, a.jobs).await?;
    let dir = Store::open(checkpoint)?;
    let input = hbac_worker::finished::job_input(&dir).await?;
    if input.uses_eegs() {
        hbac_common::eeg_cache::prepare_splits(&data, &cache, &test, a.jobs).await?;
    }
    let cache = hbac_common::prepare::Cache::new(cache);
    let batching = job::Batching {
        batch_size: a.batch_size,
        threads: 2,
        concurrency: a.jobs,
    };
    let task = PredictCheckpoint {
        dir: &dir,
        input,
        data: &data,
        cache: &cache,
        batching,
    };
    let rows = run_on(a.device, task)?.await?;
    write_file(&a.out, tables::write_prob_csv(&rows, None)).await?;
    println!("wrote {} ({} rows)", a.out, rows.len());
    Ok(())
}

/// `hbac model bench`'s timed steps on one backend.
struct BenchSteps<'a>(&'a hbac_worker::train::bench::StepBench);

impl OnBackend for BenchSteps<'_> {
    type Output = Result<Vec<f64>, String>;
    fn run<B: TrainBackend>(self, device: fn(usize) -> B::Device) -> Self::Output {
        hbac_worker::train::bench::train_steps::<B>(self.0, &device(0), |_| {})
    }
}

/// `hbac model check`'s one step's loss and gradients on one backend.
struct GradientSteps<'a>(&'a hbac_worker::train::bench::StepBench, u64);

impl OnBackend for GradientSteps<'_> {
    type Output = Result<hbac_worker::train::bench::StepGradients, String>;
    fn run<B: TrainBackend>(self, device: fn(usize) -> B::Device) -> Self::Output {
        hbac_worker::train::bench::step_gradients::<B>(self.0, self.1, &device(0))
    }
}

/// `hbac train`'s job.
struct TrainJob<'a, H> {
    spec: &'a hbac_worker::job::JobSpec,
    hooks: H,
}

impl<'a, H: hbac_worker::train::trainer::TrainHooks + Send + 'static> OnBackend
    for TrainJob<'a, H>
{
    type Output = Task<'a, Result<hbac_worker::job::JobSummary, hbac_worker::TrainError>>;
    fn run<B: TrainBackend>(self, device: fn(usize) -> B::Device) -> Self::Output {
        Box::pin(hbac_worker::job::run::<B>(self.spec, device(0), self.hooks))
    }
}

/// `hbac predict --checkpoint`: one job's model on the test set.
struct PredictCheckpoint<'a> {
    dir: &'a Store,
    input: hbac_common::preprocess::Input,
    data: &'a Store,
    cache: &'a hbac_common::prepare::Cache,
    batching: hbac_worker::job::Batching,
}

impl<'a> OnBackend for PredictCheckpoint<'a> {
    type Output = Task<'a, Result<Vec<tables::ProbRow>>>;
    fn run<B: TrainBackend>(self, device: fn(usize) -> B::Device) -> Self::Output {
        use hbac_worker::job;
        Box::pin(async move {
            let device = device(0);
            let (model, _) = job::load_checkpoint::<B::InnerBackend>(self.dir, &device).await?;
            let input = self.input;
            Ok(
                job::predict_test(model, input, self.data, self.cache, self.batching, device)
                    .await?,
            )
        })
    }
}
