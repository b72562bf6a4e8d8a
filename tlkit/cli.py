"""`tlkit` command line: thin argument parsing around tlkit.run."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from tlkit.errors import RecipeError, TlkitError
from tlkit.precision import PRECISIONS
from tlkit.tta import AGGREGATES, DEFAULT_MAX_VIEWS_PER_FORWARD

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
        "--num-workers", default="0",
        help="image-decoding worker processes (default 0: on a small CPU they compete with the model; auto = min(4, CPUs))",
    )
    parser.add_argument(
        "--max-views-per-forward", type=_positive_int, default=DEFAULT_MAX_VIEWS_PER_FORWARD,
        help=f"memory cap: views per model forward (default {DEFAULT_MAX_VIEWS_PER_FORWARD})",
    )
    parser.add_argument(
        "--precision", choices=PRECISIONS, default="fp32",
        help="fp32 (default); bf16 = bfloat16 autocast, ~2.6x faster on CPUs with AMX but it flipped 1 of 153 "
             "hymenoptera predictions; auto = bf16 only where native (AMX, AVX512-BF16, Ampere+). README 'Performance'",
    )


def parse_tta(text: str) -> str | dict:
    """A policy name, or an inline YAML mapping for a custom policy: '{policy: custom, crops: five, scales: [256]}'."""
    if not text.strip().startswith("{"):
        return text
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid YAML mapping ({getattr(exc, 'problem', exc)}).") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a mapping like '{{policy: custom, crops: five}}'.")
    return value


def _workers(text: str) -> int | str:
    return text if text == "auto" else int(text)


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tlkit", description="Transfer learning for image classification.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a recipe and print a summary")
    _add_recipe_args(train, required=False)
    train.add_argument("--run-dir", help="write the run exactly here (default runs/<recipe>/<timestamp>/)")
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
    evaluate.add_argument("--top-losses", type=_positive_int, default=16, help="images in the top-loss CSV and gallery")
    _add_inference_args(evaluate)

    predict = sub.add_parser("predict", help="top-k labels for image files and folders, as CSV (and JSON)")
    _add_checkpoint_arg(predict)
    predict.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders (searched recursively)")
    predict.add_argument("--out", default="predictions.csv", help="CSV file to write (default: predictions.csv)")
    predict.add_argument("--json", dest="json_out", help="also write predictions and skipped files as JSON here")
    predict.add_argument("--top-k", type=_positive_int, default=5, help="labels per image (default: 5, at most the classes)")
    predict.add_argument(
        "--tta", type=parse_tta,
        help="policy: none, hflip, ten_crop, multi_scale or a YAML mapping (default: the checkpoint's own policy)",
    )
    predict.add_argument("--aggregate", choices=AGGREGATES, help="how views combine (default: mean_prob)")
    _add_inference_args(predict)

    export = sub.add_parser("export", help="safetensors + JSON sidecar, and ONNX checked against PyTorch")
    _add_checkpoint_arg(export)
    export.add_argument("--out", required=True, help="folder for model.safetensors, model.json, model.onnx")
    export.add_argument(
        "--images", nargs="+", default=[], metavar="PATH",
        help="real images (files or folders) for the ONNX parity check, e.g. the validation folder",
    )
    export.add_argument("--no-onnx", action="store_true", help="write only safetensors + model.json")
    export.add_argument("--atol", type=float, default=1e-3, help="max abs logit difference ONNX vs PyTorch (1e-3)")

    groups = sub.add_parser("groups", help="the layer groups of a backbone that gradual / layer_decay strategies use")
    groups.add_argument("backbone", help="timm architecture, e.g. tf_efficientnet_lite0")
    groups.add_argument("--fine", action="store_true", help="one group per block instead of per stage")

    _add_tuning_parsers(sub)
    doctor = sub.add_parser("doctor", help="report messy cases in an image folder (read-only), as a table and JSON")
    doctor.add_argument("folder", help="data root: <class>/* or train/<class>/* + val/<class>/*")
    doctor.add_argument("--min-size", type=_positive_int, default=32,
                        help="flag images whose shorter side is below this (default 32; use the recipe's input size)")
    doctor.add_argument("--json", dest="json_out", help="report path (default runs/doctor/<folder name>.json)")

    recipe = sub.add_parser("recipe", help="inspect recipes")
    recipe_sub = recipe.add_subparsers(dest="recipe_command", required=True)
    show = recipe_sub.add_parser("show", help="print the fully resolved recipe with every default and its reason")
    _add_recipe_args(show, positional=True)
    return parser


def _add_tuning_parsers(sub) -> None:
    """check, lr-find, search, diagnose, init-stats: the seeds' tuning procedure (tlkit.run.tuning)."""
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
                        help="coarse lr range, log-uniform (default 1e-4 1e-1, the seeds')")
    search.add_argument("--weight-decay", nargs=2, type=float, default=[1e-6, 1e-2], metavar=("LOW", "HIGH"),
                        help="coarse weight decay range, log-uniform (default 1e-6 1e-2)")
    search.add_argument("--backbone-lr-mult", nargs=2, type=float, metavar=("LOW", "HIGH"),
                        help="also search the fine-tune backbone LR multiplier in this range (e.g. 0.01 1)")
    search.add_argument("--strategies", nargs="+", choices=("linear_probe", "finetune"),
                        help="also search the strategy kind (default: the recipe's)")
    search.add_argument("--keep-checkpoints", action="store_true", help="keep each trial's checkpoints (large)")
    search.add_argument("--no-progress", action="store_true", help="no progress bar")

    diagnose = sub.add_parser("diagnose", help="train/val curves PNG and a verdict with advice, from a run directory")
    diagnose.add_argument("run_dir", help="a run directory (has metrics.csv)")
    diagnose.add_argument("--out", help="PNG path (default <run_dir>/curves.png)")
    diagnose.add_argument("--gap", type=float, default=0.10, help="train - val accuracy that counts as overfitting")

    init = sub.add_parser("init-stats", help="activation/gradient statistics through a deep MLP per init scheme")
    init.add_argument("--init", nargs="+", default=["xavier_normal", "he_normal"], help="init schemes to compare")
    init.add_argument("--activation", default="relu", help="relu, leaky_relu, elu, selu, gelu, tanh (default relu)")
    init.add_argument("--depth", type=_positive_int, default=10, help="layers (default 10)")
    init.add_argument("--width", type=_positive_int, default=512, help="units per layer (default 512)")
    init.add_argument("--xavier-gain", choices=("none", "activation"), default="none",
                      help="none = textbook Glorot (the seed's); activation = tlkit heads' gain-corrected Xavier")
    init.add_argument("--out", default="init_stats.png", help="PNG path (default init_stats.png)")


