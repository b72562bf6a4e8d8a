"""Settings of the inference layer: the default test-time augmentation policy."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StrictBool, ValidationInfo, field_validator, model_validator

from tlkit.config import Section

NAMED_POLICIES = ("none", "hflip", "ten_crop", "multi_scale")
POLICIES = (*NAMED_POLICIES, "custom")
CROPS = ("center", "five", "full")
AGGREGATES = ("mean_prob", "mean_logit", "max")
DEFAULT_MAX_VIEWS_PER_FORWARD = 64  # memory cap: views per model forward
PRECISIONS = ("auto", "fp32", "bf16")  # inference precision choices (tlkit.infer.precision)
# A scale is a short-side resize before cropping: 2048 px covers 1.25 x the eval resize of the largest input size
# (1024 px); a checkpoint or spec asking for more would allocate huge images (12000 px: 320 MB for one view).
MAX_TTA_SCALE = 2048
MAX_TTA_SCALES = 8  # views = scales x crops x flips; 8 x 10 = 80 forwards per image is already slow


# What each named policy fixes; a spec may restate these values, anything else needs policy: custom.
NAMED_FIELDS: dict[str, dict[str, Any]] = {
    "none": {"crops": "center", "flip": False},
    "hflip": {"crops": "center", "flip": True},
    "ten_crop": {"crops": "five", "flip": True},
    "multi_scale": {"crops": "center", "flip": True},
}


class TTAConfig(Section):
    """The one definition of a TTA policy: the recipe's `tta` section, `--tta`, and what checkpoints store."""

    policy: Literal["none", "hflip", "ten_crop", "multi_scale", "custom"] = "none"
    """Default views for evaluate/predict: none (1 view, the cheapest), hflip 2, ten_crop 10, multi_scale 6; k views cost ~k x."""
    crops: Literal["center", "five", "full"] | None = None
    """custom only: center, five (4 corners + centre), or full (whole image resized to the input size); null = center."""
    flip: StrictBool | None = None
    """custom only: add each crop's mirror (five + flip = the classic ten-crop); null = no mirrors."""
    scales: list[Annotated[int, Field(gt=0, le=MAX_TTA_SCALE)]] | None = Field(default=None, max_length=MAX_TTA_SCALES)
    """custom only: up to 8 short-side lengths (1-2048 px) to resize to, each followed by the crops; null = the eval
    resize."""
    aggregate: Literal["mean_prob", "mean_logit", "max"] = "mean_prob"
    """How views combine: mean of probabilities is robust to one overconfident view; mean_logit and max also work."""

    @field_validator("crops", "flip", "scales")
    @classmethod
    def _custom_only(cls, value: Any, info: ValidationInfo) -> Any:
        # A field check (not a model check) so it is reported together with the recipe's other problems.
        policy = info.data.get("policy", "none")
        if value is not None and policy in NAMED_FIELDS:
            fixed = {**NAMED_FIELDS[policy], "scales": []}[info.field_name]
            if value != fixed:  # restating a named policy's own value is fine
                raise ValueError(f"only applies to policy: custom (policy {policy!r} fixes its own views); set "
                                 "policy: custom, or drop it")
        return value

    @model_validator(mode="after")
    def _full_crop_takes_no_scales(self) -> TTAConfig:
        if self.crops == "full" and self.scales:
            raise ValueError("crops 'full' resizes the whole image to the input size, so scales do not apply; drop them")
        return self

    def canonical(self) -> dict[str, Any]:
        """The plain dict checkpoints store: a named policy by name, a custom one with every view field spelled out."""
        if self.policy != "custom":
            return {"policy": self.policy, "aggregate": self.aggregate}
        return {"policy": "custom", "crops": self.crops or "center", "flip": bool(self.flip),
                "scales": list(self.scales or []), "aggregate": self.aggregate}
