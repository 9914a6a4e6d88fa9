"""LeNet-300-100 and LeNet-5 (Caffe variant), the MNIST models of the pruning literature.

Both take NHWC float images (``LeNet300100`` also accepts already flat inputs)
and return logits ``(batch, num_classes)``. Every layer width is a constructor
argument so that a compaction tool can rebuild a narrower model with
``type(model)(**model.config, rngs=...)`` after editing ``config["widths"]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["LeNet300100", "LeNet5"]


def _check_positive_int(name: str, value: Any) -> int:
  """Returns ``value`` as an int, or raises ``ValueError`` naming ``name``."""
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"{name} must be a positive int, got {value!r}")
  return int(value)


def _check_widths(name: str, widths: Any, length: int) -> tuple[int, ...]:
  """Checks a sequence of ``length`` positive ints and returns it as a tuple."""
  if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence):
    raise ValueError(
        f"{name} must be a sequence of {length} positive ints, got {widths!r}")
  if len(widths) != length:
    raise ValueError(
        f"{name} must have length {length}, got {len(widths)} entries: {widths!r}")
  return tuple(_check_positive_int(f"{name}[{i}]", w) for i, w in enumerate(widths))


def _check_hw(name: str, value: Any) -> tuple[int, int]:
  """An int ``s`` means ``(s, s)``; a pair is ``(height, width)``."""
  if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
    if len(value) != 2:
      raise ValueError(f"{name} must be an int or a (height, width) pair, got {value!r}")
    return (_check_positive_int(f"{name}[0]", value[0]),
            _check_positive_int(f"{name}[1]", value[1]))
  s = _check_positive_int(name, value)
  return (s, s)



def _config_dict(pairs: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
  """A model's ``config``: a fresh dict of its constructor arguments, sequences as lists."""
  return {k: list(v) if isinstance(v, (tuple, list)) else v for k, v in pairs}


def _check_nhwc(x: jax.Array, in_channels: int, hw: tuple[int, int] | None = None) -> None:
  """Raises ``ValueError`` unless ``x`` is a batch of NHWC images of the model's shape."""
  if hw is not None:
    expected = (*hw, in_channels)
    if x.ndim != 4 or tuple(x.shape[1:]) != expected:
      raise ValueError(
          f"x must have shape (batch, {expected[0]}, {expected[1]}, {expected[2]}) "
          f"(NHWC, from input_size and in_channels), got {x.shape}")
  elif x.ndim != 4 or x.shape[-1] != in_channels:
    raise ValueError(
        f"x must have shape (batch, height, width, {in_channels}) (NHWC, "
        f"in_channels={in_channels}), got {x.shape}")

