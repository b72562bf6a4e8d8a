"""`tlkit report RUN_DIR [RUN_DIR ...]`: one self-contained HTML page per call (every image inline as a data: URI,
no script, nothing loaded from the network) with a run's curves, evaluation, data warnings, diagnosis, provenance and
recipe; several runs are compared side by side. Torch-free: it only reads what train / evaluate / preview wrote."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tlkit.errors import ReportError
from tlkit.io import atomic_write
from tlkit.report.html import GENERATOR, render_page
from tlkit.report.runs import Run, read_run

MULTI_RUN_DEFAULT = "tlkit-report.html"

__all__ = ["default_report_path", "read_run", "render_page", "write_report"]


def default_report_path(run_dirs: Sequence[str | Path]) -> Path:
    """<RUN_DIR>/report.html for one run, ./tlkit-report.html for several."""
    return Path(run_dirs[0]) / "report.html" if len(run_dirs) == 1 else Path(MULTI_RUN_DEFAULT)


def write_report(run_dirs: Sequence[str | Path], out: str | Path | None = None) -> Path:
    """Read every run, render the page and write it to `out` (default: default_report_path); returns the path.

    An existing file there is replaced only when it is an earlier tlkit report, so a typo in --out cannot destroy
    anything else.
    """
    if not run_dirs:
        raise ReportError("give at least one run directory: tlkit report runs/<recipe>/<timestamp>")
    runs = [read_run(path) for path in run_dirs]
    label_runs(runs)
    out = Path(out) if out is not None else default_report_path(run_dirs)
    check_target(out)
    return atomic_write(out, render_page(runs))


def check_target(out: Path) -> None:
    if out.is_dir():
        raise ReportError(f"--out {out} is a folder; give a file name such as {out / 'report.html'}.")
    if out.exists() and not is_report(out):
        raise ReportError(f"{out} exists and is not a tlkit report; choose another --out (only an earlier report "
                          "is replaced).")


def is_report(path: Path) -> bool:
    """True for a file this command wrote (its head carries the generator tag)."""
    try:
        with path.open("rb") as f:
            return GENERATOR.encode() in f.read(4096)
    except OSError:
        return False


def label_runs(runs: list[Run]) -> None:
    """Name each run by the shortest trailing part of its path that no other run shares (e.g. tiny/20260101-1200)."""
    parts = [run.path.resolve().parts for run in runs]
    for i, run in enumerate(runs):
        for depth in range(1, len(parts[i]) + 1):
            label = "/".join(parts[i][-depth:])
            if all(j == i or parts[j][-depth:] != parts[i][-depth:] for j in range(len(runs))):
                break
        run.label = label
