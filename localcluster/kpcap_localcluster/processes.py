"""Child processes of the local cluster: started, logged, tagged, and always reaped.

Every process the harness starts carries ``KPCAP_LOCALCLUSTER_RUN=<run id>`` in its environment, so
a sweep over ``/proc`` finds whatever survived a crash of the harness itself (the leak check and
``kpcap-localcluster down`` rely on that), and dies with its parent through ``PR_SET_PDEATHSIG``.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

RUN_MARKER = "KPCAP_LOCALCLUSTER_RUN"
_PR_SET_PDEATHSIG = 1

log = logging.getLogger(__name__)


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: a harness killed with SIGKILL leaves no orphans.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass(frozen=True, slots=True)
class ManagedProcess:
    """A started child: its name for logs, its Popen handle and the file its output goes to."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, *, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, *, grace: float = 10.0) -> int | None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds; returns the exit code."""
        return terminate_group(self.popen, grace=grace)


def terminate_group(popen: subprocess.Popen[bytes], *, grace: float) -> int | None:
    if popen.poll() is not None:
        _kill_group(popen.pid, signal.SIGKILL)  # stray grandchildren of an exited leader
        return popen.returncode
    _kill_group(popen.pid, signal.SIGTERM)
    try:
        return popen.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        _kill_group(popen.pid, signal.SIGKILL)
        return popen.wait(timeout=10)
    finally:
        _kill_group(popen.pid, signal.SIGKILL)


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def spawn(
    *,
    name: str,
    argv: Sequence[str],
    log_path: Path,
    run_id: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> ManagedProcess:
    """Start ``argv`` (never through a shell) in its own process group, output appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    child_env = dict(os.environ if env is None else env)
    child_env[RUN_MARKER] = run_id
    with log_path.open("ab") as out:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=child_env,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - only prctl, no locks taken
        )
    log.debug("started %s (pid %d): %s", name, popen.pid, " ".join(argv))
    return ManagedProcess(name=name, popen=popen, log_path=log_path)


def respawn(proc: ManagedProcess, *, run_id: str, grace: float = 10.0) -> ManagedProcess:
    """Stop ``proc`` (if running) and start its command line again, output appended to the same log
    (fault tests: an apiserver restart, a node's kubelet brought back)."""
    argv = proc.popen.args
    if not isinstance(argv, list | tuple):
        raise TypeError(f"{proc.name} was not started from an argument list: {argv!r}")
    proc.stop(grace=grace)
    return spawn(name=proc.name, argv=[str(a) for a in argv], log_path=proc.log_path, run_id=run_id)


def processes_of_run(run_id: str | None = None) -> Iterator[tuple[int, str]]:
    """(pid, command line) of every live process tagged with ``run_id`` (any run when None)."""
    needle = f"{RUN_MARKER}={run_id}".encode() if run_id else f"{RUN_MARKER}=".encode()
    own = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == own:
            continue
        try:
            environ = (entry / "environ").read_bytes()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if any(var.startswith(needle) for var in environ.split(b"\0")):
            yield int(entry.name), cmdline.strip()


def sweep(run_id: str | None, *, grace: float = 3.0) -> list[str]:
    """Kill every process left from ``run_id`` (any run when None); returns their command lines."""
    found = list(processes_of_run(run_id))
    for pid, _ in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_exists(pid) for pid, _ in found):
        time.sleep(0.1)
    for pid, _ in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return [cmd for _, cmd in found]


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
