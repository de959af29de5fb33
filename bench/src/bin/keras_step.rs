//! hbac's side of the step-by-step comparison with Keras from identical weights (issue 17):
//! reads what `bench/quality_step.py` wrote (the Keras model's initial weights under timm's
//! names, its head, the batches, and Keras' results), runs the same Adam steps on the CPU
//! (flex) through hbac's fused ops or burn's stock ops, and prints, side by side: step 0's
//! loss, outputs and per-tensor gradient differences, every step's loss, and after the last
//! step the BatchNorm running statistics and the inference-mode outputs.
//!
//! `cargo run --release -p hbac-bench --bin keras_step -- DIR [--lr 1.92e-4] [--path fused|stock]`

use std::collections::HashMap;

use anyhow::{Context, Result};
use burn::module::{AutodiffModule, Param};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::{ElementConversion, Tensor, TensorData};
use burn_store::ModuleSnapshot;
use clap::Parser;
use hbac_worker::model::layers::Path;
use hbac_worker::model::pretrained::{Pretrained, timm_names};
use hbac_worker::model::{Arch, InitScheme, Model, ModelConfig};
use hbac_worker::train::bench::{StepGradients, compare_steps, gradients};
use hbac_worker::train::loss::keras_kl;

type B = burn::backend::Autodiff<burn::backend::Flex>;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    /// The folder `bench/quality_step.py --out` wrote.
    dir: std::path::PathBuf,
    /// Adam's learning rate (the Keras side's `--lr`).
    #[arg(long, default_value_t = 1.92e-4)]
    lr: f64,
    /// Run the conv layers on hbac's fused ops or on burn's stock ops.
    #[arg(long, default_value = "fused")]
    path: String,
}

fn read(path: &std::path::Path) -> Result<Pretrained> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Pretrained::parse(&path.display().to_string(), bytes)?)
}

fn take(map: &mut Pretrained, key: &str) -> Result<TensorData> {
    map.tensors
        .remove(key)
        .with_context(|| format!("{}: no tensor {key}", map.source))
}

fn values(d: &TensorData) -> Result<Vec<f32>> {
    d.clone()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("{e:?}"))
}

/// `‖b − a‖ / ‖a‖`.
fn rel(a: &[f32], b: &[f32]) -> f64 {
    let (mut d, mut n) = (0f64, 0f64);
    for (&p, &q) in a.iter().zip(b) {
        d += (p as f64 - q as f64).powi(2);
        n += (p as f64).powi(2);
    }
    d.sqrt() / n.sqrt().max(1e-30)
}

fn max_abs(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&p, &q)| (p as f64 - q as f64).abs())
        .fold(0.0, f64::max)
}

