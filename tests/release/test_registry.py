"""Publishing and installing from a registry: `scripts/release.sh publish` pushes the release's images and
packaged chart (an OCI artifact) to a registry on loopback (Debian's docker-registry, started and stopped by
the test); the chart is then installed from that registry with the Helm SDK, its image repository pointing
there, and every image the installed workloads reference exists there with the release's digest and runs.
"""

from __future__ import annotations

import json
import pathlib
import re
import subprocess

import helm_python as helm
import yaml

from conftest import IMAGES, REPO, podman, run_args, version


def publish(release_dir: pathlib.Path, registry: str) -> None:
    debug = ["--allow-debug-binaries"] if (release_dir / "DEBUG-BINARIES").exists() else []
    subprocess.run(
        [
            str(REPO / "scripts" / "release.sh"), "publish", "--dir", str(release_dir),
            "--image-repository", f"{registry}/kube-egress-gateway", "--chart-repository", f"{registry}/charts",
            "--plain-http", *debug,
        ],
        check=True, timeout=600,
    )


def manifest_digest(registry: str, repository: str, tag: str) -> str:
    out = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", "--format", "{{.Digest}}", f"docker://{registry}/{repository}:{tag}"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, f"{registry}/{repository}:{tag} is not in the registry: {out.stderr}"
    return out.stdout.strip()


def test_the_chart_installs_from_the_registry_with_images_that_exist_there(
    release_dir: pathlib.Path, registry: str, digests: dict[str, str], tmp_path: pathlib.Path
) -> None:
    publish(release_dir, registry)

    client = helm.RegistryClient(plain_http=True)
    chart_ref = f"oci://{registry}/charts/kube-egress-gateway"
    assert client.tags(chart_ref) == [version()]
    # The chart in the registry is the release's archive, byte for byte.
    archive = release_dir / "chart" / f"kube-egress-gateway-{version()}.tgz"
    (tmp_path / "pulled").mkdir()
    helm.pull(chart_ref, version=version(), destination=str(tmp_path / "pulled"), plain_http=True)
    assert (tmp_path / "pulled" / archive.name).read_bytes() == archive.read_bytes()

    # helm install oci://.../kube-egress-gateway --version <v> --set common.imageRepository=<registry>/...
    config = helm.Config(storage_driver="memory", namespace="kube-egress-gateway")
    config.set_registry_client(client)
    release = config.install(
        chart_ref, "keg", {"common": {"imageRepository": f"{registry}/kube-egress-gateway"}},
        namespace="kube-egress-gateway", chart_version=version(), plain_http=True, dry_run="client",
    )
    assert release["chart_version"] == version() and release["app_version"] == version()
    objs = [d for d in yaml.safe_load_all(release["manifest"]) if d]
    images = set()
    for o in objs:
        if o["kind"] in ("Deployment", "DaemonSet"):
            spec = o["spec"]["template"]["spec"]
            images |= {c["image"] for c in [*spec.get("initContainers", []), *spec["containers"]]}
    assert images == {f"{registry}/kube-egress-gateway/{n}:{version()}" for n in IMAGES}
    for image in images:
        m = re.fullmatch(rf"{re.escape(registry)}/(.+):([^:]+)", image)
        assert m, image
        digest = manifest_digest(registry, m.group(1), m.group(2))
        name = m.group(1).rsplit("/", 1)[1]
        assert digest == digests[f"{name}:{version()}"], f"{image} is {digest} in the registry"

    # What a node would do: pull by the digest and run it.
    for name in IMAGES:
        by_digest = f"{registry}/kube-egress-gateway/{name}@{digests[f'{name}:{version()}']}"
        podman("pull", "--quiet", "--tls-verify=false", by_digest, timeout=300)
        out = podman("run", *run_args(), by_digest, "--version")
        assert out.stdout.strip() == f"{name} {version()}"
        podman("rmi", by_digest, check=False)


def test_publish_refuses_a_release_folder_that_does_not_match_its_checksums(
    release_dir: pathlib.Path, registry: str, tmp_path: pathlib.Path
) -> None:
    copy = tmp_path / "release"
    subprocess.run(["cp", "-a", str(release_dir), str(copy)], check=True)
    digests_file = copy / "images" / "digests.txt"
    digests_file.write_text(digests_file.read_text().replace("sha256:", "sha256:0", 1))
    out = subprocess.run(
        [str(REPO / "scripts" / "release.sh"), "publish", "--dir", str(copy), "--image-repository",
         f"{registry}/x", "--chart-repository", f"{registry}/charts", "--plain-http", "--allow-debug-binaries"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode != 0
    assert "does not match its SHA256SUMS" in out.stderr
    catalog = json.loads(subprocess.run(["curl", "-s", f"http://{registry}/v2/_catalog"], capture_output=True, text=True).stdout)
    assert catalog["repositories"] == [], "nothing may be pushed from a folder that fails its checksums"
