"""The data zoo (issue 26): hostile or careless images, tables, feature caches and prediction inputs.

Each case expects the documented safe behaviour: a skipped file with its reason while the rest goes on, or one
`error:` line naming the cause and the fix, a non-zero exit, no traceback, and every file the user had unchanged.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_recipe_dict, write_colour_classes, write_image
from PIL import Image
from test_reliability import assert_one_error_line, cli, untouched

from tlkit.errors import CheckpointError, DataError

REPO = Path(__file__).resolve().parents[1]


def _checkpoint(trained_run) -> Path:
    return trained_run[1] / "checkpoints" / "last.ckpt"


def _strip(path: Path, width: int, height: int) -> Path:
    """A tiny PNG with an extreme aspect ratio (1 x 60000 px flat grey: 199 bytes): under the pixel limit, a resize
    bomb."""
    Image.new("L", (width, height), 128).save(path)
    return path


def _good_images(trained_run, n: int = 2) -> list[str]:
    return sorted(str(p) for p in (trained_run[0] / "val").rglob("*.png"))[:n]


# ---------------------------------------------------------------------------------------------------------------------
# 3. Resize bombs through the aspect ratio: skipped with the reason, the rest of the batch kept


def test_resize_bomb_is_skipped_by_tlkit_predict_and_the_batch_kept(trained_run, tmp_path, capsys):
    bomb = _strip(tmp_path / "strip.png", 1, 60000)
    assert bomb.stat().st_size < 10_000
    out = tmp_path / "predictions.csv"
    with untouched(bomb):
        code = cli(["predict", "--checkpoint", _checkpoint(trained_run), bomb, *_good_images(trained_run),
                    "--out", out, "--json", tmp_path / "p.json"], capsys)[0]
    assert code == 0
    assert len(out.read_text().splitlines()) == 3  # header + the two good images
    skipped = json.loads((tmp_path / "p.json").read_text())["skipped"]
    assert [s["path"] for s in skipped] == [str(bomb)] and "aspect ratio over 100:1" in skipped[0]["reason"]


def test_resize_bomb_is_skipped_by_predictor_on_request_and_named_otherwise(trained_run, tmp_path):
    from tlkit.infer.predictor import Predictor

    predictor = Predictor.from_checkpoint(_checkpoint(trained_run), tta="none")
    bomb = _strip(tmp_path / "strip.png", 60000, 1)
    strip = np.zeros((1, 60000, 3), dtype=np.uint8)  # the same bomb in memory
    good = _good_images(trained_run)
    results = predictor.predict([good[0], str(bomb), strip, good[1]], on_bad="skip")
    assert [r.skipped is None for r in results] == [True, False, False, True]
    assert results[1].label is None and np.isnan(results[1].probabilities).all()
    assert "aspect ratio over 100:1" in results[1].skipped and results[0].label in predictor.classes
    with pytest.raises(DataError, match=r"strip.png: 60000x1 pixels: aspect ratio over 100:1.*on_bad='skip'"):
        predictor.predict([good[0], str(bomb)])


def test_a_resize_never_produces_more_than_its_pixel_bound():
    from tlkit.data.preprocessing import MAX_RESIZE_PIXELS, ImageGeometryError, resize

    with pytest.raises(ImageGeometryError, match="over the 89478485 pixel bound"):
        resize(np.zeros((2, 100, 3), dtype=np.uint8), 2048, 102400, "bilinear")
    assert MAX_RESIZE_PIXELS == Image.MAX_IMAGE_PIXELS


# ---------------------------------------------------------------------------------------------------------------------
# 10. Predictor edge cases: empty images, float images, a damaged export


def test_predictor_refuses_a_0x0_image_in_one_line(trained_run):
    from tlkit.infer.predictor import Predictor

    predictor = Predictor.from_checkpoint(_checkpoint(trained_run), tta="none")
    with pytest.raises(DataError, match=r"image 0 \(ndarray 0x0x3\): 0x0 pixels: an empty image"):
        predictor.predict(np.zeros((0, 0, 3), dtype=np.uint8))
    with pytest.raises(DataError, match="0x0 pixels"):
        predictor.predict(Image.new("RGB", (0, 0)))


def test_predictor_reads_float_images_in_0_1_like_their_uint8_twin(trained_run):
    from tlkit.infer.predictor import Predictor

    predictor = Predictor.from_checkpoint(_checkpoint(trained_run), tta="none")
    rgb = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    as_float = predictor.predict(rgb.astype(np.float32) / 255).probabilities
    np.testing.assert_array_equal(as_float, predictor.predict(rgb).probabilities)
    with pytest.raises(ValueError, match=r"got float64 with values 0..255\. Convert 0-255 values with np.clip"):
        predictor.predict(rgb.astype(np.float64))


@pytest.fixture(scope="module")
def bundle(trained_run, tmp_path_factory) -> Path:
    """An export (ONNX + the standalone bundle) of the shared tiny run, tta none."""
    from tlkit.run import export_checkpoint

    out = tmp_path_factory.mktemp("bundle")
    export_checkpoint(_checkpoint(trained_run), out, images=_good_images(trained_run), tta="none")
    return out


def _edited_bundle(bundle: Path, tmp_path: Path, edit) -> Path:
    copy = tmp_path / "export"
    shutil.copytree(bundle, copy)
    meta = json.loads((copy / "model.json").read_text())
    edit(meta)
    (copy / "model.json").write_text(json.dumps(meta))
    return copy


def _set_pre(**values):
    return lambda meta: meta["preprocessing"].update(values)


def _run_bundle(folder: Path, *args) -> subprocess.CompletedProcess:
    """The bundle's predict.py in an isolated Python (-I: tlkit is not importable from the checkout)."""
    argv = [sys.executable, "-I", str(folder / "predict.py"), *map(str, args)]
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)


