"""Coarse-to-fine hyperparameter search with Optuna (coarse, then fine, as CS231n's tuning notes advise): study logic, no recipes.

Why Optuna: samplers (random for the coarse stage, TPE for the refine stage), per-epoch pruning of hopeless trials,
and RDB storage — SQLite here, so an interrupted search resumes where it stopped; the same study name on a
PostgreSQL/MySQL URL lets several machines share one search (each runs `tlkit search ... --storage URL`).

A stage is one study, `<name>-coarse` or `<name>-refine`. It runs until it holds `n_trials` finished (complete or
pruned) trials, counted in the storage, so re-running after an interruption only runs the missing ones. The refine
stage's ranges are stored in its study's user attributes when it is created: a resumed refine samples the same space.
"""

from __future__ import annotations

import csv
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lightning as L
import optuna
from typing_extensions import override

from tlkit.errors import StorageError
from tlkit.io import atomic_open, save_figure
from tlkit.model.strategies import STRATEGY_CLASSES, backbone_lr_searched
from tlkit.model.task_reports import SINGLE_LABEL, report_for_monitor

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


@dataclass
class SearchSpace:
    """Ranges one stage samples; lr and weight decay log-uniform. Empty optional ranges are not searched."""

    lr: tuple[float, float] = (1e-4, 1e-1)
    weight_decay: tuple[float, float] = (1e-6, 1e-2)
    backbone_lr_mult: tuple[float, float] | None = None
    strategies: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ("lr", "weight_decay", "backbone_lr_mult"):
            bounds = getattr(self, name)
            if bounds is not None and not (0 < bounds[0] <= bounds[1]):
                raise ValueError(f"search range {name}: expected 0 < low <= high; got {bounds}.")
        unknown = [k for k in self.strategies if k not in STRATEGY_CLASSES]
        if unknown:
            raise ValueError(f"search strategies: got {', '.join(unknown)}; expected strategy kinds "
                             f"({', '.join(STRATEGY_CLASSES)}).")

    def sample(self, trial: optuna.Trial) -> dict:
        """Parameters for one trial: {'lr', 'weight_decay'[, 'strategy', 'backbone_lr_mult']}."""
        params = {
            "lr": trial.suggest_float("lr", *self.lr, log=True),
            "weight_decay": trial.suggest_float("weight_decay", *self.weight_decay, log=True),
        }
        if len(self.strategies) > 1:
            params["strategy"] = trial.suggest_categorical("strategy", self.strategies)
        elif self.strategies:
            params["strategy"] = self.strategies[0]
        if self.backbone_lr_mult is not None and backbone_lr_searched(params.get("strategy")):
            params["backbone_lr_mult"] = trial.suggest_float("backbone_lr_mult", *self.backbone_lr_mult, log=True)
        return params

    def to_attrs(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_attrs(cls, attrs: dict) -> SearchSpace:
        mult = attrs.get("backbone_lr_mult")
        return cls(tuple(attrs["lr"]), tuple(attrs["weight_decay"]), tuple(mult) if mult else None,
                   list(attrs.get("strategies") or []))


def ranked(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """Completed trials, best first: val accuracy (the objective), ties broken by the lower val loss."""
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None]
    return sorted(done, key=lambda t: (-t.value, t.user_attrs.get("val_loss", math.inf), t.number))


def refine_space(coarse: SearchSpace, trials: list[optuna.trial.FrozenTrial], top_k: int = 3,
                 widen: float = 2.0) -> SearchSpace:
    """Ranges spanning the top-k coarse trials, widened by `widen` on a log scale and kept inside the coarse ranges;
    a searched strategy is fixed to the best trial's."""
    best = ranked(trials)[:top_k]
    if not best:
        raise ValueError("no completed coarse trial to refine around; run more coarse trials (--coarse-trials).")

    def around(name: str, bounds: tuple[float, float] | None) -> tuple[float, float] | None:
        values = [t.params[name] for t in best if name in t.params]
        if bounds is None or not values:
            return None
        return max(bounds[0], min(values) / widen), min(bounds[1], max(values) * widen)

    strategy = best[0].params.get("strategy")
    mult = around("backbone_lr_mult", coarse.backbone_lr_mult) if backbone_lr_searched(strategy) else None
    return SearchSpace(around("lr", coarse.lr), around("weight_decay", coarse.weight_decay), mult,
                       [strategy] if strategy else list(coarse.strategies[:1]))


# ---------------------------------------------------------------------------------------------------------------------
# Storage URLs: built and shown with SQLAlchemy's URL API, never by string formatting (a '?' or '#' in a folder name
# would start the URL's query or fragment and move the database), and shown or stored only with the password masked.


def default_storage(out_dir: str | Path) -> str:
    """sqlite:///<out_dir>/search.db (absolute), every character of the path escaped as the URL syntax needs."""
    from sqlalchemy.engine import URL

    database = str((Path(out_dir) / "search.db").resolve())
    return URL.create("sqlite", database=database).render_as_string(hide_password=False)


def check_storage(url: str) -> str:
    """`url` if SQLAlchemy can parse it; else a StorageError (before any folder or database is created)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(url)
    except (ArgumentError, ValueError):
        # The text itself is not repeated: it may hold a password.
        raise StorageError("--storage: not a database URL; expected e.g. sqlite:///path/search.db or "
                           "postgresql://user:password@host/dbname (percent-encode @ : / in the password).") from None
    return url


def shown_storage(url: str) -> str:
    """The storage URL as printed, logged and written to summary.json: the password replaced by ***."""
    from sqlalchemy.engine import make_url

    return make_url(check_storage(url)).render_as_string(hide_password=True)


def open_study(name: str, storage: str, *, sampler: optuna.samplers.BaseSampler) -> optuna.Study:
    """Create or resume a maximising study; heartbeats let a trial killed mid-run be marked failed and retried."""
    from sqlalchemy.exc import SQLAlchemyError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: unchanged since 2.8
        if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):  # optuna >= 4.9 renamed the retry hook
            retry = {"heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)}
        else:
            retry = {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=1)}
        try:
            rdb = optuna.storages.RDBStorage(storage, heartbeat_interval=60, grace_period=180, **retry)
        except (SQLAlchemyError, ImportError) as exc:  # bad dialect, missing driver, server or file unreachable
            cause = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise StorageError(f"Cannot open the search storage {shown_storage(storage)} ({type(exc).__name__}: "
                               f"{cause}); check the URL, its database driver and the server.") from None
    return optuna.create_study(
        study_name=name, storage=rdb, direction="maximize", sampler=sampler, load_if_exists=True,
        pruner=optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=1),
    )


def finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def run_stage(study: optuna.Study, objective, n_trials: int, *, progress: bool = True) -> int:
    """Run trials until the study holds `n_trials` finished ones (in total, over every process); returns how many
    this call ran."""
    missing = n_trials - finished(study)
    if missing <= 0:
        return 0
    study.optimize(
        objective, n_trials=missing, show_progress_bar=progress, gc_after_trial=True,
        callbacks=[optuna.study.MaxTrialsCallback(n_trials, states=FINISHED)],
    )
    return missing


class PruneOnMonitored(L.Callback):
    """Report the module's monitored metric (its task's: val_acc, or val_map for multi-label) to an Optuna trial
    after every validation; stop the run when the pruner says so.

    Stops via trainer.should_stop rather than raising inside Lightning; the objective raises TrialPruned after fit.
    """

    def __init__(self, trial: optuna.Trial):
        self.trial = trial
        self.pruned_at: int | None = None

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        monitor = pl_module.monitor
        if trainer.sanity_checking or monitor not in trainer.callback_metrics:
            return
        epoch = trainer.current_epoch
        self.trial.report(float(trainer.callback_metrics[monitor]), step=epoch)
        if self.trial.should_prune():
            self.pruned_at = epoch
            trainer.should_stop = True


# ---------------------------------------------------------------------------------------------------------------------
# Reports

TRIAL_COLUMNS = ("trial", "state", "lr", "weight_decay", "backbone_lr_mult", "strategy", "epochs")


def columns(monitor: str) -> tuple[str, ...]:
    """The trials table's columns: the monitored metric (val_acc, or val_map for multi-label) names its own."""
    return (*TRIAL_COLUMNS, monitor, f"best_{monitor}", "val_loss", "wall_s")


