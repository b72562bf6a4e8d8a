"""audit.html: one self-contained page (style and thumbnails inlined, nothing loaded from the network) with each
finding's image beside its given label, the suggested one and its nearest neighbours."""

from __future__ import annotations

import base64
import io
from datetime import datetime

import numpy as np

from tlkit.audit.adapter import REPORT_CSS, decode, esc, table

THUMB = 96  # thumbnail side in pixels: enough to judge a label, small enough for hundreds inlined
MAX_SHOWN = 60  # findings pictured per section; findings.csv lists them all
GENERATOR = '<meta name="generator" content="tlkit audit">'

CSS = REPORT_CSS + """
.finding { display: flex; gap: 14px; align-items: flex-start; padding: 8px 0; border-top: 1px solid var(--line); }
.tile { width: 112px; font-size: 12px; overflow-wrap: anywhere; }
.tile img { width: 96px; height: 96px; object-fit: contain; background: var(--soft); border: 1px solid var(--line); }
.tile.main img { border: 2px solid var(--accent); }
.labels { min-width: 170px; font-size: 14px; }
.given { color: #b00020; } .suggested { color: #1b7e3c; font-weight: 600; }
.neighbours { display: flex; gap: 8px; border-left: 1px dashed var(--line); padding-left: 12px; }
"""

SECTIONS = (
    ("label_issue", "Label issues", ("The given label is probably wrong: cleanlab's confident learning on "
     "out-of-fold probabilities of a probe that never saw the image. Worst first; the suggested label is the "
     "probe's.")),
    ("leak", "Near-duplicates across splits (leaks)", ("An image in val or test with a near-twin in another split: "
     "a model that trained on the twin scores it too well.")),
    ("near_duplicate", "Near-duplicates within a split", "Redundant copies: they count twice in training."),
    ("outlier", "Outliers", ("Images far from every other image (e.g. a screenshot among photos): check they "
     "belong to any class.")),
)


def thumbnail(path: str) -> str:
    """The image as a small inlined JPEG data: URI (decoded as training decodes it); '' when it cannot be read."""
    from PIL import Image

    try:
        image = Image.fromarray(decode(path))
    except Exception:  # noqa: BLE001 - a picture that cannot be drawn must not stop the page
        return ""
    image.thumbnail((THUMB, THUMB))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=82)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _tile(images, index: int, caption: str, *, main: bool = False) -> str:
    uri = thumbnail(images.paths[index])
    picture = f'<img src="{uri}" alt="{esc(images.name(index))}">' if uri else "<p>(unreadable)</p>"
    return (f'<div class="tile{" main" if main else ""}">{picture}<div>{esc(caption)}</div>'
            f'<div class="hint">{esc(images.name(index))}</div></div>')


def _finding(row: dict, images, index_of: dict[str, int], neighbours, similarities) -> str:
    index = index_of[row["path"]]
    kind = row["finding"]
    parts = [_tile(images, index, f"{row['split']}: {row['given']}", main=True)]
    if kind == "label_issue":
        parts.append(f'<div class="labels">given <span class="given">{esc(row["given"])}</span><br>suggested '
                     f'<span class="suggested">{esc(row["suggested"])}</span><br>label quality {esc(row["score"])}'
                     "</div>")
    elif row["other"]:
        other = index_of[row["other"]]
        parts.append(_tile(images, other, f"{images.splits[other]}: {images.given(other)}"))
        parts.append(f'<div class="labels">similarity {esc(row["similarity"])}</div>')
    else:
        parts.append(f'<div class="labels">outlier score {esc(row["score"])}</div>')
    near = "".join(_tile(images, int(j), f"{images.splits[j]}: {images.given(j)} ({s:.2f})")
                   for j, s in zip(neighbours[index], similarities[index]))
    parts.append(f'<div class="neighbours">{near}</div>')
    return f'<div class="finding" data-finding="{esc(kind)}">{"".join(parts)}</div>'


def _summary_table(summary: dict) -> str:
    leaks = summary["leaks"]
    per_split = ", ".join(f"{s} {n}" for s, n in summary["per_split"].items() if n)
    rows = [["images", f"{summary['images']} ({per_split})"],
            ["label issues", summary["label_issues"]],
            ["val images with a near-twin in train", leaks["val_with_twin_in_train"]],
            ["test images with a near-twin in train", leaks["test_with_twin_in_train"]],
            ["near-duplicate pairs within a split", summary["near_duplicate_pairs"]],
            ["outliers listed", summary["outliers"]]]
    if leaks.get("val_acc") is not None:
        without = leaks.get("val_acc_without_twins")
        rows.append(["out-of-fold val accuracy: all / without twins",
                     f"{leaks['val_acc']:.2%} / {'n/a' if without is None else f'{without:.2%}'}"])
    f = summary["features"]
    cached = f"{f['extracted']} extracted, {f['from_disk']} from the cache"
    rows.append(["features", f"{f['backbone']} ({f['weights']}), {f['input_size']} px; {cached}"])
    rows.append(["seconds", f"features {summary['seconds']['features']}, findings {summary['seconds']['findings']}"])
    return table(None, rows, cls="kv")


def render_page(rows: list[dict], summary: dict, images, neighbours: np.ndarray, similarities: np.ndarray) -> str:
    index_of = {images.name(i): i for i in range(len(images.paths))}
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M")
    body = [f'<section id="summary"><h2>Summary</h2>{_summary_table(summary)}</section>']
    nav = ['<a href="#summary">Summary</a>']
    for kind, title, meaning in SECTIONS:
        chosen = [r for r in rows if r["finding"] == kind]
        shown = "".join(_finding(r, images, index_of, neighbours, similarities) for r in chosen[:MAX_SHOWN])
        more = (f'<p class="hint">{len(chosen) - MAX_SHOWN} more in findings.csv.</p>'
                if len(chosen) > MAX_SHOWN else "")
        empty = "" if chosen else '<p class="hint">None found.</p>'
        body.append(f'<section id="{kind}" data-section="{kind}"><h2>{esc(title)} ({len(chosen)})</h2>'
                    f'<p class="hint">{esc(meaning)}</p>{shown}{more}{empty}</section>')
        nav.append(f'<a href="#{kind}">{esc(title)}</a>')
    title = f"tlkit audit: {summary['data_root']}"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">{GENERATOR}'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
            f'<header class="top"><h1>{esc(title)}</h1><p>written {stamp}; the images were only read. Each row: '
            "the image, its labels, then its nearest neighbours (split: label (similarity)).</p></header>"
            f'<nav>{"".join(nav)}</nav><main>{"".join(body)}</main></body></html>\n')
