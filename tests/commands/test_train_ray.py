"""xai-batch train --workers 2 on Ray Train: DDP on a real local Ray, a worker killed mid-run, resumed."""

import json
import os
import signal
import threading
import time

import pytest
from click.testing import CliRunner

from xai_batch.cli import cli
from xai_batch.models import parse_checkpoint
from xai_batch.distributed.training import TrainConfig, train_model
from xai_batch.synthetic import generate_dataset

pytestmark = pytest.mark.slow


def _train_workers() -> list[int]:
    """PIDs of the live Ray Train worker processes (Ray titles them ray::RayTrainWorker...)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                title = handle.read().split(b"\0")[0]
        except OSError:
            continue
        if title.startswith(b"ray::RayTrainWorker"):
            found.append(int(entry))
    return sorted(found)


def test_two_workers_survive_a_killed_worker_and_make_a_checkpoint_the_tools_load(
        ray_session, shapes_data, tmp_path):
    # Six images a class, not the shared twenty: epochs of about 2.5 s instead of 7.7, and it still learns.
    train = str(tmp_path / "train")
    generate_dataset(train, per_class=6, seed=0)
    out = str(tmp_path / "model.pt")
    storage = str(tmp_path / "ray-train")
    config = TrainConfig(train, out, epochs=4, batch_size=16, pretrained="none", seed=0, workers=2,
                         patience=0, storage=storage, loader_workers=0)
    lines, outcome = [], {}

    def run():
        try:
            outcome["result"] = train_model(config, report=lines.append)
        except BaseException as exc:  # surfaced by the assertion below
            outcome["error"] = exc

    trainer = threading.Thread(target=run)
    trainer.start()
    killed = None
    deadline = time.monotonic() + 600
    while trainer.is_alive() and killed is None and time.monotonic() < deadline:
        checkpoints = [name for _, dirs, _ in os.walk(storage) for name in dirs if name.startswith("checkpoint")]
        workers = _train_workers()
        if len(checkpoints) >= 2 and workers:  # epoch 1's checkpoint is surely registered: kill one in epoch 3
            killed = workers[-1]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.5)
    trainer.join(timeout=600)
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert killed is not None, "no worker was killed: the run ended before its first checkpoint"
    assert result.restarts >= 1 and any("recovered from" in line for line in lines), lines
    assert [m["epoch"] for m in result.metrics] == [1, 2, 3, 4]  # each epoch once: resumed, not restarted
    loaded = parse_checkpoint(open(out, "rb").read())
    assert loaded.class_names == ("disc", "none", "square", "triangle") and len(loaded.metrics) == 4

    # It learnt (what any training run gives: a loss that falls; how well depends on the draw),
    # and the checkpoint is one explain and evaluate load.
    assert result.metrics[-1]["train_loss"] < result.metrics[0]["train_loss"], result.metrics
    runner = CliRunner()
    evaluated = runner.invoke(cli, ["evaluate", shapes_data["holdout"], "--checkpoint", out,
                                    "--out", str(tmp_path / "eval.json"), "--engine", "torch", "--no-progress"])
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads((tmp_path / "eval.json").read_text())["evaluated"] == 6
    explained = runner.invoke(cli, ["explain", shapes_data["holdout"], "--out", str(tmp_path / "run"),
                                    "--checkpoint", out, "--num-samples", "20", "--engine", "torch", "--no-progress"])
    assert explained.exit_code == 0 and "6 explained, 0 errors" in explained.output, explained.output


def test_train_command_on_ray_options(shapes_data, tmp_path):
    result = CliRunner().invoke(cli, ["train", shapes_data["train"], "--out", str(tmp_path / "m.pt"),
                                      "--workers", "0"])
    assert result.exit_code == 2 and "'--workers'" in result.output
