"""What an image costs outside the model: xai-batch's marginal time per image at few samples, each --stages.

At 16 samples the model is a small part of an image's cost (as it is on a
GPU at any sample count), so what is left is the work around it: decoding,
quickshift, sampling, the surrogate and the pipeline's hand-offs. One run, on
the same images and checkpoint, measures:

1. quickshift alone: lime's ``SegmentationAlgorithm`` (scikit-image's
   Cython), and the torch port the replicas run (``quickshift_on_device``
   on this machine's device, ``--batch`` images a call), per image;
2. the model alone: ONNX Runtime (what ``--engine auto`` runs on a CPU) on
   each image's ``--num-samples`` perturbations, one thread, so its seconds
   are core-seconds;
3. lime's own loop: ``explain_instance`` with the seed's ``batch_predict`` at
   ``--num-samples``, one image after another in this process;
4. ``xai-batch explain --stages S`` for each S: the marginal time per image,
   the explain phases of a one-image run and an all-image run differenced
   (Ray's start, loading the model and filling the pipeline cancel out),
   with the all-image run's stage times and replica waiting from job.json;
5. the replica's stage as a GPU runs it, counted on this CPU: the tensor
   operations (each one a kernel launch on a device) per image of
   ``explain_whole`` with lime's maths on the device (segmentation, sampling,
   surrogate, masks; the model's own excluded) over ``--op-images`` images in
   calls of ``--per-call``, and from them a *projection* of a GPU's images/s
   at 1000 samples: launches at 5-10 µs each, beside the model's forwards at
   the H200's measured bf16 limit (BENCHMARKS.md). A projection, not a
   measurement: it leaves out the device's arithmetic and memory traffic.

    .venv/bin/python bench/per_image.py --images 24 --num-samples 16
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import torch

from torch.utils._python_dispatch import TorchDispatchMode

from speed import load_pixels, machine, make_checkpoint, make_images, measure_baseline, run_xai_batch
from xai_batch.maths.device_superpixels import quickshift_on_device
from xai_batch.maths.superpixels import Quickshift

H200_BF16_FORWARDS_PER_S = 39_888  # BENCHMARKS.md: ResNet18, bf16 autocast, channels-last, batch 1024
LAUNCH_SECONDS = (5e-6, 10e-6)  # what eager PyTorch spends launching one operation on a GPU, roughly


class OperationCount(TorchDispatchMode):
    """Counts the tensor operations run while it is active and not ``paused`` (each a launch on a device)."""

    def __init__(self) -> None:
        super().__init__()
        self.operations = 0
        self.paused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.operations += not self.paused
        return func(*args, **(kwargs or {}))


def quickshift_alone(paths: list[str], batch: int, device: str) -> dict:
    """Seconds per image of lime's quickshift, and of the torch port on ``device`` in batches."""
    from lime.wrappers.scikit_image import SegmentationAlgorithm

    images = [load_pixels(path) for path in paths]
    segmenter = SegmentationAlgorithm("quickshift", kernel_size=4, max_dist=200, ratio=0.2, random_seed=0)
    started = time.perf_counter()
    for image in images:
        segmenter(image)
    lime_seconds = (time.perf_counter() - started) / len(images)
    quickshift_on_device(np.stack(images[:1]), Quickshift(), device)  # warm-up
    started = time.perf_counter()
    for start in range(0, len(images), batch):
        quickshift_on_device(np.stack(images[start : start + batch]), Quickshift(), device)
    return {"lime_seconds_per_image": lime_seconds,
            "torch_seconds_per_image": (time.perf_counter() - started) / len(images), "device": device}


