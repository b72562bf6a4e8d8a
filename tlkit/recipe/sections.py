"""The recipe's pydantic models: one Section per YAML section, the strategy union, and the cross-field checks."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, ValidationInfo, field_validator, model_validator

from tlkit.data.augment import TrainAugment
from tlkit.config import Section
from tlkit.errors import did_you_mean
from tlkit.model.heads import INITS
from tlkit.model.mixing import MixingConfig



class BackboneSection(Section):
    name: str = "tf_efficientnet_lite0"
    """timm architecture; any name from timm.list_models(). lite0 has real ImageNet weights bundled offline."""
    weights: str = "auto"
    """auto | hub | bundled | none | a local file. auto prefers what loads offline: bundled, then the local cache."""
    input_size: int | None = Field(default=None, ge=16)
    """Square input side in pixels; null = the model's pretrained input size (224 for lite0)."""
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
        from tlkit.model.backbones import check_backbone_name

        check_backbone_name(name)  # a BackboneError is a ValueError: reported with the recipe's other problems
        return name

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


class LinearProbe(Section):
    kind: Literal["linear_probe"] = "linear_probe"
    """Freeze the backbone (no grads, BatchNorm in eval) and train only the head: the rule for small data."""
    solver: Literal["sgd", "lbfgs"] = "sgd"
    """sgd = the optim section's optimizer for trainer.epochs; lbfgs = closed-form multinomial logistic regression
    on cached features, L2 strength chosen on a held-out 20% of train (linear head and feature cache required)."""


class Finetune(Section):
    kind: Literal["finetune"] = "finetune"
    """Train everything, backbone at a lower LR: the rule when there is more data."""
    backbone_lr_mult: float = Field(default=0.1, gt=0, le=1)
    """Backbone LR = head LR x this; the seeds' rule of thumb is about 1/10."""


class LpFt(Section):
    kind: Literal["lp_ft"] = "lp_ft"
    """Linear probe first (backbone frozen), then fine-tune everything from the probed head (Kumar et al. 2022)."""
    probe_epochs: int = Field(default=2, gt=0)
    """Head-only epochs before the backbone unfreezes; each phase gets its own whole LR schedule (warmup included)."""
    backbone_lr_mult: float = Field(default=0.1, gt=0, le=1)
    """Backbone LR in the fine-tune phase = head LR x this."""


class Gradual(Section):
    kind: Literal["gradual"] = "gradual"
    """Unfreeze the backbone's layer groups from the top, one more every few epochs (fastai / ULMFiT style)."""
    unfreeze_every: int = Field(default=1, gt=0)
    """The k-th group from the top unfreezes at epoch k x this (epoch 0 trains the head only)."""
    unfreeze_epochs: list[Annotated[int, Field(ge=0)]] | None = None
    """Explicit epoch per group from the top (e.g. [1, 2, 4]); groups past the list stay frozen; null = every."""
    groups: Literal["coarse", "fine"] = "coarse"
    """Layer groups from timm's group_matcher: coarse = stem + one per stage, fine = one per block (`tlkit groups`)."""
    backbone_lr_mult: float = Field(default=0.1, gt=0, le=1)
    """Backbone LR = head LR x this once a group is unfrozen."""


class LayerDecay(Section):
    kind: Literal["layer_decay"] = "layer_decay"
    """Train everything; each layer group's LR = head LR x decay^depth counted from the head down (timm's --layer-decay)."""
    decay: float = Field(default=0.75, gt=0, le=1)
    """Per-group LR factor; 0.75 is timm's common choice; 1.0 = plain fine-tune at the head's LR."""
    groups: Literal["coarse", "fine"] = "fine"
    """Layer groups from timm's group_matcher: fine = one per block (as timm does), coarse = one per stage."""


class Auto(Section):
    kind: Literal["auto"] = "auto"
    """Decide from the data (tlkit.run.auto): linear_probe below images_per_class training images per class (mean),
    finetune with backbone LR x backbone_lr_mult at or above it; the decision and its reason are printed and stored."""
    images_per_class: int = Field(default=500, gt=0)
    """Threshold; below it a linear probe (fine-tuning millions of weights on ~100 images/class overfits and, measured
    on hymenoptera's ~120/class, gained nothing over the probe at ~10x the cost)."""
    backbone_lr_mult: float = Field(default=0.1, gt=0, le=1)
    """Backbone LR multiplier when auto picks finetune; the seeds' 1/10."""


