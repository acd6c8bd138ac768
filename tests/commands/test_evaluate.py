"""xai-batch evaluate: Ray Data batch prediction over a class-per-folder dataset, on a real local Ray."""

import json
import shutil

import pytest
from click.testing import CliRunner

from helpers import load_model
from xai_batch.cli import cli
from xai_batch.images import load_image
from xai_batch.preprocessing import Preprocessing

pytestmark = pytest.mark.slow


def _evaluate(*args):
    return CliRunner().invoke(cli, ["evaluate", *map(str, args), "--no-progress"])


def _by_hand(checkpoint, folder):
    """Each image's predicted class, from the checkpoint's model in this process."""
    import torch

    from xai_batch.engines import normalise

    model = load_model(checkpoint)
    names = torch.load(checkpoint, weights_only=True)["class_names"]
    frame = Preprocessing(**torch.load(checkpoint, weights_only=True).get("preprocessing", {}))
    predictions = {}
    for path in sorted(folder.rglob("*.png")):
        if path.name.endswith(".mask.pgm"):
            continue
        try:
            pixels = load_image(path.read_bytes(), preprocessing=frame).pixels
        except Exception:
            continue
        with torch.inference_mode():
            logits = model(normalise(pixels, torch.device("cpu"), frame).permute(2, 0, 1)[None])
        predictions[path.relative_to(folder).as_posix()] = names[int(logits.argmax())]
    return predictions


def test_accuracy_confusion_and_wrong_images(ray_session, shapes_data, shapes_model, tmp_path):
    """The held-out shapes, a broken file, and a disc filed as a square: the one wrong image."""
    data = tmp_path / "data"
    shutil.copytree(shapes_data["holdout"], data, ignore=shutil.ignore_patterns("*.mask.pgm"))
    (data / "disc" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    shutil.copy(data / "disc" / "disc_0000.png", data / "square" / "filed_wrong.png")
    result = _evaluate(data, "--checkpoint", shapes_model, "--out", tmp_path / "eval.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "eval.json").read_text())
    expected = _by_hand(shapes_model, data)
    truth = {path: path.split("/")[0] for path in expected}
    assert report["images"] == 8 and report["evaluated"] == 7
    assert [e["path"] for e in report["errors"]] == ["disc/broken.png"]
    assert {w["path"]: w["predicted"] for w in report["wrong"]} == {"square/filed_wrong.png": "disc"}
    assert {p: c for p, c in expected.items() if c != truth[p]} == {"square/filed_wrong.png": "disc"}
    assert report["accuracy"] == pytest.approx(6 / 7)
    assert sum(map(sum, report["confusion"]["matrix"])) == 7
    labels, matrix = report["confusion"]["labels"], report["confusion"]["matrix"]
    assert matrix[labels.index("square")][labels.index("disc")] == 1
    assert report["per_class"]["square"]["images"] == 3
    assert f"accuracy {report['accuracy']:.4f}" in result.output


def test_a_label_map_turns_classes_into_the_folders_labels(ray_session, shapes_data, shapes_model, tmp_path):
    """Folders round/ and angular/; the map says disc is round, square and triangle angular."""
    data = tmp_path / "data"
    for shape, folder in (("disc", "round"), ("square", "angular"), ("triangle", "angular")):
        (data / folder).mkdir(parents=True, exist_ok=True)
        for image in (shutil.os.path.join(shapes_data["holdout"], shape, f"{shape}_000{i}.png") for i in (0, 1)):
            shutil.copy(image, data / folder / shutil.os.path.basename(image))
    names = ("disc", "none", "square", "triangle")
    label_map = tmp_path / "map.csv"
    label_map.write_text("index,label\n" + "".join(
        f"{names.index(n)},{label}\n" for n, label in (("disc", "round"), ("square", "angular"), ("triangle", "angular"))))
    result = _evaluate(data, "--checkpoint", shapes_model, "--label-map", label_map, "--out", tmp_path / "e.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "e.json").read_text())
    expected = _by_hand(shapes_model, data)
    mapped = {p: {"disc": "round", "square": "angular", "triangle": "angular"}.get(c, "other") for p, c in expected.items()}
    assert report["accuracy"] == pytest.approx(sum(mapped[p] == p.split("/")[0] for p in mapped) / 6)
    assert set(report["confusion"]["labels"]) >= {"angular", "round"}


def test_evaluate_usage_errors(shapes_data, shapes_model, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(shutil.os.path.join(shapes_data["holdout"], "disc", "disc_0000.png"), flat / "a.png")
    result = _evaluate(flat, "--checkpoint", shapes_model, "--out", tmp_path / "e.json")
    assert result.exit_code == 2 and "DATA_DIR" in result.output and "class" in result.output
    result = _evaluate(shapes_data["holdout"], "--checkpoint", shapes_model, "--label-map", "imagenet-cats-dogs",
                       "--out", tmp_path / "e.json")
    assert result.exit_code == 2 and "Invalid value for '--label-map'" in result.output, result.output
