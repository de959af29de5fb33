"""The table of bench/quality.sh: per architecture and side (keras, hbac-<init>), the best
validation KL of each seed, their mean ± sample standard deviation, the out-of-fold Kaggle KL
the same way, hbac / keras of the means, and Welch's two-sided t-test of the validation KLs
against Keras' (p: how likely a difference of means this large is between two sides that
train equally well, from seed noise alone). Writes OUT/quality.json with every number.

    python bench/quality_table.py OUT

Both sides' "validation KL" is Keras' KLDivergence (y_true and y_pred clipped to [1e-7, 1],
per-row sums averaged): quality_keras.py computes it with numpy, hbac with
hbac_common::metric::keras_kl. The out-of-fold Kaggle KL is recomputed here, by one function,
from each run's oof.csv (label_id → six probabilities) against train.csv's votes.
"""

import json
import os
import re
import sys

import numpy as np
import pandas as pd
from scipy import stats

VOTES = ["seizure_vote", "lpd_vote", "gpd_vote", "lrda_vote", "grda_vote", "other_vote"]


def kaggle_kl(solution, pred):
    s = solution / solution.sum(axis=1, keepdims=True)
    p = np.clip(pred, 1e-15, 1 - 1e-15)
    terms = np.where(s > 0, s * np.log(np.where(s > 0, s, 1) / p), 0.0)
    return float(terms.sum(axis=1).mean())


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "quality-out"
    train = pd.read_csv(os.path.join(out, "data", "train.csv")).set_index("label_id")
    runs = {}
    for name in sorted(os.listdir(os.path.join(out, "runs"))):
        d = os.path.join(out, "runs", name)
        m = re.fullmatch(r"(keras\w*|hbac-\w+)-(mobilenetv3-large|efficientnetv2-b2)-(\d+)", name)
        if not m:
            continue
        side, arch, seed = m.group(1), m.group(2), int(m.group(3))
        result = os.path.join(d, "result.json" if side.startswith("keras") else "summary.json")
        if not os.path.exists(result):
            continue
        with open(result) as f:
            r = json.load(f)
        oof = pd.read_csv(os.path.join(d, "oof.csv"))
        kl = kaggle_kl(train.loc[oof["label_id"], VOTES].to_numpy(float),
                       oof[VOTES].to_numpy(float))
        runs.setdefault((arch, side), []).append(
            {"seed": seed, "valid_kl": r["valid_kl"], "best_epoch": r["best_epoch"] + 1,
             "oof_kaggle_kl": kl, "rows": len(oof)})
    stat = lambda v: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0)  # noqa
    print("| architecture | side | seeds | best validation KL per seed (epoch) | mean ± sd "
          "| OOF Kaggle KL mean ± sd | / keras | Welch p |")
    print("|---|---|---|---|---|---|---|---|")
    table = []
    for (arch, side) in sorted(runs, key=lambda k: (k[0], k[1] != "keras", k[1])):
        rs = sorted(runs[(arch, side)], key=lambda r: r["seed"])
        v = [r["valid_kl"] for r in rs]
        o = [r["oof_kaggle_kl"] for r in rs]
        mean, sd = stat(v)
        omean, osd = stat(o)
        keras = runs.get((arch, "keras"))
        ratio = None
        if keras and side != "keras":
            ratio = mean / np.mean([r["valid_kl"] for r in keras])
        p = None
        if keras and side != "keras" and len(keras) > 1 and len(v) > 1:
            p = float(stats.ttest_ind(v, [r["valid_kl"] for r in keras], equal_var=False).pvalue)
        per = ", ".join(f"{r['seed']}: {r['valid_kl']:.3f} ({r['best_epoch']})" for r in rs)
        print(f"| {arch} | {side} | {len(rs)} | {per} | {mean:.3f} ± {sd:.3f} "
              f"| {omean:.3f} ± {osd:.3f} | {'' if ratio is None else f'{ratio:.2f}×'} "
              f"| {'' if p is None else f'{p:.2f}'} |")
        table.append({"arch": arch, "side": side, "runs": rs, "valid_kl_mean": mean,
                      "valid_kl_sd": sd, "oof_kaggle_kl_mean": omean, "oof_kaggle_kl_sd": osd,
                      "ratio_to_keras": ratio, "welch_p": p})
    with open(os.path.join(out, "quality.json"), "w") as f:
        json.dump(table, f, indent=1)


if __name__ == "__main__":
    main()
