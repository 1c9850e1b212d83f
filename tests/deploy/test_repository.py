"""Repository-level rules the deployment depends on: line endings of the shell scripts
that run in Linux containers, and docs that name files that exist."""

import re
import subprocess
from pathlib import Path

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


#: programs every Debian image `make test` is written for has without installing anything
#: (bash and coreutils; `python3` is the image's own)
BASE_PROGRAMS = {"bash", "cd", "echo", "test", "touch", "true", "python3"}


def makefile_rules(text: str) -> tuple[dict[str, str], dict[str, tuple[list[str], list[str]]]]:
    """The Makefile's simple variables and its rules: target → (prerequisites, recipe)."""
    variables: dict[str, str] = {}
    rules: dict[str, tuple[list[str], list[str]]] = {}

    def expand(value: str) -> str:
        for _ in range(5):
            value = re.sub(r"\$\((\w+)\)", lambda m: variables.get(m.group(1), m.group(0)), value)
        return value

    current: list[str] | None = None
    for line in text.replace("\\\n", " ").splitlines():
        if line.startswith("\t") and current is not None:
            current.append(expand(line.strip()))
            continue
        current = None
        if match := re.match(r"^(\w+)\s*[:?]?=\s*(.*)$", line):
            variables[match.group(1)] = expand(match.group(2))
        elif match := re.match(r"^([^\s:#][^:=]*):(?!=)(.*)$", line):
            current = []
            for target in expand(match.group(1)).split():
                rules[target] = (expand(match.group(2)).split(), current)
    return variables, rules


def test_make_test_installs_every_program_its_recipes_run() -> None:
    """`make test` on a fresh Debian machine installs what it runs: Debian's `nodejs` has no
    `npm` (a separate package), which the axe-core recipe calls."""
    variables, rules = makefile_rules((REPO / "Makefile").read_text())
    installed = {Path(pair.partition("=")[0]).name for pair in variables["TEST_DEPS"].split()}
    seen: set[str] = set()
    pending = ["test"]
    programs: set[str] = set()
    while pending:
        target = pending.pop()
        if target in seen or target not in rules:
            continue
        seen.add(target)
        prerequisites, recipe = rules[target]
        pending.extend(prerequisites)
        for line in recipe:
            words = line.lstrip("@-").split()
            while words and re.fullmatch(r"\w+=\S*", words[0]):
                words.pop(0)  # VAR=value before the program
            if words and "/" not in words[0]:
                programs.add(words[0])
    assert "npm" in programs, "the rules reachable from `test` were not all read"
    assert programs - BASE_PROGRAMS <= installed, sorted(programs - BASE_PROGRAMS - installed)


def test_tests_the_docs_cite_exist() -> None:
    """A control in docs/security.md (or any doc) proved by a test names one that runs:
    `path.py::test_name`, and `::test_other` after a file's path; a path may be
    relative to the repository or to a package (`tests/unit/…` of a service)."""
    docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    packages = [REPO, *sorted(REPO.glob("services/*")), *sorted(REPO.glob("libs/*"))]
    cited: list[tuple[str, str]] = []
    for doc in [*docs, *sorted(REPO.glob("services/*/README.md"))]:
        path = ""  # the file a `::test_other` belongs to: the last one named before it
        for match in re.finditer(r"`([\w./-]+\.py)?(?:::(test_\w+))?", doc.read_text()):
            path = match.group(1) or path
            if match.group(2):
                cited.append((path, match.group(2)))
    assert len(cited) > 10
    missing = []
    for path, name in cited:
        sources = [package / path for package in packages if (package / path).is_file()]
        if not any(re.search(rf"def {name}\b", source.read_text()) for source in sources):
            missing.append(f"{path}::{name}")
    assert not missing, missing
