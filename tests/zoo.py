"""A generated "zoo" image folder holding every messy case the doctor reports (tests and demos).

`write_zoo(root)` writes root/{train,val}/<class>/ with good images for classes a and b (so a tiny model can
train on it) plus one file per bad case. `ZOO_CASES` maps each case to what the zoo put there.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

ZOO_CASES = (
    "zero_byte", "non_image", "hidden", "corrupt", "truncated", "decompression_bomb", "symlink_outside_root",
    "too_small", "mode_L", "mode_LA", "mode_RGBA", "mode_P_transparency", "mode_CMYK", "mode_I;16", "exif_rotated", "placeholder_like",
    "empty_class_folder", "class_only_in_train", "class_only_in_val", "duplicate_within_split",
    "duplicate_across_splits",
)


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height pixels with no pixel data: a decompression bomb by its header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def _pixels(rgb: tuple[int, int, int], size: int, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).integers(-30, 31, (size, size, 3))
    return np.clip(np.array(rgb) + noise, 0, 255).astype(np.uint8)


def write_zoo(root: str | Path, *, per_class: int = 6, size: int = 40, val_only_class: bool = True) -> Path:
    """Write the zoo under root. val_only_class=False leaves out the one case that makes training refuse the folder."""
    root = Path(root)
    colours = {"a": (200, 40, 40), "b": (40, 40, 200)}
    for s, (split, n) in enumerate((("train", per_class), ("val", max(2, per_class // 2)))):
        for c, (name, rgb) in enumerate(colours.items()):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):  # a distinct seed per image: only the planted copies below may be duplicates
                Image.fromarray(_pixels(rgb, size, 1000 + 100 * (2 * s + c) + i)).save(folder / f"{name}{i}.png")
    a, b = root / "train" / "a", root / "train" / "b"
    good = _pixels(colours["a"], size, 7)
    (a / "empty.png").write_bytes(b"")
    (a / "notes.txt").write_text("not an image\n")
    (a / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (a / "corrupt.jpg").write_bytes(b"this is not a jpeg at all" * 10)
    Image.fromarray(good).save(a / "whole.jpg", quality=95)
    data = (a / "whole.jpg").read_bytes()
    (a / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (a / "whole.jpg").unlink()
    _png_header_only(a / "bomb.png", 30000, 30000)
    outside = root.parent / f"{root.name}_outside.png"
    Image.fromarray(good).save(outside)
    (a / "link_out.png").symlink_to(outside.resolve())
    Image.fromarray(good[:8, :8]).save(a / "tiny.png")
    Image.fromarray(good).convert("L").save(b / "grey_L.png")
    Image.fromarray(good).convert("LA").save(b / "grey_LA.png")
    rgba = Image.fromarray(good).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(b / "alpha_RGBA.png")
    pal = Image.fromarray(good).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    pal.save(b / "palette_P.png", transparency=0)
    Image.fromarray(good).convert("CMYK").save(b / "cmyk.jpg")
    Image.fromarray((good[:, :, 0].astype(np.uint16) * 257)).save(b / "deep_I16.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to display
    Image.fromarray(_pixels(colours["b"], size, 9)[:, : size // 2]).save(b / "rotated.jpg", exif=exif)
    # a scraper's placeholder: flat background, a grey box and a dark bar standing in for "image not found" text
    placeholder = np.full((size * 2, size * 2, 3), 240, dtype=np.uint8)
    placeholder[size // 2: size * 3 // 2, size // 2: size * 3 // 2] = 180
    placeholder[size - 3: size + 3, size // 4: size * 7 // 4] = 60
    Image.fromarray(placeholder).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(b / "imageNotFound.gif")
    # duplicates: a copy inside train, and a train image copied into val (leakage)
    (a / "a0_copy.png").write_bytes((a / "a0.png").read_bytes())
    (root / "val" / "b" / "leak_b1.png").write_bytes((b / "b1.png").read_bytes())
    # class c: only in train, with an empty folder in val; class d: only in val
    c = root / "train" / "c"
    c.mkdir()
    for i in range(per_class):
        Image.fromarray(_pixels((40, 200, 40), size, 100 + i)).save(c / f"c{i}.png")
    (root / "val" / "c").mkdir()
    if val_only_class:
        d = root / "val" / "d"
        d.mkdir()
        Image.fromarray(_pixels((200, 200, 40), size, 200)).save(d / "d0.png")
    return root
