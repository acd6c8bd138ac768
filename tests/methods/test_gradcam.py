"""Grad-CAM: the replica's heatmaps are pytorch-grad-cam's, averaged per superpixel."""

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from helpers import checkpoint_bytes, load_model, save_responsive_model
from xai_batch.engines import normalise
from xai_batch.methods import GradientOutputs
from xai_batch.methods.gradcam import METHOD, GradCam, superpixel_means


def test_superpixel_means_by_hand():
    segments = np.array([[0, 0, 1], [2, 2, 1]])
    heatmap = np.array([[0.2, 0.4, 1.0], [0.0, 0.5, 0.0]], np.float32)
    np.testing.assert_allclose(superpixel_means(heatmap, segments), [0.3, 0.5, 0.25], atol=1e-7)


def _vit_grid(tokens, height=7, width=7):
    """pytorch-grad-cam's README's reshape_transform for ViT: the patch tokens back on their grid."""
    result = tokens[:, 1:, :].reshape(tokens.size(0), height, width, tokens.size(2))
    return result.transpose(2, 3).transpose(1, 2)


# The target layer pytorch-grad-cam's README gives for each family, written out here independently.
FAMILIES = {
    "resnet18": (lambda model: model.layer4[-1], None),
    "mobilenet_v3_small": (lambda model: model.features[-1], None),
    "squeezenet1_1": (lambda model: model.features[-1], None),
    "vit_b_32": (lambda model: model.encoder.layers[-1].ln_1, _vit_grid),
}


@pytest.fixture(scope="module")
def family_checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("families")
    return {arch: save_responsive_model(str(folder / f"{arch}.pt"), arch) for arch in FAMILIES}


@pytest.mark.parametrize("top_labels", [1, 2])
def test_heatmaps_are_pytorch_grad_cams(random_checkpoint, top_labels):
    _assert_maps_are_pytorch_grad_cams(random_checkpoint, "resnet18", top_labels)


@pytest.mark.parametrize("arch", [arch for arch in FAMILIES if arch != "resnet18"])
def test_every_family_has_its_own_target_layer(family_checkpoints, arch):
    _assert_maps_are_pytorch_grad_cams(family_checkpoints[arch], arch, 2)


def _assert_maps_are_pytorch_grad_cams(checkpoint, arch, top_labels):
    """Each ranked label's map equals GradCAM with ClassifierOutputTarget(label) on the family's layer, within 1e-5."""
    image = (np.random.default_rng(4).random((224, 224, 3)) * 255).astype(np.uint8)
    found = GradCam(checkpoint_bytes(checkpoint), "cpu")(image, top_labels)
    probs, labels, heatmaps = found.probs, found.labels, found.maps
    model = load_model(checkpoint).eval()
    pixels = normalise(image, torch.device("cpu")).permute(2, 0, 1).unsqueeze(0)
    with torch.no_grad():
        expected_probs = torch.softmax(model(pixels), dim=1)[0].numpy()
    np.testing.assert_allclose(probs, expected_probs, atol=1e-6)
    assert labels == [int(label) for label in np.argsort(expected_probs)[::-1][:top_labels]]
    assert heatmaps.shape == (top_labels, 224, 224)
    layer, reshape = FAMILIES[arch]
    for label, heatmap in zip(labels, heatmaps):
        expected = GradCAM(model=model, target_layers=[layer(model)], reshape_transform=reshape)(
            input_tensor=pixels, targets=[ClassifierOutputTarget(label)])[0]
        np.testing.assert_allclose(heatmap, expected, atol=1e-5, rtol=0)
        assert expected.max() > 0.5  # a real map, not zeros


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_maps_are_the_cpu_maps(random_checkpoint):
    image = (np.random.default_rng(5).random((224, 224, 3)) * 255).astype(np.uint8)
    data = checkpoint_bytes(random_checkpoint)
    cpu_probs, cpu_labels, cpu_maps = GradCam(data, "cpu")(image, 2)
    gpu_probs, gpu_labels, gpu_maps = GradCam(data, "cuda")(image, 2)
    assert gpu_labels == cpu_labels
    np.testing.assert_allclose(gpu_probs, cpu_probs, atol=1e-5, rtol=0)
    np.testing.assert_allclose(gpu_maps, cpu_maps, atol=1e-4, rtol=0)


def test_attributions_are_the_maps_per_superpixel():
    segments = np.repeat(np.arange(4), 224 * 56).reshape(224, 224)  # four horizontal bands
    heatmap = np.linspace(0, 1, 224, dtype=np.float32)[:, None].repeat(224, axis=1)
    outputs = GradientOutputs(np.full(4, 0.25, np.float32), [3], heatmap[None])
    [attribution] = METHOD.attribute(np.zeros((0, 4)), segments, outputs, [3], 0, 0)
    assert attribution.label == 3 and np.array_equal(attribution.heatmap, heatmap)
    assert list(np.argsort(attribution.weights)) == [0, 1, 2, 3]
    assert attribution.intercept is None and attribution.score is None
