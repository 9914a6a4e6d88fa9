r"""Nonconvex sparse group lasso by variable splitting (Bui et al., 2021).

The objective of the paper's code (``Official_Nonconvex_SGL``) for a network
with weights :math:`W` and a sparse copy :math:`U` of the regularised kernels:

.. math::

  \mathrm{CE}(W) + \frac1N \sum_{\ell}\Bigl[\frac{\beta_\ell}{2}
  \|W_\ell - U_\ell\|^2 + \lambda\sqrt{|g|}\sum_{g}\|W_{\ell,g}\|_2
  + \frac{\mathrm{wd}}{2}\|b_\ell\|^2\Bigr]
  \quad\text{and}\quad U_\ell = \arg\min_U \lambda\, r(U) +
  \frac{\beta_\ell}{2}\|W_\ell - U\|^2,

minimised alternately: an optimizer step on :math:`W` with :math:`U` fixed,
then :math:`U` = the elementwise threshold of :math:`W`. :func:`sparse_group_lasso`
is that algorithm as one Optax transform placed before the optimizer;
:func:`sparse_params` extracts the exactly sparse :math:`U`.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from sparsejax import prox
from sparsejax import tree as tree_lib
from sparsejax.optim._state import find_states
from sparsejax._util import check_real

__all__ = [
    "KINDS",
    "SparseGroupLassoState",
    "sparse_group_lasso",
    "sparse_params",
    "group_axis",
    "sgl_report",
    "sparse_group_lasso_from_config",
]

KINDS = ("l0", "l1", "tl1", "lhalf")
DENSE_GROUPS = ("input", "output")
U_INITS = ("threshold", "uniform")
# Below this mean |w| a group of W counts as removed, as in the authors' code.
AUTHORS_EPS = 1e-5


class SparseGroupLassoState(NamedTuple):
  """State of :func:`sparse_group_lasso`."""
  count: jax.Array  # int32 scalar: number of updates seen.
  u: Any  # like params: U used by the last step (U_0 before any), None if not regularised.
  beta: Any  # like params: float32 scalar beta of the last step (beta_0 before any), or None.
  lam: jax.Array  # float32 scalar: lambda of the last step.
  a: jax.Array  # float32 scalar: the transformed-l1 parameter.
  kind: jax.Array  # int32 scalar: index of the elementwise penalty in KINDS.


def _is_none(x) -> bool:
  return x is None


class _Out:
  """One leaf's results (not a pytree node, so tree maps treat it as a leaf)."""
  __slots__ = ("g", "u", "beta")

  def __init__(self, g, u=None, beta=None):
    self.g, self.u, self.beta = g, u, beta


def group_axis(leaf, dense_group: str = "input") -> int:
  """The axis whose indices are the groups of a kernel.

  Conv kernels (``ndim >= 3``, HWIO): the last axis, one output channel
  (all ``H*W*I`` weights of a filter) per group. Dense ``(in, out)`` kernels:
  axis 0 (a row: one input neuron, as the authors' code) for
  ``dense_group="input"``, axis 1 (a column: one output neuron) for
  ``"output"``.
  """
  ndim = len(np.shape(leaf))
  if ndim >= 3:
    return ndim - 1
  if ndim == 2:
    return 0 if dense_group == "input" else 1
  raise ValueError(f"a group-lasso kernel needs ndim >= 2, got shape {np.shape(leaf)}")


def _threshold(kind_index, w, tau, a):
  """U = argmin_U r(U) tau + 1/2 ||W - U||^2 for KINDS[kind_index] (traceable)."""
  branches = [
      lambda: prox.l0(w, tau),
      lambda: prox.l1(w, tau),
      lambda: prox.tl1(w, tau, a),
      lambda: prox.lhalf(w, tau),
  ]
  if isinstance(kind_index, int):
    return branches[kind_index]()
  return jax.lax.switch(kind_index, branches)


