"""Augmentation benchmarks on a real image folder (default: hymenoptera at the recipe's input size).

  python scripts/bench_augment.py                    # loader throughput per preset vs the fine-tune step's consumption
  python scripts/bench_augment.py --accuracy         # also: fine-tune val accuracy per preset, Mixup off / on

Prints markdown tables and writes JSON next to --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from tlkit.data.augment import PRESET_NAMES, TrainAugment, build_train_transform  # noqa: E402
from tlkit.data.datamodule import ImageDataset  # noqa: E402
from tlkit.recipe import load_recipe  # noqa: E402
from tlkit.run import build_datamodule, build_module, fit, resolve_preprocessing  # noqa: E402


def loader_throughput(samples, pre, preset: str, workers: int, batch_size: int, passes: int) -> float:
    dataset = ImageDataset(samples, build_train_transform(pre, TrainAugment(preset=preset)))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0)
    next(iter(loader))  # start the workers before timing
    started, seen = time.perf_counter(), 0
    for _ in range(passes):
        for images, _ in loader:
            seen += len(images)
    return seen / (time.perf_counter() - started)


def step_consumption(recipe, batch_size: int, steps: int = 4) -> float:
    """Images/s the fine-tune training step consumes (forward + backward + SGD step) on random input."""
    datamodule = build_datamodule(recipe)
    module = build_module(recipe, datamodule.classes).train()
    size = module.preprocessing.input_size
    optimizer = torch.optim.SGD(module.parameters(), lr=1e-3, momentum=0.9)
    x, y = torch.randn(batch_size, 3, size, size), torch.randint(0, len(datamodule.classes), (batch_size,))
    timings = []
    for _ in range(steps + 1):
        started = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(module(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        timings.append(time.perf_counter() - started)
    return batch_size / sorted(timings[1:])[len(timings[1:]) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/hymenoptera_finetune.yaml")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--passes", type=int, default=2, help="passes over the train split per preset")
    parser.add_argument("--accuracy", action="store_true", help="also train each preset with Mixup off/on")
    parser.add_argument("--mixup-alpha", type=float, default=0.2)
    parser.add_argument("--presets", nargs="+", default=list(PRESET_NAMES), choices=PRESET_NAMES)
    parser.add_argument("--skip-loader", action="store_true", help="only the accuracy table")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", default="bench_augment.json")
    args = parser.parse_args()

    recipe = load_recipe(args.recipe, [*args.overrides, "trainer.progress_bar=false"])
    pre = resolve_preprocessing(recipe)
    samples = build_datamodule(recipe).scan.train
    batch = recipe.data.batch_size
    consumption = step_consumption(recipe, batch)
    results = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": torch.get_num_threads(),
                           "torch": torch.__version__},
               "input_size": pre.input_size, "images": len(samples), "workers": args.workers,
               "step_images_per_s": round(consumption, 1), "loader": {}, "accuracy": []}
    print(f"\n{len(samples)} training images at {pre.input_size} px, {args.workers} workers, batch {batch}")
    print(f"fine-tune step consumes {consumption:.1f} images/s\n")
    print("| preset | loader images/s | x step consumption |\n|---|---|---|")
    for name in [] if args.skip_loader else args.presets:
        rate = loader_throughput(samples, pre, name, args.workers, batch, args.passes)
        results["loader"][name] = round(rate, 1)
        print(f"| {name} | {rate:.1f} | {rate / consumption:.1f}x |", flush=True)

    if args.accuracy:
        print("\n| preset | mixup | val acc (final) | best val acc | val loss | wall s |\n|---|---|---|---|---|---|")
        for name in args.presets:
            for alpha in (0.0, args.mixup_alpha):
                run = load_recipe(args.recipe, [*args.overrides, "trainer.progress_bar=false", f"augment={name}",
                                                f"mixing.mixup_alpha={alpha}"])
                m = fit(run, run_dir=tempfile.mkdtemp(prefix=f"bench-{name}-{alpha}-"))
                row = {"preset": name, "mixup_alpha": alpha, "val_acc": m["val_acc"],
                       "best_val_acc": m["best_val_acc"], "val_loss": m["val_loss"], "wall_s": m["wall_s"]}
                results["accuracy"].append(row)
                print(f"| {name} | {alpha or 'off'} | {m['val_acc']:.2%} | {m['best_val_acc']:.2%} | "
                      f"{m['val_loss']:.3f} | {m['wall_s']:.0f} |", flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
