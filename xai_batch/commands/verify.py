"""``xai-batch verify``: is a manifest complete and well formed?

Nightly jobs are trusted only if their output can be checked without reading
the code that wrote it. Every promise the manifest makes is checked here:
the schema of every part, exactly one current row per image, method and
label (or one error row per image and method), decodable PNGs of the model's input size (job.json's
preprocessing), one weight per superpixel,
one configuration, and, given SOURCE, a row for every image and for nothing
else.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import numpy as np
import pyarrow.fs as pafs

from xai_batch.manifest import (
    GROUP_ROWS, MANIFEST_DIR, current_groups, decode_heatmap, decode_mask, decode_segments, load_job_record,
    manifest_dataset, new_run_id, recorded_preprocessing,
)
from xai_batch.manifest.reader import part_problem
from xai_batch.manifest.lock import OutputLock
from xai_batch.methods import METHODS, get_method
from xai_batch.sources import discover_images
from xai_batch.storage import Location, locate

__all__ = ["VerifyReport", "verify_manifest", "repair_manifest", "DAMAGED_DIR"]

DAMAGED_DIR = "damaged"  # where --repair moves the parts the manifest cannot use

MAX_LISTED = 20  # problems of one kind listed by name before counting the rest


@dataclass
class VerifyReport:
    rows: int = 0
    images: int = 0
    ok: int = 0
    errors: int = 0
    superseded: int = 0
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        verdict = "OK" if not self.problems else f"{len(self.problems)} problem(s)"
        return (
            f"{self.rows} rows for {self.images} images: {self.ok} explained, {self.errors} errors"
            f" ({self.superseded} superseded rows of earlier runs ignored) — {verdict}"
        )


def verify_manifest(out: str, source: str | None = None, group_rows: int = GROUP_ROWS) -> VerifyReport:
    """Check the manifest under ``out``; ``source`` adds the completeness checks.

    The rows are checked a group of images at a time
    (:func:`~xai_batch.manifest.current_groups`), so what is held does not
    grow with the manifest; problems of one kind are counted past the first
    ``MAX_LISTED``.
    """
    report = VerifyReport()
    folder = locate(out).child(MANIFEST_DIR)
    if not folder.is_dir():
        report.problems.append(f"no manifest folder at {folder.target}")
        return report
    problems = _Problems()
    for name, problem in _part_problems(folder):
        problems.add("part", f"{name}: {problem}")
    if problems.by_kind:
        report.problems = problems.lines()
        return report
    expected = set(discover_images(source, skip=out)) if source is not None else None
    crop = recorded_preprocessing(load_job_record(out)).crop
    hashes: dict[str, set] = collections.defaultdict(set)
    for (table,) in current_groups([out], group_rows=group_rows, once=False):
        rows = table.to_pylist()
        report.rows += len(rows)
        by_path: dict[str, list[dict]] = collections.defaultdict(list)
        for row in rows:
            by_path[row["path"]].append(row)
            hashes[row["method"]].add(row["config_hash"])
        report.images += len(by_path)
        for path, group in by_path.items():
            failed = False
            by_method: dict[str, list[dict]] = collections.defaultdict(list)
            for row in group:
                by_method[row["method"]].append(row)
            for method, rows_of in by_method.items():
                failed |= _check_method_rows(path if len(by_method) == 1 else f"{path} [{method}]", rows_of, crop,
                                             problems)
            report.errors += failed
            report.ok += not failed
            if len({row["sha256"] for row in group if row["status"] == "ok"}) > 1:
                problems.add("sha256", f"{path}: rows for different file contents")
            if expected is not None:
                if path in expected:
                    expected.remove(path)
                else:
                    problems.add("stray", f"{path}: row for a file that is not an image in SOURCE")
    for method in sorted(hashes):
        if len(hashes[method]) > 1:
            problems.add("config", f"{method} rows of {len(hashes[method])} configurations: "
                                   f"{', '.join(sorted(map(str, hashes[method])))}")
    for path in sorted(expected or ()):
        problems.add("missing", f"{path}: image in SOURCE without a row")
    report.superseded = manifest_dataset(out).count_rows() - report.rows
    report.problems = problems.lines()
    return report


def repair_manifest(out: str) -> list[str]:
    """Move the manifest's part files it cannot use (unreadable, or not one xai-batch wrote: another schema,
    run ids no run made) into ``OUT/damaged`` (nothing is deleted); their names.

    Their images then have no rows, so the next run into ``out`` redoes them.
    Holds the output's lease: no run writes meanwhile.
    """
    folder = locate(out).child(MANIFEST_DIR)
    aside = locate(out).child(DAMAGED_DIR)
    moved = []
    with OutputLock(out, new_run_id()):
        for name, _ in _part_problems(folder):
            aside.make_dirs()
            folder.child(name).move_to(aside.child(name))
            moved.append(f"{name} -> {aside.child(name).target}")
    return moved


def _part_problems(folder: Location) -> list[tuple[str, str]]:
    """(part file, what is wrong with it) for each part the manifest cannot use (:func:`part_problem`)."""
    found = []
    if not folder.is_dir():
        return found
    for info in sorted(folder.filesystem.get_file_info(pafs.FileSelector(folder.path)), key=lambda i: i.base_name):
        name = info.base_name
        if name.startswith((".", "_")) or info.type != pafs.FileType.File:
            continue
        problem = part_problem(folder.filesystem, info.path)
        if problem is not None:
            found.append((name, problem))
    return found


def _check_method_rows(where: str, group: list[dict], crop: int, problems: _Problems) -> bool:
    """Check one image's current rows of one method; True if they record an error."""
    statuses = {row["status"] for row in group}
    if statuses == {"error"}:
        if len(group) != 1:
            problems.add("duplicate", f"{where}: {len(group)} error rows{_copies(group)}")
        if not group[0]["error"] or "\n" in group[0]["error"]:
            problems.add("error", f"{where}: error row without a one-line reason")
        return True
    if statuses != {"ok"}:
        problems.add("status", f"{where}: statuses {sorted(map(str, statuses))}")
        return True
    labels = collections.Counter(row["explained_index"] for row in group)
    for label, count in labels.items():
        if count > 1:
            copies = [row for row in group if row["explained_index"] == label]
            problems.add("duplicate", f"{where}: {count} rows for label {label}{_copies(copies)}")
    for row in group:
        _check_ok_row(f"{where} (label {row['explained_index']})", row, crop, problems)
    return False


