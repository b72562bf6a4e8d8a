"""The recipe's `logging` section mapped onto Lightning's own loggers (CSV always; TensorBoard, MLflow, W&B on request).

Lightning sends each logger the module's hyper-parameters and everything the module and LearningRateMonitor log
(per-epoch metrics, per-group LR); FinalFigures adds the run's final numbers and files when training ends.

Training never depends on a tracker: a server that cannot be reached is skipped at the start with one warning, and
a tracker that fails mid-run is switched off with one warning (GuardedTracker); metrics.csv and the run folder keep
everything. Credentials never reach a tracker's URI (MLflow would print it in its "View run at" line): they are
handed to MLflow through its own environment variables instead.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import lightning as L
from lightning.pytorch.loggers import CSVLogger, Logger
from typing_extensions import override

from tlkit.errors import RecipeError
from tlkit.recipe import Recipe
from tlkit.redact import redact_credentials, split_credentials

log = logging.getLogger(__name__)

PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}  # logger -> module it needs
PROBE_TIMEOUT_S = 5.0  # a tracking server that does not accept a connection within this is treated as down
# MLflow's own defaults retry a dead server for minutes (7 retries, backoff 2, 120 s timeout); bounded here unless
# the user set them.
MLFLOW_HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


def default_mlflow_uri(runs_dir: str | Path) -> str:
    """sqlite:///<runs_dir>/mlflow.db, built with SQLAlchemy's URL API (a path with '?' or '#' stays a path)."""
    from sqlalchemy.engine import URL

    path = Path(runs_dir).resolve() / "mlflow.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return URL.create("sqlite", database=str(path)).render_as_string(hide_password=False)


def build_loggers(recipe: Recipe, run_dir: Path) -> list[Logger]:
    """metrics.csv in the run directory, then the trackers the recipe asks for (each a GuardedTracker; a tracking
    server that cannot be reached is left out with one warning)."""
    config = recipe.logging
    missing = [name for name in config.loggers if importlib.util.find_spec(PACKAGES[name]) is None]
    if missing:
        raise RecipeError(f"logging.loggers: {', '.join(missing)} is not installed; pip install "
                          f"{' '.join(PACKAGES[m] for m in missing)} (or pip install 'tlkit[tracking]').")
    trackers: list[Logger] = []
    run_name = f"{recipe.name}/{run_dir.name}"
    if "tensorboard" in config.loggers:
        from lightning.pytorch.loggers import TensorBoardLogger

        trackers.append(TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="",
                                          default_hp_metric=False))
    if "mlflow" in config.loggers:
        mlflow = _mlflow_logger(recipe, run_name)
        if mlflow is not None:
            trackers.append(mlflow)
    if "wandb" in config.loggers:
        from lightning.pytorch.loggers import WandbLogger

        trackers.append(WandbLogger(project=config.wandb.project, name=run_name, save_dir=str(run_dir),
                                    offline=config.wandb.mode == "offline"))
    return [CSVLogger(save_dir=str(run_dir), name="", version=""), *map(GuardedTracker, trackers)]


def _mlflow_logger(recipe: Recipe, run_name: str) -> Logger | None:
    """MLflow's Lightning logger on the recipe's store; None (with a warning) when its server cannot be reached."""
    from lightning.pytorch.loggers import MLFlowLogger

    config = recipe.logging.mlflow
    uri = mlflow_uri(config.tracking_uri) if config.tracking_uri else default_mlflow_uri(recipe.output.runs_dir)
    remote = uri.startswith(("http://", "https://"))
    if remote:
        for name, value in MLFLOW_HTTP_LIMITS.items():
            os.environ.setdefault(name, value)
        down = unreachable(uri)
        if down:
            log.warning("mlflow: cannot reach %s (%s); training continues without MLflow (metrics.csv and the run "
                        "folder keep everything)", redact_credentials(uri), down)
            return None
    # A local store would put artifacts in ./mlruns of whatever folder tlkit runs from; keep them under
    # runs_dir. A tracking server decides for itself.
    local = not remote and not uri.startswith("databricks")
    artifacts = (Path(recipe.output.runs_dir).resolve() / "mlflow-artifacts").as_uri() if local else None
    return MLFlowLogger(experiment_name=config.experiment or recipe.name, tracking_uri=uri, run_name=run_name,
                        artifact_location=artifacts)


