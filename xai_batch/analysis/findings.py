"""Audit findings: what a nightly run over a dataset should flag.

Pure functions from manifest rows to a JSON-ready report: accuracy and the
confusion matrix against ground-truth labels, and the findings a person
should look at — error rows, misclassified images, low-confidence
predictions, predictions that changed since the previous audit,
explanations that moved (their top-k masks overlap less than a threshold),
and explanations that rest on the background (little of their positive
top-k area on the object: the ``on_object`` column, where the explain had a
ground-truth object mask). :func:`audit_findings` reads them from the
manifests a group of images at a time and writes every finding to
``findings.parquet`` as it is found; exiting 3 is the caller's business. A summary of the explanations' measured quality (the
manifest's faithfulness, stability and localisation columns) goes with them.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xai_batch.analysis.agreement import AgreementTally, methods_in
from xai_batch.errors import ConfigError
from xai_batch.manifest import QUALITY_COLUMNS, SCHEMA, current_groups, decode_mask, image_rows, method_rows
from xai_batch.methods import METHODS
from xai_batch.storage import join, locate, read_json

__all__ = [
    "FINDINGS", "Thresholds", "FailCondition", "parse_fail_on", "failed_conditions",
    "confusion",
    "mask_iou", "audit_report", "AuditTally", "quality_summary", "FINDINGS_LISTED",
    "audit_findings", "load_audit", "AUDIT_FILE", "FINDINGS_FILE", "FINDINGS_SCHEMA",
]

FINDINGS = ("errors", "misclassified", "low-confidence", "changed", "moved", "background")
METRICS = (*FINDINGS, "accuracy")
FINDINGS_LISTED = 1000  # the findings of each kind a report lists (the first by path); every one is counted
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
class Thresholds:
    """When a prediction is uncertain, an explanation has moved, or rests on the background.

    ``low_confidence``: the predicted class's probability is below it.
    ``min_iou``: the top-k masks of this and the previous audit overlap less.
    ``min_on_object``: less of the positive top-k superpixels' area is on the object.
    """

    low_confidence: float = 0.5
    min_iou: float = 0.5
    min_on_object: float = 0.5

    def __post_init__(self) -> None:
        for name in ("low_confidence", "min_iou", "min_on_object"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ConfigError(f"{name} must be between 0 and 1, got {value}", name)


@dataclass(frozen=True)
class FailCondition:
    """``metric op value``: a finding's count above a number, or accuracy below one."""

    metric: str
    op: str
    value: float

    def met(self, counts: dict, accuracy: float | None) -> bool:
        if self.metric == "accuracy":
            return accuracy is not None and accuracy < self.value
        return counts[self.metric] > self.value

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"


_CONDITION = re.compile(r"^\s*([a-z-]+)\s*(?:([<>])\s*([0-9.]+))?\s*$")


def parse_fail_on(specs: Iterable[str]) -> tuple[FailCondition, ...]:
    """``misclassified`` (any at all), ``moved>10``, ``accuracy<0.9``; comma lists allowed."""
    conditions = []
    for spec in (part for text in specs for part in text.split(",") if part.strip()):
        match = _CONDITION.match(spec)
        metric, op, value = match.groups() if match else (None, None, None)
        if metric not in METRICS:
            raise ConfigError(f"{spec!r} is not a condition: give one of {', '.join(METRICS)}, optionally with "
                              "'>N' for a count or '<P' for accuracy, e.g. misclassified>5 or accuracy<0.9", "fail_on")
        if metric == "accuracy":
            if op != "<" or value is None or not 0 <= float(value) <= 1:
                raise ConfigError(f"{spec!r}: accuracy takes '<P' with P between 0 and 1", "fail_on")
        elif op == "<":
            raise ConfigError(f"{spec!r}: a finding fails the audit above a count, e.g. {metric}>0", "fail_on")
        conditions.append(FailCondition(metric, op or ">", float(value) if value is not None else 0.0))
    return tuple(conditions)


def failed_conditions(conditions: Sequence[FailCondition], report: dict) -> list[str]:
    """The conditions the report meets, as the user wrote them."""
    return [str(c) for c in conditions if c.met(report["counts"], report["accuracy"])]


def confusion(counts: Mapping[tuple[str, str], int]) -> dict:
    """Accuracy, per-class accuracy and the confusion matrix of images counted by (true, predicted) label.

    Counts, not one pair per image, so a million images cost what their labels do.
    Rows of the matrix are true labels, columns predicted ones; the labels are
    the true ones, sorted, then any predicted label no image truly has.
    """
    truths = sorted({truth for truth, _ in counts})
    labels = truths + sorted({predicted for _, predicted in counts} - set(truths))
    position = {label: i for i, label in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), dtype=int)
    for (truth, predicted), count in counts.items():
        matrix[position[truth], position[predicted]] += count
    per_class = {}
    for label in truths:
        images = int(matrix[position[label]].sum())
        correct = int(matrix[position[label], position[label]])
        per_class[label] = {"images": images, "correct": correct, "accuracy": correct / images}
    total = int(matrix.sum())
    return {
        "accuracy": int(np.trace(matrix)) / total if total else None,
        "per_class": per_class,
        "confusion": {"labels": labels, "matrix": matrix.tolist()},
    }


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two explanation masks' marked pixels (1.0 when both are empty)."""
    a, b = a > 0, b > 0
    union = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b) / union) if union else 1.0


