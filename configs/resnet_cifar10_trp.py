r"""Trained rank pruning (TRP) of CIFAR ResNets on CIFAR-10, the authors' recipe.

Launch:
  python scripts/train.py --config configs/resnet_cifar10_trp.py --workdir runs/trp_r20
  python scripts/train.py --config configs/resnet_cifar10_trp.py:spatial --workdir runs/trp_r20_sp
  python scripts/train.py --config configs/resnet_cifar10_trp.py:resnet32 --workdir runs/trp_r32
  python scripts/train.py --config configs/resnet_cifar10_trp.py:dense --workdir runs/trp_r20_dense
  python scripts/train.py --config configs/resnet_cifar10_trp.py:cpu --workdir runs/trp_r20_cpu
  python scripts/bench_trp.py --workdir runs/bench_trp   # dense vs channel vs spatial, cpu size

Full recipe (Xu et al., IJCAI 2020, the README of yuhuixu1993/Trained-Rank-Pruning):
ResNet-20 (or -32) on CIFAR-10 with pad-4 crop + flip, 164 epochs, batch 128, SGD
momentum 0.9, lr 0.1 x0.1 at epochs 81 and 122, weight decay 1e-4; TRP every
iteration (period 1) on every 3x3 conv except the first, channel-wise, energy
0.9, nuclear-norm weight 3e-4. The initial kernels are truncated too (the paper
truncates before every forward pass, the first included). At the end the
model is decomposed with singular values below 0.05 dropped
(``sparsejax.lowrank.export``; the report's ``sparse_test_accuracy`` is the
accuracy of the kernels with those values dropped in every selected layer; the
export keeps a layer dense where factoring saves no multiply-adds, so evaluate
the exported model for its own accuracy, as ``scripts/bench_trp.py`` does).
The authors' table: ResNet-20 dense 91.74%, channel-wise 90.50% at
2.17x fewer conv FLOPs, spatial-wise 90.62% at 2.84x; ResNet-32 dense 92.26%,
channel-wise 91.40% at 2.2x, spatial-wise 91.39% at 3.4x. On 2 CPU cores one
ResNet-20 epoch takes about 6 minutes, so the full recipe is for an accelerator.

Variants (comma-separated, any order):
  ``resnet32`` -- ResNet-32 instead of ResNet-20.
  ``spatial`` -- spatial-wise TRP (``(C·kh, N·kw)`` matrices, ``kh×1`` then
    ``1×kw`` convs) instead of channel-wise.
  ``dense`` -- no TRP: the dense baseline at the same recipe.
  ``cpu`` -- a CPU-sized run, NOT the paper's: a 10,000-image training subset
    and 20 epochs (lr x0.1 at 49% and 74% of them, the paper's fractions);
    energy, nuclear weight and everything else as in the paper. About 25
    minutes per run on 2 CPU cores; accuracies are not comparable with the
    paper's, only with each other.
  ``smoke`` -- ResNet-20 at widths 4/8/8 on 256 training and 128 test images,
    batch 32, 1 epoch, no augmentation: for tests.
"""

import ml_collections

from configs import _common
from configs import default as _default

_VARIANTS = ("resnet32", "spatial", "dense", "cpu", "smoke")
_MILESTONES = (81.0 / 164.0, 122.0 / 164.0)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  flags = set(_common.split_variants(arg, "resnet_cifar10_trp.py", _VARIANTS))
  if {"cpu", "smoke"} <= flags:
    raise ValueError("variants cpu and smoke of configs/resnet_cifar10_trp.py exclude each other")

  c = _default.get_config("dense")
  c.dataset = "cifar10"
  c.data.augment = True
  c.model.name = "resnet32" if "resnet32" in flags else "resnet20"
  c.num_epochs = 164.0
  c.optimizer.weight_decay = 1e-4
  c.lr = _common.step_lr(0.1, (81.0, 122.0))
  c.algorithm = ml_collections.ConfigDict(dict(
      name="trained_rank_pruning", energy=0.9, nuclear=3e-4, period=1,
      scheme="spatial" if "spatial" in flags else "channel", include_dense=False,
      filter_regex="", truncate_init=True, cut=0.05))
  c.checkpoint.keep = 2

  if "cpu" in flags:
    c.data.train_subset = 10_000
    c.num_epochs = 20.0
  if "smoke" in flags:
    c.model.kwargs = dict(widths=(4, 8, 8))
    c.data.train_subset = 256
    c.data.test_subset = 128
    c.data.augment = False
    c.batch_size = 32
    c.eval_batch_size = 128
    c.num_epochs = 1.0
    c.progress_bar = False
  if "cpu" in flags or "smoke" in flags:
    c.lr.boundaries_epochs = tuple(round(f * c.num_epochs, 3) for f in _MILESTONES)
  if "dense" in flags:
    c.algorithm = ml_collections.ConfigDict(dict(name="none"))
  return c
