"""Executes notebooks/03_sparse_layers.ipynb on small settings and checks its numbers."""

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
  text = [out["text"] for cell in nb.cells for out in cell.get("outputs", [])
          if out.get("output_type") == "stream"]
  lines = [l for l in "".join(text).splitlines() if l.startswith("RESULT ")]
  assert lines, "the notebook printed no RESULT line"
  return json.loads(lines[-1][len("RESULT "):])


def test_sparse_layers_notebook():
  result = _run("03_sparse_layers.ipynb")
  assert result["replaced"] == ["fc1", "fc2"]
  # masks.block at 90%: floor(0.9 * 784) = 705 of 784 blocks in fc1, 460 of 512 in fc2 pruned.
  assert result["density"]["fc1"] == pytest.approx(79 / 784)
  assert result["density"]["fc2"] == pytest.approx(52 / 512)
  # The sparse layers compute the masked dense model, and training keeps pruned blocks at zero.
  assert result["max_abs_diff"] < 1e-4
  assert result["pruned_blocks_zero"] is True
  # 300 Adam steps on 6,000 MNIST images (or the offline sample) learn digits; pruning 90% of the
  # hidden blocks costs accuracy and 150 fine-tuning steps through SparseLinear win it back.
  assert result["dense_accuracy"] > 0.85
  assert result["finetuned_accuracy"] > 0.85
  assert result["finetuned_accuracy"] > result["pruned_accuracy"] - 0.01
