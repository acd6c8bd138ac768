#!/bin/sh
# Start a one-machine Ray cluster from the project's venv, every port bound to
# 127.0.0.1, the dashboard (and its Jobs API) at http://127.0.0.1:8265, with
# token authentication on: a job, a driver or a dashboard request without the
# cluster's token is refused.
#
# The token is RAY_AUTH_TOKEN when set, else the file RAY_AUTH_TOKEN_PATH, else
# ~/.ray/auth_token (Ray's own order). When that file does not exist this
# script writes a new random 256-bit token there, readable by its owner only;
# it never replaces one that exists, and it refuses to start (exit 2, before
# Ray) with one that is empty, that belongs to another user, or that its group
# or others may read or write: chmod 600 it. `xai-batch submit` and
# `xai-batch jobs` read the same place, and refuse the same files; Ray's own
# CLI also needs RAY_AUTH_MODE=token.
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
export RAY_AUTH_MODE=token  # always: this script does not start an open cluster
if [ -z "${RAY_AUTH_TOKEN:-}" ]; then
    token_file="${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}"
    if [ ! -e "$token_file" ]; then
        (
            umask 077
            set -C  # noclobber: never write through a link or into a file someone made meanwhile
            mkdir -p "$(dirname "$token_file")"
            od -An -tx1 -N32 /dev/urandom | tr -d ' \n' > "$token_file"
        )
        echo "start.sh: wrote a new cluster token to $token_file (owner-only)" >&2
    elif [ ! -s "$token_file" ]; then
        echo "start.sh: the token file $token_file is empty; remove it to have a new one written" >&2
        exit 2
    elif [ ! -O "$token_file" ]; then
        echo "start.sh: the token file $token_file belongs to another user, who can read or replace the" \
            "cluster's token; refusing to start: copy it to a file of your own, chmod 600 that file and point" \
            "RAY_AUTH_TOKEN_PATH at it" >&2
        exit 2
    elif [ -n "$(find -H "$token_file" -prune \( -perm -040 -o -perm -020 -o -perm -010 \
                 -o -perm -004 -o -perm -002 -o -perm -001 \) -print)" ]; then  # any bit of 077, as xai-batch
        echo "start.sh: the token file $token_file is open to its group or others, who could read or replace" \
            "the cluster's token; refusing to start: chmod 600 $token_file, or remove it to have a new one" \
            "written (others may have read this one)" >&2
        exit 2
    fi
fi
exec "$RAY" start --head \
    --node-ip-address 127.0.0.1 \
    --port "${RAY_PORT:-6379}" \
    --dashboard-host 127.0.0.1 \
    --dashboard-port "${RAY_DASHBOARD_PORT:-8265}" \
    ${RAY_NUM_CPUS:+--num-cpus "$RAY_NUM_CPUS"} \
    ${RAY_NUM_GPUS:+--num-gpus "$RAY_NUM_GPUS"} \
    "$@"
