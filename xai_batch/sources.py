"""What SOURCE names: a folder of images, or a file listing them; and the paths of its images, held compactly.

A folder is walked (:meth:`~xai_batch.storage.Location.list_files`). A
bucket of a hundred million objects should not be: listing it takes hours,
and an S3 inventory or a data catalogue already says what is in it. So
SOURCE may also be a file that lists the images:

- ``*.parquet``: a ``path`` column, or an S3 inventory's ``key`` column;
- ``*.csv``: a header row, then either column;
- anything else: one path per line (blank lines and ``#`` comments skipped).

Which folder a listed path is relative to depends on its column:

- a ``path`` (and a line of a text listing) is relative to the folder the
  listing is in;
- a ``key`` is what S3 inventories hold: an object's key, relative to the
  root of its bucket, wherever the inventory file itself lies. On an object
  store that is the root of the listing's bucket, or of the one bucket its
  ``bucket`` column names (a listing of two buckets is refused). A local
  disk has no buckets: there a ``key`` is relative to the listing's folder,
  as a ``path`` is.

That folder (:func:`image_root`) is what a listed path may not leave, and
the paths are the manifest's ``path`` values, as the folder's own files
would be: a listing of a folder's images explains into the same manifest as
the folder. As in a folder, only image files count and hidden ones are passed
over; a path listed twice counts once. A listed path that climbs out of its
folder (``..``), is absolute, or is longer than ``MAX_PATH`` is a usage error
naming its line.

A listing is read as a stream, a block at a time (``READ_BYTES`` of text,
``READ_ROWS`` rows of Parquet), checked with Arrow's compute functions, and
its paths are kept in those blocks (:class:`ImagePaths`), about the paths'
own bytes and 8 more each: a hundred million keys of 40 characters take
4.8 GB where a Python list of them took 20 GB. Files under ``--out``,
where OUT lies inside SOURCE, are passed over (:func:`discover_images`'s
``skip``): a nightly run would otherwise explain its own overlays.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from xai_batch.errors import ConfigError, one_line
from xai_batch.images import IMAGE_EXTENSIONS
from xai_batch.storage import Location, join, locate

__all__ = ["discover_images", "image_root", "is_listing", "ImagePaths", "PathQueue", "MAX_PATH", "READ_ROWS"]

MAX_PATH = 4096  # characters in one listed path
PATH, KEY = "path", "key"  # a listing's column of paths, by the first of these names it has
COLUMNS = (PATH, KEY)
READ_ROWS = 65_536  # a Parquet listing's rows read at a time, and paths made Python text at a time
READ_BYTES = 1 << 20  # a text or CSV listing's bytes read at a time
MERGE_TEXTS = 32_768  # paths held as Python text while the blocks are merged, over all blocks


class ImagePaths:
    """Image paths, sorted and each once, kept in Arrow: a sequence of ``str`` that costs the paths' own
    characters and 8 bytes each, where a Python list and set of them cost ~150 bytes more each.

    The paths stay in the blocks they were read in, each block sorted on its
    own as it arrives (its repeats dropped), so sorting never holds more than
    one block's copy; the whole sorted order is a merge of the blocks, made
    as the paths are taken (:meth:`__iter__`), Python text a little at a time.
    """

    def __init__(self, blocks: list[pa.Array], count: int, merge: bool) -> None:
        self._blocks = blocks
        self._count = count  # the paths once each, across blocks
        self._merge = merge  # False where each block's paths all come after the block before's

    @classmethod
    def of(cls, chunks: Iterable[pa.Array]) -> ImagePaths:
        """The paths of ``chunks`` (Arrow text arrays), sorted, each once."""
        blocks = [_sorted_once(chunk.cast(pa.large_string())) for chunk in chunks if len(chunk)]
        if all(before[len(before) - 1].as_py() < after[0].as_py() for before, after in zip(blocks, blocks[1:])):
            return cls(blocks, sum(len(block) for block in blocks), False)  # a walk, a sorted listing
        merged = cls(blocks, 0, True)
        merged._count = sum(1 for _ in merged)  # repeats across blocks: counted by one pass of the merge
        return merged

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[str]:
        if not self._merge:
            for block in self._blocks:
                yield from _texts(block, READ_ROWS)
            return
        step = max(16, min(READ_ROWS, MERGE_TEXTS // max(1, len(self._blocks))))
        previous = None
        for path in heapq.merge(*(_texts(block, step) for block in self._blocks)):
            if path != previous:
                yield path
                previous = path

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (ImagePaths, list, tuple)):
            return len(self) == len(other) and list(self) == list(other)
        return NotImplemented

    def __repr__(self) -> str:
        shown = [path for path, _ in zip(self, range(3))]
        return f"ImagePaths({len(self)} paths: {', '.join(map(repr, shown))}{', ...' if len(self) > 3 else ''})"


def _sorted_once(block: pa.Array) -> pa.Array:
    """``block`` sorted, each path once."""
    block = block.take(pc.sort_indices(block))
    if len(block) > 1:
        repeated = pc.equal(block.slice(1), block.slice(0, len(block) - 1))
        if pc.any(repeated).as_py():
            block = block.filter(pc.invert(pa.concat_arrays([pa.array([False]), repeated])))
    return block


def _texts(block: pa.Array, step: int) -> Iterator[str]:
    """A block's paths as Python text, ``step`` at a time."""
    for start in range(0, len(block), step):
        yield from block.slice(start, step).to_pylist()


