"""`tlkit predict` over many small files: seconds to the first rows on disk, RSS over the run (flat?), images/s.

    python scripts/bench_predict.py                            # 20,000 generated 64 px PNGs, a tiny random model
    python scripts/bench_predict.py --model lite0 --images 2000   # the bundled EfficientNet-Lite0 at 224 px
    python scripts/bench_predict.py --num-workers 2 --keep /tmp/bp # loader workers; keep the images and outputs

Generates the images (once, in --keep if given), writes a checkpoint of the model (a random head: the numbers do
not matter here), then runs `python -m tlkit predict FOLDER --out predictions.csv` as a subprocess and polls, every
0.1 s, the rows written so far (the CSV is written to a temporary file beside --out that replaces it at the end) and
the RSS of the process and its loader workers. Reports: seconds to the first rows on disk, RSS when 10%, 50% and 90%
of the rows were on disk and the peak, and images/s (wall, including start-up, and as tlkit reports it). Prints the
command and `uptime` before and after: on a shared machine the figures move with the load.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PER_FOLDER = 1000
MODELS = {"tiny": ("test_resnet", 64, "none"), "lite0": ("tf_efficientnet_lite0", 224, "bundled")}


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def make_images(folder: Path, count: int, size: int = 64) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    for i in range(count):
        path = folder / f"{i // PER_FOLDER:03d}" / f"{i:06d}.png"
        if i % PER_FOLDER == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.roll(base, i, axis=1)).save(path)


def make_checkpoint(folder: Path, model: str) -> Path:
    from tlkit.infer.export import export_safetensors
    from tlkit.model.classifier import create_classifier

    name, size, weights = MODELS[model]
    classifier = create_classifier({"name": name, "input_size": size}, [f"class_{i}" for i in range(10)],
                                   weights=weights, tta="none")
    weights_path, _, _ = export_safetensors(classifier, folder / f"model_{model}")
    return weights_path


def tree_rss_mb(pid: int) -> float:
    """RSS of `pid` and its descendants (loader workers), MB, from /proc."""
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total


def rows_on_disk(out: Path) -> int:
    """Rows in --out, or in the temporary file beside it that replaces it at the end."""
    candidates = [out] if out.exists() else list(out.parent.glob(f".{out.stem}.*.tmp{out.suffix}"))
    for path in candidates:
        try:
            with open(path, "rb") as f:
                return max(0, sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b"")) - 1)
        except OSError:
            continue
    return 0


def run(command: list[str], out: Path, total: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[tuple[float, str]] = []  # stderr lines as they arrive: when did progress show?
    reader = threading.Thread(target=lambda: lines.extend((time.perf_counter() - started, line)
                                                          for line in process.stderr), daemon=True)
    reader.start()
    first = None
    samples: list[tuple[float, int, float]] = []  # (seconds, rows on disk, tree RSS MB)
    while process.poll() is None:
        rows = rows_on_disk(out)
        now = time.perf_counter() - started
        if rows and first is None:
            first = now
        samples.append((now, rows, tree_rss_mb(process.pid)))
        time.sleep(0.1)
    stdout = process.stdout.read()
    reader.join()
    wall = time.perf_counter() - started
    if process.returncode:
        sys.exit(f"tlkit predict failed ({process.returncode}):\n{''.join(line for _, line in lines)[-3000:]}")
    progress = [t for t, line in lines if re.match(r"predicted [\d,]+ of", line)]
    reported = re.search(r"([\d.]+) images/s", stdout)
    at = {}
    for fraction in (0.1, 0.5, 0.9):
        reached = [s for s in samples if s[1] >= fraction * total]
        at[fraction] = reached[0] if reached else None
    return {"first_rows_s": first, "first_progress_s": progress[0] if progress else None, "wall_s": wall, "samples": samples, "at": at, "stdout": stdout,
            "peak_rss_mb": max((s[2] for s in samples), default=0.0),
            "reported_images_per_s": float(reported.group(1)) if reported else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--num-workers", default="0")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--keep", help="folder for the images and outputs, kept (default: a temporary one)")
    args = parser.parse_args()
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_predict_"))
    images = folder / f"images_{args.images}"
    print("command: python " + " ".join(sys.argv))
    print("uptime (start):", uptime())
    try:
        if not images.is_dir():
            started = time.perf_counter()
            make_images(images, args.images)
            print(f"generated {args.images:,} images in {time.perf_counter() - started:.0f} s")
        checkpoint = make_checkpoint(folder, args.model)
        out = folder / "predictions.csv"
        out.unlink(missing_ok=True)  # rows_on_disk must not count an earlier run's file
        command = [sys.executable, "-m", "tlkit", "predict", "--checkpoint", str(checkpoint), str(images), "--out",
                   str(out), "--overwrite", "--num-workers", args.num_workers, "--devices", str(args.devices),
                   "--top-k", "1"]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        started = time.perf_counter()  # what the machine's load does to start-up alone
        subprocess.run([sys.executable, "-c", "import tlkit.run.checkpoints, tlkit.infer.bulk"], env=env, check=True)
        print(f"importing tlkit's predict path (torch, Lightning, timm) alone: {time.perf_counter() - started:.1f} s")
        print("tlkit: " + " ".join(command[1:]))
        result = run(command, out, args.images)
        print(result["stdout"].strip().splitlines()[-1])
        print(f"first rows on disk after {result['first_rows_s']:.1f} s, first progress line after "
              f"{result['first_progress_s']:.1f} s (process start included)")
        for fraction, sample in result["at"].items():
            if sample:
                print(f"RSS at {fraction:.0%} of rows ({sample[1]:,} rows, {sample[0]:.1f} s): {sample[2]:.0f} MB")
        peak = max(result["samples"], key=lambda sample: sample[2])
        print(f"peak RSS (process + loader workers, sampled every 0.1 s): {result['peak_rss_mb']:.0f} MB, at "
              f"{peak[0]:.1f} s with {peak[1]:,} rows on disk")
        rate = args.images / result["wall_s"]
        print(f"{args.images:,} images in {result['wall_s']:.1f} s wall = {rate:.0f} images/s "
              f"(tlkit reports {result['reported_images_per_s']} images/s, start-up excluded)")
        lines = rows_on_disk(out)
        print(f"rows in {out.name}: {lines:,}")
        print("uptime (end):", uptime())
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
