r"""Trained rank pruning (TRP) as Optax transforms.

TRP (Xu et al., IJCAI 2020) keeps the conv kernels of a network low-rank
*during* training: every ``period`` iterations each selected kernel is replaced
by its best rank-:math:`r` approximation, :math:`r` the smallest rank keeping a
fraction ``energy`` of :math:`\sum_i\sigma_i^2`, and on the same iterations
the nuclear-norm subgradient :math:`\lambda_*U_rV_r^\top` is added to the
gradient. At the end the kernels are factored into two thin layers
(:func:`sparsejax.lowrank.decompose`).

The kernel is seen as a matrix in one of two ways (HWIO kernels
``(kh, kw, C, N)``; the matrices are exactly the authors' PyTorch reshapes of
the ``(N, C, kh, kw)`` weight):

* ``"channel"`` -- rows are the output filters: ``(N, C·kh·kw)``, columns
  ordered ``(c, h, w)``. A rank-:math:`r` kernel is a ``kh×kw`` conv with
  :math:`r` filters followed by a ``1×1`` conv.
* ``"spatial"`` -- ``(C·kh, N·kw)``, rows ``(c, h)``, columns ``(n, w)``.
  A rank-:math:`r` kernel is a ``kh×1`` conv with :math:`r` filters followed
  by a ``1×kw`` conv.

Dense kernels ``(in, out)`` (optional, ``include_dense=True``) are the matrix
``(out, in)`` in both schemes.

The pieces, and where each sits in an ``optax.chain``:

* :func:`add_nuclear_subgradient` -- **before** the optimizer: adds
  :math:`\lambda_*\,\partial\|W\|_*` (the minimal-norm subgradient
  :math:`U_kV_k^\top` over the nonzero singular values) on steps
  ``t % period == 0``;
* :func:`trained_rank_pruning` -- **last**: on steps ``(t + 1) % period == 0``
  it lands the parameters on the rank-:math:`r` truncation of the proposed
  point, so the *next* forward pass uses the low-rank kernels; given
  ``optimizer=``, it is the whole method (= :func:`trp_chain`);
* :func:`trp_chain` -- ``chain(add_nuclear_subgradient, optimizer,
  trained_rank_pruning)``: the whole method around any optimizer;
* :func:`low_rank_params` -- the truncation as a pure function on a params
  tree (by energy or by a singular-value cut): the initial truncation, the
  model the final decomposition produces;
* :func:`trained_rank_pruning_from_config` -- the trainer-registry builder.

**How this ordering relates to the paper's.** The paper, at a period
iteration :math:`k`, truncates :math:`\tilde W_k = T(W_k)` *before* the
forward pass, then steps from :math:`\tilde W_k` with the gradient
:math:`\nabla L(\tilde W_k) + \lambda_* U_rV_r^\top` (plus weight decay and
momentum inside SGD), where :math:`U_rV_r^\top` comes from the SVD of
:math:`W_k` and is the minimal-norm subgradient of
:math:`\|\cdot\|_*` at the rank-:math:`r` point :math:`\tilde W_k`. Here the
truncation of the proposed point :math:`W_k = p_{k-1} + u_{k-1}` happens at
the *end* of step :math:`k-1` (the last transform lands the parameters on
:math:`T(W_k)`), so step :math:`k` starts from :math:`p_k = \tilde W_k`:
the same forward pass, and :func:`add_nuclear_subgradient` computes
:math:`U_kV_k^\top` of :math:`p_k` itself, whose numerical rank is
:math:`r` and whose top singular vectors are those of :math:`W_k` -- the
paper's term. The iterations are therefore the same, with two details:

1. the paper also truncates before the very first forward pass; do the same
   by truncating the initial parameters with :func:`low_rank_params` (the
   trainer builder does; a bare chain does not, and its first step uses the
   full-rank initial kernels);
2. the numerical rank of :math:`p_k` counts singular values above
   ``rtol · σ_max`` (default :math:`\sqrt{\epsilon}` of the dtype for
   float32/64, :math:`4\epsilon` for bfloat16/float16); the rounding of
   ``p + (T(W) - p)`` leaves tail values near :math:`\epsilon\,\sigma_{\max}`,
   below it.

The price of keeping the two halves separate Optax transforms (so that any
optimizer, weight decay and ``MultiSteps`` go in between) is two SVDs per
period step (one of :math:`p_k`, one of the proposed point); ``period > 1``
amortises both. The SVDs are per kernel, not batched with ``vmap`` (see
``_per_matrix`` for the jaxlib CPU deadlock that batching caused).

The authors' step counter restarts every epoch; here it is the transform's own
count (the number of ``update`` calls; optimizer steps under
``optax.MultiSteps``). With ``period = 1`` (the default and the authors'
setting) the two agree.

References:
  Xu, Li, Zhang, Wang, Wang, Liu, Lin & Xiong, *TRP: Trained Rank Pruning for
  Efficient Deep Neural Networks*, IJCAI 2020 (arXiv:2004.14566); official code
  yuhuixu1993/Trained-Rank-Pruning.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from sparsejax import prox as prox_lib
from sparsejax import tree as tree_lib
from sparsejax.optim._state import find_states
from sparsejax._util import check_real
from sparsejax._util import concrete as _concrete

__all__ = [
    "SCHEMES",
    "TrainedRankPruningState",
    "NuclearSubgradientState",
    "default_filter",
    "to_matrix",
    "from_matrix",
    "matrix_shape",
    "trained_rank_pruning",
    "add_nuclear_subgradient",
    "trp_chain",
    "low_rank_params",
    "trained_rank_pruning_from_config",
]

SCHEMES = ("channel", "spatial")
_HIGHEST = jax.lax.Precision.HIGHEST


class TrainedRankPruningState(NamedTuple):
  """State of :func:`trained_rank_pruning`."""
  count: jax.Array  # int32 scalar: number of updates seen.
  ranks: Any  # pytree like params: int32 scalar rank of the last truncation, None elsewhere.


class NuclearSubgradientState(NamedTuple):
  """State of :func:`add_nuclear_subgradient`."""
  count: jax.Array  # int32 scalar: number of updates seen.


# ---------------------------------------------------------------------------
# Kernels as matrices.
# ---------------------------------------------------------------------------


def default_filter(path: str, leaf) -> bool:
  """TRP's default selection: ``k×k`` conv kernels, except input convs.

  Selects conv kernels (a kernel leaf with ``ndim >= 3``, channels-last
  ``(*window, C, N)``) whose window has more than one tap (``1×1`` convs are
  skipped, as by the authors) and whose input-channel count ``C`` is larger
  than 3. The last rule is how "except the first conv" is recognised from a
  parameter tree, which carries no layer order: the first conv of an image
  network reads the 1 or 3 image channels. It picks exactly the convs the
  authors decompose for every model of :mod:`sparsejax.models`; pass your own
  ``filter_fn`` for anything else.
  """
  if not tree_lib.conv_kernels(path, leaf):
    return False
  shape = tuple(np.shape(leaf))
  return math.prod(shape[:-2]) > 1 and shape[-2] > 3


def _check_scheme(scheme) -> None:
  if scheme not in SCHEMES:
    raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")


def _perm(shape: Sequence[int], scheme: str) -> tuple[tuple[int, ...], tuple[int, int]]:
  """The transpose and matrix shape of ``scheme``'s view of a kernel of ``shape``."""
  shape = tuple(int(s) for s in shape)
  nd = len(shape)
  if nd == 2:  # dense (in, out) -> (out, in)
    return (1, 0), (shape[1], shape[0])
  if nd < 2:
    raise ValueError(f"a kernel must have ndim >= 2, got shape {shape}")
  window, c, n = shape[:-2], shape[-2], shape[-1]
  if scheme == "channel":
    # (*window, C, N) -> (N, C, *window) -> (N, C * prod(window)).
    return (nd - 1, nd - 2, *range(nd - 2)), (n, c * math.prod(window))
  if nd != 4:
    raise ValueError(
        f"the spatial scheme needs a 2-D conv kernel (kh, kw, C, N) or a dense kernel, got "
        f"shape {shape}; use scheme='channel'")
  kh, kw = window
  # (kh, kw, C, N) -> (C, kh, N, kw) -> (C * kh, N * kw).
  return (2, 0, 3, 1), (c * kh, n * kw)


