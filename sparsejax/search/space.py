"""The DARTS search space: mixed operations, search cells and the search network.

A mixed op on an edge computes ``sum_k softmax(alpha)_k * op_k(x)`` over the
candidate ops (:data:`sparsejax.models.darts.PRIMITIVES`; pooling ops are
followed by a non-affine batch norm, as in DARTS). The architecture logits
``alpha`` are NOT parameters of the network: they are a separate pytree
``{"normal": (num_edges, num_ops), "reduce": (num_edges, num_ops)}`` passed to
``network(x, alphas)``, so weights and architecture get separate optimizers.
Edges are numbered node by node: intermediate node ``i`` owns the ``2 + i``
edges from the two cell inputs and nodes ``0 .. i - 1``; with 4 nodes there are
14 edges.

Batch norms inside the search network always use batch statistics and keep no
running averages (:class:`sparsejax.models.darts.BatchStatNorm`; non-affine in
the cells, affine in the stem), so the network's only state is its parameters
and a search step is a pure function of ``(weights, alphas, batch)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sparsejax.models.darts import (PRIMITIVES, BatchStatNorm, _Stem, make_op, preprocess,
                                    reduction_cells)
from sparsejax.models.lenet import _check_positive_int

__all__ = [
    "CELL_TYPES",
    "num_edges",
    "check_primitives",
    "init_alphas",
    "check_alphas",
    "MixedOp",
    "SearchCell",
    "SearchNetwork",
]

CELL_TYPES = ("normal", "reduce")


def _search_norm(features: int, rngs: nnx.Rngs) -> nnx.Module:
  del rngs
  return BatchStatNorm(features, affine=False)


def num_edges(steps: int) -> int:
  """Edges of a cell with ``steps`` intermediate nodes: ``sum_i (2 + i)`` (14 for 4)."""
  steps = _check_positive_int("steps", steps)
  return steps * (steps + 3) // 2


def check_primitives(primitives: Sequence[str]) -> tuple[str, ...]:
  """Checks a list of distinct candidate op names from :data:`PRIMITIVES`."""
  if isinstance(primitives, (str, bytes)) or not isinstance(primitives, Sequence) \
      or not primitives:
    raise ValueError(f"primitives must be a non-empty list of op names from {PRIMITIVES}, "
                     f"got {primitives!r}")
  for k, name in enumerate(primitives):
    if name not in PRIMITIVES:
      raise ValueError(f"primitives[{k}] = {name!r} is not a known op; allowed: {PRIMITIVES}")
  if len(set(primitives)) != len(primitives):
    raise ValueError(f"primitives must be distinct, got {list(primitives)}")
  if all(p == "none" for p in primitives):
    raise ValueError("primitives must hold at least one op other than 'none'")
  return tuple(str(p) for p in primitives)


def init_alphas(key: jax.Array, *, steps: int = 4, num_ops: int = len(PRIMITIVES),
                scale: float = 1e-3) -> dict[str, jax.Array]:
  """DARTS's initial architecture logits: ``scale * N(0, 1)`` for each cell type.

  Args:
    key: PRNG key.
    steps: intermediate nodes per cell.
    num_ops: candidate ops per edge.
    scale: standard deviation.

  Returns:
    ``{"normal": (num_edges(steps), num_ops), "reduce": (...)}`` float32 arrays.
  """
  shape = (num_edges(steps), _check_positive_int("num_ops", num_ops))
  k_normal, k_reduce = jax.random.split(key)
  return {"normal": scale * jax.random.normal(k_normal, shape),
          "reduce": scale * jax.random.normal(k_reduce, shape)}


def check_alphas(alphas: Any, edges: int, ops: int) -> None:
  """Raises ``ValueError`` unless ``alphas`` is ``{"normal", "reduce"}`` -> ``(edges, ops)``."""
  if not isinstance(alphas, Mapping) or set(alphas) != set(CELL_TYPES):
    got = sorted(alphas) if isinstance(alphas, Mapping) else type(alphas).__name__
    raise ValueError(f"alphas must be a dict with exactly the keys {list(CELL_TYPES)}, "
                     f"got {got}")
  for name in CELL_TYPES:
    shape = tuple(np.shape(alphas[name]))
    if shape != (edges, ops):
      raise ValueError(f"alphas[{name!r}] must have shape ({edges}, {ops}) (edges, ops), "
                       f"got {shape}")


class MixedOp(nnx.Module):
  """``sum_k weights[k] * op_k(x)`` over the candidate ops of one edge.

  Args:
    channels: input and output channels.
    stride: 1 or 2.
    primitives: the candidate op names.
    rngs: ``nnx.Rngs`` for the initialisers.

  ``none`` contributes exact zeros, so it is skipped in the sum (its weight
  still takes part in the softmax).
  """

  def __init__(self, channels: int, stride: int, *, primitives: Sequence[str] = PRIMITIVES,
               rngs: nnx.Rngs):
    self.primitives = check_primitives(primitives)
    ops = []
    for name in self.primitives:
      op = make_op(name, channels, stride, norm=_search_norm, rngs=rngs)
      if name.endswith("pool_3x3"):
        op = _PoolThenNorm(op, BatchStatNorm(channels, affine=False))
      ops.append(op)
    self.ops = nnx.List(ops)

  def __call__(self, x: jax.Array, weights: jax.Array) -> jax.Array:
    """Args: ``x`` NHWC; ``weights`` the ``(num_ops,)`` mixing weights (softmax of alpha)."""
    # JAX clamps out-of-range indices: a short ``weights`` would silently reuse its last entry.
    if tuple(np.shape(weights)) != (len(self.primitives),):
      raise ValueError(f"weights must have shape ({len(self.primitives)},) (one per candidate op "
                       f"{self.primitives}), got {tuple(np.shape(weights))}")
    out = None
    for k, (name, op) in enumerate(zip(self.primitives, self.ops)):
      if name == "none":
        continue
      term = weights[k] * op(x)
      out = term if out is None else out + term
    return out


class _PoolThenNorm(nnx.Module):

  def __init__(self, pool: nnx.Module, bn: nnx.Module):
    self.pool = pool
    self.bn = bn

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.bn(self.pool(x))


class SearchCell(nnx.Module):
  """A cell whose every edge is a :class:`MixedOp`; the output concatenates the last nodes.

  Node ``i`` is the sum over its incoming edges ``j -> i`` (``j`` a cell input
  or an earlier node) of ``MixedOp_ji(h_j)``; edge ``e`` of the list (and row
  ``e`` of ``alpha``) is the ``e``-th pair ``(j, i)`` in the order ``i = 0, 1, ..``,
  ``j = 0 .. i + 1``.

  Args:
    steps: intermediate nodes.
    multiplier: how many of the last intermediate nodes form the output.
    prev_prev_features, prev_features: channels of the two inputs.
    features: channels of every node.
    reduction: stride 2 on the edges leaving the inputs.
    reduce_input: the previous cell was a reduction cell.
    primitives: candidate ops.
    rngs: ``nnx.Rngs``.
  """

  def __init__(self, *, steps: int, multiplier: int, prev_prev_features: int,
               prev_features: int, features: int, reduction: bool, reduce_input: bool,
               primitives: Sequence[str], rngs: nnx.Rngs):
    steps = _check_positive_int("steps", steps)
    multiplier = _check_positive_int("multiplier", multiplier)
    if multiplier > steps:  # more would concatenate the cell's inputs into its output
      raise ValueError(f"multiplier must be <= steps={steps}, got {multiplier}")
    self.steps = steps
    self.multiplier = multiplier
    self.pre0 = preprocess(prev_prev_features, features, reduce_input=reduce_input,
                           norm=_search_norm, rngs=rngs)
    self.pre1 = preprocess(prev_features, features, reduce_input=False, norm=_search_norm,
                           rngs=rngs)
    self.edges = nnx.List([
        MixedOp(features, 2 if reduction and j < 2 else 1, primitives=primitives, rngs=rngs)
        for i in range(steps) for j in range(2 + i)])

  def __call__(self, s0: jax.Array, s1: jax.Array, weights: jax.Array) -> jax.Array:
    """``weights``: ``(num_edges, num_ops)`` mixing weights of this cell type."""
    shape = (len(self.edges), len(self.edges[0].primitives))
    if tuple(np.shape(weights)) != shape:  # JAX would clamp a missing edge row to the last one
      raise ValueError(f"weights must have shape {shape} (edges, ops), got "
                       f"{tuple(np.shape(weights))}")
    states = [self.pre0(s0), self.pre1(s1)]
    offset = 0
    for _ in range(self.steps):
      node = None
      for j, h in enumerate(states):
        term = self.edges[offset + j](h, weights[offset + j])
        node = term if node is None else node + term
      offset += len(states)
      states.append(node)
    return jnp.concatenate(states[-self.multiplier:], axis=-1)


class SearchNetwork(nnx.Module):
  """The DARTS search network (Flax NNX); call it as ``net(x, alphas)``.

  Stem: 3x3 conv to ``stem_multiplier * channels`` + affine batch norm. Then
  ``num_cells`` :class:`SearchCell` s; the cells at
  :func:`sparsejax.models.darts.reduction_cells` (1/3 and 2/3 of the depth) are
  reduction cells and double the node channels. Global average pooling and a
  dense classifier.

  Args:
    num_cells: number of cells (DARTS search: 8).
    channels: node channels of the first stage (DARTS search: 16).
    steps: intermediate nodes per cell (DARTS: 4).
    multiplier: nodes concatenated into a cell's output (DARTS: 4).
    stem_multiplier: stem channels over ``channels`` (DARTS: 3).
    primitives: candidate op names (default all of ``PRIMITIVES``).
    num_classes: number of logits.
    in_channels: channels of the NHWC input.
    rngs: ``nnx.Rngs`` for the initialisers.
  """

  def __init__(self, *, num_cells: int = 8, channels: int = 16, steps: int = 4,
               multiplier: int = 4, stem_multiplier: int = 3,
               primitives: Sequence[str] = PRIMITIVES, num_classes: int = 10,
               in_channels: int = 3, rngs: nnx.Rngs):
    num_cells = _check_positive_int("num_cells", num_cells)
    channels = _check_positive_int("channels", channels)
    steps = _check_positive_int("steps", steps)
    multiplier = _check_positive_int("multiplier", multiplier)
    if multiplier > steps:
      raise ValueError(f"multiplier must be <= steps={steps}, got {multiplier}")
    stem_multiplier = _check_positive_int("stem_multiplier", stem_multiplier)
    self.primitives = check_primitives(primitives)
    self.num_edges = num_edges(steps)
    self.steps = steps
    self.in_channels = _check_positive_int("in_channels", in_channels)
    stem_features = stem_multiplier * channels
    self.stem = _Stem(self.in_channels, stem_features, BatchStatNorm(stem_features, affine=True),
                      rngs)
    reductions = reduction_cells(num_cells)
    self.reduction = tuple(i in reductions for i in range(num_cells))
    prev_prev, prev, features, reduce_input = stem_features, stem_features, channels, False
    cells = []
    for reduction in self.reduction:
      features *= 2 if reduction else 1
      cells.append(SearchCell(steps=steps, multiplier=multiplier, prev_prev_features=prev_prev,
                              prev_features=prev, features=features, reduction=reduction,
                              reduce_input=reduce_input, primitives=self.primitives, rngs=rngs))
      prev_prev, prev, reduce_input = prev, multiplier * features, reduction
    self.cells = nnx.List(cells)
    self.fc = nnx.Linear(prev, _check_positive_int("num_classes", num_classes), rngs=rngs)

  @property
  def alpha_shape(self) -> tuple[int, int]:
    """``(num_edges, num_ops)`` of each entry of ``alphas``."""
    return (self.num_edges, len(self.primitives))

  def init_alphas(self, key: jax.Array, scale: float = 1e-3) -> dict[str, jax.Array]:
    """:func:`init_alphas` for this network's shape."""
    return init_alphas(key, steps=self.steps, num_ops=len(self.primitives), scale=scale)

  def __call__(self, x: jax.Array, alphas: Mapping[str, jax.Array]) -> jax.Array:
    """Maps NHWC images and architecture logits to class logits."""
    check_alphas(alphas, *self.alpha_shape)
    if x.ndim != 4 or x.shape[-1] != self.in_channels:
      raise ValueError(f"x must have shape (batch, height, width, {self.in_channels}) (NHWC), "
                       f"got {x.shape}")
    weights = {name: jax.nn.softmax(alphas[name], axis=-1) for name in CELL_TYPES}
    s0 = s1 = self.stem(x)
    for reduction, cell in zip(self.reduction, self.cells):
      s0, s1 = s1, cell(s0, s1, weights["reduce" if reduction else "normal"])
    return self.fc(jnp.mean(s1, axis=(1, 2)))
