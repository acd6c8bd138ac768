"""End to end on a real local Ray: exactness against lime and reproducibility."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from lime.lime_image import LimeImageExplainer

from helpers import SHAPE_CLASSES, SHAPES_FRAME, assert_rows_are_limes, assert_verified, load_model
from xai_batch.config import ExplainConfig
from xai_batch.images import load_image
from xai_batch.preprocessing import Preprocessing
from xai_batch.manifest import read_manifest
from xai_batch.reference import seed_batch_predict
from xai_batch.synthetic import mask_path
from xai_batch.commands import run_explain

pytestmark = pytest.mark.slow


_ON_CUDA = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("engine, stages, actors, per_call", [
    ("torch", "workers", 1, None), ("onnxruntime", "workers", 2, None),
    ("torch", "replica", 1, 4), ("torch", "replica", 2, 1), ("onnxruntime", "replica", 2, 2),
    pytest.param("torch", "auto", 1, None, marks=_ON_CUDA, id="cuda-auto-is-the-replica"),
])
def test_fp32_manifest_equals_lime_on_real_photos(ray_session, photos, random_checkpoint, tmp_path, monkeypatch,
                                                  engine, stages, actors, per_call):
    """Every CPU engine's LIME is lime's own (0.2.0.1), with the seed's torch batch_predict as the model,
    whatever executes it: the workers' stage (its calls of ``batch_size`` sample rows spread over one or two
    replicas) or the replica's (whole images in calls of 1, 2 or 4, on one or two replicas); on CUDA,
    ``auto``'s replica with the torch port of quickshift and the surrogate."""
    if per_call is not None:  # how the driver groups decoded images into a replica's calls
        monkeypatch.setattr("xai_batch.distributed.replica_pipeline.IMAGES_PER_CPU_CALL", per_call)
    num_samples = 60  # two calls of the batch size below, the second short
    config = ExplainConfig(source=photos, out=str(tmp_path / "run"), checkpoint=random_checkpoint,
                           num_samples=num_samples, seed=42, batch_size=50, engine=engine, stages=stages,
                           actors=actors)
    result = run_explain(config, progress=False)
    assert (result.images, result.ok, result.errors, result.rows) == (3, 3, 0, 3)
    table = read_manifest(config.out)
    assert_rows_are_limes(table, photos, random_checkpoint, num_samples)
    assert_verified(config.out, photos)
    record = json.loads((tmp_path / "run" / "job.json").read_text())
    assert record["state"] == "completed"
    assert record["counts"] == {"images": 3, "ok": 3, "error": 0, "rows": 3}
    assert record["versions"]["lime"] == "0.2.0.1" and record["config"]["num_samples"] == num_samples
    assert record["engine"].split()[0] == engine and set(table.column("engine").to_pylist()) == {record["engine"]}
    ran = record["runs"][-1]
    assert ran["stages"]["ran_on"] == ("replica" if stages == "auto" else stages)  # auto: on CUDA
    assert len(ran["ray"]["replicas"]) == actors
    if per_call is not None:  # every image explained in a replica call
        assert sum(ran["ray"]["images_by_node"].values()) == 3


def _explain(source, out, checkpoint, num_samples=96, **options):
    config = ExplainConfig(source=source, out=out, checkpoint=checkpoint, num_samples=num_samples, seed=7, **options)
    run_explain(config, progress=False)
    assert_verified(out, source)
    return read_manifest(out).to_pylist()


def test_same_manifest_whatever_the_stages(ray_session, shapes_data, shapes_model, tmp_path):
    """The replica's stage (the torch port of quickshift, every step in the replica) writes the workers'
    manifest bit for bit: every method, two labels, a quality measure (stability: the deletion curves take
    the same path and cost far more model time), the localisation columns, and an error row; only when
    each row was written and how long it took differ. (One image, as the model's work is most of the cost:
    the photos' test checks the segments of more, and the torch port's own test hundreds.)"""
    source = tmp_path / "data"
    source.mkdir()
    image = f"{shapes_data['holdout']}/disc/disc_0001.png"
    shutil.copy(image, source / "disc.png")
    shutil.copy(mask_path(image), mask_path(str(source / "disc.png")))
    (source / "broken.png").write_text("this is not a PNG")
    manifests = {}
    for stages in ("workers", "replica"):
        config = ExplainConfig(source=str(source), out=str(tmp_path / stages), checkpoint=shapes_model,
                               methods=("lime", "kernelshap", "gradcam"), top_labels=2, num_samples=16,
                               batch_size=10, seed=5, stability=True, masks=str(source), stages=stages)
        result = run_explain(config, progress=False)
        assert (result.ok, result.errors) == (1, 1)
        rows = read_manifest(config.out).to_pylist()
        assert all(row["seconds"] > 0 and row["stability"] is not None and row["on_object"] is not None
                   for row in rows if row["status"] == "ok" and row["method"] != "gradcam")
        manifests[stages] = [{k: v for k, v in row.items() if k not in ("run_id", "seconds")} for row in rows]
        ran = json.loads((tmp_path / stages / "job.json").read_text())["runs"][-1]["stages"]
        assert ran["ran_on"] == stages and ran["settled_pixels"] == 0 and ran["images_per_device_call"] is None
        assert ran["busy_seconds"]["segmentation"] > 0 and ran["busy_seconds"]["quality"] > 0
    assert len(manifests["replica"]) == len(manifests["workers"]) == 9  # 3 methods: disc's 2 labels, broken.png
    assert manifests["replica"] == manifests["workers"]
    assert_verified(str(tmp_path / "replica"), str(source))


