import json
import os
import re
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from xai_batch.manifest import (
    SCHEMA,
    ManifestWriter,
    decode_mask,
    decode_segments,
    encode_mask,
    encode_segments,
    new_run_id,
    read_manifest,
)


def test_pngs_round_trip_with_the_documented_formats():
    segments = np.arange(224 * 224).reshape(224, 224) % 300
    mask = (np.arange(224 * 224).reshape(224, 224) % 3).astype(np.uint8)
    from io import BytesIO
    from PIL import Image

    assert np.array_equal(decode_segments(encode_segments(segments)), segments)
    assert Image.open(BytesIO(encode_segments(segments))).mode == "I;16"
    assert np.array_equal(decode_mask(encode_mask(mask)), mask)
    assert Image.open(BytesIO(encode_mask(mask))).mode == "L"


def _row(path: str) -> dict:
    return {"path": path, "status": "error", "error": "not an image: x", "explained_index": None}


def test_writer_flushes_parts_and_reader_ignores_leftover_temporary_files(tmp_path):
    writer = ManifestWriter(str(tmp_path), new_run_id(), rows_per_part=2)
    writer.add([_row("b.png")])
    assert os.listdir(tmp_path / "manifest") == []
    writer.add([_row("a.png")])
    assert len(os.listdir(tmp_path / "manifest")) == 1  # written as soon as a part is full
    writer.add([_row("c.png")])
    writer.close()
    (tmp_path / "manifest" / ".tmp-killed.parquet").write_bytes(b"half a file")
    table = read_manifest(str(tmp_path))
    assert table.schema == SCHEMA
    assert table.column("path").to_pylist() == ["a.png", "b.png", "c.png"]
    parts = sorted(p for p in os.listdir(tmp_path / "manifest") if not p.startswith("."))
    assert len(parts) == 2 and all(pq.read_schema(tmp_path / "manifest" / p) == SCHEMA for p in parts)
    assert oct(os.stat(tmp_path / "manifest" / parts[0]).st_mode & 0o777) != "0o600"


def test_the_latest_run_supersedes_a_paths_earlier_rows(tmp_path):
    first, second = new_run_id(), new_run_id()
    assert first < second
    early = ManifestWriter(str(tmp_path), first)
    early.add([_row("a.png"), _row("b.png")])
    early.close()
    late = ManifestWriter(str(tmp_path), second)
    late.add([{**_row("b.png"), "error": "truncated PNG: image file is truncated"}])
    late.close()
    current = read_manifest(str(tmp_path)).to_pylist()
    assert [(r["path"], r["run_id"]) for r in current] == [("a.png", first), ("b.png", second)]
    assert current[1]["error"].startswith("truncated PNG")
    assert read_manifest(str(tmp_path), current=False).num_rows == 3


def test_empty_output_reads_as_an_empty_table(tmp_path):
    assert read_manifest(str(tmp_path)).num_rows == 0


def test_a_projected_read_is_the_full_reads_columns(tmp_path):
    for rows in ([_row("a.png"), _row("b.png")], [{**_row("b.png"), "error": "again"}]):
        writer = ManifestWriter(str(tmp_path), new_run_id())
        writer.add(rows)
        writer.close()
    for current in (True, False):
        full = read_manifest(str(tmp_path), current=current)
        projected = read_manifest(str(tmp_path), current=current, columns=["status", "path", "error"])
        assert projected.column_names == ["status", "path", "error"]
        assert projected.equals(full.select(["status", "path", "error"]))
    assert read_manifest(str(tmp_path / "nothing"), columns=["path"]).column_names == ["path"]


