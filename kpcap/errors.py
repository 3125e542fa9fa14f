"""Validation errors shared by the admission webhook, the operator and the capture agent.

Every message names the field (as a path from the object root, e.g. ``spec.filter.sourcePort``)
and says what is allowed and what was given, so a user can fix the object from the message alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class FieldError:
    """One problem with one field: ``field`` is the path, ``message`` what is allowed and what was given."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class SpecInvalid(Exception):  # noqa: N818 - the name reads as a verdict ("the spec is invalid")
    """A capture spec (or a part of it) failed validation; carries every problem found, not just the first."""

    def __init__(self, errors: Iterable[FieldError]) -> None:
        self.errors: tuple[FieldError, ...] = tuple(errors)
        if not self.errors:
            raise ValueError("SpecInvalid needs at least one FieldError")
        super().__init__("; ".join(str(error) for error in self.errors))

    @property
    def fields(self) -> tuple[str, ...]:
        """The field paths in error, in the order they were found."""
        return tuple(error.field for error in self.errors)


def describe_value(value: object, *, limit: int = 60) -> str:
    """A short, safe rendering of a user-given value for an error message (long input is cut)."""
    text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    kind = _json_kind(value)
    return f"{text} ({kind})" if kind else text


def _json_kind(value: object) -> str:
    # Name the JSON type where the Python repr alone would mislead ('10' vs 10, True vs 1).
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    if value is None:
        return "null"
    return ""
