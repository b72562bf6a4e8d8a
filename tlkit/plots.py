"""Pictures people would rather look at than read. Matplotlib with the Agg backend (no display needed)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def save_image_grid(images: list[np.ndarray], titles: list[str], out: str | Path, *, cols: int = 4,
                    suptitle: str = "") -> Path:
    """Write HxWx3 uint8 images with a title each to a PNG grid; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
