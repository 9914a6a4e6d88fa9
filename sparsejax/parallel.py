r"""Device meshes, sharding rules, and optimizer states sharded like their parameters.

Sharded training in sparsejax is plain ``jax.jit`` with ``in_shardings`` /
``out_shardings`` (what ``pjit`` became) over a :class:`jax.sharding.Mesh`
whose axes are all ``Auto``: the XLA SPMD partitioner inserts the
collectives. This module decides *where every array lives*:

* **Mesh.** :func:`make_mesh` / :func:`mesh_from_config` build it from a mapping
  of axis names to sizes, e.g. ``config.mesh = {"data": -1, "model": 2}``
  (``-1``: whatever devices are left). Batches are split over ``"data"``;
  parameters may be split over any axis by the rules.
* **Rules** (as in big_vision / t5x) are a sequence of ``(path_regex, spec)``.
  The first rule whose regex ``re.search``-es a leaf's path (``"conv1/kernel"``,
  see :mod:`sparsejax.tree`) gives its :class:`~jax.sharding.PartitionSpec`;
  a leaf no rule matches is replicated. A spec is a ``PartitionSpec`` or a
  tuple of entries (``None``, an axis name, or a tuple of axis names); one
  ``...`` (or the string ``"..."``) stands for as many ``None`` as needed, so
  ``(..., "model")`` splits the *last* axis of a leaf of any rank (the output
  channels of HWIO conv and ``(in, out)`` dense kernels). Without ``...`` a
  spec shorter than the leaf's rank leaves the trailing axes whole (JAX's
  rule). A spec whose mesh axes do not divide the dimension they split raises
  a ``ValueError`` naming the leaf (``indivisible="error"``, the default) or,
  with ``indivisible="replicate"``, keeps just that dimension whole (one
  warning lists them); a rank mismatch or an unknown mesh axis is always an error.
* **Optimizer state like its parameters.** Every optimizer-state leaf whose
  key path *ends with* a parameter's path and has that parameter's shape gets
  that parameter's sharding (:func:`specs_like`): the SGD/Adam moments
  (``0/trace/conv1/kernel``), the masks of ``MagnitudePruningState`` and
  ``ChannelMaskState``, the :math:`\xi` of ``NetworkSlimmingState``, the
  :math:`U` of ``SparseGroupLassoState``; everything
  else (counts, per-leaf scalars such as the group lasso's :math:`\beta`,
  hyperparameters) is replicated. The longest matching parameter path wins.
  ``optax.tree_map_params`` does not serve here: it calls ``init`` on a
  placeholder instead of the parameters, which the sparsejax transforms
  cannot do (they choose leaves by path and shape): ``network_slimming``
  raises, ``sparse_group_lasso``'s scalar :math:`\beta` leaves are taken for
  parameter copies. :func:`init_opt_state` creates the state *born sharded*
  (``jax.jit(tx.init, out_shardings=...)``), so no device ever holds a
  replicated copy of it.
* **Batches** (:func:`batch_sharding`, :func:`make_global_batch`,
  :func:`process_train_batches`): split over ``"data"`` on their leading
  axis. On several hosts each process builds only its own rows of every
  global batch (the same rows whatever the process count, so the run does
  not depend on it) and :func:`jax.make_array_from_process_local_data` joins
  them into one global array; :func:`initialize_distributed` calls
  :func:`jax.distributed.initialize` when ``config.distributed`` asks.

Global magnitude thresholds (:mod:`sparsejax.masks`) are 31 rounds of
``sum(|w| <= t)`` over the leaves: on sharded leaves each device counts its
own shard and one all-reduce of int32 counts per round combines them; no
parameter is gathered. SVD-based steps (``prox.nuclear``,
``prox.truncate_svd``) are not partitioned by XLA: each device gathers the
whole kernel it decomposes. ``docs/scaling.md`` has the numbers.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from sparsejax import parallel
  >>> mesh = parallel.make_mesh({"data": -1, "model": 1})
  >>> params = {"fc": {"kernel": jnp.ones((4, 8)), "bias": jnp.zeros(8)}}
  >>> specs = parallel.partition_specs(params, [(r"kernel$", (..., "model"))], mesh)
  >>> specs["fc"]["kernel"], specs["fc"]["bias"]
  (P(None, 'model'), P())
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from absl import logging
import grain
import jax
import numpy as np
from jax.sharding import AbstractMesh, Mesh, NamedSharding, PartitionSpec

from sparsejax import tree as tree_lib
from sparsejax.data import pipeline as pipeline_lib
from sparsejax.data.datasets import Dataset

__all__ = [
    "DATA_AXIS",
    "MODEL_AXIS",
    "INDIVISIBLE",
    "MODEL_PARALLEL_RULES",
    "make_mesh",
    "check_config",
    "mesh_from_config",
    "rules_from_config",
    "partition_spec",
    "partition_specs",
    "specs_like",
    "to_shardings",
    "replicated",
    "param_shardings",
    "shardings_like_params",
    "shard_params",
    "init_opt_state",
    "batch_sharding",
    "process_batch_slice",
    "make_global_batch",
    "process_train_batches",
    "initialize_distributed",
    "bytes_per_device",
]

DATA_AXIS = "data"
MODEL_AXIS = "model"
INDIVISIBLE = ("error", "replicate")

# Split the output axis (the last one) of every conv/dense kernel, and the
# per-channel vectors that go with it, over "model".
MODEL_PARALLEL_RULES = (
    (r"(^|/)(kernel|weight|w)$", (..., MODEL_AXIS)),
    (r"(^|/)(bias|scale|mean|var)$", (..., MODEL_AXIS)),
)

MeshLike = Mesh | AbstractMesh | Mapping[str, int]


# ----------------------------------------------------------------------------
# Meshes
# ----------------------------------------------------------------------------


def _axis_items(axes: Any, argname: str) -> list[tuple[str, int]]:
  if hasattr(axes, "to_dict"):  # ml_collections.ConfigDict (keys come sorted)
    axes = axes.to_dict()
  if isinstance(axes, str):  # "data=-1,model=2" (a command-line flag)
    pairs = [p.split("=") for p in axes.replace(" ", "").split(",") if p]
    if not pairs or any(len(p) != 2 for p in pairs):
      raise ValueError(f"{argname} as a string must look like 'data=-1,model=2', got {axes!r}")
    try:
      axes = [(n, int(v)) for n, v in pairs]
    except ValueError:
      raise ValueError(f"{argname} sizes must be ints, got {axes!r}") from None
  if isinstance(axes, Mapping):
    items = list(axes.items())
  elif isinstance(axes, Sequence) and not isinstance(axes, (str, bytes)):
    items = []
    for item in axes:
      if (isinstance(item, (str, bytes)) or not isinstance(item, Sequence)
          or len(item) != 2):
        raise ValueError(f"{argname} must be a mapping or a sequence of (name, size) pairs, "
                         f"got the entry {item!r}")
      items.append((item[0], item[1]))
  else:
    raise TypeError(f"{argname} must be a mapping of axis name to size (e.g. "
                    f"{{'data': -1, 'model': 1}}), a sequence of pairs or a string "
                    f"'data=-1,model=1', got {axes!r}")
  if not items:
    raise ValueError(f"{argname} must name at least one axis, got {axes!r}")
  names = [n for n, _ in items]
  for n, s in items:
    if not isinstance(n, str) or not n:
      raise TypeError(f"{argname} axis names must be non-empty str, got {n!r}")
    if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or (s < 1 and s != -1):
      raise ValueError(f"{argname}[{n!r}] must be a positive int or -1 (the rest of the "
                       f"devices), got {s!r}")
  if len(set(names)) != len(names):
    raise ValueError(f"{argname} names an axis twice: {names}")
  if sum(1 for _, s in items if s == -1) > 1:
    raise ValueError(f"{argname} may give -1 for one axis only, got {dict(items)}")
  return [(n, int(s)) for n, s in items]


def make_mesh(axes: Mapping[str, int] | Sequence[tuple[str, int]], *,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh with ``Auto`` axes over all (or the given) devices.

  Args:
    axes: axis name -> size, in mesh order (the last axis varies fastest over
      the devices, so put the axis with the most traffic, ``"model"``, last).
      One size may be ``-1``: the number of devices divided by the product of
      the others. A sequence of ``(name, size)`` pairs or a string
      ``"data=-1,model=2"`` keeps its order; a ``ConfigDict`` lists its keys
      sorted.
    devices: the devices to use; default ``jax.devices()`` (every process's).

  Returns:
    A :class:`jax.sharding.Mesh` whose axis types are all ``Auto``.

  Raises:
    ValueError, TypeError: for malformed ``axes``, sizes whose product is
      not the number of devices, or ``devices`` empty or naming a device twice.
  """
  items = _axis_items(axes, "axes")
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  if not n or len(set(devices)) != n:
    raise ValueError(f"devices must be a non-empty sequence of distinct devices, got {n} "
                     f"device(s) of which {len(set(devices))} distinct: {devices}")
  known = math.prod(s for _, s in items if s != -1)
  if any(s == -1 for _, s in items):
    if n % known:
      raise ValueError(f"axes {dict(items)}: the fixed sizes (product {known}) must divide "
                       f"the {n} devices")
    items = [(name, n // known if s == -1 else s) for name, s in items]
  elif known != n:
    raise ValueError(f"axes {dict(items)} describe {known} devices, but there are {n}; give "
                     "-1 for one axis to take the rest")
  names = tuple(name for name, _ in items)
  shape = tuple(s for _, s in items)
  return jax.make_mesh(shape, names, axis_types=(jax.sharding.AxisType.Auto,) * len(names),
                       devices=devices)


def mesh_from_config(config) -> Mesh | None:
  """``make_mesh(config.mesh)``, or None when the config has no (or a None) ``mesh``."""
  axes = config.get("mesh", None) if hasattr(config, "get") else getattr(config, "mesh", None)
  if axes is None or (hasattr(axes, "__len__") and len(axes) == 0):
    return None
  return make_mesh(axes)


def check_config(config) -> None:
  """Checks ``config.mesh``, ``config.sharding_rules`` and ``config.sharding_indivisible``
  without touching a device, naming the field in the error.

  The trainer calls it before any data is loaded or model built; whether the
  mesh's sizes fit the devices is only known when the mesh is made.
  """
  indivisible = config.get("sharding_indivisible", "error")
  if indivisible not in INDIVISIBLE:
    raise ValueError(f"config.sharding_indivisible must be one of {INDIVISIBLE}, "
                     f"got {indivisible!r}")
  axes = config.get("mesh", None)
  if axes is None or (hasattr(axes, "__len__") and len(axes) == 0):
    return
  names = dict(_axis_items(axes, "config.mesh"))
  rules = rules_from_config(config)  # its errors name config.sharding_rules already
  try:
    _compile_rules(rules, names)
  except (TypeError, ValueError) as e:
    raise type(e)(f"config.sharding_rules: {e}") from None


def rules_from_config(config) -> tuple[tuple[str, Any], ...]:
  """The sharding rules ``config.sharding_rules`` names.

  It may be a sequence of ``(regex, spec)``, ``"model_parallel"``
  (:data:`MODEL_PARALLEL_RULES`), or absent / None / ``""`` /
  ``"replicated"``: no rules, every parameter replicated (pure data
  parallelism).
  """
  rules = config.get("sharding_rules", None) if hasattr(config, "get") else None
  if rules is None or rules in ("", "replicated"):
    return ()
  if rules == "model_parallel":
    return MODEL_PARALLEL_RULES
  if isinstance(rules, str):
    raise ValueError(f"config.sharding_rules must be a sequence of (regex, spec), "
                     f"'model_parallel' or 'replicated', got {rules!r}")
  return tuple(tuple(r) if isinstance(r, list) else r for r in rules)


# ----------------------------------------------------------------------------
# Rules -> partition specs
# ----------------------------------------------------------------------------


def _axis_sizes(mesh: MeshLike) -> dict[str, int]:
  if isinstance(mesh, (Mesh, AbstractMesh)):
    return dict(mesh.shape)
  if isinstance(mesh, Mapping):
    sizes = {}
    for k, v in mesh.items():
      if not isinstance(k, str) or not k:
        raise TypeError(f"mesh axis names must be non-empty str, got {k!r} in {dict(mesh)}")
      if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"mesh[{k!r}] must be a positive int (the axis size; -1 is only for "
                         f"make_mesh), got {v!r}")
      sizes[k] = int(v)
    return sizes
  raise TypeError(f"mesh must be a jax Mesh, an AbstractMesh or a mapping of axis sizes, "
                  f"got {mesh!r}")


def _check_indivisible(indivisible: str) -> None:
  if indivisible not in INDIVISIBLE:
    raise ValueError(f"indivisible must be one of {INDIVISIBLE}, got {indivisible!r}")


def _spec_entries(spec: Any, where: str) -> tuple:
  if spec is None:
    return ()
  if isinstance(spec, PartitionSpec):
    entries = tuple(spec)
  elif isinstance(spec, (str, bytes)) or not isinstance(spec, Sequence):
    raise TypeError(f"{where}: the spec must be a PartitionSpec or a tuple of axis names / "
                    f"None / ..., got {spec!r}")
  else:
    entries = tuple(spec)
  out = []
  for e in entries:
    if e is Ellipsis or e == "...":
      out.append(Ellipsis)
    elif e is None or isinstance(e, str):
      out.append(e)
    elif isinstance(e, Sequence) and all(isinstance(a, str) for a in e):
      out.append(tuple(e))
    else:
      raise TypeError(f"{where}: spec entries must be None, an axis name, a tuple of axis "
                      f"names or ..., got {e!r} in {spec!r}")
  if out.count(Ellipsis) > 1:
    raise ValueError(f"{where}: a spec may hold one ... only, got {spec!r}")
  return tuple(out)


def _compile_rules(rules, axis_sizes: Mapping[str, int]) -> list[tuple[re.Pattern, tuple, str]]:
  if isinstance(rules, (str, bytes)) or not isinstance(rules, Sequence):
    raise TypeError(f"rules must be a sequence of (path_regex, spec) pairs, got {rules!r}")
  out = []
  for i, rule in enumerate(rules):
    if (isinstance(rule, (str, bytes)) or not isinstance(rule, Sequence) or len(rule) != 2
        or not isinstance(rule[0], str)):
      raise ValueError(f"rules[{i}] must be a (path_regex, spec) pair, got {rule!r}")
    where = f"rules[{i}] ({rule[0]!r})"
    try:
      pattern = re.compile(rule[0])
    except re.error as e:
      raise ValueError(f"{where}: invalid regex: {e}") from None
    entries = _spec_entries(rule[1], where)
    for e in entries:
      for axis in (e if isinstance(e, tuple) else (e,)):
        if axis is not None and axis is not Ellipsis and axis not in axis_sizes:
          raise ValueError(f"{where}: spec {rule[1]!r} names mesh axis {axis!r}; the mesh "
                           f"has {list(axis_sizes)}")
    out.append((pattern, entries, where))
  return out


def _expand(entries: tuple, ndim: int, path: str, shape, where: str) -> list:
  if Ellipsis in entries:
    i = entries.index(Ellipsis)
    fixed = len(entries) - 1
    if fixed > ndim:
      raise ValueError(f"{where}: spec {entries!r} needs at least {fixed} dimensions, but "
                       f"'{path}' has shape {tuple(shape)}")
    return list(entries[:i]) + [None] * (ndim - fixed) + list(entries[i + 1:])
  if len(entries) > ndim:
    raise ValueError(f"{where}: spec {entries!r} has {len(entries)} entries, but '{path}' has "
                     f"shape {tuple(shape)} (rank {ndim}); use ... to align to the last axes")
  return list(entries) + [None] * (ndim - len(entries))


def _resolve(path: str, shape, compiled, axis_sizes, indivisible: str,
             kept_whole: list[str] | None = None) -> PartitionSpec:
  shape = tuple(int(s) for s in shape)
  for pattern, entries, where in compiled:
    if pattern.search(path) is None:
      continue
    full = _expand(entries, len(shape), path, shape, where)
    used = [a for e in full if e is not None for a in (e if isinstance(e, tuple) else (e,))]
    if len(set(used)) != len(used):
      raise ValueError(f"{where}: spec {entries!r} uses a mesh axis twice for '{path}'")
    for d, e in enumerate(full):
      if e is None:
        continue
      parts = math.prod(axis_sizes[a] for a in (e if isinstance(e, tuple) else (e,)))
      if shape[d] % parts:
        if indivisible == "error":
          raise ValueError(
              f"{where}: '{path}' has shape {shape}; dimension {d} ({shape[d]}) is split over "
              f"mesh axes {e!r} ({parts} parts), which does not divide it. Change the rule, "
              f"the mesh ({axis_sizes}) or pass indivisible='replicate' to keep such "
              "dimensions whole")
        if kept_whole is not None:
          kept_whole.append(f"{path} dim {d} ({shape[d]} over {e!r}: {parts})")
        full[d] = None
    while full and full[-1] is None:
      full.pop()
    return PartitionSpec(*full)
  return PartitionSpec()


def partition_spec(path: str, shape: Sequence[int], rules, mesh: MeshLike, *,
                   indivisible: str = "error") -> PartitionSpec:
  """The ``PartitionSpec`` the first matching rule gives a leaf (``P()`` if none).

  Args:
    path: the leaf's key path as a string, e.g. ``"features/0/conv/kernel"``.
    shape: the leaf's shape.
    rules: a sequence of ``(path_regex, spec)`` (see the module docstring).
    mesh: a ``Mesh``, an ``AbstractMesh`` or a mapping of axis sizes.
    indivisible: ``"error"`` (default) or ``"replicate"``: what to do when a
      dimension is not divisible by the mesh axes that split it.

  Returns:
    A ``PartitionSpec`` without trailing ``None`` entries.
  """
  _check_indivisible(indivisible)
  sizes = _axis_sizes(mesh)
  kept: list[str] = []
  spec = _resolve(path, shape, _compile_rules(rules, sizes), sizes, indivisible, kept)
  _log_kept_whole(kept)
  return spec


def _log_kept_whole(kept: list[str]) -> None:
  if kept:
    logging.warning("indivisible='replicate': %d dimension(s) not divisible by their mesh axes "
                    "kept whole: %s%s", len(kept), "; ".join(kept[:8]),
                    " ..." if len(kept) > 8 else "")


def _is_array(x) -> bool:
  return hasattr(x, "shape") and hasattr(x, "dtype")


def partition_specs(tree, rules, mesh: MeshLike, *, indivisible: str = "error"):
  """``PartitionSpec`` for every array leaf of ``tree`` by its path (see :func:`partition_spec`).

  ``tree`` may hold arrays or ``jax.ShapeDtypeStruct``; non-array leaves get
  ``P()``. Returns a tree of the same structure.
  """
  _check_indivisible(indivisible)
  sizes = _axis_sizes(mesh)
  compiled = _compile_rules(rules, sizes)
  kept: list[str] = []

  def one(kp, x):
    if not _is_array(x):
      return PartitionSpec()
    return _resolve(tree_lib.path_str(kp), x.shape, compiled, sizes, indivisible, kept)

  specs = jax.tree_util.tree_map_with_path(one, tree)
  _log_kept_whole(kept)
  return specs


def _is_spec(x) -> bool:
  return isinstance(x, PartitionSpec)


def specs_like(tree, params, param_specs):
  """Specs for ``tree`` (e.g. an optimizer state) that follow the parameters.

  A leaf of ``tree`` whose key path ends with (or is) the path of a leaf of
  ``params`` and has its shape gets that parameter's spec from
  ``param_specs`` (a tree like ``params``); when several parameter paths
  match, the longest wins. Every other leaf gets ``P()`` (replicated).

  Args:
    tree: any pytree of arrays or ``jax.ShapeDtypeStruct`` (an optimizer
      state, a whole train state).
    params: the parameters (arrays or ``ShapeDtypeStruct``).
    param_specs: a tree like ``params`` of ``PartitionSpec`` (or of
      ``NamedSharding``: their ``.spec`` is used).

  Returns:
    A tree like ``tree`` of ``PartitionSpec``.
  """
  p_leaves = tree_lib.leaves_with_paths(params)
  spec_tree = jax.tree.map(lambda s: s.spec if isinstance(s, NamedSharding) else s,
                           param_specs, is_leaf=lambda s: isinstance(s, NamedSharding))
  try:
    s_leaves = jax.tree.structure(params).flatten_up_to(spec_tree)
  except (ValueError, TypeError) as e:
    raise ValueError(f"param_specs must have the tree structure of params: {e}") from None
  by_path = {path: (tuple(np.shape(leaf)), spec)
             for (path, leaf), spec in zip(p_leaves, s_leaves)}

  def one(kp, x):
    if not _is_array(x):
      return PartitionSpec()
    parts = tree_lib.path_str(kp).split("/")
    for i in range(len(parts)):
      hit = by_path.get("/".join(parts[i:]))
      if hit is not None and hit[0] == tuple(x.shape):
        return hit[1]
    return PartitionSpec()

  return jax.tree_util.tree_map_with_path(one, tree)


def to_shardings(specs, mesh: Mesh):
  """``NamedSharding(mesh, spec)`` for every spec of a tree of ``PartitionSpec``."""
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=_is_spec)


