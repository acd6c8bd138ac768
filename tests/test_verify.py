"""``xai-batch verify`` finds what is wrong with a manifest."""

import numpy as np
from click.testing import CliRunner

from xai_batch.cli import cli
from xai_batch.manifest import ManifestWriter, encode_mask, encode_segments, new_run_id


def _ok_row(path: str, label: int = 0, **changes) -> dict:
    segments = np.repeat(np.arange(4), 224 * 56).reshape(224, 224)
    row = {
        "path": path, "sha256": "ab" * 32, "status": "ok", "width": 10, "height": 10, "model_id": "resnet18:x",
        "pred_index": label, "pred_name": "a", "pred_prob": 0.9, "topk_index": [label, 1], "topk_prob": [0.9, 0.1],
        "explained_index": label, "seed": 1, "num_samples": 10, "num_segments": 4,
        "segments": encode_segments(segments), "weights": [0.1, -0.2, 0.3, 0.0], "intercept": 0.1, "score": 0.5,
        "local_pred": 0.9, "mask": encode_mask(np.zeros((224, 224), np.uint8)), "config_hash": "h1",
    }
    row.update(changes)
    return row


def _write(out, rows) -> None:
    writer = ManifestWriter(str(out), new_run_id())
    writer.add(rows)
    writer.close()


def test_a_good_manifest_passes(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.png").write_bytes(b"")
    _write(tmp_path / "out", [_ok_row("a.png")])
    result = CliRunner().invoke(cli, ["verify", str(tmp_path / "out"), "--source", str(tmp_path / "src")])
    assert result.exit_code == 0, result.output
    assert result.output == "1 rows for 1 images: 1 explained, 0 errors (0 superseded rows of earlier runs ignored) — OK\n"


def test_every_kind_of_problem_is_reported(tmp_path):
    (tmp_path / "src").mkdir()
    for name in ("a.png", "b.png", "missing.png"):
        (tmp_path / "src" / name).write_bytes(b"")
    _write(tmp_path / "out", [
        _ok_row("a.png"), _ok_row("a.png"),  # two rows for one label
        _ok_row("b.png", weights=[0.1]),  # wrong number of weights
        _ok_row("c.png", mask=b"not a png", config_hash="h2"),  # stray file, broken PNG, second config
        {"path": "d.png", "status": "error", "error": None, "config_hash": "h1"},  # error without a reason
        _ok_row("e.png", method="gradcam", config_hash="g1"),  # Grad-CAM without its heatmap
        _ok_row("e.png", heatmap=encode_mask(np.zeros((224, 224), np.uint8))),  # LIME with one
    ])
    result = CliRunner().invoke(cli, ["verify", str(tmp_path / "out"), "--source", str(tmp_path / "src")])
    assert result.exit_code == 1
    for text in ("a.png: 2 rows for label 0", "b.png (label 0): 1 weights for 4 superpixels",
                 "c.png (label 0): mask PNG does not decode", "lime rows of 2 configurations",
                 "e.png [gradcam] (label 0): a heatmap is Grad-CAM's and only Grad-CAM's",
                 "e.png [lime] (label 0): a heatmap is Grad-CAM's and only Grad-CAM's",
                 "d.png: error row without a one-line reason", "missing.png: image in SOURCE without a row",
                 "c.png: row for a file that is not an image in SOURCE"):
        assert f"problem: {text}" in result.output, result.output
    assert result.output.rstrip().endswith("problem(s)")


def test_methods_are_checked_one_by_one(tmp_path):
    """One image: LIME explained, KernelSHAP failed. Each method has its own configuration hash."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.png").write_bytes(b"")
    _write(tmp_path / "out", [
        _ok_row("a.png"),
        {"path": "a.png", "status": "error", "error": "explaining failed: out of memory", "method": "kernelshap",
         "config_hash": "k1"},
    ])
    result = CliRunner().invoke(cli, ["verify", str(tmp_path / "out"), "--source", str(tmp_path / "src")])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("2 rows for 1 images: 0 explained, 1 errors")


def test_missing_manifest(tmp_path):
    result = CliRunner().invoke(cli, ["verify", str(tmp_path)])
    assert result.exit_code == 1 and "problem: no manifest folder at" in result.output
