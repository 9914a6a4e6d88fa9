"""Executes the notebooks on small settings and checks the numbers they print."""

import json
import os

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(name, timeout=600):
  path = os.path.join(ROOT, "notebooks", name)
  nb = nbformat.read(path, as_version=4)
  env_backup = dict(os.environ)
  os.environ["SPARSEJAX_NOTEBOOK_SMALL"] = "1"
  try:
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": os.path.dirname(path)}}).execute()
  finally:
    os.environ.clear()
    os.environ.update(env_backup)
  text = []
  for cell in nb.cells:
    for out in cell.get("outputs", []):
      if out.get("output_type") == "stream":
        text.append(out["text"])
  lines = [l for l in "".join(text).splitlines() if l.startswith("RESULT ")]
  assert lines, "the notebook printed no RESULT line"
  return json.loads(lines[-1][len("RESULT "):])


def test_quickstart_notebook():
  result = _run("01_quickstart.ipynb")
  assert result["dense"]["sparsity"] < 0.01
  assert result["pruned"]["sparsity"] == pytest.approx(0.9, abs=1e-4)
  # 300 steps on 6,000 MNIST images (or the 4,000-image offline sample) learn digits.
  assert result["dense"]["test_accuracy"] > 0.85
  assert result["pruned"]["test_accuracy"] > 0.85
