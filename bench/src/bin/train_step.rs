//! Training throughput: samples/s of full training steps (forward, Keras KL loss, backward,
//! Adam update) on random `[batch, 3, 400, 300]` inputs, for both architectures, on burn's CPU
//! backend (flex), through hbac's fused ops (or, with `--path stock`, burn's stock ops).
//!
//! `cargo run --release -p hbac-bench --bin train_step -- [--batch 8] [--steps 3] [--width 1.0]
//! [--arch NAME] [--path fused|stock]`

use std::time::Instant;

use anyhow::Result;
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::{Distribution, Tensor};
use clap::Parser;
use hbac_worker::model::layers::Path;
use hbac_worker::model::{Arch, Model, ModelConfig};
use hbac_worker::train::loss::keras_kl;

type B = burn::backend::Autodiff<burn::backend::Flex>;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Timed steps per architecture (after one warm-up step).
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
    let device = Default::default();
    let path = match args.path.as_str() {
        "fused" => Path::Fused,
        "stock" => Path::Stock,
        other => anyhow::bail!("--path must be fused or stock, not {other:?}"),
    };
    println!(
        "train_step backend=flex path={} batch={} input=[3,400,300] width={} threads={}",
        args.path,
        args.batch,
        args.width,
        rayon::current_num_threads()
    );
    let archs = args.arch.map(|a| vec![a]).unwrap_or(Arch::ALL.to_vec());
    for arch in archs {
        let mut model: Model<B> = ModelConfig::new(arch).with_width(args.width).init(&device);
        let mut optim = AdamConfig::new().with_epsilon(1e-7).init::<B, Model<B>>();
        let x = Tensor::<B, 4>::random(
            [args.batch, 3, 400, 300],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let y = burn::tensor::activation::softmax(
            Tensor::<B, 2>::random([args.batch, 6], Distribution::Default, &device),
            1,
        );
        let mut times = Vec::new();
        for step in 0..=args.steps {
            let start = Instant::now();
            let loss = keras_kl(model.forward_on(x.clone(), path), y.clone());
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(1e-4, model, grads);
            if step > 0 {
                times.push(start.elapsed().as_secs_f64());
            }
        }
        let mean = times.iter().sum::<f64>() / times.len() as f64;
        println!(
            "train_step arch={arch} step_seconds={:?} samples_per_s={:.2}",
            times
                .iter()
                .map(|t| (t * 1000.0).round() / 1000.0)
                .collect::<Vec<_>>(),
            args.batch as f64 / mean
        );
    }
    Ok(())
}
