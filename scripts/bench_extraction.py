"""Feature extraction shared by the processes of a 2-process CPU DDP probe (gloo), against each process extracting
everything (tlkit before the shared cache) and against one process using both cores. One markdown table.

    python scripts/bench_extraction.py                       # 400 generated 160 px JPEGs, lite0 at 128 px
    python scripts/bench_extraction.py --images 400 --input-size 128 --keep /tmp/bench_extraction

Each row is a real `tlkit.run.fit` of a linear probe (tf_efficientnet_lite0, random weights, nothing downloaded,
1 epoch, cache.views 1, data.num_workers 0) on the same generated folder, with its own empty cache folder:
- 2 processes, shared: torchrun --nproc_per_node 2, one thread each; each process extracts its share of the images;
- 2 processes, each all: the same launch with the early process group turned off, so each process extracts every
  image itself, as tlkit did before;
- 1 process, 2 threads: one process, torch using both cores;
- 1 process, 1 thread: the serial reference.
"extraction s" is the slowest process's time in the feature extraction step (cache look-up, its own share, waiting
for the other process, reading the other's rows); "computed" counts the rows each process ran through the backbone.
The script then checks that the shared run computed every row exactly once and that its cached rows are
bit-identical to those of one process with the same settings (each process of the each-all run is one), and prints
how far the 2-thread process's rows are (more threads split the sums differently: rounding-level differences).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

RANK_SCRIPT = """
import json, os, sys, torch
torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
import tlkit.run
F = sys.modules["tlkit.run.fit"]
if os.environ.get("BENCH_NO_GROUP"):  # tlkit before the shared cache: no process group until the Trainer's
    F.start_process_group = lambda accelerator: False
from tlkit.recipe import load_recipe
metrics = F.fit(load_recipe(sys.argv[1]), run_dir=sys.argv[2])
rank = os.environ.get("RANK", "0")
with open(os.path.join(sys.argv[2], f"cache_rank{rank}.json"), "w") as f:
    json.dump(metrics["feature_cache"], f)
"""


def write_images(root: Path, count: int, size: int) -> int:
    """`count` random JPEGs in train/ (80 %) and val/ (20 %), two classes; returns how many."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        split = "val" if i % 5 == 0 else "train"
        folder = root / split / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        pixels[..., i % 2] //= 2  # a little signal
        Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)
    return count


def recipe(root: Path, cache: Path, devices: int, input_size: int) -> dict:
    return {"version": 1, "name": "bench_extraction", "seed": 0,
            "backbone": {"name": "tf_efficientnet_lite0", "weights": "none", "input_size": input_size},
            "strategy": {"kind": "linear_probe"}, "augment": "none",
            "data": {"root": str(root), "batch_size": 16, "num_workers": 0},
            "cache": {"dir": str(cache)},
            "trainer": {"epochs": 1, "accelerator": "cpu", "devices": devices,
                        **({"strategy": "ddp"} if devices > 1 else {}), "progress_bar": False}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(work: Path, name: str, root: Path, *, processes: int, threads: int, group: bool, input_size: int) -> dict:
    import yaml

    folder = work / name
    folder.mkdir()
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe(root, folder / "cache", processes, input_size)))
    script = folder / "rank.py"
    script.write_text(RANK_SCRIPT)
    run_dir = folder / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads), "BENCH_THREADS": str(threads),
           "TLKIT_RUN_ID": name}
    if not group:
        env["BENCH_NO_GROUP"] = "1"
    command = [sys.executable, str(script), str(folder / "recipe.yaml"), str(run_dir)]
    if processes > 1:
        command[1:1] = ["-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port",
                        str(free_port())]
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=folder, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-4000:]}")
    ranks = [json.loads(p.read_text()) for p in sorted(run_dir.glob("cache_rank*.json"))]
    return {"seconds": max(r["seconds"] for r in ranks), "computed": [r["extracted"] for r in ranks],
            "cache": folder / "cache"}


def stored(cache: Path) -> dict[tuple[str, bytes], bytes]:
    """(entry, row identity digest) -> the row's bytes, over every shard of a cache folder."""
    from safetensors.numpy import load_file

    rows = {}
    for path in sorted(cache.rglob("*.safetensors"), key=lambda p: p.name):
        data = load_file(str(path))
        entry = path.parent.parent.name
        for digest, row in zip(data["ids"].view("V16").reshape(-1), data["features"]):
            rows[entry, digest.tobytes()] = row.tobytes()
    return rows


def largest_difference(a: dict, b: dict) -> float:
    import numpy as np

    if a.keys() != b.keys():
        return float("inf")
    return max(float(np.abs(np.frombuffer(a[k], np.float32) - np.frombuffer(b[k], np.float32)).max()) for k in a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--size", type=int, default=160, help="side of the generated JPEGs (px)")
    parser.add_argument("--input-size", type=int, default=128)
    parser.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: a temporary one)")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_extraction_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        images = write_images(work / "images", args.images, args.size)
        print(f"load average before: {os.getloadavg()[0]:.1f}; {os.cpu_count()} CPUs; {images} images "
              f"({args.size} px JPEG), tf_efficientnet_lite0 at {args.input_size} px", flush=True)
        common = {"root": work / "images", "input_size": args.input_size}
        rows = {
            "2 processes, shared": run(work, "shared", processes=2, threads=1, group=True, **common),
            "2 processes, each all": run(work, "each_all", processes=2, threads=1, group=False, **common),
            "1 process, 2 threads": run(work, "single", processes=1, threads=2, group=True, **common),
            "1 process, 1 thread": run(work, "single_thread", processes=1, threads=1, group=True, **common),
        }
        print(f"load average after: {os.getloadavg()[0]:.1f}\n")
        print("| run | extraction s | rows computed per process |\n|---|---|---|")
        for name, row in rows.items():
            print(f"| {name} | {row['seconds']:.1f} | {' + '.join(map(str, row['computed']))} |")
        shared, each, single, _ = rows.values()
        print(f"\nshared / each-all: {shared['seconds'] / each['seconds']:.2f}; "
              f"shared / one process: {shared['seconds'] / single['seconds']:.2f}")
        a, b, c = stored(shared["cache"]), stored(each["cache"]), stored(single["cache"])
        print(f"every image computed once in the shared run: {sum(shared['computed']) == images} "
              f"({sum(shared['computed'])} rows for {images} images)")
        # each process of the each-all run is one process extracting everything with the shared run's settings
        print(f"shared rows bit-identical to one process's (1 thread): {a == b} ({len(a)} rows); largest "
              f"difference from the 2-thread process's rows: {largest_difference(a, c):.2g}")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
