"""The first process of a container: bind its volumes, drop privileges, exec the entry point.

Started by the process kubelet as ``unshare --mount --propagation private -- python -m
kpcap_localcluster.containerinit SPEC.json`` inside the node's network namespace, so the mounts are
private to this container and vanish with it. The spec file (mode 0600) carries the environment, so
Secret values never appear on a command line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def _mount(args: list[str]) -> None:
    subprocess.run(["mount", *args], check=True)


def _ensure_mountpoint(target: Path, *, log: Path) -> None:
    """Create a missing mount point on the host and note it, so the cluster's teardown removes it.

    Shared by every container of the cluster, so it is never removed while another pod may use it.
    """
    missing = []
    probe = target
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    if missing:
        target.mkdir(parents=True, exist_ok=True)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as out:
            out.writelines(f"{path}\n" for path in missing)


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    # Hold every source open before mounting anything: a volume mounted over a parent of another
    # volume's source (an emptyDir at /tmp, with the pod's directory under /tmp) would hide it.
    mounts = sorted(spec["mounts"], key=lambda m: Path(m["target"]).parts)  # parents before children
    sources = [os.open(m["source"], os.O_PATH) for m in mounts]
    for mount, fd in zip(mounts, sources, strict=True):
        _ensure_mountpoint(Path(mount["target"]), log=Path(spec["mountpoints_log"]))
        _mount(["--bind", f"/proc/{os.getpid()}/fd/{fd}", mount["target"]])  # our fd, seen by mount(8)
        if mount["read_only"]:
            _mount(["-o", "remount,bind,ro", mount["target"]])
    for fd in sources:
        os.close(fd)
    if spec.get("working_dir"):
        os.chdir(spec["working_dir"])
    argv: list[str] = ["setpriv"]
    caps = spec["capabilities"]
    if caps is not None:
        cap_list = ",".join(["-all", *(f"+{c.lower()}" for c in sorted(caps))])
        argv += [f"--bounding-set={cap_list}", f"--inh-caps={cap_list}"]
        if spec.get("run_as_user"):
            argv += [f"--ambient-caps={cap_list}"]
    if spec.get("run_as_user") is not None:
        group = spec.get("run_as_group")
        argv += [
            f"--reuid={spec['run_as_user']}",
            f"--regid={group if group is not None else spec['run_as_user']}",
            "--clear-groups",
        ]
    argv += ["--", *spec["argv"]]
    sys.stdout.flush()
    os.execvpe("setpriv", argv, spec["env"])  # noqa: S606 - argv from the pod spec, no shell


if __name__ == "__main__":
    main()
