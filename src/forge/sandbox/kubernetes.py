"""`kubernetes` runtime: one pod per agent, its runner reached over the pod network.

For each agent Forge creates a Secret holding the runner's token (mounted into the pod as a
file, never put in the pod spec) and a Pod running `python -m forge.runner` on
`tcp:0.0.0.0:<runner_port>`. The Secret is then made owned by the Pod, so deleting the Pod
collects it. `provision` watches the Pod until it is Ready (a TCP probe on the runner's port)
and returns `tcp:<pod IP>:<port>`.

The pod runs as uid/gid 1000 on a read-only root filesystem with every capability dropped, no
privilege escalation, the RuntimeDefault seccomp profile and no service-account token;
`/tmp` and the runner's state directory are emptyDirs. Profiles with network `none` get the
label `forge.dev/network: none`, which a deny-all-egress NetworkPolicy (created once per
namespace) selects. Everything Forge creates carries `app.kubernetes.io/managed-by: forge`
plus the configured labels; `sweep_orphans` deletes what belongs to agents that no longer exist.

The official client is synchronous: every call runs in a thread of the runtime's own pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException
from kubernetes.utils import parse_quantity

from forge.config import ConfigError, KubernetesSettings, Settings
from forge.core.errors import ProvisioningFailed
from forge.sandbox.base import ResourceLimits, Sandbox, SandboxSpec, SandboxState

log = logging.getLogger(__name__)

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "forge"
AGENT_LABEL = "forge.dev/agent"
OWNER_LABEL = "forge.dev/owner"
PROFILE_LABEL = "forge.dev/profile"
NETWORK_LABEL = "forge.dev/network"
# The exact agent id (a label value may have had to be shortened or cleaned).
AGENT_ANNOTATION = "forge.dev/agent-id"
DENY_EGRESS_POLICY = "forge-sandbox-deny-egress"

RUNNER_UID = 1000
RUNNER_GID = 1000
WORKSPACE_DIR = "/workspace"
TOKEN_DIR = "/run/forge"
TOKEN_KEY = "token"
STATE_DIR = "/var/lib/forge"
RUNNER_STATE_DIR = f"{STATE_DIR}/runner"
CONTAINER_NAME = "runner"

# Seconds a deleted pod gets between SIGTERM and SIGKILL (the runner stops at once on SIGTERM).
DELETE_GRACE_SECONDS = 5
# Bound on every single API call (a watch is bounded by the start timeout instead).
REQUEST_TIMEOUT_SECONDS = 30.0
# Threads for API calls. A provisioning holds one for its whole watch, so they are the runtime's
# own rather than asyncio's default pool (which the rest of the platform needs).
API_THREADS = 64
# Objects younger than this are never swept: their agent may be too new to be in the live set.
SWEEP_MIN_AGE_SECONDS = 120.0

# What the host's environment says about the host alone: the image brings its own PATH, and
# HOME and TMPDIR point into the pod's own volumes.
_HOST_ONLY_ENV = frozenset({"PATH", "HOME", "SHELL", "TMPDIR", "USER", "LOGNAME"})
# Container waiting reasons that will not sort themselves out within a start timeout.
_FATAL_WAITING = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "ErrImageNeverPull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
        "CrashLoopBackOff",
    }
)
_LABEL_VALUE = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?$")

# What the runtime does with the API, as RBAC would name it: (API group, resource) -> verbs.
# deploy/kubernetes/rbac.yaml grants exactly this; the tests check both against each other and
# against the requests the runtime really makes.
REQUIRED_PERMISSIONS: dict[tuple[str, str], frozenset[str]] = {
    ("", "pods"): frozenset({"create", "get", "list", "watch", "delete"}),
    # No get or list: Forge never reads a Secret (credentials reach pods by reference).
    ("", "secrets"): frozenset({"create", "patch", "delete"}),
    ("networking.k8s.io", "networkpolicies"): frozenset({"create"}),
}


@dataclass(frozen=True)
class PodNames:
    """The names of one agent's objects."""

    pod: str
    secret: str

    @classmethod
    def for_agent(cls, agent_id: str) -> PodNames:
        """Fresh names: a leftover pod of the same agent that is still terminating cannot clash."""
        slug = re.sub(r"[^a-z0-9-]+", "-", agent_id.lower()).strip("-")[:40].strip("-")
        pod = f"forge-{slug or 'agent'}-{secrets.token_hex(3)}"
        return cls.of_pod(pod)

    @classmethod
    def of_pod(cls, pod: str) -> PodNames:
        return cls(pod=pod, secret=f"{pod}-token")


