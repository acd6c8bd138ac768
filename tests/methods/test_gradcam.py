"""Grad-CAM: the replica's heatmaps are pytorch-grad-cam's, averaged per superpixel."""

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from helpers import load_model, loaded_checkpoint, save_responsive_model
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
    found = GradCam(loaded_checkpoint(checkpoint), "cpu")(image, top_labels)
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
    data = loaded_checkpoint(random_checkpoint)
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


def test_another_target_layer_is_pytorch_grad_cams_of_that_layer(random_checkpoint):
    """--target-layer layer3.-1: the map of ResNet18's third stage (14 x 14 before upsampling), not the fourth's."""
    image = (np.random.default_rng(5).random((224, 224, 3)) * 255).astype(np.uint8)
    found = GradCam(loaded_checkpoint(random_checkpoint), "cpu", "layer3.-1")(image, 1)
    model = load_model(random_checkpoint).eval()
    pixels = normalise(image, torch.device("cpu")).permute(2, 0, 1).unsqueeze(0)
    for layer, close in ((model.layer3[-1], True), (model.layer4[-1], False)):
        expected = GradCAM(model=model, target_layers=[layer])(
            input_tensor=pixels, targets=[ClassifierOutputTarget(found.labels[0])])[0]
        assert np.allclose(found.maps[0], expected, atol=1e-5, rtol=0) == close


def test_a_target_layer_the_model_lacks_is_named_with_what_is_there():
    from xai_batch.methods.gradcam import target_layer
    from xai_batch.models import build_model

    model = build_model("resnet18", 2)
    assert target_layer(model, "resnet18", "layer2.0.conv1") is model.layer2[0].conv1
    with pytest.raises(ValueError, match=r"^resnet18 has no layer9 \(the model has conv1, bn1, relu, maxpool, "):
        target_layer(model, "resnet18", "layer9")
    with pytest.raises(ValueError, match=r"^resnet18 has no layer4.7 \(layer4 has 0, 1\)"):
        target_layer(model, "resnet18", "layer4.7")


def test_the_target_layer_is_a_checked_option_and_part_of_grad_cams_configuration(ray_session, random_checkpoint,
                                                                                     photos, tmp_path):
    import shutil

    from click.testing import CliRunner

    from xai_batch.cli import cli
    from xai_batch.config import ExplainConfig, config_hash
    from xai_batch.images import load_image
    from xai_batch.manifest import decode_heatmap, read_manifest

    def explain(*extra):
        return CliRunner().invoke(cli, ["explain", photos, "--out", str(tmp_path / "out"), "--checkpoint",
                                        random_checkpoint, "--no-progress", *extra])

    for extra, reason in [(["--target-layer", "layer3"], "add gradcam to the methods"),
                          (["--method", "gradcam", "--target-layer", "layer3..1"], "must be a dotted path"),
                          (["--method", "gradcam", "--target-layer", "layer9"], "resnet18 has no layer9")]:
        result = explain(*extra)
        assert result.exit_code == 2 and "'--target-layer'" in result.output and reason in result.output, result.output
    assert not (tmp_path / "out").exists()  # refused before any work
    plain = ExplainConfig(photos, str(tmp_path / "out"), methods=("lime", "gradcam"))
    chosen = ExplainConfig(photos, str(tmp_path / "out"), methods=("lime", "gradcam"), target_layer="layer3.-1")
    assert config_hash(plain, "m", "gradcam") != config_hash(chosen, "m", "gradcam")
    assert config_hash(plain, "m", "lime") == config_hash(chosen, "m", "lime")  # LIME's rows are still good

    # The replicas explain the layer asked for.
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(f"{photos}/coffee.jpg", one / "coffee.jpg")
    result = CliRunner().invoke(cli, ["explain", str(one), "--out", str(tmp_path / "run"), "--checkpoint",
                                      random_checkpoint, "--method", "gradcam", "--target-layer", "layer3.-1",
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    (row,) = read_manifest(str(tmp_path / "run")).to_pylist()
    pixels = load_image((one / "coffee.jpg").read_bytes()).pixels
    expected = GradCam(loaded_checkpoint(random_checkpoint), "cpu", "layer3.-1")(pixels, 1).maps[0]
    heatmap = decode_heatmap(row["heatmap"])
    assert np.abs(heatmap - expected).max() <= 1 / 510 + 1e-6  # the stored PNG rounds to 1/255
