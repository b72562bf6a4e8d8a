"""Measure that an export's standalone predict.py reproduces `tlkit predict` (issue 16, DESIGN.md contract 6).

    python scripts/verify_export.py --checkpoint runs/x/<stamp>/checkpoints/best.ckpt [--images DIR ...] [--tta POLICY]

Exports the checkpoint (with --tta's views for the bundle; default: the checkpoint's policy) into a temp folder,
writes 58 awkward images (non-square, tiny, large, greyscale, palette, alpha, 16-bit, CMYK, EXIF-rotated, five
formats), then predicts them (plus any --images) with tlkit and with the bundle's predict.py in a Python that cannot
import torch, tlkit, timm, albumentations, cv2, lightning or torchvision. Prints the max abs probability difference
for the single view and for the bundle's TTA policy; exit 1 if either exceeds --atol (1e-4).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

BLOCKED = ("torch", "tlkit", "timm", "albumentations", "cv2", "lightning", "torchvision")
# Installed as the first meta-path finder, then proves each blocked import fails before running the script.
BLOCKER = """
import importlib.abc, runpy, sys
BLOCKED = {blocked!r}
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("blocked for the standalone test: " + name)
        return None
sys.meta_path.insert(0, Blocker())
for name in BLOCKED:
    try:
        __import__(name)
    except ImportError:
        continue
    raise SystemExit("the import blocker failed: " + name + " is importable")
print("blocked imports: " + ", ".join(sorted(BLOCKED)), file=sys.stderr)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def blocked_python(script: str | Path, *args: str | Path) -> list[str]:
    """argv running `script` in an isolated Python (-I: no PYTHONPATH, no user site, no cwd) with BLOCKED unimportable."""
    return [sys.executable, "-I", "-c", BLOCKER.format(blocked=BLOCKED), str(script), *map(str, args)]


def _pattern(height: int, width: int, seed: int) -> np.ndarray:
    """Gradients + noise + a bright block: enough structure that resampling details matter."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * (3 + seed % 5)) % 256, (y * (2 + seed % 7)) % 256, ((x + y) * 5) % 256], -1).astype(np.int16)
    base += rng.integers(-40, 41, base.shape, dtype=np.int16)
    base[height // 4: height // 2 + 1, width // 3: width // 2 + 1, seed % 3] = 255
    return np.clip(base, 0, 255).astype(np.uint8)


def write_varied_images(folder: str | Path) -> list[Path]:
    """58 images that exercise every decode and resize path; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []

    def save(name: str, image: Image.Image, **kwargs) -> None:
        image.save(folder / name, **kwargs)
        paths.append(folder / name)

    sizes = [(37, 91), (91, 37), (300, 200), (200, 300), (64, 64), (33, 32), (257, 255), (1000, 750), (750, 1000),
             (2000, 1500), (5, 7), (1, 1), (2, 3), (36, 36), (40, 320), (481, 119)]
    for i, (w, h) in enumerate(sizes):
        rgb = Image.fromarray(_pattern(h, w, i))
        save(f"rgb_{w}x{h}.png", rgb)
        save(f"rgb_{w}x{h}_q90.jpg", rgb, quality=90)
    for i, (w, h) in enumerate([(50, 80), (120, 45), (9, 9), (640, 480)]):
        rgb = Image.fromarray(_pattern(h, w, 20 + i))
        save(f"grey_{w}x{h}.png", rgb.convert("L"))
        save(f"palette_{w}x{h}.png", rgb.quantize(colors=16))
        rgba = rgb.convert("RGBA")
        rgba.putalpha(Image.fromarray(_pattern(h, w, 30 + i)[:, :, 0]))
        save(f"alpha_{w}x{h}.png", rgba)
        save(f"grey_alpha_{w}x{h}.png", rgba.convert("LA"))
    transparent = Image.fromarray(_pattern(60, 90, 40)).quantize(colors=8)
    transparent.info["transparency"] = 0
    save("palette_transparent.png", transparent, transparency=0)
    sixteen = (np.asarray(Image.fromarray(_pattern(70, 50, 41)).convert("L"), dtype=np.uint16) * 200)
    save("grey16.png", Image.fromarray(sixteen))
    save("cmyk.jpg", Image.fromarray(_pattern(80, 100, 42)).convert("CMYK"))
    for orientation in (3, 6, 8):  # rotate 180, 90 CW, 90 CCW on display
        exif = Image.Exif()
        exif[0x0112] = orientation
        save(f"exif_{orientation}.jpg", Image.fromarray(_pattern(60, 140, 50 + orientation)), exif=exif, quality=95)
    for ext in ("bmp", "gif", "webp", "tiff"):
        save(f"other.{ext}", Image.fromarray(_pattern(77, 101, 60 + len(ext))))
    return paths


