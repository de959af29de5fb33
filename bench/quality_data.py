"""An HMS-format data set for the model-quality benchmark (bench/quality.sh), written with
pandas/pyarrow and numpy alone, independently of `hbac synth`.

    python bench/quality_data.py --out DIR [--patients 150] [--seed 0] [--test 12]

Writes DIR/train.csv (Kaggle's 15 columns, in order), DIR/train_spectrograms/<id>.parquet
(`time` + the 400 columns LL_0.59 … RP_19.92, float32 power, one row per 2 s, 11–15 min),
DIR/test.csv and DIR/test_spectrograms/ (exactly 10 min). Deterministic for a seed.

What a model can learn, and what makes it hard:
- each spectrogram shows one pattern for its whole length: a class-specific band of extra
  power (log domain) on the chains the pattern involves — lateralised patterns (LPD, LRDA) on
  one hemisphere's chains, generalised ones (GPD, GRDA) on all four, periodic ones (LPD, GPD)
  pulsing every few frames, Seizure a broad rise that drifts in frequency, Other nothing —
  with a per-file strength from faint to clear;
- a 1/f log-normal background with per-file level and per-frame noise;
- votes: 1–20 annotators per row, most on the file's pattern, the rest on its look-alikes
  (LPD↔GPD, LRDA↔GRDA, anything↔Other); expert_consensus is the most voted class;
- patients: 1–3 files each, their patterns correlated (so grouped folds matter);
- NaN gaps: whole rows (dropped frames) and runs of one chain's columns.
"""

import argparse
import os

import numpy as np
import pandas as pd

CLASSES = ["Seizure", "LPD", "GPD", "LRDA", "GRDA", "Other"]
VOTES = ["seizure_vote", "lpd_vote", "gpd_vote", "lrda_vote", "grda_vote", "other_vote"]
CHAINS = ["LL", "RL", "LP", "RP"]
# Bin k of 100 is (k + 3) × 0.1953125 Hz, rounded half-up to 2 decimals, trailing zeros dropped.
FREQS = [(k + 3) * 0.1953125 for k in range(100)]


def freq_name(f):
    cents = int(f * 100 + 0.5 + 1e-9)
    s = f"{cents // 100}.{cents % 100:02d}".rstrip("0").rstrip(".")
    return s


COLUMNS = [f"{c}_{freq_name(f)}" for c in CHAINS for f in FREQS]
# (band centre Hz, band width Hz, chains involved, periodic) per class; Other has no pattern.
PATTERNS = {
    0: (None, None, [0, 1, 2, 3], False),  # Seizure: broad, drifting
    1: (2.0, 1.2, None, True),  # LPD: one hemisphere, periodic
    2: (2.0, 1.2, [0, 1, 2, 3], True),  # GPD: everywhere, periodic
    3: (1.2, 0.8, None, False),  # LRDA: one hemisphere, rhythmic delta
    4: (1.2, 0.8, [0, 1, 2, 3], False),  # GRDA: everywhere, rhythmic delta
    5: (None, None, [], False),  # Other
}
LOOKALIKE = {0: [5, 2], 1: [2, 5], 2: [1, 5], 3: [4, 5], 4: [3, 5], 5: [0, 1, 3]}


def spectrogram(rng, cls, rows):
    """[rows, 400] float32 power for a file showing `cls`."""
    f = np.asarray(FREQS)
    level = rng.normal(2.0, 0.5)
    base = level - 0.12 * f  # 1/f-like in the log domain
    logp = base[None, None, :] + rng.normal(0, 0.7, size=(rows, 4, 100))
    logp += rng.normal(0, 0.3, size=(1, 4, 1))  # per-chain level
    strength = rng.uniform(0.8, 2.5)
    centre, width, chains, periodic = PATTERNS[cls]
    t = np.arange(rows)
    if cls == 0:
        drift = 3.0 + 4.0 * (0.5 + 0.5 * np.sin(t / rng.uniform(8, 20) + rng.uniform(0, 6)))
        bump = np.exp(-0.5 * ((f[None, :] - drift[:, None]) / 2.5) ** 2)
        logp += strength * 1.2 * bump[:, None, :]
    elif cls != 5:
        if chains is None:  # one hemisphere: LL + LP or RL + RP
            chains = [0, 2] if rng.random() < 0.5 else [1, 3]
        bump = np.exp(-0.5 * ((f - centre * rng.uniform(0.85, 1.15)) / width) ** 2)
        amp = np.ones(rows)
        if periodic:
            period = rng.integers(2, 5)
            amp = 0.4 + 0.6 * ((t % period) == 0)
        for c in chains:
            logp[:, c, :] += strength * amp[:, None] * bump[None, :]
    power = np.exp(logp).reshape(rows, 400).astype(np.float32)
    # NaN gaps: dropped frames and runs of one chain's columns.
    for _ in range(rng.integers(0, 3)):
        start = rng.integers(0, rows - 5)
        power[start : start + rng.integers(1, 6), :] = np.nan
    if rng.random() < 0.3:
        c = rng.integers(0, 4)
        start = rng.integers(0, rows - 20)
        power[start : start + rng.integers(5, 20), c * 100 : (c + 1) * 100] = np.nan
    return power


