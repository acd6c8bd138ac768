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
#
# AUDIT_LOG=FILE sends the night's output (this script's and the audit's) to
# FILE instead, and prints FILE only when the audit fails: cron mails a job's
# output, so a night is mailed only then. The log names the data and what the
# audit found, so it stays private: FILE is written afresh each night, owner-only
# (0600), in a folder made owner-only (0700) when it does not exist, and a folder
# that is another user's, or that its group or others may write in, is refused.
# Keep it out of /tmp: a fixed name there is one any user can read, or make
# first as a link to a file of yours.
# Exit status: the audit's own; 3 when a --fail-on condition is met; 2 for a
# usage error or a log folder that is not private.
set -eu
if [ $# -lt 2 ]; then
    echo "usage: $0 SOURCE AUDITS [xai-batch audit options...]" >&2
    exit 2
fi
source=$1
audits=$2
shift 2
if [ -n "${AUDIT_LOG:-}" ]; then
    log_dir=$(dirname "$AUDIT_LOG")
    (umask 077 && mkdir -p "$log_dir")
    if [ ! -O "$log_dir" ] || [ -n "$(find -H "$log_dir" -prune \( -perm -020 -o -perm -002 \) -print)" ]; then
        echo "$0: the log folder $log_dir is another user's, or others may write in it: choose an AUDIT_LOG" \
            "in a folder of your own (chmod 700 it)" >&2
        exit 2
    fi
    rm -f "$AUDIT_LOG"  # a fresh file each night, never one made for us
    (umask 077 && set -C && : > "$AUDIT_LOG")
    exec 3>&1 >>"$AUDIT_LOG" 2>&1  # 3: where a failing night's log is printed
fi
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
    set -- submit --address "$RAY_JOB_ADDRESS" --wait audit "$@"
else
    set -- audit "$@"
fi
if [ -z "${AUDIT_LOG:-}" ]; then
    exec "${XAI_BATCH:-xai-batch}" "$@"
fi
status=0
"${XAI_BATCH:-xai-batch}" "$@" 3>&- || status=$?
if [ "$status" -ne 0 ]; then
    cat "$AUDIT_LOG" >&3
fi
exit "$status"
