"""What each `tlkit` command does once its arguments are parsed (tlkit.cli.main parses them and reports errors).

Each handler imports its machinery on first use, so `tlkit --help` and recipe errors stay fast.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tlkit.cli.audit import run_audit, run_noisy
from tlkit.cli.stream import run_data
from tlkit.errors import RecipeError

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for a Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM: a batch scheduler must not record a stopped run as a success


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, a batch scheduler's stop or time limit), raised where the program is, as Ctrl-C is: Lightning
    then shuts down gracefully and the CLI prints where the run is and how to continue it."""


class StopSignal:
    """What stopped the command: 'Ctrl-C' unless SIGTERM arrived (set by the handler `sigterm_stops` installs)."""

    received: str | None = None

    @classmethod
    def cause(cls) -> str:
        return cls.received or "Ctrl-C"

    @classmethod
    def exit_code(cls) -> int:
        return EXIT_TERMINATED if cls.received == "SIGTERM" else EXIT_INTERRUPTED


@contextmanager
def sigterm_stops() -> Iterator[None]:
    """While the block runs, SIGTERM raises Terminated. Left alone, Python would die without a word, and Lightning's
    own handler turns SIGTERM into a SystemExit with code 0 (the run recorded as a success, with no metrics.json)."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread only
        yield
        return

    def terminate(signum, frame) -> None:
        StopSignal.received = "SIGTERM"
        raise Terminated()

    StopSignal.received = None
    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interrupted_message(run_dir: str | Path | None, epoch: int | None = None, cause: str = "Ctrl-C") -> str:
    """Where an interrupted `tlkit train` left its run, and the command that continues it."""
    if run_dir is None or not Path(run_dir).is_dir():
        return (f"interrupted ({cause}) before training started; if a 'run directory:' line was printed above, "
                "`tlkit train --resume` that folder to continue, else start the run again.")
    during = f" during epoch {epoch + 1}" if epoch is not None else ""
    saved = ("checkpoints/last.ckpt holds the last completed epoch"
             if (Path(run_dir) / "checkpoints" / "last.ckpt").is_file() else "no epoch had completed yet")
    return (f"interrupted ({cause}){during}: the run is in {run_dir} ({saved}); continue it with: "
            f"tlkit train --resume {shlex.quote(str(run_dir))}")


def _pct(value: float | None) -> str:
    return f"{value:.2%}" if value is not None else "n/a"


def format_summary(metrics: dict) -> str:
    """A small two-column table of the numbers a user looks at first (the run's task says which: accuracy, or mAP
    and F1 for multi-label)."""
    from tlkit.model.task_reports import report_of

    task = report_of(metrics)
    headline = [(label, " / ".join(_pct(metrics.get(k)) for k in keys)) for label, keys in task.headline]
    rows = [
        *headline,
        ("val loss", f"{metrics['val_loss']:.4f}" if metrics.get("val_loss") is not None else "n/a"),
        ("epochs", str(metrics.get("epochs"))),
        ("wall time", f"{metrics.get('wall_s', 0):.1f} s"),
        ("images train / val", f"{metrics.get('num_train')} / {metrics.get('num_val')}"),
        ("backbone", f"{metrics.get('backbone')} [{metrics.get('weights')}]"),
        ("strategy", str(metrics.get("strategy"))),
        ("run directory", str(metrics.get("run_dir"))),
    ]
    label, keys = task.test_headline
    if metrics.get(keys[0]) is not None:  # evaluated once, with the checkpoint val chose
        shown = " / ".join(_pct(metrics.get(k)) for k in keys)
        rows.insert(len(headline), (label, f"{shown} ({metrics.get('num_test')} images)"))
    mid_run = metrics.get("skipped_mid_run") or {}
    if any(mid_run.values()):  # files that vanished or broke after the scan (listed in skipped_mid_run.txt)
        after_images = next(i for i, (name, _) in enumerate(rows) if name == "images train / val") + 1
        rows.insert(after_images, ("skipped mid-run train / val", f"{mid_run.get('train', 0)} / {mid_run.get('val', 0)}"))
    width = max(len(k) for k, _ in rows)
    value_width = max(len(v) for _, v in rows)
    rule = f"+-{'-' * width}-+-{'-' * value_width}-+"
    body = [f"| {k.ljust(width)} | {v.ljust(value_width)} |" for k, v in rows]
    return "\n".join([rule, *body, rule])


def _train(args: argparse.Namespace) -> int:
    from tlkit.recipe import load_recipe

    overrides = [*args.overrides, *(["cache.disk=false"] if args.no_cache else [])]
    if args.resume and args.overwrite:
        raise RecipeError("--resume continues a run and --overwrite replaces one; give only one of them.")
    if args.reproduce:
        return _reproduce(args, overrides)
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
    metrics = _fit_or_stop(recipe, args.resume or args.run_dir, resume=bool(args.resume), overwrite=args.overwrite)
    if isinstance(metrics, int):
        return metrics
    from tlkit.run.distributed import launch_rank

    if launch_rank() == 0:  # under torchrun / srun every rank trains; one summary is enough
        print(format_summary(metrics))
    return 0


def _fit_or_stop(recipe, run_dir: str | None, *, resume: bool = False, overwrite: bool = False) -> dict | int:
    """fit()'s metrics; or, when Ctrl-C or SIGTERM stopped it at any stage, the exit code after the message that
    says where the run is and how to continue it."""
    from tlkit.model.faults import InterruptNotice
    from tlkit.run import fit

    notice = InterruptNotice()
    try:
        return fit(recipe, run_dir=run_dir, resume=resume, overwrite=overwrite, callbacks=[notice])
    except (KeyboardInterrupt, SystemExit) as exc:
        if isinstance(exc, SystemExit) and not notice.interrupted:
            raise
        print(interrupted_message(notice.run_dir or run_dir, notice.epoch, StopSignal.cause()), file=sys.stderr)
        return StopSignal.exit_code()


def _reproduce(args: argparse.Namespace, overrides: list[str]) -> int:
    """Train RUN_DIR's recipe again into a new run directory; say what differs (versions, data, results)."""
    from tlkit.recipe import load_recipe
    from tlkit.run import provenance

    source = Path(args.reproduce)
    if args.recipe or args.resume:
        raise RecipeError("--reproduce RUN_DIR takes the recipe from RUN_DIR; drop --recipe / --resume.")
    if not (source / "recipe.yaml").is_file():
        raise RecipeError(f"--reproduce {source}: no recipe.yaml there; pass a run directory tlkit wrote.")
    recipe = load_recipe(source / "recipe.yaml", overrides)
    # Everything the comparison reads is checked now: a damaged file must not surface after a whole run has trained.
    before = provenance.read(source)
    old = provenance.read_json(source / "metrics.json", "metrics.json") if (source / "metrics.json").is_file() else {}
    metrics = _fit_or_stop(recipe, args.run_dir, overwrite=args.overwrite)
    if isinstance(metrics, int):
        return metrics
    print(format_summary(metrics))
    now = provenance.read(Path(metrics["run_dir"]))
    changes = provenance.differences(before, now or {}) if before else ["the original run has no provenance.json"]
    if isinstance(old.get("val_acc"), (int, float)) and metrics.get("val_acc") is not None:
        changes.append(f"val accuracy: {old['val_acc']:.2%} then, {metrics['val_acc']:.2%} now")
    print(f"reproduced {source}:" if changes else f"reproduced {source}: same versions, data and hardware")
    for line in changes:
        print(f"  {line}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from tlkit.infer.evaluate import format_report_table
    from tlkit.run import evaluate_checkpoint

    report = evaluate_checkpoint(
        args.checkpoint, args.data, tta=args.tta, aggregate=args.aggregate, out=args.out, split=args.split,
        num_workers=args.num_workers, max_views_per_forward=args.max_views_per_forward,
        top_losses=args.top_losses, precision=args.precision,
    )
    print(format_report_table(report))
    beside = "per-class AP, F1 and thresholds" if report.get("multi_label") else "confusion matrices"
    print(f"report: {Path(report['out_dir']) / 'report.json'} ({beside}, top losses per policy beside it)")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from tlkit.run import predict_checkpoint

    summary = predict_checkpoint(
        args.checkpoint, args.inputs, out=args.out, json_out=args.json_out, top_k=args.top_k, tta=args.tta,
        aggregate=args.aggregate, num_workers=args.num_workers,
        max_views_per_forward=args.max_views_per_forward, precision=args.precision, overwrite=args.overwrite,
        devices=args.devices, accelerator=args.accelerator, return_rows=TABLE_ROWS,
    )
    for path, why in summary["skipped"][:TABLE_ROWS]:
        print(f"skipped {path}: {why}", file=sys.stderr)
    if len(summary["skipped"]) > TABLE_ROWS:
        print(f"skipped {len(summary['skipped']) - TABLE_ROWS} more file(s)" + (" (listed in the JSON)" if
              "json" in summary else " (pass --json to list them)"), file=sys.stderr)
    to_stdout = summary["csv"] == "-"  # stdout carries the CSV alone; the table and summary would corrupt it
    if not to_stdout:
        print(format_predictions_table(summary["rows"], total=summary["predicted"]))
    written = ("stdout" if to_stdout else summary["csv"]) + (f" and {summary['json']}" if "json" in summary else "")
    print(f"predicted {summary['predicted']} image(s) with {summary['policy']} ({summary['views']} view(s)) -> "
          f"{written}; skipped {len(summary['skipped'])}; {summary['seconds']:.1f} s, "
          f"{summary['images_per_second']:.1f} images/s", file=sys.stderr if to_stdout else sys.stdout)
    return 0


TABLE_ROWS = 20  # rows the predict command prints (and keeps in memory); the CSV holds them all


def format_predictions_table(rows: list[dict], limit: int = TABLE_ROWS, total: int | None = None) -> str:
    """file, top-1 label, probability for the first `limit` images (the rest: in the CSV); multi-label: file and its
    label set with probabilities. total: how many rows there are (default: len(rows))."""
    total = len(rows) if total is None else total
    shown = rows[:limit]
    width = max([4] + [len(r["path"]) for r in shown])
    if shown and "probabilities" in shown[0]:  # multi-label rows: a label set, possibly empty
        lines = [f"{'file':<{width}}  labels (probability)"]
        lines += [f"{r['path']:<{width}}  " + (", ".join(f"{label} ({p:.3f})" for label, p in zip(r["labels"], r["probs"]))
                                                 or "(none over threshold)") for r in shown]
        if total > limit:
            lines.append(f"... and {total - limit} more")
        return "\n".join(lines)
    label_width = max([5] + [len(r["labels"][0]) for r in shown])
    lines = [f"{'file':<{width}}  {'label':<{label_width}}  prob"]
    lines += [f"{r['path']:<{width}}  {r['labels'][0]:<{label_width}}  {r['probs'][0]:.3f}" for r in shown]
    if total > limit:
        lines.append(f"... and {total - limit} more")
    return "\n".join(lines)


def _export(args: argparse.Namespace) -> int:
    from tlkit.run import export_checkpoint

    summary = export_checkpoint(args.checkpoint, args.out, images=args.images, onnx=not args.no_onnx, atol=args.atol,
                                tta=args.tta, overwrite=args.overwrite)
    print(f"wrote {summary['weights']} and {summary['sidecar']} (loads back identically)")
    if "onnx" in summary:
        parity = summary["onnx_parity"]
        print(
            f"wrote {summary['onnx']}: onnxruntime vs PyTorch on {summary['parity_inputs']}: max abs diff "
            f"logits {parity['max_abs_diff_logits']:.2e}, probabilities {parity['max_abs_diff_probs']:.2e}, "
            f"top-1 agreement {parity['top1_agreement']:.0%}"
            + (f", label sets {parity['label_set_agreement']:.0%}" if "label_set_agreement" in parity else "")
        )
        print(f"standalone bundle (numpy + Pillow + onnxruntime, TTA {summary['tta']}): "
              f"python {Path(summary['out_dir']) / 'predict.py'} IMAGE...")
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
    from tlkit.model.groups import groups_table

    print(groups_table(args.backbone, coarse=not args.fine))
    return 0


def _check(args: argparse.Namespace) -> int:
    from tlkit.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    from tlkit.run.tuning import check
    from tlkit.tune.sanity import format_results

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
    from tlkit.tune.search import SearchSpace

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
    print(f"best: {best['stage']} trial {best['trial']}, {best['monitor']} {best['value']:.2%}, "
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


def _report(args: argparse.Namespace) -> int:
    from tlkit.report import write_report

    print(f"wrote {write_report(args.run_dirs, out=args.out)}")
    return 0


def _init_stats(args: argparse.Namespace) -> int:
    from tlkit.tune.init_stats import format_table, init_statistics, plot_statistics

    results = {init: init_statistics(init, args.activation, depth=args.depth, width=args.width,
                                     xavier_gain=args.xavier_gain) for init in args.init}
    print(f"{args.activation}, depth {args.depth}, width {args.width}, unit-Gaussian input and output gradient "
          f"(xavier gain: {args.xavier_gain})")
    print(format_table(results))
    title = f"{args.activation} MLP, depth {args.depth}, width {args.width}"
    print(f"wrote {plot_statistics(results, args.out, title=title)}")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from tlkit.data.doctor import (
        default_report_path,
        diagnose,
        format_table,
        write_gallery,
        write_report,
    )

    table = _doctor_table(args)
    if table is not None:
        from tlkit.data.doctor import diagnose_table

        report = diagnose_table(table, min_size=args.min_size, columns=args.columns, delimiter=args.label_delimiter)
    else:
        report = diagnose(args.folder, min_size=args.min_size)
    print(format_table(report))
    written = write_report(report, args.json_out or default_report_path(table or args.folder))
    print(f"report: {written}")
    gallery = write_gallery(report, written.with_suffix(".png"))
    if gallery is not None:
        print(f"pictures of the flagged images: {gallery}")
    return 0


def _doctor_table(args: argparse.Namespace) -> Path | None:
    """The label table the doctor checks: FOLDER --csv NAME, or FOLDER itself when it is a .csv file; else None."""
    if args.csv:
        return Path(args.folder) / args.csv
    return Path(args.folder) if Path(args.folder).suffix.lower() == ".csv" else None


def _generate(args: argparse.Namespace) -> int:
    from tlkit.data.generate import write_digits, write_mosaics

    if args.kind == "digits":
        print(f"digits: {write_digits(args.out)}")
        return 0
    if args.kind == "noisy":
        return run_noisy(args)
    counts = {s: getattr(args, s) for s in ("train", "val", "test") if getattr(args, s) is not None}
    out = write_mosaics(args.source, args.out, counts=counts, grid=args.grid, min_classes=args.min_classes,
                        max_classes=args.max_classes, cell=args.cell, seed=args.seed, val_fraction=args.val_fraction)
    lines = (out / "labels.csv").read_text(encoding="utf-8").splitlines()[1:]
    per_split = {s: sum(1 for line in lines if line.endswith("," + s)) for s in ("train", "val", "test")}
    print(f"wrote {len(lines)} mosaics to {out} ({', '.join(f'{s} {n}' for s, n in per_split.items() if n)}); "
          f"labels: {out / 'labels.csv'}")
    print(f"train on it with: --set data.root={out} --set data.source=csv")
    return 0


HANDLERS = {
    "train": _train, "preview": _preview, "evaluate": _evaluate, "predict": _predict, "export": _export,
    "recipe": _recipe_show, "groups": _groups, "check": _check, "lr-find": _lr_find, "search": _search,
    "diagnose": _diagnose, "init-stats": _init_stats, "doctor": _doctor, "report": _report, "generate": _generate,
    "audit": run_audit, "data": run_data,
}
