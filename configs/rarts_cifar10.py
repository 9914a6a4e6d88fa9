r"""RARTS architecture search on CIFAR-10 (Xue, Qi, Xin, 2022): relaxed, single-level, first order.

Launch:
  python scripts/search.py --config configs/rarts_cifar10.py --workdir runs/rarts
  python scripts/search.py --config configs/rarts_cifar10.py:cpu --workdir runs/rarts_cpu
  python scripts/search.py --config configs/rarts_cifar10.py:cpu,jacobi --workdir runs/rartsj_cpu
  python scripts/search.py --config configs/rarts_cifar10.py:smoke --workdir /tmp/rarts_smoke
Override: --config.search.lam=2.0 --config.search.beta=0.5
Then train the derived network:
  python scripts/train.py --config configs/genotype_cifar10.py \
      --config.model.kwargs.genotype=runs/rarts/genotype.json --workdir runs/rarts_eval

The same network, data split and optimizers as configs/darts_cifar10.py (the
DARTS defaults: 8 cells, 16 channels, 50 epochs, batch 64, SGD lr 0.025 cosine
to 0.001, momentum 0.9, wd 3e-4; Adam 3e-4, betas (0.5, 0.999), wd 1e-3 for
the architecture). RARTS adds a second weight copy y fit on the validation
half (its own SGD: config.val_optimizer, whose fields left None follow
config.optimizer) coupled to w by (beta / 2) |y - w|^2, and updates alpha on
L_val(y) + lam * L_train(w).
lam = beta = 1 are our choices (the paper's values are not at hand);
the sweep's details are unverified (docs/search.md).

Variants (comma-separated): ``jacobi`` (our cheaper variant: the alpha
gradient taken in the w and y passes, at the old w and y -- 2 forward-backward
passes per step instead of 4; sparsejax/search/algorithms.py), ``cpu`` (5 cells
instead of 8, 8 channels instead of 16, a 4,000-image subset, 4 epochs instead
of 50, no augmentation, compile="pass" -- a CPU-sized run, NOT comparable with
the paper), ``smoke`` (about a minute, for tests).
"""

import ml_collections

from configs import _common
from configs import darts_cifar10 as _darts

SEARCH_CONFIG = True  # a scripts/search.py config, not a scripts/train.py one

_VARIANTS = ("jacobi", "cpu", "smoke")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variants = set(_common.split_variants(arg, "rarts_cifar10.py", _VARIANTS))
  c = _darts.base_config("rarts")
  # y's optimizer: a field left None follows config.optimizer (so --config.optimizer.lr=...
  # moves both copies); set one, e.g. --config.val_optimizer.lr=0.01, to differ.
  c.val_optimizer = ml_collections.ConfigDict({
      k: ml_collections.FieldReference(None, field_type=float) for k in c.optimizer})
  if "jacobi" in variants:
    c.search.alpha_update = "jacobi"
  _darts.apply_size_variant(c, variants)
  return c