def audit_report(
    current: Sequence[dict],
    previous: Sequence[dict] | None,
    truth: Callable[[str], str | None],
    predicted: Callable[[dict], str],
    thresholds: Thresholds = Thresholds(),
    num_features: int = 5,
) -> dict:
    """Counts, accuracy, confusion matrix, findings and quality for the current manifest rows.

    With several methods, the quality is summarised per method and their
    agreement (top-``num_features`` Jaccard, rank correlation) per pair.

    ``truth`` gives an image's true label (None: unknown), ``predicted`` the
    label a row's prediction means (a label map's, or the class name).
    ``previous`` holds the previous audit's rows, for what changed. The
    rows at once: :class:`AuditTally` takes them a group of images at a time.
    """
    tally = AuditTally(truth, predicted, thresholds, num_features, compared=previous is not None)
    tally.add(current, previous)
    return tally.report()


class AuditTally:
    """:func:`audit_report` over a manifest read a group of images at a time.

    Each :meth:`add` takes every current row of some images (and, when
    ``compared``, the previous audit's rows of the same images); what is kept
    between groups is running sums and the first ``listed`` findings of each
    kind (and new and removed images) by path, so the memory does not grow
    with the manifest and the report does not depend on how the images were
    grouped. Every finding is counted, and each group's findings go to
    ``found`` (a callable taking ``{kind: [finding, ...]}``) where the caller
    keeps them all.
    """

    def __init__(self, truth: Callable[[str], str | None], predicted: Callable[[dict], str],
                 thresholds: Thresholds = Thresholds(), num_features: int = 5, compared: bool = False,
                 listed: int = FINDINGS_LISTED, found: Callable[[dict[str, list[dict]]], None] | None = None) -> None:
        self.truth, self.predicted, self.thresholds = truth, predicted, thresholds
        self.compared, self.found = compared, found
        self.findings = {kind: _FirstOf(listed, _finding_order) for kind in FINDINGS}
        self.pairs: Counter = Counter()
        self.images = self.explained = 0
        self.quality: dict[str, _QualityTally] = {}
        self.agreement = AgreementTally(num_features)
        self.new, self.removed = _FirstOf(listed), _FirstOf(listed)
        self.models_before: set[str] = set()
        self.models_now: set[str] = set()

    def add(self, current: Sequence[dict], previous: Sequence[dict] | None = None) -> None:
        """One group's rows: every current row of its images, and the previous audit's of the same."""
        images = image_rows(current)
        ok = {path: row for path, row in images.items() if row["status"] == "ok"}
        self.images += len(images)
        self.explained += len(ok)
        findings: dict[str, list[dict]] = {kind: [] for kind in FINDINGS}
        thresholds = self.thresholds
        findings["errors"] += [{"path": r["path"], "method": r["method"], "error": r["error"]}
                               for r in current if r["status"] != "ok"]
        for path, row in ok.items():
            label, probability = self.predicted(row), round(float(row["pred_prob"]), 4)
            true_label = self.truth(path)
            if true_label is not None:
                self.pairs[true_label, label] += 1
                if true_label != label:
                    findings["misclassified"].append(
                        {"path": path, "true": true_label, "predicted": label, "prob": probability})
            if row["pred_prob"] < thresholds.low_confidence:
                findings["low-confidence"].append({"path": path, "predicted": label, "prob": probability})
        for row in current:
            share = row.get("on_object")
            if row["status"] == "ok" and row["explained_index"] == row["pred_index"] and share is not None \
                    and share < thresholds.min_on_object:
                findings["background"].append({"path": row["path"], "method": row["method"],
                                               "label": row["explained_name"], "on_object": round(share, 4)})
        for method in methods_in(current):
            self.quality.setdefault(method, _QualityTally()).add(method_rows(current, method).values())
        self.agreement.add(current)
        self.models_now |= set(_models(current))
        if self.compared:
            self._since_previous(current, previous or [], images, ok, findings)
        for kind, found in findings.items():
            self.findings[kind].add(found)
        if self.found is not None:
            self.found(findings)

    def _since_previous(self, current, previous, images, ok, findings) -> None:
        """The 'changed' and 'moved' findings of one group; what else changed (new, removed, models)."""
        predicted = self.predicted
        before = image_rows(previous)
        before_ok = {path: row for path, row in before.items() if row["status"] == "ok"}
        previous_rows = {(r["path"], r["method"], r["explained_index"]): r
                         for r in previous if r["status"] == "ok"}
        for path, row in ok.items():
            old = before_ok.get(path)
            if old is None:
                continue
            if predicted(old) != predicted(row):
                findings["changed"].append({
                    "path": path, "before": predicted(old), "after": predicted(row),
                    "prob_before": round(float(old["pred_prob"]), 4), "prob_after": round(float(row["pred_prob"]), 4),
                    "file_changed": old["sha256"] != row["sha256"], "model_changed": old["model_id"] != row["model_id"],
                })
        for row in current:
            old = previous_rows.get((row["path"], row["method"], row["explained_index"]))
            if row["status"] != "ok" or old is None:
                continue
            now, then = decode_mask(row["mask"]), decode_mask(old["mask"])
            iou = mask_iou(now, then) if now.shape == then.shape else 0.0
            if iou < self.thresholds.min_iou:
                findings["moved"].append({"path": row["path"], "method": row["method"],
                                          "label": row["explained_name"], "iou": round(iou, 4),
                                          "file_changed": old["sha256"] != row["sha256"]})
        self.new.add(list(set(ok) - set(before)))
        self.removed.add(list(set(before) - set(images)))
        self.models_before |= set(_models(previous))

    def report(self) -> dict:
        """The report of every group added: ``counts`` has every finding, ``findings`` the first listed."""
        findings = {kind: found.first() for kind, found in self.findings.items()}
        counts = {"images": self.images, "explained": self.explained, "labelled": sum(self.pairs.values()),
                  **{kind: found.count for kind, found in self.findings.items()}}
        methods = [method for method in METHODS if method in self.quality]
        by_method = {method: self.quality[method].summary() for method in methods}
        since = {"new": self.new.first(), "removed": self.removed.first(),
                 "new_images": self.new.count, "removed_images": self.removed.count,
                 "models_before": sorted(self.models_before), "models_now": sorted(self.models_now)} \
            if self.compared else None
        return {"counts": counts, **confusion(self.pairs), "findings": findings, "since_previous": since,
                "methods": methods, "quality": by_method[methods[0]] if methods else quality_summary([]),
                "quality_by_method": by_method, "agreement": self.agreement.report(methods)}


