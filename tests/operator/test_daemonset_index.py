"""The operator's watched view of its capture DaemonSets."""

from __future__ import annotations

from kpcap_operator.daemonset_index import DaemonSetIndex


def test_unknown_until_listed_then_kept_by_events() -> None:
    index = DaemonSetIndex()
    assert index.names("c1") is None, "not in step yet: callers must ask the cluster"
    index.replace_all([("c1", "ds-1"), ("c2", "ds-2")])
    assert index.names("c1") == ["ds-1"]
    assert index.names("c3") == []
    index.added(capture_id="c1", name="ds-1b")
    assert index.names("c1") == ["ds-1", "ds-1b"]
    index.removed(capture_id="c1", name="ds-1")
    index.removed(capture_id="c1", name="ds-1b")
    index.removed(capture_id="c9", name="never")
    assert index.names("c1") == []


def test_a_broken_watch_makes_it_unknown_until_the_next_listing() -> None:
    index = DaemonSetIndex()
    index.replace_all([("c1", "ds-1")])
    index.lost()
    assert index.names("c1") is None
    index.replace_all([])
    assert index.names("c1") == []
