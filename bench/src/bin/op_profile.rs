//! Per-op time breakdown of one training step of each architecture on the CPU (flex), burn's
//! stock ops against hbac's fused ops, in one run, full-size models at `[batch, 3, 400, 300]`:
//!
//! * stock (burn 0.21's `Conv2d` → `BatchNorm` → activation): every conv layer timed alone
//!   (forward, then the backward of `Σ y · r` less that of the product itself), grouped by kind,
//!   squeeze-excite blocks likewise, and the whole step measured;
//! * fused (hbac's ops): every kernel's wall time inside a real training step
//!   ([`hbac_worker::ops::profile`]); "burn ops" is the rest of the step (squeeze-excite,
//!   residual adds, pooling, the head, the loss, Adam, autodiff bookkeeping).
//!
//! `cargo run --release -p hbac-bench --bin op_profile -- [--batch 8] [--arch NAME]`

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Result;
use burn::backend::{Autodiff, Flex};
use burn::module::Param;
use burn::tensor::{Distribution, Tensor};
use clap::Parser;
use hbac_worker::model::layers::{BnSpec, ConvBn, ConvSpec, LayerShape, Path, SqueezeExcite};
use hbac_worker::model::{Arch, Backbone, Model, ModelConfig};
use hbac_worker::ops;
use hbac_worker::train::bench::{StepBench, train_steps};

type B = Autodiff<Flex>;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// One architecture only (default: both).
    #[arg(long)]
    arch: Option<Arch>,
}

/// Seconds of (forward, backward).
type Times = [f64; 2];

fn kind(s: &LayerShape) -> String {
    let g = s.geom;
    if g.depthwise {
        format!("depthwise {k}x{k} s{}", g.stride, k = g.kernel)
    } else if g.is_pointwise() {
        "pointwise 1x1".into()
    } else if s.cin == 3 {
        format!("stem {k}x{k} s{}", g.stride, k = g.kernel)
    } else {
        format!("dense {k}x{k} s{}", g.stride, k = g.kernel)
    }
}

