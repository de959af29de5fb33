//! Command-line surface of `hbac`: one clap struct per subcommand, nothing else.

use clap::{Args, Parser, Subcommand, ValueEnum};

/// hbac — k-fold cross-validation of EEG spectrogram classifiers (HMS) across a GPU cluster.
#[derive(Debug, Parser)]
#[command(name = "hbac", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every subcommand takes.
#[derive(Debug, Args)]
pub struct Global {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "HBAC_LOG_FORMAT")]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a synthetic HMS-format data set (deterministic per seed).
    Synth(SynthArgs),
    /// Convert every referenced spectrogram parquet to the .npy cache (parallel, resumable).
    Prepare(PrepareArgs),
    /// Write the public reference's mel-spectrogram image of one 50-s EEG window as .npy:
    /// float32 [4, 128, 256] (chains LL, RL, LP, RP; mel bands 0–20 Hz low to high; frames).
    EegSpectrogram(EegSpectrogramArgs),
    /// Assign scikit-learn-exact StratifiedGroupKFold folds to train.csv rows.
    Folds(FoldsArgs),
    /// Score a submission with the Kaggle KL divergence; the last line is `kl_divergence <value>`.
    Score(ScoreArgs),
    /// Train one fold of one architecture on this machine (the worker's trainer, no coordinator).
    Train(Box<TrainArgs>),
    /// Predict a data set's test.csv with a finished run's ensemble (--run) or one job's best
    /// checkpoint (--checkpoint); writes a Kaggle submission.
    Predict(PredictArgs),
    /// Export trained models as ONNX: one job's best checkpoint (--checkpoint), or a finished
    /// run's every model with ensemble.json, the blend and the preprocessing (--run).
    Export(ExportArgs),
    /// Inspect the model architectures.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Run a whole cross-validation on this machine: a coordinator and N in-process workers
    /// over gRPC on loopback. With no flags: a synthetic data set and a CPU-sized recipe.
    Local(Box<LocalArgs>),
    /// Serve a run to workers: folds, job leases, journal, aggregation.
    Coordinator(Box<CoordinatorArgs>),
    /// Train the jobs a coordinator leases (one at a time per GPU) until the run ends.
    Worker(Box<WorkerArgs>),
    /// Show a coordinator's run: jobs, workers, epochs, losses.
    Status(StatusArgs),
    /// Drain a worker: it finishes the jobs it holds, takes no new one, and exits with code 3.
    Drain(DrainArgs),
    /// Write a run's dashboard as one self-contained report.html (any storage, no server).
    Report(ReportArgs),
    /// Check that this build can use a device here and say what it found (for CUDA: the GPU,
    /// the driver, NVRTC, the headers, a test kernel compiled; the kernel cache folder).
    Device(DeviceArgs),
}

#[derive(Debug, Args)]
pub struct DeviceArgs {
    /// cpu, cuda or wgpu.
    #[arg(long, value_enum, default_value_t = crate::backend::DeviceKind::Cpu, env = "HBAC_DEVICE")]
    pub device: crate::backend::DeviceKind,
}

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Print the layer table and the parameter counts (Keras convention: BatchNorm running
    /// statistics are non-trainable parameters).
    Summary(ModelSummaryArgs),
    /// Time training steps (forward, Keras KL, backward, Adam) on random
    /// `[batch, 3, 400, 300]` inputs; prints `train_step arch=… samples_per_s=…`.
    Bench(ModelBenchArgs),
    /// One training step (forward, Keras KL, backward) of the same seeded model and batch on
    /// --device and on the CPU: prints the loss and gradient differences, fails over tolerance.
    Check(ModelCheckArgs),
}

#[derive(Debug, Args)]
pub struct ModelCheckArgs {
    /// mobilenetv3-large or efficientnetv2-b2 (default: both).
    #[arg(long)]
    pub arch: Option<hbac_worker::model::Arch>,
    /// Channel multiplier (1.0 = the published model).
    #[arg(long, default_value_t = 1.0)]
    pub width: f64,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Seed of the weights and the batch.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Largest relative loss difference accepted.
    #[arg(long, default_value_t = 1e-3)]
    pub loss_tol: f64,
    /// Largest relative L2 difference of any parameter's gradient accepted.
    #[arg(long, default_value_t = 1e-2)]
    pub grad_tol: f64,
    /// The device checked against the CPU: cuda or wgpu (cpu compares the CPU with itself).
    #[arg(long, value_enum, default_value_t = crate::backend::DeviceKind::Cpu, env = "HBAC_DEVICE")]
    pub device: crate::backend::DeviceKind,
}

