"""Multi-label classification: BCE loss, mixing of multi-hot targets, per-class thresholds, metrics, a tiny fit that
learns, and the checkpoint / predict / export path keeping the label sets."""

from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from tlkit.infer.thresholds import (
    best_f1_threshold,
    multilabel_metrics,
    tune_thresholds,
)
from tlkit.infer.tta import aggregate
from tlkit.model.mixing import BatchMixer, MixingConfig
from tlkit.model.module import TransferModule, multilabel_summary
from tlkit.tune import sanity

CLASSES = ["red", "green", "blue", "yellow"]
COLOURS = [(220, 30, 30), (30, 200, 40), (30, 40, 220), (230, 220, 30)]
SIZE = 32


def tiny(**kwargs) -> TransferModule:
    kwargs.setdefault("strategy", "finetune")
    return TransferModule({"name": "test_resnet", "weights": "none", "input_size": SIZE}, CLASSES, multi_label=True,
                          **kwargs)


# -- loss, mixing, thresholds, metrics (no training) -------------------------------------------------------------


def test_loss_is_bce_summed_over_classes_as_computed_by_hand():
    module = tiny(optim={"label_smoothing": 0.2}, class_weights=[1.0, 2.0, 0.5, 3.0])
    logits = torch.tensor([[2.0, -1.0, 0.5, 0.0], [-0.3, 1.5, -2.0, 0.7]])
    targets = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    p = torch.sigmoid(logits)
    by_hand = -(targets * p.log() + (1 - targets) * (1 - p).log()).sum(1).mean()
    assert float(module.task.loss(logits, targets)) == pytest.approx(float(by_hand), rel=1e-6)
    smoothed = targets * 0.8 + 0.1  # t (1 - eps) + eps / 2
    pos = torch.tensor([1.0, 2.0, 0.5, 3.0])
    weighted = -(pos * smoothed * p.log() + (1 - smoothed) * (1 - p).log()).sum(1).mean()
    loss = module.task.loss(logits, targets, smoothing=0.2, weight=module.class_weights)
    assert float(loss) == pytest.approx(float(weighted), rel=1e-6)
    # zero logits: C x ln 2 whatever the labels (what tlkit check expects)
    assert float(module.task.loss(torch.zeros(2, 4), targets)) == pytest.approx(4 * math.log(2))
    assert module.task.initial_loss(4) == pytest.approx(4 * math.log(2))
    assert sanity.expected_initial_loss(4, task="multi_label") == pytest.approx(4 * math.log(2))


def test_mixing_mixes_multi_hot_targets_and_keeps_them_in_0_1():
    np.random.seed(0)
    torch.manual_seed(0)
    images = torch.rand(5, 3, 16, 16)
    targets = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0], [1, 1, 0, 1], [0, 0, 1, 0]], dtype=torch.float32)
    mixer = BatchMixer(MixingConfig(mixup_alpha=0.4), num_classes=4, label_smoothing=0.1, multi_label=True)
    mixed, soft = mixer(images, targets)
    assert soft.shape == (5, 4) and float(soft.min()) >= 0.0 and float(soft.max()) <= 1.0
    smooth = targets * 0.9 + 0.05
    lam = float((mixed[0] - images[3]).flatten() @ (images[0] - images[3]).flatten()
                / (images[0] - images[3]).flatten().square().sum())  # image 0 is mixed with image 3 (flip of 4)
    assert 0.0 < lam < 1.0
    torch.testing.assert_close(soft[:4], lam * smooth[:4] + (1 - lam) * smooth[:4].flip(0), atol=1e-5, rtol=0)
    torch.testing.assert_close(soft[4], smooth[4])  # the odd one out keeps its own (smoothed) labels
    with pytest.raises(ValueError, match="multi-hot"):
        mixer(images, torch.zeros(5, dtype=torch.long))