def test_a_damaged_part_is_named_in_one_line_and_the_cli_prints_no_traceback(tmp_path):
    """A crash or a full disk can leave a zero-byte or truncated part: every reader names it."""
    from click.testing import CliRunner

    from xai_batch.cli import cli
    from xai_batch.manifest import ManifestError

    writer = ManifestWriter(str(tmp_path), new_run_id())
    writer.add([_row("a.png")])
    writer.close()
    (good,) = os.listdir(tmp_path / "manifest")
    (tmp_path / "manifest" / "part-empty.parquet").write_bytes(b"")
    (tmp_path / "manifest" / "part-cut.parquet").write_bytes((tmp_path / "manifest" / good).read_bytes()[:100])
    with pytest.raises(ManifestError) as raised:
        read_manifest(str(tmp_path))
    message = str(raised.value)
    assert "part-cut.parquet, part-empty.parquet" in message and good not in message
    assert "xai-batch verify --repair sets it aside" in message and "\n" not in message
    result = CliRunner().invoke(cli, ["render", str(tmp_path), "--to", str(tmp_path / "pictures")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "damaged manifest parts part-cut.parquet, part-empty.parquet" in result.output
    verified = CliRunner().invoke(cli, ["verify", str(tmp_path)])  # verify names each part's problem itself
    assert verified.exit_code == 1 and "problem: part-empty.parquet: not a readable Parquet file" in verified.output


def test_a_damaged_job_record_is_an_error_not_an_empty_history(tmp_path):
    from xai_batch.errors import XaiBatchError
    from xai_batch.manifest import load_job_record

    assert load_job_record(str(tmp_path)) == {}
    (tmp_path / "job.json").write_bytes(b"")
    with pytest.raises(XaiBatchError, match=r"job.json is damaged \(0 bytes, not a JSON record"):
        load_job_record(str(tmp_path))
    (tmp_path / "job.json").write_text('{"runs": [')
    with pytest.raises(XaiBatchError, match="move it aside"):
        load_job_record(str(tmp_path))


def test_a_second_run_into_a_held_output_is_refused_naming_the_first(tmp_path, random_checkpoint):
    """Two runs into one --out would mix their configurations or delete each other's parts."""
    import socket

    from click.testing import CliRunner

    from xai_batch.cli import cli
    from xai_batch.manifest.lock import LOCK_FILE, OutputInUse, OutputLock

    out = str(tmp_path / "out")
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.png").write_bytes(b"")
    with OutputLock(out, "run-a"):
        with pytest.raises(OutputInUse, match=rf"in use by another run \(run run-a, process {os.getpid()} on "
                                              rf"{socket.gethostname()}, its lease renewed 0 s ago\)"):
            OutputLock(out, "run-b").__enter__()
        result = CliRunner().invoke(cli, ["explain", str(source), "--out", out, "--checkpoint", random_checkpoint])
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert f"Error: {out} is in use by another run (run run-a" in result.output
        assert not (tmp_path / "out" / "job.json").exists()  # refused before anything was written
    assert not (tmp_path / "out" / LOCK_FILE).exists()  # given up by the run that held it
    with OutputLock(out, "run-b"):
        assert json.loads((tmp_path / "out" / LOCK_FILE).read_text())["run_id"] == "run-b"


def test_a_gone_holders_lease_is_taken_over_and_a_live_ones_is_not(tmp_path):
    import socket
    import subprocess
    import time

    from xai_batch.manifest.lock import LOCK_FILE, STALE_SECONDS, OutputInUse, OutputLock

    (tmp_path / "out").mkdir()
    lease = tmp_path / "out" / LOCK_FILE
    ended = subprocess.Popen(["true"])
    ended.wait()
    here, now = socket.gethostname(), time.time()
    for holder, age, taken in [
        ({"host": here, "pid": ended.pid, "run_id": "killed", "renewed": now}, 0, True),  # its process is gone
        ({"host": "elsewhere", "pid": 1, "run_id": "lost", "renewed": now}, 2 * STALE_SECONDS, True),  # not renewed
        ({"host": "elsewhere", "pid": 1, "run_id": "live", "renewed": now}, 0, False),
        # the holder's clock says nothing: a skewed one neither keeps a dead lease nor ages a live one
        ({"host": "elsewhere", "pid": 1, "run_id": "skewed", "renewed": now + 9e9}, 2 * STALE_SECONDS, True),
        ({"host": "elsewhere", "pid": 1, "run_id": "live", "renewed": now - 9e9}, 0, False),
        ({"host": here, "pid": -1, "run_id": "live", "renewed": now}, 0, False),  # -1 is not a process
    ]:
        lease.write_text(json.dumps(holder))
        written = time.time() - age  # the storage's clock: the file's modification time
        os.utime(lease, (written, written))
        if taken:
            with OutputLock(str(tmp_path / "out"), "new"):
                assert json.loads(lease.read_text())["run_id"] == "new"
            assert not lease.exists()
        else:
            with pytest.raises(OutputInUse, match=f"run live, process {holder['pid']} on {holder['host']}"):
                OutputLock(str(tmp_path / "out"), "new").__enter__()
            assert json.loads(lease.read_text())["run_id"] == "live"  # not ours: left alone


def _ok_row(path: str, method: str, label: int) -> dict:
    return {"path": path, "status": "ok", "method": method, "explained_index": label, "sha256": path}


def test_groups_hold_whole_images_and_together_are_the_current_manifest(tmp_path):
    from xai_batch.manifest import current_groups

    out, other = str(tmp_path / "out"), str(tmp_path / "other")
    paths = [f"img{n:03d}.png" for n in range(60)]
    for rows in ([_ok_row(p, m, label) for p in paths for m in ("lime", "gradcam") for label in (0, 1)],
                 [_row(p) | {"method": "lime"} for p in paths[::3]]):  # a later run's errors supersede lime's rows
        writer = ManifestWriter(out, new_run_id(), rows_per_part=50)
        writer.add(rows)
        writer.close()
    writer = ManifestWriter(other, new_run_id())
    writer.add([_ok_row(p, "lime", 0) for p in paths[::2]])
    writer.close()
    whole, whole_other = read_manifest(out), read_manifest(other)
    columns = ["path", "method", "explained_index", "status", "run_id"]
    seen, seen_other = [], []
    groups = list(current_groups([out, other], columns, group_rows=40))
    assert len(groups) == 7  # 280 rows in all runs, at most 40 a group
    for table, table_other in groups:
        assert table.column_names == columns
        assert table.equals(table.sort_by([("path", "ascending"), ("method", "ascending"),
                                           ("explained_index", "ascending")]))
        assert set(table_other["path"].to_pylist()) <= set(table["path"].to_pylist())  # the same paths
        seen += table.to_pylist()
        seen_other += table_other.to_pylist()
    key = lambda row: (row["path"], row["method"], row["explained_index"] is None, row["explained_index"] or 0)
    assert sorted(seen, key=key) == sorted(whole.select(columns).to_pylist(), key=key)
    assert sorted(seen_other, key=key) == sorted(whole_other.select(columns).to_pylist(), key=key)
    assert len(seen) == 60 * 4 - 20 * 2 + 20
    assert list(current_groups([out], ["path"], group_rows=10**6))[0][0].equals(whole.select(["path"]))


def test_a_row_copied_twice_reads_once(tmp_path):
    writer = ManifestWriter(str(tmp_path), new_run_id())
    writer.add([_ok_row("a.png", "lime", 0), _ok_row("b.png", "lime", 0)])
    writer.close()
    folder = tmp_path / "manifest"
    [part] = os.listdir(folder)
    (folder / "part-copy.parquet").write_bytes((folder / part).read_bytes())  # as a stopped compaction leaves it
    assert read_manifest(str(tmp_path))["path"].to_pylist() == ["a.png", "b.png"]
    assert read_manifest(str(tmp_path), current=False).num_rows == 4


def _history(out: str, images: int) -> None:
    """Three runs into ``out``: every image, then a third of them again, then errors for some."""
    paths = [f"d{n % 7}/img{n:04d}.png" for n in range(images)]
    for rows in ([_ok_row(p, m, 0) | {"weights": [float(n)] * 9} for n, p in enumerate(paths) for m in ("lime", "gradcam")],
                 [_ok_row(p, "lime", 0) | {"weights": [-1.0] * 9} for p in paths[::3]],
                 [_row(p) | {"method": "gradcam"} for p in paths[::5]]):
        writer = ManifestWriter(out, new_run_id(), rows_per_part=37)
        writer.add(rows)
        writer.close()


@pytest.mark.parametrize("stop_when", ["writing", "moving", "deleting", "never"])
def test_a_compaction_stopped_at_any_moment_leaves_the_manifest_as_it_read(tmp_path, stop_when):
    """Killed while it writes its parts or moves them in, or stopped while it deletes the old (too quick a
    step to kill it in reliably, so the old parts of a finished compaction are put back, as that leaves
    them): the manifest reads the same, and the next compaction finishes the work."""
    import signal
    import subprocess
    import sys
    import time

    out = str(tmp_path / "out")
    _history(out, 300)
    before = read_manifest(out)
    folder = tmp_path / "out" / "manifest"
    old = {name for name in os.listdir(folder) if not name.startswith(".")}
    command = [sys.executable, "-c", "from xai_batch.cli import main; main()", "compact", out, "--part-rows", "2",
               "--no-progress"]
    kept = {name: (folder / name).read_bytes() for name in sorted(old)[::2]}  # what a stop while deleting leaves
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def reached() -> bool:
        names = set(os.listdir(folder))
        staging = [name for name in names if name.startswith(".compacting-")]
        if stop_when == "writing":
            return bool(staging) and len(os.listdir(folder / staging[0])) > 20
        if stop_when == "moving":
            return len(names - old - set(staging) - {".xai-batch.lock"}) > 20
        return False

    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if reached():
            process.send_signal(signal.SIGKILL)
            break
    output = process.communicate()[0].decode()
    if stop_when == "deleting":
        assert process.returncode == 0, output
        for name, data in kept.items():
            (folder / name).write_bytes(data)
        assert read_manifest(out).equals(before)
    elif stop_when != "never":
        assert process.returncode == -signal.SIGKILL, f"the compaction ended before it was stopped: {output}"
        assert read_manifest(out).equals(before)
    finished = subprocess.run(command, capture_output=True, text=True)  # a gone holder's lease is taken over
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert f"{before.num_rows} current rows in {-(-before.num_rows // 2)} parts" in finished.stdout
    after = read_manifest(out)
    assert after.equals(before)
    assert read_manifest(out, current=False).num_rows == before.num_rows  # superseded rows and copies dropped
    assert not any(name.startswith(".") for name in os.listdir(folder))
    assert not old & set(os.listdir(folder))
    assert not os.path.exists(tmp_path / "out" / ".xai-batch.lock")
    parts = sorted(os.listdir(folder))
    first = pq.read_table(folder / parts[0])
    assert first.equals(first.sort_by([("path", "ascending"), ("method", "ascending")]))


def test_verify_repair_sets_damaged_parts_aside_and_the_manifest_reads_again(tmp_path):
    from click.testing import CliRunner

    from xai_batch.cli import cli

    writer = ManifestWriter(str(tmp_path), new_run_id())
    writer.add([_row("a.png")])
    writer.close()
    (tmp_path / "manifest" / "part-empty.parquet").write_bytes(b"")
    repaired = CliRunner().invoke(cli, ["verify", str(tmp_path), "--repair"])
    assert repaired.exit_code == 0, repaired.output
    assert f"set aside: part-empty.parquet -> {tmp_path / 'damaged' / 'part-empty.parquet'}" in repaired.output
    assert (tmp_path / "damaged" / "part-empty.parquet").read_bytes() == b""  # moved, not deleted
    assert read_manifest(str(tmp_path))["path"].to_pylist() == ["a.png"]
    assert not (tmp_path / ".xai-batch.lock").exists()


def test_overwrite_deletes_the_manifests_own_files_and_refuses_anything_else(tmp_path):
    """Issue 31, finding 3: --overwrite removed a user's _README.md, _drafts/ and .git/ from OUT/manifest.
    Only part files, temporary files and a stopped compaction's folder are the tool's to delete."""
    from xai_batch.errors import ConfigError
    from xai_batch.manifest import resume_state

    writer = ManifestWriter(str(tmp_path), new_run_id())
    writer.add([_row("a.png")])
    writer.close()
    folder = tmp_path / "manifest"
    (folder / ".tmp-0123abcd-part-x.parquet").write_bytes(b"half a part")
    (folder / ".compacting-20260101T000000.000000Z-abcdef").mkdir()
    (folder / ".compacting-20260101T000000.000000Z-abcdef" / "part-x-c00000.parquet").write_bytes(b"x")
    foreign = {"_README.md": "notes", "NOTES.md": "notes a reader would take for a damaged part",
               "_drafts/plan.txt": "draft", ".git/HEAD": "ref: refs/heads/main"}
    for rel, text in foreign.items():
        (folder / rel).parent.mkdir(exist_ok=True)
        (folder / rel).write_text(text)
    before = sorted(os.listdir(folder))
    with pytest.raises(ConfigError, match=r"--overwrite deletes only the manifest's own part files, and .* also "
                                          r"holds \.git/, NOTES\.md, _README\.md, _drafts/: move what is yours") \
            as refused:
        resume_state(str(tmp_path), set(), overwrite=True)
    assert refused.value.param == "out" and sorted(os.listdir(folder)) == before  # nothing deleted
    for rel in foreign:
        os.remove(folder / rel)
    for name in ("_drafts", ".git"):
        os.rmdir(folder / name)
    assert len(resume_state(str(tmp_path), set(), overwrite=True)) == 0
    assert os.listdir(folder) == []


def test_of_two_runs_taking_over_one_gone_lease_only_one_gets_it(tmp_path, monkeypatch):
    """Issue 31, finding 4: two processes taking over a crashed run's lease both got it (1 trial in 30).
    Here the race is forced: C reads the gone lease, then B takes it over, then C goes on. C must refuse."""
    from xai_batch.manifest.lock import LOCK_FILE, STALE_SECONDS, OutputInUse, OutputLock

    (tmp_path / "out").mkdir()
    lease = tmp_path / "out" / LOCK_FILE
    lease.write_text(json.dumps({"host": "crashed", "pid": 7, "run_id": "crashed", "renewed": 0}))
    old = time.time() - 2 * STALE_SECONDS
    os.utime(lease, (old, old))
    b, c = OutputLock(str(tmp_path / "out"), "b"), OutputLock(str(tmp_path / "out"), "c")
    read, raced = OutputLock._read, []

    def read_then_b_takes_over(self):
        held = read(self)
        if self is c and not raced:
            raced.append(True)
            b.__enter__()
        return held

    monkeypatch.setattr(OutputLock, "_read", read_then_b_takes_over)
    try:
        with pytest.raises(OutputInUse, match="run b, process"):
            c.__enter__()
        assert json.loads(lease.read_text())["run_id"] == "b"
        assert sorted(os.listdir(tmp_path / "out")) == [LOCK_FILE]  # no marker or clock file left
    finally:
        b.__exit__(None, None, None)


def test_a_run_whose_lease_was_taken_over_stops_writing(tmp_path, monkeypatch):
    """Issue 31, finding 4: a holder whose lease was taken over (a pause past the lease time) was never told
    and kept writing. Its renewal finds another's lease and stops; its writer writes no part; it does not
    remove the other's lease."""
    from xai_batch.manifest import lock
    from xai_batch.manifest.lock import LOCK_FILE, LeaseLost, OutputLock

    monkeypatch.setattr(lock, "RENEW_SECONDS", 0.05)
    out = str(tmp_path / "out")
    held = OutputLock(out, new_run_id()).__enter__()
    writer = ManifestWriter(out, held.run_id, rows_per_part=1, leased=True)
    writer.add([_row("a.png")])  # written: the lease is this run's
    assert held.holds()
    taker = {"host": "elsewhere", "pid": 9, "run_id": "taker", "renewed": time.time()}
    (tmp_path / "out" / LOCK_FILE).write_text(json.dumps(taker))  # taken over while this run was paused
    deadline = time.monotonic() + 10
    while held.lost is None and time.monotonic() < deadline:
        time.sleep(0.02)
    with pytest.raises(LeaseLost, match=r"lost its lease on .*: the lease of run taker \(process 9 on elsewhere\)"):
        held.check()
    with pytest.raises(LeaseLost):
        writer.add([_row("b.png")])
    assert read_manifest(out).column("path").to_pylist() == ["a.png"]
    held.__exit__(None, None, None)
    assert json.loads((tmp_path / "out" / LOCK_FILE).read_text())["run_id"] == "taker"  # left alone


def _foreign_parts(folder) -> dict[str, str]:
    """Hand-edited parts as a hostile or careless user makes them: each name and what is wrong with it."""
    import pyarrow as pa

    good = read_manifest(str(folder.parent)).slice(0, 1)
    int_paths = good.set_column(0, "path", pa.array([123456], pa.int64()))
    text_weights = good.set_column(good.schema.get_field_index("weights"), "weights", pa.array(["[1, 2]"]))
    future = good.set_column(good.schema.get_field_index("run_id"), pa.field("run_id", pa.string(), nullable=False),
                             pa.array(["99999999T"]))
    far = good.set_column(good.schema.get_field_index("run_id"), pa.field("run_id", pa.string(), nullable=False),
                          pa.array(["29991231T235959.000000Z-abcdef"]))
    parts = {"part-int-path.parquet": (int_paths, "column 'path' is int64, not string"),
             "part-text-weights.parquet": (text_weights, "column 'weights' is string, not list<item: double>"),
             "part-bogus-run.parquet": (future, "run id '99999999T' is not one a run makes"),
             "part-future-run.parquet": (far, "run id '29991231T235959.000000Z-abcdef' is in the future")}
    for name, (table, _) in parts.items():
        pq.write_table(table, folder / name)
    return {name: problem for name, (_, problem) in parts.items()}


def test_a_part_xai_batch_did_not_write_is_named_not_read_and_repair_sets_it_aside(tmp_path):
    """Issue 31, finding 5: a hand-edited part (path as int64, weights as text, run id 99999999T) was listed by
    verify but not moved by --repair; explain counted its paths done; report crashed in Arrow's words; the
    far-future run id kept its row current for ever. Each part is checked where it is read."""
    from click.testing import CliRunner

    from xai_batch.cli import cli
    from xai_batch.manifest import ManifestError, current_groups, manifest_counts, resume_state

    writer = ManifestWriter(str(tmp_path), new_run_id())
    writer.add([_row("a.png")])
    writer.close()
    problems = _foreign_parts(tmp_path / "manifest")
    for name, problem in problems.items():
        others = [other for other in problems if other != name]
        for other in others:
            os.rename(tmp_path / "manifest" / other, tmp_path / other)
        for read in (lambda: read_manifest(str(tmp_path)), lambda: list(current_groups([str(tmp_path)], group_rows=1)),
                     lambda: resume_state(str(tmp_path), {None}, False), lambda: manifest_counts(str(tmp_path))):
            with pytest.raises(ManifestError, match=rf"^manifest part {name} in .* is not one xai-batch wrote "
                                                     rf"\({re.escape(problem)}\): xai-batch verify --repair"):
                read()
        shown = CliRunner().invoke(cli, ["report", str(tmp_path), "--no-progress"])
        assert shown.exit_code == 1 and "Traceback" not in shown.output and problem in shown.output, shown.output
        for other in others:
            os.rename(tmp_path / other, tmp_path / "manifest" / other)
    listed = CliRunner().invoke(cli, ["verify", str(tmp_path)])
    assert listed.exit_code == 1
    for name, problem in problems.items():
        assert f"problem: {name}: {problem}" in listed.output, listed.output
    repaired = CliRunner().invoke(cli, ["verify", str(tmp_path), "--repair"])
    assert repaired.exit_code == 0, repaired.output
    assert sorted(os.listdir(tmp_path / "damaged")) == sorted(problems)  # moved, not deleted
    assert read_manifest(str(tmp_path))["path"].to_pylist() == ["a.png"]


def test_ok_rows_of_a_method_some_groups_lack(tmp_path, monkeypatch):
    """A method asked for that one group of images has no rows of (it failed there, or ran on other images)
    is not a missing method: only a manifest without any is refused."""
    import functools

    import xai_batch.manifest.reader as reader
    from xai_batch.errors import ConfigError

    writer = ManifestWriter(str(tmp_path), new_run_id())
    writer.add([{"path": f"{name}.png", "status": "ok", "method": "lime", "explained_index": 0} for name in "abcdef"])
    writer.add([{"path": "f.png", "status": "ok", "method": "gradcam", "explained_index": 0}])
    writer.close()
    monkeypatch.setattr(reader, "current_groups", functools.partial(reader.current_groups, group_rows=1))
    groups = list(reader.ok_rows(str(tmp_path), ("gradcam",)))
    assert len(groups) > 1 and [row["path"] for rows in groups for row in rows] == ["f.png"]
    with pytest.raises(ConfigError, match="the manifest has no kernelshap explanations"):
        reader.ok_rows(str(tmp_path), ("kernelshap",))
