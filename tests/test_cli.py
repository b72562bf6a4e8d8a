"""The command line: train prints a summary, recipe errors exit 2 before any work, recipe show lists defaults."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import tiny_recipe_dict, write_colour_classes

from tlkit.cli.commands import format_summary
from tlkit.cli.main import EXIT_RECIPE_ERROR, main

REPO = Path(__file__).resolve().parents[1]


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def test_train_prints_summary_and_writes_run_dir(tmp_path, capsys):
    root = write_colour_classes(tmp_path / "colours", per_class=6)
    recipe = write_recipe(tmp_path / "tiny.yaml", tiny_recipe_dict(root, trainer={"epochs": 1}))
    code = main(["train", "--recipe", str(recipe), "--run-dir", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert code == 0
    for label in ("val accuracy", "val loss", "epochs", "wall time", "run directory"):
        assert label in out
    assert (tmp_path / "run" / "metrics.json").is_file()


def test_set_overrides_reach_the_run(tmp_path):
    root = write_colour_classes(tmp_path / "colours", per_class=6)
    recipe = write_recipe(tmp_path / "tiny.yaml", tiny_recipe_dict(root))
    main(["train", "--recipe", str(recipe), "--run-dir", str(tmp_path / "run"), "--set", "trainer.epochs=1"])
    saved = yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())
    assert saved["trainer"]["epochs"] == 1


def test_recipe_errors_exit_2_before_touching_data(tmp_path, capsys):
    recipe = write_recipe(
        tmp_path / "bad.yaml",
        {"data": {"root": str(tmp_path / "digits"), "generate": "digits"}, "optim": {"lr": 0}, "trainr": {}},
    )
    code = main(["train", "--recipe", str(recipe), "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == EXIT_RECIPE_ERROR
    assert "optim.lr" in err and "trainr: unknown key. Did you mean 'trainer'?" in err
    assert not (tmp_path / "digits").exists() and not (tmp_path / "run").exists()


def test_missing_data_folder_is_one_clear_line(tmp_path, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe_dict(tmp_path / "nowhere"))
    assert main(["train", "--recipe", str(recipe), "--run-dir", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: Data folder") and "--set data.root=" in err and "\n" not in err


def test_recipe_show_prints_every_default_with_its_reason(tmp_path, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", {"data": {"root": "imgs"}})
    assert main(["recipe", "show", str(recipe), "--set", "optim.lr=0.5"]) == 0
    out = capsys.readouterr().out
    assert "  lr: 0.5  # Head learning rate" in out
    assert "  backbone_lr_mult" not in out  # linear_probe by default
    assert f"  root: {tmp_path / 'imgs'}" in out


def test_format_summary_shows_percentages():
    text = format_summary({"val_acc": 0.9512, "best_val_acc": 0.96, "val_loss": 0.2, "epochs": 3, "wall_s": 12.3})
    assert "95.12%" in text and "12.3 s" in text


def test_train_script_reports_recipe_errors_with_exit_2(tmp_path):
    recipe = write_recipe(tmp_path / "bad.yaml", {"data": {"root": "x"}, "strategy": {"kind": "fintune"}})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "train.py"), "--recipe", str(recipe)],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert result.returncode == 2
    assert "strategy.kind: got 'fintune'" in result.stderr and "Did you mean 'finetune'" in result.stderr


def test_errors_from_dataloader_workers_are_shown_as_one_line():
    from tlkit.cli.main import _one_line
    from tlkit.errors import DataError

    wrapped = DataError("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
                        '  File "x.py", line 1\ntlkit.errors.DataError: Cannot decode a.jpg (OSError); remove it.')
    assert _one_line(wrapped) == "Cannot decode a.jpg (OSError); remove it."
    assert _one_line(DataError("plain cause")) == "plain cause"


def test_binary_recipe_file_is_one_clear_line(tmp_path, capsys):
    recipe = tmp_path / "photo.yaml"
    recipe.write_bytes(bytes(range(256)) * 4)  # e.g. an image saved with a .yaml name
    assert main(["train", "--recipe", str(recipe)]) == EXIT_RECIPE_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot read the recipe" in err[0] and str(recipe) in err[0]


def test_hub_weights_offline_fail_fast_with_the_offline_choices(tmp_path, capsys, monkeypatch):
    import tlkit.model.backbones

    monkeypatch.setattr(tlkit.model.backbones, "hub_reachable", lambda host=None, timeout=3.0: False)
    root = write_colour_classes(tmp_path / "colours", per_class=6)
    recipe = tiny_recipe_dict(root, backbone={"name": "convnext_atto", "weights": "hub"})
    assert main(["train", "--recipe", str(write_recipe(tmp_path / "r.yaml", recipe))]) == 1
    err = capsys.readouterr().err
    assert "no network connection to the hub" in err and "weights: bundled" in err and "weights: none" in err
