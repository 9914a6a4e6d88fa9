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

METHODS = ("proximal", "l1", "lp", "tl1", "mcp", "scad")
SIZES = ("cpu", "smoke")
INNER_BN = r"^blocks/\d+/bn1/scale$"


def _step_lr(base: float, epochs: float) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      base=base, schedule="step", boundaries_epochs=(0.5 * epochs, 0.75 * epochs), factor=0.1,
      final_fraction=0.0, warmup_epochs=0))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variants = [v for v in (arg or "").split(",") if v]
  unknown = set(variants) - set(METHODS) - set(SIZES)
  methods = [v for v in variants if v in METHODS]
  sizes = [v for v in variants if v in SIZES]
  if unknown or len(methods) > 1 or len(sizes) > 1:
    raise ValueError(f"bad variant(s) {variants} for configs/resnet_cifar10_slimming.py; pick "
                     f"at most one method of {METHODS} and at most one size of {SIZES}")
  method = methods[0] if methods else "proximal"
  size = sizes[0] if sizes else "full"

  c = ml_collections.ConfigDict()
  c.seed = 0
  c.dataset = "cifar10"
  c.data = ml_collections.ConfigDict(dict(
      dir=ml_collections.FieldReference(None, field_type=str),
      tfds_data_dir=ml_collections.FieldReference(None, field_type=str),
      augment=True,
      train_subset=ml_collections.FieldReference(None, field_type=int),
      test_subset=ml_collections.FieldReference(None, field_type=int)))
  c.model = ml_collections.ConfigDict(dict(name="resnet56", kwargs={}))
  c.batch_size = 64
  c.eval_batch_size = 1000
  c.optimizer = ml_collections.ConfigDict(dict(
      name="sgd", momentum=0.9, nesterov=False, weight_decay=1e-4))
  c.checkpoint = ml_collections.ConfigDict(dict(every_steps=0, keep=2))
  c.progress_bar = True
  c.stop_after_steps = ml_collections.FieldReference(None, field_type=int)
  c.compact = True  # report parameters/FLOPs after removing zero channels

  total_epochs = {"full": 160.0, "cpu": 30.0, "smoke": 2.0}[size]
  if size == "cpu":
    c.model.name = "resnet20"
    c.data.train_subset = 10000
  elif size == "smoke":
    c.model.name = "resnet20"
    c.model.kwargs = dict(widths=(4, 8, 8))
    c.data.train_subset = 1000
    c.data.test_subset = 500
    c.data.augment = False
    c.batch_size = 32
    c.eval_batch_size = 500
    c.progress_bar = False

  if method == "proximal":
    c.num_epochs = total_epochs
    c.lr = _step_lr(0.1, total_epochs)
    s = {"full": 0.002, "cpu": 0.02, "smoke": 0.2}[size]
    c.algorithm = ml_collections.ConfigDict(dict(
        name="network_slimming", s=s, beta=0.25, xi_init="uniform", xi_low=0.47,
        xi_high=0.53, seed=0, init_bn_scale=0.5, filter_regex=INNER_BN))
  else:
    stage = total_epochs if size == "full" else total_epochs / 2
    c.num_epochs = stage
    c.lr = _step_lr(0.1, stage)
    s = {"full": 1e-5, "cpu": 1e-4, "smoke": 1e-2}[size]
    c.algorithm = ml_collections.ConfigDict(dict(
        name="slimming_penalty", kind=method, s=s,
        p=ml_collections.FieldReference(0.5 if method == "lp" else None, field_type=float),
        a=ml_collections.FieldReference(None, field_type=float),
        lam=ml_collections.FieldReference(None, field_type=float),
        eps=ml_collections.FieldReference(None, field_type=float),
        init_bn_scale=0.5, filter_regex=INNER_BN))
    c.pipeline = ml_collections.ConfigDict(dict(
        prune_fraction=0.4, min_channels=1,
        finetune=ml_collections.ConfigDict(dict(num_epochs=stage, lr=_step_lr(0.1, stage)))))
  return c
