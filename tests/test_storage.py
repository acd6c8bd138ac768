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


SECRET = "wJalrXUtnFEMI/K7MDENG"  # an AWS-style secret key with a raw '/', as half of them have


@pytest.mark.parametrize("uri, shown", [
    (f"s3://AKIAEXAMPLE:{SECRET}@bucket/r1", "s3://***@bucket/r1"),
    ("s3://AKIAEXAMPLE:wJalr%2FXUtnFEMI@bucket/r1", "s3://***@bucket/r1"),
    ("s3://p@ss@bucket/photos", "s3://***@bucket/photos"),
    ("gs://token@b/run", "gs://***@b/run"),
    ("abfs://acct.blob.core.windows.net/c/p?client_id=app&client_secret=s3cr3t&tenant_id=t",
     "abfs://acct.blob.core.windows.net/c/p?client_id=app&client_secret=***&tenant_id=t"),
    ("abfs://c@acct/p?sv=2024&sig=AbC%2Bd&se=2027", "abfs://***@acct/p?sv=2024&sig=***&se=2027"),
    ("s3://b/p?access_key=AKIA&SECRET_KEY=x&session_token=y&region=eu",
     "s3://b/p?access_key=***&SECRET_KEY=***&session_token=***&region=eu"),
])
def test_every_form_of_credentials_in_a_uri_is_redacted(uri, shown):
    from xai_batch.storage import carries_credentials, redact

    assert redact(f"Cannot parse URI: '{uri}' (line 3)") == f"Cannot parse URI: '{shown}' (line 3)"
    assert carries_credentials(uri)


@pytest.mark.parametrize("uri", ["s3://bucket/photos/me@home.png", "s3://bucket/a/b?region=eu-west-1&scheme=https",
                                 "file:///data/x@y/z.png", "gs://b/run"])
def test_a_uri_without_credentials_is_shown_as_it_is(uri):
    from xai_batch.storage import carries_credentials, redact

    assert redact(uri) == uri and not carries_credentials(uri)


def test_a_uri_pyarrow_cannot_parse_is_our_error_without_the_secret():
    from xai_batch.errors import StorageError

    with pytest.raises(StorageError) as raised:
        locate(f"s3://AKIAEXAMPLE:{SECRET}@bucket/r1")
    assert "K7MDENG" not in str(raised.value) and "wJalr" not in str(raised.value)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__  # pyarrow's words are not chained
    assert isinstance(raised.value, OSError)  # callers passing over unreadable files still do
