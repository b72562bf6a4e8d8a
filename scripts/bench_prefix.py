"""Fine-tuning the top layer groups from a cache of the frozen prefix vs a full fine-tune: seconds per epoch, cache
build time and size, validation accuracy; one markdown table.

    python scripts/bench_prefix.py                      # ../shared/datasets/cifar10_small next to the checkout
    python scripts/bench_prefix.py --root /path/to/cifar10_small --epochs 2 --out bench_prefix.md

Every row trains tf_efficientnet_lite0 (bundled ImageNet weights) at 128 px, light augmentation, SGD lr 0.01 with
the backbone's trained groups at 0.1 x, batch 32, for --epochs epochs, in its own process, one after the other:
- finetune: everything trains, every epoch runs the whole backbone over the images;
- finetune_top (cold): strategy finetune_top with train_top groups, cache.views augmented views; builds the cache;
- finetune_top (warm): the same run again, its activations read from the cache the cold row wrote.
The load average before and after each row is printed with it: on a shared machine wall times are upper bounds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "cifar10_small"
ROWS = ("finetune", "finetune_top (cold)", "finetune_top (warm)")


def recipe_dict(row: str, root: str, epochs: int, train_top: int, views: int, cache_dir: str) -> dict:
    top = row.startswith("finetune_top")
    return {
        "version": 1, "name": "bench_prefix", "seed": 42,
        "backbone": {"name": "tf_efficientnet_lite0", "weights": "auto", "input_size": 128},
        "strategy": ({"kind": "finetune_top", "train_top": train_top, "backbone_lr_mult": 0.1} if top
                     else {"kind": "finetune", "backbone_lr_mult": 0.1}),
        "data": {"root": root, "batch_size": 32},
        "augment": "light",
        "cache": {"views": views, "dir": cache_dir},
        "optim": {"name": "sgd", "lr": 0.01, "weight_decay": 1e-4, "label_smoothing": 0.1},
        "schedule": {"kind": "cosine", "warmup_epochs": 0},
        "trainer": {"epochs": epochs, "progress_bar": False, "accelerator": "cpu", "devices": 1},
    }


def run_one(args: argparse.Namespace) -> None:
    """Child process: one row, trained in-process so a callback can time each epoch; prints a JSON line."""
    import lightning as L

    from tlkit.recipe import validate_recipe
    from tlkit.run import fit

    class EpochClock(L.Callback):
        """Training seconds per epoch (the epoch minus its validation) and validation seconds."""

        def __init__(self):
            self.train: list[float] = []
            self.val: list[float] = []

        def on_train_epoch_start(self, trainer, module):
            self.epoch_started, self.val_in_epoch = time.perf_counter(), 0.0

        def on_validation_epoch_start(self, trainer, module):
            self.val_started = time.perf_counter()

        def on_validation_epoch_end(self, trainer, module):
            self.val_in_epoch = time.perf_counter() - self.val_started
            self.val.append(self.val_in_epoch)

        def on_train_epoch_end(self, trainer, module):
            self.train.append(time.perf_counter() - self.epoch_started - self.val_in_epoch)

    clock = EpochClock()
    recipe = validate_recipe(recipe_dict(args.row, args.root, args.epochs, args.train_top, args.views,
                                         args.cache_dir))
    metrics = fit(recipe, run_dir=Path(args.run_dir), callbacks=[clock])
    cache = metrics.get("feature_cache") or {}
    print(json.dumps({"train_s": clock.train, "val_s": clock.val, "val_acc": metrics.get("val_acc"),
                      "wall_s": metrics.get("wall_s"), "cache_s": cache.get("seconds") if cache.get("used") else None,
                      "cache_bytes": (cache.get("prefix") or {}).get("bytes"),
                      "shape": (cache.get("prefix") or {}).get("shape"),
                      "from_disk": cache.get("from_disk"), "extracted": cache.get("extracted")}))


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def measure(row: str, args: argparse.Namespace, workdir: Path) -> dict:
    command = [sys.executable, __file__, "--one", row, "--root", args.root, "--epochs", str(args.epochs),
               "--train-top", str(args.train_top), "--views", str(args.views), "--cache-dir", str(workdir / "cache"),
               "--run-dir", str(workdir / row.replace(" ", "_").replace("(", "").replace(")", ""))]
    before, started = load(), time.perf_counter()
    done = subprocess.run(command, check=False, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {**result, "process_s": round(wall, 1), "load": f"{before} -> {load()}"}


def table(results: list[tuple[str, dict]], args: argparse.Namespace) -> str:
    header = ("| row | train s / epoch | val s / epoch | cache build | cache size | val acc after "
              f"{args.epochs} epochs | wall (process) | load avg (1/5/15 min, before -> after) |")
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for row, r in results:
        if "error" in r:
            lines.append(f"| {row} | error: {r['error']} | | | | | | |")
            continue
        seconds = ", ".join(f"{s:.1f}" for s in r["train_s"])
        val = ", ".join(f"{s:.1f}" for s in r["val_s"])
        build = "" if r["cache_s"] is None else (f"{r['cache_s']:.0f} s" if r["extracted"] else
                                                  f"{r['cache_s']:.0f} s (read from disk)")
        size = "" if r["cache_bytes"] is None else f"{r['cache_bytes'] / 1e6:.0f} MB ({'x'.join(map(str, r['shape']))} fp16)"
        acc = f"{100 * r['val_acc']:.2f}%" if r["val_acc"] is not None else "n/a"
        lines.append(f"| {row} | {seconds} | {val} | {build} | {size} | {acc} | {r['process_s']:.0f} s | {r['load']} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=str(DEFAULT_DATA), help="data folder with train/<class>/ and val/<class>/ "
                        "(default: ../shared/datasets/cifar10_small next to the checkout)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per row (default 2)")
    parser.add_argument("--train-top", type=int, default=2, help="finetune_top's train_top (default 2)")
    parser.add_argument("--views", type=int, default=2, help="cache.views of the finetune_top rows (default 2)")
    parser.add_argument("--only", default="", help="comma-separated rows (default: all): " + ", ".join(ROWS))
    parser.add_argument("--out", help="also write the table to this file")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child process: run this row
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        run_one(argparse.Namespace(**{**vars(args), "row": args.one}))
        return 0
    args.root = os.path.abspath(args.root)
    if not (Path(args.root) / "train").is_dir():
        parser.error(f"--root {args.root} has no train/ folder; expected train/<class>/ and val/<class>/")
    wanted = [r.strip() for r in args.only.split(",") if r.strip()] or list(ROWS)
    unknown = set(wanted) - set(ROWS)
    if unknown:
        parser.error(f"unknown row(s) {', '.join(sorted(unknown))}; expected {', '.join(ROWS)}")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-prefix-") as workdir:
        for row in ROWS:
            if row in wanted:
                print(f"{row}: running", file=sys.stderr, flush=True)
                results.append((row, measure(row, args, Path(workdir))))
                print(f"{row}: {results[-1][1]}", file=sys.stderr, flush=True)
    text = (f"Data: {args.root}; {os.cpu_count()} CPU cores; tf_efficientnet_lite0 at 128 px, {args.epochs} epochs; "
            f"finetune_top trains the top {args.train_top} layer groups + head from {args.views} cached views.\n\n"
            + table(results, args))
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
