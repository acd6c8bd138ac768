"""Hostile inputs, crashes and restarts lose nothing: each fault injected for real."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from faults import MAGENTA
from helpers import assert_verified
from hostile import OK, make_hostile_folder
from xai_batch.cli import cli
from xai_batch.config import ExplainConfig
from xai_batch.manifest import MANIFEST_DIR, read_manifest
from xai_batch.commands import run_explain
from xai_batch.distributed import pipeline
from xai_batch.synthetic import generate_dataset

pytestmark = pytest.mark.slow
TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
XAI_BATCH = os.path.join(os.path.dirname(sys.executable), "xai-batch")


def test_hostile_folder_gives_one_truthful_row_per_image(ray_session, random_checkpoint, tmp_path):
    source = str(tmp_path / "src")
    expect = make_hostile_folder(source, str(tmp_path / "outside"))
    result = CliRunner().invoke(cli, ["explain", source, "--out", str(tmp_path / "out"), "--checkpoint",
                                      random_checkpoint, "--num-samples", "10", "--batch-size", "10", "--no-progress"])
    assert result.exit_code == 0, result.output
    rows = {row["path"]: row for row in read_manifest(str(tmp_path / "out")).to_pylist()}
    assert set(rows) == {path for path, outcome in expect.items() if outcome is not None}
    for path, outcome in expect.items():
        if outcome == OK:
            assert rows[path]["status"] == "ok", (path, rows[path]["error"])
        elif outcome is not None:
            assert rows[path]["status"] == "error", path
            assert rows[path]["error"].startswith(outcome), (path, rows[path]["error"])
            assert "\n" not in rows[path]["error"] and "Traceback" not in rows[path]["error"]
    assert (rows["rotated.jpg"]["width"], rows["rotated.jpg"]["height"]) == (48, 64)
    assert (rows["strip.png"]["width"], rows["strip.png"]["height"]) == (3000, 6)
    assert rows["one-pixel.png"]["num_segments"] >= 1
    assert_verified(str(tmp_path / "out"), source)


def _images(folder, per_class: int, seed: int = 5) -> str:
    generate_dataset(str(folder), per_class=per_class, seed=seed)
    for mask in folder.rglob("*.mask.pgm"):
        mask.unlink()
    return str(folder)


# Run a command with SIGINT at its default, so Python turns it into KeyboardInterrupt: a shell
# starts background jobs with SIGINT ignored, and an ignored signal stays ignored across exec.
_WITH_CTRL_C = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"


def _explain_process(source: str, out: str, checkpoint: str, *extra: str) -> subprocess.Popen:
    """``xai-batch explain`` in its own process group (so its embedded Ray can be cleaned up)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.Popen(
        [sys.executable, "-c", _WITH_CTRL_C, XAI_BATCH, "explain", source, "--out", out, "--checkpoint", checkpoint,
         "--num-samples", "20", "--batch-size", "20", *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )


def _wait_for_a_part_file(process: subprocess.Popen, out: str) -> None:
    """Return once the running job has written a manifest part (rows are on disk)."""
    deadline = time.monotonic() + 240
    parts = os.path.join(out, MANIFEST_DIR)
    while not (os.path.isdir(parts) and any(p.endswith(".parquet") and not p.startswith(".")
                                               for p in os.listdir(parts))):
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "no part file was written"
        time.sleep(0.2)


def _cleanup(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)


def test_sigkilled_driver_resumes_without_duplicates(random_checkpoint, tmp_path):
    source = _images(tmp_path / "src", per_class=3)  # 12 images: the kill comes after the first part (2 s)
    images = 12
    out = str(tmp_path / "out")
    first = _explain_process(source, out, random_checkpoint, "--no-progress", "--flush-seconds", "2")
    try:
        _wait_for_a_part_file(first, out)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        _cleanup(first)
    before = read_manifest(out)
    done = set(before.column("path").to_pylist())
    assert 0 < len(done) < images
    assert json.loads(open(os.path.join(out, "job.json")).read())["runs"][0]["state"] == "running"  # killed

    second = subprocess.run([XAI_BATCH, "explain", source, "--out", out, "--checkpoint", random_checkpoint,
                             "--num-samples", "20", "--batch-size", "20", "--no-progress"],
                            capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    assert f"{images} images: {images - len(done)} explained, 0 errors, {len(done)} already done" in second.stdout
    after = read_manifest(out).to_pylist()
    assert len(after) == images and len({row["path"] for row in after}) == images
    kept = {row["path"]: row for row in before.to_pylist()}
    for row in after:  # finished rows were kept, not redone
        if row["path"] in kept:
            assert row["run_id"] == kept[row["path"]]["run_id"]
    record = json.loads(open(os.path.join(out, "job.json")).read())
    assert [run["state"] for run in record["runs"]] == ["running", "completed"]
    assert record["runs"][1]["counts"]["skipped"] == len(done)
    assert record["counts"] == {"images": images, "ok": images, "error": 0, "rows": images}
    assert_verified(out, source)


def test_ctrl_c_keeps_finished_rows_and_records_the_interruption(random_checkpoint, tmp_path):
    source = _images(tmp_path / "src", per_class=4)
    out = str(tmp_path / "out")
    # 200 samples an image: slow enough that rows are on disk well before the job could end
    process = _explain_process(source, out, random_checkpoint, "--no-progress", "--flush-seconds", "1",
                               "--num-samples", "200")
    try:
        _wait_for_a_part_file(process, out)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        _cleanup(process)
    assert process.returncode == 130, (stdout + stderr).decode()
    assert "interrupted: finished images are kept" in stderr.decode()
    record = json.loads(open(os.path.join(out, "job.json")).read())
    run = record["runs"][-1]
    assert run["state"] == "interrupted" and record["state"] == "interrupted"
    kept = read_manifest(out)
    assert kept.num_rows == run["counts"]["ok"] >= 1
    assert_verified(out)


def test_changed_files_are_redone_and_other_configs_refused(ray_session, random_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "STAT_PATHS", 1)  # unchanged files are passed over a file a check here
    source = tmp_path / "src"
    source.mkdir()
    for name, seed in (("a.png", 1), ("b.png", 2)):
        Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 40, 3), np.uint8)).save(source / name)
    out = str(tmp_path / "out")

    def explain(*extra):
        return CliRunner().invoke(cli, ["explain", str(source), "--out", out, "--checkpoint", random_checkpoint,
                                        "--num-samples", "12", "--batch-size", "12", "--no-progress", *extra])

    assert explain().exit_code == 0
    first = {row["path"]: row for row in read_manifest(out).to_pylist()}
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(source / "b.png")
    (source / "c.png").write_bytes(b"not yet an image")
    second = explain()
    assert "3 images: 1 explained, 1 errors, 1 already done (1 unread" in second.output, second.output
    rows = {row["path"]: row for row in read_manifest(out).to_pylist()}
    assert rows["a.png"] == first["a.png"]
    assert rows["b.png"]["sha256"] != first["b.png"]["sha256"] and rows["b.png"]["run_id"] > first["b.png"]["run_id"]
    assert read_manifest(out, current=False).num_rows == 4  # the old b.png row is superseded, not deleted
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(source / "c.png")
    third = explain()
    assert "3 images: 1 explained, 0 errors, 2 already done" in third.output  # error rows are retried
    assert_verified(out, str(source))

    # Unchanged is decided by size and modification time: an edit that kept both is not even read ...
    rows = {row["path"]: row for row in read_manifest(out).to_pylist()}
    before = os.stat(source / "a.png")
    assert (rows["a.png"]["size"], rows["a.png"]["mtime_ns"]) == (before.st_size, before.st_mtime_ns)
    edited = io.BytesIO()
    Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(edited, format="PNG")  # smaller: pad it after IEND
    (source / "a.png").write_bytes(edited.getvalue().ljust(before.st_size, b"\0"))
    os.utime(source / "a.png", ns=(before.st_atime_ns, before.st_mtime_ns))
    assert "3 images: 0 explained, 0 errors, 3 already done (3 unread: size and time unchanged)" in explain().output
    assert read_manifest(out).to_pylist() == list(rows.values())
    # ... until --verify-content reads and hashes every file
    verified = explain("--verify-content")
    assert "3 images: 1 explained, 0 errors, 2 already done; " in verified.output, verified.output  # none unread
    assert read_manifest(out).to_pylist()[0]["sha256"] == hashlib.sha256((source / "a.png").read_bytes()).hexdigest()

    clash = explain("--num-samples", "14")
    assert clash.exit_code == 2
    assert "holds results of another configuration" in clash.output and "--overwrite" in clash.output
    runs_before = len(json.loads((tmp_path / "out" / "job.json").read_text())["runs"])
    (tmp_path / "out" / "manifest" / "_README.md").write_text("what these runs are")  # issue 31, finding 3
    refused = explain("--num-samples", "14", "--overwrite")
    assert refused.exit_code == 2 and "--overwrite deletes only the manifest's own part files" in refused.output
    assert "_README.md" in refused.output and (tmp_path / "out" / "manifest" / "_README.md").exists()
    (tmp_path / "out" / "manifest" / "_README.md").rename(tmp_path / "out" / "README.md")  # beside it is fine
    fresh = explain("--num-samples", "14", "--overwrite")
    assert fresh.exit_code == 0 and "3 images: 3 explained" in fresh.output
    assert read_manifest(out, current=False).num_rows == 3
    runs = json.loads((tmp_path / "out" / "job.json").read_text())["runs"]
    assert len(runs) == runs_before + 1 and runs[-1]["overwrite"]  # the record keeps the runs before
    assert (tmp_path / "out" / "README.md").read_text() == "what these runs are"
    assert_verified(out, str(source))


