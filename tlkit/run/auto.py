"""strategy: auto -> linear_probe or lp_ft, decided in three recorded steps.

1. The data's size: training images per class and in all.
2. A quick held-out measurement on cached features: the closed-form probe (tlkit.model.probe) fitted on 80% of the
   training images and scored on the other 20%, once on the backbone's last features and once on its stages
   (multi-layer) features. Extraction is the cost (one backbone pass over the training images per feature choice,
   eval transform, no val); its rows land in the feature cache where a later deterministic-input run reads them.
3. The rule (decide_strategy, a pure function of those numbers; thresholds and their reasons in
   tlkit.model.strategies.Auto).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from tlkit.data.cache import extraction_device
from tlkit.data.datamodule import ImageFolderDataModule
from tlkit.data.features import Extraction, extract_train_eval_features
from tlkit.errors import BackboneError
from tlkit.model.probe import holdout_scores
from tlkit.model.strategies import Auto, LinearProbe, LpFt
from tlkit.model.tasks import task_from
from tlkit.recipe import Recipe, recipe_to_dict, validate_recipe
from tlkit.run.build import build_module_for
from tlkit.run.console import progress_bars

log = logging.getLogger(__name__)

HOLDOUT = 0.2  # share of the training images the measurement scores on (stratified by class)
FEATURE_CHOICES = ("last", "stages")  # listed cheapest head first: ties go to the first


@dataclass(frozen=True)
class Decision:
    """What the rule chose and why: `rule` names the branch that fired, `reason` says it with the numbers."""

    strategy: type[LinearProbe | LpFt]  # the kind chosen
    features: str  # the better feature choice on the held-out images (last | stages)
    rule: str  # small_data | no_measurement | probe_short_of_saturation | probe_saturated
    reason: str

    @property
    def kind(self) -> str:
        """The chosen kind's name, as logged and recorded."""
        return self.strategy.kind_name()


def decide_strategy(*, train_images: int, num_classes: int, scores: dict[str, float | None], settings: Auto,
                    metric: str = "accuracy") -> Decision:
    """The rule over measured numbers: small data -> linear_probe on the better features; enough data and the best
    held-out probe score below settings.saturation -> lp_ft; else linear_probe. `scores`: held-out score per
    feature choice (None = not measured)."""
    per_class = train_images / max(1, num_classes)
    measured = {f: s for f, s in scores.items() if s is not None}
    order = {f: i for i, f in enumerate(FEATURE_CHOICES)}
    features = max(measured, key=lambda f: (measured[f], -order.get(f, len(order)))) if measured else "last"
    best = measured.get(features)
    size = f"{train_images} training images, {per_class:.0f} per class"
    held = (f"held-out probe {metric} {best:.1%} with {features} features" if best is not None
            else "no held-out score (too few images per class to hold out 20%)")
    if per_class < settings.images_per_class or train_images < settings.min_images:
        return Decision(LinearProbe, features, "small_data",
                        f"{size}: small data (below {settings.images_per_class} per class or {settings.min_images} "
                        f"in all), so a linear probe on the frozen backbone; {held}")
    if best is None:
        return Decision(LinearProbe, features, "no_measurement",
                        f"{size}; {held}, so nothing shows room above the probe: a linear probe")
    if best < settings.saturation:
        return Decision(LpFt, features, "probe_short_of_saturation",
                        f"{size}: enough to fine-tune; {held} < {settings.saturation:.0%}: room above the probe, "
                        "so probe then fine-tune (lp_ft)")
    return Decision(LinearProbe, features, "probe_saturated",
                    f"{size}; {held} >= {settings.saturation:.0%}: the probe is near saturation, fine-tuning would "
                    "cost far more for little, so a linear probe")


def measure_probes(recipe: Recipe, datamodule: ImageFolderDataModule) -> dict[str, dict]:
    """Step 2: per feature choice, the closed-form probe's held-out score on cached training features, with its L2
    strength, feature width and timings; {"skipped": why} for a choice the backbone cannot give (no stages)."""
    out: dict[str, dict] = {}
    for features in FEATURE_CHOICES:
        # Each choice starts from the run's random state and leaves it as it found it: a randomly initialised
        # backbone (weights: none) then measures exactly the weights the resolved run builds.
        with torch.random.fork_rng(devices=[]):
            out[features] = _measure(recipe, datamodule, features)
    return out


def _measure(recipe: Recipe, datamodule: ImageFolderDataModule, features: str) -> dict:
    probe_recipe = recipe.model_copy(update={"strategy": LinearProbe(solver="lbfgs", features=features)})
    try:
        module = build_module_for(probe_recipe, datamodule)
    except BackboneError as exc:
        log.info("strategy auto, held-out probe on %s features: skipped (%s)", features, exc)
        return {"skipped": str(exc)}
    run = _extraction(recipe, datamodule, module)
    if recipe.data.source == "litdata":  # a stream's items, read from its chunks (no image file exists)
        from tlkit.data.stream_features import extract_stream_features

        stream = extract_stream_features(datamodule.root, datamodule.scan, module.cache_plan(0), module.preprocessing,
                                         augment=recipe.augment, cache=recipe.cache, seed=recipe.seed, run=run,
                                         splits=("train",))
        train, extracted = stream.train, stream.info
    else:
        train, extracted = extract_train_eval_features(datamodule.scan, module, module.preprocessing,
                                                       cache=recipe.cache, run=run)
    started = time.perf_counter()
    views, labels = train.usable()
    held = holdout_scores(views, labels, num_classes=datamodule.num_classes, seed=recipe.seed, holdout=HOLDOUT,
                          task=datamodule.multi_label)
    result = {"score": held["score"], "C": held["C"], "metric": held["metric"], "width": views.shape[-1],
              "fit_images": held["fit_images"], "held_out_images": held["held_out_images"],
              "extract_s": extracted["seconds"], "from_disk": extracted["from_disk"],
              "extracted": extracted["extracted"], "fit_s": round(time.perf_counter() - started, 2)}
    log.info("strategy auto, held-out probe on %s features (%d wide): %s %s on %d images (C=%s); extraction %.1f s "
             "(%d rows from disk), fit %.1f s", features, views.shape[-1], held["metric"],
             "n/a" if held["score"] is None else f"{held['score']:.2%}", held["held_out_images"], held["C"],
             extracted["seconds"], extracted["from_disk"], result["fit_s"])
    return result


