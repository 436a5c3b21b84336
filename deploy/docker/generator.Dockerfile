# syntax=docker/dockerfile:1
# The generator: batched chunk generation on the accelerator. Build from the repository root
# (`make images`), choosing the accelerator runtime JAX is installed with:
#   docker build -f deploy/docker/generator.Dockerfile --build-arg ACCELERATOR=cuda12 \
#     -t mrt-generator:VERSION-cuda12 .
# ACCELERATOR: cpu (default), cuda12 (NVIDIA; CUDA comes from pip wheels, the driver from the
# node) or tpu (Cloud TPU). The image also runs `mrt assets download` for the assets Job.
# The base: a Debian bookworm with Python 3.11; `make base-image` makes one without a registry.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

FROM ${PYTHON_IMAGE} AS build
ARG ACCELERATOR=cpu
# pip trusts the system's certificates (where a build host may mount its own, e.g. a proxy's) and
# keeps downloads in a cache mount: shared by the builds of every image, carried by none.
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_CERT=/etc/ssl/certs/ca-certificates.crt
RUN python3 -m venv /opt/venv
# Dependencies first (a layer that changes only with the lock), then the project itself.
COPY requirements.lock deploy/docker/requirements/generator*.txt /tmp/requirements/
RUN --mount=type=cache,target=/root/.cache/pip \
    case "$ACCELERATOR" in \
      cpu) runtime="" ;; \
      cuda12|tpu) runtime="/tmp/requirements/generator-$ACCELERATOR.txt" ;; \
      *) echo "ACCELERATOR must be cpu, cuda12 or tpu, not '$ACCELERATOR'" >&2; exit 1 ;; \
    esac \
 && /opt/venv/bin/pip install -c /tmp/requirements/requirements.lock \
      -r /tmp/requirements/generator.txt ${runtime:+-r "$runtime"}
COPY pyproject.toml /src/
COPY services /src/services
RUN --mount=type=cache,target=/root/.cache/pip /opt/venv/bin/pip install --no-deps /src

FROM ${PYTHON_IMAGE}
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /tmp --shell /usr/sbin/nologin mrt
COPY --from=build /opt/venv /opt/venv
# Model files are not in the image: they are mounted at MRT_ASSETS_DIR. The NVIDIA runtime mounts
# the driver's compute libraries only when asked to.
ENV PATH=/opt/venv/bin:$PATH HOME=/tmp PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    MRT_PORT=50053 MRT_METRICS_PORT=9093 MRT_ASSETS_DIR=/assets \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
EXPOSE 50053 9093
ENTRYPOINT ["python", "-m", "services.generator"]
