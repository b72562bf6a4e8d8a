"""Transfer strategies: which backbone parameters train, from which epoch, and at what learning rate.

The transfer rule (Yosinski et al. 2014; CS231n's transfer-learning notes): with little data, freeze the pretrained backbone and train a linear classifier on its
features; with more data, fine-tune everything with the backbone at about 1/10 of the head's learning rate.
Beyond it: lp_ft (probe, then fine-tune from the probed head), gradual (unfreeze layer groups from the top every few
epochs, fastai/ULMFiT style), layer_decay (LR x decay^depth from the head down, timm's --layer-decay) and
finetune_top (train only the top layer groups, from cached activations of the frozen rest).

Each kind is one class (settings and behaviour together): it plans the layer groups (LR factor and first
trained epoch of each) and says which epochs the feature cache can serve; the module, fit, check, lr-find and
search all ask it, and nothing else branches on the kind.

One mechanism for all of them (frozen means frozen): parameter groups are built once, up front, each with an
`unfreeze_epoch`. Before it a group is gated: LR factor 0 inside the scheduler's own lambda (so any schedule keeps
working and resume restores it exactly), requires_grad False and its modules in eval() (BatchNorm stats never move).
The phase is a pure function of (plan, epoch), so every DDP rank and every resume computes the same one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, get_args

from pydantic import Field, field_validator, model_validator

from tlkit.config import Section
from tlkit.model.settings import DEFAULT_STAGE_GRID

if TYPE_CHECKING:  # torch stays unimported until a model is built (recipe validation must not import it)
    from collections.abc import Sequence

    from torch import nn


@dataclass(frozen=True)
class GroupSpec:
    """One layer group of the optimizer: qualified parameter names, LR factor vs optim.lr, first trained epoch."""

    name: str
    params: tuple[str, ...]
    lr_mult: float
    unfreeze_epoch: int | None  # None = frozen for the whole run
    norm_eval: bool = False  # BatchNorm layers keep their running statistics (eval mode) even while trained

    def active(self, epoch: int) -> bool:
        return self.unfreeze_epoch is not None and epoch >= self.unfreeze_epoch


def _head_spec(head: nn.Module) -> GroupSpec:
    return GroupSpec("head", tuple(f"head.{n}" for n, _ in head.named_parameters()), 1.0, 0)


def _whole_backbone(backbone: nn.Module, lr_mult: float, start: int | None) -> GroupSpec:
    return GroupSpec("backbone", tuple(f"backbone.{n}" for n, _ in backbone.named_parameters()), lr_mult, start)


def _groups_from_top(backbone: nn.Module, coarse: bool) -> list[tuple[str, tuple[str, ...]]]:
    """(name, qualified parameter names) of timm's layer groups, top of the backbone first."""
    from tlkit.model.groups import layer_groups

    return [(f"backbone.{g.index}", tuple(f"backbone.{n}" for n in g.param_names))
            for g in reversed(layer_groups(backbone, coarse=coarse))]


