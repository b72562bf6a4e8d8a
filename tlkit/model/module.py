"""TransferModule: a pretrained timm backbone + a new head, trained as a linear probe or a low-LR fine-tune."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from tlkit.model.backbones import Preprocessing, create_backbone
from tlkit.errors import did_you_mean
from tlkit.model.heads import HeadSpec, build_head
from tlkit.model.mixing import BatchMixer, MixingConfig, soft_target_cross_entropy
from tlkit.model.schedules import SCHEDULES
from tlkit.model.strategies import STRATEGIES, StrategyConfig, apply_phase, build_optimizer_groups, freeze
from tlkit.model.strategies import group_multipliers, plan_groups
from tlkit.infer.tta import TTAPolicy, normalize_spec, resolve_policy

from typing_extensions import override

CHECKPOINT_FORMAT = 1
OPTIMIZERS = ("sgd", "adamw")


class TransferModule(L.LightningModule):
    """Backbone (timm, `num_classes=0`) -> head, with the seeds' transfer rule built in.

    Args:
        backbone: timm architecture name.
        classes: class names in label order (e.g. `datamodule.classes`).
        weights: auto | hub | bundled | none | path (DESIGN.md contract 3).
        strategy: "linear_probe" (backbone frozen and in eval mode), "finetune" (backbone LR = lr x backbone_lr_mult),
            "lp_ft", "gradual" or "layer_decay" (see tlkit.model.strategies; their settings go in strategy_options).
        head: HeadSpec or its dict form; default a single linear layer.
        preprocessing: overrides of the model's pretrained preprocessing (input_size, crop_pct, interpolation, mean, std).
        channels_last: NHWC memory layout; on this 2-core CPU lite0 trains ~1.5x faster (10 -> 16 images/s at 224 px).
        mixing: Mixup/CutMix settings (MixingConfig or its dict); training accuracy then counts the dominant label.
        tta: test-time augmentation policy that evaluate/predict use by default: a name (none, hflip, ten_crop,
            multi_scale) or a spec dict (see tlkit.infer.tta); stored in checkpoints as plain data.
        strategy_options: StrategyConfig fields besides kind/backbone_lr_mult (probe_epochs, unfreeze_every, ...).
    """

    def __init__(
        self,
        backbone: str = "tf_efficientnet_lite0",
        classes: list[str] | None = None,
        *,
        weights: str = "auto",
        strategy: str = "linear_probe",
        head: HeadSpec | dict | None = None,
        optimizer: str = "sgd",
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        backbone_lr_mult: float = 0.1,
        l1: float = 0.0,
        label_smoothing: float = 0.0,
        schedule: str = "cosine",
        warmup_epochs: float = 0.0,
        step_epochs: int = 10,
        gamma: float = 0.1,
        drop_path_rate: float = 0.0,
        preprocessing: dict | None = None,
        channels_last: bool = True,
        mixing: MixingConfig | dict | None = None,
        tta: str | dict | None = None,
        strategy_options: dict | None = None,
        class_weights: list[float] | None = None,
    ):
        super().__init__()
        _check_choice("strategy", strategy, STRATEGIES)
        _check_choice("optimizer", optimizer, OPTIMIZERS)
        _check_choice("schedule", schedule, SCHEDULES)
        if not classes or len(classes) < 2:
            raise ValueError(f"TransferModule needs at least 2 class names; got {classes!r}.")
        head_spec = head if isinstance(head, HeadSpec) else HeadSpec.from_dict(head or {})
        mixing_config = mixing if isinstance(mixing, MixingConfig) else MixingConfig.model_validate(mixing or {})
        tta_spec = normalize_spec(tta)  # fails on a bad policy before any model is built
        # Plain types only: checkpoints must load with torch.load(weights_only=True).
        self.save_hyperparameters(
            {
                "backbone": backbone,
                "classes": list(classes),
                "weights": weights,
                "strategy": strategy,
                "head": head_spec.to_dict(),
                "optimizer": optimizer,
                "lr": lr,
                "momentum": momentum,
                "weight_decay": weight_decay,
                "backbone_lr_mult": backbone_lr_mult,
                "l1": l1,
                "label_smoothing": label_smoothing,
                "schedule": schedule,
                "warmup_epochs": warmup_epochs,
                "step_epochs": step_epochs,
                "gamma": gamma,
                "drop_path_rate": drop_path_rate,
                "preprocessing": dict(preprocessing or {}),
                "channels_last": channels_last,
                "mixing": mixing_config.model_dump(),
                "tta": tta_spec,
                "strategy_options": dict(strategy_options or {}),
                "class_weights": [float(w) for w in class_weights] if class_weights is not None else None,
            }
        )
        self.classes = list(classes)
        self.backbone, pretrained_pre, self.weights_source = create_backbone(
            backbone, weights, drop_path_rate=drop_path_rate
        )
        self.preprocessing: Preprocessing = pretrained_pre.replace(**(preprocessing or {}))
        self.head_spec = head_spec
        self.tta_spec = tta_spec
        # How the training data was split (layout, val_fraction, seed), set by run.fit: evaluate re-creates the same
        # val split of a one-folder layout from it. None when the module was trained outside fit().
        self.data_split: dict | None = None
        self.head = build_head(self.backbone.num_features, len(classes), head_spec)
        self.channels_last = channels_last
        if channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        self.strategy_config = StrategyConfig.from_dict(
            {**(strategy_options or {}), "kind": strategy, "backbone_lr_mult": backbone_lr_mult}
        )
        self.group_specs = plan_groups(self.backbone, self.head, self.strategy_config)
        for spec in self.group_specs:  # never-trained groups freeze now (before any DDP wrap: it must not see them)
            if spec.unfreeze_epoch is None:
                for name in spec.params:
                    self.get_parameter(name).requires_grad_(False)
        self.backbone_frozen = strategy == "linear_probe"
        if self.backbone_frozen:
            freeze(self.backbone)
        self.phase_epoch: int | None = None  # the epoch whose phase (trainable groups) is applied; None = not yet
        self._frozen_modules: list[str] = []
        self.mixer = BatchMixer(mixing_config, len(classes), label_smoothing) if mixing_config.enabled else None
        self.train_acc = MulticlassAccuracy(num_classes=len(classes), average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=len(classes), average="micro")
        # Imbalance-aware validation metrics: macro recall (= balanced accuracy) and macro F1.
        self.val_balanced_acc = MulticlassAccuracy(num_classes=len(classes), average="macro")
        self.val_macro_f1 = MulticlassF1Score(num_classes=len(classes), average="macro")
        if class_weights is not None and len(class_weights) != len(classes):
            raise ValueError(f"class_weights has {len(class_weights)} entries for {len(classes)} classes.")
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
        if self.hparams.l1 <= 0:
            return 0.0
        weights = [p.abs().sum() for p in self.parameters() if p.requires_grad and p.ndim > 1]
        return self.hparams.l1 * torch.stack(weights).sum()

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
            loss = self._loss(logits, targets, smoothing=self.hparams.label_smoothing, weighted=True)
        self.train_acc(logits, targets)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(targets),
                 sync_dist=True)  # DDP: the mean over all ranks (a no-op in one process)
        self.log("train_acc", self.train_acc, on_step=False, on_epoch=True, batch_size=len(targets))
        return loss + self._l1_penalty()

    def _max_epochs(self) -> int | None:
        trainer = self._trainer
        return trainer.max_epochs if trainer is not None and trainer.max_epochs not in (None, -1) else None

    @override
    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, targets = batch
        if len(targets) == 0:
            return
        logits = self(images)
        # Validation loss is plain cross-entropy (no smoothing) so runs with different smoothing compare fairly.
        loss = self._loss(logits, targets, smoothing=0.0)
        self.val_acc(logits, targets)
        self.log("val_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(targets),
                 sync_dist=True)
        self.log("val_acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(targets))
        self.val_balanced_acc(logits, targets)
        self.val_macro_f1(logits, targets)
        self.log("val_balanced_acc", self.val_balanced_acc, on_step=False, on_epoch=True, batch_size=len(targets))
        self.log("val_macro_f1", self.val_macro_f1, on_step=False, on_epoch=True, batch_size=len(targets))

    @override
    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(images).softmax(dim=-1)

    # -- optimisation --------------------------------------------------------------------------------------------

    @override
    def configure_optimizers(self) -> dict:
        hp = self.hparams
        groups = build_optimizer_groups(self, self.group_specs, lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.optimizer == "sgd":
            optimizer = torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum, nesterov=hp.momentum > 0)
        else:
            optimizer = torch.optim.AdamW(groups, lr=hp.lr)
        total = int(self.trainer.estimated_stepping_batches)
        epochs = max(1, self.trainer.max_epochs or 1)
        per_epoch = max(1, math.ceil(total / epochs))
        multiplier = group_multipliers(
            groups,
            self.strategy_config,
            steps_per_epoch=per_epoch,
            kind=hp.schedule,
            total_steps=total,
            warmup_steps=round(hp.warmup_epochs * per_epoch),
            step_size=hp.step_epochs * per_epoch,
            gamma=hp.gamma,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- checkpoint contract -------------------------------------------------------------------------------------

    def describe(self) -> dict:
        """Everything evaluate/predict/export need besides the weights (DESIGN.md contract 5)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "classes": list(self.classes),
            "backbone": self.hparams.backbone,
            "head": self.head_spec.to_dict(),
            "strategy": self.hparams.strategy,
            "preprocessing": self.preprocessing.to_dict(),
            "tta": dict(self.tta_spec),
            "data_split": dict(self.data_split) if self.data_split else None,
        }

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["tlkit"] = self.describe()
        if self.phase_epoch is not None:  # the phase a resume continues from (DESIGN.md contract 4)
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


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"Unknown {what} {value!r}; expected one of {', '.join(choices)}.{did_you_mean(value, choices)}")
