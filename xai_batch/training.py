"""Fine-tuning ResNet18 on a class-per-folder dataset, the right way.

Fixes the seed notebook's mistakes (CONTEXT.md): the head is ResNet18's own
``fc`` replaced by ``Linear(512, num_classes)``; raw logits go into
cross-entropy (no ``LogSoftmax`` before it); a stratified held-out split
measures accuracy every epoch; the checkpoint keeps the class names and the
metrics and is the weights of the epoch with the best validation loss.
Inputs are preprocessed exactly as ``explain`` preprocesses them.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from xai_batch.engine import IMAGENET_MEAN, IMAGENET_STD
from xai_batch.errors import ConfigError
from xai_batch.images import IMAGE_EXTENSIONS, open_rgb, preprocess
from xai_batch.models import build_resnet18, imagenet_weights_path, parse_checkpoint, save_checkpoint

__all__ = ["TrainConfig", "TrainResult", "train_model", "class_folders"]

log = logging.getLogger(__name__)
PRETRAINED = ("imagenet", "none")


@dataclass(frozen=True)
class TrainConfig:
    """One training run. ``pretrained='imagenet'`` starts from torchvision's weights."""

    data_dir: str
    out: str
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    val_fraction: float = 0.2
    seed: int = 0
    pretrained: str = "imagenet"
    augment: bool = True
    loader_workers: int | None = None

    def __post_init__(self) -> None:
        if not os.path.isdir(self.data_dir):
            raise ConfigError(f"DATA_DIR {self.data_dir!r} is not a folder", "data_dir")
        for name, value, minimum in (("epochs", self.epochs, 1), ("batch_size", self.batch_size, 1)):
            if not isinstance(value, int) or value < minimum:
                raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}", name)
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in (0, 1), got {self.val_fraction}", "val_fraction")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}", "lr")
        if self.pretrained not in PRETRAINED:
            raise ConfigError(f"pretrained must be one of {', '.join(PRETRAINED)}, got {self.pretrained!r}", "pretrained")


@dataclass(frozen=True)
class TrainResult:
    checkpoint: str
    class_names: tuple[str, ...]
    best_epoch: int
    val_accuracy: float
    metrics: tuple[dict, ...]


def class_folders(data_dir: str) -> dict[str, list[str]]:
    """Image files of each class: ``data_dir/<class>/**/<image>``, classes sorted."""
    classes = sorted(e.name for e in os.scandir(data_dir) if e.is_dir() and not e.name.startswith("."))
    files = {}
    for name in classes:
        found = []
        for dirpath, dirnames, filenames in os.walk(os.path.join(data_dir, name)):
            dirnames.sort()
            found += [os.path.join(dirpath, f) for f in sorted(filenames) if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
        if found:
            files[name] = found
    return files


def stratified_split(files: dict[str, list[str]], val_fraction: float, seed: int):
    """Per class, a seeded shuffle then the first ``val_fraction`` (at least one) held out."""
    rng = random.Random(seed)
    train, val = [], []
    for label, name in enumerate(files):
        items = list(files[name])
        rng.shuffle(items)
        held = max(1, round(len(items) * val_fraction))
        val += [(path, label) for path in items[:held]]
        train += [(path, label) for path in items[held:]]
    return train, val


class _Images(Dataset):
    """Decoded, preprocessed, normalised images; flips and shifts when augmenting."""

    def __init__(self, items: list[tuple[str, int]], augment: bool) -> None:
        self.items = items
        self.augment = augment
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        path, label = self.items[index]
        with open(path, "rb") as handle:
            pixels = preprocess(open_rgb(handle.read()))
        if self.augment:
            pixels = _augment(pixels)
        tensor = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).float().div(255)
        return (tensor - self.mean) / self.std, label


