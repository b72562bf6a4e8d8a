"""Write a PNG grid of training samples after augmentation and mixing:
python scripts/preview_augment.py --recipe recipes/hymenoptera_finetune.yaml [--n 16] [--out FILE] [--set k=v]."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from tlkit.cli.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["preview", *sys.argv[1:]]))
