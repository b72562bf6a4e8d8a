"""`tlkit` command line: thin argument parsing around tlkit.run."""

from __future__ import annotations

import argparse
import logging
import sys

from tlkit.errors import RecipeError, TlkitError

EXIT_RECIPE_ERROR = 2


def _add_recipe_args(parser: argparse.ArgumentParser, *, positional: bool = False) -> None:
    if positional:
        parser.add_argument("recipe", help="recipe YAML file")
    else:
        parser.add_argument("--recipe", required=True, help="recipe YAML file (see recipes/)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a recipe value, e.g. --set optim.lr=0.001 (repeatable; relative data.root is from the cwd)",
    )


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
    _add_recipe_args(train)
    train.add_argument("--run-dir", help="write the run exactly here (default runs/<recipe>/<timestamp>/)")
    train.add_argument("--no-cache", action="store_true",
                       help="linear probes: neither read nor write the on-disk feature cache (same as --set cache.disk=false)")

    preview = sub.add_parser("preview", help="PNG grid of training samples after augmentation and mixing")
    _add_recipe_args(preview)
    preview.add_argument("--n", type=_positive_int, default=16, help="number of samples (default 16)")
    preview.add_argument("--out", help="PNG path (default runs/<recipe>/augment_preview.png)")

    recipe = sub.add_parser("recipe", help="inspect recipes")
    recipe_sub = recipe.add_subparsers(dest="recipe_command", required=True)
    show = recipe_sub.add_parser("show", help="print the fully resolved recipe with every default and its reason")
    _add_recipe_args(show, positional=True)
    return parser


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
    recipe = load_recipe(args.recipe, overrides)  # fails fast, before any data scan or model build
    from tlkit.run import fit

    metrics = fit(recipe, run_dir=args.run_dir)
    print(format_summary(metrics))
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.seed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    handler = {"train": _train, "preview": _preview, "recipe": _recipe_show}[args.command]
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
