r"""Network slimming of VGG-19 on CIFAR-10: proximal, and the classic ℓ1/ℓp/Tℓ1 pipelines.

Launch (proximal slimming is a single trainer run; the penalty methods are
three-stage pipelines -- train with the penalty, prune 70% of the channels by
one global |γ| threshold, fine-tune -- run by scripts/slimming.py, which also
runs the single-stage proximal config):
  python scripts/slimming.py --config configs/vgg_cifar10_slimming.py:proximal --workdir runs/vgg_prox
  python scripts/slimming.py --config configs/vgg_cifar10_slimming.py:l1 --workdir runs/vgg_l1
  python scripts/slimming.py --config configs/vgg_cifar10_slimming.py:lp --workdir runs/vgg_lp
  python scripts/slimming.py --config configs/vgg_cifar10_slimming.py:tl1,cpu --workdir runs/vgg_tl1_cpu
  python scripts/train.py --config configs/vgg_cifar10_slimming.py:proximal,smoke --workdir /tmp/s
(scripts/train.py on a penalty config runs stage 1 only.)

Full recipe (Bui et al. 2023 for proximal, Bui et al. 2020-21 / Liu et al.
2017 for the penalties): VGG-19 with batch norm (64-512 channels), CIFAR-10
with pad-4 crop + flip, batch 64, 160 epochs, SGD lr 0.1 x0.1 at epochs 80 and
120, momentum 0.9, weight decay 1e-4 on every parameter (γ included), BN
scales initialised to 0.5.
  proximal: network_slimming s = 0.0045, β = 100, ξ₀ ~ U(0.47, 0.53); no
    fine-tuning; removable channels are those with ξ = 0 (in report.json).
  l1 / lp / tl1 / mcp / scad: s = 1e-4 (ℓp p = 1/2; Tℓ1 a = 1; MCP a = 3,
    λ = 1; SCAD a = 3.7, λ = 1), prune 70% of all BN channels, fine-tune 160
    epochs with the same lr schedule. The full recipe takes days on a CPU.

Variants (comma-separated; first pick a method, default ``proximal``):
  ``cpu`` -- a CPU-sized run, NOT the paper's: VGG-19 at a quarter of the
    width (16-128 channels), a 5,000-image training subset and a 2,000-image
    test subset, 48 epochs in all (proximal: 48 epochs, lr x0.1 at 24 and 36;
    penalties: 24 epochs of training + 24 of fine-tuning, each with lr x0.1 at
    50% and 75%). Because the run is far shorter than the paper's, the
    sparsity strengths are raised (proximal s = 0.035, penalties s = 1e-3) so
    that channels actually reach zero; say so when quoting its numbers. The
    recipe of BENCHMARKS.md's 48-epoch table (proximal at s = 0.035 zeroed 33%
    of the channels at 68.75%; classic l1 at the same count 67.70%). About 15 s
    per epoch on 2 idle CPU cores (~12 minutes per method).
  ``smoke`` -- a tiny VGG (8-32 channels) for tests: 1,000 training images,
    500 test images, batch 32, 2 epochs (penalties: 1 + 1), no augmentation.
"""

import ml_collections

from configs import _common

METHODS = _common.SLIMMING_METHODS
SIZES = _common.SLIMMING_SIZES
VGG19_QUARTER = (16, 16, "M", 32, 32, "M", 64, 64, 64, 64, "M", 128, 128, 128, 128, "M",
                 128, 128, 128, 128)
VGG_SMOKE = (8, "M", 16, "M", 16, "M", 32)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  method, size = _common.slimming_variants(arg, "vgg_cifar10_slimming.py")
  c = _common.slimming_config(
      method, size, model="vgg19",
      total_epochs={"full": 160.0, "cpu": 48.0, "smoke": 2.0}[size],
      proximal_s={"full": 0.0045, "cpu": 0.035, "smoke": 3.0}[size], proximal_beta=100.0,
      penalty_s={"full": 1e-4, "cpu": 1e-3, "smoke": 1e-2}[size],
      prune_fraction=0.7, filter_regex="")
  if size == "cpu":
    c.model.kwargs = dict(widths=VGG19_QUARTER)
    c.data.train_subset = 5000
    c.data.test_subset = 2000
  elif size == "smoke":
    c.model.kwargs = dict(widths=VGG_SMOKE)
  return c
