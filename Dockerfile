# partner-proxy sidecar image.
#
#   docker build -t partner-proxy:0.1.0 .
#   docker run --rm -e TOKOPEDIA_CLIENT_ID=... -e TOKOPEDIA_CLIENT_SECRET=... partner-proxy:0.1.0
#
# Stage 1 builds a wheel of the project; stage 2 installs that wheel and the exact pins of
# deploy/requirements.lock into a clean slim image and runs as an unprivileged numeric user.
# For production, pin the base image by digest (python:3.11-slim@sha256:...) in your registry mirror.

FROM python:3.11-slim AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# A C compiler for setup.py: mypyc compiles the data path's hottest modules ([tool.partner-proxy]
# compiled in pyproject.toml). Only this stage has it; the image gets the built wheel.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# README.md* : pyproject.toml names README.md as the long description; the glob keeps the build
# working while it does not exist yet.
COPY pyproject.toml setup.py README.md* ./
COPY proxy/ proxy/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .


FROM python:3.11-slim

LABEL org.opencontainers.image.title="partner-proxy" \
      org.opencontainers.image.description="Envoy-style sidecar for partner APIs (Tokopedia B2B)"

# The data listener stays on loopback: only containers of the same pod reach it (DESIGN.md §2).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PROXY_LISTEN=127.0.0.1:8080 \
    PROXY_ADMIN_LISTEN=0.0.0.0:9901

RUN groupadd --system --gid 10001 partner-proxy \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin partner-proxy

COPY deploy/requirements.lock /tmp/requirements.lock
COPY --from=build /wheels/ /tmp/wheels/
# --no-deps: exactly the pinned set goes in; pip check fails the build if the lock misses a
# dependency or pins a conflicting version.
RUN pip install --no-cache-dir --no-deps -r /tmp/requirements.lock \
    && pip install --no-cache-dir --no-deps /tmp/wheels/partner_proxy-*.whl \
    && pip check \
    && rm -rf /tmp/wheels /tmp/requirements.lock

# Default config; Kubernetes mounts a ConfigMap over this directory.
COPY config/routes.yaml config/errors.yaml /etc/partner-proxy/

# Refuse to build an image whose shipped config does not validate (secrets are not needed:
# unset credentials are only notes for `check`).
RUN partner-proxy check --config /etc/partner-proxy/routes.yaml --errors /etc/partner-proxy/errors.yaml

USER 10001:10001

EXPOSE 8080 9901

# No curl in slim images: the check is a few lines of Python against the admin listener's port.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('PROXY_ADMIN_LISTEN', '0.0.0.0:9901').rpartition(':')[2]; sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=2).status == 200 else 1)"]

ENTRYPOINT ["partner-proxy"]
CMD ["serve", "--config", "/etc/partner-proxy/routes.yaml", "--errors", "/etc/partner-proxy/errors.yaml"]
