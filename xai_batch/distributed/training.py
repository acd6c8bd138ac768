"""Fine-tuning a torchvision classifier (ResNet18 by default) on a class-per-folder dataset, the right way.

Fixes the seed notebook's mistakes (CONTEXT.md): the head is the network's own
(ResNet18's ``fc``, ``classifier[-1]``, ``heads.head``...) replaced by one of
``num_classes`` outputs (:func:`~xai_batch.models.replace_head`); raw logits go into
cross-entropy (no ``LogSoftmax`` before it); a stratified held-out split
measures accuracy every epoch; the checkpoint keeps the class names and the
metrics and is the weights of the epoch with the best validation loss.
Inputs are preprocessed exactly as ``explain`` will preprocess them for this
model: the config's ``preprocessing`` (the seeds' by default) is what the
checkpoint records.

With one worker it trains in this process. With more it runs on Ray Train:
a ``TorchTrainer`` of N workers with DDP, each on its share of the batches,
the validation split sharded and its sums all-reduced, a checkpoint each
epoch from which Ray Train restarts the workers when one dies. Both paths
run the same epoch loop, stop early on the validation loss, and write the
same checkpoint format. What ``train`` and ``demo`` call.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from xai_batch.distributed.ray_train import train_on_ray, unwrapped
from xai_batch.errors import ConfigError
from xai_batch.images import IMAGE_EXTENSIONS, open_rgb
from xai_batch.models import (
    DEFAULT_ARCH,
    architectures,
    build_model,
    parse_checkpoint,
    pretrained_weights,
    replace_head,
    save_checkpoint,
    weights_path,
)
from xai_batch.preprocessing import SEEDS, Preprocessing

__all__ = ["TrainConfig", "TrainResult", "train_model", "class_folders"]

log = logging.getLogger(__name__)
PRETRAINED = ("imagenet", "none")
LR_SCHEDULES = ("constant", "cosine")
RECALIBRATION_BATCHES = 200  # at most this many training batches re-estimate BatchNorm's statistics


@dataclass(frozen=True)
class TrainConfig:
    """One training run of torchvision's ``arch``. ``pretrained='imagenet'`` starts from its default weights;
    ``preprocessing`` is how images become its input (the seeds' by default, whatever the weights)."""

    data_dir: str
    out: str
    arch: str = DEFAULT_ARCH
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    val_fraction: float = 0.2
    seed: int = 0
    pretrained: str = "imagenet"
    augment: bool = True
    label_smoothing: float = 0.0
    lr_schedule: str = "constant"  # or "cosine": from lr down to 0 over the epochs, step by step
    recalibrate_bn: bool = True  # re-estimate BatchNorm's statistics before each validation
    loader_workers: int | None = None
    patience: int = 3  # epochs without a better validation loss before stopping; 0 never stops early
    workers: int = 1
    gpus_per_worker: float = 0.0
    max_failures: int = 3  # worker failures Ray Train recovers from, each time from the last checkpoint
    address: str | None = None
    insecure: bool = False  # send the cluster's token to a remote GCS over plain gRPC
    storage: str | None = None  # Ray Train's run folder; default: next to ``out``
    preprocessing: Preprocessing = SEEDS

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
        for name, value, minimum in (("patience", self.patience, 0), ("workers", self.workers, 1),
                                     ("max_failures", self.max_failures, 0)):
            if not isinstance(value, int) or value < minimum:
                raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}", name)
        if self.gpus_per_worker < 0:
            raise ConfigError(f"gpus_per_worker must be >= 0, got {self.gpus_per_worker}", "gpus_per_worker")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}", "label_smoothing")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}",
                              "lr_schedule")
        if self.pretrained not in PRETRAINED:
            raise ConfigError(f"pretrained must be one of {', '.join(PRETRAINED)}, got {self.pretrained!r}", "pretrained")
        if self.arch not in architectures():
            raise ConfigError(f"{self.arch!r} is not a torchvision classification model: one of "
                              f"{', '.join(architectures())}", "arch")


@dataclass(frozen=True)
class TrainResult:
    checkpoint: str
    class_names: tuple[str, ...]
    best_epoch: int
    val_accuracy: float
    metrics: tuple[dict, ...]
    restarts: int = 0  # times Ray Train resumed from a checkpoint after a failure


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

    def __init__(self, items: list[tuple[str, int]], augment: bool, preprocessing: Preprocessing) -> None:
        self.items = items
        self.augment = augment
        self.preprocessing = preprocessing
        self.mean = torch.tensor(preprocessing.mean).view(3, 1, 1)
        self.std = torch.tensor(preprocessing.std).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        path, label = self.items[index]
        with open(path, "rb") as handle:
            pixels = self.preprocessing.frame(open_rgb(handle.read()))
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


