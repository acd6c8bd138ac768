"""``xai-batch demo``: the whole workflow on a case made on the spot.

ImageNet weights cannot be downloaded everywhere, so the demo does what the
MRI workflow does with its own data: it generates a class-per-folder dataset
with ground-truth object masks, fine-tunes ResNet18 on it, explains held-out
images on a local Ray with their quality measured, and reports how much of
each explanation lands on the object and how faithful it is (deletion and
insertion AUC), each against what a random choice of superpixels would get.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from xai_batch.analysis.findings import quality_summary
from xai_batch.config import ExplainConfig
from xai_batch.errors import XaiBatchError
from xai_batch.manifest import read_manifest
from xai_batch.distributed.run import run_explain
from xai_batch.synthetic import NO_OBJECT, generate_dataset
from xai_batch.distributed.training import TrainConfig, train_model

__all__ = ["DemoConfig", "DemoResult", "run_demo"]

TRAIN_PER_CLASS = 36
OBJECTS = ("disc", "square", "triangle")
# The training recipe, chosen over seeds and thread counts (BENCHMARKS.md, "The demo's recipe"): BatchNorm's
# statistics re-estimated before each validation (with 8 steps an epoch its running averages trail the
# weights, and validation swung from 0.36 to 0.86), label smoothing (a saturated model gives LIME
# nothing to fit) and a cosine schedule (the last epochs settle instead of jumping).
RECIPE = {"batch_size": 16, "lr": 1e-3, "label_smoothing": 0.1, "lr_schedule": "cosine", "recalibrate_bn": True}


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
    deletion_auc: float  # mean deletion AUC of the explanations' order (lower is better)
    deletion_auc_random: float  # the same for a random order
    val_accuracy: tuple[float, ...]  # each epoch's validation accuracy


def run_demo(
    config: DemoConfig, report: Callable[[str], None] = print, recipe: Mapping[str, object] = RECIPE
) -> DemoResult:
    """Generate, train with ``recipe`` (``TrainConfig`` fields), explain, score; report as it goes."""
    data = os.path.join(config.out, "data")
    per_class = -(-config.images // len(OBJECTS))
    classes = (*OBJECTS, NO_OBJECT)
    report(f"1/3 generating {TRAIN_PER_CLASS} training images per class ({', '.join(classes)}) "
           f"and {per_class} held-out images per object in {data}")
    generate_dataset(os.path.join(data, "train"), TRAIN_PER_CLASS, config.seed, classes)
    holdout = os.path.join(data, "holdout")
    generate_dataset(holdout, per_class, config.seed + 1, OBJECTS)

    report(f"2/3 training ResNet18 from scratch (xai-batch train --pretrained none {_as_options(recipe)})")
    checkpoint = os.path.join(config.out, "model.pt")
    trained = train_model(
        TrainConfig(os.path.join(data, "train"), checkpoint, epochs=config.epochs, pretrained="none",
                    seed=config.seed, **recipe),
        report=report,
    )
    chance = 1 / len(classes)
    if trained.val_accuracy <= chance:
        raise XaiBatchError(
            f"training did not learn: validation accuracy {trained.val_accuracy:.2f}, chance is {chance:.2f}; "
            "try more --epochs or another --seed")

    report(f"3/3 explaining {per_class * len(OBJECTS)} held-out images with LIME on a local Ray, "
           "with their faithfulness and localisation")
    run = os.path.join(config.out, "run")
    result = run_explain(
        ExplainConfig(source=holdout, out=run, checkpoint=checkpoint, num_samples=config.num_samples,
                      seed=config.seed, overwrite=True, faithfulness=True, masks=holdout)
    )
    table = read_manifest(run).to_pylist()
    report(f"{'image':<28} {'predicted':<10} {'prob':>5}  {'on object':>9}  {'random':>6}  "
           f"{'deletion':>8}  {'random':>6}  {'insertion':>9}  {'random':>6}")
    ok = [row for row in table if row["status"] == "ok"]
    for row in table:
        if row["status"] != "ok":
            report(f"{row['path']:<28} error: {row['error']}")
            continue
        report(f"{row['path']:<28} {row['pred_name']:<10} {row['pred_prob']:>5.2f}  {row['on_object']:>9.2f}  "
               f"{row['on_object_random']:>6.2f}  {row['deletion_auc']:>8.2f}  {row['deletion_auc_random']:>6.2f}  "
               f"{row['insertion_auc']:>9.2f}  {row['insertion_auc_random']:>6.2f}")
    accuracy = sum(row["path"].split("/")[0] == row["pred_name"] for row in ok) / max(len(ok), 1)
    quality = quality_summary(ok)
    report(f"accuracy on held-out images: {accuracy:.2f}")
    report(
        f"top-5 positive superpixels on the object: {quality['on_object'] or 0:.2f} of their area "
        f"(random superpixels: {quality['on_object_random'] or 0:.2f})"
    )
    report(
        f"deletion AUC {quality['deletion_auc'] or 0:.2f} vs {quality['deletion_auc_random'] or 0:.2f} for a random "
        f"order (lower is better; LIME's order wins on {100 * (quality['deletion_beats_random'] or 0):.0f}% of "
        f"images); insertion AUC {quality['insertion_auc'] or 0:.2f} vs {quality['insertion_auc_random'] or 0:.2f}"
    )
    report(f"manifest: {result.manifest}   job record: {os.path.join(run, 'job.json')}")
    return DemoResult(result.manifest, accuracy, quality["on_object"] or 0.0, quality["on_object_random"] or 0.0,
                      quality["deletion_auc"] or 0.0, quality["deletion_auc_random"] or 0.0,
                      tuple(m["val_accuracy"] for m in trained.metrics))


def _as_options(recipe: Mapping[str, object]) -> str:
    """The ``xai-batch train`` options that give ``recipe``."""
    options = []
    for name, value in recipe.items():
        flag = name.replace("_", "-")
        options.append((f"--{flag}" if value else f"--no-{flag}") if isinstance(value, bool) else f"--{flag} {value}")
    return " ".join(options)
