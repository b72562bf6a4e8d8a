"""Settings of the model layer: backbone, head, batch mixing, optimizer and LR schedule.

Pydantic models with every default and its reason, shared by the recipe and TransferModule (one definition per
setting). Torch-free, so validating a recipe never imports torch. Strategies live in tlkit.model.strategies.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator

from tlkit.config import Section
from tlkit.errors import did_you_mean

MAX_INPUT_SIZE = 1024  # px; the largest timm pretrained configs are ~800 px, and memory grows with its square
MAX_HIDDEN_WIDTH = 8192  # units per head layer; a wider head than the backbone's features only adds memory
MAX_HIDDEN_LAYERS = 16

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