#[derive(Debug, Args)]
pub struct ModelBenchArgs {
    /// mobilenetv3-large or efficientnetv2-b2 (default: both).
    #[arg(long)]
    pub arch: Option<hbac_worker::model::Arch>,
    /// Channel multiplier (1.0 = the published model).
    #[arg(long, default_value_t = 1.0)]
    pub width: f64,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Untimed steps first (allocation, kernel compilation, autotuning).
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Run the conv layers on burn's stock ops instead of hbac's (for comparison).
    #[arg(long)]
    pub stock: bool,
    /// cpu, cuda (a build with `--features cuda` and an NVIDIA driver) or wgpu (a build with
    /// `--features wgpu` and a Vulkan / Metal / DX12 GPU).
    #[arg(long, value_enum, default_value_t = crate::backend::DeviceKind::Cpu, env = "HBAC_DEVICE")]
    pub device: crate::backend::DeviceKind,
}

#[derive(Debug, Args)]
pub struct ModelSummaryArgs {
    /// mobilenetv3-large or efficientnetv2-b2.
    #[arg(long)]
    pub arch: hbac_worker::model::Arch,
    /// Channel multiplier (1.0 = the published model).
    #[arg(long, default_value_t = 1.0)]
    pub width: f64,
    /// Outputs of the dense head.
    #[arg(long, default_value_t = 6)]
    pub num_classes: usize,
}

#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Output directory or URL (file://, s3://, gs://, az://, memory://).
    #[arg(long, env = "HBAC_SYNTH_OUT")]
    pub out: String,
    /// Training patients (each has 1–3 spectrograms, each 1–5 labelled windows).
    #[arg(long, default_value_t = 40)]
    pub patients: usize,
    /// Seed; the same seed writes identical files.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Test spectrograms (10 minutes each).
    #[arg(long = "test", default_value_t = 10)]
    pub test_spectrograms: usize,
    /// EEG parquet files to write (schema examples: 50 s of noise).
    #[arg(long, default_value_t = 3)]
    pub eeg_files: usize,
    /// Write every train and test EEG (train_eegs/, test_eegs/) instead, long enough for all
    /// their labelled windows, each carrying its recording's class as waveforms (rhythmic
    /// delta, periodic discharges, an evolving seizure rhythm) on the right electrodes.
    #[arg(long)]
    pub eegs: bool,
    /// Strength of the class signal in log-power units (0 = pure noise).
    #[arg(long, default_value_t = 1.5)]
    pub signal: f32,
    /// Files generated at once.
    #[arg(long, default_value_t = default_jobs())]
    pub jobs: usize,
}

#[derive(Debug, Args)]
pub struct PrepareArgs {
    /// Data set root: directory or URL holding train.csv and train_spectrograms/.
    #[arg(long, env = "HBAC_DATA")]
    pub data: String,
    /// Cache root for the .npy files [default: <data>/cache].
    #[arg(long, env = "HBAC_CACHE")]
    pub cache: Option<String>,
    /// Files converted at once.
    #[arg(long, default_value_t = default_jobs())]
    pub jobs: usize,
    /// Also compute the mel-spectrogram image of every labelled 50-s EEG window (train_eegs/,
    /// test_eegs/) into <cache>/train_eeg_spectrograms/ and test_eeg_spectrograms/ (see
    /// `hbac eeg-spectrogram`).
    #[arg(long)]
    pub eeg: bool,
}

#[derive(Debug, Args)]
pub struct FoldsArgs {
    /// train.csv, as a path or URL.
    #[arg(long)]
    pub train_csv: String,
    /// Number of folds (scikit-learn's n_splits).
    #[arg(long, default_value_t = 5)]
    pub k: usize,
    /// Shuffle groups before assigning them (needs --seed).
    #[arg(long)]
    pub shuffle: bool,
    /// Seed (scikit-learn's random_state; only with --shuffle).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Output CSV (path or URL): the input rows in order, with a `fold` column appended.
    #[arg(long)]
    pub out: String,
}

