#!/usr/bin/env python3
"""Regenerates the golden files with the installed scikit-learn into a temporary directory
and checks that the committed ones are identical (same data, same folds, errors, warnings).

    python3 tests/golden/check_golden.py
"""
import json
import pathlib
import subprocess
import sys
import tempfile

here = pathlib.Path(__file__).resolve().parent
with tempfile.TemporaryDirectory() as tmp:
    subprocess.run([sys.executable, str(here / "make_folds_golden.py"), tmp], check=True, capture_output=True)
    bad = []
    for committed in sorted(here.glob("*.json")):
        fresh = pathlib.Path(tmp) / committed.name
        a, b = json.loads(committed.read_text()), json.loads(fresh.read_text())
        csv_same = (here / committed.with_suffix(".csv").name).read_bytes() == fresh.with_suffix(".csv").read_bytes()
        if a["cases"] != b["cases"] or not csv_same:
            bad.append(committed.name)
    import sklearn

    print(f"golden files vs scikit-learn {sklearn.__version__}: {'identical' if not bad else 'DIFFER: ' + ', '.join(bad)}")
    sys.exit(1 if bad else 0)
