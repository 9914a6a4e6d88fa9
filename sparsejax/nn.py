"""Layers that run on sparse kernels.

:class:`SparseLinear` is a dense layer ``y = x @ W + b`` whose weight is held
in a sparse format of :mod:`sparsejax.kernels` -- block-sparse
(:class:`~sparsejax.kernels.BlockSparse`), load-balanced block-sparse
(:class:`~sparsejax.kernels.BalancedBlockSparse`) or N:M
(:class:`~sparsejax.kernels.NMSparse`) -- and multiplies with
:func:`~sparsejax.kernels.bsr_matmul` / :func:`~sparsejax.kernels.nm_matmul`.
The stored non-zero values are an ``nnx.Param`` named ``values`` (they train;
pruned entries stay exactly zero because they are not stored), the integer
structure is a non-trainable :class:`SparseIndices` variable, and the block
counts are static. Build one from a trained, masked ``nnx.Linear`` with
:meth:`SparseLinear.from_dense`, or swap every masked ``nnx.Linear`` of a
model at once with :func:`sparsify`.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from flax import nnx
  >>> from sparsejax import masks
  >>> lin = nnx.Linear(64, 32, rngs=nnx.Rngs(0))
  >>> mask = masks.block(lin.kernel[...], 0.75, (16, 16))
  >>> sp = SparseLinear.from_dense(lin, mask, format="bsr", block_shape=(16, 16))
  >>> x = jnp.ones((4, 64))
  >>> dense = x @ jnp.where(mask, lin.kernel[...], 0) + lin.bias[...]
  >>> bool(jnp.allclose(sp(x), dense, atol=1e-5))
  True
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sparsejax import tree as tree_lib
from sparsejax.kernels import BalancedBlockSparse, BlockSparse, NMSparse
from sparsejax.kernels import bsr_matmul, nm_matmul
from sparsejax.kernels import _common

__all__ = ["FORMATS", "SparseIndices", "SparseLinear", "sparsify"]

FORMATS = ("bsr", "balanced", "nm")


class SparseIndices(nnx.Variable):
  """Integer structure of a sparse weight (not trained, not a ``Param``)."""


def _implied_mask(kernel: np.ndarray, fmt: str, block_shape) -> np.ndarray:
  """Mask implied by the zeros of ``kernel``: non-zero entries, or blocks with one."""
  nz = kernel != 0
  if fmt == "nm":
    return nz
  (K, N), (bk, bn) = kernel.shape, block_shape
  if K % bk or N % bn:
    return nz  # the format's own check reports the bad block shape
  blocks = nz.reshape(K // bk, bk, N // bn, bn).any(axis=(1, 3))
  return np.repeat(np.repeat(blocks, bk, axis=0), bn, axis=1)


class SparseLinear(nnx.Module):
  """``y = x @ W + b`` with ``W`` stored and multiplied in a sparse format.

  Args:
    weight: the ``(in, out)`` weight as a :class:`~sparsejax.kernels.BlockSparse`,
      :class:`~sparsejax.kernels.BalancedBlockSparse` or
      :class:`~sparsejax.kernels.NMSparse`.
    bias: ``(out,)`` bias or ``None``.
    impl: kernel implementation passed to the matmul (``"auto"``: XLA path on
      a CPU, Pallas on GPU/TPU when the block shape suits).
    dtype: computation dtype (inputs and values are cast to it), or ``None``
      to follow the inputs and parameters.

  Attributes:
    values: ``nnx.Param`` with the stored values (``data`` / ``values`` of the
      format).
    indices: :class:`SparseIndices` with the format's integer indices.
    bias: ``nnx.Param`` or ``None``.
  """

  def __init__(self, weight: BlockSparse | BalancedBlockSparse | NMSparse,
               bias: jax.Array | None = None, *, impl: str = "auto", dtype: Any = None):
    if isinstance(weight, BlockSparse):
      self.format = "bsr"
      self._meta = (weight.shape, weight.block_shape, tuple(int(c) for c in weight.counts))
      values = weight.data
    elif isinstance(weight, BalancedBlockSparse):
      self.format = "balanced"
      self._meta = (weight.shape, weight.block_shape)
      values = weight.data
    elif isinstance(weight, NMSparse):
      self.format = "nm"
      self._meta = (weight.shape, weight.n, weight.m, weight.axis)
      values = weight.values
    else:
      raise TypeError(f"weight must be a BlockSparse, BalancedBlockSparse or NMSparse, "
                      f"got {type(weight).__name__}")
    weight.check()
    self.in_features, self.out_features = weight.shape
    self.impl = _common.check_impl(impl)
    self.dtype = dtype
    self.values = nnx.Param(values)
    self.indices = SparseIndices(weight.indices)
    if bias is not None:
      bias = jnp.asarray(bias)
      if bias.shape != (self.out_features,):
        raise ValueError(f"bias must have shape ({self.out_features},), got {bias.shape}")
      self.bias = nnx.Param(bias)
    else:
      self.bias = None

  @property
  def weight(self) -> BlockSparse | BalancedBlockSparse | NMSparse:
    """The sparse weight built from the current ``values`` and ``indices``."""
    values, indices = self.values[...], self.indices[...]
    if self.format == "bsr":
      shape, block_shape, counts = self._meta
      return BlockSparse(values, indices, shape, block_shape, counts)
    if self.format == "balanced":
      shape, block_shape = self._meta
      return BalancedBlockSparse(values, indices, shape, block_shape)
    shape, n, m, axis = self._meta
    return NMSparse(values, indices, shape, n, m, axis)

  def __call__(self, x: jax.Array) -> jax.Array:
    w = self.weight
    if self.dtype is not None:
      x = jnp.asarray(x, self.dtype)
      w = (w.with_values(w.values.astype(self.dtype)) if isinstance(w, NMSparse)
           else w.with_data(w.data.astype(self.dtype)))
    if isinstance(w, NMSparse):
      y = nm_matmul(x, w, impl=self.impl)
    else:
      y = bsr_matmul(x, w, impl=self.impl)
    if self.bias is not None:
      y = y + self.bias[...].astype(y.dtype)
    return y

  def dense_kernel(self) -> jax.Array:
    """The ``(in, out)`` dense kernel (zeros where nothing is stored)."""
    return self.weight.to_dense()

  @classmethod
  def from_dense(cls, linear: nnx.Linear, mask: Any = None, *, format: str = "bsr",
                 block_shape: tuple[int, int] = (32, 32), n: int = 2, m: int = 4,
                 axis: int = 0, impl: str = "auto") -> SparseLinear:
    """Converts a (trained, masked) ``nnx.Linear`` into a :class:`SparseLinear`.

    Args:
      linear: an ``nnx.Linear`` with a ``(in, out)`` kernel.
      mask: concrete bool mask of the kernel's shape (True = keep), e.g. from
        :mod:`sparsejax.masks`; ``None`` keeps the non-zero entries (``"nm"``)
        or the blocks holding a non-zero (``"bsr"``, ``"balanced"``).
      format: ``"bsr"`` (:class:`BlockSparse`), ``"balanced"``
        (:class:`BalancedBlockSparse`) or ``"nm"`` (:class:`NMSparse`).
      block_shape: ``(bk, bn)`` for the block formats.
      n: kept entries per group for ``"nm"``.
      m: group size for ``"nm"``.
      axis: grouped axis for ``"nm"`` (0: along the inputs, 1: along the outputs).
      impl: kernel implementation (see :func:`sparsejax.kernels.bsr_matmul`).

    Returns:
      A :class:`SparseLinear` computing ``x @ where(mask, kernel, 0) + bias``.

    Raises:
      ValueError: unknown format, or a mask that does not fit the format.
    """
    if not isinstance(linear, nnx.Linear):
      raise TypeError(f"linear must be an nnx.Linear, got {type(linear).__name__}")
    if format not in FORMATS:
      raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    kernel = linear.kernel[...]
    if mask is None:
      mask = _implied_mask(np.asarray(kernel), format, block_shape)
    if format == "bsr":
      weight = BlockSparse.from_dense(kernel, mask, block_shape)
    elif format == "balanced":
      weight = BalancedBlockSparse.from_dense(kernel, mask, block_shape)
    else:
      weight = NMSparse.from_dense(kernel, mask, n, m, axis=axis)
    bias = linear.bias[...] if linear.bias is not None else None
    return cls(weight, bias, impl=impl, dtype=linear.dtype)


def _parent_and_key(model: nnx.Module, path: tuple[Any, ...]):
  node = model
  for key in path[:-1]:
    node = node[key] if isinstance(key, int) else getattr(node, key)
  return node, path[-1]


def sparsify(model: nnx.Module, masks: Any = None, *, format: str = "bsr",
             block_shape: tuple[int, int] = (32, 32), n: int = 2, m: int = 4,
             axis: int = 0, impl: str = "auto", skip_dense: bool = True) -> list[str]:
  """Replaces ``nnx.Linear`` layers of ``model`` in place by :class:`SparseLinear`.

  Args:
    model: an NNX module.
    masks: a masks pytree mirroring ``nnx.state(model, nnx.Param)`` (as from
      :mod:`sparsejax.masks`; ``None`` leaves are skipped), or a dict from
      kernel path (``"fc1/kernel"``) to mask. ``None``: every ``nnx.Linear``,
      with the mask implied by its zeros. Masks of other layers' parameters
      (e.g. conv kernels) are ignored; a path the model does not have is an
      error.
    format, block_shape, n, m, axis, impl: as in :meth:`SparseLinear.from_dense`.
    skip_dense: leave a layer dense when its mask keeps everything.

  Returns:
    The module paths that were replaced (``"fc1"``, ``"blocks/0/fc"``).
  """
  if masks is None:
    by_path = None
  else:
    # Nested masks trees and flat {"fc1/kernel": mask} dicts give the same paths.
    by_path = {p: leaf for p, leaf in tree_lib.leaves_with_paths(masks) if leaf is not None}
    known = {p for p, _ in tree_lib.leaves_with_paths(nnx.state(model, nnx.Param))}
    unknown = sorted(set(by_path) - known)
    if unknown:
      raise ValueError(f"masks name parameters the model does not have: {unknown[:5]}; "
                       f"its parameters are e.g. {sorted(known)[:5]}")
  replaced = []
  linears = [(p, node) for p, node in nnx.iter_graph(model) if isinstance(node, nnx.Linear)]
  for path, linear in linears:
    name = "/".join(str(k) for k in path)
    if by_path is None:
      mask = None
    else:
      mask = by_path.get(f"{name}/kernel")
      if mask is None:
        continue
      if skip_dense and bool(np.all(np.asarray(mask))):
        continue
    layer = SparseLinear.from_dense(linear, mask, format=format, block_shape=block_shape,
                                    n=n, m=m, axis=axis, impl=impl)
    parent, key = _parent_and_key(model, path)
    if isinstance(key, int):
      parent[key] = layer
    else:
      setattr(parent, key, layer)
    replaced.append(name)
  return replaced