#[derive(Debug, Args)]
pub struct EegSpectrogramArgs {
    /// An EEG parquet file (path or URL): the 20 Kaggle columns at 200 Hz.
    #[arg(long)]
    pub eeg: String,
    /// Start of the 50-s window, seconds (train.csv's eeg_label_offset_seconds; 0 for test EEGs).
    #[arg(long, default_value_t = 0.0)]
    pub offset: f64,
    /// Where to write the .npy (path or URL).
    #[arg(long)]
    pub out: String,
}

#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// Solution CSV: eeg_id and the six *_vote columns (votes or probabilities).
    #[arg(long)]
    pub solution: String,
    /// Submission CSV: eeg_id and the six *_vote probabilities.
    #[arg(long)]
    pub submission: String,
}

fn default_jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get() * 2)
        .unwrap_or(4)
}

/// Installs the tracing subscriber (`RUST_LOG` filters; default `info`).
pub fn init_tracing(global: &Global) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| hbac_common::progress::LogWriter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match global.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OptimizerArg {
    Adam,
    Adamw,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Data set root (train.csv, train_spectrograms/, optional test.csv).
    #[arg(long, env = "HBAC_DATA")]
    pub data: String,
    /// .npy cache root [default: <data>/cache]; missing files are converted first.
    #[arg(long, env = "HBAC_CACHE")]
    pub cache: Option<String>,
    /// Output directory or URL for this job's files.
    #[arg(long)]
    pub out: String,
    /// Resume from the latest training state saved in this folder (an interrupted `hbac train
    /// --out` of the same configuration; it may be --out itself): the run continues exactly as
    /// it would have.
    #[arg(long)]
    pub resume: Option<String>,
    /// Fold held out for validation (0-based).
    #[arg(long, default_value_t = 0)]
    pub fold: usize,
    /// mobilenetv3-large or efficientnetv2-b2.
    #[arg(long, default_value = "efficientnetv2-b2")]
    pub arch: hbac_worker::model::Arch,
    #[command(flatten)]
    pub recipe: RecipeArgs,
    /// cpu, cuda (a build with `--features cuda` and an NVIDIA driver) or wgpu (a build with
    /// `--features wgpu` and a Vulkan / Metal / DX12 GPU).
    #[arg(long, value_enum, default_value_t = crate::backend::DeviceKind::Cpu, env = "HBAC_DEVICE")]
    pub device: crate::backend::DeviceKind,
    /// Files read or converted at once.
    #[arg(long, default_value_t = default_jobs())]
    pub jobs: usize,
}

