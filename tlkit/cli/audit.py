"""`tlkit audit` and `tlkit generate noisy`: their arguments and what they run (tlkit.cli.main adds them)."""

from __future__ import annotations

import argparse


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1; got {text}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number; got {text}")
    return value


def add_noisy_parser(kinds) -> None:
    """`tlkit generate noisy`: a copy of a folder with a fraction of its training labels moved to another class."""
    noisy = kinds.add_parser("noisy", help="copy of a class-folder dataset with a fraction of training images moved "
                                           "to another class; the truth is written next to the copy, not inside")
    noisy.add_argument("--from", dest="source", required=True, help="class-folder dataset (only read)")
    noisy.add_argument("--out", required=True, help="new folder; the truth goes to <OUT>.truth.csv beside it")
    noisy.add_argument("--fraction", type=_fraction, default=0.1, help="share of training images moved (0.1)")
    noisy.add_argument("--seed", type=int, default=0, help="seed of the draw (default 0)")


def run_noisy(args: argparse.Namespace) -> int:
    from tlkit.data.generate import truth_path, write_noisy

    out = write_noisy(args.source, args.out, fraction=args.fraction, seed=args.seed)
    moved = len(truth_path(out).read_text(encoding="utf-8").splitlines()) - 1
    print(f"wrote {out}: {moved} training images moved to another class; truth: {truth_path(out)}")
    return 0


def add_audit_parser(sub) -> None:
    audit = sub.add_parser("audit", help="find likely label errors, near-duplicates (leaks across splits) and "
                                         "outliers from cached backbone features; CSV + HTML page (read-only)")
    audit.add_argument("folder", nargs="?", help="data root (class folders), or a label table (.csv)")
    audit.add_argument("--recipe", help="audit the data of this recipe, with its backbone and preprocessing")
    audit.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a recipe value (repeatable)")
    audit.add_argument("--backbone", default="tf_efficientnet_lite0",
                       help="timm backbone for the features, without --recipe (default tf_efficientnet_lite0)")
    audit.add_argument("--weights", default="auto", help="auto, bundled, hub, none or a file (default auto)")
    audit.add_argument("--input-size", type=_positive, help="image size in pixels (default: the backbone's)")
    audit.add_argument("--folds", type=_positive, default=5, help="folds of the out-of-fold probe (default 5)")
    audit.add_argument("--neighbours", type=_positive, default=3, help="nearest neighbours shown per image (3)")
    audit.add_argument("--duplicate-threshold", type=float, default=0.95,
                       help="similarity (cosine of 12x12 thumbnails, mean colour removed, best over crops of up to 6%% "
                            "per side) from which two images are near-duplicates (0.95)")
    audit.add_argument("--outliers", type=float, default=0.01,
                       help="share of images, the farthest from the others, listed as outliers (0.01)")
    audit.add_argument("--seed", type=int, default=0, help="seed of the folds (default 0)")
    audit.add_argument("--out", help="output folder (default runs/audit/<folder name>/); findings.csv, audit.html")
    audit.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_audit(args: argparse.Namespace) -> int:
    """Audit FOLDER (class folders), a label table (.csv) or --recipe's data; print where the findings went."""
    import os
    from pathlib import Path

    from tlkit.audit import AuditSettings
    from tlkit.errors import DataError

    settings = AuditSettings(folds=args.folds, neighbours=args.neighbours, duplicate_threshold=args.duplicate_threshold,
                             outlier_fraction=args.outliers, seed=args.seed)
    workers = min(4, os.cpu_count() or 1)
    if args.recipe:
        from tlkit.recipe.loading import load_recipe
        from tlkit.run.audit import audit_recipe

        result = audit_recipe(load_recipe(args.recipe, args.overrides), settings=settings, out=args.out,
                              num_workers=workers, progress=not args.no_progress)
    else:
        if not args.folder:
            raise DataError("tlkit audit needs a data folder, a label table (.csv) or --recipe; e.g. tlkit audit "
                            "path/to/images.")
        from tlkit.audit import audit
        from tlkit.data.settings import DEFAULT_TABLE
        from tlkit.data.table import scan_data

        given = Path(args.folder)
        table = given.suffix.lower() == ".csv"
        root = given.parent if table else given
        scan = scan_data(root, source="csv" if table else "folder", csv=given.name if table else DEFAULT_TABLE,
                         seed=args.seed)
        result = audit(scan, out=args.out or Path("runs") / "audit" / Path(root).resolve().name,
                       backbone=args.backbone, weights=args.weights, input_size=args.input_size, settings=settings,
                       num_workers=workers, progress=not args.no_progress)
    s = result.summary
    print(f"{s['images']} images: {s['label_issues']} label issues, {s['leaks']['val_with_twin_in_train']} val images "
          f"with a near-twin in train, {s['near_duplicate_pairs']} near-duplicate pairs within a split, "
          f"{s['outliers']} outliers")
    print(f"findings: {result.files['csv']}\npage: {result.files['html']}")
    print(f"leave them out of training with: --set data.exclude={result.files['csv']} (after reviewing the rows)")
    return 0