def replicated(mesh: Mesh) -> NamedSharding:
  """The sharding that places a whole copy on every device of ``mesh``."""
  return NamedSharding(mesh, PartitionSpec())


# ----------------------------------------------------------------------------
# Parameters and optimizer states
# ----------------------------------------------------------------------------


def param_shardings(tree, mesh: Mesh, rules=(), *, indivisible: str = "error"):
  """``NamedSharding`` per leaf of ``tree`` (params, model state) from the rules."""
  return to_shardings(partition_specs(tree, rules, mesh, indivisible=indivisible), mesh)


def shard_params(params, mesh: Mesh, rules=(), *, indivisible: str = "error"):
  """``params`` placed on ``mesh`` by the rules (``jax.device_put``)."""
  return jax.device_put(params, param_shardings(params, mesh, rules, indivisible=indivisible))


def _sharding_of(x, where: str) -> NamedSharding:
  s = getattr(x, "sharding", None)
  if not isinstance(s, NamedSharding):
    raise ValueError(f"{where} must be placed with a NamedSharding (see shard_params), got "
                     f"sharding {s!r}")
  return s


def shardings_like_params(tree, params, mesh: Mesh | None = None):
  """``NamedSharding`` per leaf of ``tree``, each state leaf like its parameter.

  ``params`` must carry ``NamedSharding`` s (placed arrays, or
  ``ShapeDtypeStruct`` with ``sharding=``); see :func:`specs_like` for the
  matching. ``mesh`` defaults to the parameters' mesh.
  """
  flat = tree_lib.leaves_with_paths(params)
  if not flat:
    raise ValueError("params has no leaves")
  shardings = [_sharding_of(x, f"params leaf '{p}'") for p, x in flat]
  mesh = shardings[0].mesh if mesh is None else mesh
  param_specs = jax.tree.unflatten(jax.tree.structure(params), [s.spec for s in shardings])
  return to_shardings(specs_like(tree, params, param_specs), mesh)