@dataclass
class _Progress:
    """Where a training run stands: what a checkpoint holds and a resumed run continues from."""

    epoch: int = 0
    metrics: list[dict] = field(default_factory=list)
    best_loss: float = math.inf
    best_epoch: int = 0
    best_state: dict | None = None
    stale: int = 0  # epochs since the validation loss last improved
    restarts: int = 0


def train_model(config: TrainConfig, report: Callable[[str], None] = log.info) -> TrainResult:
    """Train, report each epoch through ``report``, write the best checkpoint."""
    files = class_folders(config.data_dir)
    if len(files) < 2:
        raise ConfigError(
            f"DATA_DIR {config.data_dir!r} needs at least two class folders with images, found {len(files)}",
            "data_dir",
        )
    class_names = tuple(files)
    train_items, val_items = stratified_split(files, config.val_fraction, config.seed)
    where = "in this process" if config.workers == 1 else f"on Ray Train, {config.workers} workers (DDP)"
    report(f"training {config.arch} {where} on {len(train_items)} images, validating on {len(val_items)}, "
           f"classes: {', '.join(class_names)}")
    if config.workers == 1:
        progress = _train(config, class_names, train_items, val_items, _Local(), report)
    else:
        progress = _train_on_ray(config, class_names, train_items, val_items, report)
    model = build_model(config.arch, len(class_names), progress.best_state)
    save_checkpoint(config.out, model, class_names, progress.metrics, arch=config.arch,
                    preprocessing=config.preprocessing)
    best_metrics = progress.metrics[progress.best_epoch - 1]
    report(f"saved epoch {progress.best_epoch} (val acc {best_metrics['val_accuracy']:.3f}) to {config.out}")
    return TrainResult(config.out, class_names, progress.best_epoch, best_metrics["val_accuracy"],
                       tuple(progress.metrics), progress.restarts)


class _Local:
    """The training run's place when it runs in this process: one process, no checkpoints."""

    rank, world, device = 0, 1, torch.device("cpu")

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def total(self, *sums: float) -> list[float]:
        return list(sums)

    def average(self, tensors: list[torch.Tensor]) -> None:
        pass

    def resume(self) -> dict | None:
        return None

    def epoch_done(self, progress: _Progress, model: torch.nn.Module, optimizer) -> None:
        pass


def _train(config: TrainConfig, class_names, train_items, val_items, place, report) -> _Progress:
    """The epoch loop, wherever it runs; returns where it ended (best weights included)."""
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    model = _initial_model(config.arch, config.pretrained, len(class_names))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    progress = _Progress()
    saved = place.resume()
    if saved is not None:  # Ray Train restarted the workers after a failure
        progress = _Progress(**{**saved["progress"], "restarts": saved["progress"]["restarts"] + 1})
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        report(f"resuming after epoch {progress.epoch} from Ray Train's checkpoint")
    model = place.wrap(model.to(place.device))
    workers = config.loader_workers if config.loader_workers is not None else min(4, max(0, (os.cpu_count() or 1) - 1))
    train_set = _Images(train_items, config.augment, config.preprocessing)
    sampler = torch.utils.data.DistributedSampler(
        train_set, num_replicas=place.world, rank=place.rank, shuffle=True, seed=config.seed)
    train_loader = DataLoader(train_set, batch_size=config.batch_size, sampler=sampler, num_workers=workers,
                              worker_init_fn=_seed_worker)
    val_set = _Images(val_items[place.rank :: place.world], False, config.preprocessing)
    val_loader = DataLoader(val_set, batch_size=config.batch_size, num_workers=workers)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    scheduler = None
    if config.lr_schedule == "cosine":
        steps = config.epochs * len(train_loader)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps)))
        for _ in range(progress.epoch * len(train_loader)):  # a resumed run continues the schedule
            scheduler.step()
    for epoch in range(progress.epoch + 1, config.epochs + 1):
        started = time.time()
        sampler.set_epoch(epoch)
        train_loss, train_acc = _run_epoch(model, train_loader, loss_fn, place, optimizer, scheduler)
        if config.recalibrate_bn:
            _recalibrate_batchnorm(unwrapped(model), train_loader, place)
        val_loss, val_acc = _run_epoch(model, val_loader, loss_fn, place)
        progress.epoch = epoch
        progress.metrics.append(
            {"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_acc,
             "val_loss": val_loss, "val_accuracy": val_acc, "seconds": round(time.time() - started, 2)}
        )
        if val_loss < progress.best_loss:
            progress.best_loss, progress.best_epoch, progress.stale = val_loss, epoch, 0
            progress.best_state = {k: v.detach().cpu().clone() for k, v in unwrapped(model).state_dict().items()}
        else:
            progress.stale += 1
        report(
            f"epoch {epoch}/{config.epochs}: train loss {train_loss:.4f} acc {train_acc:.3f} | "
            f"val loss {val_loss:.4f} acc {val_acc:.3f} | {time.time() - started:.1f}s"
        )
        place.epoch_done(progress, model, optimizer)
        if config.patience and progress.stale >= config.patience:
            report(f"stopping early: no better validation loss for {config.patience} epochs")
            break
    return progress