/// The folds and the training recipe (the reference's values unless `--quick`).
#[derive(Debug, Clone, Args)]
pub struct RecipeArgs {
    /// Number of folds.
    #[arg(long, default_value_t = 5, env = "HBAC_K")]
    pub k: usize,
    /// Seed of the fold split (scikit-learn random_state, shuffle=True).
    #[arg(long, default_value_t = 42)]
    pub folds_seed: u64,
    /// A CPU-sized run: width 0.25, input pooled by 8, batch 16, 12 epochs, peak LR 3e-3,
    /// BatchNorm momentum 0.9, every labelled row (explicit flags still win).
    #[arg(long)]
    pub quick: bool,
    /// [default: 13; --quick: 12]
    #[arg(long)]
    pub epochs: Option<usize>,
    /// [default: 64; --quick: 16]
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[arg(long, value_enum, default_value_t = OptimizerArg::Adam)]
    pub optimizer: OptimizerArg,
    /// AdamW's decoupled weight decay.
    #[arg(long, default_value_t = 0.01)]
    pub weight_decay: f64,
    /// Peak learning rate [default: 6e-6 × batch size, the reference; --quick: 3e-3].
    #[arg(long)]
    pub lr_max: Option<f64>,
    /// Training seed (weights, shuffling, augmentations).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Probability per batch of MixUp, and of each cutout.
    #[arg(long, default_value_t = 0.5)]
    pub mixup_prob: f64,
    #[arg(long, default_value_t = 0.5)]
    pub cutout_prob: f64,
    /// Use every labelled row (the same as --samples all-rows).
    #[arg(long, conflicts_with = "samples")]
    pub all_rows: bool,
    /// Training samples: per-spectrogram (the first row of each spectrogram, the reference),
    /// all-rows (every labelled row), or per-eeg (one sample per eeg_id and epoch: its rows'
    /// votes summed and normalised, the window one of its rows drawn each epoch; validation
    /// scores every row) [default: per-spectrogram; --quick: all-rows].
    #[arg(long, value_enum)]
    pub samples: Option<hbac_common::preprocess::SampleSelection>,
    /// Train on one-hot expert_consensus (reference parity) instead of vote distributions.
    #[arg(long)]
    pub one_hot: bool,
    /// Channel multiplier, < 1 for a reduced model [default: 1; --quick: 0.25].
    #[arg(long)]
    pub width: Option<f64>,
    /// Average-pool the input by this factor, > 1 for a reduced-resolution model [default: 1;
    /// --quick: 8].
    #[arg(long)]
    pub downsample: Option<usize>,
    /// BatchNorm momentum, Keras convention [default: the architecture's Keras value, 0.999
    /// for MobileNetV3, 0.9 for EfficientNetV2; --quick: 0.9]; lower it for very short runs.
    #[arg(long)]
    pub bn_momentum: Option<f64>,
    /// Initial weights when not pretrained: `torch` (U(±1/√fan_in), PyTorch's default) or
    /// `keras` (the reference Keras models' own initialisers per layer kind: glorot-uniform for
    /// MobileNetV3, He-normal fan-out for EfficientNetV2's convolutions) [default: torch; see
    /// the README's model-quality figures].
    #[arg(long)]
    pub init: Option<hbac_worker::model::InitScheme>,
    /// Stochastic depth of EfficientNetV2's residual blocks in training, as keras.applications
    /// builds it: block b (of 28) drops its branch with probability RATE × b / 21 (21: the
    /// stage table's repeats before depth scaling), so RATE < 0.7778; keras.applications uses
    /// 0.2; MobileNetV3 has none [default: 0, none].
    #[arg(long, default_value_t = 0.0)]
    pub drop_connect: f64,
    /// The image the models see: kaggle (the reference: Kaggle's spectrogram window,
    /// [3, 400, 300]), eeg (the EEG window's mel image from `hbac prepare --eeg`,
    /// [3, 512, 256]) or both (the two tiled side by side, [3, 512, 512]; README). The EEG
    /// images are computed into the cache first when missing.
    #[arg(long, value_enum, default_value_t = hbac_common::preprocess::Input::Kaggle)]
    pub input: hbac_common::preprocess::Input,
    /// Train only on rows with at least N annotator votes, all classes together (the
    /// validation fold keeps every row) [default: every row].
    #[arg(long, value_name = "N")]
    pub min_votes: Option<f64>,
    /// A second training stage after --epochs, as the top HMS solutions trained: from stage
    /// 1's best weights, with a fresh optimizer, on the training rows with at least N votes
    /// only; the job keeps the best epoch of either stage. Needs --stage2-epochs.
    #[arg(long, value_name = "N", requires = "stage2_epochs")]
    pub stage2_min_votes: Option<f64>,
    /// Epochs of the second stage.
    #[arg(long, value_name = "E", requires = "stage2_min_votes")]
    pub stage2_epochs: Option<usize>,
    /// Stage 2's peak learning rate: a cosine from it (no warm-up) to stage 1's floor over
    /// the stage's epochs [default: a tenth of stage 1's peak].
    #[arg(long, value_name = "LR", requires = "stage2_min_votes")]
    pub stage2_lr: Option<f64>,
    /// Threads building batches ahead of the training step.
    #[arg(long, default_value_t = 2)]
    pub loader_threads: usize,
    /// ImageNet weights for the backbone: timm's tf_mobilenetv3_large_100 or
    /// tf_efficientnetv2_b2 state dict (.safetensors or .pth), a path or URL. With several
    /// architectures give one per architecture, as ARCH=URL (repeat the flag, or separate
    /// with commas); a plain URL applies to every architecture without its own.
    #[arg(long, env = "HBAC_PRETRAINED", value_delimiter = ',')]
    pub pretrained: Vec<String>,
}

/// Where the coordinator is and how to prove we may talk to it.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The shared worker token.
    #[arg(long, env = "HBAC_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the shared worker token (e.g. a mounted Kubernetes Secret).
    #[arg(long, env = "HBAC_TOKEN_FILE")]
    pub token_file: Option<String>,
}

