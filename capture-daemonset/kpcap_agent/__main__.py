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
import os
import signal
import sys
import threading
import traceback
from pathlib import Path

from kpcap.errors import SpecInvalid
from kpcap.filters import bpf_expression
from kpcap.logformat import configure_from_env
from kpcap_agent.afpacket import LiveSource, open_live_source
from kpcap_agent.agent_config import AgentConfig, AgentConfigError

log = logging.getLogger("kpcap_agent")


def _process_age() -> float:
    """Seconds since this process began (the kernel's start time, in clock ticks since boot)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rpartition(")")[2].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return -1.0
    return uptime - ticks / os.sysconf("SC_CLK_TCK")


def _open_source(cfg: AgentConfig) -> LiveSource | None:
    """The capture socket, opened before the rest of the agent is imported: frames from now on wait
    in its ring. None when it cannot open yet: the capture opens it again and reports the error."""
    try:
        source = open_live_source(
            filter_expression=bpf_expression(cfg.spec.filter), interfaces=cfg.interfaces, snaplen=cfg.snaplen
        )
    except (OSError, ValueError, RuntimeError) as err:
        log.warning("cannot open the capture socket yet (%s); the capture will try again", err)
        return None
    log.info("socket open")  # benchmarks/latency.py times the start-up by this line
    return source


def main() -> None:
    parser = argparse.ArgumentParser(prog="kpcap-agent")
    parser.add_argument("mode", choices=["capture", "sample"], nargs="?", default="capture")
    mode = parser.parse_args().mode
    configure_from_env(os.environ, level=logging.INFO)  # KPCAP_LOG_FORMAT; the capture's and node's refs
    log.info("process up %.2f s (interpreter and imports)", _process_age())
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
    source = _open_source(cfg)
    # Only now: the rest of the agent (its storage SDKs load in the background while it captures).
    from kpcap.kubehttp import InClusterTransport, Transport
    from kpcap.model import NodePhase
    from kpcap_agent.agent import run
    from kpcap_agent.report import CaptureApi, NodeReport

    # In a pod, the standard library's HTTPS (kpcap.kubehttp): the Kubernetes client is not imported
    # before the first report. Elsewhere (a kubeconfig), the client.
    transport: Transport | None = InClusterTransport.from_pod()
    if transport is None:
        from kpcap.kubeapi import ClientTransport, load_api_client

        transport = ClientTransport(load_api_client())
    api = CaptureApi(transport, namespace=cfg.namespace, name=cfg.name, node=cfg.node, uid=cfg.capture_uid)
    try:
        run(cfg=cfg, api=api, stop=stop, opened=source)
    except Exception as err:
        log.exception("capture on %s failed", cfg.node)
        where = traceback.extract_tb(err.__traceback__)[-1]
        error = f"agent error: {type(err).__name__}: {err} (at {Path(where.filename).name}:{where.lineno})"
        try:
            api.report(NodeReport(phase=NodePhase.FAILED, error=error))
        except Exception:
            log.exception("could not report the failure either")
    finally:
        if source is not None:
            source.close()  # when this run did not capture (the capture closes it itself)
    if not terminating.is_set():
        log.info("work done; idling until the capture's DaemonSet is deleted")
        terminating.wait()


if __name__ == "__main__":
    main()
