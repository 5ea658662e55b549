#!/usr/bin/env bash
# Regenerates the Python stubs of the kyb.v1 contracts (protos/kyb/v1/*.proto) into src/kyb/v1/.
#
# protoc names each module after the proto's path under -Iprotos, so kyb/v1/gateway.proto becomes
# the importable module kyb.v1.gateway_pb2 and the generated imports (`from kyb.v1 import ...`)
# resolve natively: no sys.path tricks. The stubs are committed and never edited by hand;
# tests/protos/test_stubs_fresh.py fails when they are stale. Run from anywhere:
#   scripts/gen_protos.sh            (uses .venv/bin/python when present, else python3)
#   scripts/gen_protos.sh OUT        (writes OUT/kyb/v1/ instead: what the test compares)
set -euo pipefail
out=$(realpath -m "${1:-src}")
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}"
mkdir -p "$out"
"$PYTHON" -m grpc_tools.protoc -Iprotos --python_out="$out" --grpc_python_out="$out" --pyi_out="$out" protos/kyb/v1/*.proto
