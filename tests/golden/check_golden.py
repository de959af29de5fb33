#!/usr/bin/env python3
"""Regenerates the golden files into a temporary directory and checks the committed ones:
the folds with the installed scikit-learn (identical: same data, same folds, errors, warnings),
and the EEG mel spectrograms with the installed librosa (same recording; images within 1e-5).

    python3 tests/golden/check_golden.py           # both
    python3 tests/golden/check_golden.py folds     # or one: folds | eeg
"""
import json
import pathlib
import subprocess
import sys
import tempfile

here = pathlib.Path(__file__).resolve().parent


def check_folds(tmp):
    subprocess.run([sys.executable, str(here / "make_folds_golden.py"), tmp], check=True, capture_output=True)
    bad = []
    for committed in sorted(here.glob("*.json")):
        fresh = pathlib.Path(tmp) / committed.name
        a, b = json.loads(committed.read_text()), json.loads(fresh.read_text())
        csv_same = (here / committed.with_suffix(".csv").name).read_bytes() == fresh.with_suffix(".csv").read_bytes()
        if a["cases"] != b["cases"] or not csv_same:
            bad.append(committed.name)
    import sklearn

    print(f"fold golden files vs scikit-learn {sklearn.__version__}: {'identical' if not bad else 'DIFFER: ' + ', '.join(bad)}")
    return not bad


def check_eeg(tmp):
    import librosa
    import numpy as np
    import pandas as pd

    committed = here / "eeg"
    subprocess.run([sys.executable, str(committed / "make_eeg_golden.py"), tmp], check=True, capture_output=True)
    fresh = pathlib.Path(tmp)
    meta = json.loads((committed / "cases.json").read_text())
    ok = pd.read_parquet(committed / meta["recording"]).equals(pd.read_parquet(fresh / meta["recording"]))
    worst = 0.0
    for case in meta["cases"]:
        a, b = np.load(committed / case["image"]), np.load(fresh / case["image"])
        worst = max(worst, float(np.abs(a - b).max()) if a.shape == b.shape else float("inf"))
    ok = ok and worst <= 1e-5
    print(f"EEG golden files (librosa {meta['librosa']}) vs librosa {librosa.__version__}: "
          f"recording {'identical' if ok else 'DIFFERS'}, images max |difference| {worst:.2e}")
    return ok


which = sys.argv[1:] or ["folds", "eeg"]
results = []
for name in which:
    with tempfile.TemporaryDirectory() as tmp:
        results.append({"folds": check_folds, "eeg": check_eeg}[name](tmp))
sys.exit(0 if all(results) else 1)
