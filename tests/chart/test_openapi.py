"""Rendered objects against the Kubernetes API's own models (kubernetes client, generated from OpenAPI).

Decoding into the typed model drops any field the API does not know and refuses missing required fields;
encoding it again must give back exactly what the chart rendered. A misspelled or misplaced field (e.g.
`readOnlyRootFilesystm`, or `nodeSelector` under a container) therefore fails here instead of being silently
ignored by the API server.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes.client import ApiClient

from conftest import crds, scenario_objects

MODELS = {
    ("v1", "ServiceAccount"): "V1ServiceAccount",
    ("v1", "Secret"): "V1Secret",
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("v1", "Service"): "V1Service",
    ("apps/v1", "Deployment"): "V1Deployment",
    ("apps/v1", "DaemonSet"): "V1DaemonSet",
    ("policy/v1", "PodDisruptionBudget"): "V1PodDisruptionBudget",
    ("rbac.authorization.k8s.io/v1", "Role"): "V1Role",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "V1RoleBinding",
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): "V1ClusterRole",
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): "V1ClusterRoleBinding",
    ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration"): "V1MutatingWebhookConfiguration",
    ("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration"): "V1ValidatingWebhookConfiguration",
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"): "V1CustomResourceDefinition",
}
CLIENT = ApiClient()


def roundtrip(obj: dict[str, Any]) -> Any:
    model = MODELS[(obj["apiVersion"], obj["kind"])]
    decoded = CLIENT._ApiClient__deserialize(obj, model)  # the client's own response decoder
    return CLIENT.sanitize_for_serialization(decoded)


def diff(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k not in b:
                out.append(f"{path}.{k}: unknown to the API (dropped)")
            elif k not in a:
                out.append(f"{path}.{k}: added by the model")
            else:
                out.extend(diff(a[k], b[k], f"{path}.{k}"))
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} != {len(b)}"]
        return [p for i, (x, y) in enumerate(zip(a, b)) for p in diff(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} became {b!r}"]


def test_rendered_objects_are_valid_api_objects(scenario: str) -> None:
    checked = 0
    for obj in scenario_objects(scenario):
        obj.pop("_template")
        if (obj["apiVersion"], obj["kind"]) not in MODELS:
            # Third-party kinds (cert-manager, Prometheus Operator) have no model here; their own tests check them.
            assert obj["apiVersion"] in ("cert-manager.io/v1", "monitoring.coreos.com/v1"), f"no model for {obj['kind']}"
            continue
        problems = diff(obj, roundtrip(obj))
        assert not problems, f"{obj['kind']}/{obj['metadata']['name']}:\n" + "\n".join(problems)
        checked += 1
    assert checked > 0


@pytest.mark.parametrize("crd", crds(), ids=lambda c: c["metadata"]["name"])
def test_generated_crds_are_valid_api_objects(crd: dict[str, Any]) -> None:
    problems = diff(crd, roundtrip(crd))
    assert not problems, "\n".join(problems)


def test_a_misspelled_field_is_caught() -> None:
    # The check itself: a typo in a security context must show up as a difference.
    obj = next(o for o in scenario_objects("default") if o["kind"] == "Deployment")
    obj.pop("_template")
    obj["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystm"] = True
    assert any("readOnlyRootFilesystm" in p for p in diff(obj, roundtrip(obj)))
