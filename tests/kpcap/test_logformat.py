"""JSON log lines: one object a line, the fields a pipeline indexes, and object references from
``extra=refs(...)``, from Kopf's per-object loggers, and from an agent's own context."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap

import pytest

from kpcap.envconfig import EnvError
from kpcap.logformat import JsonFormatter, capture_refs, configure_from_env, configure_logging, refs

UID = "0f3c2a1b-9d8e-4f70-a6b5-c4d3e2f1a0b9"
CAPTURE_ID = UID.replace("-", "")


def _line(record: logging.LogRecord) -> dict[str, object]:
    text = JsonFormatter().format(record)
    assert "\n" not in text
    parsed: dict[str, object] = json.loads(text)
    return parsed


def _record(message: str, *args: object, extra: dict[str, object] | None = None) -> logging.LogRecord:
    return logging.getLogger("kpcap_operator.test").makeRecord(
        "kpcap_operator.test", logging.INFO, __file__, 1, message, args, None, extra=extra
    )


def test_a_line_has_time_level_logger_message_and_the_calls_references() -> None:
    line = _line(
        _record("created %s", "ds", extra=refs(namespace="team-a", name="cap", capture_id=CAPTURE_ID))
    )
    assert line["level"] == "INFO"
    assert line["logger"] == "kpcap_operator.test"
    assert line["message"] == "created ds"
    assert str(line["time"]).endswith("+00:00")
    assert (line["namespace"], line["name"], line["captureId"]) == ("team-a", "cap", CAPTURE_ID)
    assert "node" not in line  # only what the call has


def test_a_captures_metadata_gives_its_references() -> None:
    line = _line(
        _record("deleted", extra=capture_refs({"namespace": "t", "name": "c", "uid": UID}, node="n1"))
    )
    assert (line["namespace"], line["name"], line["captureId"], line["node"]) == ("t", "c", CAPTURE_ID, "n1")
    assert "captureId" not in _line(_record("x", extra=capture_refs({"name": "c", "uid": "not-a-uid"})))


def test_kopfs_object_reference_names_the_capture_and_its_id() -> None:
    ref = {
        "apiVersion": "kpcap.io/v1alpha1",
        "kind": "PacketCapture",
        "namespace": "t",
        "name": "c",
        "uid": UID,
    }
    line = _line(_record("Handler succeeded.", extra={"k8s_ref": ref, "k8s_skip": False}))
    assert (line["namespace"], line["name"], line["captureId"]) == ("t", "c", CAPTURE_ID)


def test_a_traceback_stays_on_the_line() -> None:
    def fail() -> None:
        raise RuntimeError("boom")

    try:
        fail()
    except RuntimeError:
        record = logging.getLogger("x").makeRecord(
            "x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    line = _line(record)
    assert "RuntimeError: boom" in str(line["error"])


def test_an_agents_context_is_on_every_line_of_the_process() -> None:
    code = textwrap.dedent(
        """
        import logging, os
        from kpcap.logformat import configure_from_env
        configure_from_env(os.environ, level="INFO")
        logging.getLogger("kpcap_agent").info("capturing")
        logging.getLogger("kpcap_agent").info("uploaded", extra={"kpcap_refs": {"node": "other"}})
        """
    )
    env = {
        "KPCAP_LOG_FORMAT": "json",
        "KPCAP_CAPTURE_NAMESPACE": "team-a",
        "KPCAP_CAPTURE_NAME": "cap",
        "KPCAP_CAPTURE_ID": CAPTURE_ID,
        "KPCAP_NODE_NAME": "node-1",
    }
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    first, second = (json.loads(line) for line in done.stderr.splitlines())
    assert (first["namespace"], first["name"], first["captureId"], first["node"]) == (
        "team-a",
        "cap",
        CAPTURE_ID,
        "node-1",
    )
    assert second["node"] == "other"  # the call's own reference wins


def test_bad_formats_are_refused_naming_the_choices() -> None:
    with pytest.raises(ValueError, match="text, json"):
        configure_logging(level="INFO", log_format="yaml")
    with pytest.raises(EnvError, match="KPCAP_LOG_FORMAT"):
        configure_from_env({"KPCAP_LOG_FORMAT": "xml"}, level="INFO")
