"""Predict labels: python scripts/predict.py --checkpoint C INPUT... [--out predictions.csv] [--json F]."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from tlkit.cli.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["predict", *sys.argv[1:]]))