def _copies(rows: list[dict]) -> str:
    """What to say of rows that are one row several times: a compaction stopped between its steps."""
    if all(row == rows[0] for row in rows[1:]):
        return " (the same row each time: a compaction was stopped; run xai-batch compact again)"
    return ""


def _check_ok_row(where: str, row: dict, crop: int, problems: _Problems) -> None:
    """One ok row's promises; its PNGs are ``crop`` x ``crop``, the model's input."""
    num_segments = row["num_segments"]
    if row["error"] is not None:
        problems.add("error", f"{where}: ok row with an error")
    if not row["weights"] or len(row["weights"]) != num_segments:
        problems.add("weights", f"{where}: {len(row['weights'] or [])} weights for {num_segments} superpixels")
    if not row["topk_index"] or row["pred_index"] != row["topk_index"][0]:
        problems.add("prediction", f"{where}: pred_index is not the first of topk_index")
    try:
        segments = decode_segments(row["segments"])
        if segments.shape != (crop, crop):
            problems.add("segments", f"{where}: segments PNG is {segments.shape}, not {crop}x{crop}")
        elif segments.max() >= num_segments or not np.bincount(segments.ravel(), minlength=num_segments).all():
            problems.add("segments", f"{where}: segment ids are not 0..{num_segments - 1}")
    except Exception as exc:
        problems.add("segments", f"{where}: segments PNG does not decode ({exc})")
    try:
        mask = decode_mask(row["mask"])
        if mask.shape != (crop, crop) or mask.max() > 2:
            problems.add("mask", f"{where}: mask PNG is not {crop}x{crop} with values 0, 1, 2")
    except Exception as exc:
        problems.add("mask", f"{where}: mask PNG does not decode ({exc})")
    if (row["heatmap"] is not None) != (row["method"] in METHODS and get_method(row["method"]).heatmaps):
        problems.add("heatmap", f"{where}: a heatmap is Grad-CAM's and only Grad-CAM's")
    elif row["heatmap"] is not None:
        try:
            if decode_heatmap(row["heatmap"]).shape != (crop, crop):
                problems.add("heatmap", f"{where}: heatmap PNG is not {crop}x{crop}")
        except Exception as exc:
            problems.add("heatmap", f"{where}: heatmap PNG does not decode ({exc})")


class _Problems:
    """Problems by kind, the first few of each kept, the rest counted."""

    def __init__(self) -> None:
        self.by_kind: dict[str, list[str]] = collections.defaultdict(list)
        self.more: collections.Counter = collections.Counter()

    def add(self, kind: str, message: str) -> None:
        if len(self.by_kind[kind]) < MAX_LISTED:
            self.by_kind[kind].append(message)
        else:
            self.more[kind] += 1

    def lines(self) -> list[str]:
        out = []
        for kind, messages in self.by_kind.items():
            out += messages
            if self.more[kind]:
                out.append(f"... and {self.more[kind]} more of kind '{kind}'")
        return out
