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
    /// Assign scikit-learn-exact StratifiedGroupKFold folds to train.csv rows.
    Folds(FoldsArgs),
    /// Score a submission with the Kaggle KL divergence; the last line is `kl_divergence <value>`.
    Score(ScoreArgs),
    /// Inspect the model architectures.
    #[command(subcommand)]
    Model(ModelCommand),
}

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Print the layer table and the parameter counts (Keras convention: BatchNorm running
    /// statistics are non-trainable parameters).
    Summary(ModelSummaryArgs),
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
    /// EEG parquet files to write (schema examples).
    #[arg(long, default_value_t = 3)]
    pub eeg_files: usize,
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
        .with_writer(std::io::stderr);
    match global.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
