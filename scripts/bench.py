"""tlkit side by side with what users would otherwise write: a bare PyTorch loop, plain inference, and fastai.

    python scripts/bench.py                          # sections 1-4 on bundled lite0 at 224 px, hymenoptera
    .venv-bench/bin/python scripts/bench.py --fastai # + section 5 (make bench-env installs fastai there only)

1. fine-tune training throughput: tlkit (TransferModule + Lightning Trainer, as `fit` builds it) vs a minimal
   hand-written loop with the same model, optimizer groups, schedule, batches and images -> ratio (target >= 0.95);
2. a linear-probe step (frozen backbone) and a fine-tune step vs an inference forward (targets <= 1.1x, <= 3x);
3. the augmented loader's images/s vs what the fine-tune step consumes (target >= 2x);
4. inference images/s in fp32, channels_last and bf16 autocast (and the accuracy of each with --checkpoint);
5. fastai `Learner.fine_tune(epochs - 1, freeze_epochs=1)` vs tlkit's lp_ft with a 1-epoch probe (the same
   schedule shape and epoch budget, each toolkit with its own defaults): wall time and val accuracy.

Timings on a shared 2-core machine are noisy: each measurement alternates the contenders over --repeats rounds and
reports medians. Writes <out>/bench.json and <out>/bench.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

import lightning as L  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from bench_augment import loader_throughput  # noqa: E402
from lightning.pytorch.callbacks import Callback, LearningRateMonitor  # noqa: E402
from lightning.pytorch.loggers import CSVLogger  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from tlkit.infer.precision import autocast  # noqa: E402
from tlkit.model.schedules import LRMultiplier  # noqa: E402
from tlkit.recipe import LinearProbe, load_recipe  # noqa: E402
from tlkit.run import build_datamodule, build_module, fit, resolve_preprocessing  # noqa: E402

DEFAULT_RECIPE = "recipes/hymenoptera_finetune.yaml"


# -- helpers -----------------------------------------------------------------------------------------------------

def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "lightning": L.__version__, "python": platform.python_version()}


def median(values: list[float]) -> float:
    return statistics.median(values)


def fixed_batches(recipe, steps: int) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[str]]:
    """`steps` augmented training batches decoded once, so every contender trains on identical tensors."""
    datamodule = build_datamodule(recipe)
    module = build_module(recipe, datamodule.classes)
    datamodule = datamodule.replace(preprocessing=module.preprocessing, cache=False)
    datamodule.setup("fit")
    batches = []
    for images, labels in datamodule.train_dataloader():
        if len(images) == recipe.data.batch_size:
            batches.append((images, labels))
        if len(batches) == steps:
            break
    if len(batches) < 2:
        raise SystemExit(f"need at least 2 full batches of {recipe.data.batch_size}; lower --steps or the batch size")
    return batches, datamodule.classes


def as_loader(batches) -> DataLoader:
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    return DataLoader(TensorDataset(x, y), batch_size=len(batches[0][0]), shuffle=False, num_workers=0)


class StepClock(Callback):
    """Time stamps at the end of each training batch (the first batch is warm-up and not counted)."""

    def __init__(self):
        self.stamps: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.stamps.append(time.perf_counter())


def images_per_s(stamps: list[float], batch_size: int) -> float:
    return batch_size * (len(stamps) - 1) / (stamps[-1] - stamps[0])


# -- 1. training throughput: tlkit vs a bare loop -------------------------------------------------------------------

def tlkit_train_rate(recipe, classes, loader, workdir: Path) -> float:
    """Images/s of TransferModule trained by a Lightning Trainer configured like tlkit.run.fit (logger, LR monitor,
    per-step schedule, torchmetrics accuracy); progress bar off, as in a bare loop."""
    module = build_module(recipe, classes)
    clock = StepClock()
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=CSVLogger(str(workdir), name="", version=""),
                        callbacks=[clock, LearningRateMonitor(logging_interval="epoch")], enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, log_every_n_steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, train_dataloaders=loader)
    return images_per_s(clock.stamps, loader.batch_size)


def bare_train_rate(recipe, classes, loader) -> float:
    """Images/s of the loop a user would write by hand: same model, groups, SGD, per-step LambdaLR, loss."""
    module = build_module(recipe, classes)  # the same nn.Modules and init, used as a plain torch model
    model = torch.nn.Sequential(module.backbone, module.head).train()
    optimizer = module.build_optimizer()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, LRMultiplier("cosine", total_steps=len(loader)))
    stamps = []
    for images, labels in loader:
        images = images.contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(model(images), labels, label_smoothing=recipe.optim.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        stamps.append(time.perf_counter())
    return images_per_s(stamps, loader.batch_size)


def bench_training(recipe, classes, batches, repeats: int, workdir: Path) -> dict:
    loader = as_loader(batches)
    bare_train_rate(recipe, classes, loader)  # discarded: the process's first training pays one-off kernel setup
    tlkit_rates, bare_rates = [], []
    for r in range(repeats):  # alternate so a load change hits both contenders
        bare_rates.append(bare_train_rate(recipe, classes, loader))
        tlkit_rates.append(tlkit_train_rate(recipe, classes, loader, workdir / f"train{r}"))
        print(f"  round {r + 1}: bare {bare_rates[-1]:.1f}, tlkit {tlkit_rates[-1]:.1f} images/s", flush=True)
    ratios = [t / b for t, b in zip(tlkit_rates, bare_rates)]
    return {"tlkit_images_per_s": round(median(tlkit_rates), 2), "bare_images_per_s": round(median(bare_rates), 2),
            "ratio": round(median(ratios), 3), "ratios": [round(x, 3) for x in ratios], "target": ">= 0.95"}


# -- 2. step cost vs inference ------------------------------------------------------------------------------------

def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return median(times)


def bench_step_costs(recipe, classes, batch, repeats: int) -> dict:
    images, labels = batch
    images = images.contiguous(memory_format=torch.channels_last)
    lp = build_module(recipe.model_copy(update={"strategy": LinearProbe()}), classes).train()
    ft = build_module(recipe, classes).train()
    lp_opt = torch.optim.SGD([p for p in lp.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    ft_opt = torch.optim.SGD(ft.parameters(), lr=1e-4, momentum=0.9)

    def infer():
        lp.eval()
        with torch.inference_mode():
            lp(images)
        lp.train()

    def step(module, optimizer, precision="fp32"):
        def run():
            with autocast(precision):
                loss = F.cross_entropy(module(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return run

    rounds = {"inference": [], "linear_probe_step": [], "finetune_step": [], "finetune_step_bf16": []}
    for _ in range(repeats):
        rounds["inference"].append(timed(infer, 1))
        rounds["linear_probe_step"].append(timed(step(lp, lp_opt), 1))
        rounds["finetune_step"].append(timed(step(ft, ft_opt), 1))
        rounds["finetune_step_bf16"].append(timed(step(ft, ft_opt, "bf16"), 1))
    base = median(rounds["inference"])
    out = {k: {"ms_per_batch": round(1000 * median(v), 1), "x_inference": round(median(v) / base, 2)}
           for k, v in rounds.items()}
    out["linear_probe_step"]["target"] = "<= 1.1x"
    out["finetune_step"]["target"] = "<= 3x"
    out["finetune_step_bf16"]["target"] = "not the default: measured to decide"
    return out


def load_recipe_like(recipe, *overrides: str):
    """`recipe` with dotted overrides applied (validated like --set)."""
    from tlkit.recipe import apply_overrides, recipe_to_dict, validate_recipe

    return validate_recipe(apply_overrides(recipe_to_dict(recipe), list(overrides)))


# -- 4. inference settings ----------------------------------------------------------------------------------------

INFERENCE_SETTINGS = (("fp32", False, "fp32"), ("channels_last", True, "fp32"), ("channels_last + bf16", True, "bf16"))


def bench_inference(recipe, classes, batch, repeats: int, checkpoint: str | None, data: str | None) -> dict:
    images = batch[0]
    module = build_module(recipe, classes).eval()
    backbone = module.backbone
    rates: dict[str, list[float]] = {name: [] for name, _, _ in INFERENCE_SETTINGS}
    for _ in range(repeats):
        for name, channels_last, precision in INFERENCE_SETTINGS:
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            backbone.to(memory_format=fmt)
            x = images.contiguous(memory_format=fmt)

            def run():
                with torch.inference_mode(), autocast(precision):
                    backbone(x)
            rates[name].append(len(images) / timed(run, 2))
    result = {name: {"images_per_s": round(median(v), 1)} for name, v in rates.items()}
    base = result["fp32"]["images_per_s"]
    for entry in result.values():
        entry["x_fp32"] = round(entry["images_per_s"] / base, 2)
    if checkpoint and data:
        from tlkit.run import evaluate_checkpoint

        for precision in ("fp32", "bf16"):
            report = evaluate_checkpoint(checkpoint, data, tta=["none"], precision=precision, progress=False,
                                         out=Path(tempfile.mkdtemp(prefix=f"bench-eval-{precision}-")))
            entry = result["channels_last" if precision == "fp32" else "channels_last + bf16"]
            entry["val_acc"] = report["policies"]["none"]["accuracy"]
            entry["val_nll"] = round(report["policies"]["none"]["nll"], 4)
    return result


# -- 5. fastai ----------------------------------------------------------------------------------------------------

def bench_fastai(recipe, epochs: int, repeats: int) -> dict:
    """fastai's fine_tune(epochs - 1, freeze_epochs=1) vs tlkit's lp_ft with a 1-epoch probe: the same schedule shape
    (head only for one epoch, then everything) and the same total epochs, each toolkit with its own defaults."""
    from bench_fastai import fastai_fine_tune

    overrides = [f"trainer.epochs={epochs}", "trainer.progress_bar=false"]
    if recipe.strategy.kind == "lp_ft":
        overrides += ["strategy.probe=sgd", "strategy.probe_epochs=1"]  # one head-only epoch, as freeze_epochs=1
    tlkit_recipe = load_recipe_like(recipe, *overrides)
    rows = {"tlkit": [], "fastai": []}
    for r in range(repeats):
        m = fit(tlkit_recipe, run_dir=tempfile.mkdtemp(prefix="bench-tlkit-"))
        rows["tlkit"].append({"wall_s": m["wall_s"], "val_acc": m["val_acc"], "best_val_acc": m["best_val_acc"]})
        rows["fastai"].append(fastai_fine_tune(recipe, epochs=epochs))
        print(f"  round {r + 1}: tlkit {rows['tlkit'][-1]}, fastai {rows['fastai'][-1]}", flush=True)
    summary = {}
    for name, runs in rows.items():
        summary[name] = {"wall_s": round(median([x["wall_s"] for x in runs]), 1),
                         "val_acc": round(median([x["val_acc"] for x in runs]), 4), "runs": runs}
    summary["tlkit_recipe"] = {"strategy": tlkit_recipe.strategy.model_dump(), "epochs": epochs,
                               "augment": tlkit_recipe.augment.preset, "lr": tlkit_recipe.optim.lr}
    summary["wall_ratio_fastai_over_tlkit"] = round(summary["fastai"]["wall_s"] / summary["tlkit"]["wall_s"], 2)
    return summary


# -- report -------------------------------------------------------------------------------------------------------

def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads), torch {m['torch']}, "
             f"Lightning {m['lightning']}. Model {results['backbone']} at {results['input_size']} px, batch "
             f"{results['batch_size']}; medians of {results['repeats']} alternating rounds.", "",
             "| measure | tlkit | reference | ratio | target |", "|---|---|---|---|---|"]
    t = results.get("training")
    if t:
        lines.append(f"| 1. fine-tune training images/s | {t['tlkit_images_per_s']} | bare PyTorch loop "
                     f"{t['bare_images_per_s']} | {t['ratio']} | {t['target']} |")
    s = results.get("step_costs")
    if s:
        inf = s["inference"]["ms_per_batch"]
        for key, label in (("linear_probe_step", "2. linear-probe step"), ("finetune_step", "2. fine-tune step"),
                           ("finetune_step_bf16", "2. fine-tune step, bf16 autocast")):
            lines.append(f"| {label} ms/batch | {s[key]['ms_per_batch']} | inference forward {inf} | "
                         f"{s[key]['x_inference']}x | {s[key]['target']} |")
    d = results.get("loader")
    if d:
        lines.append(f"| 3. augmented loader images/s ({d['workers']} workers, {d['preset']}) | {d['images_per_s']} "
                     f"| fine-tune step consumes {d['consumption_images_per_s']} | {d['x_consumption']}x | >= 2x |")
    i = results.get("inference")
    if i:
        for name, e in i.items():
            acc = f", val acc {e['val_acc']:.2%}" if "val_acc" in e else ""
            lines.append(f"| 4. inference {name} images/s | {e['images_per_s']}{acc} | fp32 "
                         f"{i['fp32']['images_per_s']} | {e['x_fp32']}x | fastest with unchanged accuracy |")
    f = results.get("fastai")
    if f:
        r = f["tlkit_recipe"]
        lines.append(f"| 5. {r['epochs']} epochs, wall s and val acc: tlkit {r['strategy']['kind']} vs fastai | "
                     f"{f['tlkit']['wall_s']} s, "
                     f"{f['tlkit']['val_acc']:.2%} | fastai fine_tune {f['fastai']['wall_s']} s, "
                     f"{f['fastai']['val_acc']:.2%} | fastai/tlkit time {f['wall_ratio_fastai_over_tlkit']} | "
                     "tlkit as accurate, no slower |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=DEFAULT_RECIPE, help="a fine-tune recipe: model, data, size, batch")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override a.b=value")
    parser.add_argument("--steps", type=int, default=8, help="training batches per throughput measurement")
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds; medians are reported")
    parser.add_argument("--workers", type=int, default=2, help="loader workers for section 3")
    parser.add_argument("--checkpoint", help="a trained checkpoint: section 4 also checks accuracy per precision")
    parser.add_argument("--fastai", action="store_true", help="section 5 (needs fastai: make bench-env)")
    parser.add_argument("--fastai-epochs", type=int, default=5, help="total epoch budget for section 5")
    parser.add_argument("--fastai-recipe", default="recipes/hymenoptera_lp_ft.yaml",
                        help="tlkit's side of section 5 (an lp_ft recipe gets a 1-epoch probe, like freeze_epochs=1)")
    parser.add_argument("--fastai-repeats", type=int, default=1)
    parser.add_argument("--only", nargs="+", choices=["training", "steps", "loader", "inference", "fastai"])
    parser.add_argument("--out", default="runs/bench")
    args = parser.parse_args()

    recipe = load_recipe(args.recipe, [*args.overrides, "trainer.progress_bar=false"])
    if recipe.strategy.kind != "finetune":
        parser.error(f"--recipe must be a fine-tune recipe (strategy.kind: finetune); {args.recipe} is "
                     f"{recipe.strategy.kind}")
    wanted = set(args.only or ["training", "steps", "loader", "inference", *(["fastai"] if args.fastai else [])])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(recipe.seed, verbose=False)
    batches, classes = fixed_batches(recipe, args.steps)
    size = batches[0][0].shape[-1]
    results: dict = {"machine": machine_info(), "backbone": recipe.backbone.name, "weights": recipe.backbone.weights,
                     "input_size": size, "batch_size": recipe.data.batch_size, "repeats": args.repeats,
                     "steps": args.steps, "recipe": args.recipe, "overrides": args.overrides}
    workdir = Path(tempfile.mkdtemp(prefix="tlkit-bench-"))
    if "training" in wanted:
        print("1. fine-tune training throughput (tlkit vs bare loop)", flush=True)
        results["training"] = bench_training(recipe, classes, batches, args.repeats, workdir)
    if "steps" in wanted or "loader" in wanted:
        print("2. step cost vs inference forward", flush=True)
        results["step_costs"] = bench_step_costs(recipe, classes, batches[0], args.repeats)
    if "loader" in wanted:
        print("3. data loading vs consumption", flush=True)
        scan = build_datamodule(recipe).scan
        pre = resolve_preprocessing(recipe)  # no weights needed for the transform
        rate = loader_throughput(scan.train, pre, recipe.augment.preset, args.workers, recipe.data.batch_size, 1)
        consumption = recipe.data.batch_size / (results["step_costs"]["finetune_step"]["ms_per_batch"] / 1000)
        results["loader"] = {"preset": recipe.augment.preset, "workers": args.workers, "images_per_s": round(rate, 1),
                             "consumption_images_per_s": round(consumption, 1),
                             "x_consumption": round(rate / consumption, 1)}
    if "inference" in wanted:
        print("4. inference settings", flush=True)
        data = str(recipe.data.root) if args.checkpoint else None
        results["inference"] = bench_inference(recipe, classes, batches[0], args.repeats, args.checkpoint, data)
    if "fastai" in wanted:
        print("5. fastai fine_tune vs tlkit", flush=True)
        fastai_recipe = load_recipe(args.fastai_recipe, [*args.overrides, "trainer.progress_bar=false"])
        results["fastai"] = bench_fastai(fastai_recipe, args.fastai_epochs, args.fastai_repeats)
    table = markdown(results)
    (out / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "bench.md").write_text(table)
    print("\n" + table + f"\nwrote {out / 'bench.json'} and {out / 'bench.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
