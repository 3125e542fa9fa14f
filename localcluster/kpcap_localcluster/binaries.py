"""Where the control-plane binaries come from.

In order: a directory named by ``KPCAP_KUBE_BIN_DIR`` (all five binaries), envtest's
``KUBEBUILDER_ASSETS`` (etcd and kube-apiserver, and the others if they are there too), the cache
that ``hack/build-kube-binaries.sh`` fills from Debian's ``kubernetes`` source package, and for etcd
Debian's ``etcd-server`` on PATH. A missing binary is built once (with progress) when allowed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

BIN_DIR_ENV = "KPCAP_KUBE_BIN_DIR"
ENVTEST_ENV = "KUBEBUILDER_ASSETS"
KUBE_BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-kube-binaries.sh"


def cache_dir() -> Path:
    return Path(os.environ.get("KPCAP_CACHE", Path.home() / ".cache" / "kpcap"))


@dataclass(frozen=True, slots=True)
class ControlPlaneBinaries:
    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path


def _search_dirs() -> list[Path]:
    dirs = [Path(os.environ[var]) for var in (BIN_DIR_ENV, ENVTEST_ENV) if os.environ.get(var)]
    dirs.append(cache_dir() / "kube" / "bin")
    return dirs


def find_binary(name: str) -> Path | None:
    for directory in _search_dirs():
        candidate = directory / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    on_path = shutil.which(name)
    return Path(on_path) if on_path else None


class BinariesMissingError(RuntimeError):
    pass


def ensure_binaries(*, build: bool = True) -> ControlPlaneBinaries:
    """Find every binary, building the Kubernetes ones from Debian's source first if allowed."""
    missing = [name for name in (*KUBE_BINARIES, "etcd") if find_binary(name) is None]
    if missing and build:
        # The build prints its own progress to stderr (it takes minutes the first time).
        subprocess.run(["bash", str(BUILD_SCRIPT)], check=True)
        missing = [name for name in (*KUBE_BINARIES, "etcd") if find_binary(name) is None]
    if missing:
        raise BinariesMissingError(
            f"missing {', '.join(missing)}: set {BIN_DIR_ENV} or {ENVTEST_ENV} to a directory "
            f"holding them, or run {BUILD_SCRIPT} (it builds them into {cache_dir() / 'kube' / 'bin'})"
        )

    def get(name: str) -> Path:
        found = find_binary(name)
        assert found is not None  # noqa: S101 - checked just above
        return found

    return ControlPlaneBinaries(
        etcd=get("etcd"),
        kube_apiserver=get("kube-apiserver"),
        kube_controller_manager=get("kube-controller-manager"),
        kube_scheduler=get("kube-scheduler"),
    )


def tool(name: str) -> str:
    """``kubectl`` or ``helm``: the copy hack/install-tools.sh caches, else whatever PATH has."""
    cached = cache_dir() / "bin" / name
    if cached.is_file() and os.access(cached, os.X_OK):
        return str(cached)
    found = shutil.which(name)
    if found is None:
        raise BinariesMissingError(f"{name} not found: run hack/install-tools.sh (it caches {cached})")
    return found
