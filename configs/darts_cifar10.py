r"""DARTS architecture search on CIFAR-10 (Liu et al., 2019), the baseline of RARTS.

Launch:
  python scripts/search.py --config configs/darts_cifar10.py --workdir runs/darts1
  python scripts/search.py --config configs/darts_cifar10.py:second_order --workdir runs/darts2
  python scripts/search.py --config configs/darts_cifar10.py:second_order,exact --workdir runs/d2x
  python scripts/search.py --config configs/darts_cifar10.py:cpu --workdir runs/darts1_cpu
  python scripts/search.py --config configs/darts_cifar10.py:smoke --workdir /tmp/darts_smoke
Then train the derived network:
  python scripts/train.py --config configs/genotype_cifar10.py \
      --config.model.kwargs.genotype=runs/darts1/genotype.json --workdir runs/darts1_eval

DARTS search defaults: 8 cells (reductions at cells 2 and 5), 16 initial
channels, 4 intermediate nodes, 50 epochs, batch 64 per half of the CIFAR-10
training set (25,000 / 25,000, seeded split), weights by SGD lr 0.025 cosine to
0.001, momentum 0.9, weight decay 3e-4, gradient-norm clip 5; architecture by
Adam lr 3e-4, betas (0.5, 0.999), weight decay 1e-3; pad-4 crop + flip on both
halves. First order by default.

Variants (comma-separated):

- ``second_order``: the unrolled hypergradient with virtual step xi = the
  weights' learning rate, finite-difference Hessian term (as DARTS);
- ``exact``: with ``second_order``, the exact hypergradient by autodiff;
- ``cpu``: a CPU-sized search, stated plainly: 5 cells (reductions at 1 and 3)
  instead of 8, 8 channels instead of 16, a 4,000-image training subset
  (2,000 / 2,000) instead of 50,000, 4 epochs instead of 50, no augmentation,
  and ``compile="pass"`` (one compiled forward-backward pass). Its genotypes
  are NOT comparable with the paper's;
- ``smoke``: for tests and for trying the script: 3 cells of 4 channels with 2
  intermediate nodes and 4 candidate ops (none, max_pool_3x3, skip_connect,
  sep_conv_3x3), 2 steps of batch 16 on a 256-image subset. Most of its
  minute goes into compiling the pass.
"""

import ml_collections

from configs import _common
from sparsejax.models.darts import PRIMITIVES

SEARCH_CONFIG = True  # a scripts/search.py config, not a scripts/train.py one

_VARIANTS = ("second_order", "exact", "cpu", "smoke")


def base_config(method: str) -> ml_collections.ConfigDict:
  """The DARTS search defaults with ``config.search.method = method``."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.dataset = "cifar10"
  c.data = ml_collections.ConfigDict(dict(
      dir=ml_collections.FieldReference(None, field_type=str),
      tfds_data_dir=ml_collections.FieldReference(None, field_type=str),
      augment=True,
      train_subset=ml_collections.FieldReference(None, field_type=int),
      train_fraction=0.5))
  c.model = ml_collections.ConfigDict(dict(
      num_cells=8, channels=16, steps=4, multiplier=4, stem_multiplier=3,
      primitives=tuple(PRIMITIVES)))
  c.search = ml_collections.ConfigDict(dict(
      method=method,
      order=1,  # DARTS: 1 or 2
      hessian="finite_difference",  # DARTS order 2: "finite_difference" or "exact"
      xi=ml_collections.FieldReference(None, field_type=float),  # None: the weights' lr
      fd_epsilon=0.01,
      lam=1.0,  # RARTS: weight of L_train
      beta=1.0,  # RARTS: coupling of y and w
      alpha_update="gauss_seidel",  # RARTS: or "jacobi" (alpha gradient from the w, y passes)
      alpha_init_scale=1e-3))
  # "step": jit the whole step; "pass": jit one forward-backward pass, shared by all passes
  # of a step (much faster to compile on a CPU; sparsejax/search/run.py).
  c.compile = "step"
  c.batch_size = 64
  c.num_epochs = 50
  c.max_steps_per_epoch = ml_collections.FieldReference(None, field_type=int)
  c.optimizer = ml_collections.ConfigDict(dict(
      lr=0.025, final_lr=0.001, momentum=0.9, weight_decay=3e-4, grad_clip=5.0))
  c.arch_optimizer = ml_collections.ConfigDict(dict(
      lr=3e-4, b1=0.5, b2=0.999, weight_decay=1e-3))
  return c


def apply_size_variant(c: ml_collections.ConfigDict, variants: set[str]) -> None:
  """Shrinks ``c`` in place for the ``cpu`` or ``smoke`` variant."""
  if "cpu" in variants or "smoke" in variants:
    c.compile = "pass"
  if "cpu" in variants:
    c.model.num_cells = 5
    c.model.channels = 8
    c.data.train_subset = 4000
    c.data.augment = False
    c.num_epochs = 4
  if "smoke" in variants:
    c.model.num_cells = 3
    c.model.channels = 4
    c.model.steps = 2
    c.model.multiplier = 2
    c.model.primitives = ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3")
    c.data.train_subset = 256
    c.data.augment = False
    c.batch_size = 16
    c.num_epochs = 1
    c.max_steps_per_epoch = 2


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variants = set(_common.split_variants(arg, "darts_cifar10.py", _VARIANTS))
  if "exact" in variants and "second_order" not in variants:
    raise ValueError("variant exact needs second_order (configs/darts_cifar10.py:second_order,exact)")
  c = base_config("darts")
  if "second_order" in variants:
    c.search.order = 2
  if "exact" in variants:
    c.search.hessian = "exact"
  apply_size_variant(c, variants)
  return c
