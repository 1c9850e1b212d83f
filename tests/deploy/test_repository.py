"""Repository-level rules the deployment depends on: line endings of the shell scripts
that run in Linux containers, and docs that name files that exist."""

import re
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


def test_deploy_docs_name_existing_files() -> None:
    text = (REPO / "docs" / "deploy.md").read_text()
    named = set(re.findall(r"`((?:deploy|services|libs|tests|\.github)/[\w./*-]+)`", text))
    assert named
    missing = [path for path in named if "*" not in path and not (REPO / path).exists()]
    assert not missing, missing
