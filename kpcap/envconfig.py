"""Typed readers of one setting from an environment mapping, for every process's settings object.

Each reader takes the mapping (``os.environ`` or a test's dict), the variable's name and keyword
arguments, and returns the typed value or its default. A value that is unset or only blanks counts
as unset. A bad value raises :class:`EnvError`, whose message starts with the variable's name and
says what it allows, so a misconfigured pod's log names the line of its manifest to fix.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Collection, Mapping
from decimal import Decimal, InvalidOperation
from typing import Final, TypeVar

__all__ = [
    "EnvError",
    "boolean",
    "choice",
    "duration",
    "integer",
    "ip_address",
    "number",
    "optional",
    "parse_duration",
    "parse_quantity",
    "quantity",
    "required",
    "string",
]


class EnvError(ValueError):
    """A bad or missing environment variable; the message starts with the variable's name."""

    def __init__(self, variable: str, message: str) -> None:
        self.variable = variable
        self.detail = message
        super().__init__(f"{variable}: {message}")


_DURATION: Final = re.compile(r"(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?(?:(?P<s>\d+)s)?")
_SECONDS: Final = re.compile(r"\d+(?:\.\d+)?")
_TRUE: Final = frozenset({"true", "yes", "on", "1"})
_FALSE: Final = frozenset({"false", "no", "off", "0"})
_Measure = TypeVar("_Measure", int, float)  # a quantity stays an int, a duration a float


def parse_duration(text: str) -> float:
    """Seconds in ``text``: ``"24h"``, ``"90m"``, ``"45s"``, ``"1h30m"`` or plain seconds (``"3600"``)."""
    text = text.strip()
    if _SECONDS.fullmatch(text):
        return float(text)
    match = _DURATION.fullmatch(text)
    if not text or match is None:
        raise ValueError(f"not a duration: {text!r} (use e.g. 24h, 90m, 45s, 1h30m or plain seconds)")
    hours, minutes, seconds = (int(match.group(unit) or 0) for unit in "hms")
    return float(hours * 3600 + minutes * 60 + seconds)


def parse_quantity(text: str) -> int:
    """Bytes in ``text``: plain bytes or a Kubernetes quantity (``"128Mi"``, ``"1Gi"``, ``"500M"``),
    rounded up to a whole byte as Kubernetes does."""
    # Here, not at the top: importing the Kubernetes client takes the agent 0.3-1 s before its
    # capture socket can open, and the capture agent never parses a quantity.
    from kubernetes.utils import parse_quantity as kubernetes_quantity

    try:
        value = Decimal(kubernetes_quantity(text.strip()))
    except (ValueError, TypeError, InvalidOperation):
        raise ValueError(
            f"not a byte quantity: {text!r} (use bytes or a quantity such as 128Mi, 1Gi or 500M)"
        ) from None
    if not value.is_finite():
        raise ValueError(f"not a byte quantity: {text!r} (a finite number of bytes)")
    return math.ceil(value)


def optional(env: Mapping[str, str], name: str) -> str | None:
    """The variable's value without surrounding blanks, or None when it is unset or blank."""
    text = env.get(name)
    if text is None or not text.strip():
        return None
    return text.strip()


def string(env: Mapping[str, str], name: str, *, default: str) -> str:
    """The value, or ``default`` when unset or blank."""
    text = optional(env, name)
    return default if text is None else text


def required(env: Mapping[str, str], name: str, *, what: str) -> str:
    """The value; unset or blank is an error saying what the variable is (``what``)."""
    text = optional(env, name)
    if text is None:
        raise EnvError(name, f"required ({what})")
    return text


def _what(what: str | None) -> str:
    return "" if what is None else f" ({what})"


def integer(
    env: Mapping[str, str], name: str, *, default: int, low: int, high: int, what: str | None = None
) -> int:
    """A whole number in ``low..high`` (both included)."""
    text = optional(env, name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise EnvError(name, f"must be an integer in {low}..{high}{_what(what)}, got {text!r}") from None
    if not low <= value <= high:
        raise EnvError(name, f"must be in {low}..{high}{_what(what)}, got {value}")
    return value


def number(
    env: Mapping[str, str],
    name: str,
    *,
    default: float,
    low: float,
    high: float,
    what: str | None = None,
) -> float:
    """A finite decimal number in ``low..high`` (both included)."""
    text = optional(env, name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise EnvError(name, f"must be a number in {low:g}..{high:g}{_what(what)}, got {text!r}")
    if not low <= value <= high:
        raise EnvError(name, f"must be in {low:g}..{high:g}{_what(what)}, got {value:g}")
    return value


def choice(env: Mapping[str, str], name: str, *, default: str, allowed: Collection[str]) -> str:
    """One of ``allowed`` (compared exactly)."""
    value = string(env, name, default=default)
    if value not in allowed:
        raise EnvError(name, f"must be one of {', '.join(allowed)}, got {value!r}")
    return value


def boolean(env: Mapping[str, str], name: str, *, default: bool) -> bool:
    """``true``/``false`` (also ``yes``/``no``, ``on``/``off``, ``1``/``0``; any case)."""
    text = optional(env, name)
    if text is None:
        return default
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise EnvError(name, f"must be true or false, got {text!r}")


def _bounded(
    name: str, value: float, low: float | None, high: float | None, unit: str, allowed: str | None
) -> None:
    if (low is not None and value < low) or (high is not None and value > high):
        span = f"{'' if low is None else f'{low:g}'}..{'' if high is None else f'{high:g}'}"
        raise EnvError(name, f"must be in {span} {unit}{_what(allowed)}, got {value:g}")


def duration(
    env: Mapping[str, str],
    name: str,
    *,
    default: float,
    low: float | None = None,
    high: float | None = None,
    allowed: str | None = None,
) -> float:
    """Seconds (:func:`parse_duration`: ``"30s"``, ``"5m"``, ``"24h"``, plain seconds), optionally in
    ``low..high``. ``allowed`` describes the accepted range in every message about a bad value."""
    return _measure(
        env, name, parse=parse_duration, unit="s", default=default, low=low, high=high, allowed=allowed
    )


def quantity(
    env: Mapping[str, str],
    name: str,
    *,
    default: int,
    low: int | None = None,
    high: int | None = None,
    allowed: str | None = None,
) -> int:
    """Bytes (:func:`parse_quantity`: ``"128Mi"``, ``"1Gi"``, plain bytes), optionally in
    ``low..high``. ``allowed`` describes the accepted range in every message about a bad value."""
    return _measure(
        env, name, parse=parse_quantity, unit="bytes", default=default, low=low, high=high, allowed=allowed
    )


def _measure(
    env: Mapping[str, str],
    name: str,
    *,
    parse: Callable[[str], _Measure],
    unit: str,
    default: _Measure,
    low: _Measure | None,
    high: _Measure | None,
    allowed: str | None,
) -> _Measure:
    """The variable read by ``parse`` (a ValueError says what is wrong), in ``low..high`` ``unit``."""
    text = optional(env, name)
    if text is None:
        return default
    try:
        value = parse(text)
    except ValueError as err:
        raise EnvError(name, f"{err}" + ("" if allowed is None else f"; allowed: {allowed}")) from None
    _bounded(name, value, low, high, unit, allowed)
    return value


def ip_address(env: Mapping[str, str], name: str, *, default: str | None, what: str) -> str | None:
    """An IPv4 or IPv6 address as written (``default`` when unset); ``what`` says which address."""
    text = optional(env, name)
    if text is None:
        return default
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise EnvError(name, f"must be {what}, got {text!r}") from None
    return text
