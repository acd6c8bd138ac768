"""What each explanation method costs in xai-batch, and against running its library directly.

One run, on the same images and checkpoint, measures for each method:

1. the direct loop, in this process, as a notebook would: LIME is lime's
   ``explain_instance`` with the seed's ``batch_predict``; KernelSHAP is
   ``shap.KernelExplainer`` on the same quickshift superpixels with an ``f``
   that builds the perturbed images and calls the seed's ``batch_predict``
   (10 images per call, as lime feeds it); Grad-CAM is pytorch-grad-cam's
   ``GradCAM`` on each image;
2. ``xai-batch explain --method M`` end to end and in steady state (a
   one-image run differenced from the all-image run, as bench/speed.py does);
3. all three methods in one job, against the three single-method jobs.

    .venv/bin/python bench/methods.py --images 5 --num-samples 1000
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import torch

from speed import load_pixels, machine, make_checkpoint, make_images, measure_baseline, measure_xai_batch
from xai_batch.maths.superpixels import Quickshift
from xai_batch.engines import normalise
from xai_batch.maths import hidden_image, quickshift_segments
from xai_batch.reference import seed_batch_predict

METHODS = ("lime", "kernelshap", "gradcam")


def direct_kernelshap(model: torch.nn.Module, paths: list[str], num_samples: int) -> dict:
    """shap's KernelExplainer per image, ``f`` building perturbed images and calling the seed's batch_predict."""
    import shap

    predict = seed_batch_predict(model)
    start = time.perf_counter()
    for index, path in enumerate(paths):
        image = load_pixels(path)
        segments = quickshift_segments(image, Quickshift(), index)
        hidden = hidden_image(image, segments, 0)
        label = int(np.argmax(predict(image[None])[0]))

        def f(z, image=image, segments=segments, hidden=hidden, label=label):
            out = []
            for start in range(0, len(z), 10):  # 10 images at a time, as lime feeds batch_predict
                shown = z[start : start + 10].astype(bool)[:, segments][..., None]
                out.append(predict(np.where(shown, image[None], hidden[None]))[:, label])
            return np.concatenate(out)

        np.random.seed(index)
        shap.KernelExplainer(f, np.zeros((1, segments.max() + 1))).shap_values(
            np.ones((1, segments.max() + 1)), nsamples=num_samples, silent=True)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "images_per_s": len(paths) / seconds}


def direct_gradcam(model: torch.nn.Module, paths: list[str]) -> dict:
    """pytorch-grad-cam's GradCAM of layer4[-1] per image, for its top class."""
    from pytorch_grad_cam import GradCAM

    cam = GradCAM(model=model.eval(), target_layers=[model.layer4[-1]])
    start = time.perf_counter()
    for path in paths:
        cam(input_tensor=normalise(load_pixels(path), torch.device("cpu")).permute(2, 0, 1).unsqueeze(0), targets=None)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "images_per_s": len(paths) / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--classes", type=int, default=1000, help="the model's outputs (ImageNet: 1000)")
    parser.add_argument("--engine", default="auto", help="xai-batch --engine")
    parser.add_argument("--json", help="write every figure here too")
    args = parser.parse_args()

    torch.set_num_threads(os.cpu_count() or 1)
    work = tempfile.mkdtemp(prefix="xai-bench-methods-")
    paths = make_images(os.path.join(work, "images"), args.images)
    checkpoint = os.path.join(work, "model.pt")
    model = make_checkpoint(checkpoint, args.classes).eval()
    n = args.num_samples
    print(f"{args.images} images, {n} samples, ResNet18 with {args.classes} classes, {machine()}", flush=True)
    direct = {
        "lime": measure_baseline(model, paths, n),
        "kernelshap": direct_kernelshap(model, paths, n),
        "gradcam": direct_gradcam(model, paths),
    }
    print(f"  direct: {direct}", flush=True)
    runs = {}
    for methods in [*((method,) for method in METHODS), METHODS]:
        name = ",".join(methods)
        extra = ["--method", name, "--engine", args.engine, "--no-progress"]
        runs[name] = measure_xai_batch(paths, os.path.join(work, name.replace(",", "-")), checkpoint, str(n), extra)
        print(f"  xai-batch --method {name}: {runs[name]}", flush=True)

    print("\n| method | direct loop, images/s | xai-batch end to end | × direct | steady state | × direct |")
    print("|---|---:|---:|---:|---:|---:|")
    for method in METHODS:
        rate, run = direct[method]["images_per_s"], runs[method]
        print(f"| {method} | {rate:.4f} | {run['images_per_s']:.4f} | {run['images_per_s'] / rate:.2f} | "
              f"{run['steady_images_per_s']:.4f} | {run['steady_images_per_s'] / rate:.2f} |")
    together = runs[",".join(METHODS)]
    apart = sum(1 / runs[method]["steady_images_per_s"] for method in METHODS)
    print(f"\nall three in one job: steady state {together['steady_images_per_s']:.4f} images/s "
          f"({1 / together['steady_images_per_s']:.1f} s per image; three separate jobs {apart:.1f} s per image)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"machine": machine(), "args": vars(args), "direct": direct, "xai_batch": runs}, handle, indent=2)


if __name__ == "__main__":
    main()
