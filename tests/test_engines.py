import hashlib
import logging
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from helpers import checkpoint_bytes, load_model, loaded_checkpoint, save_random_model, save_responsive_model
from xai_batch.maths.superpixels import Quickshift
from xai_batch.engines import TorchEngine, normalise
from xai_batch.maths import hidden_image, perturb, quickshift_segments, sample_rows
from xai_batch.preprocessing import SEEDS, Preprocessing
from xai_batch.reference import seed_batch_predict


@pytest.fixture(scope="module")
def case():
    image = SEEDS.frame(Image.fromarray(skimage.data.chelsea()))
    segments = quickshift_segments(image, Quickshift(), seed=0)
    rows = sample_rows(9, 24, int(segments.max()) + 1)
    return image, hidden_image(image, segments, 0), segments, rows


def _engine(kind, checkpoint, batch_size):
    from xai_batch.engines import OnnxEngine
    from xai_batch.engines.onnx_export import onnx_spec

    data = loaded_checkpoint(checkpoint)
    if kind == "torch":
        return TorchEngine(data, batch_size=batch_size)
    return OnnxEngine(onnx_spec(data), batch_size, threads=2)


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
    np.testing.assert_allclose(engine.classify(whole), _torch_probabilities(random_checkpoint, whole),
                               atol=2e-6, rtol=0)


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    folder = tmp_path_factory.mktemp("families")
    return {arch: save_responsive_model(str(folder / f"{arch}.pt"), arch)
            for arch in ("mobilenet_v3_small", "squeezenet1_1")}


@pytest.mark.parametrize("kind", ["torch", "onnxruntime"])
@pytest.mark.parametrize("arch", ["mobilenet_v3_small", "squeezenet1_1"])
def test_every_family_runs_on_both_engines_as_the_seeds_batch_predict(families, case, arch, kind, tmp_path,
                                                                      monkeypatch):
    """Each engine builds the checkpoint's own architecture, exported to ONNX too, within fp32 rounding."""
    monkeypatch.setenv("XAI_BATCH_CACHE", str(tmp_path))
    image, hidden, segments, rows = case
    ours = _engine(kind, families[arch], 24).predict(image, hidden, segments, rows.astype(np.uint8))
    images = perturb(torch.from_numpy(image), torch.from_numpy(hidden), torch.from_numpy(segments),
                     torch.from_numpy(rows)).numpy()
    expected = seed_batch_predict(load_model(families[arch]))(images)
    np.testing.assert_allclose(ours, expected, atol=2e-6 if kind == "onnxruntime" else 1e-6, rtol=0)
    assert np.ptp(expected[:, 0]) > 1e-3  # the model's answer depends on what is hidden
    if kind == "onnxruntime":
        assert [path.name.split("-")[0] for path in Path(tmp_path, "onnx").glob("*.onnx")] == [arch]


def _torch_probabilities(checkpoint, images):
    """The checkpoint's softmax probabilities of whole (224, 224, 3) uint8 images, by PyTorch itself."""
    with torch.inference_mode():
        return torch.softmax(load_model(checkpoint)(
            torch.stack([normalise(i, torch.device("cpu")) for i in images]).permute(0, 3, 1, 2)), dim=1).numpy()


def test_bf16_is_close_to_fp32(random_checkpoint, case):
    image, hidden, segments, rows = case
    data = loaded_checkpoint(random_checkpoint)
    exact = TorchEngine(data).predict(image, hidden, segments, rows[:4])
    fast = TorchEngine(data, precision="bf16").predict(image, hidden, segments, rows[:4])
    assert np.abs(fast - exact).max() < 0.05
    assert (fast.argmax(1) == exact.argmax(1)).mean() >= 0.75


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fp32_matches_cpu(random_checkpoint, case):
    image, hidden, segments, rows = case
    data = loaded_checkpoint(random_checkpoint)
    cpu = TorchEngine(data, device="cpu").predict(image, hidden, segments, rows)
    gpu = TorchEngine(data, device="cuda").predict(image, hidden, segments, rows)
    np.testing.assert_allclose(gpu, cpu, atol=1e-5, rtol=0)  # TF32 convolutions were 2.5e-4 off


def test_the_forward_batch_is_the_devices_best(random_checkpoint):
    """Chunks of 256 rows run on the CPU 32 at a time (bench/speed.py: up to 16% faster than 256)."""
    from xai_batch.engines import DEVICE_BATCH

    assert TorchEngine(loaded_checkpoint(random_checkpoint), batch_size=256, device="cpu").batch_size == DEVICE_BATCH["cpu"] == 32
    assert TorchEngine(loaded_checkpoint(random_checkpoint), batch_size=10, device="cpu").batch_size == 10


