"""The report's pure parts: when a SOURCE's folders are its classes."""

from xai_batch.analysis.page import first_folders, folders_are_classes


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
