"""``xai-batch evaluate``: how good is the model on this data, as a Ray Data batch prediction.

Images are read and decoded by Ray Data tasks (on the nodes, in batches) and
classified by a pool of model actors, the pattern Ray recommends for batch
inference; no LIME. The truth is each image's class folder, the prediction
the model's class through the label map, and the result ``eval.json``:
accuracy overall and per class, the confusion matrix and every wrong image.
"""

from __future__ import annotations

import datetime
import os
from collections import Counter
from dataclasses import dataclass

import numpy as np
import ray

from xai_batch.analysis.findings import confusion
from xai_batch.engines import check_engine
from xai_batch.errors import ConfigError, ImageError, one_line
from xai_batch.images import DEFAULT_MAX_PIXELS, file_bytes, load_image
from xai_batch.preprocessing import Preprocessing
from xai_batch.sources import discover_images
from xai_batch.labels import check_truth_meets_predictions, folder_label, load_label_map
from xai_batch.model_files import check_file_runs
from xai_batch.models import resolve_model
from xai_batch.distributed.cluster import connected
from xai_batch.storage import is_uri, locate, write_json

__all__ = ["EvaluateConfig", "EvaluateResult", "run_evaluate"]

BATCH = 32  # images per Ray Data batch


@dataclass(frozen=True)
class EvaluateConfig:
    """An evaluation: a class-per-folder DATA_DIR, a model, and where ``eval.json`` goes."""

    data_dir: str
    out: str
    checkpoint: str | None = None
    label_map: str | None = None
    actors: int | None = None
    precision: str = "fp32"
    engine: str = "auto"
    max_pixels: int = DEFAULT_MAX_PIXELS
    address: str | None = None
    insecure: bool = False  # send the cluster's token to a remote GCS over plain gRPC

    def __post_init__(self) -> None:
        if not locate(self.data_dir).is_dir():
            raise ConfigError(f"DATA_DIR {self.data_dir!r} is not a folder", "data_dir")
        if locate(self.out).is_dir():
            raise ConfigError(f"{self.out!r} is a folder; give the JSON file to write", "out")
        if self.actors is not None and self.actors < 1:
            raise ConfigError(f"actors must be at least 1, got {self.actors}", "actors")
        check_engine(self.engine, self.precision)


@dataclass(frozen=True)
class EvaluateResult:
    path: str
    images: int
    errors: int
    accuracy: float | None


class _Classifier:
    """A Ray Data actor holding one model: decoded batches in, predictions out."""

    def __init__(self, checkpoint_bytes: bytes, precision: str, engine: str, threads: int) -> None:
        import torch

        from xai_batch.engines import make_engine
        from xai_batch.models import parse_checkpoint

        torch.set_num_threads(threads)
        self.engine = make_engine(engine, parse_checkpoint(checkpoint_bytes, check=False), precision, 256, threads)

    def __call__(self, batch: dict) -> dict:
        ok = np.flatnonzero(batch["error"] == "")
        index = np.full(len(batch["path"]), -1, np.int64)
        prob = np.zeros(len(batch["path"]), np.float32)
        if len(ok):
            probs = self.engine.classify(np.stack([batch["pixels"][i] for i in ok]))
            index[ok] = probs.argmax(1)
            prob[ok] = probs.max(1)
        return {"path": batch["path"], "error": batch["error"], "pred_index": index, "pred_prob": prob}


def _decode(batch: dict, source: str, max_pixels: int, preprocessing: Preprocessing) -> dict:
    """Read and preprocess (as the model does) a batch of files; a bad one gets a one-line error and black pixels."""
    pixels, errors = [], []
    for path in batch["path"]:
        try:
            data = locate(source).child(*path.split("/")).read_bytes(file_bytes(max_pixels))
            pixels.append(load_image(data, max_pixels, preprocessing).pixels)
            errors.append("")
        except (OSError, ImageError) as exc:
            pixels.append(np.zeros((preprocessing.crop, preprocessing.crop, 3), np.uint8))
            errors.append(one_line(exc))
    return {"path": batch["path"], "pixels": np.stack(pixels), "error": np.array(errors, dtype=object)}


def run_evaluate(config: EvaluateConfig, progress: bool = True) -> EvaluateResult:
    """Classify every image under ``config.data_dir`` and write ``config.out``."""
    model = resolve_model(config.checkpoint)
    check_file_runs(model.file_format, config.engine, config.precision, ())
    paths = discover_images(config.data_dir)
    truths = {path: folder_label(path) for path in paths}
    if not paths or None in truths.values():
        loose = next((path for path, label in truths.items() if label is None), None)
        detail = f"{loose!r} is not in a class folder" if loose else "there are no images"
        raise ConfigError(f"DATA_DIR {config.data_dir!r} must hold one folder per class: {detail}", "data_dir")
    check_truth_meets_predictions(set(truths.values()), config.label_map, model.class_names)
    mapping = load_label_map(config.label_map)
    source = config.data_dir if is_uri(config.data_dir) else os.path.abspath(config.data_dir)
    counts: Counter = Counter()  # images by (true, predicted) label
    wrong, errors = [], []
    with connected(config.address, config.insecure):
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = progress
        gpus = ray.cluster_resources().get("GPU", 0)
        actors = config.actors or max(1, int(gpus))
        threads = max(1, int(ray.cluster_resources().get("CPU", 1)) // actors)
        predictions = (
            ray.data.from_items([{"path": path} for path in paths])
            .map_batches(_decode, fn_kwargs={"source": source, "max_pixels": config.max_pixels,
                                             "preprocessing": model.preprocessing}, batch_size=BATCH)
            .map_batches(_Classifier, fn_constructor_args=(model.payload, config.precision, config.engine, threads),
                         batch_size=BATCH, concurrency=actors, num_gpus=1 if gpus else 0)
        )
        # Streamed: the driver keeps counts and the wrong images, never a row per image.
        for batch in predictions.iter_batches(batch_size=BATCH, batch_format="numpy"):
            for path, error, index, prob in zip(batch["path"].tolist(), batch["error"].tolist(),
                                                batch["pred_index"].tolist(), batch["pred_prob"].tolist()):
                if error:
                    errors.append({"path": path, "error": error})
                    continue
                label = mapping(index) if mapping else model.class_names[index]
                truth = truths[path]
                counts[truth, label] += 1
                if truth != label:
                    wrong.append({"path": path, "true": truth, "predicted": label,
                                  "class": model.class_names[index], "prob": round(prob, 4)})
    wrong.sort(key=lambda entry: entry["path"])
    errors.sort(key=lambda entry: entry["path"])
    scores = confusion(counts)
    document = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "data_dir": config.data_dir, "model_id": model.model_id, "label_map": config.label_map,
        "images": len(paths), "evaluated": sum(counts.values()), **scores, "wrong": wrong, "errors": errors,
    }
    path = write_json(config.out, document)
    return EvaluateResult(path=path, images=len(paths), errors=len(errors), accuracy=scores["accuracy"])
