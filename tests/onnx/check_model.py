#!/usr/bin/env python3
"""Runs one hbac-exported ONNX model with onnxruntime on the inputs hbac predicted, and compares.

    python3 check_model.py DIR [--tol 1e-4]

DIR holds model.onnx, input.npy ([N, 3, H, W] float32) and expected.npy (hbac's [N, 6]
probabilities). The model must pass onnx.checker (full check, with shape inference), import the
default operator set at version 17 or later, and name its input `input` and its output
`probabilities`. Exits 1 when any probability differs from hbac's by more than the tolerance.
"""
import argparse
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("dir")
ap.add_argument("--tol", type=float, default=1e-4)
a = ap.parse_args()
path = os.path.join(a.dir, "model.onnx")
model = onnx.load(path)
onnx.checker.check_model(model, full_check=True)
opset = {o.domain: o.version for o in model.opset_import}[""]
assert opset >= 17, f"opset {opset}"
sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
assert [i.name for i in sess.get_inputs()] == ["input"], sess.get_inputs()
assert [o.name for o in sess.get_outputs()] == ["probabilities"], sess.get_outputs()
x = np.load(os.path.join(a.dir, "input.npy"))
want = np.load(os.path.join(a.dir, "expected.npy"))
got = sess.run(["probabilities"], {"input": x})[0]
diff = float(np.abs(got - want).max())
top = float(want.max())
print(f"onnxruntime {ort.__version__} opset {opset}, {len(model.graph.node)} nodes: "
      f"max |onnx - hbac| = {diff:.3e} (largest probability {top:.3f}; tolerance {a.tol:g})")
sys.exit(0 if diff <= a.tol else 1)
