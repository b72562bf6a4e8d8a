"""Settings of the model layer: backbone, head, batch mixing, optimizer, LR schedule and the default TTA policy a
Classifier carries.

Pydantic models with every default and its reason, shared by the recipe and TransferModule (one definition per
setting). Torch-free, so validating a recipe never imports torch. Strategies live in tlkit.model.strategies.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StrictBool, ValidationInfo, field_validator, model_validator

from tlkit.config import Section
from tlkit.errors import TTAError, did_you_mean

MAX_INPUT_SIZE = 1024  # px; the largest timm pretrained configs are ~800 px, and memory grows with its square
MAX_HIDDEN_WIDTH = 8192  # units per head layer; a wider head than the backbone's features only adds memory
MAX_HIDDEN_LAYERS = 16
# Multi-layer features: cells per side of each stage's pooled map (1 = global average); why 2: LinearProbe.stage_grid.
DEFAULT_STAGE_GRID = 2

INITS = (
    "lecun_normal",
    "lecun_uniform",
    "xavier_normal",
    "xavier_uniform",
    "he_normal",
    "he_uniform",
    "orthogonal",
    "normal",
    "zeros",
)


class BackboneConfig(Section):
    name: str = "tf_efficientnet_lite0"
    """timm architecture; any name from timm.list_models(). lite0 has real ImageNet weights bundled offline."""
    weights: str = "auto"
    """auto | hub | bundled | none | a local file. auto prefers what loads offline: bundled, then the local cache."""
    input_size: int | None = Field(default=None, ge=16, le=MAX_INPUT_SIZE)
    """Square input side in pixels, 16-1024; null = the model's pretrained input size (224 for lite0)."""
    train_input_size: int | None = Field(default=None, ge=16, le=MAX_INPUT_SIZE)
    """Training crop side in pixels; null = input_size. Smaller than input_size trains faster and, with random
    resized crops, often evaluates better at the larger input_size (FixRes, Touvron et al. 2019)."""
    crop_pct: float | None = Field(default=None, gt=0, le=1)
    """Eval centre-crop fraction (resize short side to input_size/crop_pct); null = the pretrained config's."""
    interpolation: Literal["bicubic", "bilinear", "nearest", "area"] | None = None
    """Resize interpolation; null = the pretrained config's (bicubic for lite0)."""
    mean: tuple[float, float, float] | None = None
    """Normalisation mean (RGB, 0..1); null = the values the weights were trained with."""
    std: tuple[float, float, float] | None = None
    """Normalisation std (RGB, 0..1); null = the values the weights were trained with."""
    drop_path_rate: float = Field(default=0.0, ge=0, lt=1)
    """Stochastic depth in the backbone; 0 for probes, 0.1-0.2 can help long fine-tunes."""

    @field_validator("name")
    @classmethod
    def _known_architecture(cls, name: str) -> str:
        from tlkit.model.names import check_backbone_name

        check_backbone_name(name)  # a BackboneError is a ValueError: reported with the recipe's other problems
        return name

    def preprocessing_overrides(self) -> dict:
        """The preprocessing fields that are set (they win over the pretrained config)."""
        values = {"input_size": self.input_size, "crop_pct": self.crop_pct, "interpolation": self.interpolation,
                  "mean": self.mean, "std": self.std}
        return {k: v for k, v in values.items() if v is not None}

    @field_validator("weights")
    @classmethod
    def _weights_choice(cls, value: str) -> str:
        if value in ("auto", "hub", "bundled", "none"):
            return value
        if not any(sep in value for sep in ("/", "\\", ".")):
            raise ValueError(
                f"expected auto, hub, bundled, none or a file path; got {value!r}."
                + did_you_mean(value, ("auto", "hub", "bundled", "none"))
            )
        return value


