"""Shared fixtures: a real local Ray, real photos, and models the tests make."""

from __future__ import annotations

import logging
import os
import tempfile

import pytest
from PIL import Image

from helpers import save_random_model, save_shape_detector

from xai_batch.synthetic import SHAPES, generate_dataset

# ONNX exports of the tests' checkpoints go to a folder of this session's, not the user's cache
# (set before Ray starts, so its workers inherit it).
os.environ["XAI_BATCH_CACHE"] = tempfile.mkdtemp(prefix="xai-batch-test-cache-")

@pytest.fixture(autouse=True)
def _torch_threads():
    """Each test starts with this process's torch thread count: a model replica built in the test process
    sets it to its share of the CPUs, and every later test would otherwise run torch on one core."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


PHOTOS = {"cat/chelsea.jpg": "chelsea", "people/astronaut.png": "astronaut", "coffee.jpg": "coffee"}


@pytest.fixture(scope="session")
def ray_session():
    """One real local Ray for the whole session (2 CPUs, as on CI). Its token, where Ray would write a
    new one readable by all (which the commands then refuse), is written owner-only first, as
    :func:`~xai_batch.distributed.cluster.connected` does for an embedded Ray."""
    import ray

    from xai_batch.distributed.cluster import _write_private_token

    _write_private_token()
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> str:
    """A folder of real photographs (scikit-image's sample photos), nested."""
    import skimage.data

    root = tmp_path_factory.mktemp("photos")
    for rel, name in PHOTOS.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(getattr(skimage.data, name)()).save(path, quality=92)
    return str(root)


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory) -> str:
    return save_random_model(str(tmp_path_factory.mktemp("ckpt") / "random.pt"), num_classes=4)


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory) -> dict[str, str]:
    """Generated shapes: a training folder (four classes, "none" included) and
    a held-out folder of two images of each object (six in all)."""
    root = tmp_path_factory.mktemp("shapes")
    generate_dataset(str(root / "train"), per_class=20, seed=0)
    generate_dataset(str(root / "holdout"), per_class=2, seed=1, shapes=SHAPES[:3])
    return {"train": str(root / "train"), "holdout": str(root / "holdout")}


@pytest.fixture(scope="session")
def three_shapes(shapes_data, tmp_path_factory) -> str:
    """One held-out image of each object: the smallest folder that still has every class."""
    root = tmp_path_factory.mktemp("three")
    for shape in SHAPES[:3]:
        (root / f"{shape}.png").write_bytes(open(f"{shapes_data['holdout']}/{shape}/{shape}_0000.png", "rb").read())
    return str(root)


@pytest.fixture(scope="session")
def shapes_model(tmp_path_factory) -> str:
    """A checkpoint that classifies the generated shapes by their colour, built so (see
    ``save_shape_detector``): right on every held-out image, never saturated, and its
    explanations belong on the object. Tests that need a model to behave so use this one."""
    return save_shape_detector(str(tmp_path_factory.mktemp("shapes-model") / "model.pt"))
