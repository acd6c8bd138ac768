"""How fast xai-batch explains, against the model's own limit, the seed's loop and captum.

One run, on the same images, checkpoint and sample count, measures:

1. the limit: the model's forwards per second at its best batch size and memory
   layout on this device, no LIME at all, for each engine (PyTorch eager,
   ONNX Runtime);
2. the baseline: the seed's loop, lime 0.2.0.1's ``explain_instance`` with a
   ``batch_predict`` that builds and normalises every perturbed image on the
   CPU, 10 at a time (lime's default), in this process;
3. a peer: captum's ``Lime`` on the same quickshift superpixels, with
   ``perturbations_per_eval`` set;
4. xai-batch with each engine: ``xai-batch explain --engine E`` as a user
   runs it, timed from start to manifest on disk, and its steady state: the
   same command on the first image alone and on all of them, differenced, so
   Ray's start-up, loading the model and filling and draining the pipeline
   all cancel out;

then prints images/s and the ratios. With ``--auto`` it also runs
``--num-samples auto`` on the same images and on generated shapes explained
by a ResNet18 it trains first, and compares its top features with the fixed
run's.

    .venv/bin/python bench/speed.py --images 5 --num-samples 1000 --auto
    .venv/bin/python bench/speed.py --arch mobilenet_v3_small   # any torchvision classification model

``pip install -e '.[bench]'`` installs captum.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib import metadata

import numpy as np
import pyarrow.compute as pc
import torch
from PIL import Image

from xai_batch.engines import OnnxEngine
from xai_batch.engines.onnx_export import onnx_spec
from xai_batch.images import open_rgb
from xai_batch.manifest import read_manifest
from xai_batch.maths import quickshift_segments
from xai_batch.maths.superpixels import Quickshift
from xai_batch.models import build_model, parse_checkpoint, save_checkpoint
from xai_batch.preprocessing import IMAGENET_MEAN, IMAGENET_STD, SEEDS
from xai_batch.reference import seed_batch_predict
from xai_batch.synthetic import SHAPES, render_scene

CLI = os.path.join(os.path.dirname(sys.executable), "xai-batch")


def make_images(folder: str, count: int) -> list[str]:
    """``count`` PNGs: scikit-image's photos first, then generated scenes."""
    import skimage.data

    os.makedirs(folder, exist_ok=True)
    photos = [skimage.data.chelsea(), skimage.data.coffee(), skimage.data.astronaut(), skimage.data.rocket(),
              skimage.data.immunohistochemistry()]
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        if index < len(photos):
            pixels = photos[index]
        else:
            pixels, _ = render_scene(SHAPES[index % len(SHAPES)], rng)
        path = os.path.join(folder, f"image_{index:03d}.png")
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def make_checkpoint(path: str, num_classes: int, arch: str = "resnet18") -> torch.nn.Module:
    """torchvision's ``arch`` with ImageNet's head size and seeded random weights."""
    torch.manual_seed(0)
    model = build_model(arch, num_classes)
    save_checkpoint(path, model, [f"class_{i}" for i in range(num_classes)], arch=arch)
    return model


def _rate(run_once, items_per_call: int, min_seconds: float) -> float:
    """Items per second of ``run_once``, after one warm-up call, over at least ``min_seconds``."""
    run_once()
    calls, start = 0, time.perf_counter()
    while True:
        run_once()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds and calls >= 2:
            return calls * items_per_call / elapsed


def measure_limit(model: torch.nn.Module, batch_sizes: list[int], min_seconds: float) -> dict:
    """Forwards per second of the bare model for each batch size and layout; the best wins."""
    table = []
    with torch.inference_mode():
        for layout in ("channels_last", "contiguous"):
            fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
            net = model.to(memory_format=fmt)
            for size in batch_sizes:
                batch = torch.randn(size, 3, 224, 224).contiguous(memory_format=fmt)
                rate = _rate(lambda: torch.softmax(net(batch), dim=1), size, min_seconds)
                table.append({"layout": layout, "batch_size": size, "forwards_per_s": rate})
                print(f"  limit: {layout:13s} batch {size:4d}: {rate:6.1f} forwards/s", flush=True)
    model.to(memory_format=torch.contiguous_format)
    best = max(table, key=lambda row: row["forwards_per_s"])
    return {"best": best, "table": table}


