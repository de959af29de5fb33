#!/usr/bin/env python3
"""A run exported by `hbac export --run` makes its submission without hbac: numpy, pandas
(+ pyarrow) and onnxruntime only. Also the check that CI runs against hbac's own predictions.

    python3 onnx_submission.py EXPORT_DIR DATA_ROOT OUT.csv [--compare SUBMISSION.csv] [--tol 1e-4]

EXPORT_DIR holds ensemble.json and the models; DATA_ROOT holds test.csv and
test_spectrograms/. Each model is checked with onnx.checker when the `onnx` package is there.
With --compare, exits 1 when any probability differs from that file's by more than --tol.
"""
import argparse
import json
import os
import sys

import numpy as np
import onnxruntime as ort
import pandas as pd


def window(path, offset_rows=0, rows=300):
    """ensemble.json's `preprocessing["kaggle"]`: float32 [3, 400, 300]."""
    spec = pd.read_parquet(path)
    x = spec.drop(columns=["time"]).to_numpy(np.float32)[offset_rows:offset_rows + rows]
    x = np.nan_to_num(x, nan=0.0)
    if len(x) < rows:
        x = np.concatenate([x, np.zeros((rows - len(x), x.shape[1]), np.float32)])
    x = np.log(np.clip(x, np.exp(np.float32(-4)), np.exp(np.float32(8)))).astype(np.float32)
    mean = np.float32(x.astype(np.float64).mean())
    x = x - mean
    std = np.float32(np.sqrt((x.astype(np.float64) ** 2).mean()))
    x = x / (std + np.float32(1e-6))
    return np.repeat(x.T[None], 3, axis=0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export")
    ap.add_argument("data")
    ap.add_argument("out")
    ap.add_argument("--compare")
    ap.add_argument("--tol", type=float, default=1e-4)
    a = ap.parse_args()
    with open(os.path.join(a.export, "ensemble.json")) as f:
        ens = json.load(f)
    test = pd.read_csv(os.path.join(a.data, "test.csv"))
    x = np.stack([window(os.path.join(a.data, "test_spectrograms", f"{s}.parquet"))
                  for s in test.spectrogram_id])
    try:
        import onnx
    except ImportError:
        onnx = None
    blend = np.zeros((len(test), len(ens["output"]["columns"])), np.float64)
    for arch in ens["architectures"]:
        probs = []
        for m in arch["models"]:
            if m.get("input", "kaggle") != "kaggle":
                sys.exit(f"{m['file']} takes the {m['input']} input; this script builds only "
                         "the kaggle one (use `hbac predict --run`)")
            path = os.path.join(a.export, m["file"])
            if onnx is not None:
                model = onnx.load(path)
                onnx.checker.check_model(model, full_check=True)
                assert {o.domain: o.version for o in model.opset_import}[""] >= 17
            sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            assert [i.name for i in sess.get_inputs()] == [ens["input"]["name"]]
            assert [o.name for o in sess.get_outputs()] == [ens["output"]["name"]]
            probs.append(sess.run([ens["output"]["name"]], {ens["input"]["name"]: x})[0])
        blend += arch["weight"] * np.mean(probs, axis=0)
    sub = pd.DataFrame(blend, columns=ens["output"]["columns"])
    sub.insert(0, "eeg_id", test.eeg_id.to_numpy())
    sub = sub.sort_values("eeg_id").reset_index(drop=True)
    sub.to_csv(a.out, index=False)
    print(f"onnxruntime {ort.__version__}: {sum(len(m['models']) for m in ens['architectures'])} "
          f"models, {len(sub)} rows -> {a.out}")
    if a.compare:
        want = pd.read_csv(a.compare).sort_values("eeg_id").reset_index(drop=True)
        assert list(want.eeg_id) == list(sub.eeg_id), "the submissions' eeg_ids differ"
        cols = ens["output"]["columns"]
        diff = np.abs(want[cols].to_numpy() - sub[cols].to_numpy()).max()
        print(f"max |onnx - {a.compare}| = {diff:.3e} (tolerance {a.tol:g})")
        sys.exit(0 if diff <= a.tol else 1)


if __name__ == "__main__":
    main()
