import numpy as np
import pytest
import torch
from click.testing import CliRunner

from helpers import assert_rows_are_limes, checkpoint_bytes, loaded_checkpoint
from xai_batch.cli import cli
from xai_batch.engines import TorchEngine
from xai_batch.images import load_image
from xai_batch.manifest import read_manifest
from xai_batch.models import parse_checkpoint
from xai_batch.distributed.training import _Local, _recalibrate_batchnorm, class_folders, stratified_split
from xai_batch.synthetic import generate_dataset


@pytest.fixture(scope="module")
def small_train(tmp_path_factory) -> str:
    """Six generated images a class (four classes): enough for a run to go through every step of an
    epoch, a third of the shared training folder's time."""
    root = str(tmp_path_factory.mktemp("small-train"))
    generate_dataset(root, per_class=6, seed=0)
    return root


def test_split_is_stratified_seeded_and_disjoint(shapes_data):
    files = class_folders(shapes_data["train"])
    assert list(files) == ["disc", "none", "square", "triangle"]
    train, val = stratified_split(files, 0.25, seed=3)
    assert stratified_split(files, 0.25, seed=3) == (train, val)
    assert not {p for p, _ in train} & {p for p, _ in val}
    assert sorted(label for _, label in val) == [0] * 5 + [1] * 5 + [2] * 5 + [3] * 5


def test_train_command_writes_the_best_epochs_checkpoint_every_tool_loads(small_train, shapes_data, tmp_path):
    """Two epochs through the CLI, with the demo's recipe: the record says which epoch was kept
    (the lower validation loss), and the engine loads the checkpoint. Whether the model is any
    good depends on the draw; the demo's test and the Ray Train test check that it learns."""
    out = tmp_path / "m.pt"
    result = CliRunner().invoke(cli, ["train", small_train, "--out", str(out), "--epochs", "2",
                                      "--pretrained", "none", "--batch-size", "8", "--val-fraction", "0.5",
                                      "--label-smoothing", "0.1", "--lr-schedule", "cosine"])
    assert result.exit_code == 0, result.output
    assert "epoch 2/2: train loss" in result.output and "val loss" in result.output and "acc" in result.output
    loaded = parse_checkpoint(checkpoint_bytes(str(out)))
    assert loaded.class_names == ("disc", "none", "square", "triangle")
    assert [m["epoch"] for m in loaded.metrics] == [1, 2]
    best = min(loaded.metrics, key=lambda m: m["val_loss"])
    assert f"saved epoch {best['epoch']} (val acc {best['val_accuracy']:.3f})" in result.output
    engine = TorchEngine(loaded_checkpoint(str(out)))
    image = load_image(open(class_folders(shapes_data["holdout"])["disc"][0], "rb").read()).pixels
    probs = engine.predict(image, image, np.zeros((224, 224), np.int64), np.ones((1, 1), np.uint8))
    assert probs.shape == (1, 4) and abs(float(probs.sum()) - 1) < 1e-5


@pytest.mark.parametrize("arch, engine", [("mobilenet_v3_small", "torch"), ("squeezenet1_1", "onnxruntime")])
def test_train_builds_any_torchvision_architecture_and_every_tool_loads_it(ray_session, small_train, shapes_data,
                                                                           arch, engine, tmp_path):
    """One epoch of another family: the checkpoint records it; evaluate builds it, and explain's fp32 LIME of
    it is lime's own (test_engines checks both engines' probabilities on each family)."""
    out = tmp_path / "m.pt"
    result = CliRunner().invoke(cli, ["train", small_train, "--out", str(out), "--epochs", "1",
                                      "--arch", arch, "--pretrained", "none", "--batch-size", "16"])
    assert result.exit_code == 0, result.output
    assert f"training {arch} in this process" in result.output
    loaded = parse_checkpoint(checkpoint_bytes(str(out)))
    assert loaded.arch == arch and loaded.class_names == ("disc", "none", "square", "triangle")
    evaluated = CliRunner().invoke(cli, ["evaluate", shapes_data["holdout"], "--checkpoint", str(out), "--out",
                                         str(tmp_path / "eval.json"), "--engine", engine, "--no-progress"])
    assert evaluated.exit_code == 0 and "6 images, 0 errors; accuracy" in evaluated.output, evaluated.output
    explained = CliRunner().invoke(cli, ["explain", shapes_data["holdout"], "--out", str(tmp_path / "run"),
                                         "--checkpoint", str(out), "--num-samples", "40", "--seed", "5",
                                         "--engine", engine, "--stages", "workers", "--no-progress"])
    assert explained.exit_code == 0 and "6 images: 6 explained, 0 errors" in explained.output, explained.output
    table = read_manifest(str(tmp_path / "run"))
    assert set(table.column("engine").to_pylist()) == {next(iter(table.column("engine").to_pylist()))}
    assert table.column("engine")[0].as_py().startswith(engine) and table.column("model_id")[0].as_py().startswith(arch)
    assert_rows_are_limes(table, shapes_data["holdout"], str(out), 40)
    assert max(abs(w) for weights in table.column("weights").to_pylist() for w in weights) > 1e-3  # it answers


def test_batchnorm_recalibration_is_the_plain_average_of_the_batches_statistics():
    """Precise BN: whatever the running averages held, they become the mean over the batches of
    each batch's mean and (unbiased) variance, under the current weights."""
    torch.manual_seed(0)
    batches = [torch.randn(4, 3, 5, 5) * (i + 1) + i for i in range(3)]
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.BatchNorm2d(2))
    model[1].running_mean.fill_(100.0)
    with torch.no_grad():
        features = [model[0](batch) for batch in batches]
    _recalibrate_batchnorm(model, [(batch, 0) for batch in batches], _Local())
    expected_mean = torch.stack([f.mean(dim=(0, 2, 3)) for f in features]).mean(0)
    expected_var = torch.stack([f.transpose(0, 1).reshape(2, -1).var(dim=1) for f in features]).mean(0)
    torch.testing.assert_close(model[1].running_mean, expected_mean)
    torch.testing.assert_close(model[1].running_var, expected_var)
    assert model[1].momentum == 0.1  # put back: training goes on with the usual running averages


def test_train_needs_two_classes(tmp_path):
    (tmp_path / "only").mkdir()
    result = CliRunner().invoke(cli, ["train", str(tmp_path), "--out", str(tmp_path / "m.pt")])
    assert result.exit_code == 2, result.output
    assert "needs at least two class folders with images, found 0" in result.output


@pytest.mark.parametrize("args,option", [(["--epochs", "0"], "--epochs"), (["--val-fraction", "1"], "--val-fraction"),
                                         (["--pretrained", "coco"], "--pretrained"),
                                         (["--label-smoothing", "1"], "--label-smoothing"),
                                         (["--lr-schedule", "step"], "--lr-schedule"),
                                         (["--arch", "lenet5"], "--arch")])
def test_train_bad_options(shapes_data, tmp_path, args, option):
    result = CliRunner().invoke(cli, ["train", shapes_data["train"], "--out", str(tmp_path / "m.pt"), *args])
    assert result.exit_code == 2 and f"Invalid value for '{option}'" in result.output
