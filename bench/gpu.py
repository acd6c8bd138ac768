"""xai-batch on a GPU: the figures of issue 6, in one run on the device machine.

On the same images (scikit-image's photos, then generated scenes), the same
1000-class ResNet18 and the same sample count, it measures:

1. the limit: ResNet18 forwards/s on the GPU, channels-last, bf16 autocast and
   true fp32 (TF32 off, as the replicas run it), at the best of a few batch sizes;
2. xai-batch end to end and in steady state (an N-image run minus a 1-image
   run, as bench/speed.py does) with --precision bf16 and fp32, with the
   default stages (``auto``: the replica's, on CUDA) and bf16 with
   ``--stages workers`` beside it, each with job.json's stage times;
3. the seed's loop (lime + ``batch_predict`` with the model on the GPU) and
   captum's ``Lime`` on the GPU, on a few of the images (per-image rates);
4. bf16 against fp32: the share of images with the same top-5 superpixels
   (and signs), and the mean |Δweight|;
5. scaling with 1, 2 and 4 CPU-only actors (CUDA hidden) at fewer samples.

    python3 bench/gpu.py --images 64 --num-samples 1000 --json gpu.json

Each section writes the JSON as it goes, so a run stopped early keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from speed import load_pixels, make_checkpoint, make_images, top_set  # noqa: E402

from xai_batch.maths.superpixels import Quickshift  # noqa: E402
from xai_batch.preprocessing import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from xai_batch.maths import quickshift_segments  # noqa: E402
from xai_batch.manifest import read_manifest  # noqa: E402
from xai_batch.reference import seed_batch_predict  # noqa: E402


def gpu_rate(run_once, items: int, min_seconds: float) -> float:
    run_once()
    torch.cuda.synchronize()
    calls, start = 0, time.perf_counter()
    while True:
        run_once()
        calls += 1
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds and calls >= 3:
            return calls * items / elapsed


def measure_limit(model, batch_sizes, min_seconds) -> dict:
    net = model.cuda().to(memory_format=torch.channels_last).eval()
    table = []
    with torch.inference_mode():
        for precision in ("bf16", "fp32"):
            for size in batch_sizes:
                batch = torch.randn(size, 3, 224, 224, device="cuda").contiguous(memory_format=torch.channels_last)

                torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = precision != "fp32"

                def once():
                    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
                        return torch.softmax(net(batch).float(), dim=1)

                rate = gpu_rate(once, size, min_seconds)
                table.append({"precision": precision, "batch_size": size, "forwards_per_s": rate})
                print(f"  limit {precision} batch {size}: {rate:.0f} forwards/s", flush=True)
    return {precision: max((r for r in table if r["precision"] == precision), key=lambda r: r["forwards_per_s"])
            for precision in ("bf16", "fp32")} | {"table": table}


def explain(source, out, checkpoint, samples, extra, env=None) -> dict:
    command = [sys.executable, "-c", "from xai_batch.cli import main; main()", "explain", source, "--out", out,
               "--checkpoint", checkpoint, "--num-samples", str(samples), "--no-progress", *extra]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    with open(os.path.join(out, "job.json")) as handle:
        record = json.load(handle)
    run = record["runs"][-1]
    return {"images": run["counts"]["ok"], "seconds": seconds, "images_per_s": run["counts"]["ok"] / seconds,
            "timings": run["timings"], "replicas": run["ray"]["replicas"], "stages": run.get("stages")}


def end_to_end(paths, work, checkpoint, samples, extra, tag) -> dict:
    single = os.path.join(work, f"single-{tag}")
    os.makedirs(single, exist_ok=True)
    os.link(paths[0], os.path.join(single, os.path.basename(paths[0])))
    one = explain(single, os.path.join(work, f"one-{tag}"), checkpoint, samples, extra)
    every = explain(os.path.dirname(paths[0]), os.path.join(work, f"all-{tag}"), checkpoint, samples, extra)
    steady = (every["images"] - 1) / (every["timings"]["explain_seconds"] - one["timings"]["explain_seconds"])
    return {**every, "one_image": one, "steady_images_per_s": steady}


def seed_loop(model, paths, samples) -> dict:
    from lime.lime_image import LimeImageExplainer

    predict = seed_batch_predict(model.cuda().eval())
    start = time.perf_counter()
    for index, path in enumerate(paths):
        LimeImageExplainer(random_state=index).explain_instance(load_pixels(path), predict, top_labels=1, hide_color=0,
                                                                num_samples=samples)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"images": len(paths), "seconds": seconds, "images_per_s": len(paths) / seconds}


def captum_on_gpu(model, paths, samples, per_eval) -> dict:
    from captum._utils.models.linear_model import SkLearnRidge
    from captum.attr import Lime

    model = model.cuda().eval()
    mean = torch.tensor(IMAGENET_MEAN, device="cuda").view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device="cuda").view(1, 3, 1, 1)

    def forward(pixels):
        return torch.softmax(model((pixels - mean) / std), dim=1)

    lime = Lime(forward, interpretable_model=SkLearnRidge(alpha=1.0))
    start = time.perf_counter()
    for index, path in enumerate(paths):
        image = load_pixels(path)
        segments = torch.from_numpy(quickshift_segments(image, Quickshift(), index)).cuda()
        pixels = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).float().div(255).cuda()
        with torch.no_grad():
            lime.attribute(pixels, target=int(forward(pixels).argmax()), baselines=0.0,
                           feature_mask=segments.expand(1, 3, -1, -1), n_samples=samples,
                           perturbations_per_eval=per_eval, show_progress=False)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"images": len(paths), "seconds": seconds, "images_per_s": len(paths) / seconds,
            "perturbations_per_eval": per_eval}


def fidelity(exact_out, fast_out) -> dict:
    exact = {r["path"]: r for r in read_manifest(exact_out).to_pylist() if r["status"] == "ok"}
    fast = {r["path"]: r for r in read_manifest(fast_out).to_pylist() if r["status"] == "ok"}
    same = [(top_set(exact[p]) == top_set(fast[p])) for p in exact]
    labels = [exact[p]["explained_index"] == fast[p]["explained_index"] for p in exact]
    delta = [np.abs(np.subtract(exact[p]["weights"], fast[p]["weights"])).mean() for p in exact
             if exact[p]["explained_index"] == fast[p]["explained_index"]]
    return {"images": len(exact), "top5_equal": float(np.mean(same)), "label_equal": float(np.mean(labels)),
            "mean_abs_dw": float(np.mean(delta))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--baseline-images", type=int, default=4)
    parser.add_argument("--scaling-images", type=int, default=16)
    parser.add_argument("--scaling-samples", type=int, default=200)
    parser.add_argument("--json", required=True)
    parser.add_argument("--sections", nargs="+", help="run only these sections (default: all)")
    args = parser.parse_args()
    results: dict = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cpus": os.cpu_count(),
                     "args": vars(args)}

    def save(section, value):
        results[section] = value
        print(f"{section}: {json.dumps(value)[:600]}", flush=True)
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)

    work = tempfile.mkdtemp(prefix="xai-gpu-")
    paths = make_images(os.path.join(work, "images"), args.images)
    checkpoint = os.path.join(work, "model.pt")
    model = make_checkpoint(checkpoint, 1000)
    n = args.num_samples
    sections = [
        ("limit", lambda: measure_limit(model, [256, 512, 1024], 2.0)),
        ("xai_batch_bf16", lambda: end_to_end(paths, work, checkpoint, n, ["--precision", "bf16"], "bf16")),
        ("xai_batch_bf16_workers", lambda: end_to_end(paths, work, checkpoint, n,
                                                      ["--precision", "bf16", "--stages", "workers"], "bf16-workers")),
        ("xai_batch_fp32", lambda: end_to_end(paths, work, checkpoint, n, ["--precision", "fp32"], "fp32")),
        ("fidelity_bf16_vs_fp32", lambda: fidelity(os.path.join(work, "all-fp32"), os.path.join(work, "all-bf16"))),
        ("xai_batch_bf16_2_actors", lambda: explain(os.path.dirname(paths[0]), os.path.join(work, "all-bf16-2"),
                                                    checkpoint, n, ["--precision", "bf16", "--actors", "2"])),
        ("seed_loop", lambda: seed_loop(model, paths[: args.baseline_images], n)),
        ("captum", lambda: captum_on_gpu(model, paths[: args.baseline_images], n, 64)),
    ]
    for name, measure in sections:
        if args.sections and name not in args.sections:
            continue
        try:
            save(name, measure())
        except Exception as exc:  # keep going: one broken section must not cost the others
            save(name, {"error": f"{type(exc).__name__}: {exc}"[-1500:]})
    if args.sections and "scaling_cpu_actors" not in args.sections:
        return
    scaling = {}
    cpu_env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    subset = os.path.join(work, "scaling")
    os.makedirs(subset)
    for path in paths[: args.scaling_images]:
        os.link(path, os.path.join(subset, os.path.basename(path)))
    for actors in (1, 2, 4):
        try:
            scaling[actors] = explain(subset, os.path.join(work, f"cpu-{actors}"), checkpoint, args.scaling_samples,
                                      ["--actors", str(actors)], env=cpu_env)
        except Exception as exc:
            scaling[actors] = {"error": f"{type(exc).__name__}: {exc}"[-1500:]}
        save("scaling_cpu_actors", scaling)


if __name__ == "__main__":
    main()