@pytest.fixture(scope="module")
def onnx_caches(random_checkpoint, tmp_path_factory) -> dict[str, Path]:
    """ONNX cache folders made once for the module, as an export takes seconds: 'random' holds
    ``random_checkpoint``'s entry, 'other' that of another ResNet18 (seed 1). A test that damages
    an entry damages a copy (``_copied_cache``)."""
    from xai_batch.engines import onnx_model
    from xai_batch.models import parse_checkpoint

    other = save_random_model(str(tmp_path_factory.mktemp("other") / "other.pt"), num_classes=4, seed=1)
    caches = {}
    for name, checkpoint in (("random", random_checkpoint), ("other", other)):
        root = tmp_path_factory.mktemp(f"onnx-cache-{name}")
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("XAI_BATCH_CACHE", str(root))
            onnx_model(parse_checkpoint(checkpoint_bytes(checkpoint)))
        caches[name] = root / "onnx"
    return caches


def _entry(folder: Path) -> Path:
    """The one model file in an ONNX cache folder."""
    (model,) = folder.glob("*.onnx")
    return model


def _copied_cache(onnx_caches, tmp_path, monkeypatch) -> Path:
    """A copy of the 'random' cache in ``tmp_path``, where ``$XAI_BATCH_CACHE`` now points: its model file."""
    shutil.copytree(onnx_caches["random"], tmp_path / "onnx")
    monkeypatch.setenv("XAI_BATCH_CACHE", str(tmp_path))
    return _entry(tmp_path / "onnx")


def test_the_onnx_export_is_cached_by_checkpoint_and_versions(onnx_caches, random_checkpoint, monkeypatch):
    from xai_batch.engines import onnx_model
    from xai_batch.models import parse_checkpoint

    monkeypatch.setenv("XAI_BATCH_CACHE", str(onnx_caches["random"].parent))
    entry = _entry(onnx_caches["random"])
    written = entry.stat().st_mtime_ns
    data = checkpoint_bytes(random_checkpoint)
    assert onnx_model(parse_checkpoint(data)) == entry.read_bytes()
    assert entry.stat().st_mtime_ns == written  # not redone
    assert _entry(onnx_caches["other"]).name != entry.name


def test_the_onnx_cache_is_its_owners_only(onnx_caches):
    """The folder it creates is 0700; the model file and its record, all it leaves there, are 0600."""
    folder = onnx_caches["random"]
    entry = _entry(folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    modes = {path.name: stat.S_IMODE(path.lstat().st_mode) for path in folder.iterdir()}
    assert modes == {entry.name: 0o600, f"{entry.name}.sha256": 0o600}  # no temporary left behind


@pytest.mark.parametrize("damage", ["empty", "another model's"])
def test_a_cached_export_that_fails_its_check_is_exported_again(onnx_caches, random_checkpoint, case, tmp_path,
                                                                monkeypatch, caplog, damage):
    """A zero-byte model file (a full disk, a copy cut short), or a valid export of another checkpoint copied
    over the entry, is logged and exported again, not used: the engine gives the checkpoint's own answers."""
    entry = _copied_cache(onnx_caches, tmp_path, monkeypatch)
    written = b"" if damage == "empty" else _entry(onnx_caches["other"]).read_bytes()
    entry.write_bytes(written)
    with caplog.at_level(logging.WARNING, logger="xai_batch.engines.onnx_export"):
        engine = _engine("onnxruntime", random_checkpoint, 24)
    whole = np.stack(case[:2])
    np.testing.assert_allclose(engine.classify(whole), _torch_probabilities(random_checkpoint, whole),
                               atol=2e-6, rtol=0)
    assert f"{entry} ({len(written)} bytes) is not the file {entry}.sha256 records" in caplog.text
    assert entry.read_bytes() != written


def test_a_symbolic_link_in_place_of_the_entry_is_not_followed(onnx_caches, random_checkpoint, tmp_path, monkeypatch,
                                                               caplog):
    """Even a link to the right bytes: the entry is exported again as a regular file of its own (0600), the
    link's target is left as it was, and the folder that was there keeps its mode."""
    from xai_batch.engines import onnx_model
    from xai_batch.models import parse_checkpoint

    entry = _copied_cache(onnx_caches, tmp_path, monkeypatch)
    target = tmp_path / "elsewhere.onnx"
    entry.rename(target)
    target.chmod(0o644)
    entry.symlink_to(target)
    (tmp_path / "onnx").chmod(0o755)
    original = target.read_bytes()
    data = checkpoint_bytes(random_checkpoint)
    with caplog.at_level(logging.WARNING, logger="xai_batch.engines.onnx_export"):
        serialized = onnx_model(parse_checkpoint(data))
    assert not entry.is_symlink() and entry.read_bytes() == serialized and stat.S_IMODE(entry.stat().st_mode) == 0o600
    assert f"{entry} is a symbolic link" in caplog.text
    assert target.read_bytes() == original and stat.S_IMODE(target.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "onnx").stat().st_mode) == 0o755


