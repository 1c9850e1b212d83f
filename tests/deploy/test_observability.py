"""The observability profile: Prometheus scrapes every service where Compose runs it, the
provisioned Grafana dashboard shows the four headline figures, and both the dashboard and
the alerting rules (deploy/observability/alerts.yml) name only series the services export
(by series name and kind, not family); the rules pass `promtool check rules` and fire
when they should and stay quiet otherwise (`promtool test rules` on
tests/deploy/alerts_test.yml)."""

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.support import REPO
from tests.deploy.test_repository import makefile_rules

pytestmark = pytest.mark.deploy

OBSERVABILITY = REPO / "deploy" / "observability"
DASHBOARD = OBSERVABILITY / "grafana" / "dashboards" / "slotstream.json"
ALERTS = OBSERVABILITY / "alerts.yml"
ALERT_TESTS = Path(__file__).parent / "alerts_test.yml"
OPERATIONS = REPO / "docs" / "operations.md"
METRIC_PREFIXES = ("gateway_", "publisher_", "booking_api_")
PORT_SETTINGS = {
    "booking-api": "BOOKING_API_PORT",
    "change-publisher": "PUBLISHER_HTTP_PORT",
    "push-gateway": "GATEWAY_PORT",
}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


#: The metric kind each constructor in the services' source declares, and the series
#: prometheus-client exports for a family of that kind.
KIND_OF_CONSTRUCTOR = {
    "Counter": "counter",
    "CounterMetricFamily": "counter",
    "_counter": "counter",
    "Gauge": "gauge",
    "GaugeMetricFamily": "gauge",
    "_gauge": "gauge",
    "Histogram": "histogram",
    "HistogramMetricFamily": "histogram",
    "_histogram": "histogram",
}
SERIES_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum"),
}
#: PromQL words that look like a metric name but are not one.
PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset"}
#: Series Prometheus itself writes for every target.
PROMETHEUS_SERIES = {"up"}


def exported_series(services: Path = REPO / "services") -> dict[str, str]:
    """Every series name the services' source exports → its kind (`counter`, `gauge`,
    `histogram`): a counter family `x` is scraped as `x_total`, a histogram as
    `x_bucket`, `x_count` and `x_sum`; a gauge read as `_total`, or a counter without it,
    matches nothing in Prometheus."""
    series: dict[str, str] = {}
    for source in services.glob("*/src/**/*.py"):
        for constructor, name in re.findall(r"(\w*)\(\s*\"([a-z_]+)\"", source.read_text()):
            kind = KIND_OF_CONSTRUCTOR.get(constructor)
            if kind is None or not name.startswith(METRIC_PREFIXES):
                continue
            family = name.removesuffix("_total") if kind == "counter" else name
            for suffix in SERIES_SUFFIXES[kind]:
                series[family + suffix] = kind
    return series


def test_prometheus_scrapes_every_service_where_it_listens(
    compose_services: dict[str, dict[str, Any]],
) -> None:
    config = load_yaml(OBSERVABILITY / "prometheus.yml")
    targets: set[str] = set()
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            targets.update(static["targets"])
        for dns in job.get("dns_sd_configs", []):
            assert dns["type"] == "A"
            targets.update(f"{name}:{dns['port']}" for name in dns["names"])
    for service, setting in PORT_SETTINGS.items():
        port = compose_services[service]["environment"][setting]
        assert f"{service}:{port}" in targets, service
    # The publisher runs as replicas: found by DNS, one A record each, not one name.
    (publisher_job,) = [j for j in config["scrape_configs"] if j["job_name"] == "change-publisher"]
    assert publisher_job["dns_sd_configs"][0]["names"] == ["change-publisher"]
    assert compose_services["change-publisher"]["deploy"]["replicas"] > 1


def test_compose_mounts_the_configuration(compose_services: dict[str, dict[str, Any]]) -> None:
    prometheus = {v["target"]: v["source"] for v in compose_services["prometheus"]["volumes"]}
    assert prometheus["/etc/prometheus/prometheus.yml"] == str(OBSERVABILITY / "prometheus.yml")
    grafana = {v["target"]: v["source"] for v in compose_services["grafana"]["volumes"]}
    provisioning = Path(grafana["/etc/grafana/provisioning"])
    (provider,) = load_yaml(provisioning / "dashboards" / "slotstream.yml")["providers"]
    dashboards_dir = provider["options"]["path"]
    assert Path(grafana[dashboards_dir]) == DASHBOARD.parent


