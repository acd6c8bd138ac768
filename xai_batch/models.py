"""Classifier checkpoints: the format we write, what we accept, torchvision's pretrained weights.

A checkpoint is a file saved with ``torch.save`` holding
``{"arch": NAME, "state_dict": ..., "class_names": [...], "metrics": [...],
"preprocessing": {...}}``, where NAME is any torchvision classification model
(``architectures()``; ``resnet18`` when a checkpoint does not say) and the
preprocessing is what the model takes its input with
(:class:`~xai_batch.preprocessing.Preprocessing`; the seeds' when a checkpoint
does not say), or a bare torchvision ``resnet18`` state dict. A TorchScript or
ONNX file with its JSON beside it (:mod:`xai_batch.model_files`) is a model
too: the replicas get it in our format, the file's bytes inside. Everything
loads with ``weights_only=True``: a checkpoint can never run code (a model
file is a program, and is run as one). ``--checkpoint torchvision:NAME[.WEIGHTS]``
names torchvision's own pretrained weights (``torchvision:resnet50.IMAGENET1K_V2``;
the architecture's default weights without ``.WEIGHTS``), explained with
their ImageNet classes and with the preprocessing torchvision gives them
(``weights.transforms()``); no ``--checkpoint`` is the seeds' model: ResNet18's
``IMAGENET1K_V1`` weights with the seeds' preprocessing, ``Resize((256, 256))``.

The driver resolves the model once (so a bad checkpoint fails before Ray
starts) and ships a checkpoint's bytes to every replica; replicas never read the
user's path, which may not exist on a cluster's other nodes, and do not check
the bytes again. torchvision is imported only where a network is built: its
import takes two seconds (it imports ``torch._dynamo``), which a replica
running the cached ONNX export would otherwise pay at every start.
"""

from __future__ import annotations

import copy
import hashlib
import io
import os
import re
import urllib.request
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from xai_batch.errors import ModelError, one_line
from xai_batch.model_files import (
    FORMAT_NAMES, MAX_CLASSES, check_model_file, inline_external_data, is_torchscript_archive, read_sidecar,
    sidecar_path,
)
from xai_batch.preprocessing import SEEDS, Preprocessing
from xai_batch.storage import TORCHSCRIPT_PREFIX, TORCHVISION_PREFIX, is_torchvision, locate

if TYPE_CHECKING:  # a user's function is engines' business; a model only carries it
    from xai_batch.engines.function_engine import ClassifierFunction

__all__ = [
    "DEFAULT_ARCH",
    "ModelSource",
    "NetworkObject",
    "LoadedCheckpoint",
    "network",
    "architectures",
    "resolve_model",
    "parse_checkpoint",
    "build_model",
    "replace_head",
    "head_weight",
    "save_checkpoint",
    "pretrained_weights",
    "weights_path",
]

DEFAULT_ARCH = "resnet18"
DOWNLOAD_TIMEOUT_S = 20
# Built without their auxiliary classifiers (only used by a training loss we do not use) and with their
# initialisation chosen, which torchvision otherwise warns about.
_BUILD_OPTIONS = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}
_AUXILIARY = ("aux1.", "aux2.", "AuxLogits.")  # their weights in torchvision's pretrained files, dropped


@dataclass(frozen=True)
class NetworkObject:
    """A network handed over in Python (``model=``) that is no torchvision architecture: the replicas get the
    object itself, pickled by Ray (its class by value where a notebook or script defined it), on the CPU."""

    module: torch.nn.Module
    class_names: tuple[str, ...]
    preprocessing: Preprocessing
    digest: str  # of its weights and class names: its identity (:func:`xai_batch.model_objects.weights_digest`)

    def loaded(self) -> LoadedCheckpoint:
        """The network as a replica holds a parsed checkpoint: named for its class, Grad-CAM's ``arch``."""
        return LoadedCheckpoint({}, self.class_names, (), type(self.module).__name__, self.preprocessing,
                                digest=self.digest, module=self.module)


