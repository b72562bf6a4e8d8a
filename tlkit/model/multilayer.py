"""Multi-layer features (Head2Toe, Evci et al. 2022): pooled outputs of several intermediate stages, concatenated.

A linear probe on the last layer sees only what the pretraining task kept at the top; earlier stages keep more
generic, lower-level signals (textures, colours), which help most when the target data differs from the
pretraining data (low resolution, satellite, medical images). The wrapper behaves like a pooled-feature backbone
(`num_features` wide, forward -> (B, num_features)), so the head, the feature cache, checkpoints and ONNX export
take it as they take the plain backbone.

Each stage's map is global-average-pooled and each block (the stages and the final pooled features) is
L2-normalised per image and rescaled to unit mean square: blocks 16 and 1,280 wide then weigh alike in the head's
input, and the result needs no statistics from data (it is cached and exported as is). Head2Toe's extra strided
poolings of early layers are not used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from tlkit.errors import BackboneError


def stage_count(model: nn.Module) -> int:
    return len(getattr(model, "feature_info", None) or [])


def resolve_stages(model: nn.Module, features: str | Sequence[int], name: str) -> tuple[int, ...]:
    """The stage indices (timm's feature_info order, 0 = earliest) that `features` names: stages = all of them."""
    count = stage_count(model)
    if count == 0 or not hasattr(model, "forward_intermediates"):
        raise BackboneError(f"strategy.features: {name} exposes no intermediate stages in timm "
                            "(no feature_info / forward_intermediates); use features: last.")
    if features == "stages":
        return tuple(range(count))
    wrong = [i for i in features if not 0 <= i < count]
    if wrong:
        raise BackboneError(f"strategy.features: got stage {wrong[0]}; {name} has stages 0-{count - 1} "
                            "(earliest first); fix the list or use features: stages.")
    return tuple(sorted(set(features)))


class MultiLayerFeatures(nn.Module):
    """A timm model (num_classes=0) whose output is [stage blocks..., final pooled features], each block normalised.

    A stage whose output is the final feature map itself (ResNet's last stage) is not repeated."""

    def __init__(self, model: nn.Module, stages: Sequence[int]):
        super().__init__()
        self.model = model
        self.pretrained_cfg = getattr(model, "pretrained_cfg", {})
        stages = tuple(stages)
        if stages and stages[-1] == stage_count(model) - 1 and _last_stage_is_final(model):
            stages = stages[:-1]
        self.stages = stages
        self.block_widths = (*(model.feature_info[i]["num_chs"] for i in stages), model.num_features)
        self.num_features = sum(self.block_widths)
        # Part of the state dict, so the weights fingerprint (the feature cache's key) differs per stage choice.
        self.register_buffer("feature_stages", torch.tensor([-1, *stages], dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stages:
            final, maps = self.model.forward_intermediates(x, indices=list(self.stages))
        else:
            final, maps = self.model.forward_features(x), []
        blocks = [m.mean(dim=(2, 3)) for m in maps] + [self.model.forward_head(final, pre_logits=True)]
        return torch.cat([_unit_rms(b) for b in blocks], dim=1)


def _unit_rms(block: torch.Tensor) -> torch.Tensor:
    """Per image: block / ||block|| * sqrt(width), so every entry is ~1 in size whatever the block's width."""
    return block * (math.sqrt(block.shape[1]) / block.norm(dim=1, keepdim=True).clamp_min(1e-6))


@torch.no_grad()
def _last_stage_is_final(model: nn.Module) -> bool:
    """True when the model's final feature map is its last stage's output (no head convolution after it)."""
    was_training = model.training
    model.eval()
    try:
        size = int((getattr(model, "pretrained_cfg", {}) or {}).get("input_size", (3, 64, 64))[-1])
        size = max(32, min(size, 64))
        image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
        final, maps = model.forward_intermediates(image, indices=[stage_count(model) - 1])
        return final.shape == maps[-1].shape and torch.equal(final, maps[-1])
    finally:
        model.train(was_training)
