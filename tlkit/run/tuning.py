"""Recipe -> the tuning tools: check (sanity), lr_find, search (coarse-to-fine), diagnose.

The logic lives in tlkit.tune.sanity / tlkit.tune.search / tlkit.tune.diagnose; this module builds a recipe's model and data
for them. A recipe is never edited: variants are derived with --set-style overrides and validated again, and any
recipe written out (lr-find --write, search's best recipe) is a new file.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path

import lightning as L
import torch
import yaml
from torch.utils.data import default_collate

from tlkit.errors import TlkitError
from tlkit.io import atomic_write, save_figure
from tlkit.model.strategies import (
    BACKBONE_LR_SEARCH,
    STRATEGY_CLASSES,
    backbone_lr_searched,
)
from tlkit.model.tasks import task_of
from tlkit.recipe import (
    Recipe,
    apply_overrides,
    read_recipe_file,
    recipe_to_dict,
    validate_recipe,
)
from tlkit.redact import redact_credentials
from tlkit.run.auto import resolve_auto_strategy
from tlkit.run.build import build_datamodule, build_module_for
from tlkit.run.console import progress_bars, quiet_intended_warnings
from tlkit.run.features import choose_training_inputs

log = logging.getLogger(__name__)


def derive(recipe: Recipe, overrides: list[str]) -> Recipe:
    """A validated copy of `recipe` with --set-style overrides (data.root is already absolute)."""
    return validate_recipe(apply_overrides(recipe_to_dict(recipe), overrides), f"{recipe.name} (derived)")


def write_recipe_copy(source: str | Path, overrides: list[str], out: str | Path, *, data_root: str) -> Path:
    """Write the user's recipe file with `overrides` merged, as a new file. A relative data.root is made absolute
    when the copy lands in another folder (it resolves against the recipe's folder)."""
    source, out = Path(source), Path(out)
    if out.resolve() == source.resolve():
        raise TlkitError(f"refusing to overwrite the source recipe {source}; give another output path.")
    raw = apply_overrides(read_recipe_file(source), overrides)
    if out.parent.resolve() != source.parent.resolve():
        raw.setdefault("data", {})["root"] = data_root
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, redact_credentials(yaml.safe_dump(raw, sort_keys=False)))  # never a password
    return out


def prepare(recipe: Recipe):
    """(resolved recipe, auto decision, image datamodule, module, training datamodule, cache info) as fit builds them."""
    L.seed_everything(recipe.seed, workers=True, verbose=False)
    datamodule = build_datamodule(recipe)
    recipe, decision = resolve_auto_strategy(recipe, datamodule)
    module = build_module_for(recipe, datamodule)
    train_dm, cache_info = choose_training_inputs(recipe, datamodule, module)
    return recipe, decision, datamodule, module, train_dm, cache_info


def first_epoch_optimizer(module) -> torch.optim.Optimizer:
    """The module's own optimizer with each group at the LR training gives it in epoch 0 (gated groups at 0)."""
    optimizer = module.build_optimizer()
    for group, factor in zip(optimizer.param_groups, module.lr_factors(0)):
        group["lr"] = module.optim_config.lr * factor
    return optimizer


# ---------------------------------------------------------------------------------------------------------------------
# check


def check(recipe: Recipe, *, batches: int = 2, per_class: int = 2, steps: int = 50,
          tolerance: float | None = None) -> dict:
    """Tuning steps 1-2: initial loss vs ln(C) with weight decay off, then overfit a tiny subset (no
    augmentation, no weight decay). Returns {'results': [CheckResult, ...], 'passed': bool, ...}."""
    from tlkit.tune import sanity
    tolerance = sanity.DEFAULT_LOSS_TOLERANCE if tolerance is None else tolerance
    quiet = derive(recipe, ["optim.weight_decay=0", "optim.l1=0", "augment=none", "mixing.mixup_alpha=0",
                            "mixing.cutmix_alpha=0"])
    quiet, decision, datamodule, module, train_dm, cache_info = prepare(quiet)
    num_classes, task = datamodule.num_classes, {"task": module.task}

    module.eval()
    loader = train_dm.train_dataloader()
    first = [b for _, b in zip(range(batches), loader)]
    observed = sanity.initial_loss(module, first, **task)
    loss_result = sanity.initial_loss_check(observed, num_classes, tolerance, **task)
    loss_result.values["images"] = sum(len(t) for _, t in first)

    train_set = train_dm.train_set
    labels = (train_set.labels.tolist() if hasattr(train_set, "labels") else [y for _, y in datamodule.scan.train])
    labels = [tuple(y) if isinstance(y, list) else y for y in labels]  # multi-label: label sets (hashable)
    chosen = sanity.pick_per_class(labels, per_class, seed=quiet.seed)
    items = [train_set[i] for i in chosen]
    inputs = default_collate([x for x, _ in items])  # images, features, or finetune_top's {"activations": ...}
    targets = torch.stack([torch.as_tensor(y) for _, y in items])  # class indices, or multi-hot rows
    module.train()
    torch.manual_seed(quiet.seed)
    history = sanity.overfit(module, first_epoch_optimizer(module), inputs, targets, steps, **task)
    fit_result = sanity.overfit_check(history, num_classes, **task)
    fit_result.values.update(images=len(chosen), lr=quiet.optim.lr)
    results = [loss_result, fit_result]
    return {"results": results, "passed": all(r.passed for r in results), "num_classes": num_classes,
            "strategy": quiet.strategy.kind, "strategy_auto": decision, "inputs": "cached features"
            if cache_info.get("used") else "images", "history": history}