@dataclass(frozen=True)
class ModelSource:
    """A resolved model: what the replicas load (``payload``) and what the manifest names.

    ``payload`` is a checkpoint's bytes in our format (a torchvision network
    object handed over in Python becomes one too), a :class:`NetworkObject`,
    or a user's ``classifier_fn`` (:class:`~xai_batch.engines.function_engine.ClassifierFunction`).
    """

    model_id: str
    class_names: tuple[str, ...]
    payload: bytes | NetworkObject | ClassifierFunction
    arch: str = DEFAULT_ARCH
    preprocessing: Preprocessing = SEEDS
    file_format: str | None = None  # 'onnx' or 'torchscript' for a model file, which has no ``arch``

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A model as a replica holds it: a checkpoint parsed once, a model file's bytes, or a network object."""

    state_dict: dict[str, torch.Tensor]
    class_names: tuple[str, ...]
    metrics: tuple[dict, ...] = ()
    arch: str = DEFAULT_ARCH
    preprocessing: Preprocessing = SEEDS
    file_format: str | None = None  # a model file's: its bytes are ``model_file``, and ``state_dict`` is empty
    model_file: bytes | None = None
    outputs: str = "logits"  # or 'probabilities': what a model file answers
    digest: str = ""  # the SHA-256 of the bytes it was parsed from: what the ONNX export is cached by
    module: torch.nn.Module | None = None  # a network object's (``state_dict`` is then empty)


def network(loaded: LoadedCheckpoint) -> torch.nn.Module:
    """A network of its own for whoever runs the model, in eval mode on the CPU: a copy of a network object,
    a TorchScript file loaded, or the architecture built with the checkpoint's weights."""
    if loaded.module is not None:
        return copy.deepcopy(loaded.module).cpu().eval()
    if loaded.file_format == "torchscript":
        return torch.jit.load(io.BytesIO(loaded.model_file), map_location="cpu").eval()
    return build_model(loaded.arch, len(loaded.class_names), loaded.state_dict)


def architectures() -> tuple[str, ...]:
    """Every torchvision classification model, by the name ``torchvision.models.get_model`` takes."""
    import torchvision

    return tuple(torchvision.models.list_models(module=torchvision.models))


def resolve_model(checkpoint: str | None) -> ModelSource:
    """Read and validate the checkpoint, or locate torchvision's pretrained weights it names."""
    if checkpoint is None or is_torchvision(checkpoint):
        name = (checkpoint or f"{TORCHVISION_PREFIX}{DEFAULT_ARCH}.IMAGENET1K_V1").removeprefix(TORCHVISION_PREFIX)
        arch, _, chosen = name.partition(".")
        weights = pretrained_weights(arch, chosen or None)
        state_dict = parse_checkpoint(_read(weights_path(weights)), name=str(weights), arch=arch).state_dict
        class_names = tuple(weights.meta["categories"])
        preprocessing = SEEDS if checkpoint is None else Preprocessing.of_torchvision(weights)
        return ModelSource(model_id=f"{arch}:{weights.name}", class_names=class_names, arch=arch,
                           preprocessing=preprocessing,
                           payload=checkpoint_payload(arch, state_dict, class_names, (), preprocessing))
    if checkpoint.startswith(TORCHSCRIPT_PREFIX):  # the user's word that this file's code may run
        path = checkpoint.removeprefix(TORCHSCRIPT_PREFIX)
        data = _read(path)
        if not is_torchscript_archive(data):
            raise ModelError(f"{path} is not a TorchScript archive (what torch.jit.save writes): pass a checkpoint "
                             "without the torchscript: prefix")
        return _model_file(path, data, "torchscript")
    data = _read(checkpoint)
    if checkpoint.lower().endswith(".onnx"):
        return _model_file(checkpoint, inline_external_data(data, locate(checkpoint)), "onnx")
    if is_torchscript_archive(data):
        raise ModelError(f"{checkpoint} is a TorchScript archive, a program that runs its own code as it loads, so "
                         f"it is not run unasked: if you trust it as you would its source code, pass --checkpoint "
                         f"{TORCHSCRIPT_PREFIX}{checkpoint}")
    loaded = parse_checkpoint(data, name=checkpoint)
    digest = hashlib.sha256(data).hexdigest()[:16]
    return ModelSource(model_id=f"{loaded.arch}:{digest}", class_names=loaded.class_names, payload=data,
                       arch=loaded.arch, preprocessing=loaded.preprocessing)


