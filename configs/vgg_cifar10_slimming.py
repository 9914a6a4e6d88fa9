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
    width (16-128 channels), a 10,000-image training subset (full 10,000-image
    test set), 40 epochs in all (proximal: 40 epochs, lr x0.1 at 20 and 30;
    penalties: 20 epochs of training + 20 of fine-tuning, each with lr x0.1 at
    50% and 75%). Because the run is ~20x shorter than the paper's, the
    sparsity strengths are raised (proximal s = 0.03, penalties s = 1e-3) so
    that channels actually reach zero; say so when quoting its numbers. About
    1 minute per epoch on 2 CPU cores (so ~40 minutes per method).
  ``smoke`` -- a tiny VGG (8-32 channels) for tests: 1,000 training images,
    500 test images, batch 32, 2 epochs (penalties: 1 + 1), no augmentation.
"""

import ml_collections

METHODS = ("proximal", "l1", "lp", "tl1", "mcp", "scad")
SIZES = ("cpu", "smoke")
VGG19_QUARTER = (16, 16, "M", 32, 32, "M", 64, 64, 64, 64, "M", 128, 128, 128, 128, "M",
                 128, 128, 128, 128)
VGG_SMOKE = (8, "M", 16, "M", 16, "M", 32)


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
    raise ValueError(f"bad variant(s) {variants} for configs/vgg_cifar10_slimming.py; pick at "
                     f"most one method of {METHODS} and at most one size of {SIZES}")
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
  c.model = ml_collections.ConfigDict(dict(name="vgg19", kwargs={}))
  c.batch_size = 64
  c.eval_batch_size = 1000
  c.optimizer = ml_collections.ConfigDict(dict(
      name="sgd", momentum=0.9, nesterov=False, weight_decay=1e-4))
  c.checkpoint = ml_collections.ConfigDict(dict(every_steps=0, keep=2))
  c.progress_bar = True
  c.stop_after_steps = ml_collections.FieldReference(None, field_type=int)
  c.compact = True  # report parameters/FLOPs after removing zero channels

  total_epochs = {"full": 160.0, "cpu": 40.0, "smoke": 2.0}[size]
  if size == "cpu":
    c.model.kwargs = dict(widths=VGG19_QUARTER)
    c.data.train_subset = 10000
  elif size == "smoke":
    c.model.kwargs = dict(widths=VGG_SMOKE)
    c.data.train_subset = 1000
    c.data.test_subset = 500
    c.data.augment = False
    c.batch_size = 32
    c.eval_batch_size = 500
    c.progress_bar = False

  if method == "proximal":
    c.num_epochs = total_epochs
    c.lr = _step_lr(0.1, total_epochs)
    s = {"full": 0.0045, "cpu": 0.03, "smoke": 3.0}[size]
    c.algorithm = ml_collections.ConfigDict(dict(
        name="network_slimming", s=s, beta=100.0, xi_init="uniform", xi_low=0.47,
        xi_high=0.53, seed=0, init_bn_scale=0.5, filter_regex=""))
  else:
    # Full recipe: 160 + 160 epochs; smaller sizes split the total in two halves.
    stage = total_epochs if size == "full" else total_epochs / 2
    c.num_epochs = stage
    c.lr = _step_lr(0.1, stage)
    s = {"full": 1e-4, "cpu": 1e-3, "smoke": 1e-2}[size]
    c.algorithm = ml_collections.ConfigDict(dict(
        name="slimming_penalty", kind=method, s=s,
        p=ml_collections.FieldReference(0.5 if method == "lp" else None, field_type=float),
        a=ml_collections.FieldReference(None, field_type=float),
        lam=ml_collections.FieldReference(None, field_type=float),
        eps=ml_collections.FieldReference(None, field_type=float),
        init_bn_scale=0.5, filter_regex=""))
    c.pipeline = ml_collections.ConfigDict(dict(
        prune_fraction=0.7, min_channels=1,
        finetune=ml_collections.ConfigDict(dict(num_epochs=stage, lr=_step_lr(0.1, stage)))))
  return c
