"""The recipe: a composition of the settings each layer owns, plus the cross-field checks and run-level sections.

Each section's model lives with the code that uses it (tlkit.model.settings, tlkit.model.strategies,
tlkit.data.settings); only trainer and output, which fit() alone reads, are defined here.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from tlkit.config import Section
from tlkit.data.settings import DEFAULT_SEED, CacheConfig, DataConfig, TrainAugment
from tlkit.model.settings import (
    BackboneConfig,
    HeadConfig,
    MixingConfig,
    OptimConfig,
    ScheduleConfig,
    TTAConfig,
)
from tlkit.model.strategies import LinearProbe, StrategyConfig

MAX_SEED = 2**32 - 1  # numpy.random.seed accepts 0..2**32-1


class TrainerConfig(Section):
    epochs: int = Field(default=10, gt=0)
    """Passes over the training set."""
    precision: Literal["32", "16-mixed", "bf16-mixed"] = "32"
    """32 is exact everywhere; bf16-mixed saves memory/time on recent GPUs and CPUs with AMX; 16-mixed = fp16 AMP
    with loss scaling for CUDA GPUs without bf16 (V100, T4; refused on CPU)."""

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) else value  # --set trainer.precision=32 parses as an int
    compile: bool = False
    """Compile the backbone with torch.compile (in place; checkpoints unchanged): the first steps pay the compilation
    (seconds to minutes), later steps may run faster on GPUs; measure with scripts/bench_compile.py first."""
    accelerator: str = "auto"
    """Passed to lightning.Trainer (auto, cpu, gpu, ...)."""
    devices: int | str = "auto"
    """Passed to lightning.Trainer: devices per node (e.g. 4 GPUs, or 2 CPU processes with accelerator cpu)."""
    num_nodes: int = Field(default=1, gt=0)
    """Machines in a multi-node run (launch one process per device with torchrun or SLURM srun; see README)."""
    strategy: Literal["auto", "ddp", "ddp_spawn", "ddp_notebook", "fsdp", "deepspeed"] = "auto"
    """Lightning's distribution strategy; auto = single device, or DDP when several devices are given."""
    sync_batchnorm: bool = False
    """Synchronise BatchNorm statistics across DDP processes (helps with small per-device batches); CUDA only."""
    progress_bar: bool = True
    """Show progress bars on a terminal; when output goes to a file or CI, one line per epoch instead (false:
    neither)."""


class OutputConfig(Section):
    runs_dir: str = "runs"
    """Runs go to <runs_dir>/<recipe name>/<timestamp>/ unless --run-dir is given; relative to the current dir."""


class MLflowConfig(Section):
    tracking_uri: str | None = None
    """MLflow tracking store (file:, sqlite:, http(s): ...); null = sqlite:///<runs_dir>/mlflow.db, shared by the
    runs under runs_dir so `mlflow ui --backend-store-uri <that>` compares them."""
    experiment: str | None = None
    """MLflow experiment; null = the recipe name."""


class WandbConfig(Section):
    project: str = "tlkit"
    """Weights & Biases project."""
    mode: Literal["offline", "online"] = "offline"
    """offline writes under <run_dir>/wandb and sends nothing (upload later with `wandb sync`); online needs a login."""


class LoggingConfig(Section):
    loggers: list[Literal["tensorboard", "mlflow", "wandb"]] = []
    """Experiment trackers (Lightning's own loggers) besides metrics.csv, which is always written (resume and
    diagnose read it). Each gets the hyper-parameters, per-epoch metrics, per-group LR and the final figures."""
    mlflow: MLflowConfig = MLflowConfig()
    wandb: WandbConfig = WandbConfig()

    @field_validator("loggers")
    @classmethod
    def _each_once(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"list each logger once; got {value}")
        return value


class Recipe(Section):
    version: Literal[1] = 1
    """Recipe format version."""
    name: str = "recipe"
    """Run name (defaults to the file name); runs are grouped under <runs_dir>/<name>/, so it is one folder name."""
    seed: int = Field(default=DEFAULT_SEED, ge=0, le=MAX_SEED)
    """Seeds Python, NumPy, torch and loader workers (0 to 2**32-1, NumPy's range): same seed on CPU, same metrics."""

    @field_validator("name")
    @classmethod
    def _plain_folder_name(cls, name: str) -> str:
        # The run directory is <runs_dir>/<name>/...: a separator, '..' or an absolute name would write elsewhere.
        if name in ("", ".", "..") or any(c in name for c in "/\\\0") or name != name.strip():
            raise ValueError(f"must be a plain folder name (no /, \\ or .. and no surrounding spaces); got {name!r}. "
                             "Choose where runs go with output.runs_dir or --run-dir")
        return name
    backbone: BackboneConfig = BackboneConfig()
    strategy: StrategyConfig = LinearProbe()
    head: HeadConfig = HeadConfig()
    data: DataConfig
    augment: TrainAugment = TrainAugment()
    mixing: MixingConfig = MixingConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    trainer: TrainerConfig = TrainerConfig()
    tta: TTAConfig = TTAConfig()
    cache: CacheConfig = CacheConfig()
    output: OutputConfig = OutputConfig()
    logging: LoggingConfig = LoggingConfig()

    @model_validator(mode="after")
    def _bundled_exists_for_backbone(self) -> Recipe:
        from tlkit.model.names import BUNDLED

        if self.backbone.weights == "bundled" and self.backbone.name not in BUNDLED:
            raise ValueError(f"backbone.weights: bundled weights exist only for {', '.join(BUNDLED)}; "
                             f"use auto, hub or a local file for {self.backbone.name}")
        return self

    @model_validator(mode="after")
    def _warmup_shorter_than_training(self) -> Recipe:
        if self.schedule.warmup_epochs >= self.trainer.epochs:
            raise ValueError(f"schedule.warmup_epochs ({self.schedule.warmup_epochs}) must be less than trainer.epochs "
                             f"({self.trainer.epochs}), or the LR never reaches optim.lr")
        return self

    @model_validator(mode="after")
    def _loss_weights_need_hard_labels(self) -> Recipe:
        if self.data.balance == "loss_weights" and self.mixing.enabled:
            raise ValueError("data.balance: loss_weights weights hard labels, but Mixup/CutMix trains on mixed soft "
                             "targets; use data.balance: sampler with mixing, or set the mixing alphas to 0")
        return self

    @model_validator(mode="after")
    def _strategy_needs_met(self) -> Recipe:
        if problem := self.strategy.unmet_needs(head_hidden=self.head.hidden, cache_features=self.cache.features,
                                                mixing=self.mixing.enabled, balance=self.data.balance,
                                                epochs=self.trainer.epochs):
            raise ValueError(problem)
        return self

    @property
    def deterministic_training_input(self) -> bool:
        """No random augmentation and no mixing: every epoch sees the same inputs (a feature cache can reuse them)."""
        return self.augment.is_deterministic and not self.mixing.enabled


# ---------------------------------------------------------------------------------------------------------------------
# Loading
