"""Models handed over in Python: a ``torch.nn.Module`` or a ``classifier_fn``, made a model like a file.

``explain_dataset(source, out, model=...)`` takes either instead of a
checkpoint (:func:`model_source`):

- A **network object**. A torchvision architecture (its class and every
  weight's name and shape those of ``torchvision.models.get_model(NAME)``)
  becomes a checkpoint in our format, so it runs exactly as the same weights
  saved to a file would, on every engine and method. Any other module is
  shipped to the replicas as it is (:class:`~xai_batch.models.NetworkObject`):
  PyTorch runs it, ONNX Runtime where it exports, Grad-CAM with a
  ``target_layer`` the user names. Either way the replicas get a copy on the
  CPU in eval mode; the user's object is not changed.
- A **function**, lime's ``classifier_fn``: uint8 images of the model's
  frame (N, crop, crop, 3) in, (N, classes) probabilities out. It runs in the
  replicas as written (its own device, its own precision); Grad-CAM, which
  needs the network's layers, is refused.

The model is run once on a blank image on the driver before Ray starts, to
learn its classes and refuse one that does not answer (N, classes).

**Identity.** A manifest row names its model, and resume and ``--reuse``
trust rows of the same model. A network object's identity is the digest of
its weights and class names (:func:`weights_digest`): the same weights give
the same ``model_id`` in every session, and changed weights a new one. Its
code is not in the digest: after changing a network's code but not its
weights, give a ``model_id`` of your own or run with ``overwrite``. A
function's identity is the ``model_id`` given with it, else the digest of
the function as Ray pickles it (what it closes over included), which can
change from one session to the next, so give a ``model_id`` to resume a
function's run in a new session.

This module imports torch (the network objects are torch's) but no Ray
beyond its pickler; :mod:`xai_batch.distributed.run` runs what it returns.
"""

from __future__ import annotations

import copy
import hashlib
import pickle
from collections.abc import Callable, Sequence

import numpy as np
import torch

from xai_batch.engines.function_engine import ClassifierFunction
from xai_batch.errors import ConfigError, ModelError, one_line
from xai_batch.model_files import MAX_CLASSES, check_file_runs
from xai_batch.models import (
    MAX_CLASS_NAME, ModelSource, NetworkObject, architectures, build_model, checkpoint_payload, head_weight,
)
from xai_batch.preprocessing import SEEDS, Preprocessing

__all__ = ["model_source", "module_source", "function_source", "weights_digest", "torchvision_arch",
           "shipped_bytes", "check_model_runs", "MAX_MODEL_ID"]

MAX_MODEL_ID = 200  # characters of a model_id the user gives: it is in every row


def model_source(model: torch.nn.Module | Callable[[np.ndarray], np.ndarray], class_names: Sequence[str] | None = None,
                 preprocessing: Preprocessing | dict | None = None, model_id: str | None = None) -> ModelSource:
    """A network object or a ``classifier_fn`` as a model (:func:`module_source`, :func:`function_source`).

    ``preprocessing`` is the frame the model takes its input in
    (:class:`~xai_batch.preprocessing.Preprocessing` or its dict; the seeds'
    by default): a function gets its images resized and cropped so, a network
    object normalised so too.
    """
    frame = _frame(preprocessing)
    names = _class_names(class_names)
    if model_id is not None and (not isinstance(model_id, str) or not 0 < len(model_id) <= MAX_MODEL_ID):
        raise ConfigError(f"model_id must be a text of 1 to {MAX_MODEL_ID} characters, got {model_id!r:.80}",
                          "model_id")
    if isinstance(model, torch.nn.Module):
        return module_source(model, names, frame, model_id)
    if callable(model):
        return function_source(model, names, frame, model_id)
    raise ConfigError(f"model must be a torch.nn.Module or a classifier_fn (images in, probabilities out), got "
                      f"{type(model).__name__}", "model")


