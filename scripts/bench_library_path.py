"""The library path vs the CLI: a plain lightning.Trainer with ImageFolderDataModule + TransferModule (the README's
Python example: linear probe, feature cache on by default) against `tlkit train` on the equivalent recipe.

  python scripts/bench_library_path.py                      # hymenoptera, bundled lite0 at 224 px, 10 epochs
  python scripts/bench_library_path.py --skip-cold          # warm disk cache only (the usual second run)

Each contender runs as its own process, as a user would start it, so the wall time includes Python start-up and
imports. "cold" = an empty feature-cache folder (the ~400 images go through the backbone once); "warm" = the
features already on disk. Issue 14's acceptance: library wall time <= 1.3 x tlkit train, same val accuracy +-1 image.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The README-style example, verbatim but for the data root, the epochs and one JSON line at the end.
LIBRARY_EXAMPLE = '''
import json, sys
import lightning as L
from tlkit import ImageFolderDataModule, TransferModule

L.seed_everything(42)
dm = ImageFolderDataModule(sys.argv[1], batch_size=32, augment="none")  # feature cache: on by default
model = TransferModule("tf_efficientnet_lite0", dm.classes, strategy="linear_probe",
                       optim={"name": "sgd", "lr": 0.01, "weight_decay": 1e-4}, schedule="cosine")
trainer = L.Trainer(max_epochs=int(sys.argv[2]), enable_progress_bar=False)
trainer.fit(model, datamodule=dm)
print("RESULT " + json.dumps({"val_acc": float(trainer.callback_metrics["val_acc"]), "num_val": len(dm.scan.val),
                              "cache": dm.cache_info}))
'''

CLI = "import sys; from tlkit.cli import main; sys.exit(main())"


def timed(cmd: list[str], env: dict, cwd: Path) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def library(data: str, epochs: int, env: dict, work: Path) -> dict:
    script = work / "library_example.py"
    script.write_text(LIBRARY_EXAMPLE)
    seconds, out = timed([sys.executable, str(script), data, str(epochs)], env, work)
    result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
    return {"seconds": seconds, "val_acc": result["val_acc"], "num_val": result["num_val"],
            "extracted": result["cache"].get("extracted"), "cache_used": result["cache"]["used"]}


def cli(recipe: str, data: str, epochs: int, env: dict, work: Path) -> dict:
    run_dir = work / f"run-{len(list(work.glob('run-*')))}"  # a fresh folder each time (never reuse a run dir)
    seconds, _ = timed([sys.executable, "-c", CLI, "train", "--recipe", recipe, "--run-dir", str(run_dir),
                        "--set", f"data.root={data}", "--set", f"trainer.epochs={epochs}",
                        "--set", "trainer.progress_bar=false"], env, work)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    cache = metrics.get("feature_cache", {})
    return {"seconds": seconds, "val_acc": metrics["val_acc"], "num_val": metrics["num_val"],
            "extracted": cache.get("extracted"), "cache_used": cache.get("used")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=str(REPO / "recipes" / "hymenoptera_linear_probe.yaml"))
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "datasets" / "hymenoptera"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--skip-cold", action="store_true", help="only the warm-cache runs (after one cold run each)")
    args = parser.parse_args()

    data = str(Path(args.data).resolve())
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-library-") as tmp:
        work = Path(tmp)
        for name, run in (("library (plain Trainer)", lambda env: library(data, args.epochs, env, work)),
                          ("tlkit train", lambda env: cli(args.recipe, data, args.epochs, env, work))):
            # Each contender gets its own cache folder: its cold run extracts, its warm run reads the disk.
            env = {**os.environ, "PYTHONPATH": str(REPO), "TLKIT_CACHE": str(work / f"cache-{len(rows)}")}
            cold = run(env)
            if not args.skip_cold:
                rows.append({"contender": name, "cache": "cold", **cold})
            rows.append({"contender": name, "cache": "warm", **run(env)})
    print("| contender | cache | wall s | val acc | val images right | extracted |\n|---|---|---|---|---|---|")
    for r in rows:
        right = round(r["val_acc"] * r["num_val"])
        print(f"| {r['contender']} | {r['cache']} | {r['seconds']:.1f} | {r['val_acc']:.4f} | {right}/{r['num_val']} "
              f"| {r['extracted']} |")
    for cache in ("cold", "warm"):
        pair = {r["contender"]: r for r in rows if r["cache"] == cache}
        if len(pair) == 2:
            lib, cli_row = pair["library (plain Trainer)"], pair["tlkit train"]
            images = abs(round(lib["val_acc"] * lib["num_val"]) - round(cli_row["val_acc"] * cli_row["num_val"]))
            print(f"{cache}: library / tlkit train wall time = {lib['seconds'] / cli_row['seconds']:.2f}x "
                  f"(target <= 1.3x); val accuracy differs by {images} image(s) (target <= 1)")


if __name__ == "__main__":
    main()
