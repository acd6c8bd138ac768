"""The audit's findings on hand-made manifest rows, each checked against a hand-computed answer."""

from collections import Counter

import numpy as np
import pytest

from xai_batch.analysis.findings import (
    FailCondition, Thresholds, audit_report, confusion, failed_conditions, image_rows, mask_iou, parse_fail_on,
)
from xai_batch.errors import ConfigError
from xai_batch.manifest import encode_mask, encode_segments

# Four 2x4 superpixels side by side on an 8x8 image: segment s covers columns 2s, 2s+1 of rows 0..3,
# and the bottom half (rows 4..7) is segment 4.
SEGMENTS = np.zeros((8, 8), np.int64)
for s in range(4):
    SEGMENTS[:4, 2 * s: 2 * s + 2] = s
SEGMENTS[4:] = 4


def _row(path, pred, prob, weights, sha="a", model="m1", explained=None, top=2, **quality):
    weights = np.asarray(weights, float)
    order = np.argsort(-np.abs(weights), kind="stable")[:top]
    mask = np.zeros((8, 8), np.uint8)
    for s in order:
        mask[SEGMENTS == s] = 1 if weights[s] >= 0 else 2
    index = {"cat": 0, "dog": 1}[pred]
    explained = index if explained is None else explained
    return {"path": path, "method": "lime", "status": "ok", "error": None, "sha256": sha, "model_id": model, "pred_index": index,
            "pred_name": pred, "pred_prob": prob, "explained_index": explained,
            "explained_name": ["cat", "dog"][explained], "segments": encode_segments(SEGMENTS),
            "weights": list(weights), "mask": encode_mask(mask), **quality}


def _error(path):
    return {"path": path, "method": "lime", "status": "error", "error": "not an image", "sha256": "x", "model_id": "m1",
            "pred_index": None, "pred_name": None, "pred_prob": None, "explained_index": None}


def _report(current, previous=None, **thresholds):
    return audit_report(current, previous, truth=lambda p: p.split("/")[0] if "/" in p else None,
                        predicted=lambda row: row["pred_name"], thresholds=Thresholds(**thresholds))


def test_parse_fail_on():
    assert parse_fail_on(["misclassified", "moved>10,accuracy<0.9"]) == (
        FailCondition("misclassified", ">", 0), FailCondition("moved", ">", 10), FailCondition("accuracy", "<", 0.9))
    for bad in ["sometimes", "accuracy>0.5", "accuracy", "accuracy<2", "moved<3", "moved>>3"]:
        with pytest.raises(ConfigError):
            parse_fail_on([bad])
    report = {"counts": {"moved": 10, "misclassified": 1}, "accuracy": 0.85}
    conditions = parse_fail_on(["moved>10", "misclassified", "accuracy<0.9"])
    assert failed_conditions(conditions, report) == ["misclassified>0", "accuracy<0.9"]
    assert failed_conditions(parse_fail_on(["accuracy<0.9"]), {"counts": {}, "accuracy": None}) == []


def test_confusion_by_hand():
    pairs = [("cat", "cat"), ("cat", "dog"), ("dog", "dog"), ("dog", "other"), ("dog", "dog")]
    result = confusion(Counter(pairs))
    assert result["confusion"] == {"labels": ["cat", "dog", "other"], "matrix": [[1, 1, 0], [0, 2, 1], [0, 0, 0]]}
    assert result["accuracy"] == pytest.approx(3 / 5)
    assert result["per_class"] == {"cat": {"images": 2, "correct": 1, "accuracy": 0.5},
                                   "dog": {"images": 3, "correct": 2, "accuracy": pytest.approx(2 / 3)}}
    assert confusion({})["accuracy"] is None


def test_mask_iou():
    a, b = np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8)
    assert mask_iou(a, b) == 1.0
    a[0, :2], b[0, 1:4] = 1, 2  # "for" and "against" both count as marked
    assert mask_iou(a, b) == pytest.approx(1 / 4)


