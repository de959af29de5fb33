//! Training throughput: samples/s of full training steps (forward, Keras KL loss, backward,
//! Adam update) on random `[batch, 3, 400, 300]` inputs, for both architectures, on burn's CPU
//! backend (flex), through hbac's fused ops (or, with `--path stock`, burn's stock ops).
//! `hbac model bench` runs the same steps on any device.
//!
//! `cargo run --release -p hbac-bench --bin train_step -- [--batch 8] [--steps 3] [--width 1.0]
//! [--arch NAME] [--path fused|stock]`

use anyhow::Result;
use clap::Parser;
use hbac_worker::model::Arch;
use hbac_worker::model::layers::Path;
use hbac_worker::train::bench::{StepBench, report, train_steps};

type B = burn::backend::Autodiff<burn::backend::Flex>;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Timed steps per architecture (after two warm-up steps).
    #[arg(long, default_value_t = 3)]
    steps: usize,
    #[arg(long, default_value_t = 1.0)]
    width: f64,
    /// One architecture only (default: both).
    #[arg(long)]
    arch: Option<Arch>,
    /// Run the conv layers on hbac's fused ops or on burn's stock ops.
    #[arg(long, default_value = "fused")]
    path: String,
}

fn main() -> Result<()> {
    hbac_worker::ops::cpu::retain_freed_memory();
    let args = Args::parse();
    let path: Path = args.path.parse().map_err(anyhow::Error::msg)?;
    println!(
        "train_step backend=flex path={} batch={} input=[3,400,300] width={} threads={}",
        args.path,
        args.batch,
        args.width,
        rayon::current_num_threads()
    );
    for arch in args.arch.map_or(Arch::ALL.to_vec(), |a| vec![a]) {
        let bench = StepBench {
            arch,
            width: args.width,
            batch: args.batch,
            warmup: 2,
            steps: args.steps,
            path,
        };
        let times =
            train_steps::<B>(&bench, &Default::default(), |_| {}).map_err(anyhow::Error::msg)?;
        println!("{}", report(&bench, &times));
    }
    Ok(())
}