class PathQueue:
    """The paths a run has still to do, taken from the front a path at a time (``popleft``, as from a
    ``deque``), made Python text as they are taken."""

    def __init__(self, paths: ImagePaths | Iterable[str]) -> None:
        if not isinstance(paths, ImagePaths):
            paths = ImagePaths.of([pa.array(list(paths), pa.large_string())])
        self._left = len(paths)
        self._paths = iter(paths)

    def __len__(self) -> int:
        return self._left

    def __bool__(self) -> bool:
        return self._left > 0

    def popleft(self) -> str:
        if not self._left:
            raise IndexError("pop from an empty PathQueue")
        self._left -= 1
        return next(self._paths)


def image_root(source: str) -> str:
    """The folder the images' paths are relative to: ``source``, or for a listing the folder it is in, or
    for an inventory's keys on an object store their bucket's root (see the module's notes)."""
    if not is_listing(source):
        return source
    folder = source.rpartition("/")[0] or "."
    listing = locate(source)
    if listing.on_disk or _column(listing, source) != KEY:
        return folder
    scheme, _, rest = source.partition("://")
    authority = rest.split("/", 1)[0]
    credentials, _, own_bucket = authority.rpartition("@")
    bucket = _buckets(listing, source) or own_bucket
    credentials = f"{credentials}@" if credentials else ""
    query = "?" + source.split("?", 1)[1] if "?" in source else ""
    return f"{scheme}://{credentials}{bucket}{query}" if query else f"{scheme}://{credentials}{bucket}"


def discover_images(source: str, skip: str | None = None) -> ImagePaths:
    """Image files in ``source`` (a folder, or a listing: a path or URI), as sorted ``/``-separated paths
    relative to :func:`image_root`, each once.

    Hidden files and folders (names starting with ``.``) are skipped. Under a
    local folder, folder symlinks are not followed and file symlinks are, when
    their target lies inside it. ``skip`` is the run's ``--out``: where it
    lies inside the images' folder, its files are not images of SOURCE; it
    may not be that folder itself.
    """
    root = locate(image_root(source))
    skipped = None
    if skip is not None:
        skipped = locate(skip).within(root)
        if skipped == "":
            raise ConfigError(f"--out {skip!r} is the folder SOURCE's images are in: the next run would explain "
                              "its own pictures; give the output a folder of its own (one inside SOURCE is "
                              "passed over)", "out")
    if is_listing(source):
        chunks = _listed(source)
    else:
        files = root.list_files()
        chunks = (pa.array(files[start:start + READ_ROWS], pa.large_string())
                  for start in range(0, len(files), READ_ROWS))
    return ImagePaths.of(_images(chunk, skipped) for chunk in chunks)


_IMAGE = "\\.(" + "|".join(sorted(extension[1:] for extension in IMAGE_EXTENSIONS)) + ")$"  # on lower case
_HIDDEN = "(^|/)\\."  # a file or folder whose name starts with '.'