def test_image_rows_keep_the_predicted_labels_explanation():
    lower = _row("cat/a.png", "cat", 0.6, [1, 0, 0, 0, 0], explained=1)
    top = _row("cat/a.png", "cat", 0.6, [1, 0, 0, 0, 0])
    assert image_rows([lower, top])["cat/a.png"] is top
    assert image_rows([top, lower])["cat/a.png"] is top


def test_findings_by_hand():
    current = [
        _row("cat/right.png", "cat", 0.9, [3, 2, 0, 0, 0], on_object=0.75, on_object_random=0.8, deletion_auc=0.2, deletion_auc_random=0.5,
             insertion_auc=0.8, insertion_auc_random=0.5, stability=1.0),
        _row("cat/wrong.png", "dog", 0.45, [0, 0, 3, 2, 0], deletion_auc=0.6, deletion_auc_random=0.5,
             insertion_auc=0.7, insertion_auc_random=0.5, stability=0.5),
        _row("dog/moved.png", "dog", 0.8, [3, 2, 0, 0, 0], sha="b"),
        _row("flat.png", "dog", 0.99, [0, 0, 0, 2, 3], on_object=0.0, on_object_random=0.2, pointing_hit=False),
        _error("dog/broken.png"),
    ]
    previous = [
        _row("cat/right.png", "cat", 0.9, [3, 2, 0, 0, 0]),
        _row("cat/wrong.png", "cat", 0.7, [0, 0, 3, 2, 0]),
        _row("dog/moved.png", "dog", 0.8, [0, 2, 3, 0, 0]),  # segments 1,2 then; 0,1 now: IoU 1/3
        _row("dog/gone.png", "dog", 0.8, [0, 2, 3, 0, 0]),
    ]
    report = _report(current, previous, min_on_object=0.8)
    findings = report["findings"]
    assert findings["errors"] == [{"path": "dog/broken.png", "method": "lime", "error": "not an image"}]
    assert findings["misclassified"] == [{"path": "cat/wrong.png", "true": "cat", "predicted": "dog", "prob": 0.45}]
    assert findings["low-confidence"] == [{"path": "cat/wrong.png", "predicted": "dog", "prob": 0.45}]
    assert findings["changed"] == [{"path": "cat/wrong.png", "before": "cat", "after": "dog", "prob_before": 0.7,
                                    "prob_after": 0.45, "file_changed": False, "model_changed": False}]
    assert findings["moved"] == [{"path": "dog/moved.png", "method": "lime", "label": "dog", "iou": pytest.approx(1 / 3, abs=1e-4),
                                  "file_changed": True}]
    # Rows without on_object (no mask, or no object in it) are no finding; 0.75 < 0.8 is one.
    assert findings["background"] == [{"path": "cat/right.png", "method": "lime", "label": "cat", "on_object": 0.75},
                                      {"path": "flat.png", "method": "lime", "label": "dog", "on_object": 0.0}]
    assert report["counts"] == {"images": 5, "explained": 4, "labelled": 3, "errors": 1, "misclassified": 1,
                                "low-confidence": 1, "changed": 1, "moved": 1, "background": 2}
    assert report["accuracy"] == pytest.approx(2 / 3)
    assert report["since_previous"] == {"new": ["flat.png"], "removed": ["dog/gone.png"], "new_images": 1,
                                        "removed_images": 1, "models_before": ["m1"], "models_now": ["m1"]}
    assert _report(current, previous)["findings"]["background"] == [
        {"path": "flat.png", "method": "lime", "label": "dog", "on_object": 0.0}]
    quality = report["quality"]
    assert quality["deletion_auc"] == pytest.approx(0.4) and quality["insertion_auc"] == pytest.approx(0.75)
    assert quality["deletion_beats_random"] == 0.5 and quality["insertion_beats_random"] == 1.0
    assert quality["stability"] == pytest.approx(0.75) and quality["pointing_hit"] == 0.0
    assert quality["on_object_beats_random"] == 0.0 and quality["on_object"] == pytest.approx(0.375)
    assert quality["images"] == {"deletion_auc": 2, "stability": 2, "on_object": 2}