Strategy = Annotated[Union[LinearProbe, Finetune, LpFt, Gradual, LayerDecay, Auto], Field(discriminator="kind")]


class HeadSection(Section):
    hidden: list[Annotated[int, Field(gt=0)]] = []
    """Hidden layer widths of an MLP head; [] = a single linear layer (a linear probe)."""
    activation: Literal["relu", "leaky_relu", "elu", "selu", "gelu", "tanh"] = "relu"
    """Activation between hidden layers; ReLU first, as the seeds advise."""
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


class DataSection(Section):
    root: str
    """Image folder: root/{train,val}/<class>/ or root/<class>/. Relative paths resolve against the recipe's folder."""
    val_fraction: float = Field(default=0.2, gt=0, lt=1)
    """Held-out fraction (stratified, seeded) when root has no val/valid/test split."""
    batch_size: int = Field(default=32, gt=0)
    """Training batch size; 32 fits a 2-core CPU at 224 px."""
    eval_batch_size: int | None = Field(default=None, gt=0)
    """Validation batch size; null = 2 x batch_size (no gradients to store)."""
    num_workers: Annotated[int, Field(ge=0)] | Literal["auto"] = "auto"
    """DataLoader worker processes; auto = min(4, CPU count)."""
    generate: Literal["digits"] | None = None
    """Built-in dataset written to root when root is missing (digits = scikit-learn's 8x8 digits as PNGs)."""
    on_bad_image: Literal["skip", "error"] = "skip"
    """A file that stops decoding mid-run (deleted, truncated after the scan): skip = drop it from its batch and
    list it in <run_dir>/skipped_mid_run.txt (never replaced by another image); error = stop naming the file."""
    balance: Literal["none", "sampler", "loss_weights"] = "none"
    """Class imbalance: sampler = draw training images with replacement so each class is equally likely (seeded);
    loss_weights = weight the training loss by n / (C x count_c) (scikit-learn's "balanced"); none = as the data is.
    Balanced accuracy and macro-F1 are logged either way (val_balanced_acc, val_macro_f1)."""


class OptimSection(Section):
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


class ScheduleSection(Section):
    kind: Literal["cosine", "step", "constant"] = "cosine"
    """LR schedule per step: cosine decay to 0 after warmup, step decay, or constant."""
    warmup_epochs: float = Field(default=0.0, ge=0)
    """Linear warmup from 0 over this many epochs (fractions allowed)."""
    step_epochs: int = Field(default=10, gt=0)
    """step: multiply the LR by gamma every this many epochs."""
    gamma: float = Field(default=0.1, gt=0, le=1)
    """step: decay factor."""


class TrainerSection(Section):
    epochs: int = Field(default=10, gt=0)
    """Passes over the training set."""
    precision: Literal["32", "bf16-mixed"] = "32"
    """32 is exact everywhere; bf16-mixed saves memory/time on recent GPUs and CPUs with AMX."""

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) else value  # --set trainer.precision=32 parses as an int
    accelerator: str = "auto"
    """Passed to lightning.Trainer (auto, cpu, gpu, ...)."""
    devices: int | str = "auto"
    """Passed to lightning.Trainer: devices per node (e.g. 4 GPUs, or 2 CPU processes with accelerator cpu)."""
    num_nodes: int = Field(default=1, gt=0)
    """Machines in a multi-node run (launch one process per device with torchrun or SLURM srun; see README)."""
    strategy: Literal["auto", "ddp", "ddp_spawn", "ddp_notebook", "fsdp", "deepspeed"] = "auto"
    """Lightning's distribution strategy; auto = single device, or DDP when several devices are given."""
    sync_batchnorm: bool = False
    """Synchronise BatchNorm statistics across DDP processes (helps with small per-device batches); CUDA only."""
    progress_bar: bool = True
    """Show Lightning's progress bar."""


class TTASection(Section):
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


class CacheSection(Section):
    features: bool = True
    """linear_probe: extract the frozen backbone's features once and train the head on them (same loss, optimizer,
    schedule); false = run the backbone over every image every epoch."""
    views: int = Field(default=1, ge=1, le=64)
    """Augmented views cached per training image when augmentation is random; each epoch draws one per image.
    Each view costs one backbone forward per image. Deterministic input (augment: none) always uses 1."""
    disk: bool = True
    """Keep features on disk between runs, keyed by backbone, weights, preprocessing, view and file identity."""
    dir: str | None = None
    """Cache folder; null = $TLKIT_CACHE/features, else ~/.cache/tlkit/features."""