def model_alone(checkpoint: str, paths: list[str], samples: int) -> dict:
    """Core-seconds per image of ONNX Runtime on one thread, on each image's ``samples`` perturbations."""
    from xai_batch.engines.onnx_engine import OnnxEngine
    from xai_batch.engines.onnx_export import onnx_spec
    from xai_batch.models import parse_checkpoint
    from xai_batch.maths import hidden_image, quickshift_segments, sample_rows

    engine = OnnxEngine(onnx_spec(parse_checkpoint(open(checkpoint, "rb").read(), check=False)), threads=1)
    inputs = []
    for index, path in enumerate(paths):
        image = load_pixels(path)
        segments = quickshift_segments(image, Quickshift(), index)
        rows = sample_rows(index, samples, int(segments.max()) + 1).astype(np.uint8)
        inputs.append((image, hidden_image(image, segments, 0), segments, rows))
    engine.predict(*inputs[0])  # warm-up
    started = time.perf_counter()
    for image in inputs:
        engine.predict(*image)
    return {"core_seconds_per_image": (time.perf_counter() - started) / len(paths), "engine": engine.version}


def replica_operations(checkpoint: str, paths: list[str], samples: int, per_call: int) -> dict:
    """Tensor operations per image of the replica's stage with lime's maths on the device, the model's
    excluded, over ``paths`` in calls of ``per_call`` images; quickshift's share counted on its own."""
    from xai_batch.config import ExplainConfig
    from xai_batch.distributed.replicas import ModelReplica
    from xai_batch.explaining.steps import decode
    from xai_batch.explaining.whole import explain_whole
    from xai_batch.manifest import RowContext
    from xai_batch.models import resolve_model
    from xai_batch.storage import locate

    config = ExplainConfig(source=os.path.dirname(paths[0]), out=os.path.dirname(paths[0]) + "-unused",
                           checkpoint=checkpoint, num_samples=samples, seed=0)
    model = resolve_model(checkpoint)
    context = RowContext(model_id=model.model_id, class_names=model.class_names, config_hashes={"lime": "-"},
                         num_samples=samples, top_labels=1, num_features=config.num_features,
                         preprocessing=model.preprocessing)
    replica = ModelReplica(model.payload, "fp32", config.batch_size, torch.get_num_threads())
    source = locate(os.path.dirname(paths[0]))
    counter = OperationCount()

    def predict(payload, rows):  # the model's own operations are not the stage's
        counter.paused = True
        try:
            return replica._predict(payload, rows)
        finally:
            counter.paused = False

    images = [decode(source, os.path.basename(path), config, model.preprocessing) for path in paths]
    started, failed = time.perf_counter(), 0
    with counter:
        for start in range(0, len(images), per_call):
            done = explain_whole(images[start : start + per_call], config, context, predict, replica._gradients,
                                 "cpu", on_device=True)
            failed += sum(not ok for _, _, ok in done.outcomes)
    seconds = time.perf_counter() - started
    with OperationCount() as segmenting:
        quickshift_on_device(np.stack([pixels.pixels for _, pixels in images[:2]]), config.segmentation)
    per_image = counter.operations / len(images)
    model_seconds = 1000 / H200_BF16_FORWARDS_PER_S
    projected = [1 / (model_seconds + per_image * launch) for launch in LAUNCH_SECONDS]
    return {"images": len(images), "per_call": per_call, "failed": failed,
            "operations_per_image": round(per_image, 1), "quickshift_operations_per_call": segmenting.operations,
            "cpu_seconds_per_image": seconds / len(images),
            "projection_h200_images_per_s_at_1000_samples": [round(rate, 1) for rate in projected],
            "projection_share_of_forward_limit": [round(rate * model_seconds, 3) for rate in projected]}


