"""lime's superpixels and surrogate on a torch device, against lime's own code, per image.

The replica can only explain a whole image on its device if quickshift and
the surrogate run there as fast as the model takes its samples. One run, on
the same images, measures:

1. quickshift: lime's ``SegmentationAlgorithm`` (scikit-image's Cython, one
   image at a time) against ``quickshift_on_device`` on the CPU, and on CUDA
   where there is a GPU, in batches of ``--batch`` images; every label is
   checked equal to lime's, and the pixels settled on the CPU are counted;
2. the surrogate: lime's ``LimeBase`` for each of ``--top-labels`` labels
   against ``fit_surrogates_on_device`` for all of them at once, on each
   image's real segments and lime's sample rows (``--num-samples``), with the
   largest weight difference.

    .venv/bin/python bench/device_maths.py --images 16 --batch 8
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch

from speed import load_pixels, machine, make_images
from xai_batch.maths import quickshift_segments, sample_rows
from xai_batch.maths.device_superpixels import quickshift_on_device
from xai_batch.maths.device_surrogate import fit_surrogates_on_device
from xai_batch.maths.superpixels import Quickshift
from xai_batch.maths.surrogate import fit_surrogate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8, help="images per quickshift_on_device call")
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--top-labels", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        images = np.stack([load_pixels(path) for path in make_images(folder, args.images)])
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    result = {"machine": machine(), "images": args.images, "batch": args.batch, "threads": torch.get_num_threads()}

    params = Quickshift()
    start = time.perf_counter()
    reference = [quickshift_segments(image, params, seed=0) for image in images]
    result["quickshift_lime_s_per_image"] = (time.perf_counter() - start) / len(images)
    for device in devices:
        quickshift_on_device(images[:1], params, device)  # warm-up: allocator, kernels
        start = time.perf_counter()
        found = [quickshift_on_device(images[i:i + args.batch], params, device) for i in range(0, len(images), args.batch)]
        seconds = (time.perf_counter() - start) / len(images)
        segments = np.concatenate([f.segments.cpu().numpy() for f in found])
        result[f"quickshift_{device}_s_per_image"] = seconds
        result[f"quickshift_{device}_identical"] = sum(np.array_equal(a, b) for a, b in zip(segments, reference))
        result[f"quickshift_{device}_settled_pixels"] = sum(sum(f.settled) for f in found)

    rng = np.random.default_rng(0)
    problems = []
    for index, segments in enumerate(reference):
        rows = sample_rows(seed=index, num_samples=args.num_samples, num_segments=int(segments.max()) + 1)
        logits = rows @ rng.normal(size=(rows.shape[1], 1000)) * 0.3
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        problems.append((rows, (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)))
    labels = list(range(args.top_labels))
    start = time.perf_counter()
    fits = [[fit_surrogate(rows, probs[:, label], 0) for label in labels] for rows, probs in problems]
    result["surrogate_lime_s_per_image"] = (time.perf_counter() - start) / len(images)
    for device in devices:
        moved = [(torch.as_tensor(rows, device=device), torch.as_tensor(probs, device=device)) for rows, probs in problems]
        fit_surrogates_on_device(*moved[0], labels, device)
        start = time.perf_counter()
        mine = [fit_surrogates_on_device(rows, probs, labels, device) for rows, probs in moved]
        result[f"surrogate_{device}_s_per_image"] = (time.perf_counter() - start) / len(images)
        result[f"surrogate_{device}_max_weight_difference"] = max(
            float(np.abs(a.weights - b.weights).max()) for ours, theirs in zip(mine, fits) for a, b in zip(ours, theirs))
        result[f"surrogate_{device}_orders_identical"] = sum(
            a.order == b.order for ours, theirs in zip(mine, fits) for a, b in zip(ours, theirs))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
