"""Storage through pyarrow.fs: local paths and URIs."""

import pyarrow.fs as pafs
import pytest

from xai_batch.storage import is_uri, join, locate


def test_uri_listing_uses_pyarrow_and_skips_hidden_entries(tmp_path):
    for rel in ("a.png", "sub/b.JPG", ".hidden.png", ".cache/c.png", "notes.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    uri = locate(f"file://{tmp_path}")
    assert not uri.local and isinstance(uri.filesystem, pafs.LocalFileSystem)
    assert uri.list_files() == ["a.png", "notes.txt", "sub/b.JPG"]
    assert locate(str(tmp_path)).list_files() == ["a.png", "notes.txt", "sub/b.JPG"]


def test_atomic_writer_moves_a_whole_file_into_place(tmp_path):
    target = locate(f"file://{tmp_path}").child("out", "part.bin")
    with target.atomic_writer() as stream:
        stream.write(b"hello")
        assert sorted(p.name for p in (tmp_path / "out").iterdir())[0].startswith(".tmp-")
    assert (tmp_path / "out" / "part.bin").read_bytes() == b"hello"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["part.bin"]
    with pytest.raises(RuntimeError):
        with target.atomic_writer() as stream:
            stream.write(b"half")
            raise RuntimeError("killed")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["part.bin"]  # no leftover, old file kept


def test_join_and_is_uri():
    assert join("s3://bucket/run", "manifest", "x.parquet") == "s3://bucket/run/manifest/x.parquet"
    assert join("/data/run", "manifest") == "/data/run/manifest"
    assert is_uri("gs://b") and not is_uri("/tmp/x")


def test_records_never_hold_the_credentials_of_a_uri(tmp_path):
    """pyarrow takes s3://KEY:SECRET@bucket; job.json, audit.json and every other record keep only ***."""
    from xai_batch.storage import read_json, redact, write_json

    secret = "s3://AKIAEXAMPLE:wJalr%2FXUtnFEMI@bucket/photos"
    record = {"config": {"source": secret, "masks": None, "seed": 3},
              "runs": [{"args": ["--out", "gs://token@b/run"]}], "note": f"read {secret} at night"}
    write_json(str(tmp_path / "job.json"), record)
    text = (tmp_path / "job.json").read_text()
    assert "wJalr" not in text and "AKIAEXAMPLE" not in text and "token@" not in text
    assert read_json(str(tmp_path / "job.json")) == {
        "config": {"source": "s3://***@bucket/photos", "masks": None, "seed": 3},
        "runs": [{"args": ["--out", "gs://***@b/run"]}], "note": "read s3://***@bucket/photos at night"}
    assert redact("s3://bucket/a@b.png and /plain/x@y.png") == "s3://bucket/a@b.png and /plain/x@y.png"


@pytest.mark.parametrize("path", ["../outside.png", "a/../../outside.png", "/etc/passwd", "a//b.png", "./a.png",
                                  "a/\x00.png"])
def test_a_path_from_a_listing_or_manifest_cannot_leave_its_folder(tmp_path, path):
    from xai_batch.storage import OutsideLocation

    with pytest.raises(OutsideLocation, match=r"^path .* is not inside "):
        locate(str(tmp_path)).child(path)
    with pytest.raises(OutsideLocation):
        locate(f"file://{tmp_path}").child(path)
    assert locate(str(tmp_path)).child("a/b.png").target == str(tmp_path / "a" / "b.png")
