"""The reliability zoo (issue 15): mistakes a careless or hostile user makes, through the `tlkit` CLI.

Each case expects a non-zero exit (or the documented safe behaviour), one `error:` line naming the cause and what to
do, no traceback, and every file the user had still there, byte for byte (hashed before and after).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_recipe_dict, write_colour_classes, write_image
from PIL import Image

from tlkit.cli.main import main

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------------------------
# Helpers


def _hashes(*roots: Path) -> dict[str, str]:
    files = [p for root in roots for p in ([root] if root.is_file() else sorted(root.rglob("*"))) if p.is_file()]
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@contextmanager
def untouched(*roots: Path):
    """Every file under `roots` is still there with the same bytes after the block (new files are allowed)."""
    before = _hashes(*roots)
    yield
    after = _hashes(*roots)
    assert {k: after.get(k) for k in before} == before


def cli(argv: list[str], capsys) -> tuple[int, str]:
    """Run `tlkit ARGV` in this process: (exit code, stderr)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse refuses an argument
        code = exc.code
    return code, capsys.readouterr().err


def assert_one_error_line(code: int, err: str, *needles: str, expected: int | None = None) -> str:
    assert code != 0 if expected is None else code == expected, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:") or ": error: " in line]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def recipe_file(tmp_path) -> Path:
    root = write_colour_classes(tmp_path / "colours", per_class=6)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe_dict(root, backbone={"name": "test_resnet"}, trainer={"epochs": 1})))
    return path


# ---------------------------------------------------------------------------------------------------------------------
# 4. YAML alias bombs: refused at once


