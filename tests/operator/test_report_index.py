"""The operator's index of the nodes' reports: in step after a listing, a terminal entry is final."""

from __future__ import annotations

from kpcap_operator.report_index import ReportIndex

CID = "a" * 32


def test_not_in_step_until_listed_and_after_a_broken_watch() -> None:
    index = ReportIndex()
    assert index.reports(CID) is None
    index.replace_all([(CID, "n1", {"phase": "running"})])
    assert index.reports(CID) == {"n1": {"phase": "running"}}
    assert index.reports("b" * 32) == {}
    index.lost()
    assert index.reports(CID) is None


def test_a_terminal_entry_is_final() -> None:
    index = ReportIndex()
    index.replace_all([])
    index.updated(capture_id=CID, node="n1", status={"phase": "running", "packets": 3})
    index.updated(capture_id=CID, node="n1", status={"phase": "done", "packets": 9, "objectUri": "s3://b/k"})
    index.updated(capture_id=CID, node="n1", status={"phase": "running", "packets": 5})  # a late event
    index.updated(capture_id=CID, node="n1", status={"phase": "uploading", "packets": 9})
    assert index.reports(CID) == {"n1": {"phase": "done", "packets": 9, "objectUri": "s3://b/k"}}
    # Terminal to terminal is not "backwards" (a failed upload's report may follow, as the agent writes).
    index.updated(capture_id=CID, node="n1", status={"phase": "failed", "error": "x"})
    assert index.reports(CID) == {"n1": {"phase": "failed", "error": "x"}}


def test_a_relisting_keeps_a_terminal_entry_and_drops_deleted_reports() -> None:
    index = ReportIndex()
    index.replace_all([(CID, "n1", {"phase": "done"}), (CID, "n2", {"phase": "running"})])
    index.replace_all([(CID, "n1", {"phase": "running"})])
    assert index.reports(CID) == {"n1": {"phase": "done"}}


def test_deleted_reports_leave_the_index() -> None:
    index = ReportIndex()
    index.replace_all([(CID, "n1", {"phase": "done"}), (CID, "n2", {"phase": "running"})])
    index.removed(capture_id=CID, node="n1")
    assert index.reports(CID) == {"n2": {"phase": "running"}}
    index.removed(capture_id=CID, node="n2")
    index.removed(capture_id=CID, node="n2")
    assert index.reports(CID) == {}


def test_readers_get_copies() -> None:
    index = ReportIndex()
    index.replace_all([(CID, "n1", {"phase": "running"})])
    got = index.reports(CID)
    assert got is not None
    got["n1"]["phase"] = "done"
    assert index.reports(CID) == {"n1": {"phase": "running"}}


def test_counts_are_the_nodes_reported_and_those_done_or_failed_none_before_a_listing() -> None:
    index = ReportIndex()
    assert index.counts("c") is None
    index.replace_all([("c", "n1", {"phase": "running"}), ("c", "n2", {"phase": "done"})])
    index.updated(capture_id="c", node="n3", status={"phase": "failed"})
    assert index.counts("c") == (3, 2)
    assert index.counts("other") == (0, 0)
