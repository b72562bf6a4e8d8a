"""Transfer strategies: which backbone parameters train, and at what learning rate.

The seeds' transfer rule: with little data, freeze the pretrained backbone and train a linear classifier on its
features; with more data, fine-tune everything with the backbone at about 1/10 of the head's learning rate.
Parameter groups are built once, up front, so schedulers, DDP and resume see a fixed optimizer layout.
"""

from __future__ import annotations

from torch import nn

STRATEGIES = ("linear_probe", "finetune")


def freeze(module: nn.Module) -> None:
    """Frozen means frozen: no gradients AND eval mode, so BatchNorm statistics never move (DESIGN.md contract 4)."""
    for p in module.parameters():
        p.requires_grad_(False)
    module.eval()


def _decay_split(module: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(decayed, not decayed): norm weights and all biases (ndim <= 1) get no weight decay."""
    decay, no_decay = [], []
    for p in module.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return decay, no_decay


def build_param_groups(
    backbone: nn.Module,
    head: nn.Module,
    *,
    strategy: str,
    lr: float,
    weight_decay: float,
    backbone_lr_mult: float = 0.1,
) -> list[dict]:
    """Optimizer parameter groups, each named ("head", "head_no_decay", "backbone", "backbone_no_decay").

    linear_probe: the head only (the backbone is frozen for the whole run).
    finetune: head at `lr`, backbone at `lr * backbone_lr_mult`.
    """
    parts: list[tuple[str, nn.Module, float]] = [("head", head, lr)]
    if strategy == "finetune":
        parts.append(("backbone", backbone, lr * backbone_lr_mult))
    groups = []
    for name, module, group_lr in parts:
        decay, no_decay = _decay_split(module)
        if decay:
            groups.append({"name": name, "params": decay, "lr": group_lr, "weight_decay": weight_decay})
        if no_decay:
            groups.append({"name": f"{name}_no_decay", "params": no_decay, "lr": group_lr, "weight_decay": 0.0})
    return groups