def test_dashboard_shows_the_headline_figures() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    titles = " | ".join(panel["title"].lower() for panel in dashboard["panels"])
    for figure in ("connections", "deliveries/s", "lag", "bookings/s"):
        assert figure in titles, figure
    (datasource,) = load_yaml(
        OBSERVABILITY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
    )["datasources"]
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        assert panel["targets"], panel["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(set(ids)) == len(ids)


def dashboard_queries(path: Path = DASHBOARD) -> dict[str, set[str]]:
    """Per panel title, the series its queries select (`selected_series`)."""
    queried: dict[str, set[str]] = {}
    for panel in json.loads(path.read_text())["panels"]:
        for target in panel["targets"]:
            queried.setdefault(panel["title"], set()).update(selected_series(target["expr"]))
    return queried


def unknown_dashboard_series(
    queried: dict[str, set[str]], exported: dict[str, str]
) -> dict[str, set[str]]:
    """Per panel title, the series it queries that no service exports (the alerts' check:
    exported series and kind, so a gauge read as `_total` is unknown)."""
    unknown = {
        title: names - exported.keys() - PROMETHEUS_SERIES for title, names in queried.items()
    }
    return {title: names for title, names in unknown.items() if names}


def test_dashboard_queries_only_series_the_services_export() -> None:
    queried = dashboard_queries()
    assert all(queried.values())
    assert not unknown_dashboard_series(queried, exported_series())


def test_the_dashboard_check_fails_on_a_series_read_as_the_wrong_kind(tmp_path: Path) -> None:
    """A gauge read as a counter (`gateway_connections_total`) matches nothing in
    Prometheus, though its family is exported: the panel would show "No data"."""
    broken = tmp_path / "slotstream.json"
    broken.write_text(
        DASHBOARD.read_text().replace("sum(gateway_connections)", "sum(gateway_connections_total)")
    )
    assert unknown_dashboard_series(dashboard_queries(broken), exported_series()) == {
        "Open SSE connections": {"gateway_connections_total"}
    }


def test_make_test_installs_promtool() -> None:
    """The CI test job runs `make test` in a bare Debian image: promtool must come from
    the Makefile's TEST_DEPS (Debian's prometheus package: its postinst needs no systemd,
    and in a Docker image policy-rc.d keeps it from starting the server)."""
    variables, _ = makefile_rules((REPO / "Makefile").read_text())
    assert "promtool=prometheus" in variables["TEST_DEPS"].split()


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "make test installs promtool (scripts/system-deps.sh: Debian's prometheus)"
    return subprocess.run(
        [binary, *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


def alert_rules(path: Path = ALERTS) -> list[dict[str, Any]]:
    groups = load_yaml(path)["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def selected_series(expr: str) -> set[str]:
    """The series names a PromQL expression selects: every identifier but functions,
    keywords, label names and what strings, ranges and label matchers hold."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    return {
        match.group(1)
        for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?", text)
        if not match.group(2) and match.group(1) not in PROMQL_KEYWORDS
    }


def unknown_series(rules: list[dict[str, Any]], exported: dict[str, str]) -> dict[str, set[str]]:
    """Per alert, the series its expression names that no service exports."""
    unknown = {
        rule["alert"]: selected_series(rule["expr"]) - exported.keys() - PROMETHEUS_SERIES
        for rule in rules
    }
    return {alert: names for alert, names in unknown.items() if names}


def test_prometheus_loads_the_alert_rules_compose_mounts(
    compose_services: dict[str, dict[str, Any]],
) -> None:
    config = load_yaml(OBSERVABILITY / "prometheus.yml")
    mounts = {v["target"]: v["source"] for v in compose_services["prometheus"]["volumes"]}
    assert config["rule_files"]
    for rule_file in config["rule_files"]:
        assert mounts[rule_file] == str(ALERTS), rule_file


def test_prometheus_accepts_the_configuration_with_its_rules(tmp_path: Path) -> None:
    """`promtool check config` on prometheus.yml, its rule file where Compose mounts it."""
    config = load_yaml(OBSERVABILITY / "prometheus.yml")
    config["rule_files"] = [str(ALERTS)]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    checked = promtool("check", "config", tmp_path / "prometheus.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in checked.stdout


def test_alert_rules_pass_promtool() -> None:
    checked = promtool("check", "rules", ALERTS)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_alert_fires_when_it_should_and_stays_quiet_otherwise() -> None:
    """alerts_test.yml: input series → the alerts expected (labels and rendered
    annotations), and none in a healthy system, for every alert."""
    tested = promtool("test", "rules", ALERT_TESTS)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    cases = [case for test in load_yaml(ALERT_TESTS)["tests"] for case in test["alert_rule_test"]]
    for rule in alert_rules():
        mine = [case for case in cases if case["alertname"] == rule["alert"]]
        firing = [alert for case in mine for alert in case["exp_alerts"]]
        assert [case for case in mine if not case["exp_alerts"]], f"{rule['alert']}: no quiet case"
        assert firing, f"{rule['alert']}: no case where it fires"
        assert any("exp_annotations" in alert for alert in firing), (
            f"{rule['alert']}: no firing case checks the rendered annotations"
        )
        if any("instance" in alert["exp_labels"] for alert in firing):
            text = rule["annotations"]["summary"] + rule["annotations"]["description"]
            assert "$labels.instance" in text, f"{rule['alert']}: name the instance"


def test_alerts_name_only_series_the_services_export() -> None:
    exported = exported_series()
    assert "gateway_records_total" in exported
    assert "booking_api_http_request_duration_seconds_bucket" in exported
    rules = alert_rules()
    assert all(selected_series(rule["expr"]) for rule in rules)
    assert not unknown_series(rules, exported)


def counters_read_raw(expr: str, exported: dict[str, str]) -> set[str]:
    """The counter and histogram series `expr` reads other than through rate() or
    increase()."""
    raw: set[str] = set()
    for name in selected_series(expr):
        if exported.get(name) not in ("counter", "histogram"):
            continue
        for match in re.finditer(rf"\b{name}\b", expr):
            if not expr[: match.start()].rstrip().endswith(("rate(", "increase(")):
                raw.add(name)
    return raw


def test_counters_are_read_only_through_rate_or_increase() -> None:
    """A counter starts again at 0 when its process restarts: compared as it is, an alert
    would fire or clear on a restart rather than on what happened, and a panel would
    show a saw-tooth of process lifetimes rather than a rate."""
    exported = exported_series()
    for rule in alert_rules():
        assert not counters_read_raw(rule["expr"], exported), rule["alert"]
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel["targets"]:
            assert not counters_read_raw(target["expr"], exported), panel["title"]
    assert counters_read_raw("gateway_records_total > 0", exported) == {"gateway_records_total"}


def test_every_alert_says_how_bad_and_where_the_runbook_is() -> None:
    headings = re.findall(r"^#+ (.+)$", OPERATIONS.read_text(), re.MULTILINE)
    anchors = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}
    for rule in alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert rule["annotations"]["summary"], name
        assert "$value" in rule["annotations"]["description"], f"{name}: say the value"
        runbook = rule["annotations"]["runbook_url"]
        assert runbook == f"docs/operations.md#{name.lower()}", name
        assert name.lower() in anchors, f"{name}: no runbook section in docs/operations.md"


def test_the_alert_checks_fail_on_a_metric_nobody_exports(tmp_path: Path) -> None:
    """A typo in a metric name is caught twice: the series check names it, and the
    alert, now matching nothing, no longer fires in its unit test."""
    broken = tmp_path / "deploy" / "observability" / "alerts.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text(ALERTS.read_text().replace("gateway_records_total", "gateway_record_total"))
    assert unknown_series(alert_rules(broken), exported_series()) == {
        "GatewayNotConsuming": {"gateway_record_total"}
    }
    tests = tmp_path / "tests" / "deploy" / "alerts_test.yml"
    tests.parent.mkdir(parents=True)
    shutil.copy(ALERT_TESTS, tests)
    tested = promtool("test", "rules", tests)
    assert tested.returncode != 0
    assert "alertname: GatewayNotConsuming" in tested.stdout + tested.stderr
