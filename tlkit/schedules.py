"""Per-step learning-rate multipliers: linear warmup, then cosine / step / constant."""

from __future__ import annotations

import math

SCHEDULES = ("cosine", "step", "constant")


class LRMultiplier:
    """Callable step -> LR factor for torch's LambdaLR. A plain object (not a lambda) so its state pickles safely."""

    def __init__(self, kind: str, *, total_steps: int, warmup_steps: int = 0, step_size: int = 1, gamma: float = 0.1):
        if kind not in SCHEDULES:
            raise ValueError(f"Unknown schedule {kind!r}; expected one of {', '.join(SCHEDULES)}.")
        self.kind = kind
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = max(0, int(warmup_steps))
        self.step_size = max(1, int(step_size))
        self.gamma = float(gamma)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        if self.kind == "step":
            return self.gamma ** (step // self.step_size)
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