DAMAGED_MODEL_JSON = {
    "negative_size": (_set_pre(input_size=-5), "input_size -5 is not in 1..2048"),
    "zero_size": (_set_pre(input_size=0), "input_size 0 is not in 1..2048"),
    "huge_size": (_set_pre(input_size=10**9), "input_size 1000000000 is not in 1..2048"),
    "unknown_interpolation": (_set_pre(interpolation="lanczos9"), "interpolation 'lanczos9' is not one of"),
    "nan_mean": (_set_pre(mean=[float("nan"), 0.5, 0.5]), "mean [nan, 0.5, 0.5] is not 3 finite numbers"),
    "short_mean": (_set_pre(mean=[0.5, 0.5]), "mean [0.5, 0.5] is not 3 finite numbers"),
    "missing_onnx": (lambda meta: meta["files"].update(onnx="gone.onnx"), "gone.onnx does not exist"),
    "missing_key": (lambda meta: meta.pop("preprocessing"), "missing key 'preprocessing'"),
    "wrong_class_count": (lambda meta: meta.update(classes=["a", "b"]), "states classes 2 but model.onnx has 3"),
}


@pytest.mark.parametrize("case", DAMAGED_MODEL_JSON)
def test_bundle_with_damaged_model_json_gives_one_line_and_blames_no_image(bundle, trained_run, tmp_path, case):
    edit, needle = DAMAGED_MODEL_JSON[case]
    folder = _edited_bundle(bundle, tmp_path, edit)
    done = _run_bundle(folder, *_good_images(trained_run))
    assert_one_error_line(done.returncode, done.stderr, "model.json" if case != "missing_onnx" else "", needle,
                          expected=1)
    assert "skipped" not in done.stderr and done.stdout == ""


def test_bundle_skips_a_resize_bomb_and_predicts_the_rest(bundle, trained_run, tmp_path):
    bomb = _strip(tmp_path / "strip.png", 1, 60000)
    done = _run_bundle(bundle, bomb, *_good_images(trained_run))
    assert done.returncode == 0, done.stderr
    assert f"skipped {bomb}: 1x60000 pixels: aspect ratio over 100:1" in done.stderr
    assert len(done.stdout.splitlines()) == 2


def test_bundle_csv_is_not_overwritten_without_overwrite(bundle, trained_run, tmp_path):
    mine = tmp_path / "mine.csv"
    mine.write_text("my own,work\n")
    with untouched(mine):
        done = _run_bundle(bundle, *_good_images(trained_run), "--csv", mine)
    assert_one_error_line(done.returncode, done.stderr, "mine.csv already exists; pass --overwrite", expected=1)
    done = _run_bundle(bundle, *_good_images(trained_run), "--csv", mine, "--overwrite")
    assert done.returncode == 0 and mine.read_text().startswith("path,label_1")


