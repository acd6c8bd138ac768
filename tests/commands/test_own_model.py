"""Bringing your own model: its own input size and normalisation, an ONNX file, a TorchScript file; each
explained exactly as lime explains it with the seed's batch_predict in that model's preprocessing."""

import json
import os

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from helpers import assert_rows_are_limes, assert_verified, checkpoint_bytes, save_random_model
from xai_batch.cli import cli
from xai_batch.manifest import decode_segments, read_manifest
from xai_batch.models import build_model, checkpoint_payload, parse_checkpoint
from xai_batch.preprocessing import Preprocessing
from xai_batch.synthetic import generate_dataset

pytestmark = pytest.mark.slow

# Not the seeds' in any field: a 160-pixel crop of an aspect-preserving bicubic resize, another normalisation.
OWN = Preprocessing(resize=176, crop=160, square=False, interpolation="bicubic", mean=(0.5, 0.45, 0.4),
                    std=(0.25, 0.25, 0.3))
SAMPLES = 40


@pytest.fixture(scope="module")
def own_model(tmp_path_factory):
    """A random ResNet18 that takes OWN's input: as our checkpoint, as an ONNX file (its own input name, a
    fixed batch of 4) and as a TorchScript file, the two files with the JSON that describes them."""
    root = tmp_path_factory.mktemp("own-model")
    loaded = parse_checkpoint(checkpoint_bytes(save_random_model(str(root / "random.pt"), num_classes=3, seed=3)))
    names = ["ant", "bee", "cicada"]
    checkpoint = root / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint_payload("resnet18", loaded.state_dict, names, (), OWN))
    model = build_model("resnet18", 3, loaded.state_dict)
    example = torch.zeros(4, 3, OWN.crop, OWN.crop)
    onnx = root / "model.onnx"
    torch.onnx.export(model, (example,), str(onnx), dynamo=True, input_names=["pixels"], external_data=False)
    torchscript = root / "model.torchscript.pt"
    torch.jit.save(torch.jit.trace(model, example[:1]), str(torchscript))
    described = json.dumps({"class_names": names, "preprocessing": OWN.to_dict()})
    for path in (onnx, torchscript):
        (root / (path.name + ".json")).write_text(described)
    return {"checkpoint": str(checkpoint), "onnx": str(onnx), "torchscript": f"torchscript:{torchscript}"}


def _explain(photos, out, checkpoint, *extra):
    return CliRunner().invoke(cli, ["explain", photos, "--out", str(out), "--checkpoint", checkpoint,
                                    "--num-samples", str(SAMPLES), "--no-progress", *extra])


@pytest.mark.parametrize("given, engine", [("checkpoint", "torch"), ("checkpoint", "onnxruntime"),
                                           ("onnx", "onnxruntime"), ("torchscript", "torch")])
def test_a_model_with_its_own_preprocessing_is_explained_as_lime_explains_it(ray_session, photos, own_model,
                                                                             given, engine, tmp_path):
    out = tmp_path / "run"
    result = _explain(photos, out, own_model[given], "--engine", engine)
    assert result.exit_code == 0 and "3 images: 3 explained, 0 errors" in result.output, result.output
    table = read_manifest(str(out))
    assert {engine_ran.split()[0] for engine_ran in table.column("engine").to_pylist()} == {engine}
    model_id = table.column("model_id")[0].as_py()
    assert model_id.startswith({"checkpoint": "resnet18:", "onnx": "onnx:", "torchscript": "torchscript:"}[given])
    for row in table.to_pylist():
        assert decode_segments(row["segments"]).shape == (OWN.crop, OWN.crop)
    # The same weights and preprocessing as our checkpoint: lime with the seed's batch_predict on it.
    assert_rows_are_limes(table, photos, own_model["checkpoint"], SAMPLES)
    assert json.loads((out / "job.json").read_text())["preprocessing"] == OWN.to_dict()
    assert_verified(str(out), photos)
    if given == "onnx":  # what follows redraws each picture in the frame the model saw (job.json's)
        rendered = CliRunner().invoke(cli, ["render", str(out), "--no-progress"])
        assert rendered.exit_code == 0 and "3 overlays, 0 errors" in rendered.output, rendered.output
        pictures = sorted((out / "overlays" / "boundaries").rglob("*.png"))
        assert len(pictures) == 3 and all(Image.open(p).size == (OWN.crop, OWN.crop) for p in pictures)


