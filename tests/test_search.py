"""tlkit search: coarse then refine with Optuna on a tiny model; reports, best recipe, plane PNG; resume."""

from __future__ import annotations

import csv
import math

import optuna
import pytest
import yaml

from tests.conftest import tiny_recipe_dict, write_colour_classes
from tlkit.tune.search import SearchSpace, markdown_table, refine_space


def _trial(number, value, lr, wd, val_loss=1.0):
    return optuna.trial.create_trial(
        params={"lr": lr, "weight_decay": wd}, value=value, user_attrs={"val_loss": val_loss},
        distributions={"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True),
                       "weight_decay": optuna.distributions.FloatDistribution(1e-6, 1e-2, log=True)},
    )


def test_refine_space_spans_the_top_k_widened_inside_the_coarse_ranges():
    trials = [_trial(0, 0.9, 1e-2, 1e-4), _trial(1, 0.8, 2e-2, 1e-5), _trial(2, 0.5, 1e-4, 1e-3),
              _trial(3, 0.9, 5e-2, 1e-6, val_loss=2.0)]
    fine = refine_space(SearchSpace(), trials, top_k=2, widen=2.0)
    # top 2: 0.9 with the lower val loss (1e-2, 1e-4), then the tie (5e-2, 1e-6)
    assert fine.lr == pytest.approx((5e-3, 1e-1))  # 5e-2 * 2 clipped to the coarse max
    assert fine.weight_decay == pytest.approx((1e-6, 2e-4))


def test_markdown_table_is_sorted_best_first():
    rows = [{"trial": 0, "state": "complete", "lr": 1e-3, "weight_decay": 1e-5, "val_acc": 0.5, "val_loss": 1.0},
            {"trial": 1, "state": "pruned", "lr": 1e-1, "weight_decay": 1e-5, "val_acc": 0.9, "val_loss": 0.2},
            {"trial": 2, "state": "complete", "lr": 1e-2, "weight_decay": 1e-4, "val_acc": 0.8, "val_loss": 0.5}]
    lines = markdown_table(rows).splitlines()
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["2", "0", "1"]


def test_a_multi_label_search_names_its_columns_and_plot_after_the_map(tmp_path):
    from tlkit.tune.search import plot_plane, write_csv

    rows = [{"trial": 0, "state": "complete", "lr": 1e-3, "weight_decay": 1e-5, "monitor": "val_map",
             "val_map": 0.61, "best_val_map": 0.64, "val_loss": 1.0},
            {"trial": 1, "state": "complete", "lr": 1e-2, "weight_decay": 1e-4, "monitor": "val_map",
             "val_map": 0.72, "best_val_map": 0.72, "val_loss": 0.8}]
    header = markdown_table(rows).splitlines()[0]
    assert "val_map" in header and "best_val_map" in header and "val_acc" not in header
    assert markdown_table(rows).splitlines()[2].split("|")[1].strip() == "1"  # the higher mAP first
    assert write_csv(rows, tmp_path / "t.csv").read_text().splitlines()[0].split(",")[7:9] == ["val_map",
                                                                                                "best_val_map"]
    assert plot_plane({"coarse": rows}, tmp_path / "plane.png").stat().st_size > 0


@pytest.mark.slow
def test_search_writes_reports_and_resumes_after_an_interruption(tmp_path, monkeypatch, capsys):
    """A search that crashed in its 3rd coarse trial, re-run with the same storage, runs only the missing trials."""
    import importlib

    from PIL import Image

    from tlkit.cli.main import main
    from tlkit.recipe import load_recipe

    root = write_colour_classes(tmp_path / "colours")
    source = tmp_path / "recipe.yaml"
    source.write_text(yaml.safe_dump(tiny_recipe_dict(root, backbone={"name": "test_resnet"})))
    out = tmp_path / "search"
    args = ["search", str(source), "--out", str(out), "--coarse-trials", "3", "--coarse-epochs", "1",
            "--refine-trials", "2", "--refine-epochs", "2", "--no-progress"]

    fit_module = importlib.import_module("tlkit.run.fit")  # tlkit.run re-exports fit(), shadowing the module
    real_fit, calls, crashes = fit_module.fit, [], [3]

    def interrupted_fit(recipe, run_dir=None, **kwargs):
        calls.append(recipe.trainer.epochs)
        if len(calls) in crashes:
            crashes.clear()
            raise RuntimeError("killed")
        return real_fit(recipe, run_dir=run_dir, **kwargs)

    monkeypatch.setattr(fit_module, "fit", interrupted_fit)
    with pytest.raises(RuntimeError, match="killed"):
        main(args)
    assert calls == [1, 1, 1]

    calls.clear()
    assert main(args) == 0
    assert calls == [1, 2, 2]  # the one missing coarse trial, then the refine stage; finished trials not redone
    printed = capsys.readouterr().out
    assert "### coarse" in printed and "### refine" in printed and "best:" in printed

    with (out / "coarse_trials.csv").open() as f:
        coarse = list(csv.DictReader(f))
    assert len(coarse) == 3 and all(row["state"] == "complete" for row in coarse)
    assert len({row["lr"] for row in coarse}) == 3  # resuming did not replay the first trials' parameters
    with (out / "refine_trials.csv").open() as f:
        refine = list(csv.DictReader(f))
    assert len(refine) == 2 and all(row["epochs"] == "2" for row in refine)
    assert "| trial |" in (out / "refine_trials.md").read_text()
    assert Image.open(out / "search.png").size[0] > 500

    best = load_recipe(out / "best_recipe.yaml")
    best_acc = max(float(r["val_acc"]) for r in coarse + refine)
    chosen = [r for r in coarse + refine if math.isclose(float(r["lr"]), best.optim.lr, rel_tol=1e-9)]
    assert chosen and float(chosen[0]["val_acc"]) == best_acc
    assert load_recipe(source).optim.lr == 0.05  # the user's recipe is untouched

    calls.clear()
    assert main(args) == 0  # a finished search re-run does no work
    assert calls == []


@pytest.mark.parametrize(("strategy", "params", "expected"), [
    ({"kind": "linear_probe"}, {"backbone_lr_mult": 0.2}, "strategy={kind: finetune, backbone_lr_mult: 0.2}"),
    ({"kind": "linear_probe"}, {"strategy": "finetune"}, "strategy={kind: finetune, backbone_lr_mult: 0.1}"),
    ({"kind": "finetune", "backbone_lr_mult": 0.3}, {"strategy": "finetune"},
     "strategy={kind: finetune, backbone_lr_mult: 0.3}"),
    ({"kind": "finetune"}, {"strategy": "linear_probe"}, "strategy={kind: linear_probe}"),
    ({"kind": "linear_probe", "solver": "lbfgs"}, {"strategy": "linear_probe"}, None),
    ({"kind": "linear_probe"}, {}, None),
])
def test_a_trial_overrides_the_strategy_only_where_it_searched_one(tmp_path, strategy, params, expected):
    from tlkit.recipe import validate_recipe
    from tlkit.run.tuning import _trial_overrides

    recipe = validate_recipe(tiny_recipe_dict(tmp_path, strategy=strategy), "test")
    overrides = _trial_overrides(recipe, {"lr": 0.01, "weight_decay": 1e-4, **params}, epochs=1)
    assert [o for o in overrides if o.startswith("strategy=")] == ([expected] if expected else [])


def test_a_search_space_refuses_an_unknown_strategy_kind():
    with pytest.raises(ValueError, match="search strategies: got fine_tune"):
        SearchSpace(strategies=["fine_tune"])