def _model_file(checkpoint: str, data: bytes, fmt: str) -> ModelSource:
    """A TorchScript or ONNX file and the JSON beside it, checked by running it once, in our format."""
    beside = sidecar_path(checkpoint)
    try:
        described = read_sidecar(locate(beside).read_bytes(), beside)
    except FileNotFoundError:
        raise ModelError(f"{checkpoint} is {FORMAT_NAMES[fmt]} file: say its class names (and preprocessing) "
                         f"in {beside} "
                         "(README: Your own model)") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {beside}: {one_line(exc)}") from exc
    check_model_file(fmt, data, described, checkpoint)
    buffer = io.BytesIO()
    torch.save({"format": fmt, "model_file": torch.frombuffer(bytearray(data), dtype=torch.uint8),
                "class_names": list(described.class_names), "preprocessing": described.preprocessing.to_dict(),
                "outputs": described.outputs}, buffer)
    payload = buffer.getvalue()  # the file and its description: a change to either is another model
    return ModelSource(model_id=f"{fmt}:{hashlib.sha256(payload).hexdigest()[:16]}", class_names=described.class_names,
                       payload=payload, preprocessing=described.preprocessing, file_format=fmt)


def parse_checkpoint(data: bytes, name: str = "checkpoint", check: bool = True,
                     arch: str = DEFAULT_ARCH) -> LoadedCheckpoint:
    """Load checkpoint bytes and check they are a state dict of their architecture (``check``: every
    tensor fits the network; without it, for bytes the driver has checked, only what can be seen without
    building one). ``arch`` is what a bare state dict is taken for."""
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"{name} does not load with torch.load(weights_only=True): {one_line(exc, keep='first')}") from exc
    _check_size(obj, name)
    preprocessing = SEEDS
    if isinstance(obj, Mapping) and "model_file" in obj:  # a model file in our format (``_model_file``)
        if check:  # only the driver makes these, from a file it has run: a user's must come as the file itself
            raise ModelError(f"{name} holds a model file in xai-batch's own wrapping: pass the TorchScript or "
                             "ONNX file itself, with its JSON beside it")
        return LoadedCheckpoint({}, tuple(obj["class_names"]), (), DEFAULT_ARCH,
                                Preprocessing.from_dict(obj["preprocessing"]), str(obj["format"]),
                                obj["model_file"].numpy().tobytes(), str(obj["outputs"]),
                                hashlib.sha256(data).hexdigest())
    if isinstance(obj, Mapping) and "state_dict" in obj:
        arch = obj.get("arch", DEFAULT_ARCH)
        if not isinstance(arch, str) or not arch.isidentifier():
            raise ModelError(f"{name} records an architecture that is not a name: {_shown(arch)}")
        state_dict, names, metrics = obj["state_dict"], obj.get("class_names"), obj.get("metrics", ())
        _check_class_names(names, name)
        if not isinstance(metrics, (list, tuple)) or not all(isinstance(m, Mapping) for m in metrics):
            raise ModelError(f"{name} records metrics that are not a list of records: {_shown(metrics)}")
        if "preprocessing" in obj:
            try:
                preprocessing = Preprocessing.from_dict(obj["preprocessing"])
            except (TypeError, ValueError) as exc:
                raise ModelError(f"{name} records a preprocessing that cannot be used: {one_line(exc, limit=300)}") \
                    from exc
    elif isinstance(obj, Mapping):
        state_dict, names, metrics = obj, None, ()
    else:
        raise ModelError(f"{name} holds a {type(obj).__name__}, not a state dict")
    if arch in _BUILD_OPTIONS and isinstance(state_dict, Mapping):
        state_dict = {key: value for key, value in state_dict.items() if not str(key).startswith(_AUXILIARY)}
    if check and arch not in architectures():
        raise ModelError(f"{name} is a {arch!r} checkpoint, which is not a torchvision classification model "
                         "(xai-batch train --help lists them)")
    head = head_weight(state_dict)
    if head is None:
        raise ModelError(f"{name} is not a {arch} state dict (no classifier weight)")
    num_classes = int(head.shape[0])
    class_names = tuple(str(n) for n in names) if names else tuple(f"class_{i}" for i in range(num_classes))
    if len(class_names) != num_classes:
        raise ModelError(f"{name} names {len(class_names)} classes but its classifier has {num_classes} outputs")
    if check:
        try:
            build_model(arch, num_classes).load_state_dict(state_dict, strict=True)
        except RuntimeError as exc:
            raise ModelError(f"{name} is not a {arch} state dict: {one_line(exc, limit=300)}") from exc
    return LoadedCheckpoint(dict(state_dict), class_names, tuple(metrics), arch, preprocessing,
                            digest=hashlib.sha256(data).hexdigest())


