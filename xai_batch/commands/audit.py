"""``xai-batch audit``: an incremental explain, then the findings a nightly run should flag.

The explain reuses the previous audit's rows for images whose file and
configuration are unchanged, so a night's model time goes to new and changed
images only; a new model changes the configuration, and everything is redone.
The findings (:mod:`xai_batch.analysis.findings`) are computed from the two manifests'
rows of the audited methods (per method where they differ: errors, moved
explanations, background, quality; the methods' agreement per pair) and
written to ``OUT/audit.json`` for schedulers, dashboards and ``xai-batch report``.
``audit.json`` counts every finding and lists the first of each kind by path;
``OUT/findings.parquet`` holds them all, a row each, written a group of images
at a time, so an audit of a million images neither holds nor prints them all.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from xai_batch.analysis.findings import AuditTally, FailCondition, Thresholds, failed_conditions
from xai_batch.config import ExplainConfig
from xai_batch.errors import ConfigError
from xai_batch.labels import check_truth_meets_predictions, prediction_labeller, truth_labeller
from xai_batch.manifest import SCHEMA, current_groups
from xai_batch.commands.explain import JobResult, gather_inputs, run_explain
from xai_batch.storage import join, locate, read_json, write_json

__all__ = ["AuditConfig", "AuditResult", "run_audit", "audit_findings", "load_audit", "AUDIT_FILE",
           "FINDINGS_FILE", "FINDINGS_SCHEMA"]

AUDIT_FILE = "audit.json"
FINDINGS_FILE = "findings.parquet"
FINDINGS_SCHEMA = pa.schema([  # a finding's kind, its image, and its kind's fields (null where another kind's)
    ("kind", pa.string()), ("path", pa.string()), ("method", pa.string()), ("label", pa.string()),
    ("error", pa.string()), ("true", pa.string()), ("predicted", pa.string()), ("prob", pa.float64()),
    ("before", pa.string()), ("after", pa.string()), ("prob_before", pa.float64()), ("prob_after", pa.float64()),
    ("file_changed", pa.bool_()), ("model_changed", pa.bool_()), ("iou", pa.float64()), ("on_object", pa.float64()),
])
AUDITED_COLUMNS = [name for name in SCHEMA.names if name not in ("segments", "heatmap")]  # what findings read


@dataclass(frozen=True)
class AuditConfig:
    """An audit: the explain it runs (its ``reuse`` is ``previous``), and what counts as a finding.

    ``labels`` (a CSV) or else the images' first folder gives the truth;
    ``label_map`` what a predicted class means. Ground-truth object masks
    (for the background finding) are the explain's ``masks``.
    """

    explain: ExplainConfig
    previous: str | None = None
    labels: str | None = None
    label_map: str | None = None
    thresholds: Thresholds = field(default_factory=Thresholds)
    fail_on: tuple[FailCondition, ...] = ()

    def __post_init__(self) -> None:
        if self.explain.reuse != self.previous:
            raise ConfigError("an audit reuses exactly its --previous output", "previous")
        if self.previous is not None and locate(self.previous).target == locate(self.explain.out).target:
            raise ConfigError("--previous must be another audit's output, not --out itself", "previous")


@dataclass(frozen=True)
class AuditResult:
    job: JobResult
    path: str  # audit.json
    report: dict
    failed: list[str]  # the --fail-on conditions met


def run_audit(config: AuditConfig, progress: bool = True) -> AuditResult:
    """Explain what is new or changed, then write ``OUT/audit.json``."""
    truth = truth_labeller(config.labels)
    predicted = prediction_labeller(config.label_map)
    inputs = gather_inputs(config.explain)  # read once: for the check here and for the explain
    truths = {truth(path) for path in inputs.paths} - {None}
    if truths:
        check_truth_meets_predictions(truths, config.label_map, () if config.label_map else inputs.model.class_names)
    job = run_explain(config.explain, progress=progress, inputs=inputs)
    findings_path = join(config.explain.out, FINDINGS_FILE)
    report = audit_findings(config.explain.out, config.previous, set(config.explain.methods), truth, predicted,
                            config.thresholds, config.explain.num_features, findings_to=findings_path)
    failed = failed_conditions(config.fail_on, report)
    document = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": config.explain.source,
        "out": config.explain.out,
        "previous": config.previous,
        "labels": config.labels,  # None: each path's first folder
        "label_map": config.label_map,
        "masks": config.explain.masks,
        "thresholds": dataclasses.asdict(config.thresholds),
        "findings_file": locate(findings_path).target,
        "run": {"run_id": job.run_id, "explained": job.ok + job.errors, "reused": job.reused, "unread": job.unread,
                "already_done": job.skipped - job.reused, "seconds": round(job.seconds, 2)},
        **report,
        "fail_on": [str(condition) for condition in config.fail_on],
        "failed": failed,
    }
    path = write_json(join(config.explain.out, AUDIT_FILE), document)
    return AuditResult(job=job, path=path, report=document, failed=failed)


def audit_findings(out: str, previous: str | None, methods: set[str], truth, predicted, thresholds: Thresholds,
                   num_features: int, findings_to: str | None = None) -> dict:
    """The findings of ``out``'s rows of ``methods`` (an output may hold other methods' rows from other runs),
    joined by path with ``previous``'s a group of images at a time, so neither manifest is held whole;
    with ``findings_to``, every finding is written there (Parquet, :data:`FINDINGS_SCHEMA`) as it is found."""
    outs = [out] if previous is None else [out, previous]
    with contextlib.ExitStack() as stack:
        found = None if findings_to is None else \
            stack.enter_context(_FindingsWriter(stack.enter_context(locate(findings_to).atomic_writer())))
        tally = AuditTally(truth, predicted, thresholds, num_features, compared=previous is not None, found=found)
        for tables in current_groups(outs, AUDITED_COLUMNS):
            current, *before = ([row for row in table.to_pylist() if row["method"] in methods] for table in tables)
            tally.add(current, before[0] if before else None)
    return tally.report()


class _FindingsWriter(contextlib.AbstractContextManager):
    """Each group's findings appended to a Parquet stream as rows of :data:`FINDINGS_SCHEMA`."""

    def __init__(self, stream) -> None:
        self.writer = pq.ParquetWriter(stream, FINDINGS_SCHEMA)

    def __call__(self, findings: dict[str, list[dict]]) -> None:
        rows = [{**finding, "kind": kind} for kind, found in findings.items() for finding in found]
        if rows:
            self.writer.write_table(pa.Table.from_pylist(rows, schema=FINDINGS_SCHEMA))

    def __exit__(self, *exc) -> None:
        self.writer.close()


def load_audit(out: str) -> dict | None:
    """``OUT/audit.json``, if ``OUT`` was audited."""
    return read_json(join(out, AUDIT_FILE))
