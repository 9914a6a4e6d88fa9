r"""XLA implementations of the sparse matmuls: the default path on the CPU.

Pallas kernels only run interpreted on a CPU, so :func:`bsr_matmul` and
:func:`nm_matmul` use these plain-XLA versions there (``impl="xla"``). They
are also the backward pass of every implementation.

Block-sparse, bucketed ELL
--------------------------
For ``y = x @ W`` with ``W`` stored by output block, output block ``j`` is

.. math::

   y_{:, j} = \sum_{t < c_j} x_{:, r_{j,t}} \, D_{j,t}
            = \big[x_{:, r_{j,0}} \,\big|\, \cdots \,\big|\, x_{:, r_{j,c_j-1}}\big]
              \begin{bmatrix} D_{j,0} \\ \vdots \\ D_{j,c_j-1} \end{bmatrix},

one matmul of ``(B, c_j * bk) @ (c_j * bk, bn)`` per output block after
gathering its ``c_j`` row blocks of ``x`` side by side. Output blocks with the
same count ``c`` form one *bucket*, computed by one gather and one batched
``dot_general`` (batch = the bucket's output blocks). The counts are static
metadata of :class:`~sparsejax.kernels.BlockSparse`, so buckets have static
shapes and no work is spent on padding: a padded ELL table (one bucket of
width ``max_j c_j``) wastes ``max c / mean c`` -- 2-2.5x at 90% random block
sparsity -- which is what kept a padded-ELL probe at 4.1x (128x128 blocks)
and 0.6x (32x32) of dense speed. The gather writes its result directly in
``(bucket, batch, c, bk)`` order (``lax.gather`` offset dimensions), so the
batched dot needs no transpose of the gathered copy. A load-balanced weight
is a single bucket whose values are a free reshape of the stored array.
Rows of ``x`` go through in tiles, split into independent streams that
XLA's CPU runtime runs on separate cores. The tile size depends on the block
width (:func:`auto_batch_tile`): narrow blocks (``bn < 64``) use tiles of
:data:`BATCH_TILE` rows so the gathered copy stays in cache; wide blocks use
one tile per stream, since a loop over tiles inside a stream cost more than
the cache misses it saves (2048x2048 at 90% with 128x128 blocks, batch 512:
3.6x dense speed with 128-row tiles, 5.3-5.6x with one 256-row tile per
core; 32x32 blocks: 3.9x with 128-row tiles, 2.3x with 256).

``jax.experimental.sparse`` was the other candidate: its BCSR/BCOO products
cannot contract over the dense block dimensions, and its element-level CSR
kernel (``cpu_csr_sparse_dense_ffi``) took about 18 ms of CPU time for the
2048x2048, 10%-dense, batch-512 product against about 9 ms here with
128x128 blocks (dense: 42 ms), so it is not used.

N:M
---
On a CPU there is no N:M hardware, so the weight is decompressed (a fused
select over in-group positions) and multiplied densely: correct and memory
compact at rest, but not faster than a dense matmul.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["BATCH_TILE", "auto_batch_tile", "bsr_matmul_xla", "nm_matmul_xla", "nm_decompress"]

# Rows of x per step of the block-sparse XLA path for narrow blocks (see auto_batch_tile).
BATCH_TILE = 128
# Output blocks at least this wide get one tile per stream instead.
WIDE_BLOCK = 64
# At most this many independent streams of batch tiles (one per core).
MAX_STREAMS = 4


@dataclasses.dataclass(frozen=True)
class _Bucket:
  count: int            # stored blocks of each output block in the bucket
  cols: np.ndarray      # (n,) output blocks, ascending
  pos: np.ndarray       # (n, count) positions in the flat stored arrays
  start: int | None     # pos == start + arange(n * count) -> a contiguous slice


@dataclasses.dataclass(frozen=True)
class _Plan:
  buckets: tuple[_Bucket, ...]
  num_empty: int                 # output blocks with no stored block (zero output)
  perm: np.ndarray | None        # stacked bucket order -> column order; None = identity


@functools.lru_cache(maxsize=512)
def _plan(counts: tuple[int, ...]) -> _Plan:
  counts_np = np.asarray(counts, np.int64)
  indptr = np.concatenate([[0], np.cumsum(counts_np)])
  buckets = []
  for c in sorted({int(c) for c in counts if c > 0}, reverse=True):
    cols = np.nonzero(counts_np == c)[0]
    pos = indptr[cols][:, None] + np.arange(c)[None, :]
    flat = pos.reshape(-1)
    start = int(flat[0]) if np.array_equal(flat, flat[0] + np.arange(flat.size)) else None
    buckets.append(_Bucket(c, cols, pos, start))
  empty = np.nonzero(counts_np == 0)[0]
  order = np.concatenate([b.cols for b in buckets] + [empty]).astype(np.int64)
  perm = None if np.array_equal(order, np.arange(len(counts))) else np.argsort(order)
  return _Plan(tuple(buckets), int(empty.size), perm)


def _take(arr: jax.Array, bucket: _Bucket) -> jax.Array:
  """``arr[bucket.pos]`` -- a slice when the positions are contiguous."""
  n, c = bucket.pos.shape
  if bucket.start is not None:
    return lax.slice_in_dim(arr, bucket.start, bucket.start + n * c, axis=0).reshape(
        (n, c) + arr.shape[1:])
  return jnp.take(arr, jnp.asarray(bucket.pos, jnp.int32), axis=0)


def _gather_row_blocks(x3: jax.Array, rows: jax.Array) -> jax.Array:
  """``x3 (B, nb, bk)``, ``rows (n, c)`` -> ``(n, B, c, bk)``; row blocks side by side."""
  dnums = lax.GatherDimensionNumbers(offset_dims=(1, 3), collapsed_slice_dims=(1,),
                                     start_index_map=(1,))
  return lax.gather(x3, rows[..., None], dnums, slice_sizes=(x3.shape[0], 1, x3.shape[2]),
                    mode=lax.GatherScatterMode.CLIP)


def _acc_dtype(dtype) -> jnp.dtype:
  return jnp.promote_types(dtype, jnp.float32)


def _bsr_tile(x3: jax.Array, operands: list[tuple[jax.Array, jax.Array]], plan: _Plan,
              bn: int, acc) -> jax.Array:
  """``(T, nb, bk)`` rows of ``x`` -> ``(T, N)`` accumulated in ``acc``.

  ``operands[i]`` holds bucket ``i``'s row-block indices ``(n, c)`` and its
  blocks side by side, ``(n, c * bk, bn)``.
  """
  T, _, bk = x3.shape
  outs = []
  for rows, d in operands:
    n, c = rows.shape
    xg = _gather_row_blocks(x3, rows).reshape(n, T, c * bk)
    outs.append(lax.dot_general(xg, d, (((2,), (1,)), ((0,), (0,))),
                                preferred_element_type=acc))
  if plan.num_empty:
    outs.append(jnp.zeros((plan.num_empty, T, bn), acc))
  y = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=0)   # (nc, T, bn)
  if plan.perm is not None:
    y = jnp.take(y, jnp.asarray(plan.perm, jnp.int32), axis=0)
  return y.transpose(1, 0, 2).reshape(T, -1)


def bsr_matmul_xla(x: jax.Array, data: jax.Array, indices: jax.Array, *,
                   shape: tuple[int, int], block_shape: tuple[int, int],
                   counts: tuple[int, ...], batch_tile: int | str | None = "auto") -> jax.Array:
  """``x @ W`` for a :class:`~sparsejax.kernels.BlockSparse` ``W`` in plain XLA.

  Rows of ``x`` are processed ``batch_tile`` at a time, so the gathered copy
  of ``x`` for one tile stays in cache (at batch 512 this cut the CPU time of
  90%-sparse 32x32-block products by about a third on a 2-core CPU). The
  tiles are split into up to ``min(os.cpu_count(), MAX_STREAMS)`` independent
  streams (each a ``lax.map`` over its tiles), which XLA's CPU runtime can
  execute concurrently.

  Args:
    x: ``(B, K)`` activations.
    data: ``(nnz_blocks, bk, bn)`` stored blocks (the format's ``data``).
    indices: ``(nnz_blocks,)`` row-block indices (the format's ``indices``).
    shape: ``(K, N)``.
    block_shape: ``(bk, bn)``.
    counts: stored blocks per output block (static).
    batch_tile: rows per tile; ``None`` = all rows at once; ``"auto"`` =
      :func:`auto_batch_tile`. ``x`` is zero-padded to a multiple when ``B``
      exceeds it.

  Returns:
    ``(B, N)`` in ``result_type(x, data)``, accumulated in at least float32.
  """
  (K, N), (bk, bn) = shape, block_shape
  B = x.shape[0]
  dtype = jnp.result_type(x, data)
  acc = _acc_dtype(dtype)
  x = x.astype(dtype)
  data = data.astype(dtype)
  plan = _plan(tuple(counts))
  if isinstance(batch_tile, str) and batch_tile == "auto":
    batch_tile = auto_batch_tile(B, bn)
  elif batch_tile is not None and (not isinstance(batch_tile, (int, np.integer))
                                   or isinstance(batch_tile, bool) or batch_tile < 1):
    raise ValueError(f"batch_tile must be a positive int, None or 'auto', got {batch_tile!r}")
  tile = B if batch_tile is None else min(int(batch_tile), B)
  pad = -B % tile
  xp = jnp.pad(x, ((0, pad), (0, 0))) if pad else x
  tiles = xp.reshape(-1, tile, K // bk, bk)
  # The weight side of every bucket, gathered once (not once per tile).
  operands = [(_take(indices, b), _take(data, b).reshape(b.pos.shape[0], b.count * bk, bn))
              for b in plan.buckets]
  tile_fn = lambda t: _bsr_tile(t, operands, plan, bn, acc)
  # Independent streams of tiles: XLA's CPU runtime may run them on separate cores.
  outs = []
  for group in np.array_split(np.arange(tiles.shape[0]), min(_num_streams(), tiles.shape[0])):
    part = tiles[group[0]:group[-1] + 1]
    outs.append(tile_fn(part[0])[None] if part.shape[0] == 1 else lax.map(tile_fn, part))
  y = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=0)
  return y.reshape(-1, N)[:B].astype(dtype)


def auto_batch_tile(batch: int, bn: int) -> int:
  """Rows of ``x`` per tile of :func:`bsr_matmul_xla` for ``batch`` rows and output blocks ``bn`` wide.

  ``bn < WIDE_BLOCK``: :data:`BATCH_TILE` rows (each gathered copy small
  enough to stay in cache). Wider blocks: one tile per stream, at least
  :data:`BATCH_TILE` rows, a multiple of 8.
  """
  if bn < WIDE_BLOCK:
    return BATCH_TILE
  per_stream = -(-batch // _num_streams())
  return max(BATCH_TILE, -(-per_stream // 8) * 8)


def _num_streams() -> int:
  return max(1, min(os.cpu_count() or 1, MAX_STREAMS))


def nm_decompress(values: jax.Array, indices: jax.Array, *, shape: tuple[int, int],
                  m: int, axis: int) -> jax.Array:
  """Dense ``(K, N)`` weight of an N:M format: one fused select per stored slot.

  Slot ``t`` writes ``values[t]`` where ``indices[t] == r`` for in-group
  position ``r`` (a select, so a stored ``-0.0`` stays ``-0.0``); the
  comparison is broadcast over ``r`` so the result is written directly in the
  interleaved dense layout (no stack or transpose). The unused-slot index
  ``m`` matches no position.
  """
  K, N = shape
  pos = jnp.arange(m, dtype=jnp.int32)
  out = jnp.zeros((K // m, m, N) if axis == 0 else (K, N // m, m), values.dtype)
  for t in range(values.shape[0]):
    idx = indices[t].astype(jnp.int32)
    if axis == 0:   # (K/m, N) -> (K/m, m, N)
      out = jnp.where(idx[:, None, :] == pos[None, :, None], values[t][:, None, :], out)
    else:           # (K, N/m) -> (K, N/m, m)
      out = jnp.where(idx[:, :, None] == pos[None, None, :], values[t][:, :, None], out)
  return out.reshape(K, N)


def nm_matmul_xla(x: jax.Array, values: jax.Array, indices: jax.Array, *,
                  shape: tuple[int, int], m: int, axis: int) -> jax.Array:
  """``x @ W`` for an :class:`~sparsejax.kernels.NMSparse` ``W``: decompress, then dot."""
  dtype = jnp.result_type(x, values)
  w = nm_decompress(values.astype(dtype), indices, shape=shape, m=m, axis=axis)
  return jnp.dot(x.astype(dtype), w, preferred_element_type=_acc_dtype(dtype)).astype(dtype)