def label_value(value: str) -> str:
    """`value` if Kubernetes accepts it as a label value, else a cleaned, shortened form that
    stays distinct (a hash of the original at the end)."""
    if _LABEL_VALUE.match(value):
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:10]
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", value)[:50].strip("-_.")
    return f"{cleaned}-{digest}" if cleaned else digest


# ---- the objects ---------------------------------------------------------------------------------


def object_labels(settings: KubernetesSettings, spec: SandboxSpec) -> dict[str, str]:
    """Labels of an agent's pod and Secret."""
    labels = dict(settings.labels)
    labels.update(
        {
            MANAGED_BY_LABEL: MANAGED_BY,
            AGENT_LABEL: label_value(spec.agent_id),
            OWNER_LABEL: label_value(spec.owner_id or "none"),
            PROFILE_LABEL: label_value(spec.profile or "none"),
        }
    )
    if spec.network == "none":
        labels[NETWORK_LABEL] = "none"
    return labels


def build_secret(
    settings: KubernetesSettings, spec: SandboxSpec, names: PodNames, token: str
) -> k8s.V1Secret:
    """The Secret holding the runner's token (key `token`)."""
    return k8s.V1Secret(
        api_version="v1",
        kind="Secret",
        metadata=k8s.V1ObjectMeta(
            name=names.secret,
            labels=object_labels(settings, spec),
            annotations={AGENT_ANNOTATION: spec.agent_id},
        ),
        type="Opaque",
        string_data={TOKEN_KEY: token},
    )


def build_pod(
    settings: KubernetesSettings, spec: SandboxSpec, names: PodNames, workspace_sub_path: str
) -> k8s.V1Pod:
    """The runner's pod. `workspace_sub_path` is the agent's directory in the workspace claim
    (unused without one)."""
    container = k8s.V1Container(
        name=CONTAINER_NAME,
        image=settings.image,
        image_pull_policy=settings.image_pull_policy,
        command=["python", "-m", "forge.runner"],
        args=[
            "--listen",
            f"tcp:0.0.0.0:{settings.runner_port}",
            "--workspace",
            WORKSPACE_DIR,
            "--agent-id",
            spec.agent_id,
            "--token-file",
            f"{TOKEN_DIR}/{TOKEN_KEY}",
            "--state-dir",
            RUNNER_STATE_DIR,
        ],
        working_dir=WORKSPACE_DIR,
        env=_container_env(settings, spec.env),
        ports=[k8s.V1ContainerPort(name="runner", container_port=settings.runner_port)],
        resources=_resources(settings, spec.limits),
        security_context=k8s.V1SecurityContext(
            run_as_non_root=True,
            run_as_user=RUNNER_UID,
            run_as_group=RUNNER_GID,
            allow_privilege_escalation=False,
            privileged=False,
            read_only_root_filesystem=True,
            capabilities=k8s.V1Capabilities(drop=["ALL"]),
            seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
        ),
        readiness_probe=k8s.V1Probe(
            tcp_socket=k8s.V1TCPSocketAction(port=settings.runner_port),
            period_seconds=1,
            timeout_seconds=1,
            failure_threshold=3,
        ),
        volume_mounts=[
            k8s.V1VolumeMount(
                name="workspace",
                mount_path=WORKSPACE_DIR,
                sub_path=workspace_sub_path if settings.workspace_claim else None,
            ),
            k8s.V1VolumeMount(name="token", mount_path=TOKEN_DIR, read_only=True),
            k8s.V1VolumeMount(name="state", mount_path=STATE_DIR),
            k8s.V1VolumeMount(name="tmp", mount_path="/tmp"),
        ],
    )
    if settings.workspace_claim:
        workspace = k8s.V1Volume(
            name="workspace",
            persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
                claim_name=settings.workspace_claim
            ),
        )
    else:
        workspace = k8s.V1Volume(name="workspace", empty_dir=k8s.V1EmptyDirVolumeSource())
    return k8s.V1Pod(
        api_version="v1",
        kind="Pod",
        metadata=k8s.V1ObjectMeta(
            name=names.pod,
            labels=object_labels(settings, spec),
            annotations={AGENT_ANNOTATION: spec.agent_id},
        ),
        spec=k8s.V1PodSpec(
            containers=[container],
            # A runner that ends is gone, as in every other runtime: the platform notices.
            restart_policy="Never",
            automount_service_account_token=False,
            service_account_name=settings.service_account or None,
            enable_service_links=False,
            termination_grace_period_seconds=DELETE_GRACE_SECONDS,
            security_context=k8s.V1PodSecurityContext(
                run_as_non_root=True,
                run_as_user=RUNNER_UID,
                run_as_group=RUNNER_GID,
                fs_group=RUNNER_GID,
                seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
            ),
            volumes=[
                workspace,
                k8s.V1Volume(
                    name="token",
                    secret=k8s.V1SecretVolumeSource(
                        secret_name=names.secret,
                        items=[k8s.V1KeyToPath(key=TOKEN_KEY, path=TOKEN_KEY)],
                        default_mode=0o440,
                    ),
                ),
                k8s.V1Volume(name="state", empty_dir=k8s.V1EmptyDirVolumeSource()),
                k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource()),
            ],
        ),
    )


