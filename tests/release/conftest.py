"""Shared fixtures of the release tests: the release folder made by scripts/release.sh, podman, a loopback
registry.

The release folder is $KEG_RELEASE_DIR when set (scripts/test.sh builds it once with scripts/release.sh and
passes it here); otherwise the session builds one into a temporary directory (a release build: minutes).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Iterator

import pytest

# Re-exported to the tests: the release's version and where it is published.
from release_facts import release_env  # noqa: F401
from release_facts import workspace_version as version

# The run's rules (no tests ran, or a test skipped under CI: a failure), as hooks of this conftest.
from session_rules import pytest_make_collect_report, pytest_runtest_makereport, pytest_sessionfinish  # noqa: F401

REPO = pathlib.Path(__file__).resolve().parents[2]
IMAGES = ("kube-egress-gateway-operator", "kube-egress-gateway-webhook", "kube-egress-gateway-agent")
PROVIDER = "terraform-provider-egressgateway"


def debug_release_given() -> bool:
    """KEG_RELEASE_DIR names a release folder built with --debug-binaries (release.sh writes DEBUG-BINARIES)."""
    given = os.environ.get("KEG_RELEASE_DIR")
    return bool(given) and (pathlib.Path(given) / "DEBUG-BINARIES").exists()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Debug binaries are not what the image size budgets are for: those tests are deselected (the summary
    # counts them), not skipped, since a skip under CI fails the run.
    if not debug_release_given():
        return
    budget = [i for i in items if i.originalname == "test_size_budget"]
    if budget:
        config.hook.pytest_deselected(items=budget)
        items[:] = [i for i in items if i not in budget]


def oci_runtime() -> str:
    """crun refuses hosts whose cgroups are in hybrid mode (v1 controllers plus a v2 hierarchy that has
    controllers, as on the CI machines); runc runs there. KEG_OCI_RUNTIME overrides."""
    if os.environ.get("KEG_OCI_RUNTIME"):
        return os.environ["KEG_OCI_RUNTIME"]
    unified = pathlib.Path("/sys/fs/cgroup/unified/cgroup.controllers")
    if unified.exists() and unified.read_text().strip() and shutil.which("runc"):
        return "runc"
    return "crun"


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """podman with the OCI runtime this host can use."""
    return subprocess.run(
        ["podman", "--runtime", oci_runtime(), *args],
        capture_output=True, text=True, timeout=timeout, check=check, stdin=subprocess.DEVNULL,
    )


def run_args() -> list[str]:
    """`podman run` options every test container gets: removed after, no network, and resource limits at
    most the caller's (podman's defaults raise them, which needs CAP_SYS_RESOURCE)."""
    nofile = int(subprocess.run(["sh", "-c", "ulimit -Hn"], capture_output=True, text=True).stdout.strip() or 1024)
    return ["--rm", "--network", "none", "--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", "nproc=4096:4096"]


@pytest.fixture(scope="session")
def release_dir() -> Iterator[pathlib.Path]:
    given = os.environ.get("KEG_RELEASE_DIR")
    if given:
        yield pathlib.Path(given)
        return
    with tempfile.TemporaryDirectory(prefix="keg-release-") as tmp:
        subprocess.run([str(REPO / "scripts" / "release.sh"), "build", "--out", tmp], check=True, timeout=3600)
        yield pathlib.Path(tmp) / f"kube-egress-gateway-{version()}"


@pytest.fixture(scope="session")
def digests(release_dir: pathlib.Path) -> dict[str, str]:
    """`<name>:<version>` -> manifest digest, as the release recorded them."""
    out = {}
    for line in (release_dir / "images" / "digests.txt").read_text().splitlines():
        ref, digest = line.split()
        out[ref] = digest
    return out


@pytest.fixture(scope="session")
def loaded_images(release_dir: pathlib.Path) -> dict[str, str]:
    """Image name -> image ID, loaded into podman from the release's OCI archives (what ships, not whatever
    the local storage holds under that tag)."""
    out = {}
    for name in IMAGES:
        archive = release_dir / "images" / f"{name}-{version()}.oci.tar"
        loaded = podman("load", "--quiet", "--input", str(archive)).stdout
        assert "Loaded image" in loaded, loaded
        ref = f"{release_env()['IMAGE_REPOSITORY']}/{name}:{version()}"
        out[name] = podman("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip()
    return out


def render_chart(values: dict | None = None) -> list[dict]:
    """The chart's objects as `helm install` renders them (Helm SDK), from the chart directory or an archive."""
    import helm_python as helm
    import yaml

    chart = helm.Chart.load(str(REPO / "charts" / "kube-egress-gateway"))
    rendered = chart.render(values, name="keg", namespace="kube-egress-gateway")
    return [d for path, text in sorted(rendered.items()) if not path.endswith("NOTES.txt") for d in yaml.safe_load_all(text) if d]


def workload_containers(objs: list[dict]) -> dict[str, dict]:
    """`<workload>/<container>` -> container, init containers included."""
    out = {}
    for o in objs:
        if o["kind"] in ("Deployment", "DaemonSet"):
            spec = o["spec"]["template"]["spec"]
            for c in [*spec.get("initContainers", []), *spec["containers"]]:
                out[f"{o['metadata']['name']}/{c['name']}"] = c
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def registry(tmp_path: pathlib.Path) -> Iterator[str]:
    """Debian's docker-registry (CNCF distribution) on a loopback port with storage under tmp_path; stopped
    when the test ends. Yields `127.0.0.1:<port>`."""
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        "log: {level: warn}\n"
        f"storage: {{filesystem: {{rootdirectory: {tmp_path / 'registry'}}}}}\n"
        f"http: {{addr: 127.0.0.1:{port}}}\n"
    )
    log = open(tmp_path / "registry.log", "w")
    proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp_path / "registry.log").read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "docker-registry did not answer /v2/ within 30 s"
            time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()

