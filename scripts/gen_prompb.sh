#!/usr/bin/env bash
# Regenerate m3migrate/prompb/prompb_pb2.py (+ .pyi) from prompb.proto with grpcio-tools' protoc.
#   pip install grpcio-tools && scripts/gen_prompb.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
[ -x .venv/bin/python ] && PY=.venv/bin/python
"$PY" -m grpc_tools.protoc -I . --python_out=. --pyi_out=. m3migrate/prompb/prompb.proto
echo "generated m3migrate/prompb/prompb_pb2.py"
