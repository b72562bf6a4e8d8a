"""Base class of every configuration section: unknown keys forbidden, one docstring (the reason) per field."""

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)
