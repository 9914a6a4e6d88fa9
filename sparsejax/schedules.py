"""Step -> value schedules used by the sparsity algorithms.

Every schedule here is a pure function of the step that works on Python ints
and on traced int32 scalars alike, so it can run inside a jitted update.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from sparsejax import _util

__all__ = [
    "polynomial_progress",
    "polynomial_sparsity",
    "is_update_step",
    "check_fraction",
]


def check_fraction(name: str, value, *, allow_one: bool = False) -> None:
  """Raises unless ``value`` is a real scalar in ``[0, 1)`` (or ``[0, 1]``).

  ``TypeError`` for a string, bool or non-scalar, ``ValueError`` (naming
  ``name``) out of range or NaN. Traced scalars cannot be checked and pass.
  """
  _util.check_real(name, value, low=0.0, high=1.0, high_open=not allow_one, scalar=True)


def _is_int(v) -> bool:
  """A Python or numpy integer (not a bool)."""
  return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _check_steps(begin_step: int, end_step: int, update_every: int | None = None) -> None:
  for name, v in (("begin_step", begin_step), ("end_step", end_step)):
    if not _is_int(v) or v < 0:
      raise ValueError(f"{name} must be a non-negative int, got {v!r} ({type(v).__name__})")
  if end_step < begin_step:
    raise ValueError(
        f"end_step must be >= begin_step, got end_step={end_step} < begin_step={begin_step}")
  if update_every is not None and (not _is_int(update_every) or update_every < 1):
    raise ValueError(f"update_every must be a positive int, got {update_every!r} "
                     f"({type(update_every).__name__})")


def polynomial_progress(
    begin_step: int, end_step: int, *, power: float = 3.0
) -> Callable[[ArrayLike], jnp.ndarray]:
  r"""The ramp :math:`1 - (1 - \mathrm{clip}((t - t_0)/(t_1 - t_0), 0, 1))^p`.

  0 before ``begin_step`` (:math:`t_0`), 1 from ``end_step`` (:math:`t_1`)
  on; a single jump at :math:`t_0` when :math:`t_0 = t_1`.
  """
  _check_steps(begin_step, end_step)
  _util.check_real("power", power, low=0.0, low_open=True, scalar=True, finite=True)
  span = max(end_step - begin_step, 1)

  def progress(step):
    t = jnp.asarray(step, jnp.float32)
    frac = jnp.clip((t - begin_step) / span, 0.0, 1.0)
    if end_step == begin_step:
      frac = jnp.where(t >= begin_step, 1.0, 0.0)
    return (1.0 - (1.0 - frac) ** power).astype(jnp.float32)

  return progress


def polynomial_sparsity(
    final_sparsity: ArrayLike,
    begin_step: int,
    end_step: int,
    *,
    initial_sparsity: ArrayLike = 0.0,
    power: float = 3.0,
) -> Callable[[ArrayLike], jnp.ndarray]:
  r"""Zhu & Gupta's gradual pruning schedule.

  .. math::

    s_t = s_f + (s_i - s_f)\left(1 - \frac{t - t_0}{t_1 - t_0}\right)^{p}

  for :math:`t_0 \le t \le t_1`; :math:`s_t = s_i` before :math:`t_0`
  (``begin_step``) and :math:`s_f` (``final_sparsity``) after :math:`t_1`
  (``end_step``). :math:`p` is ``power`` (3 in the paper).

  Args:
    final_sparsity: target fraction of zeros :math:`s_f`, in [0, 1).
    begin_step: first step of the ramp.
    end_step: step at which ``final_sparsity`` is reached.
    initial_sparsity: :math:`s_i`, in [0, 1).
    power: exponent of the ramp.

  Returns:
    ``schedule(step) -> float32 scalar``.

  References:
    Zhu & Gupta, *To prune, or not to prune*, 2017 (arXiv:1710.01878).
  """
  check_fraction("final_sparsity", final_sparsity)
  check_fraction("initial_sparsity", initial_sparsity)
  progress = polynomial_progress(begin_step, end_step, power=power)

  def schedule(step):
    s = initial_sparsity + (final_sparsity - initial_sparsity) * progress(step)
    return jnp.asarray(s, jnp.float32)

  return schedule


def is_update_step(step: ArrayLike, begin_step: int, end_step: int, update_every: int):
  """True on ``begin_step, begin_step + update_every, ...`` up to ``end_step``.

  ``end_step`` itself is always an update step, so the final target is
  reached even when ``end_step - begin_step`` is not a multiple of
  ``update_every``.
  """
  _check_steps(begin_step, end_step, update_every)
  step = jnp.asarray(step)
  in_range = (step >= begin_step) & (step <= end_step)
  on_grid = ((step - begin_step) % update_every == 0) | (step == end_step)
  return in_range & on_grid
