"""One pod bound to the process kubelet's node: its volumes, its containers and their restarts, its
status, and its end (SIGTERM, SIGKILL after the grace period, then the pod's removal).
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from kubernetes import client
from kubernetes.client.rest import ApiException

from kpcap.kubeapi import status_time
from kpcap_localcluster import podspec
from kpcap_localcluster.pod_container import Container
from kpcap_localcluster.podspec import ContainerPlan, Json, PodSpecError
from kpcap_localcluster.processes import RUN_MARKER

if TYPE_CHECKING:
    from kpcap_localcluster.kubelet import Kubelet

log = logging.getLogger("kubelet")


class PodWorker(threading.Thread):
    """Runs one pod from first sight to removal."""

    def __init__(self, kubelet: Kubelet, pod: Json) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.kubelet = kubelet
        self.cfg = kubelet.cfg
        self.api = kubelet.api
        self.pod = pod
        self.uid: str = meta["uid"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.dir = Path(self.cfg.state_dir) / "pods" / f"{self.namespace}_{self.name}_{self.uid}"
        self.containers: list[Container] = []
        self.terminate_at: float | None = None
        self.gone = threading.Event()
        self.last_status: Json = {}
        self.token_expiry = 0.0

    # --- lookups through the API (authorised by the Node authoriser) ---------------------------

    def lookup_data(self, kind: str, name: str) -> dict[str, str | bytes] | None:
        """A Secret's (decoded, as bytes) or ConfigMap's data; None if it does not exist."""
        data: dict[str, str | bytes]
        try:
            if kind == "Secret":
                obj = self.api.core.read_namespaced_secret(name, self.namespace)
                data = {k: base64.b64decode(v) for k, v in (obj.data or {}).items()}
            else:
                obj = self.api.core.read_namespaced_config_map(name, self.namespace)
                data = dict(obj.data or {})
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        return data

    def lookup(self, kind: str, name: str) -> dict[str, str] | None:
        """The data as text, for environment variables (podspec.ValueLookup)."""
        found = self.lookup_data(kind, name)
        if found is None:
            return None
        return {k: v.decode() if isinstance(v, bytes) else v for k, v in found.items()}

    def _write_files(self, target: Path, files: Mapping[str, str | bytes]) -> None:
        target.mkdir(parents=True, exist_ok=True)
        for rel, content in files.items():
            path = target / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content.encode() if isinstance(content, str) else content)

    def _service_account_files(self, *, expiration: int = 3600) -> dict[str, str]:
        sa = self.pod["spec"].get("serviceAccountName") or "default"
        request = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(
                audiences=[],
                expiration_seconds=expiration,
                bound_object_ref=client.V1BoundObjectReference(
                    api_version="v1", kind="Pod", name=self.name, uid=self.uid
                ),
            )
        )
        token = self.api.core.create_namespaced_service_account_token(sa, self.namespace, request)
        self.token_expiry = time.monotonic() + expiration * 0.8
        ca = Path(self.cfg.kubeconfig).with_name("ca.crt").read_text()
        return {"token": token.status.token, "ca.crt": ca, "namespace": self.namespace}

    def prepare_volumes(self) -> dict[str, Path]:
        """Materialise each volume as a directory under the pod's directory."""
        dirs: dict[str, Path] = {}
        sa_volumes = self._service_account_volume_names()
        for vol in self.pod["spec"].get("volumes") or []:
            name = vol["name"]
            target = self.dir / "volumes" / name
            if name in sa_volumes:
                # Credentials come from the TokenRequest API (bound to this pod), not a stored Secret.
                self._write_files(target, self._service_account_files())
            elif "emptyDir" in vol:
                target.mkdir(parents=True, exist_ok=True)
                target.chmod(0o777)
            elif "hostPath" in vol:
                target = Path(vol["hostPath"]["path"])
            elif "secret" in vol or "configMap" in vol:
                kind, src = ("Secret", vol["secret"]) if "secret" in vol else ("ConfigMap", vol["configMap"])
                ref_name = src.get("secretName") or src.get("name")
                self._write_files(target, self._key_files(kind, ref_name, src))
            elif "downwardAPI" in vol:
                self._write_files(target, self._downward_files(vol["downwardAPI"]))
            elif "projected" in vol:
                files: dict[str, str | bytes] = {}
                for source in vol["projected"].get("sources") or []:
                    if "serviceAccountToken" in source:
                        sa = self._service_account_files(
                            expiration=source["serviceAccountToken"].get("expirationSeconds", 3600)
                        )
                        files[source["serviceAccountToken"]["path"]] = sa["token"]
                    elif "secret" in source or "configMap" in source:
                        kind = "Secret" if "secret" in source else "ConfigMap"
                        src = source["secret" if kind == "Secret" else "configMap"]
                        files.update(self._key_files(kind, src["name"], src))
                    elif "downwardAPI" in source:
                        files.update(self._downward_files(source["downwardAPI"]))
                self._write_files(target, files)
            else:
                raise PodSpecError(f"volume {name!r}: its type is not supported by the process kubelet")
            dirs[name] = target
        return dirs

    def _service_account_volume_names(self) -> set[str]:
        names = set()
        for ctr in self.pod["spec"].get("containers", []):
            for vm in ctr.get("volumeMounts") or []:
                if vm["mountPath"].rstrip("/") == podspec.SERVICE_ACCOUNT_MOUNT:
                    names.add(vm["name"])
        return names

    def _key_files(self, kind: str, ref_name: str, src: Json) -> dict[str, str | bytes]:
        data = self.lookup_data(kind, ref_name)
        if data is None:
            if src.get("optional"):
                return {}
            raise PodSpecError(f"{kind} {ref_name!r} referenced by a volume was not found")
        items = src.get("items")
        if items:
            return {item["path"]: data[item["key"]] for item in items if item["key"] in data}
        return dict(data)

    def _downward_files(self, spec: Json) -> dict[str, str | bytes]:
        out: dict[str, str | bytes] = {}
        for item in spec.get("items") or []:
            if "fieldRef" in item:
                out[item["path"]] = podspec._field_ref(item["fieldRef"]["fieldPath"], self.pod)
        return out

    # --- lifecycle ------------------------------------------------------------------------------

    def base_env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": "/root",
            "HOSTNAME": self.cfg.node_name,
            "KUBERNETES_SERVICE_HOST": self.cfg.api_host,
            "KUBERNETES_SERVICE_PORT": str(self.cfg.api_port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(self.cfg.api_port),
            "PYTHONUNBUFFERED": "1",
            RUN_MARKER: self.cfg.run_id,
        }

    def plan(self, container: Json, volume_dirs: Mapping[str, Path]) -> ContainerPlan:
        user, group = podspec.run_as(container, self.pod)
        honoured = _honoured_user(user)
        note = (
            f"runAsUser {user} not honoured: {sys.executable} is not reachable for other users on this "
            "machine; running as uid 0 with only the securityContext's capabilities"
            if user and honoured is None
            else ""
        )
        return ContainerPlan(
            name=container["name"],
            argv=podspec.resolve_argv(container=container, images=self.cfg.images),
            env=podspec.resolve_env(
                container=container, pod=self.pod, lookup=self.lookup, base=self.base_env()
            ),
            mounts=podspec.volume_mounts(container=container, volume_dirs=volume_dirs),
            working_dir=container.get("workingDir"),
            run_as_user=honoured,
            run_as_group=group if honoured is not None else None,
            capabilities=podspec.capabilities(container),
            extra={"note": note} if note else {},
        )

    def run(self) -> None:
        try:
            self._run()
        except Exception:
            log.exception("pod worker %s/%s crashed", self.namespace, self.name)
        finally:
            self.cleanup()

    def _run(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pod.setdefault("status", {})["podIP"] = self.cfg.node_ip
        self.pod["status"]["hostIP"] = self.cfg.node_ip
        spec = self.pod["spec"]
        policy = spec.get("restartPolicy", "Always")
        try:
            for ctr in [*(spec.get("initContainers") or []), *spec["containers"]]:
                podspec.resolve_argv(container=ctr, images=self.cfg.images)
        except PodSpecError as err:
            self.report_waiting("ImageNotKnown", str(err))
            self._wait_for_deletion()
            return
        # As a real kubelet's sync loop does, retry what may succeed later: the Node authoriser learns
        # of a freshly bound pod (and so of its Secrets and token) a moment after the kubelet does,
        # and a referenced Secret or ConfigMap may be created after the pod.
        delay = self.cfg.restart_backoff_base
        while True:
            try:
                volume_dirs = self.prepare_volumes()
                init_plans = [self.plan(c, volume_dirs) for c in spec.get("initContainers") or []]
                plans = [self.plan(c, volume_dirs) for c in spec["containers"]]
                break
            except (PodSpecError, ApiException) as err:
                message = str(err) if isinstance(err, PodSpecError) else f"{err.status} {err.reason}"
                self.report_waiting("CreateContainerConfigError", message)
                if self.gone.wait(delay) or self.terminate_at is not None:
                    self._wait_for_deletion()
                    return
                delay = min(delay * 2, self.cfg.restart_backoff_max)
        self.pod["status"]["startTime"] = status_time()
        images = {c["name"]: c["image"] for c in [*(spec.get("initContainers") or []), *spec["containers"]]}
        for init in init_plans:
            ctr = self._container(init, images[init.name])
            if not self._run_to_completion(ctr, policy):
                return
        self.containers = [self._container(p, images[p.name]) for p in plans]
        for ctr in self.containers:
            ctr.start(run_id=self.cfg.run_id)
        self.report(init_done=True)
        while not self.gone.is_set():
            if self.terminate_at is not None:
                self._terminate()
                return
            changed = False
            for ctr in self.containers:
                code = ctr.poll()
                if code is not None and "terminated" in ctr.state and ctr.next_start == 0.0:
                    changed = True
                    exit_code = ctr.state["terminated"]["exitCode"]
                    if podspec.restart_wanted(policy=policy, exit_code=exit_code):
                        delay = min(
                            self.cfg.restart_backoff_base * 2**ctr.restart_count, self.cfg.restart_backoff_max
                        )
                        ctr.next_start = time.monotonic() + delay
                        log.info(
                            "%s/%s: %s exited %s, restart in %.0fs",
                            self.namespace,
                            self.name,
                            ctr.plan.name,
                            exit_code,
                            delay,
                        )
                elif ctr.next_start and time.monotonic() >= ctr.next_start:
                    ctr.last_state = ctr.state
                    ctr.restart_count += 1
                    ctr.next_start = 0.0
                    ctr.start(run_id=self.cfg.run_id)
                    changed = True
            if self.token_expiry and time.monotonic() > self.token_expiry:
                self.prepare_volumes()  # refresh the bound ServiceAccount tokens in place
            if changed:
                self.report(init_done=True)
            self.gone.wait(0.2)

    def _container(self, plan: ContainerPlan, image: str) -> Container:
        return Container(
            plan,
            self.dir / f"{plan.name}.log",
            self.dir / f".{plan.name}.spec.json",
            image,
            self.cfg.mountpoints_log,
        )

    def _run_to_completion(self, ctr: Container, policy: str) -> bool:
        while True:
            ctr.start(run_id=self.cfg.run_id)
            self.report_waiting("PodInitializing", f"init container {ctr.plan.name} running")
            while ctr.poll() is None:
                if self.terminate_at is not None or self.gone.is_set():
                    ctr.signal(signal.SIGKILL)
                    self._wait_for_deletion()
                    return False
                time.sleep(0.2)
            code = ctr.state["terminated"]["exitCode"]
            if code == 0:
                return True
            if policy == "Never":
                self.pod["status"]["phase"] = "Failed"
                self.report_waiting("InitError", f"init container {ctr.plan.name} exited {code}")
                self._wait_for_deletion()
                return False
            ctr.restart_count += 1
            time.sleep(
                min(self.cfg.restart_backoff_base * 2**ctr.restart_count, self.cfg.restart_backoff_max)
            )

    def _terminate(self) -> None:
        grace = self.pod["metadata"].get("deletionGracePeriodSeconds")
        if grace is None:
            grace = self.pod["spec"].get("terminationGracePeriodSeconds", 30)
        for ctr in self.containers:
            ctr.signal(signal.SIGTERM)
        deadline = time.monotonic() + float(grace)
        while time.monotonic() < deadline and any(c.poll() is None for c in self.containers):
            time.sleep(0.1)
        for ctr in self.containers:
            if ctr.poll() is None:
                log.info(
                    "%s/%s: %s outlived its %ss grace period, SIGKILL",
                    self.namespace,
                    self.name,
                    ctr.plan.name,
                    grace,
                )
            ctr.signal(signal.SIGKILL)
            if ctr.popen is not None:
                ctr.popen.wait()
            ctr.poll()
        self._delete_pod()

    def _wait_for_deletion(self) -> None:
        while not self.gone.is_set() and self.terminate_at is None:
            self.gone.wait(0.5)
        if self.terminate_at is not None and not self.gone.is_set():
            self._delete_pod()

    def _delete_pod(self) -> None:
        with contextlib.suppress(ApiException):
            self.api.core.delete_namespaced_pod(
                self.name,
                self.namespace,
                body=client.V1DeleteOptions(
                    grace_period_seconds=0, preconditions=client.V1Preconditions(uid=self.uid)
                ),
            )
        self.gone.set()

    def kill_now(self) -> None:
        for ctr in self.containers:
            ctr.signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(c.poll() is None for c in self.containers):
            time.sleep(0.1)
        for ctr in self.containers:
            ctr.signal(signal.SIGKILL)

    def cleanup(self) -> None:
        self.kill_now()

    # --- status ---------------------------------------------------------------------------------

    def report_waiting(self, reason: str, message: str) -> None:
        spec = self.pod["spec"]
        statuses = [
            {
                "name": c["name"],
                "image": c.get("image", ""),
                "imageID": "",
                "ready": False,
                "started": False,
                "restartCount": 0,
                "state": {"waiting": {"reason": reason, "message": message}},
                "lastState": {},
            }
            for c in spec["containers"]
        ]
        log.warning("%s/%s waiting: %s: %s", self.namespace, self.name, reason, message)
        self._patch_status(
            {
                "phase": self.pod["status"].get("phase", "Pending"),
                "hostIP": self.cfg.node_ip,
                "podIP": self.cfg.node_ip,
                "podIPs": [{"ip": self.cfg.node_ip}],
                "conditions": self._conditions(ready=False, initialized=False),
                "containerStatuses": statuses,
                "message": message,
                "reason": reason,
            }
        )

    def report(self, *, init_done: bool) -> None:
        policy = self.pod["spec"].get("restartPolicy", "Always")
        statuses = [c.status() for c in self.containers]
        phase = podspec.pod_phase(policy=policy, states=[s["state"] for s in statuses], init_done=init_done)
        ready = phase == "Running" and all(s["ready"] for s in statuses)
        self._patch_status(
            {
                "phase": phase,
                "hostIP": self.cfg.node_ip,
                "podIP": self.cfg.node_ip,
                "podIPs": [{"ip": self.cfg.node_ip}],
                "startTime": self.pod["status"].get("startTime"),
                "conditions": self._conditions(ready=ready, initialized=init_done),
                "containerStatuses": statuses,
                "message": None,
                "reason": None,
            }
        )

    def _conditions(self, *, ready: bool, initialized: bool) -> list[Json]:
        now = status_time()

        def cond(kind: str, ok: bool) -> Json:
            return {"type": kind, "status": "True" if ok else "False", "lastTransitionTime": now}

        return [
            cond("PodScheduled", True),
            cond("Initialized", initialized),
            cond("ContainersReady", ready),
            cond("Ready", ready),
        ]

    def _patch_status(self, status: Json) -> None:
        if status == self.last_status:
            return
        try:
            self.api.core.patch_namespaced_pod_status(self.name, self.namespace, {"status": status})
            self.last_status = status
        except ApiException as err:
            if err.status != 404:
                log.warning("status of %s/%s not reported: %s", self.namespace, self.name, err.reason)


def _honoured_user(user: int | None) -> int | None:
    """The uid to run as, or None when this machine's interpreter is unreachable for other users.

    Test machines often keep Python under /root (mode 0700). Then a non-root container runs as
    uid 0 — still with exactly the capabilities its securityContext grants — and says so in its log.
    """
    if not user:
        return user
    for parent in Path(sys.executable).resolve().parents:
        if not parent.stat().st_mode & 0o001:
            return None
    return user