/// Scheduling rules shared by `coordinator` and `local`.
#[derive(Debug, Clone, Args)]
pub struct ScheduleArgs {
    /// Architectures, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "mobilenetv3-large,efficientnetv2-b2",
        env = "HBAC_ARCHS"
    )]
    pub archs: Vec<hbac_worker::model::Arch>,
    /// A lease not renewed for this many seconds expires; its job is re-queued.
    #[arg(long, default_value_t = 30.0)]
    pub lease_ttl: f64,
    /// Distinct workers a job may fail on (a retryable error, a timeout, a stalled trainer)
    /// before the run fails.
    #[arg(long, default_value_t = 3)]
    pub max_attempts: u32,
    /// Attempts of one job that may be lost with their worker (killed, pre-empted, shut down,
    /// drained) before the run fails; such losses never count as failures.
    #[arg(long, default_value_t = 20)]
    pub max_disruptions: u32,
    /// Hard limit on one attempt, in seconds.
    #[arg(long, default_value_t = 6.0 * 3600.0)]
    pub job_timeout: f64,
    /// Stop and re-queue an attempt whose heartbeats report no new training batch for this many
    /// seconds (a hung trainer; data preparation counts as no batch, so keep it generous).
    #[arg(long, default_value_t = 1800.0)]
    pub stall_timeout: f64,
    /// This coordinator's id in the run's journal [default: HOST-PID].
    #[arg(long = "id", env = "HBAC_COORDINATOR_ID")]
    pub coordinator_id: Option<String>,
    /// Fail the run when no worker has been connected for this many seconds.
    #[arg(long, default_value_t = 300.0)]
    pub worker_grace: f64,
    /// Serve the live dashboard at http://ADDR/, its JSON at /api/run and Prometheus metrics
    /// at /metrics [default: 127.0.0.1:8470, or any free port if that one is taken].
    #[arg(long = "http", alias = "metrics-addr", env = "HBAC_HTTP")]
    pub http: Option<std::net::SocketAddr>,
    /// The token the dashboard and its API ask for (`hbac coordinator`: the worker token by
    /// default; `hbac local`: none). /metrics stays open for Prometheus.
    #[arg(long, env = "HBAC_HTTP_TOKEN", hide_env_values = true)]
    pub http_token: Option<String>,
}

impl ScheduleArgs {
    /// Where and how to serve the dashboard; `token` is the default dashboard token.
    pub fn http(&self, token: Option<String>) -> hbac_coordinator::http::HttpConfig {
        hbac_coordinator::http::HttpConfig {
            addr: self.http.unwrap_or(hbac_coordinator::http::DEFAULT_ADDR),
            fallback: self.http.is_none(),
            token: self.http_token.clone().or(token),
        }
    }
}