def write_parquet(path, power):
    df = pd.DataFrame(power, columns=COLUMNS)
    df.insert(0, "time", np.arange(1, 2 * len(power), 2, dtype=np.int64))
    df.to_parquet(path, index=False)


def votes_for(rng, cls):
    n = int(rng.choice([1, 2, 3, 3, 3, 6, 10, 13, 15, 17, 20]))
    v = np.zeros(6, dtype=np.int64)
    others = LOOKALIKE[cls]
    for _ in range(n):
        r = rng.random()
        if r < 0.72:
            v[cls] += 1
        elif r < 0.95:
            v[others[rng.integers(0, len(others))]] += 1
        else:
            v[rng.integers(0, 6)] += 1
    return v


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--patients", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test", type=int, default=12, help="test spectrograms")
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    os.makedirs(os.path.join(a.out, "train_spectrograms"), exist_ok=True)
    os.makedirs(os.path.join(a.out, "test_spectrograms"), exist_ok=True)
    rows = []
    label_id = 1_000_000
    sid = 100_000
    prior = np.array([0.16, 0.18, 0.15, 0.14, 0.15, 0.22])
    for p in range(a.patients):
        patient = 10_000 + p
        favourite = rng.choice(6, p=prior)
        for _ in range(rng.integers(1, 4)):
            cls = favourite if rng.random() < 0.6 else rng.choice(6, p=prior)
            sid += 1
            eeg_id = 500_000 + sid
            frames = int(rng.integers(330, 450))  # 11–15 min at 2 s
            write_parquet(
                os.path.join(a.out, "train_spectrograms", f"{sid}.parquet"),
                spectrogram(rng, cls, frames),
            )
            max_offset = (frames - 300) * 2
            offsets = sorted(rng.choice(np.arange(0, max_offset, 2), size=2, replace=False))
            for sub, off in enumerate(offsets):
                v = votes_for(rng, cls)
                rows.append(
                    {
                        "eeg_id": eeg_id,
                        "eeg_sub_id": sub,
                        "eeg_label_offset_seconds": float(off),
                        "spectrogram_id": sid,
                        "spectrogram_sub_id": sub,
                        "spectrogram_label_offset_seconds": float(off),
                        "label_id": label_id,
                        "patient_id": patient,
                        "expert_consensus": CLASSES[int(np.argmax(v))],
                        **{c: int(x) for c, x in zip(VOTES, v)},
                    }
                )
                label_id += 1
    pd.DataFrame(rows).to_csv(os.path.join(a.out, "train.csv"), index=False)
    test = []
    for i in range(a.test):
        tid = 900_000 + i
        write_parquet(
            os.path.join(a.out, "test_spectrograms", f"{tid}.parquet"),
            spectrogram(rng, int(rng.choice(6, p=prior)), 300),
        )
        test.append({"spectrogram_id": tid, "eeg_id": 800_000 + i, "patient_id": 90_000 + i})
    pd.DataFrame(test).to_csv(os.path.join(a.out, "test.csv"), index=False)
    n_files = len({r["spectrogram_id"] for r in rows})
    print(f"wrote {a.out}: {len(rows)} labelled rows, {n_files} spectrograms, "
          f"{a.patients} patients, {a.test} test files")


if __name__ == "__main__":
    main()
