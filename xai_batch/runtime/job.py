"""The explain job's driver: files in, manifest out, the work on Ray.

Three kinds of work run on Ray, pipelined: ``prepare`` tasks (decode, quickshift,
each method's sample rows) on CPUs; ``predict`` calls on the model replicas,
one chunk of ``batch_size`` sample rows each, so the chunks of a single image
spread over every replica (Grad-CAM instead makes one ``gradcam`` call);
``finish`` tasks (surrogate or solver, masks, rows) on CPUs, one per image
and method. The driver
only lists the files and passes object references between them: workers read
the image bytes, image arrays go from the prepare task to the replicas through
Ray's object store, model outputs from the replicas to the finish task, and
rows from the finish task to a writer actor that writes the part files. It
bounds the work in flight, so memory stays flat however many images a folder
holds.

Failures are recovered: tasks whose worker dies are retried by Ray
(``TASK_RETRIES``); replicas are restarted by Ray and their calls in flight
resent by the driver, which charges the crash to the image that caused it.
What still fails becomes that image's error row; the job goes on. A run into an ``out`` that already holds
results of the same configuration resumes: each method's results for an
unchanged file are kept, and only what is missing (a new or changed file,
an error, a method added since) is done. With ``reuse``, rows of the same
configuration are first copied from another output for the images ``out``
lacks, and then count as done the same way.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc
import ray
from tqdm import tqdm

from xai_batch.config import ExplainConfig, config_hash
from xai_batch.methods import METHODS, get_method
from xai_batch.errors import ConfigError
from xai_batch.explain.convergence import sample_schedule
from xai_batch.images import discover_images
from xai_batch.jobrecord import load_job_record, software_versions, write_job_record
from xai_batch.manifest import MANIFEST_DIR, ManifestWriter, new_run_id, read_manifest, write_part
from xai_batch.models import ModelSource, resolve_model
from xai_batch.runtime.cluster import connected
from xai_batch.runtime.replica import Replicas
from xai_batch.stages import (
    ImageHeader, PreparedImage, RowContext, enough_samples, error_row, finish, prepare, quality_rows, score,
)
from xai_batch.storage import join, locate

__all__ = ["JobResult", "Inputs", "gather_inputs", "run_explain"]

log = logging.getLogger(__name__)

CHUNKS_PER_REPLICA = 2  # one running, one queued: a replica never waits on the driver
TASK_RETRIES = 2  # a task whose worker process dies runs at most 3 times


@dataclass(frozen=True)
class JobResult:
    """Counts and timings of a finished run."""

    out: str
    manifest: str
    run_id: str
    images: int
    ok: int
    errors: int
    skipped: int
    rows: int
    seconds: float
    reused: int = 0  # of the skipped: rows copied from ``config.reuse`` for unchanged files


@dataclass(frozen=True)
class Inputs:
    """What a run reads before any work: the model (checkpoint bytes and class names) and the image paths."""

    model: ModelSource
    paths: list[str]


def gather_inputs(config: ExplainConfig) -> Inputs:
    """Read the checkpoint and list SOURCE: once, for callers that check them before ``run_explain``."""
    return Inputs(resolve_model(config.checkpoint), discover_images(config.source))


def run_explain(config: ExplainConfig, progress: bool = True, inputs: Inputs | None = None) -> JobResult:
    """Explain every image under ``config.source`` into ``config.out``.

    The model and the output folder are checked before Ray starts, so a bad
    checkpoint or a clash with earlier results costs no cluster time. Returns
    when every image has its rows; on ``KeyboardInterrupt`` the rows finished
    so far are kept and the run is recorded as interrupted. ``inputs`` are
    the model and paths when the caller has read them already.
    """
    started = time.time()
    inputs = inputs or gather_inputs(config)
    model = inputs.model
    if config.top_labels > model.num_classes:
        raise ConfigError(
            f"top_labels {config.top_labels} exceeds the model's {model.num_classes} classes", "top_labels"
        )
    hashes = {method: config_hash(config, model.model_id, method) for method in config.methods}
    context = RowContext(
        model_id=model.model_id,
        class_names=model.class_names,
        config_hashes=hashes,
        num_samples=config.samples_drawn,
        top_labels=config.top_labels,
        num_features=config.num_features,
        adaptive=config.adaptive,
        faithfulness=config.faithfulness,
        stability=config.stability,
    )
    done = _resume_state(config, {config_hash(config, model.model_id, method) for method in METHODS})
    paths = inputs.paths
    if not paths:
        log.warning("no image files under %s", config.source)
    reused = _reuse_rows(config, hashes, paths, done) if config.reuse else {}
    for path, methods in reused.items():  # a copy of a file that changed since is redone like any other
        done.setdefault(path, {}).update(methods)
    run_id = new_run_id()
    record = {} if config.overwrite else load_job_record(config.out)
    record.update(
        config=config.to_dict(),
        model_id=model.model_id,
        config_hashes=hashes,
        versions=software_versions(),
        state="running",
    )
    run = {"run_id": run_id, "config_hashes": hashes, "state": "running", "started": _iso(started)}
    record["runs"] = [*record.get("runs", []), run]
    write_job_record(config.out, record)
    counts = {"images": len(paths), "ok": 0, "error": 0, "skipped": 0, "reused": 0, "rows": 0}
    timings: dict[str, float] = {}
    try:
        with connected(config.address):
            timings["ray_start_seconds"] = time.time() - started
            checkpoint_ref = ray.put(model.checkpoint_bytes)  # held until the end: replacements load from it
            replicas = Replicas(config.actors, checkpoint_ref, config.precision, config.batch_size, f"xai-batch-{run_id}",
                                config.engine)
            context = dataclasses.replace(
                context, engine=", ".join(sorted({replica["engine"] for replica in replicas.placement})))
            record["engine"] = context.engine
            run["ray"] = {"replicas": replicas.placement, "cluster_resources": ray.cluster_resources()}
            models_ready = time.time()
            timings["model_load_seconds"] = models_ready - started - timings["ray_start_seconds"]
            bar = tqdm(total=len(paths), unit="img", desc="explain", disable=not progress, dynamic_ncols=True,
                       mininterval=0.1 if sys.stderr.isatty() else 15)  # a line per 15 s in job logs
            writer = ray.remote(num_cpus=0)(ManifestWriter).remote(
                config.out, run_id, seconds_per_part=config.flush_seconds
            )
            pipeline = _Pipeline(config, paths, done, set(reused), replicas, context, writer, bar, counts)
            try:
                pipeline.run()
            finally:
                bar.close()
                counts["rows"] = ray.get(writer.close.remote())
                run["ray"].update(replicas_replaced=replicas.replaced, chunks_by_node=pipeline.chunks_by_node)
                replicas.shutdown()
            timings["explain_seconds"] = time.time() - models_ready
            worked = counts["ok"] + counts["error"]
            timings["images_per_second"] = worked / max(timings["explain_seconds"], 1e-9)
        run["state"] = "completed"
    except KeyboardInterrupt:
        run["state"] = "interrupted"
        raise
    except BaseException as exc:
        run["state"] = "failed"
        run["error"] = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        finished = time.time()
        timings["seconds"] = finished - started
        run.update(
            finished=_iso(finished),
            counts=dict(counts),
            timings={name: round(value, 4) for name, value in timings.items()},
        )
        record["state"] = run["state"]
        record["counts"] = _manifest_counts(config.out)
        write_job_record(config.out, record)
    return JobResult(
        out=config.out,
        manifest=join(config.out, MANIFEST_DIR),
        run_id=run_id,
        images=len(paths),
        ok=counts["ok"],
        errors=counts["error"],
        skipped=counts["skipped"],
        rows=counts["rows"],
        seconds=timings["seconds"],
        reused=counts["reused"],
    )


def _resume_state(config: ExplainConfig, compatible: set[str]) -> dict[str, dict[str, str]]:
    """Path -> method -> sha256 of the results ``out`` already holds good rows for.

    ``compatible`` are this configuration's hashes for every method: rows of
    a method this run does not ask for may stay. Results of another
    configuration are refused, unless ``overwrite`` says to discard them.
    Error rows are not "done": a resumed run retries them.
    """
    existing = read_manifest(config.out)
    if existing.num_rows == 0:
        return {}
    hashes = set(existing.column("config_hash").drop_null().to_pylist())
    if hashes - compatible:
        if not config.overwrite:
            raise ConfigError(
                f"{config.out!r} holds results of another configuration (config_hash "
                f"{', '.join(sorted(hashes - compatible))}); pass --overwrite to start over, or choose another --out",
                "out",
            )
        locate(config.out).child(MANIFEST_DIR).delete_dir()
        return {}
    if config.overwrite:
        locate(config.out).child(MANIFEST_DIR).delete_dir()
        return {}
    rows = existing.filter(pc.equal(existing.column("status"), "ok")).select(["path", "method", "sha256"])
    done: dict[str, dict[str, str]] = {}
    for row in rows.to_pylist():
        done.setdefault(row["path"], {})[row["method"]] = row["sha256"]
    return done


def _reuse_rows(
    config: ExplainConfig, hashes: dict[str, str], paths: list[str], done: dict[str, dict[str, str]]
) -> dict[str, dict[str, str]]:
    """Copy ``config.reuse``'s ok rows of this configuration for the images and methods ``out`` lacks.

    The rows keep their run ids, older than this run's, so an image whose file
    changed since is redone by the prepare task's hash check and its new rows
    supersede the copies. Returns path -> method -> sha256 of what was copied.
    """
    previous = read_manifest(config.reuse)
    wanted = set(paths)
    keep = [
        status == "ok" and hashes.get(method) == digest and path in wanted and method not in done.get(path, {})
        for path, method, status, digest in zip(
            previous["path"].to_pylist(), previous["method"].to_pylist(), previous["status"].to_pylist(),
            previous["config_hash"].to_pylist())
    ]
    rows = previous.filter(keep)
    if rows.num_rows:
        folder = locate(config.out).child(MANIFEST_DIR)
        folder.make_dirs()
        write_part(folder, f"part-{new_run_id()}-reused.parquet", rows)
    log.info("reused %d rows of %s", rows.num_rows, config.reuse)
    reused: dict[str, dict[str, str]] = {}
    for row in rows.select(["path", "method", "sha256"]).to_pylist():
        reused.setdefault(row["path"], {})[row["method"]] = row["sha256"]
    return reused


def _manifest_counts(out: str) -> dict[str, int]:
    """Counts over the current manifest (all runs), as job.json reports them."""
    table = read_manifest(out).select(["path", "status"]).to_pylist()
    errors = {row["path"] for row in table if row["status"] == "error"}
    ok = {row["path"] for row in table} - errors
    return {"images": len(ok | errors), "ok": len(ok), "error": len(errors), "rows": len(table)}


@dataclass
class _Image:
    """One method's work on an image, between the prepare task and the finish task."""

    method: str
    header: ImageHeader
    payload: ray.ObjectRef
    submitted: float
    chunks: list  # per chunk: the ref of its probabilities once predicted, else None
    drawn: int = 0  # the sample rows in the payload
    pending: int = 0
    round: int = 0  # index into the pipeline's sample schedule
    crashes: int = 0
    rows: ray.ObjectRef | None = None  # the finished rows, while their quality is measured


