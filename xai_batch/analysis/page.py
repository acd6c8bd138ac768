"""The HTML report: one self-contained page from a run's summary, audit and explanations.

Pure functions: what the page shows is a JSON document (:func:`report_document`)
that the page's own script turns into the summary, the accuracy tables, the
findings and a gallery filtered, sorted and paged in the browser, so 10,000
rows cost one small script and a page of thumbnails at a time. The page loads
nothing from the network and runs no script but its own: its
Content-Security-Policy allows only the SHA-256 of its inline script and
style, so a name that slipped past escaping could not run as code. Pictures
are embedded as data URIs or lie in a folder beside it.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import html
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import resources

from xai_batch.analysis.agreement import methods_in
from xai_batch.manifest import QUALITY_COLUMNS, image_rows, method_rows
from xai_batch.methods import DEFAULT_METHOD

__all__ = ["PAGE_SIZE", "folders_are_classes", "first_folders", "gallery_rows", "report_document", "report_html"]

PAGE_SIZE = 48  # cards per gallery page

# The template's inline code: <script> and <style> with no attributes (the document's
# <script type="application/json"> is data, which a browser never runs and CSP does not govern).
_INLINE_CODE = re.compile(r"<(script|style)>(.*?)</\1>", re.DOTALL)
_PLACEHOLDER = re.compile(r"__XAI_BATCH_(TITLE|DATA|SCRIPT_SRC|STYLE_SRC)__")


def folders_are_classes(folders: set[str], predicted: set[str]) -> bool:
    """Whether the images' first ``folders`` can be their true labels: some folder names a label the run
    ``predicted`` (for an ok row).

    A SOURCE merely organised in folders (``2026/``, ``micro/``) is not
    class-per-folder; reading its folders as classes would report every
    image misclassified.
    """
    return bool(folders & predicted)


def first_folders(paths: Iterable[str]) -> set[str]:
    """The first folder of each path that has one."""
    return {path.partition("/")[0] for path in paths if "/" in path}


def gallery_rows(
    rows: Sequence[dict],
    truth: Callable[[str], str | None],
    predicted: Callable[[dict], str],
    findings: Mapping[str, Sequence[dict]],
    pictures: Mapping[tuple[str, str], tuple[str, str]],
) -> list[dict]:
    """One gallery entry per explained image: labels, probability, findings, and a view per method.

    ``pictures`` maps (path, method) to (src, error): the picture's URL, or
    why there is none. Each view holds a method's picture, LIME's fit score
    and the quality measures; the entry's own ``img``, ``score`` and
    ``quality`` are its first view's, and ``most_faithful`` names the
    method with the lowest deletion AUC when two or more were measured and
    one is lower than the others.
    """
    by_path: dict[str, list[str]] = {}
    for kind, items in findings.items():
        for item in items:
            by_path.setdefault(item["path"], []).append(kind)
    views: dict[str, list[dict]] = {}
    for method in methods_in(rows):
        for path, row in method_rows(rows, method).items():
            src, error = pictures.get((path, method), ("", "not drawn"))
            views.setdefault(path, []).append({
                "method": method, "img": src, "img_error": error,
                "score": None if row.get("score") is None else round(float(row["score"]), 4),
                "quality": {column: _rounded(row[column]) for column in QUALITY_COLUMNS if row.get(column) is not None},
            })
    entries = []
    for path, row in image_rows(rows).items():
        if row["status"] != "ok":
            continue
        true_label, label, shown = truth(path), predicted(row), views[path]
        aucs = sorted((view["quality"]["deletion_auc"], view["method"]) for view in shown
                      if "deletion_auc" in view["quality"])
        entries.append({
            "path": path, "truth": true_label, "pred": label, "class": row["pred_name"],
            "prob": round(float(row["pred_prob"]), 4),
            "correct": None if true_label is None else true_label == label,
            "findings": by_path.get(path, []),
            **{key: shown[0][key] for key in ("img", "img_error", "score", "quality")},
            "views": shown,
            "most_faithful": aucs[0][1] if len(aucs) > 1 and aucs[0][0] < aucs[1][0] else None,
        })
    return entries


def _rounded(value):
    return value if isinstance(value, bool) else round(float(value), 4)


def report_document(summary: dict, audit: dict, gallery: list[dict], audited: dict | None) -> dict:
    """Everything the page shows: ``audit`` holds accuracy, confusion and findings (computed or read)."""
    return {
        "title": f"xai-batch report: {summary['out']}",
        "generated": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "summary": {**summary, "labelled": audit["counts"]["labelled"]},
        "accuracy": audit["accuracy"],
        "per_class": audit["per_class"],
        "confusion": audit["confusion"],
        "findings": audit["findings"],  # the first of each kind
        "finding_counts": {kind: audit["counts"][kind] for kind in audit["findings"]},
        "findings_file": audited.get("findings_file") if audited else None,
        "since_previous": audit.get("since_previous"),
        "quality": audit.get("quality"),
        "methods": audit.get("methods", [DEFAULT_METHOD]),
        "quality_by_method": audit.get("quality_by_method"),
        "agreement": audit.get("agreement", []),
        "audit": {"created": audited["created"], "previous": audited.get("previous")} if audited else None,
        "rows": gallery,
        "page_size": PAGE_SIZE,
    }


def _csp_hash(code: str) -> str:
    """The Content-Security-Policy hash source that lets inline ``code`` run: the base64 of the SHA-256 of its
    UTF-8, the text between its tags exactly as the browser hashes it."""
    digest = hashlib.sha256(code.encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode('ascii')}'"


def report_html(document: dict) -> str:
    """The page: the template with the document embedded as JSON (safe inside a script element) and a
    Content-Security-Policy naming the hashes of the template's own script and style.

    The placeholders are filled in one pass, so a title or a path that spells one is left as text.
    """
    template = resources.files("xai_batch").joinpath("templates/report.html").read_text(encoding="utf-8")
    payload = json.dumps(document, separators=(",", ":"), ensure_ascii=False)
    payload = payload.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    hashes: dict[str, list[str]] = {"script": [], "style": []}
    for tag, code in _INLINE_CODE.findall(template):
        hashes[tag].append(_csp_hash(code))
    values = {"TITLE": html.escape(document["title"]), "DATA": payload,
              "SCRIPT_SRC": " ".join(hashes["script"]), "STYLE_SRC": " ".join(hashes["style"])}
    return _PLACEHOLDER.sub(lambda match: values[match[1]], template)