class _Strategy(Section):
    """What every kind answers besides plan(backbone, head) -> [GroupSpec], which each kind defines."""

    staged: ClassVar[bool] = False  # the trainable set changes during the run (DDP must allow unused parameters)
    searchable: ClassVar[bool] = False  # `tlkit search --strategies` may try this kind with its defaults
    backbone_lr_searched: ClassVar[bool] = False  # search samples backbone_lr_mult (--backbone-lr-mult) for this kind

    @classmethod
    def kind_name(cls) -> str:
        """The kind's name as a recipe writes it (strategy.kind), from the class alone."""
        return cls.model_fields["kind"].default

    def cached_epochs(self, epochs: int) -> int:
        """How many leading epochs the cache can serve: the head alone on a frozen backbone (cached features), or
        for a frozen prefix (finetune_top) the top groups + head on its cached activations."""
        return 0

    def embedding(self) -> dict[str, Any]:
        """What the head sees, as create_classifier's `features` and `stage_grid`: the backbone's pooled last
        features unless the kind chooses others (linear_probe's multi-layer features)."""
        return {"features": "last", "stage_grid": DEFAULT_STAGE_GRID}

    def kept_feature_fraction(self) -> float | None:
        """The closed-form fit keeps only this fraction of the features (None: all of them)."""
        return None

    def frozen_prefix(self, specs: list[GroupSpec]) -> tuple[str, ...]:
        """Backbone parameters (backbone-relative names) frozen for the whole run under a trained top, whose output
        is cached once (empty = no prefix cache; the module then runs the whole backbone every step)."""
        return ()

    @property
    def probe_first(self) -> bool:
        """The head is fitted in closed form on cached features before the first epoch (lp_ft's probe)."""
        return False

    @property
    def closed_form_only(self) -> bool:
        """The head is fitted in closed form on cached features and nothing trains by gradient steps (linear_probe
        with solver lbfgs): a run fits it, then only validates and saves."""
        return False

    def unmet_needs(self, *, head_hidden: Sequence[int] = (), cache_features: bool = True, mixing: bool = False,
                    balance: str = "none", epochs: int | None = None) -> str | None:
        """One line naming what this strategy needs of the other settings and does not get (None: all met). The
        defaults are the settings that meet every need (epochs None: not known), so a caller passes only what it
        knows."""
        return None

    def multipliers(self, groups: list[dict], *, steps_per_epoch: int, **schedule) -> list:
        """One LambdaLR factor per optimizer group: the schedule times the group's gate (0 until it unfreezes)."""
        from tlkit.model.schedules import GatedMultiplier

        return [GatedMultiplier(starts=(g["unfreeze_epoch"] * steps_per_epoch,), **schedule) for g in groups]


class LinearProbe(_Strategy):
    kind: Literal["linear_probe"] = "linear_probe"
    """Freeze the backbone (no grads, BatchNorm in eval) and train only the head: the rule for small data."""
    searchable: ClassVar[bool] = True
    solver: Literal["sgd", "lbfgs"] = "sgd"
    """sgd = the optim section's optimizer for trainer.epochs; lbfgs = closed-form multinomial logistic regression
    (one sigmoid per class for multi-label data) on cached features, L2 strength chosen on a held-out 20% of train
    (linear head and feature cache required); seconds, not minutes."""
    features: Literal["last", "stages"] | Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)] = "last"
    """What the head sees: last = the backbone's pooled features; stages = the pooled output of every stage (timm's
    feature stages, earliest first) plus the last features, each block normalised and concatenated (a multi-layer
    probe, Head2Toe); a list such as [2, 3] = those stages plus the last. Helps most when the images differ from
    the pretraining photos (low resolution, satellite, medical); extraction costs the same, the head is wider."""
    stage_grid: int = Field(default=DEFAULT_STAGE_GRID, ge=1, le=4)
    """With stages or a list: each stage's map is average-pooled to stage_grid x stage_grid cells (Head2Toe's strided
    pooling; 1 = one global average). 2 keeps where things are: on 32-pixel CIFAR-10 photos at 224 px the probe
    scored 78.5% held out with 2 against 75.8% with 1 (the last features alone: 75.2%); the head is 4x wider on
    the stages part (the last features stay globally pooled)."""
    select: float | None = Field(default=None, gt=0, le=1)
    """lbfgs only: keep this fraction of the features (those with the largest weights of a first fit, weighted by
    their spread) and fit again on them; the other inputs get weight 0; null = keep all."""

    def embedding(self) -> dict[str, Any]:
        return {"features": self.features, "stage_grid": self.stage_grid}

    def kept_feature_fraction(self) -> float | None:
        return self.select

    def plan(self, backbone: nn.Module, head: nn.Module) -> list[GroupSpec]:
        return [_head_spec(head), _whole_backbone(backbone, 1.0, None)]

    @field_validator("features", mode="before")
    @classmethod
    def _features_in_words(cls, value):
        """One clear error instead of one per member of the union."""
        is_word = isinstance(value, str) and value in ("last", "stages")
        is_list = (isinstance(value, list) and len(value) > 0
                   and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value))
        if not (is_word or is_list):
            raise ValueError(f"got {value!r}; expected last, stages or a non-empty list of stage indices (0 = "
                             "earliest) such as [2, 3]")
        return value

    @model_validator(mode="after")
    def _select_needs_lbfgs(self) -> LinearProbe:
        if self.select is not None and self.solver != "lbfgs":
            raise ValueError(f"select: got {self.select} with solver: {self.solver}; feature selection is part of the "
                             "closed-form fit: set solver: lbfgs, or select: null")
        return self

    def cached_epochs(self, epochs: int) -> int:
        return epochs

    @property
    def closed_form_only(self) -> bool:
        return self.solver == "lbfgs"

    def unmet_needs(self, *, head_hidden: Sequence[int] = (), cache_features: bool = True, mixing: bool = False,
                    balance: str = "none", epochs: int | None = None) -> str | None:
        if self.solver != "lbfgs":
            return None
        problems = [why for unmet, why in (
            (bool(head_hidden), "head.hidden must be [] (a logistic regression is one linear layer)"),
            (not cache_features, "cache.features must be true (the solver fits cached features)"),
            (mixing, "mixing must be off (features cannot be mixed)"),
            (balance != "none", "data.balance must be none (the solver fits an unweighted logistic regression)"))
            if unmet]
        return "strategy.solver: lbfgs needs " + "; ".join(problems) if problems else None


