import argparse
import io

import pytest
import torch
import torchvision

from helpers import checkpoint_bytes, save_random_resnet
from xai_batch.errors import ModelError
from xai_batch.models import ARCH, imagenet_weights_path, parse_checkpoint, resolve_model, save_checkpoint


def _bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def test_our_format_and_a_bare_state_dict_both_load(tmp_path):
    path = save_random_resnet(str(tmp_path / "m.pt"), num_classes=3)
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
        (_bytes({"arch": "vgg16", "state_dict": {}}), "only 'resnet18'"),
        (_bytes({"weight": torch.zeros(3)}), "no 2-D 'fc.weight'"),
        (_bytes(torchvision.models.resnet34(num_classes=3).state_dict()), "is not a ResNet18 state dict"),
        (_bytes([1, 2, 3]), "holds a list"),
        (_bytes({"arch": ARCH, "state_dict": torchvision.models.resnet18(num_classes=2).state_dict(),
                 "class_names": ["a"]}), "names 1 classes"),
        (_bytes(argparse.Namespace(code="runs on load")), "does not load with torch.load(weights_only=True)"),
    ],
    ids=["garbage", "other-arch", "not-resnet", "resnet34", "list", "names-mismatch", "arbitrary-object"],
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
    assert imagenet_weights_path() == str(cached)
    model = resolve_model(None)
    assert model.model_id == "resnet18:IMAGENET1K_V1"
    assert len(model.class_names) == 1000 and model.class_names[281] == "tabby"
