"""Transfer quality per strategy on one data set: wall time and validation accuracy, one markdown table.

    python scripts/bench_transfer.py --root /path/to/cifar10_small
    python scripts/bench_transfer.py --root /path/to/cifar10_small --only probe,recommended --out bench_transfer.md

Each row trains in its own process (`python -m tlkit train`, or fastai's `fine_tune` through
scripts/bench_fastai.py in the benchmark environment that `make bench-env` builds), one after the other, so rows do
not share caches in memory or compete for the cores; the feature cache on disk is bypassed (`--no-cache`) so every
row pays for its own features. The load average before and after each row is printed with it: on a shared machine
wall times are upper bounds.

Rows (the acceptance of the "transfer beyond tiny data" work, on a 10-class low-resolution set):
- probe: the last-layer closed-form (L-BFGS) linear probe at the backbone's own 224 px, the baseline;
- multi-layer probe: the same probe on pooled features of every stage;
- lp_ft: recipes/hymenoptera_lp_ft.yaml's LP-FT pointed at the data (expected to end at or above the probe);
- recommended: recipes/cifar10_small.yaml (expected >= 8 points above the probe within 20 minutes on 2 cores);
- fastai: `fine_tune` with the recommended recipe's backbone, size and epoch budget (when .venv-bench exists).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
BENCH_PYTHON = ROOT / ".venv-bench" / "bin" / "python"


@dataclass(frozen=True)
class Row:
    name: str
    recipe: str
    overrides: tuple[str, ...] = ()
    note: str = ""
    fastai: bool = False


ROWS = (
    Row("probe", "recipes/hymenoptera_linear_probe.yaml", ("strategy.solver=lbfgs", "backbone.input_size=224"),
        "last-layer L-BFGS linear probe, 224 px"),
    Row("multi-layer probe", "recipes/hymenoptera_linear_probe.yaml",
        ("strategy.solver=lbfgs", "strategy.features=stages", "backbone.input_size=224"),
        "L-BFGS probe on every stage (2x2 grid) + the last features, 224 px"),
    Row("lp_ft", "recipes/hymenoptera_lp_ft.yaml", (), "recipes/hymenoptera_lp_ft.yaml's LP-FT settings"),
    Row("recommended", "recipes/cifar10_small.yaml", (), "recipes/cifar10_small.yaml"),
    Row("fastai", "recipes/cifar10_small.yaml", (), "fastai fine_tune(epochs - 1, freeze_epochs=1), same size and "
        "epochs as the recommended recipe", fastai=True),
)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def why_skipped(row: Row) -> str | None:
    """Why the row cannot run on this machine (no fastai environment), else None."""
    if row.fastai and not BENCH_PYTHON.is_file():
        return "skipped: no .venv-bench (make bench-env installs fastai there)"
    return None


def run_tlkit(row: Row, root: str, workdir: Path, sets: list[str]) -> dict:
    run_dir = workdir / row.name.replace(" ", "_")
    command = [sys.executable, "-m", "tlkit", "train", "--recipe", str(ROOT / row.recipe), "--run-dir", str(run_dir),
               "--no-cache", "--set", f"data.root={root}", "--set", "trainer.progress_bar=false"]
    for item in (*row.overrides, *sets):
        command += ["--set", item]
    done = subprocess.run(command, check=False, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"val_acc": metrics.get("val_acc"), "best_val_acc": metrics.get("best_val_acc"),
            "epochs": metrics.get("epochs")}


def run_fastai(row: Row, root: str, sets: list[str]) -> dict:
    from tlkit.recipe import load_recipe

    epochs = load_recipe(ROOT / row.recipe, [f"data.root={root}", *sets]).trainer.epochs
    command = [str(BENCH_PYTHON), str(ROOT / "scripts" / "bench_fastai.py"), "--recipe", str(ROOT / row.recipe),
               "--set", f"data.root={root}", "--epochs", str(epochs), *[a for s in sets for a in ("--set", s)]]
    done = subprocess.run(command, check=False, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    result = json.loads(done.stdout[done.stdout.index("{"):])
    return {"val_acc": result["val_acc"], "best_val_acc": None, "epochs": epochs}


def measure(row: Row, root: str, workdir: Path, sets: list[str]) -> dict:
    skipped = why_skipped(row)
    if skipped:
        return {"skipped": skipped}
    before, started = load(), time.perf_counter()
    result = run_fastai(row, root, sets) if row.fastai else run_tlkit(row, root, workdir, sets)
    return {**result, "wall_s": round(time.perf_counter() - started, 1), "load": f"{before} -> {load()}"}


def percent(value: float | None) -> str:
    return f"{100 * value:.2f}%" if value is not None else "n/a"


def table(results: list[tuple[Row, dict]]) -> str:
    lines = ["| strategy | what | wall | final val acc | best val acc | epochs | load avg (1/5/15 min, before -> after) |",
             "|---|---|---|---|---|---|---|"]
    for row, r in results:
        if "skipped" in r or "error" in r:
            lines.append(f"| {row.name} | {row.note} | {r.get('skipped') or 'error: ' + r['error']} | | | | |")
            continue
        lines.append(f"| {row.name} | {row.note} | {r['wall_s']:.0f} s | {percent(r['val_acc'])} | "
                     f"{percent(r['best_val_acc'])} | {r['epochs']} | {r['load']} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="data folder with train/<class>/ and val/<class>/")
    parser.add_argument("--only", default="", help="comma-separated row names (default: all): "
                        + ", ".join(r.name for r in ROWS))
    parser.add_argument("--set", dest="sets", action="append", default=[],
                        help="an override for every row, e.g. trainer.epochs=2 for a quick look")
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args()
    wanted = {n.strip() for n in args.only.split(",") if n.strip()}
    unknown = wanted - {r.name for r in ROWS}
    if unknown:
        parser.error(f"unknown row(s) {', '.join(sorted(unknown))}; expected {', '.join(r.name for r in ROWS)}")
    if not (Path(args.root) / "train").is_dir():
        parser.error(f"--root {args.root} has no train/ folder; expected train/<class>/ and val/<class>/")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-transfer-") as workdir:
        for row in ROWS:
            if wanted and row.name not in wanted:
                continue
            print(f"{row.name}: running ({row.note})", file=sys.stderr, flush=True)
            results.append((row, measure(row, os.path.abspath(args.root), Path(workdir), args.sets)))
    cpu = os.cpu_count()
    text = (f"Data: {args.root}; {cpu} CPU cores; each row in its own process, one after the other.\n\n"
            + table(results))
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
