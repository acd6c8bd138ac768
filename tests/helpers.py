"""Helpers the tests share: models made on the spot, loading them, verifying manifests."""

from __future__ import annotations

import torch
import torchvision


def save_random_resnet(path: str, num_classes: int, seed: int = 0) -> str:
    """An untrained but real ResNet18 checkpoint in our format."""
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(num_classes=num_classes).eval()
    names = [f"label{i}" for i in range(num_classes)]
    torch.save({"arch": "resnet18", "state_dict": model.state_dict(), "class_names": names}, path)
    return path


def checkpoint_bytes(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def load_model(path: str) -> torch.nn.Module:
    from xai_batch.models import build_resnet18, parse_checkpoint

    loaded = parse_checkpoint(checkpoint_bytes(path))
    return build_resnet18(len(loaded.class_names), loaded.state_dict)


def assert_verified(out: str, source: str | None = None) -> None:
    """``xai-batch verify`` passes on ``out`` (the suite runs it after every end-to-end test)."""
    from click.testing import CliRunner

    from xai_batch.cli import cli

    args = ["verify", out] + (["--source", source] if source else [])
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert result.output.rstrip().endswith("— OK"), result.output
