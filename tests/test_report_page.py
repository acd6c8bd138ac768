"""The report page: when a SOURCE's folders are its classes, the Content-Security-Policy it is written
with, and, in a real headless Chromium, what a shared link's hash may ask of it."""

import base64
import hashlib
import json
from html.parser import HTMLParser

import pytest

from browser import Chromium

from xai_batch.analysis.page import first_folders, folders_are_classes, report_document, report_html

READY = "document.readyState === 'complete' && document.body.dataset.ready === 'true'"
DEFAULT_ORDER = ["cat/b.png", "dog/d.png", "dog/c.png", "cat/a.png", "dog/e.png"]  # score, highest first


def _row(path, pred, status="ok"):
    return {"path": path, "pred_name": pred, "status": status}


def _classes(rows):
    return folders_are_classes(first_folders(row["path"] for row in rows),
                               {row["pred_name"] for row in rows if row["status"] == "ok"})


def test_folders_that_name_predicted_labels_are_classes():
    rows = [_row("cat/a.jpg", "cat"), _row("dog/b.jpg", "cat"), _row("dog/c.jpg", "dog")]
    assert _classes(rows)


def test_folders_that_merely_organise_images_are_not():
    """micro/ and space/ on a model predicting label0..label3: every image would read as misclassified."""
    rows = [_row("micro/coins.tif", "label2"), _row("space/logo.png", "label2"), _row("flat.png", "label1")]
    assert not _classes(rows)
    assert not _classes([_row("a.png", "a")])  # no folders at all
    assert not _classes([_row("cat/a.jpg", None, "error")])


def _document(out="runs/night"):
    """The document of five explained images, listed in path order, which neither score nor confidence
    follows; cat/a.png and dog/e.png are misclassified."""
    gallery = []
    for path, pred, score, prob in [("cat/a.png", "dog", 0.2, 0.9), ("cat/b.png", "cat", 0.9, 0.3),
                                    ("dog/c.png", "dog", 0.5, 0.6), ("dog/d.png", "dog", 0.7, 0.8),
                                    ("dog/e.png", "cat", 0.1, 0.5)]:
        truth = path.partition("/")[0]
        view = {"img": "", "img_error": "not drawn in this test", "score": score, "quality": {}}
        gallery.append({"path": path, "truth": truth, "pred": pred, "class": pred, "prob": prob,
                        "correct": truth == pred, "findings": [] if truth == pred else ["misclassified"],
                        **view, "views": [{"method": "lime", **view}], "most_faithful": None})
    wrong = [{"path": g["path"], "true": g["truth"], "predicted": g["pred"], "prob": g["prob"]}
             for g in gallery if not g["correct"]]
    audit = {"counts": {"labelled": 5, "errors": 0, "misclassified": len(wrong)}, "accuracy": 0.6,
             "per_class": {}, "confusion": {"labels": ["cat", "dog"], "matrix": [[1, 1], [1, 2]]},
             "findings": {"errors": [], "misclassified": wrong}}
    summary = {"out": out, "source": "pets", "model_id": "resnet18:x", "state": "completed", "config_hash": "h",
               "num_samples": 40, "images": 5, "explained": 5, "errors": 0}
    return report_document(summary, audit, gallery, None)


