"""``LimeImageExplainer.explain_instances`` against the seeds' loop, with the user's own ``classifier_fn``.

One run, the same images and the same ``batch_predict`` (the seeds' function
over a ResNet18 object, 1000 classes):

1. the function's own limit: perturbed images per second it answers at the
   batch size the replicas call it with (``--batch-size``), in this process
   and in as many processes side by side as ``explain_instances`` runs
   copies of it on these CPUs; the higher is the limit;
2. the seeds' loop: lime's ``explain_instance`` on each image in turn;
3. ``explain_instances`` on one image and on all of them, each call starting
   its own local Ray: the difference is the per-image rate in steady state,
   the rest of the one-image call the fixed cost (Ray's start, the replica
   loading the shipped function, the pipeline filling);
4. ``explain_dataset`` with the model object itself (``model=``) on folders
   of the same photos: one image (the first call, which exports the network
   to ONNX into an empty cache), all of them, and one image again (the
   export cached): xai-batch's own engines then run the network, measured
   the same way, the export's cost stated apart.

    .venv/bin/python bench/instances.py --images 6 --num-samples 1000
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import skimage.data
import torch
from lime import lime_image
from PIL import Image
from torchvision import models, transforms

from speed import machine
from xai_batch import LimeImageExplainer, explain_dataset
from xai_batch.reference import seed_batch_predict

PHOTOS = ("chelsea", "astronaut", "coffee", "rocket", "cat", "immunohistochemistry", "hubble_deep_field", "retina")


def photos(count: int) -> list[Image.Image]:
    return [Image.fromarray(getattr(skimage.data, PHOTOS[i % len(PHOTOS)])()).convert("RGB") for i in range(count)]


def images(count: int) -> list[np.ndarray]:
    """The photos as the seeds crop them: what lime's loop and ``explain_instances`` get."""
    crop = transforms.Compose([transforms.Resize((256, 256)), transforms.CenterCrop(224)])
    return [np.array(crop(photo)) for photo in photos(count)]


def folder(pictures: list[Image.Image], root: str) -> str:
    """The photos as files, whole: ``explain_dataset`` frames them as the seeds do."""
    os.makedirs(root)
    for index, picture in enumerate(pictures):
        picture.save(os.path.join(root, f"{index}.png"))
    return root


def function_limit(batch_predict, pictures: list[np.ndarray], batch_size: int, seconds: float = 10.0) -> float:
    """Perturbed images per second the function answers in batches of ``batch_size``."""
    batch = np.stack([pictures[i % len(pictures)] for i in range(batch_size)])
    batch_predict(batch)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        batch_predict(batch)
        done += batch_size
    return done / (time.perf_counter() - started)


class _Copy:
    """The function in a process of its own on ``threads`` torch threads, as a replica runs it."""

    def __init__(self, batch_predict, threads: int) -> None:
        torch.set_num_threads(threads)
        self.batch_predict = batch_predict

    def limit(self, pictures, batch_size: int) -> float:
        return function_limit(self.batch_predict, pictures, batch_size)


def copies_limit(batch_predict, pictures: list[np.ndarray], batch_size: int) -> tuple[float, int]:
    """Images per second of the function in as many one-process copies as ``explain_instances`` runs on
    this machine's CPUs (each on its share of the cores), measured side by side; and that number."""
    import logging

    import ray

    from xai_batch.distributed.instances import CPU_REPLICAS

    cores = os.cpu_count() or 1
    count = max(1, min(CPU_REPLICAS, cores))
    ray.init(address="local", num_cpus=cores, include_dashboard=False, logging_level=logging.ERROR,
             log_to_driver=False)
    try:
        copies = [ray.remote(_Copy).options(num_cpus=0).remote(batch_predict, max(1, cores // count))
                  for _ in range(count)]
        return sum(ray.get([copy.limit.remote(pictures, batch_size) for copy in copies])), count
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=10, help="images per classifier_fn call in the replicas")
    parser.add_argument("--json", help="write every figure here too")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = models.resnet18(weights=None, num_classes=1000).eval()
    batch_predict = seed_batch_predict(model)
    pictures = images(args.images)
    alone = function_limit(batch_predict, pictures, args.batch_size)
    print(f"classifier_fn limit: {alone:.1f} images/s at batch {args.batch_size}, in this process", flush=True)
    in_copies, copies = copies_limit(batch_predict, pictures, args.batch_size)
    print(f"classifier_fn limit: {in_copies:.1f} images/s in {copies} processes side by side", flush=True)
    limit = max(alone, in_copies)  # the most this machine gets from the function

    started = time.perf_counter()
    for picture in pictures:
        lime_image.LimeImageExplainer(random_state=0).explain_instance(
            picture, batch_predict, top_labels=1, hide_color=0, num_samples=args.num_samples)
    loop = (time.perf_counter() - started) / len(pictures)
    print(f"the seeds' loop: {loop:.2f} s/image", flush=True)

    calls = {}
    for count in (1, len(pictures)):
        started = time.perf_counter()
        LimeImageExplainer(random_state=0).explain_instances(
            pictures[:count], batch_predict, top_labels=1, hide_color=0, num_samples=args.num_samples,
            batch_size=args.batch_size, progress_bar=False)
        calls[count] = time.perf_counter() - started
        print(f"explain_instances on {count}: {calls[count]:.1f} s", flush=True)
    per_image = (calls[len(pictures)] - calls[1]) / (len(pictures) - 1)
    fixed = calls[1] - per_image
    rate = args.num_samples / per_image  # perturbed images per second in steady state
    print(f"steady {per_image:.2f} s/image: {rate / limit:.2f} of the function's limit, "
          f"{loop / per_image:.2f}x the seeds' loop; fixed cost {fixed:.1f} s", flush=True)

    runs = {}
    with tempfile.TemporaryDirectory() as scratch:
        os.environ["XAI_BATCH_CACHE"] = os.path.join(scratch, "cache")  # the first call exports the model
        for name, count in (("first", 1), ("all", len(pictures)), ("again", 1)):
            source = folder(photos(count), os.path.join(scratch, f"source-{name}"))
            started = time.perf_counter()
            explain_dataset(source, os.path.join(scratch, f"out-{name}"), model=model, num_samples=args.num_samples,
                            progress=False)
            runs[name] = time.perf_counter() - started
            print(f"explain_dataset(model=) on {count} ({name}): {runs[name]:.1f} s", flush=True)
    model_per_image = (runs["all"] - runs["again"]) / (len(pictures) - 1)
    model_fixed = runs["again"] - model_per_image
    export = runs["first"] - runs["again"]
    print(f"model=: steady {model_per_image:.2f} s/image, {loop / model_per_image:.2f}x the seeds' loop; "
          f"fixed cost {model_fixed:.1f} s, and {export:.1f} s more the first time (the ONNX export)")
    summary = {
        "machine": machine(), "args": vars(args), "function_limit_images_per_s": limit,
        "function_limit_in_process": alone, "function_limit_in_copies": in_copies, "copies": copies,
        "seeds_loop_s_per_image": loop, "calls_s": calls, "steady_s_per_image": per_image, "fixed_s": fixed,
        "share_of_function_limit": rate / limit, "x_seeds_loop": loop / per_image,
        "model_object_runs_s": runs, "model_object_steady_s_per_image": model_per_image,
        "model_object_fixed_s": model_fixed, "model_object_first_export_s": export,
        "model_object_x_seeds_loop": loop / model_per_image,
    }
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(summary, handle, indent=2)


if __name__ == "__main__":
    main()
