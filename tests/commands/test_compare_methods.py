"""Methods compared: stimuli for a within-subject study and the report's side-by-side view."""

import csv
import json
import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from browser import Chromium
from helpers import SHAPES_FRAME, assert_verified
from xai_batch.cli import cli
from xai_batch.manifest import read_manifest

pytestmark = pytest.mark.slow

METHODS = ("lime", "gradcam")
CROP = SHAPES_FRAME["crop"]  # the shapes model's input, what its pictures are drawn at


@pytest.fixture(scope="module")
def two_methods(ray_session, shapes_data, shapes_model, tmp_path_factory):
    """One held-out shape of each class (in its class folder) explained by LIME and Grad-CAM, with faithfulness."""
    root = tmp_path_factory.mktemp("compare")
    source = root / "data"
    for shape in ("disc", "square", "triangle"):
        (source / shape).mkdir(parents=True)
        shutil.copy(os.path.join(shapes_data["holdout"], shape, f"{shape}_0000.png"), source / shape)
    out = root / "run"
    result = CliRunner().invoke(cli, [
        "explain", str(source), "--out", str(out), "--checkpoint", shapes_model,
        "--method", ",".join(METHODS), "--num-samples", "40", "--batch-size", "80", "--faithfulness", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert_verified(str(out), str(source))
    return out


def _stimuli(out, to, *options):
    result = CliRunner().invoke(cli, ["stimuli", str(out), "--to", str(to), "--no-progress", *options])
    with open(to / "stimuli.csv", newline="") as handle:
        return result, list(csv.DictReader(handle))


def test_stimuli_by_method_are_balanced_reproducible_and_blind(two_methods, tmp_path):
    options = ["--by", "method,label", "--per-cell", "1", "--seed", "9", "--style", "heatmap"]
    result, table = _stimuli(two_methods, tmp_path / "a", *options)
    assert result.exit_code == 0, result.output
    assert "6 stimuli, 0 errors" in result.output
    assert sorted(row["cell"] for row in table) == sorted(f"{m}/{c}" for m in METHODS for c in ("disc", "square", "triangle"))
    by_method = {m: sorted(row["path"] for row in table if row["method"] == m) for m in METHODS}
    assert by_method["lime"] == by_method["gradcam"]  # within subjects: the same images under each method
    assert [row["cell"].split("/")[0] for row in table] != sorted(row["cell"].split("/")[0] for row in table)
    for row in table:
        assert row["file"] == f"{row['stimulus_id']}.png"  # nothing of the method or class in the name
        assert row["method"] == row["cell"].split("/")[0]
        picture = np.asarray(Image.open(tmp_path / "a" / row["file"]))
        assert picture.shape[1] == CROP and picture.shape[0] > CROP  # every method in the same style: heatmap + legend
    # The same options give the same stimuli, byte for byte.
    _, again = _stimuli(two_methods, tmp_path / "b", *options)
    assert again == table
    for row in table:
        assert (tmp_path / "a" / row["file"]).read_bytes() == (tmp_path / "b" / row["file"]).read_bytes()
    # Two methods and no 'method' factor: a usage error, before anything is drawn.
    refused, = [CliRunner().invoke(cli, ["stimuli", str(two_methods), "--to", str(tmp_path / "c"), "--by", "label",
                                         "--per-cell", "1", "--no-progress"])]
    assert refused.exit_code == 2 and "'--by'" in refused.output and "method" in refused.output
    assert not (tmp_path / "c").exists()
    # One method chosen: a one-method design of that method's explanations.
    result, table = _stimuli(two_methods, tmp_path / "d", "--by", "label", "--per-cell", "1", "--method", "gradcam")
    assert result.exit_code == 0, result.output
    assert {row["method"] for row in table} == {"gradcam"} and len(table) == 3


def test_render_draws_each_method_in_the_same_style(two_methods, tmp_path):
    result = CliRunner().invoke(cli, ["render", str(two_methods), "--to", str(tmp_path / "o"), "--no-progress"])
    assert result.exit_code == 0, result.output
    with open(tmp_path / "o" / "overlays.csv", newline="") as handle:
        index = list(csv.DictReader(handle))
    assert sorted((row["path"], row["method"]) for row in index) == sorted(
        (row["path"], row["method"]) for row in read_manifest(str(two_methods)).to_pylist())
    assert all(f".{row['method']}.boundaries." in row["file"] for row in index)
    missing = CliRunner().invoke(cli, ["render", str(two_methods), "--method", "kernelshap", "--no-progress"])
    assert missing.exit_code == 2 and "no kernelshap explanations" in missing.output


def test_report_shows_the_methods_side_by_side(two_methods, tmp_path):
    result = CliRunner().invoke(cli, ["report", str(two_methods), "--to", str(tmp_path / "r.html"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "3 images, pictures embedded; 0 could not be drawn" in result.output
    rows = read_manifest(str(two_methods)).to_pylist()
    chromium = Chromium()
    try:
        chromium.load((tmp_path / "r.html").as_uri(), ready="document.body.dataset.ready === 'true'")
        assert chromium.console_errors() == []
        views = chromium.evaluate("[...document.querySelectorAll('#gallery .card')].map(c => "
                                  "[...c.querySelectorAll('.view')].map(v => v.dataset.method))")
        assert len(views) == 3 and all(shown == list(METHODS) for shown in views)
        sizes = chromium.evaluate("Promise.all([...document.querySelectorAll('#gallery .view img')].map(i => new Promise("
                                  "r => i.complete ? r(i.naturalWidth) : i.onload = () => r(i.naturalWidth))))")
        assert sizes == [CROP] * 6
        # Each card marks the method with the lower deletion AUC, as the manifest has it (none on a tie).
        marked = chromium.evaluate("Object.fromEntries([...document.querySelectorAll('#gallery .card')].map(c => "
                                   "[c.dataset.path, c.querySelector('.best')?.closest('.view').dataset.method ?? null]))")
        for path, best in marked.items():
            auc = {row["method"]: round(row["deletion_auc"], 4) for row in rows if row["path"] == path}
            assert best == (None if auc["lime"] == auc["gradcam"] else min(auc, key=auc.get)), path
        assert any(marked.values())
        header = chromium.evaluate("[...document.querySelectorAll('#quality-table tr:first-child th')].map(c => c.textContent)")
        assert header == ["measure (mean over images)", *METHODS]
        agreement = chromium.evaluate("[...document.querySelectorAll('#agreement-table tr')].map(r => "
                                      "[...r.children].map(c => c.textContent))")
        assert agreement[0] == ["methods", "explanations", "top-k Jaccard", "rank correlation"]
        assert agreement[1][:2] == ["lime – gradcam", "3"] and 0 <= float(agreement[1][2]) <= 1
        chromium.screenshot(str(tmp_path / "methods.png"))
        if os.environ.get("XAI_BATCH_SCREENSHOTS"):
            os.makedirs(os.environ["XAI_BATCH_SCREENSHOTS"], exist_ok=True)
            (tmp_path / "methods.png").replace(os.path.join(os.environ["XAI_BATCH_SCREENSHOTS"], "methods.png"))
    finally:
        chromium.close()
    assert json.loads((two_methods / "job.json").read_text())["config"]["methods"] == list(METHODS)
