# syntax=docker/dockerfile:1
# The gateway: the public gRPC streaming API. Build from the repository root (`make images`):
#   docker build -f deploy/docker/gateway.Dockerfile -t mrt-gateway:VERSION .
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
# Dependencies first (a layer that changes only with the lock), then the project itself.
COPY requirements.lock deploy/docker/requirements/gateway.txt /tmp/requirements/
RUN /opt/venv/bin/pip install --no-cache-dir -c /tmp/requirements/requirements.lock -r /tmp/requirements/gateway.txt
COPY pyproject.toml /src/
COPY services /src/services
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps /src

FROM ${PYTHON_IMAGE}
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /tmp --shell /usr/sbin/nologin mrt
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH HOME=/tmp PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    MRT_PORT=50051 MRT_METRICS_PORT=9091
USER 10001:10001
EXPOSE 50051 9091
ENTRYPOINT ["python", "-m", "services.gateway"]