def _container_env(settings: KubernetesSettings, env: Mapping[str, str]) -> list[k8s.V1EnvVar]:
    plain = [
        k8s.V1EnvVar(name=name, value=value)
        for name, value in sorted(env.items())
        if name not in _HOST_ONLY_ENV and name not in settings.secret_env
    ]
    plain += [
        k8s.V1EnvVar(name="HOME", value=RUNNER_STATE_DIR),
        k8s.V1EnvVar(name="TMPDIR", value="/tmp"),
    ]
    by_reference = []
    for name, reference in sorted(settings.secret_env.items()):
        secret_name, _, key = reference.partition("/")
        if not secret_name or not key:
            raise ProvisioningFailed(
                f"[sandbox.kubernetes] secret_env {name} = {reference!r}: expected 'secret/key'"
            )
        source = k8s.V1EnvVarSource(
            secret_key_ref=k8s.V1SecretKeySelector(name=secret_name, key=key)
        )
        by_reference.append(k8s.V1EnvVar(name=name, value_from=source))
    return plain + by_reference


def _resources(settings: KubernetesSettings, limits: ResourceLimits) -> k8s.V1ResourceRequirements:
    bounds: dict[str, str] = {}
    if limits.cpus > 0:
        bounds["cpu"] = f"{math.ceil(limits.cpus * 1000)}m"
    if limits.memory_bytes > 0:
        bounds["memory"] = f"{max(1, limits.memory_bytes // (1024 * 1024))}Mi"
    requests = {"cpu": settings.cpu_request, "memory": settings.memory_request}
    for name, bound in bounds.items():
        # A request above its limit is refused by the API server: the limit is also the request.
        if parse_quantity(requests[name]) > parse_quantity(bound):  # type: ignore[no-untyped-call]
            requests[name] = bound
    return k8s.V1ResourceRequirements(requests=requests, limits=bounds or None)


def deny_egress_policy(settings: KubernetesSettings) -> k8s.V1NetworkPolicy:
    """Nothing leaves a pod labelled `forge.dev/network: none` (incoming connections, the
    platform's to the runner, are not affected)."""
    return k8s.V1NetworkPolicy(
        api_version="networking.k8s.io/v1",
        kind="NetworkPolicy",
        metadata=k8s.V1ObjectMeta(
            name=DENY_EGRESS_POLICY,
            labels={**settings.labels, MANAGED_BY_LABEL: MANAGED_BY},
        ),
        spec=k8s.V1NetworkPolicySpec(
            pod_selector=k8s.V1LabelSelector(
                match_labels={MANAGED_BY_LABEL: MANAGED_BY, NETWORK_LABEL: "none"}
            ),
            policy_types=["Egress"],
            egress=[],
        ),
    )


def owner_patch(pod: k8s.V1Pod) -> k8s.V1Secret:
    """A merge patch making the Secret owned by `pod`, so the garbage collector takes it along."""
    return k8s.V1Secret(
        metadata=k8s.V1ObjectMeta(
            owner_references=[
                k8s.V1OwnerReference(
                    api_version="v1",
                    kind="Pod",
                    name=_meta(pod).name,
                    uid=_meta(pod).uid,
                    block_owner_deletion=False,
                )
            ]
        )
    )


# ---- reading pods --------------------------------------------------------------------------------

Verdict = Literal["ready", "failed", "waiting"]


