"""Checkpoints load without unpickling arbitrary objects."""

from __future__ import annotations

import pickle

import pytest
import torch

from tlkit.errors import CheckpointError
from tlkit.infer.checkpoint import load_checkpoint


class _Exploit:
    """Unpickling this would create a file: the classic pickle code-execution payload, made harmless."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


def test_checkpoint_that_would_execute_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    with path.open("wb") as f:
        pickle.dump({"tlkit": {}, "state_dict": {}, "payload": _Exploit(marker)}, f)
    with pytest.raises(CheckpointError, match="Refusing to load"):
        load_checkpoint(path)
    assert not marker.exists()


def test_non_tlkit_checkpoint_is_refused_with_the_reason(tmp_path):
    path = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="not a tlkit checkpoint"):
        load_checkpoint(path)


def test_missing_or_truncated_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "none.ckpt")
    path = tmp_path / "cut.ckpt"
    torch.save({"tlkit": {}, "state_dict": {"w": torch.zeros(1000)}}, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