def test_thresholds_maximise_each_classs_f1():
    probs = np.array([[0.9, 0.2, 0.3], [0.8, 0.6, 0.1], [0.4, 0.7, 0.2], [0.35, 0.1, 0.05]])
    targets = np.array([[1, 0, 0], [1, 1, 0], [1, 0, 0], [0, 0, 0]])
    thresholds = tune_thresholds(probs, targets)
    # class 0: positives 0.9, 0.8, 0.4, negative 0.35: cut between 0.4 and 0.35 (F1 1.0)
    assert thresholds[0] == pytest.approx(0.375)
    # class 1: the positive is 0.6 and a negative above it 0.7: best F1 keeps both (2/3), cut between 0.6 and 0.2
    assert thresholds[1] == pytest.approx((0.6 + 0.2) / 2)
    assert thresholds[2] == pytest.approx(0.5)  # no positives: the default stays
    assert best_f1_threshold(np.array([0.3, 0.3, 0.1]), np.array([True, False, False])) == pytest.approx(0.2)
    scores = multilabel_metrics(probs, targets, thresholds, ["a", "b", "c"])
    assert scores["f1_macro"] == pytest.approx((1.0 + 2 / 3) / 2)  # class c has no positives: left out
    assert scores["per_class"][2]["ap"] is None and scores["per_class"][0]["ap"] == pytest.approx(1.0)


def test_module_metrics_agree_with_the_evaluate_definition():
    rng = np.random.default_rng(0)
    probs = rng.random((40, 4)).astype(np.float32)
    targets = (rng.random((40, 4)) < 0.4).astype(np.int64)
    targets[:, 3] = 0  # a class without positives
    thresholds = np.array([0.5, 0.3, 0.7, 0.5], dtype=np.float32)
    module = tiny()
    module.thresholds.copy_(torch.from_numpy(thresholds))
    p, t = torch.from_numpy(probs), torch.from_numpy(targets).int()
    module.metrics["val_ap"].update(p, t)
    module.metrics["val_stats"].update((p >= module.thresholds).int(), t)
    with pytest.warns(UserWarning):  # torchmetrics warns about the class without positives
        ap = module.metrics["val_ap"].compute()
    got = multilabel_summary(ap, module.metrics["val_stats"].compute())
    want = multilabel_metrics(probs, targets, thresholds, CLASSES)
    for name in ("map", "f1_micro", "f1_macro"):
        assert float(got[name]) == pytest.approx(want[name], abs=1e-6), name


def test_tta_averages_sigmoid_probabilities():
    logits = torch.tensor([[[2.0, -1.0], [0.0, 1.0]]])
    torch.testing.assert_close(aggregate(logits, "mean_prob", task="multi_label"), torch.sigmoid(logits).mean(1))
    torch.testing.assert_close(aggregate(logits, "max", task="multi_label"), torch.sigmoid(logits).amax(1))
    torch.testing.assert_close(aggregate(logits, "mean_logit", task="multi_label"), torch.sigmoid(logits.mean(1)))


def test_single_label_modules_are_unchanged():
    module = TransferModule({"name": "test_resnet", "weights": "none"}, ["a", "b"])
    assert not module.multi_label and module.monitor == "val_acc" and "thresholds" not in module.state_dict()
    assert "multi_label" not in module.describe()


# -- a tiny synthetic multi-label set: class k present = a square of colour k in quadrant k ---------------------------


