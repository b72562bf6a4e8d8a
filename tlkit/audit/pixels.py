"""Near-twins from the pixels: every image is shrunk to a 32 x 32 thumbnail; its 12 x 12 embedding (box filter, mean
colour removed, unit length) finds each image's most similar others, and each such candidate pair is then scored by
the best match over small crops of either image (up to 2 of the 32 thumbnail pixels, about 6%, cut from each side).

Why pixels and a crop search rather than backbone features: resizing and re-encoding barely change a tiny image,
while backbone features of small photos move a lot (a 32 px photo cropped by 2 px and re-encoded kept a cosine
similarity of 0.48-0.84 in lite0's pooled features). A crop does move the tiny image too: some planted twins of 32
px CIFAR-10 photos kept only 0.67 without the crop search, below chance lookalikes; with it every one kept 0.95 or
more (scripts/audit_duplicates.py).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from tlkit.audit.adapter import decode

BASE = 32  # thumbnail side in pixels: crops are searched at this size
SIDE = 12  # 12 x 12 x 3 = 432 numbers per embedding
CROPS = (0, 1, 2)  # thumbnail pixels cut from a side in the crop search (0-6% of the image)
CANDIDATE = 0.5  # pairs whose plain embeddings are less similar are not crop-searched (no twin scored below 0.67)
EDGE_BLOCK = 256  # candidate pairs scored at once: (256, 81, 432) floats, 36 MB


def thumbnails(paths: Sequence[str], base: int = BASE) -> np.ndarray:
    """(N, base, base, 3) uint8 thumbnails; an image that cannot be decoded stays black (similar to nothing)."""
    from PIL import Image

    rows = np.zeros((len(paths), base, base, 3), dtype=np.uint8)
    for i, path in enumerate(paths):
        try:
            image = Image.fromarray(decode(path))
        except Exception:  # noqa: BLE001, S112 - the feature extraction already reported unreadable files
            continue
        small = min(image.size) < base  # box filtering only averages: a smaller image is interpolated up
        rows[i] = np.asarray(image.resize((base, base), Image.BILINEAR if small else Image.BOX))
    return rows


def embed(thumbs: np.ndarray, crops: Sequence[int] = (0,), side: int = SIDE) -> np.ndarray:
    """(N, V, side * side * 3) unit vectors: each thumbnail cut by every combination of `crops` pixels per side
    (V = len(crops) ** 4; the first is uncut), shrunk to side x side, mean colour removed."""
    cuts = list(itertools.product(crops, repeat=2))  # (first, last) pixels cut along one axis
    weights = np.stack([_box_weights(thumbs.shape[1], lo, hi, side) for lo, hi in cuts])  # (9, side, base)
    rows = weights.reshape(-1, thumbs.shape[1])  # (cuts x side, base): two matrix products (BLAS), not an einsum
    shrunk = np.tensordot(rows, thumbs.astype(np.float32), axes=([1], [1]))  # (cut y, n, w, c)
    shrunk = np.tensordot(shrunk, rows, axes=([2], [1]))  # (cut y, n, c, cut x)
    shrunk = shrunk.reshape(len(cuts), side, len(thumbs), 3, len(cuts), side).transpose(2, 0, 4, 1, 5, 3)
    shrunk = shrunk.reshape(len(thumbs), len(cuts) ** 2, side * side, 3)
    vectors = (shrunk - shrunk.mean(axis=2, keepdims=True)).reshape(len(thumbs), len(cuts) ** 2, -1)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=2, keepdims=True), 1e-6)


def _box_weights(size: int, first: int, last: int, side: int) -> np.ndarray:
    """(side, size): row o averages the pixels of [first, size - last) that fall in output bin o (area weights)."""
    edges = np.linspace(first, size - last, side + 1)
    pixels = np.arange(size)
    overlap = np.clip(np.minimum(edges[1:, None], pixels + 1) - np.maximum(edges[:-1, None], pixels), 0, None)
    return (overlap / overlap.sum(axis=1, keepdims=True)).astype(np.float32)


def twin_neighbours(paths: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices (N, k), similarities (N, k)) of each image's k likeliest near-twins, most similar first: the nearest
    by plain embedding, scored by the best crop-searched similarity of the pair (either image cut)."""
    from tlkit.audit.findings import nearest_neighbours

    thumbs = thumbnails(paths)
    plain = embed(thumbs)[:, 0]
    neighbours, similarities = nearest_neighbours(plain, k)
    n, k = neighbours.shape
    searched = np.flatnonzero(similarities.ravel() >= CANDIDATE)
    cut = np.repeat(np.arange(n), k)[searched]  # the image cut in the crop search, then the other way round
    whole = neighbours.ravel()[searched]
    cut, whole = np.concatenate([cut, whole]), np.concatenate([whole, cut])
    order = np.argsort(cut, kind="stable")  # a block of pairs shares few cut images: each is cut once per block
    best = np.zeros(len(cut), dtype=np.float32)
    for start in range(0, len(order), EDGE_BLOCK):
        block = order[start:start + EDGE_BLOCK]
        images, which = np.unique(cut[block], return_inverse=True)
        variants = embed(thumbs[images], CROPS)[which]  # (E, V, D)
        best[block] = np.matmul(variants, plain[whole[block], :, None])[..., 0].max(axis=1)
    scores = similarities.ravel().copy()
    scores[searched] = np.maximum(best[:len(searched)], best[len(searched):])
    scores = scores.reshape(n, k)
    rank = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(neighbours, rank, axis=1), np.take_along_axis(scores, rank, axis=1)