def test_thresholds_are_checked():
    with pytest.raises(ConfigError) as caught:
        Thresholds(min_iou=1.5)
    assert caught.value.param == "min_iou"


def _two_audits() -> tuple[list[dict], list[dict]]:
    """Current and previous rows of 40 images with every kind of finding: errors, misclassified, low
    confidence, changed, moved, background, a removed image, two methods."""
    rng = np.random.default_rng(3)
    current, previous = [], []
    for n in range(40):
        path = f"{['cat', 'dog'][n % 2]}/{n:02d}.png"
        if n % 9 == 4:
            current.append(_error(path))
            continue
        pred = ["cat", "dog"][(n // 3) % 2]
        weights = rng.normal(size=5)
        quality = {"deletion_auc": float(rng.uniform()), "deletion_auc_random": 0.5, "on_object": float(rng.uniform()),
                   "on_object_random": 0.5}
        current.append(_row(path, pred, float(rng.uniform(0.3, 1)), weights, **quality))
        current.append({**_row(path, pred, 0.9, rng.normal(size=5), **quality), "method": "kernelshap"})
        if n % 7:
            before = pred if n % 4 else {"cat": "dog", "dog": "cat"}[pred]  # changed
            previous.append(_row(path, before, 0.8, weights if n % 3 else np.roll(weights, 2)))  # moved
    previous.append(_row("gone.png", "cat", 0.9, [1, 0, 0, 0, 0]))
    return current, previous


def _grouped(current, previous, groups=3, **options) -> dict:
    from xai_batch.analysis.findings import AuditTally

    tally = AuditTally(truth=lambda p: p.split("/")[0] if "/" in p else None, predicted=lambda row: row["pred_name"],
                       compared=True, **options)
    for group in range(groups):
        def mine(rows):
            return [row for row in rows if hash(row["path"]) % groups == group]
        tally.add(mine(current), mine(previous))
    return tally.report()


def test_a_manifest_taken_a_group_of_images_at_a_time_gives_the_same_report():
    """What the audit of a million images does (AuditTally over groups of paths, both manifests split the
    same way) is what one call over every row gives: counts, confusion, findings in path order, quality,
    agreement, what changed."""
    current, previous = _two_audits()
    whole = _report(current, previous)
    assert _grouped(current, previous) == whole
    assert whole["counts"]["moved"] > 0 and whole["counts"]["changed"] > 0 and whole["counts"]["errors"] == 4
    assert whole["since_previous"]["removed"] == ["gone.png"] and whole["agreement"][0]["explanations"] == 36


def test_a_big_audit_lists_the_first_findings_counts_them_all_and_hands_every_one_on():
    """The findings of a million images are not held: the report lists the first of each kind by path,
    counts every one, and each group's findings go to the caller (the audit writes them to a file)."""
    current, previous = _two_audits()
    whole = _report(current, previous)
    handed: dict[str, list[dict]] = {}
    grouped = _grouped(current, previous, groups=7, listed=2,
                       found=lambda found: [handed.setdefault(kind, []).extend(items) for kind, items in found.items()])
    assert grouped["counts"] == whole["counts"]
    for kind, found in whole["findings"].items():
        assert grouped["findings"][kind] == found[:2], kind
        order = lambda f: (f["path"], f.get("method", ""), str(f.get("label", "")))  # noqa: E731
        assert sorted(handed[kind], key=order) == found, kind
    assert sum(len(found) > 2 for found in whole["findings"].values()) >= 4  # the bound was met, and cut
    since = grouped["since_previous"]
    assert since["removed"] == ["gone.png"] and since["removed_images"] == 1
    assert since["new"] == whole["since_previous"]["new"][:2] and since["new_images"] == len(whole["since_previous"]["new"])
