"""A plain lightning.Trainer gets all of tlkit's data side: the feature cache for probes, lp_ft's cached probe phase,
trainer.test on the test split only, trainer.predict on unlabelled files with their paths, and the split saved in
checkpoints."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from conftest import tiny_recipe_dict, write_colour_classes
from PIL import Image

from tlkit.data.datamodule import ImageFolderDataModule
from tlkit.data.files import ImageFilesDataModule
from tlkit.errors import DataError, DataNotFoundError
from tlkit.infer.checkpoint import read_checkpoint, saved_split
from tlkit.model.module import TransferModule

CLASSES = ["blue", "green", "red"]


def tiny_module(strategy="linear_probe", **options) -> TransferModule:
    return TransferModule({"name": "test_resnet", "weights": "none", "input_size": 32}, CLASSES,
                          strategy={"kind": strategy, **options}, optim={"name": "adamw", "lr": 0.05})


def plain_trainer(epochs: int, **kwargs) -> L.Trainer:
    return L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, **kwargs)


def with_test_folder(root: Path) -> Path:
    """colour classes with train/ + val/ + a test/ copy of a few val images (renamed)."""
    write_colour_classes(root)
    for name in CLASSES:
        for i, src in enumerate(sorted((root / "val" / name).iterdir())[:2]):
            (root / "test" / name).mkdir(parents=True, exist_ok=True)
            (root / "test" / name / f"t{i}.png").write_bytes(src.read_bytes())
    return root


class ForwardCounter:
    """Counts the backbone's forward calls (images through it) and the input ndim of every training step."""

    def __init__(self, module: TransferModule):
        self.images = 0
        module.backbone.register_forward_hook(self._hook)

    def _hook(self, _module, inputs, _output):
        self.images += len(inputs[0])


# -- the cache through a plain Trainer ----------------------------------------------------------------------------


