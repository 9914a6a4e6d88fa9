"""Building the smaller model once the kept entries of every state leaf are known.

Two ways, tried in order:

1. **From the constructor** (models with a ``.config`` of constructor keyword
   arguments, like every ``sparsejax.models`` model). Which config entries set
   which parameter axes is found by *probing* the constructor abstractly
   (``nnx.eval_shape``, no arrays allocated): the int entries are bumped and
   the state-leaf axes whose length changes are recorded, with their slope.
   Solving for the target lengths gives the new config; entries that are
   ``None`` (defaults like ``block_widths=None``) are materialised as lists
   first when the defaults cannot express the target. The model is then built
   with ``type(model)(**config, rngs=...)`` and must have exactly the target
   shapes, or this route is abandoned. No per-model table is involved.
2. **From the state** (any other module): the module is cloned, its Variables
   replaced by the smaller arrays, and the width attributes of Flax layers
   (``nnx.Linear``, ``nnx.Conv``, ``nnx.BatchNorm``, ``nnx.LayerNorm``,
   ``nnx.GroupNorm``) updated. Code that reads other width attributes of its
   own is caught by the output check in :func:`sparsejax.compact.compact`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sparsejax import tree as tree_lib

__all__ = ["state_shapes", "set_state", "config_for_shapes", "rebuild"]

Shapes = dict[str, tuple[int, ...]]

# (class, kind, config json) -> (base config, slots, attribution) for reuse.
_PROBE_CACHE: dict[tuple[Any, str, str], tuple[dict, list, dict] | None] = {}
_MAX_NONE_LENGTH = 128


def state_shapes(model) -> Shapes:
  """``{path: shape}`` of every Variable in ``model`` (abstract or concrete)."""
  state = nnx.state(model)
  flat = jax.tree_util.tree_flatten_with_path(state)[0]
  return {tree_lib.path_str(p): tuple(np.shape(x)) for p, x in flat}


def set_state(model, values: Mapping[str, Any], *, cast: bool = True) -> None:
  """Replaces every Variable's value in ``model`` by ``values[path]`` (in place).

  ``cast``: convert each value to the dtype the variable has now (``False``:
  keep the value's own dtype, as :func:`sparsejax.compact.load` does).
  """
  state = nnx.state(model)
  flat, treedef = jax.tree_util.tree_flatten_with_path(state)
  new = []
  for p, old in flat:
    path = tree_lib.path_str(p)
    if path not in values:
      raise KeyError(f"no value for state leaf {path!r}")
    v = values[path]
    dtype = getattr(old, "dtype", None)
    if (v is old or not hasattr(v, "shape") or getattr(v, "dtype", None) == dtype
        or not cast):
      new.append(v if not isinstance(v, np.ndarray) else jnp.asarray(v))
    else:
      new.append(jnp.asarray(v, dtype=dtype))
  nnx.update(model, jax.tree_util.tree_unflatten(treedef, new))


# ----------------------------------------------------------------------------
# Config probing
# ----------------------------------------------------------------------------


def _int_slots(cfg, prefix=()) -> list[tuple[tuple, int]]:
  out = []
  items = cfg.items() if isinstance(cfg, Mapping) else enumerate(cfg)
  for k, v in items:
    if isinstance(v, bool):
      continue
    if isinstance(v, (int, np.integer)):
      out.append((prefix + (k,), int(v)))
    elif isinstance(v, (list, tuple, Mapping)):
      out.extend(_int_slots(v, prefix + (k,)))
  return out


def _plain(cfg):
  if isinstance(cfg, Mapping):
    return {k: _plain(v) for k, v in cfg.items()}
  if isinstance(cfg, (list, tuple)):
    return [_plain(v) for v in cfg]
  if isinstance(cfg, np.integer):
    return int(cfg)
  return cfg


def _with(cfg, updates: Mapping[tuple, Any]) -> dict:
  new = _plain(copy.deepcopy(cfg))
  for path, value in updates.items():
    node = new
    for k in path[:-1]:
      node = node[k]
    node[path[-1]] = value
  return new


def _get(cfg, path):
  for k in path:
    cfg = cfg[k]
  return cfg


def _config_key(cfg) -> str:
  return json.dumps(_plain(cfg), sort_keys=True, default=repr)


def _abstract_model(cls, cfg):
  try:
    return nnx.eval_shape(lambda: cls(**cfg, rngs=nnx.Rngs(0)))
  except Exception:  # pylint: disable=broad-except  (a rejected probe)
    return None


def _abstract_shapes(cls, cfg) -> Shapes | None:
  model = _abstract_model(cls, cfg)
  return None if model is None else state_shapes(model)


def _verified(cls, cfg, target: Shapes):
  """The abstract model for ``cfg`` if its state has exactly ``target`` shapes."""
  if cfg is None:
    return None
  model = _abstract_model(cls, cfg)
  if model is None or state_shapes(model) != target:
    return None
  return model


def _same_layout(a: Shapes, b: Shapes) -> bool:
  return a.keys() == b.keys() and all(len(a[k]) == len(b[k]) for k in a)


def _candidate_slots(cfg, shapes: Shapes) -> list[tuple[tuple, int]]:
  sizes = {s for shape in shapes.values() for s in shape}
  return [(path, v) for path, v in _int_slots(cfg) if v in sizes and v >= 1]


def _attribute(cls, cfg, shapes: Shapes, slots, *, at_once: bool = True) -> dict:
  """``{(path, axis): (slot index, slope)}`` for axes set by exactly one slot.

  With ``at_once`` all slots are bumped together (two probes); if the
  constructor rejects that, or with ``at_once=False``, one slot at a time.
  """
  if not slots:
    return {}
  # All slots at once, by distinct amounts, twice: an axis moved by slot i with
  # slope s moves by s*(i+1) and s*(i+1)**2 (monotone bumps respect orderings).
  sa = sb = None
  if at_once:
    sa = _abstract_shapes(cls, _with(cfg, {p: v + i + 1 for i, (p, v) in enumerate(slots)}))
    sb = _abstract_shapes(cls, _with(cfg, {p: v + (i + 1) ** 2
                                           for i, (p, v) in enumerate(slots)}))
  if sa is not None and sb is not None and _same_layout(sa, shapes) and _same_layout(sb, shapes):
    attrib = {}
    for path, shape in shapes.items():
      for ax, s0 in enumerate(shape):
        da, db = sa[path][ax] - s0, sb[path][ax] - s0
        if da == 0 and db == 0:
          continue
        if da <= 0 or db % da:
          continue
        i = db // da - 1
        if 0 <= i < len(slots) and da % (i + 1) == 0:
          attrib[(path, ax)] = (i, da // (i + 1))
    return attrib
  # One slot at a time.
  seen: dict[tuple[str, int], list[tuple[int, int]]] = {}
  for i, (p, v) in enumerate(slots):
    for delta in (1, -1):
      if v + delta < 1:
        continue
      s = _abstract_shapes(cls, _with(cfg, {p: v + delta}))
      if s is not None and _same_layout(s, shapes):
        break
    else:
      continue
    for path, shape in shapes.items():
      for ax, s0 in enumerate(shape):
        d = s[path][ax] - s0
        if d:
          seen.setdefault((path, ax), []).append((i, d * delta))
  return {k: v[0] for k, v in seen.items() if len(v) == 1}


def _solve(cfg, shapes: Shapes, target: Shapes, slots, attrib) -> dict | None:
  cands: dict[int, set[int]] = {}
  for (path, ax), (i, slope) in attrib.items():
    d = target[path][ax] - shapes[path][ax]
    if slope == 0 or d % slope:
      return None
    cands.setdefault(i, set()).add(slots[i][1] + d // slope)
  updates = {}
  for i, vals in cands.items():
    if len(vals) != 1:
      return None
    (v,) = vals
    if v < 1:
      return None
    if v != slots[i][1]:
      updates[slots[i][0]] = v
  return _with(cfg, updates)


def _materialise(cls, cfg, shapes: Shapes) -> tuple[dict, list, dict] | None:
  """Replaces ``None`` entries by lists so that the config reproduces ``shapes``."""
  none_keys = [k for k, v in cfg.items() if v is None]
  if not none_keys:
    return None
  ints = [v for _, v in _int_slots(cfg)]
  fills = sorted({1, max(ints) if ints else 1})
  base = _plain(cfg)
  found = None
  for key in none_keys:
    found = None
    for length in range(1, _MAX_NONE_LENGTH + 1):
      for fill in fills:
        trial = dict(base, **{key: [fill] * length})
        s = _abstract_shapes(cls, trial)
        if s is None or not _same_layout(s, shapes):
          continue
        slots = _candidate_slots(trial, s)
        attrib = _attribute(cls, trial, s, slots)
        solved = _solve(trial, s, shapes, slots, attrib)
        if solved is not None:
          # Same slots (paths), now holding the values that should reproduce
          # ``shapes`` (the final target shapes are verified by the caller).
          found = (solved, [(path, _get(solved, path)) for path, _ in slots], attrib)
          break
      if found is not None:
        break
    if found is None:
      return None
    base = found[0]
  return found


def config_for_shapes(model, target: Shapes) -> tuple[dict, Any] | None:
  """A config for ``type(model)`` whose state has exactly the ``target`` shapes.

  Returns:
    ``(config, abstract_model)`` -- the model built by ``nnx.eval_shape`` from
    the config, its Variables holding shapes only -- or ``None`` when
    ``model`` has no ``.config`` or no config is found.
  """
  cfg = getattr(model, "config", None)
  if not isinstance(cfg, Mapping):
    return None
  cls = type(model)
  shapes = state_shapes(model)
  if shapes.keys() != target.keys():
    return None
  key = _config_key(cfg)

  def cached(kind, make):
    k = (cls, kind, key)
    if k not in _PROBE_CACHE:
      _PROBE_CACHE[k] = make()
    return _PROBE_CACHE[k]

  def at_once():
    slots = _candidate_slots(cfg, shapes)
    return _plain(cfg), slots, _attribute(cls, cfg, shapes, slots)

  def one_by_one():
    slots = _candidate_slots(cfg, shapes)
    return _plain(cfg), slots, _attribute(cls, cfg, shapes, slots, at_once=False)

  # Cheapest first: all entries probed together; then ``None`` entries made
  # explicit; then every entry probed on its own.
  for kind, make in (("at_once", at_once), ("materialised", lambda: _materialise(cls, cfg, shapes)),
                     ("one_by_one", one_by_one)):
    found = cached(kind, make)
    if found is None:
      continue
    base, slots, attrib = found
    solved = _solve(base, shapes, target, slots, attrib)
    abstract = _verified(cls, solved, target)
    if abstract is not None:
      return solved, abstract
  return None


# ----------------------------------------------------------------------------
# Rebuilding
# ----------------------------------------------------------------------------


def _fix_flax_widths(model) -> None:
  """Updates the width attributes of Flax layers to their (new) kernel shapes."""
  for _, m in nnx.iter_modules(model):
    if isinstance(m, nnx.Conv):
      k = m.kernel.get_value()
      groups = int(m.feature_group_count)
      if groups > 1 and groups == m.in_features and m.out_features % groups == 0:
        # Depthwise (multiplier out/in): the group count follows the width.
        groups = int(k.shape[-1]) // (int(m.out_features) // groups)
        m.feature_group_count = groups
      m.in_features = int(k.shape[-2]) * groups
      m.out_features = int(k.shape[-1])
      m.kernel_shape = tuple(int(s) for s in k.shape)
    elif isinstance(m, nnx.Linear):
      k = m.kernel.get_value()
      m.in_features, m.out_features = int(k.shape[0]), int(k.shape[1])
    elif isinstance(m, nnx.LinearGeneral):
      k = tuple(int(s) for s in m.kernel.get_value().shape)
      nb, ni = len(m.batch_axis), len(m.in_features)
      m.in_features, m.out_features = k[nb:nb + ni], k[nb + ni:]
    elif isinstance(m, nnx.Einsum):
      m.kernel_shape = tuple(int(s) for s in m.kernel.get_value().shape)
      if isinstance(getattr(m, "bias", None), nnx.Variable):
        m.bias_shape = tuple(int(s) for s in m.bias.get_value().shape)
    elif isinstance(m, (nnx.BatchNorm, nnx.LayerNorm)):
      for name in ("scale", "bias", "mean", "var"):
        v = getattr(m, name, None)
        if isinstance(v, nnx.Variable):
          m.num_features = int(v.get_value().shape[-1])
          break
    elif isinstance(m, nnx.GroupNorm):
      for name in ("scale", "bias"):
        v = getattr(m, name, None)
        if isinstance(v, nnx.Variable):
          m.num_features = int(v.get_value().shape[-1])
          break
      # Only one-channel groups (instance norm) can lose channels; wider groups
      # mix their channels' statistics and the analysis pins them.
      m.num_groups = int(m.num_features) // int(m.group_size)


def rebuild(model, values: Mapping[str, Any]) -> tuple[Any, str, dict | None]:
  """Builds a module like ``model`` holding ``values`` (``{path: array}``).

  Returns:
    ``(module, method, config)``: ``method`` is ``"config"`` (built by the
    constructor from ``config``) or ``"state"`` (a clone with replaced arrays;
    ``config`` is ``None``).
  """
  target = {p: tuple(np.shape(v)) for p, v in values.items()}
  found = config_for_shapes(model, target)
  if found is not None:
    cfg, new = found
    set_state(new, values)
    return new, "config", cfg
  new = nnx.clone(model)
  set_state(new, values)
  _fix_flax_widths(new)
  return new, "state", None