def matrix_shape(shape: Sequence[int], scheme: str = "channel") -> tuple[int, int]:
  """The shape of :func:`to_matrix`'s result for a kernel of ``shape``."""
  _check_scheme(scheme)
  return _perm(shape, scheme)[1]


def to_matrix(kernel: ArrayLike, scheme: str = "channel") -> jax.Array:
  """The matrix TRP decomposes: see the module docstring for the layouts.

  Args:
    kernel: a channels-last conv kernel ``(*window, C, N)`` (HWIO for 2-D) or
      a dense kernel ``(in, out)``.
    scheme: ``"channel"`` (``(N, C·prod(window))``) or ``"spatial"``
      (``(C·kh, N·kw)``; 2-D convs and dense kernels only).

  Returns:
    The matrix (a transpose and reshape of ``kernel``; no values change).
  """
  _check_scheme(scheme)
  kernel = jnp.asarray(kernel)
  perm, mshape = _perm(kernel.shape, scheme)
  return jnp.transpose(kernel, perm).reshape(mshape)


def from_matrix(matrix: ArrayLike, shape: Sequence[int], scheme: str = "channel") -> jax.Array:
  """Inverse of :func:`to_matrix`: the kernel of ``shape`` whose matrix is ``matrix``."""
  _check_scheme(scheme)
  matrix = jnp.asarray(matrix)
  perm, mshape = _perm(shape, scheme)
  if tuple(matrix.shape) != mshape:
    raise ValueError(f"matrix must have shape {mshape} for a kernel of shape {tuple(shape)} "
                     f"under scheme {scheme!r}, got {tuple(matrix.shape)}")
  permuted = tuple(int(shape[p]) for p in perm)
  return jnp.transpose(matrix.reshape(permuted), np.argsort(perm))