def test_plain_trainer_probe_reads_cached_features_and_matches_tlkit_fit(tmp_path):
    from tlkit.recipe import validate_recipe
    from tlkit.run import fit

    root = write_colour_classes(tmp_path / "c", per_class=9)
    cache = {"dir": str(tmp_path / "cache")}
    epochs = 3
    L.seed_everything(0, verbose=False)
    dm = ImageFolderDataModule(root, batch_size=8, num_workers=0, seed=0, augment="none", cache=cache)
    module = tiny_module()
    counter = ForwardCounter(module)
    seen = []
    original = module.training_step
    module.training_step = lambda batch, *a, **k: (seen.append(batch[0].ndim), original(batch, *a, **k))[1]
    trainer = plain_trainer(epochs, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)
    images = len(dm.scan.train) + len(dm.scan.val)
    assert counter.images == images  # one backbone forward per image in total, not per epoch
    assert set(seen) == {2} and len(seen) == epochs * (len(dm.scan.train) // 8)  # trained on pooled features
    assert dm.cache_info["used"] and dm.cache_info["extracted"] == images
    library_acc = float(trainer.callback_metrics["val_acc"])

    recipe = validate_recipe(tiny_recipe_dict(
        root, backbone={"name": "test_resnet"}, augment="none", optim={"name": "adamw", "lr": 0.05},
        cache=cache, trainer={"epochs": epochs}))
    metrics = fit(recipe, run_dir=tmp_path / "run")
    assert metrics["feature_cache"]["from_disk"] == images  # the same cache entries
    assert metrics["val_acc"] == pytest.approx(library_acc)
    ours = module.head.state_dict()
    theirs = torch.load(metrics["last_checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    for key, value in ours.items():
        torch.testing.assert_close(value, theirs[f"head.{key}"], atol=1e-5, rtol=1e-5)


def test_plain_trainer_lp_ft_switches_from_features_to_images_at_probe_epochs(tmp_path):
    root = write_colour_classes(tmp_path / "c", per_class=6)
    dm = ImageFolderDataModule(root, batch_size=4, num_workers=0, cache={"dir": str(tmp_path / "cache")})
    module = tiny_module("lp_ft", probe="sgd", probe_epochs=2)
    seen: dict[str, list[tuple[int, int]]] = {"train": [], "val": []}
    train_step, val_step = module.training_step, module.validation_step

    def train_spy(batch, *args, **kwargs):
        seen["train"].append((module.current_epoch, batch[0].ndim))
        return train_step(batch, *args, **kwargs)

    def val_spy(batch, *args, **kwargs):
        if not module.trainer.sanity_checking:
            seen["val"].append((module.current_epoch, batch[0].ndim))
        return val_step(batch, *args, **kwargs)

    module.training_step, module.validation_step = train_spy, val_spy
    plain_trainer(3).fit(module, datamodule=dm)  # no reload_dataloaders_every_n_epochs needed
    for split in ("train", "val"):
        assert {ndim for epoch, ndim in seen[split] if epoch < 2} == {2}, split  # pooled features
        assert {ndim for epoch, ndim in seen[split] if epoch == 2} == {4}, split  # images
    per_epoch = [len([e for e, _ in seen["train"] if e == epoch]) for epoch in range(3)]
    assert len(set(per_epoch)) == 1  # one loader, one batch count: the LR schedule is unchanged
    assert dm.cache_info["phase"] == "probe" and dm.cache_info["switch_epoch"] == 2


def test_finetune_and_mixing_train_on_images_and_say_why(tmp_path, caplog):
    root = write_colour_classes(tmp_path / "c", per_class=6)
    dm = ImageFolderDataModule(root, batch_size=4, num_workers=0, cache={"dir": str(tmp_path / "cache")})
    plain_trainer(1, num_sanity_val_steps=0).fit(tiny_module("finetune"), datamodule=dm)
    assert not dm.cache_info["used"] and "trains the backbone" in dm.cache_info["reason"]
    mixing = TransferModule({"name": "test_resnet", "weights": "none", "input_size": 32}, CLASSES,
                            mixing={"mixup_alpha": 0.2})
    plain_trainer(1, num_sanity_val_steps=0).fit(mixing, datamodule=dm)
    assert dm.cache_info == {"used": False, "reason": "image-space mixing requested"}
    assert "Mixup/CutMix mix images, not features" in caplog.text
    off = ImageFolderDataModule(root, batch_size=4, num_workers=0, cache=False)
    plain_trainer(1, num_sanity_val_steps=0).fit(tiny_module(), datamodule=off)
    assert off.cache_info["reason"] == "cache.features is off"


# -- test and predict --------------------------------------------------------------------------------------------


def test_trainer_test_evaluates_the_test_folder_which_val_never_sees(tmp_path):
    root = with_test_folder(tmp_path / "c")
    dm = ImageFolderDataModule(root, batch_size=4, num_workers=0, cache={"dir": str(tmp_path / "cache")})
    assert dm.scan.layout == "split"
    assert all("/test/" in p for p, _ in dm.scan.test) and len(dm.scan.test) == 6
    assert not any("/test/" in p for p, _ in dm.scan.train + dm.scan.val)
    module = tiny_module()
    trainer = plain_trainer(2)
    trainer.fit(module, datamodule=dm)
    [result] = trainer.test(module, datamodule=dm, verbose=False)
    assert set(result) >= {"test_acc", "test_loss", "test_balanced_acc", "test_macro_f1"}
    assert len(dm.test_dataloader().dataset) == 6


def test_trainer_test_without_a_test_split_says_how_to_get_one(tmp_path):
    root = write_colour_classes(tmp_path / "c", per_class=6)
    dm = ImageFolderDataModule(root, batch_size=4, num_workers=0, cache=False)
    with pytest.raises(DataError, match="no test split.*test_fraction"):
        plain_trainer(1).test(tiny_module(), datamodule=dm, verbose=False)


def _unlabelled(folder: Path) -> tuple[list[str], list[str]]:
    """Images in nested folders plus a non-image, a truncated JPEG (its header reads, its pixels do not) and a
    hidden file: (good paths, bad paths)."""
    good = []
    for i, sub in enumerate(["", "a", "a/b"]):
        path = folder / sub / f"img{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((40, 40, 3), 60 * i, np.uint8)).save(path)
        good.append(str(path))
    (folder / "notes.txt").write_text("not an image")
    full = folder / "a" / "full.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(full, quality=95)
    truncated = folder / "a" / "truncated.jpg"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    full.unlink()
    (folder / ".hidden.png").write_bytes(Path(good[0]).read_bytes())
    return sorted(good), [str(truncated)]


def test_trainer_predict_on_unlabelled_files_returns_probabilities_with_paths(tmp_path):
    good, bad = _unlabelled(tmp_path / "photos")
    dm = ImageFilesDataModule(tmp_path / "photos", batch_size=2)
    module = tiny_module().eval()
    batches = plain_trainer(1).predict(module, datamodule=dm)
    paths = [p for b in batches for p in b["paths"]]
    probs = torch.cat([b["probs"] for b in batches])
    assert sorted(paths) == good  # every good file once, the truncated one never replaced by another
    assert probs.shape == (len(good), 3) and torch.allclose(probs.sum(1), torch.ones(len(good)))
    skipped = dict(dm.skipped)
    assert bad[0] in skipped and "Cannot decode" in skipped[bad[0]]
    # the model's own eval transform: the same probabilities as calling it on the file
    from tlkit.data.augment import build_eval_transform
    from tlkit.data.images import decode

    x = build_eval_transform(module.preprocessing)(decode(paths[0]))[None]
    with torch.no_grad():
        torch.testing.assert_close(probs[0], module(x).softmax(-1)[0])


def test_image_files_take_a_list_and_report_missing_and_non_images(tmp_path, make_image):
    image = make_image(tmp_path / "x.png")
    (tmp_path / "y.txt").write_text("no")
    dm = ImageFilesDataModule([image, tmp_path / "y.txt", tmp_path / "gone.png"])
    assert dm.files == [str(image)]
    assert {Path(p).name for p, _ in dm.skipped} == {"y.txt", "gone.png"}
    with pytest.raises(DataNotFoundError, match="No image files to predict"):
        ImageFilesDataModule(tmp_path / "y.txt")


def test_image_folder_predict_dataloader_serves_the_val_split_with_paths(tmp_path):
    root = write_colour_classes(tmp_path / "c", per_class=6)
    dm = ImageFolderDataModule(root, batch_size=4, num_workers=0, cache=False)
    batches = plain_trainer(1).predict(tiny_module().eval(), datamodule=dm)
    assert sorted(p for b in batches for p in b["paths"]) == sorted(p for p, _ in dm.scan.val)


def test_exported_lazily_from_tlkit():
    import tlkit

    assert tlkit.ImageFilesDataModule is ImageFilesDataModule


# -- the split in checkpoints --------------------------------------------------------------------------------------


def test_checkpoint_saves_the_split_evaluate_recreates(tmp_path):
    from tlkit.data.scan import scan_folder

    root = write_colour_classes(tmp_path / "c", per_class=10, split=False)
    dm = ImageFolderDataModule(root, batch_size=4, num_workers=0, val_fraction=0.3, test_fraction=0.2, seed=5,
                               cache=False)
    trainer = plain_trainer(1, num_sanity_val_steps=0)
    trainer.fit(tiny_module(), datamodule=dm)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    split = saved_split(read_checkpoint(tmp_path / "m.ckpt"))
    assert split == {"layout": "single", "val_fraction": 0.3, "test_fraction": 0.2, "seed": 5}
    again = scan_folder(root, **{k: split[k] for k in ("val_fraction", "test_fraction", "seed")})
    assert (again.train, again.val, again.test) == (dm.scan.train, dm.scan.val, dm.scan.test)
