"""Training on Ray Train: the caller's epoch loop on a ``TorchTrainer`` of N workers with DDP.

Each worker runs the loop with a :class:`RayTrainPlace`: its rank and device,
the model wrapped for DDP, sums all-reduced, and a checkpoint from rank 0
after each epoch, from which Ray Train restarts the workers when one dies.
The loop is the same one that trains in a single process
(:mod:`xai_batch.distributed.training`); this module knows nothing of what it trains.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Callable

import torch

from xai_batch.errors import XaiBatchError, one_line

__all__ = ["RayTrainPlace", "train_on_ray", "unwrapped", "STATE"]

STATE = "state.pt"  # the file in each Ray Train checkpoint: progress, model and optimizer


def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DDP wrapper (or the model itself)."""
    return getattr(model, "module", model)


class RayTrainPlace:
    """Where the epoch loop runs on a Ray Train worker: DDP, all-reduced sums, a checkpoint each epoch."""

    def __init__(self) -> None:
        import ray.train

        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.device = ray.train.torch.get_device()

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    def total(self, *sums: float) -> list[float]:
        values = torch.tensor(sums, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(values)
        return values.tolist()

    def average(self, tensors: list[torch.Tensor]) -> None:
        """Replace each tensor, in place, by its mean over the workers."""
        for tensor in tensors:
            torch.distributed.all_reduce(tensor)
            tensor.div_(self.world)

    def resume(self) -> dict | None:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as folder:
            return torch.load(os.path.join(folder, STATE), map_location="cpu", weights_only=True)

    def epoch_done(self, progress, model: torch.nn.Module, optimizer) -> None:
        """Report the epoch to Ray Train, with a checkpoint from rank 0 (every worker must call this)."""
        import ray.train

        with tempfile.TemporaryDirectory(prefix="xai-batch-train-") as folder:
            checkpoint = None
            if self.rank == 0:
                torch.save({"progress": dataclasses.asdict(progress), "model": unwrapped(model).state_dict(),
                            "optimizer": optimizer.state_dict()}, os.path.join(folder, STATE))
                checkpoint = ray.train.Checkpoint.from_directory(folder)
            ray.train.report(progress.metrics[-1], checkpoint=checkpoint)


def train_on_ray(
    loop: Callable[[RayTrainPlace, Callable[[str], None]], None], *, workers: int, gpus_per_worker: float,
    max_failures: int, address: str | None, storage: str, insecure: bool = False,
) -> tuple[dict, str]:
    """Run ``loop(place, report)`` on ``workers`` Ray Train workers; rank 0 reports on stdout.

    Returns the run's progress from its last checkpoint (what ``epoch_done``
    saved) and the folder of Ray Train's checkpoints.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    from xai_batch.distributed.cluster import connected

    name = time.strftime("train-%Y%m%d-%H%M%S")

    def worker_loop(_: dict) -> None:
        rank = ray.train.get_context().get_world_rank()
        loop(RayTrainPlace(), lambda line: print(line, flush=True) if rank == 0 else None)

    use_gpu = gpus_per_worker > 0
    resources = {"CPU": 1, **({"GPU": gpus_per_worker} if use_gpu else {})}
    with connected(address, insecure):
        trainer = TorchTrainer(
            worker_loop,
            scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                                   resources_per_worker=resources),
            run_config=ray.train.RunConfig(
                name=name, storage_path=storage,
                failure_config=ray.train.FailureConfig(max_failures=max_failures),
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            ),
        )
        try:
            result = trainer.fit()
        except Exception as exc:  # Ray Train wraps a worker's error; say it in one line
            raise XaiBatchError(f"training on Ray failed: {one_line(exc, limit=500)}") from exc
    if result.checkpoint is None:
        raise XaiBatchError(f"training on Ray ended without a checkpoint (see {storage}/{name})")
    with result.checkpoint.as_directory() as folder:
        saved = torch.load(os.path.join(folder, STATE), map_location="cpu", weights_only=True)
    return saved["progress"], f"{storage}/{name}"