# ---------------------------------------------------------------------------
# Argument checks.
# ---------------------------------------------------------------------------


def _check_period(period) -> None:
  if isinstance(period, bool):
    raise TypeError(f"period must be an int >= 1, got the bool {period!r}")
  c = _concrete(period)
  if c is None:
    return
  if c.ndim != 0 or c.dtype.kind not in "iu" or int(c) < 1:
    raise ValueError(f"period must be an int >= 1, got {period!r}")


def _check_common(period, scheme, filter_fn, include_dense) -> None:
  _check_period(period)
  _check_scheme(scheme)
  if filter_fn is not None and not callable(filter_fn):
    raise TypeError(f"filter_fn must be callable (path, leaf) -> bool or None, got {filter_fn!r}")
  if not isinstance(include_dense, bool):
    raise TypeError(f"include_dense must be a bool, got {include_dense!r}")


def _filter(filter_fn, include_dense: bool) -> tree_lib.FilterFn:
  base = default_filter if filter_fn is None else filter_fn
  if include_dense:
    return tree_lib.any_of(base, tree_lib.dense_kernels)
  return base


def _selected(params, filter_fn, scheme: str) -> list[bool]:
  """Flat list (params' leaf order) of selected flags; checks the selected shapes."""
  flags = []
  for path, leaf in tree_lib.leaves_with_paths(params):
    sel = bool(hasattr(leaf, "shape") and hasattr(leaf, "dtype") and filter_fn(path, leaf))
    if sel:
      shape = tuple(leaf.shape)
      if len(shape) < 2:
        raise ValueError(f"filter_fn selected '{path}' of shape {shape}; TRP needs kernels with "
                         f"ndim >= 2 (conv or dense)")
      if not jnp.issubdtype(leaf.dtype, jnp.floating):
        raise TypeError(f"filter_fn selected '{path}' of dtype {leaf.dtype}; TRP needs floats")
      try:
        _perm(shape, scheme)
      except ValueError as e:
        raise ValueError(f"'{path}': {e}") from None
    flags.append(sel)
  return flags


def _compute_dtype(dtype) -> jnp.dtype:
  return jnp.promote_types(dtype, jnp.float32)


def _per_matrix(fn: Callable, mats: list[jax.Array],
                statics: list[Any] | None = None) -> list[Any]:
  """``[fn(m, st) for m, st in zip(mats, statics)]``, one SVD per matrix.

  Deliberately *not* batched with ``vmap``: jaxlib's CPU LAPACK kernels run a
  batch on XLA's intra-op thread pool and block while waiting for it, so two
  batched SVDs scheduled concurrently in one program can take every pool thread
  and deadlock (seen with jaxlib 0.10.2 on 2 cores).
  """
  statics = [None] * len(mats) if statics is None else statics
  return [fn(m, st) for m, st in zip(mats, statics)]


def _is_none(x) -> bool:
  return x is None


# ---------------------------------------------------------------------------
# The truncation (placed last).
# ---------------------------------------------------------------------------


NUCLEAR_DEFAULT = 3e-4  # the paper's nuclear-norm weight


