"""Keras' side of a step-by-step comparison with hbac from identical weights (issue 17): builds the
model of bench/quality_keras.py (no stochastic depth, BatchNorm momentum 0.9), draws `--steps`
batches, and writes

    OUT/keras_start.safetensors  the initial weights under timm's names (what `hbac train
                                 --pretrained` reads), the 6-way head as classifier.weight/bias,
                                 and the batches as batch.<i>.x (NCHW) and batch.<i>.y (vote
                                 distributions): random pixels in [0, 255) and random
                                 distributions, or with `--data` the training windows of fold 0
                                 as quality_keras.py loads them (standardised spectrograms, so
                                 the stem sees inputs of standard deviation 1/255, the regime of
                                 real training), with `--augment` through its MixUp and cutouts;
    OUT/keras_result.safetensors step 0's loss, softmax outputs and every gradient (grad.<key>, in
                                 timm's layout), each step's loss (losses), and after the last
                                 step the BatchNorm running statistics (after.<key>) and the
                                 inference-mode outputs on batch 0 (eval_probs).

Then `cargo run --release -p hbac-bench --bin keras_step -- OUT` runs the same steps in hbac and
prints both sides. Adam (ε 1e-7) at `--lr`, Keras' KLDivergence, no stochastic depth (the
batches are augmented before they are saved, so both sides train on the same ones).

    python bench/quality_step.py --out DIR [--arch efficientnetv2-b2] [--batch 8] [--steps 10]
        [--lr 1.92e-4] [--seed 42] [--threads 2] [--data DIR [--augment]]

EfficientNetV2-B2 only: MobileNetV3's Keras model (KerasCV) already lands inside Keras' spread.
"""

import argparse
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# The B-series stages: 0 is a fused block without expansion, 1–2 fused, 3–5 MBConv (timm names).
FUSED_PLAIN = {"project_conv": "conv", "project_bn": "bn1"}
FUSED = {"expand_conv": "conv_exp", "expand_bn": "bn1", "project_conv": "conv_pwl",
         "project_bn": "bn2"}
MBCONV = {"expand_conv": "conv_pw", "expand_bn": "bn1", "dwconv2": "conv_dw", "bn": "bn2",
          "se_reduce": "se.conv_reduce", "se_expand": "se.conv_expand",
          "project_conv": "conv_pwl", "project_bn": "bn3"}
LEAF = {"kernel": "weight", "bias": "bias", "gamma": "weight", "beta": "bias",
        "moving_mean": "running_mean", "moving_variance": "running_var"}


def timm_prefix(layer_name):
    """timm's module name for a keras.applications EfficientNetV2 layer."""
    fixed = {"stem_conv": "conv_stem", "stem_bn": "bn1", "top_conv": "conv_head",
             "top_bn": "bn2"}
    if layer_name in fixed:
        return fixed[layer_name]
    m = re.fullmatch(r"block(\d+)([a-z])_(\w+)", layer_name)
    if not m:
        return None
    stage, index, part = int(m.group(1)) - 1, ord(m.group(2)) - ord("a"), m.group(3)
    table = FUSED_PLAIN if stage == 0 else FUSED if stage < 3 else MBCONV
    return f"blocks.{stage}.{index}.{table[part]}" if part in table else None


def to_timm(kind, value):
    """A Keras weight (or gradient) in timm's / burn's layout."""
    if kind == "conv":  # (kh, kw, in, out) -> (out, in, kh, kw)
        return np.ascontiguousarray(value.transpose(3, 2, 0, 1))
    if kind == "depthwise":  # (kh, kw, c, 1) -> (c, 1, kh, kw)
        return np.ascontiguousarray(value.transpose(2, 3, 0, 1))
    if kind == "dense":  # (in, out) -> (out, in)
        return np.ascontiguousarray(value.T)
    return np.ascontiguousarray(value)


