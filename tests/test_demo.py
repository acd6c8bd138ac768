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