def trained_rank_pruning(
    energy: ArrayLike = 0.9,
    *,
    optimizer: optax.GradientTransformation | None = None,
    nuclear: ArrayLike | None = None,
    period: int = 1,
    scheme: str = "channel",
    filter_fn: tree_lib.FilterFn | None = None,
    include_dense: bool = False,
) -> optax.GradientTransformation:
  r"""TRP: the whole method around ``optimizer``, or its rank truncation placed **last**.

  With ``optimizer`` given this is the complete TRP update, equal to
  :func:`trp_chain` -- the nuclear-norm subgradient
  :math:`\lambda_*U_rV_r^\top` (``nuclear``, default the paper's 3e-4) added
  to the gradient on period steps, then ``optimizer``, then the truncation
  below -- with the paper's defaults (energy 0.9, :math:`\lambda_*` = 3e-4):
  ``trained_rank_pruning(optimizer=optax.sgd(0.1, momentum=0.9))``.

  Without ``optimizer`` it is the truncation half alone, to place last in a
  chain of your own (the subgradient half is :func:`add_nuclear_subgradient`,
  which must sit before the optimizer, so ``nuclear`` is refused here).

  On steps :math:`t` with :math:`(t + 1) \bmod P = 0` (:math:`P` =
  ``period``), for every selected kernel :math:`p` with incoming update
  :math:`u`, let :math:`M = U\operatorname{diag}(\sigma)V^\top` be the
  ``scheme`` matrix of the proposed point :math:`p + u` and

  .. math::

    r = \min\Bigl\{r : \sum_{i\le r}\sigma_i^2 \ge e\sum_i\sigma_i^2\Bigr\},
    \qquad
    u' = \mathcal{K}\bigl(U\operatorname{diag}(\sigma\odot[i \le r])
    V^\top\bigr) - p,

  with :math:`e` = ``energy`` and :math:`\mathcal{K}` the inverse of the
  ``scheme`` reshape, so ``optax.apply_updates(params, u')`` is the best
  rank-:math:`r` approximation (Eckart--Young) of the proposed point and the
  next forward pass uses it: the paper's "truncate before the forward pass" of
  iteration :math:`t + 1`. On other steps the updates pass through. The rank
  is a mask over the singular values, so shapes are static under ``jit`` and
  ``energy`` may be traced. Leaves not selected pass through unchanged.

  The module docstring explains why this ordering (subgradient before the
  optimizer, truncation of the proposed point after it) reproduces the
  paper's iterations.

  Args:
    energy: :math:`e\in(0, 1]`, the fraction of :math:`\sum\sigma_i^2` kept
      (paper: 0.9). May be injected with ``optax.inject_hyperparams``.
    optimizer: any Optax transformation (the paper: SGD, momentum 0.9, weight
      decay 1e-4 inside it); given, the result is the whole method.
    nuclear: :math:`\lambda_* \ge 0`, the nuclear-norm weight; only with
      ``optimizer`` (default then 3e-4; 0 leaves the subgradient out).
    period: :math:`P \ge 1`, truncate every ``period`` steps (paper: 1).
    scheme: ``"channel"`` or ``"spatial"`` (see the module docstring).
    filter_fn: ``(path, leaf) -> bool`` choosing the kernels; default
      :func:`default_filter` (``k×k`` convs except input convs).
    include_dense: also truncate dense kernels (any ``filter_fn`` plus
      :func:`sparsejax.tree.dense_kernels`).

  Returns:
    An ``optax.GradientTransformation``. Without ``optimizer`` its state is a
    :class:`TrainedRankPruningState` (``ranks``: the rank chosen at the last
    truncation per selected leaf, full rank before the first); with it, the
    state of :func:`trp_chain`'s chain. ``update`` requires ``params``.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> from sparsejax.optim.trp import trained_rank_pruning
    >>> kernel = jnp.zeros((3, 3, 4, 2)).at[..., 0].set(2.0).at[..., 1].set(0.5)
    >>> kernel = kernel.at[0, 0, 0, 1].set(1.0)  # rank 2, second value small
    >>> params = {"conv": {"kernel": kernel}}
    >>> tx = optax.chain(optax.sgd(0.1), trained_rank_pruning(0.9))
    >>> updates, state = tx.update({"conv": {"kernel": jnp.zeros_like(kernel)}},
    ...                            tx.init(params), params)
    >>> new = optax.apply_updates(params, updates)["conv"]["kernel"]
    >>> int(jnp.linalg.matrix_rank(new.reshape(-1, 2))), state[1].ranks["conv"]["kernel"]
    (1, Array(1, dtype=int32))

  References:
    Xu et al., *TRP: Trained Rank Pruning for Efficient Deep Neural Networks*,
    IJCAI 2020 (arXiv:2004.14566).
  """
  if optimizer is not None:
    return trp_chain(optimizer, energy=energy,
                     nuclear=NUCLEAR_DEFAULT if nuclear is None else nuclear, period=period,
                     scheme=scheme, filter_fn=filter_fn, include_dense=include_dense)
  if nuclear is not None:
    raise ValueError(
        f"nuclear={nuclear!r} needs optimizer=...: the nuclear-norm subgradient is added to "
        f"the gradient before the optimizer, and without one trained_rank_pruning is only "
        f"the truncation, placed last (or chain add_nuclear_subgradient(strength) before "
        f"your optimizer yourself)")
  check_real("energy", energy, low=0.0, high=1.0, low_open=True, scalar=True)
  _check_common(period, scheme, filter_fn, include_dense)
  select_fn = _filter(filter_fn, include_dense)

  def init_fn(params):
    flags = _selected(params, select_fn, scheme)
    leaves, treedef = jax.tree.flatten(params)
    ranks = [jnp.asarray(min(_perm(p.shape, scheme)[1]), jnp.int32) if s else None
             for s, p in zip(flags, leaves)]
    return TrainedRankPruningState(count=jnp.zeros([], jnp.int32),
                                   ranks=jax.tree.unflatten(treedef, ranks))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("trained_rank_pruning needs params: call update(updates, state, params)")
    flags = _selected(params, select_fn, scheme)
    p_leaves, treedef = jax.tree.flatten(params)
    u_leaves = treedef.flatten_up_to(updates)
    r_leaves = jax.tree.leaves(state.ranks, is_leaf=_is_none)
    idx = [i for i, s in enumerate(flags) if s]
    step = state.count

    def truncate():
      mats = [to_matrix(p_leaves[i] + u_leaves[i], scheme) for i in idx]
      res = _per_matrix(lambda m, _: prox_lib.truncate_svd(m, energy), mats)
      new_u = [(from_matrix(w, p_leaves[i].shape, scheme) - p_leaves[i]).astype(u_leaves[i].dtype)
               for (w, _), i in zip(res, idx)]
      return new_u, [r for _, r in res]

    def keep():
      return [u_leaves[i] for i in idx], [r_leaves[i] for i in idx]

    if idx:
      sel_u, sel_r = jax.lax.cond((step + 1) % period == 0, truncate, keep)
    else:
      sel_u, sel_r = [], []
    new_u, new_r = list(u_leaves), list(r_leaves)
    for j, i in enumerate(idx):
      new_u[i], new_r[i] = sel_u[j], sel_r[j]
    return jax.tree.unflatten(treedef, new_u), TrainedRankPruningState(
        count=optax.safe_int32_increment(step), ranks=jax.tree.unflatten(treedef, new_r))

  return optax.GradientTransformation(init_fn, update_fn)