def init_opt_state(init, params, mesh: Mesh | None = None):
  """Creates an optimizer state already sharded like ``params``.

  Runs ``init(params)`` under ``jax.jit`` with ``out_shardings`` from
  :func:`shardings_like_params`, so the state never exists unsharded.

  Args:
    init: an ``optax.GradientTransformation`` (its ``init``) or a function
      ``params -> state``.
    params: the placed parameters (see :func:`shard_params`).
    mesh: default: the parameters' mesh.

  Returns:
    The optimizer state.
  """
  init_fn = init.init if hasattr(init, "init") else init
  if not callable(init_fn):
    raise TypeError(f"init must be an optax transform or a callable, got {init!r}")
  abstract = jax.eval_shape(init_fn, params)
  out = shardings_like_params(abstract, params, mesh)
  return jax.jit(init_fn, out_shardings=out)(params)


# ----------------------------------------------------------------------------
# Batches and processes
# ----------------------------------------------------------------------------


def batch_sharding(mesh: Mesh, axis: str | Sequence[str] = DATA_AXIS) -> NamedSharding:
  """Leading (batch) axis split over ``axis`` (default ``"data"``), the rest whole."""
  axes = (axis,) if isinstance(axis, str) else tuple(axis)
  missing = [a for a in axes if a not in mesh.shape]
  if missing or not axes:
    raise ValueError(f"axis must name mesh axes for the batch, got {axis!r}; the mesh has "
                     f"{list(mesh.shape)}")
  return NamedSharding(mesh, PartitionSpec(axes[0] if len(axes) == 1 else axes))