def measure_onnx_limit(checkpoint: str, batch_sizes: list[int], min_seconds: float, threads: int) -> dict:
    """Forwards per second of the same model in ONNX Runtime (the engine xai-batch runs), per batch size."""
    with open(checkpoint, "rb") as handle:
        engine = OnnxEngine(onnx_spec(parse_checkpoint(handle.read(), check=False)), batch_size=max(batch_sizes),
                            threads=threads)
    table = []
    for size in batch_sizes:
        batch = np.random.default_rng(0).standard_normal((size, 3, 224, 224)).astype(np.float32)
        rate = _rate(lambda: engine._run(batch), size, min_seconds)
        table.append({"batch_size": size, "forwards_per_s": rate})
        print(f"  limit: onnxruntime   batch {size:4d}: {rate:6.1f} forwards/s", flush=True)
    return {"best": max(table, key=lambda row: row["forwards_per_s"]), "table": table}


def load_pixels(path: str) -> np.ndarray:
    """An image file as the 224x224 RGB array every method explains."""
    with open(path, "rb") as handle:
        return SEEDS.frame(open_rgb(handle.read()))


def measure_baseline(model: torch.nn.Module, paths: list[str], num_samples: int) -> dict:
    """lime's ``explain_instance`` with the seed's ``batch_predict``, one image after another."""
    from lime.lime_image import LimeImageExplainer

    predict = seed_batch_predict(model)
    start = time.perf_counter()
    for index, path in enumerate(paths):
        explainer = LimeImageExplainer(random_state=index)
        explainer.explain_instance(
            load_pixels(path), predict, top_labels=1, hide_color=0, num_samples=num_samples
        )
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "images_per_s": len(paths) / seconds}


def measure_captum(model: torch.nn.Module, paths: list[str], num_samples: int, per_eval: int) -> dict:
    """captum's ``Lime`` over the same quickshift superpixels, ``per_eval`` perturbations a forward."""
    from captum._utils.models.linear_model import SkLearnRidge
    from captum.attr import Lime

    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def forward(pixels: torch.Tensor) -> torch.Tensor:  # pixels in [0, 1], so baseline 0 is hide_color 0
        return torch.softmax(model((pixels - mean) / std), dim=1)

    lime = Lime(forward, interpretable_model=SkLearnRidge(alpha=1.0))
    start = time.perf_counter()
    for index, path in enumerate(paths):
        image = load_pixels(path)
        segments = quickshift_segments(image, Quickshift(), index)
        pixels = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).float().div(255)
        with torch.no_grad():
            target = int(forward(pixels).argmax())
            lime.attribute(
                pixels,
                target=target,
                baselines=0.0,
                feature_mask=torch.from_numpy(segments).expand(1, 3, -1, -1),
                n_samples=num_samples,
                perturbations_per_eval=per_eval,
                show_progress=False,
            )
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "images_per_s": len(paths) / seconds, "perturbations_per_eval": per_eval}


def run_xai_batch(source: str, out: str, checkpoint: str, samples: str, extra: list[str]) -> dict:
    """``xai-batch explain`` in a fresh process: wall time, and the explain phase from job.json."""
    command = [CLI, "explain", source, "--out", out, "--checkpoint", checkpoint, "--num-samples", samples, *extra]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    with open(os.path.join(out, "job.json")) as handle:
        run = json.load(handle)["runs"][-1]
    images = run["counts"]["ok"]
    return {"images": images, "seconds": seconds, "images_per_s": images / seconds, "timings": run["timings"]}


def measure_xai_batch(paths: list[str], work: str, checkpoint: str, samples: str, extra: list[str]) -> dict:
    """End to end on every image, and the steady state from the difference with a one-image run."""
    single = os.path.join(work, "single")
    os.makedirs(single, exist_ok=True)
    os.link(paths[0], os.path.join(single, os.path.basename(paths[0])))
    one = run_xai_batch(single, os.path.join(work, "out-one"), checkpoint, samples, extra)
    every = run_xai_batch(os.path.dirname(paths[0]), os.path.join(work, "out"), checkpoint, samples, extra)
    extra_seconds = every["timings"]["explain_seconds"] - one["timings"]["explain_seconds"]
    return {**every, "one_image": one, "steady_images_per_s": (every["images"] - 1) / extra_seconds}


