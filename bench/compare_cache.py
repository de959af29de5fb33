#!/usr/bin/env python3
"""Checks that hbac's .npy cache equals the reference conversion bit for bit.

    python3 bench/compare_cache.py REFERENCE_DIR HBAC_CACHE_DIR
"""
import pathlib
import sys

import numpy as np

ref, ours = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
files = sorted((ref / "train_spectrograms").glob("*.npy"))
bad = 0
for f in files:
    a, b = np.load(f), np.load(ours / "train_spectrograms" / f.name)
    if a.dtype != b.dtype or a.shape != b.shape or a.tobytes() != b.tobytes():
        bad += 1
        print("differs:", f.name, a.dtype, b.dtype, a.shape, b.shape)
print(f"compare files={len(files)} identical={len(files) - bad}")
sys.exit(1 if bad or not files else 0)
