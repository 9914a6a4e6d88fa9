r"""Trains a model from an ml_collections config.

  python scripts/train.py --config configs/default.py --workdir runs/default
  python scripts/train.py --config configs/default.py:smoke --workdir /tmp/s \
      --config.num_epochs=2

Re-running with the same --workdir resumes from its newest checkpoint.
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

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the report.")
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/default.py:smoke.",
                                lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  from sparsejax import train  # pylint: disable=import-outside-toplevel
  train.train_and_evaluate(flags.FLAGS.config, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
