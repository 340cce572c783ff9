"""deploy/kubernetes: every manifest parses, the Role grants exactly what the `kubernetes`
runtime uses (and nothing cluster-wide), and the pieces agree with each other and the config."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from forge.config import Settings
from forge.sandbox.kubernetes import REQUIRED_PERMISSIONS

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))


def documents() -> list[dict[str, Any]]:
    docs = []
    for path in MANIFESTS:
        if path.name == "kustomization.yaml":
            continue
        docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    [found] = [
        d for d in documents() if d["kind"] == kind and name in (None, d["metadata"]["name"])
    ]
    return found


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_manifest_parses(path: Path) -> None:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert docs
    for doc in docs:
        assert {"apiVersion", "kind"} <= set(doc)
        if doc["kind"] not in ("Kustomization", "Namespace"):
            assert doc["metadata"]["namespace"] == "forge"


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kubernetes" / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in MANIFESTS if p.name != "kustomization.yaml"
    )


def test_role_grants_exactly_what_the_runtime_uses() -> None:
    kinds = {d["kind"] for d in documents()}
    assert "ClusterRole" not in kinds
    assert "ClusterRoleBinding" not in kinds
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in one("Role")["rules"]:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field]
        assert "resourceNames" not in rule or rule["resourceNames"]
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    assert granted == {key: set(verbs) for key, verbs in REQUIRED_PERMISSIONS.items()}


def test_role_is_bound_to_the_deployments_service_account() -> None:
    binding = one("RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": one("Role")["metadata"]["name"],
    }
    account = one("ServiceAccount")["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account, "namespace": "forge"}
    ]
    assert one("Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == account


def forge_toml() -> dict[str, Any]:
    parsed: dict[str, Any] = tomllib.loads(one("ConfigMap")["data"]["forge.toml"])
    return parsed


def test_config_is_valid_and_uses_the_kubernetes_runtime() -> None:
    settings = Settings(**forge_toml())
    assert settings.sandbox.runtime == "kubernetes"
    assert settings.sandbox.kubernetes.namespace == "forge"
    assert settings.sandbox.kubernetes.kubeconfig == ""  # in-cluster
    # It listens beyond loopback, so it must authenticate, with the admin key from a Secret.
    assert settings.server.host == "0.0.0.0" and settings.auth.enabled
    [container] = one("Deployment")["spec"]["template"]["spec"]["containers"]
    [admin_key] = [e for e in container["env"] if e["name"] == "FORGE_API_KEY"]
    assert admin_key["valueFrom"]["secretKeyRef"]["name"] == "forge-admin-key"


def test_deployment_mounts_what_the_config_names() -> None:
    settings = Settings(**forge_toml())
    pod = one("Deployment")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    # Forge's worktree base is the claim runner pods mount their agent's part of.
    assert (
        claims[mounts[str(settings.worktree_base)]] == settings.sandbox.kubernetes.workspace_claim
    )
    assert mounts[str(settings.data_dir)] == "data"
    assert one("PersistentVolumeClaim", settings.sandbox.kubernetes.workspace_claim)["spec"][
        "accessModes"
    ] == ["ReadWriteMany"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["ports"][0]["containerPort"] == settings.server.port


def test_service_and_runner_ingress_match_the_ports() -> None:
    settings = Settings(**forge_toml())
    service = one("Service")
    assert service["spec"]["selector"] == {"app.kubernetes.io/name": "forge"}
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    ingress = one("NetworkPolicy", "forge-runner-ingress")["spec"]
    assert ingress["podSelector"]["matchLabels"] == {"app.kubernetes.io/managed-by": "forge"}
    [rule] = ingress["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": settings.sandbox.kubernetes.runner_port}]
    assert rule["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "forge"}}}]


def test_runner_image_runs_the_runner_as_a_non_root_user() -> None:
    dockerfile = (DEPLOY / "runner.Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile
    assert "USER 1000:1000" in dockerfile
    assert 'ENTRYPOINT ["python", "-m", "forge.runner"]' in dockerfile
