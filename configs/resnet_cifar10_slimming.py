r"""Network slimming of a CIFAR ResNet: proximal, and the classic ℓ1/ℓp/Tℓ1 pipelines.

Launch (see configs/vgg_cifar10_slimming.py for what each method runs):
  python scripts/slimming.py --config configs/resnet_cifar10_slimming.py:proximal --workdir runs/res_prox
  python scripts/slimming.py --config configs/resnet_cifar10_slimming.py:l1 --workdir runs/res_l1
  python scripts/slimming.py --config configs/resnet_cifar10_slimming.py:tl1,cpu --workdir runs/res_tl1_cpu
  python scripts/train.py --config configs/resnet_cifar10_slimming.py:proximal,smoke --workdir /tmp/s

Deviations from the papers, said plainly: the authors slim a pre-activation
bottleneck ResNet-164 with channel-selection layers; sparsejax has the
basic-block CIFAR ResNets of He et al. with parameter-free (option-A)
shortcuts, so the full recipe uses ResNet-56, and only the *inner* channels of
each block (``blocks/<b>/bn1/scale``) are slimmed: a channel of the residual
stream is shared by every block of a stage and cannot be removed by zeroing one
BN, while an inner channel can (its conv1 filter, bn1 entry and conv2 input
slice go together).

Full recipe: ResNet-56, CIFAR-10 with pad-4 crop + flip, batch 64, 160 epochs,
SGD lr 0.1 x0.1 at 80 and 120, momentum 0.9, weight decay 1e-4, BN scales
initialised to 0.5.
  proximal: network_slimming with the authors' ResNet-164 values s = 0.002,
    β = 0.25, ξ₀ ~ U(0.47, 0.53); no fine-tuning.
  l1 / lp / tl1 / mcp / scad: s = 1e-5 (Liu et al.'s ResNet value), prune 40%
    of the inner channels by one global |γ| threshold, fine-tune 160 epochs.

Variants (comma-separated; a method, default ``proximal``, and a size):
  ``cpu`` -- a CPU-sized run, NOT the paper's: ResNet-20 (16/32/64), a
    10,000-image training subset, 30 epochs in all (penalties 15 + 15), the
    sparsity strengths raised for the ~25x shorter run (proximal s = 0.02,
    penalties s = 1e-4). About 2 minutes per epoch on 2 CPU cores (~1 hour
    per method).
  ``smoke`` -- ResNet-20 at widths 4/8/8 for tests: 1,000 training images, 500
    test images, batch 32, 2 epochs (penalties 1 + 1), no augmentation.
"""

import ml_collections

from configs import _common

METHODS = _common.SLIMMING_METHODS
SIZES = _common.SLIMMING_SIZES
INNER_BN = r"^blocks/\d+/bn1/scale$"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  method, size = _common.slimming_variants(arg, "resnet_cifar10_slimming.py")
  c = _common.slimming_config(
      method, size, model="resnet56" if size == "full" else "resnet20",
      total_epochs={"full": 160.0, "cpu": 30.0, "smoke": 2.0}[size],
      proximal_s={"full": 0.002, "cpu": 0.02, "smoke": 0.2}[size], proximal_beta=0.25,
      penalty_s={"full": 1e-5, "cpu": 1e-4, "smoke": 1e-2}[size],
      prune_fraction=0.4, filter_regex=INNER_BN)
  if size == "cpu":
    c.data.train_subset = 10000
  elif size == "smoke":
    c.model.kwargs = dict(widths=(4, 8, 8))
  return c
