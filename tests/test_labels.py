"""Label maps and ground truth read from CSV files."""

import pytest

from xai_batch.errors import ConfigError
from xai_batch.labels import load_label_map, load_truth


@pytest.mark.parametrize("text, line", [("index,label\n0,cat\n1\n", 3), ("index,label\n0,cat\n1,\n", 3),
                                        ("index,label\n,dog\n", 2)])
def test_a_label_map_row_without_a_value_is_a_usage_error_naming_its_line(tmp_path, text, line):
    """Issue 31, finding 10: a row without a label ended in AttributeError."""
    (tmp_path / "map.csv").write_text(text)
    with pytest.raises(ConfigError, match=rf"map.csv', line {line}: no (label|index)$") as refused:
        load_label_map(str(tmp_path / "map.csv"))
    assert refused.value.param == "label_map"


def test_a_truth_row_without_a_label_is_a_usage_error_naming_its_line(tmp_path):
    (tmp_path / "truth.csv").write_text("path,label\na.png,cat\nb.png\n")
    with pytest.raises(ConfigError, match=r"truth.csv', line 3: no label$") as refused:
        load_truth(str(tmp_path / "truth.csv"))
    assert refused.value.param == "labels"
    (tmp_path / "truth.csv").write_text("path,label\na.png,cat\nb.png, dog \n")
    assert load_truth(str(tmp_path / "truth.csv")) == {"a.png": "cat", "b.png": "dog"}
