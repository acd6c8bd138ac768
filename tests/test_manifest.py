import os

import numpy as np
import pyarrow.parquet as pq

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