def _train_on_ray(config: TrainConfig, class_names, train_items, val_items, report) -> _Progress:
    """Run ``_train`` on Ray Train's workers; the last checkpoint holds the run's progress."""
    storage = config.storage or os.path.abspath(config.out) + ".ray-train"
    absolute = [(os.path.abspath(path), label) for path, label in train_items]
    held_out = [(os.path.abspath(path), label) for path, label in val_items]

    def loop(place, say) -> None:
        _train(config, class_names, absolute, held_out, place, say)

    saved, where = train_on_ray(loop, workers=config.workers, gpus_per_worker=config.gpus_per_worker,
                                max_failures=config.max_failures, address=config.address, storage=storage,
                                insecure=config.insecure)
    progress = _Progress(**saved)
    for line in (f"epoch {m['epoch']}: val loss {m['val_loss']:.4f} acc {m['val_accuracy']:.3f}" for m in progress.metrics):
        log.info(line)
    if progress.restarts:
        report(f"Ray Train recovered from {progress.restarts} worker failure(s), each from the last epoch's checkpoint")
    report(f"Ray Train's checkpoints: {where}")
    return progress


def _initial_model(arch: str, pretrained: str, num_classes: int) -> torch.nn.Module:
    """``arch`` with ``num_classes`` outputs: new, or its default ImageNet weights with a new head."""
    if pretrained == "none":
        return build_model(arch, num_classes)
    weights = pretrained_weights(arch)
    with open(weights_path(weights), "rb") as handle:
        state = parse_checkpoint(handle.read(), name=f"{weights} weights", arch=arch).state_dict
    return replace_head(build_model(arch, len(weights.meta["categories"]), state), num_classes)


def _recalibrate_batchnorm(model: torch.nn.Module, loader, place) -> None:
    """Re-estimate every BatchNorm's running mean and variance under the epoch's final weights,
    as the plain average over (up to ``RECALIBRATION_BATCHES``) training batches ("precise BN").

    With a few steps an epoch, the exponential running averages trail the
    changing weights, and the evaluation-mode model that validation measures and
    the checkpoint keeps can differ wildly from the one that trained: validation
    accuracy swings from epoch to epoch. Workers each
    average their own batches, then average across workers.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the batches below
    model.train()
    with torch.no_grad():
        for index, (inputs, _) in enumerate(loader):
            if index == RECALIBRATION_BATCHES:
                break
            model(inputs.to(place.device))
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    place.average([buffer for norm in norms for buffer in (norm.running_mean, norm.running_var)])


def _run_epoch(model, loader, loss_fn, place, optimizer=None, scheduler=None) -> tuple[float, float]:
    """One pass over ``loader``: training if given an optimizer, else evaluation; (mean loss, accuracy) over all workers."""
    model.train(optimizer is not None)
    total_loss, correct, seen = 0.0, 0, 0
    with torch.set_grad_enabled(optimizer is not None):
        for inputs, labels in loader:
            inputs, labels = inputs.to(place.device), labels.to(place.device)
            logits = model(inputs)
            loss = loss_fn(logits, labels)
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
            total_loss += float(loss.detach()) * len(labels)
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
    total_loss, correct, seen = place.total(total_loss, correct, seen)
    return total_loss / max(seen, 1), correct / max(seen, 1)


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
