"""xai-batch report, opened in a real headless Chromium: summary, confusion matrix, findings, gallery filters.

Screenshots are saved in the test's folder, and also in $XAI_BATCH_SCREENSHOTS when that is set,
so a person can look at them.
"""

import json
import os
import shutil

import pytest
from click.testing import CliRunner

from browser import Chromium
from helpers import SHAPES_FRAME

from xai_batch.cli import cli
from xai_batch.manifest import read_manifest
from xai_batch.analysis.page import PAGE_SIZE, report_document, report_html

pytestmark = pytest.mark.slow

HOSTILE = '<img src=x onerror="document.title=1">.png'  # a legal file name that must stay text


@pytest.fixture(scope="module")
def audited(ray_session, shapes_data, shapes_model, tmp_path_factory):
    """An audited run: the held-out shapes, a disc filed under cat/, a hostile name, a broken file."""
    root = tmp_path_factory.mktemp("report")
    source = root / "data"
    shutil.copytree(shapes_data["holdout"], source, ignore=shutil.ignore_patterns("*.mask.pgm"))
    (source / "cat").mkdir()
    shutil.copy(source / "disc" / "disc_0000.png", source / "cat" / "disc.png")
    shutil.copy(source / "square" / "square_0001.png", source / "square" / HOSTILE)
    (source / "triangle" / "broken.png").write_bytes(b"not a png at all")
    out = root / "run"
    result = CliRunner().invoke(cli, ["audit", str(source), "--out", str(out), "--checkpoint", shapes_model,
                                      "--num-samples", "20", "--batch-size", "20", "--no-faithfulness",
                                      "--stability", "--no-progress"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def browser():
    chromium = Chromium()
    yield chromium
    chromium.close()


def _save(browser, tmp_path, name):
    path = tmp_path / name
    browser.screenshot(str(path))
    if os.environ.get("XAI_BATCH_SCREENSHOTS"):
        os.makedirs(os.environ["XAI_BATCH_SCREENSHOTS"], exist_ok=True)
        shutil.copy(path, os.path.join(os.environ["XAI_BATCH_SCREENSHOTS"], name))
    assert path.stat().st_size > 10_000  # a real picture, not a blank page


def _choose(browser, control, value):
    """What a user's choice in a <select> or <input> does: set the value, fire 'change'."""
    browser.evaluate(f"(() => {{ const c = document.getElementById({json.dumps(control)}); "
                     f"c.value = {json.dumps(value)}; c.dispatchEvent(new Event('change')); }})()")


def _shown(browser):
    return browser.evaluate("[...document.querySelectorAll('#gallery .card')].map(c => c.dataset.path)")


def test_report_in_a_real_browser(audited, browser, tmp_path):
    (audited / "report_files").mkdir()  # the user's own folder, by the name pictures beside the page would take
    (audited / "report_files" / "notes.txt").write_text("mine")
    result = CliRunner().invoke(cli, ["report", str(audited), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "8 images, pictures embedded; 0 could not be drawn" in result.output
    page = audited / "report.html"
    assert os.listdir(audited / "report_files") == ["notes.txt"]  # embedded: nothing written there, nothing deleted
    assert not [name for name in os.listdir(audited) if name.startswith(".xai-batch-embed-")]  # its own, removed
    shutil.rmtree(audited / "report_files")
    audit = json.loads((audited / "audit.json").read_text())
    rows = {row["path"]: row for row in read_manifest(str(audited)).to_pylist()}

    browser.load(page.as_uri(), ready="document.body.dataset.ready === 'true'")
    assert browser.console_errors() == []
    assert all(url.startswith(("file:", "data:")) for url in browser.requested()), browser.requested()
    stats = browser.evaluate("document.getElementById('stats').innerText")
    assert "9\nimages" in stats and "1\nerrors" in stats and f"{audit['accuracy']:.3f}" in stats
    matrix = browser.evaluate("[...document.querySelectorAll('#confusion-matrix tr')].map(r => "
                              "[...r.children].map(c => c.textContent))")
    labels = audit["confusion"]["labels"]
    assert matrix[0] == ["true \\ predicted", *labels]
    shown_rows = [r for r in matrix[1:]]
    for row in shown_rows:  # rows of true labels, with the counts audit.json has
        assert [int(n) for n in row[1:]] == audit["confusion"]["matrix"][labels.index(row[0])]
    assert browser.evaluate("document.querySelector('details[data-kind=errors] td.path').textContent") \
        == "triangle/broken.png"
    quality = browser.evaluate("[...document.querySelectorAll('#quality-table tr')].map(r => r.children[0].textContent)")
    assert quality == ["measure (mean over images)", "stability: top-k Jaccard with a second seed"]  # what was measured
    assert "stability" in browser.evaluate("document.querySelector('#gallery .card .quality').textContent")

    # The gallery: every explained image, the hostile name as text, pictures decoded.
    assert sorted(_shown(browser)) == sorted(p for p, r in rows.items() if r["status"] == "ok")
    assert browser.evaluate("document.getElementById('count').textContent") == "8 of 8 images"
    assert browser.evaluate("[...document.querySelectorAll('.card .path')].some(p => p.textContent === "
                            f"{json.dumps('square/' + HOSTILE)})")
    assert browser.evaluate("document.querySelectorAll('img[src=\"x\"]').length") == 0
    assert browser.evaluate("document.title") != "1"
    assert browser.evaluate("(() => { const i = document.querySelector('#gallery img'); "
                            "return new Promise(r => i.complete ? r(i.naturalWidth) : i.onload = () => r(i.naturalWidth)); })()") == SHAPES_FRAME["crop"]
    _save(browser, tmp_path, "report-all.png")

    # A filter: only the wrong predictions, and they are the audit's misclassified images.
    _choose(browser, "f-correct", "wrong")
    wrong = sorted(f["path"] for f in audit["findings"]["misclassified"])
    assert "cat/disc.png" in wrong and sorted(_shown(browser)) == wrong
    assert "correct=wrong" in browser.evaluate("location.hash")
    _save(browser, tmp_path, "report-wrong.png")
    # Sorted by score, lowest first; then a true class on top of the filter.
    _choose(browser, "f-correct", "")
    _choose(browser, "f-sort", "score-asc")
    scores = [rows[p]["score"] for p in _shown(browser)]
    assert scores == sorted(scores)
    _choose(browser, "f-label", "square")
    assert sorted(_shown(browser)) == sorted(p for p, r in rows.items() if p.startswith("square/") and r["status"] == "ok")
    # The URL holds the view: reloading it shows the same selection.
    browser.load(browser.evaluate("location.href"), ready="document.body.dataset.ready === 'true'")
    assert browser.evaluate("document.getElementById('f-label').value") == "square"
    assert all(p.startswith("square/") for p in _shown(browser))


def test_pictures_beside_the_page(audited, browser, tmp_path):
    page = tmp_path / "site" / "nightly.html"
    result = CliRunner().invoke(cli, ["report", str(audited), "--to", str(page), "--images", "beside", "--no-progress"])
    assert result.exit_code == 0, result.output
    files = sorted(os.listdir(tmp_path / "site" / "nightly_files"))
    assert len(files) == 8 and all(name.endswith(".jpg") for name in files)
    browser.load(page.as_uri(), ready="document.body.dataset.ready === 'true'")
    assert browser.evaluate("(() => { const i = document.querySelector('#gallery img'); "
                            "return new Promise(r => i.complete ? r(i.naturalWidth) : i.onload = () => r(i.naturalWidth)); })()") == SHAPES_FRAME["crop"]
    assert browser.console_errors() == []


def test_ten_thousand_rows_stay_paged_and_filterable(browser, tmp_path):
    """The page at 10,000 images: one page of cards in the DOM, filters over all of them."""
    (tmp_path / "r_files").mkdir()
    classes = ["glioma", "meningioma", "notumor", "pituitary"]
    gallery = []
    for i in range(10_000):
        truth, pred = classes[i % 4], classes[(i // 4) % 4 if i % 7 == 0 else i % 4]
        gallery.append({"path": f"{truth}/img_{i:05d}.jpg", "truth": truth, "pred": pred, "class": pred,
                        "prob": round((i % 100) / 100, 2), "score": round((i * 37 % 1000) / 1000, 3),
                        "correct": truth == pred, "findings": [] if truth == pred else ["misclassified"],
                        "img": "", "img_error": "not drawn in this test", "quality": {}, "most_faithful": None})
        gallery[-1]["views"] = [{"method": "lime", **{k: gallery[-1][k] for k in ("img", "img_error", "score", "quality")}}]
    wrong = [g for g in gallery if not g["correct"]]
    audit = {"counts": {"labelled": 10_000, "errors": 0, "misclassified": len(wrong)}, "accuracy": 1 - len(wrong) / 10_000, "per_class": {},
             "confusion": {"labels": classes, "matrix": [[0] * 4 for _ in classes]},
             "findings": {"errors": [], "misclassified": [{"path": g["path"], "true": g["truth"],
                                                           "predicted": g["pred"], "prob": g["prob"]} for g in wrong]}}
    summary = {"out": "big", "source": "mri", "model_id": "resnet18:x", "state": "completed", "config_hash": "h",
               "num_samples": 1000, "images": 10_000, "explained": 10_000, "errors": 0}
    page = tmp_path / "r.html"
    page.write_text(report_html(report_document(summary, audit, gallery, None)), encoding="utf-8")
    assert page.stat().st_size < 5_000_000
    browser.load(page.as_uri(), ready="document.body.dataset.ready === 'true'")
    assert browser.evaluate("document.querySelectorAll('#gallery .card').length") == PAGE_SIZE
    assert browser.evaluate("document.getElementById('count').textContent") == "10000 of 10000 images"
    _choose(browser, "f-label", "meningioma")
    _choose(browser, "f-correct", "wrong")
    expected = sum(1 for g in wrong if g["truth"] == "meningioma")
    assert browser.evaluate("document.getElementById('count').textContent") == f"{expected} of 10000 images"
    browser.evaluate("document.getElementById('next').click()")
    assert browser.evaluate("document.getElementById('page').textContent") == f"page 2 of {-(-expected // PAGE_SIZE)}"
    assert len(_shown(browser)) == min(PAGE_SIZE, expected - PAGE_SIZE)
    _save(browser, tmp_path, "report-10k.png")


def test_a_big_runs_gallery_is_its_findings_then_a_seeded_sample(audited, tmp_path, monkeypatch):
    """Past GALLERY_UP_TO explained images the gallery is bounded, and says so; the summary and the
    findings still cover every image."""
    import xai_batch.commands.report as report

    monkeypatch.setattr(report, "GALLERY_UP_TO", 3)
    documents = []
    for name in ("one.html", "two.html"):
        result = report.run_report(str(audited), to=str(tmp_path / name), progress=False)
        text = (tmp_path / name).read_text()
        documents.append(json.loads(text.split('<script type="application/json" id="data">')[1].split("</script>")[0]))
        assert result.images == 3
    first, second = documents
    assert [row["path"] for row in first["rows"]] == [row["path"] for row in second["rows"]]  # the same sample
    assert first["summary"]["explained"] == 8 and len(first["rows"]) == 3
    assert first["summary"]["gallery"].startswith("the gallery shows 3 of 8 explained images")
    assert "cat/disc.png" in {row["path"] for row in first["rows"]}  # misclassified: a finding, shown first
    assert "cat/disc.png" in [item["path"] for item in first["findings"]["misclassified"]]
