"""Gradual magnitude pruning as an Optax gradient transformation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from sparsejax import masks as masks_lib
from sparsejax import schedules
from sparsejax import tree as tree_lib

__all__ = ["MagnitudePruningState", "magnitude_pruning"]

_DISTRIBUTIONS = ("uniform", "erk", "global")


class MagnitudePruningState(NamedTuple):
  """State of :func:`magnitude_pruning`."""
  count: jax.Array  # int32 scalar: number of updates seen.
  masks: Any  # pytree like params: bool arrays (True = kept) or None.


def _is_none(x):
  return x is None


def magnitude_pruning(
    target_sparsity: ArrayLike,
    *,
    begin_step: int,
    end_step: int,
    update_every: int,
    distribution: str | Mapping[str, float] = "uniform",
    filter_fn: tree_lib.FilterFn | None = None,
    initial_sparsity: float = 0.0,
) -> optax.GradientTransformation:
  r"""Gradual magnitude pruning (Zhu & Gupta), placed **last** in a chain.

  At step :math:`t` the target sparsity is the cubic ramp

  .. math::

    s_t = s_f + (s_i - s_f)\left(1 - \frac{t - t_0}{t_1 - t_0}\right)^3,
    \qquad t_0 \le t \le t_1,

  with :math:`s_f` = ``target_sparsity``, :math:`s_i` = ``initial_sparsity``,
  :math:`t_0` = ``begin_step`` and :math:`t_1` = ``end_step``. On the steps
  :math:`t_0, t_0 + \Delta, \dots, t_1` (:math:`\Delta` = ``update_every``) the
  masks :math:`M` are recomputed by magnitude on the proposed point
  :math:`M \odot (p + u)`; on every step the transform returns

  .. math::

    u' = M \odot (p + u) - p,

  so that ``optax.apply_updates(params, u')`` is the masked point: pruned
  weights are exactly zero with no extra call. Because the score of an
  already-pruned weight is 0, pruning is monotone while :math:`s_t` grows.
  Leaves not selected by ``filter_fn`` pass through unchanged.

  The step count is the transform's own (the number of ``update`` calls), so
  under ``optax.MultiSteps`` it counts optimizer steps, not micro-batches.

  Args:
    target_sparsity: final fraction of zeros :math:`s_f` in [0, 1). For the
      ``"uniform"`` and ``"global"`` distributions it may be an array (e.g.
      injected with ``optax.inject_hyperparams``).
    begin_step: step of the first mask update.
    end_step: step at which ``target_sparsity`` is reached.
    update_every: steps between mask updates.
    distribution: ``"uniform"`` (every selected leaf at :math:`s_t`),
      ``"erk"`` (Erdős–Rényi-Kernel per-layer targets), ``"global"`` (one
      magnitude threshold over all selected leaves) or a mapping from path
      regex to per-leaf final sparsity. For ERK and mappings each leaf's
      target is ramped by the same cubic schedule.
    filter_fn: ``(path, leaf) -> bool`` choosing the pruned leaves; default
      :func:`sparsejax.tree.kernels` (conv and dense kernels).
    initial_sparsity: :math:`s_i`.

  Returns:
    An ``optax.GradientTransformation`` whose state is a
    :class:`MagnitudePruningState`. ``update`` requires ``params``.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> from sparsejax.optim import magnitude_pruning
    >>> params = {"dense": {"kernel": jnp.arange(1.0, 9.0).reshape(2, 4)}}
    >>> tx = optax.chain(optax.sgd(0.0),
    ...                  magnitude_pruning(0.5, begin_step=0, end_step=0,
    ...                                    update_every=1))
    >>> state = tx.init(params)
    >>> updates, state = tx.update(params, state, params)
    >>> optax.apply_updates(params, updates)["dense"]["kernel"]
    Array([[0., 0., 0., 0.],
           [5., 6., 7., 8.]], dtype=float32)

  References:
    Zhu & Gupta, *To prune, or not to prune: exploring the efficacy of
    pruning for model compression*, 2017 (arXiv:1710.01878).
  """
  schedules.check_fraction("target_sparsity", target_sparsity)
  schedules.check_fraction("initial_sparsity", initial_sparsity)
  schedules._check_steps(begin_step, end_step, update_every)  # pylint: disable=protected-access
  if isinstance(distribution, str) and distribution not in _DISTRIBUTIONS:
    raise ValueError(
        f"distribution must be one of {_DISTRIBUTIONS} or a mapping from path "
        f"regex to sparsity, got {distribution!r}")
  if not isinstance(distribution, (str, Mapping)):
    raise TypeError(f"distribution must be a str or a mapping, got {distribution!r}")
  progress_at = schedules.polynomial_progress(begin_step, end_step)
  filter_fn = tree_lib.kernels if filter_fn is None else filter_fn

  def ramp(final, progress):
    return initial_sparsity + (final - initial_sparsity) * progress

  def init_fn(params):
    selected = tree_lib.select(params, filter_fn)
    masks = tree_lib.map_selected(lambda p: jnp.ones(p.shape, jnp.bool_), params, selected)
    return MagnitudePruningState(count=jnp.zeros([], jnp.int32), masks=masks)

  def compute_masks(params, step):
    progress = progress_at(step)
    s_t = ramp(target_sparsity, progress)
    if isinstance(distribution, str) and distribution == "global":
      return masks_lib.magnitude(params, s_t, distribution="global", filter_fn=filter_fn)
    if isinstance(distribution, str) and distribution == "uniform":
      per_leaf = jax.tree.map(
          lambda sel: s_t if sel else None, tree_lib.select(params, filter_fn))
    else:
      finals = masks_lib.leaf_sparsities(
          params, target_sparsity, distribution=distribution, filter_fn=filter_fn)
      per_leaf = jax.tree.map(
          lambda f: None if f is None else ramp(f, progress),
          finals, is_leaf=_is_none)
    return masks_lib.magnitude_per_leaf(params, per_leaf)

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("magnitude_pruning needs params: call update(updates, state, params)")
    step = state.count

    def recompute():
      # Score the proposed point with the current mask applied (pruned stay at 0).
      proposed = jax.tree.map(
          lambda m, p, u: p if m is None else jnp.where(m, p + u, 0), state.masks, params,
          updates, is_leaf=_is_none)
      return compute_masks(proposed, step)

    new_masks = jax.lax.cond(
        schedules.is_update_step(step, begin_step, end_step, update_every),
        recompute, lambda: state.masks)
    new_updates = jax.tree.map(
        lambda m, p, u: u if m is None else jnp.where(m, u, -p).astype(u.dtype),
        new_masks, params, updates, is_leaf=_is_none)
    return new_updates, MagnitudePruningState(
        count=optax.safe_int32_increment(step), masks=new_masks)

  return optax.GradientTransformation(init_fn, update_fn)
