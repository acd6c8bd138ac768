"""Ray job entrypoint: a nightly audit of an image folder.

Runs as the driver of a Ray job, on the cluster's head node:

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/audit.py SOURCE --out OUT [--previous OLD_OUT] [options]

It takes exactly the options of ``xai-batch audit`` (same Click command),
joins the cluster it runs in, and exits 3 when a ``--fail-on`` condition is
met, which Ray reports as a failed job with that exit code.
"""

from xai_batch.cli import audit


def main() -> None:
    audit(prog_name="jobs/audit.py")


if __name__ == "__main__":
    main()