class Finetune(_Strategy):
    kind: Literal["finetune"] = "finetune"
    """Train everything, backbone at a lower LR: the rule when there is more data."""
    backbone_lr_mult: float = Field(default=0.1, gt=0, le=1)
    """Backbone LR = head LR x this; the usual rule of thumb is about 1/10."""

    searchable: ClassVar[bool] = True
    backbone_lr_searched: ClassVar[bool] = True

    def plan(self, backbone: nn.Module, head: nn.Module) -> list[GroupSpec]:
        return [_head_spec(head), _whole_backbone(backbone, self.backbone_lr_mult, 0)]


class LpFt(_Strategy):
    kind: Literal["lp_ft"] = "lp_ft"
    """Linear probe first (backbone frozen), then fine-tune everything from the probed head (Kumar et al. 2022)."""
    probe: Literal["closed_form", "sgd"] = "closed_form"
    """closed_form = before the first epoch, fit the head to convergence by L-BFGS logistic regression on cached
    features (as the paper does; costs no epochs); sgd = the first probe_epochs epochs train the head on cached features."""
    probe_epochs: int = Field(default=2, gt=0)
    """probe: sgd only: head-only epochs (of trainer.epochs) before the backbone unfreezes."""
    backbone_lr_mult: float = Field(default=0.1, gt=0, le=1)
    """Backbone LR in the fine-tune phase = optim.lr x this."""
    head_lr_mult: float | None = Field(default=None, gt=0, le=1)
    """Head LR in the fine-tune phase = optim.lr x this; null = backbone_lr_mult (the probed head is already good, so
    the paper fine-tunes everything at one small LR; a large head LR undoes the probe in the first steps)."""
    batchnorm: Literal["train", "frozen"] = "train"
    """Fine-tune phase: train = BatchNorm updates its running statistics; frozen = keeps the pretrained ones (eval
    mode; its scale and shift still train), so the probed features do not shift under the head."""

    staged: ClassVar[bool] = True

    @property
    def probe_first(self) -> bool:
        """The head is fitted in closed form before training starts (needs cached features and a linear head)."""
        return self.probe == "closed_form"

    @property
    def fine_tune_epoch(self) -> int:
        return 0 if self.probe_first else self.probe_epochs

    @property
    def head_factor(self) -> float:
        return self.backbone_lr_mult if self.head_lr_mult is None else self.head_lr_mult

    def plan(self, backbone: nn.Module, head: nn.Module) -> list[GroupSpec]:
        head_spec = _head_spec(head)
        if self.probe_first:  # the head's only trained phase is the fine-tune
            head_spec = GroupSpec("head", head_spec.params, self.head_factor, 0)
        bb = _whole_backbone(backbone, self.backbone_lr_mult, self.fine_tune_epoch)
        return [head_spec, GroupSpec(bb.name, bb.params, bb.lr_mult, bb.unfreeze_epoch,
                                     norm_eval=self.batchnorm == "frozen")]

    def cached_epochs(self, epochs: int) -> int:
        return min(self.fine_tune_epoch, epochs)

    def unmet_needs(self, *, head_hidden: Sequence[int] = (), cache_features: bool = True, mixing: bool = False,
                    balance: str = "none", epochs: int | None = None) -> str | None:
        if self.probe_first and head_hidden:
            return "strategy.probe: closed_form fits one linear layer, so head.hidden must be []; or use probe: sgd"
        if epochs is not None and not self.probe_first and self.probe_epochs >= epochs:
            return (f"strategy.probe_epochs ({self.probe_epochs}) must be less than trainer.epochs ({epochs}), or the "
                    "fine-tune phase never starts")
        return None

    def multipliers(self, groups: list[dict], *, steps_per_epoch: int, **schedule) -> list:
        """probe sgd: each phase gets a whole schedule (warmup included), the head's LR scaled by head_lr_mult in the
        fine-tune phase; closed_form: one schedule, the fine-tune's."""
        from tlkit.model.schedules import GatedMultiplier

        boundary = self.fine_tune_epoch * steps_per_epoch
        out = []
        for g in groups:
            start = g["unfreeze_epoch"] * steps_per_epoch
            if start < boundary:  # the head through both phases of probe: sgd
                out.append(GatedMultiplier(starts=(0, boundary), scales=(1.0, self.head_factor), restart=True,
                                           **schedule))
            else:
                out.append(GatedMultiplier(starts=(start,), restart=True, **schedule))
        return out


