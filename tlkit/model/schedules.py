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


class GatedMultiplier:
    """One optimizer group's LR factor: 0 before the group's first step (frozen), then the run's schedule.

    restart=False: the group joins the run-wide schedule where it stands (gradual unfreezing).
    restart=True: every start in `starts` begins a fresh schedule (warmup included) lasting until the next start or
    the end of the run (lp_ft: the probe phase and the fine-tune phase each get a whole schedule).
    scales: one factor per start, multiplying the schedule from that start on (lp_ft: the head's fine-tune LR is a
    fraction of its probe LR); default 1 throughout.
    Flat plain fields only: LambdaLR saves callable objects' __dict__ in checkpoints, which must load weights_only.
    """

    def __init__(self, kind: str, *, total_steps: int, warmup_steps: int = 0, step_size: int = 1, gamma: float = 0.1,
                 starts: tuple[int, ...] = (0,), restart: bool = False, scales: tuple[float, ...] | None = None):
        LRMultiplier(kind, total_steps=total_steps)  # validates kind
        self.kind = kind
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = max(0, int(warmup_steps))
        self.step_size = max(1, int(step_size))
        self.gamma = float(gamma)
        if scales is not None and len(scales) != len(starts):
            raise ValueError(f"scales needs one factor per start; got {len(scales)} for {len(starts)} starts.")
        pairs = sorted(zip((int(s) for s in starts), scales or [1.0] * len(starts)))
        self.starts = tuple(s for s, _ in pairs)
        self.scales = tuple(float(f) for _, f in pairs)
        self.restart = bool(restart)

    def __call__(self, step: int) -> float:
        if step < self.starts[0]:
            return 0.0
        begin, end = 0, self.total_steps
        scale = self.scales[max(i for i, s in enumerate(self.starts) if s <= step)]
        if self.restart:
            begin = max(s for s in self.starts if s <= step)
            later = [s for s in self.starts if s > step]
            end = later[0] if later else self.total_steps
        base = LRMultiplier(self.kind, total_steps=end - begin, warmup_steps=min(self.warmup_steps, end - begin - 1),
                            step_size=self.step_size, gamma=self.gamma)
        return scale * base(step - begin)
