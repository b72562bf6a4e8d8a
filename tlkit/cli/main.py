"""`tlkit` command line: argument parsing and error reporting; tlkit.cli.commands runs each command."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import re
import sys
from pathlib import Path

from tlkit.cli.audit import add_audit_parser, add_noisy_parser
from tlkit.cli.commands import HANDLERS, StopSignal, sigterm_stops
from tlkit.cli.stream import add_data_parser
from tlkit.errors import RecipeError, TlkitError
from tlkit.infer.settings import (
    AGGREGATES,
    DEFAULT_MAX_VIEWS_PER_FORWARD,
    DEFAULT_PARITY_ATOL,
    DEFAULT_TOP_LOSSES,
    PRECISIONS,
)
from tlkit.model.strategies import SEARCHABLE_KINDS
from tlkit.redact import redact_credentials

EXIT_RECIPE_ERROR = 2


def _add_recipe_args(parser: argparse.ArgumentParser, *, positional: bool = False, required: bool = True) -> None:
    if positional:
        parser.add_argument("recipe", help="recipe YAML file")
    else:
        parser.add_argument("--recipe", required=required, help="recipe YAML file (see recipes/)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a recipe value, e.g. --set optim.lr=0.001 (repeatable; relative data.root is from the cwd)",
    )


def _add_checkpoint_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint", required=True,
        help="a run's checkpoints/best.ckpt (or an exported model.safetensors); it carries everything else",
    )


def _add_inference_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--num-workers", default=0, type=_workers,
        help="image-decoding worker processes (default 0: on a small CPU they compete with the model; auto = CPUs per device, at most 8)",
    )
    parser.add_argument(
        "--max-views-per-forward", type=_positive_int, default=DEFAULT_MAX_VIEWS_PER_FORWARD,
        help=f"memory cap: views per model forward (default {DEFAULT_MAX_VIEWS_PER_FORWARD})",
    )
    parser.add_argument(
        "--precision", choices=PRECISIONS, default="fp32",
        help="fp32 (default); bf16 = bfloat16 autocast, ~2.6x faster on CPUs with AMX but it flipped 1 of 153 "
             "hymenoptera predictions; auto = bf16 only where native (AMX, AVX512-BF16, Ampere+); see the benchmarks page",
    )


def parse_tta(text: str) -> str | dict:
    """A policy name, or an inline YAML mapping for a custom policy: '{policy: custom, crops: five, scales: [256]}'."""
    if not text.strip().startswith("{"):
        return text
    import yaml

    from tlkit.recipe.loading import load_yaml

    try:
        value = load_yaml(text)
    except yaml.YAMLError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid YAML mapping ({getattr(exc, 'problem', exc)}).") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a mapping like '{{policy: custom, crops: five}}'.")
    return value


def _workers(text: str) -> int | str:
    """--num-workers: auto or a count 0-64 (checked here, so a typo is an argparse error, not a traceback)."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or a number of processes; got {text!r}") from None
    if not 0 <= value <= 64:
        raise argparse.ArgumentTypeError(f"expected 0-64 worker processes; got {value}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1; got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1 (exclusive); got {value}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1; got {value}")
    return value