fn time_layer(s: &LayerShape, batch: usize, path: Path) -> Times {
    let device = Default::default();
    let spec = if s.geom.depthwise {
        ConvSpec::depthwise(s.cin, s.geom.kernel, s.geom.stride, s.act)
    } else {
        ConvSpec::dense(s.cin, s.cout, s.geom.kernel, s.geom.stride, s.act)
    };
    let bn = BnSpec {
        epsilon: 1e-3,
        momentum: 0.01,
    };
    let mut layer = ConvBn::<B>::new(spec, &bn, &device);
    layer.conv.weight = Param::from_tensor(Tensor::random(
        layer.conv.weight.dims(),
        Distribution::Normal(0.0, 0.1),
        &device,
    ));
    let [h, w] = s.input_hw;
    let x = Tensor::<B, 4>::random(
        [batch, s.cin, h, w],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    // The image needs no gradient; every later layer's input does.
    let x = if s.cin == 3 { x } else { x.require_grad() };
    let [ho, wo] = s.output_hw();
    let r = Tensor::<B, 4>::random([batch, s.cout, ho, wo], Distribution::Default, &device);
    let t = Instant::now();
    let y = layer.forward_on(x, path);
    let forward = t.elapsed().as_secs_f64();
    [forward, backward_of(y, r)]
}

/// Seconds of the backward pass of `Σ y · r` less that of the product and sum themselves
/// (timed on a leaf of the same shape), i.e. the backward of the layer that made `y`.
fn backward_of(y: Tensor<B, 4>, r: Tensor<B, 4>) -> f64 {
    let leaf = Tensor::<B, 4>::random(y.dims(), Distribution::Default, &y.device()).require_grad();
    let t = Instant::now();
    let _grads = (leaf * r.clone()).sum().backward();
    let overhead = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let _grads = (y * r).sum().backward();
    (t.elapsed().as_secs_f64() - overhead).max(0.0)
}

/// Multiply-accumulates of one forward pass of the layer over the batch.
fn macs(s: &LayerShape, batch: usize) -> f64 {
    let [ho, wo] = s.output_hw();
    let k = s.geom.kernel * s.geom.kernel;
    let per_output = if s.geom.depthwise { k } else { k * s.cin };
    (batch * s.cout * ho * wo * per_output) as f64
}

fn time_se(se: &SqueezeExcite<B>, batch: usize, hw: [usize; 2]) -> Times {
    let device = Default::default();
    let c = se.reduce.weight.dims()[1];
    let x = Tensor::<B, 4>::random([batch, c, hw[0], hw[1]], Distribution::Default, &device)
        .require_grad();
    let r = Tensor::<B, 4>::random([batch, c, hw[0], hw[1]], Distribution::Default, &device);
    let t = Instant::now();
    let y = se.forward(x);
    let forward = t.elapsed().as_secs_f64();
    [forward, backward_of(y, r)]
}

/// Squeeze-excite blocks and the size they run at.
fn se_blocks(model: &Model<B>, input_hw: [usize; 2]) -> Vec<(SqueezeExcite<B>, [usize; 2])> {
    let (stem, blocks) = match &model.backbone {
        Backbone::MobileNetV3(m) => (&m.stem, &m.blocks),
        Backbone::EfficientNetV2(m) => (&m.stem, &m.blocks),
    };
    let mut hw = stem.shape(input_hw).output_hw();
    let mut out = Vec::new();
    for b in blocks {
        let mut shapes = Vec::new();
        let next = b.layer_shapes(hw, &mut shapes);
        if let Some(se) = &b.se {
            out.push((se.clone(), next));
        }
        hw = next;
    }
    out
}

/// Seconds of the third of three training steps and, with `profile`, its kernel times.
fn step_seconds(
    arch: Arch,
    batch: usize,
    path: Path,
    profile: bool,
) -> (f64, Vec<(String, usize, f64)>) {
    let bench = StepBench {
        arch,
        width: 1.0,
        batch,
        warmup: 2,
        steps: 1,
        path,
    };
    let times = train_steps::<B>(&bench, &Default::default(), |step| {
        if profile && step == 2 {
            ops::profile::enable();
        }
    })
    .expect("the CPU does not fail");
    (
        times[0],
        if profile {
            ops::profile::take()
        } else {
            Vec::new()
        },
    )
}

fn main() -> Result<()> {
    hbac_worker::ops::cpu::retain_freed_memory();
    let args = Args::parse();
    let device = Default::default();
    println!(
        "op_profile backend=flex batch={} input=[3,400,300] threads={}",
        args.batch,
        rayon::current_num_threads()
    );
    let archs = args.arch.map(|a| vec![a]).unwrap_or(Arch::ALL.to_vec());
    for arch in archs {
        let model: Model<B> = ModelConfig::new(arch).init(&device);
        let mut rows: BTreeMap<String, (usize, [Times; 1])> = BTreeMap::new();
        let mut flops: BTreeMap<String, f64> = BTreeMap::new();
        for s in model.layer_shapes([400, 300]) {
            // Forward 2 · MACs; backward 2 · MACs per gradient (weight, and input but for the stem).
            let passes = if s.cin == 3 { 4.0 } else { 6.0 };
            *flops.entry(kind(&s)).or_default() += passes * macs(&s, args.batch);
            let row = rows.entry(kind(&s)).or_default();
            row.0 += 1;
            let t = time_layer(&s, args.batch, Path::Stock);
            row.1[0][0] += t[0];
            row.1[0][1] += t[1];
        }
        let se = rows.entry("squeeze-excite (stock ops)".into()).or_default();
        for (block, hw) in se_blocks(&model, [400, 300]) {
            se.0 += 1;
            let t = time_se(&block, args.batch, hw);
            se.1[0][0] += t[0];
            se.1[0][1] += t[1];
        }
        let stock_step = step_seconds(arch, args.batch, Path::Stock, false).0;
        println!("\n{arch}, stock: layers timed alone, seconds");
        println!(
            "{:<28} {:>5} {:>9} {:>9} {:>13}",
            "op", "count", "forward", "backward", "GFLOP/s"
        );
        let mut layers = 0.0;
        for (name, (count, t)) in &rows {
            let total = t[0][0] + t[0][1];
            layers += total;
            let rate = flops
                .get(name)
                .map_or(String::from("-"), |f| format!("{:.1}", f / total / 1e9));
            println!(
                "{name:<28} {count:>5} {:>9.3} {:>9.3} {rate:>13}",
                t[0][0], t[0][1]
            );
        }
        println!(
            "{:<28} {:>5} {:>19.3}",
            "rest (step - above)",
            "",
            stock_step - layers
        );
        println!(
            "{:<28} {:>5} {:>19.3}",
            "whole step (measured)", "", stock_step
        );

        let (fused_step, kernels) = step_seconds(arch, args.batch, Path::Fused, true);
        println!("\n{arch}, fused: kernels inside one training step, seconds");
        println!(
            "{:<46} {:>5} {:>9} {:>6}",
            "kernel", "calls", "seconds", "share"
        );
        let mut in_kernels = 0.0;
        for (name, calls, seconds) in &kernels {
            in_kernels += seconds;
            println!(
                "{name:<46} {calls:>5} {seconds:>9.3} {:>5.1}%",
                100.0 * seconds / fused_step
            );
        }
        let rest = fused_step - in_kernels;
        println!(
            "{:<46} {:>5} {rest:>9.3} {:>5.1}%",
            "burn ops (SE, adds, pool, head, loss, Adam, autodiff)",
            "",
            100.0 * rest / fused_step
        );
        println!(
            "{:<46} {:>5} {fused_step:>9.3}",
            "whole step (measured)", ""
        );
        println!(
            "{arch}: stock {stock_step:.3} s, fused {fused_step:.3} s per step: {:.1}x",
            stock_step / fused_step
        );
    }
    Ok(())
}