def test_reuse_never_hides_a_newer_error_row(ray_session, random_checkpoint, tmp_path):
    """An image whose last outcome in --out is an error is retried, not copied from --reuse: the copy
    (with its older run id) would leave the error current and the image counted done for ever."""
    source = tmp_path / "src"
    source.mkdir()
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (40, 40, 3), np.uint8)).save(source / "b.png")
    good = (source / "b.png").read_bytes()
    old, out = str(tmp_path / "old"), str(tmp_path / "out")

    def explain(into: str, *extra: str) -> str:
        result = CliRunner().invoke(cli, ["explain", str(source), "--out", into, "--checkpoint", random_checkpoint,
                                          "--num-samples", "8", "--batch-size", "8", "--no-progress", *extra])
        assert result.exit_code == 0, result.output
        return result.output

    explain(old)
    (source / "b.png").write_bytes(good[:60])  # tonight b.png could not be read whole
    explain(out)
    (error,) = read_manifest(out).to_pylist()
    assert error["status"] == "error"
    (source / "b.png").write_bytes(good)  # and now it can: the same bytes as last night's
    assert "1 images: 1 explained, 0 errors, 0 already done" in explain(out, "--reuse", old)
    (row,) = read_manifest(out).to_pylist()
    assert row["status"] == "ok" and row["run_id"] > error["run_id"]
    assert read_manifest(out, current=False).num_rows == 2  # the error and its retry; nothing copied


