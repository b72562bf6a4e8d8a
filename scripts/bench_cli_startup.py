"""How fast the command line answers when nothing needs a model: `tlkit --help` and a recipe with three mistakes.

Both must stay torch-free (the settings models and the CLI parser import no torch, Lightning, timm or
albumentations). Prints the median wall time of N runs of each and the heavy modules each path imported.

    python scripts/bench_cli_startup.py [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAVY = ("torch", "lightning", "timm", "albumentations", "cv2")
BAD_RECIPE = """version: 1
data: {root: .}
optim: {lr: -1, nesterov: true}
strategy: {kind: fine_tune}
"""


def imported_heavy(args: list[str]) -> list[str]:
    """Heavy top-level modules imported while running the CLI with `args` (python -X importtime)."""
    code = f"import sys; sys.argv = ['tlkit', *{args!r}]; from tlkit.cli import main; main()"
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True)
    names = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    return sorted(n for n in names if n in HEAVY)


def wall(args: list[str], runs: int) -> tuple[float, int]:
    times, code = [], 0
    for _ in range(runs):
        started = time.perf_counter()
        code = subprocess.run([sys.executable, "-m", "tlkit.cli", *args], capture_output=True).returncode
        times.append(time.perf_counter() - started)
    return statistics.median(times), code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    runs = parser.parse_args().runs
    with tempfile.TemporaryDirectory() as tmp:
        recipe = Path(tmp) / "bad.yaml"
        recipe.write_text(BAD_RECIPE)
        cases = {"tlkit --help": ["--help"], "tlkit recipe show (3 mistakes)": ["recipe", "show", str(recipe)]}
        print(f"{'command':34} {'median s':>9} {'exit':>5}  heavy modules imported")
        for name, args in cases.items():
            seconds, code = wall(args, runs)
            heavy = imported_heavy(args)
            print(f"{name:34} {seconds:9.2f} {code:5d}  {', '.join(heavy) or 'none'}")


if __name__ == "__main__":
    main()