class _Page(HTMLParser):
    """What a browser makes of a page's head and inline elements: the CSP meta tag's directives, the
    title, and each <script> and <style> as (tag, attributes, text between its tags)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.policy: dict[str, str] = {}
        self.title = ""
        self.inline: list[tuple[str, dict, str]] = []
        self._current: str | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "meta" and attrs.get("http-equiv", "").lower() == "content-security-policy":
            self.policy = dict(part.strip().split(" ", 1) for part in attrs["content"].split(";"))
        if tag in ("script", "style"):
            self.inline.append((tag, attrs, ""))
        self._current = tag

    def handle_data(self, data):
        if self._current in ("script", "style"):
            tag, attrs, text = self.inline[-1]
            self.inline[-1] = (tag, attrs, text + data)
        elif self._current == "title":
            self.title += data

    def handle_endtag(self, tag):
        self._current = None


def _sha256_source(text):
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"


def test_the_policy_lets_only_the_pages_own_script_and_style_run():
    """script-src and style-src are the hashes of the one inline script and style, not 'unsafe-inline';
    the document rides in a JSON data block, which is never run, so CSP does not govern it."""
    page = _Page(report_html(_document()))
    code = [text for tag, attrs, text in page.inline if tag == "script" and "type" not in attrs]
    styles = [text for tag, attrs, text in page.inline if tag == "style"]
    assert len(code) == 1 and "JSON.parse" in code[0]
    assert page.policy["script-src"] == _sha256_source(code[0])
    assert page.policy["style-src"] == _sha256_source(styles[0])
    assert not any("unsafe" in sources for sources in page.policy.values()), page.policy
    assert page.policy["default-src"] == "'none'"
    data = [(attrs, text) for tag, attrs, text in page.inline if attrs.get("type") == "application/json"]
    assert [attrs for attrs, _ in data] == [{"type": "application/json", "id": "data"}]
    assert [row["path"] for row in json.loads(data[0][1])["rows"]] == sorted(DEFAULT_ORDER)


def test_a_title_that_spells_a_placeholder_stays_text():
    """The template's placeholders are filled in one pass: a run folder named like one is not filled in."""
    page = _Page(report_html(_document(out="runs/__XAI_BATCH_DATA__ __XAI_BATCH_SCRIPT_SRC__")))
    assert page.title == "xai-batch report: runs/__XAI_BATCH_DATA__ __XAI_BATCH_SCRIPT_SRC__"


@pytest.fixture(scope="module")
def browser():
    chromium = Chromium()
    yield chromium
    chromium.close()


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    path = tmp_path_factory.mktemp("page") / "report.html"
    path.write_text(report_html(_document()), encoding="utf-8")
    return path


def _open(browser, page, fragment):
    """Load ``page`` afresh with ``fragment`` as its hash (from the same page, a new hash alone would not
    reload it, and the page reads its hash once, when it starts)."""
    browser.load("about:blank")
    browser.load(f"{page.as_uri()}#{fragment}", ready=READY, timeout=15)


def _shown(browser):
    return browser.evaluate("[...document.querySelectorAll('#gallery .card')].map(c => c.dataset.path)")


def _controls(browser):
    return browser.evaluate("Object.fromEntries([...document.querySelectorAll('.controls select, .controls input')]"
                            ".map(c => [c.id, c.value]))")


DEFAULT_CONTROLS = {"f-label": "", "f-pred": "", "f-correct": "", "f-finding": "", "f-faithful": "",
                    "f-min": "0", "f-max": "1", "f-sort": "score-desc"}


@pytest.mark.parametrize("fragment", [
    "sort=__proto__",
    "sort=constructor&finding=__proto__&correct=toString",
    "sort=toString&label=hasOwnProperty&pred=valueOf&faithful=__proto__&min=abc&max=constructor&page=__proto__",
], ids=["sort", "sort-finding-correct", "every-field"])
def test_a_link_asking_for_what_the_page_lacks_shows_the_default_view(page, browser, fragment):
    """Object.prototype's names, unknown classes and non-numbers in a shared link fall back to the default:
    every row, highest score first, the controls showing the defaults, the page's style applied."""
    _open(browser, page, fragment)
    assert browser.console_errors() == []
    assert _shown(browser) == DEFAULT_ORDER
    assert browser.evaluate("document.getElementById('count').textContent") == "5 of 5 images"
    assert _controls(browser) == DEFAULT_CONTROLS
    assert browser.evaluate("getComputedStyle(document.getElementById('gallery')).display") == "grid"


def test_a_link_still_sets_what_the_page_offers(page, browser):
    _open(browser, page, "finding=misclassified&sort=score-asc&min=0.4&max=0.95")
    assert _shown(browser) == ["dog/e.png", "cat/a.png"]
    assert _controls(browser) == {**DEFAULT_CONTROLS, "f-finding": "misclassified", "f-sort": "score-asc",
                                  "f-min": "0.4", "f-max": "0.95"}


def test_a_script_injected_into_the_page_does_not_run(browser, tmp_path):
    """Under the hash-only policy an inline script or event handler that is not the page's own is refused."""
    injected = ("<script>document.body.dataset.injected = 'script'</script>"
                "<img src=\"missing.png\" onerror=\"document.body.dataset.injected = 'handler'\">")
    path = tmp_path / "report.html"
    path.write_text(report_html(_document()).replace("</body>", injected + "</body>"), encoding="utf-8")
    browser.load(path.as_uri(), ready=READY, timeout=15)
    assert _shown(browser) == DEFAULT_ORDER
    assert browser.evaluate("document.body.dataset.injected ?? 'not run'") == "not run"
