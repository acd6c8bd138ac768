import numpy as np
import pytest
import torch
from click.testing import CliRunner

from helpers import checkpoint_bytes
from xai_batch.cli import cli
from xai_batch.engine import TorchEngine
from xai_batch.images import load_image
from xai_batch.models import parse_checkpoint
from xai_batch.training import class_folders, stratified_split


def test_split_is_stratified_seeded_and_disjoint(shapes_data):
    files = class_folders(shapes_data["train"])
    assert list(files) == ["disc", "none", "square", "triangle"]
    train, val = stratified_split(files, 0.25, seed=3)
    assert stratified_split(files, 0.25, seed=3) == (train, val)
    assert not {p for p, _ in train} & {p for p, _ in val}
    assert sorted(label for _, label in val) == [0] * 5 + [1] * 5 + [2] * 5 + [3] * 5


def test_trained_checkpoint_learns_and_loads(trained, shapes_data):
    """The session's checkpoint, trained from scratch by ``train_model``."""
    loaded = parse_checkpoint(checkpoint_bytes(trained.checkpoint))
    assert loaded.class_names == ("disc", "none", "square", "triangle") == trained.class_names
    assert [m["epoch"] for m in loaded.metrics] == [1, 2, 3]
    assert loaded.metrics[-1]["train_loss"] < loaded.metrics[0]["train_loss"]
    engine = TorchEngine(checkpoint_bytes(trained.checkpoint))
    hits = 0
    for label, name in enumerate(loaded.class_names[:1] + loaded.class_names[2:]):
        for path in class_folders(shapes_data["holdout"])[name]:
            image = load_image(open(path, "rb").read()).pixels
            probs = engine.predict(image, image, np.zeros((224, 224), np.int64), np.ones((1, 1), np.uint8))
            hits += loaded.class_names[int(probs.argmax())] == name
    assert hits >= 4, f"{hits}/6 held-out images right: no better than chance (1.5)"


def test_train_command(shapes_data, tmp_path):
    out = tmp_path / "m.pt"
    result = CliRunner().invoke(cli, ["train", shapes_data["train"], "--out", str(out), "--epochs", "1",
                                      "--pretrained", "none", "--batch-size", "8", "--val-fraction", "0.5"])
    assert result.exit_code == 0, result.output
    assert "epoch 1/1: train loss" in result.output and "val loss" in result.output and "acc" in result.output
    assert torch.load(out, weights_only=True)["class_names"] == ["disc", "none", "square", "triangle"]


def test_train_needs_two_classes(tmp_path):
    (tmp_path / "only").mkdir()
    result = CliRunner().invoke(cli, ["train", str(tmp_path), "--out", str(tmp_path / "m.pt")])
    assert result.exit_code == 2, result.output
    assert "needs at least two class folders with images, found 0" in result.output


@pytest.mark.parametrize("args,option", [(["--epochs", "0"], "--epochs"), (["--val-fraction", "1"], "--val-fraction"),
                                         (["--pretrained", "coco"], "--pretrained")])
def test_train_bad_options(shapes_data, tmp_path, args, option):
    result = CliRunner().invoke(cli, ["train", shapes_data["train"], "--out", str(tmp_path / "m.pt"), *args])
    assert result.exit_code == 2 and f"Invalid value for '{option}'" in result.output