#[derive(Debug, Args)]
pub struct CoordinatorArgs {
    /// Data set root (train.csv, spectrograms, optional test.csv): a path or URL every worker
    /// can read.
    #[arg(long, env = "HBAC_DATA")]
    pub data: String,
    /// Shared .npy cache [default: <data>/cache].
    #[arg(long, env = "HBAC_CACHE")]
    pub cache: Option<String>,
    /// Output root: journal, every job's files, submission.csv, report.json, cv.svg.
    #[arg(long, env = "HBAC_OUT")]
    pub out: String,
    /// gRPC address; anything but loopback must be asked for (e.g. 0.0.0.0:50051 in a pod).
    #[arg(long, default_value = "127.0.0.1:50051", env = "HBAC_LISTEN")]
    pub listen: std::net::SocketAddr,
    #[command(flatten)]
    pub token: TokenArgs,
    #[command(flatten)]
    pub schedule: ScheduleArgs,
    #[command(flatten)]
    pub recipe: RecipeArgs,
    /// TLS certificate and key (PEM) to serve gRPC over TLS.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<String>,
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<String>,
    /// Require client certificates signed by this CA (mutual TLS).
    #[arg(long, requires = "tls_cert")]
    pub tls_client_ca: Option<String>,
    /// Serve plain-text gRPC on a non-loopback --listen address, on purpose (a trusted cluster
    /// network, e.g. behind k8s/'s NetworkPolicy); without it such an address needs TLS.
    #[arg(long)]
    pub plaintext: bool,
    /// Seconds to keep telling workers to stop after the run ends.
    #[arg(long, default_value_t = 10.0)]
    pub linger: f64,
    /// Files read at once.
    #[arg(long, default_value_t = default_jobs())]
    pub jobs: usize,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The coordinator, e.g. http://hbac-coordinator:50051 (https:// with TLS).
    #[arg(long, env = "HBAC_COORDINATOR")]
    pub coordinator: String,
    #[command(flatten)]
    pub token: TokenArgs,
    /// This worker's name in logs and status [default: host name and process id].
    #[arg(long, env = "HBAC_WORKER_ID")]
    pub id: Option<String>,
    /// Jobs at once: one per GPU.
    #[arg(long, default_value_t = 1, env = "HBAC_GPUS")]
    pub gpus: usize,
    /// cpu, cuda (a build with `--features cuda` and an NVIDIA driver) or wgpu (a build with
    /// `--features wgpu` and a Vulkan / Metal / DX12 GPU).
    #[arg(long, value_enum, default_value_t = crate::backend::DeviceKind::Cpu, env = "HBAC_DEVICE")]
    pub device: crate::backend::DeviceKind,
    #[command(flatten)]
    pub tls: ClientTlsArgs,
    /// Seconds to keep retrying an unreachable coordinator before giving up.
    #[arg(long, default_value_t = 120.0)]
    pub patience: f64,
    /// Storage roots this worker may read and write (data, cache, run output, pretrained
    /// weights), repeatable or comma-separated: a job order naming any other URL is refused.
    /// [default: any]
    #[arg(
        long = "storage-root",
        value_delimiter = ',',
        env = "HBAC_STORAGE_ROOTS"
    )]
    pub storage_roots: Vec<String>,
}

/// `hbac worker`'s exit code after `hbac drain` (0 means the run is over; 1 an error or a
/// signal).
pub const DRAINED_EXIT_CODE: u8 = 3;

/// `hbac coordinator`'s (and `hbac local`'s) exit code when the run failed for good (1 is any
/// other error, e.g. unreadable data, which a restart may get past).
pub const RUN_FAILED_EXIT_CODE: u8 = 4;

#[derive(Debug, Args)]
pub struct LocalArgs {
    /// Data set root [default: a synthetic data set generated into <out>/data, with --quick].
    #[arg(long, env = "HBAC_DATA")]
    pub data: Option<String>,
    /// .npy cache [default: <data>/cache].
    #[arg(long, env = "HBAC_CACHE")]
    pub cache: Option<String>,
    /// Output directory or URL.
    #[arg(long, default_value = "hbac-run")]
    pub out: String,
    /// In-process workers (each trains one job at a time).
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Patients in the generated synthetic data set (without --data).
    #[arg(long, default_value_t = 40)]
    pub patients: usize,
    #[command(flatten)]
    pub schedule: ScheduleArgs,
    #[command(flatten)]
    pub recipe: RecipeArgs,
    /// cpu, cuda (a build with `--features cuda` and an NVIDIA driver) or wgpu (a build with
    /// `--features wgpu` and a Vulkan / Metal / DX12 GPU).
    #[arg(long, value_enum, default_value_t = crate::backend::DeviceKind::Cpu, env = "HBAC_DEVICE")]
    pub device: crate::backend::DeviceKind,
    /// Files read or converted at once.
    #[arg(long, default_value_t = default_jobs())]
    pub jobs: usize,
    /// Keep serving the dashboard after the run ends, until Ctrl-C.
    #[arg(long)]
    pub serve: bool,
    /// The in-process workers' name in logs, status and the dashboard; each gets -N appended.
    #[arg(long = "worker-id", default_value = "local", env = "HBAC_WORKER_ID")]
    pub worker_id: String,
}

/// How an operator's command (`status`, `drain`) reaches a coordinator.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The coordinator, e.g. http://127.0.0.1:50051.
    #[arg(
        long,
        env = "HBAC_COORDINATOR",
        default_value = "http://127.0.0.1:50051"
    )]
    pub coordinator: String,
    #[command(flatten)]
    pub token: TokenArgs,
    #[command(flatten)]
    pub tls: ClientTlsArgs,
}

