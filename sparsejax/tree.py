"""Parameter-tree helpers shared by every sparsejax module.

A *path* is the key path of a leaf written as a string, components joined by
``"/"``: ``"block1/conv/kernel"``, ``"layers/0/kernel"``. A *filter* is a
function ``filter_fn(path: str, leaf) -> bool`` that selects the leaves an
algorithm acts on. Filters compose with :func:`all_of`, :func:`any_of` and
:func:`negate`.

These helpers work on any pytree of arrays: Flax NNX ``nnx.State``, Flax Linen
parameter dicts, plain nested dicts and lists.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

FilterFn = Callable[[str, Any], bool]

__all__ = [
    "FilterFn",
    "path_str",
    "leaves_with_paths",
    "regex",
    "kernels",
    "conv_kernels",
    "dense_kernels",
    "bn_scales",
    "all_of",
    "any_of",
    "negate",
    "select",
    "map_selected",
    "check_masks_match",
]

KERNEL_NAMES = ("kernel", "weight", "w")


def _key_str(key) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def path_str(key_path) -> str:
  """Turns a JAX key path (tuple of keys) into ``"a/b/0/kernel"``.

  A trailing ``.value`` attribute (an NNX ``Variable`` inside an ``nnx.State``)
  is dropped, so a state of Variables and its pure-array version give the same
  paths.
  """
  keys = list(key_path)
  if keys and isinstance(keys[-1], jax.tree_util.GetAttrKey) and keys[-1].name == "value":
    keys = keys[:-1]
  return "/".join(_key_str(k) for k in keys)


def leaves_with_paths(tree, is_leaf=None) -> list[tuple[str, Any]]:
  """Returns ``[(path_str, leaf), ...]`` in ``jax.tree`` flattening order."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
  return [(path_str(p), leaf) for p, leaf in flat]


def _last(path: str) -> str:
  return path.rsplit("/", 1)[-1]


def _ndim(leaf) -> int:
  return int(np.ndim(leaf)) if not hasattr(leaf, "ndim") else int(leaf.ndim)


def kernels(path: str, leaf) -> bool:
  """Selects conv and dense kernels: a leaf named kernel/weight/w with ndim >= 2.

  This is the default filter of every pruning routine: biases, batch-norm
  scales and shifts, running statistics and embeddings-of-one-dim are left alone.
  """
  return _last(path) in KERNEL_NAMES and _ndim(leaf) >= 2


def conv_kernels(path: str, leaf) -> bool:
  """Selects convolution kernels (a kernel with ndim >= 3, e.g. HWIO)."""
  return kernels(path, leaf) and _ndim(leaf) >= 3


def dense_kernels(path: str, leaf) -> bool:
  """Selects dense kernels (a 2-D kernel, ``(in, out)``)."""
  return kernels(path, leaf) and _ndim(leaf) == 2


def bn_scales(path: str, leaf) -> bool:
  """Selects normalisation scales: a 1-D leaf named ``scale`` (NNX BatchNorm)."""
  return _last(path) == "scale" and _ndim(leaf) == 1


def regex(pattern: str) -> FilterFn:
  """A filter that selects leaves whose path matches ``pattern`` (``re.search``)."""
  if not isinstance(pattern, str):
    raise TypeError(f"pattern must be a str regex, got {pattern!r}")
  compiled = re.compile(pattern)
  return lambda path, leaf: compiled.search(path) is not None


def all_of(*filters: FilterFn) -> FilterFn:
  return lambda path, leaf: all(f(path, leaf) for f in filters)


def any_of(*filters: FilterFn) -> FilterFn:
  return lambda path, leaf: any(f(path, leaf) for f in filters)


def negate(f: FilterFn) -> FilterFn:
  return lambda path, leaf: not f(path, leaf)


def _is_array_leaf(x) -> bool:
  return hasattr(x, "shape") and hasattr(x, "dtype")


