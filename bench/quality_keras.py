"""The reference recipe (the KerasCV starter, as the original project ran it) in Keras 3 on
TensorFlow, for one architecture, fold and seed: the Keras side of bench/quality.sh.

    python bench/quality_keras.py --data DIR --arch mobilenetv3-large|efficientnetv2-b2 \
        --seed 42 --out DIR [--fold 0] [--k 5] [--epochs 13] [--batch 32] [--bn-momentum 0.9] \
        [--threads 2] [--drop-connect 0.2] [--adam keras|torch]

The same data path as `hbac train` on its defaults (../shared/HMS.md): the first train.csv row
of each spectrogram, `fillna(0)`, window `offset = spectrogram_label_offset_seconds // 2` rows of
300 zero-padded, clip to [e^-4, e^8], ln, per-sample standardisation, three channels; targets
the vote distributions; folds from scikit-learn's StratifiedGroupKFold(k, shuffle=True,
random_state=42) over every row on expert_consensus grouped by patient_id, as the starter
and hbac split. Per batch, each with probability 0.5: MixUp (Beta(2, 2) per sample, partner
from a permutation), a time cutout and a frequency cutout (6–10 % of the axis per sample,
zero). Adam (epsilon 1e-7; `--adam torch` puts it where PyTorch and hbac do), Keras'
KLDivergence, the reference learning rate per epoch at this batch size. Models: KerasCV's
MobileNetV3-Large backbone (as bench/anchors_cpu.py builds it) or keras.applications'
EfficientNetV2-B2 (KerasCV's architecture and initialisers; its stochastic depth,
`--drop-connect`, 0.2 as in both), each with 1/255 rescaling in front, global average pooling
and a softmax Dense(6); every BatchNormalization's momentum set to `--bn-momentum`.

Prints one line per epoch, then `best_val_kl`, `best_epoch`, `oof_kaggle_kl` (the best epoch's
validation predictions, Kaggle's metric), and writes OUT/oof.csv (eeg_id, the six vote columns,
fold, label_id: the layout of hbac's oof.csv) and OUT/result.json.
"""

import argparse
import json
import math
import os
import time

import numpy as np
import pandas as pd

VOTES = ["seizure_vote", "lpd_vote", "gpd_vote", "lrda_vote", "grda_vote", "other_vote"]


def lr_at(epoch, epochs, batch):
    start, top, low, warm = 5e-5, 6e-6 * batch, 1e-5, 3
    if epoch < warm:
        return (top - start) / warm * epoch + start
    decay = max(epochs - warm, 1)
    return (top - low) * 0.5 * (1 + math.cos(math.pi * (epoch - warm) / decay)) + low


def load(data, rows):
    """[n, 400, 300, 3] float32 inputs of `rows` (the reference preprocessing)."""
    cache = {}
    out = np.zeros((len(rows), 400, 300, 3), dtype=np.float32)
    for i, r in enumerate(rows.itertuples()):
        sid = int(r.spectrogram_id)
        if sid not in cache:
            df = pd.read_parquet(os.path.join(data, "train_spectrograms", f"{sid}.parquet"))
            cache[sid] = df.drop(columns=["time"]).fillna(0).to_numpy(np.float32).T
        x = cache[sid]
        off = int(r.spectrogram_label_offset_seconds // 2)
        w = np.zeros((400, 300), dtype=np.float32)
        part = x[:, off : off + 300]
        w[:, : part.shape[1]] = part
        w = np.log(np.clip(w, math.exp(-4), math.exp(8)))
        w = (w - w.mean()) / (w.std() + 1e-6)
        out[i] = w[:, :, None]
    return out


def votes(rows):
    return rows[VOTES].to_numpy(np.float64)


def fold_rows(data, fold, k=5):
    """((train rows, their targets), (validation rows, their targets)) of `fold`: as the starter
    (and hbac), folds over every row, then the first row of each spectrogram; targets are the
    vote distributions (float32)."""
    from sklearn.model_selection import StratifiedGroupKFold

    train = pd.read_csv(os.path.join(data, "train.csv"))
    train["fold"] = -1
    split = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=42)
    for f, (_, valid) in enumerate(
            split.split(train, train["expert_consensus"], groups=train["patient_id"])):
        train.loc[valid, "fold"] = f
    first = train.groupby("spectrogram_id", sort=False).head(1).reset_index(drop=True)
    out = []
    for rows in (first[first.fold != fold], first[first.fold == fold]):
        v = votes(rows)
        out.append((rows, (v / v.sum(axis=1, keepdims=True)).astype(np.float32)))
    return tuple(out)


