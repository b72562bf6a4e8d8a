"""What trainer.compile costs and gains on this machine: one training step (forward + backward + SGD) of a timm
backbone + linear head, eager vs torch.compile'd as tlkit compiles it (the backbone in place).

    python scripts/bench_compile.py --model test_efficientnet --size 64 --batch 16 --steps 10
Prints a table: compile seconds (first compiled step minus an eager step) and median step time before/after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


def step_times(model, head, images, targets, steps: int) -> list[float]:
    import torch

    optimizer = torch.optim.SGD([*model.parameters(), *head.parameters()], lr=0.01)
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(head(model(images)), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="test_efficientnet")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    import timm
    import torch

    torch.manual_seed(0)
    images, targets = torch.randn(args.batch, 3, args.size, args.size), torch.randint(0, 3, (args.batch,))
    model = timm.create_model(args.model, pretrained=False, num_classes=0)
    head = torch.nn.Linear(model.num_features, 3)
    eager = step_times(model, head, images, targets, args.steps + 1)[1:]  # the first eager step warms allocators
    model.compile()
    compiled = step_times(model, head, images, targets, args.steps + 1)
    first, rest = compiled[0], compiled[1:]
    eager_ms, compiled_ms = statistics.median(eager) * 1e3, statistics.median(rest) * 1e3
    print(f"{args.model} at {args.size} px, batch {args.batch}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    print("| eager step (median) | compile (first step) | compiled step (median) | speed-up |")
    print("|---|---|---|---|")
    print(f"| {eager_ms:.0f} ms | {first - statistics.median(eager):.1f} s | {compiled_ms:.0f} ms | "
          f"{eager_ms / compiled_ms:.2f}x |")


if __name__ == "__main__":
    main()