def select(tree, filter_fn: FilterFn | None = None) -> Any:
  """Returns a pytree shaped like ``tree`` holding ``True``/``False`` per leaf.

  ``filter_fn=None`` means :func:`kernels`. Only array leaves can be selected.
  """
  filter_fn = kernels if filter_fn is None else filter_fn
  if not callable(filter_fn):
    raise TypeError(f"filter_fn must be callable (path, leaf) -> bool, got {filter_fn!r}")
  return jax.tree_util.tree_map_with_path(
      lambda p, x: bool(_is_array_leaf(x) and filter_fn(path_str(p), x)), tree)


def check_selected(tree, selected, who: str, wanted: str = "") -> None:
  """Raises ``ValueError`` when ``selected`` (from :func:`select`) holds no True.

  A transform whose filter matches nothing would silently train a dense model
  (e.g. a mistyped ``filter_regex``). The message names ``who``, what the
  filter should select (``wanted``) and the first parameter paths.
  """
  if any(jax.tree.leaves(selected)):
    return
  paths = [p for p, _ in leaves_with_paths(tree)]
  raise ValueError(
      f"{who}: filter_fn selected no parameter{'; it must select ' + wanted if wanted else ''}. "
      f"Parameter paths: {paths[:12]}{' ...' if len(paths) > 12 else ''}")


def map_selected(fn, tree, selected, *rest, none_for_unselected: bool = True):
  """Applies ``fn(leaf, *rest_leaves)`` where ``selected`` is True.

  Unselected leaves become ``None`` (the masks convention) or are passed
  through unchanged when ``none_for_unselected=False``.
  """
  def go(sel, x, *r):
    if sel:
      return fn(x, *r)
    return None if none_for_unselected else x
  return jax.tree.map(go, selected, tree, *rest)


def _is_single_leaf(x) -> bool:
  """``x`` is one pytree leaf, not a container of them."""
  return jax.tree.structure(x).num_nodes == 1 and jax.tree.structure(x).num_leaves == 1


class LeafTuple(tuple):
  """A tuple jax keeps as one leaf, for pairing values leaf by leaf with
  ``jax.tree.map`` (a plain tuple would be taken for a container in params)."""

  def __new__(cls, *items):
    return super().__new__(cls, items)


def check_masks_match(params, masks, argname: str = "masks") -> None:
  """Raises ``ValueError`` when ``masks`` does not mirror ``params``.

  ``masks`` must have the tree structure of ``params`` with each leaf either
  ``None`` or a boolean-compatible array of the parameter's shape.
  """
  p_paths = leaves_with_paths(params)
  try:
    # Every mask leaf (None or an array) must sit where params has a leaf: a
    # mask leaf standing for a whole params subtree is a structure mismatch.
    def pair(m, p):
      if _is_single_leaf(p):
        return LeafTuple(m)
      if m is None:  # None for a whole subtree: none of its leaves is masked
        return [LeafTuple(None)] * len(jax.tree.leaves(p))
      raise ValueError(f"a mask leaf stands where params has a subtree ({type(p).__name__})")
    m_leaves = jax.tree.leaves(
        jax.tree.map(pair, masks, params, is_leaf=lambda x: x is None),
        is_leaf=lambda x: isinstance(x, LeafTuple))
    if len(m_leaves) != len(p_paths):
      raise ValueError(f"{len(m_leaves)} mask leaves for {len(p_paths)} parameters")
  except (ValueError, TypeError) as e:
    m_struct = jax.tree.structure(masks, is_leaf=lambda x: x is None)
    raise ValueError(
        f"{argname} must have the same tree structure as params (None for "
        f"leaves that are not masked); got {argname} structure {m_struct} vs "
        f"params structure {jax.tree.structure(params)}: {e}") from None
  for (path, p), (m,) in zip(p_paths, m_leaves):
    if m is None:
      continue
    if tuple(np.shape(m)) != tuple(np.shape(p)):
      raise ValueError(
          f"{argname} leaf at '{path}' has shape {tuple(np.shape(m))}, but the "
          f"parameter has shape {tuple(np.shape(p))}; they must be equal")