# ---------------------------------------------------------------------------------------------------------------------
# lr-find


class _SweepHooks:
    """Per-step hooks for Lightning's LR finder, installed on the module instance: Tuner.lr_find swaps the trainer's
    callbacks for its own while it runs, but still calls the module's hooks.

    - Group ratios: the finder sets every parameter group to the same swept LR; before each step this restores each
      group's ratio to the head's (a fine-tune backbone at lr x backbone_lr_mult), so the sweep tests the LRs the
      recipe would actually set.
    - Raw losses: the finder debiases its running average with trainer.global_step, which is already one ahead
      after the step, so its first points are under-corrected (the first by ~2x: a false rise at the start of the
      curve); the raw losses are recorded here and re-smoothed with the right count (smooth_losses).
    """

    def __init__(self, module: L.LightningModule, ratios: list[float]):
        self.module, self.ratios, self.losses = module, ratios, []

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        trainer = self.module.trainer
        scheduler = trainer.lr_scheduler_configs[0].scheduler
        for group, lr, ratio in zip(trainer.optimizers[0].param_groups, scheduler.get_last_lr(), self.ratios):
            group["lr"] = lr * ratio

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        loss = outputs if isinstance(outputs, torch.Tensor) else (outputs or {}).get("loss")
        self.losses.append(float(loss) if loss is not None else math.nan)

    def __enter__(self) -> _SweepHooks:
        self.module.on_train_batch_start = self.on_train_batch_start
        self.module.on_train_batch_end = self.on_train_batch_end
        return self

    def __exit__(self, *exc) -> None:
        del self.module.on_train_batch_start, self.module.on_train_batch_end


def smooth_losses(losses: list[float], beta: float = 0.98) -> list[float]:
    """Exponential moving average with bias correction (as Lightning's finder intends, beta 0.98)."""
    avg, out = 0.0, []
    for i, loss in enumerate(losses):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta ** (i + 1)))
    return out


def steepest_descent(lrs: list[float], losses: list[float], *, skip_begin: int = 10, skip_end: int = 1) -> float | None:
    """The LR where the smoothed loss falls fastest per decade (d loss / d log lr), ignoring the first and last
    points and non-finite losses. Lightning's suggestion differentiates w.r.t. the LR itself, which on an exponential
    sweep favours the smallest LRs (the same fall spans far less LR there)."""
    points = [(math.log10(lr), loss) for lr, loss in zip(lrs, losses)][skip_begin:len(lrs) - skip_end]
    points = [(x, y) for x, y in points if math.isfinite(y)]
    if len(points) < 3:
        return None
    slopes = [(points[i + 1][1] - points[i - 1][1]) / (points[i + 1][0] - points[i - 1][0])
              for i in range(1, len(points) - 1)]
    i = min(range(len(slopes)), key=slopes.__getitem__)
    return 10 ** points[i + 1][0] if slopes[i] < 0 else None


