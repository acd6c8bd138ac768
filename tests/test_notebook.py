"""The seeds' notebook with ``explain_instances`` (examples/lime_on_many_images.ipynb), run on a real Jupyter kernel."""

import base64
import io
import os
import re

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "examples", "lime_on_many_images.ipynb")

pytestmark = pytest.mark.slow


def test_the_notebook_runs_and_every_explanation_is_limes(tmp_path, monkeypatch):
    """Headless, as a reader would run it, with fewer samples (set as papermill sets a parameter): its own
    cells compare each explanation with lime's ``explain_instance`` and draw them."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    [parameters] = [cell for cell in notebook.cells if "num_samples = 1000" in cell.source]
    parameters.source = parameters.source.replace("num_samples = 1000", "num_samples = 100")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # the kernel inherits this environment: its own local Ray
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    printed = "".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                      for output in cell.outputs)
    assert "3 explanations, each lime's own" in printed
    picture = notebook.cells[-1].outputs[-1]["data"]["image/png"]
    drawn = np.asarray(Image.open(io.BytesIO(base64.b64decode(picture))))
    assert drawn.shape == (224, 3 * 224, 3)
    assert ((drawn == [255, 255, 0]).all(axis=-1)).any()  # mark_boundaries' yellow lines are there
    noise = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
             if output.get("name") == "stderr" and re.search(r"\(raylet|\(ModelReplica|WARNING", output["text"])]
    assert not noise, noise  # no Ray log in the cells


def test_the_readme_shows_the_notebook_s_code():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        readme = handle.read()
    block = re.search(r"## From Python.*?```python\n(.*?)```", readme, re.S).group(1)
    code = "\n".join(cell.source for cell in nbformat.read(NOTEBOOK, as_version=4).cells if cell.cell_type == "code")
    for line in block.strip().splitlines():
        assert line.strip() in code, line