def named_variables(model):
    """(timm key, layout kind, variable) for every weight of the model."""
    import keras

    out = []
    backbone = next(l for l in model.layers if isinstance(l, keras.Model))
    for layer in backbone.layers:
        prefix = timm_prefix(layer.name)
        if not layer.weights:
            continue
        if prefix is None:
            raise SystemExit(f"no timm name for Keras layer {layer.name}")
        kind = ("depthwise" if isinstance(layer, keras.layers.DepthwiseConv2D)
                else "conv" if isinstance(layer, keras.layers.Conv2D) else "vector")
        for v in layer.weights:
            leaf = v.name.split("/")[-1]
            if leaf == "depthwise_kernel":
                leaf = "kernel"
            out.append((f"{prefix}.{LEAF[leaf]}", kind if leaf == "kernel" else "vector", v))
    dense = model.layers[-1]
    for v in dense.weights:
        leaf = v.name.split("/")[-1]
        out.append((f"classifier.{LEAF[leaf]}", "dense" if leaf == "kernel" else "vector", v))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--arch", default="efficientnetv2-b2", choices=["efficientnetv2-b2"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--lr", type=float, default=1.92e-4)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", help="a quality_data.py set: real windows instead of random pixels")
    ap.add_argument("--augment", action="store_true", help="with --data: MixUp and cutouts")
    a = ap.parse_args()
    from quality_keras import augment, build, fold_rows, load, tensorflow_cpu

    tf = tensorflow_cpu(a.threads)
    import keras
    from safetensors.numpy import save_file

    keras.utils.set_random_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    model = build(a.arch, 0.9, 0.0)
    variables = named_variables(model)
    start = {key: to_timm(kind, v.numpy()) for key, kind, v in variables}
    batches = []
    if a.data:
        (tr, ytr), _ = fold_rows(a.data, 0)
        take = rng.permutation(len(tr))[: a.batch * a.steps]
        windows = load(a.data, tr.iloc[take])
    for i in range(a.steps):
        if a.data:
            part = slice(i * a.batch, (i + 1) * a.batch)
            x, y = windows[part], ytr[take[part]]
            if a.augment:
                x, y = augment(rng, x, y)
        else:
            x = rng.uniform(0, 255, size=(a.batch, 400, 300, 3)).astype(np.float32)
            y = rng.exponential(1.0, size=(a.batch, 6)).astype(np.float32)
            y /= y.sum(axis=1, keepdims=True)
        batches.append((x, y))
        start[f"batch.{i}.x"] = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        start[f"batch.{i}.y"] = y
    os.makedirs(a.out, exist_ok=True)
    save_file(start, os.path.join(a.out, "keras_start.safetensors"))

    trainable = [v for v in model.trainable_variables]
    by_id = {id(v): (key, kind) for key, kind, v in variables}
    opt = keras.optimizers.Adam(learning_rate=a.lr, epsilon=1e-7)
    kl = keras.losses.KLDivergence()
    result, losses = {}, []
    for i, (x, y) in enumerate(batches):
        with tf.GradientTape() as tape:
            probs = model(x, training=True)
            loss = kl(y, probs)
        grads = tape.gradient(loss, trainable)
        if i == 0:
            result["loss"] = np.array([float(loss)], dtype=np.float32)
            result["probs"] = probs.numpy()
            for v, g in zip(trainable, grads):
                key, kind = by_id[id(v)]
                result[f"grad.{key}"] = to_timm(kind, g.numpy())
        opt.apply_gradients(zip(grads, trainable))
        losses.append(float(loss))
        print(f"keras step {i} loss {float(loss):.6f}", flush=True)
    result["losses"] = np.array(losses, dtype=np.float32)
    for key, kind, v in variables:
        if key.endswith("running_mean") or key.endswith("running_var"):
            result[f"after.{key}"] = to_timm(kind, v.numpy())
    result["eval_probs"] = model(batches[0][0], training=False).numpy()
    save_file(result, os.path.join(a.out, "keras_result.safetensors"))
    print(f"wrote {a.out}/keras_start.safetensors and keras_result.safetensors "
          f"({len(variables)} tensors, {len(trainable)} trainable)")


if __name__ == "__main__":
    main()
