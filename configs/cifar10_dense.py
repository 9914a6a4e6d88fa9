r"""Dense CIFAR-10 baselines: VGG and ResNet-20/32/56, with an optional pruned variant.

Launch (model chosen by the first variant; default resnet20):
  python scripts/train.py --config configs/cifar10_dense.py:resnet20 --workdir runs/r20
  python scripts/train.py --config configs/cifar10_dense.py:vgg19 --workdir runs/vgg19
  python scripts/train.py --config configs/cifar10_dense.py:resnet20,cpu --workdir runs/r20_cpu
  python scripts/train.py --config configs/cifar10_dense.py:resnet20,gmp --workdir runs/r20_gmp

Full recipe (He et al. 2016 for ResNets; network-slimming baseline for VGG): SGD momentum
0.9, lr 0.1 ×0.1 at 50% and 75% of 160 epochs, batch 64 (VGG) / 128 (ResNet), weight decay
1e-4, pad-4 crop + flip. On 2 CPU cores that is days (ResNet-20 ~5.5 min/epoch, VGG-19
~1.5 h/epoch), so:

- ``cpu``: a CPU-sized run, stated plainly: 10,000-image training subset, 15 epochs, cosine
  lr, and for VGG the widths divided by 4. Its accuracy is NOT comparable with the papers'.
- ``gmp``: gradual magnitude pruning to 90% (uniform per layer) between 10% and 60% of training.
- ``smoke``: a few steps on a 512-image subset, for tests.
"""

from configs import default as _default

_MODELS = ("vgg11", "vgg13", "vgg16", "vgg19", "resnet20", "resnet32", "resnet56", "resnet110")


def get_config(arg: str | None = None):
  variants = [v for v in (arg or "").split(",") if v]
  models = [v for v in variants if v in _MODELS]
  flags = set(variants) - set(models)
  unknown = flags - {"cpu", "gmp", "smoke"}
  if unknown or len(models) > 1:
    raise ValueError(f"variants for configs/cifar10_dense.py: one of {_MODELS} plus any of "
                     f"cpu, gmp, smoke; got {arg!r}")
  model = models[0] if models else "resnet20"
  c = _default.get_config("dense")
  c.dataset = "cifar10"
  c.data.augment = True
  c.model.name = model
  c.batch_size = 64 if model.startswith("vgg") else 128
  c.eval_batch_size = 500
  c.num_epochs = 160.0
  c.optimizer.weight_decay = 1e-4
  c.lr.base = 0.1
  c.lr.schedule = "step"
  c.lr.boundaries_epochs = (80.0, 120.0)
  c.lr.factor = 0.1
  if "cpu" in flags:
    c.data.train_subset = 10_000
    c.num_epochs = 15.0
    c.lr.schedule = "cosine"
    if model.startswith("vgg"):
      from sparsejax.models import VGG_CONFIGS  # pylint: disable=import-outside-toplevel
      c.model.kwargs = {"widths": [w if w == "M" else w // 4 for w in VGG_CONFIGS[model]]}
  if "smoke" in flags:
    c.data.train_subset = 512
    c.data.test_subset = 256
    c.batch_size = 64
    c.num_epochs = 2.0
    c.lr.schedule = "cosine"
    c.progress_bar = False
    if model.startswith("vgg"):
      from sparsejax.models import VGG_CONFIGS  # pylint: disable=import-outside-toplevel
      c.model.kwargs = {"widths": [w if w == "M" else max(w // 16, 4) for w in VGG_CONFIGS[model]]}
  if "gmp" in flags:
    c.algorithm = _default.get_config().algorithm
    c.algorithm.distribution = "uniform"
    c.algorithm.begin_epoch = 0.1 * c.num_epochs
    c.algorithm.end_epoch = 0.6 * c.num_epochs
    c.algorithm.update_every_steps = 50 if "smoke" not in flags else 2
  return c
