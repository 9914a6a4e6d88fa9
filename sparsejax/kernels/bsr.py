r"""Block-sparse matmul ``y = x @ W`` with ``W`` a :class:`BlockSparse` weight.

.. math::

   y_{:, j} = \sum_{s \,:\, \mathrm{col}(s) = j} x_{:, \mathrm{row}(s)} \, D_s,

where block ``s`` of ``data`` (``D_s``, ``bk x bn``) sits at row block
``indices[s]`` and column block ``col(s)`` of the ``(K, N)`` weight.

Implementations (``impl``):

* ``"pallas"`` -- a ``pl.pallas_call`` kernel, in one of two variants:

  - *scalar prefetch* (TPU; ``pltpu.PrefetchScalarGridSpec``): grid
    ``(batch tiles, output blocks, L)`` with ``L = max counts``; the block
    tables are prefetched into SMEM and read by the ``index_map``\ s, so the
    pipeline DMAs exactly the stored weight blocks and the matching ``x``
    blocks. Steps past an output block's count repeat the previous block
    index (no new DMA) and skip the dot.
  - *index arrays* (GPU/Triton, which has no scalar prefetch): grid
    ``(batch tiles, output blocks)``; the kernel reads ``indptr`` and
    ``indices`` as ordinary inputs and loops over its stored blocks, loading
    each ``x`` block with a dynamic slice.

  ``interpret=None`` interprets the kernel when the default backend is a CPU.
* ``"xla"`` -- :func:`sparsejax.kernels.cpu.bsr_matmul_xla` (bucketed ELL
  gather + batched dots), the fast path on a CPU.
* ``"dense"`` -- scatter the blocks into a dense weight and ``jnp.dot``.
* ``"reference"`` -- :func:`bsr_matmul_reference`, pure ``jnp``.
* ``"auto"`` (default) -- on a CPU ``"xla"``, or ``"dense"`` when the weight
  is too dense for the gathers to pay: density above ``b / (b + 64)`` with
  ``b = min(bk, bn)`` (1/3 for 32x32 blocks, 2/3 for 128x128; measured
  break-even points of the XLA path on a 2-core CPU). On a TPU or GPU
  ``"pallas"`` when the block shape suits the hardware (TPU: ``bk`` and
  ``bn`` multiples of 128 or whole dimensions; GPU: powers of two >= 16),
  else ``"xla"``.

Gradients (``jax.custom_vjp``) flow to ``x`` and to the stored values
``data``; the backward pass of every implementation is the autodiff of the
XLA path (gathers become scatter-adds), or of the dense product for
``impl="dense"``. The sparsity structure gets no gradient. The GPU and TPU variants were not run on hardware here; their
interpret-mode runs on a CPU are tested against dense matmuls.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from sparsejax.kernels import _common
from sparsejax.kernels import cpu
from sparsejax.kernels.formats import BalancedBlockSparse, BlockSparse

__all__ = ["bsr_matmul", "bsr_matmul_reference", "cpu_dense_threshold"]


class _Static(NamedTuple):
  shape: tuple[int, int]
  block_shape: tuple[int, int]
  counts: tuple[int, ...]
  impl: str
  interpret: bool
  block_batch: int | None
  scalar_prefetch: bool


def _as_block_sparse(w: Any) -> BlockSparse:
  if isinstance(w, BalancedBlockSparse):
    return w.to_block_sparse()
  if isinstance(w, BlockSparse):
    return w.check()
  raise TypeError(f"w must be a BlockSparse or BalancedBlockSparse, got {type(w).__name__}")


def bsr_matmul_reference(x: jax.Array, w: BlockSparse | BalancedBlockSparse) -> jax.Array:
  """Pure-``jnp`` reference: gather ``x`` blocks, multiply per block, segment-sum.

  Args:
    x: ``(..., K)`` activations.
    w: the sparse ``(K, N)`` weight.

  Returns:
    ``(..., N)`` in ``result_type(x, w.data)``.
  """
  w = _as_block_sparse(w)
  x = _common.check_x(x, w.shape[0])
  (K, N), (bk, _), (nb, nc) = w.shape, w.block_shape, w.grid
  dtype = jnp.result_type(x, w.data)
  x2 = x.reshape(-1, K).astype(dtype)
  xb = x2.reshape(-1, nb, bk)[:, w.indices]                      # (B, nnz, bk)
  part = jnp.einsum("bsk,skn->sbn", xb, w.data.astype(dtype),
                    preferred_element_type=jnp.promote_types(dtype, jnp.float32))
  y = jax.ops.segment_sum(part, jnp.asarray(w.block_cols), num_segments=nc,
                          indices_are_sorted=True)               # (nc, B, bn)
  return y.transpose(1, 0, 2).reshape(*x.shape[:-1], N).astype(dtype)


# ---------------------------------------------------------------------------
# Pallas kernels.


def _tpu_ok(st: _Static) -> bool:
  (K, N), (bk, bn) = st.shape, st.block_shape
  return (bk % 128 == 0 or bk == K) and (bn % 128 == 0 or bn == N)


def _gpu_ok(st: _Static) -> bool:
  bk, bn = st.block_shape
  bb = st.block_batch
  return (_common.is_pow2(bk) and _common.is_pow2(bn) and bk >= 16 and bn >= 16
          and (bb is None or (_common.is_pow2(bb) and bb >= 16)))


def _prefetch_kernel(ptr_ref, rows_ref, cnt_ref, x_ref, d_ref, o_ref, acc_ref):
  """One (batch tile, output block, slot) step; the index maps did the gathering."""
  del ptr_ref, rows_ref
  j, t = pl.program_id(1), pl.program_id(2)

  @pl.when(t == 0)
  def _init():
    acc_ref[...] = jnp.zeros_like(acc_ref)

  @pl.when(t < cnt_ref[j])
  def _accumulate():
    acc_ref[...] += jnp.dot(x_ref[...], d_ref[...], preferred_element_type=acc_ref.dtype)

  @pl.when(t == pl.num_programs(2) - 1)
  def _store():
    o_ref[...] = acc_ref[...].astype(o_ref.dtype)


def _pallas_prefetch(x2, data, indices, st: _Static, out_dtype):
  (_, N), (bk, bn) = st.shape, st.block_shape
  nc = N // bn
  counts = np.asarray(st.counts, np.int64)
  L = int(counts.max())
  indptr = np.concatenate([[0], np.cumsum(counts)])
  # Slot t of output block j reads stored block ptr[j * L + t]; slots past the
  # count repeat the last stored block (same block index: no new DMA), and an
  # empty output block reads block 0 without using it. 1-D tables keep SMEM small.
  t = np.arange(L)[None, :]
  ptr = np.where(counts[:, None] > 0,
                 indptr[:-1, None] + np.minimum(t, np.maximum(counts[:, None] - 1, 0)), 0)
  ptr = jnp.asarray(ptr.reshape(-1), jnp.int32)
  rows = jnp.take(indices.astype(jnp.int32), ptr)
  cnt = jnp.asarray(counts, jnp.int32)
  bb = _common.batch_tile(x2.shape[0], st.block_batch)
  xp = _common.pad_rows(x2, bb)
  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=3,
      grid=(xp.shape[0] // bb, nc, L),
      in_specs=[
          pl.BlockSpec((bb, bk), lambda i, j, t, p, r, c: (i, r[j * L + t])),
          pl.BlockSpec((None, bk, bn), lambda i, j, t, p, r, c: (p[j * L + t], 0, 0)),
      ],
      out_specs=pl.BlockSpec((bb, bn), lambda i, j, t, p, r, c: (i, j)),
      scratch_shapes=[pltpu.VMEM((bb, bn), _common.acc_dtype(out_dtype))])
  y = pl.pallas_call(
      _prefetch_kernel,
      out_shape=jax.ShapeDtypeStruct((xp.shape[0], N), out_dtype),
      grid_spec=grid_spec,
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "arbitrary")),
      interpret=st.interpret,
      name="bsr_matmul_prefetch",
  )(ptr, rows, cnt, xp, data)
  return y[:x2.shape[0]]


def _indexed_kernel(indptr_ref, rows_ref, x_ref, d_ref, o_ref, *, bk: int):
  """One (batch tile, output block) program looping over its stored blocks."""
  j = pl.program_id(1)
  start, end = indptr_ref[j], indptr_ref[j + 1]

  acc_dt = _common.acc_dtype(o_ref.dtype)

  def body(s, acc):
    r = rows_ref[s]
    xb = x_ref[:, pl.ds(pl.multiple_of(r * bk, bk), bk)]
    return acc + jnp.dot(xb, d_ref[s], preferred_element_type=acc_dt)

  acc = jax.lax.fori_loop(start, end, body, jnp.zeros(o_ref.shape, acc_dt))
  o_ref[...] = acc.astype(o_ref.dtype)


def _pallas_indexed(x2, data, indices, st: _Static, out_dtype):
  (K, N), (bk, bn) = st.shape, st.block_shape
  nc, nnz = N // bn, data.shape[0]
  indptr = jnp.asarray(np.concatenate([[0], np.cumsum(st.counts)]), jnp.int32)
  bb = _common.batch_tile(x2.shape[0], st.block_batch)
  xp = _common.pad_rows(x2, bb)
  y = pl.pallas_call(
      functools.partial(_indexed_kernel, bk=bk),
      out_shape=jax.ShapeDtypeStruct((xp.shape[0], N), out_dtype),
      grid=(xp.shape[0] // bb, nc),
      in_specs=[
          pl.BlockSpec((nc + 1,), lambda i, j: (0,)),
          pl.BlockSpec((nnz,), lambda i, j: (0,)),
          pl.BlockSpec((bb, K), lambda i, j: (i, 0)),
          pl.BlockSpec((nnz, bk, bn), lambda i, j: (0, 0, 0)),
      ],
      out_specs=pl.BlockSpec((bb, bn), lambda i, j: (i, j)),
      interpret=st.interpret,
      name="bsr_matmul_indexed",
  )(indptr, indices.astype(jnp.int32), xp, data)
  return y[:x2.shape[0]]


# ---------------------------------------------------------------------------
# Dispatch and gradients.


def _xla(x2, data, indices, st: _Static):
  return cpu.bsr_matmul_xla(x2, data, indices, shape=st.shape, block_shape=st.block_shape,
                            counts=st.counts)


def _dense(x2, data, indices, st: _Static):
  dtype = jnp.result_type(x2, data)
  w = BlockSparse(data.astype(dtype), indices, st.shape, st.block_shape, st.counts).to_dense()
  return jnp.dot(x2.astype(dtype), w,
                 preferred_element_type=jnp.promote_types(dtype, jnp.float32)).astype(dtype)


def cpu_dense_threshold(block_shape: tuple[int, int]) -> float:
  """Density above which ``impl="auto"`` multiplies densely on a CPU."""
  b = min(block_shape)
  return b / (b + 64)


def _forward(x2, data, indices, st: _Static):
  dtype = jnp.result_type(x2, data)
  if sum(st.counts) == 0:
    return jnp.zeros((x2.shape[0], st.shape[1]), dtype)
  if st.impl == "xla":
    return _xla(x2, data, indices, st)
  if st.impl == "dense":
    return _dense(x2, data, indices, st)
  if st.impl == "reference":
    w = BlockSparse(data, indices, st.shape, st.block_shape, st.counts)
    return bsr_matmul_reference(x2, w)
  x2, data = x2.astype(dtype), data.astype(dtype)
  if st.scalar_prefetch:
    return _pallas_prefetch(x2, data, indices, st, dtype)
  return _pallas_indexed(x2, data, indices, st, dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _bsr(x2, data, indices, st: _Static):
  return _forward(x2, data, indices, st)


def _bsr_fwd(x2, data, indices, st: _Static):
  return _forward(x2, data, indices, st), (x2, data, indices)


def _bsr_bwd(st: _Static, res, g):
  x2, data, indices = res
  if sum(st.counts) == 0:
    return jnp.zeros_like(x2), jnp.zeros_like(data), None
  impl = _dense if st.impl == "dense" else _xla
  _, vjp = jax.vjp(lambda a, d: impl(a, d, indices, st), x2, data)
  dx, ddata = vjp(g.astype(jnp.result_type(x2, data)))
  return dx.astype(x2.dtype), ddata.astype(data.dtype), None


_bsr.defvjp(_bsr_fwd, _bsr_bwd)


def bsr_matmul(x: jax.Array, w: BlockSparse | BalancedBlockSparse, *, impl: str = "auto",
               interpret: bool | None = None, block_batch: int | None = None,
               scalar_prefetch: bool | None = None) -> jax.Array:
  """``x @ W`` for a block-sparse ``W``; differentiable in ``x`` and ``w.data``.

  Args:
    x: ``(..., K)`` activations (float).
    w: :class:`BlockSparse` or :class:`BalancedBlockSparse` ``(K, N)`` weight.
    impl: ``"auto"``, ``"pallas"``, ``"xla"``, ``"dense"`` or ``"reference"``
      (module doc).
    interpret: run the Pallas kernel in interpret mode; ``None`` = exactly on
      a CPU backend.
    block_batch: rows of ``x`` per Pallas program (default up to 128); ``x``
      is zero-padded to a multiple.
    scalar_prefetch: Pallas variant: ``True`` = scalar-prefetch (TPU) kernel,
      ``False`` = index-array kernel; ``None`` = ``True`` exactly on a TPU.

  Returns:
    ``(..., N)`` in ``result_type(x, w.data)``; products are accumulated in
    at least float32 (bfloat16 inputs give a bfloat16 result).

  Raises:
    TypeError: ``w`` is not a block-sparse format, or ``x`` is not floating.
    ValueError: shape mismatch or a bad option.
  """
  w = _as_block_sparse(w)
  x = _common.check_x(x, w.shape[0])
  impl = _common.check_impl(impl)
  block_batch = _common.check_block_batch(block_batch)
  if scalar_prefetch is not None and not isinstance(scalar_prefetch, bool):
    raise ValueError(f"scalar_prefetch must be None or a bool, got {scalar_prefetch!r}")
  backend = _common.backend()
  if scalar_prefetch is None:
    scalar_prefetch = backend == "tpu"
  st = _Static(w.shape, w.block_shape, tuple(int(c) for c in w.counts), impl,
               _common.resolve_interpret(interpret), block_batch, scalar_prefetch)
  if impl == "auto":
    if backend == "tpu" and _tpu_ok(st):
      impl = "pallas"
    elif backend == "gpu" and _gpu_ok(st):
      impl, scalar_prefetch = "pallas", False
    else:
      nb, nc = w.grid
      dense = backend == "cpu" and w.nnz_blocks > cpu_dense_threshold(w.block_shape) * nb * nc
      impl = "dense" if dense else "xla"
    st = st._replace(impl=impl, scalar_prefetch=scalar_prefetch)
  if x.size == 0:  # no rows: nothing for a kernel to tile
    return jnp.zeros((*x.shape[:-1], w.shape[1]), jnp.result_type(x, w.data))
  y = _bsr(x.reshape(-1, w.shape[0]), w.data, w.indices, st)
  return y.reshape(*x.shape[:-1], w.shape[1])
