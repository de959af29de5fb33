#!/usr/bin/env python3
"""Writes the EEG golden files with librosa from PyPI: one HMS-format EEG parquet (70 s at
200 Hz, the 20 Kaggle columns as float32) and, for two 50-s windows of it, the public HMS
reference's mel-spectrogram image, float32 [4, 128, 256] (chains LL, RL, LP, RP).

    python3 tests/golden/eeg/make_eeg_golden.py OUT_DIR

The recording exercises every branch of the recipe: NaN gaps (F3, and C3 inside the second
window only), an all-NaN electrode (T3: two of LL's differences are all NaN → zeros), a flat
electrode (C4), a rhythmic burst, and a window that ends on the file's last row.
`tests/eeg_parity.rs` checks hbac against these files (≤ 1e-3); `tests/golden/check_golden.py`
regenerates them with the installed librosa and compares.
"""
import json
import pathlib
import sys
import warnings

import librosa
import numpy as np
import pandas as pd

COLUMNS = ["Fp1", "F3", "C3", "P3", "F7", "T3", "T5", "O1", "Fz", "Cz", "Pz", "Fp2", "F4",
           "C4", "P4", "F8", "T4", "T6", "O2", "EKG"]
CHAINS = [["Fp1", "F7", "T3", "T5", "O1"], ["Fp2", "F8", "T4", "T6", "O2"],
          ["Fp1", "F3", "C3", "P3", "O1"], ["Fp2", "F4", "C4", "P4", "O2"]]
SR, ROWS, OFFSETS = 200, 14_000, [0, 20]


def recording():
    rng = np.random.default_rng(2024)
    t = np.arange(ROWS) / SR
    data = {}
    for i, c in enumerate(COLUMNS):
        if c in ("Fz", "Cz", "Pz", "EKG"):
            data[c] = np.zeros(ROWS)
            continue
        x = (30 * np.sin(2 * np.pi * (1.0 + 0.1 * i) * t + i)
             + 8 * np.sin(2 * np.pi * (9.0 + 0.3 * i) * t)
             + rng.normal(0, 6, ROWS))
        data[c] = np.round(x * 4) / 4  # 0.25 µV steps, as a recorder's ADC
    burst = (t > 30) & (t < 38)
    data["O2"] = data["O2"] + burst * 60 * np.sin(2 * np.pi * 3.0 * t)
    data["T3"][:] = np.nan
    data["C4"][:] = 3.5
    data["F3"][1000:1400] = np.nan
    data["F3"][6000:6100] = np.nan
    data["C3"][12000:12500] = np.nan
    return pd.DataFrame({c: np.asarray(data[c], np.float32) for c in COLUMNS})


def image(eeg):
    """The public reference's recipe (its per-window loop), for one 50-s window."""
    img = np.zeros((4, 128, 256), dtype="float32")
    for k, chain in enumerate(CHAINS):
        for kk in range(4):
            x = eeg[chain[kk]].values - eeg[chain[kk + 1]].values
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # the all-NaN difference
                m = np.nanmean(x)
            if np.isnan(x).mean() < 1:
                x = np.nan_to_num(x, nan=m)
            else:
                x[:] = 0
            mel = librosa.feature.melspectrogram(y=x, sr=SR, hop_length=len(x) // 256, n_fft=1024,
                                                 n_mels=128, fmin=0, fmax=20, win_length=128)
            width = (mel.shape[1] // 32) * 32
            db = librosa.power_to_db(mel, ref=np.max).astype(np.float32)[:, :width]
            img[k] += (db + 40) / 40
        img[k] /= 4.0
    return img


def main(out):
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    eeg = recording()
    eeg.to_parquet(out / "recording.parquet", index=False, compression="zstd")
    cases = []
    for offset in OFFSETS:
        start = offset * SR
        name = f"recording_{offset}s.npy"
        np.save(out / name, image(eeg.iloc[start:start + 10_000]))
        cases.append({"offset_seconds": offset, "image": name})
    meta = {"recording": "recording.parquet", "cases": cases, "librosa": librosa.__version__}
    (out / "cases.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).resolve().parent)
