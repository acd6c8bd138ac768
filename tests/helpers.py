"""Helpers the tests share: models made on the spot, loading them, verifying manifests."""

from __future__ import annotations

import torch
import torchvision


def save_random_resnet(path: str, num_classes: int, seed: int = 0) -> str:
    """An untrained but real ResNet18 checkpoint in our format."""
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(num_classes=num_classes).eval()
    names = [f"label{i}" for i in range(num_classes)]
    torch.save({"arch": "resnet18", "state_dict": model.state_dict(), "class_names": names}, path)
    return path


def checkpoint_bytes(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def load_model(path: str) -> torch.nn.Module:
    from xai_batch.models import build_resnet18, parse_checkpoint

    loaded = parse_checkpoint(checkpoint_bytes(path))
    return build_resnet18(len(loaded.class_names), loaded.state_dict)


def assert_verified(out: str, source: str | None = None) -> None:
    """``xai-batch verify`` passes on ``out`` (the suite runs it after every end-to-end test)."""
    from click.testing import CliRunner

    from xai_batch.cli import cli

    args = ["verify", out] + (["--source", source] if source else [])
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert result.output.rstrip().endswith("— OK"), result.output


SHAPE_CLASSES = ("disc", "none", "square", "triangle")  # the generated shapes' class folders, sorted
_DETECTORS = {  # class: (weights on R, G, B in [0, 1], the object's typical response that gives logit SHAPE_LOGIT)
    "disc": ((1.0, -0.5, -0.5), 0.043),
    "square": ((-0.5, 1.0, -0.5), 0.032),
    "triangle": ((-0.5, -0.5, 1.0), 0.020),
}
_MARGIN = 0.25  # how much a pixel's own hue must exceed the mean of the other two to count
SHAPE_LOGIT, NONE_LOGIT = 2.5, 0.5


def save_shape_detector(path: str) -> str:
    """A ResNet18 that classifies the generated shapes by construction, not by training.

    The stem's first three filters average a 7x7 window and fire (after BN's
    bias and the ReLU) where one hue exceeds the other two by ``_MARGIN``: red,
    green, blue. Every residual block but the downsampling ones is the
    identity (its last BN zeroed); those average 3x3 windows of the first
    three channels, so the pooled features are each colour's area-weighted
    response over the whole picture. The head turns them into logits scaled
    so that a typical object scores ``SHAPE_LOGIT`` against "none"'s constant
    ``NONE_LOGIT``: the object alone decides the class, probabilities stay
    between about 0.4 and 0.999 (never saturated, so every label's LIME
    surrogate has a target that varies), and hiding the object (black, as
    ``hide_color=0`` does) hands the image to "none". An explanation that is
    right lands on the object.
    """
    from xai_batch.models import IMAGENET_MEAN, IMAGENET_STD

    model = torchvision.models.resnet18(num_classes=len(SHAPE_CLASSES))
    state = {name: torch.zeros_like(value) for name, value in model.state_dict().items()}
    for name in state:
        if name.endswith("running_var"):
            state[name] = torch.ones_like(state[name])
    for channel, (weights, _) in enumerate(_DETECTORS.values()):
        for colour in range(3):  # conv1 sees (pixel - mean) / std; weights are on the pixel in [0, 1]
            state["conv1.weight"][channel, colour] = weights[colour] * IMAGENET_STD[colour] / 49
        state["bn1.weight"][channel] = 1.0
        state["bn1.bias"][channel] = sum(w * m for w, m in zip(weights, IMAGENET_MEAN)) - _MARGIN
        for layer in ("layer2", "layer3", "layer4"):
            for conv in ("conv1", "conv2"):
                state[f"{layer}.0.{conv}.weight"][channel, channel] = 1 / 9
            state[f"{layer}.0.bn1.weight"][channel] = state[f"{layer}.0.bn2.weight"][channel] = 1.0
    for channel, (name, (_, typical)) in enumerate(_DETECTORS.items()):
        state["fc.weight"][SHAPE_CLASSES.index(name), channel] = SHAPE_LOGIT / typical
    state["fc.bias"][SHAPE_CLASSES.index("none")] = NONE_LOGIT
    model.load_state_dict(state)
    torch.save({"arch": "resnet18", "state_dict": model.state_dict(), "class_names": list(SHAPE_CLASSES)}, path)
    return path
