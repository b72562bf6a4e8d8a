"""Activation and gradient statistics through a deep MLP, per init scheme (the 000_… seed's experiment).

Unit-Gaussian inputs go through `depth` layers of Linear(width, width) + activation, initialised with tlkit.model.heads'
schemes; a unit-Gaussian gradient comes back from the output. Good inits keep the activation std and the gradient
std roughly constant through depth; bad ones make them vanish or explode.

Xavier here is the textbook Glorot (gain 1, as the seed's `init.xavier_uniform_(w)`): it keeps tanh's variance but
halves ReLU's at every layer, which is what He's factor 2 fixes. tlkit.model.heads applies the activation's gain to Xavier
(`xavier_gain="activation"`), which for a square ReLU layer is the same variance as He.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tlkit.errors import RecipeError, did_you_mean
from tlkit.io import save_figure
from tlkit.model.heads import ACTIVATIONS, INITS, init_linear


@dataclass
class LayerStats:
    layer: int
    act_mean: float
    act_std: float
    grad_std: float


def init_statistics(
    init: str,
    activation: str = "relu",
    *,
    depth: int = 10,
    width: int = 512,
    batch: int = 1024,
    seed: int = 0,
    xavier_gain: str = "none",
) -> list[LayerStats]:
    """Per layer: mean/std of its activations (forward) and std of the loss gradient w.r.t. them (backward)."""
    if activation not in ACTIVATIONS:
        raise RecipeError(f"Unknown activation {activation!r}; expected one of {', '.join(ACTIVATIONS)}."
                          + did_you_mean(activation, ACTIVATIONS))
    if init not in INITS:
        raise RecipeError(f"Unknown init {init!r}; expected one of {', '.join(INITS)}." + did_you_mean(init, INITS))
    if depth < 1 or width < 1 or batch < 2:
        raise ValueError(f"depth, width must be >= 1 and batch >= 2; got {depth}, {width}, {batch}.")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # nn.init draws from the global generator
    gain_activation = "linear" if init.startswith("xavier") and xavier_gain == "none" else activation
    layers: list[nn.Module] = []
    for _ in range(depth):
        linear = nn.Linear(width, width)
        init_linear(linear, init, gain_activation)
        layers += [linear, ACTIVATIONS[activation]()]
    x = torch.randn(batch, width, generator=generator)
    outputs = []
    h = x
    for i in range(0, len(layers), 2):
        h = layers[i + 1](layers[i](h))
        h.retain_grad()
        outputs.append(h)
    h.backward(torch.randn(h.shape, generator=generator))
    return [
        LayerStats(i + 1, float(o.detach().mean()), float(o.detach().std()), float(o.grad.std()))
        for i, o in enumerate(outputs)
    ]


def format_table(results: dict[str, list[LayerStats]]) -> str:
    """Markdown: one row per layer, mean/std/grad-std columns per init."""
    names = list(results)
    header = "| layer | " + " | ".join(f"{n} act mean | {n} act std | {n} grad std" for n in names) + " |"
    rule = "|---|" + "---|---|---|" * len(names)
    rows = []
    for i in range(len(next(iter(results.values())))):
        cells = []
        for n in names:
            s = results[n][i]
            cells += [f"{s.act_mean:.3g}", f"{s.act_std:.3g}", f"{s.grad_std:.3g}"]
        rows.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    return "\n".join([header, rule, *rows])


def plot_statistics(results: dict[str, list[LayerStats]], out: str | Path, title: str = "") -> Path:
    """Activation std and gradient std against depth (log y), one line per init."""
    from tlkit.plots import _pyplot

    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for name, stats in results.items():
        depth = [s.layer for s in stats]
        left.plot(depth, [s.act_std for s in stats], "o-", label=name)
        right.plot(depth, [s.grad_std for s in stats], "o-", label=name)
    for ax, what in ((left, "activation std (forward)"), (right, "activation gradient std (backward)")):
        ax.set_yscale("log")
        ax.set_xlabel("layer")
        ax.set_title(what, fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    if title:
        fig.suptitle(title, fontsize=11)
    return save_figure(fig, out, dpi=110)
