"""The explain job's driver: files in, manifest out, the work on Ray.

Three kinds of work run on Ray, pipelined: ``prepare`` tasks (decode, quickshift,
sample rows) on CPUs; ``predict`` calls on the model replicas, one chunk of
``batch_size`` sample rows each, so the chunks of a single image spread over
every replica; ``finish`` tasks (surrogate, masks, rows) on CPUs. The driver
only passes object references between them: image arrays go from the prepare
task to the replicas through Ray's object store, and model outputs from the
replicas to the finish task, never through the driver. It bounds the work in
flight, so memory stays flat however many images a folder holds.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import ray
from tqdm import tqdm

from xai_batch.config import ExplainConfig, config_hash
from xai_batch.errors import ConfigError
from xai_batch.images import discover_images
from xai_batch.jobrecord import software_versions, write_job_record
from xai_batch.manifest import MANIFEST_DIR, ManifestWriter
from xai_batch.models import resolve_model
from xai_batch.runtime.cluster import connected
from xai_batch.runtime.replica import start_replicas
from xai_batch.stages import ImageHeader, RowContext, error_row, finish, prepare

__all__ = ["JobResult", "run_explain"]

log = logging.getLogger(__name__)

CHUNKS_PER_REPLICA = 2  # one running, one queued: a replica never waits on the driver


@dataclass(frozen=True)
class JobResult:
    """Counts and timings of a finished job."""

    out: str
    manifest: str
    images: int
    ok: int
    errors: int
    rows: int
    seconds: float


def run_explain(config: ExplainConfig, progress: bool = True) -> JobResult:
    """Explain every image under ``config.source`` into ``config.out``.

    The model is resolved before Ray starts, so a bad checkpoint costs no
    cluster time. Returns when every image has a row.
    """
    started = time.time()
    _refuse_existing_manifest(config.out)
    model = resolve_model(config.checkpoint)
    if config.top_labels > model.num_classes:
        raise ConfigError(
            f"top_labels {config.top_labels} exceeds the model's {model.num_classes} classes", "top_labels"
        )
    paths = discover_images(config.source)
    if not paths:
        log.warning("no image files under %s", config.source)
    context = RowContext(
        model_id=model.model_id,
        class_names=model.class_names,
        config_hash=config_hash(config, model.model_id),
        num_samples=config.num_samples,
        top_labels=config.top_labels,
        num_features=config.num_features,
    )
    record = {
        "state": "running",
        "config": config.to_dict(),
        "model_id": model.model_id,
        "config_hash": context.config_hash,
        "versions": software_versions(),
        "started": _iso(started),
        "counts": {"images": len(paths)},
    }
    write_job_record(config.out, record)
    writer = ManifestWriter(config.out)
    counts = {"ok": 0, "error": 0}
    timings: dict[str, float] = {}
    try:
        with connected(config.address):
            timings["ray_start_seconds"] = time.time() - started
            replicas = start_replicas(
                config.actors, ray.put(model.checkpoint_bytes), config.precision, config.batch_size
            )
            record["ray"] = {
                "replicas": len(replicas),
                "devices": ray.get([replica.device.remote() for replica in replicas]),
                "cluster_resources": ray.cluster_resources(),
            }
            models_ready = time.time()
            timings["model_load_seconds"] = models_ready - started - timings["ray_start_seconds"]
            bar = tqdm(total=len(paths), unit="img", desc="explain", disable=not progress, dynamic_ncols=True)
            try:
                _Pipeline(config, paths, replicas, ray.put(context), context, writer, bar, counts).run()
            finally:
                bar.close()
                writer.close()
                for replica in replicas:
                    ray.kill(replica)
            timings["explain_seconds"] = time.time() - models_ready
            timings["images_per_second"] = len(paths) / max(timings["explain_seconds"], 1e-9)
        record["state"] = "completed"
    except KeyboardInterrupt:
        record["state"] = "interrupted"
        raise
    except BaseException as exc:
        record["state"] = "failed"
        record["error"] = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        finished = time.time()
        timings["seconds"] = finished - started
        record.update(
            finished=_iso(finished),
            counts={"images": len(paths), **counts, "rows": writer.rows_written},
            timings={name: round(value, 4) for name, value in timings.items()},
        )
        write_job_record(config.out, record)
    return JobResult(
        out=config.out,
        manifest=os.path.join(config.out, MANIFEST_DIR),
        images=len(paths),
        ok=counts["ok"],
        errors=counts["error"],
        rows=writer.rows_written,
        seconds=timings["seconds"],
    )


@dataclass
class _Image:
    header: ImageHeader
    payload: ray.ObjectRef
    submitted: float
    chunks: list = field(default_factory=list)
    pending: int = 0


class _Pipeline:
    """Moves every image through prepare → predict chunks → finish on Ray."""

    def __init__(self, config, paths, replicas, context_ref, context, writer, bar, counts) -> None:
        self.config = config
        self.todo = deque(paths)
        self.replicas = replicas
        self.context_ref = context_ref
        self.context = context
        self.writer = writer
        self.bar = bar
        self.counts = counts
        self.prepare_task = ray.remote(num_returns=2)(prepare)
        self.finish_task = ray.remote(_finish_from_chunks)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.max_images = max(2, 2 * len(replicas))  # prepared, awaiting model or surrogate
        self.max_preparing = max(1, cpus)
        self.preparing: dict[ray.ObjectRef, tuple[str, ray.ObjectRef, float]] = {}
        self.images: dict[str, _Image] = {}
        self.chunk_queue: deque[tuple[str, int, int, int]] = deque()
        self.running: dict[ray.ObjectRef, tuple[str, int, int]] = {}
        self.load = [0] * len(replicas)
        self.finishing: dict[ray.ObjectRef, str] = {}

    def run(self) -> None:
        while self.todo or self.preparing or self.images:
            self._submit_prepares()
            self._dispatch_chunks()
            waiting = [*self.preparing, *self.running, *self.finishing]
            ready, _ = ray.wait(waiting, num_returns=1)
            for ref in ready:
                if ref in self.preparing:
                    self._prepared(ref)
                elif ref in self.running:
                    self._predicted(ref)
                else:
                    self._finished(ref)

    def _submit_prepares(self) -> None:
        while self.todo and len(self.preparing) < self.max_preparing and len(self.images) < self.max_images:
            path = self.todo.popleft()
            header_ref, payload_ref = self.prepare_task.remote(self.config.source, path, self.config)
            self.preparing[header_ref] = (path, payload_ref, time.monotonic())

    def _dispatch_chunks(self) -> None:
        while self.chunk_queue:
            replica = min(range(len(self.replicas)), key=self.load.__getitem__)
            if self.load[replica] >= CHUNKS_PER_REPLICA:
                return
            path, index, start, stop = self.chunk_queue.popleft()
            ref = self.replicas[replica].predict.remote(self.images[path].payload, start, stop)
            self.running[ref] = (path, index, replica)
            self.load[replica] += 1

    def _prepared(self, ref: ray.ObjectRef) -> None:
        path, payload, submitted = self.preparing.pop(ref)
        try:
            header: ImageHeader = ray.get(ref)
        except ray.exceptions.RayError as exc:
            header = ImageHeader(path, error=f"could not be prepared: {_cause(exc)}")
        if header.error is not None:
            self._record([error_row(header, self.context)], ok=False)
            return
        chunks = math.ceil(self.config.num_samples / self.config.batch_size)
        self.images[path] = _Image(header, payload, submitted, [None] * chunks, chunks)
        for index in range(chunks):
            start = index * self.config.batch_size
            stop = min(start + self.config.batch_size, self.config.num_samples)
            self.chunk_queue.append((path, index, start, stop))

    def _predicted(self, ref: ray.ObjectRef) -> None:
        path, index, replica = self.running.pop(ref)
        self.load[replica] -= 1
        image = self.images[path]
        image.chunks[index] = ref
        image.pending -= 1
        if image.pending == 0:
            done = self.finish_task.remote(image.header, image.payload, self.context_ref, *image.chunks)
            self.finishing[done] = path

    def _finished(self, ref: ray.ObjectRef) -> None:
        path = self.finishing.pop(ref)
        image = self.images.pop(path)
        seconds = time.monotonic() - image.submitted
        try:
            rows = ray.get(ref)
        except ray.exceptions.RayError as exc:
            self._record([error_row(image.header, self.context, f"model evaluation failed: {_cause(exc)}")], ok=False)
            return
        for row in rows:
            row["seconds"] = seconds
        self._record(rows, ok=True)

    def _record(self, rows: list[dict], ok: bool) -> None:
        self.writer.add(rows)
        self.counts["ok" if ok else "error"] += 1
        self.bar.update(1)
        if self.counts["error"]:
            self.bar.set_postfix(errors=self.counts["error"], refresh=False)


def _refuse_existing_manifest(out: str) -> None:
    """One job per output folder: a second run would add a second row per image."""
    folder = os.path.join(out, MANIFEST_DIR)
    if os.path.isdir(folder) and any(name.endswith(".parquet") and not name.startswith(".") for name in os.listdir(folder)):
        raise ConfigError(f"{out!r} already holds a manifest; choose another --out or remove it", "out")


def _finish_from_chunks(header: ImageHeader, prepared, context: RowContext, *chunks: np.ndarray) -> list[dict]:
    """``finish`` on the chunks' outputs, which Ray hands over as arguments."""
    return finish(header, prepared, np.concatenate(chunks), context)


def _cause(exc: BaseException) -> str:
    """The innermost error of a Ray failure, as one line."""
    cause = getattr(exc, "cause", None) or exc
    text = str(cause).strip().splitlines()
    return text[-1] if text else type(cause).__name__


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(timestamp))