class HeadConfig(Section):
    hidden: list[Annotated[int, Field(gt=0, le=MAX_HIDDEN_WIDTH)]] = Field(default=[], max_length=MAX_HIDDEN_LAYERS)
    """Hidden layer widths of an MLP head (at most 16 layers of 1-8192 units); [] = a single linear layer (a probe)."""
    activation: Literal["relu", "leaky_relu", "elu", "selu", "gelu", "tanh"] = "relu"
    """Activation between hidden layers; ReLU is the robust first choice."""
    dropout: float = Field(default=0.0, ge=0, lt=1)
    """Dropout before each hidden activation's successor (and before a linear head); 0 = off."""
    init: Literal[INITS] | None = None  # type: ignore[valid-type]
    """Hidden-layer init; null = matched to the activation (He for ReLU family, LeCun for SELU, Xavier for tanh)."""
    final_init: Literal[INITS] = "zeros"  # type: ignore[valid-type]
    """Final linear layer init; zeros = equal logits, so the initial loss is exactly ln(C) (see heads.py)."""
    drop_connect: float = Field(default=0.0, ge=0, lt=1)
    """DropConnect: drop each head weight with this probability in training (evaluation uses all); 0 = off."""

    @field_validator("init")
    @classmethod
    def _no_zero_hidden_init(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value == "zeros" and info.data.get("hidden"):
            raise ValueError(
                "zeros is refused for hidden layers: every neuron would get the same gradient and never diverge; "
                "leave init null for the activation's default"
            )
        return value


class MixingConfig(Section):
    mixup_alpha: float = Field(default=0.0, ge=0)
    """Mixup Beta(alpha, alpha) concentration; 0 = off, 0.2-0.4 is typical for fine-tuning."""
    cutmix_alpha: float = Field(default=0.0, ge=0)
    """CutMix Beta(alpha, alpha) concentration; 0 = off, 1.0 is typical."""
    prob: float = Field(default=1.0, ge=0, le=1)
    """Probability that a batch is mixed at all."""
    switch_prob: float = Field(default=0.5, ge=0, le=1)
    """When both are on: probability of CutMix instead of Mixup for a batch."""
    off_last_epochs: int = Field(default=0, ge=0)
    """Train the last N epochs on clean images (mixed images differ from test images)."""

    @property
    def enabled(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)


class OptimConfig(Section):
    name: Literal["sgd", "adamw"] = "sgd"
    """SGD with Nesterov momentum is the classic for transfer; AdamW is less LR-sensitive."""
    lr: float = Field(default=0.01, gt=0)
    """Head learning rate (the backbone's is lr x backbone_lr_mult when fine-tuning)."""
    momentum: float = Field(default=0.9, ge=0, lt=1)
    """SGD momentum (ignored by AdamW)."""
    weight_decay: float = Field(default=1e-4, ge=0)
    """L2 penalty on weights (never on norm parameters or biases)."""
    l1: float = Field(default=0.0, ge=0)
    """L1 penalty on trainable weights, added to the loss; 0 = off."""
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    """Cross-entropy label smoothing; 0.1 is common for fine-tuning."""
    ema_decay: float = Field(default=0.0, ge=0, lt=1)
    """EMA of the weights (0 = off; e.g. 0.999): validated, checkpointed and exported instead of the raw weights."""


class ScheduleConfig(Section):
    kind: Literal["cosine", "step", "constant"] = "cosine"
    """LR schedule per step: cosine decay to 0 after warmup, step decay, or constant."""
    warmup_epochs: float = Field(default=0.0, ge=0)
    """Linear warmup from 0 over this many epochs (fractions allowed)."""
    step_epochs: int = Field(default=10, gt=0)
    """step: multiply the LR by gamma every this many epochs."""
    gamma: float = Field(default=0.1, gt=0, le=1)
    """step: decay factor."""


# ---------------------------------------------------------------------------------------------------------------------
# Test-time augmentation: the policy a Classifier carries (evaluate/predict run it; tlkit.infer.tta makes the views)

NAMED_POLICIES = ("none", "hflip", "ten_crop", "multi_scale")
POLICIES = (*NAMED_POLICIES, "custom")
CROPS = ("center", "five", "full")
AGGREGATES = ("mean_prob", "mean_logit", "max")
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


def normalize_tta_spec(spec: str | dict[str, Any] | None) -> dict[str, Any]:
    """Validate a TTA spec through TTAConfig and return its canonical plain-dict form (what checkpoints store).

    Accepts a policy name ('ten_crop'), a dict (a recipe's `tta` section), or None (= 'none'). A spec may come from an
    untrusted checkpoint: TTAConfig bounds the scales before any image is resized.
    """
    from collections.abc import Mapping

    from pydantic import ValidationError

    from tlkit.config import describe_error

    data = {"policy": "none" if spec is None else spec} if spec is None or isinstance(spec, str) else spec
    if not isinstance(data, Mapping):
        raise TTAError(f"A TTA policy is a name ({', '.join(NAMED_POLICIES)}) or a mapping; got {spec!r}.")
    try:
        return TTAConfig.model_validate(dict(data)).canonical()
    except ValidationError as exc:
        raise TTAError("; ".join(f"TTA {describe_error(e, TTAConfig)}" for e in exc.errors())) from None
