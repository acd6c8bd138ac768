"""Ray job entrypoint: explain an image folder into a Parquet manifest.

Runs as the driver of a Ray job, on the cluster's head node:

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/explain.py SOURCE --out OUT [options]

It takes exactly the options of ``xai-batch explain`` (same Click command)
and joins the cluster it runs in (``RAY_ADDRESS`` is set for job drivers).
"""

from xai_batch.cli import explain


def main() -> None:
    explain(prog_name="jobs/explain.py")


if __name__ == "__main__":
    main()
