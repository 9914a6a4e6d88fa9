r"""Runs a DARTS or RARTS architecture search from an ml_collections config.

  python scripts/search.py --config configs/rarts_cifar10.py --workdir runs/rarts
  python scripts/search.py --config configs/darts_cifar10.py:second_order --workdir runs/darts2
  python scripts/search.py --config configs/rarts_cifar10.py:smoke --workdir /tmp/s \
      --config.search.beta=0.5

Writes genotype.json, alphas.npz, alphas.png, metrics.jsonl and report.json to
--workdir (sparsejax/search/run.py). Train the result with
  python scripts/train.py --config configs/genotype_cifar10.py \
      --config.model.kwargs.genotype=<workdir>/genotype.json --workdir <eval workdir>
There is no checkpointing: an interrupted search starts over.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Configs import each other as `configs.<name>`: put the repository root on the path.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for the genotype, alphas and metrics.")
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/rarts_cifar10.py:smoke.",
                                lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  from sparsejax import search  # pylint: disable=import-outside-toplevel
  report = search.run_search(flags.FLAGS.config, _WORKDIR.value)
  print(f"genotype: {report['genotype_str']}")
  print(f"written to {os.path.abspath(_WORKDIR.value)}")


if __name__ == "__main__":
  app.run(main)