def lr_find(recipe: Recipe, *, out: str | Path | None = None, min_lr: float = 1e-5, max_lr: float = 1.0,
            num_training: int = 100) -> dict:
    """Lightning's LR range test on what the recipe trains (cached features for a linear probe); PNG with the
    suggestion marked. Returns {'suggestion', 'png', 'lrs', 'losses', ...}."""
    from lightning.pytorch.tuner import Tuner

    from tlkit.plots import _pyplot

    if not 0 < min_lr < max_lr:
        raise TlkitError(f"lr-find: need 0 < --min-lr < --max-lr; got {min_lr:g}, {max_lr:g}.")
    recipe, decision, datamodule, module, train_dm, cache_info = prepare(recipe)
    ratios = module.lr_factors(0)  # each group's LR / the head's, as training sets them in its first epoch
    trainer = L.Trainer(accelerator=recipe.trainer.accelerator, devices=recipe.trainer.devices,
                        precision=recipe.trainer.precision, logger=False, enable_checkpointing=False,
                        enable_progress_bar=progress_bars(recipe.trainer.progress_bar), enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0,
                        default_root_dir=str(Path(out).parent) if out else None)
    started = time.perf_counter()
    # The finder bounds the steps itself and validates nothing: its max_epochs / limit_val_batches notes are moot.
    with quiet_intended_warnings(".*limit_val_batches=0.*", ".*`max_epochs` was not set.*"):
        with _SweepHooks(module, ratios) as raw:
            finder = Tuner(trainer).lr_find(module, datamodule=train_dm, min_lr=min_lr, max_lr=max_lr,
                                            num_training=num_training, update_attr=False)
    n = min(len(finder.results["lr"]), len(raw.losses))
    lrs, losses = list(finder.results["lr"][:n]), smooth_losses(raw.losses[:n])
    suggestion = steepest_descent(lrs, losses)
    out = Path(out) if out is not None else Path(recipe.output.runs_dir) / recipe.name / "lr_find.png"
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    ax.plot(lrs, losses, "-", label="training loss (smoothed)")
    ax.axvline(recipe.optim.lr, color="grey", ls=":", label=f"recipe lr {recipe.optim.lr:.2g}")
    if suggestion is not None:
        i = min(range(len(lrs)), key=lambda k: abs(math.log(lrs[k]) - math.log(suggestion)))
        ax.plot([lrs[i]], [losses[i]], "o", ms=10, color="red", label=f"suggestion {suggestion:.2g} (steepest fall)")
    ax.axvspan(1e-4, 1e-1, color="green", alpha=0.06, label="usual search range 1e-4..1e-1")
    ax.set_xscale("log")
    other = sorted({r for r in ratios if r not in (0.0, 1.0)}, reverse=True)
    ax.set_xlabel("head learning rate" + (f" (other trained groups x {', '.join(f'{r:.3g}' for r in other[:4])}"
                                          f"{', ...' if len(other) > 4 else ''})" if other else ""))
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title(f"{recipe.name}: LR range test, {len(lrs)} steps on "
                 f"{'cached features' if cache_info.get('used') else 'images'}", fontsize=10)
    save_figure(fig, out, dpi=110)
    return {"suggestion": suggestion, "png": str(out), "lrs": list(lrs), "losses": list(losses),
            "steps": len(lrs), "recipe_lr": recipe.optim.lr, "strategy": recipe.strategy.kind,
            "inputs": "cached features" if cache_info.get("used") else "images",
            "seconds": round(time.perf_counter() - started, 1), "data_root": recipe.data.root,
            "strategy_auto": decision}


# ---------------------------------------------------------------------------------------------------------------------
# search


def _trial_overrides(recipe: Recipe, params: dict, epochs: int) -> list[str]:
    overrides = [f"optim.lr={params['lr']!r}", f"optim.weight_decay={params['weight_decay']!r}",
                 f"trainer.epochs={epochs}"]
    if recipe.schedule.warmup_epochs >= epochs:
        overrides.append(f"schedule.warmup_epochs={epochs / 2!r}")
    kind = params.get("strategy")
    if (kind is not None or "backbone_lr_mult" in params) and backbone_lr_searched(kind):
        searched = BACKBONE_LR_SEARCH if kind is None else STRATEGY_CLASSES[kind]
        mult = params.get("backbone_lr_mult", getattr(recipe.strategy, "backbone_lr_mult",
                                                      searched.model_fields["backbone_lr_mult"].default))
        overrides.append(f"strategy={{kind: {searched.kind_name()}, backbone_lr_mult: {mult!r}}}")
    elif kind is not None and not isinstance(recipe.strategy, STRATEGY_CLASSES[kind]):
        overrides.append(f"strategy={{kind: {kind}}}")
    return overrides


