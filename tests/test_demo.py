"""The demo end to end: the one test that trains a model for real and then uses it.

Its bars are what the demo promises on any machine: its recipe was chosen so
that every seed and thread count tried cleared them by a wide margin
(BENCHMARKS.md, "The demo's recipe"). How good a training run is depends on
the draw, so the other tests use a model built to behave as they need.
"""

import json
import re

import pytest
from click.testing import CliRunner

from helpers import assert_verified
from xai_batch.cli import cli


@pytest.mark.slow
def test_demo_trains_explains_and_lands_on_the_objects(ray_session, tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(cli, ["demo", "--out", str(out), "--images", "3", "--num-samples", "100"])
    assert result.exit_code == 0, result.output
    losses = [float(loss) for loss in re.findall(r"epoch \d+/\d+: train loss ([\d.]+)", result.output)]
    assert len(losses) == 4 and losses[-1] < losses[0], result.output
    accuracy = float(re.search(r"accuracy on held-out images: ([\d.]+)", result.output).group(1))
    share, chance = map(float, re.search(
        r"top-5 positive superpixels on the object: ([\d.]+) of their area \(random superpixels: ([\d.]+)\)",
        result.output).groups())
    assert accuracy >= 2 / 3, result.output
    assert share > 2 * chance, result.output
    deletion, deletion_random = map(float, re.search(r"deletion AUC ([\d.]+) vs ([\d.]+)", result.output).groups())
    assert deletion < deletion_random, result.output
    assert (out / "run" / "job.json").is_file() and any((out / "run" / "manifest").iterdir())
    assert_verified(str(out / "run"), str(out / "data" / "holdout"))
    assert (out / "data" / "train" / "none").is_dir() and (out / "model.pt").is_file()
    assert len(list((out / "data" / "holdout").rglob("*.mask.pgm"))) == 3
    evaluated = CliRunner().invoke(cli, ["evaluate", str(out / "data" / "holdout"), "--checkpoint",
                                         str(out / "model.pt"), "--out", str(tmp_path / "eval.json"), "--no-progress"])
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads((tmp_path / "eval.json").read_text())["accuracy"] == pytest.approx(accuracy)
