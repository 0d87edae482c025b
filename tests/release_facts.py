"""What a release is, read from the repository: its version (the workspace's, in Cargo.toml) and where it is
published (release.env). Shared by tests/chart and tests/release, whose pytest.ini put this folder on the path.
"""

from __future__ import annotations

import functools
import pathlib
import tomllib

REPO = pathlib.Path(__file__).resolve().parents[1]


def workspace_version() -> str:
    """The workspace version in Cargo.toml: every crate's, the chart's and the images'."""
    return tomllib.loads((REPO / "Cargo.toml").read_text())["workspace"]["package"]["version"]


@functools.lru_cache(maxsize=1)
def release_env() -> dict[str, str]:
    """release.env's `KEY=value` lines (comments and blank lines skipped)."""
    out = {}
    for line in (REPO / "release.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out
