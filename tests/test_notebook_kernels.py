"""Executes notebooks/03_sparse_layers.ipynb on small settings and checks its numbers."""

import pytest

from test_notebooks import _run


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
  # (full MNIST, 2026-12-04: dense 0.95, pruned 0.52, fine-tuned 0.92)
  assert result["finetuned_accuracy"] > result["pruned_accuracy"] + 0.05
