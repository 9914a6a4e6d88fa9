"""VGG for CIFAR in the network-slimming style (Liu et al., 2017).

``widths`` lists the conv output widths in order, with ``"M"`` for a 2x2 max
pool. Every conv is ``3x3 SAME -> BatchNorm -> relu`` (the conv has no bias when
batch norm follows). After the features come a 2x2 average pool, a flatten and
a single dense layer. The presets drop the last ``"M"`` of the ImageNet
configurations, so a 32x32 input ends the features at 2x2 and the average pool
brings it to 1x1.

Parameter paths: ``features/<i>/conv/kernel``, ``features/<i>/bn/scale`` (``i``
counts convs only, so ``features/<i>`` is the ``i``-th int of ``widths``) and
``classifier/kernel``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from sparsejax.models.lenet import _check_hw, _check_nhwc, _check_positive_int, _config_dict

__all__ = ["VGG_CONFIGS", "ConvBNReLU", "VGG"]

VGG_CONFIGS: dict[str, tuple[int | str, ...]] = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    "vgg13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512,
              512, "M", 512, 512, 512, 512),
}

# Kaiming-normal, fan_out, relu gain: std = sqrt(2 / (k * k * out_channels)).
_CONV_INIT = jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class ConvBNReLU(nnx.Module):
  """``3x3 SAME conv -> [BatchNorm] -> relu``; params at ``conv/...`` and ``bn/...``.

  Args:
    in_features: input channels.
    out_features: output channels.
    batch_norm: whether a ``BatchNorm`` follows the conv (then the conv has no
      bias); without it ``bn`` is ``None`` and the conv has a bias.
    bn_momentum: running-average decay of the batch norm.
    rngs: ``nnx.Rngs`` for the initialisers.
  """

  def __init__(self, in_features: int, out_features: int, *, batch_norm: bool = True,
               bn_momentum: float = 0.9, rngs: nnx.Rngs):
    self.conv = nnx.Conv(in_features, out_features, (3, 3), padding="SAME",
                         use_bias=not batch_norm, kernel_init=_CONV_INIT, rngs=rngs)
    self.bn = (nnx.BatchNorm(out_features, momentum=bn_momentum, epsilon=1e-5, rngs=rngs)
               if batch_norm else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.conv(x)
    if self.bn is not None:
      x = self.bn(x)
    return nnx.relu(x)


def _check_momentum(bn_momentum: Any) -> float:
  """Checks a batch-norm running-average decay in ``[0, 1)``."""
  if (isinstance(bn_momentum, bool) or not isinstance(bn_momentum, (int, float))
      or not 0.0 <= bn_momentum < 1.0):
    raise ValueError(f"bn_momentum must be a float in [0, 1), got {bn_momentum!r}")
  return float(bn_momentum)


def _check_cfg(widths: Any) -> tuple[int | str, ...]:
  if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence):
    raise ValueError(
        f'widths must be a sequence of positive ints and "M", got {widths!r}')
  out: list[int | str] = []
  for i, w in enumerate(widths):
    if isinstance(w, str):
      if w != "M":
        raise ValueError(
            f'widths[{i}] must be a positive int or "M" (max pool), got {w!r}')
      out.append("M")
    else:
      try:
        out.append(_check_positive_int(f"widths[{i}]", w))
      except ValueError:
        raise ValueError(
            f'widths[{i}] must be a positive int or "M" (max pool), got {w!r}') from None
  if not any(isinstance(w, int) for w in out):
    raise ValueError(f"widths must contain at least one conv width (an int), got {widths!r}")
  return tuple(out)


class VGG(nnx.Module):
  """CIFAR VGG with batch norm, as in network slimming.

  Args:
    widths: conv widths and ``"M"`` max pools, e.g. ``VGG_CONFIGS["vgg19"]``
      (the default).
    num_classes: number of logits.
    in_channels: channels of the NHWC input.
    batch_norm: batch norm after every conv (convs then have no bias).
    input_size: spatial size of the input, an int or ``(height, width)``; it
      fixes the in-feature count of the classifier (``widths[-1]`` for 32x32
      inputs and the presets).
    bn_momentum: running-average decay of the batch norms (0.9 is PyTorch's 0.1).
    rngs: ``nnx.Rngs`` for the initialisers.

  The model starts in training mode (batch statistics); call ``model.eval()``
  to use the running averages and ``model.train()`` to switch back.
  """

  def __init__(self, *, widths: Sequence[int | str] = VGG_CONFIGS["vgg19"],
               num_classes: int = 10, in_channels: int = 3, batch_norm: bool = True,
               input_size: int | Sequence[int] = 32, bn_momentum: float = 0.9,
               rngs: nnx.Rngs):
    cfg = _check_cfg(widths)
    num_classes = _check_positive_int("num_classes", num_classes)
    in_channels = _check_positive_int("in_channels", in_channels)
    if not isinstance(batch_norm, bool):
      raise TypeError(f"batch_norm must be a bool, got {batch_norm!r}")
    hw = _check_hw("input_size", input_size)
    bn_momentum = _check_momentum(bn_momentum)
    h, w = hw
    for item in cfg:
      if item == "M":
        h, w = h // 2, w // 2
    h, w = h // 2, w // 2  # final 2x2 average pool
    if h < 1 or w < 1:
      n_pool = cfg.count("M") + 1
      raise ValueError(
          f"input_size={input_size!r} is too small for widths={list(cfg)!r}: "
          f"{n_pool} 2x2 poolings need at least {2 ** n_pool} pixels per side")
    stored_size = hw if isinstance(input_size, Sequence) else hw[0]
    self._config = (("widths", cfg), ("num_classes", num_classes),
                    ("in_channels", in_channels), ("batch_norm", batch_norm),
                    ("input_size", stored_size), ("bn_momentum", bn_momentum))
    self.cfg = cfg
    self.input_hw = hw
    self.in_channels = in_channels
    layers = []
    c = in_channels
    for item in cfg:
      if item != "M":
        layers.append(ConvBNReLU(c, item, batch_norm=batch_norm,
                                 bn_momentum=bn_momentum, rngs=rngs))
        c = item
    self.features = nnx.List(layers)
    self.classifier = nnx.Linear(h * w * c, num_classes, rngs=rngs)

  @property
  def config(self) -> dict[str, Any]:
    """Constructor keyword arguments (all but ``rngs``) as a fresh dict."""
    return _config_dict(self._config)

  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps NHWC images ``(batch, *input_size, in_channels)`` to logits."""
    _check_nhwc(x, self.in_channels, self.input_hw)
    i = 0
    for item in self.cfg:
      if item == "M":
        x = nnx.max_pool(x, (2, 2), strides=(2, 2))
      else:
        x = self.features[i](x)
        i += 1
    x = nnx.avg_pool(x, (2, 2), strides=(2, 2))
    x = jnp.reshape(x, (x.shape[0], -1))
    return self.classifier(x)
