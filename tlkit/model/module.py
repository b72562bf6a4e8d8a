"""TransferModule: trains a Classifier (a pretrained timm backbone + a new head) as a linear probe or a low-LR
fine-tune.

The module holds the Classifier as `self.classifier` and only adds training (strategy phases, the feature-cache
inputs, mixing, loss, metrics, optimizer groups, the checkpoint contract). Its state dict is the Classifier's
(`backbone.*`, `head.*`, `thresholds`, `stage_pooling.*`: the `classifier.` prefix is dropped on save and added back on
load), so a checkpoint's `state_dict` loads into a Classifier as is, and checkpoints of every tlkit version with
format 2 load in both directions.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
import torchmetrics.utilities.imports
from typing_extensions import override

from tlkit.config import settings_from
from tlkit.data.preprocessing import Preprocessing
from tlkit.data.protocol import CachePlan
from tlkit.model.classifier import CHECKPOINT_FORMAT, Classifier, create_classifier
from tlkit.model.mixing import (
    BatchMixer,
)
from tlkit.model.prefix import PrefixSplit, split_backbone
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
from tlkit.model.tasks import multilabel_summary  # re-exported (see __all__)

__all__ = ["CHECKPOINT_FORMAT", "TransferModule", "multilabel_summary"]  # multilabel_summary: from tlkit.model.tasks
CLASSIFIER_KEYS = ("backbone", "stage_pooling", "head", "thresholds")  # the state-dict roots the Classifier owns
log = logging.getLogger(__name__)

# torchmetrics decides whether torch_xla is installed lazily, on the first metric update; under torch.compile that
# first update runs inside dynamo, which cannot trace the package lookup. Deciding it now lets `torch.compile(module)`
# fit.
bool(torchmetrics.utilities.imports._XLA_AVAILABLE)

MIXING_NEEDS_IMAGES = ("feature cache: Mixup/CutMix mix images, not features (nor a frozen prefix's activations), so "
                       "this run trains on images (uncached); set mixing alphas to 0 to use the cache.")


class TransferModule(L.LightningModule):
    """Backbone (timm, `num_classes=0`) -> head, with the transfer rule built in (little data: a linear probe on frozen features; more data: fine-tune with the backbone at ~1/10 of the head's LR).

    Every setting is one of tlkit's settings models (the recipe's sections), given as the model, its dict form, or a
    short string where one field says it all; defaults are the recipe's.

    Args:
        backbone: timm architecture name, or BackboneConfig / its dict (name, weights, input size, normalisation...).
        classes: class names in label order (e.g. `datamodule.classes`).
        strategy: a strategy object (LinearProbe, Finetune, LpFt, Gradual, LayerDecay, FinetuneTop), its dict, or a
            kind name.
        head: HeadConfig or its dict; default a single linear layer (a linear probe).
        optim: OptimConfig or its dict (optimizer, lr, weight decay, L1, label smoothing, EMA).
        schedule: ScheduleConfig, its dict, or a kind name (cosine, step, constant).
        mixing: MixingConfig or its dict (Mixup/CutMix); training accuracy then counts the dominant label.
        tta: default test-time augmentation of evaluate/predict: a policy name or a TTA spec dict (tlkit.infer.tta).
        weights: shorthand for backbone.weights (auto | hub | bundled | none | a file).
        class_weights: per-class loss weights (data.balance: loss_weights); multi-label: each class's positive weight
            (its negatives / positives ratio).
        channels_last: NHWC memory layout; on a 2-core CPU lite0 trains ~1.5x faster (10 -> 16 images/s at 224 px).
        multi_label: each image may carry any number of the classes (targets (N, C) multi-hot floats, e.g.
            `datamodule.multi_label`): binary cross-entropy per class, sigmoid probabilities, per-class decision
            thresholds (`thresholds`, 0.5 until `tune_thresholds`), metrics val_map / val_f1_micro / val_f1_macro.
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
        multi_label: bool = False,
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
        self.classifier: Classifier = create_classifier(
            backbone_config, classes, head=self.head_config, tta=tta, multi_label=multi_label,
            channels_last=channels_last, **self.strategy.embedding(),  # linear_probe's multi-layer features
        )
        # FixRes: training crops may be smaller than the eval input (the one eval preprocessing stays `preprocessing`).
        self.train_preprocessing = self.preprocessing.replace(input_size=backbone_config.train_input_size)
        # Plain types only: checkpoints must load with torch.load(weights_only=True). The resolved preprocessing is
        # stored, so a reload never depends on the pretrained config of another timm version.
        self._settings = {
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
            "multi_label": self.multi_label,
        }
        # A user's subclass with its own __init__ is rebuilt from its own arguments (load_from_checkpoint calls
        # cls(**hparams)), as Lightning's save_hyperparameters() records them; the settings then travel in the
        # checkpoint's tlkit section (on_save_checkpoint).
        subclass = type(self).__init__ is not TransferModule.__init__
        self.save_hyperparameters(_subclass_init_args(inspect.currentframe()) if subclass else self._settings)
        self.register_state_dict_post_hook(_classifier_layout)
        self.register_load_state_dict_pre_hook(_module_layout)
        # Layer-group names are the Classifier's (backbone.*, head.*): the strategy plans over the Classifier.
        self.group_specs = self.strategy.plan(self.backbone, self.head)
        for spec in self.group_specs:  # never-trained groups freeze now (before any DDP wrap: it must not see them)
            if spec.unfreeze_epoch is None:
                for name in spec.params:
                    self.classifier.get_parameter(name).requires_grad_(False)
        self.backbone_frozen = all(s.unfreeze_epoch is None for s in self.group_specs if s.name != "head")
        frozen_prefix = self.strategy.frozen_prefix(self.group_specs)
        # finetune_top: the frozen bottom of the backbone and its trained top, so cached activations can enter the top
        self.prefix_split: PrefixSplit | None = split_backbone(
            self.backbone, frozen_prefix, input_size=self.train_preprocessing.input_size) if frozen_prefix else None
        if self.backbone_frozen:
            freeze(self.backbone)
        self.phase_epoch: int | None = None  # the epoch whose phase (trainable groups) is applied; None = not yet
        self._frozen_modules: list[str] = []
        self.mixer = (BatchMixer(mixing_config, len(classes), self.optim_config.label_smoothing,
                                 multi_label=self.multi_label) if mixing_config.enabled else None)
        self.task = self.classifier.task  # loss, activation, metrics, monitored metric, decisions
        self.metrics = self.task.metrics(len(classes))
        # data.balance: loss_weights; rebuilt from the plain-float hparam, so checkpoints stay weights_only-safe.
        self.class_weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None

    # -- the Classifier's parts, where Lightning users and the strategy plan look for them ------------------------

    @property
    def backbone(self) -> torch.nn.Module:
        """The timm model itself (forward_features, group_matcher, pretrained_cfg with the real preprocessing)."""
        return self.classifier.backbone

    @property
    def head(self) -> torch.nn.Module:
        return self.classifier.head

    @property
    def embedder(self) -> torch.nn.Module:
        """Images -> the head's input (what the feature cache runs): the backbone, or backbone + stage pooling."""
        return self.classifier.embedder

    @property
    def classes(self) -> list[str]:
        return self.classifier.classes

    @property
    def preprocessing(self) -> Preprocessing:
        return self.classifier.preprocessing

    @property
    def tta_spec(self) -> dict:
        return self.classifier.tta_spec

    @property
    def multi_label(self) -> bool:
        return self.classifier.multi_label

    @property
    def thresholds(self) -> torch.Tensor:
        """A multi-label model's per-class decision thresholds (the Classifier's buffer)."""
        return self.classifier.thresholds

    @property
    def channels_last(self) -> bool:
        return self.classifier.channels_last

    @property
    def weights_source(self) -> str:
        return self.classifier.weights_source

    @property
    def monitor(self) -> str:
        """The validation metric that chooses the best checkpoint (higher is better): the task's (val_acc, val_map)."""
        return self.task.monitor

    # -- model ---------------------------------------------------------------------------------------------------

    @override
    def forward(self, x: torch.Tensor | Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Images (N, C, H, W) -> logits; already-pooled features (N, num_features), e.g. from the cache -> logits;
        {"activations": the frozen prefix's cached output} (finetune_top) -> the trained top and head -> logits."""
        if isinstance(x, Mapping):
            return self.head(self.top_features(x["activations"]))
        if x.ndim == 2:
            return self.head(x)
        return self.head(self.features(x))

    def top_features(self, activations: torch.Tensor) -> torch.Tensor:
        """Pooled features from the frozen prefix's output (stored float16; computed in the backbone's dtype)."""
        if self.prefix_split is None:
            raise ValueError("prefix activations need a module whose strategy freezes a prefix (kind finetune_top).")
        activations = activations.to(next(self.head.parameters()).dtype)
        if self.channels_last and activations.ndim == 4:
            activations = activations.contiguous(memory_format=torch.channels_last)
        return self.prefix_split.run_top(activations)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features; no autograd graph through a frozen backbone (it would never be used)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.backbone_frozen):
            return self.classifier.embed(x)

    @override
    def train(self, mode: bool = True) -> TransferModule:
        """Frozen means frozen: Lightning calls train() on the whole module; the frozen backbone stays in eval()."""
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()
        for name in self._frozen_modules:
            self.classifier.get_submodule(name).eval()
        return self

    def set_phase(self, epoch: int) -> None:
        """Apply `epoch`'s phase: requires_grad per group and eval() for frozen modules (LR gating is the scheduler's)."""
        self.phase_epoch = int(epoch)
        self._frozen_modules = apply_phase(self.classifier, self.group_specs, epoch)
        backbone_specs = [s for s in self.group_specs if s.name != "head"]
        self.backbone_frozen = not any(s.active(epoch) for s in backbone_specs)
        self.train(self.training)

    def trainable_groups(self, epoch: int) -> list[str]:
        """Names of the layer groups that train in `epoch` (head first)."""
        return [s.name for s in self.group_specs if s.active(epoch)]

    @override
    def configure_callbacks(self) -> list[L.Callback]:
        """The training phases, as callbacks a plain Trainer gets too (tlkit.model.phases): the strategy's phase at
        every epoch start, frozen BatchNorm statistics kept whatever else runs (SWA), cached features only in the
        epochs that may read them, lp_ft's closed-form probe at fit start, and multi-label decision thresholds
        tuned after fit. A hook override cannot switch them off."""
        from tlkit.model.lpft import ClosedFormProbe
        from tlkit.model.phases import (
            FeatureCachePhase,
            FrozenBatchNorm,
            StagedUnfreezing,
            TuneThresholds,
        )

        probe = [ClosedFormProbe()] if self.strategy.probe_first else []
        thresholds = [TuneThresholds()] if self.task.has_thresholds else []
        return [StagedUnfreezing(), FrozenBatchNorm(), FeatureCachePhase(), *probe, *thresholds]

    def cache_plan(self, epochs: int) -> CachePlan:
        """What the feature cache can serve a fit of `epochs` epochs (tlkit.data.protocol.ServedModel): the leading
        epochs the strategy trains on a frozen backbone (or frozen prefix), unless Mixup/CutMix needs images."""
        served, reason = self.strategy.cached_epochs(epochs), None
        if served == 0:
            reason = f"strategy {self.strategy.kind} trains the backbone"
        elif self.mixer is not None:
            log.warning(MIXING_NEEDS_IMAGES)
            served, reason = 0, "image-space mixing requested"
        split = self.prefix_split
        return CachePlan(served, reason, network=split.prefix() if split is not None else self.embedder,
                         name=self.classifier.config.backbone, prefix=split, probe_first=self.strategy.probe_first,
                         channels_last=self.channels_last)

    # -- steps ---------------------------------------------------------------------------------------------------

    def _class_weights(self, device: torch.device) -> torch.Tensor | None:
        return self.class_weights.to(device) if self.class_weights is not None else None

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
            loss, targets = self.task.mixed_loss(logits, soft_targets, weight=self._class_weights(logits.device))
        else:
            logits = self(images)
            loss = self.task.loss(logits, targets, smoothing=self.optim_config.label_smoothing,
                                  weight=self._class_weights(logits.device))
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(logits),
                 sync_dist=True)  # DDP: the mean over all ranks (a no-op in one process)
        self.task.log_train(self, logits, targets)
        return loss + self._l1_penalty()

    def _max_epochs(self) -> int | None:
        trainer = self._trainer
        return trainer.max_epochs if trainer is not None and trainer.max_epochs not in (None, -1) else None

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], split: str) -> None:
        """Loss and metrics of a labelled batch, logged as <split>_loss and the task's <split>_* metrics."""
        images, targets = batch
        if len(targets) == 0:  # every file of this batch failed to decode (data.on_bad_image: skip)
            return
        logits = self(images)
        # The plain loss (no smoothing, no class weights) so runs with different settings compare fairly.
        loss = self.task.loss(logits, targets)
        self.log(f"{split}_loss", loss, on_step=False, on_epoch=True, prog_bar=split == "val", batch_size=len(targets),
                 sync_dist=True)
        self.task.log_eval(self, split, logits, targets)

    @override
    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    @override
    def on_validation_epoch_end(self) -> None:
        self.task.log_epoch_end(self, "val")

    @override
    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    @override
    def on_test_epoch_end(self) -> None:
        self.task.log_epoch_end(self, "test")

    @override
    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        """Class probabilities (softmax; multi-label: independent sigmoids, compare with `thresholds`); with
        (images, paths) batches (a prediction datamodule) the paths come back too."""
        if isinstance(batch, (tuple, list)):
            images, rest = batch[0], batch[1]
            paths = list(rest) if isinstance(rest, (list, tuple)) and rest and isinstance(rest[0], str) else None
        else:
            images, paths = batch, None
        return {"probs": self.probabilities(self(images)), "paths": paths}

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits -> what the model outputs as probabilities: sigmoid per class (multi-label) or softmax."""
        return self.classifier.probabilities(logits)

    # -- multi-label thresholds ------------------------------------------------------------------------------------

    def tune_thresholds(self, data: L.LightningDataModule | Iterable) -> list[float]:
        """Set each class's decision threshold to the one maximising its F1 on `data`'s validation split (a
        datamodule: its val_dataloader) or on an iterable of (inputs, multi-hot targets) batches; a class without
        positives there keeps 0.5. Stored in `thresholds` (saved with the checkpoint); returns them."""
        from tlkit.model.thresholds import tune_thresholds

        if not self.task.has_thresholds:
            raise ValueError("tune_thresholds is for multi-label models (TransferModule(multi_label=True)); a "
                             "single-label model predicts the most probable class.")
        probs, targets = self.collect_probabilities(_val_batches(self, data))
        tuned = torch.from_numpy(tune_thresholds(probs.numpy(), targets.numpy()))
        self.thresholds.copy_(tuned.to(self.thresholds.device))
        return [float(t) for t in tuned]

    def collect_probabilities(self, batches: Iterable) -> tuple[torch.Tensor, torch.Tensor]:
        """(probabilities (N, C), targets) over `batches` of (inputs, targets), in eval mode without gradients."""
        was_training = self.training
        self.eval()
        probs, targets = [], []
        with torch.inference_mode():
            for inputs, batch_targets in batches:
                if len(batch_targets) == 0:
                    continue
                probs.append(self.probabilities(self(inputs.to(self.device))).float().cpu())
                targets.append(batch_targets.cpu())
        self.train(was_training)
        if not probs:
            raise ValueError("no labelled validation batches to tune thresholds on.")
        return torch.cat(probs), torch.cat(targets)

    # -- optimisation --------------------------------------------------------------------------------------------

    @property
    def lr(self) -> float:
        """optim.lr: the head's LR, which every group's LR is a fixed factor of. Lightning's Tuner.lr_find reads and
        sets it (`Tuner(trainer).lr_find(module, datamodule=dm)`); the groups keep their ratios."""
        return self.optim_config.lr

    @lr.setter
    def lr(self, value: float) -> None:
        self.optim_config = self.optim_config.model_copy(update={"lr": float(value)})
        if isinstance(self.hparams.get("optim"), dict):  # checkpoints state the LR the model trained with
            self.hparams["optim"] = {**self.hparams["optim"], "lr": float(value)}

    def optimizer_groups(self) -> list[dict]:
        """The optimizer's parameter groups as the strategy plans them (lr = optim.lr x the group's factor), each
        with its `unfreeze_epoch`: the documented hook for a user's own optimizer, e.g.
        `torch.optim.SGD(self.optimizer_groups(), lr=self.lr, momentum=0.9)` in configure_optimizers. Before its
        unfreeze epoch a group is frozen (requires_grad False), so any optimizer leaves it alone."""
        o = self.optim_config
        return build_optimizer_groups(self.classifier, self.group_specs, lr=o.lr, weight_decay=o.weight_decay)

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

    @override
    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        super().lr_scheduler_step(scheduler, metric)
        # Tuner.lr_find sweeps every group at one LR; scaled back to the plan's factors, the sweep finds the LR of
        # the model as it will train (its scheduler is the only one of that module).
        if type(scheduler).__module__ == "lightning.pytorch.tuner.lr_finder":
            factors = [g["lr"] / self.optim_config.lr for g in self.optimizer_groups()]
            for group, factor in zip(scheduler.optimizer.param_groups, factors):
                group["lr"] *= factor

    @override
    def to_torchscript(self, file_path: Any = None, method: str | None = "script", example_inputs: Any = None,
                       **kwargs: Any) -> Any:
        """TorchScript by tracing: `module.to_torchscript(method="trace")` (example inputs default to one image at
        the model's input size). Scripting is refused: forward takes images, pooled features or cached activations."""
        from tlkit.errors import ExportError

        if method != "trace":
            raise ExportError(f'to_torchscript(method={method!r}) cannot script TransferModule (its forward also '
                              'takes cached features); use method="trace", or tlkit export for ONNX.')
        if example_inputs is None:
            size = self.preprocessing.input_size
            example_inputs = torch.zeros(1, 3, size, size, device=self.device)
        return super().to_torchscript(file_path, method="trace", example_inputs=example_inputs, **kwargs)

    # -- checkpoint contract -------------------------------------------------------------------------------------

    def describe(self) -> dict:
        """Everything evaluate/predict/export need besides the weights."""
        return {**self.classifier.describe(), "strategy": self.strategy.kind}

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["tlkit"] = self.describe()
        # The state dict holds every weight: a reload (load_from_checkpoint, load_checkpoint) never asks the hub.
        hparams = checkpoint.get("hyper_parameters")
        if isinstance(hparams, dict) and isinstance(hparams.get("backbone"), dict):
            checkpoint["hyper_parameters"] = {**hparams, "backbone": {**hparams["backbone"], "weights": "none"}}
        if type(self).__init__ is not TransferModule.__init__:  # hparams are the subclass's own arguments
            backbone = {**self._settings["backbone"], "weights": "none"}
            checkpoint["tlkit"]["settings"] = {**self._settings, "backbone": backbone,
                                               "optim": self.optim_config.model_dump(mode="json")}
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
            self._frozen_modules = apply_phase(self.classifier, self.group_specs, self.phase_epoch)
            for spec in self.group_specs:
                if spec.unfreeze_epoch is not None:
                    for name in spec.params:
                        self.classifier.get_parameter(name).requires_grad_(True)


def _classifier_layout(module: torch.nn.Module, state_dict: dict, prefix: str, local_metadata: Any) -> None:
    """state_dict(): the Classifier's keys without the `classifier.` prefix (the checkpoint layout)."""
    inner = f"{prefix}classifier."
    for key in [k for k in state_dict if k.startswith(inner)]:
        state_dict[prefix + key[len(inner):]] = state_dict.pop(key)


def _module_layout(module: torch.nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    """load_state_dict(): the checkpoint layout's Classifier keys back under `classifier.`."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        if key[len(prefix):].split(".", 1)[0] in CLASSIFIER_KEYS:
            state_dict[f"{prefix}classifier.{key[len(prefix):]}"] = state_dict.pop(key)



def _subclass_init_args(frame: Any) -> dict[str, Any]:
    """The arguments of the most specific __init__ above `frame` (TransferModule.__init__'s), **kwargs spread, as
    Lightning's own save_hyperparameters() collects them."""
    from lightning.pytorch.core.mixins import HyperparametersMixin
    from lightning.pytorch.utilities.parsing import collect_init_args

    levels = collect_init_args(frame, [], classes=(HyperparametersMixin,))
    return dict(levels[-1]) if levels else {}


def _val_batches(module: TransferModule, data: L.LightningDataModule | Iterable) -> Iterable:
    """The validation batches of a datamodule (set up for `module`: cached features while its backbone is frozen),
    or `data` itself when it is already an iterable of batches."""
    if not isinstance(data, L.LightningDataModule):
        return data
    if hasattr(data, "setup_for"):  # tlkit's datamodules: reuse features extracted from this backbone
        data.setup_for(module, stage="validate")
    else:
        data.setup("validate")
    return data.val_dataloader()
