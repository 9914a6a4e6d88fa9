r"""N:M-sparse matmul ``y = x @ W`` with ``W`` an :class:`NMSparse` weight.

With groups along the reduction axis (``axis=0``), write ``k = g m + r``
(group ``g``, in-group position ``r``) and let ``W_r`` be the ``(K/m, N)``
plane of position ``r``, assembled from the stored slots:
``W_r[g, j] = \sum_{t<n} [\mathrm{idx}_{t,g,j} = r]\, v_{t,g,j}``. Then

.. math::

   y = \sum_{r < m} x_{:, r::m} \, W_r ,

``m`` dense products of a strided slice of ``x`` with a plane decompressed
in registers: the kernel reads ``n/m`` of the weight's values plus one byte of
position per value. With groups along the output axis (``axis=1``) the same
planes give ``y_{:, r::m} = x W_r``.

Implementations (``impl``): ``"pallas"`` (grid over batch tiles x output
tiles, an in-kernel loop over ``K`` tiles; the positions are read as an
ordinary ``uint8`` input on every backend; ``interpret=None`` interprets on
a CPU), ``"xla"`` or ``"dense"`` (decompress + dense dot; the CPU path -- a
CPU has no N:M hardware, so this is not faster than dense), ``"reference"`` (scatter the
values into a dense matrix, then ``jnp.dot``), ``"auto"`` (``"pallas"`` on a
GPU/TPU when the tiles fit, else ``"xla"``). Gradients (``jax.custom_vjp``)
flow to ``x`` and the stored values; unused slots get zero gradient. The
backward pass is the autodiff of the XLA path. The GPU/TPU runs were not
tried on hardware here; interpret-mode runs are tested.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from sparsejax.kernels import _common
from sparsejax.kernels import cpu
from sparsejax.kernels.formats import NMSparse

__all__ = ["nm_matmul", "nm_matmul_reference"]


class _Static(NamedTuple):
  shape: tuple[int, int]
  n: int
  m: int
  axis: int
  impl: str
  interpret: bool
  block_batch: int | None


def _check_w(w: Any) -> NMSparse:
  if not isinstance(w, NMSparse):
    raise TypeError(f"w must be an NMSparse, got {type(w).__name__}")
  return w.check()


def _scatter_dense(values, indices, shape, n, m, axis):
  """Dense weight by scattering each slot to its position (unused slots -> dropped column)."""
  K, N = shape
  G, C = values.shape[1:]
  g = jnp.arange(G)[None, :, None]
  c = jnp.arange(C)[None, None, :]
  idx = indices.astype(jnp.int32)
  dense = jnp.zeros((G, C, m + 1), values.dtype)
  dense = dense.at[jnp.broadcast_to(g, idx.shape), jnp.broadcast_to(c, idx.shape), idx].set(values)
  dense = dense[..., :m]                                        # drop unused slots
  if axis == 0:                                                 # (K/m, N, m) -> (K, N)
    return dense.transpose(0, 2, 1).reshape(K, N)
  return dense.reshape(K, N)                                    # (K, N/m, m)


def nm_matmul_reference(x: jax.Array, w: NMSparse) -> jax.Array:
  """Pure-``jnp`` reference: scatter the values into a dense weight, then ``jnp.dot``."""
  w = _check_w(w)
  x = _common.check_x(x, w.shape[0])
  dtype = jnp.result_type(x, w.values)
  dense = _scatter_dense(w.values.astype(dtype), w.indices, w.shape, w.n, w.m, w.axis)
  y = jnp.dot(x.reshape(-1, w.shape[0]).astype(dtype), dense,
              preferred_element_type=jnp.promote_types(dtype, jnp.float32))
  return y.astype(dtype).reshape(*x.shape[:-1], w.shape[1])


# ---------------------------------------------------------------------------
# Pallas kernels.


def _plane(v_ref, i_ref, r: int, n: int, sl):
  """Plane ``r`` of a weight tile: sum_t [idx_t == r] v_t over the slots."""
  out = None
  for t in range(n):
    v = v_ref[(t,) + sl]
    hit = i_ref[(t,) + sl].astype(jnp.int32) == r
    term = jnp.where(hit, v, jnp.zeros_like(v))
    out = term if out is None else out + term
  return out


def _kernel_axis0(x_ref, v_ref, i_ref, o_ref, *, n: int, m: int, bg: int, steps: int):
  """x_ref (m, bb, K/m) planes of x; v/i_ref (n, K/m, bn); o_ref (bb, bn)."""

  acc_dt = _common.acc_dtype(o_ref.dtype)

  def body(k, acc):
    s = pl.ds(pl.multiple_of(k * bg, bg), bg)
    for r in range(m):
      w_r = _plane(v_ref, i_ref, r, n, (s, slice(None)))
      acc = acc + jnp.dot(x_ref[r, :, s], w_r, preferred_element_type=acc_dt)
    return acc

  acc = jax.lax.fori_loop(0, steps, body, jnp.zeros(o_ref.shape, acc_dt))
  o_ref[...] = acc.astype(o_ref.dtype)


def _kernel_axis1(x_ref, v_ref, i_ref, o_ref, *, n: int, m: int, bk: int, steps: int):
  """x_ref (bb, K); v/i_ref (n, K, bg); o_ref (m, bb, bg) output planes."""

  acc_dt = _common.acc_dtype(o_ref.dtype)

  def body(k, accs):
    s = pl.ds(pl.multiple_of(k * bk, bk), bk)
    xs = x_ref[:, s]
    return tuple(
        acc + jnp.dot(xs, _plane(v_ref, i_ref, r, n, (s, slice(None))),
                      preferred_element_type=acc_dt)
        for r, acc in enumerate(accs))

  zero = jnp.zeros(o_ref.shape[1:], acc_dt)
  accs = jax.lax.fori_loop(0, steps, body, (zero,) * m)
  for r in range(m):
    o_ref[r] = accs[r].astype(o_ref.dtype)


def _tiles(st: _Static, *, hardware: bool) -> tuple[int, int]:
  """(reduction tile, output tile) along the stored arrays' last two axes.

  On hardware both are powers of two (Triton needs them; on a TPU they keep the
  dynamic slices aligned); interpreted, any divisor up to 128 will do.
  """
  (K, N), m = st.shape, st.m
  red, out = (K // m, N) if st.axis == 0 else (K, N // m)
  return (_common.divisor_tile(red, 128, pow2=hardware),
          _common.divisor_tile(out, 128, pow2=hardware))


def _gpu_ok(st: _Static) -> bool:
  tk, tn = _tiles(st, hardware=True)
  bb = st.block_batch
  return tk >= 16 and tn >= 16 and (bb is None or (_common.is_pow2(bb) and bb >= 16))


def _tpu_ok(st: _Static) -> bool:
  tk, tn = _tiles(st, hardware=True)
  return tk >= 32 and tn % 128 == 0   # uint8 positions pack 32 rows per tile


def _pallas(x2, values, indices, st: _Static, dtype):
  (K, N), n, m = st.shape, st.n, st.m
  tk, tn = _tiles(st, hardware=not st.interpret)
  bb = _common.batch_tile(x2.shape[0], st.block_batch)
  xp = _common.pad_rows(x2, bb)
  Bp = xp.shape[0]
  if st.axis == 0:
    G = K // m
    xperm = xp.reshape(Bp, G, m).transpose(2, 0, 1)            # (m, Bp, K/m)
    y = pl.pallas_call(
        functools.partial(_kernel_axis0, n=n, m=m, bg=tk, steps=G // tk),
        out_shape=jax.ShapeDtypeStruct((Bp, N), dtype),
        grid=(Bp // bb, N // tn),
        in_specs=[pl.BlockSpec((m, bb, G), lambda i, j: (0, i, 0)),
                  pl.BlockSpec((n, G, tn), lambda i, j: (0, 0, j)),
                  pl.BlockSpec((n, G, tn), lambda i, j: (0, 0, j))],
        out_specs=pl.BlockSpec((bb, tn), lambda i, j: (i, j)),
        interpret=st.interpret, name="nm_matmul_axis0",
    )(xperm, values, indices)
  else:
    Gn = N // m
    planes = pl.pallas_call(
        functools.partial(_kernel_axis1, n=n, m=m, bk=tk, steps=K // tk),
        out_shape=jax.ShapeDtypeStruct((m, Bp, Gn), dtype),
        grid=(Bp // bb, Gn // tn),
        in_specs=[pl.BlockSpec((bb, K), lambda i, j: (i, 0)),
                  pl.BlockSpec((n, K, tn), lambda i, j: (0, 0, j)),
                  pl.BlockSpec((n, K, tn), lambda i, j: (0, 0, j))],
        out_specs=pl.BlockSpec((m, bb, tn), lambda i, j: (0, i, j)),
        interpret=st.interpret, name="nm_matmul_axis1",
    )(xp, values, indices)
    y = planes.transpose(1, 2, 0).reshape(Bp, N)                # column g*m + r
  return y[:x2.shape[0]]


# ---------------------------------------------------------------------------
# Dispatch and gradients.


def _xla(x2, values, indices, st: _Static):
  return cpu.nm_matmul_xla(x2, values, indices, shape=st.shape, m=st.m, axis=st.axis)


def _forward(x2, values, indices, st: _Static):
  dtype = jnp.result_type(x2, values)
  if st.n == 0:
    return jnp.zeros((x2.shape[0], st.shape[1]), dtype)
  if st.impl in ("xla", "dense"):
    return _xla(x2, values, indices, st)
  if st.impl == "reference":
    return nm_matmul_reference(x2, NMSparse(values, indices, st.shape, st.n, st.m, st.axis))
  return _pallas(x2.astype(dtype), values.astype(dtype), indices, st, dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _nm(x2, values, indices, st: _Static):
  return _forward(x2, values, indices, st)


def _nm_fwd(x2, values, indices, st: _Static):
  return _forward(x2, values, indices, st), (x2, values, indices)


def _nm_bwd(st: _Static, res, g):
  x2, values, indices = res
  if st.n == 0:
    return jnp.zeros_like(x2), jnp.zeros_like(values), None
  _, vjp = jax.vjp(lambda a, v: _xla(a, v, indices, st), x2, values)
  dx, dv = vjp(g.astype(jnp.result_type(x2, values)))
  return dx.astype(x2.dtype), dv.astype(values.dtype), None


_nm.defvjp(_nm_fwd, _nm_bwd)


def nm_matmul(x: jax.Array, w: NMSparse, *, impl: str = "auto", interpret: bool | None = None,
              block_batch: int | None = None) -> jax.Array:
  """``x @ W`` for an N:M-sparse ``W``; differentiable in ``x`` and ``w.values``.

  Args:
    x: ``(..., K)`` activations (float).
    w: :class:`NMSparse` ``(K, N)`` weight.
    impl: ``"auto"``, ``"pallas"``, ``"xla"`` (= ``"dense"``) or ``"reference"``
      (module doc).
    interpret: run the Pallas kernel in interpret mode; ``None`` = exactly on
      a CPU backend.
    block_batch: rows of ``x`` per Pallas program (default up to 128).

  Returns:
    ``(..., N)`` in ``result_type(x, w.values)``, accumulated in >= float32.

  Raises:
    TypeError: ``w`` is not an :class:`NMSparse`, or ``x`` is not floating.
    ValueError: shape mismatch or a bad option.
  """
  w = _check_w(w)
  x = _common.check_x(x, w.shape[0])
  impl = _common.check_impl(impl)
  block_batch = _common.check_block_batch(block_batch)
  st = _Static(w.shape, w.n, w.m, w.axis, impl, _common.resolve_interpret(interpret),
               block_batch)
  if impl == "auto":
    backend = _common.backend()
    ok = (backend == "gpu" and _gpu_ok(st)) or (backend == "tpu" and _tpu_ok(st))
    st = st._replace(impl="pallas" if ok else "xla")
  if x.size == 0:  # no rows: nothing for a kernel to tile
    return jnp.zeros((*x.shape[:-1], w.shape[1]), jnp.result_type(x, w.values))
  y = _nm(x.reshape(-1, w.shape[0]), w.values, w.indices, st)
  return y.reshape(*x.shape[:-1], w.shape[1])
