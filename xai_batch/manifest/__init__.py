"""The manifest: the Parquet dataset an explain run writes, and everything that reads or keeps it.

``schema`` (the columns), ``rows`` (what a row holds, how one is built, its
PNGs, the quality columns), ``writer`` (atomic part files), ``reader`` (the
current rows, and the ``ok`` rows of chosen methods), ``resume`` (what an
output already holds, reuse of another's rows), ``record`` (``job.json``: a
run's entry and its counts), ``lock`` (one run at a time into an output).
May import the methods, storage, sources (a run's SOURCE) and errors;
nothing of Ray, the pipeline or the commands.
"""

from xai_batch.manifest.reader import GROUP_ROWS, ManifestError, current_groups, manifest_dataset, read_manifest
from xai_batch.manifest.record import (
    JOB_FILE, load_job_record, recorded_preprocessing, software_versions, write_job_record,
)
from xai_batch.manifest.resume import (
    DoneImage, DoneIndex, discard_manifest, manifest_counts, resume_state, reuse_rows,
)
from xai_batch.manifest.rows import (
    QUALITY_COLUMNS, RowContext, decode_heatmap, decode_mask, decode_segments, encode_heatmap, encode_mask,
    encode_segments, error_row, explanation_row, image_rows, method_rows,
)
from xai_batch.manifest.schema import ADDED, MANIFEST_DIR, SCHEMA, TOPK
from xai_batch.manifest.writer import ManifestWriter, new_run_id, write_part

__all__ = [
    "SCHEMA", "ADDED", "MANIFEST_DIR", "TOPK", "QUALITY_COLUMNS", "RowContext", "explanation_row", "error_row", "image_rows", "method_rows",
    "ManifestWriter", "write_part", "new_run_id", "read_manifest", "current_groups", "manifest_dataset", "GROUP_ROWS",
    "ManifestError", "resume_state", "discard_manifest", "reuse_rows", "manifest_counts", "DoneIndex", "DoneImage",
    "JOB_FILE", "load_job_record", "write_job_record", "software_versions", "recorded_preprocessing",
    "encode_segments", "decode_segments", "encode_mask", "decode_mask", "encode_heatmap", "decode_heatmap",
]
