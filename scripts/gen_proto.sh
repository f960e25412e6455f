#!/usr/bin/env bash
# Regenerate src/mqtt_anomaly/_proto/sparkplug_b_pb2.py(i) from sparkplug_b.proto with protoc
# from grpcio-tools (a development tool only; the runtime needs protobuf alone):
#   PYTHON=.venv/bin/python scripts/gen_proto.sh   (grpcio-tools is in the dev extra)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../src"
PY="${PYTHON:-python3}"
# the path from src/ is the schema's name in protobuf's process-wide descriptor pool: unique,
# so another Sparkplug library's "sparkplug_b.proto" can be loaded beside it
"$PY" -m grpc_tools.protoc --proto_path=. --python_out=. --pyi_out=. \
  mqtt_anomaly/_proto/sparkplug_b.proto
cd mqtt_anomaly/_proto
version="$("$PY" -c 'import grpc_tools, importlib.metadata as m; print(m.version("grpcio-tools"))')"
for f in sparkplug_b_pb2.py sparkplug_b_pb2.pyi; do
  { echo "# Generated from sparkplug_b.proto by scripts/gen_proto.sh (protoc of grpcio-tools"
    echo "# $version). Do not edit: change the .proto and run the script again."
    cat "$f"; } > "$f.tmp" && mv "$f.tmp" "$f"
done
