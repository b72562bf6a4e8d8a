"""Base class of every settings model (unknown keys forbidden, one docstring = the reason per field), building one
from what a Python caller passes, and pydantic errors turned into one actionable line each."""

from __future__ import annotations

import typing
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, ValidationError

from tlkit.errors import RecipeError, did_you_mean


class Section(BaseModel):
    # allow_inf_nan=False: every float setting is finite (an lr of inf or nan would pass ge/gt bounds and only
    # show up as a diverged run).
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True,
                              allow_inf_nan=False)


def settings_from(cls: type[Section], value, *, shorthand: str | None = None):
    """A settings model from itself, its dict form, None (defaults) or, with `shorthand`, a string for that field."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    data = {shorthand: value} if isinstance(value, str) and shorthand is not None else value
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise RecipeError("; ".join(f"{cls.__name__}.{describe_error(err, cls)}" for err in exc.errors())) from None


# ---------------------------------------------------------------------------------------------------------------------
# Error messages


def describe_error(err: dict, root: type[BaseModel]) -> str:
    """One pydantic error as a line a user can act on: the dotted path as written, the cause, a did-you-mean."""
    loc = [str(x) for x in err["loc"]]
    kind = err["type"]
    ctx = err.get("ctx") or {}
    dotted = ".".join(_walk(err["loc"], root)[0]) or "(top level)"
    if kind == "extra_forbidden":
        allowed = _field_names(err["loc"][:-1], root)
        hint = did_you_mean(loc[-1], allowed) if allowed else ""
        known = f" Known keys here: {', '.join(allowed)}." if allowed and not hint else ""
        return f"{dotted}: unknown key.{hint}{known}"
    if kind == "literal_error":
        expected = ctx.get("expected", "")
        choices = [c.strip().strip("'") for c in str(expected).replace(" or ", ",").split(",") if c.strip()]
        return f"{dotted}: got {err.get('input')!r}; expected {expected}.{did_you_mean(str(err.get('input')), choices)}"
    if kind == "union_tag_invalid":
        tags = [t.strip().strip("'") for t in str(ctx.get("expected_tags", "")).split(",")]
        return (f"{dotted}.kind: got {ctx.get('tag')!r}; expected one of {', '.join(tags)}."
                f"{did_you_mean(str(ctx.get('tag')), tags)}")
    if kind == "union_tag_not_found":
        return f"{dotted}.kind: missing; say which strategy, e.g. kind: linear_probe or kind: finetune."
    message = err["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
    return f"{dotted}: {message} (got {err.get('input')!r})" if kind != "value_error" else f"{dotted}: {message}"


def _walk(loc: tuple, root: type[BaseModel]) -> tuple[list[str], Any]:
    """Follow `loc` through the settings models from `root`: (the path as the user wrote it, the model found there or None).

    Pydantic puts a union member's tag into locations (strategy.finetune.x); users wrote strategy.x, so tags are
    dropped from the path and used to pick the member.
    """
    path: list[str] = []
    model: Any = root
    for part in loc:
        if isinstance(model, _UnionOf) and part in model.members:
            model = model.members[part]
            continue
        path.append(str(part))
        field = model.model_fields.get(part) if isinstance(model, type) and isinstance(part, str) else None
        model = _field_model(field.annotation) if field is not None else None
    return path, model


def _field_model(annotation: Any) -> Any:
    """The BaseModel class (or _UnionOf them) a field holds, or None for plain values."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) is Annotated:
        return _field_model(typing.get_args(annotation)[0])
    models = [a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
    if len(models) == 1:
        return models[0]
    return _UnionOf(models) if models else None


class _UnionOf:
    """The members of a discriminated union, keyed by their `kind` tag."""

    def __init__(self, members: list[type[BaseModel]]):
        self.members = {m.model_fields["kind"].default: m for m in members}

    @property
    def model_fields(self) -> dict:
        return {k: f for m in self.members.values() for k, f in m.model_fields.items()}


def _field_names(loc: tuple, root: type[BaseModel]) -> list[str]:
    """Field names of the section at `loc` (for did-you-mean on unknown keys)."""
    model = _walk(loc, root)[1]
    return list(model.model_fields) if model is not None else []
