"""Batch-level Mixup / CutMix (timm's well-kept implementation) with soft-target cross-entropy.

Mixup blends two images and their labels (e.g. 40% cat + 60% dog); CutMix pastes a rectangle of one image into
another and mixes the labels by pasted area. Training accuracy under mixing counts the dominant label of each soft
target. Multi-label targets (multi-hot floats) are mixed as they are: each label's weight is the share of the mixed
image it came with, and label smoothing pulls every label towards 0.5 (timm's multi-label mixing).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.data.mixup import mixup_target

from tlkit.model.settings import MixingConfig


class BatchMixer(torch.nn.Module):
    """(images, integer labels) -> (mixed images, soft targets). Wraps timm.data.Mixup in batch mode.

    multi_label: targets are (N, C) multi-hot floats instead of (N,) class indices, mixed directly.
    timm needs an even batch; an odd batch mixes all but its last image, which keeps its own (smoothed) label.
    """

    def __init__(self, config: MixingConfig, num_classes: int, label_smoothing: float = 0.0, *,
                 multi_label: bool = False):
        super().__init__()
        self.config = config
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.multi_label = multi_label
        self.mixup = Mixup(
            mixup_alpha=config.mixup_alpha,
            cutmix_alpha=config.cutmix_alpha,
            prob=config.prob,
            switch_prob=config.switch_prob,
            mode="batch",
            label_smoothing=label_smoothing,
            num_classes=num_classes,
            multi_label=multi_label,
        )

    def active(self, epoch: int, max_epochs: int | None) -> bool:
        if not self.config.enabled:
            return False
        return max_epochs is None or epoch < max_epochs - self.config.off_last_epochs

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images.ndim != 4:
            raise ValueError(f"Batch ndim should be 4 (N, C, H, W). Got {images.ndim}.")
        expected = (len(images), self.num_classes) if self.multi_label else (len(images),)
        if tuple(labels.shape) != expected:
            what = "a multi-hot row of" if self.multi_label else "one integer label"
            raise ValueError(f"Expected {what} per image, shape {expected}; got labels of shape {tuple(labels.shape)}.")
        images = images.clone()  # timm mixes in place; the caller's batch stays as it was
        n = len(images) - len(images) % 2
        if n < 2:
            return images, self.soft_targets(labels)
        mixed, soft = self.mixup(images[:n], labels[:n])
        images[:n] = mixed
        if n < len(images):
            soft = torch.cat([soft, self.soft_targets(labels[n:])])
        return images, soft

    def soft_targets(self, labels: torch.Tensor) -> torch.Tensor:
        return mixup_target(labels, self.num_classes, lam=1.0, smoothing=self.label_smoothing,
                            multi_label=self.multi_label)

    def extra_repr(self) -> str:
        c = self.config
        return (f"mixup_alpha={c.mixup_alpha}, cutmix_alpha={c.cutmix_alpha}, prob={c.prob}, "
                f"switch_prob={c.switch_prob}, label_smoothing={self.label_smoothing}, num_classes={self.num_classes}, "
                f"multi_label={self.multi_label}")


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()


def binary_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, *, smoothing: float = 0.0,
                         pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-label loss: BCE-with-logits summed over classes, averaged over images (zero logits give C x ln 2).

    Summed, not averaged, over classes so each logit's gradient has the scale softmax cross-entropy gives it and a
    recipe's learning rate means the same for both. smoothing pulls targets towards 0.5 (t (1 - eps) + eps / 2);
    pos_weight (C,) scales each class's positive term (data.balance: loss_weights)."""
    targets = targets.to(logits.dtype)
    if smoothing > 0:
        targets = targets * (1 - smoothing) + smoothing / 2
    return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight, reduction="none").sum(-1).mean()
