"""Export a model: python scripts/export.py --checkpoint C --out DIR [--images PATH...] [--no-onnx]."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from tlkit.cli.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
