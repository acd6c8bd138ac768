"""The manifest's schema: one Parquet dataset of part files under ``OUT/manifest``.

A manifest is a folder of part files with one row per image, explained label
and method, or one ``status='error'`` row per image and method that could not
explain it. README.md ("The manifest") documents every column.
"""

from __future__ import annotations

import pyarrow as pa

__all__ = ["SCHEMA", "MANIFEST_DIR", "TOPK", "ADDED"]

MANIFEST_DIR = "manifest"

SCHEMA = pa.schema(
    [
        pa.field("path", pa.string(), nullable=False),
        pa.field("sha256", pa.string()),
        pa.field("size", pa.int64()),
        pa.field("mtime_ns", pa.int64()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("model_id", pa.string()),
        pa.field("pred_index", pa.int32()),
        pa.field("pred_name", pa.string()),
        pa.field("pred_prob", pa.float32()),
        pa.field("topk_index", pa.list_(pa.int32())),
        pa.field("topk_prob", pa.list_(pa.float32())),
        pa.field("explained_index", pa.int32()),
        pa.field("explained_name", pa.string()),
        pa.field("explained_prob", pa.float32()),
        pa.field("method", pa.string()),
        pa.field("seed", pa.int64()),
        pa.field("num_samples", pa.int32()),
        pa.field("num_segments", pa.int32()),
        pa.field("segments", pa.binary()),
        pa.field("weights", pa.list_(pa.float64())),
        pa.field("intercept", pa.float64()),
        pa.field("score", pa.float64()),
        pa.field("local_pred", pa.float64()),
        pa.field("mask", pa.binary()),
        pa.field("heatmap", pa.binary()),
        pa.field("deletion_auc", pa.float64()),
        pa.field("insertion_auc", pa.float64()),
        pa.field("deletion_auc_random", pa.float64()),
        pa.field("insertion_auc_random", pa.float64()),
        pa.field("stability", pa.float64()),
        pa.field("on_object", pa.float64()),
        pa.field("on_object_random", pa.float64()),
        pa.field("pointing_hit", pa.bool_()),
        pa.field("pointing_random", pa.float64()),
        pa.field("config_hash", pa.string()),
        pa.field("engine", pa.string()),
        pa.field("seconds", pa.float32()),
        pa.field("run_id", pa.string(), nullable=False),
    ]
)

TOPK = 5  # the most probable classes each row lists (topk_index, topk_prob)
ADDED = ("size", "mtime_ns")  # columns parts written before them lack: they read as null
