# syntax=docker/dockerfile:1
# The gateway: the public gRPC streaming API. Build from the repository root (`make images`):
#   docker build -f deploy/docker/gateway.Dockerfile -t mrt-gateway:VERSION .
# The base: a Debian bookworm with Python 3.11; `make base-image` makes one without a registry.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

FROM ${PYTHON_IMAGE} AS build
# pip trusts the system's certificates (where a build host may mount its own, e.g. a proxy's) and
# keeps downloads in a cache mount: shared by the builds of every image, carried by none.
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_CERT=/etc/ssl/certs/ca-certificates.crt
RUN python3 -m venv /opt/venv
# Dependencies first (a layer that changes only with the lock), then the project itself.
COPY requirements.lock deploy/docker/requirements/gateway.txt /tmp/requirements/
RUN --mount=type=cache,target=/root/.cache/pip \
    /opt/venv/bin/pip install -c /tmp/requirements/requirements.lock -r /tmp/requirements/gateway.txt
COPY pyproject.toml /src/
COPY services /src/services
RUN --mount=type=cache,target=/root/.cache/pip /opt/venv/bin/pip install --no-deps /src

FROM ${PYTHON_IMAGE}
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /tmp --shell /usr/sbin/nologin mrt
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH HOME=/tmp PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    MRT_PORT=50051 MRT_METRICS_PORT=9091
USER 10001:10001
EXPOSE 50051 9091
ENTRYPOINT ["python", "-m", "services.gateway"]
