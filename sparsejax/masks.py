"""Boolean pruning masks on parameter pytrees.

Conventions shared by every function here:

* A *masks* pytree has the tree structure of ``params``. Selected leaves hold a
  ``bool`` array of the leaf's shape (``True`` = keep); unselected leaves hold
  ``None``. Map over masks with ``is_leaf=lambda x: x is None``.
* Output channels are the LAST axis (conv kernels HWIO, dense kernels
  ``(in, out)``).
* Leaves are chosen by a filter ``filter_fn(path, leaf) -> bool`` (see
  :mod:`sparsejax.tree`); ``filter_fn=None`` means :func:`sparsejax.tree.kernels`.

Counting rule. Pruning ``n`` entries (or blocks, or channels) at sparsity ``s``
removes ``k = floor(s * n)`` of them, everywhere in this module, including the
``"global"`` distribution where ``k = floor(s * total)`` over all selected
leaves. See :func:`num_to_prune` for how float rounding of ``s`` is handled.

Thresholds without sorting. Magnitude thresholds are found exactly, without a
sort, by a binary search over the bit patterns of non-negative float32 values
(for non-negative IEEE floats the ``uint32`` bit pattern orders like the value):
31 iterations of :func:`jax.lax.fori_loop`, each counting ``sum(|w| <= t)``.
Entries with ``|w| <= t_k`` (``t_k`` the k-th smallest ``|w|``) are pruned and
entries with ``|w| > t_k`` are kept, which keeps exactly the entries a full sort
keeps when the magnitudes are distinct. **Ties:** all entries tied with ``t_k``
are pruned, so slightly more than ``k`` entries may be pruned when magnitudes
repeat (e.g. many exact zeros are all pruned together). NaNs compare above
every number and are never pruned. ``bfloat16``/``float16`` leaves are compared
in float32 (exact). When any leaf taking part is 64-bit (float64 or int64,
which exist only under ``jax_enable_x64``) all are compared in float64: the
search runs over ``uint64`` patterns in 63 iterations. (int32 values above
``2**24`` are compared in float32 and may tie.) Counts are ``int32``: at most
``2**31 - 1`` entries may take part in one threshold.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sparsejax import _util
from sparsejax import tree as tree_lib

__all__ = [
    "DISTRIBUTIONS",
    "num_to_prune",
    "pow2_normalized",
    "kth_smallest_abs",
    "leaf_sparsities",
    "erk_densities",
    "magnitude_per_leaf",
    "magnitude",
    "n_by_m",
    "block",
    "channel",
    "structured",
    "apply",
    "summary",
    "format_summary",
]

DISTRIBUTIONS = ("uniform", "erk", "global")
_POOLS = ("l2", "l1", "max")

# Bit pattern of +inf; every finite |x| and +inf has bits <= this.
_INF_BITS = 0x7F800000
# The search interval [0, _INF_BITS] holds < 2**31 values: 31 halvings suffice.
_SEARCH_ITERS = 31
# 64-bit leaves (float64/int64, only under jax_enable_x64) search float64 bits.
_INF_BITS_64 = 0x7FF0000000000000
_SEARCH_ITERS_64 = 63
_INT32_MAX = 2**31 - 1


def _is_none(x) -> bool:
  return x is None


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def _as_float(value) -> float:
  """A concrete scalar as a Python float; a narrower float (float32, bf16, ...) as
  the shortest decimal that rounds to it, so that ``np.float32(0.7)`` counts as
  0.7, not 0.699999988, and eager code agrees with its jitted version."""
  a = np.asarray(value)
  v = float(a)
  if not jnp.issubdtype(a.dtype, jnp.floating) or a.dtype.itemsize >= 8 or not math.isfinite(v):
    return v
  for digits in range(1, 18):
    d = float(f"{v:.{digits}g}")
    if np.asarray(d, a.dtype) == a:
      return d
  return v


def pow2_normalized(a: jax.Array) -> jax.Array:
  """``a`` (non-negative, float32) times the power of two that puts its finite
  maximum in ``[0.5, 1)``: exact, so rankings and ties are unchanged, and sums
  of squares neither overflow nor underflow to all-equal scores."""
  finite = jnp.where(jnp.isfinite(a), a, 0.0)
  _, e = jnp.frexp(jnp.max(finite, initial=0.0))
  return jnp.ldexp(a, -e)


def _check_sparsity(sparsity, argname: str = "sparsity"):
  """Validates a concrete sparsity; returns it as a Python float (or the tracer)."""
  if not _is_concrete(sparsity):
    if jnp.ndim(sparsity) != 0:
      raise ValueError(f"{argname} must be a scalar, got shape {jnp.shape(sparsity)}")
    return sparsity
  if isinstance(sparsity, (str, bytes, bool)):
    raise ValueError(f"{argname} must be a number in [0, 1), got {sparsity!r}")
  if np.ndim(sparsity) != 0:
    raise ValueError(f"{argname} must be a scalar in [0, 1), got shape {np.shape(sparsity)}")
  try:
    value = _as_float(sparsity)
  except (TypeError, ValueError):
    raise ValueError(f"{argname} must be a number in [0, 1), got {sparsity!r}") from None
  if not 0.0 <= value < 1.0:  # also rejects NaN
    raise ValueError(f"{argname} must be in [0, 1), got {sparsity!r}")
  return value


def num_to_prune(size: int, sparsity) -> int | jax.Array:
  """Number of entries pruned out of ``size`` at ``sparsity``: ``floor(s * size)``.

  Float rounding of ``s`` is compensated so that e.g. ``s = 0.29, size = 100``
  gives 29 although ``0.29 * 100 == 28.999999999999996`` in float64:

  * concrete ``s``: ``floor(s * size * (1 + 1e-12))`` in float64, a Python int;
    a float32 (or narrower) ``s`` is first read as the shortest decimal that
    rounds to it (``np.float32(0.7)`` as 0.7);
  * traced ``s``: ``x = s * size`` in float32, then ``floor(x)``, plus one when
    ``x`` lies less than a relative ``2**-22`` below the next integer (twice
    the float32 error of a decimal ``s`` and of the product), an ``int32``
    scalar. This equals the concrete result except when the exact ``s * size``
    itself lies within that distance below an integer (for two-digit
    sparsities: never below ``size = 40000``), where it is one more; from
    ``size = 2**23`` float32's resolution allows differences of about
    ``size * 2**-23`` either way.

  The result is clipped to ``[0, size]``.

  Args:
    size: number of entries (a Python int).
    sparsity: fraction to prune in ``[0, 1)``; a Python float or a traced scalar.

  Returns:
    ``k`` as a Python int (concrete ``sparsity``) or an ``int32`` scalar.
  """
  size = int(size)
  if size > _INT32_MAX:
    raise ValueError(f"size must be at most 2**31 - 1 entries, got {size}")
  if _is_concrete(sparsity):
    k = math.floor(_as_float(sparsity) * size * (1.0 + 1e-12))
    return min(max(k, 0), size)
  x = jnp.asarray(sparsity, jnp.float32) * jnp.float32(size)
  k = jnp.floor(x)
  k = jnp.where((x > k) & (k + 1 - x <= x * jnp.float32(2.0**-22)), k + 1, k)
  return jnp.clip(k, 0, size).astype(jnp.int32)


def _is_wide(leaves) -> bool:
  """Some leaf is 64-bit (float64 or int64): compare in float64, not float32."""
  return any(jnp.result_type(x).itemsize == 8 for x in leaves)


def _abs_bits(x: jax.Array, wide: bool = False) -> jax.Array:
  """Bit pattern of ``|x|`` (orders like ``|x|``; NaN above inf).

  uint32 of float32, or with ``wide`` uint64 of float64 (distinct float64
  magnitudes, and integers above 2**24, would tie in float32).
  """
  x = jnp.asarray(x)
  if wide:
    bits = lax.bitcast_convert_type(x.astype(jnp.float64), jnp.uint64)
    return bits & jnp.uint64(0x7FFFFFFFFFFFFFFF)
  bits = lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
  return bits & jnp.uint32(0x7FFFFFFF)


def _search_bits(count_fn: Callable[[jax.Array], jax.Array], k: jax.Array,
                 wide: bool = False) -> jax.Array:
  """Smallest bit pattern ``b`` with ``count_fn(b) >= k``, elementwise over groups.

  ``count_fn(b)`` maps a ``(G,)`` uint32 (``wide``: uint64) array of candidate
  thresholds to the ``(G,)`` int32 numbers of entries with ``bits <= b``; it
  must be monotone.
  """
  udt = jnp.uint64 if wide else jnp.uint32
  lo = jnp.zeros(k.shape, udt)
  hi = jnp.full(k.shape, _INF_BITS_64 if wide else _INF_BITS, udt)

  def body(_, carry):
    lo, hi = carry
    mid = lo + (hi - lo) // 2
    enough = count_fn(mid) >= k
    return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)

  _, hi = lax.fori_loop(0, _SEARCH_ITERS_64 if wide else _SEARCH_ITERS, body, (lo, hi))
  return hi


def _global_threshold_bits(leaves: Sequence[jax.Array], k) -> jax.Array:
  """Bits of the k-th smallest ``|x|`` over all leaves (scalar uint32); k >= 1."""
  # Flat 1-D reductions are markedly faster than N-D ones on XLA:CPU.
  leaves = [jnp.asarray(x) for x in leaves]
  wide = _is_wide(leaves)

  def count_fn(mid):  # mid: (1,)
    total = jnp.zeros((), jnp.int32)
    for x in leaves:
      total = total + jnp.sum(_abs_bits(x, wide) <= mid[0], dtype=jnp.int32)
    return total[None]

  return _search_bits(count_fn, jnp.reshape(jnp.asarray(k, jnp.int32), (1,)), wide)[0]


def _per_leaf_threshold_bits(leaves: Sequence[jax.Array], ks) -> jax.Array:
  """Bits of the k_i-th smallest ``|x_i|`` for every leaf, in one loop: ``(G,)``."""
  leaves = [jnp.asarray(x) for x in leaves]
  wide = _is_wide(leaves)

  def count_fn(mid):  # mid: (G,)
    return jnp.stack([
        jnp.sum(_abs_bits(x, wide) <= mid[i], dtype=jnp.int32) for i, x in enumerate(leaves)])

  return _search_bits(count_fn, jnp.stack([jnp.asarray(k, jnp.int32) for k in ks]), wide)


def _total_size(leaves) -> int:
  total = sum(int(np.prod(np.shape(x), dtype=np.int64)) for x in leaves)
  if total > _INT32_MAX:
    raise ValueError(
        f"at most 2**31 - 1 entries can share one threshold (int32 counts), got {total}")
  return total


def kth_smallest_abs(leaves: Sequence[jax.Array] | jax.Array, k) -> jax.Array:
  """The k-th smallest ``|x|`` (1-based) over all entries of ``leaves``, no sort.

  Binary search over the uint32 bit patterns of float32 magnitudes (uint64 of
  float64 when a leaf is 64-bit): 31 (63)
  iterations, each counting ``sum(|x| <= t)`` leaf by leaf (the leaves are never
  concatenated). ``x`` is pruned by ``|x| <= t`` and kept by ``|x| > t``.

  Args:
    leaves: an array or a list of arrays of any shapes and float dtypes.
    k: rank in ``[0, total]``, a Python int or a traced integer scalar. ``k = 0``
      returns ``-inf`` (so that ``|x| > t`` keeps everything).

  Returns:
    A float32 scalar (float64 when a leaf is 64-bit), one of the magnitudes,
    or ``-inf`` for k = 0.
    NaNs count as larger than ``+inf``; if ``k`` exceeds the number of non-NaN
    entries the result is ``+inf``.
  """
  if not isinstance(leaves, (list, tuple)):
    leaves = [leaves]
  total = _total_size(leaves)
  if _is_concrete(k):
    if isinstance(k, (bool, np.bool_)) or not (
        np.ndim(k) == 0 and float(k) == int(k) and 0 <= int(k) <= total):
      raise ValueError(f"k must be an integer in [0, {total}] (the number of entries), got {k!r}")
  fdt = jnp.float64 if _is_wide(leaves) else jnp.float32
  if _is_concrete(k) and int(k) == 0:
    return fdt(-jnp.inf)
  bits = _global_threshold_bits(leaves, k)
  t = lax.bitcast_convert_type(bits, fdt)
  return jnp.where(jnp.asarray(k) == 0, fdt(-jnp.inf), t)


def _keep(x, t_bits, k) -> jax.Array:
  keep = _abs_bits(x, t_bits.dtype == jnp.uint64) > t_bits
  if _is_concrete(k):
    return keep if int(k) > 0 else jnp.ones(jnp.shape(x), bool)
  return keep | (k == 0)


# ---------------------------------------------------------------------------
# Per-leaf sparsity targets.


def _check_distribution(distribution):
  if isinstance(distribution, str):
    if distribution not in DISTRIBUTIONS:
      raise ValueError(
          f"distribution must be one of {DISTRIBUTIONS} or a mapping "
          f"{{path_regex: sparsity}}, got {distribution!r}")
    return distribution
  if isinstance(distribution, Mapping):
    compiled = []
    for pattern, s in distribution.items():
      if not isinstance(pattern, str):
        raise ValueError(
            f"distribution keys must be path regex strings, got {pattern!r}")
      if not _is_concrete(s):
        raise ValueError(
            f"distribution[{pattern!r}] must be a concrete Python float in [0, 1), "
            "not a traced value")
      try:
        rx = re.compile(pattern)
      except re.error as e:
        raise ValueError(f"distribution key {pattern!r} is not a valid regex: {e}") from None
      compiled.append((rx, _check_sparsity(s, f"distribution[{pattern!r}]")))
    return compiled
  raise ValueError(
      f"distribution must be one of {DISTRIBUTIONS} or a mapping "
      f"{{path_regex: sparsity}}, got {distribution!r}")


def erk_densities(shapes: Sequence[Sequence[int]], sparsity: float) -> list[float]:
  """Erdős–Rényi-Kernel densities (Evci et al. 2020, "Rigging the Lottery").

  The density of layer ``l`` is ``eps * sum(shape_l) / prod(shape_l)`` with
  ``eps`` chosen so that the total density over all layers (weighted by their
  sizes) equals ``1 - sparsity``. Layers whose density would exceed 1 are made
  dense (density 1) and ``eps`` is recomputed for the others, repeating until no
  density exceeds 1. Scalar (0-d) and empty shapes are dense.

  Args:
    shapes: the layer shapes.
    sparsity: the overall target sparsity, a Python float in ``[0, 1)``.

  Returns:
    One density in ``(0, 1]`` per shape, as Python floats.
  """
  sparsity = _check_sparsity(sparsity)
  if not _is_concrete(sparsity):
    raise ValueError("sparsity must be a concrete number for erk_densities, got a traced value")
  sizes = [float(np.prod(s, dtype=np.float64)) for s in shapes]
  raw = [float(np.sum(s)) / n if n > 0 else 0.0 for s, n in zip(shapes, sizes)]
  budget = (1.0 - sparsity) * sum(sizes)
  # Empty and 0-d leaves have no ERK scale (sum(()) = 0): they stay dense.
  dense = [n == 0 or len(s) == 0 for s, n in zip(shapes, sizes)]
  while True:
    rest = budget - sum(n for n, d in zip(sizes, dense) if d)
    divisor = sum(r * n for r, n, d in zip(raw, sizes, dense) if not d)
    if divisor <= 0.0:
      break
    eps = rest / divisor
    over = [not d and eps * r > 1.0 for r, d in zip(raw, dense)]
    if not any(over):
      break
    dense = [d or o for d, o in zip(dense, over)]
  return [1.0 if d else eps * r for r, d in zip(raw, dense)]


def leaf_sparsities(params, sparsity, *, distribution="uniform",
                    filter_fn: tree_lib.FilterFn | None = None) -> Any:
  """Per-leaf target sparsities for the ``"uniform"``, ``"erk"`` and mapping
  distributions of :func:`magnitude`.

  Args:
    params: a parameter pytree.
    sparsity: target sparsity in ``[0, 1)``. For ``"uniform"`` it may be a traced
      scalar (it is returned as is for every selected leaf); ``"erk"`` and
      mappings compute per-leaf targets at trace time from the leaf shapes and
      need a concrete Python float.
    distribution: ``"uniform"``, ``"erk"`` or a mapping ``{path_regex: sparsity}``
      (first regex that ``re.search``-matches a leaf's path wins; leaves that
      match none use ``sparsity``). ``"global"`` has no per-leaf targets and is
      rejected.
    filter_fn: selects the leaves to prune; ``None`` means
      :func:`sparsejax.tree.kernels`.

  Returns:
    A pytree shaped like ``params`` with a sparsity (Python float, or the traced
    ``sparsity`` for ``"uniform"``) at selected leaves and ``None`` elsewhere.
  """
  dist = _check_distribution(distribution)
  if dist == "global":
    raise ValueError(
        "distribution='global' has one threshold over all leaves and no per-leaf "
        "sparsities; use magnitude(..., distribution='global')")
  sparsity = _check_sparsity(sparsity)
  if not _is_concrete(sparsity) and dist != "uniform":
    raise ValueError(
        f"sparsity must be a concrete Python float for distribution={distribution!r} "
        "(per-leaf targets are computed at trace time), got a traced value")
  selected = tree_lib.select(params, filter_fn)
  if dist == "uniform":
    return jax.tree.map(lambda sel: sparsity if sel else None, selected)
  if dist == "erk":
    sel_leaves = [x for sel, x in zip(jax.tree.leaves(selected), jax.tree.leaves(params)) if sel]
    densities = iter(erk_densities([np.shape(x) for x in sel_leaves], sparsity))
    return jax.tree.map(lambda sel: (1.0 - next(densities)) if sel else None, selected)

  def pick(path, sel):
    if not sel:
      return None
    p = tree_lib.path_str(path)
    for rx, s in dist:
      if rx.search(p) is not None:
        return s
    return sparsity
  return jax.tree_util.tree_map_with_path(pick, selected)


# ---------------------------------------------------------------------------
# Magnitude masks.


def magnitude_per_leaf(params, sparsities) -> Any:
  """Per-leaf magnitude masks: in each leaf prune its ``floor(s * n)`` smallest ``|w|``.

  All leaves' thresholds are found together in one 31-step bit-pattern search
  (no sort); see the module docstring for the tie rule.

  Args:
    params: a parameter pytree.
    sparsities: a pytree shaped like ``params`` (e.g. from
      :func:`leaf_sparsities`) holding a sparsity in ``[0, 1)`` (Python float or
      traced scalar) for each leaf to prune and ``None`` elsewhere.

  Returns:
    A masks pytree (bool arrays at leaves with a sparsity, ``None`` elsewhere).
  """
  try:
    pairs = jax.tree.map(tree_lib.LeafTuple, sparsities, params, is_leaf=_is_none)
  except (ValueError, TypeError) as e:
    raise ValueError(
        "sparsities must have the tree structure of params (None for leaves not "
        f"pruned): {e}") from None
  flat, treedef = jax.tree.flatten(pairs, is_leaf=lambda p: isinstance(p, tree_lib.LeafTuple))
  chosen = []
  for i, (s, x) in enumerate(flat):
    if s is None:
      continue
    s = _check_sparsity(s, "sparsities")
    chosen.append((i, x, num_to_prune(_total_size([x]), s)))
  out = [None] * len(flat)
  if chosen:
    bits = _per_leaf_threshold_bits([x for _, x, _ in chosen], [k for _, _, k in chosen])
    for j, (i, x, k) in enumerate(chosen):
      out[i] = _keep(x, bits[j], k)
  return jax.tree.unflatten(treedef, out)


def magnitude(params, sparsity, *, distribution="uniform",
              filter_fn: tree_lib.FilterFn | None = None) -> Any:
  """Magnitude-pruning masks: keep the largest ``|w|`` of the selected leaves.

  A leaf of ``n`` entries at sparsity ``s`` loses ``k = floor(s * n)`` entries
  (``"global"``: ``k = floor(s * total)`` over all selected leaves), by a
  sort-free exact threshold; ties at the threshold are all pruned (module
  docstring).

  Args:
    params: a parameter pytree.
    sparsity: fraction of zeros in ``[0, 1)``. May be a traced scalar for
      ``"uniform"`` and ``"global"``; ``"erk"`` and mappings need a Python float.
    distribution: how ``sparsity`` is spread over the selected leaves:
      ``"uniform"`` (each leaf at ``sparsity``), ``"erk"`` (Erdős–Rényi-Kernel,
      see :func:`erk_densities`), ``"global"`` (one threshold over all selected
      leaves) or a mapping ``{path_regex: sparsity}`` (first ``re.search`` match
      wins; unmatched leaves use ``sparsity``).
    filter_fn: selects the leaves to prune; ``None`` means
      :func:`sparsejax.tree.kernels`.

  Returns:
    A masks pytree: bool arrays (True = keep) at selected leaves, None elsewhere.
  """
  dist = _check_distribution(distribution)
  if dist != "global":
    return magnitude_per_leaf(
        params, leaf_sparsities(params, sparsity, distribution=distribution,
                                filter_fn=filter_fn))
  sparsity = _check_sparsity(sparsity)
  selected = tree_lib.select(params, filter_fn)
  leaves = [x for sel, x in zip(jax.tree.leaves(selected), jax.tree.leaves(params)) if sel]
  if not leaves:
    return jax.tree.map(lambda _: None, selected)
  k = num_to_prune(_total_size(leaves), sparsity)
  t_bits = None if (_is_concrete(k) and k == 0) else _global_threshold_bits(leaves, k)
  return tree_lib.map_selected(
      lambda x: _keep(x, t_bits, k) if t_bits is not None else jnp.ones(jnp.shape(x), bool),
      params, selected)


# ---------------------------------------------------------------------------
# Structured masks.


def _check_axis(axis, ndim: int, argname: str = "axis") -> int:
  if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
    raise ValueError(f"{argname} must be an int, got {axis!r}")
  if not -ndim <= axis < ndim:
    raise ValueError(f"{argname}={axis} is out of range for an array of ndim {ndim}")
  return int(axis) % ndim


def _check_int(value, argname: str) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ValueError(f"{argname} must be a Python int, got {value!r}")
  return int(value)


def n_by_m(x: jax.Array, n: int, m: int, axis: int = -1) -> jax.Array:
  """N:M mask: keep the ``n`` largest ``|x|`` in every ``m`` consecutive entries.

  Groups are ``m`` consecutive entries along ``axis`` (e.g. 2:4 sparsity with
  ``n=2, m=4``). **Ties** are broken by position: among equal magnitudes the
  entry with the lower index along ``axis`` is kept. NaNs count as the largest.

  Args:
    x: an array.
    n: entries kept per group, ``0 <= n <= m``.
    m: group size, ``m >= 1``; ``x.shape[axis]`` must be divisible by ``m``.
    axis: the grouped axis.

  Returns:
    A bool array of ``x``'s shape with exactly ``n`` True per group.
  """
  n = _check_int(n, "n")
  m = _check_int(m, "m")
  if m <= 0:
    raise ValueError(f"m must be a positive int, got m={m}")
  if not 0 <= n <= m:
    raise ValueError(f"n must be in [0, m] = [0, {m}], got n={n}")
  x = jnp.asarray(x)
  if x.ndim == 0:
    raise ValueError("x must have ndim >= 1 for an n:m mask, got a scalar")
  ax = _check_axis(axis, x.ndim)
  length = x.shape[ax]
  if length % m:
    raise ValueError(
        f"x.shape[axis] must be divisible by m: axis={axis} has length {length}, m={m}")
  if n == m:
    return jnp.ones(x.shape, bool)
  if n == 0:
    return jnp.zeros(x.shape, bool)
  moved = jnp.moveaxis(x, ax, -1)
  wide = _is_wide([moved])
  groups = _abs_bits(moved, wide).reshape(moved.shape[:-1] + (length // m, m))
  if m <= 32:
    # rank_i = #{j : |x_j| > |x_i| or (|x_j| == |x_i| and j < i)}; O(m^2), no sort.
    a = groups[..., :, None]   # i
    b = groups[..., None, :]   # j
    idx = jnp.arange(m)
    beats = (b > a) | ((b == a) & (idx[None, :] < idx[:, None]))
    rank = jnp.sum(beats, axis=-1)
  else:
    top = jnp.asarray(jnp.iinfo(groups.dtype).max, groups.dtype)
    order = jnp.argsort(top - groups, axis=-1, stable=True)
    rank = jnp.argsort(order, axis=-1)
  keep = (rank < n).reshape(moved.shape)
  return jnp.moveaxis(keep, -1, ax)


def _prune_lowest(scores: jax.Array, sparsity) -> jax.Array:
  """Keep-mask over ``scores`` (non-negative floats) pruning the floor(s*n) lowest."""
  k = num_to_prune(scores.size, sparsity)
  if _is_concrete(k) and k == 0:
    return jnp.ones(scores.shape, bool)
  bits = _global_threshold_bits([scores], k)
  return _keep(scores, bits, k)


def _block_view(shape: tuple[int, ...], block_shape) -> tuple[tuple[int, ...], tuple[int, ...]]:
  try:
    block_shape = tuple(int(b) for b in block_shape)
  except TypeError:
    raise ValueError(f"block_shape must be a sequence of ints, got {block_shape!r}") from None
  if len(block_shape) == len(shape):
    view = shape
  elif len(block_shape) == 2 and len(shape) > 2:
    view = (int(np.prod(shape[:-1])), shape[-1])
  else:
    raise ValueError(
        f"block_shape must have one entry per axis of x (x.shape={shape}) or length "
        f"2 for ndim > 2, got block_shape={block_shape}")
  if any(b <= 0 or d % b for d, b in zip(view, block_shape)):
    raise ValueError(
        f"block_shape {block_shape} does not tile x of shape {shape}"
        + (f" (viewed as {view})" if view != shape else "")
        + ": every block dimension must be positive and divide the array dimension")
  return view, block_shape


def block(x: jax.Array, sparsity, block_shape: Sequence[int], *, pool: str = "l2") -> jax.Array:
  """Block mask: prune the ``floor(sparsity * num_blocks)`` lowest-scoring blocks.

  The blocks tile ``x``. ``block_shape`` has one entry per axis of ``x``, or has
  length 2 when ``x.ndim > 2``; then ``x`` is viewed as the matrix
  ``(prod(shape[:-1]), shape[-1])`` (rows = all input positions flattened in
  C order, columns = output channels) and tiled in that view. Ties at the score
  threshold are all pruned, as in :func:`magnitude`.

  Args:
    x: an array.
    sparsity: fraction of blocks to prune in ``[0, 1)``; may be traced.
    block_shape: the block shape (see above).
    pool: block score: ``"l2"`` (Frobenius norm, ranked by its square), ``"l1"``
      (mean ``|x|``) or ``"max"`` (max ``|x|``).

  Returns:
    A bool array of ``x``'s shape, constant on every block.
  """
  if pool not in _POOLS:
    raise ValueError(f"pool must be one of {_POOLS}, got {pool!r}")
  sparsity = _check_sparsity(sparsity)
  x = jnp.asarray(x)
  view, bs = _block_view(tuple(x.shape), block_shape)
  grid = tuple(d // b for d, b in zip(view, bs))
  split = []
  for g, b in zip(grid, bs):
    split += [g, b]
  xb = jnp.abs(x.reshape(view).astype(jnp.float32)).reshape(split)
  inner = tuple(range(1, 2 * len(bs), 2))
  if pool == "l2":
    xb = pow2_normalized(xb)
    scores = jnp.sum(xb * xb, axis=inner)
  elif pool == "l1":
    scores = jnp.mean(xb, axis=inner)
  else:
    scores = jnp.max(xb, axis=inner)
  keep = _prune_lowest(scores, sparsity)
  expand = keep
  for i, b in enumerate(bs):
    expand = jnp.repeat(expand, b, axis=i)
  return expand.reshape(x.shape)


def channel(x: jax.Array, sparsity, *, axis: int = -1, ord=2) -> jax.Array:
  """Channel mask: zero the ``floor(sparsity * C)`` lowest-norm slices along ``axis``.

  The norm of channel ``c`` is taken over all other axes of ``x``. Ties at the
  norm threshold are all pruned, as in :func:`magnitude`.

  Args:
    x: an array with ``ndim >= 1``; ``C = x.shape[axis]``.
    sparsity: fraction of channels to prune in ``[0, 1)``; may be traced.
    axis: the channel axis (default: last, the output channels).
    ord: ``1``, ``2`` (ranked by the squared norm) or ``jnp.inf``/``"inf"`` (max).

  Returns:
    A bool array of ``x``'s shape that is constant on every channel slice.
  """
  if ord not in (1, 2, np.inf, "inf"):
    raise ValueError(f"ord must be 1, 2 or inf, got {ord!r}")
  sparsity = _check_sparsity(sparsity)
  x = jnp.asarray(x)
  if x.ndim == 0:
    raise ValueError("x must have ndim >= 1 for a channel mask, got a scalar")
  ax = _check_axis(axis, x.ndim)
  a = jnp.abs(x.astype(jnp.float32))
  others = tuple(i for i in range(x.ndim) if i != ax)
  if ord == 1:
    scores = jnp.sum(a, axis=others)
  elif ord == 2:
    a = pow2_normalized(a)
    scores = jnp.sum(a * a, axis=others)
  else:
    scores = jnp.max(a, axis=others, initial=0.0)
  keep = _prune_lowest(scores, sparsity)
  shape = [1] * x.ndim
  shape[ax] = x.shape[ax]
  return jnp.broadcast_to(keep.reshape(shape), x.shape)


def structured(params, fn: Callable[[jax.Array], jax.Array],
               filter_fn: tree_lib.FilterFn | None = None) -> Any:
  """Applies a per-leaf mask function to the selected leaves of ``params``.

  Example: ``structured(params, functools.partial(n_by_m, n=2, m=4))`` or
  ``structured(params, lambda w: channel(w, 0.5))``.

  Args:
    params: a parameter pytree.
    fn: ``fn(leaf) -> bool array of leaf's shape``.
    filter_fn: selects the leaves; ``None`` means :func:`sparsejax.tree.kernels`.

  Returns:
    A masks pytree (``fn(leaf)`` at selected leaves, ``None`` elsewhere).
  """
  if not callable(fn):
    raise ValueError(f"fn must be callable leaf -> bool mask, got {fn!r}")
  return tree_lib.map_selected(fn, params, tree_lib.select(params, filter_fn))


def apply(params, masks) -> Any:
  """Sets masked-out entries to exactly 0 (positive zero) in the masked leaves.

  Leaves with a ``None`` mask are returned unchanged.

  Args:
    params: a parameter pytree.
    masks: a masks pytree mirroring ``params`` (bool arrays or ``None``).

  Returns:
    ``params`` with ``where(mask, p, 0)`` at masked leaves, dtypes preserved.

  Raises:
    ValueError: if ``masks`` does not match ``params`` in structure or shapes.
  """
  tree_lib.check_masks_match(params, masks)
  return jax.tree.map(
      lambda m, p: p if m is None else jnp.where(jnp.asarray(m, bool), p, jnp.zeros((), p.dtype)),
      masks, params, is_leaf=_is_none)


# ---------------------------------------------------------------------------
# Reporting (host-side).


def summary(params, masks=None) -> dict:
  """Per-layer and total sparsity report, as Python numbers. Syncs with the host.

  This is a reporting function: it pulls every leaf to the host (call it outside
  jitted steps). Zeros are counted on ``apply(params, masks)`` when ``masks`` is
  given, else as exact zeros in ``params``.

  Args:
    params: a parameter pytree.
    masks: optional masks pytree.

  Returns:
    ``{"layers": [...], "total": {...}}``. One layer per array leaf with
    ``ndim >= 1`` (flattening order): ``path``, ``shape``, ``params`` (size),
    ``zeros``, ``density`` (nonzeros / size), ``zero_channels`` (all-zero slices
    along the last axis; 0 for 1-D leaves) and ``channels`` (``shape[-1]`` for
    ``ndim >= 2``, else 0). ``total`` sums over those layers: ``params``,
    ``zeros``, ``density`` and ``sparsity`` (zeros / params).
  """
  if masks is not None:
    params = apply(params, masks)
  layers = []
  for path, leaf in tree_lib.leaves_with_paths(params):
    if not (hasattr(leaf, "shape") and hasattr(leaf, "dtype")) or len(leaf.shape) < 1:
      continue
    a = np.asarray(jax.device_get(leaf))
    size = int(a.size)
    zeros = int(size - np.count_nonzero(a))
    if a.ndim >= 2:
      zero_channels = int(np.sum(_util.zero_channels(a)))
      channels = int(a.shape[-1])
    else:
      zero_channels, channels = 0, 0
    layers.append({
        "path": path, "shape": tuple(int(d) for d in a.shape), "params": size,
        "zeros": zeros, "density": (size - zeros) / size if size else 1.0,
        "zero_channels": zero_channels, "channels": channels})
  total_params = sum(l["params"] for l in layers)
  total_zeros = sum(l["zeros"] for l in layers)
  density = (total_params - total_zeros) / total_params if total_params else 1.0
  sparsity = total_zeros / total_params if total_params else 0.0
  return {"layers": layers,
          "total": {"params": total_params, "zeros": total_zeros,
                    "density": density, "sparsity": sparsity}}


def format_summary(summary_dict: dict) -> str:
  """Renders :func:`summary`'s dict as an aligned text table with a total row."""
  header = ("path", "shape", "params", "zeros", "density", "zero ch")
  rows = []
  for l in summary_dict["layers"]:
    ch = f"{l['zero_channels']}/{l['channels']}" if l["channels"] else "-"
    rows.append((l["path"], "x".join(str(d) for d in l["shape"]), f"{l['params']:,}",
                 f"{l['zeros']:,}", f"{l['density']:.4f}", ch))
  t = summary_dict["total"]
  total = ("total", "", f"{t['params']:,}", f"{t['zeros']:,}", f"{t['density']:.4f}",
           f"{sum(l['zero_channels'] for l in summary_dict['layers'])}/"
           f"{sum(l['channels'] for l in summary_dict['layers'])}")
  widths = [max(len(r[i]) for r in [header, total] + rows) for i in range(len(header))]
  left = {0, 1}

  def fmt(r):
    return "  ".join(c.ljust(w) if i in left else c.rjust(w)
                     for i, (c, w) in enumerate(zip(r, widths))).rstrip()
  rule = "-" * len(fmt(tuple("-" * w for w in widths)))
  return "\n".join([fmt(header), rule] + [fmt(r) for r in rows] + [rule, fmt(total)])
