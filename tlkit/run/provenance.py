"""Where a run came from: library versions, git state, command line, recipe hash, data fingerprint, hardware.

Written to <run_dir>/provenance.json at the start of every run, so a result can be traced and repeated;
`tlkit train --reproduce RUN_DIR` re-runs a run from its directory and compares() says what differs now.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from tlkit.data.preflight import STREAM_LAYOUT
from tlkit.data.scan import FolderScan, relative_name
from tlkit.errors import TlkitError
from tlkit.io import file_sha256
from tlkit.redact import redact_credentials


class ProvenanceError(TlkitError, ValueError):
    """A run's provenance.json (or metrics.json) that cannot be read as tlkit wrote it."""


# The sections differences() reads and the type each must have (a run outside git has "git": null).
SECTIONS = {"versions": dict, "data": dict, "git": (dict, type(None)), "hardware": dict, "command": list}

LIBRARIES = ("tlkit", "torch", "torchvision", "timm", "lightning", "albumentations", "torchmetrics", "numpy",
             "pillow", "opencv-python-headless", "opencv-python")


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that shape a run (those not installed are left out)."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def git_state(folder: Path) -> dict | None:
    """Commit and dirty flag of the git work tree holding `folder` (the recipe's), or None outside one."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return None
    return {"commit": commit, "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


# The images' bytes are hashed up to these totals. Measured on a busy 2-core CPU, files in the page cache: the whole
# fingerprint of 398 hymenoptera JPEGs (47 MB) takes 0.2 s (0.02 s without the bytes), of 5,000 cifar10_small PNGs
# (4.6 MB) 0.7-1.2 s (0.2-0.4 s); roughly 0.1 ms per file and 4 ms per MB, so about 10 s at the limits, small next
# to training on that much data. Larger data is identified by relative path and size only.
CONTENT_HASH_MAX_FILES = 100_000
CONTENT_HASH_MAX_BYTES = 2 * 10**9
# The data fields differences() compares, the most telling first: a run recorded before content hashes has only
# `sha256` (relative path, size, mtime), and is compared with that.
DATA_KEYS = ("content_sha256", "paths_sizes_sha256", "sha256")


def data_files(scan: FolderScan) -> list[str]:
    """The files a run's data fingerprint covers: its train and val images, or for a LitData stream its manifest,
    index files and chunks (the stream's images live inside the chunks; no image file exists)."""
    if scan.layout == STREAM_LAYOUT:
        from tlkit.data.stream import stream_files

        return stream_files(scan.data_root())
    return list(dict.fromkeys(p for p, _ in (*scan.train, *scan.val)))


def _stat(path: str) -> tuple[int, int]:
    """(size, mtime in s) of a local file or an fsspec URL (s3://: mtime 0, a copy gets new ones anyway)."""
    if "://" in path:
        import fsspec

        fs, location = fsspec.core.url_to_fs(path)
        return int(fs.size(location)), 0
    stat = os.stat(path)
    return stat.st_size, int(stat.st_mtime)


def data_fingerprint(root: str | Path, paths: Iterable[str], labels: dict[str, object] | None = None) -> dict:
    """What identifies the images wherever the folder is: the file count, a hash of every image's path relative to
    `root` and size (`paths_sizes_sha256`), and the same with each file's SHA-256 (`content_sha256`) when the data is
    within CONTENT_HASH_MAX_FILES / _BYTES. Modification times are not compared (a copy gets new ones); `sha256`
    still includes them, for runs recorded before the content hash.

    `labels` (path -> class index or tuple of indices) adds `labels_sha256`: labels from a CSV or DataFrame can change
    while every image file stays the same."""
    paths = sorted(paths)
    relative = [os.path.relpath(path, root) for path in paths]
    names = [relative_name(path, root) for path in paths]  # the names views are seeded by, on every OS
    stats = [_stat(path) for path in paths]
    total = sum(size for size, _ in stats)
    legacy, sizes = hashlib.sha256(), hashlib.sha256()
    for rel, name, (size, mtime) in zip(relative, names, stats):
        legacy.update(f"{rel}\t{size}\t{mtime}\n".encode())
        sizes.update(f"{name}\t{size}\n".encode())
    fingerprint = {"files": len(paths), "bytes": total, "sha256": legacy.hexdigest(),
                   "paths_sizes_sha256": sizes.hexdigest()}
    if len(paths) <= CONTENT_HASH_MAX_FILES and total <= CONTENT_HASH_MAX_BYTES:
        content = hashlib.sha256()
        for path, name, (size, _) in zip(paths, names, stats):
            content.update(f"{name}\t{size}\t{file_sha256(path)}\n".encode())
        fingerprint["content_sha256"] = content.hexdigest()
    if labels is not None:
        label_digest = hashlib.sha256()
        for path in sorted(labels):
            label_digest.update(f"{os.path.relpath(path, root)}\t{labels[path]!r}\n".encode())
        fingerprint["labels_sha256"] = label_digest.hexdigest()
    return fingerprint


def hardware() -> dict:
    import torch

    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "platform": platform.platform()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def recipe_hash(recipe_text: str) -> str:
    return hashlib.sha256(recipe_text.encode()).hexdigest()[:16]


def collect(recipe_text: str, data_root: str | Path, data_paths: Iterable[str],
            labels: dict[str, object] | None = None) -> dict:
    """Everything above, for provenance.json (git: the repository of the current folder, the user's project)."""
    return {
        "versions": library_versions(),
        "git": git_state(Path.cwd()),
        "command": [Path(sys.argv[0]).name, *map(redact_credentials, sys.argv[1:])],  # --set may hold a password
        "python": sys.version.split()[0],
        "recipe_sha256": recipe_hash(recipe_text),
        "data": data_fingerprint(data_root, data_paths, labels),
        "hardware": hardware(),
    }


def differences(before: dict, now: dict) -> list[str]:
    """What differs between a run's provenance and now, one line each (versions, data, hardware, git commit)."""
    lines = []
    for name in sorted(set(before.get("versions", {})) | set(now.get("versions", {}))):
        a, b = before.get("versions", {}).get(name), now.get("versions", {}).get(name)
        if a != b:
            lines.append(f"{name}: {a or 'not installed'} then, {b or 'not installed'} now")
    a, b = before.get("data") or {}, now.get("data") or {}
    key = next((k for k in DATA_KEYS if k in a and k in b), "sha256")
    if (a.get("files"), a.get(key)) != (b.get("files"), b.get(key)):
        lines.append(f"data: {a.get('files')} files (fingerprint {str(a.get(key))[:12]}) then, "
                     f"{b.get('files')} files ({str(b.get(key))[:12]}) now")
    elif "labels_sha256" in a and "labels_sha256" in b and a["labels_sha256"] != b["labels_sha256"]:
        lines.append(f"labels: the same {b.get('files')} image files, but their labels changed (fingerprint "
                     f"{a['labels_sha256'][:12]} then, {b['labels_sha256'][:12]} now)")
    for label, section, key in (("git commit", "git", "commit"), ("cpu", "hardware", "cpu")):
        then, current = (before.get(section) or {}).get(key), (now.get(section) or {}).get(key)
        if then != current:
            lines.append(f"{label}: {then} then, {current} now")
    return lines


def read(run_dir: Path) -> dict | None:
    """RUN_DIR/provenance.json, checked (None when there is none); a ProvenanceError names what is damaged."""
    path = Path(run_dir) / "provenance.json"
    if not path.is_file():
        return None
    record = read_json(path, "provenance.json")
    for section, kind in SECTIONS.items():
        if section in record and not isinstance(record[section], kind):
            raise ProvenanceError(f"{path}: {section!r} is a {type(record[section]).__name__}, not the "
                                  f"{'object' if section != 'command' else 'list'} tlkit writes; the file was edited "
                                  "or damaged: restore it, or remove it to reproduce without the comparison.")
    bad = [f"{section}.{k}" for section in ("versions", "data", "git", "hardware")
           for k, v in (record.get(section) or {}).items() if isinstance(v, (dict, list))]
    if not isinstance((record.get("data") or {}).get("labels_sha256", ""), str):
        bad.append("data.labels_sha256")
    if bad:
        raise ProvenanceError(f"{path}: {bad[0]} is not the plain value tlkit writes; the file was edited or damaged: "
                              "restore it, or remove it to reproduce without the comparison.")
    return record


def read_json(path: Path, name: str) -> dict:
    """A JSON object that tlkit wrote into a run folder; a ProvenanceError when it is not one."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        cause = exc.strerror if isinstance(exc, OSError) else str(exc).split(":")[0]
        raise ProvenanceError(f"{path} is not readable JSON ({cause}); {name} was edited or damaged: restore it, or "
                              "remove it to reproduce without the comparison.") from None
    if not isinstance(record, dict):
        raise ProvenanceError(f"{path} holds a JSON {type(record).__name__}, not an object; {name} was edited or "
                              "damaged: restore it, or remove it to reproduce without the comparison.")
    return record
