"""``xai-batch report``: a run as one HTML page, its pictures drawn by the renderer's Ray tasks.

Accuracy, the confusion matrix, the findings and the quality summary are
computed from the manifest (with the audit's labels, label map and
thresholds unless given); what needs an earlier run (changed, moved) comes
from ``audit.json`` where the run was audited. Each
image's top-label explanation is drawn as a 224x224 JPEG thumbnail (lime's
figure): embedded in the page for up to ``EMBED_UP_TO`` images, else in a
folder beside it, loaded as the gallery pages through them.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import uuid
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from xai_batch.analysis.agreement import methods_in
from xai_batch.analysis.findings import FINDINGS, Thresholds, audit_findings, load_audit
from xai_batch.manifest import method_rows
from xai_batch.errors import ConfigError
from xai_batch.manifest.record import load_job_record
from xai_batch.labels import prediction_labeller, truth_labeller
from xai_batch.manifest import SCHEMA, current_groups
from xai_batch.analysis.page import first_folders, folders_are_classes, gallery_rows, report_document, report_html
from xai_batch.analysis.overlays import RenderOptions
from xai_batch.distributed.rendering import render_rows
from xai_batch.manifest.reader import chosen_methods
from xai_batch.storage import join, locate, redact

__all__ = ["IMAGES", "EMBED_UP_TO", "ReportResult", "run_report"]

IMAGES = ("auto", "embed", "beside")
EMBED_UP_TO = 1000  # images; about 15 KB each in the page
GALLERY_UP_TO = 2000  # images the gallery of a bigger run shows: the page stays small enough to open at once
GALLERY_SEED = 0
SHOWN_COLUMNS = [name for name in SCHEMA.names if name != "heatmap"]  # what a thumbnail and its card need
COMPARED = ("changed", "moved")  # findings only an audit against a previous run can make


@dataclass(frozen=True)
class ReportResult:
    path: str
    images: int
    pictures: str | None  # the folder beside the page, when not embedded
    errors: int  # images whose picture could not be drawn


def run_report(
    out: str, to: str | None = None, images: str = "auto", labels: str | None = None,
    label_map: str | None = None, source: str | None = None, address: str | None = None, progress: bool = True,
    methods: tuple[str, ...] = (), insecure: bool = False,
) -> ReportResult:
    """Write the report of the run in ``out`` to ``to`` (default ``OUT/report.html``).

    ``methods`` picks the explanation methods shown side by side (default:
    every method in the manifest).
    """
    if images not in IMAGES:
        raise ConfigError(f"images must be one of {', '.join(IMAGES)}, got {images!r}", "images")
    present, folders, predictions = set(), set(), set()
    record, audited = load_job_record(out), load_audit(out)
    if audited:
        labels = labels if labels is not None else audited.get("labels")
        label_map = label_map if label_map is not None else audited.get("label_map")
    truth, predicted = truth_labeller(labels), prediction_labeller(label_map)
    for (table,) in current_groups([out], ["path", "status", "method", "pred_index", "pred_name"]):
        present |= set(table["method"].to_pylist())
        folders |= first_folders(table["path"].to_pylist())
        predictions |= {predicted(row) for row in table.filter(pc.equal(table["status"], "ok")).to_pylist()}
    if not present:
        raise ConfigError(f"no manifest under {out!r}: run xai-batch explain first", "out")
    chosen_methods([{"method": method} for method in sorted(present)], methods)  # names a method it lacks
    if labels is None and not folders_are_classes(folders, predictions):
        truth = _no_truth  # folders that are not classes: no accuracy rather than 0 %
    thresholds = Thresholds(**audited["thresholds"]) if audited else Thresholds()
    num_features = record.get("config", {}).get("num_features", 5)
    audit = audit_findings(out, None, set(methods or present), truth, predicted, thresholds, num_features)
    if audited:
        audit["findings"].update({kind: audited["findings"][kind] for kind in COMPARED})
        audit["counts"].update({kind: audited["counts"][kind] for kind in COMPARED})
        audit["since_previous"] = audited.get("since_previous")
    chosen, flagged = _gallery_paths(out, audit)
    wanted, shown_methods = pa.array(sorted(chosen), pa.string()), pa.array(sorted(methods or present), pa.string())
    picked = [table.filter(pc.and_(pc.is_in(table["path"], wanted), pc.is_in(table["method"], shown_methods)))
              for (table,) in current_groups([out], SHOWN_COLUMNS)]
    rows = pa.concat_tables(picked).sort_by([("path", "ascending"), ("method", "ascending"),
                                             ("explained_index", "ascending")]).to_pylist()
    to = to or join(out, "report.html")
    parent, _, name = to.rpartition("/")
    shown = [row for method in methods_in(rows) for row in method_rows(rows, method).values()]
    jobs = [(row, f"{number:05d}.jpg") for number, row in enumerate(shown)]
    embed = images == "embed" or (images == "auto" and len(jobs) <= EMBED_UP_TO)
    # Pictures to embed are drawn into a folder of this run's own, deleted after; never into one that may be the
    # user's. Pictures beside the page go to report_files/ beside report.html.
    folder_name = f".xai-batch-embed-{uuid.uuid4().hex}" if embed else name.removesuffix(".html") + "_files"
    folder = join(parent, folder_name) if parent else folder_name
    options = RenderOptions(style="boundaries", num_features=num_features)
    pictures = {}
    try:
        entries = render_rows(jobs, out, source, folder, options, address, progress, insecure=insecure) if jobs else []
        for entry in entries:
            key = (entry["path"], entry["method"])
            if entry["error"]:
                pictures[key] = ("", entry["error"])
            elif embed:
                data = locate(join(folder, entry["file"])).read_bytes()
                pictures[key] = ("data:image/jpeg;base64," + base64.b64encode(data).decode(), "")
            else:
                pictures[key] = (f"{folder_name}/{entry['file']}", "")
    finally:
        if embed:
            locate(folder).delete_dir()
    shown_source = record.get("config", {}).get("source", source)
    summary = {
        "out": redact(out), "source": None if shown_source is None else redact(shown_source),
        "model_id": record.get("model_id"),
        "state": record.get("state"),
        "config_hash": ", ".join(f"{method} {digest}" for method, digest in record.get("config_hashes", {}).items()),
        "num_samples": record.get("config", {}).get("num_samples"),
        "images": audit["counts"]["images"], "explained": audit["counts"]["explained"],
        "errors": audit["counts"]["errors"],
    }
    gallery = gallery_rows(rows, truth, predicted, audit["findings"], pictures)
    if len(gallery) < audit["counts"]["explained"]:
        summary["gallery"] = (f"the gallery shows {len(gallery)} of {audit['counts']['explained']} explained images: "
                              f"the {flagged} with findings first, then a seeded sample of the rest")
    page = report_html(report_document(summary, audit, gallery, audited))
    with locate(to).atomic_writer() as stream:
        stream.write(page.encode("utf-8"))
    errors = sum(1 for entry in entries if entry["error"])
    return ReportResult(path=locate(to).target, images=len(gallery), pictures=None if embed else folder, errors=errors)


def _gallery_paths(out: str, audit: dict) -> tuple[set[str], int]:
    """The images the gallery shows: all, or for a big run ``GALLERY_UP_TO`` of them, those with findings
    first (in the findings' order), then a sample seeded by ``GALLERY_SEED`` (the same, however the
    manifest's parts are laid out); and how many of them have findings."""
    flagged = list(dict.fromkeys(item["path"] for kind in FINDINGS if kind != "errors"  # errors have no picture
                                 for item in audit["findings"].get(kind, ())))
    if audit["counts"]["explained"] <= GALLERY_UP_TO:
        return {path for (table,) in current_groups([out], ["path"]) for path in table["path"].to_pylist()}, 0
    chosen = set(flagged[:GALLERY_UP_TO])
    sample: list[tuple[bytes, str]] = []  # a heap of the smallest keys: the same sample, however grouped
    for (table,) in current_groups([out], ["path", "status", "method"]):
        for path in set(table.filter(pc.equal(table["status"], "ok"))["path"].to_pylist()) - chosen:
            key = hashlib.sha256(f"{GALLERY_SEED}:{path}".encode()).digest()
            if len(sample) < GALLERY_UP_TO - len(chosen):
                heapq.heappush(sample, (_inverted(key), path))
            elif sample and _inverted(key) > sample[0][0]:
                heapq.heapreplace(sample, (_inverted(key), path))
    return chosen | {path for _, path in sample}, min(len(flagged), GALLERY_UP_TO)


def _inverted(key: bytes) -> bytes:
    """A key whose order is the reverse of ``key``'s, so a min-heap keeps the smallest keys."""
    return bytes(255 - byte for byte in key)


def _no_truth(path: str) -> None:
    return None
