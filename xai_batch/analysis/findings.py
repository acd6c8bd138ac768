"""Audit findings: what a nightly run over a dataset should flag.

Pure functions from manifest rows to a JSON-ready report: accuracy and the
confusion matrix against ground-truth labels, and the findings a person
should look at — error rows, misclassified images, low-confidence
predictions, predictions that changed since the previous audit,
explanations that moved (their top-k masks overlap less than a threshold),
and explanations that rest on the background (little of their positive
top-k area on the object: the ``on_object`` column, where the explain had a
ground-truth object mask). Reading the manifests is the caller's business;
so is exiting 3. A summary of the explanations' measured quality (the
manifest's faithfulness, stability and localisation columns) goes with them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from xai_batch.analysis.agreement import agreement, methods_in
from xai_batch.errors import ConfigError
from xai_batch.manifest import QUALITY_COLUMNS, decode_mask, image_rows, method_rows

__all__ = [
    "FINDINGS", "Thresholds", "FailCondition", "parse_fail_on", "failed_conditions",
    "confusion",
    "mask_iou", "audit_report", "quality_summary",
]

FINDINGS = ("errors", "misclassified", "low-confidence", "changed", "moved", "background")
METRICS = (*FINDINGS, "accuracy")


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


def confusion(pairs: Sequence[tuple[str, str]]) -> dict:
    """Accuracy, per-class accuracy and the confusion matrix of (true, predicted) label pairs.

    Rows of the matrix are true labels, columns predicted ones; the labels are
    the true ones, sorted, then any predicted label no image truly has.
    """
    truths = sorted({truth for truth, _ in pairs})
    labels = truths + sorted({predicted for _, predicted in pairs} - set(truths))
    position = {label: i for i, label in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), dtype=int)
    for truth, predicted in pairs:
        matrix[position[truth], position[predicted]] += 1
    per_class = {}
    for label in truths:
        images = int(matrix[position[label]].sum())
        correct = int(matrix[position[label], position[label]])
        per_class[label] = {"images": images, "correct": correct, "accuracy": correct / images}
    correct = sum(truth == predicted for truth, predicted in pairs)
    return {
        "accuracy": correct / len(pairs) if pairs else None,
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
    ``previous`` holds the previous audit's rows, for what changed.
    """
    images = image_rows(current)
    ok = {path: row for path, row in images.items() if row["status"] == "ok"}
    findings: dict[str, list[dict]] = {kind: [] for kind in FINDINGS}
    findings["errors"] = [{"path": r["path"], "method": r["method"], "error": r["error"]}
                          for r in current if r["status"] != "ok"]
    pairs = []
    for path, row in ok.items():
        label, probability = predicted(row), round(float(row["pred_prob"]), 4)
        true_label = truth(path)
        if true_label is not None:
            pairs.append((true_label, label))
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
    since = _since_previous(current, previous, ok, predicted, thresholds, findings) if previous is not None else None
    counts = {"images": len(images), "explained": len(ok), "labelled": len(pairs),
              **{kind: len(found) for kind, found in findings.items()}}
    methods = methods_in(current)
    by_method = {method: quality_summary(list(method_rows(current, method).values())) for method in methods}
    return {"counts": counts, **confusion(pairs), "findings": findings, "since_previous": since,
            "methods": methods, "quality": by_method[methods[0]] if methods else quality_summary([]),
            "quality_by_method": by_method, "agreement": agreement(current, num_features)}


def quality_summary(rows: Sequence[dict]) -> dict:
    """Means of the quality columns over the rows that have them, and how often they beat chance.

    ``deletion_beats_random``: the share of images whose deletion AUC is
    below the random order's (lower is better); ``insertion_beats_random``
    the same for insertion (higher is better); likewise for localisation.
    """
    def values(column):
        return np.array([row[column] for row in rows if row.get(column) is not None], np.float64)

    def mean(column):
        found = values(column)
        return round(float(found.mean()), 4) if len(found) else None

    def share(better):
        verdicts = [verdict for verdict in map(better, rows) if verdict is not None]
        return round(sum(verdicts) / len(verdicts), 4) if verdicts else None

    summary = {column: mean(column) for column in QUALITY_COLUMNS}
    summary["deletion_beats_random"] = share(
        lambda r: None if r.get("deletion_auc") is None else r["deletion_auc"] < r["deletion_auc_random"])
    summary["insertion_beats_random"] = share(
        lambda r: None if r.get("insertion_auc") is None else r["insertion_auc"] > r["insertion_auc_random"])
    summary["on_object_beats_random"] = share(
        lambda r: None if r.get("on_object") is None else r["on_object"] > r["on_object_random"])
    summary["images"] = {column: int(len(values(column))) for column in ("deletion_auc", "stability", "on_object")}
    return summary


def _since_previous(current, previous, ok, predicted, thresholds, findings) -> dict:
    """Fill the 'changed' and 'moved' findings; return what else changed (new, removed, models)."""
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
        if iou < thresholds.min_iou:
            findings["moved"].append({"path": row["path"], "method": row["method"],
                                      "label": row["explained_name"], "iou": round(iou, 4),
                                      "file_changed": old["sha256"] != row["sha256"]})
    return {
        "new": sorted(set(ok) - set(before)),
        "removed": sorted(set(before) - {row["path"] for row in current}),
        "models_before": _models(previous),
        "models_now": _models(current),
    }


def _models(rows: Iterable[dict]) -> list[str]:
    return sorted({row["model_id"] for row in rows if row["status"] == "ok"})
