"""Folder vs LitData stream: how long `tlkit data optimize` takes, and loader images/s from each at one input size.

    python scripts/bench_stream.py DATA --work runs/bench_stream --size 224 --workers 2
DATA is an image folder (root/{train,val}/<class>/ or root/<class>/). The stream is written to <work>/stream
(replaced). Loader figures read the training split once with the eval transform (decode + resize + crop +
normalise, no model), batch 32. Prints a markdown table and the load average, which on a shared machine dominates
the noise.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path


def images_per_second(loader, limit: int) -> tuple[float, int]:
    seen, started = 0, time.perf_counter()
    for images, _ in loader:
        seen += len(images)
        if seen >= limit:
            break
    return seen / (time.perf_counter() - started), seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--work", default="runs/bench_stream")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--short-side", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--limit", type=int, default=10_000, help="images read per loader at most")
    args = parser.parse_args()

    from tlkit.data.augment import build_eval_transform
    from tlkit.data.datamodule import ImageDataset, make_loader
    from tlkit.data.preprocessing import Preprocessing
    from tlkit.data.stream import optimize_data, streaming_dataset_class
    from tlkit.data.table import scan_data

    stream = Path(args.work) / "stream"
    started = time.perf_counter()
    manifest = optimize_data(args.data, stream, short_side=args.short_side, num_workers=args.workers,
                             overwrite=stream.exists(), progress=False)
    optimize_s = time.perf_counter() - started
    folder_bytes = sum(f.stat().st_size for f in Path(args.data).rglob("*") if f.is_file())
    stream_bytes = sum(f.stat().st_size for f in stream.rglob("*") if f.is_file())

    pre = Preprocessing(input_size=args.size, crop_pct=0.875, interpolation="bicubic", mean=(0.485, 0.456, 0.406),
                        std=(0.229, 0.224, 0.225))
    transform = build_eval_transform(pre)
    scan = scan_data(args.data)
    folder_loader = make_loader(ImageDataset(scan.train, transform), batch_size=32, shuffle=False,
                                num_workers=args.workers)
    folder_rate, folder_n = images_per_second(folder_loader, args.limit)
    from litdata import StreamingDataLoader

    stream_set = streaming_dataset_class()(str(stream / "train"), transform=transform, seed=0, shuffle=False)
    stream_loader = StreamingDataLoader(stream_set, batch_size=32, num_workers=args.workers)
    stream_rate, stream_n = images_per_second(stream_loader, args.limit)

    print(f"{args.data}: {manifest['splits']['train']['images']} train + {manifest['splits']['val']['images']} val "
          f"images; {args.workers} workers; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}")
    print("| | folder | stream |")
    print("|---|---|---|")
    print(f"| size on disk | {folder_bytes / 1e6:.1f} MB | {stream_bytes / 1e6:.1f} MB (JPEG, shorter side "
          f"{args.short_side}) |")
    print(f"| optimize | - | {optimize_s:.1f} s |")
    print(f"| loader, {args.size} px eval transform | {folder_rate:.0f} img/s ({folder_n}) | "
          f"{stream_rate:.0f} img/s ({stream_n}) |")


if __name__ == "__main__":
    main()
