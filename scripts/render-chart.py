#!/usr/bin/env python3
"""Renders the Helm chart with the Helm SDK (no helm binary, no cluster) as one multi-document YAML stream,
CRDs first and then in Helm's install order, ready for `kubectl apply -f -` (or the lab's API simulator).

usage: scripts/render-chart.py [-f values.yaml]... [--set-json '{"webhook": {"replicas": 1}}']
                               [--release NAME] [--namespace NS] [--no-crds]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

try:
    import helm_python as helm
    import yaml
except ImportError:
    # Started with a Python that lacks the Helm SDK (e.g. `python3` outside scripts/python-env.sh): run again
    # with the project's environment, which scripts/install-deps.sh makes.
    _venv = pathlib.Path(os.environ.get("KEG_VENV") or pathlib.Path(__file__).resolve().parents[1] / ".venv")
    _python = _venv / "bin" / "python3"
    if _python.exists() and pathlib.Path(sys.prefix).resolve() != _venv.resolve():
        os.execv(_python, [str(_python), __file__, *sys.argv[1:]])
    raise SystemExit(f"render-chart: the Helm SDK is not installed in {sys.prefix}: run scripts/install-deps.sh")

CHART = pathlib.Path(__file__).resolve().parents[1] / "charts" / "kube-egress-gateway"

# Helm's install order for the kinds this chart renders (helm.sh/helm pkg/release/util/kind_sorter.go).
INSTALL_ORDER = [
    "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange", "PodSecurityPolicy", "PodDisruptionBudget",
    "ServiceAccount", "Secret", "SecretList", "ConfigMap", "StorageClass", "PersistentVolume",
    "PersistentVolumeClaim", "CustomResourceDefinition", "ClusterRole", "ClusterRoleList", "ClusterRoleBinding",
    "ClusterRoleBindingList", "Role", "RoleList", "RoleBinding", "RoleBindingList", "Service", "DaemonSet", "Pod",
    "ReplicationController", "ReplicaSet", "Deployment", "HorizontalPodAutoscaler", "StatefulSet", "Job",
    "CronJob", "IngressClass", "Ingress", "APIService", "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
]


def merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for k, v in override.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def render(values: dict | None, release: str, namespace: str, with_crds: bool = True) -> list[dict]:
    """The chart's objects in install order (NOTES.txt left out)."""
    with helm.Chart.load(str(CHART)) as chart:
        rendered = chart.render(values or None, name=release, namespace=namespace)
        crd_texts = [c["data"] for c in chart.crds] if with_crds else []
    docs = [d for text in crd_texts for d in yaml.safe_load_all(text) if d]
    objs = [
        d
        for path, text in sorted(rendered.items())
        if not path.endswith("NOTES.txt")
        for d in yaml.safe_load_all(text)
        if d
    ]
    rank = {k: i for i, k in enumerate(INSTALL_ORDER)}
    objs.sort(key=lambda o: rank.get(o["kind"], len(rank)))  # stable: template order within a kind
    return docs + objs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-f", "--values", action="append", default=[], help="values file (repeatable)")
    p.add_argument("--set-json", action="append", default=[], help="values as a JSON object (repeatable)")
    p.add_argument("--release", default="kube-egress-gateway")
    p.add_argument("--namespace", default="kube-egress-gateway")
    p.add_argument("--no-crds", action="store_true")
    a = p.parse_args()
    values: dict = {}
    for f in a.values:
        values = merge(values, yaml.safe_load(pathlib.Path(f).read_text()) or {})
    for j in a.set_json:
        values = merge(values, json.loads(j))
    try:
        objs = render(values, a.release, a.namespace, not a.no_crds)
    except helm.HelmError as e:
        print(f"render-chart: {e}", file=sys.stderr)
        return 1
    yaml.safe_dump_all(objs, sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
