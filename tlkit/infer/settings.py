"""Settings of the inference layer: the default test-time augmentation policy."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from tlkit.config import Section

NAMED_POLICIES = ("none", "hflip", "ten_crop", "multi_scale")
POLICIES = (*NAMED_POLICIES, "custom")
CROPS = ("center", "five", "full")
AGGREGATES = ("mean_prob", "mean_logit", "max")
DEFAULT_MAX_VIEWS_PER_FORWARD = 64  # memory cap: views per model forward
PRECISIONS = ("auto", "fp32", "bf16")  # inference precision choices (tlkit.infer.precision)


class TTAConfig(Section):
    policy: Literal["none", "hflip", "ten_crop", "multi_scale", "custom"] = "none"
    """Default views for evaluate/predict: none (1 view, the cheapest), hflip 2, ten_crop 10, multi_scale 6; k views cost ~k x."""
    crops: Literal["center", "five", "full"] | None = None
    """custom only: center, five (4 corners + centre), or full (whole image resized to the input size); null = center."""
    flip: bool | None = None
    """custom only: add each crop's mirror (five + flip = the classic ten-crop); null = no mirrors."""
    scales: list[Annotated[int, Field(gt=0)]] | None = None
    """custom only: short-side lengths (px) to resize to, each followed by the crops; null = the eval resize."""
    aggregate: Literal["mean_prob", "mean_logit", "max"] = "mean_prob"
    """How views combine: mean of probabilities is robust to one overconfident view; mean_logit and max also work."""

    @field_validator("crops", "flip", "scales")
    @classmethod
    def _custom_only(cls, value: Any, info: ValidationInfo) -> Any:
        policy = info.data.get("policy", "none")
        if value is not None and policy != "custom":
            raise ValueError(f"only applies to policy: custom (policy {policy!r} fixes its own views)")
        return value
