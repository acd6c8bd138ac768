"""Peak memory of an explain job against the number of images.

Runs ``run_explain`` in a fresh process with its own embedded Ray for each
folder size and samples, every 0.2 s, the resident memory of the driver, of
the model replica, and of the driver's whole process tree (Ray's own daemons
and workers included). Memory that stays flat from 100 to 1,000 images means
the work in flight is bounded.

    .venv/bin/python bench/memory.py --images 100 1000 --num-samples 8
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np
import torch
import torchvision
from PIL import Image


def make_images(folder: str, count: int) -> None:
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(count)
    for index in range(count):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), np.uint8)).save(os.path.join(folder, f"{index:05d}.png"))


def _processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, resident bytes, command line), read from /proc (Linux)."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as handle:
                fields = dict(line.split(":", 1) for line in handle if ":" in line)
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        rss = int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
        table[int(entry)] = (int(fields["PPid"]), rss, cmdline)
    return table


def _tree(table: dict[int, tuple[int, int, str]], root: int) -> list[int]:
    found, frontier = [root], [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, (ppid, _, _) in table.items() if ppid == parent]
        found += children
        frontier += children
    return found


def measure(source: str, out: str, checkpoint: str, num_samples: int) -> dict:
    driver = textwrap.dedent(f"""
        import ray
        from xai_batch import ExplainConfig, run_explain
        ray.init(address="local", num_cpus=2, include_dashboard=False)
        run_explain(ExplainConfig(source={source!r}, out={out!r}, checkpoint={checkpoint!r},
                                  num_samples={num_samples}, batch_size={num_samples}), progress=False)
    """)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    process = subprocess.Popen([sys.executable, "-c", driver], env=env, start_new_session=True)
    peaks = {"driver": 0, "replica": 0, "tree": 0}
    started = time.monotonic()
    while process.poll() is None:
        table = _processes()
        tree = [pid for pid in _tree(table, process.pid) if pid in table]
        peaks["driver"] = max(peaks["driver"], table.get(process.pid, (0, 0, ""))[1])
        peaks["replica"] = max([peaks["replica"], *(table[p][1] for p in tree if "ModelReplica" in table[p][2])])
        peaks["tree"] = max(peaks["tree"], sum(table[p][1] for p in tree))
        time.sleep(0.2)
    if process.returncode != 0:
        raise SystemExit(f"the explain run failed with exit code {process.returncode}")
    peaks["seconds"] = time.monotonic() - started
    return peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--num-samples", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = os.path.join(tmp, "model.pt")
        torch.manual_seed(0)
        model = torchvision.models.resnet18(num_classes=4)
        torch.save({"arch": "resnet18", "state_dict": model.state_dict(), "class_names": list("abcd")}, checkpoint)
        print(f"{'images':>7} {'driver MiB':>11} {'replica MiB':>12} {'whole tree MiB':>15} {'seconds':>8}")
        for count in args.images:
            source = os.path.join(tmp, f"images-{count}")
            make_images(source, count)
            peaks = measure(source, os.path.join(tmp, f"out-{count}"), checkpoint, args.num_samples)
            mib = {k: v / 2**20 for k, v in peaks.items() if k != "seconds"}
            print(f"{count:>7} {mib['driver']:>11.0f} {mib['replica']:>12.0f} {mib['tree']:>15.0f} {peaks['seconds']:>8.0f}",
                  flush=True)


if __name__ == "__main__":
    main()
