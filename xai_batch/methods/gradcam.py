"""Grad-CAM (Selvaraju et al., 2017) on the network's last convolutional stage, by ``pytorch-grad-cam``.

The target layer is the one pytorch-grad-cam's README gives for the family
(``TARGET_LAYERS``: ResNets' ``layer4[-1]``, MobileNets' and EfficientNets'
``features[-1]``, ...); for vision transformers the tokens of the last block's
first LayerNorm, reshaped to their grid (``reshape_for``), as the README
shows for ViT and Swin.

The replica computes the heatmap (one forward and one backward pass per
image, in fp32 whatever the job's precision: it is one pass, and gradients
in bf16 would change the map); the method turns it into one weight per
superpixel, the heatmap's mean over the superpixel, so the top superpixels
and the quality measures compare with LIME's and KernelSHAP's on the same
segments.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from xai_batch.methods import Attribution, GradientMethod, GradientOutputs, explained_labels

if TYPE_CHECKING:  # torch is imported where a pass is built, not with the method
    from xai_batch.models import LoadedCheckpoint

__all__ = ["GradCamMethod", "GradCam", "METHOD", "TARGET_LAYERS", "superpixel_means", "target_layer", "reshape_for"]

# pytorch-grad-cam's target layer for each family, by the start of the architecture's name (first match wins),
# as a dotted path into the model where -1 is a stage's last block.
TARGET_LAYERS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("resnet", "resnext", "wide_resnet"), "layer4.-1"),
    (("regnet",), "trunk_output.-1"),
    (("mobilenet", "efficientnet", "densenet", "vgg", "alexnet", "squeezenet", "convnext"), "features.-1"),
    (("mnasnet",), "layers.-1"),
    (("shufflenet",), "conv5"),
    (("googlenet",), "inception5b"),
    (("inception",), "Mixed_7c"),
    (("maxvit",), "blocks.-1"),
    (("vit",), "encoder.layers.-1.ln_1"),
    (("swin",), "features.-1"),
)


def target_layer(model, arch: str, path: str | None = None):
    """The module Grad-CAM explains: at ``path`` (``layer3.-1``: dots for attributes, numbers for a stage's
    blocks), or by default the one for ``arch``'s family (``TARGET_LAYERS``). A ``ValueError`` says which
    part of a path is not in the model and what is there."""
    import torch

    if path is None:
        path = next((path for prefixes, path in TARGET_LAYERS if arch.startswith(prefixes)), None)
        if path is None:
            raise ValueError(f"no Grad-CAM target layer is known for {arch}: give one with --target-layer")
    layer, walked = model, []
    for part in path.split("."):
        try:
            layer = layer[int(part)] if part.lstrip("-").isdigit() else getattr(layer, part)
        except (AttributeError, IndexError, TypeError, KeyError):
            children = ", ".join(name for name, _ in layer.named_children()) or "no sub-modules"
            raise ValueError(f"{arch} has no {'.'.join([*walked, part])} ({'.'.join(walked) or 'the model'} has "
                             f"{children})") from None
        walked.append(part)
    if not isinstance(layer, torch.nn.Module):
        raise ValueError(f"{path} in {arch} is not a layer")
    return layer


def reshape_for(arch: str):
    """The transform from the target layer's activations to (B, C, H, W), for transformers; None for CNNs."""
    if arch.startswith("vit"):
        def tokens_to_grid(tokens):  # (B, 1 + H*W, C), the class token first
            grid = int(round((tokens.shape[1] - 1) ** 0.5))
            return tokens[:, 1:, :].reshape(tokens.shape[0], grid, grid, tokens.shape[2]).permute(0, 3, 1, 2)
        return tokens_to_grid
    if arch.startswith("swin"):
        return lambda features: features.permute(0, 3, 1, 2)  # (B, H, W, C)
    return None


def superpixel_means(heatmap: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """(S,) float64: the heatmap's mean over each superpixel."""
    ids = np.asarray(segments).ravel()
    sums = np.bincount(ids, weights=np.asarray(heatmap, np.float64).ravel())
    return sums / np.maximum(np.bincount(ids, minlength=len(sums)), 1)


class GradCam:
    """Grad-CAM of ``layer`` (a dotted path), by default the family's target layer (:func:`target_layer`).

    Call it with a (crop, crop, 3) uint8 image and the number of labels to
    explain; it returns the softmax probabilities (C,) float32 of its forward
    pass, the explained labels (most probable first, ranked as lime ranks
    them) and one (crop, crop) float32 heatmap in [0, 1] per label.
    """

    def __init__(self, loaded: LoadedCheckpoint, device: str | None = None, layer: str | None = None) -> None:
        import torch
        from pytorch_grad_cam import GradCAM

        from xai_batch.engines.torch_engine import exact_fp32
        from xai_batch.models import network

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        exact_fp32(self.device)  # the map of fp32 gradients, not TF32's
        self.model = network(loaded).to(self.device)
        self.preprocessing = loaded.preprocessing
        self.cam = GradCAM(model=self.model, target_layers=[target_layer(self.model, loaded.arch, layer)],
                           reshape_transform=reshape_for(loaded.arch))

    def __call__(self, image: np.ndarray, top_labels: int) -> GradientOutputs:
        import torch

        from xai_batch.engines.torch_engine import normalise

        pixels = normalise(image, self.device, self.preprocessing).permute(2, 0, 1)
        batch = pixels.unsqueeze(0).repeat(top_labels, 1, 1, 1)
        targets = [_Ranked(rank, top_labels) for rank in range(top_labels)]
        heatmaps = self.cam(input_tensor=batch, targets=targets)
        probs = torch.softmax(self.cam.outputs[0].detach().float(), dim=0).cpu().numpy()
        return GradientOutputs(probs, explained_labels(probs, top_labels), np.asarray(heatmaps, dtype=np.float32))


class _Ranked:
    """Grad-CAM's target: the logit of the ``rank``-th explained label of this very forward pass.

    The labels are ranked from the pass's own softmax, so one forward pass
    serves both the ranking and the gradients.
    """

    def __init__(self, rank: int, top_labels: int) -> None:
        self.rank = rank
        self.top_labels = top_labels

    def __call__(self, logits):
        import torch

        probs = torch.softmax(logits.detach().float(), dim=-1).cpu().numpy()
        return logits[explained_labels(probs, self.top_labels)[self.rank]]


class GradCamMethod(GradientMethod):
    name = "gradcam"

    def gradient_pass(self, loaded: LoadedCheckpoint, device: str, layer: str | None = None) -> GradCam:
        return GradCam(loaded, device, layer)

    def attribute(
        self, rows: np.ndarray, segments: np.ndarray, outputs: GradientOutputs, labels: list[int], seed: int,
        num_samples: int, device: str | None = None,
    ) -> list[Attribution]:
        """Each label's heatmap averaged per superpixel."""
        return [
            Attribution(label, superpixel_means(heatmap, segments), heatmap=heatmap)
            for label, heatmap in zip(labels, outputs.maps)
        ]


METHOD = GradCamMethod()
