"""SOURCE as a file listing the images: the formats, and the same images as the folder they list."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from xai_batch.errors import ConfigError
from xai_batch.sources import discover_images, image_root, is_listing


def _folder(tmp_path):
    for rel in ("a.png", "sub/b.JPG", "sub/.hidden.png", "notes.txt", ".cache/c.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    return tmp_path


def test_every_listing_format_names_the_folders_images(tmp_path):
    folder = _folder(tmp_path)
    expected = discover_images(str(folder))
    assert expected == ["a.png", "sub/b.JPG"]
    listed = ["sub/b.JPG", "./a.png", "a.png", "notes.txt", "sub/.hidden.png", ".cache/c.png"]  # as found
    (folder / "list.txt").write_text("# made by find\n\n" + "\n".join(listed) + "\n")
    (folder / "list.csv").write_text("size,path\n" + "".join(f"1,{path}\n" for path in listed))
    pq.write_table(pa.table({"key": listed, "size": [1] * len(listed)}), folder / "inventory.parquet")
    for name in ("list.txt", "list.csv", "inventory.parquet"):
        source = str(folder / name)
        assert is_listing(source) and image_root(source) == str(folder)
        assert discover_images(source) == expected, name
    assert not is_listing(str(folder)) and image_root(str(folder)) == str(folder)


@pytest.mark.parametrize("entry", ["../outside.png", "/etc/passwd.png", "s3://bucket/a.png", "a/../../b.png",
                                   "x" * 5000 + ".png"])
def test_a_path_outside_the_listings_folder_is_a_usage_error_naming_its_line(tmp_path, entry):
    (tmp_path / "list.txt").write_text(f"a.png\n{entry}\n")
    with pytest.raises(ConfigError, match="entry 2: .* is not a path relative to the listing's folder") as raised:
        discover_images(str(tmp_path / "list.txt"))
    assert raised.value.param == "source" and len(str(raised.value)) < 300


def test_a_listing_without_a_path_column_says_so(tmp_path):
    (tmp_path / "list.csv").write_text("name,size\na.png,1\n")
    with pytest.raises(ConfigError, match="has no path or key column"):
        discover_images(str(tmp_path / "list.csv"))
    pq.write_table(pa.table({"name": ["a.png"]}), tmp_path / "list.parquet")
    with pytest.raises(ConfigError, match="has no path or key column"):
        discover_images(str(tmp_path / "list.parquet"))
    (tmp_path / "list.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        discover_images(str(tmp_path / "list.txt"))


def test_out_inside_source_is_passed_over_and_out_as_source_is_refused(tmp_path):
    """Issue 31, finding 12: with OUT inside SOURCE, the next nightly run explained its own overlays and
    report pictures. OUT's files are not SOURCE's images, whether SOURCE is walked or listed."""
    folder = _folder(tmp_path)
    for rel in ("out/overlays/boundaries/a.png", "out/report_files/x.jpg", "outside-out.png"):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(b"x")
    assert discover_images(str(folder)) == ["a.png", "out/overlays/boundaries/a.png", "out/report_files/x.jpg",
                                            "outside-out.png", "sub/b.JPG"]
    for out in (str(folder / "out"), str(folder / "sub" / ".." / "out"), f"file://{folder}/out"):
        assert discover_images(str(folder), skip=out) == ["a.png", "outside-out.png", "sub/b.JPG"], out
    (folder / "list.txt").write_text("a.png\nout/overlays/boundaries/a.png\n")
    assert discover_images(str(folder / "list.txt"), skip=str(folder / "out")) == ["a.png"]
    assert discover_images(str(folder), skip=str(tmp_path.parent / "elsewhere")) == \
        discover_images(str(folder))
    with pytest.raises(ConfigError, match="is the folder SOURCE's images are in") as refused:
        discover_images(str(folder), skip=str(folder))
    assert refused.value.param == "out"


def test_a_listing_is_read_as_a_stream_and_held_compactly(tmp_path):
    """Issue 31, finding 13: a listing was read whole, decoded whole and held as a list (1e6 lines: +216 MB).
    Now it is read READ_ROWS entries at a time and the paths are kept as one Arrow array, which Python's
    allocator does not hold: what Python allocates at its peak stays a small part of the file's size."""
    import tracemalloc

    from xai_batch.sources import ImagePaths

    lines = 300_000
    listing = tmp_path / "list.txt"
    with open(listing, "w") as handle:
        for number in range(lines):
            handle.write(f"camera-{number % 7}/2026/12/{number:09d}-a-longer-name-as-people-give.jpg\n")
    size = listing.stat().st_size
    tracemalloc.start()
    try:
        found = discover_images(str(listing))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(found, ImagePaths) and len(found) == lines
    assert list(found)[:2] == ["camera-0/2026/12/000000000-a-longer-name-as-people-give.jpg",
                               "camera-0/2026/12/000000007-a-longer-name-as-people-give.jpg"]
    assert peak < size / 2, f"Python held {peak / 1e6:.1f} MB at its peak for a listing of {size / 1e6:.1f} MB"


