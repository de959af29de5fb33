"""Parity fixtures for hbac's import of timm weights (`Pretrained` in worker/src/model).

For each architecture this builds timm's TF-ported model (`tf_mobilenetv3_large_100`,
`tf_efficientnetv2_b2`: 'same' padding, BatchNorm eps 1e-3) at a reduced width, gives it
random weights and random BatchNorm statistics, and writes:

  <arch>.<ext>            the state dict (MobileNetV3 as safetensors, EfficientNetV2 as a
                          PyTorch .pth zip), with timm's (6-way) classifier and MobileNetV3's conv_head,
                          which the import must leave out
  <arch>.input.npy        float32 [2, 3, H, W] input (odd H and W: exercises 'same' padding)
  <arch>.features.npy     float32 [2, C]: timm's forward_features + global average pool
  <arch>.json             width and shapes, read by the test

Weights are rounded to float16 before the forward pass and stored as float16 (halves the
committed size; the stored values are exactly the ones used, so the tolerance is unaffected).

  python make_timm_fixtures.py OUT_DIR            # the small committed fixtures
  python make_timm_fixtures.py OUT_DIR --full     # the real widths (for a one-off check)

At width 1 the builders below are asserted to produce exactly the registered timm models'
state-dict keys and shapes, so the reduced fixtures go through the same mapping as real
ImageNet checkpoints.
"""

import argparse
import json
import os

import numpy as np
import torch
import timm
from timm.models import efficientnet, mobilenetv3
from safetensors.torch import save_file

TIMM_NAMES = {
    "mobilenetv3-large": "tf_mobilenetv3_large_100",
    "efficientnetv2-b2": "tf_efficientnetv2_b2",
}


def build(arch, width):
    tf_like = dict(pretrained=False, bn_eps=1e-3, pad_type="same")
    if arch == "mobilenetv3-large":
        # Keras keeps the 16-wide stem at every alpha; timm does too below 0.75 (fix_stem),
        # so reduced widths are taken under 0.75.
        return mobilenetv3._gen_mobilenet_v3(TIMM_NAMES[arch], width, **tf_like)
    return efficientnet._gen_efficientnetv2_base(
        TIMM_NAMES[arch], channel_multiplier=1.1 * width, depth_multiplier=1.2, **tf_like
    )


def check_builder(arch):
    ours = {k: tuple(v.shape) for k, v in build(arch, 1.0).state_dict().items()}
    registered = timm.create_model(TIMM_NAMES[arch], pretrained=False)
    theirs = {k: tuple(v.shape) for k, v in registered.state_dict().items()}
    assert ours == theirs, f"{arch}: builder differs from timm's {TIMM_NAMES[arch]}"


def randomize(model, gen, shape):
    """Random weights, with BatchNorm statistics measured on random inputs (as training would
    leave them) so activations stay O(1) through the depth, then random affine terms."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.1 if p.dim() == 1 else 0.2))
        bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        for m in bns:
            m.weight.copy_(0.25 + 0.5 * torch.rand(m.weight.shape, generator=gen))
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
        model.train()
        for _ in range(4):
            model.forward_features(torch.randn(8, *shape[1:], generator=gen))
        model.eval()
        for t in list(model.parameters()) + list(model.buffers()):
            if t.is_floating_point():
                t.copy_(t.half().float())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--full", action="store_true")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    for arch, width, ext in [
        ("mobilenetv3-large", 0.35, "safetensors"),
        ("efficientnetv2-b2", 0.25, "pth"),
    ]:
        check_builder(arch)
        width = 1.0 if args.full else width
        model = build(arch, width).eval()
        # A 6-way classifier keeps the file small; it is left out by the import either way.
        model.reset_classifier(6)
        shape = (2, 3, 67, 45)
        randomize(model, gen, shape)
        x = torch.randn(*shape, generator=gen)
        with torch.no_grad():
            # The reference in float64, so the fixture carries no float32 rounding of its own.
            features = model.double().forward_features(x.double()).mean(dim=(2, 3))
            single = model.float().forward_features(x).mean(dim=(2, 3)).double()
            print(f"{arch}: timm float32 vs float64: max |diff| {(single - features).abs().max():.2e}")
        state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
        path = os.path.join(args.out, f"{arch}.{ext}")
        if ext == "safetensors":
            save_file({k: v.contiguous() for k, v in state.items()}, path)
        else:
            torch.save(state, path)
        np.save(os.path.join(args.out, f"{arch}.input.npy"), x.numpy().astype(np.float32))
        np.save(os.path.join(args.out, f"{arch}.features.npy"), features.numpy().astype(np.float32))
        meta = {
            "arch": arch,
            "timm_model": TIMM_NAMES[arch],
            "width": width,
            "weights": os.path.basename(path),
            "input_shape": list(x.shape),
            "features_shape": list(features.shape),
            "torch": torch.__version__,
            "timm": timm.__version__,
        }
        with open(os.path.join(args.out, f"{arch}.json"), "w") as f:
            json.dump(meta, f, indent=2)
        print(f"{arch}: width {width}, {os.path.getsize(path):,} bytes, features {tuple(features.shape)}")


if __name__ == "__main__":
    main()
