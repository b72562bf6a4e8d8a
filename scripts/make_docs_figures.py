"""Make the pictures the documentation shows (docs/images/*.png) from real runs on real photos.

    python scripts/make_docs_figures.py --hymenoptera PATH/TO/hymenoptera_data    # ants vs bees photos
    python scripts/make_docs_figures.py                                           # fallback: scikit-learn's digits

With --hymenoptera (the PyTorch transfer-learning tutorial's images, https://download.pytorch.org/tutorial/
hymenoptera_data.zip, unzipped: train/{ants,bees}/ + val/{ants,bees}/) it uses the `hymenoptera_linear_probe`
recipe; without it, the `quickstart` recipe on scikit-learn's handwritten digits, written as PNG class folders into
the work folder. Either way it makes, with tlkit's own commands and their default settings:

    augment_light.png, augment_heavy.png                       `tlkit preview` (preview_augment) on the training
    augment_mixup.png, augment_cutmix.png                      images: the light and heavy presets, then light with
                                                               Mixup (alpha 0.4) and with CutMix (alpha 1.0), at
                                                               seed 0 (timm draws one weight per batch; the
                                                               recipes' seed 42 draws 0.97, which hides the blend)
    curves.png                                                 `tlkit diagnose` of a short real run (linear probe
                                                               of the bundled ImageNet EfficientNet-Lite0 weights,
                                                               the recipe's epochs, feature cache on)
    confusion_matrix.png, top_losses.png                       `tlkit evaluate` of that run's best.ckpt
    report.png                                                 `tlkit report` of that run, screenshotted with
                                                               headless Chromium (--chromium; skipped if missing)

The run itself goes to --work (default runs/docs_figures/, replaced on every call); only the PNGs are copied to
--out (default docs/images/). Photo grids are stored as 256-colour dithered PNGs to keep the repository small.
Takes 1-2 minutes on a 2-core CPU (hymenoptera; most of it is the one backbone pass over the 398 photos), about 2
minutes for the digits.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hymenoptera", type=Path, default=None,
                        help="the unzipped hymenoptera_data folder (train/ + val/); default: scikit-learn's digits")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images", help="where the PNGs go")
    parser.add_argument("--work", type=Path, default=Path("runs/docs_figures"),
                        help="run folder (replaced on every call)")
    parser.add_argument("--chromium", default="chromium", help="Chromium binary for the report screenshot")
    parser.add_argument("--n", type=int, default=12, help="images per augmentation preview")
    args = parser.parse_args(argv)

    from tlkit.cli.main import main as tlkit
    from tlkit.recipe import load_recipe
    from tlkit.run.preview import preview_augment

    work, out = args.work.resolve(), args.out.resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    out.mkdir(parents=True, exist_ok=True)

    if args.hymenoptera is not None:
        data = args.hymenoptera.expanduser().resolve()
        if not (data / "train").is_dir() or not (data / "val").is_dir():
            parser.error(f"--hymenoptera {data}: expected train/ and val/ class folders inside")
        recipe_path = REPO / "recipes" / "hymenoptera_linear_probe.yaml"
        data_sets = [f"data.root={data}"]
        dataset = "hymenoptera"
    else:
        from tlkit.data.generate import generate

        data = generate("digits", work / "digits")
        recipe_path = REPO / "recipes" / "quickstart.yaml"
        data_sets = [f"data.root={data}"]
        dataset = "digits"
    print(f"data: {data}\nrecipe: {recipe_path.relative_to(REPO)}")
    quiet = ["data.num_workers=0", "trainer.progress_bar=false"]
    started = time.perf_counter()

    # 1. Augmentation previews: what the model sees, on the training photos (preview = no training, no weights).
    previews = {
        "augment_light.png": ["augment=light"],
        "augment_heavy.png": ["augment=heavy"],
        # timm draws one mixing weight per batch. With the recipes' seed (42) that draw is 0.97 for Mixup (alpha
        # 0.4): the blend is invisible. Seed 0 draws a weight near 0.6 for both, so the figures show what mixing does.
        "augment_mixup.png": ["augment=light", "mixing.mixup_alpha=0.4", "seed=0"],
        "augment_cutmix.png": ["augment=light", "mixing.cutmix_alpha=1.0", "seed=0"],
    }
    for name, sets in previews.items():
        # One Mixup/CutMix draw per batch: a smaller batch keeps those two figures short.
        n = args.n if "mix" not in name else min(args.n, 8)
        recipe = load_recipe(recipe_path, overrides=[*data_sets, *quiet, f"name={dataset}", *sets])
        _compact(preview_augment(recipe, n=n, out=out / name))
        print(f"wrote {out / name}")

    # 2. A short real run: the recipe as it is (linear probe, cached features), then diagnose, evaluate, report.
    # Run from the work folder with a relative run directory, so the figures' titles name the recipe, not a path.
    os.chdir(work)
    run = Path(recipe_path.stem)
    sets = [a for s in (*data_sets, *quiet) for a in ("--set", s)]
    _check(tlkit(["train", "--recipe", str(recipe_path), "--run-dir", str(run), *sets]), "train")
    _check(tlkit(["diagnose", str(run)]), "diagnose")
    shutil.copyfile(run / "curves.png", out / "curves.png")
    _check(tlkit(["evaluate", "--checkpoint", str(run / "checkpoints" / "best.ckpt"), "--data", str(data),
                  "--top-losses", "8"]), "evaluate")
    policy = _single_view_folder(run / "eval" / "best")
    for name in ("confusion_matrix.png", "top_losses.png"):
        shutil.copyfile(policy / name, out / name)
    _compact(out / "top_losses.png")
    preview_augment(load_recipe(run / "recipe.yaml", overrides=quiet), n=8, out=run / "augment_preview.png")
    _check(tlkit(["report", str(run)]), "report")
    _screenshot(args.chromium, run / "report.html", out / "report.png")
    print(f"done in {time.perf_counter() - started:.0f} s; figures in {out}")
    return 0


def _check(code: int, what: str) -> None:
    if code != 0:
        raise SystemExit(f"tlkit {what} failed (exit {code})")


def _compact(png: Path) -> Path:
    """Photo grids as 256-colour PNGs with Floyd-Steinberg dithering: about a third of the size, hard to tell apart."""
    from PIL import Image

    image = Image.open(png).convert("RGB")
    palette = image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, kmeans=2)
    image.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG).save(png, optimize=True)
    return png


def _single_view_folder(eval_dir: Path) -> Path:
    """evaluate writes one folder per TTA policy; the single view is always evaluated, as `none`."""
    folder = eval_dir / "none"
    if folder.is_dir():
        return folder
    found = sorted(p.parent for p in eval_dir.rglob("confusion_matrix.png"))
    if not found:
        raise SystemExit(f"no confusion_matrix.png under {eval_dir}")
    return found[0]


def _screenshot(chromium: str, page: Path, out: Path) -> None:
    binary = shutil.which(chromium)
    if binary is None:
        print(f"skipped {out.name}: {chromium!r} not found (pass --chromium PATH)")
        return
    command = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--hide-scrollbars", f"--screenshot={out}", "--window-size=1280,1600", page.resolve().as_uri()]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
