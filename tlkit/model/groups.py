"""One layer grouping for every timm backbone: an ordered list of named parameter groups from stem to the last stage.

timm's `group_matcher(coarse=...)` (the same map timm's own `--layer-decay` uses) assigns each parameter a layer id;
`timm.models.group_parameters` turns that into ordered groups. coarse = stem + one group per stage; fine = stem + one
group per block. Our classifier head is a separate module (the backbone is built with num_classes=0), so it is never
in these groups: strategies add it as the last, topmost group.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from timm.models import group_parameters
from torch import nn

from tlkit.errors import BackboneError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerGroup:
    """Parameters of one depth level; `index` 0 is the stem (input side)."""

    index: int
    name: str
    param_names: tuple[str, ...]


def layer_groups(model: nn.Module, *, coarse: bool = True) -> list[LayerGroup]:
    """Ordered layer groups of `model` (stem first); every trainable parameter is in exactly one group.

    Models without timm's group_matcher fall back to one group per top-level child module (in registration order,
    which is forward order for timm's conv nets), with a warning.
    """
    matcher = getattr(model, "group_matcher", None)
    grouped: dict[int, list[str]] | None = None
    if callable(matcher):
        try:
            grouped = group_parameters(model, matcher(coarse=coarse))
        except NotImplementedError:  # some timm models declare group_matcher but do not implement it
            grouped = None
    if grouped is None:
        log.warning("%s has no timm group_matcher; grouping by top-level child modules instead",
                    type(model).__name__)
        grouped = _by_children(model)
    names = [n for n, _ in model.named_parameters()]
    covered = [n for members in grouped.values() for n in members]
    if sorted(covered) != sorted(names):
        missing = sorted(set(names) - set(covered))[:3]
        raise BackboneError(f"{type(model).__name__}: its layer grouping misses parameters such as {missing}; "
                            "report the architecture, or use strategy kind linear_probe or finetune.")
    return [LayerGroup(i, group_name(members), tuple(members)) for i, members in enumerate(grouped.values())]


def _by_children(model: nn.Module) -> dict[int, list[str]]:
    groups: dict[int, list[str]] = {}
    for name, child in model.named_children():
        members = [f"{name}.{n}" for n, _ in child.named_parameters()]
        if members:
            groups[len(groups)] = members
    direct = [n for n, _ in model.named_parameters(recurse=False)]
    if direct:  # e.g. a ViT's cls_token: it sits at the input side
        groups = {0: direct, **{k + 1: v for k, v in groups.items()}}
    if not groups:
        raise BackboneError(f"{type(model).__name__} has no parameters to group.")
    return groups


def group_name(param_names: list[str] | tuple[str, ...]) -> str:
    """Readable name: per top-level module, the common dotted prefix of its parameters ('blocks.6.0+conv_head+bn2')."""
    by_top: dict[str, list[list[str]]] = {}
    for n in param_names:
        parts = n.split(".")[:-1] or [n]
        by_top.setdefault(parts[0], []).append(parts)
    labels = []
    for paths in by_top.values():
        prefix = paths[0]
        for p in paths[1:]:
            k = 0
            while k < min(len(prefix), len(p)) and prefix[k] == p[k]:
                k += 1
            prefix = prefix[:k]
        labels.append(".".join(prefix))
    return "+".join(labels)


def describe_groups(model: nn.Module, groups: list[LayerGroup], head: nn.Module | None = None,
                    examples: int = 2) -> list[dict]:
    """Rows for `tlkit groups`: index, name, #params, example parameter names; the head (if given) last."""
    params = dict(model.named_parameters())
    rows = [{"index": g.index, "name": g.name, "params": sum(params[n].numel() for n in g.param_names),
             "examples": list(g.param_names[:examples])} for g in groups]
    if head is not None:
        rows.append({"index": len(groups), "name": "head", "params": sum(p.numel() for p in head.parameters()),
                     "examples": [f"head.{n}" for n, _ in list(head.named_parameters())[:examples]]})
    return rows


def groups_table(backbone: str, *, coarse: bool = True) -> str:
    """`tlkit groups BACKBONE`: the layer groups of a timm architecture (random init, nothing downloaded)."""
    from tlkit.model.backbones import check_backbone_name, create_backbone

    check_backbone_name(backbone)
    model, _, _ = create_backbone(backbone, "none")
    rows = describe_groups(model, layer_groups(model, coarse=coarse), head=nn.Linear(model.num_features, 2))
    header = ("#", "group", "params", "example parameters")
    cells = [(str(r["index"]), r["name"], f"{r['params']:,}", ", ".join(r["examples"])) for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()
    body = ["  ".join(c.ljust(w) for c, w in zip(cell, widths)).rstrip() for cell in cells]
    note = (f"{backbone}: {len(rows) - 1} {'coarse' if coarse else 'fine'} backbone groups, stem (0) to top; the head "
            "(last; its size shown for 2 classes) is ours. gradual unfreezes from the top, layer_decay scales LR by "
            "decay^depth counted from the head, finetune_top trains the top train_top groups.")
    return "\n".join([note, line, "-" * len(line), *body])
