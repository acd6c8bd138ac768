"""``job.json``: what a run was asked to do, what it did, and with what software.

The record lists every run into an output: :class:`RunRecord` is how a run
keeps its own entry (written when it starts, so a crash leaves a "running"
entry, and again when it ends), and :class:`RunCounts` what it counts on the
way, image by image.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from dataclasses import dataclass
from importlib import metadata

from xai_batch.errors import ConfigError, XaiBatchError
from xai_batch.preprocessing import SEEDS, Preprocessing
from xai_batch.sources import image_root
from xai_batch.storage import join, locate, write_json

__all__ = ["JOB_FILE", "load_job_record", "write_job_record", "software_versions", "recorded_preprocessing", "job_source",
           "RunCounts", "RunRecord", "iso_time"]

JOB_FILE = "job.json"
_PACKAGES = ("xai-batch", "torch", "torchvision", "lime", "shap", "grad-cam", "ray", "numpy", "scikit-image", "pyarrow",
             "pillow", "onnxruntime")


def software_versions() -> dict[str, str]:
    """Versions of Python and of every package that can change a result."""
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def write_job_record(out: str, record: dict) -> str:
    """Write ``OUT/job.json`` (a path or URI) atomically: a reader never sees half of it."""
    return write_json(join(out, JOB_FILE), record)


def load_job_record(out: str) -> dict:
    """The record in ``OUT/job.json``, or an empty one where there is none.

    A record that is there but cannot be read (empty, cut short) is an error
    naming it, not an empty record: the next run would write over the
    history of every run before it.
    """
    where = locate(join(out, JOB_FILE))
    try:
        data = where.read_bytes()
    except FileNotFoundError:
        return {}
    try:
        record = json.loads(data)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        raise XaiBatchError(f"{where.target} is damaged ({len(data)} bytes, not a JSON record; cut short by a crash "
                            "or a full disk?): move it aside to go on, and its run history with it")
    return record


def recorded_preprocessing(record: dict) -> Preprocessing:
    """The model's preprocessing a run's record names: the frame its rows' masks are in and its
    pictures are redrawn in. A record from before models had their own is the seeds'."""
    values = record.get("preprocessing")
    if values is None:
        return SEEDS
    try:
        return Preprocessing.from_dict(values)
    except (TypeError, ValueError) as exc:
        raise XaiBatchError(f"{JOB_FILE} records a preprocessing that cannot be used: {exc}") from exc


def job_source(out: str, source: str | None) -> str:
    """The images' folder: ``source`` if given, else the SOURCE recorded in ``out``'s job.json (for a
    listing, the folder it is in)."""
    source = source or load_job_record(out).get("config", {}).get("source")
    if not source:
        raise ConfigError(f"{out!r} has no job.json naming its SOURCE: pass --source", "source")
    return image_root(source)


@dataclass
class RunCounts:
    """What a run has done so far, image by image: its entry's ``counts`` in job.json.

    ``skipped`` images were in the manifest already (``reused``: copied from
    another output; ``unread``: passed over on their size and modification
    time); ``ok`` and ``error`` were explained now; ``rows`` is what the
    writer wrote.
    """

    images: int = 0
    ok: int = 0
    error: int = 0
    skipped: int = 0
    reused: int = 0
    unread: int = 0
    rows: int = 0

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


class RunRecord:
    """One run's entry in ``OUT/job.json``, and the record's top level that describes the latest run.

    The record is read when the run is made, before anything in the output is
    deleted, so a damaged one stops the run at once (:func:`load_job_record`).
    :meth:`start` writes the run as "running"; :meth:`finish` writes how it
    ended. ``document`` is the whole record and ``run`` this run's entry in
    it, for the executors' accounts (replicas, where the time went).
    """

    def __init__(self, out: str) -> None:
        self.out = out
        self.document = load_job_record(out)
        self.run: dict = {}

    def start(self, run_id: str, started: float, config: dict, model_id: str, preprocessing: Preprocessing,
              hashes: dict[str, str], overwrite: bool) -> None:
        """Record the run as running, after the runs before it (which keep their entries, even with
        ``overwrite``)."""
        self.document.update(config=config, model_id=model_id, preprocessing=preprocessing.to_dict(),
                             config_hashes=hashes, versions=software_versions(), state="running")
        self.run = {"run_id": run_id, "config_hashes": hashes, "state": "running", "started": iso_time(started),
                    **({"overwrite": True} if overwrite else {})}
        self.document["runs"] = [*self.document.get("runs", []), self.run]
        write_job_record(self.out, self.document)

    def finish(self, state: str, finished: float, counts: RunCounts, timings: dict[str, float],
               manifest_counts: dict | None, error: str | None = None) -> None:
        """Record how the run ended: ``state`` ("completed", "interrupted", "failed", with ``error``), its
        counts and timings; the record is written with the manifest's ``manifest_counts``, or not at all
        when None (the output is another run's now, so its record is not this run's to write)."""
        self.run.update(state=state, finished=iso_time(finished), counts=counts.to_dict(),
                        timings={name: round(value, 4) for name, value in timings.items()},
                        **({"error": error} if error is not None else {}))
        self.document["state"] = state
        if manifest_counts is not None:
            self.document["counts"] = manifest_counts
            write_job_record(self.out, self.document)


def iso_time(timestamp: float) -> str:
    """A time as job.json writes it: local, to the second, with its offset."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(timestamp))