def compare_auto(fixed_out: str, auto_out: str, num_samples: int, max_samples: int) -> dict:
    """Top-feature agreement of the ``auto`` run with the fixed run, and the samples it used."""
    fixed = read_manifest(fixed_out)
    auto = read_manifest(auto_out)
    fixed = fixed.filter(pc.equal(fixed.column("status"), "ok")).to_pylist()
    auto = {row["path"]: row for row in auto.filter(pc.equal(auto.column("status"), "ok")).to_pylist()}
    same, used = 0, []
    for row in fixed:
        other = auto[row["path"]]
        same += top_set(row) == top_set(other)
        used.append(other["num_samples"])
    return {
        "images": len(fixed),
        "top_set_equal": same / len(fixed),
        "mean_samples": float(np.mean(used)),
        "sample_share": float(np.mean(used)) / num_samples,
        "at_max": sum(count == max_samples for count in used),
        "samples_used": used,
    }


def auto_on_shapes(work: str, num_samples: int, max_samples: int, extra: list[str]) -> dict:
    """``auto`` against a fixed count on generated shapes, explained by a ResNet18 trained on them."""
    from xai_batch.synthetic import generate_dataset
    from xai_batch.distributed.training import TrainConfig, train_model

    generate_dataset(os.path.join(work, "train"), per_class=20, seed=0)
    held_out = generate_dataset(os.path.join(work, "held-out"), per_class=2, seed=1, shapes=SHAPES[:3])
    images = os.path.join(work, "images")
    os.makedirs(images)
    for paths in held_out.values():
        for path in paths:
            os.link(path, os.path.join(images, os.path.basename(path)))
    checkpoint = os.path.join(work, "model.pt")
    train_model(TrainConfig(os.path.join(work, "train"), checkpoint, epochs=3, batch_size=16, pretrained="none"),
                report=lambda line: None)
    fixed, auto = os.path.join(work, "fixed"), os.path.join(work, "auto")
    run_xai_batch(images, fixed, checkpoint, str(num_samples), extra)
    run_xai_batch(images, auto, checkpoint, "auto", ["--max-samples", str(max_samples), *extra])
    return compare_auto(fixed, auto, num_samples, max_samples)


