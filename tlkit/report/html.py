"""The report page: CSS inline, one <section data-section=...> per topic, per run; several runs get a comparison
first (final numbers side by side, overlaid curves, the recipe values that differ)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from tlkit.report import figures, sections
from tlkit.report.runs import Run, final_numbers
from tlkit.report.sections import esc, flatten, fmt, table

GENERATOR = '<meta name="generator" content="tlkit report">'  # marks a file this command may replace

RUN_SECTIONS: tuple[tuple[str, str, Callable[[Run], str]], ...] = (
    ("summary", "Summary", sections.summary),
    ("curves", "Loss and accuracy", sections.curves),
    ("lr", "Learning rate per group", sections.learning_rate),
    ("evaluation", "Evaluation: confusion matrix, per-class precision and recall", sections.evaluation),
    ("top-losses", "Highest-loss images", sections.top_losses),
    ("data-warnings", "Data warnings and skipped files", sections.data_warnings),
    ("augmentation", "Augmentation preview", sections.augmentation),
    ("diagnosis", "Diagnosis", sections.diagnosis),
    ("provenance", "Provenance", sections.provenance),
    ("recipe", "Recipe", sections.recipe),
)
COMPARE_SECTIONS: tuple[tuple[str, str, Callable[[list[Run]], str]], ...] = (
    ("compare-numbers", "Final numbers side by side", lambda runs: compare_numbers(runs)),
    ("compare-curves", "Curves overlaid", lambda runs: compare_curves(runs)),
    ("recipe-diff", "Recipe differences", lambda runs: recipe_diff(runs)),
)

CSS = """
:root { --ink: #1d1d1f; --muted: #5f6368; --line: #d9dce1; --accent: #1a4f9c; --soft: #f4f6f9; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink);
       background: #fff; }
header.top { background: var(--accent); color: #fff; padding: 18px 32px 12px; }
header.top h1 { margin: 0 0 4px; font-size: 24px; }
header.top p { margin: 0; opacity: .85; font-size: 13px; overflow-wrap: anywhere; }
nav { position: sticky; top: 0; z-index: 1; background: var(--soft); border-bottom: 1px solid var(--line);
      padding: 6px 32px; font-size: 13px; }
nav a { color: var(--accent); margin-right: 14px; text-decoration: none; white-space: nowrap; }
main { max-width: 1240px; margin: 0 auto; padding: 8px 32px 48px; }
section { border-bottom: 1px solid var(--line); padding: 6px 0 18px; }
article.run { border-top: 4px solid var(--accent); margin-top: 28px; }
h2 { font-size: 20px; margin: 20px 0 8px; } h3 { font-size: 17px; margin: 16px 0 8px; }
h4 { font-size: 15px; margin: 12px 0 6px; } h5 { font-size: 14px; margin: 12px 0 4px; }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 14px; }
th, td { border: 1px solid var(--line); padding: 3px 10px; text-align: left; vertical-align: top; }
thead th { background: var(--soft); }
table.numbers td:not(:first-child) { text-align: right; font-variant-numeric: tabular-nums; }
table.kv td:first-child, table.numbers td:first-child { color: var(--muted); white-space: nowrap; }
table.kv td:last-child, table.paths td { overflow-wrap: anywhere; font-family: ui-monospace, monospace;
                                         font-size: 13px; }
table.confusion td { text-align: center; min-width: 44px; font-variant-numeric: tabular-nums; }
table.confusion th { max-width: 160px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.scroll { overflow-x: auto; max-width: 100%; }
.cols { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
.cols > div { min-width: 0; max-width: 100%; }
figure { margin: 8px 0 12px; } figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: 13px; overflow-wrap: anywhere; }
pre { background: var(--soft); border: 1px solid var(--line); padding: 10px 12px; overflow-x: auto;
      font-size: 13px; line-height: 1.4; }
pre.recipe { column-width: 270px; column-gap: 28px; column-rule: 1px solid var(--line); }
figure.gallery img { max-width: min(100%, 820px); }
code { font-family: ui-monospace, monospace; font-size: 13px; }
details { margin: 6px 0 10px; } summary { cursor: pointer; font-weight: 600; color: var(--accent); }
.hint { color: var(--muted); font-style: italic; }
.verdict { font-size: 16px; padding: 8px 12px; border-left: 5px solid var(--muted); background: var(--soft); }
.verdict-well-fit { border-color: #1b7e3c; } .verdict-still-improving { border-color: #1a4f9c; }
.verdict-overfitting, .verdict-underfitting { border-color: #c77c00; } .verdict-diverged { border-color: #b00020; }
table.diff td { font-family: ui-monospace, monospace; font-size: 13px; overflow-wrap: anywhere; }
table.diff td:first-child { color: var(--muted); }
"""


def render_page(runs: list[Run], *, now: datetime | None = None) -> str:
    """The whole self-contained page for one run or several."""
    stamp = (now or datetime.now()).strftime("%Y-%m-%d %H:%M")
    single = len(runs) == 1
    title = f"tlkit report: {runs[0].label}" if single else f"tlkit report: {len(runs)} runs"
    where = ", ".join(str(run.path) for run in runs)
    body = _run_body(runs[0], 0, level=2) if single else _comparison(runs) + "".join(
        _run_article(run, i) for i, run in enumerate(runs))
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">{GENERATOR}'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
            f'<header class="top"><h1>{esc(title)}</h1><p>{esc(where)} · written {stamp}</p></header>'
            f"{_nav(runs)}<main>{body}</main></body></html>\n")


def _nav(runs: list[Run]) -> str:
    if len(runs) == 1:
        links = [(f"r0-{key}", title.split(":")[0]) for key, title, _ in RUN_SECTIONS]
    else:
        links = [(key, title) for key, title, _ in COMPARE_SECTIONS]
        links += [(f"run-{i}", run.label) for i, run in enumerate(runs)]
    return "<nav>" + "".join(f'<a href="#{esc(anchor)}">{esc(text)}</a>' for anchor, text in links) + "</nav>"


def _section(key: str, anchor: str, title: str, body: str, level: int) -> str:
    return (f'<section id="{esc(anchor)}" data-section="{esc(key)}"><h{level}>{esc(title)}</h{level}>'
            f"{body}</section>")


def _run_body(run: Run, index: int, *, level: int) -> str:
    return "".join(_section(key, f"r{index}-{key}", title, build(run), level) for key, title, build in RUN_SECTIONS)


def _run_article(run: Run, index: int) -> str:
    return (f'<article class="run" id="run-{index}" data-run="{esc(run.label)}"><h2>{esc(run.label)}</h2>'
            f'<p class="hint">{esc(run.path)}</p>{_run_body(run, index, level=3)}</article>')


def _comparison(runs: list[Run]) -> str:
    return "".join(_section(key, key, title, build(runs), 2) for key, title, build in COMPARE_SECTIONS)


def compare_numbers(runs: list[Run]) -> str:
    """One row per figure, one column per run."""
    numbers = [final_numbers(run) for run in runs]
    rows = [[name, *(fmt(name, n.get(name)) for n in numbers)] for name in numbers[0]]
    return table(["", *(run.label for run in runs)], rows, cls="numbers")


def compare_curves(runs: list[Run]) -> str:
    parts = []
    curves, lr = figures.curves_figure(runs), figures.lr_figure(runs)
    if curves:
        parts.append(sections.figure(curves, "loss and accuracy of every run",
                                     "one colour per run; train dashed, validation solid"))
    if lr:
        parts.append(sections.figure(lr, "learning rate per group of every run"))
    return "".join(parts) or sections.hint("None of the runs has a complete epoch in metrics.csv.")


def recipe_diff(runs: list[Run]) -> str:
    """Every recipe value that is not the same in all runs (dotted keys), side by side."""
    flat = [flatten(run.recipe) for run in runs]
    keys = sorted({k for f in flat for k in f}, key=lambda k: _key_order(k, runs))
    differing = [k for k in keys if len({f.get(k, "(absent)") for f in flat}) > 1]
    if not differing:
        return "<p>The recipes are identical.</p>"
    rows = [[key, *(f.get(key, "(absent)") for f in flat)] for key in differing]
    return table(["recipe value", *(run.label for run in runs)], rows, cls="diff")


def _key_order(key: str, runs: list[Run]) -> tuple[int, str]:
    """Recipe order (the section order of the first recipe that has the key's section), then name."""
    top = key.split(".", 1)[0]
    for run in runs:
        if top in run.recipe:
            return list(run.recipe).index(top), key
    return len(runs[0].recipe), key
