"""Deriving a discrete genotype from architecture logits, and genotype files.

DARTS's rule: with ``W = softmax(alpha)`` per edge, for each intermediate node
keep the two incoming edges whose strongest non-``none`` op weight is largest,
and on each kept edge the strongest non-``none`` op. Ties go to the lower edge
index and the lower op index. A node's two edges are listed strongest first.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sparsejax.models.darts import PRIMITIVES, Genotype, genotype_to_json, parse_genotype
from sparsejax.search.space import CELL_TYPES, check_alphas, check_primitives, num_edges

__all__ = [
    "derive_cell",
    "derive_genotype",
    "save_genotype",
    "load_genotype",
    "genotype_str",
]


def _softmax(x: np.ndarray) -> np.ndarray:
  z = np.exp(x - x.max(axis=-1, keepdims=True))
  return z / z.sum(axis=-1, keepdims=True)


def _steps_for(edges: int) -> int:
  steps = 1
  while num_edges(steps) < edges:
    steps += 1
  if num_edges(steps) != edges:
    raise ValueError(f"alphas have {edges} edges, which is no cell's edge count "
                     f"(steps * (steps + 3) / 2: 2, 5, 9, 14, 20, ...)")
  return steps


def derive_cell(alpha: Any, primitives: Sequence[str] = PRIMITIVES,
                keep: int = 2) -> tuple[tuple[str, int], ...]:
  """The discrete edges of one cell type from its logits ``(num_edges, num_ops)``.

  Args:
    alpha: architecture logits of one cell type.
    primitives: op names of the columns.
    keep: incoming edges kept per node, 1 or 2 (DARTS: 2; the first node has
      only two inputs).

  Returns:
    ``(op, input)`` pairs, ``keep`` per intermediate node.
  """
  if isinstance(keep, bool) or not isinstance(keep, (int, np.integer)) or not 1 <= keep <= 2:
    raise ValueError(f"keep must be 1 or 2 (incoming edges per node; the first node has two "
                     f"inputs), got {keep!r}")
  primitives = check_primitives(primitives)
  alpha = np.asarray(alpha, np.float64)
  if not np.all(np.isfinite(alpha)):
    raise ValueError(f"alpha must be finite (a search that diverged has no architecture), got "
                     f"{int(np.size(alpha) - np.isfinite(alpha).sum())} non-finite logits")
  w = _softmax(alpha)
  if w.ndim != 2 or w.shape[1] != len(primitives):
    raise ValueError(f"alpha must have shape (num_edges, {len(primitives)}) (one column per "
                     f"primitive), got {w.shape}")
  steps = _steps_for(w.shape[0])
  candidates = np.array([p != "none" for p in primitives])
  masked = np.where(candidates, w, -np.inf)
  best_op = np.argmax(masked, axis=1)  # first maximum: lower op index on ties
  strength = masked.max(axis=1)
  edges, offset = [], 0
  for i in range(steps):
    n = 2 + i
    order = np.argsort(-strength[offset:offset + n], kind="stable")[:keep]
    edges.extend((primitives[best_op[offset + j]], int(j)) for j in order)
    offset += n
  return tuple(edges)


def derive_genotype(alphas: Mapping[str, Any], primitives: Sequence[str] = PRIMITIVES, *,
                    multiplier: int = 4) -> Genotype:
  """DARTS's discrete genotype from ``{"normal": alpha, "reduce": alpha}``.

  Args:
    alphas: architecture logits, each ``(num_edges, num_ops)``.
    primitives: op names of the columns.
    multiplier: the last ``multiplier`` intermediate nodes form a cell's output.

  Returns:
    The :class:`~sparsejax.models.darts.Genotype`; ``*_concat`` lists the last
    ``multiplier`` nodes.
  """
  primitives = check_primitives(primitives)
  if not isinstance(alphas, Mapping) or set(alphas) != set(CELL_TYPES):
    check_alphas(alphas, 0, 0)  # raises the standard message
  edges = np.shape(alphas["normal"])[0] if np.ndim(alphas["normal"]) == 2 else -1
  check_alphas(alphas, edges, len(primitives))
  steps = _steps_for(edges)
  if isinstance(multiplier, bool) or not isinstance(multiplier, int) \
      or not 1 <= multiplier <= steps:
    raise ValueError(f"multiplier must be an int in [1, {steps}], got {multiplier!r}")
  concat = tuple(range(2 + steps - multiplier, 2 + steps))
  return Genotype(normal=derive_cell(alphas["normal"], primitives), normal_concat=concat,
                  reduce=derive_cell(alphas["reduce"], primitives), reduce_concat=concat)


def genotype_str(genotype: Genotype) -> str:
  """A one-line summary: ``normal: op<-j, ... | reduce: ...``."""
  g = parse_genotype(genotype)
  cell = lambda edges: ", ".join(f"{op}<-{j}" for op, j in edges)
  return f"normal: {cell(g.normal)} | reduce: {cell(g.reduce)}"


def save_genotype(genotype: Genotype, path: str | os.PathLike) -> str:
  """Writes the genotype as JSON (``sparsejax.models.darts.genotype_to_json``); returns the path."""
  path = os.fspath(path)
  with open(path, "w") as f:
    f.write(json.dumps(json.loads(genotype_to_json(genotype)), indent=1) + "\n")
  return path


def load_genotype(path: str | os.PathLike) -> Genotype:
  """Reads a genotype JSON file written by :func:`save_genotype`."""
  return parse_genotype(os.fspath(path))
