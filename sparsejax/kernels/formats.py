"""Sparse weight formats for ``x @ W`` with ``W`` of shape ``(K, N)`` = (in, out).

Three formats, all registered pytrees whose array fields are leaves (values
and indices) and whose structure is static metadata (shapes, block shapes,
per-block counts), so they pass through ``jax.jit``, ``jax.grad`` and Flax
NNX like any parameter:

* :class:`BlockSparse` -- block compressed sparse storage grouped by *output
  block*: the non-zero ``(bk, bn)`` blocks of ``W`` are stored column block
  by column block (ascending), and within one column block by ascending row
  block. In the ``(out, in)`` orientation of a PyTorch-style weight ``W.T``
  this is exactly BSR (block compressed sparse rows) of ``W.T``; every output
  block of ``x @ W`` is the sum of the products of its own stored blocks.
  The number of stored blocks per output block (``counts``) is static
  metadata -- it fixes every shape a kernel needs -- while *which* row blocks
  are stored (``indices``) is an ``int32`` array the kernels read at run time.
* :class:`BalancedBlockSparse` -- the load-balanced special case: every output
  block holds the same number ``L`` of stored blocks, laid out as a dense
  ``(N // bn, L)`` ELL table without padding, so every program of a kernel
  does the same amount of work (the "gather-scatter" layout). Its flat view
  is a :class:`BlockSparse` (:meth:`BalancedBlockSparse.to_block_sparse`) at
  no cost.
* :class:`NMSparse` -- N:M sparsity: in every group of ``m`` consecutive
  entries along ``axis`` at most ``n`` are non-zero; stored as ``n`` values
  per group plus their in-group positions (``uint8``). ``axis=0`` groups
  along the reduction dimension ``K`` (the layout of sparse tensor cores,
  e.g. 2:4); ``axis=1`` groups along the output dimension ``N`` (the default
  axis of :func:`sparsejax.masks.n_by_m`).

Every format is built from a dense weight plus a boolean mask as produced by
:mod:`sparsejax.masks` (``from_dense``) and turned back with ``to_dense``.
The format represents ``where(mask, w, 0)``: entries outside the mask are
dropped. A mask that does not fit the format (a partially kept block, unequal
counts for the balanced format, a group with more than ``n`` kept entries)
raises ``ValueError`` naming the first offending block or group. Masks must
be concrete (not traced): they decide the shapes. Values may be traced.

Example:
  >>> import numpy as np, jax.numpy as jnp
  >>> from sparsejax import masks
  >>> w = jnp.asarray(np.arange(64.0).reshape(8, 8))
  >>> m = masks.block(w, 0.5, (4, 4))  # keeps the 2 largest of 4 blocks
  >>> bsr = BlockSparse.from_dense(w, m, (4, 4))
  >>> bsr.counts, bsr.indices.tolist()
  ((1, 1), [1, 1])
  >>> bool(jnp.all(bsr.to_dense() == jnp.where(m, w, 0)))
  True
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, Union

import jax
import jax.numpy as jnp
import numpy as np

from sparsejax import masks as masks_lib
from sparsejax.kernels import cpu

__all__ = [
    "BlockSparse",
    "BalancedBlockSparse",
    "NMSparse",
    "SparseFormat",
    "balanced_block_mask",
    "to_dense",
]

# Largest group size an NMSparse index fits: positions 0..m-1 plus the
# "unused slot" sentinel m must fit in a uint8.
_MAX_M = 255


# ---------------------------------------------------------------------------
# Argument checks (shared with the kernels).


def _check_pos_int(value: Any, argname: str) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{argname} must be a positive int, got {value!r}")
  return int(value)


def _check_pair(value: Any, argname: str) -> tuple[int, int]:
  if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
    raise ValueError(f"{argname} must be a pair of positive ints, got {value!r}")
  return (_check_pos_int(value[0], f"{argname}[0]"), _check_pos_int(value[1], f"{argname}[1]"))


def _check_matrix(w: Any, argname: str = "w") -> jax.Array:
  w = jnp.asarray(w)
  if w.ndim != 2:
    raise ValueError(f"{argname} must be a 2-D (in, out) weight, got shape {w.shape}")
  if not jnp.issubdtype(w.dtype, jnp.inexact):
    raise TypeError(f"{argname} must have a floating dtype, got {w.dtype}")
  return w


def _check_block_shape(shape: tuple[int, int], block_shape: Any) -> tuple[int, int]:
  bk, bn = _check_pair(block_shape, "block_shape")
  if shape[0] % bk or shape[1] % bn:
    raise ValueError(
        f"block_shape {(bk, bn)} does not tile a weight of shape {shape}: "
        f"both block dimensions must divide the weight dimensions")
  return bk, bn


def _concrete_mask(mask: Any, shape: tuple[int, ...]) -> np.ndarray:
  if isinstance(mask, jax.core.Tracer):
    raise ValueError(
        "mask must be concrete (a NumPy or JAX array outside jit), got a traced value: "
        "the mask decides the shapes of a sparse format")
  mask = np.asarray(mask)
  if mask.dtype != np.bool_:
    raise TypeError(f"mask must be a bool array (True = keep), got dtype {mask.dtype}")
  if mask.shape != tuple(shape):
    raise ValueError(f"mask must have the weight's shape {tuple(shape)}, got {mask.shape}")
  return mask


def _block_grid(mask: np.ndarray, block_shape: tuple[int, int]) -> np.ndarray:
  """Kept-block grid ``(K // bk, N // bn)``; raises on a partially kept block."""
  (K, N), (bk, bn) = mask.shape, block_shape
  nb, nc = K // bk, N // bn
  per_block = mask.reshape(nb, bk, nc, bn).sum(axis=(1, 3))
  partial = (per_block > 0) & (per_block < bk * bn)
  if partial.any():
    r, c = np.argwhere(partial)[0]
    raise ValueError(
        f"mask does not fit block_shape {block_shape}: block ({r}, {c}) covering "
        f"w[{r * bk}:{(r + 1) * bk}, {c * bn}:{(c + 1) * bn}] keeps {per_block[r, c]} of "
        f"{bk * bn} entries ({int(partial.sum())} such blocks); a block-sparse mask must keep "
        f"or drop whole blocks (see sparsejax.masks.block or balanced_block_mask)")
  return per_block > 0


def _blocks_of(w: jax.Array, block_shape: tuple[int, int]) -> jax.Array:
  """``(nb, nc, bk, bn)`` view of the blocks of ``w``."""
  (K, N), (bk, bn) = w.shape, block_shape
  return w.reshape(K // bk, bk, N // bn, bn).transpose(0, 2, 1, 3)


def _is_array(x: Any) -> bool:
  return isinstance(x, (jax.Array, np.ndarray))


def _check_ascending_rows(indices: np.ndarray, indptr: np.ndarray, nb: int) -> None:
  """Row-block indices in ``[0, nb)`` and strictly ascending within each output block."""
  if indices.size == 0:
    return
  if indices.min() < 0 or indices.max() >= nb:
    raise ValueError(f"indices must be row-block indices in [0, K // bk = {nb}), got values "
                     f"in [{indices.min()}, {indices.max()}]")
  step = np.diff(indices)
  starts = np.zeros(indices.size, bool)
  starts[np.asarray(indptr[:-1])[np.asarray(indptr[:-1]) < indices.size]] = True
  bad = np.nonzero((step <= 0) & ~starts[1:])[0]
  if bad.size:
    i = int(bad[0]) + 1
    raise ValueError(f"indices must be strictly ascending within each output block (no "
                     f"repeated row block), got {int(indices[i - 1])} then {int(indices[i])} "
                     f"at stored blocks {i - 1} and {i}")


# ---------------------------------------------------------------------------
# Block-sparse formats.


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=("data", "indices"),
    meta_fields=("shape", "block_shape", "counts"))
@dataclasses.dataclass(frozen=True)
class BlockSparse:
  """Block-sparse weight, stored by output block (BSR of ``W.T``).

  Attributes:
    data: ``(nnz_blocks, bk, bn)`` the stored blocks, grouped by column block
      ``j = 0, 1, ...`` and by ascending row block within a column block.
    indices: ``(nnz_blocks,)`` ``int32`` row-block index (input block) of each
      stored block.
    shape: static ``(K, N)`` dense shape.
    block_shape: static ``(bk, bn)``.
    counts: static tuple of ``N // bn`` ints, the number of stored blocks of
      each column block (output block); the stored blocks of column block
      ``j`` are ``data[indptr[j]:indptr[j + 1]]``.
  """

  data: jax.Array
  indices: jax.Array
  shape: tuple[int, int]
  block_shape: tuple[int, int]
  counts: tuple[int, ...]

  # -- static structure --------------------------------------------------
  @property
  def grid(self) -> tuple[int, int]:
    """``(K // bk, N // bn)``: row blocks and column (output) blocks."""
    return (self.shape[0] // self.block_shape[0], self.shape[1] // self.block_shape[1])

  @property
  def nnz_blocks(self) -> int:
    return int(sum(self.counts))

  @property
  def indptr(self) -> np.ndarray:
    """``(N // bn + 1,)`` offsets of each column block's stored blocks."""
    return np.concatenate([[0], np.cumsum(self.counts, dtype=np.int64)]).astype(np.int32)

  @property
  def block_cols(self) -> np.ndarray:
    """``(nnz_blocks,)`` column-block index of each stored block (static)."""
    return np.repeat(np.arange(len(self.counts), dtype=np.int32), self.counts)

  @property
  def density(self) -> float:
    """Fraction of blocks stored."""
    nb, nc = self.grid
    return self.nnz_blocks / (nb * nc)

  @property
  def dtype(self):
    return self.data.dtype

  # -- conversions -------------------------------------------------------
  @classmethod
  def from_dense(cls, w: jax.Array, mask: Any, block_shape: Sequence[int]) -> BlockSparse:
    """Builds the format of ``where(mask, w, 0)``.

    Args:
      w: ``(K, N)`` dense weight (may be traced).
      mask: concrete bool array of ``w``'s shape that keeps or drops whole
        ``block_shape`` blocks (e.g. :func:`sparsejax.masks.block`).
      block_shape: ``(bk, bn)``, each dividing the matching dimension of ``w``.

    Returns:
      A :class:`BlockSparse` with one stored block per kept block.

    Raises:
      ValueError: bad shapes, or a block that is only partly kept.
    """
    w = _check_matrix(w)
    bs = _check_block_shape(tuple(w.shape), block_shape)
    grid = _block_grid(_concrete_mask(mask, w.shape), bs)
    cols, rows = np.nonzero(grid.T)  # column-major: sorted by column, then row
    counts = tuple(int(c) for c in np.bincount(cols, minlength=grid.shape[1]))
    data = _blocks_of(w, bs)[rows, cols]
    return cls(data=data, indices=jnp.asarray(rows, jnp.int32), shape=tuple(w.shape),
               block_shape=bs, counts=counts)

  def to_dense(self) -> jax.Array:
    """The ``(K, N)`` dense weight (zeros outside the stored blocks)."""
    self.check()
    (nb, nc), (bk, bn) = self.grid, self.block_shape
    blocks = jnp.zeros((nb, nc, bk, bn), self.data.dtype)
    blocks = blocks.at[self.indices, self.block_cols].set(self.data)
    return blocks.transpose(0, 2, 1, 3).reshape(self.shape)

  def check(self) -> BlockSparse:
    """Validates static metadata against the array shapes; returns ``self``."""
    shape = _check_pair(self.shape, "shape")
    bs = _check_block_shape(shape, self.block_shape)
    nc = shape[1] // bs[1]
    if len(self.counts) != nc:
      raise ValueError(f"counts must have N // bn = {nc} entries, got {len(self.counts)}")
    if any(c < 0 or c > shape[0] // bs[0] for c in self.counts):
      raise ValueError(f"counts must lie in [0, K // bk = {shape[0] // bs[0]}], got {self.counts}")
    nnz = self.nnz_blocks
    if _is_array(self.data) and tuple(self.data.shape) != (nnz, *bs):
      raise ValueError(f"data must have shape {(nnz, *bs)} (nnz_blocks, bk, bn), "
                       f"got {tuple(self.data.shape)}")
    if _is_array(self.indices):
      if tuple(self.indices.shape) != (nnz,):
        raise ValueError(f"indices must have shape {(nnz,)}, got {tuple(self.indices.shape)}")
      if not jnp.issubdtype(self.indices.dtype, jnp.integer):
        raise TypeError(f"indices must be integers, got {self.indices.dtype}")
      if not isinstance(self.indices, jax.core.Tracer):  # values: eagerly, on the host
        _check_ascending_rows(np.asarray(self.indices), self.indptr, shape[0] // bs[0])
    return self

  def with_data(self, data: jax.Array) -> BlockSparse:
    """The same structure with new block values."""
    return dataclasses.replace(self, data=data)


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=("data", "indices"),
    meta_fields=("shape", "block_shape"))
@dataclasses.dataclass(frozen=True)
class BalancedBlockSparse:
  """Load-balanced block-sparse weight: every output block stores ``L`` blocks.

  An ELL table without padding: output (column) block ``j`` is the sum of
  ``x[:, rows] @ data[j, t]`` over its ``L`` stored blocks ``t``, with
  ``rows`` the ``indices[j, t]``-th row block. Every kernel program does the
  same work. Build a fitting mask with :func:`balanced_block_mask`.

  Attributes:
    data: ``(N // bn, L, bk, bn)`` stored blocks.
    indices: ``(N // bn, L)`` ``int32`` row-block indices, ascending per row.
    shape: static ``(K, N)``.
    block_shape: static ``(bk, bn)``.
  """

  data: jax.Array
  indices: jax.Array
  shape: tuple[int, int]
  block_shape: tuple[int, int]

  @property
  def grid(self) -> tuple[int, int]:
    return (self.shape[0] // self.block_shape[0], self.shape[1] // self.block_shape[1])

  @property
  def blocks_per_output(self) -> int:
    """``L``, the number of stored blocks of every output block."""
    return int(self.data.shape[1])

  @property
  def nnz_blocks(self) -> int:
    return self.grid[1] * self.blocks_per_output

  @property
  def density(self) -> float:
    return self.blocks_per_output / self.grid[0]

  @property
  def dtype(self):
    return self.data.dtype

  @classmethod
  def from_dense(cls, w: jax.Array, mask: Any,
                 block_shape: Sequence[int]) -> BalancedBlockSparse:
    """Builds the format of ``where(mask, w, 0)``.

    Args:
      w: ``(K, N)`` dense weight (may be traced).
      mask: concrete bool array of ``w``'s shape keeping whole blocks, the same
        number in every column block (e.g. :func:`balanced_block_mask`).
      block_shape: ``(bk, bn)``.

    Raises:
      ValueError: bad shapes, a partly kept block, or column blocks that keep
        different numbers of blocks.
    """
    w = _check_matrix(w)
    bs = _check_block_shape(tuple(w.shape), block_shape)
    grid = _block_grid(_concrete_mask(mask, w.shape), bs)
    counts = grid.sum(axis=0)
    if counts.min() != counts.max():
      lo, hi = int(np.argmin(counts)), int(np.argmax(counts))
      raise ValueError(
          f"mask does not fit the load-balanced format: output blocks keep different "
          f"numbers of blocks (column block {lo} keeps {counts[lo]}, column block {hi} keeps "
          f"{counts[hi]}); use balanced_block_mask, or BlockSparse for uneven masks")
    L = int(counts[0])
    cols, rows = np.nonzero(grid.T)
    rows = rows.reshape(grid.shape[1], L)
    cols = cols.reshape(grid.shape[1], L)
    data = _blocks_of(w, bs)[rows, cols]
    return cls(data=data, indices=jnp.asarray(rows, jnp.int32), shape=tuple(w.shape),
               block_shape=bs)

  def to_block_sparse(self) -> BlockSparse:
    """The same weight as a :class:`BlockSparse` (a reshape; no copy)."""
    self.check()
    nc, L = self.grid[1], self.blocks_per_output
    return BlockSparse(data=self.data.reshape(nc * L, *self.block_shape),
                       indices=self.indices.reshape(nc * L), shape=self.shape,
                       block_shape=self.block_shape, counts=(L,) * nc)

  def to_dense(self) -> jax.Array:
    return self.to_block_sparse().to_dense()

  def check(self) -> BalancedBlockSparse:
    shape = _check_pair(self.shape, "shape")
    bs = _check_block_shape(shape, self.block_shape)
    nb, nc = shape[0] // bs[0], shape[1] // bs[1]
    if _is_array(self.data):
      if self.data.ndim != 4 or tuple(self.data.shape[::2]) != (nc, bs[0]) \
          or self.data.shape[3] != bs[1] or self.data.shape[1] > nb:
        raise ValueError(f"data must have shape (N // bn, L, bk, bn) = ({nc}, L, {bs[0]}, "
                         f"{bs[1]}) with L <= {nb}, got {tuple(self.data.shape)}")
    if _is_array(self.indices) and _is_array(self.data):
      if tuple(self.indices.shape) != tuple(self.data.shape[:2]):
        raise ValueError(f"indices must have shape {tuple(self.data.shape[:2])}, "
                         f"got {tuple(self.indices.shape)}")
      if not jnp.issubdtype(self.indices.dtype, jnp.integer):
        raise TypeError(f"indices must be integers, got {self.indices.dtype}")
      if not isinstance(self.indices, jax.core.Tracer):  # values: eagerly, on the host
        L = self.indices.shape[1]
        _check_ascending_rows(np.asarray(self.indices).reshape(-1),
                              np.arange(0, nc * L + 1, max(L, 1))[:nc + 1], nb)
    return self

  def with_data(self, data: jax.Array) -> BalancedBlockSparse:
    return dataclasses.replace(self, data=data)


def balanced_block_mask(w: jax.Array, sparsity: float, block_shape: Sequence[int], *,
                        pool: str = "l2") -> jax.Array:
  """Block mask that keeps the same number of blocks in every output block.

  In each column block (output block) of ``w`` the ``floor(sparsity * nb)``
  lowest-scoring of its ``nb = K // bk`` blocks are pruned (the counting rule
  of :mod:`sparsejax.masks`); ties are broken by position (the lower row block
  is kept). The result fits :class:`BalancedBlockSparse`.

  Args:
    w: ``(K, N)`` weight.
    sparsity: fraction of blocks to prune per column block, in ``[0, 1)``
      (a Python float).
    block_shape: ``(bk, bn)``.
    pool: block score, ``"l2"`` (Frobenius norm), ``"l1"`` (mean ``|w|``) or
      ``"max"``.

  Returns:
    A bool array of ``w``'s shape, constant on every block.
  """
  w = _check_matrix(w)
  bs = _check_block_shape(tuple(w.shape), block_shape)
  if pool not in ("l2", "l1", "max"):
    raise ValueError(f"pool must be one of ('l2', 'l1', 'max'), got {pool!r}")
  if (isinstance(sparsity, (bool, str, bytes, jax.core.Tracer)) or np.ndim(sparsity) != 0
      or not 0.0 <= float(sparsity) < 1.0):
    raise ValueError(f"sparsity must be a concrete number in [0, 1), got {sparsity!r}")
  nb = w.shape[0] // bs[0]
  k = masks_lib.num_to_prune(nb, sparsity)
  a = jnp.abs(_blocks_of(w, bs).astype(jnp.float32))
  if pool == "l2":
    a = masks_lib.pow2_normalized(a)
    scores = jnp.sum(a * a, axis=(2, 3))
  elif pool == "l1":
    scores = jnp.mean(a, axis=(2, 3))
  else:
    scores = jnp.max(a, axis=(2, 3))
  # Rank within each column: stable descending sort keeps the lower row first.
  # NaN ranks as +inf (never pruned first), as in sparsejax.masks.
  scores = jnp.where(jnp.isnan(scores), jnp.inf, scores)
  order = jnp.argsort(-scores, axis=0, stable=True)
  rank = jnp.argsort(order, axis=0)
  keep = rank < nb - k
  return jnp.repeat(jnp.repeat(keep, bs[0], axis=0), bs[1], axis=1)


# ---------------------------------------------------------------------------
# N:M.


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=("values", "indices"),
    meta_fields=("shape", "n", "m", "axis"))
@dataclasses.dataclass(frozen=True)
class NMSparse:
  """N:M-sparse weight: at most ``n`` non-zeros in every ``m`` consecutive entries.

  Groups run along ``axis`` of the ``(K, N)`` weight. Slot ``t < n`` of a group
  stores a value and its position in the group (``0 <= index < m``); a group
  with fewer than ``n`` kept entries fills the rest with value 0 and index
  ``m`` ("unused", never written, gets no gradient). Kept positions are
  stored in ascending order.

  Attributes:
    values: ``(n, K // m, N)`` for ``axis=0``; ``(n, K, N // m)`` for ``axis=1``.
    indices: ``uint8`` positions, same shape as ``values``.
    shape: static ``(K, N)``.
    n: static kept entries per group.
    m: static group size (``1 <= m <= 255``).
    axis: static grouped axis, 0 (the reduction dimension ``K``) or 1.
  """

  values: jax.Array
  indices: jax.Array
  shape: tuple[int, int]
  n: int
  m: int
  axis: int

  @property
  def dtype(self):
    return self.values.dtype

  @property
  def density(self) -> float:
    return self.n / self.m

  @classmethod
  def from_dense(cls, w: jax.Array, mask: Any, n: int, m: int, *, axis: int = 0) -> NMSparse:
    """Builds the format of ``where(mask, w, 0)``.

    Args:
      w: ``(K, N)`` dense weight (may be traced).
      mask: concrete bool array of ``w``'s shape keeping at most ``n`` of every
        ``m`` consecutive entries along ``axis`` (e.g.
        ``sparsejax.masks.n_by_m(w, n, m, axis=axis)``).
      n: kept entries per group, ``0 <= n <= m``.
      m: group size, ``1 <= m <= 255``; must divide ``w.shape[axis]``.
      axis: 0 (groups along ``K``, the reduction dimension) or 1 (along ``N``).

    Raises:
      ValueError: bad arguments, or a group with more than ``n`` kept entries.
    """
    w = _check_matrix(w)
    n, m, axis = _check_nm(n, m, axis, tuple(w.shape))
    mask = _concrete_mask(mask, w.shape)
    K, N = w.shape
    # Canonical view (G, m, C): groups g, in-group position r, other axis c.
    if axis == 0:
      mg, wg = mask.reshape(K // m, m, N), w.reshape(K // m, m, N)
    else:
      mg = mask.reshape(K, N // m, m).transpose(1, 2, 0)
      wg = w.reshape(K, N // m, m).transpose(1, 2, 0)
    kept = mg.sum(axis=1)
    if kept.max(initial=0) > n:
      g, c = np.argwhere(kept > n)[0]
      where = (f"w[{g * m}:{(g + 1) * m}, {c}]" if axis == 0 else f"w[{c}, {g * m}:{(g + 1) * m}]")
      raise ValueError(
          f"mask does not fit {n}:{m} sparsity along axis {axis}: the group {where} keeps "
          f"{kept[g, c]} entries, more than n={n} ({int((kept > n).sum())} such groups; see "
          f"sparsejax.masks.n_by_m(w, {n}, {m}, axis={axis}))")
    # Kept positions first, ascending; then unused positions.
    key = np.where(mg, 0, m) + np.arange(m)[None, :, None]
    pos = np.argsort(key, axis=1, kind="stable")[:, :n]               # (G, n, C)
    slot_kept = np.take_along_axis(mg, pos, axis=1)
    idx = np.where(slot_kept, pos, m).astype(np.uint8)
    vals = jnp.take_along_axis(wg, jnp.asarray(pos), axis=1)
    vals = jnp.where(jnp.asarray(slot_kept), vals, jnp.zeros((), w.dtype))
    # Stored as (n, G, C) for axis 0 and (n, K, N // m) for axis 1.
    if axis == 0:
      values, indices = vals.transpose(1, 0, 2), idx.transpose(1, 0, 2)
    else:
      values, indices = vals.transpose(1, 2, 0), idx.transpose(1, 2, 0)
    return cls(values=values, indices=jnp.asarray(indices), shape=(K, N), n=n, m=m, axis=axis)

  def to_dense(self) -> jax.Array:
    """The ``(K, N)`` dense weight."""
    self.check()
    return cpu.nm_decompress(self.values, self.indices, shape=self.shape, m=self.m,
                             axis=self.axis)

  def check(self) -> NMSparse:
    shape = _check_pair(self.shape, "shape")
    n, m, axis = _check_nm(self.n, self.m, self.axis, shape)
    K, N = shape
    want = (n, K // m, N) if axis == 0 else (n, K, N // m)
    for name in ("values", "indices"):
      arr = getattr(self, name)
      if _is_array(arr) and tuple(arr.shape) != want:
        raise ValueError(f"{name} must have shape {want} for {n}:{m} along axis {axis} of "
                         f"a {shape} weight, got {tuple(arr.shape)}")
    if _is_array(self.indices):
      if not jnp.issubdtype(self.indices.dtype, jnp.integer):
        raise TypeError(f"indices must be integers, got {self.indices.dtype}")
      if not isinstance(self.indices, jax.core.Tracer):  # values: eagerly, on the host
        _check_nm_positions(np.asarray(self.indices), m)
    return self

  def with_values(self, values: jax.Array) -> NMSparse:
    return dataclasses.replace(self, values=values)


def _check_nm_positions(indices: np.ndarray, m: int) -> None:
  """In-group positions in [0, m], used ones strictly ascending, unused (m) last.

  The implementations differ on anything else (a repeated position is
  overwritten by one and summed by another; an out-of-range one is dropped).
  """
  idx = indices.astype(np.int64)
  if idx.size == 0:
    return
  if idx.min() < 0 or idx.max() > m:
    raise ValueError(f"indices must be in-group positions in [0, m = {m}] (m: unused slot), "
                     f"got values in [{idx.min()}, {idx.max()}]")
  ok = (idx[1:] == m) | (idx[1:] > idx[:-1])
  if not ok.all():
    t, *where = (int(v) for v in np.argwhere(~ok)[0])
    raise ValueError(f"indices must hold each group's used positions strictly ascending, then "
                     f"unused slots (m = {m}); group {tuple(where)} has {int(idx[t][tuple(where)])} "
                     f"in slot {t} and {int(idx[t + 1][tuple(where)])} in slot {t + 1}")


def _check_nm(n: Any, m: Any, axis: Any, shape: tuple[int, int]) -> tuple[int, int, int]:
  m = _check_pos_int(m, "m")
  if m > _MAX_M:
    raise ValueError(f"m must be at most {_MAX_M} (uint8 in-group indices), got m={m}")
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 <= n <= m:
    raise ValueError(f"n must be an int in [0, m] = [0, {m}], got n={n!r}")
  if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or axis not in (0, 1):
    raise ValueError(f"axis must be 0 (groups along K) or 1 (groups along N), got {axis!r}")
  if shape[axis] % m:
    raise ValueError(f"m={m} must divide the grouped dimension: axis {axis} of shape "
                     f"{shape} has length {shape[axis]}")
  return int(n), m, int(axis)


SparseFormat = Union[BlockSparse, BalancedBlockSparse, NMSparse]


def to_dense(w: SparseFormat) -> jax.Array:
  """The dense ``(K, N)`` weight of any sparse format."""
  if not isinstance(w, (BlockSparse, BalancedBlockSparse, NMSparse)):
    raise TypeError(f"w must be a BlockSparse, BalancedBlockSparse or NMSparse, got {type(w)}")
  return w.to_dense()
