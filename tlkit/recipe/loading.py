"""Recipe files in and out: read YAML, apply --set overrides, validate with every error at once, render, dump."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tlkit.config import describe_error
from tlkit.errors import RecipeError, did_you_mean
from tlkit.recipe.sections import Recipe
from tlkit.redact import redact_credentials


class AliasRefused(yaml.composer.ComposerError):
    """A YAML alias (*name) in user input."""


class _NoAliasLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses aliases: nine nested levels of `&x [*w, *w, ...]` expand to billions of nodes
    (the 'billion laughs' bomb), and a recipe never needs them. An anchor alone is harmless and allowed."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise AliasRefused(None, None, f"alias *{event.anchor} refused (YAML aliases can expand to gigabytes); "
                               "write the value out instead", event.start_mark)
        return super().compose_node(parent, index)


def load_yaml(text: str) -> Any:
    """yaml.safe_load for user input (recipes, --set values, --tta mappings), without aliases."""
    return yaml.load(text, Loader=_NoAliasLoader)  # a SafeLoader subclass: no arbitrary objects


def parse_override(text: str) -> tuple[list[str], Any]:
    """'a.b=value' -> (['a', 'b'], YAML-parsed value)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"--set {text!r}: expected section.key=value, e.g. --set optim.lr=0.001.")
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except AliasRefused as exc:
        raise RecipeError(f"--set {text!r}: {exc.problem}.") from None
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):
        try:
            value = float(value)  # YAML 1.1 reads 1e-3 as a string; users mean the number
        except ValueError:
            pass
    return key.strip().split("."), value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Return a copy of raw with each 'a.b=value' override merged in (the caller's dict is not modified)."""
    merged = _deep_copy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = merged
        for i, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise RecipeError(f"--set {text!r}: {'.'.join(path[: i + 1])} is a value, not a section.")
            node = child
        node[path[-1]] = value
    return merged


def _deep_copy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deep_copy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deep_copy(v) for v in d]
    return d


def read_recipe_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        hint = ""
        if path.parent.is_dir():
            hint = did_you_mean(path.name, [p.name for p in path.parent.glob("*.y*ml")])
        raise RecipeError(f"Recipe file {str(path)!r} not found.{hint}")
    try:
        raw = load_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        what = "" if isinstance(exc, AliasRefused) else " not valid YAML"
        raise RecipeError(f"{path}:{what}{at}: {getattr(exc, 'problem', exc)}.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{path}: cannot read the recipe ({exc}).") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of sections (backbone:, strategy:, ...); got {type(raw).__name__}.")
    return raw


def validate_recipe(raw: dict, source: str = "recipe") -> Recipe:
    """Validate a recipe mapping; raises RecipeError listing every problem with its dotted path."""
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        lines = [describe_error(err, Recipe) for err in exc.errors()]
        raise RecipeError(f"{source}: {len(lines)} problem(s):\n" + "\n".join(f"  - {l}" for l in lines)) from None


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None) -> Recipe:
    """Read, merge `--set` overrides, validate, and resolve data.root (see the module docstring for the path rule)."""
    overrides = overrides or []
    raw = read_recipe_file(path) if path is not None else {}
    merged = apply_overrides(raw, overrides)
    if path is not None:
        merged.setdefault("name", Path(path).stem)
    recipe = validate_recipe(merged, str(path) if path is not None else "recipe")
    recipe_dir = Path.cwd() if path is None else Path(path).resolve().parent

    def base_for(key: str) -> Path:
        from_cli = any(o.split("=", 1)[0].strip() == key for o in overrides)
        return Path.cwd() if from_cli else recipe_dir

    recipe.data.root = resolve_location(recipe.data.root, base_for("data.root"))
    for key in ("exclude", "relabel"):  # files the recipe names are found like data.root (a list holds image paths)
        if isinstance(getattr(recipe.data, key), str):
            setattr(recipe.data, key, str(resolve_path(getattr(recipe.data, key), base_for(f"data.{key}"))))
    weights = recipe.backbone.weights
    if weights not in ("auto", "hub", "bundled", "none"):
        weights_file = resolve_path(weights, base_for("backbone.weights"))
        if not weights_file.is_file():
            raise RecipeError(f"{path or 'recipe'}: backbone.weights: file {str(weights_file)!r} does not exist; "
                              "give a .safetensors/.pth state dict, or auto, bundled, hub, none.")
        recipe.backbone.weights = str(weights_file)
    return recipe


def resolve_path(value: str, base: Path) -> Path:
    p = Path(os.path.expandvars(value)).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def resolve_location(value: str, base: Path) -> str:
    """A local path resolved as resolve_path does; a URL (s3://bucket/prefix, a stream in object storage) as it is."""
    value = os.path.expandvars(value)
    return value if "://" in value else str(resolve_path(value, base))


# ---------------------------------------------------------------------------------------------------------------------
# Showing


def render_recipe(recipe: Recipe) -> str:
    """The fully resolved recipe as YAML, every field with its one-line reason as a comment (passwords masked)."""
    lines: list[str] = []
    _render(recipe, lines, indent=0)
    return redact_credentials("\n".join(lines) + "\n")


def _render(model: BaseModel, lines: list[str], indent: int) -> None:
    pad = "  " * indent
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            lines.append(f"{pad}{name}:")
            _render(value, lines, indent + 1)
            continue
        text = yaml.safe_dump(_plain(value), default_flow_style=True, width=10_000).strip()
        if text.endswith("\n..."):
            text = text[: -len("\n...")]
        text = text.removesuffix("...").strip()
        doc = " ".join((field.description or "").split())
        lines.append(f"{pad}{name}: {text}" + (f"  # {doc}" if doc else ""))


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def recipe_to_dict(recipe: Recipe) -> dict:
    return recipe.model_dump(mode="json")
