"""The device check: everything a lent GPU should tell us, in one command of under 8 minutes.

    python3 bench/device_check.py --json device-check.json

On one CUDA GPU, in this order (each part's result saved as it comes, so a
run stopped early keeps what it measured):

1. ``tests``: every GPU-marked test (``pytest -m gpu``), with its counts;
2. ``limit``: ResNet18's forwards/s in bf16 autocast and in true fp32 (TF32
   off, as the replicas run it), the best of two batch sizes;
3. ``replica_bf16`` and ``workers_bf16``: ``xai-batch explain --precision
   bf16`` with ``--stages replica`` and ``--stages workers`` at 1000 samples
   on 64 images, in steady state (the 64-image run's explain phase minus a
   1-image run's), each as a share of the bf16 limit, with job.json's replica
   waiting and images per device call;
4. ``replica_fp32`` and ``fidelity``: the same 64 images in true fp32, and
   bf16's agreement with it (top-5 superpixels and signs, labels, mean
   |Δweight|).

It ends with one JSON summary on stdout, the targets of issue 32 beside the
figures (replica's steady state ≥ 0.8 of the limit, replicas waiting < 10%).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu import end_to_end, explain, fidelity, measure_limit  # noqa: E402
from speed import make_checkpoint, make_images  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def gpu_tests(timeout: int) -> dict:
    """Every GPU-marked test, run here: counts, exit status and the last lines of its output."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                           os.path.join(ROOT, "tests")], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    counts = {word: int(number) for number, word in re.findall(r"(\d+) (passed|failed|skipped|error)", done.stdout)}
    return {"exit_status": done.returncode, **counts, "seconds": round(time.perf_counter() - started, 1),
            "tail": done.stdout[-1500:] if done.returncode else done.stdout[-200:]}


def stage_run(paths: list[str], work: str, checkpoint: str, samples: int, stages: str, limit: float) -> dict:
    """``explain --precision bf16 --stages STAGES`` in steady state, as a share of ``limit`` (forwards/s)."""
    run = end_to_end(paths, work, checkpoint, samples, ["--precision", "bf16", "--stages", stages],
                     f"bf16-{stages}")
    return {"steady_images_per_s": run["steady_images_per_s"],
            "share_of_bf16_limit": run["steady_images_per_s"] * samples / limit,
            "end_to_end_images_per_s": run["images_per_s"], "stages": run["stages"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--json", required=True)
    parser.add_argument("--tests-timeout", type=int, default=240)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/device_check.py needs a CUDA GPU; this machine has none")
    results: dict = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cpus": os.cpu_count(),
                     "args": vars(args)}

    def part(name: str, measure) -> dict | None:
        started = time.perf_counter()
        try:
            value = measure()
        except Exception as exc:  # noqa: BLE001 - one broken part must not cost the others
            value = {"error": f"{type(exc).__name__}: {exc}"[-1500:]}
        results[name] = value
        print(f"{name} ({time.perf_counter() - started:.0f} s): {json.dumps(value)[:400]}", file=sys.stderr,
              flush=True)
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
        return None if "error" in value else value

    work = tempfile.mkdtemp(prefix="xai-device-check-")
    paths = make_images(os.path.join(work, "images"), args.images)
    checkpoint = os.path.join(work, "model.pt")
    model = make_checkpoint(checkpoint, 1000)
    samples = args.num_samples
    part("tests", lambda: gpu_tests(args.tests_timeout))
    limit = part("limit", lambda: measure_limit(model, [512, 1024], 1.0))
    bf16_limit = limit["bf16"]["forwards_per_s"] if limit else float("nan")
    replica = part("replica_bf16", lambda: stage_run(paths, work, checkpoint, samples, "replica", bf16_limit))
    workers = part("workers_bf16", lambda: stage_run(paths, work, checkpoint, samples, "workers", bf16_limit))
    part("replica_fp32", lambda: explain(os.path.dirname(paths[0]), os.path.join(work, "all-fp32"), checkpoint,
                                         samples, ["--precision", "fp32", "--stages", "replica"]))
    agreement = part("fidelity", lambda: fidelity(os.path.join(work, "all-fp32"),
                                                  os.path.join(work, "all-bf16-replica")))
    waiting = replica["stages"]["replica_waiting"] if replica else None
    summary = {
        "gpu": results["gpu"],
        "tests": {key: results["tests"].get(key) for key in ("exit_status", "passed", "failed", "skipped")},
        "limit_forwards_per_s": {p: limit[p]["forwards_per_s"] for p in ("bf16", "fp32")} if limit else None,
        "replica_share_of_bf16_limit": replica and round(replica["share_of_bf16_limit"], 3),
        "workers_share_of_bf16_limit": workers and round(workers["share_of_bf16_limit"], 3),
        "replica_waiting": waiting,
        "images_per_device_call": replica and replica["stages"]["images_per_device_call"],
        "bf16_top5_agreement_with_fp32": agreement and agreement["top5_equal"],
        "targets_met": {
            "replica >= 0.8 of the limit": bool(replica and replica["share_of_bf16_limit"] >= 0.8),
            "replicas waiting < 10%": bool(waiting and max(waiting) < 0.10),
            "gpu tests pass": results["tests"].get("exit_status") == 0,
        },
    }
    results["summary"] = summary
    with open(args.json, "w") as handle:
        json.dump(results, handle, indent=2)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
