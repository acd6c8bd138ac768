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