class OutputSection(Section):
    runs_dir: str = "runs"
    """Runs go to <runs_dir>/<recipe name>/<timestamp>/ unless --run-dir is given; relative to the current dir."""


class Recipe(Section):
    version: Literal[1] = 1
    """Recipe format version."""
    name: str = "recipe"
    """Run name (defaults to the file name); runs are grouped under it."""
    seed: int = 42
    """Seeds Python, NumPy, torch and loader workers: same seed on CPU gives the same metrics."""
    backbone: BackboneSection = BackboneSection()
    strategy: Strategy = LinearProbe()
    head: HeadSection = HeadSection()
    data: DataSection
    augment: TrainAugment = TrainAugment()
    mixing: MixingConfig = MixingConfig()
    optim: OptimSection = OptimSection()
    schedule: ScheduleSection = ScheduleSection()
    trainer: TrainerSection = TrainerSection()
    tta: TTASection = TTASection()
    cache: CacheSection = CacheSection()
    output: OutputSection = OutputSection()

    @model_validator(mode="after")
    def _bundled_exists_for_backbone(self) -> Recipe:
        from tlkit.model.weights import BUNDLED

        if self.backbone.weights == "bundled" and self.backbone.name not in BUNDLED:
            raise ValueError(f"backbone.weights: bundled weights exist only for {', '.join(BUNDLED)}; "
                             f"use auto, hub or a local file for {self.backbone.name}")
        return self

    @model_validator(mode="after")
    def _warmup_shorter_than_training(self) -> Recipe:
        if self.schedule.warmup_epochs >= self.trainer.epochs:
            raise ValueError(f"schedule.warmup_epochs ({self.schedule.warmup_epochs}) must be less than trainer.epochs "
                             f"({self.trainer.epochs}), or the LR never reaches optim.lr")
        return self

    @model_validator(mode="after")
    def _loss_weights_need_hard_labels(self) -> Recipe:
        if self.data.balance == "loss_weights" and self.mixing.enabled:
            raise ValueError("data.balance: loss_weights weights hard labels, but Mixup/CutMix trains on mixed soft "
                             "targets; use data.balance: sampler with mixing, or set the mixing alphas to 0")
        if self.data.balance != "none" and getattr(self.strategy, "solver", "sgd") == "lbfgs":
            raise ValueError("data.balance: the lbfgs solver fits an unweighted logistic regression; use solver: sgd")
        return self

    @model_validator(mode="after")
    def _lbfgs_needs_cache_and_linear_head(self) -> Recipe:
        if getattr(self.strategy, "solver", "sgd") == "lbfgs":
            problems = []
            if self.head.hidden:
                problems.append("head.hidden must be [] (a logistic regression is one linear layer)")
            if not self.cache.features:
                problems.append("cache.features must be true (the solver fits cached features)")
            if self.mixing.enabled:
                problems.append("mixing must be off (features cannot be mixed)")
            if problems:
                raise ValueError("strategy.solver: lbfgs needs " + "; ".join(problems))
        return self

    @model_validator(mode="after")
    def _staged_phases_fit_in_the_run(self) -> Recipe:
        epochs = self.trainer.epochs
        if isinstance(self.strategy, LpFt) and self.strategy.probe_epochs >= epochs:
            raise ValueError(f"strategy.probe_epochs ({self.strategy.probe_epochs}) must be less than trainer.epochs "
                             f"({epochs}), or the fine-tune phase never starts")
        if isinstance(self.strategy, Gradual):
            first = (self.strategy.unfreeze_epochs or [self.strategy.unfreeze_every])[0]
            if first >= epochs:
                raise ValueError(f"strategy: the first group unfreezes at epoch {first} but trainer.epochs is {epochs}; "
                                 "lower unfreeze_every / unfreeze_epochs or train longer")
            if self.strategy.unfreeze_epochs and self.strategy.unfreeze_epochs != sorted(self.strategy.unfreeze_epochs):
                raise ValueError("strategy.unfreeze_epochs must not decrease (groups unfreeze from the top down)")
        return self

    @property
    def deterministic_training_input(self) -> bool:
        """No random augmentation and no mixing: every epoch sees the same inputs (a feature cache can reuse them)."""
        return self.augment.is_deterministic and not self.mixing.enabled


# ---------------------------------------------------------------------------------------------------------------------
# Loading
