"""predict: files and folders in, top-k CSV/JSON out; broken files skipped and listed; same numbers as the eval path."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from conftest import write_colour_classes

from tlkit.cli.main import main
from tlkit.data.augment import build_eval_transform
from tlkit.data.datamodule import ImageFolderDataModule
from tlkit.data.images import collect_inputs, load_rgb
from tlkit.infer.checkpoint import load_checkpoint
from tlkit.infer.inference import predict_files
from tlkit.infer.tta import resolve_policy
from tlkit.model.module import TransferModule
from tlkit.run import predict_checkpoint


@pytest.fixture
def images_with_a_broken_file(trained_run, tmp_path):
    folder = tmp_path / "inbox"
    shutil.copytree(trained_run[0] / "val", folder / "nested")
    (folder / "nested" / "red" / "broken.png").write_bytes(b"not a png at all")
    (folder / "notes.txt").write_text("not an image, not listed")
    return folder


def checkpoint_of(trained_run):
    return trained_run[1] / "checkpoints" / "last.ckpt"


def test_predict_on_a_folder_with_a_broken_file_skips_and_lists_it(trained_run, images_with_a_broken_file, tmp_path,
                                                                   capsys):
    out = tmp_path / "pred.csv"
    code = main(["predict", "--checkpoint", str(checkpoint_of(trained_run)), str(images_with_a_broken_file),
                 "--out", str(out), "--json", str(tmp_path / "pred.json"), "--top-k", "2"])
    captured = capsys.readouterr()
    assert code == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 12  # every readable image, found recursively; the .txt is not an image
    assert set(rows[0]) == {"path", "label_1", "prob_1", "label_2", "prob_2"}
    assert all(float(r["prob_1"]) >= float(r["prob_2"]) for r in rows)
    assert not any("broken" in r["path"] for r in rows)
    assert "broken.png" in captured.err and "predicted 12 image(s)" in captured.out
    listed = json.loads((tmp_path / "pred.json").read_text())
    assert [s["path"].endswith("broken.png") for s in listed["skipped"]] == [True]
    assert len(listed["predictions"]) == 12


def test_predict_exits_non_zero_only_when_nothing_was_predicted(trained_run, tmp_path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 truncated")
    assert main(["predict", "--checkpoint", str(checkpoint_of(trained_run)), str(broken), str(tmp_path / "missing.png"),
                 "--out", str(tmp_path / "p.csv")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: Nothing was predicted") and "broken.jpg" in err
    assert not (tmp_path / "p.csv").exists()


def test_predicted_probabilities_are_the_eval_transform_through_the_model(trained_run, tmp_path):
    # DESIGN.md contract 6: predict decodes and preprocesses exactly like validation.
    files = sorted(str(p) for p in (trained_run[0] / "val").rglob("*.png"))[:5]
    summary = predict_checkpoint(checkpoint_of(trained_run), files, out=tmp_path / "p.csv", tta="none", top_k=3,
                                 precision="fp32")  # preprocessing identity; bf16 is tested in test_evaluate
    module = load_checkpoint(checkpoint_of(trained_run))
    transform = build_eval_transform(module.preprocessing)
    with torch.no_grad():
        expected = module(torch.stack([transform(load_rgb(f)) for f in files])).softmax(-1)
    for row, probs in zip(summary["rows"], expected):
        top = probs.sort(descending=True)
        assert row["labels"] == [module.classes[i] for i in top.indices.tolist()]
        np.testing.assert_allclose(row["probs"], top.values.numpy(), atol=1e-6)


def test_predict_uses_the_checkpoints_tta_policy_unless_told_otherwise(trained_run, tmp_path):
    files = [str(next((trained_run[0] / "val").rglob("*.png")))]
    assert predict_checkpoint(checkpoint_of(trained_run), files, out=tmp_path / "a.csv")["views"] == 2  # hflip
    assert predict_checkpoint(checkpoint_of(trained_run), files, out=tmp_path / "b.csv", tta="ten_crop")["views"] == 10


def test_checkpoint_round_trip_gives_identical_predictions(tmp_path):
    root = write_colour_classes(tmp_path / "colours", per_class=6)
    torch.manual_seed(0)
    module = TransferModule({"name": "test_resnet", "input_size": 32}, ["blue", "green", "red"], weights="none",
                            strategy="finetune", head={"hidden": [8]}, tta="hflip")
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=ImageFolderDataModule(root, batch_size=4, num_workers=0))
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    loaded = load_checkpoint(tmp_path / "model.ckpt")
    files = sorted(str(p) for p in root.rglob("*.png"))
    policy = resolve_policy(loaded.tta_spec, loaded.preprocessing)
    assert policy.num_views == 2
    before = predict_files(module, files, policy, module.preprocessing)
    after = predict_files(loaded, files, policy, loaded.preprocessing)
    assert np.array_equal(before.probs, after.probs)
    assert loaded.classes == module.classes and loaded.preprocessing == module.preprocessing


def test_collect_inputs_keeps_order_and_reports_missing_paths(tmp_path, make_image):
    a = make_image(tmp_path / "b" / "x.png")
    c = make_image(tmp_path / "a.jpg")
    make_image(tmp_path / "b" / ".hidden.png")
    files, missing = collect_inputs([c, tmp_path / "b", a, tmp_path / "nope.png"])
    assert files == [str(c), str(a)]  # a file named twice is predicted once; hidden files are not collected
    assert missing == [(str(tmp_path / "nope.png"), "no such file or folder")]


# ---------------------------------------------------------------------------------------------------------------------
# In memory: tlkit.Predictor


def test_predictor_gives_tlkit_predicts_numbers_for_paths_pil_images_and_arrays(trained_run, tmp_path):
    from PIL import Image

    import tlkit

    files = sorted(str(p) for p in (trained_run[0] / "val").rglob("*.png"))[:6]
    predictor = tlkit.Predictor.from_checkpoint(checkpoint_of(trained_run))  # the checkpoint's hflip
    assert predictor.policy.num_views == 2
    summary = predict_checkpoint(checkpoint_of(trained_run), files, out=tmp_path / "p.csv", top_k=3)
    from_paths = predictor.predict(files, top_k=3)
    assert [p.source for p in from_paths] == files
    for row, got in zip(summary["rows"], from_paths):
        assert got.labels == row["labels"] and got.label == row["labels"][0]
        np.testing.assert_allclose(got.probs, row["probs"], atol=1e-6, rtol=0)
        assert got.probabilities.shape == (3,) and abs(float(got.probabilities.sum()) - 1) < 1e-5
    expected = predictor.probabilities(files)
    rgb = load_rgb(files[0])
    same = [Image.open(files[0]), rgb, np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])]  # PIL, RGB, RGBA
    for image in same:
        np.testing.assert_allclose(predictor.predict(image).probabilities, expected[0], atol=1e-6, rtol=0)
    grey = predictor.predict(rgb[:, :, 1])  # HxW greyscale is read as L, like a greyscale file
    assert grey.label in predictor.classes and len(grey.labels) == 3 and grey.source is None


def test_predictor_takes_a_batch_array_and_refuses_other_dtypes(trained_run):
    predictor = Predictor_from(trained_run, tta="none")
    batch = np.random.default_rng(0).integers(0, 256, (4, 20, 30, 3), dtype=np.uint8)
    assert len(predictor.predict(batch, top_k=1)) == 4
    with pytest.raises(ValueError, match=r"must be uint8 .* got float64 with values 200..200"):
        predictor.predict(np.full((20, 30, 3), 200.0))  # floats are read only in [0, 1]


def Predictor_from(trained_run, **kwargs):
    from tlkit.infer.predictor import Predictor

    return Predictor.from_checkpoint(checkpoint_of(trained_run), **kwargs)


def test_predict_refuses_to_overwrite_and_writes_csv_to_stdout(trained_run, tmp_path, capsys):
    files = [str(p) for p in sorted((trained_run[0] / "val").rglob("*.png"))[:2]]
    out = tmp_path / "p.csv"
    out.write_text("earlier predictions\n")
    args = ["predict", "--checkpoint", str(checkpoint_of(trained_run)), *files, "--out", str(out)]
    assert main(args) == 1
    assert "p.csv already exists; pass --overwrite" in capsys.readouterr().err
    assert out.read_text() == "earlier predictions\n"
    assert main([*args, "--overwrite"]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].split() == ["file", "label", "prob"] and files[0] in printed
    assert f"predicted 2 image(s) with hflip (2 view(s)) -> {out}" in printed
    assert main(["predict", "--checkpoint", str(checkpoint_of(trained_run)), *files, "--out", "-", "--top-k", "1"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()  # the CSV alone: no table, no summary line on stdout
    assert lines[0] == "path,label_1,prob_1" and [line.split(",")[0] for line in lines[1:]] == files
    assert all(len(line.split(",")) == 3 for line in lines)
    assert "-> stdout" in captured.err and not (tmp_path / "-").exists() and not Path("-").exists()


# ---------------------------------------------------------------------------------------------------------------------
# At scale: one loader for the run, tables and streams as inputs, several devices, output that never waits for the end


def _val_files(trained_run, n=None):
    files = sorted(str(p) for p in (trained_run[0] / "val").rglob("*.png"))
    return files[:n] if n else files


def test_loader_workers_give_the_same_rows_as_the_main_process(trained_run, tmp_path):
    files = _val_files(trained_run)
    one = predict_checkpoint(checkpoint_of(trained_run), files, out=tmp_path / "a.csv", num_workers=0)
    two = predict_checkpoint(checkpoint_of(trained_run), files, out=tmp_path / "b.csv", num_workers=2)
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()
    assert [r["path"] for r in two["rows"]] == files and one["images_per_second"] > 0


def test_a_csv_table_predicts_the_files_its_path_column_lists_in_table_order(trained_run, tmp_path):
    files = _val_files(trained_run, 4)[::-1]
    table = tmp_path / "todo.csv"
    lines = ["id,path"] + [f"{i},{Path(f).relative_to(trained_run[0])}" for i, f in enumerate(files)] + ["9,"]
    table.write_text("\n".join(lines) + "\n")
    shutil.copytree(trained_run[0] / "val", tmp_path / "val")  # paths are relative to the table's folder
    summary = predict_checkpoint(checkpoint_of(trained_run), [table], out=tmp_path / "p.csv", top_k=1)
    expected = [str(tmp_path / Path(f).relative_to(trained_run[0])) for f in files]
    assert [r["path"] for r in summary["rows"]] == expected
    assert summary["skipped"] == [("todo.csv line 6", "empty path cell")]


def test_a_stream_is_predicted_split_by_split_with_its_image_indices(trained_run, tmp_path):
    pytest.importorskip("litdata")
    from tlkit.data.stream import optimize_data

    optimize_data(trained_run[0], tmp_path / "stream", num_workers=1, progress=False, short_side=64)
    summary = predict_checkpoint(checkpoint_of(trained_run), [tmp_path / "stream"], out=tmp_path / "p.csv", top_k=1,
                                 num_workers=2)
    paths = [r["path"] for r in summary["rows"]]
    train = sum(1 for p in paths if "/train/" in p)
    # Split by split; within a split, in the order LitData's loader workers read the chunks (the index names the item)
    assert all("/train/" in p for p in paths[:train]) and all("/val/" in p for p in paths[train:])
    assert sorted(paths, key=lambda p: (p.split("/")[-2] != "train", int(p.split("/")[-1]))) == \
        [f"{tmp_path / 'stream'}/train/{i}" for i in range(train)] + \
        [f"{tmp_path / 'stream'}/val/{i}" for i in range(len(paths) - train)]
    assert len(paths) == 36 and len((tmp_path / "p.csv").read_text().splitlines()) == 37


def test_summary_keeps_only_the_rows_asked_for_and_the_json_has_them_all(trained_run, tmp_path):
    files = _val_files(trained_run)
    summary = predict_checkpoint(checkpoint_of(trained_run), files, out=tmp_path / "p.csv",
                                 json_out=tmp_path / "p.json", return_rows=3, top_k=2)
    assert len(summary["rows"]) == 3 and summary["predicted"] == len(files)
    listed = json.loads((tmp_path / "p.json").read_text())
    assert [r["path"] for r in listed["predictions"]] == files and listed["skipped"] == []
    assert listed["predictions"][:3] == summary["rows"]


def test_the_cli_table_counts_every_row_but_prints_twenty(trained_run, tmp_path, capsys):
    files = _val_files(trained_run) + sorted(str(p) for p in (trained_run[0] / "train").rglob("*.png"))
    assert main(["predict", "--checkpoint", str(checkpoint_of(trained_run)), *files, "--out", str(tmp_path / "p.csv")]) == 0
    out = capsys.readouterr().out
    assert f"... and {len(files) - 20} more" in out and "images/s" in out


def test_rows_reach_the_disk_while_a_slow_run_is_still_going(trained_run, tmp_path, monkeypatch):
    from tlkit.infer import bulk
    from tlkit.infer import predict as predict_module

    monkeypatch.setattr(bulk, "FLUSH_SECONDS", 0.0)  # a slow model: fewer rows than a piece, but time is up
    on_disk: list[int] = []
    real_write = predict_module.PredictionsCsv.write

    def spy(self, rows):
        real_write(self, rows)
        (written,) = tmp_path.glob(".p.*")
        on_disk.append(len(written.read_text().splitlines()) - 1)

    monkeypatch.setattr(predict_module.PredictionsCsv, "write", spy)
    files = _val_files(trained_run)
    predict_checkpoint(checkpoint_of(trained_run), files, out=tmp_path / "p.csv", tta="none",
                       max_views_per_forward=4)  # batches of 4 images
    assert on_disk == list(range(4, len(files), 4)) + [len(files)]


@pytest.mark.slow
def test_two_devices_write_the_rows_of_one_device(trained_run, tmp_path):
    files = _val_files(trained_run)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    inputs = [*files[:3], str(broken), *files[3:]]
    predict_checkpoint(checkpoint_of(trained_run), inputs, out=tmp_path / "one.csv", json_out=tmp_path / "one.json")
    two = predict_checkpoint(checkpoint_of(trained_run), inputs, out=tmp_path / "two.csv",
                             json_out=tmp_path / "two.json", devices=2)
    one_rows, two_rows = (list(csv.reader((tmp_path / f"{n}.csv").open())) for n in ("one", "two"))
    assert [[r[0], *r[1::2]] for r in one_rows] == [[r[0], *r[1::2]] for r in two_rows]  # paths, labels: in order
    np.testing.assert_allclose(np.array([r[2::2] for r in one_rows[1:]], float),
                               np.array([r[2::2] for r in two_rows[1:]], float), atol=2e-6)  # other batches
    one_json, two_json = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert [r["path"] for r in two_json["predictions"]] == [r["path"] for r in one_json["predictions"]]
    assert two_json["skipped"] == one_json["skipped"] and [p for p, _ in two["skipped"]] == [str(broken)]


@pytest.mark.parametrize("thresholds", [None, {"x": 0.5, "y": 0.3}])
def test_streamed_json_is_the_document_written_at_once(tmp_path, thresholds):
    from tlkit.infer.predict import PredictionsJson, write_predictions_json

    rows = [{"path": "a.png", "labels": ["x"], "probs": [0.5], "probabilities": {"x": 0.5, "y": 0.25}},
            {"path": "b.png", "labels": [], "probs": []}]
    for predicted, skipped in ((rows, [("c.png", "unreadable")]), ([], [])):
        write_predictions_json(predicted, skipped, tmp_path / "whole.json", thresholds=thresholds)
        with PredictionsJson(tmp_path / "streamed.json", thresholds=thresholds) as streamed:
            for row in predicted:
                streamed.write([row])
            streamed.finish(skipped)
        assert (tmp_path / "streamed.json").read_text() == (tmp_path / "whole.json").read_text()


@pytest.mark.slow
def test_sigterm_mid_run_exits_143_and_keeps_the_rows_done(trained_run, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    marker, out = tmp_path / "first-piece-written", tmp_path / "predictions.csv"
    out.write_text("the user's previous predictions\n")
    hold = ("import pathlib, time, sys\nimport tlkit.run.checkpoints as c, tlkit.infer.predict as p\n"
            "c.PREDICT_CHUNK = 2\nreal = p.PredictionsCsv.write\n"
            f"def held(self, rows):\n    real(self, rows); pathlib.Path({str(marker)!r}).touch(); time.sleep(120)\n"
            "p.PredictionsCsv.write = held\nfrom tlkit.cli.main import main\nsys.exit(main(sys.argv[1:]))\n")
    command = [sys.executable, "-c", hold, "predict", "--checkpoint", str(checkpoint_of(trained_run)),
               str(trained_run[0] / "val"), "--out", str(out), "--overwrite"]
    process = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 143, err[-3000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("interrupted (SIGTERM)")
    assert out.read_text() == "the user's previous predictions\n"
    assert len((tmp_path / "predictions.csv.partial").read_text().splitlines()) == 1 + 2