def _images(paths: pa.Array, skipped: str | None) -> pa.Array:
    """The image files among ``paths``: an image extension (any case), nothing hidden, nothing under
    ``skipped``."""
    keep = pc.and_(pc.match_substring_regex(pc.utf8_lower(paths), _IMAGE),
                   pc.invert(pc.match_substring_regex(paths, _HIDDEN)))
    if skipped is not None:
        keep = pc.and_(keep, pc.invert(pc.or_(pc.equal(paths, skipped), pc.starts_with(paths, skipped + "/"))))
    return _kept(paths, keep)


def _kept(values: pa.Array, keep: pa.Array) -> pa.Array:
    """``values`` where ``keep``; the same array, not a copy, when that is all of them."""
    return values if pc.all(keep).as_py() else values.filter(keep)


def _listed(source: str) -> Iterator[pa.Array]:
    """The paths a listing file names, checked (:func:`_checked`), read as a stream a block at a time."""
    listing = locate(source)
    number = 0
    for entries in _entries(listing, source):
        yield _checked(entries, number, source)
        number += len(entries)


def _entries(listing: Location, source: str) -> Iterator[pa.Array]:
    """A listing's entries, in order, a block at a time: a Parquet or CSV listing's column (with its
    empty rows, which are numbered), a text listing's lines (blank lines and ``#`` comments left out)."""
    name = source.rsplit("/", 1)[-1].lower()
    column = _column(listing, source)
    try:
        if name.endswith(".parquet"):
            with listing.filesystem.open_input_file(listing.path) as handle:
                for batch in pq.ParquetFile(handle).iter_batches(batch_size=READ_ROWS, columns=[column]):
                    yield batch.column(0).cast(pa.large_string())
            return
        is_csv = name.endswith(".csv")  # else one path a line: a CSV of one column no path's text can split
        named = column if is_csv else "line"
        with listing.filesystem.open_input_stream(listing.path) as stream:
            reader = pacsv.open_csv(
                stream,
                read_options=pacsv.ReadOptions(column_names=None if is_csv else [named], block_size=READ_BYTES),
                parse_options=pacsv.ParseOptions(
                    delimiter="," if is_csv else "\x1f", quote_char='"' if is_csv else False, double_quote=is_csv,
                    newlines_in_values=False, ignore_empty_lines=True,
                    invalid_row_handler=lambda row: "skip" if is_csv else "error"),
                convert_options=pacsv.ConvertOptions(column_types={named: pa.large_string()},
                                                     include_columns=[named], strings_can_be_null=False))
            for batch in reader:
                if is_csv:
                    yield batch.column(0)
                    continue
                lines = batch.column(0)
                if pc.any(pc.match_substring_regex(lines, r"^\s|\s$")).as_py():
                    lines = pc.utf8_trim_whitespace(lines)
                yield _kept(lines, pc.and_(pc.not_equal(lines, ""), pc.invert(pc.starts_with(lines, "#"))))
    except pa.ArrowInvalid as exc:
        reason = "is not UTF-8 text" if "UTF8" in str(exc) or "UTF-8" in str(exc) else \
            f"cannot be read: {one_line(exc, keep='first', limit=200)}"
        raise ConfigError(f"listing {source!r} {reason}", "source") from None


# A listed path that may not be read: absolute, a URI, climbing out with '..', a NUL in it.
_OUTSIDE = "^/|://|(^|/)\\.\\.(/|$)|\\x00"
_UNTIDY = "(^|/)\\.?(/|$)"  # an empty or '.' part: 'a//b', './a', 'a/'