def _batch_parts(sharding: NamedSharding) -> int:
  entry = tuple(sharding.spec)[0] if len(sharding.spec) else None
  if entry is None:
    return 1
  axes = entry if isinstance(entry, tuple) else (entry,)
  return math.prod(sharding.mesh.shape[a] for a in axes)


def process_batch_slice(sharding: NamedSharding, batch_size: int, *,
                        process_index: int | None = None,
                        argname: str = "batch_size") -> slice:
  """The rows of each global batch that process ``process_index`` feeds.

  They are the rows of the devices of that process under ``sharding`` (one
  contiguous range with meshes from :func:`make_mesh`). With one process,
  ``slice(0, batch_size)``.

  Args:
    sharding: the batch sharding (:func:`batch_sharding`).
    batch_size: the global batch size.
    process_index: default ``jax.process_index()``.
    argname: how errors name ``batch_size``.

  Raises:
    ValueError: when ``batch_size`` is not divisible by the number of batch
      shards, or the process's rows are not contiguous.
  """
  if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
    raise ValueError(f"{argname} must be a positive int, got {batch_size!r}")
  parts = _batch_parts(sharding)
  if batch_size % parts:
    raise ValueError(f"{argname}={batch_size} must be divisible by the {parts} batch shards "
                     f"of {sharding.spec} on mesh {dict(sharding.mesh.shape)}")
  pid = jax.process_index() if process_index is None else int(process_index)
  spans = set()
  for device, index in sharding.devices_indices_map((int(batch_size),)).items():
    if device.process_index == pid:
      s = index[0]
      spans.add((s.start or 0, batch_size if s.stop is None else s.stop))
  if not spans:
    raise ValueError(f"process {pid} has no device in mesh {dict(sharding.mesh.shape)}")
  spans = sorted(spans)
  lo, hi = spans[0]
  for a, b in spans[1:]:
    if a != hi:
      raise ValueError(f"process {pid} feeds non-contiguous batch rows {spans}; build the "
                       "mesh with sparsejax.parallel.make_mesh (jax.make_mesh device order)")
    hi = b
  return slice(lo, hi)


