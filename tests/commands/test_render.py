"""xai-batch render on a real local Ray: every style, lime's pixels, safe names, changed files."""

import csv
import os

import numpy as np
import pytest
from click.testing import CliRunner
from lime.lime_image import ImageExplanation
from PIL import Image
from skimage.segmentation import mark_boundaries

from helpers import SHAPES_FRAME
from xai_batch.cli import cli
from xai_batch.config import ExplainConfig
from xai_batch.images import load_image
from xai_batch.manifest import decode_segments, read_manifest
from xai_batch.analysis.overlays import STYLES
from xai_batch.commands import run_explain
from xai_batch.preprocessing import Preprocessing

pytestmark = pytest.mark.slow
CROP = SHAPES_FRAME["crop"]  # the shapes model's input, what its overlays are drawn at


@pytest.fixture(scope="module")
def explained(ray_session, three_shapes, shapes_model, tmp_path_factory):
    """The three held-out shapes explained by the shapes model, in a copy of SOURCE we may change."""
    source = tmp_path_factory.mktemp("render-source")
    for name in os.listdir(three_shapes):
        (source / name).write_bytes(open(os.path.join(three_shapes, name), "rb").read())
    out = str(tmp_path_factory.mktemp("render") / "run")
    run_explain(ExplainConfig(source=str(source), out=out, checkpoint=shapes_model, num_samples=20,
                              batch_size=20), progress=False)
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
        assert picture.dtype == np.uint8 and picture.shape[2] == 3 and picture.shape[1] >= CROP
    assert sorted(os.listdir(to)) == sorted([row["file"] for row in index] + ["overlays.csv"])


def test_boundaries_overlays_are_limes_figure_for_the_row(explained):
    source, out = explained
    result = CliRunner().invoke(cli, ["render", out, "--no-progress"])
    assert result.exit_code == 0, result.output
    to = os.path.join(out, "overlays", "boundaries")
    rows = {row["path"]: row for row in read_manifest(out).to_pylist()}
    for entry in _index(to):
        row = rows[entry["path"]]
        image = load_image(open(os.path.join(source, row["path"]), "rb").read(),
                           preprocessing=Preprocessing(**SHAPES_FRAME)).pixels
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


def test_a_manifest_path_that_leaves_source_is_an_error_entry_not_a_file_read(explained, tmp_path):
    """A manifest from elsewhere may name '../x' or '/etc/x': its rows are error entries, the files unread."""
    from xai_batch.analysis.overlays import RenderOptions
    from xai_batch.distributed.rendering import _render_batch
    from xai_batch.preprocessing import SEEDS
    from xai_batch.storage import locate

    source, out = explained
    (tmp_path / "secret.png").write_bytes(open(os.path.join(source, sorted(os.listdir(source))[0]), "rb").read())
    [row] = [row for row in read_manifest(out).to_pylist() if row["path"] == sorted(os.listdir(source))[0]]
    hostile = [({**row, "path": path}, f"{number}.png") for number, path in
               enumerate(["../" + tmp_path.name + "/secret.png", str(tmp_path / "secret.png")])]
    entries = _render_batch(hostile, locate(source), locate(str(tmp_path / "o")), RenderOptions(), SEEDS)
    assert [entry["file"] for entry in entries] == ["", ""]
    assert all(entry["error"].startswith("path ") and f"is not inside {source}" in entry["error"] for entry in entries)


def test_csv_cells_a_spreadsheet_would_run_are_neutralised(tmp_path):
    from xai_batch.storage import write_csv

    rows = [{"path": "=HYPERLINK(\"http://x\")/a.png", "label": "-1", "score": -0.5},
            {"path": "+cmd/b.png", "label": "@SUM(A1)", "score": 2},
            {"path": "plain/c.png", "label": "cat", "score": 0.25}]
    write_csv(str(tmp_path / "index.csv"), rows, ["path", "label", "score"])
    with open(tmp_path / "index.csv", newline="") as handle:
        read = list(csv.DictReader(handle))
    assert [r["path"] for r in read] == ["'=HYPERLINK(\"http://x\")/a.png", "'+cmd/b.png", "plain/c.png"]
    assert [r["label"] for r in read] == ["'-1", "'@SUM(A1)", "cat"]
    assert [r["score"] for r in read] == ["-0.5", "2", "0.25"]  # numbers are numbers
    assert [r["path"].removeprefix("'") for r in read] == [r["path"] for r in rows]  # the documented way back


def test_render_without_a_manifest_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(cli, ["render", str(tmp_path), "--no-progress"])
    assert result.exit_code == 2 and "run xai-batch explain first" in result.output
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def explained_classes(ray_session, shapes_data, shapes_model, tmp_path_factory):
    """The held-out shapes (a class-per-folder SOURCE, two images a class) explained by the shapes model."""
    out = str(tmp_path_factory.mktemp("stimuli") / "run")
    run_explain(ExplainConfig(source=shapes_data["holdout"], out=out, checkpoint=shapes_model, num_samples=20,
                              batch_size=20), progress=False)
    return out


def _stimuli_csv(folder):
    with open(os.path.join(folder, "stimuli.csv"), newline="") as handle:
        return list(csv.DictReader(handle))


def test_stimuli_are_balanced_blind_and_reproducible(explained_classes, tmp_path):
    args = ["--per-cell", "1", "--by", "label", "--seed", "3", "--style", "side-by-side", "--blind", "--no-progress"]
    first, second = str(tmp_path / "a"), str(tmp_path / "b")
    for to in (first, second):
        result = CliRunner().invoke(cli, ["stimuli", explained_classes, "--to", to, *args])
        assert result.exit_code == 0, result.output
        assert "3 stimuli, 0 errors" in result.output
    table = _stimuli_csv(first)
    assert [row["stimulus_id"] for row in table] == ["S001", "S002", "S003"]
    assert sorted(row["cell"] for row in table) == ["disc", "square", "triangle"]
    for row in table:
        assert row["file"] == f"{row['stimulus_id']}.png"  # the name gives nothing away
        assert row["true_label"] == row["cell"] == row["path"].split("/")[0]
        picture = np.asarray(Image.open(os.path.join(first, row["file"])))
        assert picture.shape == (CROP, 2 * CROP + 8, 3)  # side by side, no caption (--blind)
    assert table == _stimuli_csv(second)
    for row in table:
        assert open(os.path.join(first, row["file"]), "rb").read() == open(os.path.join(second, row["file"]), "rb").read()


def test_a_short_cell_is_refused_unless_allowed(explained_classes, tmp_path):
    rows = [row for row in read_manifest(explained_classes).to_pylist()]
    wrong = {row["path"].split("/")[0] for row in rows if row["pred_name"] != row["path"].split("/")[0]}
    short = sorted(f"{label}/wrong" for label in ("disc", "square", "triangle") if label not in wrong)
    assert short  # the shapes model is right on every held-out image
    args = ["stimuli", explained_classes, "--per-cell", "1", "--by", "label,correct", "--no-progress"]
    refused = CliRunner().invoke(cli, [*args, "--to", str(tmp_path / "no")])
    assert refused.exit_code == 2, refused.output
    assert "Invalid value for '--per-cell'" in refused.output and f"{short[0]} has 0" in refused.output
    assert not (tmp_path / "no").exists()
    allowed = CliRunner().invoke(cli, [*args, "--to", str(tmp_path / "yes"), "--allow-unbalanced"])
    assert allowed.exit_code == 0, allowed.output
    assert f"warning: cell {short[0]} has 0 of 1 images" in allowed.output
    assert len(_stimuli_csv(str(tmp_path / "yes"))) == 6 - len(short)
