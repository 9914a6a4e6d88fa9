"""Executes notebooks/02_proximal_slimming.ipynb on small settings and checks its numbers."""

import numpy as np

from test_notebooks import _run


def test_proximal_slimming_notebook():
  r = _run("02_proximal_slimming.ipynb")
  # Exact zeros appeared in xi during training (none at the start), not everywhere.
  assert r["zero_fraction"][0] == 0.0
  assert 0 < r["removable"] < r["channels"]
  assert r["zero_fraction"][-1] == r["removable"] / r["channels"]
  # It learned (300 steps on MNIST or its offline sample).
  assert r["loss_last"] < 0.5 * r["loss_first"]
  assert r["accuracy"]["trained"] > 0.85
  # gamma is pulled onto xi: the removable channels' scales are near zero ...
  assert r["removable_gamma_max"] < 0.25 * r["kept_gamma_median"]
  # ... so their filters carry nothing: zeroing their gamma leaves the accuracy.
  assert abs(r["accuracy"]["gamma_zeroed"] - r["accuracy"]["trained"]) <= 0.01
  # Deleting them (shift zeroed too) and compacting: the smaller dense model keeps exactly
  # the kept channels per layer (at least one) and the deleted model's predictions.
  assert r["compacted_widths"] == [max(n, 1) for n in r["channels_left"]]
  assert abs(r["accuracy"]["compacted"] - r["accuracy"]["channels_deleted"]) <= 1e-3
  assert r["params"][1] < r["params"][0] and r["macs"][1] < r["macs"][0]