def format_summary(metrics: dict) -> str:
    """A small two-column table of the numbers a user looks at first."""
    acc = metrics.get("val_acc")
    best = metrics.get("best_val_acc")
    rows = [
        ("val accuracy", f"{acc:.2%}" if acc is not None else "n/a"),
        ("best val accuracy", f"{best:.2%}" if best is not None else "n/a"),
        ("val loss", f"{metrics['val_loss']:.4f}" if metrics.get("val_loss") is not None else "n/a"),
        ("epochs", str(metrics.get("epochs"))),
        ("wall time", f"{metrics.get('wall_s', 0):.1f} s"),
        ("images train / val", f"{metrics.get('num_train')} / {metrics.get('num_val')}"),
        ("backbone", f"{metrics.get('backbone')} [{metrics.get('weights')}]"),
        ("strategy", str(metrics.get("strategy"))),
        ("run directory", str(metrics.get("run_dir"))),
    ]
    width = max(len(k) for k, _ in rows)
    value_width = max(len(v) for _, v in rows)
    rule = f"+-{'-' * width}-+-{'-' * value_width}-+"
    body = [f"| {k.ljust(width)} | {v.ljust(value_width)} |" for k, v in rows]
    return "\n".join([rule, *body, rule])


def _train(args: argparse.Namespace) -> int:
    from tlkit.recipe import load_recipe

    overrides = [*args.overrides, *(["cache.disk=false"] if args.no_cache else [])]
    if args.resume:
        if args.recipe or args.run_dir:
            raise RecipeError("--resume RUN_DIR takes the recipe and the run directory from RUN_DIR; "
                              "drop --recipe / --run-dir.")
        from tlkit.run.resume import load_run_recipe

        recipe = load_run_recipe(args.resume, overrides)
    elif not args.recipe:
        raise RecipeError("tlkit train needs --recipe FILE (a new run) or --resume RUN_DIR (continue a killed run).")
    else:
        recipe = load_recipe(args.recipe, overrides)  # fails fast, before any data scan or model build
    from tlkit.run import fit

    metrics = fit(recipe, run_dir=args.resume or args.run_dir, resume=bool(args.resume))
    from tlkit.run.distributed import launch_rank

    if launch_rank() == 0:  # under torchrun / srun every rank trains; one summary is enough
        print(format_summary(metrics))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from tlkit.evaluate import format_report_table
    from tlkit.run import evaluate_checkpoint

    report = evaluate_checkpoint(
        args.checkpoint, args.data, tta=args.tta, aggregate=args.aggregate, out=args.out, split=args.split,
        num_workers=_workers(args.num_workers), max_views_per_forward=args.max_views_per_forward,
        top_losses=args.top_losses, precision=args.precision,
    )
    print(format_report_table(report))
    print(f"report: {Path(report['out_dir']) / 'report.json'} (confusion matrices, top losses per policy beside it)")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from tlkit.run import predict_checkpoint

    summary = predict_checkpoint(
        args.checkpoint, args.inputs, out=args.out, json_out=args.json_out, top_k=args.top_k, tta=args.tta,
        aggregate=args.aggregate, num_workers=_workers(args.num_workers),
        max_views_per_forward=args.max_views_per_forward, precision=args.precision,
    )
    for path, why in summary["skipped"]:
        print(f"skipped {path}: {why}", file=sys.stderr)
    written = summary["csv"] + (f" and {summary['json']}" if "json" in summary else "")
    print(f"predicted {summary['predicted']} image(s) with {summary['policy']} ({summary['views']} view(s)) -> "
          f"{written}; skipped {len(summary['skipped'])}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from tlkit.run import export_checkpoint

    summary = export_checkpoint(args.checkpoint, args.out, images=args.images, onnx=not args.no_onnx, atol=args.atol)
    print(f"wrote {summary['weights']} and {summary['sidecar']} (loads back identically)")
    if "onnx" in summary:
        parity = summary["onnx_parity"]
        print(
            f"wrote {summary['onnx']}: onnxruntime vs PyTorch on {summary['parity_inputs']}: max abs diff "
            f"logits {parity['max_abs_diff_logits']:.2e}, probabilities {parity['max_abs_diff_probs']:.2e}, "
            f"top-1 agreement {parity['top1_agreement']:.0%}"
        )
    return 0


def _preview(args: argparse.Namespace) -> int:
    from tlkit.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    from tlkit.run import preview_augment

    print(f"wrote {preview_augment(recipe, n=args.n, out=args.out)}")
    return 0


def _recipe_show(args: argparse.Namespace) -> int:
    from tlkit.recipe import load_recipe, render_recipe

    sys.stdout.write(render_recipe(load_recipe(args.recipe, args.overrides)))
    return 0


def _groups(args: argparse.Namespace) -> int:
    from tlkit.groups import groups_table

    print(groups_table(args.backbone, coarse=not args.fine))
    return 0


def _check(args: argparse.Namespace) -> int:
    from tlkit.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    from tlkit.run.tuning import check
    from tlkit.sanity import format_results

    report = check(recipe, batches=args.batches, per_class=args.per_class, steps=args.steps, tolerance=args.tolerance)
    if report["strategy_auto"]:
        print(f"strategy auto -> {report['strategy_auto']['kind']}: {report['strategy_auto']['reason']}")
    print(f"{recipe.name}: {report['num_classes']} classes, {report['strategy']} on {report['inputs']}")
    print(format_results(report["results"]))
    return 0 if report["passed"] else 1


def _lr_find(args: argparse.Namespace) -> int:
    from tlkit.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    from tlkit.run.tuning import lr_find, write_recipe_copy

    result = lr_find(recipe, out=args.out, min_lr=args.min_lr, max_lr=args.max_lr, num_training=args.steps)
    suggestion = result["suggestion"]
    print(f"{recipe.name}: LR range test, {result['steps']} steps on {result['inputs']} ({result['strategy']}), "
          f"{result['seconds']} s")
    if suggestion is None:
        print("no suggestion: the loss never fell steadily; widen --min-lr/--max-lr or raise --steps")
        return 1
    print(f"suggested lr {suggestion:.3g} (steepest loss descent; the recipe has {recipe.optim.lr:g}) -> {result['png']}")
    if args.write:
        out = write_recipe_copy(args.recipe, [*args.overrides, f"optim.lr={suggestion:.3g}"], args.write,
                                data_root=result["data_root"])
        print(f"wrote {out} (optim.lr = {suggestion:.3g})")
    return 0


def _search(args: argparse.Namespace) -> int:
    from tlkit.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    from tlkit.run.tuning import search
    from tlkit.search import SearchSpace

    try:
        space = SearchSpace(tuple(args.lr), tuple(args.weight_decay),
                            tuple(args.backbone_lr_mult) if args.backbone_lr_mult else None, args.strategies or [])
    except ValueError as exc:
        raise RecipeError(f"search: {exc}") from None
    summary = search(
        recipe, source=args.recipe, source_overrides=args.overrides, out_dir=args.out, storage=args.storage,
        coarse_trials=args.coarse_trials, refine_trials=args.refine_trials, coarse_epochs=args.coarse_epochs,
        refine_epochs=args.refine_epochs, top_k=args.top_k, space=space, progress=not args.no_progress,
        keep_checkpoints=args.keep_checkpoints,
    )
    for stage in summary["stages"].values():
        print(stage["table"])
    best = summary["best"]
    print(f"best: {best['stage']} trial {best['trial']}, val acc {best['val_acc']:.2%}, "
          + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in best["params"].items()))
    print(f"wrote {summary['best_recipe']}, {summary['png']}, trials CSV/markdown in {summary['out_dir']}")
    print(f"storage {summary['storage']} (re-run the same command to resume)")
    return 0


