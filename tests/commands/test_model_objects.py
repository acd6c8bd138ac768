"""The model in hand (issue 33, part 2): ``explain_dataset(source, out, model=...)`` with a network object or
lime's ``classifier_fn`` instead of a checkpoint file."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import SHAPE_CLASSES, SHAPES_FRAME, assert_verified, load_model, save_random_model, tiny_net
from xai_batch import ConfigError, ModelError, explain_dataset, read_manifest
from xai_batch.model_objects import model_source, torchvision_arch, weights_digest
from xai_batch.models import NetworkObject, build_model
from xai_batch.reference import seed_batch_predict

NAMES = [f"label{i}" for i in range(4)]  # save_random_model's
# The columns that say which run and which model wrote a row, not what the row found.
WHO = {"model_id", "config_hash", "engine", "seconds", "run_id"}


def _rows(out: str) -> list[dict]:
    table = read_manifest(out).sort_by([("path", "ascending"), ("method", "ascending")])
    return [{key: value for key, value in row.items() if key not in WHO} for row in table.to_pylist()]


def test_a_closure_a_network_object_and_a_checkpoint_file_give_the_same_manifest(ray_session, three_shapes,
                                                                                shapes_model, tmp_path):
    """The same weights, three ways: saved to a file, handed over as the network, and inside the seeds'
    batch_predict. LIME and KernelSHAP find the same on every image (the function runs its own batches of
    torch, so its probabilities may differ in the last bits of fp32: a model whose explanations are clear
    keeps the top superpixels apart by more than that)."""
    network = load_model(shapes_model)
    options = {"num_samples": 40, "methods": ("lime", "kernelshap"), "progress": False}
    from_file = explain_dataset(three_shapes, str(tmp_path / "file"), checkpoint=shapes_model, engine="torch",
                                **options)
    from_object = explain_dataset(three_shapes, str(tmp_path / "object"), model=network, class_names=SHAPE_CLASSES,
                                  preprocessing=SHAPES_FRAME, engine="torch", **options)
    from_function = explain_dataset(three_shapes, str(tmp_path / "function"), model=seed_batch_predict(network),
                                    class_names=SHAPE_CLASSES, preprocessing=SHAPES_FRAME, model_id="seeds-resnet18",
                                    **options)
    assert from_file.ok == from_object.ok == from_function.ok == 3 and from_file.rows == 6
    assert _rows(str(tmp_path / "file")) == _rows(str(tmp_path / "object"))  # bit for bit: the same engine's rows
    for expected, got in zip(_rows(str(tmp_path / "file")), _rows(str(tmp_path / "function")), strict=True):
        for key in ("path", "method", "segments", "mask", "pred_index", "explained_index", "topk_index", "seed"):
            assert got[key] == expected[key], key
        np.testing.assert_allclose(got["weights"], expected["weights"], atol=1e-5, rtol=0)
        assert got["pred_prob"] == pytest.approx(expected["pred_prob"], abs=1e-5)
    function_ids = set(read_manifest(str(tmp_path / "function")).column("model_id").to_pylist())
    assert function_ids == {"seeds-resnet18"}
    assert set(read_manifest(str(tmp_path / "object")).column("model_id").to_pylist()) == {
        f"resnet18:weights-{weights_digest(network.state_dict(), SHAPE_CLASSES)[:16]}"}
    for out in ("file", "object", "function"):
        assert_verified(str(tmp_path / out))


def test_a_network_of_the_users_own_runs_every_method_and_resumes_by_its_weights(ray_session, three_shapes, tmp_path):
    """A network no torchvision architecture: LIME on ONNX Runtime (exported in the replica) and Grad-CAM of
    the layer named; handed over again as a new object with the same weights, nothing is redone; with other
    weights, it is another model."""
    out = str(tmp_path / "out")
    first = explain_dataset(three_shapes, out, model=tiny_net(), num_samples=40, methods=("lime", "gradcam"),
                            target_layer="features.2", progress=False)
    assert (first.ok, first.rows) == (3, 6)
    table = read_manifest(out)
    assert set(table.column("engine").to_pylist()) == {f"onnxruntime {__import__('onnxruntime').__version__}"}
    assert set(table.column("pred_name").to_pylist()) <= {"class_0", "class_1", "class_2"}
    heatmaps = [row["heatmap"] for row in table.to_pylist() if row["method"] == "gradcam"]
    assert len(heatmaps) == 3 and all(heatmaps)
    again = explain_dataset(three_shapes, out, model=tiny_net(), num_samples=40, methods=("lime", "gradcam"),
                            target_layer="features.2", progress=False)
    assert (again.skipped, again.ok) == (3, 0)
    assert_verified(out)
    with pytest.raises(ConfigError, match="results of another configuration"):  # other weights: another model
        explain_dataset(three_shapes, out, model=tiny_net(seed=1), num_samples=40, methods=("lime", "gradcam"),
                        target_layer="features.2", progress=False)


def test_torchvision_networks_are_recognised_by_their_class_and_weights():
    resnet = build_model("resnet18", 4)
    assert torchvision_arch(resnet, resnet.state_dict()) == "resnet18"
    mobilenet = build_model("mobilenet_v3_small", 3)
    assert torchvision_arch(mobilenet, mobilenet.state_dict()) == "mobilenet_v3_small"
    resnet.fc = torch.nn.Sequential(torch.nn.Dropout(), torch.nn.Linear(512, 4))  # a head of the user's own
    assert torchvision_arch(resnet, resnet.state_dict()) is None
    source = model_source(resnet)
    assert isinstance(source.payload, NetworkObject) and source.model_id.startswith("ResNet:weights-")
    assert source.class_names == ("class_0", "class_1", "class_2", "class_3")


def test_a_network_objects_identity_is_its_weights(tmp_path):
    network = load_model(save_random_model(str(tmp_path / "a.pt"), num_classes=4))
    same = load_model(save_random_model(str(tmp_path / "b.pt"), num_classes=4))
    other = load_model(save_random_model(str(tmp_path / "c.pt"), num_classes=4, seed=1))
    assert model_source(network).model_id == model_source(same).model_id
    assert model_source(network).model_id != model_source(other).model_id
    assert model_source(network, class_names=NAMES).model_id != model_source(network).model_id
    assert model_source(network, model_id="mine").model_id == "mine"
    network.train()
    model_source(network)
    assert network.training  # the user's object is left as it was: the replicas get an eval copy


def _wrong_shape(images):
    return np.zeros((len(images), 3, 1))


def _raises(images):
    raise RuntimeError("CUDA error: device-side assert triggered\nmore lines of detail")


@pytest.mark.parametrize("model, options, param, words", [
    (_wrong_shape, {}, None, "answers an array of shape (1, 3, 1)"),
    (_raises, {}, None, "fails on a blank (1, 224, 224, 3) input: RuntimeError: CUDA error: device-side assert triggered"),
    ("model.pt", {}, "model", "must be a torch.nn.Module or a classifier_fn"),
    (seed_batch_predict(build_model("resnet18", 4)), {"methods": ("gradcam",)}, "methods", "Grad-CAM needs"),
    (seed_batch_predict(build_model("resnet18", 4)), {"precision": "bf16", "engine": "torch"}, "engine",
     "runs as it is written"),
    (tiny_net(), {"methods": ("gradcam",)}, "target_layer", "no Grad-CAM target layer is known for TinyNet"),
    (tiny_net(), {"methods": ("gradcam",), "target_layer": "features.9"}, "target_layer", "TinyNet has no features.9"),
    (build_model("resnet18", 4), {"class_names": ["a", "b"]}, "class_names", "names 2 classes but the model answers 4"),
    (build_model("resnet18", 4), {"checkpoint": "x.pt"}, "checkpoint", "not both"),
    (None, {"model_id": "mine"}, "model_id", "describes model="),
])
def test_a_model_that_cannot_run_is_refused_in_one_line_before_ray_starts(photos, tmp_path, model, options, param,
                                                                          words):
    """No Ray fixture: each refusal comes before any cluster starts."""
    with pytest.raises((ConfigError, ModelError)) as caught:
        explain_dataset(photos, str(tmp_path / "out"), model=model, progress=False, **options)
    assert words in str(caught.value) and "\n" not in str(caught.value) and "more lines" not in str(caught.value)
    assert getattr(caught.value, "param", None) == param
    assert not (tmp_path / "out").exists()  # refused before the output was touched, and so before Ray
