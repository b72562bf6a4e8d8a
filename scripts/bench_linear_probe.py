"""Linear-probe wall time and accuracy: image path (backbone every epoch) vs feature cache (cold and warm), or the
closed-form solver alone (--solvers): scikit-learn's lbfgs once per C vs tlkit's warm-started C path.

  python scripts/bench_linear_probe.py                         # hymenoptera, bundled lite0 at 224 px, 10 and 30 epochs
  python scripts/bench_linear_probe.py --epochs 10 --set backbone.input_size=96
  python scripts/bench_linear_probe.py --solvers               # synthetic 2,000 x 1,280 features, 10 classes
  python scripts/bench_linear_probe.py --solvers --recipe my.yaml --set data.root=/data/x   # + that recipe's features

Cold = empty cache folder (extraction included); warm = the features already on disk. Prints a markdown table and
writes JSON. Wall time is tlkit.run.fit's (imports excluded); with --solvers, the solver's alone (held-out accuracy
on the val split, or on 2,000 more synthetic rows).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tlkit.recipe import load_recipe  # noqa: E402
from tlkit.run import fit  # noqa: E402


def run(recipe_path: str, overrides: list[str]) -> dict:
    recipe = load_recipe(recipe_path, [*overrides, "trainer.progress_bar=false"])
    return fit(recipe, run_dir=tempfile.mkdtemp(prefix="bench-lp-"))


def synthetic(n: int, seed: int, d: int = 1280, k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-negative correlated features (like pooled activations) of k overlapping classes: about 80% separable."""
    fixed = np.random.default_rng(0)
    means, proj = fixed.normal(size=(k, 64)), fixed.normal(size=(64, d)) / 8
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    x = np.maximum((means[y] * 0.35 + rng.normal(size=(n, 64))) @ proj + 0.3 * rng.normal(size=(n, d)) + 0.2, 0)
    return torch.from_numpy(x).float(), torch.from_numpy(y)


def recipe_features(recipe_path: str, overrides: list[str]):
    """(train views (K, N, D), train labels, val features, val labels) of a recipe through the feature cache."""
    from tlkit.run.build import build_datamodule, build_module
    from tlkit.run.features import choose_training_inputs

    recipe = load_recipe(recipe_path, [*overrides, "trainer.progress_bar=false"])
    datamodule = build_datamodule(recipe)
    module = build_module(recipe, datamodule.classes)
    train_dm, _ = choose_training_inputs(recipe, datamodule, module)
    splits = train_dm.feature_splits()
    views, labels = splits.train.usable()
    val_x, val_y = splits.val.usable()
    views, val_x = views.tensor(), val_x.tensor()  # a benchmark of the in-memory solvers
    return views, labels, val_x.reshape(-1, val_x.shape[-1]), val_y, len(datamodule.classes)


