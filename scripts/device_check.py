"""A first look at a new machine: probe, fine-tune and predict on whatever accelerator is present, with images/s per
phase and whether the loader or the device is the bottleneck. Minutes, not hours; nothing is downloaded.

    python scripts/device_check.py                       # generated images, tf_efficientnet_lite0 at 224 px
    python scripts/device_check.py --data my_images --precision bf16-mixed --workers auto

For each phase it measures three rates: the loader alone (decode + transform, no model), the device alone (the same
batch over and over, already on the device), and both together. The slower of the first two is the bottleneck:
more loader workers (or a LitData stream at a bounded side) help when it is the loader, a bigger GPU or mixed
precision when it is the device. Random weights: speed does not depend on them, and nothing is fetched.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def write_images(root: Path, count: int, side: int) -> Path:
    """Photo-sized random JPEGs in two classes: what decoding costs, without any download."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (side * 3 // 4, side, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)
    return root


def timed(batches, step, limit: int) -> float:
    """images/s of `step` over `batches` (re-read from the start as often as needed) after one warm-up batch, until
    `limit` images have been seen: a loader's later epochs decode every image again, as in training."""
    def endless():
        while True:
            yield from batches

    iterator = endless()
    step(next(iterator))
    seen, started = 0, time.perf_counter()
    while seen < limit:
        batch = next(iterator)
        step(batch)
        seen += len(batch[0])
    return seen / max(time.perf_counter() - started, 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="image folder (default: generated photo-sized JPEGs)")
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--images", type=int, help="images per phase (default 48 on CPU, 320 on a GPU: minutes)")
    parser.add_argument("--workers", default="auto", help="loader workers, or auto (CPUs per device)")
    parser.add_argument("--precision", default="32", choices=["32", "16-mixed", "bf16-mixed"])
    args = parser.parse_args()

    import torch

    from tlkit.data.datamodule import ImageFolderDataModule
    from tlkit.data.workers import resolve_workers
    from tlkit.model.module import TransferModule

    device = torch.device("cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available()
                          else "cpu")
    dtype = {"32": None, "16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}[args.precision]
    if dtype is torch.float16 and device.type != "cuda":
        raise SystemExit("--precision 16-mixed needs a CUDA GPU; use 32 or bf16-mixed here.")
    workers = resolve_workers(args.workers)
    args.images = args.images or (320 if device.type != "cpu" else 48)
    work = Path(tempfile.mkdtemp(prefix="device_check_"))
    data = Path(args.data) if args.data else write_images(work / "images", args.images, 640)
    module = TransferModule({"name": args.backbone, "weights": "none", "input_size": args.size}, ["a", "b"],
                            strategy="finetune").to(device)
    dm = ImageFolderDataModule(data, preprocessing=module.preprocessing, batch_size=args.batch, num_workers=workers,
                               cache=False, val_fraction=0.2)
    dm.setup("fit")
    train_loader = dm.train_dataloader()
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    def forward(batch, train: bool):
        images, targets = batch[0].to(device, non_blocking=True), batch[1].to(device)
        with autocast, torch.set_grad_enabled(train):
            logits = module(images)
            if not train:
                return logits.softmax(-1).cpu()
            loss = torch.nn.functional.cross_entropy(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    def sync(result):
        if device.type == "cuda":
            torch.cuda.synchronize()
        return result

    phases = {"probe (features, no grad)": lambda b: sync(forward(b, False)),
              "fine-tune (forward + backward)": lambda b: sync(forward(b, True)),
              "predict (eval + softmax)": lambda b: sync(forward(b, False))}
    one = next(iter(train_loader))
    one = (one[0].to(device), one[1].to(device))
    repeat = [one]
    loader_rate = timed(train_loader, lambda b: None, args.images)
    print(f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else os.cpu_count()} "
          f"{'' if device.type == 'cuda' else 'CPUs'}), {args.backbone} at {args.size} px, batch {args.batch}, "
          f"precision {args.precision}, {workers} loader workers, load average {os.getloadavg()[0]:.1f}")
    print(f"loader alone (decode + train transform): {loader_rate:.0f} img/s")
    print("| phase | device alone | with the loader | bottleneck |")
    print("|---|---|---|---|")
    started = time.perf_counter()
    for name, step in phases.items():
        module.train("fine-tune" in name)
        device_rate = timed(repeat, step, args.images)
        both = timed(train_loader, step, args.images)
        bottleneck = "loader" if loader_rate < device_rate else "device"
        print(f"| {name} | {device_rate:.0f} img/s | {both:.0f} img/s | {bottleneck} |")
    print(f"({time.perf_counter() - started:.0f} s of measuring; loader-bound: raise data.num_workers or stream "
          "a bounded-side copy (tlkit data optimize); device-bound: mixed precision, trainer.compile, a bigger GPU)")


if __name__ == "__main__":
    main()