@dataclass
class _Chunk:
    key: tuple[str, str]  # (path, method)
    index: int
    start: int
    stop: int
    gradient: bool = False  # Grad-CAM's pass instead of rows [start, stop)


class _Pipeline:
    """Moves every image through prepare → predict chunks → finish on Ray.

    Replica calls are retried here rather than by Ray, so that a crash is
    charged to the image that caused it: a replica runs its calls in the
    order they were sent, so when it dies the oldest of its calls in flight
    was running and the others were only waiting. The waiting ones are resent
    free; an image whose chunk kills ``TASK_RETRIES + 1`` replicas becomes an
    error row, and the rest of the job is unaffected.

    The unit of work is an image and a method: the prepare task segments the
    image once and hands each method its own payload; an image is counted
    done when all its methods are, and as an error if any of them failed.
    """

    def __init__(self, config, paths, done, reused, replicas, context, writer, bar, counts) -> None:
        self.config = config
        self.todo = deque(paths)
        self.done = done
        self.reused = reused
        self.replicas = replicas
        self.context_ref = ray.put(context)
        self.context = context
        self.writer = writer
        self.bar = bar
        self.counts = counts
        self.source = locate(config.source)
        self.prepare_task = ray.remote(num_returns=1 + len(config.methods), max_retries=TASK_RETRIES)(prepare)
        self.finish_task = ray.remote(num_returns=3, max_retries=TASK_RETRIES)(_finish_from_chunks)
        self.score_task = ray.remote(num_returns=2, max_retries=TASK_RETRIES)(_score_from_chunks)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.max_images = max(2, 2 * len(replicas))  # prepared, awaiting model or surrogate
        self.max_preparing = max(1, cpus)
        self.schedule = sample_schedule(config.max_samples) if config.adaptive else [config.num_samples]
        self.preparing: dict[ray.ObjectRef, tuple[str, list[ray.ObjectRef], float]] = {}
        self.images: dict[tuple[str, str], _Image] = {}  # (path, method) -> its work in progress
        self.remaining: dict[str, int] = {}  # path -> methods not yet recorded
        self.failed: set[str] = set()  # paths with a method that failed
        self.chunk_queue: deque[_Chunk] = deque()
        self.running: dict[ray.ObjectRef, tuple[_Chunk, int, ray.ObjectRef]] = {}
        self.in_flight: list[list[ray.ObjectRef]] = [[] for _ in range(len(replicas))]  # per replica, oldest first
        self.finishing: dict[ray.ObjectRef, tuple[tuple[str, str], ray.ObjectRef, ray.ObjectRef | None]] = {}  # counts -> (key, rows, extra)
        self.chunks_by_node: dict[str, int] = {}

    def run(self) -> None:
        while self.todo or self.preparing or self.remaining:
            self._submit_prepares()
            self._dispatch_chunks()
            waiting = [*self.preparing, *self.running, *self.finishing]
            ready, _ = ray.wait(waiting, num_returns=1)
            for ref in ready:
                if ref in self.preparing:
                    self._prepared(ref)
                elif ref in self.running:
                    self._predicted(ref)
                elif ref in self.finishing:
                    self._finished(ref)

    def _submit_prepares(self) -> None:
        while self.todo and len(self.preparing) < self.max_preparing and len(self.remaining) < self.max_images:
            path = self.todo.popleft()
            header_ref, *payload_refs = self.prepare_task.remote(
                self.source, path, self.config, self.done.get(path)
            )
            self.preparing[header_ref] = (path, payload_refs, time.monotonic())

    def _dispatch_chunks(self) -> None:
        while self.chunk_queue:
            replica = min(range(len(self.replicas)), key=lambda r: len(self.in_flight[r]))
            if len(self.in_flight[replica]) >= CHUNKS_PER_REPLICA:
                return
            chunk = self.chunk_queue.popleft()
            if chunk.key not in self.images:  # the image failed meanwhile
                continue
            handle, payload = self.replicas.handles[replica], self.images[chunk.key].payload
            if chunk.gradient:
                status, probs = handle.gradcam.options(num_returns=2).remote(payload, self.config.top_labels)
            else:
                status, probs = handle.predict.options(num_returns=2).remote(payload, chunk.start, chunk.stop)
            self.running[status] = (chunk, replica, probs)
            self.in_flight[replica].append(status)

    def _prepared(self, ref: ray.ObjectRef) -> None:
        path, payloads, submitted = self.preparing.pop(ref)
        try:
            header: ImageHeader = ray.get(ref)
        except ray.exceptions.RayError as exc:
            header = ImageHeader(path, error=f"decoding failed: {_describe(exc)}", methods=self.config.methods)
        if header.skipped:
            self.counts["skipped"] += 1
            self.counts["reused"] += path in self.reused
            self.bar.update(1)
            return
        self.remaining[path] = len(header.methods)
        for method in header.methods:
            if header.error is not None:
                self._record((path, method), [error_row(header, self.context, method)], ok=False)
                continue
            payload = payloads[self.config.methods.index(method)]
            drawn = header.drawn[header.methods.index(method)]
            self.images[path, method] = image = _Image(method, header, payload, submitted, [], drawn)
            if get_method(method).perturbs:
                self._queue_round((path, method), image, 0)
            else:
                self.chunk_queue.append(_Chunk((path, method), 0, 0, 0, gradient=True))
                image.chunks.append(None)
                image.pending += 1

    def _queue_round(self, key: tuple[str, str], image: _Image, start: int, stop_all: int | None = None) -> None:
        """Queue the chunks of the payload's rows [start, stop_all): by default, to the current round's count."""
        if stop_all is None:  # all the rows drawn, or with ``auto`` up to this round's count
            stop_all = self.schedule[image.round] if self.config.adaptive else image.drawn
        for begin in range(start, stop_all, self.config.batch_size):
            stop = min(begin + self.config.batch_size, stop_all)
            self.chunk_queue.append(_Chunk(key, len(image.chunks), begin, stop))
            image.chunks.append(None)
            image.pending += 1

    def _predicted(self, ref: ray.ObjectRef) -> None:
        chunk, replica, probs = self.running[ref]
        try:
            ray.get(ref)  # the row count: small, unlike the probabilities
        except ray.exceptions.RayActorError:
            self._replica_died(replica)
            return
        except ray.exceptions.RayError as exc:
            self._forget(ref)
            self._fail(chunk.key, f"explaining failed: {_describe(exc)}")
            return
        self._forget(ref)
        node = self.replicas.placement[replica]["node_id"]
        self.chunks_by_node[node] = self.chunks_by_node.get(node, 0) + 1
        image = self.images.get(chunk.key)
        if image is None:  # the image failed meanwhile
            return
        image.chunks[chunk.index] = probs
        image.pending -= 1
        if image.pending == 0 and image.rows is None:
            counts, rows, extra = self.finish_task.remote(image.header, image.payload, self.context_ref, image.method,
                                                          *image.chunks)
            self.finishing[counts] = (chunk.key, rows, extra)
        elif image.pending == 0:
            counts, rows = self.score_task.remote(image.header, image.rows, image.payload, self.context_ref,
                                                  image.method, *image.chunks)
            self.finishing[counts] = (chunk.key, rows, None)

    def _replica_died(self, replica: int) -> None:
        """Replace the replica, resend its calls, charge the one it was running."""
        lost = self.in_flight[replica]
        self.in_flight[replica] = []
        self.replicas.replace(replica)
        chunks = [self.running.pop(ref)[0] for ref in lost]
        culprit = self.images.get(chunks[0].key)
        if culprit is not None:
            culprit.crashes += 1
            log.warning("a model replica died while explaining %s (%d)", chunks[0].key[0], culprit.crashes)
            if culprit.crashes > TASK_RETRIES:
                self._fail(chunks[0].key, f"explaining failed: the model replica died {culprit.crashes} times on this image")
        self.chunk_queue.extendleft(reversed([c for c in chunks if c.key in self.images]))

    def _forget(self, ref: ray.ObjectRef) -> None:
        chunk, replica, _ = self.running.pop(ref)
        self.in_flight[replica].remove(ref)

    def _fail(self, key: tuple[str, str], reason: str) -> None:
        image = self.images.pop(key, None)
        if image is not None:
            self._record(key, [error_row(image.header, self.context, image.method, reason)], ok=False)

    def _finished(self, ref: ray.ObjectRef) -> None:
        key, rows, extra = self.finishing.pop(ref)
        image = self.images[key]
        try:
            count, extra_rows = ray.get(ref)  # the rows go from the task to the writer, not through here
        except ray.exceptions.RayError as exc:
            self._fail(key, f"explaining failed: {_describe(exc)}")
            return
        if count == 0:  # not settled yet: draw the next round of samples
            image.round += 1
            self._queue_round(key, image, self.schedule[image.round - 1])
            return
        if extra_rows:  # explained; now the model's outputs on the quality measures' rows
            image.rows, image.payload, image.chunks = rows, extra, []
            self._queue_round(key, image, 0, extra_rows)
            return
        del self.images[key]
        self._record(key, rows, ok=True, seconds=time.monotonic() - image.submitted)

    def _record(
        self, key: tuple[str, str], rows: list[dict] | ray.ObjectRef, ok: bool, seconds: float | None = None
    ) -> None:
        """Send one method's rows to the writer; count the image once all its methods are recorded."""
        self.writer.add.remote(rows, seconds)
        path = key[0]
        if not ok:
            self.failed.add(path)
        self.remaining[path] -= 1
        if self.remaining[path]:
            return
        del self.remaining[path]
        self.counts["error" if path in self.failed else "ok"] += 1
        self.failed.discard(path)
        self.bar.update(1)
        if self.counts["error"]:
            self.bar.set_postfix(errors=self.counts["error"], refresh=False)


