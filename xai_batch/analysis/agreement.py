"""How far explanation methods agree on the same images.

Methods explain the same prediction on the same superpixels, so two
explanations of an image compare superpixel by superpixel: the overlap of
their top-``k`` superpixels (the masks a reader sees; Jaccard) and the rank
correlation of all their weights (Spearman). Pure: manifest rows in, numbers
out.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
from scipy.stats import spearmanr

from xai_batch.maths.quality import topk_jaccard
from xai_batch.methods import METHODS

__all__ = ["rank_correlation", "methods_in", "pairs_of_rows", "agreement", "AgreementTally"]


def rank_correlation(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rho of two weight vectors; None when either is constant (no ranking to compare)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(spearmanr(a, b).statistic)


def methods_in(rows: Sequence[dict]) -> list[str]:
    """The methods with rows, in the registry's order (LIME first)."""
    present = {row["method"] for row in rows}
    return [method for method in METHODS if method in present]


def pairs_of_rows(rows: Sequence[dict], first: str, second: str) -> list[tuple[dict, dict]]:
    """(first's row, second's row) for every image and label both methods explained."""
    found: dict[tuple[str, str, int], dict] = {}
    for row in rows:
        if row["status"] == "ok":
            found[row["method"], row["path"], row["explained_index"]] = row
    return [(row, found[second, path, label]) for (method, path, label), row in sorted(found.items(), key=str)
            if method == first and (second, path, label) in found]


def agreement(rows: Sequence[dict], k: int) -> list[dict]:
    """Per pair of methods: images compared, mean top-``k`` Jaccard and mean rank correlation."""
    tally = AgreementTally(k)
    tally.add(rows)
    return tally.report(methods_in(rows))


class AgreementTally:
    """Running sums behind :func:`agreement`, for rows that come a group of images at a time."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.sums: dict[tuple[str, str], list[float]] = {}  # pair -> [explanations, jaccard sum, rho sum, rhos]

    def add(self, rows: Sequence[dict]) -> None:
        for pair in itertools.combinations(methods_in(rows), 2):
            sums = self.sums.setdefault(pair, [0, 0.0, 0.0, 0])
            for a, b in pairs_of_rows(rows, *pair):
                sums[0] += 1
                sums[1] += topk_jaccard(np.asarray(a["weights"]), np.asarray(b["weights"]), self.k)
                rho = rank_correlation(a["weights"], b["weights"])
                if rho is not None:
                    sums[2] += rho
                    sums[3] += 1

    def report(self, methods: Sequence[str]) -> list[dict]:
        out = []
        for pair in itertools.combinations(methods, 2):
            explanations, jaccards, rhos, rho_count = self.sums.get(pair, [0, 0.0, 0.0, 0])
            out.append({"methods": list(pair), "explanations": explanations,
                        "topk_jaccard": round(jaccards / explanations, 4) if explanations else None,
                        "rank_correlation": round(rhos / rho_count, 4) if rho_count else None})
        return out
