"""KernelSHAP (Lundberg & Lee, 2017) over superpixels, as ``shap`` computes it.

The players are the superpixels; a hidden one shows ``hide_color``, so the
background is the all-hidden row and the explained instance the all-shown
row: ``shap.KernelExplainer(f, zeros((1, S))).shap_values(ones((1, S)),
nsamples=N)`` after ``numpy.random.seed(seed)``. shap calls ``f`` three
times (the background, the instance, then every sampled coalition at once),
and what it samples does not depend on ``f``'s answers. So ``sample`` runs
shap with an ``f`` that records the coalitions and stops at the third call;
the replicas evaluate those rows like LIME's; ``attribute`` runs shap again
with the same seed and an ``f`` that answers from the replicas' outputs.
The sampling and the solver (its LARS selection of 10 features, its
constrained least squares) are shap's own, so the values are shap's.
"""

from __future__ import annotations

import contextlib
import threading
import warnings

import numpy as np

from xai_batch.methods import Attribution, PerturbationMethod

__all__ = ["KernelShapMethod", "METHOD", "coalitions", "shapley_values"]


class _Recorded(Exception):
    """Stops shap once it has handed ``f`` its coalitions."""

    def __init__(self, rows: np.ndarray) -> None:
        super().__init__()
        self.rows = rows


_GLOBAL_GENERATOR = threading.Lock()  # shap draws from numpy's global generator: one seeded call at a time


@contextlib.contextmanager
def _seeded(seed: int):
    """numpy's global generator, which shap draws from, seeded for one call and then restored; held by one
    thread at a time (a replica samples one image while it explains another), warnings' filters with it."""
    with _GLOBAL_GENERATOR:
        state = np.random.get_state()
        np.random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(state)


def _explain(f, num_segments: int, num_samples: int, seed: int):
    import shap

    with _seeded(seed), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        explainer = shap.KernelExplainer(f, np.zeros((1, num_segments)))
        values = explainer.shap_values(np.ones((1, num_segments)), nsamples=num_samples, silent=True)
    return explainer, values


def coalitions(seed: int, num_segments: int, num_samples: int) -> np.ndarray:
    """The rows shap evaluates, as uint8: the instance (all ones), the background (all zeros), its samples."""
    calls: list[np.ndarray] = []

    def record(z: np.ndarray) -> np.ndarray:
        calls.append(np.asarray(z))
        if len(calls) == 3:
            raise _Recorded(np.asarray(z))
        return np.zeros((len(z), 1))

    try:
        _explain(record, num_segments, num_samples, seed)
    except _Recorded as done:
        sampled = done.rows
    else:  # one superpixel: shap needs no samples
        sampled = np.zeros((0, num_segments))
    instance, background = np.ones((1, num_segments)), np.zeros((1, num_segments))
    return np.concatenate([instance, background, sampled]).astype(np.uint8)


def shapley_values(
    rows: np.ndarray, outputs: np.ndarray, seed: int, num_samples: int
) -> tuple[np.ndarray, np.ndarray]:
    """shap's values (S, D) and base values (D,) given the model's outputs (n, D) on ``coalitions``' rows.

    ``seed`` and ``num_samples`` are those ``coalitions`` drew the rows with
    (shap may add fewer rows than asked). Raises ``RuntimeError`` if shap
    asks for other coalitions than ``rows`` holds (another shap version
    drew them).
    """
    num_segments = rows.shape[1]
    answers = [(rows[1:2], outputs[1:2]), (rows[0:1], outputs[0:1]), (rows[2:], outputs[2:])]

    def answer(z: np.ndarray) -> np.ndarray:
        if not answers:
            raise RuntimeError("shap asked for more model outputs than were computed")
        expected, out = answers.pop(0)
        if z.shape != expected.shape or not np.array_equal(z, expected):
            raise RuntimeError("shap drew other coalitions than the replicas evaluated (a different shap version?)")
        return out

    explainer, values = _explain(answer, num_segments, num_samples, seed)
    values = np.asarray(values, dtype=np.float64).reshape(num_segments, -1)
    return values, np.atleast_1d(np.asarray(explainer.expected_value, dtype=np.float64))


class KernelShapMethod(PerturbationMethod):
    name = "kernelshap"

    def sample(self, seed: int, num_segments: int, num_samples: int) -> np.ndarray:
        return coalitions(seed, num_segments, num_samples)

    def attribute(
        self, rows: np.ndarray, segments: np.ndarray, outputs: np.ndarray, labels: list[int], seed: int,
        num_samples: int, device: str | None = None,
    ) -> list[Attribution]:
        """shap's values and base value for each label, all labels in one shap run (shap solves each alone)."""
        values, base = shapley_values(rows, np.asarray(outputs[:, labels], dtype=np.float64), seed, num_samples)
        return [Attribution(label, values[:, d].copy(), intercept=float(base[d])) for d, label in enumerate(labels)]


METHOD = KernelShapMethod()