def _checked(entries: pa.Array, before: int, source: str) -> pa.Array:
    """Listed paths, ``/``-separated, tidied and inside their folder; a usage error naming the first that
    is not (entries are numbered from ``before`` + 1). Empty entries are left out."""
    paths = pc.fill_null(entries, "") if entries.null_count else entries
    if pc.any(pc.match_substring(paths, "\\")).as_py():
        paths = pc.replace_substring(paths, "\\", "/")
    bad = pc.and_(pc.not_equal(paths, ""), pc.or_(pc.greater(pc.utf8_length(paths), MAX_PATH),
                                                   pc.match_substring_regex(paths, _OUTSIDE)))
    if pc.any(bad).as_py():
        first = pc.index(bad, True).as_py()
        rel = paths[first].as_py()
        shown = rel if len(rel) <= 80 else rel[:77] + "..."
        raise ConfigError(f"listing {source!r}, entry {before + first + 1}: {shown!r} is not a path relative to the "
                          f"listing's folder {join(image_root(source), '')!r}", "source")
    paths = _kept(paths, pc.not_equal(paths, ""))
    untidy = pc.match_substring_regex(paths, _UNTIDY)
    if pc.any(untidy).as_py():  # rare: tidied one by one
        paths = pa.array(["/".join(part for part in path.split("/") if part not in ("", ".")) if messy else path
                          for path, messy in zip(paths.to_pylist(), untidy.to_pylist())], pa.large_string())
    return paths


def is_listing(source: str) -> bool:
    """Whether ``source`` is a file listing images (else a folder of them)."""
    return locate(source).is_file()


def _column(listing: Location, source: str) -> str:
    """Which column of a listing holds its paths: ``path``, else ``key``; a text listing's lines are paths."""
    name = source.rsplit("/", 1)[-1].lower()
    if name.endswith(".parquet"):
        try:
            with listing.filesystem.open_input_file(listing.path) as handle:
                names = pq.ParquetFile(handle).schema_arrow.names
        except pa.ArrowException as exc:
            raise ConfigError(f"listing {source!r} cannot be read: {one_line(exc, keep='first')}", "source") from None
        found = next((c for c in COLUMNS if c in names), None)
        if found is None:
            raise ConfigError(f"listing {source!r} has no {' or '.join(COLUMNS)} column", "source")
        return found
    if name.endswith(".csv"):
        try:
            with listing.filesystem.open_input_stream(listing.path) as stream:
                header = pacsv.open_csv(stream, read_options=pacsv.ReadOptions(block_size=READ_BYTES)).schema.names
        except pa.ArrowInvalid as exc:
            raise ConfigError(f"listing {source!r} cannot be read: {one_line(exc, keep='first', limit=200)}",
                              "source") from None
        found = next((c for c in COLUMNS if c in header), None)
        if found is None:
            raise ConfigError(f"listing {source!r} has no {' or '.join(COLUMNS)} column in its header", "source")
        return found
    return PATH


def _buckets(listing: Location, source: str) -> str | None:
    """The one bucket an inventory's ``bucket`` column names, None if it has none; a usage error for two.

    Asked each time the images' folder is (:func:`image_root`), so it reads
    the footer's statistics (each row group's least and greatest bucket)
    when every row group has them, and the column itself only when not.
    """
    if not source.lower().endswith(".parquet"):
        return None  # a CSV inventory's keys are in its listing's bucket
    with listing.filesystem.open_input_file(listing.path) as handle:
        parquet = pq.ParquetFile(handle)
        if "bucket" not in parquet.schema_arrow.names:
            return None
        named = _footer_buckets(parquet)
        if named is None:
            named = set()
            for batch in parquet.iter_batches(batch_size=READ_ROWS, columns=["bucket"]):
                named.update(value for value in pc.unique(batch.column(0)).to_pylist() if value)
                if len(named) > 1:
                    break
    if len(named) > 1:
        raise ConfigError(f"listing {source!r} names objects of {len(named)} buckets "
                          f"({', '.join(sorted(named)[:2])}): explain one bucket's at a time", "source")
    return named.pop() if named else None


def _footer_buckets(parquet: pq.ParquetFile) -> set[str] | None:
    """The buckets the row groups' statistics name (their least and greatest: one bucket where every row
    group's are the same), or None where a row group has no statistics of its bucket column."""
    column = parquet.schema_arrow.get_field_index("bucket")
    named: set[str] = set()
    for group in range(parquet.metadata.num_row_groups):
        statistics = parquet.metadata.row_group(group).column(column).statistics
        if statistics is None or not statistics.has_min_max:
            return None
        named.update(value for value in (statistics.min, statistics.max) if value)
    return {value.decode() if isinstance(value, bytes) else value for value in named}


