"""xai-batch audit on a real local Ray: three nights, with a planted case each.

Night 1 audits the held-out shapes (one image's object mask is planted in a
corner, where no explanation can rest); night 2 finds a mislabelled folder
and a changed file, and explains only what moved or changed; night 3 finds a
changed model, which changes every configuration, and fails the audit.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from helpers import assert_verified

from xai_batch.cli import cli
from xai_batch.labels import folder_label
from xai_batch.manifest import read_manifest
from xai_batch.synthetic import mask_path

pytestmark = pytest.mark.slow

# Quality is on by default in audits; these tests measure it in tests/commands/test_quality_columns.py.
SETTINGS = ["--num-samples", "20", "--batch-size", "20", "--no-faithfulness", "--no-stability", "--no-progress"]


def _audit(source, out, checkpoint, *extra):
    result = CliRunner().invoke(
        cli, ["audit", str(source), "--out", str(out), "--checkpoint", checkpoint, *SETTINGS, *extra])
    document = json.loads(open(os.path.join(out, "audit.json")).read()) if os.path.exists(
        os.path.join(out, "audit.json")) else None
    return result, document


def _predictions(out):
    return {row["path"]: row["pred_name"] for row in read_manifest(str(out)).to_pylist()}


@pytest.fixture(scope="module")
def nights(ray_session, shapes_data, shapes_model, tmp_path_factory):
    """Three nightly audits over one SOURCE that changes between them; their results."""
    root = tmp_path_factory.mktemp("audit")
    source, masks = root / "data", root / "masks"
    shutil.copytree(shapes_data["holdout"], source, ignore=shutil.ignore_patterns("*.mask.pgm"))
    for path in sorted(source.rglob("*.png")):
        relative = path.relative_to(source)
        (masks / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(mask_path(os.path.join(shapes_data["holdout"], relative)), masks / f"{relative.with_suffix('')}.mask.pgm")
    corner = np.zeros((256, 256), np.uint8)
    corner[20:26, 20:26] = 255  # a speck of an object in a corner: no explanation of this picture rests there
    Image.fromarray(corner).save(masks / "square" / "square_0001.png")  # a same-named PNG wins over the .pgm
    first = _audit(source, root / "night1", shapes_model, "--masks", str(masks))
    before = _predictions(root / "night1")

    # Night 2. A changed file: B now holds the bytes of an image A the model predicted differently.
    a, b = next((a, b) for a in sorted(before) for b in sorted(before) if before[a] != before[b])
    (source / b).write_bytes((source / a).read_bytes())
    # A mislabelled folder: a folder of images the model got right is renamed to another class.
    wrong = next(folder_label(p) for p in sorted(before)
                 if folder_label(p) == before[p] and folder_label(p) != folder_label(b))
    (source / wrong).rename(source / "none")
    second = _audit(source, root / "night2", shapes_model, "--previous", str(root / "night1"),
                    "--masks", str(masks))  # the same options every night, or nothing is reusable

    # Night 3. A changed model: the same network, but it now answers 'none' whatever it sees.
    changed = str(root / "changed.pt")
    checkpoint = torch.load(shapes_model, weights_only=True)
    checkpoint["state_dict"]["fc.bias"][checkpoint["class_names"].index("none")] += 1e4
    torch.save(checkpoint, changed)
    third = _audit(source, root / "night3", changed, "--previous", str(root / "night2"), "--masks", str(masks),
                   "--fail-on", "errors,changed>3", "--fail-on", "accuracy<0.99")
    return {"root": root, "source": source, "masks": masks, "a": a, "b": b, "wrong": wrong, "before": before,
            "nights": [first, second, third]}


def test_night_one_counts_accuracy_and_a_planted_background_case(nights):
    result, audit = nights["nights"][0]
    assert result.exit_code == 0, result.output + result.stderr
    before = nights["before"]
    assert audit["counts"]["images"] == audit["counts"]["explained"] == audit["counts"]["labelled"] == 6
    assert audit["run"] == {**audit["run"], "explained": 6, "reused": 0}
    truth_pred = [(folder_label(p), before[p]) for p in sorted(before)]
    wrong = {p for p, (t, pr) in zip(sorted(before), truth_pred) if t != pr}
    assert {f["path"] for f in audit["findings"]["misclassified"]} == wrong
    assert audit["accuracy"] == pytest.approx(1 - len(wrong) / 6)
    assert audit["accuracy"] == 1  # the shapes model is right on every held-out image, by construction
    labels, matrix = audit["confusion"]["labels"], np.array(audit["confusion"]["matrix"])
    assert labels[:3] == ["disc", "square", "triangle"] and matrix.sum() == 6
    for truth, predicted in truth_pred:
        assert matrix[labels.index(truth)].sum() == 2
    assert np.trace(matrix) == 6 - len(wrong)
    assert audit["per_class"]["disc"]["images"] == 2
    # The corner mask is the planted case; the others are the true objects.
    background = {f["path"]: f["on_object"] for f in audit["findings"]["background"]}
    assert background["square/square_0001.png"] < 0.05
    assert audit["since_previous"] is None and audit["findings"]["changed"] == audit["findings"]["moved"] == []
    assert_verified(str(nights["root"] / "night1"))


def test_night_two_finds_the_mislabelled_folder_and_the_changed_file(nights):
    result, audit = nights["nights"][1]
    assert result.exit_code == 0, result.output + result.stderr
    a, b, wrong, before = nights["a"], nights["b"], nights["wrong"], nights["before"]
    moved_paths = sorted(p for p in before if folder_label(p) == wrong)
    renamed = ["none/" + p.split("/", 1)[1] for p in moved_paths]
    # Only the changed file and the renamed folder's images were explained; the rest was reused.
    assert audit["run"]["explained"] == 1 + len(renamed) and audit["run"]["reused"] == 5 - len(renamed)
    assert f"{1 + len(renamed)} explained now, {5 - len(renamed)} reused" in result.output
    changed = {f["path"]: f for f in audit["findings"]["changed"]}
    assert changed[b] == {**changed[b], "before": before[b], "after": before[a], "file_changed": True,
                          "model_changed": False}
    misclassified = {f["path"]: f for f in audit["findings"]["misclassified"]}
    for old, new in zip(moved_paths, renamed):
        if before[old] == wrong:  # right last night, under its true folder
            assert misclassified[new] == {**misclassified[new], "true": "none", "predicted": wrong}
    assert audit["since_previous"]["new"] == renamed and audit["since_previous"]["removed"] == moved_paths
    assert audit["since_previous"]["models_before"] == audit["since_previous"]["models_now"]
    assert_verified(str(nights["root"] / "night2"), str(nights["source"]))


def test_night_three_finds_the_changed_model_and_fails(nights):
    result, audit = nights["nights"][2]
    second = _predictions(nights["root"] / "night2")
    assert set(_predictions(nights["root"] / "night3").values()) == {"none"}
    assert audit["run"]["reused"] == 0 and audit["run"]["explained"] == 6  # a new model: nothing reusable
    changed = {f["path"] for f in audit["findings"]["changed"]}
    assert changed == {p for p, label in second.items() if label != "none"}
    assert all(f["model_changed"] for f in audit["findings"]["changed"])
    assert audit["since_previous"]["models_before"] != audit["since_previous"]["models_now"]
    expected = [c for c, met in [("changed>3", len(changed) > 3), ("accuracy<0.99", True)] if met]
    assert audit["fail_on"] == ["errors>0", "changed>3", "accuracy<0.99"] and audit["failed"] == expected
    assert result.exit_code == 3, result.output + result.stderr
    assert f"failed: {', '.join(expected)}" in result.stderr
    # Every finding is a row of OUT/findings.parquet, with its kind's fields.
    found = pq.read_table(audit["findings_file"]).to_pylist()
    assert audit["findings_file"] == str(nights["root"] / "night3" / "findings.parquet")
    assert f"every finding: {audit['findings_file']}" in result.output
    assert sorted((f["kind"], f["path"]) for f in found) == sorted(
        (kind, item["path"]) for kind, items in audit["findings"].items() for item in items)
    assert len(found) == sum(audit["counts"][kind] for kind in audit["findings"]) > 0
    assert {f["path"] for f in found if f["kind"] == "changed" and f["model_changed"]} == changed


def test_a_rerun_of_the_same_night_does_no_model_work(nights, shapes_model):
    root = nights["root"]
    result, audit = _audit(nights["source"], root / "night2", shapes_model, "--previous", str(root / "night1"),
                           "--masks", str(nights["masks"]))
    assert result.exit_code == 0, result.output + result.stderr
    assert audit["run"]["explained"] == 0 and audit["run"]["already_done"] == 6
    assert audit["findings"] == nights["nights"][1][1]["findings"]


def test_audit_usage_errors(nights, shapes_model, tmp_path):
    root = nights["root"]
    cases = [
        (["--previous", str(tmp_path)], "'--previous'"),
        (["--previous", str(root / "night1"), "--fail-on", "sometimes"], "'--fail-on'"),
        (["--fail-on", "accuracy>0.5"], "'--fail-on'"),
        (["--label-map", "imagenet-cats-dogs"], "'--label-map'"),
    ]
    for extra, option in cases:
        result, _ = _audit(nights["source"], tmp_path / "out", shapes_model, *extra)
        assert result.exit_code == 2, (extra, result.output, result.stderr)
        assert option in result.stderr and "Traceback" not in result.stderr


def test_nightly_script_audits_against_the_latest_earlier_night(shapes_data, shapes_model, tmp_path):
    """cluster/nightly/nightly-audit.sh for real, two nights running, as cron would start it."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    source, audits = tmp_path / "images", tmp_path / "audits"
    (source / "square").mkdir(parents=True)
    (source / "cat").mkdir()
    shutil.copy(os.path.join(shapes_data["holdout"], "square", "square_0000.png"), source / "square" / "a.png")
    shutil.copy(os.path.join(shapes_data["holdout"], "square", "square_0001.png"), source / "cat" / "b.png")
    (audits / "2026-11-20").mkdir(parents=True)  # a night that failed before writing its audit: not compared with
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_JOB_ADDRESS")}
    env["XAI_BATCH"] = os.path.join(os.path.dirname(sys.executable), "xai-batch")
    runs = []
    for night in ("2026-11-25", "2026-11-26"):
        runs.append(subprocess.run(
            [os.path.join(root, "cluster", "nightly", "nightly-audit.sh"), str(source), str(audits),
             "--checkpoint", shapes_model, *SETTINGS[:-1], "--fail-on", "misclassified"],
            env={**env, "AUDIT_DATE": night}, capture_output=True, text=True, timeout=300))
    first, second = (json.loads((audits / night / "audit.json").read_text()) for night in ("2026-11-25", "2026-11-26"))
    assert first["previous"] is None and second["previous"] == str(audits / "2026-11-25")
    assert second["run"]["reused"] == 2 and second["run"]["explained"] == 0
    # A folder of cats holds a square: misclassified every night, and the scheduler is told with exit 3.
    assert [f["path"] for f in second["findings"]["misclassified"]] == ["cat/b.png"]
    assert [run.returncode for run in runs] == [3, 3], [run.stderr for run in runs]
    assert "failed: misclassified>0" in runs[1].stderr


def test_an_audit_reads_the_checkpoint_and_lists_source_once(shapes_data, shapes_model, tmp_path, monkeypatch):
    """The label check before the explain and the explain itself share one read (an s3:// checkpoint is
    downloaded once, a bucket listed once)."""
    import xai_batch.commands.audit as audit
    import xai_batch.distributed.run as job

    calls = {"resolve_model": 0, "discover_images": 0}

    def counted(name, function):
        def call(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)
        return call

    for module in (job, audit):  # wherever the audit could call them from
        for name in calls:
            if hasattr(module, name):
                monkeypatch.setattr(module, name, counted(name, getattr(module, name)))
    result, document = _audit(shapes_data["holdout"], tmp_path / "night", shapes_model,
                              "--method", "lime,gradcam")
    assert result.exit_code == 0, result.output
    assert calls == {"resolve_model": 1, "discover_images": 1}
    assert document["counts"]["explained"] == 6 and document["methods"] == ["lime", "gradcam"]
    assert [pair["methods"] for pair in document["agreement"]] == [["lime", "gradcam"]]
    assert set(document["quality_by_method"]) == {"lime", "gradcam"}
