import argparse
import re
import io

import pytest
import torch
import torchvision

from helpers import checkpoint_bytes, save_random_model
from xai_batch.config import ExplainConfig, config_hash
from xai_batch.preprocessing import SEEDS, Preprocessing
from xai_batch.errors import ModelError
from xai_batch.models import (
    DEFAULT_ARCH,
    build_model,
    parse_checkpoint,
    pretrained_weights,
    replace_head,
    resolve_model,
    save_checkpoint,
    weights_path,
)


def _bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def test_our_format_and_a_bare_state_dict_both_load(tmp_path):
    path = save_random_model(str(tmp_path / "m.pt"), num_classes=3)
    ours = parse_checkpoint(checkpoint_bytes(path))
    assert ours.class_names == ("label0", "label1", "label2")
    bare = parse_checkpoint(_bytes(torchvision.models.resnet18(num_classes=7).state_dict()))
    assert bare.class_names == tuple(f"class_{i}" for i in range(7))


def test_save_checkpoint_round_trips(tmp_path):
    model = torchvision.models.resnet18(num_classes=2)
    save_checkpoint(str(tmp_path / "c.pt"), model, ["cat", "dog"], [{"epoch": 1, "val_accuracy": 0.5}])
    loaded = parse_checkpoint(checkpoint_bytes(str(tmp_path / "c.pt")))
    assert loaded.class_names == ("cat", "dog")
    assert loaded.metrics == ({"epoch": 1, "val_accuracy": 0.5},)
    assert torch.equal(loaded.state_dict["fc.weight"], model.fc.weight)


@pytest.mark.parametrize(
    "payload,message",
    [
        (b"not a checkpoint at all", "does not load with torch.load"),
        (_bytes({"arch": "lenet5", "state_dict": {}}), "'lenet5' checkpoint, which is not a torchvision classification"),
        (_bytes({"weight": torch.zeros(3)}), "is not a resnet18 state dict (no classifier weight)"),
        (_bytes(torchvision.models.resnet34(num_classes=3).state_dict()), "is not a resnet18 state dict"),
        (_bytes({"arch": "mobilenet_v3_small", "state_dict": torchvision.models.resnet18(num_classes=2).state_dict()}),
         "is not a mobilenet_v3_small state dict"),
        (_bytes([1, 2, 3]), "holds a list"),
        (_bytes({"arch": DEFAULT_ARCH, "state_dict": torchvision.models.resnet18(num_classes=2).state_dict(),
                 "class_names": ["a"]}), "names 1 classes"),
        (_bytes(argparse.Namespace(code="runs on load")), "does not load with torch.load(weights_only=True)"),
    ],
    ids=["garbage", "unknown-arch", "not-resnet", "resnet34", "other-family", "list", "names-mismatch",
         "arbitrary-object"],
)
def test_bad_checkpoints_are_one_line_errors(payload, message):
    with pytest.raises(ModelError) as info:
        parse_checkpoint(payload, name="bad.pt")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_imagenet_weights_offline_say_which_file_goes_where(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    for proxy in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(proxy, "http://127.0.0.1:9")  # nothing listens: the download fails
    with pytest.raises(ModelError) as info:
        resolve_model(None)
    message = str(info.value)
    assert "resnet18-f37072fd.pth" in message
    assert str(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in message
    assert "--checkpoint" in message and "\n" not in message


def test_cached_imagenet_weights_are_used_with_imagenet_names(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), cached)
    assert weights_path(pretrained_weights("resnet18", "IMAGENET1K_V1")) == str(cached)
    model = resolve_model(None)
    assert model.model_id == "resnet18:IMAGENET1K_V1"
    assert len(model.class_names) == 1000 and model.class_names[281] == "tabby"
    assert model.preprocessing == SEEDS  # the seeds' workflow, unchanged: Resize((256, 256))
    named = resolve_model("torchvision:resnet18.IMAGENET1K_V1")  # named, its weights come with their transforms
    assert named.preprocessing == Preprocessing(square=False) == parse_checkpoint(named.payload).preprocessing
    config = ExplainConfig(".", "out")
    assert config_hash(config, model.model_id, "lime", model.preprocessing) == config_hash(config, model.model_id)
    assert config_hash(config, named.model_id, "lime", named.preprocessing) != config_hash(config, model.model_id)


FAMILIES = ["resnet18", "mobilenet_v3_small", "squeezenet1_1", "efficientnet_b0", "shufflenet_v2_x0_5"]


@pytest.mark.parametrize("arch", FAMILIES)
def test_a_checkpoint_records_its_architecture_and_builds_from_it(arch, tmp_path):
    model = build_model(arch, 3)
    save_checkpoint(str(tmp_path / "m.pt"), model, ["a", "b", "c"], arch=arch)
    loaded = parse_checkpoint(checkpoint_bytes(str(tmp_path / "m.pt")))
    assert loaded.arch == arch and loaded.class_names == ("a", "b", "c")
    source = resolve_model(str(tmp_path / "m.pt"))
    assert source.arch == arch and source.model_id.startswith(f"{arch}:")
    rebuilt = build_model(loaded.arch, 3, loaded.state_dict)
    images = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(rebuilt(images), model.eval()(images))


@pytest.mark.parametrize("arch", FAMILIES + ["vit_b_32", "convnext_tiny", "googlenet"])
def test_the_head_is_replaced_whatever_the_family_calls_it(arch):
    model = replace_head(build_model(arch, 1000), 4).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 224, 224)).shape == (1, 4)
    assert parse_checkpoint(_bytes({"arch": arch, "state_dict": model.state_dict()})).class_names == (
        "class_0", "class_1", "class_2", "class_3")


