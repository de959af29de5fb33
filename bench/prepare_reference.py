#!/usr/bin/env python3
"""The original project's parquet -> .npy conversion, as the KerasCV starter ran it:
pandas read_parquet, fillna(0), drop `time`, transpose, float32, np.save, one file per
spectrogram_id of train.csv, in parallel with joblib (n_jobs=-1, loky).

    python3 bench/prepare_reference.py DATA_DIR OUT_DIR

Prints `reference files=N seconds=S files_per_s=F mb_per_s=M` (MB of parquet read).
"""
import os
import sys
import time

import joblib
import numpy as np
import pandas as pd


def process_spec(data, out, spec_id):
    spec = pd.read_parquet(f"{data}/train_spectrograms/{spec_id}.parquet")
    spec = spec.fillna(0).values[:, 1:].T
    spec = spec.astype("float32")
    np.save(f"{out}/train_spectrograms/{spec_id}.npy", spec)


def main():
    data, out = sys.argv[1], sys.argv[2]
    os.makedirs(f"{out}/train_spectrograms", exist_ok=True)
    ids = pd.read_csv(f"{data}/train.csv")["spectrogram_id"].unique()
    size = sum(os.path.getsize(f"{data}/train_spectrograms/{i}.parquet") for i in ids)
    start = time.perf_counter()
    joblib.Parallel(n_jobs=-1, backend="loky")(joblib.delayed(process_spec)(data, out, i) for i in ids)
    secs = time.perf_counter() - start
    print(f"reference files={len(ids)} seconds={secs:.3f} files_per_s={len(ids) / secs:.1f} mb_per_s={size / 1e6 / secs:.1f}")


if __name__ == "__main__":
    main()