def test_a_failing_writer_stops_the_run_at_once_and_keeps_what_was_written(ray_session, shapes_data, shapes_model,
                                                                            tmp_path):
    """When the manifest can no longer take rows (a full disk; here its folder turned into a file) the run
    stops with the reason at the next image, instead of buffering rows it will lose at the end."""
    from xai_batch.errors import XaiBatchError

    out = tmp_path / "out"
    config = ExplainConfig(source=shapes_data["holdout"], out=str(out), checkpoint=shapes_model, num_samples=200,
                           flush_seconds=0.05)
    outcome = {}

    def run() -> None:
        try:
            outcome["result"] = run_explain(config, progress=False)
        except XaiBatchError as exc:
            outcome["error"] = exc

    job = threading.Thread(target=run)
    job.start()
    deadline = time.monotonic() + 300
    while not (out / MANIFEST_DIR).is_dir() or not os.listdir(out / MANIFEST_DIR):
        assert time.monotonic() < deadline and job.is_alive(), "no part was written"
        time.sleep(0.05)
    (out / MANIFEST_DIR).rename(out / "kept")
    (out / MANIFEST_DIR).write_text("no longer a folder")
    job.join(timeout=300)
    assert "result" not in outcome, "the run went on to the end"
    assert str(outcome["error"]).startswith("writing the manifest failed: ")
    parts = [name for name in os.listdir(out / "kept") if name.endswith(".parquet")]
    assert parts and all(pq.read_table(out / "kept" / name).num_rows for name in parts)  # written, and kept
    run = json.loads((out / "job.json").read_text())["runs"][-1]
    assert run["state"] == "failed" and "writing the manifest failed" in run["error"]
    assert run["counts"]["ok"] < 6


def test_a_killed_replica_is_replaced_and_its_work_redone(ray_session, three_shapes, shapes_model, tmp_path):
    config = ExplainConfig(source=three_shapes, out=str(tmp_path / "out"), checkpoint=shapes_model,
                           num_samples=96, batch_size=16, seed=7)
    outcome = {}
    job = threading.Thread(target=lambda: outcome.update(result=run_explain(config, progress=False)))
    job.start()
    try:
        deadline = time.monotonic() + 120
        while not (names := [n for n in ray_session.util.list_named_actors() if n.startswith("xai-batch-")]):
            assert time.monotonic() < deadline, "no replica came up"
            time.sleep(0.2)
        replica = ray_session.get_actor(names[0])
        pid = ray_session.get(replica.describe.remote())["pid"]
        time.sleep(3)  # let it get into its work
        os.kill(pid, signal.SIGKILL)
    finally:
        job.join(timeout=600)
    result = outcome["result"]
    assert (result.ok, result.errors) == (3, 0)
    record = json.loads(open(os.path.join(config.out, "job.json")).read())
    assert record["runs"][-1]["ray"]["replicas_replaced"] == 1
    assert_verified(config.out, three_shapes)
    undisturbed = run_explain(dataclasses.replace(config, out=str(tmp_path / "calm")), progress=False)
    assert undisturbed.ok == 3
    for a, b in zip(read_manifest(config.out).to_pylist(), read_manifest(str(tmp_path / "calm")).to_pylist()):
        assert a["mask"] == b["mask"]  # redone work gives the same explanations
        np.testing.assert_allclose(a["weights"], b["weights"], atol=1e-6)