def _alias_bomb(levels: int = 9) -> str:
    lines = ["version: 1", "l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_recipe_is_refused_at_once(tmp_path, capsys):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_alias_bomb())
    started = time.perf_counter()
    with untouched(tmp_path):
        code, err = cli(["recipe", "show", bomb], capsys)
    assert time.perf_counter() - started < 5
    assert_one_error_line(code, err, "alias *l0", "line 3", "write the value out", expected=2)


def test_alias_in_a_set_value_is_refused(recipe_file, capsys):
    with untouched(recipe_file.parent):
        code, err = cli(["recipe", "show", recipe_file, "--set", "head.hidden=[&w 8, *w]"], capsys)
    assert_one_error_line(code, err, "--set", "alias *w", expected=2)


def test_alias_in_a_tta_argument_is_refused(tmp_path, capsys):
    code, err = cli(["predict", "--checkpoint", tmp_path / "x.ckpt", "--tta", "{policy: &p custom, crops: *p}",
                     tmp_path], capsys)
    assert_one_error_line(code, err, "--tta", "alias *p", expected=2)


# ---------------------------------------------------------------------------------------------------------------------
# 6. Bad checkpoints and exports: one CheckpointError line, nothing allocated from hostile metadata


def _real(trained_run) -> dict:
    return torch.load(trained_run[1] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def _edited(trained_run, edit) -> bytes:
    import io

    checkpoint = _real(trained_run)
    edit(checkpoint)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    return buffer.getvalue()


def _set_hparam(section: str, **values):
    def edit(checkpoint):
        hparams = checkpoint["hyper_parameters"]
        hparams[section] = {**hparams[section], **values} if isinstance(hparams[section], dict) else values
    return edit


def _wrong_shape(checkpoint):
    key = next(k for k in checkpoint["state_dict"] if k.startswith("head") and k.endswith("weight"))
    checkpoint["state_dict"][key] = torch.zeros(7, 3)


BAD_CHECKPOINTS = {
    # name: (bytes of the file from the trained run, words the error line must contain)
    "hello": (lambda run: b"hello", ["g.ckpt", "pass a .ckpt from a run's checkpoints/ folder"]),
    "garbage": (lambda run: np.random.default_rng(0).bytes(5000), ["Refusing to load", "g.ckpt"]),
    "truncated": (lambda run: (run[1] / "checkpoints" / "last.ckpt").read_bytes()[:3000], ["not a readable checkpoint"]),
    "wrong_shapes": (lambda run: _edited(run, _wrong_shape), ["weights do not fit", "size mismatch"]),
    "other_architecture": (lambda run: _edited(run, _set_hparam("backbone", name="test_efficientnet")),
                           ["weights do not fit"]),
    "unknown_architecture": (lambda run: _edited(run, _set_hparam("backbone", name="no_such_net")),
                             ["invalid metadata", "backbone.name"]),
    "missing_metadata": (lambda run: _edited(run, lambda c: c.pop("tlkit")), ["not a tlkit checkpoint"]),
    "one_class": (lambda run: _edited(run, lambda c: c["hyper_parameters"].update(classes=["blue"])),
                  ["at least 2 distinct classes"]),
    "old_format": (lambda run: _edited(run, lambda c: c["tlkit"].update(format=1)), ["older tlkit"]),
    "hostile_tta_scales": (lambda run: _edited(run, lambda c: c["hyper_parameters"].update(
        tta={"policy": "custom", "crops": "center", "flip": False, "scales": [12000], "aggregate": "mean_prob"})),
        ["invalid metadata", "less than or equal to 2048", "12000"]),
    "hostile_input_size": (lambda run: _edited(run, _set_hparam("backbone", input_size=100_000)),
                           ["invalid metadata", "backbone.input_size", "1024"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CHECKPOINTS))
def test_bad_checkpoint_is_one_line(case, trained_run, tmp_path, capsys):
    make, needles = BAD_CHECKPOINTS[case]
    bad = tmp_path / "g.ckpt"
    bad.write_bytes(make(trained_run))
    images = trained_run[0] / "val"
    with untouched(bad, images):
        code, err = cli(["predict", "--checkpoint", bad, images, "--out", tmp_path / "p.csv"], capsys)
    assert_one_error_line(code, err, *needles, expected=1)
    assert not (tmp_path / "p.csv").exists()


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory) -> Path:
    from tlkit.run import export_checkpoint

    out = tmp_path_factory.mktemp("export")
    export_checkpoint(trained_run[1] / "checkpoints" / "last.ckpt", out, onnx=False)
    return out / "model.safetensors"


@pytest.mark.parametrize("case", ["description_not_json", "wrong_shapes", "hostile_tta_scales"])
def test_bad_export_is_one_line(case, exported, trained_run, tmp_path, capsys):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(exported), framework="pt") as f:
        meta = json.loads(f.metadata()["tlkit"])
    state = load_file(str(exported))
    if case == "description_not_json":
        description, needles = "{not json", ["not readable JSON"]
    elif case == "wrong_shapes":
        state[next(k for k in state if k.startswith("head"))] = torch.zeros(5, 5)
        description, needles = json.dumps(meta), ["weights do not fit"]
    else:
        meta["tta"] = {"policy": "custom", "scales": [12000]}
        description, needles = json.dumps(meta), ["invalid metadata", "less than or equal to 2048"]
    bad = tmp_path / "model.safetensors"
    save_file(state, str(bad), metadata={"tlkit": description})
    with untouched(bad):
        code, err = cli(["predict", "--checkpoint", bad, trained_run[0] / "val", "--out", tmp_path / "p.csv"], capsys)
    assert_one_error_line(code, err, *needles, expected=1)


# ---------------------------------------------------------------------------------------------------------------------
# 7. Validation gaps: refused with the dotted path before any scan, build or write


BAD_VALUES = {
    "seed=-5": ["seed", "greater than or equal to 0"],
    "seed=4294967296": ["seed", "4294967295"],
    "optim.lr=.inf": ["optim.lr", "finite"],
    "optim.weight_decay=.nan": ["optim.weight_decay", "finite"],
    "optim.l1=inf": ["optim.l1", "finite"],
    "backbone.input_size=100000": ["backbone.input_size", "1024"],
    "head.hidden=[100000]": ["head.hidden.0", "8192"],
    "data.num_workers=1000": ["data.num_workers", "0-64"],
    "data.batch_size=1000000": ["data.batch_size", "4096"],
    "tta={policy: custom, scales: [12000]}": ["tta.scales.0", "2048"],
    "name=../../x": ["name", "plain folder name", "--run-dir"],
    "name=/tmp/elsewhere": ["name", "plain folder name"],
}


@pytest.mark.parametrize("override", sorted(BAD_VALUES))
def test_out_of_range_setting_is_refused_with_its_path(override, recipe_file, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.parent.iterdir())
    with untouched(tmp_path):
        code, err = cli(["train", "--recipe", recipe_file, "--set", override], capsys)
    assert code == 2 and "Traceback" not in err, err
    problem = [line for line in err.splitlines() if line.startswith("  - ")]
    assert len(problem) == 1, err
    assert problem[0].startswith(f"  - {BAD_VALUES[override][0]}:")
    assert all(needle in problem[0] for needle in BAD_VALUES[override]), problem[0]
    assert not (tmp_path / "runs").exists() and sorted(p.name for p in tmp_path.parent.iterdir()) == before


# ---------------------------------------------------------------------------------------------------------------------
# 8. Search storage: built and shown with SQLAlchemy's URL API


def test_default_search_database_stays_in_an_out_folder_with_url_characters(tmp_path):
    import optuna
    from sqlalchemy.engine import make_url

    from tlkit.tune.search import default_storage, open_study

    out = tmp_path / "we?ird#out %41"
    out.mkdir()
    url = default_storage(out)
    assert make_url(url).database == str(out / "search.db")
    open_study("s", url, sampler=optuna.samplers.RandomSampler(0))
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name] and (out / "search.db").is_file()