def mlflow_uri(uri: str) -> str:
    """The tracking URI without credentials; a user and password written in it go to MLflow's own environment
    variables (MLFLOW_TRACKING_USERNAME / _PASSWORD, unless already set), so MLflow never prints or stores them."""
    clean, user, password = split_credentials(uri)
    if password is not None:
        os.environ.setdefault("MLFLOW_TRACKING_USERNAME", user or "")
        os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", password)
    elif user is not None and "MLFLOW_TRACKING_PASSWORD" not in os.environ:
        log.warning("mlflow: %s names a user but no password (tlkit never stores one); set MLFLOW_TRACKING_USERNAME "
                    "and MLFLOW_TRACKING_PASSWORD", redact_credentials(uri))
    return clean


def unreachable(uri: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why the server of an http(s) URI does not accept a connection (refused, unknown host, timeout), else None."""
    parts = urlsplit(uri)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        socket.create_connection((parts.hostname or "", port), timeout=timeout).close()
    except (OSError, ValueError) as exc:  # ValueError: a port that is not a number
        return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return None


class GuardedTracker(Logger):
    """A tracker whose failure never stops training: its first error switches it off with one warning.

    Every call Lightning and FinalFigures make goes through `attempt`; the wrapped logger is `tracker`.
    """

    def __init__(self, tracker: Logger):
        super().__init__()
        self.tracker = tracker
        self.failed = False

    @property
    def kind(self) -> str:
        return type(self.tracker).__name__

    def attempt(self, action: Callable[[Logger], Any], default: Any = None) -> Any:
        if self.failed:
            return default
        try:
            return action(self.tracker)
        except Exception as exc:  # noqa: BLE001 - network, server or the tracker's own files: none may end the run
            self.failed = True
            cause = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            log.warning("%s stopped working (%s: %s); training continues without it (metrics.csv and the run "
                        "folder keep everything)", self.kind, type(exc).__name__, redact_credentials(cause[:300]))
            return default

    @property
    @override
    def name(self) -> str | None:
        return self.attempt(lambda t: t.name)

    @property
    @override
    def version(self) -> int | str | None:
        return self.attempt(lambda t: t.version)

    @property
    @override
    def save_dir(self) -> str | None:
        return self.attempt(lambda t: t.save_dir)

    @property
    @override
    def log_dir(self) -> str | None:
        return self.attempt(lambda t: t.log_dir)

    @property
    def experiment(self) -> Any:
        return self.attempt(lambda t: t.experiment)

    @override
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.attempt(lambda t: t.log_metrics(metrics, step))

    @override
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        self.attempt(lambda t: t.log_hyperparams(params, *args, **kwargs))

    @override
    def log_graph(self, model: Any, input_array: Any = None) -> None:
        self.attempt(lambda t: t.log_graph(model, input_array))

    @override
    def save(self) -> None:
        self.attempt(lambda t: t.save())

    @override
    def finalize(self, status: str) -> None:
        self.attempt(lambda t: t.finalize(status))

    @override
    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        self.attempt(lambda t: t.after_save_checkpoint(checkpoint_callback))


class FinalFigures(L.Callback):
    """At the end of training, send every tracker the run's final figures (best val accuracy, last epoch's metrics)
    and, to MLflow, the run directory's recipe and provenance as artifacts. The CSV logger is left alone."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trackers = [lg for lg in trainer.loggers if isinstance(lg, GuardedTracker) and not lg.failed]
        if not trackers:
            return
        final: dict[str, Any] = {f"final/{k}": float(v) for k, v in trainer.callback_metrics.items()}
        best = getattr(trainer.checkpoint_callback, "best_model_score", None)
        if best is not None:
            final[f"final/best_{trainer.checkpoint_callback.monitor}"] = float(best)
        for tracker in trackers:
            tracker.log_metrics(final, step=trainer.global_step)
            if tracker.kind == "MLFlowLogger":  # the run folder's files are already free of credentials
                for name in ("recipe.yaml", "provenance.json", "classes.json"):
                    if (self.run_dir / name).is_file():
                        tracker.attempt(lambda t, n=name: t.experiment.log_artifact(t.run_id, str(self.run_dir / n)))
            elif tracker.kind == "TensorBoardLogger" and (self.run_dir / "recipe.yaml").is_file():
                text = redact_credentials((self.run_dir / "recipe.yaml").read_text(encoding="utf-8", errors="replace"))
                tracker.attempt(lambda t, text=text: t.experiment.add_text("recipe", f"```\n{text}\n```",
                                                                           trainer.global_step))
        working = [t.kind for t in trackers if not t.failed]
        if working:
            log.info("final figures sent to %s", ", ".join(working))
