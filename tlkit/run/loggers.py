"""The recipe's `logging` section mapped onto Lightning's own loggers (CSV always; TensorBoard, MLflow, W&B on request).

Lightning sends each logger the module's hyper-parameters and everything the module and LearningRateMonitor log
(per-epoch metrics, per-group LR); FinalFigures adds the run's final numbers and files when training ends.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import CSVLogger, Logger
from typing_extensions import override

from tlkit.errors import RecipeError
from tlkit.recipe import Recipe

log = logging.getLogger(__name__)

PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}  # logger -> module it needs


def default_mlflow_uri(runs_dir: str | Path) -> str:
    """sqlite:///<runs_dir>/mlflow.db, built with SQLAlchemy's URL API (a path with '?' or '#' stays a path)."""
    from sqlalchemy.engine import URL

    path = Path(runs_dir).resolve() / "mlflow.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return URL.create("sqlite", database=str(path)).render_as_string(hide_password=False)


def build_loggers(recipe: Recipe, run_dir: Path) -> list[Logger]:
    """metrics.csv in the run directory, then the trackers the recipe asks for."""
    config = recipe.logging
    missing = [name for name in config.loggers if importlib.util.find_spec(PACKAGES[name]) is None]
    if missing:
        raise RecipeError(f"logging.loggers: {', '.join(missing)} is not installed; pip install "
                          f"{' '.join(PACKAGES[m] for m in missing)} (or pip install 'tlkit[tracking]').")
    loggers: list[Logger] = [CSVLogger(save_dir=str(run_dir), name="", version="")]
    run_name = f"{recipe.name}/{run_dir.name}"
    if "tensorboard" in config.loggers:
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="",
                                         default_hp_metric=False))
    if "mlflow" in config.loggers:
        from lightning.pytorch.loggers import MLFlowLogger

        uri = config.mlflow.tracking_uri or default_mlflow_uri(recipe.output.runs_dir)
        # A local store would put artifacts in ./mlruns of whatever folder tlkit runs from; keep them under
        # runs_dir. A tracking server decides for itself.
        local = not uri.startswith(("http://", "https://", "databricks"))
        artifacts = (Path(recipe.output.runs_dir).resolve() / "mlflow-artifacts").as_uri() if local else None
        loggers.append(MLFlowLogger(experiment_name=config.mlflow.experiment or recipe.name, tracking_uri=uri,
                                    run_name=run_name, artifact_location=artifacts))
    if "wandb" in config.loggers:
        from lightning.pytorch.loggers import WandbLogger

        loggers.append(WandbLogger(project=config.wandb.project, name=run_name, save_dir=str(run_dir),
                                   offline=config.wandb.mode == "offline"))
    return loggers


class FinalFigures(L.Callback):
    """At the end of training, send every tracker the run's final figures (best val accuracy, last epoch's metrics)
    and, to MLflow, the run directory's recipe and provenance as artifacts. The CSV logger is left alone."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trackers = [lg for lg in trainer.loggers if not isinstance(lg, CSVLogger)]
        if not trackers:
            return
        final: dict[str, Any] = {f"final/{k}": float(v) for k, v in trainer.callback_metrics.items()}
        best = getattr(trainer.checkpoint_callback, "best_model_score", None)
        if best is not None:
            final[f"final/best_{trainer.checkpoint_callback.monitor}"] = float(best)
        for tracker in trackers:
            tracker.log_metrics(final, step=trainer.global_step)
            if type(tracker).__name__ == "MLFlowLogger":
                for name in ("recipe.yaml", "provenance.json", "classes.json"):
                    if (self.run_dir / name).is_file():
                        tracker.experiment.log_artifact(tracker.run_id, str(self.run_dir / name))
            elif type(tracker).__name__ == "TensorBoardLogger" and (self.run_dir / "recipe.yaml").is_file():
                text = (self.run_dir / "recipe.yaml").read_text()
                tracker.experiment.add_text("recipe", "```\n" + text + "\n```", trainer.global_step)
        log.info("final figures sent to %s", ", ".join(type(t).__name__ for t in trackers))
