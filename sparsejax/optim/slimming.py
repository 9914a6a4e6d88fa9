r"""Network slimming as Optax transforms: proximal, penalised, and masked.

Network slimming (Liu et al., 2017) penalises the batch-norm scales
:math:`\gamma` so that whole channels become unimportant and can be removed.
This module has the three pieces sparsejax builds the recipes from:

* :func:`network_slimming` -- *proximal* network slimming (Bui et al., 2023):
  a sparse copy :math:`\xi` of the scales lives in the optimizer state and is
  soft-thresholded every step, so removable channels come out exactly zero in
  :math:`\xi` with no threshold to pick and no fine-tuning. Placed **last**.
* :func:`slimming_penalty` -- the classic subgradient penalty on
  :math:`\gamma` (ℓ1, ℓp, transformed ℓ1, MCP, SCAD; Bui et al., 2020-21),
  added to the gradient **before** the optimizer. Used by the three-stage
  pipeline in :mod:`sparsejax.pipelines` (train, prune by a global
  :math:`|\gamma|` threshold, fine-tune).
* :func:`channel_mask` -- holds chosen channels (their BN scale and shift) at
  exactly zero, placed **last**: the fine-tuning stage of that pipeline.

Helpers: :func:`removable_channels` (channels with :math:`\xi = 0`, per
layer), :func:`set_bn_scales` (the authors' :math:`\gamma = 0.5`
initialisation) and the trainer-registry builders
:func:`network_slimming_from_config`, :func:`slimming_penalty_from_config`
and :func:`channel_mask_from_config`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from sparsejax import prox as prox_lib
from sparsejax import tree as tree_lib
from sparsejax.optim._state import find_states
from sparsejax._util import check_real, zero_channels

__all__ = [
    "NetworkSlimmingState",
    "SlimmingPenaltyState",
    "ChannelMaskState",
    "PENALTIES",
    "network_slimming",
    "slimming_penalty",
    "penalty_derivative",
    "channel_mask",
    "removable_channels",
    "apply_sparse_scales",
    "set_bn_scales",
    "network_slimming_from_config",
    "slimming_penalty_from_config",
    "channel_mask_from_config",
]

PENALTIES = ("l1", "lp", "tl1", "mcp", "scad")

# Per-kind defaults of the shape parameters (Tℓ1 a = 1 as in the authors' code;
# MCP a = 3 and SCAD a = 3.7 as in Zhang 2010 and Fan & Li 2001; ℓp p = 1/2).
_DEFAULT_A = {"tl1": 1.0, "mcp": 3.0, "scad": 3.7}
_DEFAULT_P = 0.5
_DEFAULT_LAM = 1.0
_DEFAULT_EPS = 1e-8


class NetworkSlimmingState(NamedTuple):
  """State of :func:`network_slimming`."""
  count: jax.Array  # int32 scalar: number of updates seen.
  xi: Any  # pytree like params: the sparse copy ξ of each selected scale, None elsewhere.


class SlimmingPenaltyState(NamedTuple):
  """State of :func:`slimming_penalty`."""
  count: jax.Array  # int32 scalar: number of updates seen.


class ChannelMaskState(NamedTuple):
  """State of :func:`channel_mask`."""
  count: jax.Array  # int32 scalar: number of updates seen.
  masks: Any  # pytree like params: bool arrays (True = kept) or None.


# ---------------------------------------------------------------------------
# Argument checks (concrete values only; traced hyperparameters pass through).


def _check_filter(filter_fn) -> tree_lib.FilterFn:
  if filter_fn is None:
    return tree_lib.bn_scales
  if not callable(filter_fn):
    raise TypeError(f"filter_fn must be callable (path, leaf) -> bool or None, got {filter_fn!r}")
  return filter_fn


def _check_learning_rate(learning_rate) -> None:
  if callable(learning_rate):
    return
  check_real("learning_rate", learning_rate, low=0.0)


def _is_none(x) -> bool:
  return x is None


def _select_nonempty(params, filter_fn, transform: str):
  selected = tree_lib.select(params, filter_fn)
  tree_lib.check_selected(params, selected, transform,
                          "the batch-norm scales (default sparsejax.tree.bn_scales: 1-D "
                          "leaves named 'scale')")
  for (path, leaf), sel in zip(tree_lib.leaves_with_paths(params), jax.tree.leaves(selected)):
    if sel and not jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.floating):
      raise TypeError(f"{transform}: selected leaf '{path}' must be floating, got dtype "
                      f"{jnp.asarray(leaf).dtype}")
  return selected


# ---------------------------------------------------------------------------
# Proximal network slimming.


def network_slimming(
    learning_rate: optax.ScalarOrSchedule,
    s: ArrayLike,
    beta: ArrayLike,
    *,
    filter_fn: tree_lib.FilterFn | None = None,
    xi_init: tuple[float, float] | str = (0.47, 0.53),
    seed: int | jax.Array = 0,
) -> optax.GradientTransformation:
  r"""Proximal network slimming (Bui et al., 2023), placed **last** in a chain.

  Minimises :math:`\mathrm{CE}(W, \gamma) + s\|\xi\|_1 +
  \tfrac{\beta}{2}\|\gamma - \xi\|^2` by alternating proximal steps with
  proximal weight :math:`\alpha_t = 1/\eta_t`, where :math:`\eta_t` is the
  learning rate of step :math:`t`. The optimizer before this transform (SGD
  with momentum and weight decay in the paper) proposes
  :math:`\gamma^{+} = \gamma + u` for each selected scale; then, in the order
  of the authors' code,

  .. math::

    \gamma_{t+1} = \frac{\alpha_t\,\gamma^{+} + \beta\,\xi_t}{\alpha_t + \beta},
    \qquad
    \xi_{t+1} = S_{s/(\alpha_t+\beta)}\!\left(
      \frac{\alpha_t\,\xi_t + \beta\,\gamma_{t+1}}{\alpha_t + \beta}\right),

  with :math:`S_\tau(v) = \operatorname{sign}(v)\max(|v| - \tau, 0)`, :math:`s`
  = ``s``, :math:`\beta` = ``beta`` and :math:`\eta_t` = ``learning_rate``
  evaluated on this transform's own step count (so :math:`\alpha` grows 10x
  when a step schedule drops the learning rate 10x, as in the paper). The
  :math:`\xi` update uses the :math:`\gamma` just pulled. The transform
  returns :math:`u' = \gamma_{t+1} - \gamma_t` for the selected leaves, so
  ``optax.apply_updates`` lands on :math:`\gamma_{t+1}`; other leaves pass
  through unchanged. It is computed as
  :math:`\gamma_{t+1} = \gamma^{+} + w(\xi_t - \gamma^{+})` with
  :math:`w = \beta\eta_t/(1 + \beta\eta_t) = \beta/(\alpha_t + \beta)` and
  threshold :math:`s\eta_t/(1 + \beta\eta_t)`, which is the same map and stays
  finite at :math:`\eta_t = 0` (no pull, :math:`\xi` unchanged).

  :math:`\xi` is exactly sparse; :math:`\gamma` is only pulled toward it. The
  channels with :math:`\xi = 0` are the removable ones
  (:func:`removable_channels`). Unlike the authors' code, :math:`\xi` lives in
  the optimizer state, so it is checkpointed with the run and a resumed run
  continues with the same :math:`\xi` and :math:`\alpha`. It is kept in at
  least float32 whatever the scales' dtype (bf16 would round its small
  proximal steps away).

  Paper defaults (CIFAR-10, 160 epochs, batch 64, SGD lr 0.1 x0.1 at 50% and
  75%, momentum 0.9, weight decay 1e-4 on all parameters including
  :math:`\gamma`): VGG-19 ``s=0.0045, beta=100``; DenseNet-40 ``s=0.004,
  beta=100``; ResNet-164 ``s=0.002, beta=0.25``; :math:`\gamma_0 = 0.5`
  (:func:`set_bn_scales`) and :math:`\xi_0 \sim U(0.47, 0.53)`.

  Args:
    learning_rate: the optimizer's learning rate :math:`\eta_t`, a float or an
      ``optax`` schedule (use the same schedule as the optimizer). Must be
      ``>= 0``.
    s: sparsity strength :math:`s \ge 0` of the ℓ1 term on :math:`\xi`.
    beta: coupling :math:`\beta \ge 0` between :math:`\gamma` and :math:`\xi`.
    filter_fn: ``(path, leaf) -> bool`` choosing the scales; default
      :func:`sparsejax.tree.bn_scales` (1-D leaves named ``scale``).
    xi_init: ``(low, high)``: :math:`\xi_0` uniform in ``[low, high)``
      (default the authors' ``(0.47, 0.53)``), or ``"params"``:
      :math:`\xi_0 = \gamma_0`.
    seed: seed of the uniform draw (leaf ``i`` in tree order uses
      ``fold_in(key(seed), i)``).

  Returns:
    An ``optax.GradientTransformation`` whose state is a
    :class:`NetworkSlimmingState`. ``update`` requires ``params``.

  Raises:
    ValueError, TypeError: for a negative ``s``/``beta``/``learning_rate``, a
      bad ``xi_init`` or ``filter_fn``, or (at ``init``) a ``filter_fn`` that
      selects nothing.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> from sparsejax.optim.slimming import network_slimming
    >>> params = {"bn": {"scale": jnp.array([0.5, 0.002]), "bias": jnp.zeros(2)}}
    >>> tx = optax.chain(optax.sgd(0.1),
    ...                  network_slimming(0.1, s=0.5, beta=10.0, xi_init="params"))
    >>> state = tx.init(params)
    >>> grads = jax.tree.map(jnp.zeros_like, params)
    >>> updates, state = tx.update(grads, state, params)
    >>> state[1].xi["bn"]["scale"]  # threshold s/(alpha+beta) = 0.025
    Array([0.475, 0.   ], dtype=float32)

  References:
    Bui, Xue, Park, Qi, Xin, *A Proximal Algorithm for Network Slimming*,
    LOD 2023 (arXiv:2307.00684); code: kbui1993/Official-Proximal-Network-Slimming.
    Liu et al., *Learning Efficient Convolutional Networks through Network
    Slimming*, ICCV 2017.
  """
  _check_learning_rate(learning_rate)
  check_real("s", s, low=0.0)
  check_real("beta", beta, low=0.0)
  filter_fn = _check_filter(filter_fn)
  if isinstance(xi_init, str):
    if xi_init != "params":
      raise ValueError(f"xi_init must be (low, high) or 'params', got {xi_init!r}")
  else:
    if (not isinstance(xi_init, Sequence) or len(xi_init) != 2
        or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in xi_init)
        or not xi_init[0] <= xi_init[1]):
      raise ValueError(
          f"xi_init must be a pair (low, high) of floats with low <= high, or 'params', "
          f"got {xi_init!r}")
  if isinstance(seed, bool) or (isinstance(seed, float)):
    raise TypeError(f"seed must be an int, got {seed!r}")

  def init_fn(params):
    selected = _select_nonempty(params, filter_fn, "network_slimming")
    leaves, treedef = jax.tree.flatten(params)
    sel = treedef.flatten_up_to(selected)
    key = jax.random.key(seed)
    xi = []
    for i, (leaf, chosen) in enumerate(zip(leaves, sel)):
      if not chosen:
        xi.append(None)
      elif isinstance(xi_init, str):
        xi.append(jnp.asarray(leaf).astype(_xi_dtype(leaf)))
      else:
        xi.append(jax.random.uniform(jax.random.fold_in(key, i), jnp.shape(leaf),
                                     jnp.float32, xi_init[0], xi_init[1]
                                     ).astype(_xi_dtype(leaf)))
    return NetworkSlimmingState(count=jnp.zeros([], jnp.int32),
                                xi=jax.tree.unflatten(treedef, xi))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("network_slimming needs params: call update(updates, state, params)")
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
    treedef = jax.tree.structure(params)
    p_leaves = treedef.flatten_up_to(params)
    u_leaves = treedef.flatten_up_to(updates)
    xi_leaves = treedef.flatten_up_to(state.xi)
    # The step's arithmetic runs in xi's dtype (float32, or float64 for float64
    # scales under x64), and so do the coefficients.
    cdt = jnp.result_type(jnp.float32, *[xi for xi in xi_leaves if xi is not None])
    lr = jnp.asarray(lr, cdt)
    b = jnp.asarray(beta, cdt)
    denom = 1.0 + b * lr  # (alpha + beta) / alpha
    w = b * lr / denom  # beta / (alpha + beta)
    thr = jnp.asarray(s, cdt) * lr / denom  # s / (alpha + beta)
    new_u, new_xi = [], []
    for p, u, xi in zip(p_leaves, u_leaves, xi_leaves):
      if xi is None:
        new_u.append(u)
        new_xi.append(None)
        continue
      dtype = xi.dtype
      g_plus = p.astype(cdt) + u.astype(cdt)
      xf = xi.astype(cdt)
      g = g_plus + w * (xf - g_plus)  # (alpha g+ + beta xi) / (alpha + beta)
      v = xf + w * (g - xf)  # (alpha xi + beta g) / (alpha + beta)
      new_xi.append(prox_lib.l1(v, thr).astype(dtype))
      new_u.append((g - p.astype(cdt)).astype(u.dtype))
    return (jax.tree.unflatten(treedef, new_u),
            NetworkSlimmingState(count=optax.safe_int32_increment(state.count),
                                 xi=jax.tree.unflatten(treedef, new_xi)))

  return optax.GradientTransformation(init_fn, update_fn)


def _xi_dtype(leaf) -> jnp.dtype:
  """xi is kept in at least float32: with bf16 scales its small proximal steps
  (s / (alpha + beta)) would round away and no channel would reach 0."""
  return jnp.promote_types(jnp.asarray(leaf).dtype, jnp.float32)


def removable_channels(x: Any) -> dict[str, np.ndarray]:
  r"""Channels whose sparse copy :math:`\xi` is exactly zero, per layer.

  Host-side reporting helper (pulls :math:`\xi` to the host).

  Args:
    x: a :class:`NetworkSlimmingState`, an optimizer state holding exactly one
      (through ``optax.chain``, ``inject_hyperparams``, ``MultiSteps``, an
      ``nnx.Optimizer``'s ``opt_state`` or the trainer's ``TrainState``), or
      the :math:`\xi` pytree itself (``None`` for unselected leaves).

  Returns:
    ``{path: indices}`` for every selected scale, in tree order: ``indices`` a
    sorted int array of the channels with :math:`\xi = 0` (for a leaf of
    ``ndim > 1``, the indices along the last axis whose whole slice is zero).

  Raises:
    ValueError: if ``x`` holds more than one :class:`NetworkSlimmingState`.
  """
  xi = _xi_of(x)
  out = {}
  for path, leaf in tree_lib.leaves_with_paths(jax.device_get(xi)):
    a = np.asarray(leaf)
    if a.ndim == 0:
      raise ValueError(f"xi leaf at '{path}' is a scalar; expected per-channel arrays")
    out[path] = np.flatnonzero(zero_channels(a))
  return out


def apply_sparse_scales(params: Any, x: Any) -> Any:
  r"""``params`` with every BN scale whose sparse copy :math:`\xi` is 0 set to exactly 0.

  Proximal network slimming only pulls :math:`\gamma` towards :math:`\xi`, so
  the trained scales of the channels it removes are small but not zero. This
  gives the model the algorithm defines: those scales zeroed, every other
  entry (BN shifts included) unchanged. A channel whose shift is also
  non-positive then outputs exactly 0 after the ``relu`` and
  :func:`sparsejax.compact.compact` removes it; one with a positive shift is a
  constant channel and is kept. Jit-able (no host sync).

  Args:
    params: the trained parameters.
    x: a :class:`NetworkSlimmingState`, an optimizer state holding exactly one
      (as for :func:`removable_channels`), or the :math:`\xi` pytree itself.

  Returns:
    ``params`` with the selected scales replaced by ``where(xi == 0, 0, gamma)``.

  Raises:
    ValueError: ``x`` holds more than one :class:`NetworkSlimmingState`, or
      none and is not a :math:`\xi` pytree matching ``params``.
  """
  xi = _xi_of(x)
  try:
    return jax.tree.map(lambda p, z: p if z is None else jnp.where(z == 0, jnp.zeros_like(p), p),
                        params, xi, is_leaf=lambda v: v is None)
  except (ValueError, TypeError) as e:
    raise ValueError(f"x must hold a xi pytree with the structure of params; got {e}") from None


def _xi_of(x: Any) -> Any:
  if isinstance(x, NetworkSlimmingState):
    return x.xi
  found = find_states(x, NetworkSlimmingState)
  if len(found) > 1:
    raise ValueError(f"x holds {len(found)} NetworkSlimmingState instances; pass one of "
                     "them (see sparsejax.optim.find_states)")
  return found[0].xi if found else x


def set_bn_scales(params: Any, value: float = 0.5, *,
                  filter_fn: tree_lib.FilterFn | None = None) -> Any:
  r"""Sets every selected scale to ``value`` (the authors' :math:`\gamma_0 = 0.5`).

  Network slimming (Liu et al.) and both Bui et al. codes initialise every BN
  scale to 0.5; use this as the trainer's ``Algorithm.prepare_params``.

  Args:
    params: a parameter pytree.
    value: the new value of every selected entry.
    filter_fn: which leaves; default :func:`sparsejax.tree.bn_scales`.

  Returns:
    ``params`` with the selected leaves replaced by ``value`` (dtype kept).
  """
  check_real("value", value)
  filter_fn = _check_filter(filter_fn)
  return tree_lib.map_selected(lambda x: jnp.full(jnp.shape(x), value, jnp.asarray(x).dtype),
                               params, tree_lib.select(params, filter_fn),
                               none_for_unselected=False)


# ---------------------------------------------------------------------------
# Subgradient penalties (classic network slimming).


def penalty_derivative(kind: str, x: ArrayLike, *, p: ArrayLike = _DEFAULT_P,
                       a: ArrayLike | None = None, lam: ArrayLike = _DEFAULT_LAM,
                       eps: ArrayLike = _DEFAULT_EPS) -> jax.Array:
  r"""The (sub)gradient :math:`r'(x)` that :func:`slimming_penalty` adds (times ``s``).

  See :func:`slimming_penalty` for the formulas. At :math:`x = 0` every kind
  returns 0 (:math:`\operatorname{sign}(0) = 0`, the subgradient PyTorch's
  ``torch.sign`` gives in the authors' code).

  Args:
    kind: one of :data:`PENALTIES`.
    x: array of any floating dtype.
    p: ℓp exponent.
    a: Tℓ1 / MCP / SCAD shape parameter; ``None`` means the kind's default.
    lam: MCP / SCAD :math:`\lambda`.
    eps: ℓp smoothing :math:`\varepsilon`.

  Returns:
    An array like ``x``.
  """
  if kind not in PENALTIES:
    raise ValueError(f"kind must be one of {PENALTIES}, got {kind!r}")
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"x must have a floating dtype, got {x.dtype}")
  a = _DEFAULT_A.get(kind) if a is None else a
  _check_penalty_args(kind, p, a, lam, eps)
  ax, sg = jnp.abs(x), jnp.sign(x)
  if kind == "l1":
    d = sg
  elif kind == "lp":
    d = p * sg / (ax + eps) ** (1.0 - p)
  elif kind == "tl1":
    d = a * (a + 1.0) * sg / (a + ax) ** 2
  elif kind == "mcp":
    d = sg * jnp.maximum(lam - ax / a, 0.0)
  else:  # scad
    mid = jnp.maximum(a * lam - ax, 0.0) / (a - 1.0)
    d = sg * jnp.where(ax <= lam, lam, mid)
  return d.astype(x.dtype)


def _check_penalty_args(kind, p, a, lam, eps) -> None:
  """The ranges where each penalty's derivative is defined (concrete values only)."""
  if kind == "lp":
    check_real("p", p, low=0.0, high=1.0, low_open=True, high_open=True)
    check_real("eps", eps, low=0.0, low_open=True)
  if kind in ("tl1", "mcp"):
    check_real("a", a, low=0.0, low_open=True)
  if kind == "scad":
    check_real("a", a, low=2.0, low_open=True)
  if kind in ("mcp", "scad"):
    check_real("lam", lam, low=0.0, low_open=True)


def slimming_penalty(
    kind: str,
    s: ArrayLike,
    *,
    p: ArrayLike | None = None,
    a: ArrayLike | None = None,
    lam: ArrayLike | None = None,
    eps: ArrayLike | None = None,
    filter_fn: tree_lib.FilterFn | None = None,
) -> optax.GradientTransformation:
  r"""A sparsity penalty on the BN scales, placed **before** the optimizer.

  Adds :math:`s\,r'(\gamma)` to the gradient of every selected scale
  :math:`\gamma` (the authors' ``updateBN``-style subgradient step; with SGD
  after it this is subgradient descent on :math:`\mathrm{CE} + s\sum r(\gamma)`):

  .. math::

    u' = u + s\, r'(\gamma),

  with :math:`r'` per ``kind`` (:math:`\operatorname{sgn}` the sign, 0 at 0):

  * ``l1``: :math:`r = |\gamma|`, :math:`r' = \operatorname{sgn}\gamma`;
  * ``lp``: :math:`r = (|\gamma| + \varepsilon)^p`,
    :math:`r' = p\operatorname{sgn}\gamma\,/\,(|\gamma| + \varepsilon)^{1-p}`;
  * ``tl1`` (transformed ℓ1): :math:`r = (a+1)|\gamma|/(a+|\gamma|)`,
    :math:`r' = a(a+1)\operatorname{sgn}\gamma\,/\,(a+|\gamma|)^2`;
  * ``mcp``: :math:`r = \lambda|\gamma| - \gamma^2/(2a)` for
    :math:`|\gamma| \le a\lambda`, else :math:`a\lambda^2/2`;
    :math:`r' = \operatorname{sgn}\gamma\,\max(\lambda - |\gamma|/a, 0)`;
  * ``scad``: :math:`r = \lambda|\gamma|` for :math:`|\gamma| \le \lambda`,
    :math:`(2a\lambda|\gamma| - \gamma^2 - \lambda^2)/(2(a-1))` for
    :math:`\lambda < |\gamma| \le a\lambda`, else :math:`\lambda^2(a+1)/2`;
    :math:`r' = \lambda\operatorname{sgn}\gamma`,
    :math:`\operatorname{sgn}\gamma\,(a\lambda - |\gamma|)/(a-1)`, 0 on the
    three pieces.

  The :math:`\varepsilon` of ℓp keeps the term finite near 0 (the authors'
  code has none); it is our addition. Weight decay and momentum come from the
  optimizer after this transform.

  Args:
    kind: ``"l1"``, ``"lp"``, ``"tl1"``, ``"mcp"`` or ``"scad"``.
    s: penalty strength :math:`s \ge 0` (authors' default 1e-4).
    p: ℓp exponent in (0, 1), default 0.5 (the paper uses 1/2 and 3/4); only
      for ``"lp"``.
    a: shape parameter: Tℓ1 :math:`a > 0` (default 1), MCP :math:`a > 0`
      (default 3), SCAD :math:`a > 2` (default 3.7); only for those kinds.
    lam: MCP / SCAD :math:`\lambda > 0`, the :math:`|\gamma|` scale where the
      penalty flattens, default 1; only for those kinds.
    eps: ℓp smoothing :math:`\varepsilon > 0`, default 1e-8; only for ``"lp"``.
    filter_fn: ``(path, leaf) -> bool`` choosing the scales; default
      :func:`sparsejax.tree.bn_scales`.

  Returns:
    An ``optax.GradientTransformation`` whose state is a
    :class:`SlimmingPenaltyState`. ``update`` requires ``params``.

  Raises:
    ValueError, TypeError: for an unknown ``kind``, a parameter out of range
      or given for a kind that does not use it, or a bad ``filter_fn``.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> from sparsejax.optim.slimming import slimming_penalty
    >>> params = {"bn": {"scale": jnp.array([0.5, -0.25, 0.0])}}
    >>> tx = slimming_penalty("tl1", 0.1, a=1.0)
    >>> u, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    >>> u["bn"]["scale"]  # 0.1 * 2 * sign / (1 + |g|)^2
    Array([ 0.08888889, -0.128     ,  0.        ], dtype=float32)

  References:
    Bui, Park, Zhang, Qi, Xin, *Nonconvex regularization for network
    slimming: compressing CNNs even more*, ISVC 2020, and *Improving network
    slimming with nonconvex regularization*, IEEE Access 2021; code:
    kbui1993/NonconvexNetworkSlimming. Liu et al., ICCV 2017 (ℓ1). Zhang,
    *Nearly unbiased variable selection under minimax concave penalty*, 2010
    (MCP). Fan & Li, 2001 (SCAD).
  """
  if not isinstance(kind, str) or kind not in PENALTIES:
    raise ValueError(f"kind must be one of {PENALTIES}, got {kind!r}")
  check_real("s", s, low=0.0)
  filter_fn = _check_filter(filter_fn)
  uses = {"p": kind == "lp", "eps": kind == "lp", "a": kind in _DEFAULT_A,
          "lam": kind in ("mcp", "scad")}
  given = {"p": p, "a": a, "lam": lam, "eps": eps}
  for name, value in given.items():
    if value is not None and not uses[name]:
      users = {"p": "'lp'", "eps": "'lp'", "a": "'tl1', 'mcp' and 'scad'",
               "lam": "'mcp' and 'scad'"}[name]
      raise ValueError(f"{name}={value!r} does not apply to kind={kind!r}; only "
                       f"{users} take {name}")
  p = _DEFAULT_P if p is None else p
  a = _DEFAULT_A.get(kind) if a is None else a
  lam = _DEFAULT_LAM if lam is None else lam
  eps = _DEFAULT_EPS if eps is None else eps
  _check_penalty_args(kind, p, a, lam, eps)

  def init_fn(params):
    _select_nonempty(params, filter_fn, "slimming_penalty")
    return SlimmingPenaltyState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("slimming_penalty needs params: call update(updates, state, params)")
    selected = tree_lib.select(params, filter_fn)

    def add(sel, u, g):
      if not sel:
        return u
      cdt = jnp.result_type(jnp.float32, g, u)  # float64 params stay float64
      d = penalty_derivative(kind, g.astype(cdt), p=p, a=a, lam=lam, eps=eps)
      return (u.astype(cdt) + jnp.asarray(s, cdt) * d).astype(u.dtype)

    new = jax.tree.map(add, selected, updates, params)
    return new, SlimmingPenaltyState(count=optax.safe_int32_increment(state.count))

  return optax.GradientTransformation(init_fn, update_fn)


# ---------------------------------------------------------------------------
# Holding pruned channels at zero (the fine-tuning stage).


def _sibling(path: str, name: str) -> str:
  head, _, _ = path.rpartition("/")
  return f"{head}/{name}" if head else name


def channel_mask(pruned: Mapping[str, Sequence[int]], *,
                 include_bias: bool = True) -> optax.GradientTransformation:
  r"""Holds chosen channels at exactly zero, placed **last** in a chain.

  For each entry ``path -> indices`` of ``pruned`` (``path`` the key path of a
  BN scale, e.g. ``"features/3/bn/scale"``), the masks :math:`M` are False at
  those indices of that leaf and, with ``include_bias``, of its sibling
  ``bias`` (the BN shift). Every step returns

  .. math::

    u' = M \odot u - (1 - M) \odot p,

  so ``optax.apply_updates(params, u')`` keeps the other entries on the
  optimizer's proposal and puts the masked ones at exactly 0. With both
  :math:`\gamma` and the shift at zero the channel's output after batch norm
  is exactly zero, which is what removing it from the network does; this is
  the fine-tuning stage of classic network slimming (Liu et al. 2017,
  Bui et al. 2020-21) without rebuilding the model.

  Args:
    pruned: mapping from a leaf path to the channel indices (along its last
      axis) to hold at zero. Paths are checked against ``params`` at ``init``.
    include_bias: also mask the sibling leaf named ``bias`` when present.

  Returns:
    An ``optax.GradientTransformation`` with state :class:`ChannelMaskState`.
    ``update`` requires ``params``.

  Raises:
    ValueError, TypeError: for a malformed ``pruned``; at ``init``, for a path
      not in ``params`` or an index out of range.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> from sparsejax.optim.slimming import channel_mask
    >>> params = {"bn": {"scale": jnp.ones(3), "bias": jnp.ones(3)}}
    >>> tx = optax.chain(optax.sgd(0.1), channel_mask({"bn/scale": [1]}))
    >>> u, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    >>> optax.apply_updates(params, u)["bn"]["scale"]
    Array([0.9, 0. , 0.9], dtype=float32)

  References:
    Liu et al., *Learning Efficient Convolutional Networks through Network
    Slimming*, ICCV 2017.
  """
  if not isinstance(pruned, Mapping):
    raise TypeError(f"pruned must be a mapping from leaf path to channel indices, got "
                    f"{type(pruned).__name__}")
  clean: dict[str, tuple[int, ...]] = {}
  for path, idx in pruned.items():
    if not isinstance(path, str):
      raise TypeError(f"pruned keys must be leaf paths (str), got {path!r}")
    if isinstance(idx, (str, bytes)) or not isinstance(idx, (Sequence, np.ndarray)):
      raise TypeError(f"pruned[{path!r}] must be a sequence of channel indices, got {idx!r}")
    vals = []
    for i in idx:
      if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
        raise TypeError(f"pruned[{path!r}] must hold ints, got {i!r}")
      vals.append(int(i))
    clean[path] = tuple(sorted(set(vals)))
  if not isinstance(include_bias, bool):
    raise TypeError(f"include_bias must be a bool, got {include_bias!r}")

  def init_fn(params):
    leaves = tree_lib.leaves_with_paths(params)
    shapes = {path: tuple(np.shape(leaf)) for path, leaf in leaves}
    targets: dict[str, tuple[int, ...]] = {}
    for path, idx in clean.items():
      if path not in shapes:
        raise ValueError(f"pruned path {path!r} is not a parameter; paths are "
                         f"{list(shapes)[:12]}{' ...' if len(shapes) > 12 else ''}")
      n = shapes[path][-1] if shapes[path] else 0
      bad = [i for i in idx if not 0 <= i < n]
      if bad:
        raise ValueError(f"pruned[{path!r}] has channel indices {bad} outside [0, {n})")
      targets[path] = idx
      bias = _sibling(path, "bias")
      if include_bias and bias in shapes and shapes[bias][-1:] == (n,) and bias not in clean:
        targets[bias] = idx

    def build(path_keys, leaf):
      path = tree_lib.path_str(path_keys)
      if path not in targets:
        return None
      keep = np.ones(np.shape(leaf)[-1], bool)
      keep[list(targets[path])] = False
      return jnp.broadcast_to(jnp.asarray(keep), np.shape(leaf))

    masks = jax.tree_util.tree_map_with_path(build, params)
    return ChannelMaskState(count=jnp.zeros([], jnp.int32), masks=masks)

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("channel_mask needs params: call update(updates, state, params)")
    new = jax.tree.map(
        lambda m, p, u: u if m is None else jnp.where(m, u, -p).astype(u.dtype),
        state.masks, params, updates, is_leaf=_is_none)
    return new, ChannelMaskState(count=optax.safe_int32_increment(state.count),
                                 masks=state.masks)

  return optax.GradientTransformation(init_fn, update_fn)


# ---------------------------------------------------------------------------
# Builders for the trainer's algorithm registry (sparsejax.train.ALGORITHMS).


def _bn_filter_from_config(cfg) -> tree_lib.FilterFn:
  pattern = cfg.get("filter_regex", "") or ""
  if pattern:
    return tree_lib.all_of(tree_lib.bn_scales, tree_lib.regex(pattern))
  return tree_lib.bn_scales


def _prepare_from_config(cfg):
  """Every BN scale (selected or not) to ``cfg.init_bn_scale``, as the authors do."""
  init = cfg.get("init_bn_scale", 0.5)
  if init is None:
    return None
  check_real("config.algorithm.init_bn_scale", init)
  return lambda params: set_bn_scales(params, float(init))


def _channel_report(per_layer: Mapping[str, np.ndarray], sizes: Mapping[str, int],
                    key: str) -> dict:
  layers = {path: {key: int(len(idx)), "channels": int(sizes[path]),
                   "indices": [int(i) for i in idx]} for path, idx in per_layer.items()}
  removed = sum(l[key] for l in layers.values())
  total = sum(l["channels"] for l in layers.values())
  return {"layers": layers, key: removed, "channels": total,
          "fraction": removed / max(total, 1)}


def network_slimming_from_config(cfg, ctx):
  """Trainer builder: ``config.algorithm`` with ``name="network_slimming"``.

  Fields of ``cfg``: ``s``, ``beta``, ``xi_init`` (``"uniform"``, default, or
  ``"params"``), ``xi_low``/``xi_high`` (0.47/0.53), ``seed`` (0),
  ``init_bn_scale`` (0.5, given to every BN scale; ``None`` keeps the model's
  initialisation) and ``filter_regex`` (a regex ANDed with
  :func:`sparsejax.tree.bn_scales`: the scales that get a ξ). The
  proximal weight follows ``ctx["lr_schedule"]``. The report gains
  ``removable_channels`` (channels with :math:`\\xi = 0` per layer) and, through
  ``eval_params`` = :func:`apply_sparse_scales`, the accuracy of the model with
  those scales zeroed (``sparse_test_accuracy``), which is also the model a
  run with ``config.compact`` compacts.
  """
  from sparsejax import train  # pylint: disable=import-outside-toplevel
  filter_fn = _bn_filter_from_config(cfg)
  mode = cfg.get("xi_init", "uniform")
  if mode not in ("uniform", "params"):
    raise ValueError(f"config.algorithm.xi_init must be 'uniform' or 'params', got {mode!r}")
  xi_init = "params" if mode == "params" else (float(cfg.get("xi_low", 0.47)),
                                               float(cfg.get("xi_high", 0.53)))
  tx = network_slimming(ctx["lr_schedule"], float(cfg.s), float(cfg.beta),
                        filter_fn=filter_fn, xi_init=xi_init, seed=int(cfg.get("seed", 0)))

  def report(params, opt_state):
    per_layer = removable_channels(opt_state)
    sizes = {path: np.shape(leaf)[-1] for path, leaf in tree_lib.leaves_with_paths(params)}
    return {"removable_channels": _channel_report(per_layer, sizes, "removable")}

  return train.Algorithm(after=(tx,), prepare_params=_prepare_from_config(cfg),
                         report=report, eval_params=apply_sparse_scales)


def slimming_penalty_from_config(cfg, ctx):
  """Trainer builder: ``config.algorithm`` with ``name="slimming_penalty"``.

  Fields of ``cfg``: ``kind``, ``s``, and where the kind takes them ``p``,
  ``a``, ``lam``, ``eps`` (absent or ``None``: the defaults of
  :func:`slimming_penalty`), ``init_bn_scale`` (0.5; ``None`` keeps the
  model's initialisation) and ``filter_regex``.
  """
  del ctx
  from sparsejax import train  # pylint: disable=import-outside-toplevel
  filter_fn = _bn_filter_from_config(cfg)
  extra = {k: float(cfg[k]) for k in ("p", "a", "lam", "eps") if cfg.get(k) is not None}
  tx = slimming_penalty(cfg.kind, float(cfg.s), filter_fn=filter_fn, **extra)
  return train.Algorithm(before=(tx,), prepare_params=_prepare_from_config(cfg))


def channel_mask_from_config(cfg, ctx):
  """Trainer builder: ``config.algorithm`` with ``name="channel_mask"``.

  ``cfg.pruned`` is a list of ``(path, [indices])`` pairs (or a mapping) of BN
  scales whose channels are held at zero together with their shift (the
  fine-tuning stage written by :func:`sparsejax.pipelines.slimming_pipeline`).
  The report gains ``held_zero_channels``.
  """
  del ctx
  from sparsejax import train  # pylint: disable=import-outside-toplevel
  pruned = cfg.get("pruned", ())
  if hasattr(pruned, "to_dict"):
    pruned = pruned.to_dict()
  if not isinstance(pruned, Mapping):
    pruned = {str(path): [int(i) for i in idx] for path, idx in pruned}
  tx = channel_mask(pruned, include_bias=bool(cfg.get("include_bias", True)))

  def report(params, opt_state):
    del opt_state
    shapes = {path: np.shape(leaf)[-1] for path, leaf in tree_lib.leaves_with_paths(params)}
    per_layer = {path: np.asarray(sorted(set(int(i) for i in idx))) for path, idx in pruned.items()}
    return {"held_zero_channels": _channel_report(per_layer, shapes, "zero")}

  return train.Algorithm(after=(tx,), report=report)
