"""``xai-batch stimuli``: a balanced, reproducible set of rendered explanations for a study.

Selection is :mod:`xai_batch.analysis.design` (pure); drawing is
:func:`~xai_batch.distributed.rendering.render_rows`. Files are named by stimulus id in presentation order (``S001.png``),
so nothing in a file name tells a participant the class, the answer or the
method; every method is drawn in the same style; ``stimuli.csv`` holds what
the experimenter needs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from xai_batch.analysis.agreement import methods_in
from xai_batch.errors import ConfigError
from xai_batch.manifest import SCHEMA
from xai_batch.labels import prediction_labeller, truth_labeller
from xai_batch.analysis.overlays import RenderOptions
from xai_batch.distributed.rendering import render_rows
from xai_batch.manifest.reader import manifest_methods, ok_rows
from xai_batch.analysis.design import Design, annotate, select
from xai_batch.storage import join, write_csv

__all__ = ["StimuliResult", "run_stimuli", "STIMULI_CSV", "COLUMNS"]

STIMULI_CSV = "stimuli.csv"
SELECTED_COLUMNS = [name for name in SCHEMA.names if name not in ("segments", "mask", "heatmap", "weights")]
COLUMNS = ["stimulus_id", "file", "cell", "method", "path", "true_label", "pred_label", "pred_prob", "score", "error"]


@dataclass(frozen=True)
class StimuliResult:
    to: str
    csv: str
    stimuli: int
    errors: int
    short: dict[str, int]  # cell -> rows it had, for cells short of --per-cell


def run_stimuli(
    out: str, to: str, design: Design, options: RenderOptions, labels: str | None = None,
    label_map: str | None = None, source: str | None = None, address: str | None = None,
    progress: bool = True, allow_unbalanced: bool = False, every_method: bool = False, insecure: bool = False,
) -> StimuliResult:
    """Select, render and index the stimuli; refuse an unbalanced design unless ``allow_unbalanced``.

    With ``every_method`` the design's methods are every method in the manifest.
    """
    if every_method:
        present = [{"method": method} for method in manifest_methods(out)]
        design = dataclasses.replace(design, methods=tuple(methods_in(present)))
    rows = [row for group in ok_rows(out, design.methods, SELECTED_COLUMNS) for row in group]
    stimuli, short = select(annotate(rows, truth_labeller(labels), prediction_labeller(label_map), design), design)
    short_cells = {"/".join(cell): count for cell, count in short.items()}
    if short_cells and not allow_unbalanced:
        listed = ", ".join(f"{cell} has {count}" for cell, count in short_cells.items())
        raise ConfigError(
            f"cells with fewer than {design.per_cell} images: {listed}; lower --per-cell, change --by, "
            "or pass --allow-unbalanced to take what there is",
            "per_cell",
        )
    wanted = {(s.row["path"], s.method, s.row["explained_index"]): f"{s.stimulus_id}.png" for s in stimuli}
    jobs = [(row, wanted[key]) for group in ok_rows(out, design.methods) for row in group
            if (key := (row["path"], row["method"], row["explained_index"])) in wanted]
    rendered = render_rows(jobs, out, source, to, options, address, progress, insecure=insecure)
    entries = {(entry["path"], entry["method"], entry["label"]): entry for entry in rendered}
    records = []
    for stimulus in stimuli:
        entry = entries[(stimulus.row["path"], stimulus.method, stimulus.row["explained_index"])]
        score = stimulus.row["score"]
        records.append({
            "stimulus_id": stimulus.stimulus_id, "file": entry["file"], "cell": stimulus.cell,
            "method": stimulus.method, "path": stimulus.row["path"], "true_label": stimulus.true_label,
            "pred_label": stimulus.pred_label, "pred_prob": f"{stimulus.row['pred_prob']:.4f}",
            "score": "" if score is None else f"{score:.4f}", "error": entry["error"],
        })
    index = join(to, STIMULI_CSV)
    write_csv(index, records, COLUMNS)
    errors = sum(1 for record in records if record["error"])
    return StimuliResult(to=to, csv=index, stimuli=len(records) - errors, errors=errors, short=short_cells)
