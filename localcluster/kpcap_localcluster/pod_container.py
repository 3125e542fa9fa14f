"""One container of a pod bound to the process kubelet's node, run as a local process.

It starts through ``kpcap_localcluster.containerinit`` (mounts, user, capabilities) with its output
appended to its log file, and keeps the history the pod status reports: restarts and last state.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from kpcap.kubeapi import status_time
from kpcap_localcluster.podspec import ContainerPlan, Json
from kpcap_localcluster.processes import RUN_MARKER


class Container:
    """One container's process and its history (restarts, last state)."""

    def __init__(
        self, plan: ContainerPlan, log_path: Path, spec_path: Path, image: str, mountpoints_log: str
    ) -> None:
        self.plan = plan
        self.mountpoints_log = mountpoints_log
        self.log_path = log_path
        self.spec_path = spec_path
        self.image = image
        self.popen: subprocess.Popen[bytes] | None = None
        self.started_at = ""
        self.restart_count = 0
        self.state: Json = {"waiting": {"reason": "ContainerCreating"}}
        self.last_state: Json = {}
        self.next_start = 0.0

    def start(self, *, run_id: str) -> None:
        self.spec_path.write_text(
            json.dumps(
                {
                    "argv": list(self.plan.argv),
                    "env": dict(self.plan.env),
                    "mounts": [
                        {"source": str(m.source), "target": m.target, "read_only": m.read_only}
                        for m in self.plan.mounts
                    ],
                    "working_dir": self.plan.working_dir,
                    "mountpoints_log": self.mountpoints_log,
                    "run_as_user": self.plan.run_as_user,
                    "run_as_group": self.plan.run_as_group,
                    "capabilities": None
                    if self.plan.capabilities is None
                    else sorted(self.plan.capabilities),
                }
            )
        )
        self.spec_path.chmod(0o600)
        with self.log_path.open("ab") as out:
            out.write(f"--- {status_time()} starting {self.plan.name}: {list(self.plan.argv)}\n".encode())
            if self.plan.extra.get("note"):
                out.write(f"--- note: {self.plan.extra['note']}\n".encode())
            out.flush()
            self.popen = subprocess.Popen(
                [
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "--",
                    sys.executable,
                    "-m",
                    "kpcap_localcluster.containerinit",
                    str(self.spec_path),
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), RUN_MARKER: run_id},
                start_new_session=True,
            )
        self.started_at = status_time()
        self.state = {"running": {"startedAt": self.started_at}}

    def poll(self) -> int | None:
        if self.popen is None:
            return None
        code = self.popen.poll()
        if code is not None and "running" in self.state:
            self.state = {
                "terminated": {
                    "exitCode": code if code >= 0 else 128 - code,
                    "reason": "Completed" if code == 0 else "Error",
                    "startedAt": self.started_at,
                    "finishedAt": status_time(),
                }
            }
        return code

    def signal(self, sig: signal.Signals) -> None:
        if self.popen is not None and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)

    def status(self) -> Json:
        running = "running" in self.state
        status: Json = {
            "name": self.plan.name,
            "image": self.image,
            "imageID": f"process://{self.image}",
            "ready": running,
            "started": running,
            "restartCount": self.restart_count,
            "state": self.state,
            "lastState": self.last_state,
        }
        if self.popen is not None:
            status["containerID"] = f"process://{self.popen.pid}"
        return status