def pod_verdict(pod: k8s.V1Pod) -> tuple[Verdict, str]:
    """Whether a starting pod is ready, has failed (and why), or is still on its way (and where)."""
    status = pod.status or k8s.V1PodStatus()
    phase = status.phase or "Pending"
    containers = status.container_statuses or []
    if phase in ("Failed", "Succeeded"):
        for container in containers:
            ended = container.state.terminated if container.state else None
            if ended is not None:
                detail = f": {ended.message}" if ended.message else ""
                return "failed", f"runner exited ({ended.reason}, code {ended.exit_code}){detail}"
        return "failed", f"pod {phase.lower()}: {status.reason or ''} {status.message or ''}"
    if _meta(pod).deletion_timestamp is not None:
        return "failed", "the pod is being deleted"
    for container in containers:
        waiting = container.state.waiting if container.state else None
        if waiting is not None and waiting.reason in _FATAL_WAITING:
            return "failed", f"{waiting.reason}: {waiting.message or 'no detail'}"
    conditions = {c.type: c for c in status.conditions or []}
    ready = conditions.get("Ready")
    if phase == "Running" and ready is not None and ready.status == "True" and status.pod_ip:
        return "ready", ""
    scheduled = conditions.get("PodScheduled")
    if scheduled is not None and scheduled.status == "False":
        return "waiting", f"{scheduled.reason or 'Unschedulable'}: {scheduled.message or ''}"
    for container in containers:
        waiting = container.state.waiting if container.state else None
        if waiting is not None and waiting.reason:
            return "waiting", f"container waiting: {waiting.reason}"
    return "waiting", f"phase {phase}, not ready"


def _meta(obj: Any) -> k8s.V1ObjectMeta:
    meta: k8s.V1ObjectMeta | None = obj.metadata
    return meta if meta is not None else k8s.V1ObjectMeta()


def _age_seconds(meta: k8s.V1ObjectMeta) -> float:
    created = meta.creation_timestamp
    if created is None:
        return math.inf
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    return (datetime.now(UTC) - created).total_seconds()


class _PodFailed(Exception):
    pass


# ---- the runtime ---------------------------------------------------------------------------------


def api_client(settings: KubernetesSettings) -> k8s.ApiClient:
    """A client from `kubeconfig`, else the in-cluster configuration, else ~/.kube/config."""
    try:
        if settings.kubeconfig:
            path = Path(settings.kubeconfig).expanduser()
            return _new_client(str(path))
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            configuration = k8s.Configuration()
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            return k8s.ApiClient(configuration)
        return _new_client(None)
    except (k8s_config.ConfigException, OSError) as exc:
        if settings.kubeconfig:
            where = f"[sandbox.kubernetes] kubeconfig {settings.kubeconfig}"
        else:
            where = "no kubeconfig set, not in a pod, and ~/.kube/config"
        raise ConfigError(
            f"[sandbox] runtime = kubernetes: no usable cluster configuration ({where}): {exc}"
        ) from exc


def _new_client(config_file: str | None) -> k8s.ApiClient:
    created: k8s.ApiClient = k8s_config.new_client_from_config(config_file=config_file)  # type: ignore[no-untyped-call]
    return created


