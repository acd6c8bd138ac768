import pytest

from xai_batch.errors import ConfigError
from xai_batch.labels import folder_label, load_label_map, load_truth
from xai_batch.analysis.design import Design, annotate, band_name, select

CLASSES = ("glioma", "meningioma", "notumor", "pituitary")


def _rows(count_per_class=12):
    """Rows as the manifest holds them: class-per-folder paths, predictions right for 2 of 3."""
    rows = []
    for c, name in enumerate(CLASSES):
        for i in range(count_per_class):
            predicted = c if i % 3 else (c + 1) % 4
            rows.append({"path": f"{name}/{i:03d}.png", "method": "lime", "pred_index": predicted, "explained_index": predicted,
                         "pred_name": CLASSES[predicted], "pred_prob": 0.3 + 0.6 * (i % 4) / 3, "score": 0.5})
    return rows


def _pick(design, rows=None):
    annotated = annotate(rows or _rows(), folder_label, lambda row: row["pred_name"], design)
    return select(annotated, design)


def test_every_cell_gets_per_cell_images():
    stimuli, short = _pick(Design(by=("label", "correct"), per_cell=3, seed=1))
    assert short == {}
    cells = [s.cell for s in stimuli]
    assert len(stimuli) == 8 * 3 and all(cells.count(cell) == 3 for cell in set(cells))
    assert {s.cell for s in stimuli} == {f"{c}/{r}" for c in CLASSES for r in ("right", "wrong")}
    for s in stimuli:
        label, right = s.cell.split("/")
        assert s.true_label == label == s.row["path"].split("/")[0]
        assert (s.pred_label == s.true_label) == (right == "right")


def test_the_same_seed_gives_the_same_stimuli_in_the_same_order():
    design = Design(by=("label", "correct"), per_cell=2, seed=7)
    first, _ = _pick(design)
    again, _ = _pick(design, list(reversed(_rows())))  # row order does not matter
    assert [(s.stimulus_id, s.row["path"]) for s in first] == [(s.stimulus_id, s.row["path"]) for s in again]
    other, _ = _pick(Design(by=("label", "correct"), per_cell=2, seed=8))
    assert [s.row["path"] for s in other] != [s.row["path"] for s in first]
    assert [s.stimulus_id for s in first] == [f"S{i:03d}" for i in range(1, 17)]
    assert [s.cell for s in first] != sorted(s.cell for s in first)  # shuffled, not grouped by cell


def test_short_cells_are_reported_with_their_counts():
    stimuli, short = _pick(Design(by=("label", "correct", "confidence"), per_cell=3, seed=0))
    # per class: wrong for i = 0, 3, 6, 9; probability 0.3, 0.5, 0.7, 0.9 for i % 4 = 0..3
    expected = {("right", "0-0.5"): 2, ("right", "0.8-1"): 2, ("wrong", "0-0.5"): 1, ("wrong", "0.5-0.8"): 2,
                ("wrong", "0.8-1"): 1}
    assert short == {(name, *cell): count for name in CLASSES for cell, count in expected.items()}
    assert len(stimuli) == 4 * (3 + sum(expected.values()))  # the full cell, and what the short ones have


def test_confidence_bands():
    assert [band_name(p, (0.5, 0.8)) for p in (0.1, 0.5, 0.79, 0.8, 1.0)] == [
        "0-0.5", "0.5-0.8", "0.5-0.8", "0.8-1", "0.8-1"]


def test_a_missing_ground_truth_is_an_error_naming_the_image():
    rows = _rows(3) + [{"path": "loose.png", "method": "lime", "pred_index": 0, "explained_index": 0, "pred_name": "glioma",
                        "pred_prob": 0.9, "score": 0.5}]
    with pytest.raises(ConfigError, match="loose.png"):
        _pick(Design(by=("label",), per_cell=1), rows)
    stimuli, _ = _pick(Design(by=("confidence",), per_cell=1), rows)  # not needed for confidence alone
    assert len(stimuli) == 3


@pytest.mark.parametrize("options", [{"by": ("colour",)}, {"by": ("label", "label")}, {"by": ()},
                                     {"per_cell": 0}, {"bands": (0.8, 0.5)}, {"bands": (0.5, 1.0)}])
def test_bad_designs_are_refused(options):
    with pytest.raises(ConfigError):
        Design(**{"by": ("label",), "per_cell": 1, **options})


def test_imagenet_cats_and_dogs_label_map():
    mapping = load_label_map("imagenet-cats-dogs")
    assert [mapping(i) for i in (151, 207, 268, 281, 285, 286, 150, 0)] == [
        "dog", "dog", "dog", "cat", "cat", "other", "other", "other"]


def test_label_csvs(tmp_path):
    (tmp_path / "map.csv").write_text("index,label\n0,tumour\n1,tumour\n2,healthy\n")
    assert load_label_map(str(tmp_path / "map.csv"))(2) == "healthy"
    (tmp_path / "truth.csv").write_text("path,label\na.png,cat\nsub/b.png,dog\n")
    assert load_truth(str(tmp_path / "truth.csv")) == {"a.png": "cat", "sub/b.png": "dog"}
    (tmp_path / "bad.csv").write_text("file,class\na.png,cat\n")
    with pytest.raises(ConfigError, match="needs the columns path, label"):
        load_truth(str(tmp_path / "bad.csv"))


def _two_method_rows(count_per_class=6):
    rows = _rows(count_per_class)
    return [{**row, "method": method} for row in rows for method in ("lime", "gradcam")]


def test_methods_are_within_subjects_every_chosen_image_once_per_method():
    design = Design(by=("method", "label", "correct"), per_cell=2, seed=4, methods=("lime", "gradcam"))
    stimuli, short = _pick(design, _two_method_rows())
    assert short == {}
    cells = [s.cell for s in stimuli]
    assert len(stimuli) == 2 * 8 * 2 and all(cells.count(cell) == 2 for cell in set(cells))
    assert {s.cell.split("/")[0] for s in stimuli} == {"lime", "gradcam"} == {s.method for s in stimuli}
    shown = {method: sorted(s.row["path"] for s in stimuli if s.method == method) for method in ("lime", "gradcam")}
    assert shown["lime"] == shown["gradcam"] and len(set(shown["lime"])) == 16  # the same images, each once
    assert all(s.row["method"] == s.method for s in stimuli)
    again, _ = _pick(design, list(reversed(_two_method_rows())))
    assert [(s.stimulus_id, s.row["path"], s.method) for s in again] == [
        (s.stimulus_id, s.row["path"], s.method) for s in stimuli]
    methods_in_order = [s.method for s in stimuli]
    assert methods_in_order != sorted(methods_in_order)  # shuffled, not one method after the other
    # The images chosen are those a one-method design chooses: the method does not change the picks.
    lime_only, _ = _pick(Design(by=("label", "correct"), per_cell=2, seed=4), _two_method_rows())
    assert sorted(s.row["path"] for s in lime_only) == shown["lime"]


def test_an_image_missing_a_method_is_left_out_and_several_methods_need_the_factor():
    rows = [row for row in _two_method_rows(3) if not (row["path"] == "glioma/001.png" and row["method"] == "gradcam")]
    design = Design(by=("method", "label"), per_cell=2, methods=("lime", "gradcam"))
    stimuli, short = _pick(design, rows)
    assert "glioma/001.png" not in {s.row["path"] for s in stimuli}
    assert short == {}
    with pytest.raises(ConfigError, match="need 'method' in --by"):
        Design(by=("label",), per_cell=1, methods=("lime", "gradcam"))