def _object_store(monkeypatch):
    """``mock://`` URIs on one in-memory object store for the test (pyarrow makes a new one per URI)."""
    import types

    import pyarrow.fs as pafs

    import xai_batch.storage as storage

    shared = pafs._MockFileSystem()

    class FileSystem:  # as pyarrow's S3: the bucket is the path's first part
        @staticmethod
        def from_uri(uri):
            bucket, _, key = uri.removeprefix("mock://").partition("/")
            return shared, f"{bucket}/{key}".rstrip("/")

    monkeypatch.setattr(storage, "pafs", types.SimpleNamespace(**{**vars(pafs), "FileSystem": FileSystem}))
    return shared


def test_an_inventorys_keys_are_relative_to_their_buckets_root(monkeypatch):
    """Issue 31, finding 13: S3 inventory keys are relative to the bucket's root, not to the inventory
    file's folder; with a bucket column, to that bucket's."""
    import io as stdio

    store = _object_store(monkeypatch)

    def put(path, table, statistics=True):
        store.create_dir(path.rsplit("/", 1)[0])
        buffer = stdio.BytesIO()
        pq.write_table(table, buffer, write_statistics=statistics, row_group_size=1)
        with store.open_output_stream(path) as stream:
            stream.write(buffer.getvalue())

    for path in ("photos/cats/a.png", "photos/dogs/b.jpg"):
        store.create_dir(path.rsplit("/", 1)[0])
        with store.open_output_stream(path) as stream:
            stream.write(b"x")
    put("photos/inventory/data/x.parquet", pa.table({"key": ["cats/a.png", "dogs/b.jpg", "notes.txt"]}))
    put("logs/inventory/y.parquet", pa.table({"bucket": ["photos", "photos"], "key": ["cats/a.png", "dogs/b.jpg"]}))
    put("logs/inventory/z.parquet", pa.table({"bucket": ["photos", "other"], "key": ["cats/a.png", "x.png"]}))
    put("logs/inventory/plain.parquet", pa.table({"bucket": ["photos", "other"], "key": ["cats/a.png", "x.png"]}),
        statistics=False)  # no statistics in the footer: the column itself is read
    put("logs/inventory/plain-one.parquet", pa.table({"bucket": ["photos"] * 2, "key": ["cats/a.png", "dogs/b.jpg"]}),
        statistics=False)
    put("photos/lists/p.parquet", pa.table({"path": ["../cats/a.png"]}))
    for listing, root in (("mock://photos/inventory/data/x.parquet", "mock://photos"),
                          ("mock://logs/inventory/y.parquet", "mock://photos"),
                          ("mock://logs/inventory/plain-one.parquet", "mock://photos")):
        assert image_root(listing) == root
        assert discover_images(listing) == ["cats/a.png", "dogs/b.jpg"]
    for two in ("z", "plain"):
        with pytest.raises(ConfigError, match="names objects of 2 buckets"):
            image_root(f"mock://logs/inventory/{two}.parquet")
    assert image_root("mock://photos/lists/p.parquet") == "mock://photos/lists"  # a path column: its folder's
    with pytest.raises(ConfigError, match="is not a path relative to the listing's folder 'mock://photos/lists/'"):
        discover_images("mock://photos/lists/p.parquet")


def test_paths_read_in_blocks_come_out_sorted_and_once():
    """Blocks are sorted on their own and merged as the paths are taken: repeats within and across blocks
    count once; blocks already in order are not merged."""
    from xai_batch.sources import ImagePaths, PathQueue

    shuffled = ImagePaths.of([pa.array(["b/2.png", "a/1.png", "b/2.png"]), pa.array(["a/1.png", "c.png", "a/0.png"])])
    assert len(shuffled) == 4 and list(shuffled) == ["a/0.png", "a/1.png", "b/2.png", "c.png"]
    walked = ImagePaths.of([pa.array(["a.png", "b.png"]), pa.array(["c.png"])])
    assert len(walked) == 3 and walked == ["a.png", "b.png", "c.png"]
    queue = PathQueue(shuffled)
    taken = [queue.popleft() for _ in range(len(queue))]
    assert taken == list(shuffled) and not queue and len(ImagePaths.of([])) == 0
