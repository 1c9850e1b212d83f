# Slotstream's three Python services, one Dockerfile, one target per service. Build from
# the repository root:
#   docker build --target booking-api      -t slotstream/booking-api:0.1.0 .
#   docker build --target change-publisher -t slotstream/change-publisher:0.1.0 .
#   docker build --target push-gateway     -t slotstream/push-gateway:0.1.0 .
# The builder stage is shared: BuildKit builds it once for all three targets.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE_URL=

# ---- builder: one venv per service under /opt/venvs/<service> -----------------------------
FROM ${PYTHON_IMAGE} AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY constraints.txt ./
COPY libs/contracts/pyproject.toml libs/contracts/
COPY services/booking-api/pyproject.toml services/booking-api/
COPY services/change-publisher/pyproject.toml services/change-publisher/
COPY services/push-gateway/pyproject.toml services/push-gateway/
# A C compiler in the builder only: the push-gateway's record-batch decoder and socket writer
# are Cython extensions (services/push-gateway/setup.py); the runtime images get the modules.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc=4:12.2.0-3 libc6-dev=2.36-9+deb12u14 \
 && rm -rf /var/lib/apt/lists/*
# Third-party dependencies first, in their own layer: rebuilt only when a pin or a
# pyproject.toml changes, not on every code change. The runtime venvs get no pip of their
# own; the builder's pip installs into them (--python). Third-party packages as wheels only.
RUN pip install --no-cache-dir -c constraints.txt hatchling setuptools Cython \
 && for service in booking-api change-publisher push-gateway; do \
      python -m venv --without-pip "/opt/venvs/${service}" \
      && python -c "import sys, tomllib; print(*(d for p in sys.argv[1:] for d in tomllib.load(open(p, 'rb'))['project']['dependencies'] if not d.startswith('slotstream-')), sep='\n')" \
           libs/contracts/pyproject.toml "services/${service}/pyproject.toml" > "requirements-${service}.txt" \
      && pip --python "/opt/venvs/${service}/bin/python" install --no-cache-dir -c constraints.txt \
           --only-binary=:all: -r "requirements-${service}.txt" \
      || exit 1; \
    done
COPY libs/contracts libs/contracts
COPY services/booking-api services/booking-api
COPY services/change-publisher services/change-publisher
COPY services/push-gateway services/push-gateway
# Our packages as wheels, built by the pinned backends without build isolation (so pip never
# fetches an unpinned hatchling, setuptools or Cython); `pip check` proves each venv is
# complete, and the import that the push-gateway's compiled decoder and socket writer were built.
RUN pip wheel --no-deps --no-build-isolation -w /wheels \
      libs/contracts services/booking-api services/change-publisher services/push-gateway \
 && for service in booking-api change-publisher push-gateway; do \
      pip --python "/opt/venvs/${service}/bin/python" install --no-cache-dir --no-deps \
           /wheels/slotstream_contracts-*.whl "/wheels/slotstream_$(echo "${service}" | tr - _)-"*.whl \
      && pip --python "/opt/venvs/${service}/bin/python" check \
      || exit 1; \
    done \
 && /opt/venvs/push-gateway/bin/python -c "import push_gateway.adapters._batches, push_gateway.adapters._sockets"

# ---- runtime: interpreter, an unprivileged user, nothing else --------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION
ARG REVISION
ARG SOURCE_URL
LABEL org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.vendor="Slotstream"
# /srv/slotstream-demo: where the seed job (booking-api image) writes demo-users.json.
RUN groupadd --system --gid 10001 slotstream \
 && useradd --system --uid 10001 --gid slotstream --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin slotstream \
 && mkdir -p /srv/slotstream-demo && chown 10001:10001 /srv/slotstream-demo
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /srv
# uvicorn drains in-flight requests on SIGTERM; the orchestrator's grace period covers it.
STOPSIGNAL SIGTERM

# ---- targets -----------------------------------------------------------------------------------
FROM runtime AS booking-api
LABEL org.opencontainers.image.title="slotstream-booking-api" \
      org.opencontainers.image.description="Slotstream booking API: instructors, slots, bookings, notifications"
COPY --from=builder /opt/venvs/booking-api /opt/venvs/booking-api
ENV PATH=/opt/venvs/booking-api/bin:$PATH \
    BOOKING_API_HOST=0.0.0.0 \
    BOOKING_API_PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('BOOKING_API_PORT', '8000'), timeout=2)"]
ENTRYPOINT ["slotstream-booking-api"]

FROM runtime AS change-publisher
LABEL org.opencontainers.image.title="slotstream-change-publisher" \
      org.opencontainers.image.description="Slotstream change-publisher: MongoDB change streams to Kafka CloudEvents"
COPY --from=builder /opt/venvs/change-publisher /opt/venvs/change-publisher
ENV PATH=/opt/venvs/change-publisher/bin:$PATH \
    PUBLISHER_HTTP_HOST=0.0.0.0 \
    PUBLISHER_HTTP_PORT=8001
EXPOSE 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PUBLISHER_HTTP_PORT', '8001'), timeout=2)"]
ENTRYPOINT ["slotstream-change-publisher"]

FROM runtime AS push-gateway
LABEL org.opencontainers.image.title="slotstream-push-gateway" \
      org.opencontainers.image.description="Slotstream push-gateway: Kafka to Server-Sent Events fan-out"
COPY --from=builder /opt/venvs/push-gateway /opt/venvs/push-gateway
ENV PATH=/opt/venvs/push-gateway/bin:$PATH \
    GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8002
EXPOSE 8002
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('GATEWAY_PORT', '8002'), timeout=2)"]
ENTRYPOINT ["slotstream-push-gateway"]