def make_global_batch(local_batch: Mapping[str, np.ndarray], sharding: NamedSharding,
                      batch_size: int) -> dict[str, jax.Array]:
  """Joins every process's rows (:func:`process_batch_slice`) into global arrays.

  ``jax.make_array_from_process_local_data`` per leaf: each device receives
  only its rows; nothing is replicated.
  """
  out = {}
  for k, v in local_batch.items():
    v = np.asarray(v)
    out[k] = jax.make_array_from_process_local_data(
        sharding, v, (int(batch_size),) + tuple(v.shape[1:]))
  return out


def process_train_batches(ds: Dataset, *, sharding: NamedSharding, batch_size: int, seed: int,
                          augment: bool = False, start_step: int = 0,
                          prefetch: int = 2) -> Iterator[dict[str, np.ndarray]]:
  """This process's rows of the batches of :func:`sparsejax.data.train_batches`.

  Batch ``k`` is rows :func:`process_batch_slice` of global step
  ``start_step + k`` of ``train_batches(ds, batch_size=batch_size, seed=seed,
  augment=augment)``, so every process count sees the same global batches.
  A process gathers and normalises only its own rows; with ``augment`` the
  crop/flip draws are made for the global batch (they come from one
  generator per step) and the process keeps its rows. With one process this
  is ``train_batches`` itself.

  Returns:
    A grain iterator of ``{"image", "label"}`` numpy batches of
    ``batch_size / process_count`` rows (pass them to :func:`make_global_batch`).
  """
  rows = process_batch_slice(sharding, batch_size)
  if rows == slice(0, batch_size):
    return pipeline_lib.train_batches(ds, batch_size=batch_size, seed=seed, augment=augment,
                                      start_step=start_step, prefetch=prefetch)
  # Validates the arguments exactly as the single-process path does.
  pipeline_lib.train_batches(ds, batch_size=batch_size, seed=seed, augment=augment,
                             start_step=start_step, prefetch=0)
  make = pipeline_lib._TrainBatch(ds, int(batch_size), int(seed), bool(augment))  # pylint: disable=protected-access

  def local(step: int) -> dict[str, np.ndarray]:
    if augment:
      batch = make(step)
      return {k: v[rows] for k, v in batch.items()}
    idx = make.indices(step)[rows]
    return {"image": pipeline_lib.normalize(ds.images[idx], ds.mean, ds.std),
            "label": ds.labels[idx]}

  steps = grain.MapDataset.range(int(start_step), sys.maxsize)
  return iter(steps.map(local).to_iter_dataset(pipeline_lib._read_options(prefetch)))  # pylint: disable=protected-access