def search(
    recipe: Recipe,
    *,
    source: str | Path | None = None,
    source_overrides: list[str] | None = None,
    out_dir: str | Path | None = None,
    storage: str | None = None,
    coarse_trials: int = 12,
    refine_trials: int = 6,
    coarse_epochs: int = 2,
    refine_epochs: int | None = None,
    top_k: int = 3,
    space=None,
    progress: bool = True,
    keep_checkpoints: bool = False,
) -> dict:
    """Coarse stage (random over the space, short runs) then refine stage (TPE in ranges around the top-k, longer
    runs); trials CSV + markdown per stage, best recipe YAML, lr x wd plane PNG. Resumes from `storage`."""
    import optuna

    from tlkit.tune import search as S

    space = space or S.SearchSpace()
    out_dir = Path(out_dir) if out_dir is not None else Path(recipe.output.runs_dir) / recipe.name / "search"
    storage = S.check_storage(storage) if storage else S.default_storage(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    stages = _SearchStages(recipe, out_dir, storage, progress=progress, keep_checkpoints=keep_checkpoints)
    coarse = stages.run("coarse", coarse_trials, coarse_epochs, space,
                        lambda done: optuna.samplers.RandomSampler(seed=recipe.seed + done))
    best_trials, best_stage = S.ranked(stages.done["coarse"]["trials"]), "coarse"
    if refine_trials > 0:
        fine = S.refine_space(space, coarse.get_trials(deepcopy=False), top_k=top_k)
        stages.run("refine", refine_trials, refine_epochs or recipe.trainer.epochs, fine,
                   lambda done: optuna.samplers.TPESampler(seed=recipe.seed + done,
                                                           n_startup_trials=min(3, refine_trials)))
        if S.ranked(stages.done["refine"]["trials"]):
            best_trials, best_stage = S.ranked(stages.done["refine"]["trials"]), "refine"
    if not best_trials:
        raise TlkitError("search: no trial completed; see the log above (every trial failed or was pruned).")
    best = best_trials[0]
    best_overrides = _trial_overrides(recipe, best.params, stages.done[best_stage]["epochs"])
    best_path = out_dir / "best_recipe.yaml"
    if source is not None:
        write_recipe_copy(source, [*(source_overrides or []), *best_overrides], best_path, data_root=recipe.data.root)
    else:
        atomic_write(best_path, redact_credentials(yaml.safe_dump(recipe_to_dict(derive(recipe, best_overrides)),
                                                                  sort_keys=False)))
    png = S.plot_plane({k: v["rows"] for k, v in stages.done.items()}, out_dir / "search.png",
                       title=f"{recipe.name}: {best.user_attrs.get('monitor', 'val_acc')} over lr x weight decay")
    summary = {
        "out_dir": str(out_dir), "storage": stages.shown, "best_recipe": str(best_path), "png": str(png),
        "best": {"stage": best_stage, "trial": best.number, "params": best.params, "value": best.value,
                 "monitor": best.user_attrs.get("monitor", "val_acc"),
                 "val_loss": best.user_attrs.get("val_loss")},
        "stages": {k: {kk: vv for kk, vv in v.items() if kk not in ("trials",)} for k, v in stages.done.items()},
    }
    atomic_write(out_dir / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    return summary


class _SearchStages:
    """Runs the stages of one search: each trial is a fit() of a derived recipe in its own folder; each stage's
    trials are written as CSV and markdown. `done[stage]` keeps what the summary needs."""

    def __init__(self, recipe: Recipe, out_dir: Path, storage, *, progress: bool, keep_checkpoints: bool):
        from tlkit.tune import search as S

        self.S, self.recipe, self.out_dir, self.storage = S, recipe, out_dir, storage
        self.shown = S.shown_storage(storage)  # what is printed and written: never the password
        self.progress, self.keep_checkpoints = progress, keep_checkpoints
        self.done: dict[str, dict] = {}

    def objective(self, stage: str, epochs: int, space):
        import optuna

        from tlkit.run.fit import fit

        def trial_value(trial: optuna.Trial) -> float:
            params = space.sample(trial)
            trial_recipe = derive(self.recipe, [*_trial_overrides(self.recipe, params, epochs),
                                                "trainer.progress_bar=false"])
            run_dir = self.out_dir / stage / f"trial_{trial.number:03d}"
            if run_dir.exists():  # a retried trial of a killed process starts clean
                shutil.rmtree(run_dir)
            pruning = self.S.PruneOnMonitored(trial)
            metrics = fit(trial_recipe, run_dir=run_dir, callbacks=[pruning])
            monitor = metrics["monitor"]  # the task's: val_acc, or val_map for a multi-label model
            if not self.keep_checkpoints:
                shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
            for key in (monitor, f"best_{monitor}", "val_loss", "wall_s", "epochs", "strategy", "monitor"):
                trial.set_user_attr(key, metrics.get(key))
            trial.set_user_attr("run_dir", str(run_dir))
            log.info("%s trial %d: lr %.2e wd %.2e -> %s %.2f%%, val loss %.3f (%.1f s)%s", stage, trial.number,
                     params["lr"], params["weight_decay"], monitor, 100 * metrics[monitor], metrics["val_loss"],
                     metrics["wall_s"], f", pruned after epoch {pruning.pruned_at + 1}" if pruning.pruned_at is not None
                     else "")
            if pruning.pruned_at is not None:
                raise optuna.TrialPruned()
            return float(metrics[monitor])

        return trial_value

    def run(self, stage: str, n: int, epochs: int, space, sampler_for):
        S = self.S
        study = S.open_study(f"{self.recipe.name}-{stage}", self.storage, sampler=sampler_for(0))
        # A fixed seed would replay trial 0's parameters on resume: offset it by the trials already done.
        study.sampler = sampler_for(S.finished(study))
        if "space" not in study.user_attrs:
            study.set_user_attr("space", space.to_attrs())
            study.set_user_attr("epochs", epochs)
        space = S.SearchSpace.from_attrs(study.user_attrs["space"])  # a resumed study keeps its own space
        epochs = int(study.user_attrs["epochs"])
        before = S.finished(study)
        started = time.perf_counter()
        log.info("%s stage: %d trial(s) of %d epoch(s); %d already done in %s", stage, n, epochs, before, self.shown)
        S.run_stage(study, self.objective(stage, epochs, space), n, progress=self.progress)
        wall = time.perf_counter() - started
        trials = study.get_trials(deepcopy=False)
        rows = S.trial_rows(trials)
        trial_seconds = sum(r["wall_s"] or 0 for r in rows)
        title = (f"{stage}: {len(rows)} trials x {epochs} epoch(s), lr {space.lr[0]:.2e}..{space.lr[1]:.2e}, "
                 f"wd {space.weight_decay[0]:.2e}..{space.weight_decay[1]:.2e}; "
                 f"sum of trial fit times {trial_seconds:.1f} s, this invocation {wall:.1f} s "
                 f"({S.finished(study) - before} new)")
        S.write_csv(rows, self.out_dir / f"{stage}_trials.csv")
        table = S.markdown_table(rows, title=title)
        atomic_write(self.out_dir / f"{stage}_trials.md", table)
        self.done[stage] = {"rows": rows, "table": table, "space": space.to_attrs(), "epochs": epochs,
                            "wall_s": round(wall, 1), "trial_seconds": round(trial_seconds, 1), "trials": trials,
                            "new": S.finished(study) - before}
        return study


# ---------------------------------------------------------------------------------------------------------------------
# diagnose


def diagnose(run_dir: str | Path, *, out: str | Path | None = None, **thresholds) -> dict:
    """Verdict + advice from a run's metrics.csv; curves PNG (default <run_dir>/curves.png) and diagnosis.json."""
    from tlkit.tune.diagnose import diagnose_curves, plot_curves, read_metrics_csv

    run_dir = Path(run_dir)
    curves = read_metrics_csv(run_dir / "metrics.csv")
    try:
        diagnosis = diagnose_curves(curves["train_loss"], curves["val_loss"], curves["train_acc"], curves["val_acc"],
                                    **thresholds)
    except ValueError as exc:  # no epoch with train and val accuracy: a closed-form probe, or a multi-label run
        task = task_of(json.loads((run_dir / "metrics.json").read_text())
                       if (run_dir / "metrics.json").is_file() else {})
        why = (f"a {task.name.replace('_', '-')} run has no accuracy curves (it logs {task.monitor} and the losses; "
               "tlkit report RUN_DIR plots them)" if "train_acc" not in task.train_reported
               else "did the run train for at least one epoch?")
        raise TlkitError(f"{run_dir}: {exc} ({why})") from None
    png = plot_curves(curves, diagnosis, Path(out) if out else run_dir / "curves.png", title=run_dir.name)
    result = {"verdict": diagnosis.verdict, "reason": diagnosis.reason, "advice": diagnosis.advice,
              "values": diagnosis.values, "png": str(png)}
    atomic_write(run_dir / "diagnosis.json", json.dumps(result, indent=2) + "\n")
    return result
