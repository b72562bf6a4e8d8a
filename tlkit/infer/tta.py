"""Deterministic test-time augmentation: views = scales x crops x flips, batched forwards, one aggregation.

A TTA *spec* is plain data that travels in checkpoints: `{"policy": name, "aggregate": how}` for the named
shortcuts, plus `crops`, `flip` and `scales` for `policy: custom`. It becomes concrete views only against a
Preprocessing, because "the eval resize" and the multi-scale lengths depend on the model's input size.

Views are made by tlkit.data.preprocessing.make_views, from the eval preprocessing's own steps (Pillow short-side
resize, crop, normalise), so policy `none` is exactly the eval transform (tested) and the
export bundle makes the same views with the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tlkit.data.preprocessing import (
    Preprocessing,
    View,
    eval_resize_size,
    make_views,
)
from tlkit.errors import TTAError, did_you_mean
from tlkit.infer.settings import (  # noqa: F401  (AGGREGATES, CROPS, POLICIES: re-exported for callers)
    AGGREGATES,
    CROPS,
    DEFAULT_MAX_VIEWS_PER_FORWARD,
    NAMED_FIELDS,
    NAMED_POLICIES,
    POLICIES,
    TTAConfig,
)
from tlkit.model.settings import normalize_tta_spec as normalize_spec
from tlkit.model.tasks import Task, task_from

FIVE_CROPS = ("center", "top_left", "top_right", "bottom_left", "bottom_right")

# Named shortcuts as custom fields; scales () = the eval resize. multi_scale's lengths are computed per model below.


@dataclass(frozen=True)
class TTAPolicy:
    """Concrete views for one model's input size, and how their predictions combine."""

    name: str
    views: tuple[View, ...]
    aggregate: str = "mean_prob"

    @property
    def num_views(self) -> int:
        return len(self.views)

    @property
    def label(self) -> str:
        """Short name for tables and folder names ('ten_crop', or 'custom-five-flip-256-320' for custom)."""
        if self.name != "custom":
            return self.name if self.aggregate == "mean_prob" else f"{self.name}-{self.aggregate}"
        crops = "five" if any(v.crop == "top_left" for v in self.views) else self.views[0].crop
        flip = "-flip" if any(v.flip for v in self.views) else ""
        scales = "-".join(str(s) for s in dict.fromkeys(v.scale for v in self.views if v.crop != "full"))
        agg = "" if self.aggregate == "mean_prob" else f"-{self.aggregate}"
        return f"custom-{crops}{flip}{'-' + scales if scales else ''}{agg}"


# ---------------------------------------------------------------------------------------------------------------------
# Specs (plain data) -> policies


def policy_for(module, tta: str | Mapping[str, Any] | None = None, aggregate: str | None = None) -> TTAPolicy:
    """The policy to run: `tta` (a name, a spec, or None / 'checkpoint' = the one stored with the model), with
    `aggregate` overriding how its views combine."""
    spec = module.tta_spec if tta in (None, "checkpoint") else tta
    if aggregate is not None:
        spec = {**normalize_spec(spec), "aggregate": aggregate}
    return resolve_policy(spec, module.preprocessing)


def multi_scale_lengths(pre: Preprocessing) -> list[int]:
    """Short sides for `multi_scale`: the whole short side as the crop, the eval resize, and 1.25x the eval resize
    (224 / 256 / 320 for a 224 px model with crop_pct 0.875), in the spirit of the ResNet multi-scale protocol."""
    resize = eval_resize_size(pre)
    return sorted({pre.input_size, resize, round(resize * 1.25)})


