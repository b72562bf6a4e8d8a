"""Near-duplicate check against a known answer: copy a class-folder dataset, plant near-twins of training images in
val (slightly cropped by 0-2 px per side, resized to 28-48 px, re-encoded as JPEG quality 70-90), then run the
audit's near-duplicate search (thumbnails with a crop search, no backbone) and score it against the planted pairs.

  python scripts/audit_duplicates.py /path/to/cifar10_small --out /tmp/twins --count 100 --seed 1 --threshold 0.94 0.9

Precision and recall are printed for each threshold given. Pairs found that were not planted are listed with their
similarity: on real data some are genuine near-duplicates already present (look at them; --sheet draws them).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image

from tlkit.audit.findings import near_duplicates
from tlkit.audit.pixels import twin_neighbours
from tlkit.data.scan import relative_name, scan_folder


def plant(source: Path, out: Path, count: int, seed: int) -> set[tuple[str, str]]:
    """Copy source to out and write `count` twins of random training images into val; (train, twin) pairs."""
    shutil.copytree(source, out)
    rng = random.Random(seed)
    pairs = set()
    for path in rng.sample(sorted(out.glob("train/*/*")), count):
        image = Image.open(path).convert("RGB")
        width, height = image.size
        left, top, right, bottom = (rng.randint(0, 2) for _ in range(4))
        side = rng.choice([28, 30, 36, 40, 48])
        twin = image.crop((left, top, width - right, height - bottom)).resize((side, side), Image.BICUBIC)
        target = out / "val" / path.parent.name / f"twin_{path.stem}.jpg"
        twin.save(target, "JPEG", quality=rng.randint(70, 90))
        pairs.add((relative_name(path, out), relative_name(target, out)))
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="class-folder dataset with train/ and val/ (only read)")
    parser.add_argument("--out", required=True, help="new folder for the copy with planted twins")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--threshold", type=float, nargs="+", default=[0.94])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sheet", help="PNG: the pairs found that were not planted, side by side")
    args = parser.parse_args()
    out = Path(args.out)
    planted = plant(Path(args.source), out, args.count, args.seed)
    scan = scan_folder(out)
    samples = [*scan.train, *scan.val]
    splits = ["train"] * len(scan.train) + ["val"] * len(scan.val)
    names = [relative_name(p, out) for p, _ in samples]
    started = time.perf_counter()
    neighbours, similarities = twin_neighbours([p for p, _ in samples], 10)
    seconds = time.perf_counter() - started
    report = {"planted": len(planted), "images": len(samples), "seconds": round(seconds, 1), "thresholds": {}}
    for threshold in args.threshold:
        pairs = [p for p in near_duplicates(neighbours, similarities, splits, threshold=threshold) if p.leak]
        found = {(names[p.first], names[p.second]): p.similarity for p in pairs}
        hits = set(found) & planted
        report["thresholds"][threshold] = {
            "found_across_splits": len(found), "planted_found": len(hits),
            "precision": round(len(hits) / len(found), 3) if found else None,
            "recall": round(len(hits) / len(planted), 3),
            "not_planted": [[a, b, round(s, 3)] for (a, b), s in found.items() if (a, b) not in planted]}
    print(json.dumps(report, indent=2))
    if args.sheet:
        lowest = report["thresholds"][min(args.threshold)]["not_planted"]
        draw_sheet([(out / a, out / b) for a, b, _ in lowest], Path(args.sheet))


def draw_sheet(pairs: list[tuple[Path, Path]], path: Path, size: int = 64) -> None:
    sheet = Image.new("RGB", (2 * size + 8, max(1, len(pairs)) * (size + 4)), "white")
    for row, (a, b) in enumerate(pairs):
        for column, image in enumerate((a, b)):
            sheet.paste(Image.open(image).convert("RGB").resize((size, size)), (column * (size + 8), row * (size + 4)))
    sheet.save(path)


if __name__ == "__main__":
    main()
