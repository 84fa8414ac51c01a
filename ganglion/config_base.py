"""What every config section shares: unknown keys and wrong types are refused."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Every section refuses unknown keys and wrong types: a typo must never pass silently.

    Strict: ``retries: yes`` or ``port: 80.0`` is an error, not 1 or 80 (an int is still a
    float). A value that is one ``${VAR}`` reference is typed before validation, see
    ``ganglion.config._typed_env``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
