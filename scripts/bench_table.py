"""A big label table is read and checked in bounded memory: peak RSS and seconds of tlkit's table checks.

    python scripts/bench_table.py                       # 1,000,000 rows, read + every row checked (doctor/train)
    python scripts/bench_table.py --check scan          # + what `tlkit train` does next: every listed file
                                                        #   opened (header), split carved (needs real files: the
                                                        #   rows point to hard links of a few small PNGs)
    python scripts/bench_table.py --rows 200000 --check scan --keep /tmp/t   # smaller, and keep the folder

Writes <folder>/labels.csv (path,label; 10 classes; a few hundred rows per subfolder), then runs the check in a
fresh Python process and reports its peak RSS (ru_maxrss) next to the same process's RSS right after the imports,
so the growth the table causes is visible, and the seconds the check took. Prints the command and `uptime`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLASSES = [f"class_{i}" for i in range(10)]
LINKS_PER_SOURCE = 50_000  # rows per group of source files (each file gets 5,000 links)
PER_FOLDER = 1000  # files per subfolder: a flat folder of a million entries is slow for every filesystem

CHILD = r"""
import json, resource, sys, time
from tlkit.data.table import parse_table, read_csv_table, scan_table
table, check = sys.argv[1], sys.argv[2]
def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
before = rss_mb()
start = time.perf_counter()
if check == "parse":
    parsed = parse_table(read_csv_table(table), table.rsplit("/", 1)[0])
    result = {"rows": len(parsed.rows), "classes": len(parsed.classes), "problems": sorted(parsed.problems)}
else:
    scan = scan_table(table.rsplit("/", 1)[0], table.rsplit("/", 1)[1], seed=0)
    result = {"train": len(scan.train), "val": len(scan.val), "skipped": len(scan.skipped)}
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "rss_after_imports_mb": before, "peak_rss_mb": rss_mb(), **result}))
"""


def write_table(folder: Path, rows: int, *, files: bool) -> Path:
    """labels.csv with `rows` distinct paths; files=True also makes them exist (hard links of a few small PNGs:
    a million directory entries, no extra data)."""
    from PIL import Image

    sources: dict[tuple[int, int], Path] = {}

    def source(group: int, label: int) -> Path:  # a filesystem allows ~65,000 links to one file: one per group
        if (group, label) not in sources:
            path = folder / "sources" / f"{group:03d}_{label}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (32, 32), (25 * label, 255 - 25 * label, group % 256)).save(path)
            sources[group, label] = path
        return sources[group, label]

    path = folder / "labels.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        for i in range(rows):
            sub = f"img/{i // PER_FOLDER:04d}"
            name = f"{sub}/{i:07d}.png"
            label = i % len(CLASSES)
            if files:
                if i % PER_FOLDER == 0:
                    (folder / sub).mkdir(parents=True, exist_ok=True)
                os.link(source(i // LINKS_PER_SOURCE, label), folder / name)
            writer.writerow([name, CLASSES[label]])
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--check", choices=("parse", "scan"), default="parse",
                        help="parse = read + every row checked (no file opened); scan = tlkit train's full scan")
    parser.add_argument("--keep", help="write the table here and keep it (default: a temporary folder, removed)")
    args = parser.parse_args()
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_table_"))
    folder.mkdir(parents=True, exist_ok=True)
    print("command: python " + " ".join(sys.argv))
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip())
    try:
        start = time.perf_counter()
        table = folder / "labels.csv"
        if not table.is_file():
            table = write_table(folder, args.rows, files=args.check == "scan")
        print(f"table: {table} ({args.rows:,} rows, {table.stat().st_size / 1e6:.0f} MB) written in "
              f"{time.perf_counter() - start:.1f} s")
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
        done = subprocess.run([sys.executable, "-c", CHILD, str(table), args.check], env=env, capture_output=True,
                              text=True, check=False)
        if done.returncode:
            sys.exit(f"the check failed:\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        result["growth_mb"] = result["peak_rss_mb"] - result["rss_after_imports_mb"]
        print(json.dumps(result, indent=2))
        print(f"{args.check}: {args.rows:,} rows in {result['seconds']:.1f} s; peak RSS {result['peak_rss_mb']:.0f} MB "
              f"({result['rss_after_imports_mb']:.0f} MB after imports, +{result['growth_mb']:.0f} MB for the table, "
              f"{1e6 * result['growth_mb'] / args.rows:.0f} bytes/row)")
        print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip())
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
