import argparse
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
    assert named.preprocessing == Preprocessing(square=False) == parse_checkpoint(named.checkpoint_bytes).preprocessing
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
    assert parse_checkpoint(model.checkpoint_bytes).arch == "mobilenet_v3_small"  # what replicas get says so


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
