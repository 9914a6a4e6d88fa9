"""A generic proximal-gradient step as an Optax gradient transformation."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from sparsejax import tree as tree_lib
from sparsejax._util import check_real, zero_channels

__all__ = ["ProximalState", "proximal", "proximal_from_config"]

ProxFn = Callable[[jax.Array, jax.Array], jax.Array]


class ProximalState(NamedTuple):
  """State of :func:`proximal`."""
  count: jax.Array  # int32 scalar: number of updates seen.


def proximal(
    prox_fn: ProxFn,
    strength: ArrayLike,
    learning_rate: optax.ScalarOrSchedule,
    filter_fn: tree_lib.FilterFn | None = None,
) -> optax.GradientTransformation:
  r"""Proximal-gradient step, placed **last** in a chain.

  For every selected parameter :math:`p` and incoming update :math:`u` (the
  optimizer's step, e.g. :math:`-\eta_t g` for SGD), the transform returns

  .. math::

    u' = \operatorname{prox}_{\eta_t \lambda r}(p + u) - p,

  so that ``optax.apply_updates(params, u')`` lands exactly on the proximal
  point. :math:`\operatorname{prox}_{\eta_t\lambda r}` is
  ``prox_fn(p + u, eta_t * strength)``, :math:`\lambda` = ``strength`` and
  :math:`\eta_t` = ``learning_rate`` evaluated on the transform's own step
  count :math:`t` (the number of ``update`` calls, starting at 0). Chained after
  ``optax.sgd(learning_rate)`` with the same ``learning_rate`` this is the
  proximal-gradient (ISTA) iteration

  .. math::

    p_{t+1} = \operatorname{prox}_{\eta_t\lambda r}\bigl(p_t - \eta_t\nabla
    f(p_t)\bigr)

  for :math:`\min_p f(p) + \lambda r(p)`; after an adaptive optimizer (Adam)
  it is the usual proximal heuristic with the base learning rate as the prox
  step. Leaves not selected by ``filter_fn`` pass through unchanged.

  Any map of :mod:`sparsejax.prox` plugs in as ``prox_fn(x, lam)``; pass extra
  arguments with :func:`functools.partial` or a lambda:

  * ``prox.l1``, ``prox.l0``, ``prox.lhalf`` as they are;
  * ``functools.partial(prox.tl1, a=0.5)`` (transformed ℓ1 with its ``a``);
  * ``functools.partial(prox.group_l2, axis=0)`` (groups along axis 0; the
    default ``axis=-1`` makes each output channel of an HWIO conv or
    ``(in, out)`` dense kernel a group);
  * ``lambda x, t: prox.sparse_group(x, t, 2.0 * t, kind="l0")`` (both the
    elementwise and the group weight scaled by the step size).

  Under ``optax.MultiSteps`` the count is the number of optimizer steps, not
  of micro-batches. ``strength`` may be injected with
  ``optax.inject_hyperparams`` (put ``prox_fn`` and ``filter_fn`` in
  ``static_args``, since callables are otherwise taken for schedules).

  Args:
    prox_fn: ``prox_fn(x, lam) -> array`` of the shape and dtype of ``x``,
      the proximal map of :math:`\mathrm{lam}\cdot r`.
    strength: :math:`\lambda \ge 0`, a scalar (or array that ``prox_fn``
      accepts as ``lam``).
    learning_rate: the step size :math:`\eta_t`, a non-negative scalar or an
      ``optax`` schedule ``step -> value`` (the optimizer's own schedule).
    filter_fn: ``(path, leaf) -> bool`` choosing the leaves the prox acts on;
      default :func:`sparsejax.tree.kernels` (conv and dense kernels).

  Returns:
    An ``optax.GradientTransformation`` whose state is a
    :class:`ProximalState`. ``update`` requires ``params``.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> from sparsejax import prox
    >>> from sparsejax.optim import proximal
    >>> params = {"dense": {"kernel": jnp.array([[0.5, -2.0], [1.25, 0.125]])}}
    >>> tx = optax.chain(optax.sgd(0.5), proximal(prox.l1, 0.5, 0.5))
    >>> zero_grads = jax.tree.map(jnp.zeros_like, params)
    >>> updates, _ = tx.update(zero_grads, tx.init(params), params)
    >>> optax.apply_updates(params, updates)["dense"]["kernel"]
    Array([[ 0.25, -1.75],
           [ 1.  ,  0.  ]], dtype=float32)

  References:
    Parikh & Boyd, *Proximal Algorithms*, Foundations and Trends in
    Optimization 1(3), 2014 (the proximal-gradient method, §4.2).
  """
  if not callable(prox_fn):
    raise TypeError(f"prox_fn must be callable as prox_fn(x, lam), got {prox_fn!r}")
  check_real("strength", strength, low=0.0)
  if not callable(learning_rate):
    check_real("learning_rate", learning_rate, low=0.0)
  if filter_fn is not None and not callable(filter_fn):
    raise TypeError(f"filter_fn must be callable (path, leaf) -> bool or None, got {filter_fn!r}")
  filter_fn = tree_lib.kernels if filter_fn is None else filter_fn

  def init_fn(params):
    tree_lib.check_selected(params, tree_lib.select(params, filter_fn), "proximal")
    return ProximalState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("proximal needs params: call update(updates, state, params)")
    step = state.count
    eta = learning_rate(step) if callable(learning_rate) else learning_rate
    lam = jnp.asarray(eta) * jnp.asarray(strength)
    selected = tree_lib.select(params, filter_fn)

    def leaf(sel, u, p):
      if not sel:
        return u
      # lam in at least float32: eta * strength (e.g. 1e-8) would round to 0 in float16.
      target = prox_fn(p + u, lam.astype(jnp.promote_types(p.dtype, jnp.float32)))
      return (target - p).astype(u.dtype)

    new_updates = jax.tree.map(leaf, selected, updates, params)
    return new_updates, ProximalState(count=optax.safe_int32_increment(step))

  return optax.GradientTransformation(init_fn, update_fn)


# ----------------------------------------------------------------------------
# Trainer registry builder
# ----------------------------------------------------------------------------

_PROX_NAMES = ("l1", "l0", "lhalf", "tl1", "group_l2")


def _prox_from_name(name: str, *, a: float, axis: int) -> ProxFn:
  import functools  # pylint: disable=import-outside-toplevel
  from sparsejax import prox  # pylint: disable=import-outside-toplevel
  if name not in _PROX_NAMES:
    raise ValueError(f"config.algorithm.prox must be one of {_PROX_NAMES}, got {name!r}")
  if name == "tl1":
    check_real("config.algorithm.a", a, low=0.0, low_open=True)
    return functools.partial(prox.tl1, a=a)
  if name == "group_l2":
    return functools.partial(prox.group_l2, axis=axis)
  return getattr(prox, name)


def proximal_from_config(cfg, ctx):
  """Builds ``proximal`` for the trainer (``config.algorithm.name = "proximal"``).

  ``cfg`` fields: ``prox`` (one of ``l1, l0, lhalf, tl1, group_l2``),
  ``strength`` (λ), ``a`` (Tℓ1 parameter, default 1.0), ``axis`` (group axis of
  ``group_l2``, default -1: output channels), ``filter_regex`` (restricts the
  conv/dense kernels acted on; empty = all). The step size is the run's
  learning-rate schedule (``ctx["lr_schedule"]``); the transform goes after the
  optimizer.

  Returns:
    ``train.Algorithm(after=(proximal(...),), report=...)``; the report adds
    ``"proximal": {"prox", "strength", "sparsity", "zero_channels",
    "channels"}`` counted on the selected leaves (channels: last axis).
  """
  from sparsejax import train  # pylint: disable=import-outside-toplevel
  name = cfg.get("prox", "l1")
  strength = float(cfg.strength)
  prox_fn = _prox_from_name(name, a=float(cfg.get("a", 1.0)), axis=int(cfg.get("axis", -1)))
  filter_fn = _filter_from_regex(cfg.get("filter_regex", ""))
  tx = proximal(prox_fn, strength, ctx["lr_schedule"], filter_fn=filter_fn)

  def report(params, opt_state):
    del opt_state
    zeros = total = zero_ch = channels = 0
    for path, leaf in tree_lib.leaves_with_paths(params):
      if not (filter_fn or tree_lib.kernels)(path, leaf):
        continue
      a = np.asarray(jax.device_get(leaf))
      zeros += int(a.size - np.count_nonzero(a))
      total += int(a.size)
      if a.ndim:
        zero_ch += int(np.sum(zero_channels(a)))
        channels += int(a.shape[-1])
    return {"proximal": {"prox": name, "strength": strength,
                         "sparsity": zeros / max(total, 1),
                         "zero_channels": zero_ch, "channels": channels}}

  return train.Algorithm(after=(tx,), report=report)


def _filter_from_regex(pattern) -> tree_lib.FilterFn | None:
  if pattern:
    return tree_lib.all_of(tree_lib.kernels, tree_lib.regex(pattern))
  return None
