"""`tlkit data optimize`: its arguments and what it runs (tlkit.cli.main adds them)."""

from __future__ import annotations

import argparse

from tlkit.data.settings import DEFAULT_SEED, DEFAULT_VAL_FRACTION


def _side(text: str) -> int:
    value = int(text)
    if not 16 <= value <= 8192:
        raise argparse.ArgumentTypeError(f"expected 16-8192 pixels; got {text} (256 covers a 224 px model)")
    return value


def _workers(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more processes; got {text}")
    return value


def add_data_parser(sub) -> None:
    data = sub.add_parser("data", help="prepare data: optimize a folder or table into a LitData stream")
    actions = data.add_subparsers(dest="data_command", required=True)
    optimize = actions.add_parser(
        "optimize", help="write a folder or label table as LitData chunks (JPEG at a bounded side, labels, split, "
                         "class names); train from it with data.source: litdata")
    optimize.add_argument("src", metavar="SRC", help="image folder, or a label table (.csv) with its images (only read)")
    optimize.add_argument("out", metavar="OUT", help="new or empty folder (or s3:// prefix) for the stream")
    optimize.add_argument("--short-side", type=_side, default=256,
                          help="shorter side of the stored JPEGs in pixels, never enlarged (default 256: a 224 px "
                               "model's eval resize)")
    optimize.add_argument("--quality", type=int, default=90, choices=range(50, 101), metavar="50-100",
                          help="JPEG quality (default 90)")
    optimize.add_argument("--workers", type=_workers, help="encoding processes (default: one per CPU)")
    optimize.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION,
                          help=f"val share carved when SRC has no val split (default {DEFAULT_VAL_FRACTION}, as "
                               "data.val_fraction)")
    optimize.add_argument("--test-fraction", type=float, default=0.0,
                          help="test share carved when SRC has no test split (default 0)")
    optimize.add_argument("--seed", type=int, default=DEFAULT_SEED,
                          help=f"seed of a carved split (default {DEFAULT_SEED}, a recipe's seed)")
    optimize.add_argument("--overwrite", action="store_true", help="replace an earlier stream at OUT")
    optimize.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_data(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from tlkit.data.stream import optimize_data

    data: dict = {"val_fraction": args.val_fraction, "test_fraction": args.test_fraction}
    src = Path(args.src)
    if src.suffix.lower() == ".csv" and src.is_file():  # a table: its folder is the data root
        data.update(source="csv", csv=src.name)
        src = src.parent
    started = time.perf_counter()
    manifest = optimize_data(src, args.out, short_side=args.short_side, quality=args.quality, num_workers=args.workers,
                             overwrite=args.overwrite, progress=not args.no_progress, data=data, seed=args.seed)
    counts = ", ".join(f"{split} {info['images']}" for split, info in manifest["splits"].items())
    print(f"wrote {args.out}: {len(manifest['classes'])} classes, {counts} images, JPEG with the shorter "
          f"side at most {args.short_side} px, in {time.perf_counter() - started:.1f} s")
    print(f"train on it: tlkit train --recipe R --set data.source=litdata --set data.root={args.out} (or "
          f"tlkit.data.stream.StreamDataModule({args.out!r}) with a lightning.Trainer)")
    return 0
