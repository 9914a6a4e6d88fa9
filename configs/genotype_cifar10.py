r"""Trains the DARTS evaluation network of a searched genotype on CIFAR-10.

Launch (the genotype comes from scripts/search.py's workdir):
  python scripts/train.py --config configs/genotype_cifar10.py \
      --config.model.kwargs.genotype=runs/rarts/genotype.json --workdir runs/rarts_eval
  python scripts/train.py --config configs/genotype_cifar10.py:cpu \
      --config.model.kwargs.genotype=runs/rarts_cpu/genotype.json --workdir runs/rarts_cpu_eval
Without a genotype the published DARTS (second order) cells are trained.

Recipe (DARTS evaluation, minus what the trainer lacks): 20 cells, widths
36/72/144, 600 epochs, batch 96, SGD lr 0.025 cosine to 0, momentum 0.9,
weight decay 3e-4, pad-4 crop + flip. Not implemented: cutout, drop-path 0.2,
the auxiliary head (weight 0.4) and gradient clipping, so accuracies will be
lower than the paper's.

Variants: ``cpu`` (8 cells, widths 16/32/64, 10,000-image subset, 10 epochs,
batch 64 -- a CPU-sized run whose accuracy is NOT comparable with the paper),
``smoke`` (2 cells of widths 4/8/16, a few steps on a 256-image subset, for tests).
"""

import ml_collections

from configs import _common
from configs import default as _default

_VARIANTS = ("cpu", "smoke")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variants = set(_common.split_variants(arg, "genotype_cifar10.py", _VARIANTS))
  c = _default.get_config("dense")
  c.dataset = "cifar10"
  c.data.augment = True
  c.model.name = "darts_eval"
  c.model.kwargs = ml_collections.ConfigDict(dict(
      # A genotype.json path or JSON text; None: sparsejax.models.darts.DARTS_V2.
      genotype=ml_collections.FieldReference(None, field_type=str),
      num_cells=20, widths=(36, 72, 144)))
  c.batch_size = 96
  c.eval_batch_size = 500
  c.num_epochs = 600.0
  c.optimizer.weight_decay = 3e-4
  c.lr.base = 0.025
  c.lr.schedule = "cosine"
  c.lr.final_fraction = 0.0
  if "cpu" in variants:
    c.model.kwargs.num_cells = 8
    c.model.kwargs.widths = (16, 32, 64)
    c.data.train_subset = 10_000
    c.batch_size = 64
    c.num_epochs = 10.0
  if "smoke" in variants:
    c.model.kwargs.num_cells = 2
    c.model.kwargs.widths = (4, 8, 16)
    c.data.train_subset = 256
    c.data.test_subset = 128
    c.data.augment = False
    c.batch_size = 32
    c.num_epochs = 1.0
    c.progress_bar = False
  return c