@pytest.mark.parametrize("case", ["short_mean", "wrong_class_count", "nan_mean"])
def test_predictor_from_export_with_wrong_mean_or_class_count_is_one_error(bundle, tmp_path, case):
    from tlkit.infer.predictor import Predictor

    edit, needle = DAMAGED_MODEL_JSON[case]
    folder = _edited_bundle(bundle, tmp_path, edit)
    with pytest.raises(CheckpointError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        Predictor.from_export(folder)


def test_resize_bomb_in_a_training_folder_is_skipped_at_scan(tmp_path):
    from tlkit.data.scan import scan_folder

    root = write_colour_classes(tmp_path / "data", per_class=4)
    bomb = _strip(root / "train" / "red" / "strip.png", 50000, 2)
    scan = scan_folder(root)
    reasons = dict(scan.skipped)
    assert reasons[str(bomb)].startswith("50000x2 pixels: aspect ratio over 100:1, refused")
    assert str(bomb) not in [p for p, _ in scan.train + scan.val]


# ---------------------------------------------------------------------------------------------------------------------
# 8. Huge or mostly-missing tables: refused with a count, bounded reading, a bounded number of log lines


def _colour_table(tmp_path: Path, extra_rows: str = "") -> Path:
    """The colour classes as one folder (36 images) + labels.csv listing them, then `extra_rows` (CSV text)."""
    root = write_colour_classes(tmp_path / "data", split=False)
    rows = "".join(f"{p.relative_to(root).as_posix()},{p.parent.name}\n" for p in sorted(root.rglob("*.png")))
    (root / "labels.csv").write_text("path,label\n" + rows + extra_rows)
    return root


def _missing_rows(n: int) -> str:
    return "".join(f"gone/img_{i:07d}.png,red\n" for i in range(n))


def _recipe(tmp_path: Path, root: Path, **data) -> Path:
    path = tmp_path / "tiny.yaml"
    recipe = tiny_recipe_dict(root, backbone={"name": "test_resnet"}, trainer={"epochs": 1},
                              data={"source": "csv", **data})
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_table_of_mostly_missing_files_is_refused_with_the_count(tmp_path, capsys, monkeypatch):
    root = _colour_table(tmp_path, _missing_rows(60_000))  # 36 real images, 60,000 missing
    monkeypatch.chdir(tmp_path)
    started = time.perf_counter()
    with untouched(root):
        code, err = cli(["train", "--recipe", _recipe(tmp_path, root)], capsys)
    seconds = time.perf_counter() - started
    assert_one_error_line(code, err, "60,000 of the 60,036 images listed in", "line 38: 'gone/img_0000000.png'",
                          "more than 50% missing", expected=1)
    assert len(err.splitlines()) < 5 and not (tmp_path / "runs").exists()
    assert seconds < 60, seconds  # linear: 1 M rows take ~25 s on a busy 2-core machine (scan only)


def test_a_few_missing_files_are_summarised_not_listed_one_per_line(tmp_path, caplog):
    from tlkit.data.table import scan_table

    root = _colour_table(tmp_path, _missing_rows(25))
    with caplog.at_level("WARNING", logger="tlkit.data.table"):
        scan = scan_table(root)
    assert len(scan.skipped) == 25 and len(scan.train) + len(scan.val) == 36
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 11 and lines[-1] == "skipped 15 more file(s): 15 missing"


def test_table_over_the_row_limit_stops_reading_with_a_clear_error(tmp_path, monkeypatch):
    from tlkit.data import table

    monkeypatch.setattr(table, "MAX_TABLE_ROWS", 1000)  # the mechanism; the real bound is 2,000,000 rows
    root = _colour_table(tmp_path, _missing_rows(5000))
    with pytest.raises(DataError, match=r"has more than 1,000 rows \(stopped reading at line 1002\); tlkit reads a "
                                        r"table into memory: split it"):
        table.scan_table(root)
    assert table.MAX_TABLE_ROWS < 10**7 // 4  # 10 M rows would need ~5 GB: refused well before


# ---------------------------------------------------------------------------------------------------------------------
# 9. A FIFO (or another non-regular file) listed in a table is skipped, never opened


def _with_timeout(seconds: float, call):
    result: list = []
    worker = threading.Thread(target=lambda: result.append(call()), daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"still running after {seconds} s: the FIFO was opened"
    return result[0]


def test_fifo_listed_in_a_table_is_skipped_with_a_reason(tmp_path):
    from tlkit.data.table import scan_table

    root = _colour_table(tmp_path, "pipe.png,red\nsub,blue\n")
    os.mkfifo(root / "pipe.png")
    (root / "sub").mkdir()
    scan = _with_timeout(30, lambda: scan_table(root))
    reasons = dict(scan.skipped)
    assert reasons[str(root / "pipe.png")] == "not a regular file (a FIFO, socket or device); never opened"
    assert reasons[str(root / "sub")] == "a folder, not an image file"
    assert len(scan.train) + len(scan.val) == 36


def test_fifo_is_reported_by_doctor_and_skipped_by_predict(tmp_path, trained_run, capsys):
    from tlkit.data.doctor import diagnose_table

    root = _colour_table(tmp_path, "pipe.png,red\n")
    os.mkfifo(root / "pipe.png")
    report = _with_timeout(30, lambda: diagnose_table(root / "labels.csv"))
    assert report["cases"]["not_regular_file"]["items"] == [str(root / "pipe.png")]
    out = tmp_path / "p.csv"
    code = _with_timeout(60, lambda: cli(["predict", "--checkpoint", _checkpoint(trained_run), root / "pipe.png",
                                          *_good_images(trained_run), "--out", out], capsys)[0])
    assert code == 0 and len(out.read_text().splitlines()) == 3


# ---------------------------------------------------------------------------------------------------------------------
# Weak spots


def test_data_csv_outside_the_data_root_is_refused_unread(tmp_path, capsys, monkeypatch):
    root = _colour_table(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:the first line of a private file\n")
    monkeypatch.chdir(tmp_path)
    for csv_path in (str(secret), "../secret.txt"):
        recipe = _recipe(tmp_path, root, csv=csv_path)
        with untouched(tmp_path):
            code, err = cli(["train", "--recipe", recipe], capsys)
        assert_one_error_line(code, err, "is outside data.root", "put the label table inside", expected=1)
        assert "root:x" not in err


def _table(tmp_path: Path, header: str, rows: list[str], n_images: int = 8) -> Path:
    """root/0..n.png and labels.csv with `header` and `rows` (text lines; {i} is the image number)."""
    root = tmp_path / "t"
    for i in range(n_images):
        write_image(root / f"{i}.png", seed=i)
    (root / "labels.csv").write_text(header + "\n" + "".join(r + "\n" for r in rows))
    return root


KAGGLE_HEADERS = {
    "image_name,tags": (("Is 'image_name' the image path and 'tags' the label? Set data.columns: {path: "
                         "image_name, label: tags}"), {"path": "image_name", "label": "tags"}),
    "id,label": ("Is 'id' the image path? Set data.columns: {path: id} (or rename the header; tlkit doctor: "
                 "--columns path=id)", {"path": "id"}),
}


def test_the_doctor_gives_the_column_mapping_as_its_own_flag_and_the_flag_works(tmp_path, capsys):
    from tlkit.cli.main import main

    root = _table(tmp_path, "image_name,tags", [f"{i}.png,{'ab'[i % 2]}" for i in range(8)])
    assert main(["doctor", str(root / "labels.csv"), "--json", str(tmp_path / "r.json")]) != 0
    err = capsys.readouterr().err
    assert "tlkit doctor: --columns path=image_name,label=tags)" in err
    assert main(["doctor", str(root / "labels.csv"), "--json", str(tmp_path / "r.json"),
                 "--columns", "path=image_name,label=tags"]) == 0


@pytest.mark.parametrize("header", KAGGLE_HEADERS)
def test_kaggle_style_header_gets_the_mapping_and_the_mapping_works(tmp_path, header):
    from tlkit.data.table import scan_table

    needle, mapping = KAGGLE_HEADERS[header]
    root = _table(tmp_path, header, [f"{i}.png,{'ab'[i % 2]}" for i in range(8)])
    with pytest.raises(DataError, match="no 'path' column") as refused:
        scan_table(root)
    assert needle in str(refused.value)
    assert scan_table(root, columns=mapping).classes == ["a", "b"]


def test_path_tags_header_reads_tags_as_the_label_column_and_says_so(tmp_path, caplog):
    from tlkit.data.table import scan_table

    root = _table(tmp_path, "path,tags", [f"{i}.png,{'ab'[i % 2]}" for i in range(8)])
    with caplog.at_level("WARNING", logger="tlkit.data.table"):
        scan = scan_table(root)
    assert scan.classes == ["a", "b"] and not scan.multi_label  # not one 0/1 class column named 'tags'
    assert "took column 'tags' as the label column" in caplog.text


def test_a_separator_in_a_few_labels_says_the_table_became_multi_label(tmp_path, caplog):
    from tlkit.data.doctor import diagnose_table
    from tlkit.data.table import scan_table

    rows = [f"{i}.png,{'ab'[i % 2]}" for i in range(7)] + ["7.png,a;b"]
    root = _table(tmp_path, "path,label", rows)
    with caplog.at_level("WARNING", logger="tlkit.data.table"):
        assert scan_table(root).multi_label
    assert "read as multi-label because 1 row(s) hold several labels (labels.csv line 9: 'a;b')" in caplog.text
    assert diagnose_table(root / "labels.csv")["cases"]["multi_label_guessed"]["count"] == 1


def test_classes_differing_in_case_are_named_by_scan_and_doctor(tmp_path, caplog):
    from tlkit.data.doctor import diagnose, diagnose_table
    from tlkit.data.scan import scan_folder
    from tlkit.data.table import scan_table

    root = _table(tmp_path, "path,label", [f"{i}.png,{['bees', 'Bees', 'ants'][i % 3]}" for i in range(8)])
    with caplog.at_level("WARNING"):
        scan_table(root)
    assert "class names differ only in case (Bees == bees)" in caplog.text
    assert diagnose_table(root / "labels.csv")["cases"]["classes_differing_in_case"]["items"] == ["Bees == bees"]
    folders = tmp_path / "folders"
    for i, name in enumerate(["Bees", "bees", "Bees", "bees", "ants", "ants"]):
        write_image(folders / name / f"{i}.png", seed=i)
    caplog.clear()
    with caplog.at_level("WARNING"):
        scan_folder(folders)
    assert "class folders Bees == bees differ only in case" in caplog.text
    assert diagnose(folders)["cases"]["classes_differing_in_case"]["items"] == ["Bees == bees"]


def test_a_class_on_one_row_is_named_with_its_line(tmp_path):
    from tlkit.data.table import scan_table

    root = _table(tmp_path, "path,label", [f"{i}.png,{'ab'[i % 2]}" for i in range(7)] + ["7.png,wasp"])
    with pytest.raises(DataError, match=r"1 class\(es\) in .*labels.csv have a single training image: 'wasp' "
                                        r"\(labels.csv line 9\)"):
        scan_table(root)


@pytest.mark.parametrize("label", ["=HYPERLINK(\"http://x\")", "+1+1", "-cmd", "@SUM(A1)"])
def test_formula_labels_are_neutralised_in_csv_outputs(label):
    import io

    from tlkit.io import csv_safe, write_csv_rows

    f = io.StringIO()
    write_csv_rows(f, [["path", "label_1", "prob_1"], ["x.png", label, "0.5"], ["y.png", "-0.25", "0.5"]])
    lines = f.getvalue().splitlines()
    assert lines[1].split(",", 1)[1].lstrip('"').startswith("'") and csv_safe(label) == "'" + label
    assert lines[2] == "y.png,-0.25,0.5"  # numbers stay numbers


def test_formula_class_names_are_neutralised_in_predictions_and_per_class_csv(tmp_path):
    from tlkit.infer.evaluate import _write_csv
    from tlkit.infer.predict import write_predictions_csv

    rows = [{"path": "x.png", "labels": ["=cmd|' /C calc'!A0", "@bees"], "probs": [0.75, 0.25]}]
    out = write_predictions_csv(rows, tmp_path / "predictions.csv", 2)
    assert out.read_text().splitlines()[1] == "x.png,'=cmd|' /C calc'!A0,0.750000,'@bees,0.250000"
    _write_csv(tmp_path / "per_class.csv", ["class", "recall"], [["+ants", 0.5], ["-1", -0.5]])
    assert (tmp_path / "per_class.csv").read_text().splitlines()[1:] == ["'+ants,0.5", "-1,-0.5"]


def test_tlkit_predict_writes_rows_as_pieces_finish_and_logs_progress(trained_run, tmp_path, monkeypatch, caplog):
    from tlkit.infer import predict as predict_module
    from tlkit.run import checkpoints

    monkeypatch.setattr(checkpoints, "PREDICT_CHUNK", 2)
    files = _good_images(trained_run, 5)
    out = tmp_path / "predictions.csv"
    seen: list[int] = []
    real_write = predict_module.PredictionsCsv.write

    def spy(self, rows):  # what is on disk after each piece (in the file that replaces `out` at the end)
        real_write(self, rows)
        (written,) = tmp_path.glob(".predictions.*")
        seen.append(len(written.read_text().splitlines()) - 1)

    monkeypatch.setattr(predict_module.PredictionsCsv, "write", spy)
    with caplog.at_level("INFO", logger="tlkit.infer.bulk"):
        summary = checkpoints.predict_checkpoint(_checkpoint(trained_run), files, out=out, tta="none")
    assert seen == [2, 4, 5] and summary["predicted"] == 5 and len(out.read_text().splitlines()) == 6
    assert "predicted 4 of 5 images (0 skipped)" in caplog.text


# ---------------------------------------------------------------------------------------------------------------------
# 7. Feature-cache data is checked, not trusted: damaged rows recomputed, never blamed on images; unwritable cache


def _cache_files(tmp_path: Path, n: int = 6) -> list[str]:
    return [str(write_image(tmp_path / "img" / f"{i}.png", seed=i)) for i in range(n)]


class _Compute:
    """Deterministic 'features' (row i of path p: a value from p's name) that count what was computed."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, paths: list[str]) -> torch.Tensor:
        self.calls.append(list(paths))
        return torch.stack([torch.linspace(0, 1, 16) * (1 + int(Path(p).stem)) for p in paths])


def _entry_file(cache_dir: Path) -> Path:
    (path,) = cache_dir.rglob("*.safetensors")  # one shard
    return path


def _damage(path: Path, how: str) -> None:
    """Change bytes of the stored tensor (the end of a safetensors file is its data), keeping the file readable."""
    data = bytearray(path.read_bytes())
    if how == "bit_flip":
        data[-70] ^= 0x10
    elif how == "zeroed":
        data[-200:-72] = bytes(128)
    else:  # NaN: a float32 quiet NaN over one value of row 2
        data[-4 * 16 * 4 + 8: -4 * 16 * 4 + 12] = b"\x00\x00\xc0\x7f"
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["bit_flip", "zeroed", "nan"])
def test_damaged_feature_rows_are_recomputed_with_one_warning(tmp_path, caplog, how):
    from tlkit.data.cache import FeatureCache

    files, compute = _cache_files(tmp_path), _Compute()
    fresh = FeatureCache(tmp_path / "cache").features({"k": 1}, files, compute)
    _damage(_entry_file(tmp_path / "cache"), how)
    with caplog.at_level("WARNING", logger="tlkit.data.cache"):
        served = FeatureCache(tmp_path / "cache").features({"k": 1}, files, compute)
    assert torch.equal(served, fresh)  # never the damaged bytes
    assert 1 <= len(compute.calls[1]) < len(files)  # only the damaged rows were recomputed
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "fail their checksum (damaged on disk); recomputing them" in warnings[0]
    assert "repair or remove" not in caplog.text
    again = FeatureCache(tmp_path / "cache").features({"k": 1}, files, compute)  # the entry was rewritten whole
    assert torch.equal(again, fresh) and len(compute.calls) == 2


def test_feature_entry_without_checksums_is_recomputed_not_trusted(tmp_path, caplog):
    from safetensors.torch import save_file

    from tlkit.data.cache import FeatureCache, file_identity

    files, compute = _cache_files(tmp_path, 2), _Compute()
    FeatureCache(tmp_path / "cache").features({"k": 1}, files, compute)
    entry = _entry_file(tmp_path / "cache")
    save_file({"features": torch.zeros(2, 16)}, str(entry),  # an older tlkit's entry, or forged metadata
              metadata={"identities": json.dumps([file_identity(f) for f in files])})
    with caplog.at_level("WARNING", logger="tlkit.data.cache"):
        served = FeatureCache(tmp_path / "cache").features({"k": 1}, files, compute)
    assert served.abs().sum() > 0 and "no valid row checksums" in caplog.text


@pytest.mark.parametrize(("errno_code", "strerror"), [(errno.ENOSPC, "No space left on device"),
                                                      (errno.EROFS, "Read-only file system")])
def test_unwritable_feature_cache_is_one_warning_and_work_goes_on(tmp_path, caplog, monkeypatch, errno_code,
                                                                  strerror):
    from tlkit.data import cache as cache_module

    def refuse(path, save):
        raise OSError(errno_code, strerror, str(path))

    monkeypatch.setattr(cache_module, "atomic_save", refuse)
    files, compute = _cache_files(tmp_path), _Compute()
    store = cache_module.FeatureCache(tmp_path / "cache")
    with caplog.at_level("WARNING", logger="tlkit.data.cache"):
        first = store.features({"k": 1}, files, compute)
        store.features({"k": 2}, files, compute)  # saving is off now: no second attempt, no second warning
    assert torch.equal(first, _Compute()(files))
    (warning,) = [r.getMessage() for r in caplog.records]
    assert f"({strerror}); going on without saving them" in warning and "set cache.disk: false" in warning


def test_training_on_a_full_cache_disk_finishes_with_one_warning(tmp_path, capsys, monkeypatch, caplog):
    from tlkit.data import cache as cache_module

    def full(path, save):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(cache_module, "atomic_save", full)
    root = write_colour_classes(tmp_path / "data", per_class=6)
    recipe = tmp_path / "probe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe_dict(root, backbone={"name": "test_resnet"}, trainer={"epochs": 1},
                                                      cache={"dir": str(tmp_path / "cache")})))
    monkeypatch.chdir(tmp_path)
    with caplog.at_level("WARNING", logger="tlkit.data.cache"):
        code, err = cli(["train", "--recipe", recipe], capsys)
    assert code == 0 and "Traceback" not in err, err
    assert len([r for r in caplog.records if "cannot save features" in r.getMessage()]) == 1


def test_backbone_nan_features_are_not_blamed_on_the_images(tmp_path):
    from tlkit.data.augment import build_eval_transform
    from tlkit.data.cache import extract
    from tlkit.data.preprocessing import Preprocessing

    class Broken(torch.nn.Module):  # weights gone NaN: every decoded image gives NaN features
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.tensor(float("nan")))

        def forward(self, x):
            return x.mean(dim=(2, 3)) * self.weight

    pre = Preprocessing(input_size=16, crop_pct=1.0, interpolation="bilinear", mean=(0.5,) * 3, std=(0.5,) * 3)
    with pytest.raises(DataError, match="NaN/inf features for images that decoded; its weights .* not the images"):
        extract(Broken(), _cache_files(tmp_path, 2), build_eval_transform(pre), seeds=None, batch_size=2,
                num_workers=0, desc="features", channels_last=False, on_bad="skip", progress=False)


def test_tlkit_predict_stopped_midway_keeps_its_rows_and_the_old_file(trained_run, tmp_path, monkeypatch):
    from tlkit.infer import predict as predict_module
    from tlkit.run import checkpoints

    monkeypatch.setattr(checkpoints, "PREDICT_CHUNK", 2)
    out = tmp_path / "predictions.csv"
    out.write_text("the user's previous predictions\n")
    real_write = predict_module.PredictionsCsv.write
    pieces = []

    def stop_after_two_pieces(self, rows):
        real_write(self, rows)
        pieces.append(len(rows))
        if len(pieces) == 2:
            raise KeyboardInterrupt  # what Ctrl-C and SIGTERM raise

    monkeypatch.setattr(predict_module.PredictionsCsv, "write", stop_after_two_pieces)
    with untouched(out), pytest.raises(KeyboardInterrupt):
        checkpoints.predict_checkpoint(_checkpoint(trained_run), _good_images(trained_run, 5), out=out, tta="none",
                                       overwrite=True)
    assert len((tmp_path / "predictions.csv.partial").read_text().splitlines()) == 1 + 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.csv", "predictions.csv.partial"]
