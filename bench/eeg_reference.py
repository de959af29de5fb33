#!/usr/bin/env python3
"""The public reference's EEG → mel-spectrogram images with librosa, for every labelled window of
a data set (as `hbac prepare --eeg` computes them): times it, and compares with hbac's cache.

    hbac prepare --data ROOT --eeg && python bench/eeg_reference.py ROOT [CACHE]

Needs numpy, pandas, pyarrow, librosa. Prints images/s and the largest |hbac − librosa|.
"""
import importlib.util
import pathlib
import sys
import time

import numpy as np
import pandas as pd

here = pathlib.Path(__file__).resolve().parent
spec = importlib.util.spec_from_file_location("golden", here.parent / "tests/golden/eeg/make_eeg_golden.py")
golden = importlib.util.module_from_spec(spec)
spec.loader.exec_module(golden)  # its image() is the reference recipe

root = pathlib.Path(sys.argv[1])
cache = pathlib.Path(sys.argv[2]) if len(sys.argv) > 2 else root / "cache"
train = pd.read_csv(root / "train.csv").drop_duplicates(["eeg_id", "eeg_sub_id"])
start = time.perf_counter()
images, loaded = {}, {}
for r in train.itertuples():
    if r.eeg_id not in loaded:
        loaded = {r.eeg_id: pd.read_parquet(root / f"train_eegs/{r.eeg_id}.parquet")}
    eeg = loaded[r.eeg_id]
    s = int(round(r.eeg_label_offset_seconds * 200))
    images[(r.eeg_id, r.eeg_sub_id)] = golden.image(eeg.iloc[s:s + 10_000])
seconds = time.perf_counter() - start
worst = max(
    float(np.abs(np.load(cache / f"train_eeg_spectrograms/{e}_{s}.npy") - img).max())
    for (e, s), img in images.items()
)
import librosa
print(f"librosa {librosa.__version__}: {len(images)} images in {seconds:.2f} s ({len(images) / seconds:.1f} images/s, 1 process); "
      f"max |hbac − librosa| {worst:.2e}")