fn main() -> Result<()> {
    hbac_worker::ops::cpu::retain_freed_memory();
    let args = Args::parse();
    let path: Path = args.path.parse().map_err(anyhow::Error::msg)?;
    let device = Default::default();
    let mut start = read(&args.dir.join("keras_start.safetensors"))?;
    let mut keras = read(&args.dir.join("keras_result.safetensors"))?;

    // The batches, then the head (timm layout [out, in]; burn's Linear holds [in, out]).
    let mut batches = Vec::new();
    while let Some(x) = start.tensors.remove(&format!("batch.{}.x", batches.len())) {
        let y = take(&mut start, &format!("batch.{}.y", batches.len()))?;
        batches.push((
            Tensor::<B, 4>::from_data(x.convert::<f32>(), &device),
            Tensor::<B, 2>::from_data(y.convert::<f32>(), &device),
        ));
    }
    let head_w = Tensor::<B, 2>::from_data(
        take(&mut start, "classifier.weight")?.convert::<f32>(),
        &device,
    )
    .transpose();
    let head_b = Tensor::<B, 1>::from_data(
        take(&mut start, "classifier.bias")?.convert::<f32>(),
        &device,
    );
    let config = ModelConfig::new(Arch::EfficientNetV2B2)
        .with_bn_momentum(Some(0.9))
        .with_init(Some(InitScheme::Keras));
    let mut model: Model<B> = start.apply(config.init_seeded(0, &device), &config)?;
    model.head.weight = Param::from_tensor(head_w);
    model.head.bias = Some(Param::from_tensor(head_b));

    // Our parameter paths → timm keys; the visitor's paths may carry the enum variant.
    let mut names: HashMap<String, String> = timm_names(&model.backbone).into_iter().collect();
    names.insert("head.weight".into(), "classifier.weight".into());
    names.insert("head.bias".into(), "classifier.bias".into());
    let timm = |ours: &str| -> Option<String> {
        names.get(ours).cloned().or_else(|| {
            let plain: Vec<&str> = ours.split('.').filter(|s| *s != "EfficientNetV2").collect();
            names.get(&plain.join(".")).cloned()
        })
    };

    let mut optim = AdamConfig::new().with_epsilon(1e-7).init::<B, Model<B>>();
    let keras_losses = values(&take(&mut keras, "losses")?)?;
    println!(
        "keras_step arch=efficientnetv2-b2 path={} batch={} steps={} lr={}",
        args.path,
        batches[0].0.dims()[0],
        batches.len(),
        args.lr
    );
    for (i, (x, y)) in batches.iter().enumerate() {
        let probs_logits = model.forward_on(x.clone(), path);
        let loss = keras_kl(probs_logits.clone(), y.clone());
        let loss_value = loss.clone().into_scalar().elem::<f64>();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        if i == 0 {
            let ours = StepGradients {
                loss: loss_value,
                grads: gradients(&model, &grads).map_err(anyhow::Error::msg)?,
            };
            let mut theirs = StepGradients {
                loss: values(&take(&mut keras, "loss")?)?[0] as f64,
                grads: Vec::new(),
            };
            for (name, g) in &ours.grads {
                let key = timm(name).with_context(|| format!("no timm key for {name}"))?;
                let mut k = values(&take(&mut keras, &format!("grad.{key}"))?)?;
                if key == "classifier.weight" {
                    // [out, in] → [in, out]
                    let (o, n) = (6, g.len() / 6);
                    k = (0..n * o).map(|j| k[(j % o) * n + j / o]).collect();
                }
                theirs.grads.push((name.clone(), k));
            }
            let probs = burn::tensor::activation::softmax(probs_logits.inner(), 1);
            let probs = values(&probs.into_data())?;
            let kp = values(&take(&mut keras, "probs")?)?;
            println!(
                "step 0: loss keras {:.6} hbac {:.6}; softmax outputs max |diff| {:.2e}",
                theirs.loss,
                ours.loss,
                max_abs(&kp, &probs)
            );
            let c = compare_steps(&theirs, &ours).map_err(anyhow::Error::msg)?;
            println!(
                "step 0 gradients: {} tensors, ‖hbac − keras‖/‖keras‖ median {:.2e}, worst {:.2e} ({})",
                c.params, c.grad_rel_median, c.grad_rel_max, c.worst
            );
            let mut per: Vec<(f64, String, f64, f64)> = theirs
                .grads
                .iter()
                .zip(&ours.grads)
                .map(|((name, k), (_, h))| {
                    let norm = |v: &[f32]| v.iter().map(|&a| (a as f64).powi(2)).sum::<f64>();
                    (
                        rel(k, h),
                        timm(name).unwrap_or_default(),
                        norm(k).sqrt(),
                        norm(h).sqrt(),
                    )
                })
                .collect();
            per.sort_by(|a, b| b.0.total_cmp(&a.0));
            println!("  the 15 furthest (rel. diff, timm key, ‖keras‖, ‖hbac‖):");
            for (r, key, nk, nh) in per.iter().take(15) {
                println!("  {r:.3e} {key} {nk:.4e} {nh:.4e}");
            }
            let ratio: f64 =
                per.iter().map(|p| p.3 / p.2.max(1e-30)).sum::<f64>() / per.len() as f64;
            println!("  mean ‖hbac‖/‖keras‖ over tensors {ratio:.4}");
        }
        model = optim.step(args.lr, model, grads);
        println!(
            "step {i} loss keras {:.6} hbac {:.6} (hbac/keras {:.4})",
            keras_losses.get(i).copied().unwrap_or(f32::NAN),
            loss_value,
            loss_value / keras_losses.get(i).copied().unwrap_or(f32::NAN) as f64
        );
    }

    // After the last step: running statistics (read from the inference model: `valid` folds
    // in the last step's pending update, as the trainer's validation does) and outputs.
    let eval = model.valid();
    let mut stats: Vec<(f64, String)> = Vec::new();
    for s in eval.collect(None, None, true) {
        let ours = s.full_path();
        if !(ours.ends_with("running_mean") || ours.ends_with("running_var")) {
            continue;
        }
        let key = timm(&ours).with_context(|| format!("no timm key for {ours}"))?;
        let k = values(&take(&mut keras, &format!("after.{key}"))?)?;
        let h = values(&s.to_data().map_err(|e| anyhow::anyhow!("{e:?}"))?)?;
        if std::env::var_os("KERAS_STEP_VERBOSE").is_some() {
            println!(
                "  {key}: keras {:?} hbac {:?}",
                &k[..4.min(k.len())],
                &h[..4.min(h.len())]
            );
        }
        stats.push((rel(&k, &h), key));
    }
    stats.sort_by(|a, b| b.0.total_cmp(&a.0));
    let median = stats.get(stats.len() / 2).map_or(0.0, |s| s.0);
    println!(
        "running statistics after {} steps: {} tensors, rel. diff median {median:.2e}; furthest:",
        batches.len(),
        stats.len()
    );
    for (r, key) in stats.iter().take(8) {
        println!("  {r:.3e} {key}");
    }
    let x0 = batches[0].0.clone().inner();
    let y0 = batches[0].1.clone().inner();
    let logits = eval.forward_on(x0, path);
    let kl = keras_kl(logits.clone(), y0.clone())
        .into_scalar()
        .elem::<f64>();
    let probs = values(&burn::tensor::activation::softmax(logits, 1).into_data())?;
    let kp = values(&take(&mut keras, "eval_probs")?)?;
    let kp_t = Tensor::<burn::backend::Flex, 2>::from_data(
        TensorData::new(kp.clone(), [kp.len() / 6, 6]),
        &device,
    );
    let keras_kl_eval = keras_kl(kp_t.log(), y0).into_scalar().elem::<f64>();
    println!(
        "inference on batch 0 after {} steps: KL keras {keras_kl_eval:.6} hbac {kl:.6}; outputs max |diff| {:.2e}",
        batches.len(),
        max_abs(&kp, &probs)
    );
    Ok(())
}
