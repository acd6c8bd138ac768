"""``xai-batch demo``: the whole workflow on a case made on the spot.

ImageNet weights cannot be downloaded everywhere, so the demo does what the
MRI workflow does with its own data: it generates a class-per-folder dataset
with ground-truth object masks, fine-tunes ResNet18 on it, explains held-out
images on a local Ray, and reports how much of each explanation lands on the
object, against what a random choice of superpixels would get.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from xai_batch.config import ExplainConfig
from xai_batch.explain.localisation import area_inside, random_area_inside, top_positive
from xai_batch.images import load_object_mask
from xai_batch.manifest import decode_segments, read_manifest
from xai_batch.runtime import run_explain
from xai_batch.synthetic import NO_OBJECT, generate_dataset, mask_path
from xai_batch.training import TrainConfig, train_model

__all__ = ["DemoConfig", "DemoResult", "run_demo", "load_truth_mask"]

TRAIN_PER_CLASS = 36
OBJECTS = ("disc", "square", "triangle")


@dataclass(frozen=True)
class DemoConfig:
    out: str = "demo-run"
    images: int = 6
    num_samples: int = 300
    epochs: int = 4
    seed: int = 0


@dataclass(frozen=True)
class DemoResult:
    manifest: str
    accuracy: float
    on_object: float  # mean share of the top-5 positive superpixels' area on the object
    random_on_object: float  # the same for 5 random superpixels


def load_truth_mask(image_path: str) -> np.ndarray:
    """The generated object mask, preprocessed to the 224x224 frame LIME saw."""
    with open(mask_path(image_path), "rb") as handle:
        return load_object_mask(handle.read())


def run_demo(config: DemoConfig, report: Callable[[str], None] = print) -> DemoResult:
    data = os.path.join(config.out, "data")
    per_class = -(-config.images // len(OBJECTS))
    classes = (*OBJECTS, NO_OBJECT)
    report(f"1/3 generating {TRAIN_PER_CLASS} training images per class ({', '.join(classes)}) "
           f"and {per_class} held-out images per object in {data}")
    generate_dataset(os.path.join(data, "train"), TRAIN_PER_CLASS, config.seed, classes)
    holdout = os.path.join(data, "holdout")
    generate_dataset(holdout, per_class, config.seed + 1, OBJECTS)

    report("2/3 training ResNet18 from scratch (xai-batch train --pretrained none)")
    checkpoint = os.path.join(config.out, "model.pt")
    train_model(
        TrainConfig(os.path.join(data, "train"), checkpoint, epochs=config.epochs, batch_size=16,
                    pretrained="none", seed=config.seed),
        report=report,
    )

    report(f"3/3 explaining {per_class * len(OBJECTS)} held-out images with LIME on a local Ray")
    run = os.path.join(config.out, "run")
    result = run_explain(
        ExplainConfig(source=holdout, out=run, checkpoint=checkpoint, num_samples=config.num_samples,
                      seed=config.seed, overwrite=True)
    )
    table = read_manifest(run).to_pylist()
    correct, on_object, by_chance = 0, [], []
    report(f"{'image':<28} {'predicted':<10} {'prob':>5}  {'on object':>9}  {'random':>6}")
    for row in table:
        if row["status"] != "ok":
            report(f"{row['path']:<28} error: {row['error']}")
            continue
        truth = load_truth_mask(os.path.join(holdout, row["path"]))
        segments = decode_segments(row["segments"])
        weights = np.asarray(row["weights"])
        share = area_inside(segments, top_positive(weights, 5), truth)
        chance = random_area_inside(segments, 5, truth, seed=row["seed"])
        correct += row["path"].split("/")[0] == row["pred_name"]
        on_object.append(share)
        by_chance.append(chance)
        report(f"{row['path']:<28} {row['pred_name']:<10} {row['pred_prob']:>5.2f}  {share:>9.2f}  {chance:>6.2f}")
    accuracy = correct / max(len(on_object), 1)
    mean_share = float(np.mean(on_object)) if on_object else 0.0
    mean_chance = float(np.mean(by_chance)) if by_chance else 0.0
    report(f"accuracy on held-out images: {accuracy:.2f}")
    report(
        f"top-5 positive superpixels on the object: {mean_share:.2f} of their area "
        f"(random superpixels: {mean_chance:.2f})"
    )
    report(f"manifest: {result.manifest}   job record: {os.path.join(run, 'job.json')}")
    return DemoResult(result.manifest, accuracy, mean_share, mean_chance)
