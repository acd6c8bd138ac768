#!/bin/sh
# Start a one-machine Ray cluster from the project's venv, every port bound to
# 127.0.0.1. Ray rewrites a loopback address to the machine's own IP unless
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, so export that in the shell of the
# drivers too, then join with `xai-batch explain ... --address 127.0.0.1:6379`.
# Stop it with cluster/local/stop.sh (which stops every Ray on this machine).
set -eu
cd "$(dirname "$0")/../.."
RAY="${RAY:-.venv/bin/ray}"
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
exec "$RAY" start --head \
    --node-ip-address 127.0.0.1 \
    --port "${RAY_PORT:-6379}" \
    --dashboard-host 127.0.0.1 \
    --dashboard-port "${RAY_DASHBOARD_PORT:-8265}" \
    ${RAY_NUM_CPUS:+--num-cpus "$RAY_NUM_CPUS"} \
    ${RAY_NUM_GPUS:+--num-gpus "$RAY_NUM_GPUS"} \
    "$@"