def _check_int(name: str, value: Any, minimum: int, *, allow_none: bool = False) -> None:
  """Checks an int argument (an int32 array from inject_hyperparams also passes)."""
  if value is None and allow_none:
    return
  if isinstance(value, jax.core.Tracer):
    return
  c = np.asarray(value) if not isinstance(value, bool) else None
  if c is None or c.ndim != 0 or c.dtype.kind not in "iu":
    raise TypeError(f"{name} must be an int{' or None' if allow_none else ''}, got {value!r}")
  if int(c) < minimum:
    raise ValueError(f"{name} must be >= {minimum}, got {value!r}")


def sparse_group_lasso(
    lam: ArrayLike = 0.1,
    beta: ArrayLike = 2.5,
    *,
    num_examples: ArrayLike,
    kind: str = "l0",
    a: ArrayLike = 1.0,
    growth: ArrayLike = 1.25,
    growth_every: int | None = None,
    growth_filter: tree_lib.FilterFn | None = None,
    filter_fn: tree_lib.FilterFn | None = None,
    dense_group: str = "input",
    u_init: str = "threshold",
    u_init_seed: int = 0,
    bias_weight_decay: ArrayLike = 0.0,
) -> optax.GradientTransformation:
  r"""Nonconvex sparse group lasso (variable splitting), placed **before** the optimizer.

  For each regularised kernel :math:`W` (chosen by ``filter_fn``) the
  transform keeps a sparse copy :math:`U` in its state. On step :math:`t`
  (its own count, from 0) it sees the current parameters :math:`W_t` and
  gradients :math:`g_t` and

  1. sets :math:`U_t = \operatorname{prox}_{(\lambda/\beta_{t-1}) r}(W_t)`
     elementwise (:math:`U_0` is the initial copy, see ``u_init``), which is
     exactly the authors' :math:`U` update after the previous step;
  2. returns the gradient of the loss with :math:`U_t` fixed:

  .. math::

    g'_t = g_t + \frac{\beta_t}{N}(W_t - U_t)
      + \frac{\lambda\sqrt{|g|}}{N}\,\frac{W_{t,g}}{\|W_{t,g}\|_2}

  (the group term is 0 on an all-zero group), plus
  :math:`\tfrac{\mathrm{wd}}{N} b` on the biases of the regularised layers.
  The optimizer that follows (Adam in the paper) turns :math:`g'_t` into the
  step; the next call thresholds the parameters it then sees. The threshold
  with strength :math:`\tau = \lambda/\beta` is, by ``kind``: ``"l0"``
  :math:`H_{\sqrt{2\tau}}` (hard), ``"l1"`` :math:`S_\tau` (soft), ``"tl1"``
  transformed-ℓ1 with parameter ``a``, ``"lhalf"`` ℓ1/2 half thresholding
  (see :mod:`sparsejax.prox`; ties go to zero).

  :math:`\lambda` = ``lam``, :math:`N` = ``num_examples``,
  :math:`\beta_t = \beta_0\,\gamma^{\lfloor t/K\rfloor}` for the leaves chosen
  by ``growth_filter`` and :math:`\beta_0` for the others
  (:math:`\beta_0` = ``beta``, :math:`\gamma` = ``growth``, :math:`K` =
  ``growth_every``; no growth when ``growth_every`` is None). Groups
  :math:`g` and their sizes :math:`|g|` follow :func:`group_axis`: output
  channels of conv kernels (:math:`|g| = H W C_{in}`), and rows (input
  neurons, :math:`|g| = C_{out}`, the authors' choice and the default) or
  columns (output neurons) of dense kernels.

  The ordering reproduces the authors' loop exactly: their :math:`U` update
  after step :math:`t-1` used the :math:`\beta` of that step and their
  :math:`\beta` grows after it, so :math:`U_t` uses :math:`\beta_{t-1}` while
  the coupling of step :math:`t` uses :math:`\beta_t`. Design choices of ours:
  ``u_init="threshold"`` (:math:`U_0` = threshold of :math:`W_0` with
  :math:`\beta_0`) is the default, the authors' :math:`U_0 \sim
  \mathcal U[0, 1)` is ``u_init="uniform"``; the group term is 0 (not NaN) on
  a zero group; ``kind="lhalf"`` is in the paper but not in its code.

  The state holds :math:`U_t` (the copy used by the last step) and
  :math:`\beta_t`; :func:`sparse_params` returns the up-to-date sparse
  parameters :math:`U_{t+1}` = threshold of the current parameters, the
  authors' :math:`U` after the last step. The authors evaluate :math:`W`
  (with :math:`|w| < 10^{-5}` counted as zero), which the coupling drives close
  to :math:`U`; :math:`U` has exact zeros and is what compaction uses.

  Place this transform before the optimizer (and before
  ``add_decayed_weights``):
  ``optax.chain(sparse_group_lasso(...), optax.adam(1e-3))``. Under
  ``optax.MultiSteps`` the count is the number of optimizer steps.
  ``lam``, ``beta``, ``growth`` and ``bias_weight_decay`` may be injected with
  ``optax.inject_hyperparams`` (list the others in ``static_args``).

  Args:
    lam: :math:`\lambda \ge 0`, the weight of the group term and of the
      elementwise penalty (it sets the threshold :math:`\lambda/\beta`).
    beta: :math:`\beta_0 > 0`, the initial coupling weight.
    num_examples: :math:`N > 0`, the training-set size (60000 for MNIST);
      the penalty is divided by it as in the authors' code.
    kind: the elementwise penalty of :math:`U`, one of ``KINDS``:
      ``"l0"``, ``"l1"``, ``"tl1"``, ``"lhalf"``.
    a: transformed-ℓ1 parameter (``a > 0``), used for ``kind="tl1"``.
    growth: :math:`\gamma > 0`, the factor :math:`\beta` is multiplied by.
    growth_every: :math:`K`, steps between growths (``>= 1``), or None.
    growth_filter: ``(path, leaf) -> bool`` choosing the kernels whose
      :math:`\beta` grows; default :func:`sparsejax.tree.conv_kernels` (the
      authors' LeNet script grows only the conv layers).
    filter_fn: ``(path, leaf) -> bool`` choosing the regularised kernels
      (each must have ``ndim >= 2``); default :func:`sparsejax.tree.kernels`.
    dense_group: ``"input"`` (rows of ``(in, out)`` kernels, default) or
      ``"output"`` (columns).
    u_init: ``"threshold"`` (default) or ``"uniform"`` (the authors').
    u_init_seed: PRNG seed of the ``"uniform"`` start.
    bias_weight_decay: wd :math:`\ge 0` on the biases (a leaf named ``bias``
      next to a regularised kernel); the authors use 5e-4 (inside the 1/N).

  Returns:
    An ``optax.GradientTransformation`` whose state is a
    :class:`SparseGroupLassoState`. ``update`` requires ``params``.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> from sparsejax.optim import sparse_group_lasso, sparse_params
    >>> params = {"dense": {"kernel": jnp.array([[0.5, -0.1], [0.05, 0.02]])}}
    >>> tx = optax.chain(sparse_group_lasso(0.1, 2.5, num_examples=1),
    ...                  optax.sgd(0.0))
    >>> state = tx.init(params)
    >>> sparse_params(state, params)["dense"]["kernel"]  # l0: |w| <= sqrt(2 lam / beta) = 0.28 -> 0
    Array([[0.5, 0. ],
           [0. , 0. ]], dtype=float32)

  References:
    Bui, Park, Zhang, Qi & Xin, *Structured sparsity of convolutional neural
    networks via nonconvex sparse group regularization*, Frontiers in Applied
    Mathematics and Statistics, 2021 (arXiv:2004.05679); code:
    github.com/kbui1993/Official_Nonconvex_SGL.
  """
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
  if dense_group not in DENSE_GROUPS:
    raise ValueError(f"dense_group must be one of {DENSE_GROUPS}, got {dense_group!r}")
  if u_init not in U_INITS:
    raise ValueError(f"u_init must be one of {U_INITS}, got {u_init!r}")
  check_real("lam", lam, low=0.0, scalar=True)
  check_real("beta", beta, low=0.0, low_open=True, scalar=True)
  check_real("num_examples", num_examples, low=0.0, low_open=True, scalar=True)
  check_real("a", a, low=0.0, low_open=True, scalar=True)
  check_real("growth", growth, low=0.0, low_open=True, scalar=True)
  check_real("bias_weight_decay", bias_weight_decay, low=0.0, scalar=True)
  _check_int("growth_every", growth_every, 1, allow_none=True)
  _check_int("u_init_seed", u_init_seed, 0)
  for name, f in (("filter_fn", filter_fn), ("growth_filter", growth_filter)):
    if f is not None and not callable(f):
      raise TypeError(f"{name} must be callable (path, leaf) -> bool or None, got {f!r}")
  filter_fn = tree_lib.kernels if filter_fn is None else filter_fn
  growth_filter = tree_lib.conv_kernels if growth_filter is None else growth_filter
  kind_index = KINDS.index(kind)

  def layout(params):
    """Static per-leaf facts: (selected, grows, group axis, sqrt|g|) and bias paths."""
    sel_paths = set()
    info = {}
    for path, leaf in tree_lib.leaves_with_paths(params):
      if not (hasattr(leaf, "shape") and filter_fn(path, leaf)):
        continue
      if leaf.ndim < 2:
        raise ValueError(
            f"filter_fn selected '{path}' with shape {tuple(leaf.shape)}; the sparse group "
            "lasso regularises kernels with ndim >= 2 (conv HWIO or dense (in, out))")
      ax = group_axis(leaf, dense_group)
      size = math.prod(s for i, s in enumerate(leaf.shape) if i != ax)
      info[path] = (bool(growth_filter(path, leaf)), ax, math.sqrt(size))
      sel_paths.add(path)
    bias_paths = set()
    for path, leaf in tree_lib.leaves_with_paths(params):
      parent, _, last = path.rpartition("/")
      if last == "bias" and any(f"{parent}/{k}" in sel_paths if parent else k in sel_paths
                                for k in tree_lib.KERNEL_NAMES):
        bias_paths.add(path)
    return info, bias_paths

  def per_leaf(fn, params, *rest):
    info, _ = layout(params)
    return jax.tree_util.tree_map_with_path(
        lambda kp, p, *r: fn(info[tree_lib.path_str(kp)], p, *r)
        if tree_lib.path_str(kp) in info else None,
        params, *rest, is_leaf=_is_none)

  def init_fn(params):
    info, _ = layout(params)
    if not info:
      tree_lib.check_selected(params, [], "sparse_group_lasso",
                              "the kernels to regularise (ndim >= 2)")
    f32 = jnp.float32
    if u_init == "uniform":
      key = jax.random.PRNGKey(u_init_seed)
      order = {path: i for i, path in enumerate(sorted(info))}

      def u0(kp, p):
        path = tree_lib.path_str(kp)
        if path not in info:
          return None
        return jax.random.uniform(jax.random.fold_in(key, order[path]), p.shape, p.dtype)
      u = jax.tree_util.tree_map_with_path(u0, params)
    else:
      def u0(_, p):
        # float64 params (x64) threshold at a float64 tau, like update_fn does.
        cdt = jnp.result_type(f32, p)
        tau = jnp.asarray(lam, cdt) / jnp.asarray(beta, cdt)
        return _threshold(kind_index, p, tau, a).astype(p.dtype)
      u = per_leaf(u0, params)
    betas = per_leaf(lambda _, p: jnp.asarray(beta, f32), params)
    return SparseGroupLassoState(
        count=jnp.zeros([], jnp.int32), u=u, beta=betas, lam=jnp.asarray(lam, f32),
        a=jnp.asarray(a, f32), kind=jnp.asarray(kind_index, jnp.int32))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("sparse_group_lasso needs params: call update(updates, state, params)")
    info, bias_paths = layout(params)
    count = state.count

    def scalars(cdt):
      """lambda, N, beta_t (grown) and beta_0 in the leaf's compute dtype."""
      b0 = jnp.asarray(beta, cdt)
      if growth_every is None:
        grown = b0
      else:
        grown = b0 * jnp.asarray(growth, cdt) ** (
            count // jnp.asarray(growth_every, jnp.int32)).astype(cdt)
      return jnp.asarray(lam, cdt), jnp.asarray(num_examples, cdt), grown, b0

    def leaf(kp, g, p, u_prev, b_prev):
      path = tree_lib.path_str(kp)
      # At least float32 (tau underflows in float16), float64 for float64 params.
      cdt = jnp.result_type(jnp.float32, p, g)
      lam_t, n, grown, beta_0 = scalars(cdt)
      if path in bias_paths:
        wd = jnp.asarray(bias_weight_decay, cdt) / n
        return _Out((g.astype(cdt) + wd * p.astype(cdt)).astype(g.dtype))
      if path not in info:
        return _Out(g)
      grows, ax, sqrt_size = info[path]
      beta_t = grown if grows else beta_0
      tau = lam_t / b_prev.astype(cdt)
      u_t = jnp.where(count == 0, u_prev, _threshold(kind_index, p, tau, a).astype(p.dtype))
      red = tuple(i for i in range(p.ndim) if i != ax)
      sq = jnp.sum(jnp.square(p.astype(cdt)), axis=red, keepdims=True)
      pos = sq > 0
      inv_norm = jnp.where(pos, jax.lax.rsqrt(jnp.where(pos, sq, 1.0)), 0.0)
      coupling = (beta_t / n) * (p - u_t).astype(cdt)
      group = (lam_t * sqrt_size / n) * p.astype(cdt) * inv_norm
      return _Out((g.astype(cdt) + coupling + group).astype(g.dtype), u_t,
                  beta_t.astype(b_prev.dtype))

    outs = jax.tree_util.tree_map_with_path(leaf, updates, params, state.u, state.beta)
    new_updates = jax.tree.map(lambda o: o.g, outs)
    new_u = jax.tree.map(lambda o: o.u, outs)
    new_beta = jax.tree.map(lambda o: o.beta, outs)
    return new_updates, SparseGroupLassoState(
        count=optax.safe_int32_increment(count), u=new_u, beta=new_beta,
        lam=jnp.asarray(lam, jnp.float32), a=jnp.asarray(a, jnp.float32),
        kind=jnp.asarray(kind_index, jnp.int32))

  return optax.GradientTransformation(init_fn, update_fn)


# ----------------------------------------------------------------------------
# Reading U out
# ----------------------------------------------------------------------------


def _get_state(opt_state) -> SparseGroupLassoState:
  if isinstance(opt_state, SparseGroupLassoState):
    return opt_state
  found = find_states(opt_state, SparseGroupLassoState)
  if len(found) != 1:
    raise ValueError(
        f"opt_state must hold exactly one SparseGroupLassoState (the state of a chain "
        f"containing sparse_group_lasso), found {len(found)}")
  return found[0]


def _by_path(tree) -> dict[str, Any]:
  return dict(tree_lib.leaves_with_paths(tree))


def _scalar(x) -> jax.Array:
  """A state entry as an array (unwrapping an nnx.Optimizer variable)."""
  leaves = jax.tree.leaves(x)
  return jnp.asarray(leaves[0]) if leaves else jnp.asarray(x)


def sparse_params(opt_state, params):
  r"""The exactly sparse parameters :math:`U` of a sparse-group-lasso run.

  Returns a copy of ``params`` in which every regularised kernel :math:`W` is
  replaced by :math:`\operatorname{prox}_{(\lambda/\beta) r}(W)` with the
  :math:`\lambda`, :math:`\beta` (per kernel) and kind stored in the state,
  i.e. the :math:`U` the next step would use (the authors' :math:`U` after the
  last step; before any step, the initial :math:`U_0`). Other leaves (biases,
  unregularised layers) are returned unchanged, so the result evaluates like
  ``params``. Jit-able.

  Args:
    opt_state: the optimizer state holding one
      :class:`SparseGroupLassoState` (a chain, ``inject_hyperparams``,
      ``MultiSteps`` or ``nnx.Optimizer.opt_state``), or that state itself.
    params: the current parameters (any pytree; an ``nnx.State`` works).

  Returns:
    A pytree like ``params``.
  """
  state = _get_state(opt_state)
  u_prev = _by_path(state.u)
  betas = {k: _scalar(v) for k, v in _by_path(state.beta).items()}
  count, lam, a = _scalar(state.count), _scalar(state.lam), _scalar(state.a)
  kind = _scalar(state.kind)
  kind = int(kind) if not isinstance(kind, jax.core.Tracer) else kind

  def leaf(kp, p):
    path = tree_lib.path_str(kp)
    if path not in betas:
      return p
    tau = jnp.asarray(lam, jnp.float32) / betas[path]  # float32: tau underflows in float16
    u0 = jnp.asarray(u_prev[path])
    return jnp.where(count == 0, u0, _threshold(kind, p, tau, a)).astype(p.dtype)

  return jax.tree_util.tree_map_with_path(leaf, params)


# ----------------------------------------------------------------------------
# Trainer registry builder and report
# ----------------------------------------------------------------------------


def _group_stats(x: np.ndarray, ax: int, *, authors: bool) -> tuple[int, int]:
  """(zero groups, groups) of one kernel; authors: mean |w| over a group <= 1e-5."""
  g = np.moveaxis(np.abs(x), ax, 0).reshape(x.shape[ax], -1)
  if authors:
    zero = g.mean(axis=1) <= AUTHORS_EPS
  else:
    zero = ~np.any(g != 0, axis=1)
  return int(zero.sum()), int(g.shape[0])


def sgl_report(opt_state, params, *, dense_group: str = "input") -> dict:
  """Sparsity of :math:`U` (exact) and of :math:`W` (the authors' way).

  Host-side reporting (syncs). For every regularised kernel: shape, ``beta``,
  zeros and zero groups of :math:`U` (exact zeros) and of :math:`W`
  (``|w| < 1e-5``; a group is zero when its mean ``|w|`` is ``<= 1e-5``, the
  authors' ``count_active_neuron``). Totals over the regularised kernels.
  """
  state = _get_state(opt_state)
  u_tree = sparse_params(opt_state, params)
  u_by, betas = _by_path(u_tree), _by_path(state.beta)
  layers = []
  tot = dict(params=0, u_zeros=0, w_zeros=0, groups=0, u_zero_groups=0, w_zero_groups=0)
  for path, w in tree_lib.leaves_with_paths(params):
    if path not in betas:
      continue
    w = np.asarray(jax.device_get(w))
    u = np.asarray(jax.device_get(u_by[path]))
    ax = group_axis(w, dense_group)
    uz, ng = _group_stats(u, ax, authors=False)
    wz, _ = _group_stats(w, ax, authors=True)
    row = {"path": path, "shape": list(w.shape), "beta": float(np.asarray(betas[path])),
           "group_axis": ax, "params": int(w.size),
           "u_zeros": int(w.size - np.count_nonzero(u)),
           "w_zeros": int(np.sum(np.abs(w) < AUTHORS_EPS)),
           "groups": ng, "u_zero_groups": uz, "w_zero_groups": wz}
    layers.append(row)
    for k in tot:
      tot[k] += row[k]
  n = max(tot["params"], 1)
  return {"kind": KINDS[int(_scalar(state.kind))], "lam": float(_scalar(state.lam)),
          "steps": int(_scalar(state.count)),
          "u_sparsity": tot["u_zeros"] / n, "w_sparsity_authors": tot["w_zeros"] / n,
          **tot, "layers": layers}


def sparse_group_lasso_from_config(cfg, ctx):
  """Builds ``sparse_group_lasso`` for the trainer (``config.algorithm.name``).

  ``cfg`` (``config.algorithm``) fields, defaults from the authors' LeNet-5
  script: ``kind`` ("l0"), ``lam`` (0.1), ``beta`` (2.5), ``growth`` (1.25),
  ``growth_every_epochs`` (40; 0 or None: no growth), ``growth_layers``
  ("conv" or "all"), ``num_examples`` (required: the full training-set size,
  60000 for MNIST), ``a`` (1.0), ``dense_group`` ("input"), ``u_init``
  ("threshold"), ``u_init_seed`` (0), ``bias_weight_decay`` (5e-4),
  ``filter_regex`` ("" = every conv/dense kernel). The transform goes
  *before* the optimizer (``Algorithm.before``); set the optimizer's own weight
  decay to 0 as the paper's Adam has none.

  Returns:
    ``train.Algorithm(before=(tx,), report=...)``; the report adds
    ``"sgl": sgl_report(...)`` (U sparsity and zero groups, W the authors'
    way, β per layer), and every epoch's metrics line gains ``u_sparsity``
    and ``w_sparsity_authors``.
  """
  from sparsejax import train  # pylint: disable=import-outside-toplevel
  n = cfg.get("num_examples", None) or ctx.get("num_train_examples")
  if not n:
    raise ValueError("config.algorithm.num_examples must be set to the training-set "
                     "size N (e.g. 60000 for MNIST): the SGL penalty is divided by N")
  every_epochs = cfg.get("growth_every_epochs", 40)
  growth_every = (max(1, int(round(float(every_epochs) * ctx["steps_per_epoch"])))
                  if every_epochs else None)
  layers = cfg.get("growth_layers", "conv")
  if layers not in ("conv", "all"):
    raise ValueError(f"config.algorithm.growth_layers must be 'conv' or 'all', got {layers!r}")
  pattern = cfg.get("filter_regex", "")
  filter_fn = tree_lib.all_of(tree_lib.kernels, tree_lib.regex(pattern)) if pattern else None
  dense_group = cfg.get("dense_group", "input")
  tx = sparse_group_lasso(
      float(cfg.get("lam", 0.1)), float(cfg.get("beta", 2.5)), num_examples=float(n),
      kind=cfg.get("kind", "l0"), a=float(cfg.get("a", 1.0)),
      growth=float(cfg.get("growth", 1.25)), growth_every=growth_every,
      growth_filter=tree_lib.conv_kernels if layers == "conv" else tree_lib.kernels,
      filter_fn=filter_fn, dense_group=dense_group,
      u_init=cfg.get("u_init", "threshold"), u_init_seed=int(cfg.get("u_init_seed", 0)),
      bias_weight_decay=float(cfg.get("bias_weight_decay", 5e-4)))

  def report(params, opt_state):
    return {"sgl": sgl_report(opt_state, params, dense_group=dense_group)}

  def epoch_metrics(params, opt_state):
    rep = sgl_report(opt_state, params, dense_group=dense_group)
    return {"u_sparsity": rep["u_sparsity"], "w_sparsity_authors": rep["w_sparsity_authors"]}

  return train.Algorithm(before=(tx,), report=report, epoch_metrics=epoch_metrics,
                         eval_params=lambda params, opt_state: sparse_params(opt_state, params))
