"""The local kubelet: schedules pods onto the (simulated) nodes and runs their containers as local
subprocesses, reporting container states, pod phase, logs and termination messages.

Every node of the emulated cluster is backed by this one kubelet. Volumes become folders under
the state directory (see :meth:`Kubelet.volume_path` and docs/testing.md for the mapping). Who a
container runs as and which Secret/ConfigMap files it may read: edgemodel_dev.fileaccess. With a
container runtime (edgemodel_dev.podman) the pods of Jobs run as real containers instead.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgemodel_dev import fileaccess, podenv
from edgemodel_dev.builtin_kinds import now
from edgemodel_dev.controllers import Controller
from edgemodel_dev.podenv import ContainerConfigError, Mount
from edgemodel_dev.podman import PodmanRuntime, apply_ownership
from edgemodel_dev.recorder import record_event
from edgemodel_dev.registry import Registry
from edgemodel_dev.selectors import Requirement, labels_match
from edgemodel_dev.store import Change

JSON = dict[str, Any]
log = logging.getLogger(__name__)

PODS = ("", "pods")
NODES = ("", "nodes")
TERMINATION_ENV = "EDGEMODEL_TERMINATION_LOG"
MOUNTS_ENV = "EDGEMODEL_MOUNTS"
MAX_MESSAGE = 4096
PASSTHROUGH_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "PYTHONPATH", "PYTHONDONTWRITEBYTECODE",
                   "OMP_NUM_THREADS", "MKL_NUM_THREADS", "COVERAGE_PROCESS_START", "SSL_CERT_FILE")


@dataclass
class ContainerRun:
    """The local process of one container."""

    name: str
    process: asyncio.subprocess.Process | None = None
    started_at: str = ""
    restarts: int = 0
    last_state: JSON | None = None
    state: JSON = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    ready: bool = False
    container_id: str = ""

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None


class PodRun:
    """Runs one pod: init containers in order, then all containers; restarts per restartPolicy."""

    def __init__(self, kubelet: Kubelet, pod: JSON) -> None:
        self.kubelet = kubelet
        self.namespace = pod["metadata"]["namespace"]
        self.name = pod["metadata"]["name"]
        self.uid = pod["metadata"]["uid"]
        self.pod = pod
        self.dir = kubelet.pod_dir(pod)
        self.containers: dict[str, ContainerRun] = {}
        self.init_done = False
        self.task: asyncio.Task[None] | None = None
        self.stopping = False
        self.kill_grace: float | None = None
        self.finished = asyncio.Event()

    # status ------------------------------------------------------------------------------
    def _container_status(self, spec: JSON, run: ContainerRun) -> JSON:
        status: JSON = {
            "name": spec["name"], "image": spec.get("image", ""), "imageID": f"local://{spec.get('image', '')}",
            "state": run.state, "ready": run.ready, "restartCount": run.restarts,
            "started": run.running,
        }
        if run.process is not None:
            status["containerID"] = run.container_id or f"local://{run.process.pid}"
        if run.last_state:
            status["lastState"] = run.last_state
        else:
            status["lastState"] = {}
        return status

    def publish(self, phase: str | None = None, reason: str | None = None, message: str | None = None) -> None:
        spec = self.pod.get("spec") or {}
        init_specs = spec.get("initContainers") or []
        specs = spec.get("containers") or []

        def update(pod: JSON) -> None:
            status = pod.setdefault("status", {})
            status["hostIP"] = "127.0.0.1"
            status["hostIPs"] = [{"ip": "127.0.0.1"}]
            status["podIP"] = "127.0.0.1"
            status["podIPs"] = [{"ip": "127.0.0.1"}]
            status.setdefault("startTime", now())
            if init_specs:
                status["initContainerStatuses"] = [
                    self._container_status(c, self.containers.get(c["name"]) or ContainerRun(c["name"]))
                    for c in init_specs]
            status["containerStatuses"] = [
                self._container_status(c, self.containers.get(c["name"]) or ContainerRun(c["name"])) for c in specs]
            all_ready = all((self.containers.get(c["name"]) or ContainerRun("")).ready for c in specs)
            if phase:
                status["phase"] = phase
            elif any(r.running for r in self.containers.values()):
                status["phase"] = "Running"
            if reason is not None:
                status["reason"] = reason
            if message is not None:
                status["message"] = message
            stamp = now()
            terminal = status.get("phase") in ("Succeeded", "Failed")
            conditions = {c["type"]: c for c in status.get("conditions") or []}
            wanted = {
                "PodReadyToStartContainers": "True",
                "Initialized": "True" if self.init_done or not init_specs else "False",
                "Ready": "True" if all_ready and not terminal else "False",
                "ContainersReady": "True" if all_ready and not terminal else "False",
                "PodScheduled": "True",
            }
            for kind, value in wanted.items():
                old = conditions.get(kind)
                if old is None or old.get("status") != value:
                    conditions[kind] = {"type": kind, "status": value, "lastProbeTime": None,
                                        "lastTransitionTime": stamp}
                    if value == "False" and kind in ("Ready", "ContainersReady") and terminal:
                        conditions[kind]["reason"] = "PodCompleted"
            status["conditions"] = list(conditions.values())

        result = self.kubelet.registry.mutate(self.kubelet.pod_rt, self.namespace, self.name, update,
                                              subresource="status")
        if result is not None:
            self.pod = result

    # lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"pod {self.namespace}/{self.name}")

    async def _run(self) -> None:
        try:
            await self._run_pod()
        except asyncio.CancelledError:
            await self._kill_all(0)
            raise
        except Exception:
            log.exception("Pod %s/%s crashed in the kubelet", self.namespace, self.name)
            with contextlib.suppress(Exception):
                self.publish("Failed", "KubeletError", "the local kubelet failed; see the emulator log")
        finally:
            self.finished.set()

    async def _run_pod(self) -> None:
        spec = self.pod.get("spec") or {}
        policy = spec.get("restartPolicy", "Always")
        try:
            mounts = await self.kubelet.prepare_volumes(self.pod, self.dir)
        except ContainerConfigError as exc:
            self._fail_all(exc)
            return
        self.publish()
        deadline = spec.get("activeDeadlineSeconds")
        deadline_at = time.monotonic() + float(deadline) if deadline else None
        for init in spec.get("initContainers") or []:
            code = await self._run_container(init, mounts, "OnFailure" if policy == "Always" else policy, deadline_at)
            if code != 0 or self.stopping:
                self.publish("Failed" if not self.stopping or code != 0 else None)
                return
        self.init_done = True
        runs = [self._run_container(c, mounts, policy, deadline_at) for c in spec.get("containers") or []]
        codes = await asyncio.gather(*runs)
        if not self.stopping and deadline_at is not None and time.monotonic() >= deadline_at:
            self.publish("Failed", "DeadlineExceeded", "Pod was active on the node longer than the specified "
                                                       "deadline")
            return
        self.publish("Failed" if any(codes) else "Succeeded")

    def _fail_all(self, exc: ContainerConfigError) -> None:
        for container in self.pod["spec"].get("containers") or []:
            run = self.containers.setdefault(container["name"], ContainerRun(container["name"]))
            run.state = {"terminated": {"exitCode": 128, "reason": exc.reason, "message": exc.message,
                                        "startedAt": now(), "finishedAt": now()}}
        log.warning("Pod %s/%s cannot start: %s", self.namespace, self.name, exc.message)
        self.kubelet.event(self.pod, "Warning", exc.reason, exc.message)
        self.publish("Failed", exc.reason, exc.message)

    async def _run_container(self, spec: JSON, mounts: list[Mount], policy: str,
                             deadline_at: float | None) -> int:
        name = spec["name"]
        run = self.containers.setdefault(name, ContainerRun(name))
        backoff = 0.5
        while True:
            code = await self._run_once(spec, run, mounts, deadline_at)
            restart = not self.stopping and (policy == "Always" or (policy == "OnFailure" and code != 0))
            if deadline_at is not None and time.monotonic() >= deadline_at:
                restart = False
            if not restart:
                return code
            run.restarts += 1
            run.last_state = run.state
            run.state = {"waiting": {"reason": "CrashLoopBackOff" if code else "Completed",
                                     "message": f"back-off {backoff:g}s restarting container {name}"}}
            self.publish()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.kubelet.max_restart_backoff)
            if self.stopping:
                return code

    async def _run_once(self, spec: JSON, run: ContainerRun, mounts: list[Mount], deadline_at: float | None) -> int:
        name = spec["name"]
        log_file = self.kubelet.log_file(self.pod, name)
        termination = self.dir / "termination" / f"{name}.log"
        termination.parent.mkdir(parents=True, exist_ok=True)
        termination.write_text("")
        if log_file.exists() and log_file.stat().st_size and run.restarts:
            log_file.replace(log_file.with_suffix(".previous.log"))
        all_mounts = mounts + self._own_mounts(spec, name, termination)
        runtime = self.kubelet.runtime_of(self.pod)
        try:
            if runtime is not None:
                argv, env, cwd = self.kubelet.podman_spec(runtime, self.pod, spec, termination)
                run.container_id = f"podman://{runtime.container_name(self.pod, spec)}"
            else:
                argv, env, cwd = self.kubelet.process_spec(self.pod, spec, all_mounts, termination)
        except ContainerConfigError as exc:
            run.state = {"terminated": {"exitCode": 128, "reason": exc.reason, "message": exc.message[:MAX_MESSAGE],
                                        "startedAt": now(), "finishedAt": now()}}
            log.warning("Container %s of pod %s/%s cannot start: %s", name, self.namespace, self.name, exc.message)
            self.kubelet.event(self.pod, "Warning", "Failed", f"Error: {exc.message}")
            self.publish()
            return 128
        started = now()
        with log_file.open("ab") as out:
            try:
                run.process = await asyncio.create_subprocess_exec(
                    *argv, cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=out,
                    stderr=asyncio.subprocess.STDOUT, start_new_session=True)
            except OSError as exc:
                run.state = {"terminated": {"exitCode": 128, "reason": "ContainerCannotRun",
                                            "message": f"{argv[0]}: {exc}", "startedAt": started,
                                            "finishedAt": now()}}
                self.publish()
                return 128
        log.info("Started container %s of pod %s/%s as pid %d: %s", name, self.namespace, self.name,
                 run.process.pid, " ".join(argv)[:300])
        self.kubelet.event(self.pod, "Normal", "Started", f"Started container {name}")
        run.started_at = started
        run.state = {"running": {"startedAt": started}}
        run.ready = True
        self.publish()
        timeout = None if deadline_at is None else max(deadline_at - time.monotonic(), 0.0)
        try:
            await asyncio.wait_for(run.process.wait(), timeout)
        except TimeoutError:
            log.info("Pod %s/%s passed its activeDeadlineSeconds; stopping container %s", self.namespace,
                     self.name, name)
            await self._kill(run, 0)
        finally:
            if runtime is not None:
                await runtime.remove(self.pod, spec)
        code = run.process.returncode or 0
        exit_code = 128 - code if code < 0 else code
        message = self._termination_message(spec, termination, log_file, exit_code)
        reason = "Completed" if exit_code == 0 else "Error"
        if deadline_at is not None and time.monotonic() >= deadline_at:
            reason = "DeadlineExceeded"
        terminated: JSON = {"exitCode": exit_code, "reason": reason, "startedAt": started, "finishedAt": now(),
                            "containerID": f"local://{run.process.pid}"}
        if code < 0:
            terminated["signal"] = -code
        if message:
            terminated["message"] = message
        run.state = {"terminated": terminated}
        run.ready = False
        log.info("Container %s of pod %s/%s exited with %d", name, self.namespace, self.name, exit_code)
        self.publish()
        return exit_code

    def _own_mounts(self, spec: JSON, name: str, termination: Path) -> list[Mount]:
        path = spec.get("terminationMessagePath") or "/dev/termination-log"
        return [Mount(str(path), termination)]

    @staticmethod
    def _termination_message(spec: JSON, termination: Path, log_file: Path, exit_code: int) -> str:
        message = ""
        with contextlib.suppress(OSError):
            message = termination.read_bytes()[:MAX_MESSAGE].decode("utf-8", errors="replace")
        if not message and exit_code != 0 and spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            with contextlib.suppress(OSError):
                lines = log_file.read_bytes().decode("utf-8", errors="replace").splitlines()[-80:]
                message = "\n".join(lines)[-2048:]
        return message

    async def _kill(self, run: ContainerRun, grace: float) -> None:
        process = run.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), timeout=max(grace, 0.05))
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()

    async def _kill_all(self, grace: float) -> None:
        await asyncio.gather(*(self._kill(run, grace) for run in self.containers.values()))

    async def stop(self, grace: float) -> None:
        """Stop every container: SIGTERM, then SIGKILL after ``grace`` seconds."""
        self.stopping = True
        self.kill_grace = grace
        await self._kill_all(grace)
        if self.task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self.finished.wait()), timeout=grace + 5)


class Kubelet(Controller):
    """Schedules and runs the pods of the emulated cluster."""

    name = "kubelet"

    def __init__(
        self,
        registry: Registry,
        state_dir: Path,
        node_name: str = "edgemodel-dev",
        pod_kubeconfig: Path | None = None,
        api_url: str = "",
        max_restart_backoff: float = 10.0,
        extra_env: dict[str, str] | None = None,
        image_user: tuple[int, int] = fileaccess.DEFAULT_IMAGE_USER,
        runtime: PodmanRuntime | None = None,
    ) -> None:
        super().__init__(registry)
        self.state_dir = Path(state_dir)
        self.node_name = node_name
        self.pod_kubeconfig = pod_kubeconfig
        self.api_url = api_url
        self.max_restart_backoff = max_restart_backoff
        self.extra_env = dict(extra_env or {})
        #: the USER the local kubelet assumes an image has (see edgemodel_dev.fileaccess)
        self.image_user = image_user
        #: when set, the pods it wants run as real containers (edgemodel_dev.podman); others as processes
        self.runtime = runtime
        self.pod_rt = registry.catalog.get("", "v1", "pods")
        self.runs: dict[str, PodRun] = {}
        self._stoppers: set[asyncio.Task[None]] = set()

    # files -------------------------------------------------------------------------------
    def pod_dir(self, pod: JSON) -> Path:
        meta = pod["metadata"]
        return self.state_dir / "pods" / f"{meta['namespace']}_{meta['name']}_{meta['uid'][:8]}"

    def log_file(self, pod: JSON, container: str) -> Path:
        path = self.pod_dir(pod) / "logs" / f"{container}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def log_path(self, pod: JSON, container: str, previous: bool) -> Path | None:
        path = self.pod_dir(pod) / "logs" / f"{container}.log"
        if previous:
            path = path.with_suffix(".previous.log")
        return path if path.exists() else None

    def container_running(self, pod: JSON, container: str) -> bool:
        run = self.runs.get(pod["metadata"]["uid"])
        if run is None:
            return False
        state = run.containers.get(container)
        return bool(state and state.running)

    def hostpath_root(self, node: str) -> Path:
        return self.state_dir / "nodes" / node / "hostpath"

    def volume_path(self, pod: JSON, volume: JSON) -> Path:
        """Where a volume lives locally (emptyDir, configMap, secret and downwardAPI: per pod;
        hostPath: per node; persistentVolumeClaim: per claim)."""
        meta = pod["metadata"]
        if "hostPath" in volume:
            node = (pod.get("spec") or {}).get("nodeName") or self.node_name
            return self.hostpath_root(node) / str(volume["hostPath"].get("path", "")).lstrip("/")
        if "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"].get("claimName", "")
            return self.state_dir / "pvcs" / meta["namespace"] / claim
        return self.pod_dir(pod) / "volumes" / volume["name"]

    # lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        super().start()
        for pod in list(self.registry.store.items(PODS)):
            self._queue.put_nowait(Change(0, "ADDED", PODS, pod, None))

    def wants(self, change: Change) -> bool:
        return change.storage == PODS or (change.storage == NODES and change.type == "ADDED")

    async def stop(self) -> None:
        """Stop every container (SIGTERM, then SIGKILL after a short grace)."""
        await super().stop()
        await asyncio.gather(*(run.stop(2.0) for run in self.runs.values()), return_exceptions=True)
        for run in self.runs.values():
            if run.task is not None and not run.task.done():
                run.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await run.task
        self.runs.clear()

    def handle(self, change: Change) -> None:
        if change.storage == NODES:
            self._schedule_pending()
        else:
            self._run_pod(change)

    def _run_pod(self, change: Change) -> None:
        pod = change.obj
        meta = pod["metadata"]
        uid = meta["uid"]
        run = self.runs.get(uid)
        if change.type == "DELETED":
            if run is not None:
                self._stop_run(run, 1.0, remove=False)
            return
        current = self.registry.store.get(PODS, meta["namespace"], meta["name"])
        if current is None or current["metadata"]["uid"] != uid:
            return
        pod = current
        meta = pod["metadata"]
        if meta.get("deletionTimestamp"):
            if run is not None and not run.stopping:
                self._stop_run(run, float(meta.get("deletionGracePeriodSeconds") or 0), remove=True)
            elif run is None:
                self.registry.finish_pod_deletion(meta["namespace"], meta["name"])
            return
        phase = (pod.get("status") or {}).get("phase")
        if run is not None or phase in ("Succeeded", "Failed"):
            return
        node = (pod.get("spec") or {}).get("nodeName")
        if not node:
            self._schedule(pod)
            return
        if self.registry.store.get(NODES, "", node) is None:
            return  # bound to a node that does not exist: stays Pending, like on a real cluster
        run = PodRun(self, copy.deepcopy(self.registry.present(self.pod_rt, pod)))
        self.runs[uid] = run
        run.start()

    def event(self, pod: JSON, kind: str, reason: str, message: str, component: str = "kubelet") -> None:
        record_event(self.registry, pod, kind, reason, message, component)

    def _stop_run(self, run: PodRun, grace: float, remove: bool) -> None:
        async def stopper() -> None:
            await run.stop(grace)
            self.runs.pop(run.uid, None)
            if remove:
                self.registry.finish_pod_deletion(run.namespace, run.name)

        task = asyncio.get_running_loop().create_task(stopper())
        self._stoppers.add(task)
        task.add_done_callback(self._stoppers.discard)

    # scheduling --------------------------------------------------------------------------
    def _nodes(self) -> list[JSON]:
        return list(self.registry.store.items(NODES))

    def _fits(self, pod: JSON, node: JSON) -> bool:
        spec = pod.get("spec") or {}
        if (node.get("spec") or {}).get("unschedulable"):
            return False
        ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                    for c in (node.get("status") or {}).get("conditions") or [])
        if not ready:
            return False
        selector = [Requirement(k, "=", (str(v),)) for k, v in (spec.get("nodeSelector") or {}).items()]
        return labels_match(selector, node)

    def _schedule(self, pod: JSON) -> None:
        candidates = [n for n in self._nodes() if self._fits(pod, n)]
        meta = pod["metadata"]
        if not candidates:
            status = pod.get("status") or {}
            if any(c.get("type") == "PodScheduled" and c.get("status") == "False"
                   for c in status.get("conditions") or []):
                return

            def unschedulable(p: JSON) -> None:
                p.setdefault("status", {})["conditions"] = [{
                    "type": "PodScheduled", "status": "False", "reason": "Unschedulable", "lastProbeTime": None,
                    "lastTransitionTime": now(),
                    "message": f"0/{len(self._nodes())} nodes are available: no node matches the pod's "
                               "nodeSelector or is Ready",
                }]

            self.registry.mutate(self.pod_rt, meta["namespace"], meta["name"], unschedulable, subresource="status")
            return
        candidates.sort(key=lambda n: (n["metadata"]["name"] != self.node_name, n["metadata"]["name"]))
        node = candidates[0]["metadata"]["name"]
        bound = copy.deepcopy(self.registry.present(self.pod_rt, pod))
        bound["spec"]["nodeName"] = node
        status = bound.setdefault("status", {})
        status["conditions"] = [{"type": "PodScheduled", "status": "True", "lastProbeTime": None,
                                 "lastTransitionTime": now()}]
        self.registry.store_update(self.pod_rt, bound)
        log.debug("Scheduled pod %s/%s onto node %s", meta["namespace"], meta["name"], node)
        self.event(bound, "Normal", "Scheduled", f"Successfully assigned {meta['namespace']}/{meta['name']} to {node}",
                   "default-scheduler")

    def _schedule_pending(self) -> None:
        for pod in list(self.registry.store.items(PODS)):
            if not (pod.get("spec") or {}).get("nodeName") and not pod["metadata"].get("deletionTimestamp"):
                self._queue.put_nowait(Change(0, "MODIFIED", PODS, pod, None))

    # containers --------------------------------------------------------------------------
    def _lookup(self, plural: str) -> podenv.Lookup:
        def lookup(namespace: str, name: str) -> JSON | None:
            return self.registry.store.get(("", plural), namespace, name)

        return lookup

    async def prepare_volumes(self, pod: JSON, pod_dir: Path) -> list[Mount]:
        """Create the local folders of the pod's volumes; returns every container's mounts merged."""
        for sub in ("logs", "termination", "volumes", "tmp", "rootfs"):
            (pod_dir / sub).mkdir(parents=True, exist_ok=True)
        volumes: dict[str, Path] = {}
        namespace = pod["metadata"]["namespace"]
        identities = self.identities(pod)
        for volume in (pod.get("spec") or {}).get("volumes") or []:
            path = self.volume_path(pod, volume)
            if "configMap" in volume or "secret" in volume:
                written = self._write_keyed(namespace, volume, path)
                self._apply_modes(pod, volume, path, written, identities)
            elif "downwardAPI" in volume:
                path.mkdir(parents=True, exist_ok=True)
                written = []
                for item in volume["downwardAPI"].get("items") or []:
                    if "fieldRef" in item:
                        _replace_file(path / item["path"],
                                      podenv.field_ref(pod, item["fieldRef"]["fieldPath"]).encode())
                        written.append(str(item["path"]))
                self._apply_modes(pod, volume, path, written, identities)
            elif "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"].get("claimName", "")
                if self.registry.store.get(("", "persistentvolumeclaims"), namespace, claim) is None:
                    raise ContainerConfigError("FailedMount", f'persistentvolumeclaim "{claim}" not found')
                path.mkdir(parents=True, exist_ok=True)
            elif "hostPath" in volume:
                kind = volume["hostPath"].get("type") or ""
                if kind in ("File", "FileOrCreate"):
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.touch(exist_ok=True)
                else:
                    path.mkdir(parents=True, exist_ok=True)
            elif "emptyDir" in volume:
                path.mkdir(parents=True, exist_ok=True)
                if self.runtime_of(pod) is not None:
                    os.chmod(path, 0o777)  # as a real emptyDir
            else:
                kinds = sorted(k for k in volume if k != "name")
                raise ContainerConfigError(
                    "FailedMount", f"volume {volume['name']!r} of type {kinds} is not supported by the local kubelet "
                                   "(use emptyDir, hostPath, configMap, secret, downwardAPI or persistentVolumeClaim)")
            volumes[volume["name"]] = path
        mounts: list[Mount] = []
        spec = pod.get("spec") or {}
        for container in (spec.get("initContainers") or []) + (spec.get("containers") or []):
            for mount in container.get("volumeMounts") or []:
                local = volumes.get(mount.get("name", ""))
                if local is None:
                    continue
                if mount.get("subPath"):
                    local = local / mount["subPath"]
                    if not local.exists():
                        local.mkdir(parents=True, exist_ok=True)
                entry = Mount(str(mount["mountPath"]), local)
                if entry not in mounts:
                    mounts.append(entry)
        return mounts

    def identities(self, pod: JSON) -> dict[str, fileaccess.Identity]:
        """Each container's modelled user and groups (raises ContainerConfigError on a non-root breach)."""
        spec = pod.get("spec") or {}
        runtime = self.runtime_of(pod)
        out: dict[str, fileaccess.Identity] = {}
        for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
            if runtime is not None:  # the real image's USER
                image_user = runtime.image_user(str(c.get("image", "")))
                default = fileaccess.Identity(*image_user)
            else:
                image_user, default = self.image_user, fileaccess.Identity(os.geteuid(), os.getegid())
            out[c["name"]] = fileaccess.container_identity(pod, c, default, image_user)
        return out

    def runtime_of(self, pod: JSON) -> PodmanRuntime | None:
        """The container runtime that runs this pod, or None for local processes."""
        return self.runtime if self.runtime is not None and self.runtime.wants(pod) else None

    def _apply_modes(self, pod: JSON, volume: JSON, path: Path, files: list[str],
                     identities: dict[str, fileaccess.Identity]) -> None:
        """Real containers: the owner, group and mode a real kubelet gives the files. Processes: make each
        file readable exactly when the containers mounting the volume could read it."""
        if self.runtime_of(pod) is not None:
            _, group, _ = fileaccess.keyed_file_modes(pod, volume)
            os.chmod(path, 0o755)
            for rel in files:
                apply_ownership(path / rel, group, fileaccess.file_mode(pod, volume, rel))
            return
        spec = pod.get("spec") or {}
        readers = [identities[c["name"]] for c in (spec.get("initContainers") or []) + (spec.get("containers") or [])
                   if any(m.get("name") == volume["name"] for m in c.get("volumeMounts") or [])]
        owner, group, _ = fileaccess.keyed_file_modes(pod, volume)
        for rel in files:
            mode = fileaccess.file_mode(pod, volume, rel)
            readable = all(r.can_read(owner, group, mode) for r in readers)
            os.chmod(path / rel, (mode | 0o400) & 0o777 if readable else 0)
            if not readable:
                log.info("File %s of volume %s is not readable by the containers of pod %s/%s (mode %04o, "
                         "owner %d:%d; they run as %s)", rel, volume["name"], pod["metadata"]["namespace"],
                         pod["metadata"]["name"], mode, owner, group,
                         ", ".join(f"{r.uid}:{r.gid} groups {list(r.groups)}" for r in readers))

    def _write_keyed(self, namespace: str, volume: JSON, path: Path) -> list[str]:
        source_kind = "configMap" if "configMap" in volume else "secret"
        source = volume[source_kind]
        name = source.get("name") if source_kind == "configMap" else source.get("secretName")
        obj = self.registry.store.get(("", "configmaps" if source_kind == "configMap" else "secrets"),
                                      namespace, str(name))
        if obj is None:
            if source.get("optional"):
                path.mkdir(parents=True, exist_ok=True)
                return []
            raise ContainerConfigError("FailedMount", f'{source_kind.lower()} "{name}" not found')
        files: dict[str, bytes] = {}
        if source_kind == "configMap":
            files.update({k: str(v).encode() for k, v in (obj.get("data") or {}).items()})
            files.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        else:
            files.update({k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()})
        items = source.get("items")
        if items:
            files = {item["path"]: files[item["key"]] for item in items if item.get("key") in files}
        path.mkdir(parents=True, exist_ok=True)
        for rel, data in files.items():
            _replace_file(path / rel, data)
        return list(files)

    def base_env(self, pod: JSON, pod_dir: Path) -> dict[str, str]:
        env = {k: os.environ[k] for k in PASSTHROUGH_ENV if k in os.environ}
        venv = str(podenv.venv_bin())
        env["PATH"] = venv + os.pathsep + env.get("PATH", os.defpath)
        env["VIRTUAL_ENV"] = str(podenv.venv_bin().parent)
        env["HOSTNAME"] = pod["metadata"]["name"]
        env["TMPDIR"] = str(pod_dir / "tmp")
        env["PYTHONUNBUFFERED"] = "1"
        if self.api_url:
            host_port = self.api_url.split("://", 1)[-1]
            host, _, port = host_port.partition(":")
            env["KUBERNETES_SERVICE_HOST"] = host
            env["KUBERNETES_SERVICE_PORT"] = port
        if self.pod_kubeconfig is not None:
            env["KUBECONFIG"] = str(self.pod_kubeconfig)
        env.update(self.extra_env)
        return env

    def process_spec(self, pod: JSON, container: JSON, mounts: list[Mount],
                     termination: Path) -> tuple[list[str], dict[str, str], str]:
        pod_dir = self.pod_dir(pod)
        current = self.registry.store.get(PODS, pod["metadata"]["namespace"], pod["metadata"]["name"]) or pod
        env = podenv.container_env(current, container, self._lookup("configmaps"), self._lookup("secrets"),
                                   self.base_env(pod, pod_dir))
        env = {k: podenv.substitute(v, mounts) for k, v in env.items()}
        env[TERMINATION_ENV] = str(termination)
        env[MOUNTS_ENV] = json.dumps({m.container_path: str(m.local_path) for m in mounts})
        argv = podenv.command_line(container, env, mounts)
        if self.identities(current)[container["name"]].uid != 0:
            argv = fileaccess.drop_dac_prefix() + argv
        working = container.get("workingDir")
        if working:
            cwd = podenv.substitute(str(working), mounts)
            if cwd == working:
                cwd = str(pod_dir / "rootfs" / working.lstrip("/"))
        else:
            cwd = str(pod_dir / "rootfs")
        Path(cwd).mkdir(parents=True, exist_ok=True)
        return argv, env, cwd

    def podman_spec(self, runtime: PodmanRuntime, pod: JSON, container: JSON,
                    termination: Path) -> tuple[list[str], dict[str, str], str]:
        """``podman run`` argv, the podman process's environment and working directory."""
        current = self.registry.store.get(PODS, pod["metadata"]["namespace"], pod["metadata"]["name"]) or pod
        base: dict[str, str] = {}
        if self.api_url:
            host, _, port = self.api_url.split("://", 1)[-1].partition(":")
            base.update(KUBERNETES_SERVICE_HOST=host, KUBERNETES_SERVICE_PORT=port)
        env = podenv.container_env(current, container, self._lookup("configmaps"), self._lookup("secrets"), base)
        termination.chmod(0o666)
        volumes = {v["name"]: self.volume_path(pod, v) for v in (pod.get("spec") or {}).get("volumes") or []}
        identity = self.identities(current)[container["name"]]
        argv = runtime.run_argv(current, container, identity, env, volumes, termination)
        own_env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
        return argv, own_env, str(self.pod_dir(pod))

    # convenience for tests ----------------------------------------------------------------
    def running_pods(self) -> list[str]:
        return sorted(f"{r.namespace}/{r.name}" for r in list(self.runs.values())
                      if any(c.running for c in list(r.containers.values())))

    def pid_of(self, namespace: str, name: str, container: str | None = None) -> int | None:
        for run in list(self.runs.values()):
            if run.namespace == namespace and run.name == name:
                for cname, c in list(run.containers.items()):
                    if (container is None or cname == container) and c.running and c.process is not None:
                        return c.process.pid
        return None


def _replace_file(target: Path, data: bytes) -> None:
    """Write ``data`` to a new file at ``target`` (a previous one may be mode 0000)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    target.write_bytes(data)