# ---------------------------------------------------------------------------
# The nuclear-norm subgradient (placed before the optimizer).
# ---------------------------------------------------------------------------


def _default_rtol(dtype) -> float:
  """Numerical-rank tolerance: sqrt(eps) for float32/64, 4 eps below 32 bits.

  The SVD runs in float32 whatever the storage dtype, so the tail that rounding
  a rank-r kernel to its dtype leaves is about eps(dtype) * σ_max; sqrt(eps) of
  bfloat16 (0.088) or float16 (0.031) would also drop kept singular values.
  """
  eps = float(jnp.finfo(dtype).eps)
  return 4.0 * eps if jnp.finfo(dtype).bits < 32 else math.sqrt(eps)


def _nuclear_direction(m: jax.Array, rtol) -> jax.Array:
  """``U_k V_kᵀ`` over the singular values ``> rtol * σ_max`` (0 for a zero matrix)."""
  u, s, vt = jnp.linalg.svd(m, full_matrices=False)
  keep = (s > rtol * s[0]) & (s > 0)
  return jnp.matmul(u * keep.astype(u.dtype), vt, precision=_HIGHEST)


def add_nuclear_subgradient(
    strength: ArrayLike = NUCLEAR_DEFAULT,
    *,
    period: int = 1,
    scheme: str = "channel",
    filter_fn: tree_lib.FilterFn | None = None,
    include_dense: bool = False,
    rtol: float | None = None,
) -> optax.GradientTransformation:
  r"""Adds TRP's nuclear-norm subgradient to the gradient, placed **before** the optimizer.

  On steps :math:`t` with :math:`t \bmod P = 0` (:math:`P` = ``period``), for
  every selected kernel :math:`p` with gradient :math:`g`, let
  :math:`M = U\operatorname{diag}(\sigma)V^\top` be the ``scheme`` matrix of
  :math:`p` and :math:`k` the number of :math:`\sigma_i > \tau\sigma_1`
  (:math:`\tau` = ``rtol``). The transform returns

  .. math::

    g' = g + \lambda_*\,\mathcal{K}\bigl(U_kV_k^\top\bigr),

  :math:`\lambda_*` = ``strength``, :math:`\mathcal{K}` the inverse of the
  reshape. :math:`U_kV_k^\top` is the minimal-norm subgradient of
  :math:`\|M\|_*` (the gradient where :math:`M` has full rank). After a
  truncation by :func:`trained_rank_pruning` (the step before, with the same
  ``period``) :math:`p` has rank :math:`r` and this is the paper's
  :math:`\lambda_*U_rV_r^\top`. On other steps the gradient passes through, as
  do leaves not selected. Like ``optax.add_decayed_weights``, the term goes
  through the optimizer (momentum, Adam scaling) after it.

  Args:
    strength: :math:`\lambda_* \ge 0` (paper: 3e-4). May be injected.
    period: :math:`P \ge 1`; use the ``period`` of :func:`trained_rank_pruning`.
    scheme: ``"channel"`` or ``"spatial"``, as for the truncation.
    filter_fn: ``(path, leaf) -> bool``; default :func:`default_filter`.
    include_dense: also act on dense kernels.
    rtol: :math:`\tau`, relative tolerance of the numerical rank; default
      :math:`\sqrt{\epsilon}` of the parameter dtype (3.5e-4 for float32),
      :math:`4\epsilon` below 32 bits (0.031 for bfloat16, 0.0039 for float16).

  Returns:
    An ``optax.GradientTransformation`` whose state is a
    :class:`NuclearSubgradientState`. ``update`` requires ``params``.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> from sparsejax.optim.trp import add_nuclear_subgradient
    >>> params = {"fc": {"kernel": jnp.array([[3.0, 0.0], [0.0, -0.5]])}}
    >>> tx = add_nuclear_subgradient(0.1, include_dense=True)
    >>> g, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    >>> g["fc"]["kernel"]
    Array([[ 0.1,  0. ],
           [ 0. , -0.1]], dtype=float32)

  References:
    Xu et al., *TRP: Trained Rank Pruning for Efficient Deep Neural Networks*,
    IJCAI 2020 (arXiv:2004.14566); Watson, *Characterization of the
    subdifferential of some matrix norms*, Linear Algebra Appl. 170, 1992.
  """
  check_real("strength", strength, low=0.0, scalar=True)
  _check_common(period, scheme, filter_fn, include_dense)
  if rtol is not None:
    if _concrete(rtol) is None:
      raise TypeError(f"rtol must be a Python float (it is static), got {rtol!r}")
    check_real("rtol", rtol, low=0.0, high=1.0, scalar=True)
    rtol = float(rtol)
  select_fn = _filter(filter_fn, include_dense)

  def init_fn(params):
    _selected(params, select_fn, scheme)
    return NuclearSubgradientState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("add_nuclear_subgradient needs params: call update(updates, state, params)")
    flags = _selected(params, select_fn, scheme)
    p_leaves, treedef = jax.tree.flatten(params)
    u_leaves = treedef.flatten_up_to(updates)
    idx = [i for i, s in enumerate(flags) if s]
    step = state.count

    def add():
      mats = [to_matrix(p_leaves[i], scheme).astype(_compute_dtype(p_leaves[i].dtype))
              for i in idx]
      tols = [_default_rtol(p_leaves[i].dtype) if rtol is None else rtol for i in idx]
      dirs = _per_matrix(_nuclear_direction, mats, tols)
      out = []
      for d, i in zip(dirs, idx):
        d = from_matrix(d, p_leaves[i].shape, scheme)
        lam = jnp.asarray(strength).astype(d.dtype)
        out.append((u_leaves[i] + lam * d).astype(u_leaves[i].dtype))
      return out

    def keep():
      return [u_leaves[i] for i in idx]

    if idx:
      sel = jax.lax.cond(step % period == 0, add, keep)
    else:
      sel = []
    new_u = list(u_leaves)
    for j, i in enumerate(idx):
      new_u[i] = sel[j]
    return jax.tree.unflatten(treedef, new_u), NuclearSubgradientState(
        count=optax.safe_int32_increment(step))

  return optax.GradientTransformation(init_fn, update_fn)


