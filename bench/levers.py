"""What each performance lever of the model replica buys, measured one at a time.

Every line times the same work two ways, side by side in one run, on this
device: ResNet18 (1000 classes) at one batch size, with the other levers at
their best, so each ratio is that lever's share of the speed.

    .venv/bin/python bench/levers.py --batch-size 32
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import skimage.data
import torch
from PIL import Image
from torchvision import transforms

from xai_batch.engines import normalise
from xai_batch.maths import perturb, sample_rows
from xai_batch.models import build_model
from xai_batch.preprocessing import IMAGENET_MEAN, IMAGENET_STD


def timed(run, repeats: int) -> float:
    """Seconds per call of ``run``, best of ``repeats`` after a warm-up."""
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (inductor)")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    size, repeats = args.batch_size, args.repeats
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    torch.manual_seed(0)
    model = build_model("resnet18", 1000).to(device)
    image = np.asarray(Image.fromarray(skimage.data.chelsea()).resize((224, 224)))
    segments = (np.arange(224 * 224).reshape(224, 224) * 60 // (224 * 224)).astype(np.int64)
    rows = sample_rows(0, size, 60)
    hidden = np.zeros_like(image)
    lines = []

    def report(lever: str, without: float, with_: float) -> None:
        lines.append((lever, without, with_))
        print(f"{lever:58s} {without * 1000:9.1f} ms {with_ * 1000:9.1f} ms  {without / with_:5.2f}x", flush=True)

    print(f"device {device}, batch {size}, {torch.get_num_threads()} threads; per batch: without, with, gain")
    batch = torch.randn(size, 3, 224, 224, device=device)
    with torch.inference_mode():
        contiguous = timed(lambda: model(batch), repeats)
        model_cl = model.to(memory_format=torch.channels_last)
        batch_cl = batch.contiguous(memory_format=torch.channels_last)
        channels_last = timed(lambda: model_cl(batch_cl), repeats)
    report("channels-last memory layout (model forward)", contiguous, channels_last)

    with torch.no_grad():
        no_grad = timed(lambda: model_cl(batch_cl), repeats)
    with torch.inference_mode():
        inference = timed(lambda: model_cl(batch_cl), repeats)
    report("torch.inference_mode instead of no_grad (model forward)", no_grad, inference)

    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def seed_inputs():  # lime builds each perturbed uint8 image, batch_predict normalises each on the CPU
        images = []
        for row in rows:
            perturbed = image.copy()
            perturbed[~row.astype(bool)[segments]] = 0
            images.append(perturbed)
        return torch.stack([transform(x) for x in images]).to(device)

    with torch.inference_mode():
        image_t, hidden_t = normalise(image, device), normalise(hidden, device)
        segments_t = torch.tensor(segments, device=device)
        rows_t = torch.tensor(rows.astype(np.uint8), device=device)
        buffer = torch.empty((size, 224, 224, 3), device=device)
        fresh = timed(lambda: perturb(image_t, hidden_t, segments_t, rows_t), repeats)
        reused = timed(lambda: perturb(image_t, hidden_t, segments_t, rows_t, out=buffer), repeats)
        seed = timed(seed_inputs, repeats)
    report("perturbations built on the device from the segment map", seed, fresh)
    report("pre-allocated input buffer for the perturbed batch", fresh, reused)

    if args.compile:
        compiled = torch.compile(model_cl)
        start = time.perf_counter()
        with torch.inference_mode():
            compiled(batch_cl)
            warm = time.perf_counter() - start
            compiled_time = timed(lambda: compiled(batch_cl), repeats)
        report(f"torch.compile (inductor; first call {warm:.0f} s)", channels_last, compiled_time)


if __name__ == "__main__":
    main()
