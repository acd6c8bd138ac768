#!/bin/sh
# Start a one-machine Ray cluster from the project's venv, every port bound to
# 127.0.0.1, the dashboard (and its Jobs API) at http://127.0.0.1:8265.
#
# The venv's bin/ goes first on PATH, so Ray jobs that run `python ...` get
# the venv's Python with xai-batch's pinned dependencies. Ray rewrites a
# loopback address to the machine's own IP unless
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, so export that in the drivers' shells
# too before joining with `--address 127.0.0.1:6379`; `xai-batch submit`
# talks to the dashboard and needs nothing of the kind.
# Stop it with cluster/local/stop.sh (which stops every Ray on this machine).
set -eu
cd "$(dirname "$0")/../.."
VENV_BIN="$(pwd)/.venv/bin"
RAY="${RAY:-$VENV_BIN/ray}"
export PATH="$(dirname "$RAY"):$PATH"
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
exec "$RAY" start --head \
    --node-ip-address 127.0.0.1 \
    --port "${RAY_PORT:-6379}" \
    --dashboard-host 127.0.0.1 \
    --dashboard-port "${RAY_DASHBOARD_PORT:-8265}" \
    ${RAY_NUM_CPUS:+--num-cpus "$RAY_NUM_CPUS"} \
    ${RAY_NUM_GPUS:+--num-gpus "$RAY_NUM_GPUS"} \
    "$@"