class Gradual(_Strategy):
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

    staged: ClassVar[bool] = True

    def unmet_needs(self, *, head_hidden: Sequence[int] = (), cache_features: bool = True, mixing: bool = False,
                    balance: str = "none", epochs: int | None = None) -> str | None:
        first = (self.unfreeze_epochs or [self.unfreeze_every])[0]
        if epochs is not None and first >= epochs:
            return (f"strategy: the first group unfreezes at epoch {first} but trainer.epochs is {epochs}; lower "
                    "unfreeze_every / unfreeze_epochs or train longer")
        if self.unfreeze_epochs and self.unfreeze_epochs != sorted(self.unfreeze_epochs):
            return "strategy.unfreeze_epochs must not decrease (groups unfreeze from the top down)"
        return None

    def plan(self, backbone: nn.Module, head: nn.Module) -> list[GroupSpec]:
        specs = [_head_spec(head)]
        for depth, (name, params) in enumerate(_groups_from_top(backbone, self.groups == "coarse"), start=1):
            if self.unfreeze_epochs:
                start = self.unfreeze_epochs[depth - 1] if depth <= len(self.unfreeze_epochs) else None
            else:
                start = depth * self.unfreeze_every
            specs.append(GroupSpec(name, params, self.backbone_lr_mult, start))
        return specs


class FinetuneTop(_Strategy):
    kind: Literal["finetune_top"] = "finetune_top"
    """Train only the top train_top layer groups + head; the rest stays frozen (BatchNorm in eval) and its output is
    computed once per image and augmented view (cache.views) and read from the cache every epoch, so an epoch costs
    only the trained part."""
    train_top: int = Field(default=2, gt=0)
    """Layer groups trained, counted from the top (`tlkit groups BACKBONE` lists them); at least one stays frozen
    (training all of them is kind finetune)."""
    groups: Literal["coarse", "fine"] = "coarse"
    """Layer groups from timm's group_matcher: coarse = stem + one per stage, fine = one per block."""
    backbone_lr_mult: float = Field(default=0.1, gt=0, le=1)
    """LR of the trained groups = head LR x this."""

    def plan(self, backbone: nn.Module, head: nn.Module) -> list[GroupSpec]:
        from tlkit.errors import RecipeError

        groups = _groups_from_top(backbone, self.groups == "coarse")
        if self.train_top >= len(groups):
            raise RecipeError(
                f"strategy.train_top: {self.train_top}, but {type(backbone).__name__} has {len(groups)} {self.groups} "
                f"layer groups (`tlkit groups` lists them); choose 1 to {len(groups) - 1}, or kind finetune to train "
                "all of them.")
        return [_head_spec(head), *(GroupSpec(name, params, self.backbone_lr_mult, 0 if depth < self.train_top
                                              else None) for depth, (name, params) in enumerate(groups))]

    def cached_epochs(self, epochs: int) -> int:
        return epochs

    def frozen_prefix(self, specs: list[GroupSpec]) -> tuple[str, ...]:
        return tuple(n.removeprefix("backbone.") for s in specs if s.unfreeze_epoch is None for n in s.params)


