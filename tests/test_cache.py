"""Feature cache for linear probes: same head as the image path, reuse across runs, never a stale row."""

from __future__ import annotations

import json
import os
import time
import zlib

import numpy as np
import pytest
import torch
from conftest import tiny_recipe_dict, write_colour_classes
from PIL import Image
from safetensors.numpy import load_file

from tlkit.data.cache import FeatureCache, file_identity
from tlkit.data.shards import identity_digests
from tlkit.infer.checkpoint import load_checkpoint
from tlkit.recipe import validate_recipe
from tlkit.run import fit


def probe_recipe(root, cache_dir, **sections):
    base = tiny_recipe_dict(
        root, backbone={"name": "test_resnet"}, augment="none", optim={"name": "adamw", "lr": 0.05},
        cache={"dir": str(cache_dir)}, trainer={"epochs": 3},
    )
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return validate_recipe(base)


def head_of(metrics) -> dict[str, torch.Tensor]:
    module = load_checkpoint(metrics["last_checkpoint"])
    return {k: v for k, v in module.head.state_dict().items()}


def test_cached_and_uncached_paths_train_the_same_head(tmp_path):
    root = write_colour_classes(tmp_path / "c", per_class=9)
    cached = fit(probe_recipe(root, tmp_path / "cache"), run_dir=tmp_path / "cached")
    uncached = fit(probe_recipe(root, tmp_path / "cache", cache={"features": False}), run_dir=tmp_path / "uncached")
    assert cached["feature_cache"]["used"] and not uncached["feature_cache"]["used"]
    a, b = head_of(cached), head_of(uncached)
    assert a["0.weight"].abs().max() > 0  # the head trained
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-4, rtol=1e-4)
    assert cached["val_acc"] == uncached["val_acc"]


def test_second_run_reads_every_feature_from_disk(tmp_path):
    root = write_colour_classes(tmp_path / "c", per_class=6)
    first = fit(probe_recipe(root, tmp_path / "cache"), run_dir=tmp_path / "a")
    second = fit(probe_recipe(root, tmp_path / "cache"), run_dir=tmp_path / "b")
    total = first["num_train"] + first["num_val"]
    assert (first["feature_cache"]["extracted"], first["feature_cache"]["from_disk"]) == (total, 0)
    assert (second["feature_cache"]["extracted"], second["feature_cache"]["from_disk"]) == (0, total)
    assert second["val_acc"] == first["val_acc"]


def test_a_changed_file_is_recomputed_never_served_stale(tmp_path):
    root = write_colour_classes(tmp_path / "c", per_class=6)
    fit(probe_recipe(root, tmp_path / "cache"), run_dir=tmp_path / "a")
    victim = min((root / "train" / "red").iterdir())
    time.sleep(0.01)
    Image.fromarray(np.zeros((36, 36, 3), np.uint8)).save(victim)  # new content, size and mtime
    again = fit(probe_recipe(root, tmp_path / "cache"), run_dir=tmp_path / "b")
    assert again["feature_cache"]["extracted"] == 1


def test_other_preprocessing_uses_another_entry(tmp_path):
    root = write_colour_classes(tmp_path / "c", per_class=6)
    fit(probe_recipe(root, tmp_path / "cache"), run_dir=tmp_path / "a")
    other = fit(probe_recipe(root, tmp_path / "cache", backbone={"input_size": 40}), run_dir=tmp_path / "b")
    assert other["feature_cache"]["from_disk"] == 0


def stored_rows(directory) -> dict[bytes, torch.Tensor]:
    """Every row of every shard in a cache folder, by the digest of the identity it is stored under (see `digest`),
    read from disk; a newer shard's row replaces an older one's."""
    rows = {}
    for path in sorted(directory.rglob("*.safetensors"), key=lambda p: p.name):
        data = load_file(str(path))
        ids = [bytes(d) for d in data["ids"].view(np.uint8).reshape(-1, 16)]
        rows.update(zip(ids, torch.from_numpy(data["features"])))
    return rows