def _finding_order(finding: dict) -> tuple:
    return finding["path"], finding.get("method", ""), str(finding.get("label", ""))


class _FirstOf:
    """The first ``limit`` of the items added, in ``key`` order, and how many were added.

    Holds at most twice ``limit`` between trims, whatever is added.
    """

    def __init__(self, limit: int, key: Callable | None = None) -> None:
        self.limit, self.key, self.items, self.count = limit, key, [], 0

    def add(self, items: list) -> None:
        self.count += len(items)
        self.items += items
        if len(self.items) > 2 * self.limit:
            self._trim()

    def _trim(self) -> None:
        self.items = sorted(self.items, key=self.key)[:self.limit]

    def first(self) -> list:
        self._trim()
        return list(self.items)


def quality_summary(rows: Sequence[dict]) -> dict:
    """Means of the quality columns over the rows that have them, and how often they beat chance.

    ``deletion_beats_random``: the share of images whose deletion AUC is
    below the random order's (lower is better); ``insertion_beats_random``
    the same for insertion (higher is better); likewise for localisation.
    """
    tally = _QualityTally()
    tally.add(rows)
    return tally.summary()


_BEATS = {
    "deletion_beats_random": lambda r: None if r.get("deletion_auc") is None else r["deletion_auc"] < r["deletion_auc_random"],
    "insertion_beats_random":
        lambda r: None if r.get("insertion_auc") is None else r["insertion_auc"] > r["insertion_auc_random"],
    "on_object_beats_random": lambda r: None if r.get("on_object") is None else r["on_object"] > r["on_object_random"],
}


class _QualityTally:
    """Running sums behind :func:`quality_summary`."""

    def __init__(self) -> None:
        self.sums = {column: [] for column in QUALITY_COLUMNS}  # per group: (sum, count)
        self.beats = {name: [0, 0] for name in _BEATS}

    def add(self, rows: Iterable[dict]) -> None:
        rows = list(rows)
        for column in QUALITY_COLUMNS:
            found = np.array([row[column] for row in rows if row.get(column) is not None], np.float64)
            self.sums[column].append((float(found.sum()), len(found)))
        for name, better in _BEATS.items():
            verdicts = [verdict for verdict in map(better, rows) if verdict is not None]
            self.beats[name][0] += sum(verdicts)
            self.beats[name][1] += len(verdicts)

    def summary(self) -> dict:
        counts = {column: sum(count for _, count in self.sums[column]) for column in QUALITY_COLUMNS}
        summary = {column: round(math.fsum(total for total, _ in self.sums[column]) / counts[column], 4)
                   if counts[column] else None for column in QUALITY_COLUMNS}
        summary.update({name: round(wins / seen, 4) if seen else None for name, (wins, seen) in self.beats.items()})
        summary["images"] = {column: counts[column] for column in ("deletion_auc", "stability", "on_object")}
        return summary


def _models(rows: Iterable[dict]) -> list[str]:
    return sorted({row["model_id"] for row in rows if row["status"] == "ok"})


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