def _diagnose(args: argparse.Namespace) -> int:
    from tlkit.run.tuning import diagnose

    result = diagnose(args.run_dir, out=args.out, gap=args.gap)
    v = result["values"]
    print(f"{result['verdict'].upper()}: {result['reason']}")
    print(f"  final epoch {v['epochs']}: train acc {v['train_acc']:.2%} / val acc {v['val_acc']:.2%}, "
          f"train loss {v['train_loss']:.4f} / val loss {v['val_loss']:.4f}; best val epoch {v['best_val_epoch'] + 1}")
    for advice in result["advice"]:
        print(f"  - {advice}")
    print(f"curves: {result['png']}")
    return 0


def _init_stats(args: argparse.Namespace) -> int:
    from tlkit.init_stats import format_table, init_statistics, plot_statistics

    results = {init: init_statistics(init, args.activation, depth=args.depth, width=args.width,
                                     xavier_gain=args.xavier_gain) for init in args.init}
    print(f"{args.activation}, depth {args.depth}, width {args.width}, unit-Gaussian input and output gradient "
          f"(xavier gain: {args.xavier_gain})")
    print(format_table(results))
    title = f"{args.activation} MLP, depth {args.depth}, width {args.width}"
    print(f"wrote {plot_statistics(results, args.out, title=title)}")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from tlkit.doctor import default_report_path, diagnose, format_table, write_gallery, write_report

    report = diagnose(args.folder, min_size=args.min_size)
    print(format_table(report))
    written = write_report(report, args.json_out or default_report_path(args.folder))
    print(f"report: {written}")
    gallery = write_gallery(report, written.with_suffix(".png"))
    if gallery is not None:
        print(f"pictures of the flagged images: {gallery}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.seed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    handler = {
        "train": _train, "preview": _preview, "evaluate": _evaluate, "predict": _predict, "export": _export,
        "recipe": _recipe_show, "groups": _groups, "check": _check, "lr-find": _lr_find, "search": _search,
        "diagnose": _diagnose, "init-stats": _init_stats, "doctor": _doctor,
    }[args.command]
    try:
        return handler(args)
    except RecipeError as exc:
        print(f"error: {exc}", file=sys.stderr)  # may list several problems, one per line
        return EXIT_RECIPE_ERROR
    except TlkitError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
