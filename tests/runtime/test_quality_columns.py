"""Explanation quality measured on the replicas, end to end, on the generated shapes with a trained model."""

import numpy as np
import pytest
from click.testing import CliRunner

from helpers import assert_verified

from xai_batch.cli import cli
from xai_batch.manifest import read_manifest
from xai_batch.stages import QUALITY_COLUMNS

pytestmark = pytest.mark.slow


def test_faithfulness_stability_and_localisation_columns(ray_session, shapes_data, trained, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, [
        "explain", shapes_data["holdout"], "--out", str(out), "--checkpoint", trained.checkpoint,
        "--num-samples", "100", "--batch-size", "64", "--faithfulness", "--stability",
        "--masks", shapes_data["holdout"], "--no-progress"])  # the generated masks lie beside the images
    assert result.exit_code == 0, result.output
    rows = [row for row in read_manifest(str(out)).to_pylist() if row["status"] == "ok"]
    assert len(rows) == 6
    for row in rows:
        assert all(row[column] is not None for column in QUALITY_COLUMNS), row["path"]
        for column in QUALITY_COLUMNS:
            assert 0 <= row[column] <= 1, (row["path"], column)
    deletion_wins = sum(row["deletion_auc"] < row["deletion_auc_random"] for row in rows)
    insertion_wins = sum(row["insertion_auc"] > row["insertion_auc_random"] for row in rows)
    assert deletion_wins >= 4 and insertion_wins >= 4, (deletion_wins, insertion_wins)
    on_object = np.mean([row["on_object"] for row in rows])
    assert on_object > 1.5 * np.mean([row["on_object_random"] for row in rows])  # a 3-epoch model: 2.7x on CI
    assert np.mean([row["pointing_hit"] for row in rows]) > np.mean([row["pointing_random"] for row in rows])
    assert_verified(str(out), shapes_data["holdout"])
