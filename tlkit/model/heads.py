"""Classifier heads on pooled backbone features, with initialisation schemes matched to the activation (LeCun, Glorot/Xavier, He).

Init matched to activation (000_… seed): keep each layer's activation variance constant. He (Kaiming) for the ReLU
family, LeCun for SELU (self-normalising needs Var(w) = 1/fan_in), Xavier (Glorot) for tanh. The final linear layer
feeds a softmax, not an activation; it defaults to zeros: the linear-probe objective is convex so init does not
change its optimum, every class starts with equal logits so the initial loss is exactly ln(C) (multi-label: every
sigmoid at 0.5, C x ln 2; the first sanity check), and distinct per-class gradients break symmetry at the first step. Zeros are refused for hidden
layers: their neurons would receive identical gradients forever.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tlkit.errors import RecipeError, did_you_mean
from tlkit.model.settings import INITS, HeadConfig  # noqa: F401  (INITS: re-exported for init_stats)

ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "selu": nn.SELU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
}
DEFAULT_INIT = {
    "relu": "he_normal",
    "leaky_relu": "he_normal",
    "elu": "he_normal",
    "gelu": "he_normal",
    "selu": "lecun_normal",
    "tanh": "xavier_normal",
}


def init_linear(layer: nn.Linear, scheme: str, activation: str = "relu") -> None:
    """Initialise `layer` in place with one of INITS; biases start at zero."""
    w = layer.weight
    fan_in = w.shape[1]
    if scheme == "lecun_normal":
        nn.init.normal_(w, 0.0, 1.0 / math.sqrt(fan_in))
    elif scheme == "lecun_uniform":
        bound = math.sqrt(3.0 / fan_in)
        nn.init.uniform_(w, -bound, bound)
    elif scheme == "xavier_normal":
        nn.init.xavier_normal_(w, gain=_gain(activation))
    elif scheme == "xavier_uniform":
        nn.init.xavier_uniform_(w, gain=_gain(activation))
    elif scheme in ("he_normal", "he_uniform"):
        nonlinearity = "leaky_relu" if activation == "leaky_relu" else "relu"
        fill = nn.init.kaiming_normal_ if scheme == "he_normal" else nn.init.kaiming_uniform_
        fill(w, a=0.01 if activation == "leaky_relu" else 0.0, mode="fan_in", nonlinearity=nonlinearity)
    elif scheme == "orthogonal":
        nn.init.orthogonal_(w, gain=_gain(activation))
    elif scheme == "normal":
        nn.init.normal_(w, 0.0, 0.02)
    elif scheme == "zeros":
        nn.init.zeros_(w)
    else:
        raise RecipeError(f"Unknown init {scheme!r}; expected one of {', '.join(INITS)}.{did_you_mean(scheme, INITS)}")
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def _gain(activation: str) -> float:
    if activation == "tanh":
        return nn.init.calculate_gain("tanh")
    if activation in ("relu", "elu", "gelu"):
        return nn.init.calculate_gain("relu")
    if activation == "leaky_relu":
        return nn.init.calculate_gain("leaky_relu", 0.01)
    return 1.0


class DropConnectLinear(nn.Linear):
    """DropConnect (Wan et al. 2013): in training each weight is dropped with probability p and the rest scaled by
    1/(1-p) (as inverted dropout does for activations), so evaluation uses the plain weights. Same state-dict keys as
    nn.Linear: checkpoints and exports do not change."""

    def __init__(self, in_features: int, out_features: int, p: float):
        super().__init__(in_features, out_features)
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, F.dropout(self.weight, self.p, self.training), self.bias)


def build_head(in_features: int, num_classes: int, spec: HeadConfig | None = None) -> nn.Sequential:
    """Linear head (spec.hidden empty) or MLP: [Linear -> activation -> Dropout] per hidden size, then Linear.

    `spec` is validated by HeadConfig (choices, and no zeros init for hidden layers)."""
    spec = spec or HeadConfig()
    hidden_init = spec.init or DEFAULT_INIT[spec.activation]

    def make_linear(fan_in: int, fan_out: int) -> nn.Linear:
        return DropConnectLinear(fan_in, fan_out, spec.drop_connect) if spec.drop_connect > 0 else nn.Linear(fan_in, fan_out)

    layers: list[nn.Module] = []
    width = in_features
    for size in spec.hidden:
        linear = make_linear(width, size)
        init_linear(linear, hidden_init, spec.activation)
        layers += [linear, ACTIVATIONS[spec.activation]()]
        if spec.dropout > 0:
            layers.append(nn.Dropout(spec.dropout))
        width = size
    if not spec.hidden and spec.dropout > 0:
        layers.append(nn.Dropout(spec.dropout))
    final = make_linear(width, num_classes)
    init_linear(final, spec.final_init, "linear")
    layers.append(final)
    return nn.Sequential(*layers)



__all__ = ["ACTIVATIONS", "DEFAULT_INIT", "INITS", "DropConnectLinear", "build_head", "init_linear"]
