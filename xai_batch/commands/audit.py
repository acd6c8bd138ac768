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

import dataclasses
import datetime
from dataclasses import dataclass, field

from xai_batch.analysis.findings import (
    AUDIT_FILE, FINDINGS_FILE, FailCondition, Thresholds, audit_findings, failed_conditions,
)
from xai_batch.config import ExplainConfig
from xai_batch.errors import ConfigError
from xai_batch.labels import check_truth_meets_predictions, prediction_labeller, truth_labeller
from xai_batch.distributed.run import JobResult, gather_inputs, run_explain
from xai_batch.storage import join, locate, write_json

__all__ = ["AuditConfig", "AuditResult", "run_audit"]


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
