"""What tlkit's datamodules ask of the model they serve: a declared, typed interface instead of attribute probing.

A datamodule asks the model it is fitted, validated, tested or predicted with, at every setup: its classes and kind
of labels (checked against the data's), its eval and training preprocessing (so a datamodule reused for another
model serves that model's input size), and what the feature cache can serve (`cache_plan`). TransferModule
implements it; any LightningModule that does can use ImageFolderDataModule's cache too. A model without it is
refused in one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from tlkit.data.preprocessing import Preprocessing
from tlkit.errors import DataError

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class CachePlan:
    """What the feature cache can serve a fit of `epochs` epochs.

    epochs: how many leading epochs train on cached outputs of a frozen network (0 = none: images every epoch).
    reason: why none, in words (shown in `datamodule.cache_info`).
    network: what runs once per image for the cache: the frozen backbone, or a frozen prefix of it.
    name: the architecture's name, keeping cache entries readable (the weights' fingerprint is their identity).
    prefix: the split of a frozen prefix and its trained top (its activations are cached instead of pooled
        features), or None.
    probe_first: the model fits its head on cached features before the first epoch (extract even when no epoch
        reads them).
    channels_last: run the network in NHWC memory layout.
    """

    epochs: int
    reason: str | None = None
    network: nn.Module | None = None
    name: str = ""
    prefix: Any = None
    probe_first: bool = False
    channels_last: bool = False


@runtime_checkable
class ServedModel(Protocol):
    """The model side of a tlkit datamodule (TransferModule is one)."""

    @property
    def classes(self) -> list[str]:
        """Class names in label order; must equal the data's."""

    @property
    def multi_label(self) -> bool:
        """Several labels per image (multi-hot targets); must match the data's labels."""

    @property
    def preprocessing(self) -> Preprocessing:
        """Eval preprocessing: validation, test and predict images, and the cached validation features."""

    @property
    def train_preprocessing(self) -> Preprocessing:
        """Training crops' preprocessing (a smaller size than the eval one under FixRes)."""

    def cache_plan(self, epochs: int) -> CachePlan:
        """What the feature cache can serve a fit of `epochs` epochs."""


def served_model(model: Any, *, needed_by: str) -> ServedModel:
    """`model` when it implements ServedModel, else a DataError (a ValueError) in one line naming what is missing."""
    if isinstance(model, ServedModel):
        return model
    missing = [name for name in ("classes", "multi_label", "preprocessing", "train_preprocessing", "cache_plan")
               if not hasattr(type(model), name) and not hasattr(model, name)]
    raise DataError(f"{needed_by} serves models that state {', '.join(missing)} (tlkit.data.protocol.ServedModel; "
                    f"TransferModule does); got {type(model).__name__}. Pass preprocessing= to the datamodule to "
                    "use it without a model, or implement the protocol.")