def test_several_labels_and_a_bad_file(ray_session, shapes_data, shapes_model, tmp_path):
    """Two labels, two explanations: the shapes model's disc and "none" (its runner-up) answer the
    same superpixels in opposite ways, since hiding the disc is what makes the picture "none"."""
    source = tmp_path / "mixed"
    source.mkdir()
    (source / "disc.png").write_bytes(open(os.path.join(shapes_data["holdout"], "disc", "disc_0000.png"), "rb").read())
    (source / "broken.png").write_text("this is not a PNG")
    (source / "readme.txt").write_text("ignored")
    rows = _explain(str(source), str(tmp_path / "out"), shapes_model, top_labels=2)
    assert [(r["path"], r["status"]) for r in rows] == [("broken.png", "error"), ("disc.png", "ok"), ("disc.png", "ok")]
    assert rows[0]["error"].startswith("not an image: ") and rows[0]["weights"] is None
    disc, none = sorted(rows[1:], key=lambda r: -r["explained_prob"])
    assert [disc["explained_index"], none["explained_index"]] == disc["topk_index"][:2] == none["topk_index"][:2]
    assert (disc["explained_name"], none["explained_name"]) == ("disc", "none")
    assert disc["explained_index"] == disc["pred_index"] and disc["pred_name"] == SHAPE_CLASSES[disc["pred_index"]]
    assert disc["segments"] == none["segments"]
    assert np.corrcoef(disc["weights"], none["weights"])[0, 1] < -0.5, (disc["weights"], none["weights"])
    top = int(np.argmax(disc["weights"]))
    assert disc["weights"][top] > 0 > none["weights"][top]


