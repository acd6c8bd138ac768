"""Models from elsewhere: a TorchScript or an ONNX file, with the JSON beside it.

A network exported by its owners runs as it is: ``--checkpoint model.onnx``
on ONNX Runtime, ``--checkpoint torchscript:model.pt`` (a ``torch.jit.save``
archive) on PyTorch. What a file cannot say is said in ``FILE.json`` beside it
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

Such a file is a program, not weights. A TorchScript archive runs its own
code as it loads, so one runs only when the user names it as such
(``torchscript:PATH``): a file is never recognised as TorchScript by its
content, and a ``.pt`` that turns out to be one is refused, naming the
prefix. Pass only files you trust as you would trust their source code. An
ONNX graph runs ONNX Runtime's operators; its weights may lie in files
beside it (external data), which are read from the model file's own folder
only, never through ``..``, an absolute path or a link out of it, and
travel inside the model (:func:`inline_external_data`). Grad-CAM needs the
network's layers, so it takes a torchvision architecture's checkpoint, not a file.

This module knows the formats and the JSON; :mod:`xai_batch.models` makes
them a model like any other. It imports no Ray.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from xai_batch.errors import ConfigError, ModelError, one_line
from xai_batch.preprocessing import Preprocessing
from xai_batch.storage import Location, OutsideLocation, TooLarge, locate

__all__ = ["ModelFile", "FILE_FORMATS", "FORMAT_NAMES", "OUTPUTS", "is_torchscript_archive", "sidecar_path",
           "read_sidecar", "inline_external_data", "check_model_file", "check_file_runs"]

FILE_FORMATS = ("onnx", "torchscript")
FORMAT_NAMES = {"onnx": "an ONNX", "torchscript": "a TorchScript"}  # each format as a message names it
OUTPUTS = ("logits", "probabilities")
SIDECAR_SUFFIX = ".json"
MAX_SIDECAR_BYTES = 1 << 20  # class names and a few numbers; anything bigger is not a sidecar
MAX_CLASSES = 100_000
MAX_FIXED_BATCH = 256  # a file exported for one batch size: the most images a GPU replica runs at once
MAX_ONNX_BYTES = (2 << 30) - (64 << 20)  # a model with its external data inline: under protobuf's 2 GB, with room


@dataclass(frozen=True)
class ModelFile:
    """What the JSON beside a model file says."""

    class_names: tuple[str, ...]
    preprocessing: Preprocessing
    outputs: str = "logits"


def is_torchscript_archive(data: bytes) -> bool:
    """Whether ``data`` is a ``torch.jit.save`` archive (``torch.save`` writes a zip too, but without
    TorchScript's ``code/``). Read only to say what a file is, never to decide to run it."""
    if data[:4] != b"PK\x03\x04":
        return False
    try:
        names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    except zipfile.BadZipFile:
        return False
    return any("/code/" in name for name in names) and any(name.endswith("/constants.pkl") for name in names)


def inline_external_data(data: bytes, where: Location) -> bytes:
    """An ONNX file's bytes with the external data its tensors name read into them, from ``where``'s folder.

    A tensor may keep its values in another file (``location``, with
    ``offset`` and ``length``), which ONNX Runtime would open relative to
    the working directory when it loads a model from bytes, so a file
    naming ``../../.aws/credentials`` would be read into the weights. Here a
    location is a path inside the model file's own folder or it is a
    ``ModelError``; the read refuses a link out of the folder, and the whole
    model stays under protobuf's 2 GB. A model without external data comes back as it is.
    """
    import onnx

    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:
        raise ModelError(f"{where.target} is not an ONNX model: {one_line(exc, keep='first', limit=200)}") from exc
    external = [tensor for tensor in _tensors(model) if tensor.data_location == onnx.TensorProto.EXTERNAL]
    if not external:
        return data
    folder = locate(where.target.rsplit("/", 1)[0] if "/" in where.target else ".")
    files: dict[str, bytes] = {}
    budget = MAX_ONNX_BYTES - len(data)
    for tensor in external:
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        try:
            if location not in files:
                files[location] = folder.child(*location.replace("\\", "/").split("/")).read_bytes(max(budget, 0))
                budget -= len(files[location])
        except OutsideLocation:
            raise ModelError(f"{where.target}: tensor {tensor.name!r} reads its data from {location[:200]!r}, outside "
                             "the model file's folder: an ONNX file's external data must lie beside it") from None
        except TooLarge:
            raise ModelError(f"{where.target}: its external data passes {MAX_ONNX_BYTES} bytes, more than a model "
                             "can hold inline") from None
        except OSError as exc:
            raise ModelError(f"{where.target}: tensor {tensor.name!r}'s external data {location[:200]!r}: "
                             f"{one_line(exc)}") from None
        offset = int(info.get("offset", 0) or 0)
        length = int(info.get("length", 0) or 0) or len(files[location]) - offset
        if offset < 0 or length < 0 or offset + length > len(files[location]):
            raise ModelError(f"{where.target}: tensor {tensor.name!r} reads bytes {offset}..{offset + length} of "
                             f"{location[:200]!r}, which has {len(files[location])}")
        tensor.raw_data = files[location][offset:offset + length]
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT
    return model.SerializeToString()


def _tensors(model) -> Iterator:
    """Every tensor of an ONNX model that can hold data: initializers, sparse ones, and those in node
    attributes, in every graph, subgraph and function."""

    def of_graph(graph) -> Iterator:
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield from (sparse.values, sparse.indices)
        for node in graph.node:
            yield from of_node(node)

    def of_node(node) -> Iterator:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("sparse_tensor"):
                yield from (attribute.sparse_tensor.values, attribute.sparse_tensor.indices)
            for sparse in attribute.sparse_tensors:
                yield from (sparse.values, sparse.indices)
            if attribute.HasField("g"):
                yield from of_graph(attribute.g)
            for graph in attribute.graphs:
                yield from of_graph(graph)

    yield from of_graph(model.graph)
    for function in model.functions:
        for node in function.node:
            yield from of_node(node)


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
