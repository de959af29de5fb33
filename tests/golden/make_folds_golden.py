#!/usr/bin/env python3
"""Generate the golden files that prove `hbac folds` equals scikit-learn.

Run with scikit-learn >= 1.8 from PyPI (`pip install "scikit-learn>=1.8" pandas`):

    python3 tests/golden/make_folds_golden.py [OUT_DIR]   (default: this directory)

For every data set below it writes `<name>.csv` (train.csv layout) and `<name>.json`: the
scikit-learn version and, per (n_splits, shuffle, random_state), either the fold of each row
from `StratifiedGroupKFold(...).split(X, y=expert_consensus, groups=patient_id)` or the
ValueError message scikit-learn raised. The data sets are drawn from numpy with fixed seeds.
"""
import json
import pathlib
import sys
import warnings

import numpy as np
import pandas as pd
import sklearn
from sklearn.model_selection import StratifiedGroupKFold

HERE = pathlib.Path(__file__).resolve().parent
CLASSES = ["Seizure", "LPD", "GPD", "LRDA", "GRDA", "Other"]
VOTES = ["seizure_vote", "lpd_vote", "gpd_vote", "lrda_vote", "grda_vote", "other_vote"]
HMS_WEIGHTS = np.array([20933, 18861, 16640, 14856, 16702, 18808], dtype=float)


def table(patients, classes, rng):
    """HMS train.csv rows for the given per-row patient ids and class names."""
    n = len(patients)
    df = pd.DataFrame(
        {
            "eeg_id": rng.randint(1, 2**31, size=n),
            "eeg_sub_id": np.arange(n) % 7,
            "eeg_label_offset_seconds": (np.arange(n) % 9) * 2.0,
            "spectrogram_id": rng.randint(1, 2**31, size=n),
            "spectrogram_sub_id": np.arange(n) % 5,
            "spectrogram_label_offset_seconds": (np.arange(n) % 11) * 2.0,
            "label_id": 1_000_000 + np.arange(n) * 7 + rng.randint(0, 7, size=n),
            "patient_id": patients,
            "expert_consensus": classes,
        }
    )
    for c, v in zip(CLASSES, VOTES):
        df[v] = (df.expert_consensus == c).astype(int) * 3
    return df


def hms_like(rng, n_patients, mean_rows):
    pats, cls = [], []
    ids = rng.choice(np.arange(10000, 70000), size=n_patients, replace=False)
    for pid in ids:
        dominant = rng.choice(6, p=HMS_WEIGHTS / HMS_WEIGHTS.sum())
        for _ in range(1 + rng.poisson(mean_rows - 1)):
            c = dominant if rng.rand() < 0.7 else rng.choice(6, p=HMS_WEIGHTS / HMS_WEIGHTS.sum())
            pats.append(pid)
            cls.append(CLASSES[c])
    return table(np.array(pats), np.array(cls), rng)


def datasets():
    rng = np.random.RandomState(2024)
    yield "hms_like", hms_like(rng, 400, 12)
    # One row per patient: every group's class counts are one-hot, so the std sort and the
    # fold scores tie everywhere (ties decided by order, np.isclose and fold size).
    yield "ties_one_row", table(np.arange(100, 160), np.array([CLASSES[i % 6] for i in range(60)]), rng)
    # Identical multi-row groups: equal count vectors, exact ties after shuffling.
    pats = np.repeat(np.arange(30) * 17 + 5, 4)
    cls = np.array([CLASSES[(i // 4) % 3] for i in range(120)])
    yield "ties_identical_groups", table(pats, cls, rng)
    # A class rarer than n_splits (scikit-learn warns), unsorted, non-contiguous patient ids.
    df = hms_like(rng, 60, 4)
    df.loc[df.index[:3], "expert_consensus"] = "GRDA"
    df.loc[df.expert_consensus == "GRDA", "expert_consensus"] = "LRDA"
    df.loc[df.index[:2], "expert_consensus"] = "GRDA"
    for c, v in zip(CLASSES, VOTES):
        df[v] = (df.expert_consensus == c).astype(int) * 3
    yield "rare_class", df
    # Few, large groups: exactly as many groups as some n_splits, so others must fail.
    pats = np.repeat([900, 12, 555, 7, 31], [40, 25, 33, 18, 29])
    cls = np.array([CLASSES[rng.choice(6)] for _ in range(len(pats))])
    yield "five_groups", table(pats, cls, rng)
    # Tiny: more splits than samples, and more splits than members of every class.
    yield "tiny", table(np.array([3, 1, 4, 1, 5, 9, 2, 6]), np.array(["LPD", "GPD"] * 4), rng)


CASES = [
    (5, False, None),
    (5, True, 42),
    (3, True, 0),
    (10, False, None),
    (10, True, 4294967295),
    (7, True, 123),
    (6, True, 42),
    (2, True, 1),
]


def main():
    out_dir = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, df in datasets():
        df.to_csv(out_dir / f"{name}.csv", index=False)
        df = pd.read_csv(out_dir / f"{name}.csv")  # exactly what the Rust side reads
        out = {"sklearn": sklearn.__version__, "numpy": np.__version__, "cases": []}
        for k, shuffle, seed in CASES:
            case = {"k": k, "shuffle": shuffle, "seed": seed}
            sgkf = StratifiedGroupKFold(n_splits=k, shuffle=shuffle, random_state=seed)
            fold = np.full(len(df), -1)
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    for i, (_, test) in enumerate(sgkf.split(df, df.expert_consensus, df.patient_id)):
                        fold[test] = i
                case["folds"] = fold.tolist()
                case["warnings"] = [str(w.message) for w in caught]
            except ValueError as e:
                case["error"] = str(e)
            out["cases"].append(case)
        (out_dir / f"{name}.json").write_text(json.dumps(out, separators=(",", ":")) + "\n")
        print(name, len(df), "rows", df.patient_id.nunique(), "patients")


if __name__ == "__main__":
    main()