def resolve_policy(spec: str | Mapping[str, Any] | None, pre: Preprocessing) -> TTAPolicy:
    """Turn a spec into the concrete views for `pre` (input size, crop_pct). Raises TTAError for bad specs."""
    canonical = normalize_spec(spec)
    policy = canonical["policy"]
    fields = canonical if policy == "custom" else {**NAMED_FIELDS[policy], "scales": []}
    scales = list(fields["scales"]) or [eval_resize_size(pre)]
    if policy == "multi_scale":
        scales = multi_scale_lengths(pre)
    small = [s for s in scales if s < pre.input_size]
    if small and fields["crops"] != "full":
        raise TTAError(
            f"TTA scale {small[0]} px is smaller than the model's {pre.input_size} px input, so a crop cannot fit; "
            f"use scales >= {pre.input_size}."
        )
    crops = FIVE_CROPS if fields["crops"] == "five" else (fields["crops"],)
    if fields["crops"] == "full":
        scales = [pre.input_size]  # the whole image is resized to the input size; no short-side resize first
    flips = (False, True) if fields["flip"] else (False,)
    views = tuple(View(scale, crop, flip) for scale in scales for crop in crops for flip in flips)
    return TTAPolicy(name=policy, views=views, aggregate=canonical["aggregate"])


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise TTAError(f"Unknown {what} {value!r}; expected one of {', '.join(choices)}.{did_you_mean(value, choices)}")


# ---------------------------------------------------------------------------------------------------------------------
# Views


class ViewMaker:
    """Callable: RGB uint8 HWC image -> float tensor [num_views, 3, S, S], in the policy's view order
    (tlkit.data.preprocessing.make_views)."""

    def __init__(self, policy: TTAPolicy, pre: Preprocessing):
        self.policy = policy
        self.pre = pre
        self.size = pre.input_size

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(make_views(image, self.policy.views, self.pre))

    def __repr__(self) -> str:
        return f"ViewMaker({self.policy.label}, {self.policy.num_views} views at {self.size} px)"


# ---------------------------------------------------------------------------------------------------------------------
# Batched forward and aggregation


def aggregate(logits: torch.Tensor, how: str, *, task: Task | str = "single_label") -> torch.Tensor:
    """[B, k, C] per-view logits -> [B, C] probabilities under `task`'s activation (single-label rows sum to 1;
    multi-label: independent sigmoids).

    mean_prob: mean of the views' probabilities; mean_logit: the probability of the mean logit; max: per-class max
    probability over the views (single-label: renormalised so it stays a distribution, the argmax unchanged).
    """
    if logits.ndim != 3:
        raise TTAError(f"aggregate expects per-view logits of shape [batch, views, classes]; got {tuple(logits.shape)}.")
    _check_choice("TTA aggregation", how, AGGREGATES)
    task = task_from(task)
    if how == "mean_logit":
        return task.activation(logits.float().mean(dim=1))
    probs = task.activation(logits.float())
    if how == "mean_prob":
        return probs.mean(dim=1)
    return task.combine_peak(probs.amax(dim=1))


def forward_views(
    model: Callable[[torch.Tensor], torch.Tensor],
    views: torch.Tensor,
    how: str = "mean_prob",
    *,
    max_views_per_forward: int = DEFAULT_MAX_VIEWS_PER_FORWARD,
    task: Task | str = "single_label",
) -> torch.Tensor:
    """[B, k, 3, S, S] views -> [B, C] probabilities (under `task`'s activation), in forwards of at most
    `max_views_per_forward` views.

    All views of the batch go through the model together (chunked only to cap memory), never one forward per view.
    """
    if views.ndim != 5:
        raise TTAError(f"forward_views expects views of shape [batch, views, 3, H, W]; got {tuple(views.shape)}.")
    if max_views_per_forward < 1:
        raise TTAError(f"max_views_per_forward must be >= 1; got {max_views_per_forward}.")
    batch, k = views.shape[:2]
    flat = views.flatten(0, 1)
    logits = torch.cat([model(chunk) for chunk in flat.split(max_views_per_forward)])
    return aggregate(logits.view(batch, k, -1), how, task=task)


def images_per_batch(policy: TTAPolicy, max_views_per_forward: int = DEFAULT_MAX_VIEWS_PER_FORWARD) -> int:
    """Images per loader batch so that one batch's views fill about one forward (and memory stays under the cap)."""
    return max(1, max_views_per_forward // policy.num_views)


__all__ = [
    "AGGREGATES",
    "CROPS",
    "NAMED_POLICIES",
    "POLICIES",
    "TTAPolicy",
    "View",
    "ViewMaker",
    "aggregate",
    "forward_views",
    "images_per_batch",
    "multi_scale_lengths",
    "normalize_spec",
    "resolve_policy",
]
