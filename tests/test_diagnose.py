"""tlkit diagnose: the verdict logic on synthetic curves, and the command on a real tiny run's metrics.csv."""

from __future__ import annotations

import math

import pytest

from tlkit.tune.diagnose import ADVICE, diagnose_curves, read_metrics_csv


def _curves(train_loss, val_loss, train_acc, val_acc):
    return diagnose_curves(train_loss, val_loss, train_acc, val_acc)


def test_overfitting_from_a_large_train_val_gap():
    d = _curves([1.0, 0.4, 0.1, 0.05], [1.0, 0.8, 0.8, 0.8], [0.5, 0.9, 0.99, 1.0], [0.5, 0.7, 0.72, 0.72])
    assert d.verdict == "overfitting"
    assert d.advice == ADVICE["overfitting"]
    assert d.values["gap"] == pytest.approx(0.28)


def test_overfitting_from_a_rising_val_loss_without_an_accuracy_gap():
    d = _curves([1.0, 0.5, 0.3, 0.2, 0.1], [0.9, 0.6, 0.7, 0.8, 0.9],
                [0.6, 0.8, 0.85, 0.88, 0.9], [0.6, 0.8, 0.84, 0.85, 0.85])
    assert d.verdict == "overfitting"
    assert "val loss rose" in d.reason


def test_rising_val_loss_with_train_accuracy_below_val_is_not_overfitting():
    # the gradual hymenoptera run: label smoothing keeps train accuracy under val while val loss creeps up
    d = _curves([0.45, 0.40, 0.36, 0.34, 0.33], [0.17, 0.18, 0.19, 0.20, 0.215],
                [0.90, 0.92, 0.93, 0.935, 0.938], [0.961, 0.961, 0.961, 0.961, 0.961])
    assert d.verdict == "well fit"
    assert "train accuracy is below val" in d.reason


def test_underfitting_when_no_gap_and_training_accuracy_low():
    d = _curves([1.1, 1.0, 1.0, 1.0], [1.1, 1.0, 1.0, 1.0], [0.4, 0.5, 0.52, 0.52], [0.4, 0.5, 0.51, 0.52])
    assert d.verdict == "underfitting"
    assert any("bigger backbone" in a for a in d.advice)


def test_still_improving_when_val_loss_keeps_falling():
    d = _curves([1.0, 0.8, 0.6, 0.5], [1.0, 0.8, 0.6, 0.5], [0.5, 0.6, 0.7, 0.75], [0.5, 0.6, 0.7, 0.74])
    assert d.verdict == "still improving"


@pytest.mark.parametrize("train_loss", [[1.0, 2.0, math.nan], [1.0, 1.5, 3.0]])
def test_diverged_on_nan_or_growing_loss(train_loss):
    d = _curves(train_loss, [1.0, 1.5, 2.0], [0.5, 0.4, 0.3], [0.5, 0.4, 0.3])
    assert d.verdict == "diverged"
    assert any("lr" in a for a in d.advice)


def test_well_fit_when_flat_small_gap_high_accuracy():
    d = _curves([0.3, 0.2, 0.2, 0.2], [0.3, 0.25, 0.25, 0.25], [0.9, 0.95, 0.96, 0.96], [0.9, 0.93, 0.93, 0.93])
    assert d.verdict == "well fit"


def test_no_complete_epoch_is_an_error():
    with pytest.raises(ValueError):
        diagnose_curves([], [], [], [])


def test_read_metrics_csv_merges_train_and_val_rows(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text(
        "epoch,step,train_loss,train_acc,val_loss,val_acc,lr-SGD\n"
        "0,3,,,0.9,0.6,\n"
        "0,3,1.0,0.5,,,\n"
        "1,7,,,0.7,0.7,\n"
        "1,7,0.8,0.65,,,\n"
        "2,9,,,0.6,0.75,\n"  # epoch without train metrics: dropped
    )
    curves = read_metrics_csv(path)
    assert curves["epoch"] == [0.0, 1.0]
    assert curves["train_loss"] == [1.0, 0.8]
    assert curves["val_acc"] == [0.6, 0.7]


def test_cli_diagnose_on_a_real_run(trained_run, capsys):
    from PIL import Image

    from tlkit.cli.main import main

    _, run_dir, _ = trained_run
    assert main(["diagnose", str(run_dir), "--out", str(run_dir / "diag_curves.png")]) == 0
    out = capsys.readouterr().out
    assert any(v.upper() in out for v in ADVICE)
    assert Image.open(run_dir / "diag_curves.png").size[0] > 500
    assert (run_dir / "diagnosis.json").is_file()


def test_cli_diagnose_without_metrics_is_a_user_error(tmp_path, capsys):
    from tlkit.cli.main import main

    assert main(["diagnose", str(tmp_path)]) != 0
    assert "metrics.csv" in capsys.readouterr().err
