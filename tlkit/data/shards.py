"""Feature-cache shards on disk, and rows read from them in batches.

A cache entry grows by whole shards: each is one safetensors file holding three tensors, so one atomic rename
commits a shard's rows together with what identifies and checks them:

- `ids`: (n, 2) uint64, the 16-byte BLAKE2b digest of each row's identity (a file's path, size and mtime, or a
  stream's row id);
- `crc32`: (n,) int64, the CRC-32 of each row's bytes, checked before a row is trusted;
- `features`: (n, *row shape) float32 / float16, the rows themselves, stored last in the file.

Why safetensors per shard rather than a .npy per shard plus an index: one file per shard keeps "rows, identities and
checksums" a single atomic unit (no index that can disagree with its data after a crash), and the format stays the
one the cache always used. Rows are read with positioned reads (`os.preadv`) at the offsets the safetensors header
gives, not through a memory map: a mapped page that was read counts towards the process's resident memory until it
is unmapped, so one epoch over a memory-mapped 5 GB cache would end with 5 GB resident. Read this way, the rows
stay in the operating system's page cache (shared, reclaimable) and the process holds one batch at a time.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tlkit.errors import DataError

SHARD_FORMAT = "4"  # the cache format; shards of any other format (or none: tlkit <= 3) are never read
MAX_HEADER = 100 * 2**20  # safetensors' own limit on a header
_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "U64": np.uint64}
_READ_CHUNK = 8 * 2**20  # bytes per read while checking checksums


class ShardError(Exception):
    """A shard that cannot be used (unreadable, or without the current format's checksums); its rows are recomputed.
    `old` marks a file without the current format (written by an older tlkit, or damaged metadata)."""

    def __init__(self, message: str, *, old: bool = False):
        super().__init__(message)
        self.old = old


def identity_digests(identities: Iterable[str], count: int) -> np.ndarray:
    """(count,) 'S16' array: the 16-byte BLAKE2b digest of each identity (what shards store and lookups sort)."""
    return np.fromiter((hashlib.blake2b(i.encode(), digest_size=16).digest() for i in identities), dtype="S16",
                       count=count)


def row_crcs(rows: np.ndarray) -> np.ndarray:
    """CRC-32 of each row's bytes (any dtype), as int64."""
    flat = np.ascontiguousarray(rows).reshape(len(rows), -1).view(np.uint8)
    return np.fromiter((zlib.crc32(row) for row in flat), dtype=np.int64, count=len(flat))


def save_shard(name: str, rows: np.ndarray, digests: np.ndarray, key: str) -> None:
    """Write one shard to the file `name` (callers write to a temporary name and rename it)."""
    from safetensors.numpy import save_file

    rows = np.ascontiguousarray(rows)
    # safetensors lays tensors out by dtype (64-bit ones first), so `features` comes last in the file
    save_file({"ids": np.ascontiguousarray(digests).view(np.uint64).reshape(len(rows), 2),
               "crc32": row_crcs(rows), "features": rows}, name, metadata={"format": SHARD_FORMAT, "key": key})


@dataclass(frozen=True, eq=False)
class Shard:
    """The rows of one shard file: where they start, how many, their shape and dtype (no file handle: picklable)."""

    path: str
    offset: int
    rows: int
    row_shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def row_bytes(self) -> int:
        return math.prod(self.row_shape) * self.dtype.itemsize

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Rows `rows` (ascending, unique) as an array (len(rows), *row_shape); consecutive rows in one read."""
        out = np.empty((len(rows), *self.row_shape), dtype=self.dtype)
        if not len(rows):
            return out
        flat = out.reshape(len(rows), -1).view(np.uint8)
        size = self.row_bytes
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for start, end in zip([0, *breaks.tolist()], [*breaks.tolist(), len(rows)]):
                buffer = memoryview(flat[start:end].reshape(-1))
                at, done = self.offset + int(rows[start]) * size, 0
                while done < len(buffer):  # a read may return less than asked
                    got = os.preadv(fd, [buffer[done:]], at + done)
                    if got <= 0:
                        raise DataError(f"feature cache shard {self.path} is shorter than its header says (truncated "
                                      "while in use?); delete the cache folder and run again.")
                    done += got
        finally:
            os.close(fd)
        return out


@dataclass(frozen=True)
class ShardIndex:
    """A shard and the identity digest and checksum of each of its rows."""

    shard: Shard
    digests: np.ndarray  # (rows,) 'S16'
    crcs: np.ndarray  # (rows,) int64


def open_shard(path: str | Path, key: str) -> ShardIndex:
    """Read a shard's header, identities and checksums (not its rows). Raises ShardError when the file is not a
    readable shard of the current format for `key`."""
    path = str(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            (length,) = struct.unpack("<Q", f.read(8))
            if not 2 <= length <= min(MAX_HEADER, size - 8):
                raise ShardError("not a safetensors file")
            header = json.loads(f.read(length))
            meta = header.pop("__metadata__", None) or {}
            if meta.get("format") != SHARD_FORMAT or not {"ids", "crc32", "features"} <= set(header):
                raise ShardError("no valid row checksums (damaged, or written by an older tlkit)", old=True)
            if meta.get("key") != key:
                raise ShardError("written for another cache key")
            base = 8 + length
            arrays = {}
            for name in ("ids", "crc32"):
                arrays[name] = _read_tensor(f, header[name], base, size)
            shard = _shard(path, header["features"], base, size)
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        raise ShardError(f"unreadable ({str(exc)[:120]})") from exc
    ids, crcs = arrays["ids"], arrays["crc32"]
    if ids.shape != (shard.rows, 2) or ids.dtype != np.uint64 or crcs.shape != (shard.rows,):
        raise ShardError("no valid row checksums (damaged, or written by an older tlkit)", old=True)
    return ShardIndex(shard, np.ascontiguousarray(ids).view("S16").reshape(shard.rows), crcs.astype(np.int64))


def _entry_dtype(info: dict) -> np.dtype:
    if info.get("dtype") not in _SAFETENSORS_DTYPES:
        raise ValueError(f"unsupported dtype {info.get('dtype')}")
    return np.dtype(_SAFETENSORS_DTYPES[info["dtype"]])


def _span(info: dict, base: int, size: int, dtype: np.dtype) -> tuple[int, int]:
    start, end = (int(v) for v in info["data_offsets"])
    if not 0 <= start <= end or base + end > size or end - start != math.prod(info["shape"]) * dtype.itemsize:
        raise ValueError("tensor offsets do not match the file")
    return start, end


def _read_tensor(f, info: dict, base: int, size: int) -> np.ndarray:
    dtype = _entry_dtype(info)
    start, end = _span(info, base, size, dtype)
    f.seek(base + start)
    return np.frombuffer(f.read(end - start), dtype=dtype).reshape(info["shape"])


def _shard(path: str, info: dict, base: int, size: int) -> Shard:
    dtype = _entry_dtype(info)
    start, _ = _span(info, base, size, dtype)
    shape = [int(v) for v in info["shape"]]
    if not shape:
        raise ValueError("features tensor has no row dimension")
    return Shard(path, base + start, shape[0], tuple(shape[1:]), dtype)


def verify_rows(shard: Shard, rows: np.ndarray, crcs: np.ndarray) -> np.ndarray:
    """Which of `rows` (ascending, unique) match their checksum `crcs`, read a few MB at a time."""
    ok = np.empty(len(rows), dtype=bool)
    step = max(1, _READ_CHUNK // max(1, shard.row_bytes))
    for start in range(0, len(rows), step):
        block = shard.read(rows[start: start + step])
        ok[start: start + step] = row_crcs(block) == crcs[start: start + step]
    return ok


class MemoryBlock:
    """Rows kept in memory (a cache that is off, or cannot be written): the same read() as a Shard."""

    def __init__(self, rows: np.ndarray):
        self.rows = rows

    def read(self, rows: np.ndarray) -> np.ndarray:
        return self.rows[rows]


NAN_SOURCE = -1  # a row whose image failed to decode: served as NaN, never stored


class Rows:
    """N rows of one shape and dtype in a caller's order, each from a shard, an in-memory block, or missing (NaN):
    read in batches (`read`, `chunks`), never held whole unless asked (`tensor`)."""

    def __init__(self, sources: Sequence[Shard | MemoryBlock], source: np.ndarray, offset: np.ndarray,
                 row_shape: tuple[int, ...], dtype: torch.dtype, columns: np.ndarray | None = None):
        self.sources, self.source, self.offset = list(sources), source, offset
        self.row_shape, self.dtype, self.columns = tuple(row_shape), dtype, columns

    def __len__(self) -> int:
        return len(self.source)

    @property
    def shape(self) -> tuple[int, ...]:
        width = (len(self.columns),) if self.columns is not None else self.row_shape[-1:]
        return (len(self), *self.row_shape[:-1], *width)

    @property
    def finite(self) -> torch.Tensor:
        """(N,) bool: the row exists (its image decoded)."""
        return torch.from_numpy(self.source != NAN_SOURCE)

    def read(self, index: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
        """Rows `index` (any order, repeats allowed) as one tensor."""
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        out = np.full((len(index), *self.row_shape), np.nan, dtype=_numpy_dtype(self.dtype))
        source, offset = self.source[index], self.offset[index]
        for s in np.unique(source[source != NAN_SOURCE]).tolist():
            where = np.flatnonzero(source == s)
            rows, inverse = np.unique(offset[where], return_inverse=True)
            out[where] = self.sources[s].read(rows)[inverse]
        if self.columns is not None:
            out = out[..., self.columns]
        return torch.from_numpy(out)

    def chunks(self, rows: int) -> Iterator[torch.Tensor]:
        """The rows in order, `rows` at a time."""
        for start in range(0, len(self), rows):
            yield self.read(np.arange(start, min(start + rows, len(self))))

    def tensor(self) -> torch.Tensor:
        """Every row at once: for small data (tests, an audit); training reads batches."""
        return self.read(np.arange(len(self)))

    def subset(self, index: Sequence[int] | np.ndarray | torch.Tensor) -> Rows:
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        return Rows(self.sources, self.source[index], self.offset[index], self.row_shape, self.dtype, self.columns)

    def select_columns(self, columns: Sequence[int] | np.ndarray | torch.Tensor) -> Rows:
        """The same rows with only `columns` of their last dimension."""
        columns = np.asarray(columns, dtype=np.int64).reshape(-1)
        if self.columns is not None:
            columns = self.columns[columns]
        return Rows(self.sources, self.source, self.offset, self.row_shape, self.dtype, columns)

    @classmethod
    def of_tensor(cls, rows: torch.Tensor) -> Rows:
        """Rows held in memory (a tensor given directly); non-finite rows count as missing."""
        rows = rows.detach().cpu().contiguous()
        finite = rows.reshape(len(rows), math.prod(rows.shape[1:])).isfinite().all(dim=1).numpy()  # 0 rows too
        array = rows.numpy() if rows.dtype != torch.bfloat16 else rows.float().numpy()
        source = np.where(finite, 0, NAN_SOURCE).astype(np.int32)
        return cls([MemoryBlock(array)], source, np.arange(len(rows), dtype=np.int64), tuple(rows.shape[1:]),
                   rows.dtype if rows.dtype != torch.bfloat16 else torch.float32)


def _numpy_dtype(dtype: torch.dtype) -> np.dtype:
    return torch.empty((), dtype=dtype).numpy().dtype


class FeatureViews:
    """K views of the same N images (K, N, *row shape), each a Rows: what a cached dataset and the closed-form probe
    read, in batches. `tensor()` materialises all of them (small data only)."""

    def __init__(self, views: Sequence[Rows]):
        self.views = list(views)
        if not self.views or len({len(v) for v in self.views}) != 1:
            raise ValueError("FeatureViews needs at least one view, all of the same length.")

    @classmethod
    def of(cls, views: FeatureViews | Sequence[Rows] | torch.Tensor, row_ndim: int) -> FeatureViews:
        """From FeatureViews, a list of Rows, or a tensor (K, N, *row) / (N, *row) of `row_ndim`-dim rows."""
        if isinstance(views, FeatureViews):
            return views
        if isinstance(views, torch.Tensor):
            views = views[None] if views.ndim == row_ndim + 1 else views
            return cls([Rows.of_tensor(v) for v in views])
        return cls(views)

    def __len__(self) -> int:
        return len(self.views)

    def __getitem__(self, k: int) -> Rows:
        return self.views[k]

    def __iter__(self) -> Iterator[Rows]:
        return iter(self.views)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.views), *self.views[0].shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def dtype(self) -> torch.dtype:
        return self.views[0].dtype

    @property
    def finite(self) -> torch.Tensor:
        """(N,) bool: every view of the image exists."""
        out = self.views[0].finite
        for view in self.views[1:]:
            out = out & view.finite
        return out

    def numel(self) -> int:
        return math.prod(self.shape)

    def subset(self, index: Sequence[int] | np.ndarray | torch.Tensor) -> FeatureViews:
        return FeatureViews([v.subset(index) for v in self.views])

    def select_columns(self, columns: Sequence[int] | np.ndarray | torch.Tensor) -> FeatureViews:
        return FeatureViews([v.select_columns(columns) for v in self.views])

    def tensor(self) -> torch.Tensor:
        return torch.stack([v.tensor() for v in self.views])