def module_source(module: torch.nn.Module, class_names: tuple[str, ...] | None = None,
                  preprocessing: Preprocessing = SEEDS, model_id: str | None = None) -> ModelSource:
    """A network object as a model: a torchvision architecture as our checkpoint, any other as itself."""
    state = {name: tensor.detach().cpu() for name, tensor in module.state_dict().items()}
    arch = torchvision_arch(module, state)
    if arch is not None:
        on_cpu = build_model(arch, _head_outputs(state))
        on_cpu.load_state_dict(state, strict=True)
    else:
        on_cpu = copy.deepcopy(module).cpu().eval()
    num_classes = _answer_width(lambda batch: on_cpu(torch.from_numpy(batch)).detach().numpy(),
                                np.zeros((1, 3, preprocessing.crop, preprocessing.crop), np.float32), "model")
    names = _names_for(class_names, num_classes)
    digest = weights_digest(state, names)
    if arch is not None:
        return ModelSource(model_id=model_id or f"{arch}:weights-{digest[:16]}", class_names=names, arch=arch,
                           payload=checkpoint_payload(arch, state, names, (), preprocessing),
                           preprocessing=preprocessing)
    shipped_bytes("model", on_cpu)  # a module whose class the workers could not rebuild: refused here, by name
    return ModelSource(model_id=model_id or f"{type(module).__name__}:weights-{digest[:16]}", class_names=names,
                       arch=type(module).__name__, payload=NetworkObject(on_cpu, names, preprocessing, digest),
                       preprocessing=preprocessing)


def function_source(fn: Callable[[np.ndarray], np.ndarray], class_names: tuple[str, ...] | None = None,
                    preprocessing: Preprocessing = SEEDS, model_id: str | None = None) -> ModelSource:
    """A ``classifier_fn`` as a model, named by ``model_id`` or by the digest of its pickled bytes."""
    pickled = shipped_bytes("model", fn)
    num_classes = _answer_width(fn, np.zeros((1, preprocessing.crop, preprocessing.crop, 3), np.uint8),
                                "model (a classifier_fn)")
    names = _names_for(class_names, num_classes)
    identity = model_id or f"classifier_fn:{hashlib.sha256(pickled).hexdigest()[:16]}"
    return ModelSource(model_id=identity, class_names=names, arch="classifier_fn", payload=ClassifierFunction(fn),
                       preprocessing=preprocessing)


