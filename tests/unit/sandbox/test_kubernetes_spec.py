"""The `kubernetes` runtime's objects and judgements, without a cluster."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from kubernetes import client as k8s

from forge.config import ConfigError, KubernetesSettings, SandboxSettings, Settings
from forge.core.errors import ProvisioningFailed
from forge.sandbox.base import ResourceLimits, Sandbox, SandboxSpec
from forge.sandbox.kubernetes import (
    KubernetesRuntime,
    PodNames,
    api_client,
    build_pod,
    deny_egress_policy,
    label_value,
    pod_verdict,
)

LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?$")
DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
serialize = k8s.ApiClient().sanitize_for_serialization


def spec(**fields: object) -> SandboxSpec:
    return SandboxSpec(agent_id="ag_01jz8k2m3n4p5q6r7s8t9v0w1x", workspace=Path("/w"), **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value",
    ["alice", "ag_01jz8k2m3n4p5q6r7s8t9v0w1x", "alice@example.com", "team/a:b", "-x-", "a" * 100],
)
def test_label_values_are_valid_and_kept_when_possible(value: str) -> None:
    cleaned = label_value(value)
    assert LABEL_VALUE.match(cleaned)
    if LABEL_VALUE.match(value):
        assert cleaned == value


def test_cleaned_label_values_stay_distinct() -> None:
    assert label_value("a@b") != label_value("a/b")


def test_pod_names_are_dns_labels_and_fresh() -> None:
    first, second = PodNames.for_agent("ag_X" * 30), PodNames.for_agent("ag_X" * 30)
    assert DNS_LABEL.match(first.pod)
    assert first.pod != second.pod
    assert first.secret == f"{first.pod}-token"
    assert len(first.secret) <= 253


def test_pod_without_limits_has_requests_only() -> None:
    pod = build_pod(
        KubernetesSettings(),
        spec(limits=ResourceLimits(cpus=0, memory_bytes=0)),
        PodNames("p", "p-token"),
        "",
    )
    resources = serialize(pod)["spec"]["containers"][0]["resources"]
    assert resources == {"requests": {"cpu": "250m", "memory": "256Mi"}}


def test_workspace_claim_mounts_the_subpath() -> None:
    settings = KubernetesSettings(workspace_claim="shared")
    pod = serialize(build_pod(settings, spec(), PodNames("p", "p-token"), "ag_x"))
    [mount] = [m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["name"] == "workspace"]
    assert mount == {"name": "workspace", "mountPath": "/workspace", "subPath": "ag_x"}
    [volume] = [v for v in pod["spec"]["volumes"] if v["name"] == "workspace"]
    assert volume == {"name": "workspace", "persistentVolumeClaim": {"claimName": "shared"}}


def test_service_account_is_set_only_when_configured() -> None:
    names = PodNames("p", "p-token")
    assert (
        "serviceAccountName"
        not in serialize(build_pod(KubernetesSettings(), spec(), names, ""))["spec"]
    )
    pod = serialize(build_pod(KubernetesSettings(service_account="runner"), spec(), names, ""))
    assert pod["spec"]["serviceAccountName"] == "runner"
    assert pod["spec"]["automountServiceAccountToken"] is False


def test_a_malformed_secret_reference_is_refused() -> None:
    settings = KubernetesSettings(secret_env={"KEY": "no-key-part"})
    with pytest.raises(ProvisioningFailed, match="secret/key"):
        build_pod(settings, spec(), PodNames("p", "p-token"), "")


def test_deny_egress_policy_selects_network_none_pods() -> None:
    policy = serialize(deny_egress_policy(KubernetesSettings(labels={"team": "a"})))
    assert policy["metadata"]["labels"] == {"team": "a", "app.kubernetes.io/managed-by": "forge"}
    assert policy["spec"]["podSelector"]["matchLabels"]["forge.dev/network"] == "none"
    assert policy["spec"]["policyTypes"] == ["Egress"]
    assert policy["spec"]["egress"] == []


def pod(phase: str, **status: object) -> k8s.V1Pod:
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name="p"), status=k8s.V1PodStatus(phase=phase, **status)
    )


def waiting(reason: str, message: str = "") -> list[k8s.V1ContainerStatus]:
    state = k8s.V1ContainerState(
        waiting=k8s.V1ContainerStateWaiting(reason=reason, message=message)
    )
    return [
        k8s.V1ContainerStatus(
            name="runner", image="i", image_id="", ready=False, restart_count=0, state=state
        )
    ]


def test_verdict_ready() -> None:
    ready = [k8s.V1PodCondition(type="Ready", status="True")]
    assert pod_verdict(pod("Running", conditions=ready, pod_ip="10.0.0.7")) == ("ready", "")
    # Ready without an address yet is not ready.
    assert pod_verdict(pod("Running", conditions=ready))[0] == "waiting"


def test_verdict_image_pull_error_fails_at_once() -> None:
    verdict = pod_verdict(pod("Pending", container_statuses=waiting("ImagePullBackOff", "no such")))
    assert verdict == ("failed", "ImagePullBackOff: no such")


def test_verdict_unschedulable_waits_and_says_why() -> None:
    conditions = [
        k8s.V1PodCondition(
            type="PodScheduled", status="False", reason="Unschedulable", message="0/3 nodes"
        )
    ]
    assert pod_verdict(pod("Pending", conditions=conditions)) == (
        "waiting",
        "Unschedulable: 0/3 nodes",
    )


def test_verdict_runner_that_exited() -> None:
    state = k8s.V1ContainerState(
        terminated=k8s.V1ContainerStateTerminated(exit_code=2, reason="Error", message="bad args")
    )
    statuses = [
        k8s.V1ContainerStatus(
            name="runner", image="i", image_id="", ready=False, restart_count=0, state=state
        )
    ]
    verdict = pod_verdict(pod("Failed", container_statuses=statuses))
    assert verdict == ("failed", "runner exited (Error, code 2): bad args")


def test_missing_kubeconfig_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="kubeconfig"):
        api_client(KubernetesSettings(kubeconfig=str(tmp_path / "missing")))


def unreachable_runtime(tmp_path: Path, **options: str) -> KubernetesRuntime:
    """A runtime whose API server address has nobody listening."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        '{"apiVersion": "v1", "kind": "Config", "current-context": "c",'
        ' "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:9"}}],'
        ' "users": [{"name": "u", "user": {}}],'
        ' "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}'
    )
    settings = Settings(
        data_dir=tmp_path / "data",
        sandbox=SandboxSettings(
            kubernetes=KubernetesSettings(kubeconfig=str(kubeconfig), **options)
        ),
    )
    return KubernetesRuntime(settings)


async def test_workspace_outside_the_worktree_base_is_refused(tmp_path: Path) -> None:
    runtime = unreachable_runtime(tmp_path, workspace_claim="shared")
    settings_base = runtime.worktree_base
    with pytest.raises(ProvisioningFailed, match="not under the worktree base"):
        runtime._workspace_sub_path(tmp_path / "elsewhere")
    assert runtime._workspace_sub_path(settings_base / "ag_x") == "ag_x"
    await runtime.close()


async def test_an_unreachable_api_fails_provisioning_but_not_status(tmp_path: Path) -> None:
    runtime = unreachable_runtime(tmp_path)
    with pytest.raises(ProvisioningFailed, match="cannot reach the Kubernetes API"):
        await runtime.provision(spec())
    # Not known to be gone: the platform's unreachable timeout decides.
    sandbox = Sandbox(address="tcp:10.0.0.1:7070", token="t", handle={"pod": "p", "uid": "u"})
    assert await runtime.status(sandbox) == "running"
    await runtime.close()