class KubernetesRuntime:
    """One pod per agent in `[sandbox.kubernetes] namespace`."""

    name = "kubernetes"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings.sandbox.kubernetes
        self.namespace = self.settings.namespace
        self.start_timeout = settings.sandbox.start_timeout_seconds
        self.worktree_base = settings.worktree_base
        self.api = api_client(self.settings)
        self.core = k8s.CoreV1Api(self.api)
        self.networking = k8s.NetworkingV1Api(self.api)
        self._policy_ready = False
        self._threads = ThreadPoolExecutor(API_THREADS, thread_name_prefix="forge-kubernetes")

    # ---- Runtime ---------------------------------------------------------------------------------

    async def provision(self, spec: SandboxSpec) -> Sandbox:
        names = PodNames.for_agent(spec.agent_id)
        token = secrets.token_urlsafe(32)
        pod = build_pod(self.settings, spec, names, self._workspace_sub_path(spec.workspace))
        try:
            # A provisioning cut short (platform restart) may have left this agent's pod behind.
            await self._delete_agent_objects(spec.agent_id)
            if spec.network == "none":
                await self._ensure_deny_egress()
            await self._call(
                self.core.create_namespaced_secret,
                self.namespace,
                build_secret(self.settings, spec, names, token),
            )
            created = await self._call(self.core.create_namespaced_pod, self.namespace, pod)
            await self._call(
                self.core.patch_namespaced_secret,
                names.secret,
                self.namespace,
                owner_patch(created),
                _content_type="application/merge-patch+json",
            )
            ready = await self._wait_ready(names.pod)
            pod_ip = ready.status.pod_ip if ready.status else None
        except BaseException as exc:
            await asyncio.shield(self._delete_quietly(names))
            if isinstance(exc, _PodFailed):
                raise ProvisioningFailed(f"pod {names.pod}: {exc}") from None
            if isinstance(exc, ApiException):
                raise ProvisioningFailed(
                    f"pod {names.pod}: the Kubernetes API answered {_api_error(exc)}"
                ) from exc
            if isinstance(exc, urllib3.exceptions.HTTPError):
                raise ProvisioningFailed(f"cannot reach the Kubernetes API: {exc}") from exc
            raise
        return Sandbox(
            address=f"tcp:{pod_ip}:{self.settings.runner_port}",
            token=token,
            handle={
                "runtime": self.name,
                "namespace": self.namespace,
                "pod": names.pod,
                "secret": names.secret,
                "uid": _meta(ready).uid,
            },
        )

    async def status(self, sandbox: Sandbox) -> SandboxState:
        name = sandbox.handle.get("pod")
        if not name:
            return "missing"
        namespace = sandbox.handle.get("namespace", self.namespace)
        try:
            pod = await self._call(self.core.read_namespaced_pod, name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return "missing"
            log.warning("cannot read pod %s: %s", name, _api_error(exc))
            return "running"  # not known to be gone: the platform's unreachable timeout decides
        except urllib3.exceptions.HTTPError as exc:
            log.warning("cannot reach the Kubernetes API to read pod %s: %s", name, exc)
            return "running"
        if sandbox.handle.get("uid") and pod.metadata.uid != sandbox.handle["uid"]:
            return "missing"  # another pod by the same name
        if pod.metadata.deletion_timestamp is not None:
            return "exited"
        phase = (pod.status.phase if pod.status else None) or "Pending"
        if phase == "Pending":
            return "starting"
        if phase in ("Succeeded", "Failed"):
            return "exited"
        return "running"  # Running, or Unknown (node unreachable: it may come back)

    async def destroy(self, sandbox: Sandbox) -> None:
        name = sandbox.handle.get("pod")
        secret = sandbox.handle.get("secret")
        if name or secret:
            await self._delete(
                name,
                secret,
                grace_seconds=DELETE_GRACE_SECONDS,
                namespace=sandbox.handle.get("namespace", self.namespace),
            )

    # ---- garbage collection ----------------------------------------------------------------------

    async def sweep_orphans(
        self, live_agent_ids: set[str], *, min_age_seconds: float = SWEEP_MIN_AGE_SECONDS
    ) -> list[str]:
        """Delete the pods of this installation (managed-by forge and the configured labels)
        whose agent is not in `live_agent_ids`, with their token Secrets; the pods' names.

        Pods younger than `min_age_seconds` are left: their agent may have been created after
        `live_agent_ids` was read. Secrets are found by name from their pod (and are owned by
        it besides), so Forge needs no right to list or read Secrets.
        """
        pods = await self._call(
            self.core.list_namespaced_pod, self.namespace, label_selector=self._selector()
        )
        deleted = []
        for item in pods.items:
            meta = _meta(item)
            agent = (meta.annotations or {}).get(AGENT_ANNOTATION) or (meta.labels or {}).get(
                AGENT_LABEL
            )
            if not meta.name or not agent or agent in live_agent_ids:
                continue
            if _age_seconds(meta) < min_age_seconds:
                continue
            log.info("deleting pod %s: its agent %s no longer exists", meta.name, agent)
            names = PodNames.of_pod(meta.name)
            await self._delete(names.pod, names.secret, grace_seconds=DELETE_GRACE_SECONDS)
            deleted.append(names.pod)
        return deleted

    # ---- helpers ---------------------------------------------------------------------------------

    async def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("_request_timeout", REQUEST_TIMEOUT_SECONDS)
        return await self._in_thread(functools.partial(method, *args, **kwargs))

    async def _in_thread(self, call: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._threads, call)

    def _selector(self, **extra: str) -> str:
        labels = {**self.settings.labels, MANAGED_BY_LABEL: MANAGED_BY, **extra}
        return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))

    def _workspace_sub_path(self, workspace: Path) -> str:
        if not self.settings.workspace_claim:
            return ""
        try:
            relative = workspace.resolve().relative_to(self.worktree_base.resolve())
        except ValueError:
            raise ProvisioningFailed(
                f"workspace {workspace} is not under the worktree base {self.worktree_base}, "
                f"so it is not on the claim {self.settings.workspace_claim}"
            ) from None
        return str(PurePosixPath(*relative.parts))

    async def _ensure_deny_egress(self) -> None:
        if self._policy_ready:
            return
        try:
            await self._call(
                self.networking.create_namespaced_network_policy,
                self.namespace,
                deny_egress_policy(self.settings),
            )
        except ApiException as exc:
            if exc.status != 409:  # already there
                raise
        self._policy_ready = True

    async def _wait_ready(self, name: str) -> k8s.V1Pod:
        watch = k8s_watch.Watch()  # type: ignore[no-untyped-call]
        stop = threading.Event()
        try:
            ready: k8s.V1Pod = await self._in_thread(
                functools.partial(self._watch_until_ready, name, watch, stop)
            )
            return ready
        finally:
            # Ends the watch thread early when we are cancelled.
            stop.set()
            watch.stop()  # type: ignore[no-untyped-call]

    def _watch_until_ready(
        self, name: str, watch: k8s_watch.Watch, stop: threading.Event
    ) -> k8s.V1Pod:
        """In a worker thread: follow the pod until it is ready (returned) or fails."""
        deadline = time.monotonic() + self.start_timeout
        where = "not scheduled yet"
        resource_version = None
        while not stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            options: dict[str, Any] = {
                "field_selector": f"metadata.name={name}",
                "timeout_seconds": max(1, math.ceil(remaining)),
                "_request_timeout": remaining + 10,
            }
            if resource_version:
                options["resource_version"] = resource_version
            events = watch.stream(  # type: ignore[no-untyped-call]
                self.core.list_namespaced_pod, self.namespace, **options
            )
            for event in events:
                pod: k8s.V1Pod = event["object"]
                resource_version = _meta(pod).resource_version
                if event["type"] == "DELETED":
                    raise _PodFailed("the pod was deleted while starting")
                verdict, detail = pod_verdict(pod)
                if verdict == "ready":
                    return pod
                if verdict == "failed":
                    raise _PodFailed(detail)
                where = detail
                if stop.is_set() or time.monotonic() >= deadline:
                    break
        raise _PodFailed(f"not ready after {self.start_timeout:g} s ({where})")

    async def _delete(
        self,
        pod: str | None,
        secret: str | None,
        *,
        grace_seconds: int,
        namespace: str | None = None,
    ) -> None:
        """Delete a pod and a Secret by name; already gone is fine."""
        namespace = namespace or self.namespace
        options = k8s.V1DeleteOptions(
            grace_period_seconds=grace_seconds, propagation_policy="Background"
        )
        calls: list[tuple[Callable[..., object], str]] = []
        if pod:
            calls.append((self.core.delete_namespaced_pod, pod))
        if secret:
            calls.append((self.core.delete_namespaced_secret, secret))
        for method, name in calls:
            try:
                await self._call(method, name, namespace, body=options)
            except ApiException as exc:
                if exc.status != 404:
                    raise

    async def _delete_quietly(self, names: PodNames) -> None:
        """Clean up after a failed start; a failure here is logged, the sweeper has the rest."""
        try:
            await self._delete(names.pod, names.secret, grace_seconds=0)
        except Exception:
            log.exception("could not delete pod %s after a failed start", names.pod)

    async def _delete_agent_objects(self, agent_id: str) -> None:
        selector = self._selector(**{AGENT_LABEL: label_value(agent_id)})
        pods = await self._call(
            self.core.list_namespaced_pod, self.namespace, label_selector=selector
        )
        for item in pods.items:
            names = PodNames.of_pod(str(_meta(item).name))
            await self._delete(names.pod, names.secret, grace_seconds=0)

    async def close(self) -> None:
        """Release the client's connections and threads."""
        with contextlib.suppress(Exception):
            await self._in_thread(self.api.close)
        self._threads.shutdown(wait=False)


def _api_error(exc: ApiException) -> str:
    """The message of a Kubernetes `Status` body, else the HTTP reason."""
    with contextlib.suppress(ValueError, TypeError):
        body = json.loads(exc.body or "")
        if isinstance(body, dict) and body.get("message"):
            return f"{exc.status} {body.get('reason', '')}: {body['message']}"
    return f"{exc.status} {exc.reason}"