def sklearn_per_c(views: torch.Tensor, labels: torch.Tensor, *, num_classes: int, seed: int):
    """The previous solver: sklearn LogisticRegression (lbfgs) on raw features once per C, then a refit."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    from tlkit.model.probe import C_GRID

    views = views if views.ndim == 3 else views[None]
    k, y = len(views), labels.numpy()
    fit_idx, held_idx = train_test_split(np.arange(len(y)), test_size=round(0.2 * len(y)), stratify=y,
                                         random_state=seed)
    rows = lambda idx: views[:, torch.as_tensor(idx)].reshape(-1, views.shape[-1]).double().numpy()  # noqa: E731
    scores = {c: LogisticRegression(C=c, max_iter=2000).fit(rows(fit_idx), np.tile(y[fit_idx], k))
              .score(rows(held_idx), np.tile(y[held_idx], k)) for c in C_GRID}
    best = max(C_GRID, key=lambda c: (scores[c], -abs(np.log10(c))))
    model = LogisticRegression(C=best, max_iter=2000).fit(rows(np.arange(len(y))), np.tile(y, k))
    weight = torch.zeros(num_classes, views.shape[-1], dtype=torch.float64)
    bias = torch.zeros(num_classes, dtype=torch.float64)
    coef, intercept = torch.from_numpy(model.coef_), torch.from_numpy(model.intercept_)
    if coef.shape[0] == 1:  # binary: one logit z; (-z/2, z/2) has the same softmax
        coef, intercept = torch.cat([-coef / 2, coef / 2]), torch.cat([-intercept / 2, intercept / 2])
    weight[model.classes_], bias[model.classes_] = coef, intercept
    return weight.float(), bias.float(), {"C": best}


def bench_solvers(args) -> list[dict]:
    """Old vs new closed-form solver on synthetic features (and the recipe's when --recipe was given)."""
    import time

    from tlkit.model.probe import fit_logistic_head

    problems = {"synthetic 2,000 x 1,280, 10 classes": (*synthetic(2000, 1), *synthetic(2000, 2), 10)}
    if args.recipe_given:
        views, labels, val_x, val_y, k = recipe_features(args.recipe, args.overrides)
        problems[f"{Path(args.recipe).stem}: {views.shape[0]} x {views.shape[1]} x {views.shape[2]}, {k} classes"] = (
            views, labels, val_x, val_y, k)
    rows = []
    print("| features | solver | wall s | chosen C | held-out acc |\n|---|---|---|---|---|", flush=True)
    for name, (x, y, test_x, test_y, k) in problems.items():
        for solver, fn in (("sklearn lbfgs per C", sklearn_per_c), ("tlkit warm-started path", fit_logistic_head)):
            started = time.perf_counter()
            weight, bias, info = fn(x, y, num_classes=k, seed=0)
            wall = time.perf_counter() - started
            acc = float(((test_x @ weight.T + bias).argmax(1) == test_y).float().mean())
            rows.append({"features": name, "solver": solver, "wall_s": round(wall, 2), "C": info["C"],
                         "heldout_acc": acc})
            print(f"| {name} | {solver} | {wall:.1f} | {info['C']:g} | {acc:.2%} |", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=None, help="default recipes/hymenoptera_linear_probe.yaml")
    parser.add_argument("--solvers", action="store_true", help="time the closed-form solvers only")
    parser.add_argument("--epochs", type=int, nargs="+", default=[10, 30])
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", default="bench_linear_probe.json")
    args = parser.parse_args()
    args.recipe_given = args.recipe is not None
    args.recipe = args.recipe or "recipes/hymenoptera_linear_probe.yaml"
    machine = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
               "torch": torch.__version__}
    if args.solvers:
        rows = bench_solvers(args)
        Path(args.out).write_text(json.dumps({"machine": machine, "mode": "solvers", "rows": rows}, indent=2) + "\n")
        print(f"\nwrote {args.out}")
        return

    rows = []
    print("| epochs | path | wall s | speed-up | val acc | best val acc |\n|---|---|---|---|---|---|", flush=True)
    for epochs in args.epochs:
        base = [*args.overrides, f"trainer.epochs={epochs}"]
        uncached = run(args.recipe, [*base, "cache.features=false"])
        cache_dir = tempfile.mkdtemp(prefix="bench-lp-cache-")
        cold = run(args.recipe, [*base, f"cache.dir={cache_dir}"])
        warm = run(args.recipe, [*base, f"cache.dir={cache_dir}"])
        for name, m in (("uncached", uncached), ("cached, cold", cold), ("cached, warm", warm)):
            speedup = uncached["wall_s"] / m["wall_s"]
            rows.append({"epochs": epochs, "path": name, "wall_s": m["wall_s"], "speedup": round(speedup, 1),
                         "val_acc": m["val_acc"], "best_val_acc": m["best_val_acc"],
                         "feature_cache": m["feature_cache"]})
            print(f"| {epochs} | {name} | {m['wall_s']:.1f} | {speedup:.1f}x | {m['val_acc']:.2%} | "
                  f"{m['best_val_acc']:.2%} |", flush=True)
    Path(args.out).write_text(json.dumps({"machine": machine, "recipe": args.recipe, "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
