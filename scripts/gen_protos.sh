#!/usr/bin/env bash
# Generate Python gRPC stubs for protos/mrt/v1 into a package under services/common.
# Usage: gen_protos.sh PYTHON OUT_DIR [--check]
set -euo pipefail
python=$1; out=$2; mode=${3:-write}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
"$python" -m grpc_tools.protoc -Iprotos --python_out="$tmp" --pyi_out="$tmp" --grpc_python_out="$tmp" protos/mrt/v1/*.proto
# protoc writes absolute imports (`from mrt.v1 import ...`); make them imports of our package.
pkg=${out//\//.}
find "$tmp" -name '*.py' -exec sed -i "s/^from mrt\.v1 import/from ${pkg}.mrt.v1 import/" {} +
touch "$tmp/__init__.py" "$tmp/mrt/__init__.py" "$tmp/mrt/v1/__init__.py"
if [ "$mode" = "--check" ]; then
  if ! diff -r -q -x __pycache__ "$tmp" "$out" >/dev/null; then
    diff -r -x __pycache__ "$tmp" "$out" | head -40
    echo "generated stubs in $out are stale: run 'make protos' and commit the result" >&2
    exit 1
  fi
  echo "protos: stubs up to date"
else
  rm -rf "$out"; mkdir -p "$(dirname "$out")"; cp -r "$tmp" "$out"
  echo "protos: wrote $out"
fi
