"""``python -m kpcap_agent [capture|sample]``: the agent of one node.

``capture`` (the default): one node's part of a full capture (run by the operator's per-capture
DaemonSet). Exit codes: 0 after SIGTERM (work done or cut short and uploaded), non-zero for a
configuration error. DaemonSet pods always restart, so after its work the agent idles until its
DaemonSet is deleted.

``sample``: the always-on sampler (the chart's sampler DaemonSet), see
:mod:`kpcap_agent.sampler_service`. Exit codes: 0 after SIGTERM, 2 for a configuration error
(the message names the variable), 1 when it cannot capture or serve.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import traceback
from pathlib import Path

from kpcap.errors import SpecInvalid
from kpcap.kubeapi import load_api_client
from kpcap.model import NodePhase
from kpcap_agent.agent import AgentConfig, AgentConfigError, run
from kpcap_agent.report import CaptureApi, NodeReport

log = logging.getLogger("kpcap_agent")


def main() -> None:
    parser = argparse.ArgumentParser(prog="kpcap-agent")
    parser.add_argument("mode", choices=["capture", "sample"], nargs="?", default="capture")
    mode = parser.parse_args().mode
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if mode == "sample":
        from kpcap_agent import sampler_service

        sys.exit(sampler_service.main())
    try:
        cfg = AgentConfig.from_env()
    except (AgentConfigError, SpecInvalid, ValueError) as err:
        sys.exit(f"kpcap-agent: configuration error: {err}")
    stop, terminating = threading.Event(), threading.Event()

    def on_sigterm(_signum: int, _frame: object) -> None:
        log.info("SIGTERM: ending the capture early and uploading what was captured")
        terminating.set()
        stop.set()

    signal.signal(signal.SIGTERM, on_sigterm)
    api = CaptureApi(
        load_api_client(), namespace=cfg.namespace, name=cfg.name, node=cfg.node, uid=cfg.capture_uid
    )
    try:
        run(cfg=cfg, api=api, stop=stop)
    except Exception as err:
        log.exception("capture on %s failed", cfg.node)
        where = traceback.extract_tb(err.__traceback__)[-1]
        error = f"agent error: {type(err).__name__}: {err} (at {Path(where.filename).name}:{where.lineno})"
        try:
            api.report(NodeReport(phase=NodePhase.FAILED, error=error))
        except Exception:
            log.exception("could not report the failure either")
    if not terminating.is_set():
        log.info("work done; idling until the capture's DaemonSet is deleted")
        terminating.wait()


if __name__ == "__main__":
    main()