def digest(identity: str) -> bytes:
    return bytes(identity_digests([identity], 1).view(np.uint8))


def test_cache_entry_rows_follow_file_identity(tmp_path):
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    cache = FeatureCache(tmp_path / "cache")
    calls = []

    def compute(paths):  # the n-th computation returns rows of n: a served row says which computation made it
        calls.append(list(paths))
        return torch.full((len(paths), 4), float(len(calls)))

    first = cache.features({"k": 1}, [str(image)], compute)
    old = file_identity(image)
    assert list(stored_rows(tmp_path / "cache")) == [digest(old)]
    assert torch.equal(cache.features({"k": 1}, [str(image)], compute), first) and len(calls) == 1
    os.utime(image, ns=(time.time_ns(), time.time_ns() + 10**9))  # same bytes, another modification time
    assert file_identity(image) != old
    again = cache.features({"k": 1}, [str(image)], compute)
    assert calls == [[str(image)], [str(image)]]
    assert torch.equal(again, torch.full((1, 4), 2.0))  # recomputed, never the stale row
    assert torch.equal(stored_rows(tmp_path / "cache")[digest(file_identity(image))], again[0])
    reread = FeatureCache(tmp_path / "cache").features({"k": 1}, [str(image)], compute)  # a later run
    assert torch.equal(reread, again) and len(calls) == 2


def test_no_disk_cache_writes_nothing(tmp_path):
    root = write_colour_classes(tmp_path / "c", per_class=6)
    metrics = fit(probe_recipe(root, tmp_path / "cache", cache={"disk": False}), run_dir=tmp_path / "a")
    assert metrics["feature_cache"]["used"] and not (tmp_path / "cache").exists()


def test_mixing_falls_back_to_the_image_path_and_says_why(tmp_path, caplog):
    root = write_colour_classes(tmp_path / "c", per_class=6)
    metrics = fit(probe_recipe(root, tmp_path / "cache", mixing={"mixup_alpha": 0.2}), run_dir=tmp_path / "a")
    assert not metrics["feature_cache"]["used"]
    assert "mixing" in metrics["feature_cache"]["reason"]
    assert "Mixup/CutMix mix images, not features" in caplog.text


def test_random_augmentation_caches_k_distinct_reproducible_views(tmp_path):
    root = write_colour_classes(tmp_path / "c", per_class=6)
    recipe = probe_recipe(root, tmp_path / "cache", augment="heavy", cache={"views": 3})
    first = fit(recipe, run_dir=tmp_path / "a")
    assert first["feature_cache"]["views"] == 3
    assert first["feature_cache"]["extracted"] == 3 * first["num_train"] + first["num_val"]
    second = fit(recipe, run_dir=tmp_path / "b")
    assert second["feature_cache"]["extracted"] == 0
    view_rows = [torch.from_numpy(load_file(str(p))["features"]) for p in (tmp_path / "cache").rglob("*.safetensors")]
    train_views = [rows for rows in view_rows if len(rows) == first["num_train"]]
    assert len(train_views) == 3 and not torch.equal(train_views[0], train_views[1])


def test_finetune_never_uses_the_feature_cache(tmp_path):
    root = write_colour_classes(tmp_path / "c", per_class=6)
    metrics = fit(probe_recipe(root, tmp_path / "cache", strategy={"kind": "finetune"}, trainer={"epochs": 1}),
                  run_dir=tmp_path / "a")
    assert not metrics["feature_cache"]["used"]