def _augment(pixels: np.ndarray) -> np.ndarray:
    """Horizontal flip and a small translation (reflect-padded), drawn per call."""
    if random.random() < 0.5:
        pixels = pixels[:, ::-1]
    dy, dx = random.randint(-16, 16), random.randint(-16, 16)
    padded = np.pad(pixels, ((16, 16), (16, 16), (0, 0)), mode="reflect")
    return padded[16 + dy : 16 + dy + pixels.shape[0], 16 + dx : 16 + dx + pixels.shape[1]]


def train_model(config: TrainConfig, report: Callable[[str], None] = log.info) -> TrainResult:
    """Train, report each epoch through ``report``, write the best checkpoint."""
    files = class_folders(config.data_dir)
    if len(files) < 2:
        raise ConfigError(
            f"DATA_DIR {config.data_dir!r} needs at least two class folders with images, found {len(files)}",
            "data_dir",
        )
    class_names = tuple(files)
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    train_items, val_items = stratified_split(files, config.val_fraction, config.seed)
    model = _initial_model(config.pretrained, len(class_names))
    workers = config.loader_workers if config.loader_workers is not None else min(4, max(0, (os.cpu_count() or 1) - 1))
    generator = torch.Generator().manual_seed(config.seed)
    train_loader = DataLoader(
        _Images(train_items, config.augment), batch_size=config.batch_size, shuffle=True,
        num_workers=workers, generator=generator, worker_init_fn=_seed_worker,
    )
    val_loader = DataLoader(_Images(val_items, False), batch_size=config.batch_size, num_workers=workers)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    report(f"training ResNet18 on {len(train_items)} images, validating on {len(val_items)}, classes: {', '.join(class_names)}")
    metrics: list[dict] = []
    best = (math.inf, -1)
    best_state = None
    for epoch in range(1, config.epochs + 1):
        started = time.time()
        train_loss, train_acc = _train_one_epoch(model, train_loader, optimizer, loss_fn)
        val_loss, val_acc = _evaluate(model, val_loader, loss_fn)
        metrics.append(
            {"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_acc,
             "val_loss": val_loss, "val_accuracy": val_acc, "seconds": round(time.time() - started, 2)}
        )
        report(
            f"epoch {epoch}/{config.epochs}: train loss {train_loss:.4f} acc {train_acc:.3f} | "
            f"val loss {val_loss:.4f} acc {val_acc:.3f} | {time.time() - started:.1f}s"
        )
        if val_loss < best[0]:
            best = (val_loss, epoch)
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    save_checkpoint(config.out, model, class_names, metrics)
    best_metrics = metrics[best[1] - 1]
    report(f"saved epoch {best[1]} (val acc {best_metrics['val_accuracy']:.3f}) to {config.out}")
    return TrainResult(config.out, class_names, best[1], best_metrics["val_accuracy"], tuple(metrics))


def _initial_model(pretrained: str, num_classes: int) -> torch.nn.Module:
    if pretrained == "none":
        return build_resnet18(num_classes)
    with open(imagenet_weights_path(), "rb") as handle:
        state = parse_checkpoint(handle.read(), name="ImageNet weights").state_dict
    model = build_resnet18(1000, state)
    model.fc = torch.nn.Linear(model.fc.in_features, num_classes)
    return model


def _train_one_epoch(model, loader, optimizer, loss_fn) -> tuple[float, float]:
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    for inputs, labels in loader:
        optimizer.zero_grad(set_to_none=True)
        logits = model(inputs)
        loss = loss_fn(logits, labels)
        loss.backward()
        optimizer.step()
        total_loss += float(loss.detach()) * len(labels)
        correct += int((logits.argmax(1) == labels).sum())
        seen += len(labels)
    return total_loss / seen, correct / seen


def _evaluate(model, loader, loss_fn) -> tuple[float, float]:
    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    with torch.inference_mode():
        for inputs, labels in loader:
            logits = model(inputs)
            total_loss += float(loss_fn(logits, labels)) * len(labels)
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
    return total_loss / seen, correct / seen


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