def trp_chain(
    optimizer: optax.GradientTransformation,
    *,
    energy: ArrayLike = 0.9,
    nuclear: ArrayLike = NUCLEAR_DEFAULT,
    period: int = 1,
    scheme: str = "channel",
    filter_fn: tree_lib.FilterFn | None = None,
    include_dense: bool = False,
) -> optax.GradientTransformation:
  """TRP around ``optimizer``: ``chain(add_nuclear_subgradient, optimizer, trained_rank_pruning)``.

  The same as ``trained_rank_pruning(energy, optimizer=optimizer, nuclear=nuclear, ...)``.

  Put weight decay inside ``optimizer`` (e.g. ``optax.chain(
  optax.add_decayed_weights(1e-4), optax.sgd(lr, momentum=0.9))``, the
  paper's SGD). Truncate the initial parameters with :func:`low_rank_params`
  (``energy``, same ``scheme``) to match the paper's first iteration too.

  Args:
    optimizer: any Optax transformation (the paper: SGD, momentum 0.9).
    energy: the truncation's energy (paper: 0.9).
    nuclear: the nuclear-norm weight :math:`\\lambda_*` (paper: 3e-4); 0 drops
      the subgradient transform.
    period, scheme, filter_fn, include_dense: as in :func:`trained_rank_pruning`.

  Returns:
    The chained ``optax.GradientTransformation``.
  """
  if not isinstance(optimizer, optax.GradientTransformation):
    raise TypeError(f"optimizer must be an optax.GradientTransformation, got {optimizer!r}")
  common = dict(period=period, scheme=scheme, filter_fn=filter_fn, include_dense=include_dense)
  parts = []
  # Only a Python 0 drops the transform: under optax.inject_hyperparams ``nuclear``
  # is an array at init and a tracer at update, and the chain must be the same.
  if not (isinstance(nuclear, (int, float)) and not isinstance(nuclear, bool)
          and float(nuclear) == 0.0):
    parts.append(add_nuclear_subgradient(nuclear, **common))
  parts += [optimizer, trained_rank_pruning(energy, **common)]
  return optax.chain(*parts)


