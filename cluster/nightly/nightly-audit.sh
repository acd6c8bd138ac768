#!/bin/sh
# One night of a nightly audit: audit SOURCE into AUDITS/<date>, compared with
# the latest earlier audit in AUDITS, so only new and changed images cost model
# time and the findings say what changed since.
#
#   cluster/nightly/nightly-audit.sh SOURCE AUDITS [xai-batch audit options...]
#
# AUDITS is a folder on storage this script and the cluster both reach (a local
# disk for one machine, NFS or a ReadWriteMany volume for a cluster). With
# RAY_JOB_ADDRESS (a Jobs API URL, e.g. http://127.0.0.1:8265) the audit is
# submitted there as a Ray job and followed; without it, it runs here (inside a
# Ray job, such as a KubeRay RayJob, it joins that job's cluster).
# AUDIT_DATE overrides today's date (UTC), XAI_BATCH the command.
# Exit status: the audit's own; 3 when a --fail-on condition is met.
set -eu
if [ $# -lt 2 ]; then
    echo "usage: $0 SOURCE AUDITS [xai-batch audit options...]" >&2
    exit 2
fi
source=$1
audits=$2
shift 2
today=${AUDIT_DATE:-$(date -u +%F)}
previous=""
for folder in "$audits"/[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]; do  # in date order
    name=$(basename "$folder")
    if [ "$name" \< "$today" ] && [ -f "$folder/audit.json" ]; then
        previous=$folder
    fi
done
if [ -n "$previous" ]; then
    set -- --previous "$previous" "$@"
fi
set -- "$source" --out "$audits/$today" --no-progress "$@"
echo "audit of $source into $audits/$today${previous:+, against $previous}" >&2
if [ -n "${RAY_JOB_ADDRESS:-}" ]; then
    exec "${XAI_BATCH:-xai-batch}" submit --address "$RAY_JOB_ADDRESS" --wait audit "$@"
fi
exec "${XAI_BATCH:-xai-batch}" audit "$@"
