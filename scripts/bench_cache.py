"""Peak memory of a cached linear probe as the cache grows: a synthetic feature cache of N rows x D features is
written through tlkit's FeatureCache, then a fresh process reads it (identities looked up, every row's checksum
checked) and trains a linear probe on it for one epoch; its peak resident memory is the figure. One markdown table.

    python scripts/bench_cache.py                                # 50,000 and 500,000 rows x 1,280 features
    python scripts/bench_cache.py --rows 50000 500000 --width 1280 --epochs 1 --solver sgd
    python scripts/bench_cache.py --rows 50000 --solver lbfgs    # the closed-form probe instead of SGD epochs

Each size runs in its own child processes (one builds the cache, one trains on it), so each peak (ru_maxrss, the
process's high-water mark, which counts mapped file pages too) belongs to that run alone. The rows are stream-like
ids ("row-17") with identity=str, the way a stream source calls the cache; the probe is tlkit's TransferModule
(tf_efficientnet_lite0 widths, random weights, nothing downloaded) under a plain lightning.Trainer reading
CachedFeatures through tlkit's loader. The cache is written under --dir (default: a temporary folder, removed
afterwards): N x D x 4 bytes of disk (2.6 GB for 500,000 x 1,280).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
CLASSES = 10
KEY = {"bench": "synthetic", "version": 1}


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def current_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def synthetic_rows(n: int, width: int):
    """compute() for the cache: rows a 4,096 batch at a time, class mean + noise (label = id number % CLASSES)."""
    import torch

    means = torch.randn(CLASSES, width, generator=torch.Generator().manual_seed(0))

    def compute(ids):
        for start in range(0, len(ids), 4096):
            numbers = torch.tensor([int(i.split("-")[1]) for i in ids[start: start + 4096]])
            noise = torch.randn(len(numbers), width, generator=torch.Generator().manual_seed(start))
            yield means[numbers % CLASSES] + 2.0 * noise

    return compute


def build(args) -> dict:
    from tlkit.data.cache import FeatureCache

    started = time.perf_counter()
    ids = [f"row-{i}" for i in range(args.n)]
    cache = FeatureCache(args.cache)
    cache.rows(KEY, ids, synthetic_rows(args.n, args.width), identity=str)
    return {"seconds": round(time.perf_counter() - started, 1), "peak_mb": round(peak_mb()),
            "extracted": cache.stats.misses}


def train(args) -> dict:
    import lightning as L
    import torch

    from tlkit.data.cache import CachedFeatures, FeatureCache
    from tlkit.data.datamodule import make_loader
    from tlkit.model.module import TransferModule

    torch.set_num_threads(1)
    module = TransferModule({"name": "tf_efficientnet_lite0", "weights": "none"}, [str(c) for c in range(CLASSES)],
                            strategy={"kind": "linear_probe", "solver": args.solver},
                            optim={"name": "sgd", "lr": 0.01})
    baseline = current_mb()  # torch, Lightning and the model, before any row
    started = time.perf_counter()
    ids = [f"row-{i}" for i in range(args.n)]
    cache = FeatureCache(args.cache)

    def not_cached(missing):
        raise SystemExit(f"{len(missing)} rows are not in the cache")

    rows = cache.rows(KEY, ids, not_cached, identity=str)
    labels = torch.arange(args.n) % CLASSES
    train_set = CachedFeatures([rows], labels, paths=ids)
    read_s = time.perf_counter() - started
    started = time.perf_counter()
    if args.solver == "lbfgs":
        from tlkit.model.probe import fit_logistic_head

        views, targets = train_set.usable()
        _, _, info = fit_logistic_head(views, targets, num_classes=CLASSES, seed=0)
        result = {"C": info["C"], "holdout_acc": info["holdout_acc"][info["C"]]}
    else:
        loader = make_loader(train_set, batch_size=args.batch_size, shuffle=True, num_workers=0, seed=0)
        trainer = L.Trainer(max_epochs=args.epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
        trainer.fit(module, train_dataloaders=loader)
        result = {"train_acc": round(float(trainer.callback_metrics.get("train_acc", float("nan"))), 4)}
    return {"read_s": round(read_s, 1), "train_s": round(time.perf_counter() - started, 1),
            "baseline_mb": round(baseline), "peak_mb": round(peak_mb()), "from_disk": cache.stats.hits, **result}


def child(stage: str, n: int, cache: Path, args) -> dict:
    command = [sys.executable, __file__, "--child", stage, "--n", str(n), "--cache", str(cache),
               "--width", str(args.width), "--epochs", str(args.epochs), "--solver", args.solver,
               "--batch-size", str(args.batch_size)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{stage} {n} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[50_000, 500_000])
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--solver", choices=["sgd", "lbfgs"], default="sgd")
    parser.add_argument("--dir", type=Path, default=None, help="where the caches go (default: a temporary folder)")
    parser.add_argument("--child", choices=["build", "train"], help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps((build if args.child == "build" else train)(args)))
        return
    base = Path(tempfile.mkdtemp(prefix="bench_cache_", dir=args.dir))
    print(f"load average before: {os.getloadavg()[0]:.1f}; {os.cpu_count()} CPUs", flush=True)
    print(f"| rows x {args.width} | cache on disk | build s | build peak MB | read + check s | {args.solver} s | "
          "after imports MB | peak RSS MB | result |")
    print("|---|---|---|---|---|---|---|---|---|")
    try:
        for n in args.rows:
            cache = base / f"rows_{n}"
            built = child("build", n, cache, args)
            size = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())
            trained = child("train", n, cache, args)
            result = {k: v for k, v in trained.items() if k not in ("read_s", "train_s", "baseline_mb", "peak_mb",
                                                                     "from_disk")}
            print(f"| {n:,} | {size / 1e9:.2f} GB | {built['seconds']} | {built['peak_mb']:,} | {trained['read_s']} | "
                  f"{trained['train_s']} | {trained['baseline_mb']:,} | {trained['peak_mb']:,} | {result} |",
                  flush=True)
            shutil.rmtree(cache)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