def monitor_of(rows: list[dict]) -> str:
    return next((r["monitor"] for r in rows if r.get("monitor")), SINGLE_LABEL.monitor)


def trial_rows(trials: list[optuna.trial.FrozenTrial]) -> list[dict]:
    """One row per finished trial; `monitor` names the metric the trial was scored on (and its columns)."""
    rows = []
    for t in sorted(trials, key=lambda t: t.number):
        if t.state not in FINISHED:
            continue
        a = t.user_attrs
        monitor = a.get("monitor") or SINGLE_LABEL.monitor
        rows.append({
            "trial": t.number, "state": t.state.name.lower(), "lr": t.params.get("lr"),
            "weight_decay": t.params.get("weight_decay"), "backbone_lr_mult": t.params.get("backbone_lr_mult"),
            "strategy": a.get("strategy"), "epochs": a.get("epochs"), "monitor": monitor,
            monitor: t.value if t.value is not None else a.get(monitor),
            f"best_{monitor}": a.get(f"best_{monitor}"), "val_loss": a.get("val_loss"), "wall_s": a.get("wall_s"),
        })
    return rows


def write_csv(rows: list[dict], out: str | Path) -> Path:
    with atomic_open(out, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns(monitor_of(rows)), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return Path(out)


def _fmt(value, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "pct":
        return f"{value:.2%}"
    if kind == "sci":
        return f"{value:.2e}"
    if kind == "f":
        return f"{value:.3f}"
    if kind == "s":
        return f"{value:.1f}"
    return str(value)


def markdown_table(rows: list[dict], *, title: str = "") -> str:
    """Trials best first (monitored metric, then val loss); pruned trials last."""
    monitor = monitor_of(rows)
    kinds = {"lr": "sci", "weight_decay": "sci", "backbone_lr_mult": "f", monitor: "pct", f"best_{monitor}": "pct",
             "val_loss": "f", "wall_s": "s"}
    shown = [c for c in columns(monitor) if any(r.get(c) is not None for r in rows)]
    order = sorted(rows, key=lambda r: (r["state"] != "complete", -(r.get(monitor) or 0), r["val_loss"] or math.inf))
    lines = [f"### {title}", ""] if title else []
    lines += ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    lines += ["| " + " | ".join(_fmt(r.get(c), kinds.get(c, "")) for c in shown) + " |" for r in order]
    return "\n".join(lines) + "\n"


def plot_plane(stages: dict[str, list[dict]], out: str | Path, title: str = "") -> Path:
    """The monitored val metric over the lr x weight-decay plane (log axes): one marker shape per stage, colour =
    the metric; pruned trials hollow."""
    from tlkit.plots import _pyplot

    plt = _pyplot()
    monitor = monitor_of([r for rows in stages.values() for r in rows])
    label = "val " + getattr(report_for_monitor(monitor), "metric_label", monitor)
    fig, ax = plt.subplots(figsize=(7, 5.2), constrained_layout=True)
    scores = [r[monitor] for rows in stages.values() for r in rows if r.get(monitor) is not None]
    vmin, vmax = (min(scores), max(scores)) if scores else (0.0, 1.0)
    markers = {"coarse": "o", "refine": "^"}
    scatter = None
    best = None
    for stage, rows in stages.items():
        done = [r for r in rows if r["state"] == "complete" and r.get(monitor) is not None]
        pruned = [r for r in rows if r["state"] == "pruned"]
        if done:
            scatter = ax.scatter([r["lr"] for r in done], [r["weight_decay"] for r in done],
                                 c=[r[monitor] for r in done], cmap="viridis", vmin=vmin, vmax=vmax, s=70,
                                 marker=markers.get(stage, "s"), edgecolors="black", linewidths=0.5, label=stage)
            top = max(done, key=lambda r: (r[monitor], -(r["val_loss"] or math.inf)))
            if best is None or (top[monitor], -(top["val_loss"] or 0)) > (best[monitor], -(best["val_loss"] or 0)):
                best = top
        if pruned:
            ax.scatter([r["lr"] for r in pruned], [r["weight_decay"] for r in pruned], facecolors="none",
                       edgecolors="grey", s=70, marker=markers.get(stage, "s"), label=f"{stage} (pruned)")
    if best is not None:
        ax.scatter([best["lr"]], [best["weight_decay"]], marker="*", s=320, facecolors="none", edgecolors="red",
                   linewidths=1.5, label=f"best {best[monitor]:.2%}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("weight decay")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="best")
    if scatter is not None:
        fig.colorbar(scatter, ax=ax, label=label)
    ax.set_title(title or f"search: {label} over lr x weight decay", fontsize=10)
    return save_figure(fig, out, dpi=110)
