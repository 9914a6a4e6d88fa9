"""Flax NNX models of the sparsity literature: LeNets, CIFAR VGG and ResNet, DARTS cells.

Every model maps NHWC float images to logits ``(batch, num_classes)`` and
exposes ``model.config``, its constructor keyword arguments except ``rngs``, so
that ``type(model)(**model.config, rngs=rngs)`` rebuilds it (and editing the
widths in the dict builds a narrower, compacted model). Models with batch norm
start in training mode; ``model.eval()`` / ``model.train()`` switch between
running averages and batch statistics.
"""

from __future__ import annotations

from typing import Any

from flax import nnx

from sparsejax.models.darts import DARTS_V2, PRIMITIVES, DartsEvalNet, Genotype, parse_genotype
from sparsejax.models.lenet import LeNet300100, LeNet5
from sparsejax.models.resnet import BasicBlock, ConvBN, ResNetCIFAR, option_a_shortcut
from sparsejax.models.vgg import VGG, VGG_CONFIGS, ConvBNReLU

__all__ = [
    "MODELS",
    "get_model",
    "LeNet300100",
    "LeNet5",
    "VGG",
    "VGG_CONFIGS",
    "ConvBNReLU",
    "ResNetCIFAR",
    "BasicBlock",
    "ConvBN",
    "option_a_shortcut",
    "DartsEvalNet",
    "Genotype",
    "DARTS_V2",
    "PRIMITIVES",
    "parse_genotype",
]

MODELS = ("lenet300_100", "lenet5", "vgg11", "vgg13", "vgg16", "vgg19", "resnet20",
          "resnet32", "resnet56", "resnet110", "darts_eval")

_RESNET_DEPTHS = {"resnet20": 20, "resnet32": 32, "resnet56": 56, "resnet110": 110}


def get_model(name: str, *, num_classes: int = 10, rngs: nnx.Rngs, **kwargs: Any) -> nnx.Module:
  """Builds a model by name.

  Args:
    name: one of :data:`MODELS`.
    num_classes: number of logits.
    rngs: ``nnx.Rngs`` for the initialisers.
    **kwargs: forwarded to the constructor, e.g. ``widths=``, ``in_channels=``,
      ``input_size=``, ``block_widths=``. For VGG names ``widths`` replaces the
      preset configuration; for ResNet names ``depth`` is fixed by the name;
      ``darts_eval`` takes ``genotype=`` (a genotype, dict, JSON text or the
      path of a JSON file), ``num_cells=`` and ``widths=``.

  Returns:
    The freshly initialised model (in training mode if it has batch norm).
  """
  if name not in MODELS:
    raise ValueError(f"name must be one of {MODELS}, got {name!r}")
  if name == "lenet300_100":
    return LeNet300100(num_classes=num_classes, rngs=rngs, **kwargs)
  if name == "lenet5":
    return LeNet5(num_classes=num_classes, rngs=rngs, **kwargs)
  if name == "darts_eval":
    return DartsEvalNet(num_classes=num_classes, rngs=rngs, **kwargs)
  if name in VGG_CONFIGS:
    kwargs.setdefault("widths", VGG_CONFIGS[name])
    return VGG(num_classes=num_classes, rngs=rngs, **kwargs)
  depth = _RESNET_DEPTHS[name]
  if "depth" in kwargs and kwargs["depth"] != depth:
    raise ValueError(
        f"depth={kwargs['depth']!r} contradicts the model name {name!r} "
        f"(depth {depth}); leave depth out or pass depth={depth}")
  kwargs["depth"] = depth
  return ResNetCIFAR(num_classes=num_classes, rngs=rngs, **kwargs)
