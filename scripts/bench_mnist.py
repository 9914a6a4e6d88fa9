r"""The default config on full MNIST: dense vs 90% gradual magnitude pruning.

  SPARSEJAX_DATA_DIR=../shared/data python scripts/bench_mnist.py --workroot runs/bench_mnist

Runs ``configs/default.py:dense`` and ``configs/default.py`` (same recipe, same seed)
and prints test accuracy, kernel sparsity and seconds per epoch (median over epochs
after the first, which includes compilation). Extra ``--seeds`` repeat both.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import default as default_config
from sparsejax import train


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--workroot", default="runs/bench_mnist")
  parser.add_argument("--seeds", type=int, nargs="+", default=[0])
  parser.add_argument("--variant", default="", help="extra config variants, e.g. smoke")
  args = parser.parse_args()
  rows = []
  for seed in args.seeds:
    for name, extra in (("dense", "dense"), ("GMP 90% (global)", "")):
      variants = ",".join(v for v in (args.variant, extra) if v)
      config = default_config.get_config(variants)
      config.seed = seed
      config.progress_bar = False
      workdir = os.path.join(args.workroot, f"{extra or 'gmp'}_seed{seed}")
      r = train.train_and_evaluate(config, workdir)
      rows.append((name, seed, r["test_accuracy"], r["sparsity"], r["seconds_per_epoch"],
                   r["epochs"], r["dataset_source"]))
  print("\n| run | seed | test accuracy | kernel sparsity | s/epoch | epochs |\n|---|---|---|---|---|---|")
  for name, seed, acc, sp, spe, ep, _ in rows:
    print(f"| {name} | {seed} | {100 * acc:.2f}% | {100 * sp:.1f}% | {spe:.1f} | {ep:g} |")
  for name in ("dense", "GMP 90% (global)"):
    accs = [r[2] for r in rows if r[0] == name]
    print(f"{name}: mean test accuracy {100 * np.mean(accs):.2f}% over {len(accs)} seed(s)")
  print(f"data: {rows[0][6]}")


if __name__ == "__main__":
  main()
