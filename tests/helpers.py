"""Helpers the tests share: models made on the spot, loading them, verifying manifests."""

from __future__ import annotations

import functools
import os

import torch
import torchvision


def save_random_model(path: str, num_classes: int, seed: int = 0, arch: str = "resnet18") -> str:
    """An untrained but real checkpoint of torchvision's ``arch`` (ResNet18 by default) in our format."""
    from xai_batch.models import build_model

    torch.manual_seed(seed)
    model = build_model(arch, num_classes)
    names = [f"label{i}" for i in range(num_classes)]
    torch.save({"arch": arch, "state_dict": model.state_dict(), "class_names": names}, path)
    return path


def save_responsive_model(path: str, arch: str, num_classes: int = 4, seed: int = 0) -> str:
    """A random checkpoint of ``arch`` built to answer: what it says depends on the image.

    Freshly initialised, many families answer every image alike (MobileNet v3's
    activations fade to nothing through its depth, ViT's head starts at zero), and
    LIME of a constant has nothing to find. So BatchNorm's statistics are measured
    on noise, a zero head is drawn at random, and the head is scaled so that the
    logits spread by about one.
    """
    from xai_batch.models import build_model

    torch.manual_seed(seed)
    model = build_model(arch, num_classes)
    noise = torch.randn(8, 3, 224, 224)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # the plain average over the batch below
    head = [weight for weight in model.parameters() if weight.ndim >= 2][-1]
    with torch.no_grad():
        model.train()
        model(noise)
        model.eval()
        if not head.any():
            torch.nn.init.normal_(head, std=0.02)
        head.mul_(1.0 / max(float(model(noise).std()), 1e-6))
    names = [f"label{i}" for i in range(num_classes)]
    torch.save({"arch": arch, "state_dict": model.state_dict(), "class_names": names}, path)
    return path


def checkpoint_bytes(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def loaded_checkpoint(path: str):
    """The checkpoint at ``path`` parsed as a replica parses it: what engines and gradient passes take."""
    from xai_batch.models import parse_checkpoint

    return parse_checkpoint(checkpoint_bytes(path), check=False)


def load_model(path: str) -> torch.nn.Module:
    from xai_batch.models import build_model, parse_checkpoint

    loaded = parse_checkpoint(checkpoint_bytes(path))
    return build_model(loaded.arch, len(loaded.class_names), loaded.state_dict)


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
# The detector's input frame: the generated shapes resized to 128 and cropped to 112, a quarter of the seeds'
# pixels, so each of the many runs that use it segments and perturbs a quarter as much. The seeds' own
# frame is tested end to end with the photos and the random checkpoint.
SHAPES_FRAME = {"resize": 128, "crop": 112}


def save_shape_detector(path: str, frame: dict | None = SHAPES_FRAME) -> str:
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
    from xai_batch.preprocessing import IMAGENET_MEAN, IMAGENET_STD

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
    frame = {} if frame is None else {"preprocessing": frame}  # None: the seeds' frame
    torch.save({"arch": "resnet18", "state_dict": model.state_dict(), "class_names": list(SHAPE_CLASSES), **frame},
               path)
    return path


def assert_rows_are_limes(table, source: str, checkpoint: str, num_samples: int) -> None:
    """Each row's segments, weights (within 1e-4), intercept and top-5 mask are lime's own."""
    import numpy as np
    import pytest

    from xai_batch.manifest import SCHEMA, decode_mask, decode_segments
    from xai_batch.maths import MASK_AGAINST, MASK_FOR

    assert table.schema == SCHEMA
    for row in table.to_pylist():
        lime = limes_explanation(os.path.join(source, row["path"]), checkpoint, row["seed"], num_samples)
        segments = decode_segments(row["segments"])
        assert np.array_equal(segments, lime.segments), row["path"]
        assert row["num_segments"] == len(np.unique(lime.segments)) == len(row["weights"])
        label = lime.top_labels[0]
        assert row["explained_index"] == label == row["pred_index"]
        expected = np.zeros(row["num_segments"])
        for segment, weight in lime.local_exp[label]:
            expected[segment] = weight
        np.testing.assert_allclose(row["weights"], expected, atol=1e-4, rtol=0)
        assert row["intercept"] == pytest.approx(lime.intercept[label], abs=1e-4)
        _, lime_mask = lime.get_image_and_mask(label, positive_only=False, num_features=5, hide_rest=False)
        mask = decode_mask(row["mask"])
        assert np.array_equal(mask == MASK_FOR, lime_mask == 1) and np.array_equal(mask == MASK_AGAINST, lime_mask == -1)


@functools.cache
def limes_explanation(path: str, checkpoint: str, seed: int, num_samples: int):
    """lime's own explanation of the image, with the seed's batch_predict (computed once for every engine),
    in the checkpoint's preprocessing (the seeds' unless it records its own)."""
    from lime.lime_image import LimeImageExplainer

    from xai_batch.images import load_image
    from xai_batch.models import parse_checkpoint
    from xai_batch.reference import seed_batch_predict

    preprocessing = parse_checkpoint(checkpoint_bytes(checkpoint)).preprocessing
    with open(path, "rb") as handle:
        image = load_image(handle.read(), preprocessing=preprocessing).pixels
    return LimeImageExplainer(random_state=seed).explain_instance(
        image, seed_batch_predict(load_model(checkpoint), preprocessing), top_labels=1, hide_color=0,
        num_samples=num_samples,
        random_seed=seed,
    )



def tiny_net(num_classes: int = 3, seed: int = 0) -> torch.nn.Module:
    """A network of the user's own, no torchvision architecture: two convolutions, pooled, and a head, its
    weights drawn from ``seed``. Its class is made here, as a notebook makes one, so Ray ships it by value
    (a class in a module the workers cannot import would not reach them)."""

    class TinyNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 5, stride=4), torch.nn.ReLU(),
                                                torch.nn.Conv2d(8, 16, 3, stride=2), torch.nn.ReLU())
            self.head = torch.nn.Linear(16, num_classes)

        def forward(self, batch: torch.Tensor) -> torch.Tensor:
            return self.head(self.features(batch).mean(dim=(2, 3)))

    torch.manual_seed(seed)
    return TinyNet().eval()
