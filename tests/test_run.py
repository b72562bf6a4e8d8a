"""fit(recipe): the run directory contract, metrics, determinism, and that training actually learns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_recipe_dict, write_colour_classes

from tlkit.data.generate import write_digits
from tlkit.infer.checkpoint import load_checkpoint, read_checkpoint
from tlkit.recipe import validate_recipe
from tlkit.run import default_run_dir, fit


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One finished tiny run shared by the contract tests below."""
    tmp = tmp_path_factory.mktemp("run")
    root = write_colour_classes(tmp / "colours")
    # test_resnet: its random pooled features vary with colour (test_efficientnet's are ~1e-3 at init).
    recipe = validate_recipe(
        tiny_recipe_dict(
            root, backbone={"name": "test_resnet"}, optim={"name": "adamw", "lr": 0.3}, trainer={"epochs": 3}
        )
    )
    metrics = fit(recipe, run_dir=tmp / "out")
    return recipe, metrics, tmp / "out"


def test_run_dir_holds_recipe_classes_metrics_and_checkpoints(tiny_run):
    _, _, run_dir = tiny_run
    for name in ("recipe.yaml", "classes.json", "metrics.csv", "metrics.json", "checkpoints/best.ckpt",
                 "checkpoints/last.ckpt"):
        assert (run_dir / name).is_file(), name
    assert json.loads((run_dir / "classes.json").read_text()) == ["blue", "green", "red"]


def test_metrics_json_has_the_promised_fields(tiny_run):
    _, metrics, run_dir = tiny_run
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk == metrics
    assert 0.0 <= metrics["val_acc"] <= 1.0
    assert metrics["val_loss"] > 0
    assert metrics["epochs"] == 3
    assert metrics["wall_s"] > 0


def test_linear_probe_learns_colour_classes(tiny_run):
    # Random tiny-backbone features still separate base colours; a head that trains gets them nearly all right.
    _, metrics, _ = tiny_run
    assert metrics["val_acc"] >= 0.9


def test_checkpoint_is_self_describing_and_loads_with_weights_only(tiny_run):
    recipe, _, run_dir = tiny_run
    raw = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    meta = raw["tlkit"]
    assert meta["classes"] == ["blue", "green", "red"]
    assert meta["backbone"] == "test_resnet"
    assert meta["preprocessing"]["input_size"] == 32
    assert set(meta["preprocessing"]) == {"input_size", "crop_pct", "interpolation", "mean", "std"}
    assert meta["head"]["hidden"] == []
    assert meta["tta"] == {"policy": "none", "aggregate": "mean_prob"}


def test_checkpoint_round_trip_gives_identical_predictions(tiny_run):
    _, _, run_dir = tiny_run
    path = run_dir / "checkpoints" / "last.ckpt"
    first, second = load_checkpoint(path), load_checkpoint(path)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(first(x), second(x))
    state = read_checkpoint(path)["state_dict"]
    assert all(torch.equal(first.state_dict()[k], v) for k, v in state.items())


def test_same_seed_gives_identical_metrics_csv(tmp_path):
    root = write_colour_classes(tmp_path / "colours", per_class=6)
    recipe = validate_recipe(tiny_recipe_dict(root, strategy={"kind": "finetune"}))
    fit(recipe, run_dir=tmp_path / "a")
    fit(recipe, run_dir=tmp_path / "b")
    assert (tmp_path / "a" / "metrics.csv").read_text() == (tmp_path / "b" / "metrics.csv").read_text()


def test_single_folder_layout_is_split_by_val_fraction(tmp_path):
    root = write_colour_classes(tmp_path / "flat", per_class=10, split=False)
    recipe = validate_recipe(tiny_recipe_dict(root, data={"val_fraction": 0.3}, trainer={"epochs": 1}))
    metrics = fit(recipe, run_dir=tmp_path / "out")
    assert (metrics["num_train"], metrics["num_val"]) == (21, 9)


def test_builtin_digits_are_written_when_missing(tmp_path):
    root = write_digits(tmp_path / "digits")
    classes = sorted(p.name for p in root.iterdir())
    assert classes == [str(d) for d in range(10)]
    assert sum(1 for _ in root.rglob("*.png")) == 1797
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no leftover temp folder


def test_default_run_dir_is_runs_name_timestamp_and_never_reused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = validate_recipe({"name": "demo", "data": {"root": "x"}})
    first = default_run_dir(recipe)
    assert first.parts[:2] == ("runs", "demo")
    first.mkdir(parents=True)
    assert default_run_dir(recipe) != first


def test_recipe_files_all_load():
    recipes = sorted(Path(__file__).resolve().parents[1].glob("recipes/*.yaml"))
    assert recipes, "no recipes found"
    from tlkit.recipe import load_recipe

    for path in recipes:
        recipe = load_recipe(path)
        assert recipe.name == path.stem
        assert Path(recipe.data.root).exists() or recipe.data.generate is not None, path


def test_last_checkpoint_holds_the_final_epoch_even_when_best_came_earlier(tiny_run):
    _, metrics, run_dir = tiny_run
    best = read_checkpoint(run_dir / "checkpoints" / "best.ckpt")
    last = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert last["epoch"] == metrics["epochs"] - 1 == 2
    assert best["epoch"] < last["epoch"]  # colours are learnt early; later epochs do not beat 100%
    assert metrics["last_checkpoint"].endswith("last.ckpt")
