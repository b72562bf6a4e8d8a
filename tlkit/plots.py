"""Pictures people would rather look at than read: augmentation grids, confusion matrices, top-loss galleries.

Matplotlib with the Agg backend (files only, no display), imported on first use so `import tlkit` stays light.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from tlkit.io import save_figure

ImageLoader = Callable[[str], np.ndarray]  # a file -> RGB uint8 (H, W, 3); the caller's decode, so plots stays below data

MAX_ANNOTATED_CLASSES = 30  # beyond this the counts overlap; colours still show the structure
THUMBNAIL = 256


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_image_grid(images: list[np.ndarray], titles: list[str], out: str | Path, *, cols: int = 4,
                    suptitle: str = "") -> Path:
    """Write HxWx3 uint8 images with a title each to a PNG grid; returns the path."""
    plt = _pyplot()
    if len(images) != len(titles):
        raise ValueError(f"Got {len(images)} images but {len(titles)} titles.")
    cols = max(1, min(cols, len(images)))
    rows = math.ceil(len(images) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.8 * rows + (0.4 if suptitle else 0)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles):
        ax.imshow(image)
        ax.set_title(title, fontsize=9)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out, dpi=100)


def plot_confusion_matrix(matrix: np.ndarray, classes: Sequence[str], path: Path, *, title: str) -> Path:
    """Counts coloured by row share (recall), so small classes are as visible as big ones; rows = true labels."""
    matrix = np.asarray(matrix)
    n = len(classes)
    row_share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    side = min(24.0, max(4.5, 0.45 * n + 2.5))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    image = ax.imshow(row_share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_xticks(range(n), labels=[_short(c) for c in classes], rotation=45 if n > 4 else 0,
                  ha="right" if n > 4 else "center", rotation_mode="anchor")
    ax.set_yticks(range(n), labels=[_short(c) for c in classes])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    if n <= MAX_ANNOTATED_CLASSES:
        font = 10 if n <= 10 else 7
        for i in range(n):
            for j in range(n):
                if matrix[i, j] or i == j:
                    colour = "white" if row_share[i, j] > 0.5 else "black"
                    ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", color=colour, fontsize=font)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def plot_top_losses(rows: Sequence[dict], path: Path, *, title: str, load: ImageLoader, columns: int = 4) -> Path:
    """A grid of the highest-loss images with true / predicted label and probabilities under each; `load` decodes a
    file to an RGB uint8 array (tlkit.data.images.load_rgb: the one decode)."""
    plt = _pyplot()
    count = max(1, len(rows))
    columns = min(columns, count)
    lines = (count + columns - 1) // columns
    # Constrained layout reserves room for each tile's three-line caption (tight_layout let images cover them).
    fig, axes = plt.subplots(lines, columns, figsize=(3.2 * columns, 3.7 * lines + 0.4), squeeze=False,
                             layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, row in zip(axes.flat, rows):
        ax.imshow(_thumbnail(row["path"], load))
        wrong = row["predicted"] != row["true"]
        name = _short(Path(row["path"]).name, 30)
        if wrong:  # three lines either way, so the tiles stay aligned
            caption = (f"✗ predicted {_short(row['predicted'], 16)} {row['p_predicted']:.2f}\n"
                       f"true {_short(row['true'], 16)} {row['p_true']:.2f} · loss {row['loss']:.2f}\n{name}")
        else:
            caption = f"✓ {_short(row['true'], 20)} {row['p_true']:.2f}\nloss {row['loss']:.2f}\n{name}"
        ax.set_title(caption, fontsize=8, color="#b00020" if wrong else "#1b5e20", loc="left")
    if not rows:
        axes.flat[0].text(0.5, 0.5, "no images", ha="center", va="center")
    fig.suptitle(f"{title}  (red: misclassified, green: right but unsure)", fontsize=11)
    return save_figure(fig, path, dpi=100)


def plot_image_gallery(items: Sequence[tuple[str, str]], path: Path, *, title: str, load: ImageLoader,
                       columns: int = 4) -> Path:
    """Thumbnails of image files with a caption each (e.g. the doctor's flagged files), as one PNG; `load` as in
    plot_top_losses."""
    return save_image_grid([_thumbnail(image_path, load) for image_path, _ in items], [caption for _, caption in items],
                           path, cols=columns, suptitle=title)


def _thumbnail(path: str, load: ImageLoader) -> np.ndarray:
    try:
        image = Image.fromarray(load(path))
    except (OSError, ValueError):
        return np.full((THUMBNAIL, THUMBNAIL, 3), 200, dtype=np.uint8)  # the file changed since it was evaluated
    # Fit the square either way: tiny images are enlarged with nearest-neighbour so their real pixels show.
    upscale = max(image.size) < THUMBNAIL
    image = ImageOps.contain(image, (THUMBNAIL, THUMBNAIL), method=Image.NEAREST if upscale else Image.BICUBIC)
    # Centred on a fixed square so every tile (and its caption) lines up whatever the aspect ratio.
    canvas = Image.new("RGB", (THUMBNAIL, THUMBNAIL), (240, 240, 240))
    canvas.paste(image, ((THUMBNAIL - image.width) // 2, (THUMBNAIL - image.height) // 2))
    return np.asarray(canvas)


def _short(text: str, width: int = 22) -> str:
    text = str(text)
    return text if len(text) <= width else text[: width - 1] + "…"