# ---------------------------------------------------------------------------
# Pure truncation of a params tree.
# ---------------------------------------------------------------------------


def low_rank_params(
    params: Any,
    *,
    energy: ArrayLike | None = None,
    cut: ArrayLike | None = None,
    scheme: str = "channel",
    filter_fn: tree_lib.FilterFn | None = None,
    include_dense: bool = False,
) -> tuple[Any, Any]:
  """Truncates the selected kernels of ``params`` to low rank (pure, jit-able).

  Exactly one of ``energy`` (the smallest rank keeping that fraction of
  :math:`\\sum\\sigma_i^2`, as during training) and ``cut`` (drop the singular
  values below ``cut``: the rank of the final decomposition, paper 0.05)
  must be given. ``cut`` keeps the values ``>= cut``, as
  :func:`sparsejax.prox.svd_cut_rank` counts them.

  Args:
    params: a params pytree (``nnx.State``, dict, ...).
    energy: fraction in ``(0, 1]``.
    cut: non-negative singular-value threshold.
    scheme, filter_fn, include_dense: as in :func:`trained_rank_pruning`.

  Returns:
    ``(params, ranks)``: the truncated tree (same structure, shapes and dtypes)
    and a tree with the int32 rank of every selected leaf (``None`` elsewhere).
  """
  if (energy is None) == (cut is None):
    raise ValueError(f"give exactly one of energy and cut, got energy={energy!r}, cut={cut!r}")
  if energy is not None:
    check_real("energy", energy, low=0.0, high=1.0, low_open=True, scalar=True)
  else:
    check_real("cut", cut, low=0.0, scalar=True)
  _check_common(1, scheme, filter_fn, include_dense)
  select_fn = _filter(filter_fn, include_dense)
  flags = _selected(params, select_fn, scheme)
  leaves, treedef = jax.tree.flatten(params)
  idx = [i for i, s in enumerate(flags) if s]

  def trunc(m):
    if energy is not None:
      return prox_lib.truncate_svd(m, energy)
    mc = m.astype(_compute_dtype(m.dtype))
    u, s, vt = jnp.linalg.svd(mc, full_matrices=False)
    r = prox_lib.svd_cut_rank(s, cut)
    s = jnp.where(s >= jnp.asarray(cut, s.dtype), s, 0.0)
    return jnp.matmul(u * s, vt, precision=_HIGHEST).astype(m.dtype), r

  res = _per_matrix(lambda m, _: trunc(m), [to_matrix(leaves[i], scheme) for i in idx])
  new, ranks = list(leaves), [None] * len(leaves)
  for (w, r), i in zip(res, idx):
    new[i] = from_matrix(w, leaves[i].shape, scheme).astype(leaves[i].dtype)
    ranks[i] = r
  return jax.tree.unflatten(treedef, new), jax.tree.unflatten(treedef, ranks)


# ---------------------------------------------------------------------------
# Trainer registry builder.
# ---------------------------------------------------------------------------


def _factored_params(shape: tuple[int, ...], rank: int, scheme: str) -> int:
  """Parameters of the two factors of a kernel of ``shape`` at ``rank``."""
  rows, cols = _perm(shape, scheme)[1]
  return rank * (rows + cols)


