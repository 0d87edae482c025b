"""The Terraform provider release: files named as the Terraform Registry expects, SHA256SUMS signed, the
protocol-6 manifest, and `terraform init` installing it from a filesystem mirror with checksum verification
(scripts/provider-mirror.sh), then running it (`terraform validate` goes through the plugin handshake).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import zipfile

import pytest

from conftest import PROVIDER, REPO, release_env, version

pytestmark = pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform not installed (scripts/install-deps.sh)")

MAIN_TF = (REPO / "examples" / "terraform" / "offline" / "main.tf").read_text()


def provider_dir(release_dir: pathlib.Path) -> pathlib.Path:
    return release_dir / "terraform-provider"


def terraform(workdir: pathlib.Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
    env.update(TF_CLI_CONFIG_FILE=str(workdir / "mirror.tfrc"), CHECKPOINT_DISABLE="1", TF_IN_AUTOMATION="1")
    return subprocess.run(["terraform", *args, "-no-color"], cwd=workdir, env=env, capture_output=True, text=True, timeout=300)


def mirror(release: pathlib.Path, tmp: pathlib.Path) -> tuple[pathlib.Path, subprocess.CompletedProcess[str]]:
    ws = tmp / "ws"
    ws.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(
        [str(REPO / "scripts" / "provider-mirror.sh"), "--release", str(release), "--mirror", str(tmp / "mirror"),
         "--lock-file", str(ws / ".terraform.lock.hcl")],
        capture_output=True, text=True, timeout=120,
    )
    source = release_env()["PROVIDER_SOURCE"]
    (ws / "mirror.tfrc").write_text(
        "provider_installation {\n"
        f'  filesystem_mirror {{\n    path    = "{tmp / "mirror"}"\n    include = ["{source}"]\n  }}\n'
        "}\n"
    )
    (ws / "main.tf").write_text(MAIN_TF)
    return ws, out


def test_the_release_files_are_named_and_made_as_terraform_expects(release_dir: pathlib.Path) -> None:
    d = provider_dir(release_dir)
    prefix = f"{PROVIDER}_{version()}"
    assert sorted(p.name for p in d.iterdir()) == sorted(
        [f"{prefix}_linux_amd64.zip", f"{prefix}_SHA256SUMS", f"{prefix}_SHA256SUMS.sig", f"{prefix}_manifest.json",
         f"{prefix}_signing-key.asc"]
    )
    with zipfile.ZipFile(d / f"{prefix}_linux_amd64.zip") as z:
        [entry] = z.infolist()
        assert entry.filename == f"{PROVIDER}_v{version()}"
        assert (entry.external_attr >> 16) & 0o777 == 0o755
    assert (d / f"{prefix}_manifest.json").read_text().strip() == '{"version":1,"metadata":{"protocol_versions":["6.0"]}}'
    listed = [line.split()[1] for line in (d / f"{prefix}_SHA256SUMS").read_text().splitlines()]
    assert listed == [f"{prefix}_linux_amd64.zip", f"{prefix}_manifest.json"]
    subprocess.run(["sha256sum", "--strict", "-c", f"{prefix}_SHA256SUMS"], cwd=d, check=True, capture_output=True)


def test_terraform_init_installs_it_from_the_mirror_and_runs_it(release_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    ws, out = mirror(provider_dir(release_dir), tmp_path)
    assert out.returncode == 0, out.stderr
    init = terraform(ws, "init", "-input=false")
    assert init.returncode == 0, init.stdout + init.stderr
    assert f"Installed kube-egress-gateway-rs/egressgateway v{version()}" in init.stdout
    installed = ws / ".terraform" / "providers" / release_env()["PROVIDER_SOURCE"] / version() / "linux_amd64" / f"{PROVIDER}_v{version()}"
    assert installed.exists()
    # init verified the archive against the lock file's zh: hash and added the h1: hash of its contents.
    lock = (ws / ".terraform.lock.hcl").read_text()
    assert "zh:" in lock and "h1:" in lock
    validate = terraform(ws, "validate")
    assert validate.returncode == 0, validate.stdout + validate.stderr


def test_a_tampered_archive_is_refused_by_terraform_init(release_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    ws, out = mirror(provider_dir(release_dir), tmp_path)
    assert out.returncode == 0, out.stderr
    [archive] = (tmp_path / "mirror").rglob("*.zip")
    with open(archive, "ab") as f:
        f.write(b"tampered")
    init = terraform(ws, "init", "-input=false")
    assert init.returncode != 0
    assert "doesn't match any of the checksums" in " ".join(init.stderr.split())


def test_the_mirror_script_refuses_a_bad_signature_or_checksum(release_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    prefix = f"{PROVIDER}_{version()}"
    forged = tmp_path / "forged"
    shutil.copytree(provider_dir(release_dir), forged)
    sums = forged / f"{prefix}_SHA256SUMS"
    sums.write_text(sums.read_text().replace("0", "1", 1))
    _, out = mirror(forged, tmp_path / "a")
    assert out.returncode != 0 and "is not a valid signature" in out.stderr

    swapped = tmp_path / "swapped"
    shutil.copytree(provider_dir(release_dir), swapped)
    with open(swapped / f"{prefix}_linux_amd64.zip", "ab") as f:
        f.write(b"x")
    _, out = mirror(swapped, tmp_path / "b")
    assert out.returncode != 0 and "does not match" in out.stderr
    assert not (tmp_path / "b" / "mirror").exists()
