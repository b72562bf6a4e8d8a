"""Evaluation report: metrics, files, agreement with training-time validation, and clear errors."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_recipe_dict, write_colour_classes
from PIL import Image

from tlkit.cli.main import main
from tlkit.errors import CheckpointError, DataError
from tlkit.infer.evaluate import classification_metrics, top_losses
from tlkit.recipe import validate_recipe
from tlkit.run import evaluate_checkpoint, fit


@pytest.fixture(scope="module")
def report(trained_run, tmp_path_factory):
    root, run_dir, _ = trained_run
    out = tmp_path_factory.mktemp("eval")
    # fp32 so the agreement test below compares like with like (training validates in fp32).
    report = evaluate_checkpoint(run_dir / "checkpoints" / "last.ckpt", root, tta=["ten_crop"], out=out,
                                 precision="fp32")
    return report, out


def test_report_has_single_view_and_each_policy_with_cost(report):
    data, out = report
    assert list(data["policies"]) == ["none", "ten_crop"]
    on_disk = json.loads((out / "report.json").read_text())
    for label, views in (("none", 1), ("ten_crop", 10)):
        entry = on_disk["policies"][label]
        assert entry["views"] == views
        assert 0.0 <= entry["accuracy"] <= 1.0
        assert entry["ms_per_image"] > 0 and entry["forward_ms_per_image"] > 0
    assert on_disk["policies"]["none"]["cost_vs_single_view"] == 1.0
    assert on_disk["policies"]["ten_crop"]["top5_accuracy"] is None  # 3 classes: top-5 would always be 100%


def test_report_files_exist_and_are_consistent(report):
    data, out = report
    folder = out / "ten_crop"
    for name in ("per_class.csv", "confusion_matrix.csv", "confusion_matrix.png", "top_losses.csv", "top_losses.png",
                 "predictions.csv"):
        assert (folder / name).stat().st_size > 0, name
    with Image.open(folder / "confusion_matrix.png") as png:
        assert png.size[0] > 300
    matrix = list(csv.reader((folder / "confusion_matrix.csv").open()))
    assert matrix[0] == ["true \\ predicted", "blue", "green", "red"]
    assert sum(int(x) for row in matrix[1:] for x in row[1:]) == data["num_images"] == 12
    losses = list(csv.DictReader((folder / "top_losses.csv").open()))
    assert [float(r["loss"]) for r in losses] == sorted((float(r["loss"]) for r in losses), reverse=True)
    assert "ten_crop" in (out / "summary.txt").read_text()


def test_single_view_report_agrees_with_training_validation(trained_run, report):
    # The same images, the same eval transform, the same model: evaluate's numbers are Lightning's val numbers.
    _, _, metrics = trained_run
    entry = report[0]["policies"]["none"]
    assert entry["accuracy"] == pytest.approx(metrics["val_acc"], abs=1e-6)
    assert entry["nll"] == pytest.approx(metrics["val_loss"], abs=1e-5)


def test_bf16_forwards_give_the_fp32_predictions(trained_run, report, tmp_path):
    # bf16 autocast is the default where it is native; it must not change what the model predicts.
    root, run_dir, _ = trained_run
    bf16 = evaluate_checkpoint(run_dir / "checkpoints" / "last.ckpt", root, tta=["none"], out=tmp_path,
                               precision="bf16")
    assert bf16["precision"] == "bf16" and report[0]["precision"] == "fp32"
    fp32_rows = list(csv.DictReader((report[1] / "none" / "predictions.csv").open()))
    bf16_rows = list(csv.DictReader((tmp_path / "none" / "predictions.csv").open()))
    assert [r["predicted"] for r in bf16_rows] == [r["predicted"] for r in fp32_rows]
    assert bf16["policies"]["none"]["nll"] == pytest.approx(report[0]["policies"]["none"]["nll"], rel=0.05)


def test_one_folder_layout_is_evaluated_on_the_runs_own_val_split(tmp_path):
    root = write_colour_classes(tmp_path / "flat", per_class=10, split=False)
    recipe = validate_recipe(tiny_recipe_dict(root, seed=3, data={"val_fraction": 0.3}, trainer={"epochs": 1}))
    metrics = fit(recipe, run_dir=tmp_path / "run")
    result = evaluate_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt", root, tta=["none"], out=tmp_path / "e")
    assert result["val_split"] == {"val_fraction": 0.3, "seed": 3, "from_checkpoint": True}
    assert result["num_images"] == metrics["num_val"] == 9
    assert result["policies"]["none"]["nll"] == pytest.approx(metrics["val_loss"], abs=1e-5)


def test_data_folder_with_a_class_the_checkpoint_lacks_names_it(trained_run, tmp_path):
    root, run_dir, _ = trained_run
    data = tmp_path / "data"
    shutil.copytree(root, data)
    (data / "val" / "blue").rename(data / "val" / "Blue")
    shutil.copytree(data / "train" / "blue", data / "train" / "Blue")
    with pytest.raises(DataError, match="not trained on: Blue.*blue, green, red.*Did you mean 'blue'"):
        evaluate_checkpoint(run_dir / "checkpoints" / "last.ckpt", data, out=tmp_path / "e")


def test_missing_checkpoint_is_a_clear_error(trained_run, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        evaluate_checkpoint(tmp_path / "nope.ckpt", trained_run[0])


def test_unknown_policy_on_the_command_line_suggests_the_closest(trained_run, capsys):
    root, run_dir, _ = trained_run
    code = main(["evaluate", "--checkpoint", str(run_dir / "checkpoints" / "last.ckpt"), "--data", str(root),
                 "--tta", "ten_crops"])
    assert code == 1
    assert "Did you mean 'ten_crop'?" in capsys.readouterr().err


def test_cli_prints_the_table_with_the_checkpoints_policy_by_default(trained_run, tmp_path, capsys):
    root, run_dir, _ = trained_run
    code = main(["evaluate", "--checkpoint", str(run_dir / "checkpoints" / "last.ckpt"), "--data", str(root),
                 "--out", str(tmp_path / "e")])
    out = capsys.readouterr().out
    assert code == 0
    assert "ms/image" in out and "| none " in out and "| hflip " in out  # the recipe's policy was hflip
    assert (tmp_path / "e" / "report.json").is_file()


# ---------------------------------------------------------------------------------------------------------------------
# Metrics on hand-made numbers


def test_classification_metrics_on_a_known_example():
    classes = ["a", "b", "c", "d", "e"]
    targets = np.array([0, 0, 1, 1, 2, 3])
    probs = np.full((6, 5), 0.05)
    predicted = [0, 1, 1, 1, 1, 4]  # two images wrongly called b, one d called e; no e in the data
    for row, k in enumerate(predicted):
        probs[row, k] = 0.8
    probs[5, 3] = 0.1  # d is the second guess for the last image
    m = classification_metrics(probs, targets, classes)
    assert m["accuracy"] == pytest.approx(3 / 6)
    assert m["top5_accuracy"] == 1.0
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1.0 + 0.0 + 0.0) / 4)  # mean recall of classes present
    per_class = {r["class"]: r for r in m["per_class"]}
    assert per_class["b"]["precision"] == pytest.approx(2 / 4) and per_class["b"]["recall"] == 1.0
    assert per_class["e"]["support"] == 0
    assert m["most_confused"][0] == {"true": "a", "predicted": "b", "count": 1}
    assert {(p["true"], p["predicted"]) for p in m["most_confused"]} == {("a", "b"), ("c", "b"), ("d", "e")}
    assert m["nll"] == pytest.approx(-np.mean(np.log([0.8, 0.05, 0.8, 0.8, 0.05, 0.1])))


def test_top_losses_are_worst_first():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    rows = top_losses(probs, np.array([0, 0, 1]), ["x", "y", "z"], ["p", "q"], n=2)
    assert [r["path"] for r in rows] == ["y", "z"]
    assert rows[0]["predicted"] == "q" and rows[0]["loss"] == pytest.approx(-np.log(0.2))


def test_unreadable_images_are_skipped_and_listed_in_the_report(trained_run, tmp_path):
    root, run_dir, _ = trained_run
    data = tmp_path / "data"
    shutil.copytree(root, data)
    (data / "val" / "red" / "zz_broken.png").write_bytes(b"\x89PNG but not really")
    result = evaluate_checkpoint(run_dir / "checkpoints" / "last.ckpt", data, tta=["none"], out=tmp_path / "e")
    assert result["num_images"] == 12
    assert [Path(s["path"]).name for s in result["skipped"]] == ["zz_broken.png"]
    assert "1 file(s) skipped" in (tmp_path / "e" / "summary.txt").read_text()