/// TLS towards a coordinator, for every client role (`worker`, `status`, `drain`).
#[derive(Debug, Clone, Args)]
pub struct ClientTlsArgs {
    /// CA certificate (PEM) to verify a TLS coordinator.
    #[arg(long)]
    pub tls_ca: Option<String>,
    /// Client certificate and key (PEM) for mutual TLS.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<String>,
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<String>,
    /// Talk plain-text gRPC to a coordinator that is not on loopback, on purpose (a trusted
    /// cluster network); without it an http:// URL must name a loopback host.
    #[arg(long)]
    pub plaintext: bool,
}

impl ClientTlsArgs {
    /// Refuses plain text off loopback unless `--plaintext` asks for it.
    pub fn check_transport(&self, coordinator: &str) -> Result<(), String> {
        let tls = self.tls_ca.is_some() || self.tls_cert.is_some();
        let url = url::Url::parse(coordinator).map_err(|e| format!("{coordinator}: {e}"))?;
        let loopback = match url.host() {
            Some(url::Host::Domain(d)) => d == "localhost",
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        };
        if url.scheme() == "http" && !tls && !loopback && !self.plaintext {
            return Err(format!(
                "{coordinator} is plain text to a host that is not loopback: use https:// with                  --tls-ca (and --tls-cert/--tls-key for mutual TLS), or pass --plaintext on purpose"
            ));
        }
        Ok(())
    }
}

impl CoordinatorArgs {
    /// Refuses to serve plain text off loopback unless `--plaintext` asks for it.
    pub fn check_transport(&self) -> Result<(), String> {
        if self.tls_cert.is_none() && !self.listen.ip().is_loopback() && !self.plaintext {
            return Err(format!(
                "--listen {} is not loopback and no --tls-cert is given: serve TLS, or pass                  --plaintext to serve plain text on purpose",
                self.listen
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Print the status as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The run's output root (a path or URL, as given to --out).
    pub run: String,
    /// Where to write the page [default: report.html in the run's output root].
    #[arg(long)]
    pub to: Option<String>,
}

#[derive(Debug, Args)]
pub struct DrainArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    /// The worker's id, as `hbac status` shows it.
    #[arg(long)]
    pub worker: String,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("model").required(true).args(["checkpoint", "run"])))]
pub struct PredictArgs {
    /// One training job's output directory (holds checkpoint.mpk and config.json).
    #[arg(long)]
    pub checkpoint: Option<String>,
    /// A finished run's output root: its whole ensemble (every job's best checkpoint, folds
    /// averaged per architecture, architectures blended with the weights in report.json).
    #[arg(long)]
    pub run: Option<String>,
    /// Data set root holding test.csv and test_spectrograms/.
    #[arg(long, env = "HBAC_DATA")]
    pub data: String,
    /// .npy cache root [default: <data>/cache].
    #[arg(long, env = "HBAC_CACHE")]
    pub cache: Option<String>,
    /// Output submission CSV (path or URL).
    #[arg(long, default_value = "submission.csv")]
    pub out: String,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    #[arg(long, default_value_t = default_jobs())]
    pub jobs: usize,
    /// cpu, cuda (a build with `--features cuda` and an NVIDIA driver) or wgpu (a build with
    /// `--features wgpu` and a Vulkan / Metal / DX12 GPU).
    #[arg(long, value_enum, default_value_t = crate::backend::DeviceKind::Cpu, env = "HBAC_DEVICE")]
    pub device: crate::backend::DeviceKind,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("model").required(true).args(["checkpoint", "run"])))]
pub struct ExportArgs {
    /// One training job's output directory (holds checkpoint.mpk and config.json).
    #[arg(long)]
    pub checkpoint: Option<String>,
    /// A finished run's output root: every job's model as <job>.onnx, and ensemble.json.
    #[arg(long)]
    pub run: Option<String>,
    /// The file format.
    #[arg(long, value_enum, default_value_t = ExportFormat::Onnx)]
    pub format: ExportFormat,
    /// Where to write (path or URL): the model file for --checkpoint [default: model.onnx], the
    /// folder for --run [default: onnx].
    #[arg(long)]
    pub out: Option<String>,
}

/// Formats `hbac export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// ONNX, operator set 17: input `input` [N, 3, H, W] float32, output `probabilities` [N, 6].
    Onnx,
}