def trained_rank_pruning_from_config(cfg, ctx):
  """Builds TRP for the trainer (``config.algorithm.name = "trained_rank_pruning"``).

  ``cfg`` fields (defaults in brackets): ``energy`` [0.9], ``nuclear`` (λ_*)
  [3e-4], ``period`` [1], ``scheme`` ["channel"], ``include_dense`` [False],
  ``filter_regex`` (restricts :func:`default_filter`; empty = all) [""],
  ``truncate_init`` (truncate the initial kernels, as the paper does before
  its first forward pass) [True], ``cut`` (the final decomposition's
  singular-value cut, for the report) [0.05].

  Returns:
    ``train.Algorithm`` with ``before=(add_nuclear_subgradient,)`` (omitted
    when ``nuclear`` is 0), ``after=(trained_rank_pruning,)``,
    ``prepare_params`` (the initial truncation), ``eval_params`` (the kernels
    with singular values below ``cut`` dropped in *every* selected layer:
    what :func:`sparsejax.lowrank.decompose` with that cut and
    ``only_if_smaller=False`` computes; the default export keeps a layer
    dense where the factored pair would not save multiply-adds, so its
    accuracy can differ from the report's ``sparse_test_accuracy``;
    ``scripts/bench_trp.py`` evaluates the exported model itself) and
    ``report`` adding ``"trp": {scheme, energy, nuclear, cut, layers: {path:
    {shape, full_rank, train_rank, cut_rank, params, factored_params}},
    params, factored_params}`` (the parameter counts cover the selected
    kernels; a layer counts as factored when its two factors hold fewer
    parameters than the kernel -- a parameter criterion. The export decides
    by multiply-adds, which differ for strided spatial-wise layers, so for
    those the report can count a layer factored that
    :func:`sparsejax.lowrank.decompose` keeps dense; ``scripts/bench_trp.py``
    reports the exported model's own counts).
  """
  from sparsejax import train  # pylint: disable=import-outside-toplevel
  del ctx
  energy = float(cfg.get("energy", 0.9))
  nuclear = float(cfg.get("nuclear", NUCLEAR_DEFAULT))
  period = int(cfg.get("period", 1))
  scheme = str(cfg.get("scheme", "channel"))
  include_dense = bool(cfg.get("include_dense", False))
  cut = float(cfg.get("cut", 0.05))
  check_real("config.algorithm.energy", energy, low=0.0, high=1.0, low_open=True, scalar=True)
  check_real("config.algorithm.nuclear", nuclear, low=0.0, scalar=True)
  check_real("config.algorithm.cut", cut, low=0.0, scalar=True)
  if scheme not in SCHEMES:
    raise ValueError(f"config.algorithm.scheme must be one of {SCHEMES}, got {scheme!r}")
  pattern = cfg.get("filter_regex", "") or ""
  filter_fn = tree_lib.all_of(default_filter, tree_lib.regex(pattern)) if pattern else None
  common = dict(period=period, scheme=scheme, filter_fn=filter_fn, include_dense=include_dense)
  before = (add_nuclear_subgradient(nuclear, **common),) if nuclear > 0 else ()
  after = (trained_rank_pruning(energy, **common),)
  sel = dict(scheme=scheme, filter_fn=filter_fn, include_dense=include_dense)

  prepare = None
  if bool(cfg.get("truncate_init", True)):
    prepare = lambda params: low_rank_params(params, energy=energy, **sel)[0]  # noqa: E731

  def eval_params(params, opt_state):
    del opt_state
    return low_rank_params(params, cut=cut, **sel)[0]

  def report(params, opt_state):
    states = find_states(opt_state, TrainedRankPruningState)
    train_ranks = {}
    if states:
      train_ranks = {p: int(r) for p, r in tree_lib.leaves_with_paths(
          jax.device_get(states[0].ranks)) if r is not None}
    select_fn = _filter(filter_fn, include_dense)
    layers, total, factored = {}, 0, 0
    for path, leaf in tree_lib.leaves_with_paths(params):
      if not (hasattr(leaf, "shape") and select_fn(path, leaf)):
        continue
      shape = tuple(int(s) for s in leaf.shape)
      m = np.asarray(jax.device_get(to_matrix(leaf, scheme)), np.float64)
      s = np.linalg.svd(m, compute_uv=False)
      r = int(np.sum(s >= cut))
      n = int(np.prod(shape))
      f = min(n, _factored_params(shape, max(r, 1), scheme))
      layers[path] = dict(shape=list(shape), full_rank=int(min(m.shape)),
                          train_rank=train_ranks.get(path), cut_rank=r, params=n,
                          factored_params=f)
      total += n
      factored += f
    return {"trp": dict(scheme=scheme, energy=energy, nuclear=nuclear, period=period, cut=cut,
                        layers=layers, params=total, factored_params=factored)}

  return train.Algorithm(before=before, after=after, prepare_params=prepare, report=report,
                         eval_params=eval_params)
