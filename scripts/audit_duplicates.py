"""Near-duplicate check against a known answer: copy a class-folder dataset, plant near-twins of training images in
val (slightly cropped by 0-2 px per side, resized to 28-48 px, re-encoded as JPEG quality 70-90), then run the
audit's near-duplicate search (tiny-image embeddings, no backbone) and score it against the planted pairs.

  python scripts/audit_duplicates.py /path/to/cifar10_small --out /tmp/twins --count 100 --threshold 0.9

Pairs found that were not planted are listed: on real data some are genuine near-duplicates already present.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image

from tlkit.audit.findings import near_duplicates, nearest_neighbours
from tlkit.audit.pixels import pixel_embeddings
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
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.out)
    planted = plant(Path(args.source), out, args.count, args.seed)
    scan = scan_folder(out)
    samples = [*scan.train, *scan.val]
    splits = ["train"] * len(scan.train) + ["val"] * len(scan.val)
    names = [relative_name(p, out) for p, _ in samples]
    neighbours, similarities = nearest_neighbours(pixel_embeddings([p for p, _ in samples]), 10)
    found = {(names[p.first], names[p.second]) for p in near_duplicates(neighbours, similarities, splits,
                                                                          threshold=args.threshold) if p.leak}
    hits = found & planted
    print(json.dumps({"planted": len(planted), "found_across_splits": len(found), "planted_found": len(hits),
                      "precision": len(hits) / len(found) if found else None, "recall": len(hits) / len(planted),
                      "not_planted": sorted(found - planted)[:20]}, indent=2))


if __name__ == "__main__":
    main()
