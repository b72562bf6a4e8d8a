"""fit(recipe): the run directory contract, metrics, determinism, and that training actually learns."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import tiny_recipe_dict, write_colour_classes

from tlkit.data.generate import write_digits
from tlkit.errors import DataError
from tlkit.infer.checkpoint import load_checkpoint, read_checkpoint
from tlkit.recipe import validate_recipe
from tlkit.run import default_run_dir, fit
from tlkit.run.fit import RunDirError


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
    _, _, run_dir = tiny_run
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

    user_data = Path(__file__).resolve().parents[1] / "data"  # where a recipe's own download goes (git-ignored)
    for path in recipes:
        recipe = load_recipe(path)
        assert recipe.name == path.stem
        root = Path(recipe.data.root)
        assert root.exists() or recipe.data.generate is not None or root.resolve().is_relative_to(user_data), path


def test_last_checkpoint_holds_the_final_epoch_even_when_best_came_earlier(tiny_run):
    _, metrics, run_dir = tiny_run
    best = read_checkpoint(run_dir / "checkpoints" / "best.ckpt")
    last = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert last["epoch"] == metrics["epochs"] - 1 == 2
    assert best["epoch"] < last["epoch"]  # colours are learnt early; later epochs do not beat 100%
    assert metrics["last_checkpoint"].endswith("last.ckpt")


def test_a_non_empty_run_dir_is_refused_and_left_as_it_was(tiny_run, tmp_path):
    recipe, _, run_dir = tiny_run
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    with pytest.raises(RunDirError, match=r"not empty; continue it with tlkit train --resume .*--overwrite"):
        fit(recipe, run_dir=run_dir)
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep me")
    with pytest.raises(RunDirError, match="does not hold an earlier tlkit run"):
        fit(recipe, run_dir=foreign, overwrite=True)
    assert (foreign / "mine.txt").read_text() == "keep me"


def test_overwrite_replaces_an_earlier_run(tmp_path):
    root = write_colour_classes(tmp_path / "colours", per_class=4)
    recipe = validate_recipe(tiny_recipe_dict(root, trainer={"epochs": 1}))
    fit(recipe, run_dir=tmp_path / "run")
    (tmp_path / "run" / "checkpoints" / "best-v1.ckpt").write_bytes(b"stale")
    metrics = fit(recipe, run_dir=tmp_path / "run", overwrite=True)
    assert not (tmp_path / "run" / "checkpoints" / "best-v1.ckpt").exists()
    assert Path(metrics["best_checkpoint"]).name == "best.ckpt"


class _RemoveDataAfterFirstEpoch(L.Callback):
    def __init__(self, root: Path):
        self.root = root

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == 0:
            shutil.move(self.root, self.root.with_name("moved-away"))


def test_a_run_whose_data_disappears_stops_instead_of_reporting_success(tmp_path):
    root = write_colour_classes(tmp_path / "colours", per_class=4)
    recipe = validate_recipe(tiny_recipe_dict(root, trainer={"epochs": 3}, cache={"features": False},
                                              data={"on_bad_image": "skip", "batch_size": 4}))
    with pytest.raises(DataError, match=r"epoch \d: none of the \d+ (training|validation) images could be read"):
        fit(recipe, run_dir=tmp_path / "run", callbacks=[_RemoveDataAfterFirstEpoch(root)])
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_mid_run_skips_under_the_threshold_are_counted_in_metrics(tmp_path):
    root = write_colour_classes(tmp_path / "colours", per_class=6)
    broken = min((root / "train").rglob("*.png"))
    recipe = validate_recipe(tiny_recipe_dict(root, trainer={"epochs": 2}, cache={"features": False},
                                              data={"on_bad_image": "skip", "max_bad_fraction": 0.5}))

    class Truncate(L.Callback):
        def on_train_start(self, trainer, pl_module):
            broken.write_bytes(b"not a png any more")

    metrics = fit(recipe, run_dir=tmp_path / "run", callbacks=[Truncate()])
    assert metrics["skipped_mid_run"]["train"] >= 1
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["skipped_mid_run"] == metrics["skipped_mid_run"]


def test_provenance_is_recorded_and_reproduce_reports_what_changed(tmp_path, capsys, monkeypatch):
    from tlkit.cli.main import main

    root = write_colour_classes(tmp_path / "colours", per_class=4)
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(json.dumps(tiny_recipe_dict(root, trainer={"epochs": 1})))
    argv = ["train", "--recipe", str(recipe_file), "--run-dir", str(tmp_path / "first")]
    monkeypatch.setattr("sys.argv", ["tlkit", *argv])  # as the shell would start it
    assert main(argv) == 0
    saved = json.loads((tmp_path / "first" / "provenance.json").read_text())
    assert {"torch", "timm", "lightning", "albumentations"} <= set(saved["versions"])
    assert saved["data"]["files"] == 12 and len(saved["data"]["sha256"]) == 64
    assert saved["command"][1:4] == ["train", "--recipe", str(recipe_file)]
    assert saved["hardware"]["cores"] >= 1 and len(saved["recipe_sha256"]) == 16

    shutil.copy(root / "train" / "blue" / "blue_00.png", root / "train" / "blue" / "blue_copy.png")  # data changed
    capsys.readouterr()
    assert main(["train", "--reproduce", str(tmp_path / "first"), "--run-dir", str(tmp_path / "again")]) == 0
    out = capsys.readouterr().out
    assert f"reproduced {tmp_path / 'first'}:" in out
    assert "data: 12 files" in out and "13 files" in out


def test_tensorboard_and_mlflow_get_hyperparameters_epoch_metrics_lr_and_final_figures(tmp_path):
    pytest.importorskip("tensorboard", reason="pip install tensorboard (CI installs it with the dev extra)")
    pytest.importorskip("mlflow", reason="pip install mlflow-skinny (CI installs it with the dev extra)")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = write_colour_classes(tmp_path / "colours", per_class=4)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    recipe = validate_recipe(tiny_recipe_dict(root, trainer={"epochs": 2}, output={"runs_dir": str(tmp_path / "runs")},
                                              logging={"loggers": ["tensorboard", "mlflow"],
                                                       "mlflow": {"tracking_uri": store, "experiment": "tiny-exp"}}))
    metrics = fit(recipe, run_dir=tmp_path / "run")

    events = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"val_acc", "train_loss", "final/best_val_acc"} <= scalars
    assert any(tag.startswith("lr-") for tag in scalars)  # per-group LR from LearningRateMonitor
    assert len(events.Scalars("val_acc")) == 2  # one per epoch

    client = MlflowClient(tracking_uri=store)
    run = client.search_runs([client.get_experiment_by_name("tiny-exp").experiment_id])[0]
    assert run.data.metrics["final/best_val_acc"] == pytest.approx(metrics["best_val_acc"])
    assert len(client.get_metric_history(run.info.run_id, "val_acc")) == 2
    assert float(run.data.params["optim/lr"]) == 0.05  # hyper-parameters (nested ones flattened by Lightning)
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"recipe.yaml", "provenance.json"}
    assert (tmp_path / "runs" / "mlflow-artifacts").is_dir()  # not ./mlruns of the current folder


def test_wandb_offline_run_is_written_under_the_run_dir(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="pip install wandb (CI installs it with the dev extra)")
    monkeypatch.setenv("WANDB_SILENT", "true")
    root = write_colour_classes(tmp_path / "colours", per_class=4)
    recipe = validate_recipe(tiny_recipe_dict(root, trainer={"epochs": 1}, logging={"loggers": ["wandb"]}))
    fit(recipe, run_dir=tmp_path / "run")
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0


class SeenBatches(L.Callback):
    """How many images each validation and test batch of a fit held, and in which trainer call."""

    def __init__(self):
        self.val: list[tuple[str, int]] = []
        self.test: list[tuple[str, int]] = []

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.val.append((trainer.state.fn, len(batch[1])))

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.test.append((trainer.state.fn, len(batch[1])))


def test_a_test_folder_is_evaluated_once_at_the_end_and_never_chooses_checkpoints(tmp_path):
    import csv

    import numpy as np

    from tlkit.infer.predictor import Predictor

    root = write_colour_classes(tmp_path / "colours", per_class=6)
    for image in sorted((root / "val").rglob("*.png"))[::2]:  # half of val becomes the test split
        target = root / "test" / image.parent.name / image.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(image, target)
    recipe = validate_recipe(tiny_recipe_dict(root, backbone={"name": "test_resnet"},
                                              optim={"name": "adamw", "lr": 0.3}, trainer={"epochs": 3}))
    seen = SeenBatches()
    metrics = fit(recipe, run_dir=tmp_path / "run", callbacks=[seen])
    assert metrics["num_test"] == 3 and metrics["num_val"] == 3
    # Validation (which chooses best.ckpt) only ever sees the 3 val images; the 3 test images once, after training.
    assert seen.val == [("fit", 3)] * 3 and seen.test == [("test", 3)]
    # best.ckpt is the first epoch of the highest val accuracy
    rows = [r for r in csv.DictReader((tmp_path / "run" / "metrics.csv").open()) if r.get("val_acc")]
    val_acc = [float(r["val_acc"]) for r in rows]
    best = torch.load(metrics["best_checkpoint"], map_location="cpu", weights_only=True)
    assert best["epoch"] == int(np.argmax(val_acc)) and metrics["best_val_acc"] == pytest.approx(max(val_acc))
    # The test figures are best.ckpt's on the test images (not the final weights'): its loss tells them apart.
    files = sorted((root / "test").rglob("*.png"))

    def loss_and_accuracy(checkpoint):
        predictor = Predictor.from_checkpoint(checkpoint, tta="none")
        probs = predictor.probabilities(files)
        truth = np.array([predictor.classes.index(f.parent.name) for f in files])
        return float(-np.log(probs[np.arange(len(files)), truth]).mean()), float((probs.argmax(1) == truth).mean())

    test_loss, test_acc = loss_and_accuracy(metrics["best_checkpoint"])
    assert metrics["test_loss"] == pytest.approx(test_loss, abs=1e-5) and metrics["test_acc"] == pytest.approx(test_acc)
    assert abs(loss_and_accuracy(metrics["last_checkpoint"])[0] - test_loss) > 1e-3  # the final weights differ
    assert metrics["val_acc"] == pytest.approx(val_acc[-1])  # val metrics are not replaced by the test pass
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["test_acc"] == metrics["test_acc"]
    csv_text = (tmp_path / "run" / "metrics.csv").read_text()
    assert "test_acc" in csv_text.splitlines()[0]  # logged once, at the end


def test_overwrite_never_deletes_a_folder_that_is_not_a_run(tmp_path, monkeypatch):
    """A project folder with a recipe.yaml of its own is not a run: --overwrite refuses it, and the current folder
    or home are never replaced even if they look like one."""
    root = write_colour_classes(tmp_path / "colours", per_class=4)
    recipe = validate_recipe(tiny_recipe_dict(root, trainer={"epochs": 1}))
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "recipe.yaml").write_text("data: {root: x}\n")
    (project / "src" / "important.py").write_text("keep = True\n")
    with pytest.raises(RunDirError, match="does not hold an earlier tlkit run"):
        fit(recipe, run_dir=project, overwrite=True)
    assert (project / "src" / "important.py").read_text() == "keep = True\n"
    fit(recipe, run_dir=tmp_path / "run")
    monkeypatch.chdir(tmp_path / "run")
    with pytest.raises(RunDirError, match="current folder"):
        fit(recipe, run_dir=".", overwrite=True)
    assert (tmp_path / "run" / "metrics.json").is_file()


def test_provenance_fingerprints_labels_so_a_relabelled_table_is_reported(tmp_path):
    from tlkit.run import provenance

    images = [tmp_path / "a.png", tmp_path / "b.png"]
    for image in images:
        image.write_bytes(b"x")
    paths = [str(p) for p in images]
    before = provenance.data_fingerprint(tmp_path, paths, {paths[0]: 0, paths[1]: (1, 2)})
    same = provenance.data_fingerprint(tmp_path, paths, {paths[1]: (1, 2), paths[0]: 0})
    relabelled = provenance.data_fingerprint(tmp_path, paths, {paths[0]: 0, paths[1]: (2,)})
    assert before == same and before["sha256"] == relabelled["sha256"]
    assert provenance.differences({"data": before}, {"data": same}) == []
    [line] = provenance.differences({"data": before}, {"data": relabelled})
    assert line.startswith("labels: the same 2 image files, but their labels changed")
    # a run recorded before labels were fingerprinted is not reported as changed data
    old = {k: v for k, v in before.items() if k != "labels_sha256"}
    assert provenance.differences({"data": old}, {"data": relabelled}) == []
