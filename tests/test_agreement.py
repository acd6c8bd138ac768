"""How far methods agree, and the audit's per-method summary, by hand."""

import pytest

from xai_batch.analysis.agreement import agreement, methods_in, rank_correlation
from xai_batch.analysis.findings import audit_report


def _row(path, method, weights, deletion=None):
    return {"path": path, "method": method, "status": "ok", "explained_index": 1, "pred_index": 1, "pred_name": "a",
            "pred_prob": 0.9, "explained_name": "a", "weights": weights, "sha256": "s", "model_id": "m",
            "deletion_auc": deletion, "deletion_auc_random": None if deletion is None else 0.5}


def test_rank_correlation_by_hand():
    assert rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks (1, 2, 3) and (2, 1, 3): rho = 1 - 6 * (1 + 1 + 0) / (3 * 8) = 0.5
    assert rank_correlation([0.1, 0.2, 0.3], [0.5, 0.4, 0.9]) == pytest.approx(0.5)
    assert rank_correlation([0, 0, 0], [1, 2, 3]) is None  # nothing to rank


def test_agreement_per_pair_by_hand():
    rows = [
        _row("a.png", "lime", [0.9, -0.5, 0.1, 0.0]), _row("a.png", "gradcam", [0.8, 0.1, 0.2, 0.0]),
        _row("b.png", "lime", [0.1, 0.2, 0.3, 0.4]), _row("b.png", "gradcam", [0.4, 0.3, 0.2, 0.1]),
        _row("c.png", "lime", [1.0, 0.0, 0.0, 0.0]),  # Grad-CAM has no row for c.png: not compared
    ]
    assert methods_in(rows) == ["lime", "gradcam"]
    [pair] = agreement(rows, k=2)
    # a.png: top 2 {0, 1} vs {0, 2} -> 1/3; b.png: {3, 2} vs {0, 1} -> 0.
    # rho: a.png ranks (4, 1, 3, 2) vs (4, 2, 3, 1), 1 - 6 * 2 / (4 * 15) = 0.8; b.png reversed, -1.
    assert pair["methods"] == ["lime", "gradcam"] and pair["explanations"] == 2
    assert pair["topk_jaccard"] == pytest.approx((1 / 3 + 0) / 2, abs=1e-4)
    assert pair["rank_correlation"] == pytest.approx((0.8 - 1) / 2, abs=1e-4)


def test_the_audit_summarises_quality_per_method():
    rows = [_row("a.png", "lime", [0.9, 0.1], deletion=0.2), _row("a.png", "kernelshap", [0.5, 0.1], deletion=0.4),
            _row("b.png", "lime", [0.9, 0.1], deletion=0.6), _row("b.png", "kernelshap", [0.5, 0.1], deletion=0.7)]
    report = audit_report(rows, None, lambda path: None, lambda row: row["pred_name"])
    assert report["methods"] == ["lime", "kernelshap"]
    assert report["counts"]["images"] == 2 and report["counts"]["explained"] == 2
    assert report["quality_by_method"]["lime"]["deletion_auc"] == pytest.approx(0.4)
    assert report["quality_by_method"]["kernelshap"]["deletion_auc"] == pytest.approx(0.55)
    assert report["quality_by_method"]["lime"]["deletion_beats_random"] == 0.5
    assert report["quality"] == report["quality_by_method"]["lime"]
    assert report["agreement"][0]["topk_jaccard"] == 1.0
