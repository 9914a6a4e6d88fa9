"""Pieces the shipped configs share: variants, step lr schedules, slimming runs.

Not a config itself (no ``get_config``). Trainer configs start from
``configs/default.py``'s dense config so that every one of them has the same fields
(data, checkpoint, compaction, mesh and sharding settings), and override the rest.
"""

from collections.abc import Sequence

import ml_collections

from configs import default


def split_variants(arg: str | None, config_file: str, allowed: Sequence[str]) -> list[str]:
  """The comma-separated variants in ``arg``, in order, each one of ``allowed``.

  Raises a ``ValueError`` naming ``configs/<config_file>``, the unknown variants
  and the allowed ones.
  """
  variants = [v for v in (arg or "").split(",") if v]
  unknown = sorted(set(variants) - set(allowed))
  if unknown:
    raise ValueError(f"unknown variant(s) {unknown} for configs/{config_file}; "
                     f"allowed: {', '.join(allowed)}")
  return variants


def step_lr(base: float, boundaries_epochs: Sequence[float],
            factor: float = 0.1) -> ml_collections.ConfigDict:
  """``config.lr`` for ``base`` multiplied by ``factor`` at each epoch boundary."""
  return ml_collections.ConfigDict(dict(
      base=base, schedule="step", boundaries_epochs=tuple(boundaries_epochs), factor=factor,
      final_fraction=0.0, warmup_epochs=0.0))


SLIMMING_METHODS = ("proximal", "l1", "lp", "tl1", "mcp", "scad")
SLIMMING_SIZES = ("cpu", "smoke")


def slimming_variants(arg: str | None, config_file: str) -> tuple[str, str]:
  """``(method, size)`` of a slimming config's variants: at most one of each.

  The method defaults to ``"proximal"``, the size to ``"full"``.
  """
  variants = split_variants(arg, config_file, SLIMMING_METHODS + SLIMMING_SIZES)
  methods = [v for v in variants if v in SLIMMING_METHODS]
  sizes = [v for v in variants if v in SLIMMING_SIZES]
  if len(methods) > 1 or len(sizes) > 1:
    raise ValueError(f"bad variant(s) {variants} for configs/{config_file}; pick at most one "
                     f"method of {SLIMMING_METHODS} and at most one size of {SLIMMING_SIZES}")
  return (methods[0] if methods else "proximal"), (sizes[0] if sizes else "full")


def slimming_config(method: str, size: str, *, model: str, total_epochs: float,
                    proximal_s: float, proximal_beta: float, penalty_s: float,
                    prune_fraction: float, filter_regex: str) -> ml_collections.ConfigDict:
  """A CIFAR-10 network-slimming run of ``total_epochs`` epochs in all.

  ``method="proximal"``: ``network_slimming`` (s = ``proximal_s``, β =
  ``proximal_beta``, ξ₀ ~ U(0.47, 0.53)) for all the epochs, no fine-tuning.
  Otherwise the classic pipeline with ``slimming_penalty(kind=method, s=penalty_s)``:
  train, prune ``prune_fraction`` of the selected channels by one global |γ|
  threshold, fine-tune. ``size="full"`` trains and fine-tunes ``total_epochs``
  each (the papers' 160 + 160); smaller sizes split ``total_epochs`` in two
  halves. SGD momentum 0.9, weight decay 1e-4, lr 0.1 ×0.1 at 50% and 75% of
  each stage, batch 64, pad-4 crop + flip, BN scales initialised to 0.5.
  ``size="smoke"`` (for tests): 1,000 training and 500 test images, batch 32,
  no augmentation, no progress bar.
  """
  def lr(epochs):
    return step_lr(0.1, (0.5 * epochs, 0.75 * epochs))

  c = default.get_config("dense")
  c.dataset = "cifar10"
  c.data.augment = True
  c.model.name = model
  c.batch_size = 64
  c.optimizer.weight_decay = 1e-4
  c.checkpoint.keep = 2
  c.compact = True  # report parameters/FLOPs after removing zero channels
  if size == "smoke":
    c.data.train_subset = 1000
    c.data.test_subset = 500
    c.data.augment = False
    c.batch_size = 32
    c.eval_batch_size = 500
    c.progress_bar = False
  if method == "proximal":
    c.num_epochs = total_epochs
    c.lr = lr(total_epochs)
    c.algorithm = ml_collections.ConfigDict(dict(
        name="network_slimming", s=proximal_s, beta=proximal_beta, xi_init="uniform",
        xi_low=0.47, xi_high=0.53, seed=0, init_bn_scale=0.5, filter_regex=filter_regex))
    return c
  stage = total_epochs if size == "full" else total_epochs / 2
  c.num_epochs = stage
  c.lr = lr(stage)
  c.algorithm = ml_collections.ConfigDict(dict(
      name="slimming_penalty", kind=method, s=penalty_s,
      p=ml_collections.FieldReference(0.5 if method == "lp" else None, field_type=float),
      a=ml_collections.FieldReference(None, field_type=float),
      lam=ml_collections.FieldReference(None, field_type=float),
      eps=ml_collections.FieldReference(None, field_type=float),
      init_bn_scale=0.5, filter_regex=filter_regex))
  c.pipeline = ml_collections.ConfigDict(dict(
      prune_fraction=prune_fraction, min_channels=1,
      finetune=ml_collections.ConfigDict(dict(num_epochs=stage, lr=lr(stage)))))
  return c