def test_a_cached_probe_checkpoint_predicts_images(tmp_path):
    """The head trained on cached features, saved in the checkpoint, gives from the image files the probabilities it
    gives on their cached features, and the val accuracy fit logged."""
    from tlkit.infer.predictor import Predictor

    root = write_colour_classes(tmp_path / "c", per_class=12)
    metrics = fit(probe_recipe(root, tmp_path / "cache", optim={"lr": 0.3}), run_dir=tmp_path / "a")
    assert metrics["feature_cache"]["used"]
    files = sorted((root / "val").rglob("*.png"))
    module = load_checkpoint(metrics["best_checkpoint"])
    rows = stored_rows(tmp_path / "cache")
    features = torch.stack([rows[digest(file_identity(f))] for f in files])
    with torch.no_grad():
        from_features = module.head(features).softmax(dim=-1).numpy()
    from_images = Predictor.from_checkpoint(metrics["best_checkpoint"], tta="none").probabilities(files)
    np.testing.assert_allclose(from_images, from_features, atol=1e-5, rtol=0)
    truth = [module.classes.index(f.parent.name) for f in files]
    accuracy = float(np.mean(from_images.argmax(1) == truth))
    assert accuracy == pytest.approx(metrics["best_val_acc"], abs=1e-6) and accuracy >= 0.9, metrics["best_val_acc"]


def test_lbfgs_solver_fits_the_head_in_closed_form_and_saves_a_normal_checkpoint(tmp_path):
    root = write_colour_classes(tmp_path / "c", per_class=12)
    metrics = fit(probe_recipe(root, tmp_path / "cache", strategy={"kind": "linear_probe", "solver": "lbfgs"}),
                  run_dir=tmp_path / "a")
    assert metrics["feature_cache"]["solver"]["solver"] == "lbfgs"
    assert metrics["val_acc"] >= 0.9
    module = load_checkpoint(metrics["best_checkpoint"])
    assert module.head[-1].weight.abs().max() > 0


def test_lbfgs_with_an_mlp_head_is_a_recipe_error():
    import pytest

    from tlkit.errors import RecipeError

    with pytest.raises(RecipeError, match="lbfgs needs head.hidden must be"):
        validate_recipe({"data": {"root": "x"}, "strategy": {"kind": "linear_probe", "solver": "lbfgs"},
                         "head": {"hidden": [8]}})


def test_check_on_lp_ft_reads_the_probe_phase_from_the_cache(tmp_path):
    """tlkit check sets up the training datamodule without a Trainer; lp_ft's first epoch is served from features."""
    from tlkit.run.tuning import check

    root = write_colour_classes(tmp_path / "c", per_class=6)
    recipe = probe_recipe(root, tmp_path / "cache", strategy={"kind": "lp_ft", "probe": "sgd", "probe_epochs": 1},
                          trainer={"epochs": 2})
    report = check(recipe, steps=5)
    assert report["inputs"] == "cached features" and report["strategy"] == "lp_ft"
    assert report["results"][0].passed  # the initial loss is ln(C) on the head over cached features


# ---------------------------------------------------------------------------------------------------------------------
# Bounded memory: shards that only get added, rows read in batches


def _counting(width: int = 4):
    """compute() that yields rows a batch of 3 at a time, row value = 1 + the id's number, and counts the ids."""
    seen: list[str] = []

    def compute(ids):
        seen.extend(ids)
        for start in range(0, len(ids), 3):
            part = ids[start: start + 3]
            yield torch.tensor([[1.0 + int(i.split("-")[1])] * width for i in part])

    return compute, seen