def _finish_from_chunks(
    header: ImageHeader, prepared, context: RowContext, method: str, *chunks
) -> tuple[tuple[int, int], list[dict] | None, PreparedImage | None]:
    """``finish`` on the chunks' outputs, which Ray hands over as arguments.

    Returns ((row count, quality rows), rows, quality payload) as three
    objects: the driver waits on the counts, the writer (or ``score``) takes
    the rows, the replicas the payload. A row count of 0 asks for more
    samples: ``auto`` found the explanation not settled yet. Quality rows
    > 0 ask for the model's outputs on the payload's rows before ``score``.
    """
    outputs = np.concatenate(chunks) if get_method(method).perturbs else chunks[0]
    if not enough_samples(prepared, outputs, context):
        return (0, 0), None, None
    rows = finish(header, prepared, outputs, context, method)
    if not context.measures_quality:
        return (len(rows), 0), rows, None
    extra = quality_rows(header, prepared, rows, context, method)
    return (len(rows), len(extra.rows)), rows, extra


def _score_from_chunks(
    header: ImageHeader, rows: list[dict], extra: PreparedImage, context: RowContext, method: str,
    *chunks: np.ndarray,
) -> tuple[tuple[int, int], list[dict]]:
    """``score`` on the outputs for the quality rows: ((row count, 0), the rows with their measures)."""
    scored = score(header, rows, extra, np.concatenate(chunks), context, method)
    return (len(scored), 0), scored


def _describe(exc: BaseException) -> str:
    """A Ray failure as one line a person understands."""
    if isinstance(exc, ray.exceptions.OutOfMemoryError):
        return "out of memory"
    if isinstance(exc, ray.exceptions.WorkerCrashedError):
        return f"the worker process died {TASK_RETRIES + 1} times on this image"
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return _one_line(f"{type(cause).__name__}: {cause}")
    return _one_line(str(exc)) or type(exc).__name__


def _one_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " ".join(lines[-1:] if len(lines) > 3 else lines)


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(timestamp))