def test_auto_is_onnxruntime_on_cpu_and_torch_on_cuda():
    from xai_batch.engines import engine_name

    assert engine_name("auto", cuda=False) == "onnxruntime" and engine_name("auto", cuda=True) == "torch"
    assert engine_name("auto", cuda=False, precision="bf16") == "torch"
    assert engine_name("torch", cuda=False) == "torch"


@pytest.mark.parametrize("mode", [0o777, 0o770])
def test_a_cache_folder_others_can_write_into_is_not_used(onnx_caches, random_checkpoint, tmp_path, monkeypatch,
                                                          caplog, mode):
    """Issue 31, finding 9: in a group- or world-writable XAI_BATCH_CACHE a planted model with a matching
    .sha256 was used. Such a folder is not used at all: the checkpoint's own export runs, and nothing is
    written there."""
    from xai_batch.engines import onnx_model
    from xai_batch.models import parse_checkpoint

    entry = _copied_cache(onnx_caches, tmp_path, monkeypatch)
    planted = _entry(onnx_caches["other"]).read_bytes()  # a valid model, another's answers
    entry.write_bytes(planted)
    entry.with_name(entry.name + ".sha256").write_bytes(
        f"{hashlib.sha256(planted).hexdigest()}  {entry.name}\n".encode())
    (tmp_path / "onnx").chmod(mode)
    data = checkpoint_bytes(random_checkpoint)
    with caplog.at_level(logging.WARNING, logger="xai_batch.engines.onnx_export"):
        serialized = onnx_model(parse_checkpoint(data))
    assert serialized != planted and serialized == _entry(onnx_caches["random"]).read_bytes()
    assert f"not using the ONNX export cache {tmp_path / 'onnx'}: others can write into it (mode {mode:04o})" \
        in caplog.text
    assert entry.read_bytes() == planted and sorted(p.name for p in (tmp_path / "onnx").iterdir()) == \
        [entry.name, entry.name + ".sha256"]  # nothing written there either


@pytest.mark.parametrize("preprocessing", [SEEDS, Preprocessing(resize=128, crop=112, mean=(0.5, 0.5, 0.5),
                                                                 std=(0.25, 0.5, 0.125))])
def test_onnx_inputs_are_torchvisions_bit_for_bit(preprocessing):
    """ONNX Runtime's engine normalises with numpy, so that its replica needs no torch: every value equals
    ToTensor then Normalize's (the torch engine's ``normalise``), bit for bit, over all 256 pixel values."""
    from xai_batch.engines.onnx_engine import normalised

    rng = np.random.default_rng(0)
    image = np.concatenate([np.arange(256, dtype=np.uint8).repeat(3).reshape(16, 16, 3),
                            rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)])
    expected = normalise(image, torch.device("cpu"), preprocessing).permute(2, 0, 1).numpy()
    ours = normalised(image, preprocessing)
    assert ours.dtype == np.float32 and np.array_equal(ours.view(np.uint32), expected.view(np.uint32))


def test_a_replica_that_runs_an_onnx_model_loads_no_torch(random_checkpoint, case, tmp_path):
    """What the driver ships for ONNX Runtime (the export, done once) is all a replica needs: in a fresh
    process it loads it and answers sample rows without importing torch (four seconds of every start)."""
    import pickle
    import subprocess
    import sys

    from xai_batch.engines import replica_model
    from xai_batch.explaining.prepared import PreparedImage
    from xai_batch.models import resolve_model

    shipped = replica_model(resolve_model(random_checkpoint), "auto", cuda=False, precision="fp32", gradients=False)
    image, hidden, segments, rows = case
    with open(tmp_path / "call.pkl", "wb") as handle:
        pickle.dump((shipped, PreparedImage(image, hidden, segments, rows.astype(np.uint8))), handle)
    answers = tmp_path / "answers.npy"
    script = f"""
import pickle, sys
import numpy as np
from xai_batch.distributed.replicas import ModelReplica
shipped, prepared = pickle.load(open({str(tmp_path / "call.pkl")!r}, "rb"))
replica = ModelReplica(shipped, "fp32", 16, threads=1)
count, probs = replica.predict(prepared, 0, 10)
np.save({str(answers)!r}, probs)
print(replica.engine.version, count)
print(sorted(name for name in sys.modules if name.split(".")[0] in ("torch", "torchvision", "pyarrow")))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    engine, loaded = done.stdout.splitlines()
    assert engine.startswith("onnxruntime ") and engine.endswith(" 10")
    assert loaded == "[]"
    expected = _engine("onnxruntime", random_checkpoint, 16).predict(image, hidden, segments,
                                                                  rows[:10].astype(np.uint8))
    assert np.array_equal(np.load(answers), expected)