def test_new_rows_are_appended_as_a_shard_and_stored_shards_are_never_rewritten(tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    compute, seen = _counting()
    ids = [f"row-{i}" for i in range(5)]
    first = cache.features({"k": 1}, ids, compute, identity=str)
    (shard,) = (tmp_path / "cache").rglob("*.safetensors")
    before = (shard.read_bytes(), shard.stat().st_mtime_ns)
    more = [*ids, "row-5", "row-6"]
    again = FeatureCache(tmp_path / "cache").features({"k": 1}, more, compute, identity=str)
    assert seen == [*ids, "row-5", "row-6"]  # only the new ids were computed
    assert torch.equal(again[:5], first) and again[:, 0].tolist() == [1, 2, 3, 4, 5, 6, 7]
    assert (shard.read_bytes(), shard.stat().st_mtime_ns) == before
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 2


def test_extraction_is_written_in_shards_while_it_runs(tmp_path, monkeypatch):
    from tlkit.data import cache as cache_module

    monkeypatch.setattr(cache_module, "SHARD_BYTES", 2 * 4 * 4)  # two rows of 4 float32: a shard every batch of 3
    compute, _ = _counting()
    rows = FeatureCache(tmp_path / "cache").rows({"k": 1}, [f"row-{i}" for i in range(7)], compute, identity=str)
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 3  # 3 + 3 + 1 rows
    assert rows.read([6, 0, 3, 0])[:, 0].tolist() == [7, 1, 4, 1]  # any order, repeats, across shards
    assert rows.tensor()[:, 0].tolist() == [1, 2, 3, 4, 5, 6, 7]


def test_an_entry_of_the_previous_format_is_ignored_never_misread(tmp_path, caplog):
    """tlkit <= 3 kept one features.safetensors per entry; its rows are recomputed, not served."""
    from safetensors.torch import save_file

    cache = FeatureCache(tmp_path / "cache")
    ids = ["row-0", "row-1"]
    entry = cache._entry({"k": 1})
    entry.mkdir(parents=True)
    old = torch.full((2, 4), 99.0)
    save_file({"features": old}, str(entry / "features.safetensors"),
              metadata={"identities": json.dumps(ids), "crc32": json.dumps([zlib.crc32(r.numpy()) for r in old])})
    compute, seen = _counting()
    with caplog.at_level("WARNING", logger="tlkit.data.cache"):
        served = cache.features({"k": 1}, ids, compute, identity=str)
    assert seen == ids and served[:, 0].tolist() == [1, 2] and not caplog.records


def test_cached_features_serve_a_batch_with_one_read_per_view_as_items_would(tmp_path):
    from tlkit.data.cache import CachedFeatures

    views = torch.randn(3, 10, 4)
    views[:, 4] = float("nan")  # an image that failed to decode
    stored = [FeatureCache(tmp_path / "cache").rows({"view": k}, [f"row-{i}" for i in range(10)],
                                                    lambda ids, k=k: views[k], identity=str) for k in range(3)]
    on_disk, in_memory = CachedFeatures(stored, list(range(10)), seed=3), CachedFeatures(views, list(range(10)), seed=3)
    batch = [(i, 2) for i in (9, 0, 4, 3, 3)]
    for a, b in zip(on_disk.__getitems__(batch), [in_memory[i] for i in batch]):
        if isinstance(b, tuple):
            assert torch.equal(a[0], b[0]) and a[1] == b[1]
        else:
            assert a.path == b.path == "row 4"
    assert on_disk.finite.tolist() == in_memory.finite.tolist()
    assert torch.equal(on_disk.usable()[0].tensor(), in_memory.usable()[0].tensor())


def test_a_closed_form_probe_too_big_to_hold_reads_batches_and_finds_the_same_head(monkeypatch):
    from tlkit.data.shards import FeatureViews
    from tlkit.model import probe

    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(300) % 3
    views = torch.randn(2, 300, 8, generator=generator) + torch.nn.functional.one_hot(labels, 8).float()
    held = probe.fit_logistic_head(views, labels, num_classes=3, seed=0)
    monkeypatch.setattr(probe, "IN_MEMORY_VALUES", 0)
    monkeypatch.setattr(probe, "BATCH_VALUES", 8 * 50)  # 50 rows per read
    read = probe.fit_logistic_head(FeatureViews.of(views, 1), labels, num_classes=3, seed=0)
    assert read[2]["C"] == held[2]["C"] and read[2]["holdout_acc"] == held[2]["holdout_acc"]
    torch.testing.assert_close(read[0], held[0], atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(read[1], held[1], atol=1e-3, rtol=1e-3)


# ---------------------------------------------------------------------------------------------------------------------
# Extraction shared by the processes of a multi-process launch (two threads stand in for two processes here;
# tests/test_distributed.py runs the real 2-process launch)


def _two_processes(tmp_path, ids, compute_for, *, dirs=None, batch_size=1):
    """rows() of `ids` in two threads sharing an ExtractionShare each; (their rows, what each computed)."""
    import threading

    from tlkit.data.cache import ExtractionShare

    barrier, posted = threading.Barrier(2), [None, None]

    def gather(rank):
        def run(mine):
            posted[rank] = list(mine)
            barrier.wait()
            out = [list(p) for p in posted]
            barrier.wait()
            return out
        return run

    results, computed = [None, None], [[], []]

    def work(rank):
        def compute(part):
            computed[rank].extend(part)
            return compute_for(part)
        cache = FeatureCache((dirs or [tmp_path / "cache"] * 2)[rank], share=ExtractionShare(rank, 2, gather(rank)))
        results[rank] = cache.features({"k": 1}, ids, compute, identity=str, batch_size=batch_size)

    threads = [threading.Thread(target=work, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results, computed


def _values(part):
    return torch.tensor([[float(i.split("-")[1])] * 4 if not i.endswith("bad") else [float("nan")] * 4
                         for i in part])


def test_two_processes_compute_each_row_once_and_both_get_every_row(tmp_path):
    ids = [f"row-{i}" for i in range(9)] + ["row-9-bad"]
    results, computed = _two_processes(tmp_path, ids, _values)
    assert sorted(computed[0] + computed[1]) == sorted(ids) and not set(computed[0]) & set(computed[1])
    alone = FeatureCache(None).features({"k": 1}, ids, _values, identity=str)  # one process, no disk
    for rows in results:
        torch.testing.assert_close(rows, alone, equal_nan=True)  # the undecodable row is NaN for both


def test_processes_without_a_shared_cache_folder_compute_the_others_rows_too(tmp_path, caplog):
    ids = [f"row-{i}" for i in range(6)]
    with caplog.at_level("WARNING", logger="tlkit.data.cache"):
        results, computed = _two_processes(tmp_path, ids, _values, dirs=[tmp_path / "a", tmp_path / "b"])
    assert sorted(computed[0]) == sorted(computed[1]) == sorted(ids)
    assert torch.equal(results[0], results[1]) and "not shared by every process" in caplog.text


def test_processes_share_whole_batches_so_each_row_is_computed_in_the_batch_one_process_uses(tmp_path):
    ids = [f"row-{i}" for i in range(10)]
    _, computed = _two_processes(tmp_path, ids, _values, batch_size=3)
    assert computed == [["row-0", "row-1", "row-2", "row-6", "row-7", "row-8"], ["row-3", "row-4", "row-5", "row-9"]]


def test_a_shard_still_being_written_is_not_read(tmp_path, caplog):
    """Another run's shard in the middle of its atomic write (a dot-named temporary file) is neither read nor
    reported as damaged."""
    compute, seen = _counting()
    FeatureCache(tmp_path / "cache").features({"k": 1}, ["row-0"], compute, identity=str)
    (shard,) = (tmp_path / "cache").rglob("*.safetensors")
    (shard.parent / ".0000.abc.tmp.safetensors").write_bytes(shard.read_bytes()[:20])  # half written
    with caplog.at_level("WARNING", logger="tlkit.data.cache"):
        served = FeatureCache(tmp_path / "cache").features({"k": 1}, ["row-0"], compute, identity=str)
    assert served[:, 0].tolist() == [1] and seen == ["row-0"] and not caplog.records


def test_rows_held_in_memory_may_be_empty():
    """A split with no images (a val folder of empty class folders) still gives Rows: zero of them, of the right shape."""
    import torch

    from tlkit.data.shards import FeatureViews, Rows

    assert len(Rows.of_tensor(torch.zeros(0, 5))) == 0
    views = FeatureViews.of(torch.zeros(2, 0, 3, 4), row_ndim=2)
    assert len(views) == 2 and all(len(v) == 0 for v in views.views)