def test_uris_for_source_out_and_checkpoint(ray_session, shapes_data, shapes_model, tmp_path):
    """file:// URIs take the code path of s3:// or gs://: pyarrow.fs listing, reading and writing."""
    from click.testing import CliRunner

    from xai_batch.cli import cli

    source = f"file://{shapes_data['holdout']}"
    out = f"file://{tmp_path}/run"
    result = CliRunner().invoke(cli, ["explain", source, "--out", out, "--checkpoint", f"file://{shapes_model}",
                                      "--num-samples", "16", "--batch-size", "16", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert f"manifest: {out}/manifest" in result.output
    table = read_manifest(out)
    assert table.num_rows == 6 and set(table.column("status").to_pylist()) == {"ok"}
    assert read_manifest(str(tmp_path / "run")).equals(table)  # the same files, read as a local path
    assert_verified(out, source)
    assert json.loads((tmp_path / "run" / "job.json").read_text())["config"]["source"] == source


def test_a_listing_of_a_folders_images_explains_into_the_folders_manifest(ray_session, three_shapes, shapes_model,
                                                                          tmp_path):
    """SOURCE as a file of paths (what an inventory gives): the same rows as the folder, and ``verify
    --source LIST`` checks against the listing; listed paths that are not there become error rows."""
    from click.testing import CliRunner

    from xai_batch.cli import cli

    source = tmp_path / "data"
    shutil.copytree(three_shapes, source)
    (source / "list.txt").write_text("".join(f"{name}\n" for name in sorted(os.listdir(three_shapes))))
    folder = _explain(str(source), str(tmp_path / "folder"), shapes_model, num_samples=16)
    listed = _explain(str(source / "list.txt"), str(tmp_path / "listed"), shapes_model, num_samples=16)
    assert len(folder) == 3
    assert [{k: v for k, v in row.items() if k not in ("run_id", "seconds")} for row in listed] == \
        [{k: v for k, v in row.items() if k not in ("run_id", "seconds")} for row in folder]
    (source / "list.txt").write_text("disc.png\ngone.png\n")
    verified = CliRunner().invoke(cli, ["verify", str(tmp_path / "listed"), "--source", str(source / "list.txt")])
    assert verified.exit_code == 1
    assert "problem: gone.png: image in SOURCE without a row" in verified.output
    assert "row for a file that is not an image in SOURCE" in verified.output
    rows = _explain_unverified(str(source / "list.txt"), str(tmp_path / "gone"), shapes_model, num_samples=16)
    assert [(row["path"], row["status"]) for row in rows] == [("disc.png", "ok"), ("gone.png", "error")]


def _explain_unverified(source, out, checkpoint, num_samples=96):
    run_explain(ExplainConfig(source=source, out=out, checkpoint=checkpoint, num_samples=num_samples, seed=7),
                progress=False)
    return read_manifest(out).to_pylist()


@pytest.mark.parametrize("stages", ["workers", "replica"])
def test_auto_samples_stop_at_limes_own_answer(ray_session, three_shapes, shapes_model, tmp_path, stages):
    """``--num-samples auto`` stops each image at a round of its schedule, and its answer there is
    lime's for that many samples: the rows used are a prefix of the full sample matrix."""
    from xai_batch.maths.convergence import sample_schedule

    config = ExplainConfig(source=three_shapes, out=str(tmp_path / "auto"), checkpoint=shapes_model,
                           num_samples="auto", max_samples=300, num_features=1, seed=3, batch_size=100,
                           stages=stages)
    result = run_explain(config, progress=False)
    assert (result.ok, result.errors) == (3, 0)
    assert_verified(config.out, three_shapes)
    rows = read_manifest(config.out).to_pylist()
    assert all(row["num_samples"] in sample_schedule(300) for row in rows)
    row = min(rows, key=lambda row: row["num_samples"])
    assert row["num_samples"] < 300  # the shapes model's top superpixel settles early on some image
    with open(os.path.join(three_shapes, row["path"]), "rb") as handle:
        image = load_image(handle.read(), preprocessing=Preprocessing(**SHAPES_FRAME)).pixels
    lime = LimeImageExplainer(random_state=row["seed"]).explain_instance(
        image, seed_batch_predict(load_model(shapes_model)), top_labels=1, hide_color=0,
        num_samples=row["num_samples"], random_seed=row["seed"],
    )
    expected = np.zeros(row["num_segments"])
    for segment, weight in lime.local_exp[row["explained_index"]]:
        expected[segment] = weight
    np.testing.assert_allclose(row["weights"], expected, atol=1e-4, rtol=0)
    record = json.loads((tmp_path / "auto" / "job.json").read_text())
    assert record["config"]["num_samples"] == "auto" and record["config"]["max_samples"] == 300


def test_job_json_says_where_the_time_went(ray_session, three_shapes, shapes_model, tmp_path):
    """Busy seconds by stage and the replica's share waiting, on one image, moving the right way: more
    samples (and the faithfulness curves) grow the model's share, --faithfulness gives the quality
    stage its work."""
    from xai_batch.explaining.steps import STEPS

    one = tmp_path / "one"
    one.mkdir()
    (one / "disc.png").write_bytes(open(os.path.join(three_shapes, "disc.png"), "rb").read())

    def stages(name: str, **options) -> dict:
        config = ExplainConfig(source=str(one), out=str(tmp_path / name), checkpoint=shapes_model, **options)
        assert run_explain(config, progress=False).ok == 1
        return json.loads((tmp_path / name / "job.json").read_text())["runs"][-1]["stages"]

    def share(run: dict, stage: str) -> float:
        return run["busy_seconds"][stage] / sum(run["busy_seconds"].values())

    few, more = stages("few", num_samples=20), stages("more", num_samples=160, faithfulness=True)
    for run in (few, more):
        assert set(run["busy_seconds"]) == set(STEPS)
        assert len(run["replica_waiting"]) == 1 and 0 <= run["replica_waiting"][0] < 1
    assert all(few["busy_seconds"][step] > 0 for step in STEPS if step != "quality")
    assert share(more, "model") > share(few, "model")
    assert few["busy_seconds"]["quality"] == 0 < more["busy_seconds"]["quality"]
    assert more["replica_waiting"][0] < few["replica_waiting"][0]  # more model work per image: less waiting
