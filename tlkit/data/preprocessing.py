"""The eval-time input contract of a backbone: input size, crop, interpolation, normalisation (DESIGN.md contract 5).

It belongs to the data layer (transforms, inference and export read it); backbones only produce it from timm's
pretrained config.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "area")


@dataclass(frozen=True)
class Preprocessing:
    """The eval-time input contract of a backbone; travels into checkpoints and exports (DESIGN.md contract 5)."""

    input_size: int
    crop_pct: float
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        return cls(
            input_size=int(d["input_size"]),
            crop_pct=float(d["crop_pct"]),
            interpolation=str(d["interpolation"]),
            mean=tuple(float(x) for x in d["mean"]),  # type: ignore[arg-type]
            std=tuple(float(x) for x in d["std"]),  # type: ignore[arg-type]
        )

    def replace(self, **overrides) -> Preprocessing:
        """Copy with the non-None overrides applied (recipe values win over the model's pretrained config)."""
        d = asdict(self)
        d.update({k: v for k, v in overrides.items() if v is not None})
        return Preprocessing.from_dict(d)
