#!/usr/bin/env python3
"""The table of bench/recipes.sh: for each finished `hbac local` run folder, its out-of-fold
CV (report.json), the same predictions scored per eeg_id (each recording's rows averaged,
against their votes summed: as report.json's `cv_per_eeg`, recomputed here so that runs of
older hbac versions compare too), and the Kaggle KL of its submission on the synthetic hidden
test labels (`<run>/data/test_labels.csv`).

    python3 bench/recipes_table.py RUN_DIR [RUN_DIR ...]

Needs numpy and pandas.
"""
import json
import os
import sys

import numpy as np
import pandas as pd

VOTES = ["seizure_vote", "lpd_vote", "gpd_vote", "lrda_vote", "grda_vote", "other_vote"]


def kaggle_kl(y, p):
    y = y / y.sum(axis=1, keepdims=True)
    p = np.clip(p / p.sum(axis=1, keepdims=True), 1e-15, 1)
    return float(np.where(y > 0, y * np.log(np.where(y > 0, y, 1) / p), 0).sum(axis=1).mean())


def per_eeg(run):
    train = pd.read_csv(os.path.join(run, "data", "train.csv"))
    oof = pd.read_csv(os.path.join(run, "oof.csv"))
    m = oof.merge(train[["label_id", "eeg_id"] + VOTES], on="label_id", suffixes=("_p", ""))
    g = m.groupby("eeg_id")
    y = g[VOTES].sum().to_numpy(float)
    p = g[[v + "_p" for v in VOTES]].mean().to_numpy(float)
    return kaggle_kl(y, p)


def test_kl(run):
    sub = pd.read_csv(os.path.join(run, "submission.csv")).sort_values("eeg_id")
    sol = pd.read_csv(os.path.join(run, "data", "test_labels.csv")).sort_values("eeg_id")
    return kaggle_kl(sol[VOTES].to_numpy(float), sub[VOTES].to_numpy(float)), len(sub)


print("| run | CV (rows) | CV per eeg_id | test KL (rows) |")
print("|---|---|---|---|")
for run in sys.argv[1:]:
    with open(os.path.join(run, "report.json")) as f:
        report = json.load(f)
    t, n = test_kl(run)
    print(f"| {os.path.basename(run.rstrip('/'))} | {report['cv']:.4f} | {per_eeg(run):.4f} "
          f"| {t:.4f} ({n}) |")
