"""scripts/render-chart.py: the install path for kubectl and the lab renders exactly the chart, in order."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml

from conftest import NAMESPACE, REPO, RELEASE, crds, objects

SCRIPT = REPO / "scripts" / "render-chart.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--release", RELEASE, "--namespace", NAMESPACE, *args],
        capture_output=True, text=True, timeout=120,
    )


def key(o: dict) -> tuple:
    return (o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"])


def test_renders_the_chart_crds_first_webhooks_last(tmp_path) -> None:
    values = {"webhook": {"certificates": {"mode": "certManager"}}}
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump({"webhook": {"replicas": 3}}))
    out = run("-f", str(values_file), "--set-json", json.dumps(values))
    assert out.returncode == 0, out.stderr
    docs = list(yaml.safe_load_all(out.stdout))
    kinds = [d["kind"] for d in docs]
    expected = objects({"webhook": {"replicas": 3, "certificates": {"mode": "certManager"}}})
    for o in expected:
        o.pop("_template")
    assert sorted(map(key, docs)) == sorted(map(key, crds() + expected))
    assert kinds[: len(crds())] == ["CustomResourceDefinition"] * len(crds())
    # Webhook configurations come after every built-in kind (only kinds Helm does not know, here cert-manager's,
    # come later, as with `helm install`), so nothing the chart creates is admitted by a webhook not yet running.
    first_hook = kinds.index("MutatingWebhookConfiguration")
    assert set(kinds[first_hook:]) == {"MutatingWebhookConfiguration", "ValidatingWebhookConfiguration", "Issuer", "Certificate"}
    assert kinds.index("ServiceAccount") < kinds.index("ClusterRoleBinding") < kinds.index("Deployment")
    dep = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-webhook"))
    assert dep["spec"]["replicas"] == 3


def test_bad_values_exit_non_zero_naming_the_field() -> None:
    out = run("--set-json", '{"common": {"gatewayLbProbePort": "x"}}')
    assert out.returncode == 1 and out.stdout == ""
    assert "/common/gatewayLbProbePort" in out.stderr
