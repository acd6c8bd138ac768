"""Several methods on one job, end to end on a real local Ray: KernelSHAP equals shap's own
KernelExplainer, Grad-CAM equals pytorch-grad-cam's GradCAM, and methods resume one by one."""

import json
import math
import os

import numpy as np
import pytest
import shap
import torch
from click.testing import CliRunner
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from helpers import assert_verified, load_model, loaded_checkpoint
from xai_batch.cli import cli
from xai_batch.config import ExplainConfig
from xai_batch.engines import TorchEngine, normalise
from xai_batch.maths import MASK_FOR, hidden_image
from xai_batch.images import load_image
from xai_batch.manifest import decode_heatmap, decode_mask, decode_segments, read_manifest
from xai_batch.methods.gradcam import superpixel_means
from xai_batch.commands import run_explain

pytestmark = pytest.mark.slow

BATCH = 40  # sample rows per replica call


def _image(source: str, row: dict) -> np.ndarray:
    with open(os.path.join(source, row["path"]), "rb") as handle:
        return load_image(handle.read()).pixels


def _replica_calls(out) -> int:
    """The calls the model replicas answered in the latest run (job.json's chunks_by_node)."""
    record = json.loads((out / "job.json").read_text())
    return sum(record["runs"][-1]["ray"]["chunks_by_node"].values())


def _assert_shaps_values(source: str, checkpoint: str, row: dict, num_samples: int, atol: float) -> None:
    """The row's values are shap's KernelExplainer's with PyTorch fp32 as the model, in this process."""
    image, segments = _image(source, row), decode_segments(row["segments"])
    engine = TorchEngine(loaded_checkpoint(checkpoint), "fp32", device="cpu")
    hidden = hidden_image(image, segments, 0)
    calls = []

    def f(z):
        calls.append(len(z))
        return engine.predict(image, hidden, segments, z.astype(np.uint8))[:, row["explained_index"]]

    np.random.seed(row["seed"])
    explainer = shap.KernelExplainer(f, np.zeros((1, row["num_segments"])))
    expected = explainer.shap_values(np.ones((1, row["num_segments"])), nsamples=num_samples, silent=True).ravel()
    assert calls == [1, 1, row["num_samples"] - 2]  # background, instance, coalitions: what the replicas evaluated
    np.testing.assert_allclose(row["weights"], expected, atol=atol, rtol=0)
    assert row["intercept"] == pytest.approx(float(explainer.expected_value), abs=atol)
    top = np.argsort(-np.abs(expected), kind="stable")[:5]
    assert set(np.unique(segments[decode_mask(row["mask"]) != 0])) == set(top[expected[top] != 0])


def test_kernelshap_on_onnxruntime_is_shaps_within_fp32_rounding(ray_session, three_shapes, random_checkpoint,
                                                                   tmp_path):
    num_samples = 80
    config = ExplainConfig(three_shapes, str(tmp_path / "ks"), checkpoint=random_checkpoint, num_samples=num_samples,
                           seed=3, batch_size=BATCH, engine="onnxruntime", methods=("kernelshap",))
    result = run_explain(config, progress=False)
    assert (result.ok, result.errors, result.rows) == (3, 0, 3)
    rows = read_manifest(config.out).to_pylist()
    # Every model output shap used came from the replicas: num_samples rows per image, in chunks of BATCH.
    assert _replica_calls(tmp_path / "ks") == sum(math.ceil(row["num_samples"] / BATCH) for row in rows)
    for row in rows:
        assert row["method"] == "kernelshap" and row["engine"].startswith("onnxruntime")
        _assert_shaps_values(three_shapes, random_checkpoint, row, num_samples, atol=1e-4)
    assert_verified(config.out, three_shapes)


def test_three_methods_in_one_manifest_resumed_method_by_method(ray_session, three_shapes, random_checkpoint,
                                                                tmp_path):
    out, num_samples = tmp_path / "methods", 60
    common = [three_shapes, "--out", str(out), "--checkpoint", random_checkpoint, "--num-samples", str(num_samples),
              "--batch-size", str(BATCH), "--seed", "5", "--engine", "torch", "--no-progress"]

    def explain(*methods: str) -> str:
        result = CliRunner().invoke(cli, ["explain", *common, *methods])
        assert result.exit_code == 0, result.output
        return result.output

    assert explain("--method", "lime").startswith("3 images: 3 explained")
    lime_rows = read_manifest(str(out)).to_pylist()
    # Adding two methods does their work only: LIME's rows stay as they were.
    assert explain("--method", "lime,kernelshap", "--method", "gradcam").startswith("3 images: 3 explained")
    table = read_manifest(str(out))
    rows = table.to_pylist()
    assert sorted((row["path"], row["method"]) for row in rows) == sorted(
        (path, method) for path in os.listdir(three_shapes) for method in ("lime", "kernelshap", "gradcam"))
    assert [row for row in rows if row["method"] == "lime"] == lime_rows
    kernelshap = [row for row in rows if row["method"] == "kernelshap"]
    gradcam = [row for row in rows if row["method"] == "gradcam"]
    assert _replica_calls(out) == sum(math.ceil(row["num_samples"] / BATCH) for row in kernelshap) + len(gradcam)
    assert len({row["config_hash"] for row in rows}) == 3
    assert_verified(str(out), three_shapes)
    for row in rows:  # one quickshift per image, shared by every method
        same_image = [other for other in rows if other["path"] == row["path"]]
        assert {other["segments"] for other in same_image} == {row["segments"]}
        assert {other["pred_index"] for other in same_image} == {row["pred_index"]}

    for row in kernelshap:
        _assert_shaps_values(three_shapes, random_checkpoint, row, num_samples, atol=1e-6)

    model = load_model(random_checkpoint).eval()
    cam = GradCAM(model=model, target_layers=[model.layer4[-1]])
    for row in gradcam:
        pixels = normalise(_image(three_shapes, row), torch.device("cpu")).permute(2, 0, 1).unsqueeze(0)
        expected = cam(input_tensor=pixels, targets=[ClassifierOutputTarget(row["explained_index"])])[0]
        segments = decode_segments(row["segments"])
        np.testing.assert_allclose(row["weights"], superpixel_means(expected, segments), atol=1e-5, rtol=0)
        assert np.abs(decode_heatmap(row["heatmap"]) - expected).max() <= 0.5 / 255 + 1e-6  # 8-bit PNG
        assert row["num_samples"] is None and row["intercept"] is None
        top = np.argsort(-np.asarray(row["weights"]), kind="stable")[:5]
        assert set(np.unique(segments[decode_mask(row["mask"]) == MASK_FOR])) == set(top)

    assert "0 explained, 0 errors, 3 already done (3 unread: size and time unchanged); 0 rows" in explain(
        "--method", "gradcam,kernelshap,lime")
    assert _replica_calls(out) == 0
    assert read_manifest(str(out)).equals(table)


def test_method_options_are_checked_before_any_work(tmp_path, three_shapes):
    def run(*options: str):
        return CliRunner().invoke(cli, ["explain", three_shapes, "--out", str(tmp_path / "o"), *options])

    result = run("--method", "lime,occlusion")
    assert result.exit_code == 2 and "--method" in result.output and "'occlusion'" in result.output
    result = run("--method", "lime", "--method", "lime")
    assert result.exit_code == 2 and "named twice" in result.output
    result = run("--method", "kernelshap", "--num-samples", "auto")
    assert result.exit_code == 2 and "--num-samples" in result.output and "LIME" in result.output
    assert not (tmp_path / "o").exists()
