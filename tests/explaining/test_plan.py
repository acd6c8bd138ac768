"""The per-image plan: what comes next for a method on an image, on a model built to behave as each case needs."""

import numpy as np

from xai_batch.explaining.plan import Finished, GradientPass, Outputs, Phase, advance, first_step, gathered
from xai_batch.explaining.prepared import PreparedImage
from xai_batch.explaining.steps import ImageHeader
from xai_batch.manifest import RowContext
from xai_batch.methods import get_method, method_seed

SIDE, SEGMENTS = 40, 40
CLEAR = np.array([0.2, -0.15, 0.12, 0.1, -0.09] + [0.0] * (SEGMENTS - 5))  # five superpixels that matter


def _image(drawn: int) -> tuple[ImageHeader, PreparedImage]:
    header = ImageHeader("a.png", sha256="0" * 64, width=SIDE, height=SIDE, seed=7, num_segments=SEGMENTS,
                         methods=("lime",), drawn=(drawn,))
    segments = np.repeat(np.arange(SEGMENTS).reshape(8, 5), 5, axis=0).repeat(8, axis=1).astype(np.int32)
    rows = get_method("lime").sample(method_seed(header.seed, "lime"), SEGMENTS, drawn).astype(np.uint8)
    pixels = np.random.default_rng(0).integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
    return header, PreparedImage(pixels, np.zeros_like(pixels), segments, rows)


def _model(effects: np.ndarray, noise: float = 0.0):
    """Two classes; class 0's probability linear in the kept superpixels, plus noise."""
    def outputs(rows: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(len(rows))
        first = np.clip(0.4 + rows @ effects + rng.normal(0, noise, len(rows)), 0.01, 0.99)
        return np.stack([first, 1 - first], axis=1).astype(np.float32)
    return outputs


def _context(num_samples: int = 2000, **options) -> RowContext:
    return RowContext(model_id="m", class_names=("a", "b"), config_hashes={"lime": "h"}, num_samples=num_samples,
                      top_labels=1, num_features=5, **options)


def test_a_method_starts_with_its_rows_or_its_gradient_pass():
    assert first_step("lime", 1000, _context()) == Outputs(Phase.EXPLAIN, 0, 1000)
    assert first_step("kernelshap", 1000, _context()) == Outputs(Phase.EXPLAIN, 0, 1000)
    assert first_step("lime", 2000, _context(adaptive=True)) == Outputs(Phase.EXPLAIN, 0, 200)  # auto's first round
    assert first_step("gradcam", 0, _context()) == GradientPass()


def test_auto_asks_for_another_round_until_the_explanation_settles():
    header, payload = _image(2000)
    context = _context(adaptive=True)
    unclear = _model(np.zeros(SEGMENTS), noise=0.05)  # nothing matters: never settled
    step = first_step("lime", 2000, context)
    asked = []
    while not isinstance(step, Finished):
        asked.append((step.start, step.stop))
        outputs = unclear(payload.rows[: step.stop])
        advanced = advance(header, payload, gathered("lime", Phase.EXPLAIN, [outputs]), context, "lime",
                           Phase.EXPLAIN)
        step = advanced.step
    assert asked == [(0, 200)] + [(n, n + 100) for n in range(200, 2000, 100)]  # every round, to the last
    assert advanced.rows[0]["num_samples"] == 2000 and advanced.quality is None

    clear = _model(CLEAR, noise=0.02)
    done = advance(header, payload, clear(payload.rows[:200]), context, "lime", Phase.EXPLAIN)
    assert done.step == Finished(1) and done.rows[0]["num_samples"] == 200
    assert set(done.rows[0]["topk_index"][:1]) <= set(range(5)) and done.busy["surrogate"] > 0


def test_with_quality_the_measures_rows_come_next_then_the_measured_rows():
    header, payload = _image(200)
    context = _context(num_samples=200, faithfulness=True)
    model = _model(CLEAR, noise=0.02)
    explained = advance(header, payload, model(payload.rows), context, "lime", Phase.EXPLAIN)
    curves = 2 * (SEGMENTS + 1) * 2  # deletion and insertion, by the weights and in a random order
    assert explained.step == Outputs(Phase.QUALITY, 0, curves) and len(explained.quality.rows) == curves
    assert explained.rows[0].get("deletion_auc") is None and "quality" in explained.busy
    measured = advance(header, explained.quality, gathered("lime", Phase.QUALITY, [model(explained.quality.rows)]),
                       context, "lime", Phase.QUALITY, explained.rows)
    assert measured.step == Finished(1) and measured.quality is None
    row = measured.rows[0]
    assert row["weights"] == explained.rows[0]["weights"]
    assert row["deletion_auc"] < row["deletion_auc_random"]  # deleting what the explanation ranks first hurts most