MAX_CHECKPOINT_ITEMS = 1_000_000  # values besides the tensors (names, keys, metrics), counted each time reached
MAX_CHECKPOINT_TEXT = 64 << 20  # characters of text among them, likewise
MAX_CLASS_NAME = 1000  # characters in one class name


def _check_size(obj, name: str) -> None:
    """Refuse a checkpoint whose values besides its tensors would take more than a few seconds to go
    through, before anything turns one into text.

    A pickle can share one list between many places: 2.5 KB of lists nested
    in lists, each sharing the last, are billions of names to ``str()``
    (19 s and 2.6 GB for one, a hundred times that for one level more).
    Every value is counted each time it is reached, as ``str()`` would reach
    it, so the walk stops after ``MAX_CHECKPOINT_ITEMS`` values or
    ``MAX_CHECKPOINT_TEXT`` characters, however deep the sharing goes.
    """
    items, text, stack = 0, 0, [obj]
    while stack:
        value = stack.pop()
        if isinstance(value, (str, bytes)):
            text += len(value)
        elif isinstance(value, Mapping):
            items += len(value)
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, (list, tuple, set, frozenset)):
            items += len(value)
            stack.extend(value)
        if items > MAX_CHECKPOINT_ITEMS or text > MAX_CHECKPOINT_TEXT:
            raise ModelError(f"{name} holds more than {MAX_CHECKPOINT_ITEMS} values or {MAX_CHECKPOINT_TEXT} "
                             "characters besides its weights (lists shared many times over?): not a checkpoint")


def _check_class_names(names, name: str) -> None:
    """Class names, where a checkpoint has them: a list of at most ``MAX_CLASSES`` texts (or numbers), each
    at most ``MAX_CLASS_NAME`` characters."""
    if names is None:
        return
    if not isinstance(names, (list, tuple)) or len(names) > MAX_CLASSES:
        raise ModelError(f"{name}: class_names must be a list of at most {MAX_CLASSES} names, got "
                         f"{type(names).__name__}" + (f" of {len(names)}" if isinstance(names, (list, tuple)) else ""))
    for index, value in enumerate(names):
        if not isinstance(value, (str, int)) or isinstance(value, bool) or len(str(value)) > MAX_CLASS_NAME:
            raise ModelError(f"{name}: class name {index} is {_shown(value)}, not a text of at most "
                             f"{MAX_CLASS_NAME} characters")


def _shown(value) -> str:
    """A value from a checkpoint as a message shows it: short texts and numbers as they are, else its type."""
    if isinstance(value, (int, float)) or (isinstance(value, str) and len(value) <= 80):
        return repr(value)
    return f"a {type(value).__name__}" + (f" of {len(value)}" if isinstance(value, (str, list, tuple, dict)) else "")


def head_weight(state_dict) -> torch.Tensor | None:
    """The classifier's weight: the last weight of two or more dimensions (a Linear's, or SqueezeNet's final
    1x1 convolution's), its first dimension the number of classes. torchvision registers every
    classification model's head last."""
    if not isinstance(state_dict, Mapping):
        return None
    weights = [tensor for key, tensor in state_dict.items()
               if str(key).endswith("weight") and isinstance(tensor, torch.Tensor) and tensor.ndim >= 2]
    return weights[-1] if weights else None