class LayerDecay(_Strategy):
    kind: Literal["layer_decay"] = "layer_decay"
    """Train everything; each layer group's LR = head LR x decay^depth counted from the head down (timm's --layer-decay)."""
    decay: float = Field(default=0.75, gt=0, le=1)
    """Per-group LR factor; 0.75 is timm's common choice; 1.0 = plain fine-tune at the head's LR."""
    groups: Literal["coarse", "fine"] = "fine"
    """Layer groups from timm's group_matcher: fine = one per block (as timm does), coarse = one per stage."""

    def plan(self, backbone: nn.Module, head: nn.Module) -> list[GroupSpec]:
        specs = [_head_spec(head)]
        for depth, (name, params) in enumerate(_groups_from_top(backbone, self.groups == "coarse"), start=1):
            specs.append(GroupSpec(name, params, self.decay ** depth, 0))
        return specs


class Auto(_Strategy):
    kind: Literal["auto"] = "auto"
    """Decide from the data (tlkit.run.auto), in three recorded steps: (1) the data's size; (2) a quick held-out
    measurement: the closed-form probe fitted on 80% of the training images, on the last features and on the
    stages features, scored on the other 20%; (3) the rule: small data -> linear_probe (lbfgs) on the better
    features; enough data and a held-out score below `saturation` -> lp_ft; else linear_probe. The numbers, the
    rule that fired and the resolved strategy are logged, stored in metrics.json (strategy_auto) and written at
    the top of the run's recipe.yaml."""
    images_per_class: int = Field(default=200, gt=0)
    """Small data below this many training images per class (mean): fine-tuning millions of weights on so few
    overfits. Measured: on hymenoptera (~120 per class) fine-tunes scored 94-95% against the probe's 95.4%; on
    cifar10_small (300 per class) lp_ft scored 84.9% against the probe's 73-75%. 200 lies between the two."""
    min_images: int = Field(default=1000, gt=0)
    """Small data below this many training images in all: the held-out 20% (200 images at 1,000) must be large
    enough that a score under `saturation` is not one or two unlucky images (1 image of 49 is 2 points)."""
    saturation: float = Field(default=0.90, gt=0, le=1)
    """Held-out probe accuracy (mAP for multi-label data) at or above which the probe is taken as good enough: what
    fine-tuning could add is then a few points at several times the cost (hymenoptera: probe 95.4% in 12 s,
    fine-tunes 94-95% in 86-95 s); below it, fine-tuning had room (cifar10_small: probe 75%, lp_ft 84.9%)."""
    backbone_lr_mult: float = Field(default=0.1, gt=0, le=1)
    """lp_ft's fine-tune LR for the backbone and the probed head = optim.lr x this (as recipes/cifar10_small.yaml)."""
    batchnorm: Literal["train", "frozen"] = "frozen"
    """lp_ft's BatchNorm in the fine-tune phase; frozen keeps the statistics the probe was fitted on (as
    recipes/cifar10_small.yaml, measured at 84.9%)."""

    def plan(self, backbone: nn.Module, head: nn.Module) -> list[GroupSpec]:
        raise ValueError("strategy kind auto is decided from the data before a model is built (tlkit train does it: "
                         "tlkit.run.auto.resolve_auto_strategy); or choose linear_probe or lp_ft yourself.")


StrategyConfig = Annotated[LinearProbe | Finetune | LpFt | Gradual | LayerDecay | FinetuneTop | Auto,
                           Field(discriminator="kind")]
STRATEGY_CLASSES: dict[str, type[_Strategy]] = {cls.kind_name(): cls for cls in get_args(get_args(StrategyConfig)[0])}
SEARCHABLE_KINDS = tuple(kind for kind, cls in STRATEGY_CLASSES.items() if cls.searchable)
BACKBONE_LR_SEARCH = Finetune  # the kind a search of backbone_lr_mult trains when it searches no kind