def weights_digest(state: dict[str, torch.Tensor], class_names: Sequence[str]) -> str:
    """SHA-256 of a network's weights (every tensor's name, dtype, shape and bytes, in order) and class names."""
    digest = hashlib.sha256()
    for name, tensor in state.items():
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}\0{flat.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    digest.update("\0".join(class_names).encode())
    return digest.hexdigest()


def torchvision_arch(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """The torchvision architecture ``module`` is, by its class and its weights' names and shapes; None for
    any other network (a torchvision one whose head was replaced by a stack of layers included)."""
    import torchvision

    family = type(module).__module__  # torchvision.models.resnet: resnet18, ..., wide_resnet101_2
    num_classes = _head_outputs(state)
    if not family.startswith("torchvision.models.") or num_classes is None:
        return None
    shapes = {name: tuple(tensor.shape) for name, tensor in state.items()}
    for arch in architectures():
        if torchvision.models.get_model_builder(arch).__module__ != family:
            continue
        with torch.device("meta"):  # shapes only: nothing allocated, nothing initialised
            candidate = build_model(arch, num_classes)
        if type(candidate) is type(module) and shapes == {n: tuple(t.shape) for n, t in candidate.state_dict().items()}:
            return arch
    return None


def shipped_bytes(name: str, value: object) -> bytes:
    """``value`` as Ray pickles it to send it to the workers; a ``ConfigError`` naming ``name`` if it cannot be."""
    from ray import cloudpickle

    try:
        return cloudpickle.dumps(value)
    except (pickle.PicklingError, TypeError, AttributeError, RecursionError) as exc:
        raise ConfigError(f"{name} cannot be sent to Ray's workers: {one_line(exc)}", name) from None


def check_model_runs(model: ModelSource, engine: str, precision: str, methods: Sequence[str],
                     target_layer: str | None) -> None:
    """Refuse, before any work, an engine, precision, method or target layer the model cannot run with."""
    check_file_runs(model.file_format, engine, precision, methods)
    if isinstance(model.payload, ClassifierFunction):
        if engine != "auto" or precision != "fp32":
            option = "engine" if engine != "auto" else "precision"
            raise ConfigError(f"a classifier_fn runs as it is written, on its own device and precision: leave "
                              f"{option} at its default", option)
        if "gradcam" in methods:
            raise ConfigError("Grad-CAM needs the network's layers, which a classifier_fn does not expose: pass the "
                              "network itself as model=, or explain with lime or kernelshap", "methods")
    if "gradcam" in methods and (target_layer is not None or isinstance(model.payload, NetworkObject)):
        from xai_batch.methods.gradcam import target_layer as find_layer

        built = (model.payload.module if isinstance(model.payload, NetworkObject)
                 else build_model(model.arch, model.num_classes))  # the layers, not the weights
        try:
            find_layer(built, model.arch, target_layer)
        except ValueError as exc:
            raise ConfigError(str(exc), "target_layer") from exc


def _frame(preprocessing: Preprocessing | dict | None) -> Preprocessing:
    if preprocessing is None:
        return SEEDS
    if isinstance(preprocessing, Preprocessing):
        return preprocessing
    if isinstance(preprocessing, dict):
        try:
            return Preprocessing.from_dict(preprocessing)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"preprocessing: {one_line(exc)}", "preprocessing") from None
    raise ConfigError(f"preprocessing must be a Preprocessing or its dict, got {type(preprocessing).__name__}",
                      "preprocessing")


def _class_names(class_names: Sequence[str] | None) -> tuple[str, ...] | None:
    if class_names is None:
        return None
    if isinstance(class_names, str) or not all(isinstance(n, str) and 0 < len(n) <= MAX_CLASS_NAME
                                               for n in class_names):
        raise ConfigError(f"class_names must be a list of names of 1 to {MAX_CLASS_NAME} characters", "class_names")
    names = tuple(class_names)
    if len(set(names)) != len(names):
        raise ConfigError("class_names names a class twice", "class_names")
    return names


def _names_for(class_names: tuple[str, ...] | None, num_classes: int) -> tuple[str, ...]:
    if class_names is None:
        return tuple(f"class_{i}" for i in range(num_classes))
    if len(class_names) != num_classes:
        raise ConfigError(f"class_names names {len(class_names)} classes but the model answers {num_classes}",
                          "class_names")
    return class_names


def _answer_width(run: Callable[[np.ndarray], np.ndarray], blank: np.ndarray, what: str) -> int:
    """How many classes ``run`` answers for one blank input; a ``ModelError`` if it raises or answers otherwise
    than (1, classes) with 2 to ``MAX_CLASSES`` classes."""
    try:
        with torch.inference_mode():
            answer = np.asarray(run(blank))
    except Exception as exc:
        raise ModelError(f"{what} fails on a blank {blank.shape} input: {type(exc).__name__}: "
                         f"{one_line(exc, keep='first', limit=300)}") from exc
    if answer.ndim != 2 or answer.shape[0] != 1 or not 2 <= answer.shape[1] <= MAX_CLASSES:
        raise ModelError(f"{what} answers an array of shape {answer.shape} for one image: it must answer "
                         f"(images, classes) with 2 to {MAX_CLASSES} classes")
    return int(answer.shape[1])


def _head_outputs(state: dict[str, torch.Tensor]) -> int | None:
    """The classifier's outputs, as :func:`xai_batch.models.parse_checkpoint` finds them."""
    head = head_weight(state)
    return None if head is None else int(head.shape[0])
