"""An explain run: files in, manifest out, the work on Ray; what ``explain``, ``audit`` and ``demo`` call.

The model and the output folder are checked before Ray starts, so a bad
checkpoint or a clash with earlier results costs no cluster time; then the
run resumes what ``out`` already holds (:mod:`xai_batch.manifest.resume`),
starts the model replicas and a writer actor, moves every image through the
workers' stage (:mod:`xai_batch.distributed.pipeline`) or the replica's
(:mod:`xai_batch.distributed.replica_pipeline`), as ``--stages`` chooses, and
keeps its entry in ``job.json`` (:class:`~xai_batch.manifest.record.RunRecord`).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import ray
from tqdm import tqdm

from xai_batch.config import ExplainConfig, config_hash
from xai_batch.distributed.cluster import check_join, connected
from xai_batch.distributed.pipeline import FlowInputs, Pipeline, describe_failure, load_failure, lost_lease
from xai_batch.distributed.replica_pipeline import ReplicaPipeline
from xai_batch.distributed.replicas import Replicas
from xai_batch.engines import replica_model
from xai_batch.explaining.steps import STEPS
from xai_batch.explaining.whole import maths_on_device
from xai_batch.errors import ConfigError, XaiBatchError
from xai_batch.sources import ImagePaths, discover_images
from xai_batch.manifest.lock import OutputLock
from xai_batch.manifest import (
    MANIFEST_DIR, DoneIndex, ManifestWriter, RowContext, manifest_counts, new_run_id, resume_state, reuse_rows,
)
from xai_batch.manifest.record import RunCounts, RunRecord
from xai_batch.methods import METHODS, GradientMethod, get_method
from xai_batch.model_objects import check_model_runs, model_source
from xai_batch.models import ModelSource, resolve_model
from xai_batch.preprocessing import Preprocessing
from xai_batch.storage import join

__all__ = ["JobResult", "Inputs", "gather_inputs", "pipeline_for", "run_explain", "explain_dataset"]

log = logging.getLogger(__name__)


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
    unread: int = 0  # of the skipped: files passed over on their size and modification time, never opened


@dataclass(frozen=True)
class Inputs:
    """What a run reads before any work: the model (checkpoint bytes and class names) and the image paths."""

    model: ModelSource
    paths: ImagePaths


def gather_inputs(config: ExplainConfig) -> Inputs:
    """Read the checkpoint and list SOURCE (passing over ``out`` where it lies inside): once, for callers
    that check them before ``run_explain``."""
    return Inputs(resolve_model(config.checkpoint), discover_images(config.source, skip=config.out))


def explain_dataset(source: str, out: str, model: object = None, *, class_names: Sequence[str] | None = None,
                    preprocessing: Preprocessing | dict | None = None, model_id: str | None = None,
                    progress: bool = True, **options) -> JobResult:
    """Explain every image under ``source`` into ``out`` with the model in hand: ``xai-batch explain`` from Python.

    ``model`` is a ``torch.nn.Module`` or lime's ``classifier_fn``
    (:mod:`xai_batch.model_objects` says how each runs and what it is named
    by), with its ``class_names`` (``class_0``... by default), the
    ``preprocessing`` it takes its input with (the seeds' by default) and,
    for a function, a ``model_id`` to resume by. Without ``model``,
    ``checkpoint=`` names a file as ``--checkpoint`` does (the seeds'
    ResNet18 without either). ``options`` are :class:`ExplainConfig`'s
    fields (``methods``, ``num_samples``, ``seed``...). The same weights give
    the same rows as a network object, through a function over it, or saved
    to a checkpoint file.
    """
    described = {"class_names": class_names, "preprocessing": preprocessing, "model_id": model_id}
    given = [name for name, value in described.items() if value is not None]
    if model is None and given:
        raise ConfigError(f"{given[0]} describes model=; a checkpoint file says it itself", given[0])
    if model is not None and options.get("checkpoint") is not None:
        raise ConfigError("give model= or checkpoint=, not both", "checkpoint")
    config = ExplainConfig(source=source, out=out, **options)
    if model is None:
        return run_explain(config, progress)
    inputs = Inputs(model_source(model, class_names, preprocessing, model_id),
                    discover_images(config.source, skip=config.out))
    return run_explain(config, progress, inputs)


def run_explain(config: ExplainConfig, progress: bool = True, inputs: Inputs | None = None) -> JobResult:
    """Explain every image under ``config.source`` into ``config.out``.

    The model and the output folder are checked before Ray starts, so a bad
    checkpoint or a clash with earlier results costs no cluster time; a
    second run into the same ``out`` while this one runs is refused
    (:mod:`xai_batch.manifest.lock`). Returns when every image has its rows; on ``KeyboardInterrupt`` the rows finished
    so far are kept and the run is recorded as interrupted. ``inputs`` are
    the model and paths when the caller has read them already.
    """
    started = time.time()
    check_join(config.address, config.insecure)  # a token that would cross the network in clear: before any work
    inputs = inputs or gather_inputs(config)
    model = inputs.model
    check_model_runs(model, config.engine, config.precision, config.methods, config.target_layer)
    if config.top_labels > model.num_classes:
        raise ConfigError(
            f"top_labels {config.top_labels} exceeds the model's {model.num_classes} classes", "top_labels"
        )
    hashes = {method: config_hash(config, model.model_id, method, model.preprocessing) for method in config.methods}
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
        preprocessing=model.preprocessing,
    )
    run_id = new_run_id()
    with OutputLock(config.out, run_id) as lease:  # no other run writes into ``out`` until this one ends
        return _explain_holding_out(config, inputs, context, hashes, lease, started, progress)


def _explain_holding_out(config: ExplainConfig, inputs: Inputs, context: RowContext, hashes: dict[str, str],
                         lease: OutputLock, started: float, progress: bool) -> JobResult:
    """The run itself, while it holds ``out``'s lease: resume, explain, record. A run that loses the lease
    (another took it over) stops at its next part and writes nothing more, ``job.json`` included."""
    run_id = lease.run_id
    model = inputs.model
    record = RunRecord(config.out)  # read first: a damaged record stops the run before anything is deleted
    done = resume_state(config.out, {config_hash(config, model.model_id, method, model.preprocessing)
                                     for method in METHODS},
                        config.overwrite)
    paths = inputs.paths
    if not paths:
        log.warning("no image files under %s", config.source)
    reused = reuse_rows(config.out, config.reuse, hashes, paths) if config.reuse else DoneIndex.of_rows([])
    done = done.merged(reused)  # a copy of a file that changed since is redone like any other
    record.start(run_id, started, config.to_dict(), model.model_id, model.preprocessing, hashes, config.overwrite)
    counts = RunCounts(images=len(paths))
    timings: dict[str, float] = {}
    state, error = "failed", None
    try:
        with connected(config.address, config.insecure):
            timings["ray_start_seconds"] = time.time() - started
            cuda = bool(ray.cluster_resources().get("GPU"))  # replicas have GPUs where the cluster has them
            gradients = any(isinstance(get_method(method), GradientMethod) for method in config.methods)
            shipped = replica_model(model, config.engine, cuda, config.precision, gradients)
            model_ref = ray.put(shipped)  # held until the end: replacements load from it
            try:
                replicas = Replicas(config.actors, model_ref, config.precision, config.batch_size,
                                    f"xai-batch-{run_id}", config.target_layer)
            except ray.exceptions.RayError as exc:
                raise XaiBatchError(f"the model replicas could not load the model: {load_failure(exc)}") from None
            context = dataclasses.replace(
                context, engine=", ".join(sorted({replica["engine"] for replica in replicas.placement})))
            record.document["engine"] = context.engine
            record.run["ray"] = {"replicas": replicas.placement, "cluster_resources": ray.cluster_resources()}
            models_ready = time.time()
            timings["model_load_seconds"] = models_ready - started - timings["ray_start_seconds"]
            bar = tqdm(total=len(paths), unit="img", desc="explain", disable=not progress, dynamic_ncols=True,
                       mininterval=0.1 if sys.stderr.isatty() else 15)  # a line per 15 s in job logs
            writer = ray.remote(num_cpus=0)(ManifestWriter).remote(
                config.out, run_id, seconds_per_part=config.flush_seconds, leased=True
            )
            pipeline = pipeline_for(config.stages, replicas.placement)(
                FlowInputs(config, paths, done, reused, replicas, context, writer, bar, counts))
            unwritten = None
            try:
                pipeline.run()
            finally:
                bar.close()
                try:
                    counts.rows = ray.get(writer.close.remote())
                except ray.exceptions.RayError as exc:  # the last rows could not be written
                    unwritten = lost_lease(exc) or XaiBatchError(
                        f"writing the manifest failed: {describe_failure(exc)}")
                record.run["ray"].update(replicas_replaced=replicas.replaced, **pipeline.by_node())
                try:
                    record.run["stages"] = _time_account(
                        pipeline.busy, replicas.busy(), ray.get(writer.writing.remote()), pipeline.ran_on,
                        pipeline.settled, pipeline.segmented_per_call())
                except ray.exceptions.RayError:  # a replica lost as the run was stopped: no account of it
                    log.warning("no account of the time: a replica or the writer is gone")
                replicas.shutdown()
            if unwritten is not None:
                raise unwritten
            timings["explain_seconds"] = time.time() - models_ready
            timings["images_per_second"] = (counts.ok + counts.error) / max(timings["explain_seconds"], 1e-9)
        state = "completed"
    except KeyboardInterrupt:
        state = "interrupted"
        raise
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        finished = time.time()
        timings["seconds"] = finished - started
        # the record is written only while the output is this run's: else it is another run's to write
        record.finish(state, finished, counts, timings, manifest_counts(config.out) if lease.holds() else None, error)
    lease.check()
    return JobResult(
        out=config.out,
        manifest=join(config.out, MANIFEST_DIR),
        run_id=run_id,
        images=len(paths),
        ok=counts.ok,
        errors=counts.error,
        skipped=counts.skipped,
        rows=counts.rows,
        seconds=timings["seconds"],
        reused=counts.reused,
        unread=counts.unread,
    )


def pipeline_for(stages: str, placement: list[dict]) -> type[Pipeline] | type[ReplicaPipeline]:
    """Where the work after decoding runs: as asked, or for ``auto`` in the replicas when they all run lime's
    maths on their device (CUDA: ``maths_on_device``), else in CPU tasks, which measured faster on CPUs
    (BENCHMARKS.md). On CUDA the choice rests on a projection: see the README's "Where the stages run"."""
    if stages == "auto":
        stages = "replica" if all(maths_on_device(replica["device"]) for replica in placement) else "workers"
    return ReplicaPipeline if stages == "replica" else Pipeline


def _time_account(busy: Mapping[str, float], replicas: list[tuple[dict[str, float], float, float]], writing: float,
                  ran_on: str, settled: int, segmented_per_call: float | None) -> dict:
    """job.json's account of where the time went: busy seconds by step, and each replica's share waiting.

    It is job.json's ``stages``, named for the option it reports on: which
    stage ran (``ran_on``) and how busy each step was. The steps' seconds are
    summed over images (on several workers at once
    they can exceed the run's wall time): the tasks' and the replicas' own.
    A replica that waits most of the time is held up by the work before it.
    ``ran_on`` says where the steps after decoding ran; ``settled`` counts
    the pixels whose quickshift parent the replicas settled on the CPU, and
    ``segmented_per_call`` how many images they segmented in one device call
    (None where lime's quickshift segmented them one by one).
    """
    total = Counter(busy)
    for steps, _, _ in replicas:
        total.update(steps)
    total["writing"] = writing
    waiting = [round(1 - working / alive, 4) if alive > 0 else 0.0 for _, working, alive in replicas]
    return {"busy_seconds": {step: round(total.get(step, 0.0), 4) for step in STEPS},
            "replica_waiting": waiting, "ran_on": ran_on, "settled_pixels": settled,
            "images_per_device_call": segmented_per_call}