def build_model(arch: str, num_classes: int, state_dict: Mapping[str, torch.Tensor] | None = None) -> torch.nn.Module:
    """torchvision's ``arch`` with ``num_classes`` outputs (the family's own head), in eval mode."""
    import torchvision

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # some builders narrate their defaults
        model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes,
                                             **_BUILD_OPTIONS.get(arch, {}))
    if state_dict is not None:
        model.load_state_dict(state_dict, strict=True)
    return model.eval()


def replace_head(model: torch.nn.Module, num_classes: int) -> torch.nn.Module:
    """``model`` with its classifier (the last Linear, or SqueezeNet's final 1x1 convolution) replaced by a
    new one of ``num_classes`` outputs: ``fc``, ``classifier[-1]``, ``heads.head``, whatever the family calls it."""
    name, layer = [(name, module) for name, module in model.named_modules()
                   if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d))][-1]
    if isinstance(layer, torch.nn.Linear):
        new = torch.nn.Linear(layer.in_features, num_classes, bias=layer.bias is not None)
    else:
        new = torch.nn.Conv2d(layer.in_channels, num_classes, layer.kernel_size, layer.stride)
    parent_name, _, attribute = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if attribute.isdigit():
        parent[int(attribute)] = new
    else:
        setattr(parent, attribute, new)
    return model


def checkpoint_payload(arch: str, state_dict: Mapping[str, torch.Tensor], class_names: Sequence[str],
                       metrics: Sequence[Mapping] = (), preprocessing: Preprocessing = SEEDS) -> bytes:
    """Our checkpoint format's bytes."""
    buffer = io.BytesIO()
    torch.save({"arch": arch, "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
                "class_names": list(class_names), "metrics": [dict(m) for m in metrics],
                "preprocessing": preprocessing.to_dict()}, buffer)
    return buffer.getvalue()


def save_checkpoint(
    path: str, model: torch.nn.Module, class_names: Sequence[str], metrics: Sequence[Mapping] = (),
    arch: str = DEFAULT_ARCH, preprocessing: Preprocessing = SEEDS,
) -> None:
    """Write our checkpoint format atomically (temporary file, then rename)."""
    data = checkpoint_payload(arch, model.state_dict(), class_names, metrics, preprocessing)
    with locate(path).atomic_writer() as handle:
        handle.write(data)


def pretrained_weights(arch: str, name: str | None = None):
    """torchvision's weights enum for ``arch``: ``name`` (``IMAGENET1K_V2``), or the architecture's default."""
    import torchvision

    if arch not in architectures():
        raise ModelError(f"{arch!r} is not a torchvision classification model (xai-batch train --help lists them)")
    weights = torchvision.models.get_model_weights(arch)
    if name is None:
        return weights.DEFAULT
    try:
        return weights[name]
    except KeyError:
        raise ModelError(f"{arch} has no weights {name!r}: {', '.join(w.name for w in weights)}") from None


def weights_path(weights) -> str:
    """Path of torchvision's pretrained ``weights`` file, downloading it if needed.

    Looks where torchvision caches them (``$TORCH_HOME/hub/checkpoints``). When
    they are absent and cannot be fetched, says which file to put where.
    """
    url = weights.url
    filename = os.path.basename(url)
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    path = os.path.join(folder, filename)
    if os.path.isfile(path):
        return path
    try:
        _download(url, path)
    except Exception as exc:
        reason = one_line(exc)
        raise ModelError(
            f"{weights} weights are not cached and could not be downloaded ({reason}): "
            f"put {filename} from {url} at {path} (set TORCH_HOME to change the folder), "
            "or pass --checkpoint FILE"
        ) from exc
    return path


def _download(url: str, path: str) -> None:
    """Fetch to a temporary file, check torchvision's hash prefix, rename."""
    expected = re.search(r"-([a-f0-9]+)\.", os.path.basename(url))
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
        data = response.read()
    if expected and not hashlib.sha256(data).hexdigest().startswith(expected.group(1)):
        raise ModelError(f"downloaded {url} does not match its hash prefix {expected.group(1)}")
    with locate(path).atomic_writer() as handle:
        handle.write(data)


def _read(target: str) -> bytes:
    """The checkpoint's bytes, from a local path or a URI."""
    try:
        return locate(target).read_bytes()
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read checkpoint {target!r}: {one_line(exc)}") from exc
