#!/bin/sh
# Stop the local Ray cluster started by cluster/local/start.sh.
set -eu
cd "$(dirname "$0")/../.."
exec "${RAY:-.venv/bin/ray}" stop "$@"