def test_a_model_file_is_refused_with_what_it_cannot_do(ray_session, photos, own_model, tmp_path):
    cases = [
        (own_model["onnx"], ["--engine", "torch"], "'--engine'", "an ONNX file runs on ONNX Runtime"),
        (own_model["torchscript"], ["--engine", "onnxruntime"], "'--engine'", "a TorchScript file runs on PyTorch"),
        (own_model["onnx"], ["--method", "lime,gradcam"], "'--method'", "Grad-CAM needs the network's layers"),
    ]
    for checkpoint, extra, option, reason in cases:
        result = _explain(photos, tmp_path / "out", checkpoint, *extra)
        assert result.exit_code == 2 and option in result.output and reason in result.output, result.output
    alone = tmp_path / "alone.onnx"
    alone.write_bytes(open(own_model["onnx"], "rb").read())
    result = _explain(photos, tmp_path / "out", str(alone))
    assert result.exit_code == 1 and f"is an ONNX file: say its class names (and preprocessing) in {alone}.json" \
        in result.output
    (tmp_path / "alone.onnx.json").write_text(json.dumps({"class_names": ["a", "b"]}))
    result = _explain(photos, tmp_path / "out", str(alone))
    assert result.exit_code == 1, result.output
    assert "does not run as an ONNX model on a (N, 3, 224, 224) input" in result.output  # it takes 160
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_train_records_the_input_size_it_trained_with_and_every_tool_follows_it(ray_session, tmp_path):
    data = tmp_path / "data"
    generate_dataset(str(data), per_class=4, seed=0)
    out = tmp_path / "m.pt"
    result = CliRunner().invoke(cli, ["train", str(data), "--out", str(out), "--epochs", "1", "--arch",
                                      "squeezenet1_1", "--pretrained", "none", "--input-size", "128",
                                      "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5", "--batch-size", "8"])
    assert result.exit_code == 0, result.output
    recorded = parse_checkpoint(checkpoint_bytes(str(out))).preprocessing
    assert recorded == Preprocessing(resize=146, crop=128, mean=(0.5,) * 3, std=(0.5,) * 3)  # 256:224 kept
    evaluated = CliRunner().invoke(cli, ["evaluate", str(data), "--checkpoint", str(out), "--out",
                                         str(tmp_path / "eval.json"), "--no-progress"])
    assert evaluated.exit_code == 0 and "16 images, 0 errors" in evaluated.output, evaluated.output
    held = tmp_path / "held"
    generate_dataset(str(held), per_class=1, seed=1, shapes=("disc",))
    explained = _explain(str(held), tmp_path / "run", str(out), "--masks", str(held))
    assert explained.exit_code == 0 and "1 explained, 0 errors" in explained.output, explained.output
    (row,) = read_manifest(str(tmp_path / "run")).to_pylist()
    assert decode_segments(row["segments"]).shape == (128, 128) and row["on_object"] is not None
    assert_rows_are_limes(read_manifest(str(tmp_path / "run")), str(held), str(out), SAMPLES)

    for options, named in [(["--input-size", "8"], "'--input-size'"), (["--resize", "100"], "'--resize'"),
                           (["--std", "0.2,0,0.2"], "'--std'"), (["--mean", "0.5,0.5"], "'--mean'")]:
        refused = CliRunner().invoke(cli, ["train", str(data), "--out", str(tmp_path / "x.pt"), *options])
        assert refused.exit_code == 2 and named in refused.output, (options, refused.output)
    assert not os.path.exists(tmp_path / "x.pt")