class LeNet300100(nnx.Module):
  """LeNet-300-100: flatten -> dense 300 -> relu -> dense 100 -> relu -> dense.

  Parameters live at ``fc1/kernel``, ``fc1/bias``, ``fc2/...`` and ``fc3/...``.
  With the defaults the model has 266,610 parameters.

  Args:
    widths: output widths of the two hidden dense layers.
    num_classes: number of logits.
    in_features: size of a flattened input (784 for 28x28x1 MNIST).
    rngs: ``nnx.Rngs`` for the initialisers.
  """

  def __init__(self, *, widths: Sequence[int] = (300, 100), num_classes: int = 10,
               in_features: int = 784, rngs: nnx.Rngs):
    widths = _check_widths("widths", widths, 2)
    num_classes = _check_positive_int("num_classes", num_classes)
    in_features = _check_positive_int("in_features", in_features)
    self._config = (("widths", widths), ("num_classes", num_classes),
                    ("in_features", in_features))
    self.in_features = in_features
    self.fc1 = nnx.Linear(in_features, widths[0], rngs=rngs)
    self.fc2 = nnx.Linear(widths[0], widths[1], rngs=rngs)
    self.fc3 = nnx.Linear(widths[1], num_classes, rngs=rngs)

  @property
  def config(self) -> dict[str, Any]:
    """Constructor keyword arguments (all but ``rngs``) as a fresh dict."""
    return _config_dict(self._config)

  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps inputs ``(batch, ...)`` with ``in_features`` elements each to logits."""
    x = jnp.reshape(x, (x.shape[0], -1))
    if x.shape[1] != self.in_features:
      raise ValueError(
          f"x must have {self.in_features} features per example (in_features), got "
          f"{x.shape[1]} from input shape {x.shape}")
    x = nnx.relu(self.fc1(x))
    x = nnx.relu(self.fc2(x))
    return self.fc3(x)


def _lenet5_flat_hw(input_size: tuple[int, int]) -> tuple[int, int]:
  """Spatial size after conv5-pool2-conv5-pool2 (VALID convs, floor pooling)."""
  out = []
  for s in input_size:
    s = (s - 4) // 2  # conv 5x5 VALID, then 2x2 max pool
    s = (s - 4) // 2
    out.append(s)
  return out[0], out[1]


class LeNet5(nnx.Module):
  """The Caffe LeNet-5 used by Han et al. (2015) and later pruning papers.

  ``conv 5x5 (VALID) -> relu -> maxpool 2 -> conv 5x5 (VALID) -> relu ->
  maxpool 2 -> flatten -> dense -> relu -> dense``. For 28x28 inputs the flatten
  size is ``4 * 4 * widths[1]``; with the defaults the model has 431,080
  parameters at ``conv1/kernel``, ``conv2/kernel``, ``fc1/kernel``,
  ``fc2/kernel`` (and the matching biases).

  Args:
    widths: output widths of ``conv1``, ``conv2`` and ``fc1``.
    num_classes: number of logits.
    in_channels: channels of the NHWC input.
    input_size: spatial size of the input, an int or ``(height, width)``; it
      fixes the in-feature count of ``fc1``.
    rngs: ``nnx.Rngs`` for the initialisers.
  """

  def __init__(self, *, widths: Sequence[int] = (20, 50, 500), num_classes: int = 10,
               in_channels: int = 1, input_size: int | Sequence[int] = 28,
               rngs: nnx.Rngs):
    widths = _check_widths("widths", widths, 3)
    num_classes = _check_positive_int("num_classes", num_classes)
    in_channels = _check_positive_int("in_channels", in_channels)
    hw = _check_hw("input_size", input_size)
    fh, fw = _lenet5_flat_hw(hw)
    if fh < 1 or fw < 1:
      raise ValueError(
          f"input_size={input_size!r} is too small for LeNet5: two 5x5 VALID convs "
          f"and two 2x2 pools need at least 16x16 inputs")
    stored_size = hw if isinstance(input_size, Sequence) else hw[0]
    self._config = (("widths", widths), ("num_classes", num_classes),
                    ("in_channels", in_channels), ("input_size", stored_size))
    self.input_hw = hw
    self.in_channels = in_channels
    self.conv1 = nnx.Conv(in_channels, widths[0], (5, 5), padding="VALID", rngs=rngs)
    self.conv2 = nnx.Conv(widths[0], widths[1], (5, 5), padding="VALID", rngs=rngs)
    self.fc1 = nnx.Linear(fh * fw * widths[1], widths[2], rngs=rngs)
    self.fc2 = nnx.Linear(widths[2], num_classes, rngs=rngs)

  @property
  def config(self) -> dict[str, Any]:
    """Constructor keyword arguments (all but ``rngs``) as a fresh dict."""
    return _config_dict(self._config)

  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps NHWC images ``(batch, *input_size, in_channels)`` to logits."""
    _check_nhwc(x, self.in_channels, self.input_hw)
    x = nnx.max_pool(nnx.relu(self.conv1(x)), (2, 2), strides=(2, 2))
    x = nnx.max_pool(nnx.relu(self.conv2(x)), (2, 2), strides=(2, 2))
    x = jnp.reshape(x, (x.shape[0], -1))
    x = nnx.relu(self.fc1(x))
    return self.fc2(x)
