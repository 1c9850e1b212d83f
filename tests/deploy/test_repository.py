"""Repository-level rules the deployment depends on: line endings of the shell scripts
that run in Linux containers, and docs that name files that exist."""

import subprocess

import pytest

from tests.deploy.support import REPO

pytestmark = pytest.mark.deploy


def test_shell_scripts_are_checked_out_with_lf() -> None:
    """A CRLF checkout (Windows, core.autocrlf) breaks `set -o pipefail` in the containers."""
    scripts = sorted(str(p.relative_to(REPO)) for p in REPO.glob("deploy/**/*.sh"))
    assert scripts
    result = subprocess.run(
        ["git", "-C", str(REPO), "check-attr", "eol", "--", *scripts],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    for line in result.stdout.splitlines():
        assert line.endswith(": eol: lf"), line
    for script in scripts:
        assert b"\r\n" not in (REPO / script).read_bytes(), script
