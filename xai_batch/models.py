"""ResNet18 checkpoints: the format we write, what we accept, ImageNet weights.

A checkpoint is a file saved with ``torch.save`` holding
``{"arch": "resnet18", "state_dict": ..., "class_names": [...], "metrics": [...]}``,
or a bare torchvision ``resnet18`` state dict. Everything loads with
``weights_only=True``: a checkpoint can never run code.

The driver resolves the model once (so a bad checkpoint fails before Ray
starts) and ships the file's bytes to every replica; replicas never read the
user's path, which may not exist on a cluster's other nodes, and do not check
the bytes again. torchvision is imported only where a network is built: its
import takes two seconds (it imports ``torch._dynamo``), which a replica
running the cached ONNX export would otherwise pay at every start.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from xai_batch.errors import ModelError, one_line
from xai_batch.storage import locate

__all__ = [
    "ARCH",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ModelSource",
    "LoadedCheckpoint",
    "resolve_model",
    "parse_checkpoint",
    "build_resnet18",
    "save_checkpoint",
    "imagenet_weights_path",
]

# The normalisation torchvision's ImageNet weights were trained with; our own checkpoints train with it too.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ARCH = "resnet18"
DOWNLOAD_TIMEOUT_S = 20


@dataclass(frozen=True)
class ModelSource:
    """A resolved model: what the replicas load and what the manifest names."""

    model_id: str
    class_names: tuple[str, ...]
    checkpoint_bytes: bytes

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True)
class LoadedCheckpoint:
    state_dict: dict[str, torch.Tensor]
    class_names: tuple[str, ...]
    metrics: tuple[dict, ...] = ()


def resolve_model(checkpoint: str | None) -> ModelSource:
    """Read and validate the checkpoint, or locate torchvision's ImageNet weights."""
    if checkpoint is None:
        path = imagenet_weights_path()
        data = _read(path)
        parse_checkpoint(data)
        return ModelSource(
            model_id=f"{ARCH}:IMAGENET1K_V1",
            class_names=tuple(_imagenet().meta["categories"]),
            checkpoint_bytes=data,
        )
    data = _read(checkpoint)
    loaded = parse_checkpoint(data, name=checkpoint)
    digest = hashlib.sha256(data).hexdigest()[:16]
    return ModelSource(model_id=f"{ARCH}:{digest}", class_names=loaded.class_names, checkpoint_bytes=data)


def parse_checkpoint(data: bytes, name: str = "checkpoint", check: bool = True) -> LoadedCheckpoint:
    """Load checkpoint bytes and check they are a ResNet18 state dict (``check``: every tensor fits the
    network; without it, for bytes the driver has checked, only what can be seen without building one)."""
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"{name} does not load with torch.load(weights_only=True): {one_line(exc, keep='first')}") from exc
    if isinstance(obj, Mapping) and "state_dict" in obj:
        arch = obj.get("arch", ARCH)
        if arch != ARCH:
            raise ModelError(f"{name} is a {arch!r} checkpoint; only {ARCH!r} is supported")
        state_dict, names, metrics = obj["state_dict"], obj.get("class_names"), obj.get("metrics", ())
    elif isinstance(obj, Mapping):
        state_dict, names, metrics = obj, None, ()
    else:
        raise ModelError(f"{name} holds a {type(obj).__name__}, not a ResNet18 state dict")
    fc = state_dict.get("fc.weight") if isinstance(state_dict, Mapping) else None
    if not isinstance(fc, torch.Tensor) or fc.ndim != 2:
        raise ModelError(f"{name} is not a ResNet18 state dict (no 2-D 'fc.weight')")
    num_classes = int(fc.shape[0])
    class_names = tuple(str(n) for n in names) if names else tuple(f"class_{i}" for i in range(num_classes))
    if len(class_names) != num_classes:
        raise ModelError(f"{name} names {len(class_names)} classes but its fc layer has {num_classes} outputs")
    if check:
        try:
            build_resnet18(num_classes).load_state_dict(state_dict, strict=True)
        except RuntimeError as exc:
            raise ModelError(f"{name} is not a ResNet18 state dict: {one_line(exc, limit=300)}") from exc
    return LoadedCheckpoint(dict(state_dict), class_names, tuple(metrics))


def build_resnet18(num_classes: int, state_dict: Mapping[str, torch.Tensor] | None = None) -> torch.nn.Module:
    """torchvision's ResNet18 with ``num_classes`` outputs, in eval mode."""
    import torchvision

    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    if state_dict is not None:
        model.load_state_dict(state_dict, strict=True)
    return model.eval()


def save_checkpoint(
    path: str, model: torch.nn.Module, class_names: Sequence[str], metrics: Sequence[Mapping] = ()
) -> None:
    """Write our checkpoint format atomically (temporary file, then rename)."""
    payload = {
        "arch": ARCH,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "class_names": list(class_names),
        "metrics": [dict(m) for m in metrics],
    }
    with locate(path).atomic_writer() as handle:
        torch.save(payload, handle)


def imagenet_weights_path() -> str:
    """Path of torchvision's ResNet18 ImageNet weights, downloading them if needed.

    Looks where torchvision caches them (``$TORCH_HOME/hub/checkpoints``). When
    they are absent and cannot be fetched, says which file to put where.
    """
    url = _imagenet().url
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
            f"ResNet18 ImageNet weights are not cached and could not be downloaded ({reason}): "
            f"put {filename} from {url} at {path} (set TORCH_HOME to change the folder), "
            "or pass --checkpoint FILE"
        ) from exc
    return path


def _imagenet():
    """torchvision's ResNet18 ImageNet weights (their URL and class names)."""
    import torchvision

    return torchvision.models.ResNet18_Weights.IMAGENET1K_V1


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