def backbone_lr_searched(kind: str | None) -> bool:
    """Whether search samples backbone_lr_mult for a trial of `kind` (None: no kind searched, BACKBONE_LR_SEARCH)."""
    return (BACKBONE_LR_SEARCH if kind is None else STRATEGY_CLASSES[kind]).backbone_lr_searched


class _StrategyField(Section):
    strategy: StrategyConfig  # a named field, so errors read strategy.kind / strategy.decay as in a recipe


def strategy_from(value: StrategyConfig | str | dict) -> StrategyConfig:
    """A strategy object from itself, its kind name ('finetune') or its dict form ({'kind': 'lp_ft', ...})."""
    from pydantic import ValidationError

    from tlkit.config import describe_error
    from tlkit.errors import RecipeError

    if isinstance(value, _Strategy):
        return value
    try:
        return _StrategyField.model_validate({"strategy": {"kind": value} if isinstance(value, str) else value}).strategy
    except ValidationError as exc:
        raise RecipeError("; ".join(describe_error(e, _StrategyField) for e in exc.errors())) from None


def build_optimizer_groups(module: nn.Module, specs: list[GroupSpec], *, lr: float, weight_decay: float) -> list[dict]:
    """One optimizer group per layer group x (decay, no decay); never-trained groups are left out entirely.

    Each group carries `name` (Lightning's LearningRateMonitor logs lr-<optimizer>/<name>) and `unfreeze_epoch`.
    Norm weights and all biases (ndim <= 1) get no weight decay.
    """
    params = dict(module.named_parameters())
    out = []
    for spec in specs:
        if spec.unfreeze_epoch is None:
            continue
        decay = [params[n] for n in spec.params if params[n].ndim > 1]
        no_decay = [params[n] for n in spec.params if params[n].ndim <= 1]
        for suffix, members, wd in (("", decay, weight_decay), ("_no_decay", no_decay, 0.0)):
            if members:
                out.append({"name": spec.name + suffix, "params": members, "lr": lr * spec.lr_mult,
                            "weight_decay": wd, "unfreeze_epoch": spec.unfreeze_epoch})
    return out


def apply_phase(module: nn.Module, specs: list[GroupSpec], epoch: int) -> list[str]:
    """Set requires_grad for `epoch`'s phase; return the names of the modules to keep in eval() (fully frozen ones).

    A module is frozen when it has parameters and all of them are frozen; its parameter-free children (DropPath,
    activations) are covered by its eval(). The caller re-applies eval() whenever Lightning calls train().
    """
    frozen: set[str] = set()
    params = dict(module.named_parameters())
    for spec in specs:
        on = spec.active(epoch)
        for n in spec.params:
            params[n].requires_grad_(on)
            if not on:
                frozen.add(n)
    names: list[str] = []
    skip: tuple[str, ...] = ()
    for name, sub in module.named_modules():
        if not name or (skip and name.startswith(skip)):
            continue
        own = [f"{name}.{n}" for n, _ in sub.named_parameters()]
        if own and all(n in frozen for n in own):
            names.append(name)
            skip = (*skip, name + ".")
    return names + _frozen_norms(module, specs, epoch, skip)


def _frozen_norms(module: nn.Module, specs: list[GroupSpec], epoch: int, skip: tuple[str, ...]) -> list[str]:
    """BatchNorm layers of trained groups with norm_eval: kept in eval() so their running statistics stay."""
    from torch.nn.modules.batchnorm import _BatchNorm

    held = {n for s in specs if s.norm_eval and s.active(epoch) for n in s.params}
    if not held:
        return []
    return [name for name, sub in module.named_modules()
            if isinstance(sub, _BatchNorm) and not (skip and name.startswith(skip))
            and any(f"{name}.{n}" in held for n, _ in sub.named_parameters())]


def freeze(module: nn.Module) -> None:
    """Frozen means frozen: no gradients AND eval mode, so BatchNorm statistics never move."""
    for p in module.parameters():
        p.requires_grad_(False)
    module.eval()


