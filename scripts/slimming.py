r"""Runs a network-slimming config: the three-stage pipeline or a single run.

  python scripts/slimming.py --config configs/vgg_cifar10_slimming.py:l1,cpu --workdir runs/l1
  python scripts/slimming.py --config configs/vgg_cifar10_slimming.py:proximal --workdir runs/p
  python scripts/slimming.py --config configs/vgg_cifar10_slimming.py:tl1,smoke \
      --workdir /tmp/s --config.pipeline.prune_fraction=0.5

A config with a ``pipeline`` section (the penalty methods) runs
``sparsejax.pipelines.slimming_pipeline``: train with the penalty in
``WORKDIR/train``, prune by one global |γ| threshold, fine-tune in
``WORKDIR/finetune``, summary in ``WORKDIR/pipeline.json``. A config without
one (proximal slimming) is one ``train_and_evaluate`` run in ``WORKDIR``.
Re-running with the same --workdir resumes.
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

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for the stages' runs and reports.")
config_flags.DEFINE_config_file("config", None, "Config file, e.g. "
                                "configs/vgg_cifar10_slimming.py:l1,cpu.", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  # pylint: disable=import-outside-toplevel
  from sparsejax import pipelines
  from sparsejax import train
  config = flags.FLAGS.config
  if config.get("pipeline") is not None:
    result = pipelines.slimming_pipeline(config, _WORKDIR.value)
    if "pruned_channels" in result:
      print(f"stage 1 test accuracy {result['train']['test_accuracy']:.4f}; pruned "
            f"{result['pruned_channels']}/{result['channels']} channels -> "
            f"{result['pruned_test_accuracy']:.4f}; after fine-tuning "
            f"{result['test_accuracy']:.4f}")
  else:
    report = train.train_and_evaluate(config, _WORKDIR.value)
    rc = report.get("removable_channels")
    if rc:
      print(f"test accuracy {report['test_accuracy']:.4f}; removable channels (xi = 0) "
            f"{rc['removable']}/{rc['channels']}")


if __name__ == "__main__":
  app.run(main)
