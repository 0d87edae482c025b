"""Shared helpers for the chart tests: render the chart with the Helm SDK and index the objects."""

from __future__ import annotations

import copy
import functools
import json
import pathlib
from typing import Any

import pytest
import yaml

# The run's rules (no tests ran, or a test skipped under CI: a failure), as hooks of this conftest.
from session_rules import pytest_make_collect_report, pytest_runtest_makereport, pytest_sessionfinish  # noqa: F401

try:
    import helm_python as helm
except ImportError as exc:  # pragma: no cover - environment problem, reported loudly
    raise SystemExit(
        "helm-python-sdk is not installed in this Python: run scripts/install-deps.sh, which installs "
        "tests/chart/requirements.txt into .venv, and the tests with .venv/bin/python3 (scripts/test.sh does): "
        f"{exc}"
    ) from exc

REPO = pathlib.Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kube-egress-gateway"
RELEASE = "keg"
NAMESPACE = "kube-egress-gateway"

# Representative values: one per way people install the chart.
SCENARIOS: dict[str, dict[str, Any]] = {
    "default": {},
    "cert-manager": {"webhook": {"certificates": {"mode": "certManager"}}},
    "cert-manager-cluster-issuer": {
        "webhook": {
            "certificates": {
                "mode": "certManager",
                "certManager": {"issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}},
            }
        }
    },
    "existing-secret": {
        "webhook": {
            "certificates": {
                "mode": "existingSecret",
                # base64 of a PEM header is enough: the chart passes it through unchanged.
                "existingSecret": {"name": "my-webhook-tls", "caBundle": "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg=="},
            }
        }
    },
    "webhook-generated": {"webhook": {"replicas": 1, "certificates": {"mode": "webhookGenerated"}}},
    # The pair is shared through a Secret: any number of replicas (here the default, 2).
    "webhook-generated-replicas": {"webhook": {"certificates": {"mode": "webhookGenerated"}}},
    "webhook-disabled": {"webhook": {"enabled": False}},
    "custom-images": {
        "common": {
            "imageRepository": "myregistry.azurecr.io/keg",
            "imageTag": "v9.9.9",
            "logFormat": "json",
            "imagePullSecrets": [{"name": "regcred"}],
        },
        "gatewayControllerManager": {"imageRepository": "other.example.com/ops", "imageTag": "op-1"},
        "webhook": {"imageName": "my-webhook", "imagePullPolicy": "Always"},
        "gatewayCNI": {"imageName": "my-cni"},
    },
    "monitoring": {
        "monitoring": {
            "serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "prom"}},
            "grafanaDashboard": {"enabled": True},
        }
    },
    "managed-identity": {
        "config": {
            "azureCloudConfig": {
                "tenantId": "72f988bf-86f1-41af-91ab-2d7cd011db47",
                "subscriptionId": "00000000-0000-0000-0000-000000000001",
                "useManagedIdentityExtension": True,
                "userAssignedIdentityID": "11111111-2222-3333-4444-555555555555",
                "resourceGroup": "mc_rg",
                "location": "westeurope",
                "vnetName": "aks-vnet",
                "vnetResourceGroup": "mc_rg",
                "subnetName": "aks-subnet",
            }
        }
    },
    # Azure Workload Identity: its webhook injects the client, tenant and token file into the operator's pod.
    "workload-identity": {
        "gatewayControllerManager": {
            "podLabels": {"azure.workload.identity/use": "true"},
            "serviceAccount": {"annotations": {"azure.workload.identity/client-id": "11111111-2222-3333-4444-555555555555"}},
        },
        "config": {
            "azureCloudConfig": {
                "subscriptionId": "00000000-0000-0000-0000-000000000001",
                "useFederatedWorkloadIdentityExtension": True,
                "resourceGroup": "mc_rg",
                "location": "westeurope",
            }
        },
    },
    # The cloud configuration (e.g. with a service principal's secret) in a Secret the platform team manages.
    "existing-cloud-config": {"config": {"existingSecret": {"name": "corp-azure-cloud-config", "key": "cloud.json"}}},
    # Hardening: the WireGuard key Secrets in a namespace of their own, away from the release namespace's Secrets.
    "key-secret-namespace": {"common": {"keySecretNamespace": "keg-keys"}},
}


def key_secret_namespace(values: dict[str, Any] | None) -> str:
    """The namespace the key Secrets of a rendering with these values are in: common.keySecretNamespace, or
    the release namespace."""
    return ((values or {}).get("common") or {}).get("keySecretNamespace") or NAMESPACE


@functools.lru_cache(maxsize=1)
def _chart() -> Any:
    return helm.Chart.load(str(CHART))


def render(values: dict[str, Any] | None = None) -> dict[str, str]:
    """Template path -> rendered text, exactly as `helm install` would render it (schema checked)."""
    return _chart().render(copy.deepcopy(values) if values else None, name=RELEASE, namespace=NAMESPACE)


def objects(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every Kubernetes object the chart renders (NOTES.txt excluded)."""
    out: list[dict[str, Any]] = []
    for path, text in sorted(render(values).items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("_template", path)
                out.append(doc)
    return out


@functools.lru_cache(maxsize=None)
def _scenario_objects(name: str) -> str:
    return json.dumps(objects(SCENARIOS[name]))


def scenario_objects(name: str) -> list[dict[str, Any]]:
    """Cached rendering of a named scenario (a fresh copy each call)."""
    return json.loads(_scenario_objects(name))


def crds() -> list[dict[str, Any]]:
    """The CRDs the chart ships (generated from api/)."""
    return [copy.deepcopy(d) for d in _crd_docs()]


@functools.lru_cache(maxsize=1)
def _crd_docs() -> tuple[dict[str, Any], ...]:
    docs = []
    for path in sorted((CHART / "crds").glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return tuple(docs)


def find(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = find(objs, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def workloads(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] in ("Deployment", "DaemonSet")]


def containers(workload: dict[str, Any], init: bool = True) -> list[dict[str, Any]]:
    spec = workload["spec"]["template"]["spec"]
    return list(spec.get("initContainers", []) if init else []) + list(spec["containers"])


def args_map(container: dict[str, Any]) -> dict[str, str | None]:
    """`--flag=value` / `--flag` arguments as a mapping."""
    out: dict[str, str | None] = {}
    for a in container.get("args", []):
        if a.startswith("--"):
            flag, sep, value = a.partition("=")
            assert flag not in out, f"{container['name']}: {flag} given twice"
            out[flag] = value if sep else None
    return out


@pytest.fixture(params=sorted(SCENARIOS))
def scenario(request: pytest.FixtureRequest) -> str:
    return request.param

