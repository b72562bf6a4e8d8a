"""TransferModule: a pretrained timm backbone + a new head, trained as a linear probe or a low-LR fine-tune."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score
from typing_extensions import override

from tlkit.config import settings_from
from tlkit.data.preprocessing import Preprocessing
from tlkit.infer.tta import TTAPolicy, normalize_spec, resolve_policy
from tlkit.model.backbones import create_backbone
from tlkit.model.heads import build_head
from tlkit.model.mixing import BatchMixer, soft_target_cross_entropy
from tlkit.model.settings import (
    BackboneConfig,
    HeadConfig,
    MixingConfig,
    OptimConfig,
    ScheduleConfig,
)
from tlkit.model.strategies import (
    StrategyConfig,
    apply_phase,
    build_optimizer_groups,
    freeze,
    strategy_from,
)

CHECKPOINT_FORMAT = 2  # 2: settings stored as the settings models' dicts (backbone, strategy, optim, schedule...)


class TransferModule(L.LightningModule):
    """Backbone (timm, `num_classes=0`) -> head, with the transfer rule built in (little data: a linear probe on frozen features; more data: fine-tune with the backbone at ~1/10 of the head's LR).

    Every setting is one of tlkit's settings models (the recipe's sections), given as the model, its dict form, or a
    short string where one field says it all; defaults are the recipe's.

    Args:
        backbone: timm architecture name, or BackboneConfig / its dict (name, weights, input size, normalisation...).
        classes: class names in label order (e.g. `datamodule.classes`).
        strategy: a strategy object (LinearProbe, Finetune, LpFt, Gradual, LayerDecay), its dict, or a kind name.
        head: HeadConfig or its dict; default a single linear layer (a linear probe).
        optim: OptimConfig or its dict (optimizer, lr, weight decay, L1, label smoothing, EMA).
        schedule: ScheduleConfig, its dict, or a kind name (cosine, step, constant).
        mixing: MixingConfig or its dict (Mixup/CutMix); training accuracy then counts the dominant label.
        tta: default test-time augmentation of evaluate/predict: a policy name or a TTA spec dict (tlkit.infer.tta).
        weights: shorthand for backbone.weights (auto | hub | bundled | none | a file).
        class_weights: per-class loss weights (data.balance: loss_weights).
        channels_last: NHWC memory layout; on a 2-core CPU lite0 trains ~1.5x faster (10 -> 16 images/s at 224 px).
    """

    def __init__(
        self,
        backbone: str | BackboneConfig | Mapping = "tf_efficientnet_lite0",
        classes: Sequence[str] | None = None,
        *,
        strategy: StrategyConfig | str | Mapping = "linear_probe",
        head: HeadConfig | Mapping | None = None,
        optim: OptimConfig | Mapping | None = None,
        schedule: ScheduleConfig | str | Mapping | None = None,
        mixing: MixingConfig | Mapping | None = None,
        tta: str | Mapping | None = None,
        weights: str | None = None,
        class_weights: Sequence[float] | None = None,
        channels_last: bool = True,
    ):
        super().__init__()
        if not classes or len(classes) < 2:
            raise ValueError(f"TransferModule needs at least 2 class names; got {classes!r}.")
        if class_weights is not None and len(class_weights) != len(classes):
            raise ValueError(f"class_weights has {len(class_weights)} entries for {len(classes)} classes.")
        backbone_config = settings_from(BackboneConfig, backbone, shorthand="name")
        if weights is not None:
            backbone_config = backbone_config.model_copy(update={"weights": weights})
        self.strategy = strategy_from(strategy)
        self.head_config = settings_from(HeadConfig, head)
        self.optim_config = settings_from(OptimConfig, optim)
        self.schedule_config = settings_from(ScheduleConfig, schedule, shorthand="kind")
        mixing_config = settings_from(MixingConfig, mixing)
        self.tta_spec = normalize_spec(tta)  # fails on a bad policy before any model is built
        self.classes = list(classes)
        self.backbone, pretrained_pre, self.weights_source = create_backbone(
            backbone_config.name, backbone_config.weights, drop_path_rate=backbone_config.drop_path_rate
        )
        self.preprocessing: Preprocessing = pretrained_pre.replace(**backbone_config.preprocessing_overrides())
        # FixRes: training crops may be smaller than the eval input (the one eval preprocessing stays `preprocessing`).
        self.train_preprocessing = self.preprocessing.replace(input_size=backbone_config.train_input_size)
        # Plain types only: checkpoints must load with torch.load(weights_only=True). The resolved preprocessing is
        # stored, so a reload never depends on the pretrained config of another timm version.
        self.save_hyperparameters({
            "backbone": {**backbone_config.model_dump(mode="json"), **self.preprocessing.to_dict()},
            "classes": self.classes,
            "strategy": self.strategy.model_dump(mode="json"),
            "head": self.head_config.model_dump(mode="json"),
            "optim": self.optim_config.model_dump(mode="json"),
            "schedule": self.schedule_config.model_dump(mode="json"),
            "mixing": mixing_config.model_dump(mode="json"),
            "tta": self.tta_spec,
            "class_weights": [float(w) for w in class_weights] if class_weights is not None else None,
            "channels_last": channels_last,
        })
        self.head = build_head(self.backbone.num_features, len(classes), self.head_config)
        self.channels_last = channels_last
        if channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        self.group_specs = self.strategy.plan(self.backbone, self.head)
        for spec in self.group_specs:  # never-trained groups freeze now (before any DDP wrap: it must not see them)
            if spec.unfreeze_epoch is None:
                for name in spec.params:
                    self.get_parameter(name).requires_grad_(False)
        self.backbone_frozen = all(s.unfreeze_epoch is None for s in self.group_specs if s.name != "head")
        if self.backbone_frozen:
            freeze(self.backbone)
        self.phase_epoch: int | None = None  # the epoch whose phase (trainable groups) is applied; None = not yet
        self._frozen_modules: list[str] = []
        self.mixer = (BatchMixer(mixing_config, len(classes), self.optim_config.label_smoothing)
                      if mixing_config.enabled else None)
        self.train_acc = MulticlassAccuracy(num_classes=len(classes), average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=len(classes), average="micro")
        # Imbalance-aware metrics: macro recall (= balanced accuracy) and macro F1.
        self.val_balanced_acc = MulticlassAccuracy(num_classes=len(classes), average="macro")
        self.val_macro_f1 = MulticlassF1Score(num_classes=len(classes), average="macro")
        self.test_acc = MulticlassAccuracy(num_classes=len(classes), average="micro")
        self.test_balanced_acc = MulticlassAccuracy(num_classes=len(classes), average="macro")
        self.test_macro_f1 = MulticlassF1Score(num_classes=len(classes), average="macro")
        # data.balance: loss_weights; rebuilt from the plain-float hparam, so checkpoints stay weights_only-safe.
        self.class_weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None

    # -- model ---------------------------------------------------------------------------------------------------

    @property
    def tta_policy(self) -> TTAPolicy:
        """The default TTA policy's concrete views for this model's input size."""
        return resolve_policy(self.tta_spec, self.preprocessing)

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, C, H, W) -> logits; already-pooled features (N, num_features), e.g. from the cache -> logits."""
        if x.ndim == 2:
            return self.head(x)
        return self.head(self.features(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features; no autograd graph through a frozen backbone (it would never be used)."""
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.backbone_frozen):
            return self.backbone(x)

    @override
    def train(self, mode: bool = True) -> TransferModule:
        """Frozen means frozen: Lightning calls train() on the whole module; the frozen backbone stays in eval()."""
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()
        for name in self._frozen_modules:
            self.get_submodule(name).eval()
        return self

    def set_phase(self, epoch: int) -> None:
        """Apply `epoch`'s phase: requires_grad per group and eval() for frozen modules (LR gating is the scheduler's)."""
        self.phase_epoch = int(epoch)
        self._frozen_modules = apply_phase(self, self.group_specs, epoch)
        backbone_specs = [s for s in self.group_specs if s.name != "head"]
        self.backbone_frozen = not any(s.active(epoch) for s in backbone_specs)
        self.train(self.training)

    def trainable_groups(self, epoch: int) -> list[str]:
        """Names of the layer groups that train in `epoch` (head first)."""
        return [s.name for s in self.group_specs if s.active(epoch)]

    @override
    def configure_callbacks(self) -> list[L.Callback]:
        """lp_ft's closed-form probe fits the head at fit start, on a plain Trainer too (tlkit.model.lpft)."""
        from tlkit.model.lpft import ClosedFormProbe

        return [ClosedFormProbe()] if self.strategy.probe_first else []

    @override
    def on_train_epoch_start(self) -> None:
        # Here, not in __init__: DDP has wrapped the model by now with every ever-trained parameter registered
        # (Lightning #20340: parameters frozen at wrap time are never synchronised after unfreezing).
        self.set_phase(self.current_epoch)

    # -- steps ---------------------------------------------------------------------------------------------------

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor, *, smoothing: float, weighted: bool = False
              ) -> torch.Tensor:
        weight = self.class_weights.to(logits.device) if weighted and self.class_weights is not None else None
        return F.cross_entropy(logits, targets, weight=weight, label_smoothing=smoothing)

    def _l1_penalty(self) -> torch.Tensor | float:
        if self.optim_config.l1 <= 0:
            return 0.0
        weights = [p.abs().sum() for p in self.parameters() if p.requires_grad and p.ndim > 1]
        return self.optim_config.l1 * torch.stack(weights).sum()

    @override
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, targets = batch
        if len(targets) == 0:  # every file of this batch failed to decode (data.on_bad_image: skip)
            return None
        if self.mixer is not None and self.mixer.active(self.current_epoch, self._max_epochs()):
            images, soft_targets = self.mixer(images, targets)
            logits = self(images)
            loss = soft_target_cross_entropy(logits, soft_targets)  # smoothing is inside the soft targets
            targets = soft_targets.argmax(dim=-1)  # accuracy under mixing counts the dominant label
        else:
            logits = self(images)
            loss = self._loss(logits, targets, smoothing=self.optim_config.label_smoothing, weighted=True)
        self.train_acc(logits, targets)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(targets),
                 sync_dist=True)  # DDP: the mean over all ranks (a no-op in one process)
        self.log("train_acc", self.train_acc, on_step=False, on_epoch=True, batch_size=len(targets))
        return loss + self._l1_penalty()

    def _max_epochs(self) -> int | None:
        trainer = self._trainer
        return trainer.max_epochs if trainer is not None and trainer.max_epochs not in (None, -1) else None

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], split: str) -> None:
        """Loss and metrics of a labelled batch, logged as <split>_loss, <split>_acc, <split>_balanced_acc, ..."""
        images, targets = batch
        if len(targets) == 0:  # every file of this batch failed to decode (data.on_bad_image: skip)
            return
        logits = self(images)
        # Plain cross-entropy (no smoothing) so runs with different smoothing compare fairly.
        loss = self._loss(logits, targets, smoothing=0.0)
        n = len(targets)
        self.log(f"{split}_loss", loss, on_step=False, on_epoch=True, prog_bar=split == "val", batch_size=n,
                 sync_dist=True)
        for name in ("acc", "balanced_acc", "macro_f1"):
            metric = getattr(self, f"{split}_{name}")
            metric(logits, targets)
            self.log(f"{split}_{name}", metric, on_step=False, on_epoch=True, prog_bar=name == "acc" and split == "val",
                     batch_size=n)

    @override
    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    @override
    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    @override
    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        """Class probabilities; with (images, paths) batches (a prediction datamodule) the paths come back too."""
        if isinstance(batch, (tuple, list)):
            images, rest = batch[0], batch[1]
            paths = list(rest) if isinstance(rest, (list, tuple)) and rest and isinstance(rest[0], str) else None
        else:
            images, paths = batch, None
        return {"probs": self(images).softmax(dim=-1), "paths": paths}

    # -- optimisation --------------------------------------------------------------------------------------------

    def optimizer_groups(self) -> list[dict]:
        """The optimizer's parameter groups as the strategy plans them (lr = optim.lr x the group's factor)."""
        o = self.optim_config
        return build_optimizer_groups(self, self.group_specs, lr=o.lr, weight_decay=o.weight_decay)

    def build_optimizer(self, groups: list[dict] | None = None) -> torch.optim.Optimizer:
        """The recipe's optimizer over `groups` (default optimizer_groups()); training, check and lr-find share it."""
        o = self.optim_config
        groups = self.optimizer_groups() if groups is None else groups
        if o.name == "sgd":
            return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.momentum > 0)
        return torch.optim.AdamW(groups, lr=o.lr)

    def lr_factors(self, epoch: int) -> list[float]:
        """Each optimizer group's LR as a fraction of optim.lr in `epoch` before any schedule (0 = still gated)."""
        return [g["lr"] / self.optim_config.lr if epoch >= g["unfreeze_epoch"] else 0.0
                for g in self.optimizer_groups()]

    @override
    def configure_optimizers(self) -> dict:
        groups = self.optimizer_groups()
        optimizer = self.build_optimizer(groups)
        total = int(self.trainer.estimated_stepping_batches)
        epochs = max(1, self.trainer.max_epochs or 1)
        per_epoch = max(1, math.ceil(total / epochs))
        s = self.schedule_config
        multiplier = self.strategy.multipliers(
            groups,
            steps_per_epoch=per_epoch,
            kind=s.kind,
            total_steps=total,
            warmup_steps=round(s.warmup_epochs * per_epoch),
            step_size=s.step_epochs * per_epoch,
            gamma=s.gamma,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- checkpoint contract -------------------------------------------------------------------------------------

    def describe(self) -> dict:
        """Everything evaluate/predict/export need besides the weights."""
        return {
            "format": CHECKPOINT_FORMAT,
            "classes": list(self.classes),
            "backbone": self.hparams.backbone["name"],
            "head": self.head_config.model_dump(mode="json"),
            "strategy": self.strategy.kind,
            "preprocessing": self.preprocessing.to_dict(),
            "tta": dict(self.tta_spec),
        }

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["tlkit"] = self.describe()
        # The state dict holds every weight: a reload (load_from_checkpoint, load_checkpoint) never asks the hub.
        hparams = checkpoint.get("hyper_parameters")
        if isinstance(hparams, dict) and isinstance(hparams.get("backbone"), dict):
            checkpoint["hyper_parameters"] = {**hparams, "backbone": {**hparams["backbone"], "weights": "none"}}
        if self.phase_epoch is not None:  # the phase a resume continues from
            checkpoint["tlkit"]["phase"] = {"epoch": self.phase_epoch,
                                            "trainable_groups": self.trainable_groups(self.phase_epoch)}

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        phase = (checkpoint.get("tlkit") or {}).get("phase")
        if phase is not None:
            # Restore eval() of frozen modules now; requires_grad is re-derived at the next epoch start (after any
            # DDP wrap), from the epoch Lightning restores, so the resumed run continues the same phase sequence.
            self.phase_epoch = int(phase["epoch"])
            self._frozen_modules = apply_phase(self, self.group_specs, self.phase_epoch)
            for spec in self.group_specs:
                if spec.unfreeze_epoch is not None:
                    for name in spec.params:
                        self.get_parameter(name).requires_grad_(True)

