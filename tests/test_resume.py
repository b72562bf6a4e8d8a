"""Kill a training process with SIGKILL mid-epoch, resume it with `train.py --resume`, and get exactly the run an
uninterrupted process produces: same metrics.csv bytes, same final weights (through scripts/verify_resume.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_recipe_dict, write_colour_classes

from tlkit.errors import CheckpointError, RecipeError
from tlkit.infer.checkpoint import read_checkpoint
from tlkit.recipe import validate_recipe
from tlkit.run import fit
from tlkit.run.resume import load_run_recipe, resume_point
from tlkit.seeding import EpochSampler

REPO = Path(__file__).resolve().parents[1]

def _python(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _recipe_file(tmp: Path) -> Path:
    """Everything random at once: random crops and flips in 2 persistent workers, Mixup/CutMix, dropout,
    drop-path and an EMA of the weights."""
    root = write_colour_classes(tmp / "colours")
    recipe = tiny_recipe_dict(
        root,
        strategy={"kind": "finetune"},
        backbone={"drop_path_rate": 0.1},
        head={"dropout": 0.2},
        mixing={"mixup_alpha": 0.4, "cutmix_alpha": 1.0, "prob": 0.8},
        optim={"ema_decay": 0.5},
        data={"num_workers": 2},
        trainer={"epochs": 3},
    )
    path = tmp / "resume.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["state_dict"]


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    """scripts/verify_resume.py: an uninterrupted run, a run SIGKILLed after batch 2 of epoch 2, and its resume."""
    tmp = tmp_path_factory.mktemp("resume")
    done = _python("scripts/verify_resume.py", "--recipe", str(_recipe_file(tmp)), "--kill-at", "1:1",
                   "--out", str(tmp / "out"))
    assert (tmp / "out" / "verify_resume.json").exists(), done.stderr[-3000:]
    return tmp / "out", json.loads((tmp / "out" / "verify_resume.json").read_text()), done


def test_the_kill_left_the_first_epoch_checkpoint_and_the_resume_started_after_it(killed_and_resumed):
    _, report, _ = killed_and_resumed
    assert report["after_kill"] == {"metrics_json": False, "checkpoint_epoch": 0}
    assert "from epoch 2" in report["resume_log"]
    assert report["resumed_from_epoch"] == 1


def test_resumed_run_equals_the_uninterrupted_run(killed_and_resumed):
    out, report, done = killed_and_resumed
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    assert report["metrics_csv_identical"] and report["final_weights_identical"]
    # and independently of the script's own comparison:
    whole, killed = out / "whole", out / "killed"
    assert (killed / "metrics.csv").read_text() == (whole / "metrics.csv").read_text()
    a, b = _final_state(whole), _final_state(killed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    final = [json.loads((d / "metrics.json").read_text()) for d in (whole, killed)]
    for key in ("val_acc", "val_loss", "train_acc", "train_loss", "best_val_acc", "epochs"):
        assert final[0][key] == final[1][key], key


def test_ctrl_c_tells_how_to_resume_and_the_resumed_run_equals_the_uninterrupted_run(killed_and_resumed, tmp_path):
    """Ctrl-C (SIGINT to `tlkit train` and its 2 DataLoader workers) in epoch 2: Lightning shuts down gracefully, the
    CLI names the run and the --resume command, and the resumed run is still exact."""
    out, _, _ = killed_and_resumed
    recipe = tmp_path / "resume.yaml"  # the same recipe as the SIGKILL run (data regenerated identically)
    recipe.write_text((out.parent / "resume.yaml").read_text().replace(str(out.parent), str(tmp_path)))
    write_colour_classes(tmp_path / "colours")
    done = _python("scripts/verify_resume.py", "--recipe", str(recipe), "--kill-at", "1:1", "--signal", "INT",
                   "--whole", str(out / "whole"), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "verify_resume.json").read_text())
    assert report["after_kill"] == {"metrics_json": False, "checkpoint_epoch": 0}
    message = report["kill_stderr_tail"][-1]
    killed = tmp_path / "out" / "killed"
    assert message.startswith("interrupted (Ctrl-C) during epoch 2") and f"tlkit train --resume {killed}" in message
    assert not any("Traceback" in line for line in report["kill_stderr_tail"])
    assert "from epoch 2" in report["resume_log"]
    assert report["metrics_csv_identical"] and report["final_weights_identical"]


def test_resuming_a_finished_run_trains_nothing(killed_and_resumed):
    killed = killed_and_resumed[0] / "killed"
    before = (killed / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    again = _python("scripts/train.py", "--resume", str(killed), "--set", "trainer.progress_bar=false")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "already finished" in again.stderr
    assert (killed / "checkpoints" / "last.ckpt").stat().st_mtime_ns == before


def test_epoch_sampler_order_depends_only_on_seed_and_epoch():
    first, second = EpochSampler(50, seed=3), EpochSampler(50, seed=3)
    orders = []
    for epoch in range(3):
        first.set_epoch(epoch)
        orders.append(list(first))
    second.set_epoch(2)  # a resumed process jumps straight to epoch 2
    assert list(second) == orders[2]
    assert orders[0] != orders[1] and sorted(orders[0]) == list(range(50))
    paired = EpochSampler(5, seed=3, with_epoch=True)
    paired.set_epoch(4)
    assert all(epoch == 4 for _, epoch in paired)


def test_resume_refuses_changed_recipe_values_and_non_run_folders(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(RecipeError, match="not a tlkit run directory"):
        load_run_recipe(tmp_path / "run")
    (tmp_path / "run" / "recipe.yaml").write_text(yaml.safe_dump(tiny_recipe_dict(tmp_path)))
    with pytest.raises(RecipeError, match="only trainer.progress_bar, data.num_workers may change"):
        load_run_recipe(tmp_path / "run", ["optim.lr=0.1"])
    assert load_run_recipe(tmp_path / "run", ["data.num_workers=0"]).data.num_workers == 0


def test_resume_refuses_a_checkpoint_whose_classes_differ_from_the_data(tmp_path):
    root = write_colour_classes(tmp_path / "colours", per_class=6)
    recipe = validate_recipe(tiny_recipe_dict(root, trainer={"epochs": 1}))
    fit(recipe, run_dir=tmp_path / "run")
    with pytest.raises(CheckpointError, match="trained on 3 classes .* now has 2"):
        resume_point(tmp_path / "run", ["blue", "green"])


def test_cli_resume_rejects_a_recipe_too(tmp_path, capsys):
    from tlkit.cli.main import main

    assert main(["train", "--resume", str(tmp_path), "--recipe", "x.yaml"]) == 2
    assert "drop --recipe" in capsys.readouterr().err
    assert main(["train"]) == 2
    assert "--resume RUN_DIR" in capsys.readouterr().err


def test_num_workers_does_not_change_the_run(tmp_path):
    # every random draw is keyed by (seed, epoch, index/batch), never by which process makes it: so --resume may
    # change data.num_workers, and a run on a laptop matches one on a bigger machine
    root = write_colour_classes(tmp_path / "colours", per_class=6)
    for workers in (0, 2):
        recipe = validate_recipe(tiny_recipe_dict(root, strategy={"kind": "finetune"}, data={"num_workers": workers}))
        fit(recipe, run_dir=tmp_path / f"w{workers}")
    assert (tmp_path / "w0" / "metrics.csv").read_text() == (tmp_path / "w2" / "metrics.csv").read_text()
