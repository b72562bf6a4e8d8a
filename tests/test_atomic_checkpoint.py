"""Checkpoint writes are atomic: a failure (or kill) while saving leaves the previous checkpoint intact."""

from __future__ import annotations

import errno
import os

import pytest
import torch

import tlkit.model.faults as faults
from tlkit.model.faults import AtomicCheckpointIO


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    before = path.read_bytes()

    def dies_halfway(obj, f):  # what a SIGKILL mid-write leaves: a partial file
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(faults.torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    assert path.read_bytes() == before
    assert torch.load(path, weights_only=True)["step"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temp file left behind


def test_fit_writes_checkpoints_through_the_atomic_writer(tmp_path, monkeypatch):
    from conftest import tiny_recipe_dict, write_colour_classes

    from tlkit.recipe import validate_recipe
    from tlkit.run import fit

    saved = []
    original = AtomicCheckpointIO.save_checkpoint
    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint",
                        lambda self, ckpt, path, storage_options=None: (saved.append(path), original(self, ckpt, path)))
    root = write_colour_classes(tmp_path / "colours")
    fit(validate_recipe(tiny_recipe_dict(root, strategy={"kind": "finetune"}, trainer={"epochs": 1})),
        run_dir=tmp_path / "run")
    assert {p.split("/")[-1] for p in map(str, saved)} >= {"best.ckpt", "last.ckpt"}


def _writer_failing_after_4k(monkeypatch, failure: BaseException) -> None:
    """Checkpoint writes go to a file whose write() raises `failure` once 4 KB are written (torch's zip writer calls
    write() from C++ and reports its exceptions as "unexpected pos" RuntimeErrors)."""
    from contextlib import contextmanager

    class FailingAfter4k:
        written = 0

        def write(self, data):
            self.written += len(memoryview(data).cast("B"))
            if self.written > 4096:
                raise failure
            return len(memoryview(data).cast("B"))

        def flush(self):
            pass

    @contextmanager
    def failing(path, mode):
        yield FailingAfter4k()

    monkeypatch.setattr(faults, "atomic_open", failing)


def test_checkpoint_write_on_a_full_disk_reports_the_disk_not_torch_internals(tmp_path, monkeypatch):
    from tlkit.cli.main import describe_os_error

    _writer_failing_after_4k(monkeypatch, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    with pytest.raises(OSError) as raised:
        AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(100_000)}, tmp_path / "last.ckpt")
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(tmp_path / "last.ckpt")
    assert describe_os_error(raised.value) == (f"cannot write {tmp_path / 'last.ckpt'}: the disk is full; free some "
                                               "space, or write elsewhere (--out, --run-dir, output.runs_dir).")


def test_an_interrupt_inside_the_zip_writer_stays_an_interrupt(tmp_path, monkeypatch):
    # A SIGTERM landing inside torch's zip writer once turned `tlkit train`'s exit 143 into a traceback.
    _writer_failing_after_4k(monkeypatch, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(100_000)}, tmp_path / "last.ckpt")
