"""The `kubernetes` runtime against a fake API server (real HTTP, the official client) whose
fake kubelet runs the real runner as a local process: start, reach the runner with its token,
status, destroy, failures, the orphan sweeper, and a whole `forge serve` on top."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from forge.config import KubernetesSettings, SandboxSettings, Settings, WorktreeSettings
from forge.core.errors import ProvisioningFailed
from forge.runner import RunnerClient
from forge.sandbox.base import ResourceLimits, SandboxSpec
from forge.sandbox.kubernetes import (
    AGENT_LABEL,
    DENY_EGRESS_POLICY,
    REQUIRED_PERMISSIONS,
    KubernetesRuntime,
)
from tests.integration.conftest import ForgeServer, wait_for
from tests.support.fake_kube import FakeKube, FakeKubelet, free_port
from tests.support.sandboxes import assert_refuses_a_wrong_token, run_command

NAMESPACE = "forge-test"
AGENT = "ag_01jz8k2m3n4p5q6r7s8t9v0w1x"
CLAIM = "forge-worktrees"


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[FakeKube]:
    (tmp_path / "worktrees").mkdir()
    kubelet = FakeKubelet(root=tmp_path / "kubelet", claims={CLAIM: tmp_path / "worktrees"})
    fake = FakeKube(kubelet).start()
    yield fake
    fake.stop()


def runtime_for(
    tmp_path: Path, kube: FakeKube, start_timeout: float = 20, **options: Any
) -> KubernetesRuntime:
    kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
    settings = Settings(
        data_dir=tmp_path / "data",
        worktrees=WorktreeSettings(base_path=str(tmp_path / "worktrees")),
        sandbox=SandboxSettings(
            runtime="kubernetes",
            start_timeout_seconds=start_timeout,
            kubernetes=KubernetesSettings(
                kubeconfig=str(kubeconfig),
                namespace=NAMESPACE,
                runner_port=free_port(),
                **options,
            ),
        ),
    )
    return KubernetesRuntime(settings)


def agent_spec(tmp_path: Path, agent_id: str = AGENT, **fields: Any) -> SandboxSpec:
    workspace = tmp_path / "worktrees" / agent_id
    workspace.mkdir(parents=True, exist_ok=True)
    fields.setdefault("owner_id", "alice@example.com")
    fields.setdefault("profile", "default")
    return SandboxSpec(agent_id=agent_id, workspace=workspace, **fields)


def assert_within_rbac(kube: FakeKube) -> None:
    """Every request the runtime made is allowed by the permissions it declares (and so by the
    Role in deploy/kubernetes, which the manifest tests hold to the same list)."""
    for request in kube.requests:
        group, resource, verb = request.permission
        assert verb in REQUIRED_PERMISSIONS.get((group, resource), frozenset()), request


# ---- start, reach, stop --------------------------------------------------------------------------


async def test_pod_starts_serves_the_runner_and_is_destroyed(
    tmp_path: Path, kube: FakeKube
) -> None:
    runtime = runtime_for(tmp_path, kube)
    sandbox = await runtime.provision(agent_spec(tmp_path))
    pod_name = sandbox.handle["pod"]
    assert sandbox.handle == {
        "runtime": "kubernetes",
        "namespace": NAMESPACE,
        "pod": pod_name,
        "secret": f"{pod_name}-token",
        "uid": kube.get("pods", NAMESPACE, pod_name)["metadata"]["uid"],  # type: ignore[index]
    }
    container = kube.kubelet.containers[pod_name]  # type: ignore[union-attr]
    assert sandbox.address == f"tcp:{container.ip}:{runtime.settings.runner_port}"
    assert await runtime.status(sandbox) == "running"

    output, outcome = await run_command(sandbox, "cat", prompt="hello through the pod")
    assert outcome == "succeeded"
    assert "hello through the pod" in output

    # The token is the one in the Secret, and nothing else gets in.
    secret = kube.get("secrets", NAMESPACE, sandbox.handle["secret"])
    assert secret is not None
    assert base64.b64decode(secret["data"]["token"]).decode() == sandbox.token
    await assert_refuses_a_wrong_token(sandbox)

    await runtime.destroy(sandbox)
    assert await runtime.status(sandbox) == "missing"
    assert kube.names("pods", NAMESPACE) == []
    assert kube.names("secrets", NAMESPACE) == []
    assert container.process.poll() is not None
    await runtime.destroy(sandbox)  # idempotent
    assert_within_rbac(kube)
    await runtime.close()


async def test_pod_spec_carries_every_security_setting(tmp_path: Path, kube: FakeKube) -> None:
    runtime = runtime_for(
        tmp_path,
        kube,
        secret_env={"ANTHROPIC_API_KEY": "model-keys/anthropic"},
        labels={"team": "agents"},
        cpu_request="100m",
        memory_request="128Mi",
    )
    kube.create(
        "secrets",
        NAMESPACE,
        {"metadata": {"name": "model-keys"}, "stringData": {"anthropic": "sk-very-secret"}},
    )
    spec = agent_spec(
        tmp_path,
        env={"LANG": "C.UTF-8", "PATH": "/host/only/bin", "HOME": "/home/alice"},
        limits=ResourceLimits(cpus=1.5, memory_bytes=2048 * 1024 * 1024),
    )
    sandbox = await runtime.provision(spec)
    [pod] = kube.bodies("POST", "pods")
    pod_spec = pod["spec"]
    [container] = pod_spec["containers"]

    assert pod_spec["automountServiceAccountToken"] is False
    assert pod_spec["restartPolicy"] == "Never"
    assert pod_spec["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "fsGroup": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert container["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert container["resources"] == {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"cpu": "1500m", "memory": "2048Mi"},
    }
    port = runtime.settings.runner_port
    assert container["readinessProbe"]["tcpSocket"] == {"port": port}
    assert container["command"] == ["python", "-m", "forge.runner"]
    assert container["args"][:2] == ["--listen", f"tcp:0.0.0.0:{port}"]
    assert container["args"][container["args"].index("--token-file") + 1] == "/run/forge/token"

    labels = pod["metadata"]["labels"]
    assert labels == {
        "app.kubernetes.io/managed-by": "forge",
        AGENT_LABEL: AGENT,
        "forge.dev/owner": labels["forge.dev/owner"],
        "forge.dev/profile": "default",
        "team": "agents",
    }
    # "alice@example.com" is no label value: cleaned, with a hash that keeps it distinct.
    assert labels["forge.dev/owner"].startswith("alice-example.com-")

    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    assert volumes["workspace"] == {"name": "workspace", "emptyDir": {}}
    assert volumes["tmp"] == {"name": "tmp", "emptyDir": {}}
    assert volumes["state"] == {"name": "state", "emptyDir": {}}
    assert volumes["token"]["secret"]["secretName"] == sandbox.handle["secret"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert set(mounts) == {"/workspace", "/run/forge", "/var/lib/forge", "/tmp"}
    assert mounts["/run/forge"]["readOnly"] is True
    assert "subPath" not in mounts["/workspace"]

    # Credentials by reference only; the host's PATH and HOME stay on the host.
    env = {e["name"]: e for e in container["env"]}
    assert env["ANTHROPIC_API_KEY"] == {
        "name": "ANTHROPIC_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": "model-keys", "key": "anthropic"}},
    }
    assert env["LANG"] == {"name": "LANG", "value": "C.UTF-8"}
    assert env["HOME"]["value"] == "/var/lib/forge/runner"
    assert "PATH" not in env
    pod_json = json.dumps(pod)
    assert "sk-very-secret" not in pod_json
    assert sandbox.token not in pod_json
    # The kubelet resolved the reference.
    started = kube.kubelet.containers[sandbox.handle["pod"]]  # type: ignore[union-attr]
    assert started.env["ANTHROPIC_API_KEY"] == "sk-very-secret"

    # The token Secret: the token, labels, then owned by the pod.
    [secret] = kube.bodies("POST", "secrets")
    assert secret["stringData"] == {"token": sandbox.token}
    assert secret["metadata"]["labels"] == labels
    [patch] = kube.bodies("PATCH", "secrets")
    assert patch == {
        "metadata": {
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": sandbox.handle["pod"],
                    "uid": sandbox.handle["uid"],
                    "blockOwnerDeletion": False,
                }
            ]
        }
    }
    await runtime.destroy(sandbox)
    await runtime.close()


async def test_workspace_claim_is_mounted_with_the_agent_subpath(
    tmp_path: Path, kube: FakeKube
) -> None:
    runtime = runtime_for(tmp_path, kube, workspace_claim=CLAIM)
    spec = agent_spec(tmp_path)
    (spec.workspace / "hello.txt").write_text("from the shared worktree\n")
    sandbox = await runtime.provision(spec)
    [pod] = kube.bodies("POST", "pods")
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["workspace"] == {
        "name": "workspace",
        "persistentVolumeClaim": {"claimName": CLAIM},
    }
    [mount] = [
        m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["mountPath"] == "/workspace"
    ]
    assert mount["subPath"] == AGENT

    output, outcome = await run_command(sandbox, "cat hello.txt")
    assert outcome == "succeeded"
    assert "from the shared worktree" in output
    await runtime.destroy(sandbox)
    await runtime.close()


async def test_network_none_labels_the_pod_and_denies_egress(
    tmp_path: Path, kube: FakeKube
) -> None:
    runtime = runtime_for(tmp_path, kube)
    first = await runtime.provision(agent_spec(tmp_path, network="none"))
    second = await runtime.provision(agent_spec(tmp_path, "ag_second", network="none"))
    for sandbox in (first, second):
        pod = kube.get("pods", NAMESPACE, sandbox.handle["pod"])
        assert pod is not None
        assert pod["metadata"]["labels"]["forge.dev/network"] == "none"
    policy = kube.get("networkpolicies", NAMESPACE, DENY_EGRESS_POLICY)
    assert policy is not None
    assert policy["spec"] == {
        "podSelector": {
            "matchLabels": {"app.kubernetes.io/managed-by": "forge", "forge.dev/network": "none"}
        },
        "policyTypes": ["Egress"],
        "egress": [],
    }
    assert len(kube.bodies("POST", "networkpolicies")) == 1  # once per namespace
    for sandbox in (first, second):
        await runtime.destroy(sandbox)
    assert_within_rbac(kube)
    await runtime.close()


# ---- failures ------------------------------------------------------------------------------------


async def test_image_pull_error_fails_provisioning_and_leaves_nothing(
    tmp_path: Path, kube: FakeKube
) -> None:
    runtime = runtime_for(tmp_path, kube, image="bad-image")
    with pytest.raises(ProvisioningFailed, match="ErrImagePull"):
        await runtime.provision(agent_spec(tmp_path))
    assert kube.names("pods", NAMESPACE) == []
    assert kube.names("secrets", NAMESPACE) == []
    await runtime.close()


async def test_a_pod_that_never_gets_ready_times_out(tmp_path: Path, kube: FakeKube) -> None:
    # The fake kubelet knows no such claim: the pod stays in ContainerCreating.
    runtime = runtime_for(tmp_path, kube, start_timeout=1.5, workspace_claim="no-such-claim")
    with pytest.raises(ProvisioningFailed, match=r"not ready after 1.5 s \(container waiting"):
        await runtime.provision(agent_spec(tmp_path))
    assert kube.names("pods", NAMESPACE) == []
    assert kube.names("secrets", NAMESPACE) == []
    await runtime.close()


async def test_status_is_missing_after_the_pod_is_deleted_elsewhere(
    tmp_path: Path, kube: FakeKube
) -> None:
    runtime = runtime_for(tmp_path, kube)
    sandbox = await runtime.provision(agent_spec(tmp_path))
    name = sandbox.handle["pod"]
    kube.delete("pods", NAMESPACE, name)
    assert await runtime.status(sandbox) == "missing"
    # The Secret went with its owner.
    assert kube.names("secrets", NAMESPACE) == []

    # A new pod by the same name is not this sandbox.
    kube.create(
        "pods",
        NAMESPACE,
        {
            "metadata": {"name": name},
            "spec": {"containers": [{"name": "runner", "image": "bad-image"}]},
        },
    )
    assert await runtime.status(sandbox) == "missing"
    await runtime.destroy(sandbox)
    await runtime.close()


async def test_status_is_exited_when_the_runner_ends(tmp_path: Path, kube: FakeKube) -> None:
    runtime = runtime_for(tmp_path, kube)
    sandbox = await runtime.provision(agent_spec(tmp_path))
    client = RunnerClient(sandbox.address, sandbox.token)
    stream = await client.connect()
    await stream.shutdown(graceful=False)
    for _ in range(200):
        if await runtime.status(sandbox) == "exited":
            break
        await asyncio.sleep(0.05)
    assert await runtime.status(sandbox) == "exited"
    await stream.close()
    await client.close()
    await runtime.destroy(sandbox)
    await runtime.close()


# ---- garbage collection --------------------------------------------------------------------------


async def test_sweeper_deletes_only_objects_of_agents_that_are_gone(
    tmp_path: Path, kube: FakeKube
) -> None:
    runtime = runtime_for(tmp_path, kube, labels={"forge.dev/installation": "test"})
    live = await runtime.provision(agent_spec(tmp_path, "ag_live"))
    gone = await runtime.provision(agent_spec(tmp_path, "ag_gone"))
    # Not ours: no managed-by label, and another installation's pod.
    stranger = {"name": "stranger", "labels": {AGENT_LABEL: "ag_gone"}}
    neighbour = {
        "name": "neighbour",
        "labels": {
            "app.kubernetes.io/managed-by": "forge",
            "forge.dev/installation": "other",
            AGENT_LABEL: "ag_gone",
        },
    }
    for meta in (stranger, neighbour):
        kube.create(
            "pods",
            NAMESPACE,
            {"metadata": meta, "spec": {"containers": [{"name": "c", "image": "bad-image"}]}},
        )

    # Too young to be judged.
    assert await runtime.sweep_orphans({"ag_live"}) == []

    deleted = await runtime.sweep_orphans({"ag_live"}, min_age_seconds=0)
    assert deleted == [gone.handle["pod"]]
    assert kube.names("pods", NAMESPACE) == sorted(["neighbour", "stranger", live.handle["pod"]])
    assert kube.names("secrets", NAMESPACE) == [live.handle["secret"]]
    assert await runtime.status(gone) == "missing"
    assert await runtime.status(live) == "running"
    assert_within_rbac(kube)
    await runtime.destroy(live)
    await runtime.close()


# ---- the whole platform --------------------------------------------------------------------------


def test_forge_serve_runs_a_message_in_a_pod(
    tmp_path: Path, kube: FakeKube, forge_server: Any
) -> None:
    root = tmp_path / "forge0"
    kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
    # The claim is where the platform keeps its worktrees, as on a shared volume.
    kube.kubelet.claims[CLAIM] = root / "data" / "worktrees"  # type: ignore[union-attr]
    server: ForgeServer = forge_server(
        extra_config=f"""
[sandbox]
runtime = "kubernetes"
start_timeout_seconds = 20

[sandbox.kubernetes]
kubeconfig = "{kubeconfig}"
namespace = "{NAMESPACE}"
runner_port = {free_port()}
workspace_claim = "{CLAIM}"
"""
    )
    agent = server.create_agent()
    pods = kube.names("pods", NAMESPACE)
    assert len(pods) == 1
    assert kube.get("pods", NAMESPACE, pods[0])["metadata"]["annotations"] == {  # type: ignore[index]
        "forge.dev/agent-id": agent["id"]
    }
    response = server.http.post(
        f"/api/v1/agents/{agent['id']}/messages", json={"content": "hello from a pod"}
    )
    assert response.status_code == 202, response.text
    events = server.wait_final(agent["id"], response.json()["request_id"])
    assert events[-1]["event_type"] == "agent.complete"
    assert events[-1]["outcome"] == "succeeded"
    assert "hello from a pod" in json.dumps(events)

    assert server.http.delete(f"/api/v1/agents/{agent['id']}").status_code == 204
    wait_for(lambda: kube.names("pods", NAMESPACE) == [], timeout=20)
    assert kube.names("secrets", NAMESPACE) == []
