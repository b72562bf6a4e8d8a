"""What `tlkit predict` reads: image files, folders (searched recursively), CSV tables (their `path` column) and tlkit
streams (`tlkit data optimize` output), as datasets of (key, name, views or None, reason or None) for a DataLoader.

The key orders the rows of the output: files and the paths of tables in the order given, then each stream's images
(split train, val, test; in the stream's order within a split). A file that fails to decode is reported with its
reason, never replaced by another one (the same decoding and messages as evaluate: tlkit.infer.inference).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tlkit.data.images import collect_inputs
from tlkit.infer.inference import DECODE_ERRORS, _ViewDataset
from tlkit.infer.tta import ViewMaker

TABLE_SUFFIXES = (".csv",)


@dataclass
class PredictInputs:
    """The files and streams to predict, and the inputs that gave nothing (path, reason)."""

    files: list[str] = field(default_factory=list)
    streams: list[str] = field(default_factory=list)  # stream folders (tlkit_stream.json inside)
    missing: list[tuple[str, str]] = field(default_factory=list)

    def stream_splits(self) -> list[tuple[str, str, int]]:
        """(stream folder, split, images) for every split of every stream, in order."""
        from tlkit.data.stream import SPLITS, read_manifest

        found = []
        for root in self.streams:
            splits = read_manifest(root)["splits"]
            found += [(root, split, int(splits[split]["images"])) for split in SPLITS if split in splits]
        return found

    def __len__(self) -> int:
        return len(self.files) + sum(n for _, _, n in self.stream_splits())


def collect_predict_inputs(inputs: Sequence[str | Path]) -> PredictInputs:
    """Files and folders as collect_inputs finds them; a .csv file is a table whose `path` column lists images
    (relative to its folder); a folder holding tlkit_stream.json is a stream. Each image is predicted once."""
    from tlkit.data.stream import MANIFEST
    from tlkit.data.table import iter_table_paths

    found = PredictInputs()
    plain: list[str | Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir() and (path / MANIFEST).is_file():
            found.streams.append(str(path))
        elif path.is_file() and path.suffix.lower() in TABLE_SUFFIXES:
            for listed, place in iter_table_paths(path):
                if listed is None:
                    found.missing.append((place, "empty path cell"))
                else:
                    plain.append(listed)
        else:
            plain.append(item)
    files, missing = collect_inputs(plain)
    found.files, found.missing = files, found.missing + missing
    return found


class FileViews(_ViewDataset):
    """Image files -> (key, path, views [k, 3, S, S] or None, reason or None)."""

    def __getitem__(self, index: int) -> tuple[int, str, torch.Tensor | None, str | None]:
        key, views, reason = super().__getitem__(index)
        return key, self.paths[key], views, reason


def collate(items: list[tuple[int, str, torch.Tensor | None, str | None]]) -> dict[str, Any]:
    """A batch: the decoded images' keys, names and stacked views; the others as (key, name, reason)."""
    ok = [(key, name, views) for key, name, views, _ in items if views is not None]
    return {"keys": [key for key, _, _ in ok], "names": [name for _, name, _ in ok],
            "views": torch.stack([views for _, _, views in ok]) if ok else None,
            "failed": [(key, name, reason) for key, name, views, reason in items if views is None]}


def stream_views(root: str, split: str, make_views: ViewMaker, offset: int):
    """One split of a stream as a LitData StreamingDataset of predict items (LitData shards it across processes and
    loader workers itself); keys start at `offset`, names are <stream>/<split>/<index>."""
    return _stream_class()(f"{root}/{split}", make_views=make_views, offset=offset, name=f"{root}/{split}")


def _stream_class():
    """StreamViews, defined on first use (LitData is an optional install) and reachable by pickle as a module
    attribute (a spawned device process or loader worker unpickles it by name)."""
    if "StreamViews" in globals():
        return globals()["StreamViews"]
    from tlkit.data.stream import litdata_module

    class StreamViews(litdata_module().StreamingDataset):
        def __init__(self, input_dir: str, *, make_views: ViewMaker, offset: int, name: str):
            super().__init__(input_dir, shuffle=False, drop_last=False)
            self.make_views, self.offset, self.name = make_views, offset, name

        def __getitem__(self, index: Any) -> tuple[int, str, torch.Tensor | None, str | None]:
            from PIL import Image

            sample = super().__getitem__(index)
            key, name = self.offset + int(sample["index"]), f"{self.name}/{int(sample['index'])}"
            try:
                image = Image.open(io.BytesIO(sample["image"])).convert("RGB")
            except DECODE_ERRORS as exc:
                return key, name, None, f"unreadable: {type(exc).__name__}"
            import numpy as np

            return key, name, self.make_views(np.asarray(image)), None

    StreamViews.__qualname__ = "StreamViews"
    StreamViews.__module__ = __name__
    globals()["StreamViews"] = StreamViews
    return StreamViews


def __getattr__(name: str) -> Any:  # PEP 562: pickle looks StreamViews up here in a fresh process
    if name == "StreamViews":
        return _stream_class()
    raise AttributeError(name)