def kaggle_kl(solution, pred):
    s = solution / solution.sum(axis=1, keepdims=True)
    p = np.clip(pred, 1e-15, 1 - 1e-15)
    terms = np.where(s > 0, s * np.log(np.where(s > 0, s, 1) / p), 0.0)
    return float(terms.sum(axis=1).mean())


def keras_kl(y, p):
    y = np.clip(y, 1e-7, 1)
    p = np.clip(p, 1e-7, 1)
    return float((y * np.log(y / p)).sum(axis=1).mean())


def tensorflow_cpu(threads):
    """TensorFlow, quiet, on `threads` CPU threads (before any op runs)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    return tf


def build(arch, bn_momentum, drop_connect):
    import keras

    inputs = keras.Input((400, 300, 3))
    x = keras.layers.Rescaling(1.0 / 255)(inputs)
    if arch == "mobilenetv3-large":
        import keras_cv

        backbone = keras_cv.models.MobileNetV3Backbone(
            stackwise_expansion=[1, 4, 3, 3, 3, 3, 6, 2.5, 2.3, 2.3, 6, 6, 6, 6, 6],
            stackwise_filters=[16, 24, 24, 40, 40, 40, 80, 80, 80, 80, 112, 112, 160, 160, 160],
            stackwise_kernel_size=[3, 3, 3, 5, 5, 5, 3, 3, 3, 3, 3, 3, 5, 5, 5],
            stackwise_stride=[1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1],
            stackwise_se_ratio=[None, None, None, 0.25, 0.25, 0.25, None, None, None, None,
                                0.25, 0.25, 0.25, 0.25, 0.25],
            stackwise_activation=["relu"] * 6 + ["hard_swish"] * 9,
            include_rescaling=False,
            input_shape=(400, 300, 3),
        )
    else:
        backbone = keras.applications.EfficientNetV2B2(
            include_top=False, weights=None, input_shape=(400, 300, 3),
            include_preprocessing=False)
        for layer in backbone.layers:  # stochastic depth: Dropout with noise_shape (N, 1, 1, 1)
            if isinstance(layer, keras.layers.Dropout) and drop_connect != 0.2:
                layer.rate = layer.rate * drop_connect / 0.2
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = bn_momentum
    x = keras.layers.GlobalAveragePooling2D()(backbone(x))
    return keras.Model(inputs, keras.layers.Dense(6, activation="softmax")(x))


def torch_adam(lr):
    """Adam with PyTorch's (and burn's, so hbac's) ε placement, `m̂ / (√v̂ + ε)`. Keras
    divides by `√v + ε` before the bias correction: in those terms an ε larger by
    `1 / √(1 − β₂ᵗ)` (×32 at the first step, ×3 after 100)."""
    import keras
    from keras import ops

    class TorchAdam(keras.optimizers.Adam):
        def update_step(self, gradient, variable, learning_rate):
            lr = ops.cast(learning_rate, variable.dtype)
            gradient = ops.cast(gradient, variable.dtype)
            step = ops.cast(self.iterations + 1, variable.dtype)
            b1 = 1 - ops.power(ops.cast(self.beta_1, variable.dtype), step)
            b2 = 1 - ops.power(ops.cast(self.beta_2, variable.dtype), step)
            m = self._momentums[self._get_variable_index(variable)]
            v = self._velocities[self._get_variable_index(variable)]
            self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1 - self.beta_1))
            self.assign_add(v, ops.multiply(ops.subtract(ops.square(gradient), v),
                                            1 - self.beta_2))
            update = ops.divide(ops.divide(m, b1), ops.add(ops.sqrt(ops.divide(v, b2)),
                                                           self.epsilon))
            self.assign_sub(variable, ops.multiply(update, lr))

    return TorchAdam(learning_rate=lr, epsilon=1e-7)


def augment(rng, x, y):
    x, y = x.copy(), y.copy()
    n = len(x)
    if rng.random() < 0.5:
        lam = rng.beta(2.0, 2.0, size=n).astype(np.float32)
        perm = rng.permutation(n)
        x = lam[:, None, None, None] * x + (1 - lam[:, None, None, None]) * x[perm]
        y = lam[:, None] * y + (1 - lam[:, None]) * y[perm]
    for axis, length in ((2, 300), (1, 400)):  # time columns, then frequency rows
        if rng.random() < 0.5:
            for i in range(n):
                width = max(1, int(round(rng.uniform(0.06, 0.10) * length)))
                start = rng.integers(0, length - width + 1)
                if axis == 2:
                    x[i, :, start : start + width, :] = 0
                else:
                    x[i, start : start + width, :, :] = 0
    return x, y


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--arch", choices=["mobilenetv3-large", "efficientnetv2-b2"], required=True)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", required=True)
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=13)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--bn-momentum", type=float, default=0.9)
    ap.add_argument("--drop-connect", type=float, default=0.2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--adam", choices=["keras", "torch"], default="keras",
                    help="where Adam's ε goes: Keras' own, or PyTorch's and hbac's")
    a = ap.parse_args()
    tf = tensorflow_cpu(a.threads)
    import keras

    keras.utils.set_random_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    (tr, ytr), (va, yva) = fold_rows(a.data, a.fold, a.k)
    t0 = time.time()
    xtr, xva = load(a.data, tr), load(a.data, va)
    print(f"keras {keras.__version__} tensorflow {tf.__version__} arch={a.arch} seed={a.seed} "
          f"fold={a.fold} train={len(tr)} valid={len(va)} batch={a.batch} "
          f"bn_momentum={a.bn_momentum} drop_connect={a.drop_connect} adam={a.adam} "
          f"(data {time.time() - t0:.1f} s)", flush=True)
    model = build(a.arch, a.bn_momentum, a.drop_connect)
    lr0 = lr_at(0, a.epochs, a.batch)
    opt = (torch_adam(lr0) if a.adam == "torch"
           else keras.optimizers.Adam(learning_rate=lr0, epsilon=1e-7))
    model.compile(optimizer=opt, loss=keras.losses.KLDivergence())
    best = (math.inf, -1, None)
    for epoch in range(a.epochs):
        lr = lr_at(epoch, a.epochs, a.batch)
        model.optimizer.learning_rate.assign(lr)
        t = time.time()
        order = rng.permutation(len(xtr))
        losses = []
        for s in range(0, len(order), a.batch):
            idx = order[s : s + a.batch]
            x, y = augment(rng, xtr[idx], ytr[idx])
            losses.append(float(model.train_on_batch(x, y)))
        pred = model.predict(xva, batch_size=a.batch, verbose=0)
        val = keras_kl(yva, pred)
        mark = ""
        if val < best[0]:
            best = (val, epoch, pred)
            mark = " (best)"
        print(f"epoch {epoch + 1}/{a.epochs} lr {lr:.3e} train_kl {np.mean(losses):.4f} "
              f"valid_kl {val:.4f}{mark} {time.time() - t:.1f} s", flush=True)
    val, epoch, pred = best
    oof = kaggle_kl(votes(va), pred.astype(np.float64))
    os.makedirs(a.out, exist_ok=True)
    df = pd.DataFrame(pred, columns=VOTES)
    df.insert(0, "eeg_id", va["eeg_id"].to_numpy())
    df["fold"] = a.fold
    df["label_id"] = va["label_id"].to_numpy()
    df.to_csv(os.path.join(a.out, "oof.csv"), index=False)
    result = {"side": "keras", "arch": a.arch, "seed": a.seed, "best_epoch": epoch,
              "valid_kl": val, "oof_kaggle_kl": oof, "rows": len(va)}
    with open(os.path.join(a.out, "result.json"), "w") as f:
        json.dump(result, f)
    print(f"best epoch {epoch + 1} valid_kl {val:.4f}; out-of-fold kaggle kl {oof:.4f}",
          flush=True)


if __name__ == "__main__":
    main()
