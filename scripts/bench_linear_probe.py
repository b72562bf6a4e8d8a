"""Linear-probe wall time and accuracy: image path (backbone every epoch) vs feature cache (cold and warm).

  python scripts/bench_linear_probe.py                         # hymenoptera, bundled lite0 at 224 px, 10 and 30 epochs
  python scripts/bench_linear_probe.py --epochs 10 --set backbone.input_size=96

Cold = empty cache folder (extraction included); warm = the features already on disk. Prints a markdown table and
writes JSON. Wall time is tlkit.run.fit's (imports excluded).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from tlkit.recipe import load_recipe  # noqa: E402
from tlkit.run import fit  # noqa: E402


def run(recipe_path: str, overrides: list[str]) -> dict:
    recipe = load_recipe(recipe_path, [*overrides, "trainer.progress_bar=false"])
    return fit(recipe, run_dir=tempfile.mkdtemp(prefix="bench-lp-"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/hymenoptera_linear_probe.yaml")
    parser.add_argument("--epochs", type=int, nargs="+", default=[10, 30])
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", default="bench_linear_probe.json")
    args = parser.parse_args()

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
    machine = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
               "torch": torch.__version__}
    Path(args.out).write_text(json.dumps({"machine": machine, "recipe": args.recipe, "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