def initialize_distributed(config) -> bool:
  """Calls ``jax.distributed.initialize`` when ``config.distributed`` asks.

  ``config.distributed`` absent, None or False: nothing (one process). True:
  ``jax.distributed.initialize()`` with the cluster's auto-detection (Cloud
  TPU, SLURM, Open MPI, Kubernetes). A mapping: its ``coordinator_address``,
  ``num_processes``, ``process_id`` and ``local_device_ids`` are passed on.
  Must run before anything touches a device. Returns whether JAX is now
  distributed.
  """
  dist = config.get("distributed", None) if hasattr(config, "get") else None
  if not dist:
    return False
  if jax.distributed.is_initialized():
    return True
  kwargs = {}
  if hasattr(dist, "to_dict"):
    dist = dist.to_dict()
  if isinstance(dist, Mapping):
    allowed = ("coordinator_address", "num_processes", "process_id", "local_device_ids")
    unknown = sorted(set(dist) - set(allowed))
    if unknown:
      raise ValueError(f"config.distributed has unknown keys {unknown}; allowed: {allowed}")
    kwargs = {k: v for k, v in dist.items() if v is not None}
  elif dist is not True:
    raise TypeError(f"config.distributed must be True or a mapping, got {dist!r}")
  jax.distributed.initialize(**kwargs)
  return True


def bytes_per_device(tree) -> dict[jax.Device, int]:
  """Bytes each addressable device holds for the arrays of ``tree`` (shard sizes)."""
  out: dict[jax.Device, int] = {}
  for leaf in jax.tree.leaves(tree):
    if not isinstance(leaf, jax.Array):
      continue
    for shard in leaf.addressable_shards:
      out[shard.device] = out.get(shard.device, 0) + shard.data.nbytes
  return out
