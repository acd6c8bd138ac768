import os

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from helpers import checkpoint_bytes, load_model, save_random_resnet
from xai_batch.maths.superpixels import Quickshift
from xai_batch.engines import TorchEngine, normalise
from xai_batch.maths import hidden_image, perturb, quickshift_segments, sample_rows
from xai_batch.images import preprocess
from xai_batch.reference import seed_batch_predict


@pytest.fixture(scope="module")
def case():
    image = preprocess(Image.fromarray(skimage.data.chelsea()))
    segments = quickshift_segments(image, Quickshift(), seed=0)
    rows = sample_rows(9, 24, int(segments.max()) + 1)
    return image, hidden_image(image, segments, 0), segments, rows


def _engine(kind, checkpoint, batch_size):
    from xai_batch.engines import OnnxEngine

    data = checkpoint_bytes(checkpoint)
    return TorchEngine(data, batch_size=batch_size) if kind == "torch" else OnnxEngine(data, batch_size, threads=2)


@pytest.mark.parametrize("kind", ["torch", "onnxruntime"])
@pytest.mark.parametrize("batch_size", [5, 24, 64])
def test_probabilities_equal_the_seeds_batch_predict(random_checkpoint, case, batch_size, kind):
    """Each engine, fed the perturbations it builds itself, within fp32 rounding of the seed's torch loop."""
    image, hidden, segments, rows = case
    engine = _engine(kind, random_checkpoint, batch_size)
    ours = engine.predict(image, hidden, segments, rows.astype(np.uint8))
    images = perturb(torch.from_numpy(image), torch.from_numpy(hidden), torch.from_numpy(segments),
                     torch.from_numpy(rows)).numpy()
    expected = seed_batch_predict(load_model(random_checkpoint))(images)
    assert ours.dtype == np.float32 and ours.shape == (24, 4)
    np.testing.assert_allclose(ours, expected, atol=2e-6 if kind == "onnxruntime" else 1e-6, rtol=0)
    whole = np.stack([image, hidden])
    with torch.inference_mode():
        direct = torch.softmax(load_model(random_checkpoint)(
            torch.stack([normalise(i, torch.device("cpu")) for i in whole]).permute(0, 3, 1, 2)), dim=1).numpy()
    np.testing.assert_allclose(engine.classify(whole), direct, atol=2e-6, rtol=0)


def test_bf16_is_close_to_fp32(random_checkpoint, case):
    image, hidden, segments, rows = case
    data = checkpoint_bytes(random_checkpoint)
    exact = TorchEngine(data).predict(image, hidden, segments, rows[:4])
    fast = TorchEngine(data, precision="bf16").predict(image, hidden, segments, rows[:4])
    assert np.abs(fast - exact).max() < 0.05
    assert (fast.argmax(1) == exact.argmax(1)).mean() >= 0.75


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fp32_matches_cpu(random_checkpoint, case):
    image, hidden, segments, rows = case
    data = checkpoint_bytes(random_checkpoint)
    cpu = TorchEngine(data, device="cpu").predict(image, hidden, segments, rows)
    gpu = TorchEngine(data, device="cuda").predict(image, hidden, segments, rows)
    np.testing.assert_allclose(gpu, cpu, atol=1e-5, rtol=0)  # TF32 convolutions were 2.5e-4 off


def test_the_forward_batch_is_the_devices_best(random_checkpoint):
    """Chunks of 256 rows run on the CPU 32 at a time (bench/speed.py: up to 16% faster than 256)."""
    from xai_batch.engines import DEVICE_BATCH

    assert TorchEngine(checkpoint_bytes(random_checkpoint), batch_size=256, device="cpu").batch_size == DEVICE_BATCH["cpu"] == 32
    assert TorchEngine(checkpoint_bytes(random_checkpoint), batch_size=10, device="cpu").batch_size == 10


def test_the_onnx_export_is_cached_by_checkpoint_and_versions(random_checkpoint, tmp_path, monkeypatch):
    from xai_batch.engines import onnx_model
    from xai_batch.models import parse_checkpoint

    monkeypatch.setenv("XAI_BATCH_CACHE", str(tmp_path))
    data = checkpoint_bytes(random_checkpoint)
    first = onnx_model(data, parse_checkpoint(data))
    written = os.stat(first).st_mtime_ns
    assert onnx_model(data, parse_checkpoint(data)) == first and os.stat(first).st_mtime_ns == written  # not redone
    assert os.listdir(tmp_path / "onnx") == [os.path.basename(first)]  # no temporary left behind
    other = save_random_resnet(str(tmp_path / "other.pt"), num_classes=4, seed=1)
    assert onnx_model(checkpoint_bytes(other), parse_checkpoint(checkpoint_bytes(other))) != first


def test_auto_is_onnxruntime_on_cpu_and_torch_on_cuda():
    from xai_batch.engines import engine_name

    assert engine_name("auto", cuda=False) == "onnxruntime" and engine_name("auto", cuda=True) == "torch"
    assert engine_name("auto", cuda=False, precision="bf16") == "torch"
    assert engine_name("torch", cuda=False) == "torch"
