"""The pre-delete hook's decisions (operator/kpcap_operator/uninstall.py); it runs end to end in
tests/charts/test_helm_lifecycle.py."""

from __future__ import annotations

from typing import Any

import pytest

from kpcap_operator import uninstall
from kpcap_operator.handlers import FINALIZER


def capture(name: str, *, status: str | None = None, stop: bool = False, finalizers: Any = ()) -> Any:
    return {
        "metadata": {
            "namespace": "team",
            "name": name,
            "resourceVersion": "7",
            "finalizers": list(finalizers),
        },
        "spec": {"type": "full", "stop": stop},
        "status": {"status": status} if status else {},
    }


def test_the_finalizer_is_the_operators() -> None:
    assert uninstall.FINALIZER == FINALIZER


def test_running_captures_not_yet_stopped_are_stopped() -> None:
    captures = [
        capture("new"),
        capture("running", status="running"),
        capture("stopping", status="running", stop=True),
        capture("done", status="success"),
        capture("failed", status="failed"),
    ]
    assert uninstall.to_stop(captures) == [("team", "new"), ("team", "running")]
    assert uninstall.unfinished(captures) == [("team", "new"), ("team", "running"), ("team", "stopping")]


def test_the_finalizer_patch_keeps_other_finalizers_and_is_conditional() -> None:
    assert uninstall.finalizer_patch(capture("a", finalizers=["other"])) is None
    assert uninstall.finalizer_patch(capture("b", finalizers=[FINALIZER, "other"])) == {
        "metadata": {"finalizers": ["other"], "resourceVersion": "7"}
    }


def test_settings_name_the_bad_variable() -> None:
    good = {"KPCAP_NAMESPACE": "kpcap-system", "KPCAP_UNINSTALL_WAIT_SECONDS": "30"}
    settings = uninstall.UninstallSettings.from_env(good)
    assert (settings.wait_seconds, settings.delete_captures) == (30.0, True)
    for bad, name in [
        ({}, "KPCAP_NAMESPACE"),
        ({**good, "KPCAP_UNINSTALL_WAIT_SECONDS": "soon"}, "KPCAP_UNINSTALL_WAIT_SECONDS"),
        ({**good, "KPCAP_UNINSTALL_DELETE_CAPTURES": "yes"}, "'true' or 'false'"),
    ]:
        with pytest.raises(ValueError, match=name):
            uninstall.UninstallSettings.from_env(bad)


def test_only_webhook_configurations_an_operator_made_are_deleted() -> None:
    assert uninstall.made_by_an_operator({"metadata": {"name": "kpcap.io"}})
    assert not uninstall.made_by_an_operator(
        {"metadata": {"labels": {"app.kubernetes.io/managed-by": "Helm"}}}
    )
    assert not uninstall.made_by_an_operator(None)
