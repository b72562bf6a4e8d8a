"""Transfer strategies: which backbone parameters train, from which epoch, and at what learning rate.

The seeds' transfer rule: with little data, freeze the pretrained backbone and train a linear classifier on its
features; with more data, fine-tune everything with the backbone at about 1/10 of the head's learning rate.
Beyond it: lp_ft (probe, then fine-tune from the probed head), gradual (unfreeze layer groups from the top every few
epochs, fastai/ULMFiT style) and layer_decay (LR x decay^depth from the head down, timm's --layer-decay).

One mechanism for all of them (DESIGN.md contract 4): parameter groups are built once, up front, each with an
`unfreeze_epoch`. Before it a group is gated: LR factor 0 inside the scheduler's own lambda (so any schedule keeps
working and resume restores it exactly), requires_grad False and its modules in eval() (BatchNorm stats never move).
The phase is a pure function of (plan, epoch), so every DDP rank and every resume computes the same one.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from tlkit.model.groups import layer_groups

STRATEGIES = ("linear_probe", "finetune", "lp_ft", "gradual", "layer_decay")
STAGED = ("lp_ft", "gradual")  # strategies whose trainable set changes during the run


@dataclass(frozen=True)
class StrategyConfig:
    """Typed strategy settings (the recipe's strategy section, without the recipe)."""

    kind: str = "linear_probe"
    backbone_lr_mult: float = 0.1
    probe_epochs: int = 1  # lp_ft: head-only epochs before everything trains
    unfreeze_every: int = 1  # gradual: one more group (from the top) every this many epochs
    unfreeze_epochs: tuple[int, ...] = ()  # gradual: explicit epoch per group from the top (overrides every)
    layer_decay: float = 0.75  # layer_decay: LR factor per group below the head
    coarse: bool = True  # group by stage (coarse) or by block (fine)

    @classmethod
    def from_dict(cls, d: dict) -> StrategyConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "unfreeze_epochs" in known:
            known["unfreeze_epochs"] = tuple(int(e) for e in known["unfreeze_epochs"] or ())
        return cls(**known)

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class GroupSpec:
    """One layer group of the optimizer: qualified parameter names, LR factor vs optim.lr, first trained epoch."""

    name: str
    params: tuple[str, ...]
    lr_mult: float
    unfreeze_epoch: int | None  # None = frozen for the whole run

    def active(self, epoch: int) -> bool:
        return self.unfreeze_epoch is not None and epoch >= self.unfreeze_epoch


def plan_groups(backbone: nn.Module, head: nn.Module, config: StrategyConfig) -> list[GroupSpec]:
    """Layer groups from the head (first) down to the stem; names are module-qualified ('backbone.x', 'head.y')."""
    head_spec = GroupSpec("head", tuple(f"head.{n}" for n, _ in head.named_parameters()), 1.0, 0)
    if config.kind in ("linear_probe", "finetune", "lp_ft"):
        start = {"linear_probe": None, "finetune": 0, "lp_ft": config.probe_epochs}[config.kind]
        whole = tuple(f"backbone.{n}" for n, _ in backbone.named_parameters())
        return [head_spec, GroupSpec("backbone", whole, config.backbone_lr_mult, start)]
    groups = list(reversed(layer_groups(backbone, coarse=config.coarse)))  # top of the backbone first
    specs = [head_spec]
    for depth, group in enumerate(groups, start=1):
        params = tuple(f"backbone.{n}" for n in group.param_names)
        name = f"backbone.{group.index}"
        if config.kind == "layer_decay":
            specs.append(GroupSpec(name, params, config.layer_decay ** depth, 0))
        elif config.kind == "gradual":
            if config.unfreeze_epochs:
                start = config.unfreeze_epochs[depth - 1] if depth <= len(config.unfreeze_epochs) else None
            else:
                start = depth * config.unfreeze_every
            specs.append(GroupSpec(name, params, config.backbone_lr_mult, start))
        else:
            raise ValueError(f"Unknown strategy {config.kind!r}; expected one of {', '.join(STRATEGIES)}.")
    return specs


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


def build_param_groups(
    backbone: nn.Module,
    head: nn.Module,
    *,
    strategy: str,
    lr: float,
    weight_decay: float,
    backbone_lr_mult: float = 0.1,
) -> list[dict]:
    """Optimizer groups for a bare backbone + head (("head", "head_no_decay", "backbone", "backbone_no_decay") for
    linear_probe / finetune); see plan_groups for the other strategies."""
    wrapper = nn.Module()
    wrapper.backbone, wrapper.head = backbone, head
    config = StrategyConfig(kind=strategy, backbone_lr_mult=backbone_lr_mult)
    return build_optimizer_groups(wrapper, plan_groups(backbone, head, config), lr=lr, weight_decay=weight_decay)


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
    return names


def freeze(module: nn.Module) -> None:
    """Frozen means frozen: no gradients AND eval mode, so BatchNorm statistics never move (DESIGN.md contract 4)."""
    for p in module.parameters():
        p.requires_grad_(False)
    module.eval()


def group_multipliers(groups: list[dict], config: StrategyConfig, *, steps_per_epoch: int, **schedule) -> list:
    """One LambdaLR factor per optimizer group: the schedule times the group's gate (0 until it unfreezes).

    lp_ft restarts the schedule (warmup included) when fine-tuning begins, for the head too: the probe phase and
    the fine-tune phase are each a whole training run, as in Kumar et al. 2022.
    """
    from tlkit.model.schedules import GatedMultiplier

    out = []
    for g in groups:
        start = g["unfreeze_epoch"] * steps_per_epoch
        if config.kind == "lp_ft":
            boundary = config.probe_epochs * steps_per_epoch
            starts = (0, boundary) if start < boundary else (start,)
            out.append(GatedMultiplier(starts=starts, restart=True, **schedule))
        else:
            out.append(GatedMultiplier(starts=(start,), **schedule))
    return out