def _one_line(exc: Exception) -> str:
    """The cause in one line; an error re-raised from a DataLoader worker carries the worker's traceback first."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    last = lines[-1] if lines else type(exc).__name__
    if len(lines) > 1 and ": " in last and last.split(": ", 1)[0].rsplit(".", 1)[-1] == type(exc).__name__:
        return last.split(": ", 1)[1]
    return str(exc) if len(lines) <= 1 else last


_OS_FIXES = {
    errno.ENOSPC: "the disk is full; free some space, or write elsewhere (--out, --run-dir, output.runs_dir)",
    errno.EDQUOT: "the disk quota is used up; free some space, or write elsewhere (--out, --run-dir, output.runs_dir)",
    errno.EROFS: "the file system is read-only; write elsewhere (--out, --run-dir, output.runs_dir)",
    errno.EACCES: "permission denied; use a folder you may write to (--out, --run-dir, output.runs_dir) or fix its "
                  "permissions",
    errno.EPERM: "operation not permitted; use a folder you may write to (--out, --run-dir, output.runs_dir)",
}
# tlkit.io.atomic_path writes <dir>/.<stem>.<8 random chars>.tmp<suffix> first; name the file the user asked for.
_ATOMIC_TEMP = re.compile(r"^\.(?P<stem>.*)\.[A-Za-z0-9_]{8}\.tmp(?P<suffix>.*)$")


def describe_os_error(exc: OSError) -> str:
    """One line for an OSError: which file, what happened, and what to do about it."""
    where = ""
    if exc.filename is not None:
        path = Path(os.fsdecode(exc.filename))
        temp = _ATOMIC_TEMP.match(path.name)
        where = f" {path.with_name(temp['stem'] + temp['suffix']) if temp else path}:"
    cause = _OS_FIXES.get(exc.errno) or (exc.strerror or _one_line(exc) or type(exc).__name__)
    verb = "write" if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS) else "access"
    if where:
        return f"cannot {verb}{where} {cause}."
    return f"{cause}." if exc.errno in _OS_FIXES else f"{cause} ({type(exc).__name__})."


def build_parser() -> argparse.ArgumentParser:
    from tlkit import __version__

    parser = argparse.ArgumentParser(prog="tlkit", description="Transfer learning for image classification.")
    parser.add_argument("--version", action="version", version=f"tlkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a recipe and print a summary")
    _add_recipe_args(train, required=False)
    train.add_argument("--run-dir", help="write the run exactly here (default runs/<recipe>/<timestamp>/)")
    train.add_argument("--reproduce", metavar="RUN_DIR",
                       help="train RUN_DIR's recipe again in a new run directory and say what differs (versions, data)")
    train.add_argument("--overwrite", action="store_true",
                       help="replace an earlier run in --run-dir (by default a non-empty run directory is refused)")
    train.add_argument("--resume", metavar="RUN_DIR",
                       help="continue a killed run from its checkpoints/last.ckpt, with the recipe it saved")
    train.add_argument("--no-cache", action="store_true",
                       help="linear probes: neither read nor write the on-disk feature cache (same as --set cache.disk=false)")

    preview = sub.add_parser("preview", help="PNG grid of training samples after augmentation and mixing")
    _add_recipe_args(preview)
    preview.add_argument("--n", type=_positive_int, default=16, help="number of samples (default 16)")
    preview.add_argument("--out", help="PNG path (default runs/<recipe>/augment_preview.png)")

    evaluate = sub.add_parser(
        "evaluate", help="metrics, confusion matrix and top losses per TTA policy, with their cost per image"
    )
    _add_checkpoint_arg(evaluate)
    evaluate.add_argument("--data", required=True, help="image folder: root/{train,val}/<class>/ or root/<class>/")
    evaluate.add_argument(
        "--tta", nargs="+", metavar="POLICY", type=parse_tta,
        help="policies to compare with the single view: none, hflip, ten_crop, multi_scale, checkpoint "
             "(default: the checkpoint's own policy), or a custom one as YAML: '{policy: custom, crops: five, "
             "flip: true, scales: [256, 320]}'",
    )
    evaluate.add_argument("--aggregate", choices=AGGREGATES, help="how views combine (default: mean_prob)")
    evaluate.add_argument("--out", help="report folder (default: <run dir>/eval/<checkpoint name>/)")
    evaluate.add_argument(
        "--split", default="val", choices=("val", "all"),
        help="val: the held-out split (a one-folder layout is split as in training); all: every image",
    )
    evaluate.add_argument("--top-losses", type=_positive_int, default=DEFAULT_TOP_LOSSES,
                          help=f"images in the top-loss CSV and gallery (default {DEFAULT_TOP_LOSSES})")
    _add_inference_args(evaluate)

    predict = sub.add_parser("predict", help="top-k labels for image files and folders, as CSV (and JSON)")
    _add_checkpoint_arg(predict)
    predict.add_argument("inputs", nargs="+", metavar="INPUT",
                         help="image files, folders (searched recursively), CSV tables (their path column) or "
                              "streams (tlkit data optimize output)")
    predict.add_argument("--out", default="predictions.csv",
                         help="CSV file to write (default: predictions.csv in the current folder; '-' = stdout)")
    predict.add_argument("--json", dest="json_out", help="also write predictions and skipped files as JSON here")
    predict.add_argument("--overwrite", action="store_true",
                         help="replace an existing --out/--json file (by default an existing one is refused)")
    predict.add_argument("--top-k", type=_positive_int, default=5, help="labels per image (default: 5, at most the classes)")
    predict.add_argument(
        "--tta", type=parse_tta,
        help="policy: none, hflip, ten_crop, multi_scale or a YAML mapping (default: the checkpoint's own policy)",
    )
    predict.add_argument("--aggregate", choices=AGGREGATES, help="how views combine (default: mean_prob)")
    _add_inference_args(predict)
    predict.add_argument("--devices", type=_positive_int, default=1,
                         help="processes, one per device (default 1); with more, rows are merged in order at the end")
    predict.add_argument("--accelerator", choices=("cpu", "gpu", "auto"), default="cpu",
                         help="where the model runs (default cpu; auto = a GPU when there is one)")

    export = sub.add_parser(
        "export", help="safetensors + JSON sidecar, ONNX checked against PyTorch, and a standalone predict.py"
    )
    _add_checkpoint_arg(export)
    export.add_argument("--out", required=True, help="folder for model.safetensors, model.json, model.onnx and the "
                                                     "standalone bundle (predict.py, preprocessing.py, requirements.txt)")
    export.add_argument("--tta", type=parse_tta,
                        help="TTA policy whose views the bundle's predict.py uses (default: the checkpoint's own)")
    export.add_argument(
        "--images", nargs="+", default=[], metavar="PATH",
        help="real images (files or folders) for the ONNX parity check, e.g. the validation folder",
    )
    export.add_argument("--no-onnx", action="store_true", help="write only safetensors + model.json")
    export.add_argument("--atol", type=float, default=DEFAULT_PARITY_ATOL,
                        help=f"max abs logit difference ONNX vs PyTorch ({DEFAULT_PARITY_ATOL:g})")
    export.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty --out that is not an earlier export (by default it is refused)")

    groups = sub.add_parser("groups", help="the layer groups of a backbone that gradual / layer_decay strategies use")
    groups.add_argument("backbone", help="timm architecture, e.g. tf_efficientnet_lite0")
    groups.add_argument("--fine", action="store_true", help="one group per block instead of per stage")

    _add_tuning_parsers(sub)
    doctor = sub.add_parser("doctor", help="report messy cases in an image folder or label table (read-only), as a "
                                           "table and JSON")
    doctor.add_argument("folder", help="data root (<class>/* or train/<class>/* + val/<class>/*), or a label table "
                                       "(labels.csv: path,label[,split])")
    doctor.add_argument("--csv", help="check this label table (relative to FOLDER) instead of class folders")
    doctor.add_argument("--min-size", type=_positive_int, default=32,
                        help="flag images whose shorter side is below this (default 32; use the recipe's input size)")
    doctor.add_argument("--json", dest="json_out", help="report path (default runs/doctor/<folder name>.json)")
    doctor.add_argument("--columns", type=_column_names, metavar="path=NAME,label=NAME",
                        help="a table's own column names, as data.columns (e.g. path=image_name,label=tags)")
    doctor.add_argument("--label-delimiter", default=";",
                        help="separator of several labels in one cell, as data.label_delimiter (';'; ' ' = spaces)")

    _add_generate_parser(sub)
    add_audit_parser(sub)
    add_data_parser(sub)

    recipe = sub.add_parser("recipe", help="inspect recipes")
    recipe_sub = recipe.add_subparsers(dest="recipe_command", required=True)
    show = recipe_sub.add_parser("show", help="print the fully resolved recipe with every default and its reason")
    _add_recipe_args(show, positional=True)
    return parser


def _column_names(text: str) -> dict[str, str]:
    pairs = [part.partition("=") for part in text.split(",") if part.strip()]
    if not pairs or any(not sep or not ours.strip() or not theirs.strip() for ours, sep, theirs in pairs):
        raise argparse.ArgumentTypeError(f"expected path=NAME,label=NAME[,split=NAME]; got {text!r}")
    return {ours.strip(): theirs.strip() for ours, _, theirs in pairs}


def _add_generate_parser(sub) -> None:
    generate = sub.add_parser("generate", help="write a dataset: digits, or multi-label mosaics of an image folder")
    kinds = generate.add_subparsers(dest="kind", required=True)
    digits = kinds.add_parser("digits", help="scikit-learn's 1,797 8x8 digits as PNG class folders (32 px)")
    digits.add_argument("--out", required=True, help="folder to write (left as it is if it exists)")
    mosaic = kinds.add_parser(
        "mosaic", help="multi-label set: grid x grid mosaics of a class-folder dataset's images, labelled with the "
                       "classes they show (images + labels.csv with a split column)")
    mosaic.add_argument("--from", dest="source", required=True,
                        help="single-label folder: train/<class>/ + val/<class>/ (+ test/), or <class>/ (split by "
                             "--val-fraction); train mosaics use only training images, val only validation images")
    mosaic.add_argument("--out", required=True, help="new folder for <split>/*.png, labels.csv and mosaic.json")
    for split in ("train", "val", "test"):
        mosaic.add_argument(f"--{split}", type=_positive_int, metavar="N",
                            help=f"{split} mosaics (default: each source {split} image used about once)")
    mosaic.add_argument("--grid", type=_positive_int, default=2, help="cells per side (default 2: 2x2 mosaics)")
    mosaic.add_argument("--min-classes", type=_positive_int, default=1, help="fewest distinct classes per mosaic (1)")
    mosaic.add_argument("--max-classes", type=_positive_int, default=4, help="most distinct classes per mosaic (4)")
    mosaic.add_argument("--cell", type=_positive_int,
                        help="tile side in pixels (default: the median short side of the source images)")
    mosaic.add_argument("--val-fraction", type=_fraction, default=0.2,
                        help="source without val/: the seeded fraction of its images kept for val mosaics (0.2)")
    mosaic.add_argument("--seed", type=int, default=0, help="seed of the split and the draws (default 0)")
    add_noisy_parser(kinds)


def _add_tuning_parsers(sub) -> None:
    """check, lr-find, search, diagnose, init-stats: the tuning procedure (tlkit.run.tuning)."""
    check = sub.add_parser("check", help="sanity checks: initial loss vs ln(C), overfit a tiny subset (exit 1 on failure)")
    _add_recipe_args(check, positional=True)
    check.add_argument("--batches", type=_positive_int, default=2, help="batches for the initial loss (default 2)")
    check.add_argument("--per-class", type=_positive_int, default=2, help="images per class to overfit (default 2)")
    check.add_argument("--steps", type=_positive_int, default=50, help="full-batch steps on them (default 50)")
    check.add_argument("--tolerance", type=float, default=None,
                       help="allowed relative error of the initial loss vs ln(C) (default 0.05)")

    lr_find = sub.add_parser("lr-find", help="LR range test (Lightning's Tuner.lr_find) with a PNG and a suggestion")
    _add_recipe_args(lr_find, positional=True)
    lr_find.add_argument("--out", help="PNG path (default runs/<recipe>/lr_find.png)")
    lr_find.add_argument("--min-lr", type=float, default=1e-5, help="sweep start (default 1e-5)")
    lr_find.add_argument("--max-lr", type=float, default=1.0, help="sweep end (default 1)")
    lr_find.add_argument("--steps", type=_positive_int, default=100, help="training steps of the sweep (default 100)")
    lr_find.add_argument("--write", metavar="RECIPE_OUT", help="write a copy of the recipe with optim.lr = suggestion")

    search = sub.add_parser("search", help="coarse-to-fine search over lr x weight decay with Optuna (resumable)")
    _add_recipe_args(search, positional=True)
    search.add_argument("--out", help="output folder (default runs/<recipe>/search/)")
    search.add_argument("--storage", help="Optuna storage URL (default sqlite:///<out>/search.db); a shared "
                                          "postgresql://... URL lets several machines run trials of one search")
    search.add_argument("--coarse-trials", type=_positive_int, default=12, help="coarse trials (default 12)")
    search.add_argument("--coarse-epochs", type=_positive_int, default=2, help="epochs per coarse trial (default 2)")
    search.add_argument("--refine-trials", type=int, default=6, help="refine trials (default 6; 0 = none)")
    search.add_argument("--refine-epochs", type=_positive_int, help="epochs per refine trial (default: the recipe's)")
    search.add_argument("--top-k", type=_positive_int, default=3, help="coarse trials the refine ranges span (default 3)")
    search.add_argument("--lr", nargs=2, type=float, default=[1e-4, 1e-1], metavar=("LOW", "HIGH"),
                        help="coarse lr range, log-uniform (default 1e-4 1e-1)")
    search.add_argument("--weight-decay", nargs=2, type=float, default=[1e-6, 1e-2], metavar=("LOW", "HIGH"),
                        help="coarse weight decay range, log-uniform (default 1e-6 1e-2)")
    search.add_argument("--backbone-lr-mult", nargs=2, type=float, metavar=("LOW", "HIGH"),
                        help="also search the fine-tune backbone LR multiplier in this range (e.g. 0.01 1)")
    search.add_argument("--strategies", nargs="+", choices=SEARCHABLE_KINDS,
                        help="also search the strategy kind (default: the recipe's)")
    search.add_argument("--keep-checkpoints", action="store_true", help="keep each trial's checkpoints (large)")
    search.add_argument("--no-progress", action="store_true", help="no progress bar")

    diagnose = sub.add_parser("diagnose", help="train/val curves PNG and a verdict with advice, from a run directory")
    diagnose.add_argument("run_dir", help="a run directory (has metrics.csv)")
    diagnose.add_argument("--out", help="PNG path (default <run_dir>/curves.png)")
    diagnose.add_argument("--gap", type=float, default=0.10, help="train - val accuracy that counts as overfitting")

    report = sub.add_parser("report", help="one self-contained HTML page of a run (curves, evaluation, data warnings, "
                                           "diagnosis, provenance, recipe), or several runs compared")
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories written by tlkit train")
    report.add_argument("--out", help="HTML path (default <RUN_DIR>/report.html for one run, ./tlkit-report.html for "
                                      "several); an existing file is replaced only if it is an earlier report")

    init = sub.add_parser("init-stats", help="activation/gradient statistics through a deep MLP per init scheme")
    init.add_argument("--init", nargs="+", default=["xavier_normal", "he_normal"], help="init schemes to compare")
    init.add_argument("--activation", default="relu", help="relu, leaky_relu, elu, selu, gelu, tanh (default relu)")
    init.add_argument("--depth", type=_positive_int, default=10, help="layers (default 10)")
    init.add_argument("--width", type=_positive_int, default=512, help="units per layer (default 512)")
    init.add_argument("--xavier-gain", choices=("none", "activation"), default="none",
                      help="none = textbook Glorot (the seed's); activation = tlkit heads' gain-corrected Xavier")
    init.add_argument("--out", default="init_stats.png", help="PNG path (default init_stats.png)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.seed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    handler = HANDLERS[args.command]
    try:
        with sigterm_stops():
            return handler(args)
    except RecipeError as exc:
        print(f"error: {redact_credentials(str(exc))}", file=sys.stderr)  # may list several problems, one per line
        return EXIT_RECIPE_ERROR
    except TlkitError as exc:
        print(f"error: {redact_credentials(_one_line(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM; `train` reports its run and the --resume command itself
        print(f"interrupted ({StopSignal.cause()}); files tlkit had finished writing are complete (each is written "
              "atomically).", file=sys.stderr)
        return StopSignal.exit_code()
    except OSError as exc:  # disk full, read-only or forbidden folder: the environment, not a bug, so no traceback
        print(f"error: {redact_credentials(describe_os_error(exc))}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