def standalone_probabilities(bundle: Path, images: list[Path], *, tta: bool, workdir: Path) -> np.ndarray:
    """[N, C] probabilities from the bundle's predict.py run without tlkit/torch (its --json output)."""
    out = workdir / f"standalone_{'tta' if tta else 'single'}.json"
    argv = blocked_python(bundle / "predict.py", *images, "--json", out, *([] if tta else ["--no-tta"]))
    done = subprocess.run(argv, capture_output=True, text=True, cwd=workdir, check=False)
    if done.returncode != 0 or "blocked imports:" not in done.stderr:
        raise RuntimeError(f"standalone predict.py failed ({done.returncode}): {done.stderr[-2000:]}")
    rows = json.loads(out.read_text())["predictions"]
    if [r["path"] for r in rows] != [str(p) for p in images]:
        raise RuntimeError("standalone predict.py skipped or reordered images")
    return np.array([r["probabilities"] for r in rows])


def tlkit_probabilities(checkpoint: Path, images: list[Path], tta: str | dict, workdir: Path) -> np.ndarray:
    """[N, C] probabilities as `tlkit predict` computes them (all classes as top-k, in model class order)."""
    from tlkit.infer.checkpoint import load_checkpoint
    from tlkit.run import predict_checkpoint

    classes = load_checkpoint(checkpoint).classes
    summary = predict_checkpoint(checkpoint, [str(p) for p in images], out=workdir / "tlkit.csv", top_k=len(classes),
                                 tta=tta, overwrite=True, progress=False)
    if [r["path"] for r in summary["rows"]] != [str(p) for p in images]:
        raise RuntimeError("tlkit predict skipped or reordered images")
    probs = np.zeros((len(images), len(classes)))
    for i, row in enumerate(summary["rows"]):
        probs[i, [classes.index(c) for c in row["labels"]]] = row["probs"]
    return probs


def measure(checkpoint: Path, bundle: Path, images: list[Path], workdir: Path, tta: str | dict | None) -> dict:
    """Max abs probability difference tlkit vs standalone: single view, and the views the bundle was exported with
    (`tta`, the same value given to export_checkpoint; None = the checkpoint's policy)."""
    views = json.loads((bundle / "model.json").read_text())["tta_views"]
    result = {"images": len(images), "policy": views["policy"], "views": len(views["views"])}
    for name, spec, bundle_tta in (("none", "none", False), (views["policy"], tta, True)):
        ours = tlkit_probabilities(checkpoint, images, spec, workdir)
        theirs = standalone_probabilities(bundle, images, tta=bundle_tta, workdir=workdir)
        result[name] = {"max_abs_diff": float(np.abs(ours - theirs).max()),
                        "top1_agreement": float((ours.argmax(1) == theirs.argmax(1)).mean())}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--images", nargs="*", default=[], help="extra real images or folders")
    parser.add_argument("--tta", help="policy for the bundle (named: none, hflip, ten_crop, multi_scale)")
    parser.add_argument("--atol", type=float, default=1e-4)
    args = parser.parse_args(argv)
    from tlkit.data.images import collect_inputs
    from tlkit.run import export_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images = write_varied_images(tmp / "varied") + [Path(p) for p in collect_inputs(args.images)[0]]
        export_checkpoint(args.checkpoint, tmp / "bundle", images=images[:16], tta=args.tta)
        result = measure(args.checkpoint, tmp / "bundle", images, tmp, args.tta)
    print(json.dumps(result, indent=2))
    worst = max(result[k]["max_abs_diff"] for k in result if isinstance(result[k], dict))
    print(f"{result['images']} images: max abs probability diff standalone vs tlkit predict = {worst:.2e} "
          f"({'ok' if worst <= args.atol else 'FAILED'}, atol {args.atol:g})")
    return 0 if worst <= args.atol else 1


if __name__ == "__main__":
    sys.exit(main())
