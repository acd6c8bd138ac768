"""The report's pure parts: when a SOURCE's folders are its classes."""

from xai_batch.analysis.page import folders_are_classes


def _row(path, pred, status="ok"):
    return {"path": path, "pred_name": pred, "status": status}


def test_folders_that_name_predicted_labels_are_classes():
    rows = [_row("cat/a.jpg", "cat"), _row("dog/b.jpg", "cat"), _row("dog/c.jpg", "dog")]
    assert folders_are_classes(rows, lambda row: row["pred_name"])


def test_folders_that_merely_organise_images_are_not():
    """micro/ and space/ on a model predicting label0..label3: every image would read as misclassified."""
    rows = [_row("micro/coins.tif", "label2"), _row("space/logo.png", "label2"), _row("flat.png", "label1")]
    assert not folders_are_classes(rows, lambda row: row["pred_name"])
    assert not folders_are_classes([_row("a.png", "a")], lambda row: row["pred_name"])  # no folders at all
    assert not folders_are_classes([_row("cat/a.jpg", None, "error")], lambda row: row["pred_name"])
