"""Ground truth and label maps: what an image is, and what a prediction means.

A class-per-folder SOURCE says what each image is by its first folder
(``cat/chelsea.jpg`` is a cat); a ``--labels`` CSV (``path,label``) says it
for any layout. A label map turns the model's classes into those labels:
ImageNet's 1000 classes into the seed's cat/dog question (indices 151–268 are
dog breeds, 281–285 domestic cats), or any mapping from a CSV
(``index,label``). Without a map the model's class name is the prediction.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Mapping, Sequence

from xai_batch.errors import ConfigError, one_line
from xai_batch.storage import locate

__all__ = [
    "BUILTIN_MAPS", "LabelMap", "load_label_map", "load_truth", "folder_label", "truth_labeller", "prediction_labeller",
    "check_truth_meets_predictions",
]

BUILTIN_MAPS = ("imagenet-cats-dogs",)


OTHER = "other"  # what a class the map does not name means


class LabelMap:
    """Model class index -> label; classes it does not name map to ``other``."""

    def __init__(self, labels: Mapping[int, str]) -> None:
        self.labels = dict(labels)

    def __call__(self, index: int) -> str:
        return self.labels.get(int(index), OTHER)


def _imagenet_cats_dogs() -> LabelMap:
    labels = {index: "dog" for index in range(151, 269)}
    labels.update({index: "cat" for index in range(281, 286)})
    return LabelMap(labels)


def load_label_map(spec: str | None) -> LabelMap | None:
    """A built-in map by name, or a CSV file (header ``index,label``); ``None`` keeps class names."""
    if spec is None:
        return None
    if spec == "imagenet-cats-dogs":
        return _imagenet_cats_dogs()
    rows = _read_csv(spec, ("index", "label"), "label_map")
    try:
        return LabelMap({int(row["index"]): row["label"].strip() for row in rows})
    except ValueError as exc:
        raise ConfigError(f"label map {spec!r}: 'index' must be an integer ({exc})", "label_map") from exc


def load_truth(spec: str) -> dict[str, str]:
    """``path -> label`` from a CSV with header ``path,label`` (paths as in the manifest)."""
    return {row["path"]: row["label"].strip() for row in _read_csv(spec, ("path", "label"), "labels")}


def folder_label(path: str) -> str | None:
    """The class of a class-per-folder SOURCE: the path's first folder, if it has one."""
    head, _, rest = path.partition("/")
    return head if rest else None


def truth_labeller(labels: str | None) -> Callable[[str], str | None]:
    """Path -> true label: from a ``--labels`` CSV if given, else the path's first folder."""
    return load_truth(labels).get if labels else folder_label


def prediction_labeller(label_map: str | None) -> Callable[[dict], str]:
    """Manifest row -> the label its prediction means: through the label map, else the class name."""
    mapping = load_label_map(label_map)
    if mapping is None:
        return lambda row: row["pred_name"]
    return lambda row: mapping(row["pred_index"])


def check_truth_meets_predictions(truths: set[str], label_map: str | None, class_names: Sequence[str]) -> None:
    """Refuse, before any model time, true labels that no prediction can ever equal.

    A forgotten ``--label-map`` (folders cat/ and dog/, ImageNet's 1000 class
    names) would otherwise be a run of 100 % misclassified.
    """
    if not truths:
        return
    mapping = load_label_map(label_map)
    possible = {*mapping.labels.values(), OTHER} if mapping is not None else set(class_names)
    if not truths & possible:
        shown = ", ".join(sorted(truths)[:5]) + (", ..." if len(truths) > 5 else "")
        raise ConfigError(
            f"no true label ({shown}) is a label the model predicts ({', '.join(sorted(possible)[:5])}, ...): "
            "pass the --label-map that turns its classes into your labels (e.g. imagenet-cats-dogs)", "label_map")


def _read_csv(spec: str, columns: tuple[str, ...], param: str) -> list[dict]:
    try:
        text = locate(spec).read_bytes().decode("utf-8-sig")
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {spec!r}: {one_line(exc)}", param) from exc
    reader = csv.DictReader(io.StringIO(text))
    missing = [column for column in columns if column not in (reader.fieldnames or [])]
    if missing:
        raise ConfigError(f"{spec!r} needs the columns {', '.join(columns)} (missing {', '.join(missing)})", param)
    rows = []
    for row in reader:
        empty = [column for column in columns if not (row.get(column) or "").strip()]
        if empty:  # a short row leaves its last columns None: say which line, not AttributeError
            raise ConfigError(f"{spec!r}, line {reader.line_num}: no {' or '.join(empty)}", param)
        rows.append(row)
    return rows
