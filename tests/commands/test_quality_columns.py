"""Explanation quality measured on the replicas, end to end, on the generated shapes with the shapes model.

The shapes model's output depends on the object alone, so a faithful
explanation of it is on the object and beats a random order on every image.
"""

import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from helpers import assert_verified, save_shape_detector

from xai_batch.cli import cli
from xai_batch.manifest import QUALITY_COLUMNS, read_manifest
from xai_batch.synthetic import SHAPES, mask_path

pytestmark = pytest.mark.slow


def test_faithfulness_stability_and_localisation_columns(ray_session, shapes_data, tmp_path):
    """In the seeds' frame: at the shapes model's smaller one, quickshift cuts some images into so few
    superpixels that the explanation's order and a random one delete alike."""
    shapes_model = save_shape_detector(str(tmp_path / "model.pt"), frame=None)
    source = tmp_path / "data"  # one held-out image of each object, its mask beside it
    source.mkdir()
    for shape in SHAPES[:3]:
        image = f"{shapes_data['holdout']}/{shape}/{shape}_0001.png"
        shutil.copy(image, source / f"{shape}.png")
        shutil.copy(mask_path(image), mask_path(str(source / f"{shape}.png")))
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, [
        "explain", str(source), "--out", str(out), "--checkpoint", shapes_model,
        "--num-samples", "100", "--batch-size", "64", "--faithfulness", "--stability",
        "--masks", str(source), "--no-progress"])
    assert result.exit_code == 0, result.output
    rows = [row for row in read_manifest(str(out)).to_pylist() if row["status"] == "ok"]
    assert len(rows) == 3
    for row in rows:
        assert all(row[column] is not None for column in QUALITY_COLUMNS), row["path"]
        for column in QUALITY_COLUMNS:
            assert 0 <= row[column] <= 1, (row["path"], column)
        assert row["deletion_auc"] < row["deletion_auc_random"], row["path"]
        assert row["insertion_auc"] > row["insertion_auc_random"], row["path"]
        assert row["pointing_hit"], row["path"]
    on_object = np.mean([row["on_object"] for row in rows])
    assert on_object > 4 * np.mean([row["on_object_random"] for row in rows])  # about 9x
    assert np.mean([row["pointing_random"] for row in rows]) < 0.5
    assert_verified(str(out), str(source))