def test_storage_password_is_never_printed(recipe_file, tmp_path, capsys):
    url = "postgresql://bob:s3cret-pw@127.0.0.1:9/tlkit"  # no driver or no server: it cannot open
    with untouched(recipe_file.parent):
        code, err = cli(["search", recipe_file, "--storage", url, "--out", tmp_path / "search"], capsys)
    line = assert_one_error_line(code, err, "postgresql://bob:***@127.0.0.1:9/tlkit", expected=1)
    assert "s3cret" not in err + capsys.readouterr().out and "s3cret" not in line


def test_unparseable_storage_is_refused_before_anything_is_created(recipe_file, tmp_path, capsys):
    code, err = cli(["search", recipe_file, "--storage", "pw=s3cret", "--out", tmp_path / "search"], capsys)
    assert_one_error_line(code, err, "--storage: not a database URL", expected=1)
    assert "s3cret" not in err and not (tmp_path / "search").exists()


def test_search_summary_and_output_hide_the_password(recipe_file, tmp_path, capsys, monkeypatch):
    import optuna

    real_storage = optuna.storages.RDBStorage
    sqlite = f"sqlite:///{tmp_path / 'search.db'}"  # stands in for the PostgreSQL server the URL names

    class LocalStorage(real_storage):
        def __init__(self, url, **kwargs):
            super().__init__(sqlite, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", LocalStorage)
    out = tmp_path / "search"
    code = main(["search", str(recipe_file), "--storage", "postgresql://bob:s3cret@db.example/tlkit", "--out", str(out),
                 "--coarse-trials", "1", "--refine-trials", "0", "--coarse-epochs", "1", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads((out / "summary.json").read_text())["storage"] == "postgresql://bob:***@db.example/tlkit"
    assert "storage postgresql://bob:***@db.example/tlkit" in captured.out
    written = "".join(p.read_text(errors="replace") for p in out.rglob("*") if p.is_file() and p.suffix != ".png")
    assert "s3cret" not in captured.out + captured.err + written


# ---------------------------------------------------------------------------------------------------------------------
# 9. Messages: Ctrl-C, disk full, read-only, one pixel limit


def test_ctrl_c_during_training_names_the_run_and_the_resume_command(recipe_file, tmp_path):
    run_dir = tmp_path / "run"
    # SIGINT handled as in a terminal even when this test runs in the background (where it is inherited as ignored).
    start = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
             "from tlkit.cli.main import main; sys.exit(main(sys.argv[1:]))")
    command = [sys.executable, "-c", start,
               "train", "--recipe", str(recipe_file), "--run-dir", str(run_dir), "--set", "trainer.epochs=500",
               "--set", "cache.features=false", "--set", "trainer.progress_bar=false"]
    # Own session: the signal reaches this run and its workers as a terminal's Ctrl-C reaches its job.
    process = subprocess.Popen(command, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                               start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "checkpoints" / "last.ckpt").is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        with untouched(recipe_file.parent / "colours", recipe_file):
            os.killpg(process.pid, signal.SIGINT)
            _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted (Ctrl-C) during epoch") and f"tlkit train --resume {run_dir}" in last
    assert (run_dir / "recipe.yaml").is_file() and not (run_dir / "metrics.json").exists()


def _predict_args(trained_run, out: Path) -> list:
    return ["predict", "--checkpoint", trained_run[1] / "checkpoints" / "last.ckpt", trained_run[0] / "val",
            "--out", out, "--overwrite"]


@pytest.mark.parametrize("case", ["disk_full", "read_only"])
def test_unwritable_output_is_one_line_and_the_old_file_survives(case, trained_run, tmp_path, capsys, monkeypatch):
    import tlkit.io

    out = tmp_path / "predictions.csv"
    out.write_text("the user's previous predictions\n")
    if case == "disk_full":  # ENOSPC surfaces when the data reaches the disk
        def no_space(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(tlkit.io.os, "fsync", no_space)
        needles = [f"cannot write {out}: the disk is full; free some space, or write elsewhere (--out"]
    else:
        def read_only(*args, dir=None, **kwargs):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dir))
        monkeypatch.setattr(tlkit.io.tempfile, "mkstemp", read_only)
        needles = [str(tmp_path), "read-only", "write elsewhere"]
    with untouched(tmp_path):
        code, err = cli(_predict_args(trained_run, out), capsys)
    assert_one_error_line(code, err, *needles, expected=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.csv"]  # no temp file left behind


def test_one_pixel_limit_for_training_scan_and_predict(trained_run, tmp_path, capsys, monkeypatch):
    from tlkit.data.datamodule import scan_folder

    folder = tmp_path / "inbox"
    for name in ("blue", "red"):
        for i in range(2):
            write_image(folder / name / f"small{i}.png", (30, 30))
    big = write_image(folder / "red" / "big.png", (60, 60))  # 3600 px: over the limit below, under PIL's own 2x error
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)
    scan = scan_folder(folder, val_fraction=0.5)
    assert str(big) in dict(scan.skipped)
    with untouched(folder):
        code, err = cli(["predict", "--checkpoint", trained_run[1] / "checkpoints" / "last.ckpt", folder,
                         "--out", tmp_path / "p.csv"], capsys)
    assert code == 0 and "Traceback" not in err, err
    assert f"skipped {big}: unreadable: DecompressionBombError: 60x60 pixels is over the 2000 pixel limit" in err
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 1 + 4  # header + the four small images


def test_interrupt_message_says_whether_an_epoch_was_saved(tmp_path):
    from tlkit.cli.commands import interrupted_message

    assert "before training started" in interrupted_message(None)
    run = tmp_path / "my run"
    run.mkdir()
    assert "no epoch had completed yet" in interrupted_message(run, 0)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    message = interrupted_message(run, 3)
    assert "during epoch 4" in message and "last completed epoch" in message
    assert message.endswith(f"tlkit train --resume '{run}'")  # quoted: pasteable into a shell