def test_an_image_that_keeps_crashing_workers_becomes_an_error_row(random_checkpoint, shapes_data, tmp_path):
    """Whichever stages run. In the replica's (on its own folder: decoding is the same task in both) the
    images of a call that killed a replica are resent one a call, and the one that kills it again is the
    error row."""
    source = tmp_path / "src"
    shutil.copytree(os.path.join(shapes_data["holdout"], "disc"), source / "disc", ignore=shutil.ignore_patterns("*.pgm"))
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(source / "poison-decode.png")
    Image.new("RGB", (64, 64), MAGENTA).save(source / "magenta.png")
    replica_source = tmp_path / "src-replica"
    replica_source.mkdir()
    for name in ("disc/disc_0000.png", "magenta.png"):
        shutil.copy(source / name, replica_source / os.path.basename(name))
    out = str(tmp_path / "out")
    driver = textwrap.dedent(f"""
        import logging, ray
        from xai_batch import ExplainConfig, run_explain
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.ERROR,
                 runtime_env={{"worker_process_setup_hook": "faults.inject", "env_vars": {{"PYTHONPATH": {TESTS!r}}}}})
        for stages, source in (("workers", {str(source)!r}), ("replica", {str(replica_source)!r})):
            result = run_explain(ExplainConfig(source=source, out={out!r} + "-" + stages,
                                               checkpoint={random_checkpoint!r}, num_samples=20, batch_size=10,
                                               stages=stages), progress=False)
            print("RESULT", stages, result.ok, result.errors)
    """)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = TESTS
    process = subprocess.Popen([sys.executable, "-c", driver], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=600)
    finally:
        _cleanup(process)
    assert process.returncode == 0, stderr[-3000:]
    assert "RESULT workers 2 2" in stdout and "RESULT replica 1 1" in stdout
    rows = {row["path"]: row for row in read_manifest(f"{out}-workers").to_pylist()}
    assert rows["poison-decode.png"]["error"] == "decoding failed: the worker process died 3 times on this image"
    assert rows["magenta.png"]["error"] == "explaining failed: the model replica died 3 times on this image"
    assert {rows[p]["status"] for p in ("disc/disc_0000.png", "disc/disc_0001.png")} == {"ok"}
    assert_verified(f"{out}-workers", str(source))
    rows = {row["path"]: row for row in read_manifest(f"{out}-replica").to_pylist()}
    assert rows["magenta.png"]["error"] == "explaining failed: the model replica died 3 times on this image"
    assert rows["disc_0000.png"]["status"] == "ok"
    assert json.loads(open(f"{out}-replica/job.json").read())["runs"][-1]["ray"]["replicas_replaced"] == 3


def test_decodes_in_flight_are_bounded_by_memory_as_well_as_cpus(ray_session):
    """A decoding task reserves what an image within --max-pixels may take, so Ray runs no more of them on a
    node than its memory holds; never more than the largest node has, so a task is never unschedulable."""
    import ray

    from xai_batch.distributed.pipeline import decoding_memory
    from xai_batch.images import MAX_PIXELS_LIMIT, decode_memory

    largest = max(node["Resources"].get("memory", 0) for node in ray.nodes() if node["Alive"])
    # 12 bytes a pixel decoded, and the file read: at most 8 bytes a pixel and 16 MB of metadata
    assert decoding_memory(1_000_000) == decode_memory(1_000_000) == 12_000_000 + 8_000_000 + (16 << 20)
    assert decoding_memory(MAX_PIXELS_LIMIT) == min(decode_memory(MAX_PIXELS_LIMIT), int(largest))
    fits = max(1, int(largest // decoding_memory(MAX_PIXELS_LIMIT)))

    @ray.remote(memory=decoding_memory(MAX_PIXELS_LIMIT), num_cpus=0)
    def held(seconds):
        started = time.monotonic()
        time.sleep(seconds)
        return started, time.monotonic()

    spans = sorted(ray.get([held.remote(0.5) for _ in range(fits + 1)]))
    assert spans[fits][0] >= min(end for _, end in spans[:fits]) - 0.05  # one more than fit waited its turn
