import numpy as np
import pytest

from xai_batch.maths import fit_surrogate, sample_rows
from xai_batch.maths.convergence import _ridge_with_covariance, sample_schedule, settled
from xai_batch.maths.surrogate import sample_weights

SEGMENTS = 40
LOOKS = len(sample_schedule(2000))


def _outputs(rows: np.ndarray, effects: np.ndarray, noise: float, seed: int) -> np.ndarray:
    """A model whose output is linear in the kept superpixels, plus noise of the given size."""
    rng = np.random.default_rng(seed)
    return (0.4 + rows @ effects + rng.normal(0, noise, len(rows))).astype(np.float32)


def _effects(*leading: float) -> np.ndarray:
    effects = np.zeros(SEGMENTS)
    effects[: len(leading)] = leading
    return effects


def test_the_fit_is_limes_surrogate():
    rows = sample_rows(5, 600, SEGMENTS)
    probs = _outputs(rows, _effects(0.05, -0.04, 0.03), 0.02, 1)
    coef, _ = _ridge_with_covariance(rows.astype(float), probs.astype(float), sample_weights(rows))
    assert np.allclose(coef, fit_surrogate(rows, probs, 5).weights, rtol=0, atol=1e-12)


def test_standard_errors_match_the_spread_of_refits():
    """The sandwich covariance predicts how much the weights vary from one sample draw to the next."""
    effects = _effects(0.05, -0.04, 0.03, 0.02, -0.02)
    estimates, predicted = [], []
    for seed in range(200):
        rows = sample_rows(seed, 400, SEGMENTS)
        probs = _outputs(rows, effects, 0.05 * (1 + rows[:, 0]), seed)  # heteroskedastic on purpose
        coef, covariance = _ridge_with_covariance(rows.astype(float), probs.astype(float), sample_weights(rows))
        estimates.append(coef)
        predicted.append(np.sqrt(np.diag(covariance)))
    ratio = np.std(estimates, axis=0) / np.mean(predicted, axis=0)
    assert np.all((ratio > 0.8) & (ratio < 1.25)), ratio


def test_clear_effects_settle_early_on_the_right_superpixels():
    effects = _effects(0.2, -0.15, 0.12, 0.1, -0.09)
    rows = sample_rows(2, 2000, SEGMENTS)
    probs = _outputs(rows, effects, 0.02, 2)
    stop = next(n for n in sample_schedule(2000) if settled(rows[:n], probs[:n], 5, LOOKS).settled)
    assert stop == 200
    weights = fit_surrogate(rows[:stop], probs[:stop], 2).weights
    assert set(np.argsort(-np.abs(weights))[:5]) == {0, 1, 2, 3, 4}


def test_a_tie_at_the_boundary_never_settles():
    """The 5th and 6th superpixels matter equally, so no sample count can tell which is in the top 5."""
    effects = _effects(0.2, -0.15, 0.12, 0.1, 0.05, 0.05)
    rows = sample_rows(4, 2000, SEGMENTS)
    probs = _outputs(rows, effects, 0.02, 4)
    verdicts = [settled(rows[:n], probs[:n], 5, LOOKS) for n in sample_schedule(2000)]
    assert not any(verdict.settled for verdict in verdicts)
    assert settled(rows, probs, 4, LOOKS).settled  # while the top 4 are clear


def test_repeated_looks_are_paid_for():
    """Over many tied cases, auto stops on a coin-flip set at most about alpha of the time."""
    effects = _effects(0.2, -0.15, 0.12, 0.1, 0.05, 0.05)
    wrong = 0
    for seed in range(40):
        rows = sample_rows(seed, 2000, SEGMENTS)
        probs = _outputs(rows, effects, 0.02, seed)
        wrong += any(settled(rows[:n], probs[:n], 5, LOOKS).settled for n in sample_schedule(2000))
    assert wrong <= 4  # alpha = 0.05 of 40 is 2; uncorrected looks settle about half of them


def test_pure_noise_never_settles():
    rows = sample_rows(6, 2000, SEGMENTS)
    probs = _outputs(rows, np.zeros(SEGMENTS), 0.05, 6)
    assert not any(settled(rows[:n], probs[:n], 5, LOOKS).settled for n in sample_schedule(2000))


def test_a_weak_sign_is_not_settled():
    """Four clear leaders among five superpixels: the 5th is in the top 5 but its sign is not settled."""
    effects = _effects(0.2, -0.15, 0.12, 0.1)
    rows = sample_rows(8, 300, 5)
    probs = _outputs(rows, effects[:5], 0.05, 8)
    verdict = settled(rows, probs, 5)
    assert not verdict.settled and verdict.z < verdict.critical


def test_auto_uses_a_prefix_of_the_full_sample_matrix():
    """Stopping at n must be lime's answer for n samples: lime draws exactly this prefix."""
    for seed in (0, 12345, 2**31 - 5):
        assert np.array_equal(sample_rows(seed, 2000, 87)[:700], sample_rows(seed, 700, 87))


@pytest.mark.parametrize(
    "maximum,expected",
    [(2000, [200, 300, 400]), (250, [200, 250]), (150, [150]), (300, [200, 300])],
)
def test_schedule(maximum, expected):
    schedule = sample_schedule(maximum)
    assert schedule[: len(expected)] == expected
    assert schedule[-1] == maximum
    assert all(b > a for a, b in zip(schedule, schedule[1:]))
