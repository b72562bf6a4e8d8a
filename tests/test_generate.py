"""Generated datasets: the mosaic generator builds a multi-label set from a single-label folder, splits kept apart."""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import write_colour_classes
from PIL import Image

from tlkit.cli.main import main
from tlkit.data.generate import _tile, write_mosaics
from tlkit.data.scan import scan_folder
from tlkit.data.table import scan_table
from tlkit.errors import DataError


def _tiles_by_split(source: Path, cell: int) -> dict[str, dict[bytes, str]]:
    """Every source image's tile (as the generator cuts it) -> its class, per split."""
    scan = scan_folder(source)
    return {split: {np.asarray(_tile(p, cell)).tobytes(): scan.classes[y] for p, y in samples}
            for split, samples in (("train", scan.train), ("val", scan.val))}


def _cells(path: Path, cell: int, grid: int = 2) -> list[bytes]:
    pixels = np.asarray(Image.open(path).convert("RGB"))
    return [pixels[r * cell:(r + 1) * cell, c * cell:(c + 1) * cell].tobytes() for r in range(grid) for c in range(grid)]


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "labels.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_mosaics_use_only_their_splits_images_and_are_labelled_with_the_classes_shown(tmp_path):
    source = write_colour_classes(tmp_path / "colours", per_class=12)
    out = write_mosaics(source, tmp_path / "mosaics", counts={"train": 20, "val": 8}, seed=3)
    tiles = _tiles_by_split(source, 36)
    rows = _rows(out)
    assert Counter(r["split"] for r in rows) == {"train": 20, "val": 8}
    for row in rows:
        cells = _cells(out / row["path"], 36)
        assert all(c in tiles[row["split"]] for c in cells), f"{row['path']} uses another split's image"
        assert row["label"] == ";".join(sorted({tiles[row["split"]][c] for c in cells}))


def test_label_counts_vary_within_the_bounds(tmp_path):
    source = write_colour_classes(tmp_path / "colours", per_class=12)
    out = write_mosaics(source, tmp_path / "m", counts={"train": 60, "val": 4}, min_classes=2, max_classes=3)
    sizes = Counter(len(r["label"].split(";")) for r in _rows(out))
    assert set(sizes) == {2, 3}


def test_mosaics_are_seeded_and_read_as_a_multi_label_table(tmp_path):
    source = write_colour_classes(tmp_path / "colours", per_class=12)
    a = write_mosaics(source, tmp_path / "a", counts={"train": 10, "val": 4}, seed=1)
    b = write_mosaics(source, tmp_path / "b", counts={"train": 10, "val": 4}, seed=1)
    c = write_mosaics(source, tmp_path / "c", counts={"train": 10, "val": 4}, seed=2)

    def digest(root: Path) -> str:
        return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(root.rglob("*.png")))).hexdigest()

    assert digest(a) == digest(b) != digest(c)
    assert (a / "labels.csv").read_text() == (b / "labels.csv").read_text()
    scan = scan_table(a)
    assert scan.multi_label and scan.classes == ["blue", "green", "red"]
    assert (len(scan.train), len(scan.val)) == (10, 4)


def test_default_counts_use_each_source_image_about_once(tmp_path):
    source = write_colour_classes(tmp_path / "colours", per_class=12)  # 24 train, 12 val
    rows = _rows(write_mosaics(source, tmp_path / "m"))
    assert Counter(r["split"] for r in rows) == {"train": 6, "val": 3}


def test_refuses_a_non_empty_output_and_bad_settings(tmp_path):
    source = write_colour_classes(tmp_path / "colours", per_class=6)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="already exists"):
        write_mosaics(source, tmp_path / "taken")
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    with pytest.raises(DataError, match="min_classes <= max_classes"):
        write_mosaics(source, tmp_path / "x", min_classes=3, max_classes=2)
    assert not (tmp_path / "x").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind


def test_cli_generate_mosaic(tmp_path, capsys):
    source = write_colour_classes(tmp_path / "colours", per_class=6)
    out = tmp_path / "tags"
    assert main(["generate", "mosaic", "--from", str(source), "--out", str(out), "--train", "5", "--val", "3"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 8 mosaics" in printed and "data.source=csv" in printed
    assert len(list((out / "train").glob("*.png"))) == 5 and (out / "mosaic.json").is_file()
    assert main(["generate", "mosaic", "--from", str(source), "--out", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err


def test_generate_and_doctor_on_a_table_never_import_torch(tmp_path):
    import subprocess
    import sys

    source = write_colour_classes(tmp_path / "colours", per_class=6)
    code = (f"import sys; from tlkit.cli.main import main; "
            f"assert main(['generate', 'mosaic', '--from', {str(source)!r}, '--out', {str(tmp_path / 'm')!r}]) == 0; "
            f"assert main(['doctor', {str(tmp_path / 'm' / 'labels.csv')!r}, '--json', {str(tmp_path / 'r.json')!r}]) == 0; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False,
                            env={**__import__("os").environ, "PYTHONPATH": str(repo)})
    assert result.returncode == 0, result.stderr


def _tree_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_noisy_copy_moves_the_fraction_of_training_images_and_writes_the_truth_beside_it(tmp_path):
    from tlkit.data.generate import truth_path, write_noisy

    source = write_colour_classes(tmp_path / "colours", per_class=15)
    before = _tree_digest(source)
    out = write_noisy(source, tmp_path / "noisy", fraction=0.2, seed=3)
    assert _tree_digest(source) == before  # the source is only read
    truth = list(csv.DictReader(truth_path(out).open()))
    assert truth_path(out).parent == out.parent and not (out / truth_path(out).name).exists()
    train = [p for p in (out / "train").rglob("*.png")]
    assert len(truth) == round(0.2 * len(train)) == 6
    for row in truth:
        assert row["given"] != row["true"] and row["path"].startswith(f"train/{row['given']}/")
        assert (out / row["path"]).is_file()
    assert _tree_digest(out / "val") == _tree_digest(source / "val")  # val is copied as it is
    digests = sorted(_tree_digest(out / "train").values())
    assert digests == sorted(_tree_digest(source / "train").values())  # every training image once, none changed


def test_noisy_copy_is_seeded_and_refuses_to_overwrite(tmp_path):
    from tlkit.data.generate import truth_path, write_noisy

    source = write_colour_classes(tmp_path / "colours", per_class=15)
    a = write_noisy(source, tmp_path / "a", fraction=0.2, seed=1)
    b = write_noisy(source, tmp_path / "b", fraction=0.2, seed=1)
    assert truth_path(a).read_text() == truth_path(b).read_text()
    with pytest.raises(DataError, match="already exists"):
        write_noisy(source, a, fraction=0.2, seed=1)
    with pytest.raises(DataError, match="between 0 and 1"):
        write_noisy(source, tmp_path / "c", fraction=1.5)


def test_cli_generate_noisy(tmp_path, capsys):
    source = write_colour_classes(tmp_path / "colours", per_class=15)
    assert main(["generate", "noisy", "--from", str(source), "--out", str(tmp_path / "n"), "--fraction", "0.1",
                 "--seed", "0"]) == 0
    assert "3 training images moved" in capsys.readouterr().out
    assert (tmp_path / "n.truth.csv").is_file()