def marginal(paths: list[str], work: str, checkpoint: str, samples: int, stages: str, extra: list[str]) -> dict:
    """The seconds per image an all-image run adds over a one-image run, and its job.json stage times."""
    single = os.path.join(work, "single")
    os.makedirs(single, exist_ok=True)
    os.link(paths[0], os.path.join(single, os.path.basename(paths[0])))
    options = ["--stages", stages, *extra]
    one = run_xai_batch(single, os.path.join(work, "out-one"), checkpoint, str(samples), options)
    every = run_xai_batch(os.path.dirname(paths[0]), os.path.join(work, "out"), checkpoint, str(samples), options)
    extra_seconds = every["timings"]["explain_seconds"] - one["timings"]["explain_seconds"]
    with open(os.path.join(work, "out", "job.json")) as handle:
        stage_times = json.load(handle)["runs"][-1]["stages"]
    return {"seconds_per_image": extra_seconds / (every["images"] - 1), "one_image_job_seconds": one["seconds"],
            "stages": stage_times}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--classes", type=int, default=1000, help="the model's outputs (ImageNet: 1000)")
    parser.add_argument("--stages", nargs="+", default=["workers", "replica"])
    parser.add_argument("--batch", type=int, default=4, help="images per quickshift_on_device call")
    parser.add_argument("--op-images", type=int, default=64, help="images whose replica operations are counted "
                        "(0: none)")
    parser.add_argument("--per-call", type=int, default=32, help="images a replica call takes, as on CUDA")
    parser.add_argument("--xai-batch-args", default="", help="extra options for xai-batch explain")
    parser.add_argument("--json", help="write every figure here too")
    args = parser.parse_args()

    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    work = tempfile.mkdtemp(prefix="xai-bench-")
    paths = make_images(os.path.join(work, "images"), args.images)
    checkpoint = os.path.join(work, "model.pt")
    model = make_checkpoint(checkpoint, args.classes)
    print(f"{args.images} images, {args.num_samples} samples, ResNet18 with {args.classes} classes, {cores} cores",
          flush=True)
    results: dict = {"machine": machine(), "args": vars(args)}
    results["quickshift"] = quickshift_alone(paths, args.batch, device)
    print(f"  quickshift: {results['quickshift']}", flush=True)
    results["model"] = model_alone(checkpoint, paths, args.num_samples)
    print(f"  the model alone: {results['model']}", flush=True)
    results["lime_loop"] = measure_baseline(model, paths, args.num_samples)
    print(f"  lime's loop: {results['lime_loop']}", flush=True)
    runs = {}
    for stages in args.stages:
        runs[stages] = marginal(paths, os.path.join(work, stages), checkpoint, args.num_samples, stages,
                                args.xai_batch_args.split())
        print(f"  xai-batch --stages {stages}: {runs[stages]}", flush=True)
    results["xai_batch"] = runs
    if args.op_images:
        op_paths = make_images(os.path.join(work, "op-images"), args.op_images)
        results["replica_operations"] = replica_operations(checkpoint, op_paths, args.num_samples, args.per_call)
        print(f"  the replica's stage, lime's maths on the device: {results['replica_operations']}", flush=True)

    lime_per_image = results["lime_loop"]["seconds"] / args.images
    quickshift = results["quickshift"]["lime_seconds_per_image"]
    print(f"\nlime's quickshift {quickshift:.3f} s/image; the torch port on {device} "
          f"{results['quickshift']['torch_seconds_per_image']:.3f}; lime's loop {lime_per_image:.3f} s/image")
    print("\n| --stages | s/image (marginal) | core-s/image | × quickshift | × lime's loop | replica waiting |"
          "\n|---|---:|---:|---:|---:|---:|")
    for stages, run in runs.items():
        seconds = run["seconds_per_image"]
        waiting = ", ".join(f"{share:.0%}" for share in run["stages"]["replica_waiting"])
        print(f"| {stages} | {seconds:.3f} | {seconds * cores:.2f} | {seconds / quickshift:.1f} | "
              f"{lime_per_image / seconds:.2f} | {waiting} |")
    model = results["model"]["core_seconds_per_image"]
    print(f"\n2x lime's loop on {cores} cores leaves {lime_per_image * cores / 2:.2f} core-s per image; quickshift "
          f"({quickshift:.2f}) and the model's {args.num_samples} forwards ({model:.2f}, one thread) take "
          f"{quickshift + model:.2f}: at best {cores * lime_per_image / (quickshift + model):.2f}x lime's loop")
    print("\nbusy seconds by stage (all images):")
    for stages, run in runs.items():
        busy = ", ".join(f"{stage} {seconds:.2f}" for stage, seconds in run["stages"]["busy_seconds"].items())
        print(f"  {stages}: {busy}; {run['stages']['settled_pixels']} pixels settled on the CPU")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
