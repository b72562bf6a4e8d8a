"""The tlkit pieces the audit is built on, imported in one place: a rename elsewhere costs one line here.

Features come from the same extraction and disk cache as training (a later linear-probe run on the same backbone,
weights and preprocessing reads them back); the probe is training's closed-form L-BFGS logistic regression; the page
reuses the run report's escaping, tables and style.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from tlkit.data.features import Extraction, extract_train_eval_features
from tlkit.data.images import decode
from tlkit.data.protocol import CachePlan
from tlkit.data.scan import FolderScan, relative_name
from tlkit.data.settings import CacheConfig
from tlkit.data.table import scan_data
from tlkit.model.backbones import create_backbone
from tlkit.model.probe import fit_logistic_head
from tlkit.report.html import CSS as REPORT_CSS
from tlkit.report.sections import esc, table

__all__ = ["REPORT_CSS", "FolderScan", "decode", "esc", "fit_probe", "image_features", "relative_name", "scan_data", "table"]


def image_features(scan: FolderScan, backbone: str, weights: str = "auto", *, input_size: int | None = None,
                   cache_dir: str | Path | None = None, num_workers: int = 0,
                   progress: bool = True) -> tuple[np.ndarray, dict]:
    """(N, D) pooled backbone features of every image of the scan (train, val, test in that order) through the eval
    transform, from the disk feature cache where the file is unchanged; info says where the weights came from."""
    import torch

    network, pre, source = create_backbone(backbone, weights)
    if input_size is not None:
        pre = pre.replace(input_size=input_size)
    network.eval()
    everything = replace(scan, train=[*scan.train, *scan.val, *scan.test], val=[], test=[])
    run = Extraction(device=torch.device("cpu"), eval_batch_size=64, num_workers=num_workers, progress=progress)
    cache = CacheConfig(dir=str(cache_dir) if cache_dir is not None else None)
    rows, info = extract_train_eval_features(everything, _Embedder(network, backbone), pre, cache=cache, run=run)
    features = rows.views[0].tensor().float().numpy()
    return features, {**info, "weights": source, "input_size": pre.input_size, "backbone": backbone,
                      "cpus": os.cpu_count()}


class _Embedder:
    """What extract_train_eval_features reads of a model: the network that embeds images and the cache plan that
    names it (the same name and weights as a linear-probe run's, so both share cache entries)."""

    def __init__(self, network, name: str):
        self.embedder, self.name = network, name

    def cache_plan(self, epochs: int) -> CachePlan:
        return CachePlan(epochs, network=self.embedder, name=self.name)


def fit_probe(features: np.ndarray, labels: np.ndarray, *, num_classes: int, seed: int,
              multi_label: bool) -> tuple[np.ndarray, np.ndarray]:
    """(weight (C, D), bias (C,)) of the closed-form probe (L2 strength chosen on a held-out part)."""
    import torch

    weight, bias, _ = fit_logistic_head(torch.from_numpy(features), torch.from_numpy(labels),
                                        num_classes=num_classes, seed=seed, task=multi_label)
    return weight.numpy(), bias.numpy()
