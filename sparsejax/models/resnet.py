"""CIFAR ResNets of He et al. (2016), depth ``6n + 2``, with option-A shortcuts.

Layout: a 3x3 stem conv (``widths[0]``) + BN + relu, three stages of ``n``
:class:`BasicBlock` (``conv3x3-BN-relu-conv3x3-BN``, add shortcut, relu) with
stride 2 at the first block of stages 2 and 3, global average pooling and one
dense layer. Shortcuts are parameter-free (option A): the identity, and where
the shape changes, ``x[:, ::2, ::2, :]`` followed by zero channels appended up to
the new width (channel ``c`` of the narrower stream stays channel ``c``).

Widths: ``widths[s]`` is the width of the residual stream of stage ``s``, shared
by the stem (for ``s = 0``) and by the second conv of every block of the
stage. ``block_widths[b]`` is the inner width of block ``b`` (its first conv),
set independently per block.

Parameter paths: ``stem/conv/kernel``, ``stem/bn/scale``,
``blocks/<b>/conv1/kernel``, ``blocks/<b>/bn1/scale``, ``blocks/<b>/conv2/kernel``,
``blocks/<b>/bn2/scale`` (``b = 0 .. 3n-1`` across the stages) and ``fc/kernel``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from sparsejax.models.lenet import _check_nhwc, _check_positive_int, _check_widths, _config_dict
from sparsejax.models.vgg import _check_momentum

__all__ = ["option_a_shortcut", "ConvBN", "BasicBlock", "ResNetCIFAR"]

# Kaiming-normal, fan_out, relu gain: std = sqrt(2 / (k * k * out_channels)).
_CONV_INIT = jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _conv3x3(in_features: int, out_features: int, stride: int, rngs: nnx.Rngs) -> nnx.Conv:
  # Symmetric padding 1 (as in the reference implementation): with stride 2 the
  # output pixel i is centred on input pixel 2i, the pixel option A keeps.
  return nnx.Conv(in_features, out_features, (3, 3), strides=(stride, stride),
                  padding=((1, 1), (1, 1)), use_bias=False, kernel_init=_CONV_INIT,
                  rngs=rngs)


def option_a_shortcut(x: jax.Array, out_features: int, stride: int) -> jax.Array:
  """The parameter-free option-A shortcut of He et al. (2016).

  Args:
    x: NHWC activations.
    out_features: channel count of the output, at least ``x.shape[-1]``.
    stride: 1 (no subsampling) or 2 (keep pixels ``[::2, ::2]``).

  Returns:
    ``x`` subsampled by ``stride`` with ``out_features - x.shape[-1]`` zero
    channels appended.
  """
  in_features = x.shape[-1]
  if out_features < in_features:
    raise ValueError(
        f"out_features must be >= the input channel count {in_features} for an "
        f"option-A (zero-padding) shortcut, got {out_features}")
  if stride not in (1, 2):
    raise ValueError(f"stride must be 1 or 2, got {stride!r}")
  if stride == 2:
    x = x[:, ::2, ::2, :]
  if out_features > in_features:
    x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, out_features - in_features)))
  return x


class ConvBN(nnx.Module):
  """``3x3 conv (no bias, padding 1) -> BatchNorm``; params at ``conv/...``, ``bn/...``."""

  def __init__(self, in_features: int, out_features: int, *, stride: int = 1,
               bn_momentum: float = 0.9, rngs: nnx.Rngs):
    self.conv = _conv3x3(in_features, out_features, stride, rngs)
    self.bn = nnx.BatchNorm(out_features, momentum=bn_momentum, epsilon=1e-5, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.bn(self.conv(x))


class BasicBlock(nnx.Module):
  """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`` with option-A shortcut.

  Args:
    in_features: channels of the block input (the incoming residual stream).
    inner_features: output width of ``conv1``.
    out_features: output width of ``conv2`` (the outgoing residual stream), at
      least ``in_features``.
    stride: stride of ``conv1`` and of the shortcut, 1 or 2.
    bn_momentum: running-average decay of the batch norms.
    rngs: ``nnx.Rngs`` for the initialisers.
  """

  def __init__(self, in_features: int, inner_features: int, out_features: int, *,
               stride: int = 1, bn_momentum: float = 0.9, rngs: nnx.Rngs):
    if out_features < in_features:
      raise ValueError(
          f"out_features ({out_features}) must be >= in_features ({in_features}): "
          f"the option-A shortcut can only zero-pad channels")
    if stride not in (1, 2):
      raise ValueError(f"stride must be 1 or 2, got {stride!r}")
    self.in_features = in_features
    self.out_features = out_features
    self.stride = stride
    self.conv1 = _conv3x3(in_features, inner_features, stride, rngs)
    self.bn1 = nnx.BatchNorm(inner_features, momentum=bn_momentum, epsilon=1e-5, rngs=rngs)
    self.conv2 = _conv3x3(inner_features, out_features, 1, rngs)
    self.bn2 = nnx.BatchNorm(out_features, momentum=bn_momentum, epsilon=1e-5, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    y = nnx.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return nnx.relu(y + option_a_shortcut(x, self.out_features, self.stride))


class ResNetCIFAR(nnx.Module):
  """He et al. (2016) CIFAR ResNet of depth ``6n + 2`` (ResNet-20/32/44/56/110).

  Args:
    depth: ``6n + 2`` with ``n >= 1``; ``n`` blocks per stage.
    widths: residual-stream widths of the three stages, non-decreasing (the
      option-A shortcut can only add channels).
    block_widths: inner (first conv) width of each of the ``3n`` blocks;
      ``None`` means the stage width.
    num_classes: number of logits.
    in_channels: channels of the NHWC input.
    bn_momentum: running-average decay of the batch norms (0.9 is PyTorch's 0.1).
    rngs: ``nnx.Rngs`` for the initialisers.

  Convs have no bias and use Kaiming-normal (fan_out, relu) initialisation. The
  model starts in training mode (batch statistics); call ``model.eval()`` to
  use the running averages and ``model.train()`` to switch back. Any spatial
  input size works (global average pooling).
  """

  def __init__(self, *, depth: int = 20, widths: Sequence[int] = (16, 32, 64),
               block_widths: Sequence[int] | None = None, num_classes: int = 10,
               in_channels: int = 3, bn_momentum: float = 0.9, rngs: nnx.Rngs):
    if (isinstance(depth, bool) or not isinstance(depth, int) or depth < 8
        or (depth - 2) % 6 != 0):
      raise ValueError(
          f"depth must be 6n + 2 for an int n >= 1 (e.g. 20, 32, 44, 56, 110 for "
          f"n = 3, 5, 7, 9, 18), got {depth!r}")
    n = (depth - 2) // 6
    widths = _check_widths("widths", widths, 3)
    if not widths[0] <= widths[1] <= widths[2]:
      raise ValueError(
          f"widths must be non-decreasing (option-A shortcuts only zero-pad "
          f"channels), got {widths!r}")
    if block_widths is None:
      block_widths = tuple(widths[b // n] for b in range(3 * n))
      default_blocks = True
    else:
      block_widths = _check_widths("block_widths", block_widths, 3 * n)
      default_blocks = False
    num_classes = _check_positive_int("num_classes", num_classes)
    in_channels = _check_positive_int("in_channels", in_channels)
    bn_momentum = _check_momentum(bn_momentum)
    self._config = (("depth", depth), ("widths", widths),
                    ("block_widths", None if default_blocks else block_widths),
                    ("num_classes", num_classes), ("in_channels", in_channels),
                    ("bn_momentum", bn_momentum))
    self.in_channels = in_channels
    self.stem = ConvBN(in_channels, widths[0], bn_momentum=bn_momentum, rngs=rngs)
    blocks = []
    c = widths[0]
    for b in range(3 * n):
      stage = b // n
      stride = 2 if (stage > 0 and b % n == 0) else 1
      blocks.append(BasicBlock(c, block_widths[b], widths[stage], stride=stride,
                               bn_momentum=bn_momentum, rngs=rngs))
      c = widths[stage]
    self.blocks = nnx.List(blocks)
    self.fc = nnx.Linear(widths[2], num_classes, rngs=rngs)

  @property
  def config(self) -> dict[str, Any]:
    """Constructor keyword arguments (all but ``rngs``) as a fresh dict."""
    return _config_dict(self._config)

  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps NHWC images ``(batch, height, width, in_channels)`` to logits."""
    _check_nhwc(x, self.in_channels)
    x = nnx.relu(self.stem(x))
    for block in self.blocks:
      x = block(x)
    x = jnp.mean(x, axis=(1, 2))
    return self.fc(x)