def draw(labels: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(90, 140, (SIZE, SIZE, 3)).astype(np.uint8)
    half = SIZE // 2
    for k in labels:
        y, x = (k // 2) * half, (k % 2) * half
        pixels[y + 2: y + half - 2, x + 2: x + half - 2] = COLOURS[k]
    return pixels


def label_sets(n: int, seed: int) -> list[tuple[int, ...]]:
    rng = np.random.default_rng(seed)
    return [tuple(int(k) for k in np.flatnonzero(rng.random(4) < 0.45)) for _ in range(n)]


def to_batch(sets: list[tuple[int, ...]], seed: int, module: TransferModule) -> TensorDataset:
    pre = module.preprocessing
    mean, std = torch.tensor(pre.mean)[:, None, None], torch.tensor(pre.std)[:, None, None]
    images = torch.stack([(torch.from_numpy(draw(s, seed + i)).permute(2, 0, 1) / 255 - mean) / std
                          for i, s in enumerate(sets)])
    targets = torch.zeros(len(sets), len(CLASSES))
    for i, s in enumerate(sets):
        targets[i, list(s)] = 1.0
    return TensorDataset(images, targets)


class SquaresData(L.LightningDataModule):
    def __init__(self, module: TransferModule):
        super().__init__()
        self.train = to_batch(label_sets(96, 1), 1000, module)
        self.val = to_batch(label_sets(48, 2), 5000, module)

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=16, shuffle=True, drop_last=True)

    def val_dataloader(self):
        return DataLoader(self.val, batch_size=48)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A finetuned test_resnet on the squares (a few seconds), its checkpoint and a folder of images."""
    L.seed_everything(0, verbose=False)
    module = tiny(optim={"lr": 0.01}, mixing={"mixup_alpha": 0.2, "off_last_epochs": 2})
    data = SquaresData(module)
    trainer = L.Trainer(max_epochs=8, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=data)
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    thresholds = module.tune_thresholds(data)
    folder = tmp_path_factory.mktemp("squares")
    sets = label_sets(12, 3)
    files = []
    for i, s in enumerate(sets):
        files.append(folder / f"img{i:02d}.png")
        Image.fromarray(draw(s, 9000 + i)).save(files[-1])
    ckpt = folder / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    return module, data, logged, thresholds, ckpt, files, sets


def test_a_tiny_fit_learns_the_label_sets(fitted):
    module, data, logged, thresholds, *_ = fitted
    assert {"val_map", "val_f1_micro", "val_f1_macro", "val_loss", "train_loss"} <= set(logged)
    assert "val_acc" not in logged and "train_acc" not in logged
    prevalence = float(data.val.tensors[1].mean())  # what an uninformed ranking scores
    assert logged["val_map"] > 0.85 > prevalence + 0.3, logged
    assert module.thresholds.tolist() == pytest.approx(thresholds) and len(thresholds) == 4
    assert thresholds != [0.5] * 4


def test_checkpoint_round_trip_keeps_multi_label_and_thresholds(fitted):
    from tlkit.infer.checkpoint import load_checkpoint, read_checkpoint

    _, _, _, thresholds, ckpt, *_ = fitted
    raw = read_checkpoint(ckpt)
    assert raw["tlkit"]["multi_label"] is True and raw["tlkit"]["thresholds"] == pytest.approx(thresholds)
    loaded = load_checkpoint(ckpt)
    assert loaded.multi_label and loaded.thresholds.tolist() == pytest.approx(thresholds)
    again = TransferModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    assert again.multi_label and again.thresholds.tolist() == pytest.approx(thresholds)


def test_predict_lists_each_images_label_set(fitted, tmp_path):
    from tlkit.cli.commands import format_predictions_table
    from tlkit.run import predict_checkpoint

    _, _, _, thresholds, ckpt, files, sets = fitted
    summary = predict_checkpoint(ckpt, [str(f) for f in files], out=tmp_path / "p.csv", json_out=tmp_path / "p.json")
    rows = summary["rows"]
    right = sum(set(r["labels"]) == {CLASSES[k] for k in s} for r, s in zip(rows, sets))
    assert right >= 9, rows  # the label sets of unseen images, at the tuned thresholds
    for r in rows:
        assert all(r["probabilities"][c] >= thresholds[CLASSES.index(c)] for c in r["labels"])
        assert r["probs"] == sorted(r["probs"], reverse=True)
    table = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert list(table[0]) == ["path", "labels", "probs", *(f"p_{c}" for c in CLASSES)]
    assert [row["labels"] for row in table] == [";".join(r["labels"]) for r in rows]
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["thresholds"] == pytest.approx(dict(zip(CLASSES, thresholds)))
    lines = format_predictions_table(rows).splitlines()
    assert len(lines) == 1 + len(rows)
    for line, r in zip(lines[1:], rows):  # each image: its path, then its labels with their probabilities
        shown = re.findall(r"(\w+) \((\d\.\d{3})\)", line)
        assert line.split()[0] == r["path"] and [label for label, _ in shown] == r["labels"], line
        assert [float(p) for _, p in shown] == pytest.approx([r["probabilities"][c] for c in r["labels"]], abs=5e-4)


def test_predictor_returns_label_sets(fitted):
    from tlkit.infer.predictor import Predictor

    _, _, _, thresholds, ckpt, files, sets = fitted
    predictor = Predictor.from_checkpoint(ckpt)
    assert predictor.multi_label and predictor.thresholds == pytest.approx(thresholds)
    got = predictor.predict([str(f) for f in files])
    for p in got:  # exactly the classes at or over their thresholds, most probable first
        over = [c for c, prob, t in zip(CLASSES, p.probabilities, thresholds) if prob >= t]
        assert sorted(p.labels) == sorted(over) and p.probs == sorted(p.probs, reverse=True)
        assert p.label == (p.labels[0] if p.labels else None)
    right = sum(set(p.labels) == {CLASSES[k] for k in s} for p, s in zip(got, sets))
    assert right >= 9, [p.labels for p in got]  # the label sets of unseen images


def test_evaluate_reports_map_and_f1(fitted, tmp_path):
    from tlkit.infer.checkpoint import load_checkpoint
    from tlkit.infer.evaluate import evaluate_policies, format_report_table
    from tlkit.infer.tta import resolve_policy

    _, _, _, thresholds, ckpt, files, sets = fitted
    module = load_checkpoint(ckpt)
    samples = [(str(f), s) for f, s in zip(files, sets)]
    report = evaluate_policies(module, samples, CLASSES, [resolve_policy("none", module.preprocessing)],
                               module.preprocessing, tmp_path)
    entry = report["policies"]["none"]
    assert report["multi_label"] and entry["map"] > 0.8 and 0 < entry["f1_macro"] <= 1
    assert [r["threshold"] for r in entry["per_class"]] == pytest.approx(thresholds)
    assert "mAP" in format_report_table(report)
    assert (tmp_path / "none" / "per_class.csv").read_text().startswith("class,ap,precision,recall,f1,threshold")


def test_export_carries_thresholds_and_the_bundle_applies_them(fitted, tmp_path):
    from tlkit.infer.predictor import Predictor
    from tlkit.run import export_checkpoint

    _, _, _, thresholds, ckpt, files, _ = fitted
    summary = export_checkpoint(ckpt, tmp_path, images=[str(f) for f in files])
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["multi_label"] is True and meta["thresholds"] == pytest.approx(thresholds)
    assert meta["output"]["activation"].startswith("sigmoid")
    assert summary["onnx_parity"]["ok"] and summary["onnx_parity"]["label_set_agreement"] == 1.0
    torch_sets = [p.labels for p in Predictor.from_checkpoint(ckpt, tta="none").predict([str(f) for f in files])]
    onnx = Predictor.from_export(tmp_path, tta="none")
    assert [p.labels for p in onnx.predict([str(f) for f in files])] == torch_sets
    out = tmp_path / "bundle.csv"
    subprocess.run([sys.executable, str(tmp_path / "predict.py"), *map(str, files), "--no-tta", "--csv", str(out)],
                   check=True, capture_output=True)
    rows = list(csv.DictReader(out.open()))
    assert [r["labels"].split(";") if r["labels"] else [] for r in rows] == torch_sets
    reference = onnx.probabilities([str(f) for f in files])
    got = np.array([[float(r[f"p_{c}"]) for c in CLASSES] for r in rows])
    assert np.abs(got - reference).max() < 1e-5


def test_check_measures_bce_against_c_ln2():
    module = tiny()
    inputs = torch.randn(6, 3, SIZE, SIZE)
    targets = (torch.rand(6, 4) < 0.5).float()
    module.eval()
    observed = sanity.initial_loss(module, [(inputs, targets)], task="multi_label")
    result = sanity.initial_loss_check(observed, 4, task="multi_label")
    assert result.passed and "4 x ln 2" in result.summary  # zero-initialised head: exactly C ln 2
    assert observed == pytest.approx(float(F.binary_cross_entropy_with_logits(torch.zeros(6, 4), targets) * 4))


# -- the run layer: a recipe over a multi-label CSV ---------------------------------------------------------------------

def write_squares_csv(root: Path, n: int = 80) -> Path:
    """root/img/*.png with labels.csv (path,label; labels ';'-separated, empty for an image with none)."""
    (root / "img").mkdir(parents=True)
    rows = ["path,label"]
    for i, s in enumerate(label_sets(n, 7)):
        Image.fromarray(draw(s, 20000 + i)).save(root / "img" / f"{i:03d}.png")
        rows.append(f"img/{i:03d}.png,{';'.join(CLASSES[k] for k in s)}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory):
    from conftest import tiny_recipe_dict

    from tlkit.recipe import validate_recipe
    from tlkit.run import fit

    tmp = tmp_path_factory.mktemp("csvrun")
    root = write_squares_csv(tmp / "squares")
    recipe = validate_recipe(tiny_recipe_dict(
        root, backbone={"name": "test_resnet"}, strategy={"kind": "finetune"}, optim={"lr": 0.01},
        data={"source": "csv", "csv": "labels.csv", "multi_label": True, "val_fraction": 0.25, "test_fraction": 0.2,
              "batch_size": 16},
        trainer={"epochs": 5}))
    return recipe, fit(recipe, run_dir=tmp / "out"), tmp / "out", root


def test_a_multi_label_run_monitors_map_and_stores_tuned_thresholds(csv_run):
    from tlkit.cli.commands import format_summary
    from tlkit.infer.checkpoint import read_checkpoint

    _, metrics, run_dir, _ = csv_run
    assert metrics["multi_label"] is True
    assert {"val_map", "val_f1_micro", "val_f1_macro", "best_val_map", "test_map", "test_f1_micro",
            "test_f1_macro"} <= set(metrics)
    assert "val_acc" not in metrics and "best_val_acc" not in metrics
    # An uninformed ranking scores about the label prevalence (0.45) per class; the squares are learnt well above it.
    prevalence = float(np.mean([len(s) / len(CLASSES) for s in label_sets(80, 7)]))
    assert metrics["best_val_map"] > prevalence + 0.35 and metrics["test_map"] > prevalence + 0.35, (prevalence, metrics)
    assert list(metrics["thresholds"]) == sorted(CLASSES)  # the table's classes, in their sorted order
    best = read_checkpoint(run_dir / "checkpoints" / "best.ckpt")
    assert best["tlkit"]["thresholds"] == pytest.approx(list(metrics["thresholds"].values()))
    assert best["state_dict"]["thresholds"].tolist() == pytest.approx(list(metrics["thresholds"].values()))
    assert json.loads((run_dir / "metrics.json").read_text())["thresholds"] == metrics["thresholds"]
    summary = format_summary(metrics)
    assert "val mAP" in summary and "test mAP" in summary


def test_evaluate_rereads_the_table_of_a_multi_label_run(csv_run, tmp_path):
    from tlkit.run import evaluate_checkpoint

    _, metrics, run_dir, root = csv_run
    report = evaluate_checkpoint(run_dir / "checkpoints" / "best.ckpt", root, out=tmp_path)
    entry = report["policies"]["none"]
    assert report["multi_label"] and report["num_images"] == metrics["num_val"]
    assert entry["map"] == pytest.approx(metrics["best_val_map"], abs=1e-5)  # the same images, the same weights


def test_check_expects_c_ln2_for_a_multi_label_recipe(csv_run):
    from tlkit.run import tuning

    recipe = csv_run[0]
    result = tuning.check(recipe, steps=5)
    loss = result["results"][0]
    assert loss.passed and loss.values["expected"] == pytest.approx(4 * math.log(2)), loss.summary