def _extraction(recipe: Recipe, datamodule: ImageFolderDataModule, module) -> Extraction:
    return Extraction(device=extraction_device(recipe.trainer.accelerator), eval_batch_size=datamodule.eval_batch_size,
                      num_workers=datamodule.num_workers, channels_last=bool(getattr(module, "channels_last", False)),
                      on_bad=datamodule.on_bad_image, progress=progress_bars(recipe.trainer.progress_bar))


def resolve_auto_strategy(recipe: Recipe, datamodule: ImageFolderDataModule) -> tuple[Recipe, dict | None]:
    """The recipe with `strategy: auto` replaced by the decided strategy, and the decision (None when not auto):
    every number of the three steps, the rule that fired, the resolved strategy and the step's wall time."""
    if not isinstance(recipe.strategy, Auto):
        return recipe, None
    settings: Auto = recipe.strategy
    started = time.perf_counter()
    train_images, num_classes = len(datamodule.scan.train), datamodule.num_classes
    log.info("strategy auto, step 1 (data size): %d training images, %d classes, %.0f per class", train_images,
             num_classes, train_images / max(1, num_classes))
    measured = measure_probes(recipe, datamodule)
    metric = task_from(datamodule.multi_label).metric_label  # what the held-out probe scores: accuracy or mAP
    decision = decide_strategy(train_images=train_images, num_classes=num_classes, metric=metric, settings=settings,
                               scores={f: m.get("score") for f, m in measured.items()})
    strategy, notes = _strategy_for(decision, recipe, settings)
    resolved = validate_recipe({**recipe_to_dict(recipe), "strategy": strategy.model_dump(mode="json")},
                               f"strategy: auto -> {decision.kind}")
    record = {
        "kind": decision.kind, "rule": decision.rule, "reason": decision.reason,
        "train_images": train_images, "num_classes": num_classes,
        "images_per_class": round(train_images / max(1, num_classes), 1),
        "thresholds": {"images_per_class": settings.images_per_class, "min_images": settings.min_images,
                       "saturation": settings.saturation},
        "holdout": {"fraction": HOLDOUT, "metric": metric, **measured},
        "features": decision.features,
        "strategy": strategy.model_dump(mode="json"),
        **({"notes": notes} if notes else {}),
        "seconds": round(time.perf_counter() - started, 2),
    }
    log.info("strategy auto -> %s (rule %s, decided in %.1f s): %s", decision.kind, decision.rule, record["seconds"],
             decision.reason)
    for note in notes:
        log.info("strategy auto: %s", note)
    return resolved, record


def _strategy_for(decision: Decision, recipe: Recipe, settings: Auto) -> tuple[LinearProbe | LpFt, list[str]]:
    """The decided kind as a strategy section, set up as the measurement was where the recipe allows; notes say
    where it does not."""
    notes = []
    setup = {"head_hidden": recipe.head.hidden, "cache_features": recipe.cache.features,
             "mixing": recipe.mixing.enabled, "balance": recipe.data.balance}
    if decision.strategy is LpFt:
        chosen = LpFt(probe="closed_form", backbone_lr_mult=settings.backbone_lr_mult, batchnorm=settings.batchnorm)
        if blocker := chosen.unmet_needs(**setup):
            notes.append(f"{blocker}: so lp_ft probes by sgd epochs instead of in closed form")
            chosen = chosen.model_copy(update={"probe": "sgd"})
        if decision.features != "last":
            notes.append(f"{decision.features} features scored best, but lp_ft has no features setting: its probe "
                         "and fine-tune use the last features")
        return chosen, notes
    chosen = LinearProbe(solver="lbfgs", features=decision.features)
    if blocker := chosen.unmet_needs(**setup):
        notes.append(f"{blocker}: so the linear probe trains by sgd for trainer.epochs instead of the closed-form "
                     "(lbfgs) fit that was measured")
        chosen = chosen.model_copy(update={"solver": "sgd"})
    return chosen, notes


def decision_note(decision: dict) -> str:
    """The comment heading a resolved run's recipe.yaml: what auto chose, the rule, and the measured numbers."""
    held = decision.get("holdout", {})
    scores = ", ".join(
        f"{f} {m['score']:.1%} (C={m['C']:g})" if m.get("score") is not None else f"{f} n/a"
        for f, m in held.items() if isinstance(m, dict) and "skipped" not in m)
    lines = [f"strategy: auto -> {decision['kind']} ({decision['reason']})",
             f"rule {decision['rule']}; held-out probe {held.get('metric', 'accuracy')} on "
             f"{held.get('fraction', HOLDOUT):.0%} of train: {scores or 'not measured'}; decided in "
             f"{decision.get('seconds', 0):.1f} s"]
    return "".join(f"# {line}\n" for line in lines)