def test_torchvision_weights_by_name_explain_with_imagenet_classes(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    for proxy in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(proxy, "http://127.0.0.1:9")  # nothing listens: a download fails
    with pytest.raises(ModelError, match=r"put mobilenet_v3_small-047dcff4.pth from https://\S+ at "):
        resolve_model("torchvision:mobilenet_v3_small")
    with pytest.raises(ModelError, match=r"mobilenet_v3_small has no weights 'IMAGENET9K': IMAGENET1K_V1"):
        resolve_model("torchvision:mobilenet_v3_small.IMAGENET9K")
    cached = tmp_path / "hub" / "checkpoints" / "mobilenet_v3_small-047dcff4.pth"
    cached.parent.mkdir(parents=True)
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), cached)  # the file's format: a bare state dict
    model = resolve_model("torchvision:mobilenet_v3_small")
    assert model.model_id == "mobilenet_v3_small:IMAGENET1K_V1" and model.arch == "mobilenet_v3_small"
    assert len(model.class_names) == 1000 and model.class_names[281] == "tabby"
    assert parse_checkpoint(model.payload).arch == "mobilenet_v3_small"  # what replicas get says so


@pytest.mark.parametrize("batch", [2, 300])
def test_an_onnx_file_with_a_fixed_batch_is_checked_at_its_size_and_a_huge_one_refused(batch, tmp_path):
    """The driver's check runs a fixed-batch file on that many blank images, so the batch is bounded
    first: a file exported for 300 images (or a million) is a one-line error, not 300 images' memory."""
    import json

    model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 2)).eval()
    path = tmp_path / "fixed.onnx"
    torch.onnx.export(model, (torch.zeros(batch, 3, 16, 16),), str(path), dynamo=True, external_data=False)
    (tmp_path / "fixed.onnx.json").write_text(json.dumps({"class_names": ["a", "b"],
                                                          "preprocessing": {"resize": 16, "crop": 16}}))
    if batch <= 256:
        assert resolve_model(str(path)).class_names == ("a", "b")
    else:
        with pytest.raises(ModelError, match="takes a fixed batch of 300 images, more than the 256 a replica runs"):
            resolve_model(str(path))


def _torchscript(path) -> str:
    """A TorchScript file with the JSON beside it that would make it a model."""
    import json

    class Answer(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3))[:, :2]

    torch.jit.save(torch.jit.script(Answer()), str(path))
    (path.parent / (path.name + ".json")).write_text(json.dumps({"class_names": ["a", "b"]}))
    return str(path)


def test_a_torchscript_file_runs_only_when_named_as_one(tmp_path, monkeypatch):
    """Issue 31, finding 6: a model.pt with a JSON beside it that happened to be TorchScript was recognised by
    its content and its code ran at load. It runs only as torchscript:PATH; otherwise it is refused unrun."""
    path = _torchscript(tmp_path / "model.pt")
    loads, load = [], torch.jit.load
    monkeypatch.setattr(torch.jit, "load", lambda *args, **kwargs: loads.append(args) or load(*args, **kwargs))
    with pytest.raises(ModelError) as refused:
        resolve_model(path)
    assert str(refused.value) == (f"{path} is a TorchScript archive, a program that runs its own code as it loads, so "
                                  "it is not run unasked: if you trust it as you would its source code, pass "
                                  f"--checkpoint torchscript:{path}")
    assert loads == []  # never loaded, so never run
    model = resolve_model(f"torchscript:{path}")
    assert model.file_format == "torchscript" and model.class_names == ("a", "b") and len(loads) == 1
    plain = save_random_model(str(tmp_path / "plain.pt"), num_classes=2)
    with pytest.raises(ModelError, match="is not a TorchScript archive"):
        resolve_model(f"torchscript:{plain}")


