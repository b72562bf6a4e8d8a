"""tlkit init-stats: python scripts/init_stats.py ... (same arguments as `tlkit init-stats`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from tlkit.cli.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["init-stats", *sys.argv[1:]]))
