"""xai-batch render on a real local Ray: every style, lime's pixels, safe names, changed files."""

import csv
import os

import numpy as np
import pytest
from click.testing import CliRunner
from lime.lime_image import ImageExplanation
from PIL import Image
from skimage.segmentation import mark_boundaries

from xai_batch.cli import cli
from xai_batch.config import ExplainConfig
from xai_batch.images import load_image
from xai_batch.manifest import decode_segments, read_manifest
from xai_batch.overlays import STYLES
from xai_batch.runtime import run_explain

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def explained(ray_session, three_shapes, trained, tmp_path_factory):
    """The three held-out shapes explained by the trained model, in a copy of SOURCE we may change."""
    source = tmp_path_factory.mktemp("render-source")
    for name in os.listdir(three_shapes):
        (source / name).write_bytes(open(os.path.join(three_shapes, name), "rb").read())
    out = str(tmp_path_factory.mktemp("render") / "run")
    run_explain(ExplainConfig(source=str(source), out=out, checkpoint=trained.checkpoint, num_samples=60,
                              batch_size=60), progress=False)
    return str(source), out


def _index(folder):
    with open(os.path.join(folder, "overlays.csv"), newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("style", STYLES)
def test_every_style_renders_every_row(explained, style, tmp_path):
    _, out = explained
    to = str(tmp_path / style)
    result = CliRunner().invoke(cli, ["render", out, "--style", style, "--to", to, "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "3 overlays, 0 errors" in result.output
    index = _index(to)
    assert [row["path"] for row in index] == sorted(row["path"] for row in read_manifest(out).to_pylist())
    for row in index:
        assert row["error"] == "" and os.path.dirname(row["file"]) == ""
        picture = np.asarray(Image.open(os.path.join(to, row["file"])))
        assert picture.dtype == np.uint8 and picture.shape[2] == 3 and picture.shape[1] >= 224
    assert sorted(os.listdir(to)) == sorted([row["file"] for row in index] + ["overlays.csv"])


def test_boundaries_overlays_are_limes_figure_for_the_row(explained):
    source, out = explained
    result = CliRunner().invoke(cli, ["render", out, "--no-progress"])
    assert result.exit_code == 0, result.output
    to = os.path.join(out, "overlays", "boundaries")
    rows = {row["path"]: row for row in read_manifest(out).to_pylist()}
    for entry in _index(to):
        row = rows[entry["path"]]
        image = load_image(open(os.path.join(source, row["path"]), "rb").read()).pixels
        explanation = ImageExplanation(image, decode_segments(row["segments"]))
        weights = np.asarray(row["weights"])
        order = np.argsort(-np.abs(weights), kind="stable")
        explanation.local_exp = {row["explained_index"]: [(int(s), weights[s]) for s in order]}
        temp, mask = explanation.get_image_and_mask(row["explained_index"], positive_only=False, num_features=5)
        expected = np.clip(np.round(mark_boundaries(temp / 255.0, mask) * 255), 0, 255).astype(np.uint8)
        assert np.array_equal(np.asarray(Image.open(os.path.join(to, entry["file"]))), expected), row["path"]


def test_a_changed_image_is_an_error_entry_not_a_wrong_picture(explained, tmp_path):
    source, out = explained
    changed = sorted(os.listdir(source))[0]
    original = open(os.path.join(source, changed), "rb").read()
    try:
        Image.new("RGB", (64, 64), "white").save(os.path.join(source, changed))
        result = CliRunner().invoke(cli, ["render", out, "--to", str(tmp_path / "o"), "--no-progress"])
    finally:
        open(os.path.join(source, changed), "wb").write(original)
    assert result.exit_code == 1
    assert "2 overlays, 1 errors" in result.output
    entry = next(row for row in _index(str(tmp_path / "o")) if row["path"] == changed)
    assert entry["file"] == "" and "changed since it was explained" in entry["error"]


def test_render_without_a_manifest_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(cli, ["render", str(tmp_path), "--no-progress"])
    assert result.exit_code == 2 and "run xai-batch explain first" in result.output
    assert "Traceback" not in result.output
