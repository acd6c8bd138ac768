"""Models from elsewhere: a TorchScript or an ONNX file, with the JSON beside it.

A network exported by its owners runs as it is: ``--checkpoint model.onnx``
on ONNX Runtime, ``--checkpoint model.pt`` (a ``torch.jit.save`` archive) on
PyTorch. What a file cannot say is said in ``FILE.json`` beside it
(``model.onnx.json``)::

    {"class_names": ["glioma", "meningioma", "none", "pituitary"],
     "preprocessing": {"resize": 256, "crop": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
     "outputs": "logits"}

``class_names`` is required (one per output); ``preprocessing`` takes the
fields of :class:`~xai_batch.preprocessing.Preprocessing`, each defaulting to
the seeds'; ``outputs`` is ``logits`` (softmax applied, the default) or
``probabilities`` (used as they are). The model takes a float32
``(N, 3, crop, crop)`` batch, normalised, and returns ``(N, classes)``; the
driver runs it once on a blank image to check that before any work starts.

Such a file is a program, not weights: a TorchScript archive runs its own
code, an ONNX graph its operators. Pass only files you trust as you would
trust their source code. Grad-CAM needs the network's layers, so it takes a
torchvision architecture's checkpoint, not a file.

This module knows the formats and the JSON; :mod:`xai_batch.models` makes
them a model like any other. It imports no Ray.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from xai_batch.errors import ConfigError, ModelError, one_line
from xai_batch.preprocessing import Preprocessing

__all__ = ["ModelFile", "FILE_FORMATS", "FORMAT_NAMES", "OUTPUTS", "file_format", "sidecar_path", "read_sidecar",
           "check_model_file", "check_file_runs"]

FILE_FORMATS = ("onnx", "torchscript")
FORMAT_NAMES = {"onnx": "an ONNX", "torchscript": "a TorchScript"}  # each format as a message names it
OUTPUTS = ("logits", "probabilities")
SIDECAR_SUFFIX = ".json"
MAX_SIDECAR_BYTES = 1 << 20  # class names and a few numbers; anything bigger is not a sidecar
MAX_CLASSES = 100_000
MAX_FIXED_BATCH = 256  # a file exported for one batch size: the most images a GPU replica runs at once


@dataclass(frozen=True)
class ModelFile:
    """What the JSON beside a model file says."""

    class_names: tuple[str, ...]
    preprocessing: Preprocessing
    outputs: str = "logits"


def file_format(target: str, data: bytes) -> str | None:
    """'onnx' for a ``.onnx`` file, 'torchscript' for a ``torch.jit.save`` archive, None for anything else
    (a checkpoint of ours: ``torch.save`` writes a zip too, but without TorchScript's ``code/``)."""
    if target.lower().endswith(".onnx"):
        return "onnx"
    if data[:4] == b"PK\x03\x04":
        try:
            names = zipfile.ZipFile(io.BytesIO(data)).namelist()
        except zipfile.BadZipFile:
            return None
        if any("/code/" in name for name in names) and any(name.endswith("/constants.pkl") for name in names):
            return "torchscript"
    return None


def sidecar_path(target: str) -> str:
    """Where a model file's JSON is: ``FILE.json``."""
    return target + SIDECAR_SUFFIX


def read_sidecar(data: bytes, where: str) -> ModelFile:
    """Parse and check a model file's JSON; a ``ModelError`` names the file and what is wrong."""
    if len(data) > MAX_SIDECAR_BYTES:
        raise ModelError(f"{where} is {len(data)} bytes: over {MAX_SIDECAR_BYTES}, it is not a model's description")
    try:
        values = json.loads(data)
    except ValueError as exc:
        raise ModelError(f"{where} is not JSON: {one_line(exc)}") from exc
    if not isinstance(values, dict):
        raise ModelError(f"{where} must hold a JSON object with class_names, got {type(values).__name__}")
    unknown = sorted(set(values) - {"class_names", "preprocessing", "outputs"})
    if unknown:
        raise ModelError(f"{where}: unknown field(s) {', '.join(unknown)}: the fields are class_names, "
                         "preprocessing, outputs")
    names = values.get("class_names")
    if (not isinstance(names, list) or not 2 <= len(names) <= MAX_CLASSES
            or not all(isinstance(name, str) and name for name in names)):
        raise ModelError(f"{where}: class_names must be a list of 2 to {MAX_CLASSES} names, one per output")
    if len(set(names)) != len(names):
        raise ModelError(f"{where}: class_names names a class twice")
    outputs = values.get("outputs", "logits")
    if outputs not in OUTPUTS:
        raise ModelError(f"{where}: outputs must be one of {', '.join(OUTPUTS)}, got {outputs!r}")
    try:
        preprocessing = Preprocessing.from_dict(values.get("preprocessing", {}))
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{where}: preprocessing: {one_line(exc)}") from exc
    return ModelFile(tuple(names), preprocessing, outputs)


def check_model_file(fmt: str, data: bytes, described: ModelFile, name: str) -> None:
    """Run the model once on a blank input of its size; a ``ModelError`` if it does not load or does not
    answer one value per class."""
    crop = described.preprocessing.crop
    try:
        if fmt == "onnx":
            import onnxruntime

            session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
            batch = session.get_inputs()[0].shape[0]
            rows = batch if isinstance(batch, int) and batch > 0 else 1
            if rows > MAX_FIXED_BATCH:  # every batch of its replica would hold that many images
                raise ModelError(f"{name} takes a fixed batch of {rows} images, more than the {MAX_FIXED_BATCH} "
                                 "a replica runs at once: export it with a dynamic batch axis or a smaller batch")
            answer = session.run(None, {session.get_inputs()[0].name: np.zeros((rows, 3, crop, crop), np.float32)})[0]
        else:
            import torch

            with torch.inference_mode():
                answer = torch.jit.load(io.BytesIO(data), map_location="cpu").eval()(torch.zeros(1, 3, crop, crop))
            answer = answer.numpy()
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"{name} does not run as {FORMAT_NAMES[fmt]} model on a (N, 3, {crop}, {crop}) input: "
                         f"{one_line(exc, keep='first', limit=300)}") from exc
    shape = tuple(np.shape(answer))
    if len(shape) != 2 or shape[1] != len(described.class_names):
        raise ModelError(f"{name} answers a {shape} array for one image, but {sidecar_path(name)} names "
                         f"{len(described.class_names)} classes: it must answer (N, {len(described.class_names)})")


def check_file_runs(fmt: str | None, engine: str, precision: str, methods: Sequence[str]) -> None:
    """Refuse, before any work, an engine, precision or method a model file cannot run with."""
    if fmt is None:
        return
    if fmt == "onnx" and engine == "torch":
        raise ConfigError("an ONNX file runs on ONNX Runtime: --engine onnxruntime (or auto)", "engine")
    if fmt == "onnx" and precision != "fp32":
        raise ConfigError(f"an ONNX file runs in fp32 on ONNX Runtime; {precision} needs a PyTorch model", "precision")
    if fmt == "torchscript" and engine == "onnxruntime":
        raise ConfigError("a TorchScript file runs on PyTorch: --engine torch (or auto)", "engine")
    if "gradcam" in methods:
        raise ConfigError(f"Grad-CAM needs the network's layers, which {FORMAT_NAMES[fmt]} file does not expose: "
                          "explain it with lime or kernelshap, or give a torchvision architecture's checkpoint",
                          "methods")