def top_set(row: dict, k: int = 5) -> frozenset:
    """The top-``k`` superpixels by |weight|, with their signs."""
    weights = np.asarray(row["weights"])
    order = np.argsort(-np.abs(weights), kind="stable")[:k]
    return frozenset((int(s), bool(weights[s] > 0)) for s in order)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--engines", nargs="+", default=["torch", "onnxruntime"], help="xai-batch --engine values")
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--classes", type=int, default=1000, help="the model's outputs (ImageNet: 1000)")
    parser.add_argument("--arch", default="resnet18", help="the torchvision classification model to measure")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32, 64, 256])
    parser.add_argument("--per-eval", type=int, default=64, help="captum's perturbations_per_eval")
    parser.add_argument("--auto", action="store_true", help="also run --num-samples auto and compare")
    parser.add_argument("--max-samples", type=int, default=2000, help="--max-samples for the auto runs")
    parser.add_argument("--min-seconds", type=float, default=6.0, help="timing window per limit point")
    parser.add_argument("--json", help="write every figure here too")
    parser.add_argument("--xai-batch-args", default="", help="extra options for xai-batch explain")
    args = parser.parse_args()

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    work = tempfile.mkdtemp(prefix="xai-bench-")
    paths = make_images(os.path.join(work, "images"), args.images)
    checkpoint = os.path.join(work, "model.pt")
    model = make_checkpoint(checkpoint, args.classes, args.arch)
    n = args.num_samples
    print(f"{args.images} images, {n} samples, {args.arch} with {args.classes} classes, {threads} threads",
          flush=True)

    results: dict = {"machine": machine(), "versions": _versions(), "args": vars(args)}
    limits = {"torch": measure_limit(model, args.batch_sizes, args.min_seconds)}
    if "onnxruntime" in args.engines:
        limits["onnxruntime"] = measure_onnx_limit(checkpoint, args.batch_sizes, args.min_seconds, threads)
    results["limits"] = limits
    runs = {}
    for engine in args.engines:
        extra = ["--engine", engine, *args.xai_batch_args.split()]
        runs[engine] = measure_xai_batch(paths, os.path.join(work, engine), checkpoint, str(n), extra)
        print(f"  xai-batch --engine {engine}: {runs[engine]}", flush=True)
    results["xai_batch"] = runs
    results["baseline"] = measure_baseline(model, paths, n)
    print(f"  baseline: {results['baseline']}", flush=True)
    results["captum"] = measure_captum(model, paths, n, args.per_eval)
    print(f"  captum: {results['captum']}", flush=True)
    if args.auto:
        extra = args.xai_batch_args.split()
        auto_out = os.path.join(work, "out-auto")
        timed = run_xai_batch(os.path.dirname(paths[0]), auto_out, checkpoint, "auto",
                              ["--max-samples", str(args.max_samples), *extra])
        fixed_out = os.path.join(work, args.engines[-1], "out")
        results["auto_photos"] = {**compare_auto(fixed_out, auto_out, n, args.max_samples),
                                  "images_per_s": timed["images_per_s"]}
        results["auto_shapes"] = auto_on_shapes(os.path.join(work, "shapes"), n, args.max_samples, extra)

    baseline = results["baseline"]["images_per_s"]
    torch_limit = limits["torch"]["best"]["forwards_per_s"] / n
    rows = [
        ("baseline: lime + seed batch_predict", baseline, torch_limit),
        (f"captum Lime, perturbations_per_eval={args.per_eval}", results["captum"]["images_per_s"], torch_limit),
    ]
    for engine in args.engines:
        own = limits[engine]["best"]["forwards_per_s"] / n
        rows += [
            (f"limit, {engine} (best forwards/s / samples)", own, own),
            (f"xai-batch --engine {engine}, end to end", runs[engine]["images_per_s"], own),
            (f"xai-batch --engine {engine}, steady state", runs[engine]["steady_images_per_s"], own),
        ]
    print("\n| run | images/s | × baseline | × its engine's limit |\n|---|---:|---:|---:|")
    for name, rate, own in rows:
        print(f"| {name} | {rate:.4f} | {rate / baseline:.2f} | {rate / own:.2f} |")
    for engine, limit in limits.items():
        best = limit["best"]
        print(f"limit, {engine}: {best['forwards_per_s']:.1f} forwards/s (batch {best['batch_size']}"
              + (f", {best['layout']})" if "layout" in best else ")"))
    for engine in args.engines:
        for label, key in (("end to end", "images_per_s"), ("steady state", "steady_images_per_s")):
            rate = runs[engine][key]
            print(
                f"xai-batch --engine {engine} {label}: {rate / baseline:.2f}x baseline, "
                f"{rate / results['captum']['images_per_s']:.2f}x captum, "
                f"{rate / (limits[engine]['best']['forwards_per_s'] / n):.2f} of its engine's limit"
            )
    for name in ("auto_photos", "auto_shapes") if args.auto else ():
        auto = results[name]
        print(
            f"--num-samples auto ({name[5:]}): top-5 set (with signs) equal to the {n}-sample run's on "
            f"{auto['top_set_equal']:.0%} of {auto['images']} images, using {auto['sample_share']:.0%} of the "
            f"samples on average ({auto['mean_samples']:.0f}; {auto['at_max']} images reached --max-samples)"
            + (f"; end to end {auto['images_per_s'] / baseline:.2f}x the seed loop at {n}" if "images_per_s" in auto else "")
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


def machine() -> dict:
    """The CPU, cores, CUDA and Python a run measured on."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "cuda": torch.cuda.is_available(), "python": platform.python_version()}


def _versions() -> dict:
    names = ("torch", "torchvision", "lime", "captum", "ray", "numpy", "scikit-image", "onnxruntime")
    return {name: metadata.version(name) for name in names}


if __name__ == "__main__":
    main()
