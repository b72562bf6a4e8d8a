"""fastai's `Learner.fine_tune` on the same backbone weights, data and image size as a tlkit recipe.

Used by `scripts/bench.py --fastai`; runnable alone:

    .venv-bench/bin/python scripts/bench_fastai.py --recipe recipes/hymenoptera_finetune.yaml --epochs 5

fastai is installed only in the benchmark environment (`make bench-env`), never as a tlkit dependency. The learner is
built the way fastai's `vision_learner` builds one for a timm body (its default head: concat pooling, BatchNorm,
dropout, two linear layers; kaiming init; body/head split so `freeze` trains the head), with the fastai book's
presizing augmentation, because that is what a fastai user would run. The body's weights come from tlkit's bundled
lite0 package (this machine has no internet for timm's hub download).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def fastai_fine_tune(recipe, *, epochs: int) -> dict:
    """Train with `fine_tune(epochs - 1, freeze_epochs=1)` (the same total epoch budget); wall time includes building
    the dataloaders and the model, as tlkit's `fit` wall time does."""
    import torch
    from fastai.vision.all import (
        CrossEntropyLossFlat,
        ImageDataLoaders,
        Learner,
        Normalize,
        Resize,
        accuracy,
        apply_init,
        aug_transforms,
        create_head,
        params,
    )
    from fastcore.foundation import L as FastList

    from tlkit.model.backbones import create_backbone
    if epochs < 2:
        raise SystemExit("fastai fine_tune needs at least 2 epochs: 1 frozen + the rest unfrozen")
    started = time.perf_counter()
    body, pre, _ = create_backbone(recipe.backbone.name, recipe.backbone.weights)
    pre = pre.replace(**recipe.backbone.preprocessing_overrides())
    body.reset_classifier(0, global_pool="")  # feature maps: fastai's head does its own (concat) pooling
    root = Path(recipe.data.root)
    dls = ImageDataLoaders.from_folder(
        root, train="train", valid="val", bs=recipe.data.batch_size, seed=recipe.seed,
        item_tfms=Resize(round(pre.input_size / pre.crop_pct)),
        batch_tfms=[*aug_transforms(size=pre.input_size, min_scale=0.75), Normalize.from_stats(pre.mean, pre.std)],
    )
    head = create_head(body.num_features, dls.c)
    apply_init(head, torch.nn.init.kaiming_normal_)
    model = torch.nn.Sequential(body, head)
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), metrics=accuracy,
                    splitter=lambda m: FastList(m[0], m[1]).map(params))
    with learn.no_bar(), learn.no_logging():
        learn.fine_tune(epochs - 1, freeze_epochs=1)
        val_loss, val_acc = learn.validate()
    return {"wall_s": round(time.perf_counter() - started, 2), "val_acc": float(val_acc), "val_loss": float(val_loss),
            "train_images": len(dls.train_ds), "val_images": len(dls.valid_ds)}


def main() -> int:
    from tlkit.recipe import load_recipe

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="recipes/hymenoptera_finetune.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    recipe = load_recipe(args.recipe, args.overrides)
    print(json.dumps(fastai_fine_tune(recipe, epochs=args.epochs), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
