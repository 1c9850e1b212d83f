"""docs/operations.md is read by whoever is paged: every log line, setting and metric it
tells them to look for must exist, or they search at 3 a.m. for what never appears.

What the runbook names, and how it is recognised (so prose is never taken for one):
- a **setting**: an upper-case `GATEWAY_…`, `PUBLISHER_…`, `BOOKING_API_…` or `EDGE_…`
  word, anywhere; it must be a field of that service's settings (nested with `__`), an
  edge one a variable the edge's image and templates read;
- a **metric**: a lower-case `gateway_…`, `publisher_…` or `booking_api_…` word inside
  backticks (a name or a PromQL query); it must be a series a service exports (histograms
  as `_bucket`, `_count`, `_sum`, counters with `_total`: what Prometheus can be asked for);
- a **log line**: backticked text right after "log line(s)" (several: `a`, `b` or `c`) or
  right before "log line(s)"; it must be a string literal of the services' or the shared
  libraries' source (an f-string's fields match any text)."""

import ast
import re
from pathlib import Path

import pytest

from tests.deploy.support import REPO
from tests.deploy.test_observability import OPERATIONS, exported_series
from tests.deploy.test_settings import is_setting, prefix_of

pytestmark = pytest.mark.deploy

SOURCES = (REPO / "services", REPO / "libs")
EDGE = REPO / "deploy" / "edge"
SETTING = re.compile(r"(?<![\w$])(?:GATEWAY|PUBLISHER|BOOKING_API|EDGE)_[A-Z0-9_]*[A-Z0-9]\b")
METRIC = re.compile(r"(?<![\w.])(?:gateway|publisher|booking_api)_[a-z0-9_]*[a-z0-9]\b")
BACKTICKED = re.compile(r"`([^`]+)`")
#: "log line `a`", "log lines `a`, `b` or `c`"; and "`a` log line".
LOG_LINES_AFTER = re.compile(r"\blog lines? ((?:`[^`]+`(?:,? (?:and |or )?)?)+)")
LOG_LINE_BEFORE = re.compile(r"`([^`]+)` log lines?\b")


def rendered(text: str) -> str:
    """Markdown's text as read: a line break inside a paragraph (or a code span) is a
    space, so a log line wrapped in the source is checked whole."""
    return re.sub(r"[ \t]*\n[ \t]*", " ", text)


def named_log_lines(text: str) -> set[str]:
    """The log lines a text names (see the module docstring)."""
    text = rendered(text)
    named = set(LOG_LINE_BEFORE.findall(text))
    for listed in LOG_LINES_AFTER.findall(text):
        named.update(BACKTICKED.findall(listed))
    return named


def named_settings(text: str) -> set[str]:
    return set(SETTING.findall(text))


def named_metrics(text: str) -> set[str]:
    quoted = BACKTICKED.findall(rendered(text))
    return {name for span in quoted for name in METRIC.findall(span)}


def source_strings(roots: tuple[Path, ...] = SOURCES) -> list[re.Pattern[str]]:
    """Every string literal of the Python source under `roots` as a pattern matching it
    whole; an f-string's fields (`{self._server} not reachable: retrying`) match any
    text, but only f-strings with some text of their own are kept."""
    patterns: list[re.Pattern[str]] = []
    for root in roots:
        for path in root.glob("*/src/**/*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.JoinedStr):
                    texts = [v.value if isinstance(v, ast.Constant) else None for v in node.values]
                    own = "".join(str(text) for text in texts if text is not None)
                    if len(own) > 4:
                        parts = [".+" if text is None else re.escape(str(text)) for text in texts]
                        patterns.append(re.compile("".join(parts), re.DOTALL))
                elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                    patterns.append(re.compile(re.escape(node.value)))
    return patterns


def edge_settings(edge: Path = EDGE) -> set[str]:
    """The `EDGE_…` variables the edge's Dockerfile and nginx templates read."""
    files = [edge / "Dockerfile", *edge.glob("*.template"), *edge.glob("*.conf")]
    return {name for path in files for name in SETTING.findall(path.read_text())}


def unknown_references(text: str) -> dict[str, set[str]]:
    """Per kind, what `text` names that the code does not have."""
    strings = source_strings()
    edge = edge_settings()
    settings = named_settings(text)
    return {
        kind: names
        for kind, names in {
            "log line": {
                line
                for line in named_log_lines(text)
                if not any(p.fullmatch(line) for p in strings)
            },
            "setting": {s for s in settings if s.startswith("EDGE_") and s not in edge}
            | {s for s in settings if prefix_of(s) and not is_setting(s)},
            "metric": named_metrics(text) - exported_series().keys(),
        }.items()
        if names
    }


def test_the_runbook_names_only_log_lines_settings_and_metrics_that_exist() -> None:
    text = OPERATIONS.read_text()
    # not vacuous: each kind is recognised where the runbook names one
    assert {"slot.repaired", "kafka not reachable: retrying"} <= named_log_lines(text)
    assert "GATEWAY_KAFKA__START_TIMEOUT_SECONDS" in named_settings(text)
    assert "gateway_consumer_lag" in named_metrics(text)
    assert unknown_references(text) == {}


def test_the_runbook_check_fails_on_a_name_the_code_does_not_have() -> None:
    """A misspelt log line, a setting without its nesting, a histogram asked for by its
    family name (Prometheus has no such series) and an edge setting nobody reads."""
    text = (
        "the log line `slot.repair`; `kafka not reachable: retrying` log lines; "
        "GATEWAY_KAFKA_START_TIMEOUT_SECONDS, GATEWAY_KAFKA__START_TIMEOUT_SECONDS; "
        "EDGE_STREAMS_PER_USER; `gateway_loop_lag_seconds`, "
        "`rate(gateway_loop_lag_seconds_bucket[5m])`; prose: a gateway_ready word, "
        "SECRET_FILE__GATEWAY_INTERNAL_TOKEN, `push_gateway.workers`"
    )
    assert unknown_references(text) == {
        "log line": {"slot.repair"},
        "setting": {"GATEWAY_KAFKA_START_TIMEOUT_SECONDS", "EDGE_STREAMS_PER_USER"},
        "metric": {"gateway_loop_lag_seconds"},
    }
