"""A small Kubernetes API server and kubelet for tests, on 127.0.0.1.

`FakeKube` speaks the REST wire format for what the `kubernetes` runtime uses: create, get,
list (label and field selectors), watch (chunked `{"type", "object"}` lines), patch (JSON merge
patch) and delete of pods and Secrets, and create/get/list of NetworkPolicies, with real
metadata (uid, resourceVersion, creationTimestamp) and `Status` error bodies. Deleting a pod
collects the Secrets it owns, as the garbage collector would. Every request is recorded
(method, path, query, JSON body) so tests can assert on exactly what the client sent.

`FakeKubelet` makes pods run: for each new pod it builds the pod's volumes as directories
(emptyDir, Secret files, a PersistentVolumeClaim mapped to a host directory), starts the
container's command as a local subprocess (`python` is this interpreter) with paths under the
mounts rewritten to those directories, on a loopback address of its own (127.0.10.N, the "pod
IP"), and reports Running + Ready once the port accepts connections. Images in `bad_images` fail
with ErrImagePull. Deleting the pod kills the process.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

_PATH = re.compile(
    r"^/(?:api/v1|apis/(?P<group>[^/]+)/v1)/namespaces/(?P<ns>[^/]+)/(?P<resource>[a-z]+)"
    r"(?:/(?P<name>[^/]+))?$"
)
_KINDS = {"pods": "Pod", "secrets": "Secret", "networkpolicies": "NetworkPolicy"}
_GROUPS = {"pods": "", "secrets": "", "networkpolicies": "networking.k8s.io"}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class Recorded:
    """One request the server received."""

    method: str
    path: str
    query: dict[str, str]
    body: Any

    @property
    def permission(self) -> tuple[str, str, str]:
        """(API group, resource, verb) as RBAC names this request."""
        match = _PATH.match(self.path)
        assert match, self.path
        resource, name = match["resource"], match["name"]
        if self.method == "GET":
            verb = "get" if name else ("watch" if self.query.get("watch") == "true" else "list")
        else:
            collection_verbs = {"POST": "create", "DELETE": "deletecollection"}
            item_verbs = {"DELETE": "delete", "PATCH": "patch", "PUT": "update"}
            verb = (item_verbs if name else collection_verbs)[self.method]
        return match["group"] or "", resource, verb


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure" if code >= 400 else "Success",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


def _matches_labels(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def _matches_fields(obj: dict[str, Any], selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        key, value = term.replace("==", "=").split("=", 1)
        current: Any = obj
        for part in key.split("."):
            current = current.get(part) if isinstance(current, dict) else None
        if str(current) != value:
            return False
    return True


class FakeKube:
    """The API server. `start()` it, point a kubeconfig at it (`write_kubeconfig`), `stop()` it."""

    def __init__(self, kubelet: FakeKubelet | None = None, token: str = "fake-token") -> None:
        self.token = token
        self.kubelet = kubelet
        self.requests: list[Recorded] = []
        # (resource, namespace, name) -> object
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        # (resourceVersion, resource, namespace, type, object), for watches
        self.history: list[tuple[int, str, str, str, dict[str, Any]]] = []
        self.cond = threading.Condition()
        self._version = itertools.count(100)
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self) -> FakeKube:
        fake = self

        class Handler(_Handler):
            api = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        if self.kubelet is not None:
            self.kubelet.api = self
        return self

    def stop(self) -> None:
        self._stopping.set()
        with self.cond:
            self.cond.notify_all()
        if self.kubelet is not None:
            self.kubelet.stop()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                    "users": [{"name": "fake", "user": {"token": self.token}}],
                    "contexts": [
                        {
                            "name": "fake",
                            "context": {"cluster": "fake", "user": "fake", "namespace": namespace},
                        }
                    ],
                    "current-context": "fake",
                }
            )
        )
        return path

    # ---- state, for tests and the kubelet --------------------------------------------------------

    def get(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self.cond:
            obj = self.objects.get((resource, namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def names(self, resource: str, namespace: str) -> list[str]:
        with self.cond:
            return sorted(n for r, ns, n in self.objects if r == resource and ns == namespace)

    def bodies(self, method: str, resource: str) -> list[Any]:
        """The JSON bodies of every `method` request on `resource`, in order."""
        found = []
        for request in list(self.requests):
            match = _PATH.match(request.path)
            if request.method == method and match and match["resource"] == resource:
                found.append(request.body)
        return found

    def create(self, resource: str, namespace: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Store a new object (as a POST would); raises KeyError if the name is taken."""
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        key = (resource, namespace, meta["name"])
        with self.cond:
            if key in self.objects:
                raise KeyError(meta["name"])
            meta.update(
                namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1
            )
            obj.setdefault("apiVersion", "networking.k8s.io/v1" if _GROUPS[resource] else "v1")
            obj.setdefault("kind", _KINDS[resource])
            if resource == "secrets":
                data = obj.setdefault("data", {})
                for k, v in (obj.pop("stringData", None) or {}).items():
                    data[k] = base64.b64encode(v.encode()).decode()
            if resource == "pods":
                obj["status"] = {"phase": "Pending", "qosClass": "Burstable"}
            self._store("ADDED", resource, namespace, obj)
        if resource == "pods" and self.kubelet is not None:
            self.kubelet.pod_created(namespace, copy.deepcopy(obj))
        return copy.deepcopy(obj)

    def update(
        self, resource: str, namespace: str, name: str, patch: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Merge `patch` into the object (MODIFIED); None if it does not exist."""
        with self.cond:
            current = self.objects.get((resource, namespace, name))
            if current is None:
                return None
            merged = _merge_patch(current, patch)
            self._store("MODIFIED", resource, namespace, merged)
            return copy.deepcopy(merged)

    def delete(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        """Remove the object (DELETED), and the Secrets a deleted pod owns."""
        with self.cond:
            obj = self.objects.pop((resource, namespace, name), None)
            if obj is None:
                return None
            obj = copy.deepcopy(obj)
            obj["metadata"]["deletionTimestamp"] = _now()
            self._store("DELETED", resource, namespace, obj, keep=False)
            owned = [
                key
                for key, other in self.objects.items()
                if key[1] == namespace
                and any(
                    ref.get("uid") == obj["metadata"]["uid"]
                    for ref in other["metadata"].get("ownerReferences") or []
                )
            ]
        for other_resource, other_ns, other_name in owned:
            self.delete(other_resource, other_ns, other_name)
        if resource == "pods" and self.kubelet is not None:
            self.kubelet.pod_deleted(name)
        return obj

    def _store(
        self, kind: str, resource: str, namespace: str, obj: dict[str, Any], keep: bool = True
    ) -> None:
        version = next(self._version)
        obj["metadata"]["resourceVersion"] = str(version)
        if keep:
            self.objects[(resource, namespace, obj["metadata"]["name"])] = obj
        self.history.append((version, resource, namespace, kind, copy.deepcopy(obj)))
        self.cond.notify_all()

    def _list(
        self, resource: str, namespace: str, labels: str, fields: str
    ) -> list[dict[str, Any]]:
        return [
            copy.deepcopy(obj)
            for (r, ns, _), obj in sorted(self.objects.items())
            if r == resource
            and ns == namespace
            and _matches_labels(obj["metadata"].get("labels") or {}, labels)
            and _matches_fields(obj, fields)
        ]

    def watch_events(
        self, resource: str, namespace: str, query: dict[str, str]
    ) -> Iterator[dict[str, Any]]:
        """Watch events as the server sends them, until `timeoutSeconds` or the server stops."""
        labels, fields = query.get("labelSelector", ""), query.get("fieldSelector", "")
        deadline = time.monotonic() + float(query.get("timeoutSeconds", "60"))
        since = int(query.get("resourceVersion") or 0)
        with self.cond:
            if since:
                position = next(
                    (i for i, entry in enumerate(self.history) if entry[0] > since),
                    len(self.history),
                )
                pending = []
            else:
                position = len(self.history)
                pending = [
                    {"type": "ADDED", "object": obj}
                    for obj in self._list(resource, namespace, labels, fields)
                ]
        yield from pending
        while not self._stopping.is_set():
            with self.cond:
                while position >= len(self.history) and not self._stopping.is_set():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return
                    self.cond.wait(min(remaining, 0.5))
                new, position = self.history[position:], len(self.history)
            for _version, r, ns, kind, obj in new:
                if (
                    r == resource
                    and ns == namespace
                    and _matches_labels(obj["metadata"].get("labels") or {}, labels)
                    and _matches_fields(obj, fields)
                ):
                    yield {"type": kind, "object": obj}


class _Handler(BaseHTTPRequestHandler):
    api: FakeKube
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def _handle(self, method: str) -> None:
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        self.api.requests.append(Recorded(method, parts.path, query, body))
        if self.headers.get("Authorization") != f"Bearer {self.api.token}":
            self._send(401, _status(401, "Unauthorized", "Unauthorized"))
            return
        match = _PATH.match(parts.path)
        if match is None or match["resource"] not in _KINDS:
            self._send(404, _status(404, "NotFound", f"no route for {parts.path}"))
            return
        resource, namespace, name = match["resource"], match["ns"], match["name"]
        kind = _KINDS[resource]
        if method == "GET" and name is None and query.get("watch") in ("true", "1"):
            self._watch(resource, namespace, query)
            return
        if method == "GET" and name is None:
            with self.api.cond:
                items = self.api._list(
                    resource,
                    namespace,
                    query.get("labelSelector", ""),
                    query.get("fieldSelector", ""),
                )
                version = str(self.api.history[-1][0]) if self.api.history else "1"
            group = _GROUPS[resource]
            self._send(
                200,
                {
                    "kind": f"{kind}List",
                    "apiVersion": f"{group}/v1" if group else "v1",
                    "metadata": {"resourceVersion": version},
                    "items": items,
                },
            )
            return
        if method == "POST" and name is None:
            try:
                self._send(201, self.api.create(resource, namespace, body))
            except KeyError:
                message = f'{resource} "{body["metadata"]["name"]}" already exists'
                self._send(409, _status(409, "AlreadyExists", message))
            return
        missing = _status(404, "NotFound", f'{resource} "{name}" not found')
        if method == "GET" and name:
            found = self.api.get(resource, namespace, name)
            self._send(200, found) if found else self._send(404, missing)
        elif method == "PATCH" and name:
            if "merge-patch" not in (self.headers.get("Content-Type") or ""):
                self._send(415, _status(415, "UnsupportedMediaType", "merge patch only"))
                return
            patched = self.api.update(resource, namespace, name, body)
            self._send(200, patched) if patched else self._send(404, missing)
        elif method == "DELETE" and name:
            deleted = self.api.delete(resource, namespace, name)
            if deleted is None:
                self._send(404, missing)
            elif resource == "pods":
                self._send(200, deleted)
            else:
                self._send(200, _status(200, "", "") | {"details": {"name": name}})
        else:
            self._send(405, _status(405, "MethodNotAllowed", f"{method} {parts.path}"))

    def _send(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _watch(self, resource: str, namespace: str, query: dict[str, str]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for event in self.api.watch_events(resource, namespace, query):
                line = json.dumps(event).encode() + b"\n"
                self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            pass
        self.close_connection = True


# ---- the kubelet ---------------------------------------------------------------------------------


@dataclass
class Container:
    """A pod's container as the fake kubelet started it."""

    pod: str
    ip: str
    args: list[str]
    env: dict[str, str]
    mounts: dict[str, Path]
    process: subprocess.Popen[bytes]
    log_path: Path


@dataclass
class FakeKubelet:
    """Runs pods as local processes under `root`. `claims` maps PersistentVolumeClaim names to
    host directories; pods with an image in `bad_images` never start (ErrImagePull)."""

    root: Path
    claims: dict[str, Path] = field(default_factory=dict)
    bad_images: set[str] = field(default_factory=lambda: {"bad-image"})
    start_timeout: float = 20.0
    api: FakeKube | None = None
    containers: dict[str, Container] = field(default_factory=dict)
    _ips: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _deleted: set[str] = field(default_factory=set)

    def pod_created(self, namespace: str, pod: dict[str, Any]) -> None:
        threading.Thread(target=self._run_pod, args=(namespace, pod), daemon=True).start()

    def pod_deleted(self, name: str) -> None:
        with self._lock:
            self._deleted.add(name)
            container = self.containers.pop(name, None)
        if container is not None:
            _kill(container.process)

    def stop(self) -> None:
        with self._lock:
            containers, self.containers = list(self.containers.values()), {}
        for container in containers:
            _kill(container.process)

    # ---- one pod ---------------------------------------------------------------------------------

    def _run_pod(self, namespace: str, pod: dict[str, Any]) -> None:
        assert self.api is not None
        name = pod["metadata"]["name"]
        spec = pod["spec"]
        container = spec["containers"][0]
        ip = f"127.0.10.{next(self._ips)}"
        self._set_status(namespace, name, _pending_status(container, "ContainerCreating", ""))
        if container["image"] in self.bad_images:
            message = f'rpc error: failed to pull image "{container["image"]}": not found'
            self._set_status(namespace, name, _pending_status(container, "ErrImagePull", message))
            return
        try:
            mounts = self._mount_volumes(namespace, name, spec, container)
            env = self._environment(namespace, container, mounts)
        except _NotYet as exc:
            self._set_status(namespace, name, _pending_status(container, exc.reason, str(exc)))
            return
        args = [_remap(a, mounts).replace("tcp:0.0.0.0:", f"tcp:{ip}:") for a in container["args"]]
        command = list(container["command"])
        if command[0].startswith("python"):
            command[0] = sys.executable
        log_path = self.root / name / "container.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                command + args,
                cwd=_remap(container.get("workingDir") or "/", mounts),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started = Container(name, ip, args, env, mounts, process, log_path)
        with self._lock:
            if name in self._deleted:
                _kill(process)
                return
            self.containers[name] = started
        port = container["readinessProbe"]["tcpSocket"]["port"]
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(OSError), socket.create_connection((ip, port), timeout=0.5):
                self._set_status(namespace, name, _running_status(container, ip, ready=True))
                break
            time.sleep(0.05)
        code = process.wait()
        with self._lock:
            gone = name in self._deleted
        if not gone:
            self._set_status(namespace, name, _ended_status(container, ip, code))

    def _set_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        assert self.api is not None
        with self._lock:
            if name in self._deleted:
                return
        # Replaces the whole status (a merge patch would keep stale keys).
        with self.api.cond:
            current = self.api.objects.get(("pods", namespace, name))
            if current is None:
                return
            updated = copy.deepcopy(current)
            updated["status"] = status
            self.api._store("MODIFIED", "pods", namespace, updated)

    def _mount_volumes(
        self, namespace: str, pod: str, spec: dict[str, Any], container: dict[str, Any]
    ) -> dict[str, Path]:
        assert self.api is not None
        volumes: dict[str, Path] = {}
        for volume in spec.get("volumes") or []:
            where = self.root / pod / "volumes" / volume["name"]
            if "emptyDir" in volume:
                where.mkdir(parents=True)
            elif "secret" in volume:
                secret_name = volume["secret"]["secretName"]
                secret = self.api.get("secrets", namespace, secret_name)
                if secret is None:
                    raise _NotYet("ContainerCreating", f'secret "{secret_name}" not found')
                where.mkdir(parents=True)
                items = volume["secret"].get("items") or [
                    {"key": k, "path": k} for k in secret.get("data", {})
                ]
                for item in items:
                    path = where / item["path"]
                    path.write_bytes(base64.b64decode(secret["data"][item["key"]]))
                    path.chmod(volume["secret"].get("defaultMode", 0o644))
            elif "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                if claim not in self.claims:
                    raise _NotYet("ContainerCreating", f'persistentvolumeclaim "{claim}" not found')
                where = self.claims[claim]
            volumes[volume["name"]] = where
        mounts = {}
        for mount in container.get("volumeMounts") or []:
            host = volumes[mount["name"]]
            if mount.get("subPath"):
                host = host / mount["subPath"]
                host.mkdir(parents=True, exist_ok=True)
            mounts[mount["mountPath"]] = host
        return mounts

    def _environment(
        self, namespace: str, container: dict[str, Any], mounts: dict[str, Path]
    ) -> dict[str, str]:
        assert self.api is not None
        env = {"PATH": os.environ.get("PATH", os.defpath)}
        for var in container.get("env") or []:
            if "value" in var:
                env[var["name"]] = _remap(var["value"], mounts)
                continue
            ref = var["valueFrom"]["secretKeyRef"]
            secret = self.api.get("secrets", namespace, ref["name"])
            if secret is None or ref["key"] not in secret.get("data", {}):
                raise _NotYet(
                    "CreateContainerConfigError", f'secret "{ref["name"]}" or its key not found'
                )
            env[var["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
        return env


class _NotYet(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _remap(value: str, mounts: dict[str, Path]) -> str:
    """`value` with a leading container path under a mount replaced by the host directory."""
    for mount_path in sorted(mounts, key=len, reverse=True):
        if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
            return str(mounts[mount_path]) + value[len(mount_path) :]
    return value


def _kill(process: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _condition(kind: str, status: bool, reason: str = "") -> dict[str, Any]:
    condition = {
        "type": kind,
        "status": "True" if status else "False",
        "lastTransitionTime": _now(),
    }
    if reason:
        condition["reason"] = reason
    return condition


def _container_status(
    container: dict[str, Any], state: dict[str, Any], ready: bool
) -> dict[str, Any]:
    return {
        "name": container["name"],
        "image": container["image"],
        "imageID": "",
        "ready": ready,
        "started": "running" in state,
        "restartCount": 0,
        "state": state,
    }


def _pending_status(container: dict[str, Any], reason: str, message: str) -> dict[str, Any]:
    waiting = {"reason": reason} | ({"message": message} if message else {})
    return {
        "phase": "Pending",
        "hostIP": "127.0.0.1",
        "startTime": _now(),
        "conditions": [
            _condition("PodScheduled", True),
            _condition("Initialized", True),
            _condition("ContainersReady", False, "ContainersNotReady"),
            _condition("Ready", False, "ContainersNotReady"),
        ],
        "containerStatuses": [_container_status(container, {"waiting": waiting}, ready=False)],
    }


def _running_status(container: dict[str, Any], ip: str, ready: bool) -> dict[str, Any]:
    return {
        "phase": "Running",
        "hostIP": "127.0.0.1",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "startTime": _now(),
        "conditions": [
            _condition("PodScheduled", True),
            _condition("Initialized", True),
            _condition("ContainersReady", ready),
            _condition("Ready", ready),
        ],
        "containerStatuses": [
            _container_status(container, {"running": {"startedAt": _now()}}, ready=ready)
        ],
    }


def _ended_status(container: dict[str, Any], ip: str, code: int) -> dict[str, Any]:
    terminated = {
        "exitCode": code,
        "reason": "Completed" if code == 0 else "Error",
        "startedAt": _now(),
        "finishedAt": _now(),
    }
    status = _running_status(container, ip, ready=False)
    status["phase"] = "Succeeded" if code == 0 else "Failed"
    status["containerStatuses"] = [
        _container_status(container, {"terminated": terminated}, ready=False)
    ]
    return status
