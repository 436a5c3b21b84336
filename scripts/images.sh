#!/usr/bin/env bash
# Build the service images with Docker or, where no Docker engine answers, with buildah.
#
#   scripts/images.sh build SERVICE...   build deploy/docker/SERVICE.Dockerfile for each SERVICE
#                                        as REGISTRYmrt-SERVICE:VERSION (the generator:
#                                        VERSION-ACCELERATOR); `make images` runs this
#   scripts/images.sh base [IMAGE]       make a Debian bookworm base with Python 3.11 from this
#                                        machine's Debian apt sources (mmdebstrap, no registry)
#                                        and load it as IMAGE (default localhost/mrt-python:3.11-bookworm);
#                                        kept: an IMAGE already there is reused
#   scripts/images.sh tool               print the tool that would build: docker or buildah
#   scripts/images.sh sources            print the apt sources file `base` would use
#
# Environment:
#   CONTAINER_TOOL     docker or buildah (default: docker when its engine answers, else buildah)
#   PYTHON_IMAGE       the base image (default: the Dockerfiles' pinned python:3.11-slim-bookworm)
#   VERSION, REGISTRY  image names (REGISTRY ends with "/"); ACCELERATOR: cpu, cuda12 or tpu
#   DEBIAN_SOURCES     the apt sources the base is made from (default: the first of
#                      /etc/apt/sources.list.d/debian.sources and /etc/apt/sources.list)
# buildah's own settings apply: BUILDAH_LAYERS=true keeps a layer per instruction for reuse by
# later builds, CONTAINERS_STORAGE_CONF points at another storage (e.g. driver "vfs"). Builds run
# with --isolation chroot (no OCI runtime needed) and trust the build host's certificates
# (/etc/ssl/certs/ca-certificates.crt, mounted read-only for pip).
set -euo pipefail
cd "$(dirname "$0")/.."

DEFAULT_BASE_IMAGE=localhost/mrt-python:3.11-bookworm
HOST_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

die() { echo "images.sh: $*" >&2; exit 1; }

container_tool() {
  if [ -n "${CONTAINER_TOOL:-}" ]; then
    echo "$CONTAINER_TOOL"
  elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    echo docker
  elif command -v buildah >/dev/null; then
    echo buildah
  else
    die "neither a Docker engine nor buildah answers: install one (Debian: apt-get install buildah)"
  fi
}

image_exists() {  # TOOL IMAGE
  case "$1" in
    docker) docker image inspect "$2" >/dev/null 2>&1 ;;
    buildah) buildah inspect --type image "$2" >/dev/null 2>&1 ;;
  esac
}

debian_sources() {
  local candidate
  if [ -n "${DEBIAN_SOURCES:-}" ]; then
    [ -s "$DEBIAN_SOURCES" ] || die "DEBIAN_SOURCES=$DEBIAN_SOURCES is not a readable sources file"
    echo "$DEBIAN_SOURCES"
    return
  fi
  for candidate in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
    if [ -s "$candidate" ]; then echo "$candidate"; return; fi
  done
  die "no Debian apt sources found (set DEBIAN_SOURCES to a sources.list or deb822 .sources file)"
}

make_base() {  # IMAGE
  local tool image=$1 sources container
  tool=$(container_tool)
  if image_exists "$tool" "$image"; then
    echo "base image $image is already there ($tool); remove it to make it again"
    return
  fi
  command -v mmdebstrap >/dev/null || die "mmdebstrap is not installed (Debian: apt-get install mmdebstrap)"
  sources=$(debian_sources)
  tmp=$(mktemp -d)  # not local: the EXIT trap reads it after this function returns
  trap 'rm -rf "$tmp"' EXIT
  echo "making $image from the Debian bookworm packages of $sources"
  # minbase: apt, dpkg, coreutils and useradd (passwd); bookworm's python3 is Python 3.11.
  mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    bookworm "$tmp/rootfs.tar" "$sources"
  case "$tool" in
    docker)
      docker import --change 'CMD ["python3"]' "$tmp/rootfs.tar" "$image" >/dev/null ;;
    buildah)
      container=$(buildah from scratch)
      buildah add --quiet "$container" "$tmp/rootfs.tar" / >/dev/null
      buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --cmd python3 "$container"
      buildah commit --quiet --rm "$container" "$image" >/dev/null ;;
  esac
  echo "base image $image is ready ($tool)"
}

build() {  # SERVICE...
  local tool service tag
  local -a args
  tool=$(container_tool)
  [ $# -gt 0 ] || die "name the services to build, e.g. gateway embedder generator"
  for service in "$@"; do
    [ -f "deploy/docker/$service.Dockerfile" ] || die "no deploy/docker/$service.Dockerfile"
    tag="${REGISTRY:-}mrt-$service:${VERSION:?set VERSION}"
    args=(-f "deploy/docker/$service.Dockerfile")
    if [ "$service" = generator ]; then
      tag+="-${ACCELERATOR:-cpu}"
      args+=(--build-arg "ACCELERATOR=${ACCELERATOR:-cpu}")
    fi
    [ -z "${PYTHON_IMAGE:-}" ] || args+=(--build-arg "PYTHON_IMAGE=$PYTHON_IMAGE")
    echo "building $tag with $tool"
    case "$tool" in
      docker)
        docker build "${args[@]}" -t "$tag" . ;;
      buildah)
        [ ! -s "$HOST_CA_BUNDLE" ] || args+=(--volume "$HOST_CA_BUNDLE:$HOST_CA_BUNDLE:ro")
        buildah build --isolation chroot "${args[@]}" -t "$tag" . ;;
      *) die "CONTAINER_TOOL must be docker or buildah, not '$tool'" ;;
    esac
  done
}

case "${1:-}" in
  build) shift; build "$@" ;;
  base) make_base "${2:-$DEFAULT_BASE_IMAGE}" ;;
  tool) container_tool ;;
  sources) debian_sources ;;
  *) die "usage: scripts/images.sh build SERVICE... | base [IMAGE] | tool | sources" ;;
esac
