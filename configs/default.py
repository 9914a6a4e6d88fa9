r"""LeNet-5 on MNIST with gradual magnitude pruning to 90% (Zhu & Gupta).

Launch:
  python scripts/train.py --config configs/default.py --workdir runs/default
  python scripts/train.py --config configs/default.py:smoke --workdir /tmp/smoke
  python scripts/train.py --config configs/default.py:dense --workdir runs/dense
Override any field: --config.num_epochs=8 --config.algorithm.sparsity=0.95 (the ramp must end
by num_epochs: a shorter run also needs --config.algorithm.end_epoch)

SGD with momentum 0.9, lr 0.05 cosine, weight decay 5e-4, batch 128, 10 epochs.
The mask ramps from epoch 1 to epoch 6 with a cubic schedule (mask updated every
50 steps), one global magnitude threshold over the conv and dense kernels,
then 4 epochs of training with the mask fixed. About 2-3 minutes on 2 CPU cores
on full MNIST. Without a data directory or prepared TFDS, MNIST falls back to
the 5,000-digit offline sample (figures not comparable to full MNIST).

Variants (comma-separated): ``smoke`` (298 steps: 3.2 epochs of 93 batches of
64 on a 6,000-image subset, for tests), ``dense`` (no pruning: the baseline).
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variants = set(filter(None, (arg or "").split(",")))
  unknown = variants - {"smoke", "dense"}
  if unknown:
    raise ValueError(f"unknown variant(s) {sorted(unknown)} for configs/default.py; "
                     "allowed: smoke, dense")
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.dataset = "mnist"
  c.data = ml_collections.ConfigDict(dict(
      dir=ml_collections.FieldReference(None, field_type=str),
      tfds_data_dir=ml_collections.FieldReference(None, field_type=str),
      augment=False,
      train_subset=ml_collections.FieldReference(None, field_type=int),
      test_subset=ml_collections.FieldReference(None, field_type=int)))
  c.model = ml_collections.ConfigDict(dict(name="lenet5", kwargs={}))
  c.batch_size = 128
  c.eval_batch_size = 1000
  c.num_epochs = 10.0
  c.optimizer = ml_collections.ConfigDict(dict(
      name="sgd", momentum=0.9, nesterov=False, weight_decay=5e-4))
  c.lr = ml_collections.ConfigDict(dict(
      base=0.05, schedule="cosine", final_fraction=0.0, warmup_epochs=0.0,
      boundaries_epochs=(), factor=0.1))
  c.algorithm = ml_collections.ConfigDict(dict(
      name="magnitude_pruning", sparsity=0.9, begin_epoch=1.0, end_epoch=6.0,
      update_every_steps=50, distribution="global", filter_regex=""))
  c.checkpoint = ml_collections.ConfigDict(dict(every_steps=0, keep=3))
  c.progress_bar = True
  c.stop_after_steps = ml_collections.FieldReference(None, field_type=int)
  # Remove zero channels from the final model (sparsejax.compact): report.json
  # gains a "compaction" entry and workdir/compacted holds the smaller model.
  c.compact = False
  # With compact: round every shrunk width up to a multiple of this (keeping some
  # all-zero channels; 8 suits XLA's CPU convolutions, see docs/compaction.md).
  c.compact_multiple_of = 1
  # Sharded training (docs/scaling.md): e.g. --config.mesh=data=-1,model=2
  # --config.sharding_rules=model_parallel. None: one device, nothing sharded.
  c.mesh = ml_collections.FieldReference(None, field_type=str)
  c.sharding_rules = ml_collections.FieldReference(None, field_type=str)
  c.sharding_indivisible = "error"

  if "dense" in variants:
    c.algorithm = ml_collections.ConfigDict(dict(name="none"))
  if "smoke" in variants:
    c.data.train_subset = 6000
    c.data.test_subset = 1000
    c.batch_size = 64
    c.num_epochs = 3.2  # 298 steps: 93 full batches of 64 per epoch of 6,000 images
    c.eval_batch_size = 500
    if "dense" not in variants:
      c.algorithm.begin_epoch = 0.5
      c.algorithm.end_epoch = 2.0
      c.algorithm.update_every_steps = 10
    c.progress_bar = False
  return c