def _onnx_with_external_data(folder, location: str, data: bytes) -> str:
    """A tiny ONNX classifier (mean colour times a 3x2 weight) whose weight lies in external data at
    ``location`` (as the file names it), and the JSON beside it."""
    import json

    from onnx import TensorProto, helper

    weight = TensorProto(name="weight", data_type=TensorProto.FLOAT, dims=[3, 2])
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(len(data)))):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("MatMul", ["flat", "weight"], ["logits"])],
        "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = folder / "tiny.onnx"
    path.write_bytes(model.SerializeToString())
    (folder / "tiny.onnx.json").write_text(json.dumps({"class_names": ["a", "b"]}))
    return str(path)


def test_an_onnx_file_reads_external_data_only_from_its_own_folder(tmp_path, monkeypatch):
    """Issue 31, finding 7: an initializer whose external data pointed at .aws/credentials (relative to the
    working directory) was accepted and the file's bytes came out as logits. External data is read from the
    model file's folder only, never through '..', an absolute path or a link out of it."""
    import numpy as np

    secret = b"aws_secret_access_key = wJalr" * 4  # enough bytes for the 3x2 float weight
    home = tmp_path / "home"
    (home / ".aws").mkdir(parents=True)
    (home / ".aws" / "credentials").write_bytes(secret)
    (tmp_path / "models").mkdir()
    monkeypatch.chdir(home)  # where ONNX Runtime resolves a model's external data when it loads from bytes
    for location, reason in [(".aws/credentials", "No such file"),
                             ("../home/.aws/credentials", "outside the model file's folder"),
                             (str(home / ".aws" / "credentials"), "outside the model file's folder")]:
        model = _onnx_with_external_data(tmp_path / "models", location, secret[:24])
        with pytest.raises(ModelError, match=reason) as refused:
            resolve_model(model)
        assert "wJalr" not in str(refused.value)
    (tmp_path / "models" / "escape.bin").symlink_to(home / ".aws" / "credentials")
    with pytest.raises(ModelError, match="outside the model file.s folder"):  # through the link
        resolve_model(_onnx_with_external_data(tmp_path / "models", "escape.bin", secret[:24]))
    weights = np.arange(6, dtype=np.float32)
    (tmp_path / "models" / "weights.bin").write_bytes(weights.tobytes())  # beside it: read, and carried inline
    model = resolve_model(_onnx_with_external_data(tmp_path / "models", "weights.bin", weights.tobytes()))
    from xai_batch.engines.onnx_engine import OnnxEngine
    from xai_batch.engines.onnx_export import onnx_spec

    engine = OnnxEngine(onnx_spec(parse_checkpoint(model.payload, check=False)), batch_size=2)
    probabilities = engine.classify(np.full((1, 224, 224, 3), 255, np.uint8))
    assert probabilities.shape == (1, 2) and np.isfinite(probabilities).all()


def _shared_lists(depth: int, width: int = 10) -> list:
    """Lists nested ``depth`` deep, each holding ``width`` references to the one below: a few hundred bytes
    pickled, ``width ** depth`` names once anything turns it into text."""
    level: list = ["name"]
    for _ in range(depth):
        level = [level] * width
    return level


@pytest.mark.parametrize("field", ["class_names", "arch", "metrics", "preprocessing"])
def test_a_checkpoint_of_shared_lists_is_refused_before_anything_reads_it_as_text(field):
    """Issue 31, finding 8: a 2.5 KB checkpoint whose class_names were nested shared lists took 19 s and
    2.6 GB before it was refused. Types, counts and sizes are checked before any str()."""
    state = torchvision.models.resnet18(num_classes=10).state_dict()
    bomb = _shared_lists(8)
    payload = _bytes({"arch": DEFAULT_ARCH, "state_dict": state, "class_names": [str(i) for i in range(10)],
                      field: bomb if field != "preprocessing" else {"mean": bomb}})
    with pytest.raises(ModelError, match=r"holds more than 1000000 values or \d+ characters besides its weights"):
        parse_checkpoint(payload, name="bomb.pt")


@pytest.mark.parametrize("names, message", [
    ("cats", "class_names must be a list of at most 100000 names, got str"),
    ([["a"], ["b"]], "class name 0 is a list of 1, not a text"),
    (["a", "x" * 5000], "class name 1 is a str of 5000, not a text of at most 1000 characters"),
])
def test_class_names_are_checked_for_type_and_length(names, message):
    payload = _bytes({"arch": DEFAULT_ARCH, "state_dict": torchvision.models.resnet18(num_classes=2).state_dict(),
                      "class_names": names})
    with pytest.raises(ModelError, match=re.escape(message)):
        parse_checkpoint(payload, name="bad.pt")
