r"""LeNet-300-100 on MNIST: dense baseline and gradual magnitude pruning.

Launch:
  python scripts/train.py --config configs/lenet300_mnist.py --workdir runs/lenet300_gmp
  python scripts/train.py --config configs/lenet300_mnist.py:dense --workdir runs/lenet300_dense

SGD momentum 0.9, lr 0.05 cosine, weight decay 1e-4, batch 128, 20 epochs. The pruned
variant ramps to 95% (global threshold over the three dense kernels) between epochs 2 and
12. Variants: ``dense``, ``smoke``.
"""

from configs import _common
from configs import default as _default


def get_config(arg: str | None = None):
  variants = set(_common.split_variants(arg, "lenet300_mnist.py", ("dense", "smoke")))
  c = _default.get_config(",".join(sorted(variants)))
  c.model.name = "lenet300_100"
  c.optimizer.weight_decay = 1e-4
  if "smoke" not in variants:
    c.num_epochs = 20.0
    if "dense" not in variants:
      c.algorithm.sparsity = 0.95
      c.algorithm.begin_epoch = 2.0
      c.algorithm.end_epoch = 12.0
  return c
