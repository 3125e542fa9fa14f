"""Log output of kpcap's processes: text, or JSON lines (one object a line) for log pipelines.

A JSON line has ``time`` (RFC 3339, UTC), ``level``, ``logger``, ``message``, and the references of the
object the line is about where the call has them: ``namespace``, ``name``, ``captureId``, ``node``.
They come from ``extra=refs(...)`` on a log call, or from Kopf's per-object loggers (their
``k8s_ref``: the handlers' ``logger`` argument), so a pipeline can pick one capture's lines out.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import sys
from collections.abc import Mapping
from typing import Any, Final

from kpcap import envconfig
from kpcap.names import capture_id as capture_id_of

__all__ = ["LOG_FORMATS", "JsonFormatter", "capture_refs", "configure_from_env", "configure_logging", "refs"]

LOG_FORMATS: Final = ("text", "json")
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_REFS: Final = "kpcap_refs"
_REF_KEYS: Final = ("namespace", "name", "captureId", "node")


def refs(
    *,
    namespace: str | None = None,
    name: str | None = None,
    capture_id: str | None = None,
    node: str | None = None,
) -> dict[str, Any]:
    """``extra=`` for a log call about an object (a LogRecord's own ``name`` is the logger's: hence
    one nested attribute rather than flat ones)."""
    given = {"namespace": namespace, "name": name, "captureId": capture_id, "node": node}
    return {_REFS: {key: value for key, value in given.items() if value}}


def capture_refs(metadata: Mapping[str, Any], *, node: str | None = None) -> dict[str, Any]:
    """``extra=`` for a log call about the PacketCapture with this ``metadata``."""
    uid = metadata.get("uid")
    cid = None
    if isinstance(uid, str):
        with contextlib.suppress(ValueError):
            cid = capture_id_of(uid)
    return refs(namespace=metadata.get("namespace"), name=metadata.get("name"), capture_id=cid, node=node)


def _kopf_refs(ref: object) -> dict[str, str]:
    if not isinstance(ref, Mapping):
        return {}
    found = {key: str(ref[key]) for key in ("namespace", "name") if ref.get(key)}
    uid = ref.get("uid")
    if ref.get("kind") == "PacketCapture" and isinstance(uid, str):
        with contextlib.suppress(ValueError):  # not a capture's uid: no capture id to name
            found["captureId"] = capture_id_of(uid)
    return found


class JsonFormatter(logging.Formatter):
    """One JSON object per record, never spanning lines (a traceback goes into ``error``)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        found = _kopf_refs(getattr(record, "k8s_ref", None))
        own = getattr(record, _REFS, None)
        if isinstance(own, Mapping):
            found.update({key: str(value) for key, value in own.items() if key in _REF_KEYS})
        line.update(found)
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class _Context(logging.Filter):
    """Adds the process's own references (an agent's capture and node) to records without any."""

    def __init__(self, context: Mapping[str, str]) -> None:
        super().__init__()
        self.context = dict(context)

    def filter(self, record: logging.LogRecord) -> bool:
        own = getattr(record, _REFS, None)
        setattr(record, _REFS, {**self.context, **(own if isinstance(own, Mapping) else {})})
        return True


def configure_logging(*, level: str | int, log_format: str, context: Mapping[str, Any] | None = None) -> None:
    """The root logger writes to stderr in ``log_format`` (one of LOG_FORMATS), replacing any handler
    set before (Kopf's or basicConfig's), so every library's lines come out the same way. ``context``
    (``refs(...)``) is added to every JSON line that does not name its own.

    Raises ValueError for another format.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    own = (context or {}).get(_REFS)
    if isinstance(own, Mapping) and own:
        handler.addFilter(_Context(own))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)  # warnings as log lines too, not bare stderr text between them


def configure_from_env(env: Mapping[str, str], *, level: str | int) -> None:
    """For the agents and samplers, before their configuration is read (so its errors come out in
    the format too): KPCAP_LOG_FORMAT (set by the operator or the chart), and as context the
    capture's and node's references from their standard variables.

    Raises envconfig.EnvError for a bad KPCAP_LOG_FORMAT.
    """
    log_format = envconfig.choice(env, "KPCAP_LOG_FORMAT", default="text", allowed=LOG_FORMATS)
    context = refs(
        namespace=env.get("KPCAP_CAPTURE_NAMESPACE"),
        name=env.get("KPCAP_CAPTURE_NAME"),
        capture_id=env.get("KPCAP_CAPTURE_ID"),
        node=env.get("KPCAP_NODE_NAME"),
    )
    configure_logging(level=level, log_format=log_format, context=context)
