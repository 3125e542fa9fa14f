"""Which spec changes an UPDATE makes, and whether they are allowed: only ``stop`` false -> true.

The agents run the spec copied into their DaemonSet's environment and the operator keeps the spec it
admitted (``status.admittedSpec``): a changed time limit, filter or destination would no longer say
what runs. The CRD's CEL transition rules say the same on servers with CEL (>= 1.25).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

ONLY_STOP = "only spec.stop may change, from false to true"

# Named one level down so the message says which filter field changed.
_NESTED = frozenset({"filter"})


def _shown(value: Any) -> str:
    return "unset" if value is None else json.dumps(value, sort_keys=True)


def changed_fields(
    old: Mapping[str, Any] | None, new: Mapping[str, Any] | None
) -> dict[str, tuple[Any, Any]]:
    """``{"spec.<field>": (was, now)}`` for each field that differs (None: unset)."""
    old, new = old or {}, new or {}
    changes: dict[str, tuple[Any, Any]] = {}
    for key in sorted({*old, *new}):
        was, now = old.get(key), new.get(key)
        if was == now:
            continue
        if key in _NESTED and isinstance(was, Mapping) and isinstance(now, Mapping):
            for inner, pair in changed_fields(was, now).items():
                changes[f"spec.{key}.{inner.removeprefix('spec.')}"] = pair
        else:
            changes[f"spec.{key}"] = (was, now)
    return changes


def refused_changes(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> list[str]:
    """One message per refused change, in field order; [] when the update may go through."""
    problems = []
    for name, (was, now) in changed_fields(old, new).items():
        if name == "spec.stop":
            before, after = (False if value is None else value for value in (was, now))  # the default
            if before == after or (before is False and after is True):
                continue  # false -> true is the one allowed change: end a running capture early
            problems.append(f"spec.stop: cannot change from {_shown(before)} to {_shown(after)}")
        else:
            problems.append(
                f"{name}: immutable once the capture is created (was {_shown(was)}, now {_shown(now)})"
            )
    return problems


def refusal_message(problems: list[str]) -> str:
    return "; ".join([*problems, ONLY_STOP])


# --- the spec the operator runs: the one it admitted -------------------------------------------------
# Kept in status.admittedSpec, written in the admission pass's own status patch (no extra request).
# The status, not an annotation: only the operator writes the status subresource (users edit the
# object, and an annotation would be one edit away from the spec it guards).

ADMITTED_KEY = "admittedSpec"


def stored(spec: Mapping[str, Any] | None) -> str:
    """``status.admittedSpec``: the spec as admitted, canonical JSON."""
    return json.dumps(dict(spec or {}), sort_keys=True, separators=(",", ":"))


def admitted(body: Mapping[str, Any]) -> dict[str, Any]:
    """The spec the capture runs: as admitted, with ``stop`` true once the live spec said so.

    A capture admitted before admittedSpec existed runs its live spec, as it did then.
    """
    live = dict(body.get("spec") or {})
    status = body.get("status") or {}
    text = status.get(ADMITTED_KEY)
    if not text:
        return live
    spec: dict[str, Any] = json.loads(text)
    if live.get("stop") is True or status.get("stopRequested"):
        spec["stop"] = True  # and it stays true once the operator has seen it
    return spec


def ignored_changes(body: Mapping[str, Any]) -> list[str]:
    """The live spec's refused changes to the admitted one (only possible without webhook and CEL)."""
    text = (body.get("status") or {}).get(ADMITTED_KEY)
    return refused_changes(json.loads(text), body.get("spec")) if text else []
