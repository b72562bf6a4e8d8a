"""MkDocs hook: the recipe reference, generated from the pydantic settings models at build time.

A page that contains the line `<!-- recipe-reference -->` gets it replaced by one table per recipe section (every
field, its type, default, bounds and reason — the field's docstring). The same models validate recipes and
`tlkit recipe show` prints the same defaults and reasons, so this page cannot drift from the code.
tests/test_docs.py calls `render_reference()` too.
"""

from __future__ import annotations

import sys
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import annotated_types
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

MARKER = "<!-- recipe-reference -->"

# Sections whose defaults depend on another field: a note under their heading.
SECTION_NOTES = {
    "augment": "The defaults below are those of the default preset, `light`. Choosing a preset (`augment: heavy`, or "
               "`augment: {preset: heavy, hflip: 0}`) sets every field to that preset's value first; the fields you "
               "write win. `tlkit recipe show` prints the values a recipe ends up with.",
    "strategy": "`strategy.kind` picks one of the tables below; each kind accepts only its own fields.",
}


def on_page_markdown(markdown: str, page, config, files, **kwargs) -> str:  # MkDocs hook signature
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, render_reference())


def render_reference() -> str:
    root = str(Path(__file__).resolve().parents[2])  # document the checkout being built, not an installed copy
    if root not in sys.path:
        sys.path.insert(0, root)
    from tlkit.recipe import Recipe

    out: list[str] = []
    top = {n: f for n, f in Recipe.model_fields.items() if _models(f.annotation) == []}
    out += ["## Top level", "", *_table([(n, f) for n, f in top.items()]), ""]
    for name, field in Recipe.model_fields.items():
        if name in top:
            continue
        models = _models(field.annotation)
        default = field.default
        out += [f"## `{name}`", ""]
        doc = (models[0].__doc__ or "").strip() if len(models) == 1 else ""
        if doc and not doc.startswith(models[0].__name__ + "("):
            out += [_one_line(doc), ""]
        if name in SECTION_NOTES:
            out += [SECTION_NOTES[name], ""]
        if default is PydanticUndefined:
            out += ["This section is **required**.", ""]
        if len(models) == 1:
            out += [*_table(_flatten(models[0])), ""]
            continue
        default_kind = getattr(default, "kind", None)
        for model in models:
            kind = model.model_fields["kind"].default
            suffix = " (the default)" if kind == default_kind else ""
            out += [f"### `kind: {kind}`{suffix}", ""]
            kind_doc = model.model_fields["kind"].description
            if kind_doc:
                out += [_one_line(kind_doc), ""]
            rows = [(n, f) for n, f in _flatten(model) if n != "kind"]
            out += [*_table(rows), ""] if rows else ["No other fields.", ""]
    return "\n".join(out)


def _flatten(model: type[BaseModel], prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted name, field) for every leaf field; nested settings models (augment.jitter...) are expanded."""
    rows: list[tuple[str, Any]] = []
    for name, field in model.model_fields.items():
        nested = _models(field.annotation)
        if len(nested) == 1 and not _is_union(field.annotation):
            rows += _flatten(nested[0], f"{prefix}{name}.")
        else:
            rows.append((prefix + name, field))
    return rows


def _table(rows: list[tuple[str, Any]]) -> list[str]:
    lines = ["| field | type | default | bounds | reason |", "|---|---|---|---|---|"]
    for name, field in rows:
        default = "*required*" if field.is_required() else f"`{_value(field.default)}`"
        lines.append(f"| `{name}` | {_esc(_type(field.annotation))} | {default} | {_esc(_bounds(field))} | "
                     f"{_esc(_one_line(field.description or ''))} |")
    return lines


def _bounds(field) -> str:
    parts = [_bound(m) for m in field.metadata]
    parts += [f"values {b}" for b in map(_bound, _inner_metadata(field.annotation)) if b]
    return ", ".join(p for p in parts if p)


def _bound(meta: Any) -> str:
    for cls, attr, op in ((annotated_types.Gt, "gt", ">"), (annotated_types.Ge, "ge", ">="),
                          (annotated_types.Lt, "lt", "<"), (annotated_types.Le, "le", "<=")):
        if isinstance(meta, cls):
            return f"{op} {getattr(meta, attr)}"
    return ""


def _inner_metadata(annotation: Any) -> list[Any]:
    """Bounds on list items or union members (e.g. `list[Annotated[int, Field(gt=0)]]`): reported as 'each'."""
    found = []
    for arg in typing.get_args(annotation):
        if typing.get_origin(arg) is Annotated:
            found += [m for a in typing.get_args(arg)[1:] for m in getattr(a, "metadata", [a])]
        else:
            found += _inner_metadata(arg)
    return found


def _type(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin is Annotated:
        return _type(args[0])
    if _is_union(annotation):
        return " or ".join("null" if a is type(None) else _type(a) for a in args)
    if origin in (list, tuple):
        inner = ", ".join(_type(a) for a in args if a is not Ellipsis)
        return f"list of {inner}" if origin is list else f"[{inner}]"
    return getattr(annotation, "__name__", str(annotation))


def _is_union(annotation: Any) -> bool:
    import types

    return typing.get_origin(annotation) in (Union, types.UnionType)


def _models(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if typing.get_origin(annotation) is Annotated:
        return _models(typing.get_args(annotation)[0])
    if _is_union(annotation):
        return [m for a in typing.get_args(annotation) for m in _models(a)]
    return []


def _value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _esc(text: str) -> str:
    """Safe inside a Markdown table cell: pipes escaped, <placeholders> shown rather than read as HTML."""
    text = text.replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("|", "\\|") if "\\|" not in text else text
